//! Model families, one folder each: [`deepseek_vl`] (DeepSeek-VL v1), [`deepseek_vl2`]
//! (DeepSeek-VL2) and [`deepseek_ocr`] (DeepSeek-OCR, in progress: not in the registry yet). Each holds its configuration, its processor (conversation → prompt ids and
//! image inputs) and its model (towers + projector + embedding merge + LLM), and implements the
//! two traits of [`family`]; [`registry`] picks the family of a model directory. Nothing outside
//! this module matches on the family. [`inputs`] holds the types a processor takes and makes,
//! [`merge`] the embedding merge both families share.

pub mod deepseek_ocr;
pub mod deepseek_vl;
pub mod deepseek_vl2;
pub mod family;
pub mod inputs;
pub mod merge;
pub mod registry;

pub use deepseek_vl::{DeepseekVl, DeepseekVlSpec};
pub use deepseek_vl2::{DeepseekVl2, DeepseekVl2Spec};
pub use family::{Family, LlmFacts, VisionLanguageModel};
pub use inputs::{
    ChatMessage, ImageInput, ImageOptions, ImageSource, Prepared, PromptText, TiledImage,
    ViewsImage,
};
pub use registry::from_dir;
