//! Whole models: towers + projector + LLM, and the embedding merge.

pub mod deepseek_vl;
pub mod merge;

pub use deepseek_vl::{DeepseekVl, VisionStages};
