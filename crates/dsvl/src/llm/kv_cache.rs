//! Per-sequence key/value cache: one growable `[B, H, cap, D]` buffer per layer and per K/V.
//! Appends write in place (`slice_set`); capacity doubles when full, so a long generation costs
//! O(log n) re-allocations instead of one concatenation per token.

use candle_core::{Result, Tensor};

const MIN_CAPACITY: usize = 256;

#[derive(Debug, Clone)]
struct Buffer {
    data: Tensor,
    len: usize,
}

impl Buffer {
    fn append(slot: &mut Option<Buffer>, x: &Tensor) -> Result<Tensor> {
        let (b, h, t, d) = x.dims4()?;
        let x = x.contiguous()?;
        let len = slot.as_ref().map_or(0, |s| s.len);
        let cap = slot.as_ref().map_or(0, |s| s.data.dim(2).unwrap_or(0));
        if len + t > cap {
            let new_cap = (len + t).max(2 * cap).max(MIN_CAPACITY);
            let data = Tensor::zeros((b, h, new_cap, d), x.dtype(), x.device())?;
            if let Some(old) = slot.as_ref() {
                data.slice_set(&old.data.narrow(2, 0, len)?.contiguous()?, 2, 0)?;
            }
            *slot = Some(Buffer { data, len });
        }
        let Some(buf) = slot.as_mut() else {
            candle_core::bail!("kv cache slot initialised above")
        };
        buf.data.slice_set(&x, 2, len)?;
        buf.len = len + t;
        buf.data.narrow(2, 0, buf.len)
    }
}

/// The cache of one sequence across all layers.
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<(Option<Buffer>, Option<Buffer>)>,
}

impl KvCache {
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: vec![(None, None); num_layers],
        }
    }

    /// Number of positions already cached (the next token's position).
    pub fn len(&self) -> usize {
        self.layers
            .first()
            .and_then(|(k, _)| k.as_ref())
            .map_or(0, |b| b.len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends `k`, `v` (`[B, H, t, D]`) to layer `i`; returns all cached keys and values.
    pub fn append(&mut self, i: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let Some((ks, vs)) = self.layers.get_mut(i) else {
            candle_core::bail!("kv cache has no layer {i}")
        };
        Ok((Buffer::append(ks, k)?, Buffer::append(vs, v)?))
    }

    /// Forgets every position from `len` on (a shorter cache is left as it is); the next
    /// append writes at `len`.
    pub fn truncate(&mut self, len: usize) {
        for buf in self.layers.iter_mut().flat_map(|(k, v)| [k, v]).flatten() {
            buf.len = buf.len.min(len);
        }
    }

    pub fn clear(&mut self) {
        for l in &mut self.layers {
            *l = (None, None);
        }
    }
}
