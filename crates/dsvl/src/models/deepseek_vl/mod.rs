//! DeepSeek-VL (v1: 1.3B and 7B, base and chat; `specs/deepseek-vl.md`): SigLIP-L, plus SAM-B
//! on the full image for the 7B hybrid tower, an MLP aligner and a Llama decoder; one 384 (or
//! 1024) square view and 576 image tokens per image.
//!
//! [`config`] resolves both checkpoint layouts, `processor` builds the prompt and the square
//! views, [`model`] holds the weights. `family` implements the family traits,
//! which are all the rest of the crate sees.

pub mod config;
mod family;
pub mod model;
mod processor;
pub mod raw;

pub(crate) use config::MODEL_TYPES;
pub use config::{DeepseekVlSpec, ProcessorSpec, VisionSpec, CLIP_MEAN, CLIP_STD};
pub(crate) use family::resolve;
pub use model::{DeepseekVl, VisionStages};
