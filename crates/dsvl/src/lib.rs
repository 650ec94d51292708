//! dsvl: the DeepSeek-VL inference engine.
//!
//! The path one request takes, one module per step:
//! `image` (decode, Pillow-exact resize, pad) → `vision` (SigLIP, SAM) → `projector` (aligner)
//! → `models` (embedding merge) → `llm` (Llama + KV cache) → `sampling` → `text` (UTF-8-safe
//! deltas, stop strings). `config` reads a model directory, `weights` maps checkpoint names,
//! `prompt` renders the chat template and expands image tokens, `engine` ties it together.
//! `grounding` turns DeepSeek-VL2 `<|ref|>/<|det|>` answers into boxes and draws them.

pub mod config;
pub mod device;
pub mod engine;
pub mod error;
pub mod grounding;
pub mod image;
pub mod llm;
pub mod memory;
pub mod models;
pub mod nn;
pub mod projector;
pub mod prompt;
pub mod sampling;
pub mod text;
pub mod vision;
pub mod weights;

pub use error::{CheckpointLayout, Error, Result};
