//! Messages → prompt string → token ids → expanded ids (v1 §8).
//!
//! - [`template`]: the `deepseek` chat template (v1 §8.1).
//! - [`tokenizer`]: `tokenizer.json` with BOS and the special ids read from the files (v1 §2.5, §8.2.1).
//! - [`expand`]: `<image_placeholder>` → 576 image tokens, image spans, context budget (v1 §8.2).
//! - [`vl2`]: DeepSeek-VL2 prompt ids built turn by turn, `<image>` → per-image token runs (v2 §6).

pub mod expand;
pub mod template;
pub mod tokenizer;
pub mod vl2;

pub use expand::{check_context, expand_image_tokens, expand_prompt, image_spans, ExpandedPrompt};
pub use template::{
    render, Message, Role, DEFAULT_SYSTEM_PROMPT, END_OF_SENTENCE, IMAGE_PLACEHOLDER,
};
pub use tokenizer::PromptTokenizer;
pub use vl2::{build_vl2_ids, vl2_cropping, vl2_role, Vl2Prompt, Vl2Turn};
