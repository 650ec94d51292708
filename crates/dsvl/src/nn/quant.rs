//! Load-time weight quantization of linear layers (issue #4 item 4): GGML `q8_0` and `q4_k`
//! blocks multiplied with integer dot products (`dsvl_kernels::quant`: AVX2, AVX512-VNNI),
//! so a decode step reads 8.5 or 4.5 bits per weight instead of 32 (f32) or 16 (bf16).
//!
//! A weight `[out, in]` is cut into blocks along `in` (the dot-product dimension): 32 values per
//! `q8_0` block (one f16 scale, 32 i8), 256 per `q4_k` super-block (f16 scale and min, 8 six-bit
//! sub-scales and mins, 256 four-bit values). A decode step quantizes the activation rows to 8
//! bits as well (`q8_0` or `q8_K` blocks) and accumulates integer dot products, so the output
//! differs from the float matmul by the weight rounding plus the activation rounding; a prefill
//! multiplies the dequantized weight in f32 (weight rounding only).
//!
//! A layer whose `in` is not a multiple of 32 fits no block format and stays in the compute
//! dtype (never fails). Under `q4_k`, an `in` that is a multiple of 32 but not of 256 is stored
//! with its rows zero-padded to whole super-blocks when that is still smaller than `q8_0`
//! (DeepSeek-VL2 tiny's and small's expert widths 896 and 1408: 1024 and 1536 stored, 12–14 %
//! more than unpadded q4_k, 40 % less than q8_0), else as `q8_0`. [`QuantReport`] counts what
//! each layer became.

use std::sync::Arc;

use candle_core::quantized::k_quants::{self, BlockQ4K, BlockQ8_0, GgmlType};
use candle_core::quantized::{QStorage, QTensor, QuantizedType};
use candle_core::{DType, Device, Result, Tensor};
use dsvl_kernels::quant as kq;

use super::linear::{linear_from_weight, Linear, LinearWeight};
use super::rowmat;

/// A GGML block format for linear weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Quant {
    /// 32 weights per block: an f16 scale and 32 signed bytes (8.5 bits per weight).
    Q8_0,
    /// 256 weights per super-block: 4-bit values with 6-bit scales and mins per 32 (4.5 bits
    /// per weight).
    Q4K,
}

impl Quant {
    /// Weights per block; a layer's input width must be a multiple of it.
    pub fn block_size(self) -> usize {
        match self {
            Quant::Q8_0 => BlockQ8_0::BLCK_SIZE,
            Quant::Q4K => BlockQ4K::BLCK_SIZE,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            Quant::Q8_0 => std::mem::size_of::<BlockQ8_0>(),
            Quant::Q4K => std::mem::size_of::<BlockQ4K>(),
        }
    }

    /// Storage cost in bits per weight (8.5 and 4.5).
    pub fn bits_per_weight(self) -> f64 {
        8.0 * self.block_bytes() as f64 / self.block_size() as f64
    }

    /// The name used on the command line and in reports (`q8_0`, `q4_k`).
    pub fn name(self) -> &'static str {
        match self {
            Quant::Q8_0 => "q8_0",
            Quant::Q4K => "q4_k",
        }
    }

    /// What a layer with input width `in_dim` is stored as when `self` is asked for, or `None`
    /// (the compute dtype). Widths that are not a multiple of 32 fit no format. `q4_k` takes a
    /// width that is not a multiple of 256 by padding each row with zeros up to one (see
    /// [`Quant::stored_width`]) when that still stores fewer bytes than `q8_0`, which covers
    /// DeepSeek-VL2's expert widths 896 (tiny) and 1408 (small); otherwise it falls back to
    /// `q8_0`.
    pub fn for_input_width(self, in_dim: usize) -> Option<Quant> {
        if in_dim == 0 || !in_dim.is_multiple_of(Quant::Q8_0.block_size()) {
            return None;
        }
        let bytes = |q: Quant| q.stored_width(in_dim) / q.block_size() * q.block_bytes();
        match self {
            Quant::Q4K if bytes(Quant::Q4K) < bytes(Quant::Q8_0) => Some(Quant::Q4K),
            _ => Some(Quant::Q8_0),
        }
    }

    /// The row width a layer of input width `in_dim` is stored with: `in_dim` rounded up to
    /// whole blocks. The extra weights are zero, and so are the inputs they meet (the input
    /// rows are padded the same way at matmul time), so they add nothing to the products; each
    /// block's scale comes from its own values, so the real weights round exactly as they
    /// would in an unpadded row.
    pub fn stored_width(self, in_dim: usize) -> usize {
        in_dim.next_multiple_of(self.block_size())
    }
}

