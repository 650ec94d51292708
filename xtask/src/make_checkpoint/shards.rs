//! The safetensors files: random values generated tensor by tensor while the `safetensors` crate
//! writes them, and the tensor list read back from an existing file (`--shape tiny`).
//!
//! Each tensor's values depend on the seed and its name only (splitmix64 seeded with
//! `seed ^ FNV-1a(name)`), so a tensor has the same bytes whatever shard or file it lands in.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use anyhow::Context;
use safetensors::tensor::{Metadata, TensorInfo};
use safetensors::{SafeTensors, View};

use super::plan::TensorSpec;
use super::StoredDtype;

/// splitmix64: fast, seedable, good enough for benchmark weights.
pub(super) struct SplitMix(pub(super) u64);

impl SplitMix {
    pub(super) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// FNV-1a of a tensor name: each tensor's values depend on the seed and its name only.
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// What a tensor is filled with.
#[derive(Debug, PartialEq, Eq)]
enum Fill {
    /// Norm weights: 1 (identity scale).
    One,
    /// Norm biases: 0.
    Zero,
    /// Everything else: uniform in ±0.02 (4096 levels).
    Uniform,
}

fn fill_for(name: &str) -> Fill {
    // LayerNorm / RMSNorm / LayerNorm2d (SAM neck.1, neck.3) parameters.
    let leaf = name.rsplit('.').next().unwrap_or("");
    let is_norm = name.contains("norm")
        || [".neck.1.", ".neck.3.", ".neck_hd.1.", ".neck_hd.3."]
            .iter()
            .any(|n| name.contains(n));
    match (is_norm, leaf) {
        (true, "weight") => Fill::One,
        (true, "bias") => Fill::Zero,
        _ => Fill::Uniform,
    }
}

/// The values a tensor can hold, encoded once in the stored dtype (little-endian).
struct Encoded {
    dtype: StoredDtype,
    /// 4096 levels of uniform ±0.02, `dtype.bytes()` each: 12 random bits per value.
    levels: Vec<u8>,
    one: Vec<u8>,
    zero: Vec<u8>,
}

impl Encoded {
    fn new(dtype: StoredDtype) -> Self {
        let mut levels = Vec::with_capacity(4096 * dtype.bytes());
        for i in 0..4096 {
            dtype.encode((i as f32 / 4095.0 * 2.0 - 1.0) * 0.02, &mut levels);
        }
        let (mut one, mut zero) = (Vec::new(), Vec::new());
        dtype.encode(1.0, &mut one);
        dtype.encode(0.0, &mut zero);
        Encoded {
            dtype,
            levels,
            one,
            zero,
        }
    }

    /// The bytes of tensor `t`.
    fn values(&self, t: &TensorSpec, seed: u64) -> Vec<u8> {
        // The values are drawn in runs of CHUNK: each run starts a new group of five 12-bit
        // draws. The writer this replaced wrote 4 Mi values at a time; keeping its runs keeps
        // the bytes of every seed.
        const CHUNK: usize = 1 << 22;
        let b = self.dtype.bytes();
        let n = t.numel();
        let mut out = Vec::with_capacity(n * b);
        match fill_for(&t.name) {
            Fill::One => (0..n).for_each(|_| out.extend_from_slice(&self.one)),
            Fill::Zero => (0..n).for_each(|_| out.extend_from_slice(&self.zero)),
            Fill::Uniform => {
                let mut rng = SplitMix(seed ^ name_hash(&t.name));
                for start in (0..n).step_by(CHUNK) {
                    let run = CHUNK.min(n - start);
                    let mut done = 0;
                    while done < run {
                        let mut r = rng.next();
                        let k = 5.min(run - done);
                        for _ in 0..k {
                            let level = (r & 0xfff) as usize;
                            out.extend_from_slice(&self.levels[level * b..(level + 1) * b]);
                            r >>= 12;
                        }
                        done += k;
                    }
                }
            }
        }
        out
    }
}

/// One tensor for `safetensors::serialize_to_file`: its bytes are generated when the writer asks
/// for them, so only one tensor is in memory at a time (the largest: VL2's 129280 × 2560
/// embedding, 0.66 GB in bf16).
struct RandomTensor<'a> {
    spec: &'a TensorSpec,
    encoded: &'a Encoded,
    seed: u64,
}

