//! Language models: the Llama decoder of DeepSeek-VL v1 (v1 §7) and its KV cache.

pub mod kv_cache;
pub mod llama;

pub use kv_cache::KvCache;
pub use llama::Llama;