impl std::fmt::Display for Quant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Which linear layers of a language model are quantized, and to what.
///
/// `quant` covers the decoder layers' linears: attention projections (MHA `q/k/v/o_proj`; MLA
/// `q_proj`, `kv_a_proj_with_mqa`, `o_proj`), the dense MLPs and the MoE experts (routed and
/// shared). Never quantized: the token embedding, the norms, the MoE router (`gate`, kept in
/// f32 so the expert choice matches the float model), and MLA's `kv_b_proj` (its per-head
/// sub-blocks are multiplied directly in the absorbed form, not used as one linear). `lm_head`
/// only with `lm_head: true`: it is where most of the remaining accuracy is lost, and with the
/// embedding it is a large part of the small models' weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QuantPlan {
    pub quant: Option<Quant>,
    pub lm_head: bool,
}

impl QuantPlan {
    /// Plain float weights everywhere (the default).
    pub const NONE: QuantPlan = QuantPlan {
        quant: None,
        lm_head: false,
    };

    /// The format asked for the decoder layers' linears.
    pub fn layers(self) -> Option<Quant> {
        self.quant
    }

    /// The format asked for `lm_head`.
    pub fn head(self) -> Option<Quant> {
        self.quant.filter(|_| self.lm_head)
    }
}

/// What a loaded linear layer's weight is stored as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinearStorage {
    Float(DType),
    Quant(Quant),
}

/// A bias-free linear from `weight` `[out, in]`, stored as `quant` (with the fallback of
/// [`Quant::for_input_width`]) or, for `None`, exactly as [`linear_from_weight`] stores it.
pub fn linear_from_weight_quant(weight: &Tensor, quant: Option<Quant>) -> Result<Linear> {
    let (_, in_dim) = weight.dims2()?;
    match quant.and_then(|q| q.for_input_width(in_dim)) {
        None => linear_from_weight(weight),
        Some(q) => Ok(Linear {
            weight: LinearWeight::Quant(QuantWeight::quantize(weight, q)?),
            bias: None,
        }),
    }
}

/// GGML blocks of a weight `[out, in]`, row-major: each output row is `in / block_size`
/// consecutive blocks.
enum Blocks {
    Q8_0(Vec<BlockQ8_0>),
    Q4K(Vec<BlockQ4K>),
}

// candle's blocks and `dsvl_kernels::quant`'s have the same `#[repr(C)]` layout (GGML's):
// `{ d: f16, qs: [i8; 32] }` and `{ d, dmin: f16, scales: [u8; 12], qs: [u8; 128] }`.
const _: () = {
    use std::mem::{align_of, size_of};
    assert!(size_of::<BlockQ8_0>() == size_of::<kq::BlockQ8_0>());
    assert!(align_of::<BlockQ8_0>() == align_of::<kq::BlockQ8_0>());
    assert!(size_of::<BlockQ4K>() == size_of::<kq::BlockQ4K>());
    assert!(align_of::<BlockQ4K>() == align_of::<kq::BlockQ4K>());
};

impl Blocks {
    /// The same blocks, borrowed as the kernels' block types (no copy).
    fn kernel_view(&self) -> kq::QWeight<'_> {
        match self {
            // SAFETY: the two block types have the same `#[repr(C)]` fields in the same order
            // (`half::f16` in both), hence the same size, alignment and bytes (checked above);
            // the view borrows `self`.
            Blocks::Q8_0(b) => {
                kq::QWeight::Q8_0(unsafe { std::slice::from_raw_parts(b.as_ptr().cast(), b.len()) })
            }
            // SAFETY: as above.
            Blocks::Q4K(b) => {
                kq::QWeight::Q4K(unsafe { std::slice::from_raw_parts(b.as_ptr().cast(), b.len()) })
            }
        }
    }
}

/// A quantized weight `[out, in]` (stored `[out, quant.stored_width(in)]`, zero-padded) and
/// how to multiply by it.
///
/// The blocks are the only copy of the weight. candle's own quantized matmul (`QTensor`) is not
/// used: on x86 it builds a second, expanded copy of every `q4_k` weight (and, with VNNI, of every
/// `q8_0` weight) the first time the weight is used, 6 bits per weight on top of the 4.5 stored,
/// which more than doubles the resident size of a `q4_k` model after its first request and makes
/// every decode step read the expanded copy.
#[derive(Clone)]
pub(super) struct QuantWeight {
    blocks: Arc<Blocks>,
    quant: Quant,
    /// `(out, in)`.
    dims: (usize, usize),
    /// Row width as stored: `in` rounded up to whole blocks.
    stored_in: usize,
}