impl View for RandomTensor<'_> {
    fn dtype(&self) -> safetensors::Dtype {
        self.encoded.dtype.st_dtype()
    }
    fn shape(&self) -> &[usize] {
        &self.spec.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Owned(self.encoded.values(self.spec, self.seed))
    }
    fn data_len(&self) -> usize {
        self.spec.numel() * self.encoded.dtype.bytes()
    }
}

/// `__metadata__` of the published files (torch's `save_file`).
fn file_metadata() -> HashMap<String, String> {
    HashMap::from([("format".to_string(), "pt".to_string())])
}

/// Writes one safetensors file of `tensors` with random values; returns the bytes of tensor
/// data. The data is sorted by name, as torch's `save_file` and the published files have it.
pub(super) fn write_shard(
    path: &Path,
    tensors: &[&TensorSpec],
    dtype: StoredDtype,
    seed: u64,
) -> anyhow::Result<u64> {
    let encoded = Encoded::new(dtype);
    let views = tensors.iter().map(|spec| {
        let view = RandomTensor {
            spec,
            encoded: &encoded,
            seed,
        };
        (spec.name.as_str(), view)
    });
    // The crate writes a temporary file (mode 0600) and renames it to `path`: give the result
    // the mode of a newly created file (the umask's), as the config and tokenizer files have,
    // so that other users can read the checkpoint too.
    let mode = File::create(path)
        .and_then(|f| f.metadata())
        .with_context(|| format!("cannot create {}", path.display()))?
        .permissions();
    safetensors::serialize_to_file(views, Some(file_metadata()), path)
        .with_context(|| format!("while writing {}", path.display()))?;
    std::fs::set_permissions(path, mode)
        .with_context(|| format!("cannot set the mode of {}", path.display()))?;
    Ok(tensors
        .iter()
        .map(|t| (t.numel() * dtype.bytes()) as u64)
        .sum())
}

/// The header [`write_shard`] writes for `tensors`: sorted by name (one dtype, so the crate's
/// order is the name order), offsets in that order.
pub(super) fn header(tensors: &[&TensorSpec], dtype: StoredDtype) -> anyhow::Result<Metadata> {
    let mut sorted = tensors.to_vec();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut offset = 0;
    let infos = sorted
        .iter()
        .map(|t| {
            let bytes = t.numel() * dtype.bytes();
            let info = TensorInfo {
                dtype: dtype.st_dtype(),
                shape: t.shape.clone(),
                data_offsets: (offset, offset + bytes),
            };
            offset += bytes;
            (t.name.clone(), info)
        })
        .collect();
    Ok(Metadata::new(Some(file_metadata()), infos)?)
}

/// Size of the file [`write_shard`] writes: header length, JSON header padded with spaces to a
/// multiple of 8 (as the crate pads it), data.
pub(super) fn file_bytes(tensors: &[&TensorSpec], dtype: StoredDtype) -> anyhow::Result<u64> {
    let meta = header(tensors, dtype)?;
    let json = serde_json::to_string(&meta)?.len().next_multiple_of(8);
    Ok(8 + json as u64 + meta.data_len() as u64)
}

