//! What every layer of one forward call shares: the RoPE tables of its positions and the causal
//! mask, built once per call from the cache offset (STYLE §3.4).

use candle_core::{DType, Device, Result, Tensor};

use super::rope::Rope;
use super::KvCache;

/// Per-forward inputs shared by all layers: RoPE tables and the causal mask.
pub(crate) struct StepCtx {
    pub(crate) cos: Tensor,
    pub(crate) sin: Tensor,
    pub(crate) mask: Option<Tensor>,
}

impl StepCtx {
    /// `t` positions from `offset` (a prefill chunk, or one decode step when `t` is 1, which
    /// needs no mask); the mask in `dtype` on `dev`.
    pub(crate) fn new(
        rope: &Rope,
        offset: usize,
        t: usize,
        dtype: DType,
        dev: &Device,
    ) -> Result<Self> {
        let (cos, sin) = rope.tables(offset, t)?;
        let mask = (t > 1)
            .then(|| causal_mask(t, offset, dtype, dev))
            .transpose()?;
        Ok(Self { cos, sin, mask })
    }
}

/// The RoPE tables of each sequence's next position, for a batched decode step.
pub(crate) fn step_contexts(
    rope: &Rope,
    ids: &[u32],
    caches: &[&mut KvCache],
) -> Result<Vec<StepCtx>> {
    if ids.len() != caches.len() || ids.is_empty() {
        candle_core::bail!(
            "decode_batch: {} tokens for {} caches (need one each, at least one)",
            ids.len(),
            caches.len()
        )
    }
    caches
        .iter()
        .map(|c| {
            let (cos, sin) = rope.tables(c.len(), 1)?;
            Ok(StepCtx {
                cos,
                sin,
                mask: None,
            })
        })
        .collect()
}

/// `[t, offset + t]` additive mask: 0 where key ≤ query position, −∞ after it.
pub(crate) fn causal_mask(t: usize, offset: usize, dtype: DType, dev: &Device) -> Result<Tensor> {
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| {
            (0..offset + t).map(move |j| {
                if j > i + offset {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    Tensor::from_vec(mask, (t, offset + t), dev)?.to_dtype(dtype)
}
