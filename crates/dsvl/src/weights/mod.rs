//! Memory-mapped safetensors checkpoints (single file or sharded via the index), exposed to the
//! model constructors as a candle `VarBuilder` over canonical (original-layout) names.
//!
//! The backend records every tensor the model asks for. After construction, [`Checkpoint::finish`]
//! reports missing, wrongly shaped and unexpected tensors as typed errors naming the tensor, the
//! file and the expected shape.

pub mod keymap;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use rayon::prelude::*;

use crate::error::{CheckpointLayout, Error, Result};
use keymap::{HfNaming, Source};

/// Called with (bytes loaded so far, total bytes) while tensors are read.
pub type Progress = Arc<dyn Fn(u64, u64) + Send + Sync>;

struct Shard {
    path: PathBuf,
    st: MmapedSafetensors,
}

/// The tensors of one model directory.
pub struct Checkpoint {
    dir: PathBuf,
    layout: CheckpointLayout,
    hf: HfNaming,
    shards: Vec<Shard>,
    /// stored name → (shard index, byte size)
    index: HashMap<String, (usize, u64)>,
    total_bytes: u64,
    state: Mutex<LoadState>,
    progress: Option<Progress>,
}

#[derive(Default)]
struct LoadState {
    used: HashSet<String>,
    loaded_bytes: u64,
    since_trim: u64,
    first_error: Option<Error>,
}

/// Checkpoint bytes read between two returns of freed memory to the OS during a load.
const TRIM_EVERY_BYTES: u64 = 256 << 20;

/// Lists the safetensors files of a model directory: the index's shards, or `model.safetensors`.
pub fn checkpoint_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        #[derive(serde::Deserialize)]
        struct Index {
            weight_map: BTreeMap<String, String>,
        }
        let idx: Index = crate::config::read_json(&index)?;
        let mut files: Vec<String> = idx.weight_map.into_values().collect();
        files.sort();
        files.dedup();
        // Shards are files of the model directory, named without a path (as every published
        // index has them); an index is not a way to read files elsewhere.
        if let Some(f) = files.iter().find(|f| !is_plain_file_name(f)) {
            return Err(crate::config::config_err(
                &index,
                format!(
                    "weight_map names the shard `{f}`, which is not a file name in the model \
                     directory; the index is corrupt, re-download it"
                ),
            ));
        }
        return Ok(files.into_iter().map(|f| dir.join(f)).collect());
    }
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    Err(Error::Config {
        path: dir.to_path_buf(),
        message: "no model.safetensors or model.safetensors.index.json; the weights are missing \
                  (only safetensors checkpoints are supported)"
            .into(),
    })
}

/// A name of a file directly inside a directory: one normal path component (no `/`, `\`, `..`,
/// root or drive prefix).
fn is_plain_file_name(name: &str) -> bool {
    let mut parts = Path::new(name).components();
    matches!(
        (parts.next(), parts.next()),
        (Some(std::path::Component::Normal(_)), None)
    ) && !name.contains('\\')
}