/// Tensor names and shapes of one safetensors file, in the file's data order.
pub(super) fn read_tensor_list(path: &Path) -> anyhow::Result<Vec<TensorSpec>> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: the map is only read, here, while `file` is open; the header is checked against
    // the file length before anything is trusted.
    let mmap = unsafe { memmap2::Mmap::map(&file) }
        .with_context(|| format!("cannot map {}", path.display()))?;
    let (_, meta) = SafeTensors::read_metadata(&mmap)
        .with_context(|| format!("{}: not a safetensors file", path.display()))?;
    let infos = meta.tensors();
    Ok(meta
        .offset_keys()
        .into_iter()
        .map(|name| TensorSpec {
            shape: infos[&name].shape.clone(),
            name,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn norms_are_identity() {
        assert_eq!(fill_for("language_model.model.norm.weight"), Fill::One);
        assert_eq!(
            fill_for("vision_model.vision_tower_high.vision_tower.neck_hd.3.bias"),
            Fill::Zero
        );
        assert_eq!(
            fill_for("vision_model.vision_tower_high.vision_tower.neck.2.weight"),
            Fill::Uniform
        );
        assert_eq!(
            fill_for("language_model.model.layers.0.self_attn.q_proj.weight"),
            Fill::Uniform
        );
    }

    fn spec(name: &str, shape: &[usize]) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            shape: shape.to_vec(),
        }
    }

    /// Values depend on the seed and the name only; the draws restart their groups of five at
    /// every 4 Mi values, as the chunked writer did (the bytes of a seed stay the same).
    #[test]
    fn values_depend_on_seed_and_name() {
        let e = Encoded::new(StoredDtype::F32);
        let a = spec("a.weight", &[3, 7]);
        let b = spec("b.weight", &[3, 7]);
        let v = e.values(&a, 1);
        assert_eq!(v.len(), 21 * 4);
        assert_eq!(v, e.values(&a, 1));
        assert_ne!(v, e.values(&a, 2));
        assert_ne!(v, e.values(&b, 1));
        let floats: Vec<f32> = v
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert!(floats.iter().all(|x| x.abs() <= 0.02));
        assert!(floats.windows(2).any(|w| w[0] != w[1]));
        // The first value after a run boundary is the low 12 bits of a fresh draw.
        let big = spec("big.weight", &[(1 << 22) + 1]);
        let e16 = Encoded::new(StoredDtype::Bf16);
        let v = e16.values(&big, 0);
        let mut rng = SplitMix(name_hash("big.weight"));
        // 4 Mi values = 838860 groups of five + one group of four, then the next run.
        for _ in 0..(1usize << 22).div_ceil(5) {
            rng.next();
        }
        let level = (rng.next() & 0xfff) as usize;
        assert_eq!(&v[(1 << 22) * 2..], &e16.levels[level * 2..level * 2 + 2]);
    }

    /// The file is `file_bytes` long and its header is `header`, read back by the crate: names
    /// sorted, dtype, shapes, offsets; norm weights hold 1.0; its mode is a new file's.
    #[test]
    fn written_file_matches_its_planned_header() {
        let tensors = [
            spec("z.norm.weight", &[4]),
            spec("a.proj.weight", &[2, 3]),
            spec("m.proj.bias", &[5]),
        ];
        let refs: Vec<&TensorSpec> = tensors.iter().collect();
        let dir = std::env::temp_dir().join(format!("xtask-shards-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("s.safetensors");
        let data = write_shard(&path, &refs, StoredDtype::F16, 3).expect("write");
        assert_eq!(data, (4 + 6 + 5) * 2);
        let bytes = std::fs::read(&path).expect("read");
        let listed = read_tensor_list(&path).expect("header");
        let created = File::create(dir.join("probe")).expect("probe file");
        assert_eq!(
            std::fs::metadata(&path).expect("written").permissions(),
            created.metadata().expect("probe").permissions(),
            "the shard has the mode of a newly created file, not the temporary file's"
        );
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(
            bytes.len() as u64,
            file_bytes(&refs, StoredDtype::F16).expect("size")
        );
        let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
        let planned = header(&refs, StoredDtype::F16).expect("header");
        let written: serde_json::Value =
            serde_json::from_slice(&bytes[8..8 + n]).expect("JSON header");
        assert_eq!(
            written,
            serde_json::to_value(&planned).expect("header serialises")
        );
        assert_eq!(written["__metadata__"]["format"], "pt");
        assert_eq!(
            written["z.norm.weight"]["data_offsets"],
            serde_json::json!([22, 30])
        );
        let names: Vec<&str> = listed.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a.proj.weight", "m.proj.bias", "z.norm.weight"]);
        assert_eq!(listed[0].shape, [2, 3]);
        let norm = &bytes[8 + n + 22..];
        assert!(norm
            .chunks_exact(2)
            .all(|b| b == half::f16::ONE.to_le_bytes()));
    }
}
