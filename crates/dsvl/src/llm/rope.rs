//! RoPE tables in f32 (v1 §13.10): `inv_freq[i] = 1 / theta^(2i/d)`, angle = position × inv_freq.
//! The Llama attention rotates halves (NeoX layout); DeepSeek-V2's MLA rotates interleaved pairs
//! (v2 §8.2–8.3). Both take the same `[t, d/2]` tables.

use candle_core::{DType, Device, Result, Tensor};

/// The `cos`/`sin` tables `[n, d/2]` of positions `0..n`, computed once when the model loads, on
/// its device and in its dtype, for every position the model was trained for (`n` =
/// `max_position_embeddings`: 16384 × 64 pairs for the published v1 models, 8 MiB in f32). A
/// forward call takes a view of them instead of computing and uploading two small tensors (a
/// host-to-device copy per decode step on a GPU). Positions past `n` are computed for that call
/// only; every entry is the same f32 value either way.
pub(crate) struct Rope {
    inv_freq: Vec<f32>,
    /// `[n, d/2]` each.
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    /// Tables for `d` rotated dims with base `theta`, for positions `0..positions`, in `dtype`
    /// on `dev`.
    pub(crate) fn new(
        d: usize,
        theta: f64,
        positions: usize,
        dtype: DType,
        dev: &Device,
    ) -> Result<Self> {
        // ref: 1.0 / (base ** (torch.arange(0, dim, 2).float() / dim)), all in float32
        let inv_freq: Vec<f32> = (0..d / 2)
            .map(|i| 1.0f32 / (theta as f32).powf((2 * i) as f32 / d as f32))
            .collect();
        let (cos, sin) = compute(&inv_freq, 0, positions, dtype, dev)?;
        Ok(Self { inv_freq, cos, sin })
    }

    /// Positions the kept tables cover.
    pub(crate) fn positions(&self) -> usize {
        self.cos.dim(0).unwrap_or(0)
    }

    /// `(cos, sin)`, each `[t, d/2]`, for positions `offset..offset+t`, in the tables' dtype and
    /// on their device.
    pub(crate) fn tables(&self, offset: usize, t: usize) -> Result<(Tensor, Tensor)> {
        if offset + t <= self.positions() {
            return Ok((
                self.cos.narrow(0, offset, t)?,
                self.sin.narrow(0, offset, t)?,
            ));
        }
        compute(
            &self.inv_freq,
            offset,
            t,
            self.cos.dtype(),
            self.cos.device(),
        )
    }
}

/// The tables of positions `offset..offset+t`, computed on the host.
fn compute(
    inv_freq: &[f32],
    offset: usize,
    t: usize,
    dtype: DType,
    dev: &Device,
) -> Result<(Tensor, Tensor)> {
    let half = inv_freq.len();
    let mut cos = Vec::with_capacity(t * half);
    let mut sin = Vec::with_capacity(t * half);
    for p in offset..offset + t {
        for &f in inv_freq {
            let a = p as f32 * f;
            cos.push(a.cos());
            sin.push(a.sin());
        }
    }
    let cos = Tensor::from_vec(cos, (t, half), dev)?.to_dtype(dtype)?;
    let sin = Tensor::from_vec(sin, (t, half), dev)?.to_dtype(dtype)?;
    Ok((cos, sin))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Views of the kept tables equal tables computed for just those positions, inside the
    /// kept range and past it, in f32 and bf16.
    #[test]
    fn kept_rope_tables_equal_fresh_ones() {
        let dev = Device::Cpu;
        for (offset, t, dtype) in [
            (0, 7, DType::F32),
            (700, 1, DType::F32),
            (1500, 600, DType::F32),
            (3, 1, DType::BF16),
            (5000, 2, DType::F32),
            (8190, 4, DType::F32),
        ] {
            let rope = Rope::new(64, 10000.0, 8192, dtype, &dev).unwrap();
            let (cos, sin) = rope.tables(offset, t).unwrap();
            let (want_cos, want_sin) = compute(&rope.inv_freq, offset, t, dtype, &dev).unwrap();
            assert_eq!(cos.dims(), &[t, 32]);
            let values = |x: Tensor| -> Vec<f32> {
                x.to_dtype(DType::F32)
                    .and_then(|x| x.flatten_all())
                    .and_then(|x| x.to_vec1())
                    .unwrap()
            };
            for (got, want) in [(cos, want_cos), (sin, want_sin)] {
                assert_eq!(
                    values(got),
                    values(want),
                    "offset {offset}, t {t}, {dtype:?}"
                );
            }
            assert_eq!(rope.positions(), 8192);
        }
    }
}