impl QuantWeight {
    /// `weight` `[out, in]` (any float dtype), rows zero-padded to whole blocks.
    fn quantize(weight: &Tensor, quant: Quant) -> Result<Self> {
        let dims = weight.dims2()?;
        let stored_in = quant.stored_width(dims.1);
        let weight = weight.to_dtype(DType::F32)?;
        let weight = match stored_in - dims.1 {
            0 => weight,
            pad => weight.pad_with_zeros(1, 0, pad)?,
        };
        let values = weight.flatten_all()?.to_vec1::<f32>()?;
        let blocks = match quant {
            Quant::Q8_0 => Blocks::Q8_0(quantize_blocks(&values)),
            Quant::Q4K => Blocks::Q4K(quantize_blocks(&values)),
        };
        Ok(Self {
            blocks: Arc::new(blocks),
            quant,
            dims,
            stored_in,
        })
    }

    /// Whether the rows are stored zero-padded.
    pub(super) fn padded(&self) -> bool {
        self.stored_in != self.dims.1
    }

    pub(super) fn dims(&self) -> (usize, usize) {
        self.dims
    }
    pub(super) fn quant(&self) -> Quant {
        self.quant
    }
    pub(super) fn bytes(&self) -> u64 {
        let blocks = match &*self.blocks {
            Blocks::Q8_0(b) => b.len(),
            Blocks::Q4K(b) => b.len(),
        };
        (blocks * self.quant.block_bytes()) as u64
    }

    /// `x` `[rows, in]` → `x · Wᵀ` `[rows, out]` in `x`'s dtype, computed on the CPU.
    ///
    /// Up to [`rowmat::MAX_ROWS`] rows (decode steps, alone or batched): each row is quantized
    /// to 8-bit blocks and dotted with the weight blocks in integer arithmetic
    /// (q8_0: `dsvl_kernels::quant::matmul_t`, the same quantized activations and integer sums
    /// as candle's `k_quants::matmul` with a fixed float order of its own; q4_k, and any format
    /// on a CPU where the kernels have no SIMD path: candle's), reading the weight once per call. Every output element depends only on its own row and weight row, so a
    /// sequence gets the same values alone or batched. More rows (prefill): candle's tiled int8 GEMM where it has one
    /// ([`has_fast_gemm`]), on a copy made for the call, else the weight dequantized to f32 and
    /// one float GEMM, which reuses each weight many times and beats a dot product per row and
    /// column.
    pub(super) fn matmul_t(&self, x: &Tensor) -> Result<Tensor> {
        let (rows, k) = x.dims2()?;
        let (n, in_dim) = self.dims;
        if k != in_dim {
            candle_core::bail!("quantized linear expects {in_dim} inputs, got {k}");
        }
        let dtype = x.dtype();
        let x = x.to_dtype(DType::F32)?;
        let (x, k) = match self.stored_in - k {
            0 => (x, k),
            pad => (x.pad_with_zeros(1, 0, pad)?, self.stored_in),
        };
        if rows > rowmat::MAX_ROWS {
            if has_fast_gemm(self.quant, n, k) {
                // candle's tiled int8 GEMM, on a copy of the blocks that lives for this call
                // only: the expanded tiles it builds go with it.
                let copy: Box<dyn QuantizedType> = match &*self.blocks {
                    Blocks::Q8_0(b) => Box::new(b.clone()),
                    Blocks::Q4K(b) => Box::new(b.clone()),
                };
                let w = QTensor::new(QStorage::Cpu(copy), (n, k))?;
                return x.contiguous()?.apply_op1_no_bwd(&w)?.to_dtype(dtype);
            }
            return x.matmul(&self.dequantize()?.t()?)?.to_dtype(dtype);
        }
        let xs = x.flatten_all()?.to_vec1::<f32>()?;
        let mut y = vec![0f32; rows * n];
        // Ours for q8_0 where we have a SIMD path (1.56x candle's decode on a quiet Zen 4,
        // BENCHMARKS.md); candle's block dot products for q4_k (ours measured 7-9 % slower
        // there: its kernel is compute-bound on one core) and below AVX2 / on aarch64 (NEON).
        if kq::path() == kq::Path::Portable || self.quant == Quant::Q4K {
            match &*self.blocks {
                Blocks::Q8_0(w) => k_quants::matmul((rows, k, n), &xs, w, &mut y)?,
                Blocks::Q4K(w) => k_quants::matmul((rows, k, n), &xs, w, &mut y)?,
            }
        } else {
            kq::matmul_t(&xs, rows, k, self.blocks.kernel_view(), n, &mut y);
        }
        Tensor::from_vec(y, (rows, n), x.device())?.to_dtype(dtype)
    }

