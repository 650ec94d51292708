//! LRU cache of image embeddings keyed by a hash of the preprocessed pixels, so a conversation
//! that resends an image (every turn of a multi-turn chat does) skips the vision tower.

use std::collections::HashMap;
use std::hash::Hasher;

use candle_core::Tensor;

use crate::error::Result;

/// Bounded by the bytes of the cached embeddings.
#[derive(Debug)]
pub struct FeatureCache {
    capacity_bytes: usize,
    used_bytes: usize,
    /// key → (embeddings `[tokens, hidden]`, bytes, last use)
    entries: HashMap<u64, (Tensor, usize, u64)>,
    clock: u64,
    pub hits: u64,
    pub misses: u64,
}

impl FeatureCache {
    pub fn new(capacity_bytes: usize) -> Self {
        Self {
            capacity_bytes,
            used_bytes: 0,
            entries: HashMap::new(),
            clock: 0,
            hits: 0,
            misses: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn capacity_bytes(&self) -> usize {
        self.capacity_bytes
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Key of one preprocessed image `[3, S, S]` (f32): FNV-1a over the raw bits.
    pub fn key(pixels: &Tensor) -> Result<u64> {
        let mut h = Fnv(0xcbf2_9ce4_8422_2325);
        for v in pixels.flatten_all()?.to_vec1::<f32>()? {
            h.write_u32(v.to_bits());
        }
        Ok(h.finish())
    }

    pub fn get(&mut self, key: u64) -> Option<Tensor> {
        self.clock += 1;
        let clock = self.clock;
        match self.entries.get_mut(&key) {
            Some((t, _, used)) => {
                *used = clock;
                self.hits += 1;
                Some(t.clone())
            }
            None => {
                self.misses += 1;
                None
            }
        }
    }

    /// Inserts `emb`, evicting least-recently-used entries to stay within capacity. Embeddings
    /// larger than the whole capacity are not cached.
    pub fn insert(&mut self, key: u64, emb: Tensor) {
        let bytes = emb.elem_count() * emb.dtype().size_in_bytes();
        if bytes > self.capacity_bytes || self.entries.contains_key(&key) {
            return;
        }
        while self.used_bytes + bytes > self.capacity_bytes {
            let Some((&old, _)) = self.entries.iter().min_by_key(|(_, (_, _, used))| *used) else {
                break;
            };
            if let Some((_, b, _)) = self.entries.remove(&old) {
                self.used_bytes -= b;
            }
        }
        self.clock += 1;
        self.used_bytes += bytes;
        self.entries.insert(key, (emb, bytes, self.clock));
    }
}

struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn t(v: f32, n: usize) -> Tensor {
        Tensor::full(v, n, &Device::Cpu).expect("small tensor")
    }

    #[test]
    fn lru_eviction_keeps_recent_entries_within_capacity() {
        let mut c = FeatureCache::new(3 * 4 * 4); // room for three 4-float tensors
        for k in 0..3 {
            c.insert(k, t(k as f32, 4));
        }
        assert!(c.get(0).is_some()); // 0 is now the most recent
        c.insert(3, t(3.0, 4)); // evicts 1, the least recently used
        assert!(c.get(1).is_none());
        assert!(c.get(0).is_some() && c.get(2).is_some() && c.get(3).is_some());
        assert_eq!((c.len(), c.hits, c.misses), (3, 4, 1));
        c.insert(9, t(0.0, 100)); // larger than the cache: ignored
        assert_eq!(c.len(), 3);
    }

    #[test]
    fn key_depends_on_every_pixel() -> Result<()> {
        let a = Tensor::zeros((3, 4, 4), DType::F32, &Device::Cpu)?;
        let b = a.slice_assign(&[0..1, 3..4, 3..4], &t(1.0, 1).reshape((1, 1, 1))?)?;
        assert_ne!(FeatureCache::key(&a)?, FeatureCache::key(&b)?);
        assert_eq!(FeatureCache::key(&a)?, FeatureCache::key(&a.clone())?);
        Ok(())
    }
}
