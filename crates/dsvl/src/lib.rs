//! dsvl: the DeepSeek-VL inference engine.
//!
//! The path one request takes, one module per step:
//! `image bytes → image (decode, Pillow-exact resize, pad) → vision (SigLIP, SAM) → projector (aligner)
//!  → models (embedding merge) → llm (Llama + KV cache) → sampling → text (UTF-8-safe deltas, stop strings)`.
//! `config` reads the model directory, `weights` maps checkpoint names, `prompt` renders the chat template.

pub mod error;
pub mod image;
pub mod prompt;
pub mod sampling;
pub mod text;

pub use error::{CheckpointLayout, Error, Result};