    /// The weight as stored, f32 `[out, stored_in]`, dequantized over the threads.
    fn dequantize(&self) -> Result<Tensor> {
        let values = match &*self.blocks {
            Blocks::Q8_0(b) => dequantize_blocks(b),
            Blocks::Q4K(b) => dequantize_blocks(b),
        };
        Tensor::from_vec(values, (self.dims.0, self.stored_in), &Device::Cpu)
    }
}

/// Whether candle 0.11 has a tiled many-row kernel for `quant` at `[n, k]` on this CPU: its x86
/// repacked tiles (`quantized::repack_x86::select`) take `n % 16 == 0`, `k % 256 == 0`, AVX2 for
/// `q4_k` and VNNI (AVX512-VNNI or AVX-VNNI) for `q8_0`; on aarch64 it has packed kernels for
/// both. Elsewhere its many-row path is a dot product per row and column that re-reads the
/// whole weight for every row (`q8_0` prefill on an AVX2 CPU ran at 4 tokens/s against 15 in
/// f32), and the dequantized GEMM is faster.
fn has_fast_gemm(quant: Quant, n: usize, k: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let tiles = n.is_multiple_of(16) && k.is_multiple_of(256);
        let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
        let vnni = (is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vnni"))
            || (avx2 && is_x86_feature_detected!("avxvnni"));
        match quant {
            Quant::Q4K => tiles && avx2,
            Quant::Q8_0 => tiles && vnni,
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        let _ = (quant, n, k);
        true
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        let _ = (quant, n, k);
        false
    }
}

/// candle's dequantizer for `T`, over the threads (candle runs it on one).
fn dequantize_blocks<T: GgmlType>(blocks: &[T]) -> Vec<f32> {
    let mut out = vec![0f32; blocks.len() * T::BLCK_SIZE];
    let per = blocks_per_thread(blocks.len());
    std::thread::scope(|s| {
        for (xs, ys) in blocks.chunks(per).zip(out.chunks_mut(per * T::BLCK_SIZE)) {
            s.spawn(move || T::to_float(xs, ys));
        }
    });
    out
}

/// Blocks per CPU thread when `n_blocks` are split into one contiguous range per thread.
fn blocks_per_thread(n_blocks: usize) -> usize {
    let threads = candle_core::utils::get_num_threads().clamp(1, n_blocks.max(1));
    n_blocks.div_ceil(threads).max(1)
}

/// candle's quantizer for `T`, over the threads; the same blocks as `QTensor::quantize`.
fn quantize_blocks<T: GgmlType>(values: &[f32]) -> Vec<T> {
    let n_blocks = values.len() / T::BLCK_SIZE;
    let mut blocks = vec![T::zeros(); n_blocks];
    let per = blocks_per_thread(n_blocks);
    std::thread::scope(|s| {
        for (xs, ys) in values
            .chunks(per * T::BLCK_SIZE)
            .zip(blocks.chunks_mut(per))
        {
            s.spawn(move || T::from_float(xs, ys));
        }
    });
    blocks
}

#[cfg(test)]
impl Quant {
    fn ggml(self) -> candle_core::quantized::GgmlDType {
        match self {
            Quant::Q8_0 => candle_core::quantized::GgmlDType::Q8_0,
            Quant::Q4K => candle_core::quantized::GgmlDType::Q4K,
        }
    }
}

/// What the linear layers of a loaded language model became.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QuantReport {
    /// The plan the model was loaded with.
    pub plan: QuantPlan,
    /// Linear layers in all (`lm_head` included; a fused gate/up pair counts once).
    pub linears: usize,
    pub q8_0: usize,
    pub q4k: usize,
    /// Kept in the compute dtype (not targeted by the plan, or no block format fits).
    pub float: usize,
    /// Targeted by the plan but stored in another format because the input width does not fit
    /// its blocks (`q4_k` → `q8_0` or float, `q8_0` → float; see [`Quant::for_input_width`]).
    pub fallbacks: usize,
    /// Stored with zero-padded rows ([`Quant::stored_width`]).
    pub padded: usize,
    /// Bytes of all linear weights as stored.
    pub bytes: u64,
}