impl Checkpoint {
    /// Memory-maps every shard and reads their headers (no tensor data is touched).
    pub fn open(dir: &Path, layout: CheckpointLayout, progress: Option<Progress>) -> Result<Self> {
        let mut shards = Vec::new();
        let mut index = HashMap::new();
        let mut total_bytes = 0;
        for path in checkpoint_files(dir)? {
            if !path.is_file() {
                return Err(Error::Safetensors {
                    path: path.clone(),
                    message: "file listed in model.safetensors.index.json is missing".into(),
                });
            }
            // SAFETY: the file is mapped read-only; like every mmap-based loader we assume it is
            // not truncated or rewritten while the process runs.
            let st = unsafe { MmapedSafetensors::new(&path) }.map_err(|e| Error::Safetensors {
                path: path.clone(),
                message: e.to_string(),
            })?;
            let i = shards.len();
            for (name, view) in st.tensors() {
                let bytes = view.data().len() as u64;
                total_bytes += bytes;
                index.insert(name, (i, bytes));
            }
            shards.push(Shard { path, st });
        }
        let hf = HfNaming {
            siglip_double_prefix: index
                .keys()
                .any(|k| k.starts_with("model.vision_model.vision_model.")),
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            layout,
            hf,
            shards,
            index,
            total_bytes,
            state: Mutex::new(LoadState::default()),
            progress,
        })
    }

    /// Stored tensor names (for `inspect`).
    pub fn stored_names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(|s| s.as_str())
    }

    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// The stored dtype of one tensor, if present.
    pub fn stored_dtype(&self, name: &str) -> Option<String> {
        let (i, _) = self.index.get(name)?;
        self.shards[*i]
            .st
            .get(name)
            .ok()
            .map(|v| format!("{:?}", v.dtype()))
    }

    /// Loads one stored tensor by its stored name, with its stored shape, converted to `dtype`
    /// on the CPU: what a model constructor's request for it does, without the model (the fuzz
    /// targets' and `tests/`' entry point into malformed checkpoints).
    #[doc(hidden)]
    pub fn load_stored_as(&self, name: &str, dtype: DType) -> Result<Tensor> {
        let shape = match self.index.get(name) {
            Some(&(i, _)) => self.shards[i]
                .st
                .get(name)
                .map(|v| Shape::from(v.shape().to_vec()))
                .unwrap_or_else(|_| Shape::from(())),
            None => Shape::from(()),
        };
        let t = self.load_stored(name, name, &shape, dtype)?;
        Ok(t.to_dtype(dtype)?)
    }

    /// A `VarBuilder` whose names are canonical (original-layout) keys.
    pub fn var_builder(self: &Arc<Self>, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(Backend(self.clone())), dtype, device.clone())
    }

    /// Turns a construction failure into the typed error the backend recorded (if any), and checks
    /// that every stored tensor was used or is on the known-unused list.
    pub fn finish<T>(&self, built: candle_core::Result<T>) -> Result<T> {
        self.finish_under(built, "")
    }

    /// [`Self::finish`] for a part of the checkpoint: only stored tensors whose names start with
    /// `prefix` (e.g. `language.`) must have been used. For loading one component on its own.
    pub fn finish_under<T>(&self, built: candle_core::Result<T>, prefix: &str) -> Result<T> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = state.first_error.take() {
            return Err(e);
        }
        let value = built?;
        let mut unexpected: Vec<String> = self
            .index
            .keys()
            .filter(|k| {
                k.starts_with(prefix)
                    && !state.used.contains(*k)
                    && !keymap::is_known_unused(self.layout, k)
            })
            .cloned()
            .collect();
        if !unexpected.is_empty() {
            unexpected.sort();
            return Err(Error::UnexpectedTensors {
                dir: self.dir.clone(),
                names: unexpected,
                layout: self.layout,
            });
        }
        Ok(value)
    }

    fn record_error(&self, e: Error) -> candle_core::Error {
        let msg = e.to_string();
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.first_error.get_or_insert(e);
        candle_core::Error::Msg(msg)
    }

    /// Loads a stored tensor. 16-bit float data wanted as f32 or bf16 is converted here, in
    /// parallel, from the mapped file into memory advised for huge pages (candle's element-wise
    /// cast is single-threaded and several times slower on multi-GB checkpoints, and its
    /// buffers fault in 4 KiB at a time); other combinations go through candle.
    fn load_stored(
        &self,
        name: &str,
        canonical: &str,
        expected: &Shape,
        want: DType,
    ) -> Result<Tensor> {
        let Some(&(i, bytes)) = self.index.get(name) else {
            return Err(Error::MissingTensor {
                dir: self.dir.clone(),
                name: if name == canonical {
                    name.to_string()
                } else {
                    format!("{name} (canonical {canonical})")
                },
                layout: self.layout,
                expected: expected.dims().to_vec(),
            });
        };
        let shard = &self.shards[i];
        let st_err = |e: &dyn std::fmt::Display| Error::Safetensors {
            path: shard.path.clone(),
            message: format!("tensor `{name}`: {e}"),
        };
        let view = shard.st.get(name).map_err(|e| st_err(&e))?;
        use safetensors::Dtype as Stored;
        let data = view.data();
        let shape = view.shape();
        let t = match (view.dtype(), want) {
            (Stored::F16, DType::F32) => cpu_tensor(to_f32(&halves::<f16>(data)), shape)?,
            (Stored::BF16, DType::F32) => cpu_tensor(to_f32(&halves::<bf16>(data)), shape)?,
            (Stored::F16, DType::BF16) => cpu_tensor(to_bf16(&halves::<f16>(data)), shape)?,
            (Stored::BF16, DType::BF16) => cpu_tensor(copy_bf16(&halves::<bf16>(data)), shape)?,
            _ => shard.st.load(name, &Device::Cpu).map_err(|e| st_err(&e))?,
        };
        release_mapped_pages(view.data());
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.used.insert(name.to_string());
        state.loaded_bytes += bytes;
        state.since_trim += bytes;
        if state.since_trim >= TRIM_EVERY_BYTES {
            // What the model constructors converted and freed so far (dtype conversions,
            // quantization inputs) goes back to the OS as the load goes, so the load's peak stays
            // near what the model keeps instead of growing with the checkpoint.
            state.since_trim = 0;
            crate::memory::release_freed();
        }
        if let Some(cb) = &self.progress {
            cb(state.loaded_bytes, self.total_bytes);
        }
        Ok(t)
    }

    fn shape_error(&self, name: &str, expected: &Shape, actual: &[usize]) -> Error {
        let path = self
            .index
            .get(name)
            .map(|(i, _)| self.shards[*i].path.clone())
            .unwrap_or_else(|| self.dir.clone());
        Error::TensorShape {
            path,
            name: name.to_string(),
            expected: expected.dims().to_vec(),
            actual: actual.to_vec(),
        }
    }

    /// Loads the canonical tensor `canonical` with the given shape, converted to `dtype` on `dev`.
    fn get(&self, shape: &Shape, canonical: &str, dtype: DType, dev: &Device) -> Result<Tensor> {
        let t = match keymap::source(self.layout, canonical, &self.hf) {
            Source::Name(n) => {
                let t = self.load_stored(&n, canonical, shape, dtype)?;
                if t.dims() != shape.dims() {
                    return Err(self.shape_error(&n, shape, t.dims()));
                }
                t
            }
            Source::Unsqueeze0(n) => {
                let t = self.load_stored(&n, canonical, shape, dtype)?;
                let want = &shape.dims()[1..];
                if shape.dims().first() != Some(&1) || t.dims() != want {
                    return Err(self.shape_error(&n, &Shape::from(want), t.dims()));
                }
                t.unsqueeze(0)?
            }
            Source::Concat0(names) => {
                let d0 = shape.dims().first().copied().unwrap_or(0);
                let mut part = shape.dims().to_vec();
                part[0] = d0 / names.len();
                let part = Shape::from(part);
                let mut parts = Vec::with_capacity(names.len());
                for n in &names {
                    let t = self.load_stored(n, canonical, &part, dtype)?;
                    if t.dims() != part.dims() {
                        return Err(self.shape_error(n, &part, t.dims()));
                    }
                    parts.push(t);
                }
                Tensor::cat(&parts, 0)?
            }
        };
        Ok(t.to_dtype(dtype)?.to_device(dev)?)
    }
}

