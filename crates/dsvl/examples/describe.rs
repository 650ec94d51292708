//! Describe an image: load a model, ask one question, print the answer.
//!
//! ```sh
//! cargo run --release -p dsvl --example describe -- MODEL_DIR IMAGE ["question"]
//! # with the tiny test model (random weights, so the answer is noise):
//! cargo run --release -p dsvl --example describe -- \
//!     crates/dsvl/tests/fixtures/v1/models/siglip-tiny crates/dsvl/tests/fixtures/v1/images/landscape_500x333.png
//! ```

use std::ops::ControlFlow;
use std::path::PathBuf;

use dsvl::{ChatMessage, GenerateParams, ImageSource, LoadOptions, Pipeline, Role};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(model), Some(image)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: describe MODEL_DIR IMAGE [QUESTION]");
    };
    let question = args.next().unwrap_or_else(|| "Describe this image.".into());

    let pipeline = Pipeline::load(model.as_ref(), &LoadOptions::default())?;
    let message = ChatMessage::new(Role::User, question)
        .with_images(vec![ImageSource::Path(PathBuf::from(image))]);
    let mut params = GenerateParams::default(); // greedy, as the reference demo
    params.sampling.max_new_tokens = 256;
    let prepared = pipeline.prepare(None, &[message])?;
    let outcome = pipeline.generate(&prepared, &params, |_| ControlFlow::Continue(()))?;
    println!("{}", outcome.text);
    Ok(())
}