impl QuantReport {
    pub(crate) fn new(plan: QuantPlan) -> Self {
        Self {
            plan,
            ..Self::default()
        }
    }

    /// Counts `linear`, which the plan asked to store as `asked`.
    pub(crate) fn add(&mut self, linear: &Linear, asked: Option<Quant>) {
        self.linears += 1;
        self.bytes += linear.weight_bytes();
        let stored = linear.storage();
        match stored {
            LinearStorage::Quant(Quant::Q8_0) => self.q8_0 += 1,
            LinearStorage::Quant(Quant::Q4K) => self.q4k += 1,
            LinearStorage::Float(_) => self.float += 1,
        }
        if let Some(q) = asked {
            if stored != LinearStorage::Quant(q) {
                self.fallbacks += 1;
            }
        }
        if let LinearWeight::Quant(q) = &linear.weight {
            self.padded += usize::from(q.padded());
        }
    }

    /// Linear layers stored in a block format.
    pub fn quantized(&self) -> usize {
        self.q8_0 + self.q4k
    }
}

impl std::fmt::Display for QuantReport {
    /// e.g. `q4_k: 144 of 169 linear layers as q4_k, 24 as q8_0 (24 fallbacks), 1 in float; 1.02 GB`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Some(q) = self.plan.quant else {
            return write!(
                f,
                "not quantized: {} linear layers in float, {:.2} GB",
                self.linears,
                self.bytes as f64 / 1e9
            );
        };
        write!(
            f,
            "{q}: {} of {} linear layers quantized (",
            self.quantized(),
            self.linears
        )?;
        let mut parts = Vec::new();
        if self.q4k > 0 {
            parts.push(format!("{} q4_k", self.q4k));
        }
        if self.q8_0 > 0 {
            parts.push(format!("{} q8_0", self.q8_0));
        }
        if self.float > 0 {
            parts.push(format!("{} float", self.float));
        }
        write!(f, "{}", parts.join(", "))?;
        if self.padded > 0 {
            write!(f, "; {} with rows zero-padded to whole blocks", self.padded)?;
        }
        if self.fallbacks > 0 {
            write!(
                f,
                "; {} fell back: input width not a multiple of the block size",
                self.fallbacks
            )?;
        }
        if !self.plan.lm_head {
            write!(f, "; lm_head kept in float")?;
        }
        write!(f, "), {:.2} GB of linear weights", self.bytes as f64 / 1e9)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Module, D};

    fn randn(shape: (usize, usize), seed: u64) -> Result<Tensor> {
        // Deterministic, not candle's global RNG: a small LCG → Box-Muller.
        let n = shape.0 * shape.1;
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let mut next = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        };
        let v: Vec<f32> = (0..n)
            .map(|_| {
                let (u1, u2) = (next(), next());
                ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu)
    }

    fn rel_rms(got: &Tensor, want: &Tensor) -> Result<f32> {
        let err = (got - want)?.sqr()?.mean_all()?.to_scalar::<f32>()?;
        let norm = want.sqr()?.mean_all()?.to_scalar::<f32>()?;
        Ok((err / norm).sqrt())
    }

    #[test]
    fn fallback_follows_the_block_sizes() {
        assert_eq!(Quant::Q4K.for_input_width(2048), Some(Quant::Q4K));
        // DeepSeek-VL2 tiny/small expert widths: q4_k padded to 1024 / 1536 is still smaller
        assert_eq!(Quant::Q4K.for_input_width(896), Some(Quant::Q4K));
        assert_eq!(Quant::Q4K.stored_width(896), 1024);
        assert_eq!(Quant::Q4K.for_input_width(1408), Some(Quant::Q4K));
        assert_eq!(Quant::Q4K.stored_width(1408), 1536);
        assert_eq!(Quant::Q8_0.for_input_width(1408), Some(Quant::Q8_0));
        assert_eq!(Quant::Q8_0.stored_width(1408), 1408);
        // padding one 256-block for 32 values costs more than q8_0 (144 vs 34 bytes)
        assert_eq!(Quant::Q4K.for_input_width(32), Some(Quant::Q8_0));
        assert_eq!(Quant::Q4K.for_input_width(128), Some(Quant::Q8_0));
        assert_eq!(Quant::Q4K.for_input_width(160), Some(Quant::Q4K));
        // the tiny fixtures' hidden size
        assert_eq!(Quant::Q4K.for_input_width(8), None);
        assert_eq!(Quant::Q8_0.for_input_width(8), None);
        assert_eq!(Quant::Q8_0.for_input_width(0), None);
        assert_eq!(Quant::Q8_0.bits_per_weight(), 8.5);
        assert_eq!(Quant::Q4K.bits_per_weight(), 4.5);
    }

    #[test]
    fn too_narrow_layers_stay_float_and_exact() -> Result<()> {
        let w = randn((6, 8), 1)?;
        let x = randn((3, 8), 2)?;
        let plain = linear_from_weight(&w)?;
        for q in [Quant::Q8_0, Quant::Q4K] {
            let l = linear_from_weight_quant(&w, Some(q))?;
            assert_eq!(l.storage(), LinearStorage::Float(DType::F32));
            let (a, b) = (l.forward(&x)?, plain.forward(&x)?);
            assert_eq!(a.to_vec2::<f32>()?, b.to_vec2::<f32>()?);
        }
        Ok(())
    }

    /// Parallel row chunks give the same blocks as candle's one-shot quantizer: Gaussian rows at scales 1e-4..1e2, and constant
    /// (max == min), all-zero, all-negative, outlier, integer-valued and half-integer rows.
    #[test]
    fn parallel_quantization_matches_candle() -> Result<()> {
        let g = randn((42, 512), 3)?;
        let scales: Vec<f32> = (0..42).map(|i| 10f32.powi(i % 7 - 4)).collect();
        let scaled = g.broadcast_mul(&Tensor::from_vec(scales, (42, 1), &Device::Cpu)?)?;
        let mut special = vec![0f32; 8 * 512];
        for (r, row) in special.chunks_mut(512).enumerate() {
            for (i, v) in row.iter_mut().enumerate() {
                let x = i as f32;
                *v = match r {
                    0 => 0.0,
                    1 => 0.3,
                    2 => -2.0 - x / 7.0,
                    3 => -(x % 32.0) / 3.0,
                    4 => f32::from(i == 17) * 1e4,
                    5 => x % 16.0,
                    6 => (x * 0.37).sin(),
                    _ => x % 64.0 + 0.5,
                };
            }
        }
        let special = Tensor::from_vec(special, (8, 512), &Device::Cpu)?;
        for w in [g, Tensor::cat(&[&scaled, &special], 0)?] {
            for q in [Quant::Q8_0, Quant::Q4K] {
                let ours = QuantWeight::quantize(&w, q)?;
                let theirs = QTensor::quantize(&w, q.ggml())?;
                assert_eq!(
                    ours.dequantize()?.flatten_all()?.to_vec1::<f32>()?,
                    theirs
                        .dequantize(&Device::Cpu)?
                        .flatten_all()?
                        .to_vec1::<f32>()?,
                    "{q}"
                );
                assert_eq!(
                    ours.bytes() as usize,
                    w.elem_count() / q.block_size() * q.block_bytes()
                );
                assert_eq!(ours.bytes() as usize, theirs.storage_size_in_bytes());
            }
        }
        Ok(())
    }

    /// The quantized linear against float maths, on random weights and inputs:
    /// 1. against `x · dequant(W)ᵀ` only the activation rounding differs, which is bounded per
    ///    output by `0.6 · (max|x_row| / 127) · Σ_i |ŵ_ji|` (8-bit activation blocks: half a
    ///    step, plus the f16 rounding of a q8_0 block scale, ≤ 127·2⁻¹¹ of a step), plus f32
    ///    accumulation slack;
    /// 2. against the float linear the relative RMS error stays under 1.5 % (q8_0) and 10 %
    ///    (q4_k); measured on Gaussian weights: 0.78 % and 7.5 % (weight and activation
    ///    rounding together; 4 bits with a scale and a min per 32 values leave ~7 % on a
    ///    Gaussian, whatever the rounding search).
    #[test]
    fn quantized_linear_matches_float_within_bounds() -> Result<()> {
        // 896: q4_k rows zero-padded to 1024 (DeepSeek-VL2 tiny's expert width)
        for (out_dim, in_dim, rows) in [(96, 768, 5), (64, 896, 3)] {
            let w = randn((out_dim, in_dim), 4)?;
            let x = randn((rows, in_dim), 5)?;
            let float = linear_from_weight(&w)?.forward(&x)?;
            for (q, rel_gate) in [(Quant::Q8_0, 0.015f32), (Quant::Q4K, 0.10)] {
                let l = linear_from_weight_quant(&w, Some(q))?;
                assert_eq!(l.storage(), LinearStorage::Quant(q));
                assert_eq!(l.out_dim(), out_dim);
                assert_eq!(l.in_dim(), in_dim);
                let LinearWeight::Quant(qw) = &l.weight else {
                    panic!("quantized weight expected");
                };
                let stored = q.stored_width(in_dim);
                assert_eq!(qw.padded(), stored != in_dim);
                assert_eq!(
                    l.weight_bytes() as usize,
                    out_dim * stored / q.block_size() * q.block_bytes()
                );
                let w_full = qw.dequantize()?;
                assert_eq!(w_full.dims(), &[out_dim, stored]);
                if stored > in_dim {
                    let tail = w_full.narrow(1, in_dim, stored - in_dim)?;
                    let max = tail.abs()?.max_all()?.to_scalar::<f32>()?;
                    assert_eq!(max, 0.0, "{q}: the padding must stay zero");
                }
                let w_hat = w_full.narrow(1, 0, in_dim)?.contiguous()?;
                let got = l.forward(&x)?;
                assert_eq!(got.dims(), &[rows, out_dim]);

                // 1. activation rounding only, bounded per output element
                let want = x.matmul(&w_hat.t()?)?;
                let step = (x.abs()?.max_keepdim(D::Minus1)? / 127.0)?; // [rows, 1]
                let w_abs = w_hat.abs()?.sum_keepdim(D::Minus1)?.t()?; // [1, out]
                let bound = (step.broadcast_mul(&w_abs)? * 0.6)?;
                let slack = (x.abs()?.matmul(&w_hat.abs()?.t()?)? * 1e-5)?;
                let excess = ((got.clone() - &want)?.abs()? - (bound + slack)?)?
                    .max_all()?
                    .to_scalar::<f32>()?;
                assert!(
                    excess <= 0.0,
                    "{q} {in_dim}: activation rounding exceeds its bound by {excess}"
                );

                // 2. against the float weights
                let e = rel_rms(&got, &float)?;
                assert!(
                    e < rel_gate,
                    "{q} {in_dim}: relative RMS error {e} ≥ {rel_gate}"
                );
                assert!(
                    e > 1e-4,
                    "{q}: suspiciously exact ({e}); is it quantized at all?"
                );
            }
        }
        Ok(())
    }

    /// Many rows: candle's tiled kernel (activation rounding) or, without one on this CPU, a
    /// float GEMM on the dequantized weight; the few-row integer kernel agrees with both up to
    /// its activation rounding. Few rows: each row's
    /// output is the same bit for bit whether it comes alone or with others (batch invariance).
    #[test]
    fn many_rows_dequantize_and_few_rows_are_row_independent() -> Result<()> {
        let many = rowmat::MAX_ROWS + 4;
        // 896: q4_k rows zero-padded to 1024
        for (q, width) in [(Quant::Q8_0, 512), (Quant::Q4K, 512), (Quant::Q4K, 896)] {
            let w = randn((48, width), 11)?;
            let x = randn((many, width), 12)?;
            let qw = QuantWeight::quantize(&w, q)?;
            let w_hat = qw.dequantize()?.narrow(1, 0, width)?.contiguous()?;
            let got = qw.matmul_t(&x)?;
            let want = x.matmul(&w_hat.t()?)?;
            let e = rel_rms(&got, &want)?;
            if has_fast_gemm(q, 48, q.stored_width(width)) {
                assert!(e < 0.02 && e > 0.0, "{q}: tiled kernel vs dequantized {e}");
            } else {
                assert!(e < 1e-6, "{q}: not the float GEMM ({e})");
            }
            let few = Tensor::cat(
                &[
                    qw.matmul_t(&x.narrow(0, 0, rowmat::MAX_ROWS)?)?,
                    qw.matmul_t(&x.narrow(0, rowmat::MAX_ROWS, 4)?)?,
                ],
                0,
            )?;
            let e = rel_rms(&few, &got)?;
            assert!(e < 0.02, "{q}: few-row kernel vs many-row path {e}");
            let e = rel_rms(&few, &want)?;
            assert!(
                e < 0.02 && e > 0.0,
                "{q}: few-row kernel vs dequantized {e}"
            );
            let y16 = qw.matmul_t(&x.to_dtype(DType::BF16)?)?;
            assert_eq!(y16.dtype(), DType::BF16);
            let batch = few.narrow(0, 0, rowmat::MAX_ROWS)?.to_vec2::<f32>()?;
            for (r, want) in batch.iter().enumerate() {
                let alone = qw.matmul_t(&x.narrow(0, r, 1)?)?.to_vec2::<f32>()?;
                assert_eq!(&alone[0], want, "{q}: row {r} alone differs from batched");
            }
        }
        Ok(())
    }

    /// The few-row kernels compute what candle's `k_quants::matmul` computes (the same
    /// quantized activations and integer block sums); only the float summation order differs,
    /// so the results agree to f32 rounding of the sum of |products|.
    #[test]
    fn few_rows_match_candle_k_quants() -> Result<()> {
        for (q, rows) in [
            (Quant::Q8_0, 1),
            (Quant::Q8_0, 7),
            (Quant::Q4K, 1),
            (Quant::Q4K, 5),
        ] {
            let (n, k) = (37, 768);
            let w = randn((n, k), 21)?;
            let x = randn((rows, k), 22)?;
            let qw = QuantWeight::quantize(&w, q)?;
            let ours = qw.matmul_t(&x)?.flatten_all()?.to_vec1::<f32>()?;
            let xs = x.flatten_all()?.to_vec1::<f32>()?;
            let mut theirs = vec![0f32; rows * n];
            match &*qw.blocks {
                Blocks::Q8_0(b) => k_quants::matmul((rows, k, n), &xs, b, &mut theirs)?,
                Blocks::Q4K(b) => k_quants::matmul((rows, k, n), &xs, b, &mut theirs)?,
            }
            let mag = x
                .abs()?
                .matmul(&qw.dequantize()?.abs()?.t()?)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            for i in 0..rows * n {
                let tol = 2e-6 * mag[i];
                assert!(
                    (ours[i] - theirs[i]).abs() <= tol,
                    "{q} rows {rows} [{i}]: {} vs candle {} (tolerance {tol})",
                    ours[i],
                    theirs[i]
                );
            }
        }
        Ok(())
    }

    /// bf16 activations go through the same kernels and come back as bf16; 3-D inputs keep
    /// their leading dims.
    #[test]
    fn bf16_and_batched_inputs() -> Result<()> {
        let w = randn((32, 256), 6)?;
        let x = randn((6, 256), 7)?.reshape((2, 3, 256))?;
        for q in [Quant::Q8_0, Quant::Q4K] {
            let l = linear_from_weight_quant(&w.to_dtype(DType::BF16)?, Some(q))?;
            let y32 = l.forward(&x)?;
            let y16 = l.forward(&x.to_dtype(DType::BF16)?)?;
            assert_eq!(y16.dtype(), DType::BF16);
            assert_eq!(y16.dims(), &[2, 3, 32]);
            let e = rel_rms(&y16.to_dtype(DType::F32)?, &y32)?;
            assert!(e < 0.01, "{q}: bf16 vs f32 activations {e}");
        }
        Ok(())
    }

    #[test]
    fn report_counts_fallbacks() -> Result<()> {
        let plan = QuantPlan {
            quant: Some(Quant::Q4K),
            lm_head: false,
        };
        let mut r = QuantReport::new(plan);
        let wide = linear_from_weight_quant(&randn((16, 512), 8)?, plan.layers())?;
        let mid = linear_from_weight_quant(&randn((16, 96), 9)?, plan.layers())?;
        let head = linear_from_weight_quant(&randn((16, 512), 10)?, plan.head())?;
        let padded = linear_from_weight_quant(&randn((16, 896), 11)?, plan.layers())?;
        r.add(&wide, plan.layers());
        r.add(&mid, plan.layers());
        r.add(&head, plan.head());
        r.add(&padded, plan.layers());
        assert_eq!(
            (r.linears, r.q4k, r.q8_0, r.float, r.fallbacks, r.padded),
            (4, 2, 1, 1, 1, 1)
        );
        let q4k_bytes = 16 * 2 * 144 + 16 * 4 * 144;
        let q8_bytes = 16 * 3 * 34;
        assert_eq!(r.bytes, (q4k_bytes + q8_bytes + 16 * 512 * 4) as u64);
        let text = r.to_string();
        assert!(
            text.starts_with(
                "q4_k: 3 of 4 linear layers quantized (2 q4_k, 1 q8_0, 1 float; 1 with rows \
                 zero-padded to whole blocks; 1 fell back"
            ),
            "{text}"
        );
        Ok(())
    }
}