/// Drops the mapped file pages of a tensor that has just been copied out, so that the process's
/// resident memory during a load is what the model keeps plus one tensor, not also every byte of
/// the checkpoint read so far (the pages stay in the kernel's page cache, and a later read of the
/// same bytes faults them back in unchanged).
fn release_mapped_pages(data: &[u8]) {
    #[cfg(unix)]
    {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        let Ok(page) = usize::try_from(page) else {
            return;
        };
        if page == 0 {
            return;
        }
        let start = (data.as_ptr() as usize).div_ceil(page) * page;
        let end = (data.as_ptr() as usize + data.len()) / page * page;
        if end > start {
            // SAFETY: [start, end) lies inside a read-only file mapping that outlives this call;
            // MADV_DONTNEED on such a mapping only unmaps the pages, and any later access reads
            // the same file contents again. Failure is harmless, so the result is ignored.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
            }
        }
    }
    #[cfg(not(unix))]
    let _ = data;
}

struct Backend(Arc<Checkpoint>);

impl SimpleBackend for Backend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.0
            .get(&s, name, dtype, dev)
            .map_err(|e| self.0.record_error(e))
    }

    fn get_unchecked(
        &self,
        name: &str,
        _dtype: DType,
        _dev: &Device,
    ) -> candle_core::Result<Tensor> {
        Err(self.0.record_error(Error::Unsupported {
            what: format!("loading `{name}` without a known shape"),
            hint: "internal: every module must give the expected shape".into(),
        }))
    }

    fn contains_tensor(&self, name: &str) -> bool {
        match keymap::source(self.0.layout, name, &self.0.hf) {
            Source::Name(n) | Source::Unsqueeze0(n) => self.0.index.contains_key(&n),
            Source::Concat0(ns) => ns.iter().all(|n| self.0.index.contains_key(n)),
        }
    }
}

