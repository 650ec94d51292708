//! Per-sequence key/value cache: one growable `[B, H, cap, D]` buffer per layer and per K/V.
//! Appends write in place (`slice_set`); capacity doubles when full, so a long generation costs
//! O(log n) re-allocations instead of one concatenation per token.
//!
//! A bf16 model on the CPU keeps its cache in f32 ([`KvCache::for_model`]): candle's CPU matmul
//! has no bf16 kernel and widens the whole storage of both operands on every call, which for the
//! cache meant re-widening every cached position of every layer at every decode step. The f32
//! cache holds the same bf16-rounded values, widened once when appended; attention multiplies it
//! with [`crate::nn::matmul_mixed`], which gives the bf16 products bit for bit.

use candle_core::{DType, Device, Result, Tensor};

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
    /// Keys and values are stored in this dtype when set, else in the dtype they come in.
    store: Option<DType>,
}

impl KvCache {
    /// A cache that stores keys and values in the dtype they come in.
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: vec![(None, None); num_layers],
            store: None,
        }
    }

    /// The cache for a model computing in `dtype` on `device`: f32 storage for bf16 on the CPU
    /// (see the module notes), the model's dtype otherwise.
    pub fn for_model(num_layers: usize, dtype: DType, device: &Device) -> Self {
        let stored = Self::stored_dtype(dtype, device);
        Self::new(num_layers).with_storage((stored != dtype).then_some(stored))
    }

    /// This (empty) cache with another storage policy: `Some(dtype)` stores in `dtype`, `None`
    /// in the dtype keys and values come in.
    pub fn with_storage(mut self, store: Option<DType>) -> Self {
        self.store = store;
        self
    }

    /// The dtype [`KvCache::for_model`] stores a model's keys and values in.
    pub fn stored_dtype(dtype: DType, device: &Device) -> DType {
        if dtype == DType::BF16 && device.is_cpu() {
            DType::F32
        } else {
            dtype
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

    /// Bytes held, the buffers' spare capacity included.
    pub fn bytes(&self) -> usize {
        self.layers
            .iter()
            .flat_map(|(k, v)| [k, v])
            .flatten()
            .map(|b| b.data.elem_count() * b.data.dtype().size_in_bytes())
            .sum()
    }

    /// Appends `k`, `v` (`[B, H, t, D]`) to layer `i`; returns all cached keys and values.
    pub fn append(&mut self, i: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let Some((ks, vs)) = self.layers.get_mut(i) else {
            candle_core::bail!("kv cache has no layer {i}")
        };
        match self.store {
            Some(dtype) => Ok((
                Buffer::append(ks, &k.to_dtype(dtype)?)?,
                Buffer::append(vs, &v.to_dtype(dtype)?)?,
            )),
            None => Ok((Buffer::append(ks, k)?, Buffer::append(vs, v)?)),
        }
    }

    /// Forgets every position from `len` on (a shorter cache is left as it is); the next
    /// append writes at `len`.
    pub fn truncate(&mut self, len: usize) {
        for buf in self.layers.iter_mut().flat_map(|(k, v)| [k, v]).flatten() {
            buf.len = buf.len.min(len);
        }
    }

    /// Gives back the buffers' spare capacity: each holds exactly its positions afterwards (a
    /// cache kept for later, such as a prefix-cache entry, then costs only what it holds).
    pub fn compact(&mut self) -> Result<()> {
        for slot in self.layers.iter_mut().flat_map(|(k, v)| [k, v]) {
            let Some(buf) = slot.as_mut() else { continue };
            if buf.len == 0 {
                *slot = None;
            } else if buf.data.dim(2)? > buf.len {
                buf.data = buf.data.narrow(2, 0, buf.len)?.contiguous()?;
            }
        }
        Ok(())
    }

    pub fn clear(&mut self) {
        for l in &mut self.layers {
            *l = (None, None);
        }
    }
}
