//! Stream an answer token by token, with the timings of each stage.
//!
//! ```sh
//! cargo run --release -p dsvl --example stream -- MODEL_DIR IMAGE ["question"]
//! ```

use std::io::Write;
use std::ops::ControlFlow;
use std::path::PathBuf;

use dsvl::{ChatMessage, GenerateParams, ImageSource, LoadOptions, Pipeline, Role};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(model), Some(image)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: stream MODEL_DIR IMAGE [QUESTION]");
    };
    let question = args
        .next()
        .unwrap_or_else(|| "What is in this image?".into());

    let pipeline = Pipeline::load(model.as_ref(), &LoadOptions::default())?;
    let message = ChatMessage::new(Role::User, question)
        .with_images(vec![ImageSource::Path(PathBuf::from(image))]);
    let mut params = GenerateParams::default();
    params.sampling.max_new_tokens = 256;
    let prepared = pipeline.prepare(None, &[message])?;

    let mut out = std::io::stdout().lock();
    let outcome = pipeline.generate(&prepared, &params, |event| {
        // Each event carries the text that became final with it; stop when stdout is gone.
        match write!(out, "{}", event.text()).and_then(|()| out.flush()) {
            Ok(()) => ControlFlow::Continue(()),
            Err(_) => ControlFlow::Break(()),
        }
    })?;
    let t = &outcome.timings;
    eprintln!(
        "\n[{:?}] vision {:.0} ms, prefill {:.0} ms, decode {:.0} ms",
        outcome.finish_reason, t.vision_ms, t.prefill_ms, t.decode_ms
    );
    Ok(())
}
