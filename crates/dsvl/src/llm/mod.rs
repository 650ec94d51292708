//! Language models: the Llama decoder of DeepSeek-VL v1 (v1 §7), the DeepSeek-V2 / DeepSeekMoE
//! decoder of DeepSeek-VL2 (v2 §8), and what they share: the multi-head attention
//! ([`attention`]), the RoPE tables (`rope`), the per-forward context and causal mask
//! (`step`), the output head ([`logits`]) and the KV cache ([`kv_cache`]).

pub mod attention;
pub mod deepseek_v2;
pub mod kv_cache;
pub mod llama;
pub mod logits;
pub(crate) mod rope;
pub(crate) mod step;

pub use attention::AttentionSpec;
pub use deepseek_v2::{DeepseekV2, DeepseekV2Spec};
pub use kv_cache::KvCache;
pub use llama::{Llama, LlamaSpec};
pub use logits::Logits;
