//! The output head shared by both language models: final RMSNorm, `lm_head` in the working
//! dtype, logits widened to f32 for sampling (v1 §13.12, v2 §8.5).

use candle_core::{DType, Module, Result, Tensor};

use crate::nn::{Linear, RmsNorm};

/// Which positions need logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    Last,
    All,
}

/// The decoder output `x` `[B, T, D]` → f32 logits `[B, vocab]` (Last) or `[B, T, vocab]` (All).
pub(crate) fn logits(
    norm: &RmsNorm,
    lm_head: &Linear,
    x: &Tensor,
    which: Logits,
) -> Result<Tensor> {
    let x = match which {
        Logits::Last => x.narrow(1, x.dim(1)? - 1, 1)?,
        Logits::All => x.clone(),
    };
    let logits = project(lm_head, &norm.forward(&x)?)?;
    match which {
        Logits::Last => logits.squeeze(1),
        Logits::All => Ok(logits),
    }
}

/// `lm_head` on normalised hidden states, in the working dtype; logits cast to f32.
pub(crate) fn project(lm_head: &Linear, normed: &Tensor) -> Result<Tensor> {
    lm_head.forward(normed)?.to_dtype(DType::F32)
}
