//! Next-token selection (v1 §10): validated per-request [`SamplingParams`], the HF `generate` 4.38 logit
//! processors on f32 logits (v1 §13.12), and a [`Sampler`] seeded per request.

pub mod ngram;
pub mod params;
pub mod processors;
pub mod sampler;

pub use ngram::{NoRepeatNgram, OCR_NGRAM_WHITELIST};
pub use params::{SamplingParams, HF_DEFAULT_TOP_K};
pub use processors::{log_softmax, top_logprobs};
pub use sampler::Sampler;
