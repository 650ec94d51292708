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
//! into boxes and draws them.

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
