//! Language models: the Llama decoder of DeepSeek-VL v1 (v1 §7), the DeepSeek-V2 / DeepSeekMoE
//! decoder of DeepSeek-VL2 (v2 §8), and their KV cache.

pub mod deepseek_v2;
pub mod kv_cache;
pub mod llama;

pub use deepseek_v2::{DeepseekV2, DeepseekV2Spec};
pub use kv_cache::KvCache;
pub use llama::Llama;