/// The 16-bit float types a checkpoint stores: every bit pattern is a value.
trait Half: Copy + Send + Sync + 'static {
    fn from_bits(bits: u16) -> Self;
    /// `half`'s vectorised (F16C where the CPU has it) exact widening of a slice.
    fn widen_into(src: &[Self], dst: &mut [f32]);
}

macro_rules! impl_half {
    ($($t:ty),*) => {$(
        impl Half for $t {
            fn from_bits(bits: u16) -> Self {
                <$t>::from_bits(bits)
            }
            fn widen_into(src: &[Self], dst: &mut [f32]) {
                src.convert_to_f32_slice(dst)
            }
        }
    )*};
}
impl_half!(f16, bf16);

/// Little-endian 16-bit float bytes as values: the mapped file itself when it is 2-byte aligned
/// (it is in files safetensors writes), else a copy.
fn halves<T: Half>(bytes: &[u8]) -> Cow<'_, [T]> {
    // SAFETY: `T` is f16 or bf16 (`Half` is private), `repr(transparent)` over u16, for which
    // every bit pattern is valid; `align_to` only reinterprets the aligned middle.
    match unsafe { bytes.align_to::<T>() } {
        ([], values, []) if cfg!(target_endian = "little") => Cow::Borrowed(values),
        _ => Cow::Owned(
            bytes
                .chunks_exact(2)
                .map(|b| T::from_bits(u16::from_le_bytes([b[0], b[1]])))
                .collect(),
        ),
    }
}

fn cpu_tensor<T: candle_core::WithDType>(values: Vec<T>, shape: &[usize]) -> Result<Tensor> {
    Ok(Tensor::from_vec(values, shape, &Device::Cpu)?)
}

/// Elements converted per parallel task.
const CONVERT_CHUNK: usize = 1 << 18;

/// 16-bit floats → f32 (exact), in parallel, into huge-page-backed memory
/// ([`crate::memory::huge_page_vec_f32`]).
fn to_f32<T: Half>(src: &[T]) -> Vec<f32> {
    let mut dst = crate::memory::huge_page_vec_f32(src.len());
    dst.par_chunks_mut(CONVERT_CHUNK)
        .zip(src.par_chunks(CONVERT_CHUNK))
        .for_each(|(d, s)| T::widen_into(s, d));
    dst
}

/// bf16 values copied unchanged (NaN payloads included), in parallel, into huge-page-backed
/// memory.
fn copy_bf16(src: &[bf16]) -> Vec<bf16> {
    let mut dst = crate::memory::huge_page_vec_bf16(src.len());
    dst.par_chunks_mut(CONVERT_CHUNK)
        .zip(src.par_chunks(CONVERT_CHUNK))
        .for_each(|(d, s)| d.copy_from_slice(s));
    dst
}

