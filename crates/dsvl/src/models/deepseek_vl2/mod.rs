//! DeepSeek-VL2 (tiny, small, base; `specs/deepseek-vl2.md`): SigLIP-SO400M over 384 tiles of
//! each image (a global view and a local grid), the `downsample_mlp_gelu` projector, a 2-D token
//! layout with learned newline and separator vectors, and the DeepSeekMoE language model (MHA or
//! MLA attention); grounding markup in its answers.
//!
//! [`config`] resolves the directory, `processor` tiles images and builds the prompt ids,
//! [`model`] holds the weights. `family` implements the family traits,
//! which are all the rest of the crate sees.

pub mod config;
mod family;
pub mod model;
mod processor;

pub(crate) use config::MODEL_TYPES;
pub use config::{DeepseekVl2Spec, GlobalViewPos, Vl2ProcessorSpec};
pub(crate) use family::resolve;
pub use model::{DeepseekVl2, Vl2VisionStages};
