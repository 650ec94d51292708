//! dsvl: the DeepSeek-VL inference engine.
//!
//! The path one request takes, one module per step:
//! `image` (decode, Pillow-exact resize, pad, tiling) → `vision` (SigLIP, SAM) → `projector`
//! (aligners) → `models` (embedding merge) → `llm` (Llama, DeepSeek-V2 + KV cache) → `sampling`
//! → `text` (UTF-8-safe deltas, stop strings).
//!
//! `models` holds one folder per model family (DeepSeek-VL, DeepSeek-VL2): its configuration,
//! its processor (conversation → prompt ids and image inputs) and its model, behind the
//! [`models::Family`] and [`models::VisionLanguageModel`] traits; [`models::from_dir`] picks the
//! family of a model directory. `config` reads JSON files, `weights` maps checkpoint names,
//! `prompt` holds the chat templates, tokenizer and image-token expansion, `nn` the shared
//! blocks, `engine` ties it together. `grounding` turns DeepSeek-VL2 `<|ref|>/<|det|>` answers
//! into boxes and draws them. `structured` constrains answers to a JSON Schema, a regex, a choice
//! or a Lark grammar (llguidance), through [`SamplingParams::constraint`].
//! `pdf` renders PDF pages to images ([`PdfDocument`]) that enter a conversation as
//! [`ImageSource::Rendered`].
//!
//! The crate root re-exports what a program needs: [`Pipeline`] (load, prepare, generate),
//! [`EngineHandle`] (continuous batching for many concurrent requests), messages, images,
//! generation parameters, events and errors.
//!
//! Describe an image (here the tiny random-weight test model, so the answer is noise; give a
//! published model folder for a real one). `examples/describe.rs` and `examples/stream.rs` are
//! the same as programs.
//!
//! ```
//! use std::ops::ControlFlow;
//! use std::path::Path;
//!
//! use dsvl::{ChatMessage, GenerateParams, ImageSource, LoadOptions, Pipeline, Role};
//!
//! # fn main() -> dsvl::Result<()> {
//! let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1");
//! let pipeline = Pipeline::load(&fixtures.join("models/siglip-tiny"), &LoadOptions::default())?;
//! let image = ImageSource::Path(fixtures.join("images/landscape_500x333.png"));
//! let question = ChatMessage::new(Role::User, "Describe this image.").with_images(vec![image]);
//!
//! let mut params = GenerateParams::default(); // greedy
//! params.sampling.max_new_tokens = 8;
//! let prepared = pipeline.prepare(None, &[question])?;
//! let mut streamed = String::new();
//! let answer = pipeline.generate(&prepared, &params, |event| {
//!     streamed.push_str(event.text());
//!     ControlFlow::Continue(())
//! })?;
//! assert_eq!(streamed, answer.text);
//! assert_eq!(answer.prompt_tokens, prepared.ids.len()); // 576 image tokens and the text
//! # Ok(())
//! # }
//! ```

pub mod device;
pub mod engine;
pub mod error;
pub mod grounding;
pub mod image;
pub mod models;
pub mod pdf;
pub mod prompt;
pub mod sampling;
pub mod structured;

// Stage internals: public so that the parity tests can check each stage against the reference,
// and for the benchmarks and developer tools; not part of the supported API (hidden from the
// docs, may change in any release).
#[doc(hidden)]
pub mod config;
#[doc(hidden)]
pub mod llm;
#[doc(hidden)]
pub mod memory;
#[doc(hidden)]
pub mod nn;
#[doc(hidden)]
pub mod projector;
#[doc(hidden)]
pub mod text;
#[doc(hidden)]
pub mod vision;
#[doc(hidden)]
pub mod weights;

pub use device::DeviceChoice;
/// The CPU matrix kernels (instruction-set level, FLOP counter, peak probe), for tools.
#[doc(hidden)]
pub use dsvl_kernels as kernels;
pub use engine::{
    ChatMessage, EngineConfig, EngineEvent, EngineHandle, Event, FinishReason, GenerateParams,
    ImageSource, LoadOptions, Outcome, Pipeline, Prepared, Request, TokenOut,
};
pub use error::{CheckpointLayout, Error, Result};
pub use grounding::Grounding;
pub use nn::Quant;
pub use pdf::{PdfDocument, PdfError, PdfLimits};
pub use prompt::template::Role;
pub use sampling::SamplingParams;
pub use structured::Constraint;