/// 16-bit floats → bf16 as candle's cast does it (through f32, rounded to nearest even), in
/// parallel, into huge-page-backed memory.
fn to_bf16<T: Half>(src: &[T]) -> Vec<bf16> {
    let mut dst = crate::memory::huge_page_vec_bf16(src.len());
    dst.par_chunks_mut(CONVERT_CHUNK)
        .zip(src.par_chunks(CONVERT_CHUNK))
        .for_each(|(d, s)| {
            let mut wide = vec![0f32; s.len()];
            T::widen_into(s, &mut wide);
            d.iter_mut()
                .zip(&wide)
                .for_each(|(d, &w)| *d = bf16::from_f32(w))
        });
    dst
}

#[cfg(test)]
mod tests {
    use super::{copy_bf16, halves, to_bf16, to_f32};
    use candle_core::{DType, Device, Tensor};
    use half::{bf16, f16};

    fn bits<T: candle_core::WithDType>(t: &Tensor) -> Vec<T> {
        t.flatten_all().unwrap().to_vec1::<T>().unwrap()
    }

    /// The conversions from a checkpoint's 16-bit floats give exactly candle's casts (f16 and
    /// bf16 to f32, f16 to bf16 rounded to nearest even), bf16 is copied bit for bit, from aligned and
    /// unaligned bytes, across chunk boundaries; subnormals, infinities and NaNs included.
    #[test]
    fn half_conversions_equal_candles_casts() {
        let n = (1 << 18) + 12_345;
        let patterns: Vec<u16> = (0..n as u32)
            .map(|i| (i.wrapping_mul(40_503) >> 3) as u16)
            .collect();
        let mut bytes = vec![0u8];
        bytes.extend(patterns.iter().flat_map(|h| h.to_le_bytes()));
        // The allocator aligns the vector, so its bytes from offset 1 are at an odd address
        // (the copying path); a copy of them is aligned (the borrowing path).
        let unaligned = &bytes[1..];
        let aligned = unaligned.to_vec();
        let dev = Device::Cpu;
        let f16s = Tensor::from_vec(
            patterns
                .iter()
                .map(|&b| f16::from_bits(b))
                .collect::<Vec<_>>(),
            n,
            &dev,
        )
        .unwrap();
        let bf16s = Tensor::from_vec(
            patterns
                .iter()
                .map(|&b| bf16::from_bits(b))
                .collect::<Vec<_>>(),
            n,
            &dev,
        )
        .unwrap();
        let as_bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let bf_bits = |v: &[bf16]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        // Equal, or the first index where not (the vectors are too long to print).
        let same = |a: Vec<u32>, b: Vec<u32>| {
            a.iter()
                .zip(&b)
                .position(|(x, y)| x != y)
                .map_or(a.len() == b.len(), |i| {
                    panic!("differ at {i}: {:#x} vs {:#x}", a[i], b[i])
                })
        };
        let same16 = |a: Vec<u16>, b: &[u16]| {
            same(
                a.iter().map(|&x| x.into()).collect(),
                b.iter().map(|&x| x.into()).collect(),
            )
        };
        for b in [unaligned, aligned.as_slice()] {
            let h = halves::<f16>(b);
            let cast = |t: &Tensor, d| t.to_dtype(d).unwrap();
            assert!(same(
                as_bits(&to_f32(&h)),
                as_bits(&bits::<f32>(&cast(&f16s, DType::F32)))
            ));
            let want = bf_bits(&bits::<bf16>(&cast(&f16s, DType::BF16)));
            assert!(same16(bf_bits(&to_bf16(&h)), &want));
            let h = halves::<bf16>(b);
            assert!(same(
                as_bits(&to_f32(&h)),
                as_bits(&bits::<f32>(&cast(&bf16s, DType::F32)))
            ));
            assert!(same16(bf_bits(&copy_bf16(&h)), &patterns));
        }
    }
}
