//! DeepSeek-OCR (`deepseek-ai/DeepSeek-OCR`): the DeepEncoder (SAM-B, then CLIP-L over the SAM
//! features, a linear 2048 → 1280 projector) over a global view and, in the Gundam mode, 640²
//! tiles of each image, the VL2 2-D token layout (newline and view-separator vectors), and the
//! DeepSeek-VL2 MoE language model.
//!
//! Built so far: [`processor`] (resolution modes, tiling, views, token counts), [`config`] (the
//! encoder sizes), [`encoder`] (the DeepEncoder and the image-token layout), [`model`] (the
//! checkpoint loader: encoder + language model, embedding merge, prefill and decode), `family`
//! (the family traits; `model_type` `deepseek_vl_v2` with architecture `DeepseekOCRForCausalLM`).
//! Not yet: choosing the mode per request or from the CLI/server (the Gundam default is used),
//! the n-gram processor on by default, DeepSeek-OCR-2 (issue 20).

/// `config.json` values that name this family: `model_type` (shared with DeepSeek-VL2) and the
/// architecture that tells them apart.
pub(crate) const MODEL_TYPES: &[&str] = &["deepseek_vl_v2"];
pub(crate) const ARCHITECTURES: &[&str] = &["DeepseekOCRForCausalLM"];

pub mod config;
pub mod encoder;
mod family;
pub mod model;
pub mod processor;

pub use config::{DeepEncoderSpec, OcrEncoderJson};
pub use encoder::{DeepEncoder, EncoderStages};
pub(crate) use family::resolve;
pub use model::{DeepseekOcr, DeepseekOcrSpec};
pub use processor::{image_token_count, image_views, OcrMode, OcrViews};
