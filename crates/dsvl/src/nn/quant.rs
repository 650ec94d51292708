//! Load-time weight quantization of linear layers (issue #4 item 4): GGML `q8_0` and `q4_k`
//! blocks through candle's quantized matmul, so a decode step reads 8.5 or 4.5 bits per weight
//! instead of 32 (f32) or 16 (bf16).
//!
//! A weight `[out, in]` is cut into blocks along `in` (the dot-product dimension): 32 values per
//! `q8_0` block (one f16 scale, 32 i8), 256 per `q4_k` super-block (f16 scale and min, 8 six-bit
//! sub-scales and mins, 256 four-bit values). At matmul time candle quantizes the activation rows
//! to 8 bits as well (`q8_0` or `q8_K` blocks) and accumulates integer dot products, so the
//! output differs from the float matmul by the weight rounding plus the activation rounding.
//!
//! A layer whose `in` is not a multiple of the block size cannot be stored in that format. Such
//! a layer falls back, never fails: `q4_k` → `q8_0` when `in` is a multiple of 32 (DeepSeek-VL2
//! tiny and small have expert widths 896 and 1408, which are not multiples of 256, so their
//! experts' `down_proj` would otherwise stay in float), else the compute dtype. [`QuantReport`]
//! counts what each layer became.

use std::sync::Arc;

use candle_core::quantized::k_quants::{BlockQ4K, BlockQ8_0, GgmlType};
use candle_core::quantized::{QStorage, QTensor};
use candle_core::{DType, Device, Result, Tensor};

use super::{linear_from_weight, Linear, LinearWeight};

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

    /// What a layer with input width `in_dim` is stored as when `self` is asked for: `self`
    /// if its blocks fit, else `q8_0` if those fit, else `None` (the compute dtype).
    pub fn for_input_width(self, in_dim: usize) -> Option<Quant> {
        [self, Quant::Q8_0]
            .into_iter()
            .find(|q| in_dim > 0 && in_dim % q.block_size() == 0)
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
            weight: LinearWeight::Quant(QuantWeight::new(quantize(weight, q)?, q)?),
            bias: None,
        }),
    }
}

/// Rows from which a layer without a fast many-row kernel dequantizes its weight instead:
/// above the largest decode batch ([`super::rowmat::MAX_ROWS`]), so that every decode step,
/// alone or batched, goes through the same quantized kernel.
const DEQUANT_MIN_ROWS: usize = super::rowmat::MAX_ROWS + 1;

/// A quantized weight `[out, in]` and how to multiply by it.
#[derive(Clone)]
pub(super) struct QuantWeight {
    w: Arc<QTensor>,
    quant: Quant,
    /// `(out, in)`.
    dims: (usize, usize),
    /// Whether candle has a many-row kernel for this format and shape on this CPU.
    fast_gemm: bool,
}

impl QuantWeight {
    fn new(w: QTensor, quant: Quant) -> Result<Self> {
        let dims = w.shape().dims2()?;
        Ok(Self {
            w: Arc::new(w),
            quant,
            dims,
            fast_gemm: has_fast_gemm(quant, dims.0, dims.1),
        })
    }

    pub(super) fn dims(&self) -> (usize, usize) {
        self.dims
    }
    pub(super) fn quant(&self) -> Quant {
        self.quant
    }
    pub(super) fn bytes(&self) -> u64 {
        self.w.storage_size_in_bytes() as u64
    }

    /// `x` `[rows, in]` → `x · Wᵀ` `[rows, out]` in `x`'s dtype.
    ///
    /// One row (decode) always goes through candle's quantized kernel, which reads the blocks
    /// (the point of quantizing). Many rows (prefill) do too where candle has a many-row kernel
    /// (see [`has_fast_gemm`]); elsewhere its many-row path is a dot product per row and per
    /// column that re-reads the whole weight for every row (`q8_0` prefill on an AVX2 CPU ran
    /// at 4 tokens/s against 15 in f32), so the weight is dequantized to f32 for the call and
    /// the product is one float GEMM.
    pub(super) fn matmul_t(&self, x: &Tensor) -> Result<Tensor> {
        let rows = x.dim(0)?;
        if rows >= DEQUANT_MIN_ROWS && !self.fast_gemm {
            let w = self.dequantize()?;
            return x.to_dtype(DType::F32)?.matmul(&w.t()?)?.to_dtype(x.dtype());
        }
        // candle's quantized matmul reads the rows in place: they must be contiguous (a
        // reshape of a strided input already copied them).
        x.contiguous()?.apply_op1_no_bwd(self.w.as_ref())
    }

    /// f32 `[out, in]`; `q8_0` over the threads (candle's dequantizer is single-threaded).
    fn dequantize(&self) -> Result<Tensor> {
        match self.quant {
            Quant::Q8_0 => {
                let data = self.w.data()?;
                let values = dequantize_q8_0(&data);
                Tensor::from_vec(values, self.dims, &Device::Cpu)
            }
            Quant::Q4K => self.w.dequantize(&Device::Cpu),
        }
    }
}

/// Whether candle 0.11 has a many-row kernel for `quant` at `[n, k]` on this CPU: its x86
/// repacked tiles (`quantized::repack_x86::select`) take `n % 16 == 0`, `k % 256 == 0`, AVX2
/// for `q4_k` and VNNI (AVX512-VNNI or AVX-VNNI) for `q8_0`. Other architectures: assumed (its
/// aarch64 kernels are not measured here).
fn has_fast_gemm(quant: Quant, n: usize, k: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let tiles = n % 16 == 0 && k % 256 == 0;
        let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
        let vnni = (is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vnni"))
            || (avx2 && is_x86_feature_detected!("avxvnni"));
        match quant {
            Quant::Q4K => tiles && avx2,
            Quant::Q8_0 => tiles && vnni,
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (quant, n, k);
        true
    }
}

/// `q8_0` blocks (34 bytes: an f16 scale, then 32 i8) → f32, `value = q · scale` as candle's
/// `BlockQ8_0::to_float`.
fn dequantize_q8_0(data: &[u8]) -> Vec<f32> {
    const BLOCK: usize = 34;
    let n_blocks = data.len() / BLOCK;
    let mut out = vec![0f32; n_blocks * 32];
    let per = blocks_per_thread(n_blocks);
    std::thread::scope(|s| {
        for (src, dst) in data.chunks(per * BLOCK).zip(out.chunks_mut(per * 32)) {
            s.spawn(move || {
                for (b, y) in src.chunks_exact(BLOCK).zip(dst.chunks_exact_mut(32)) {
                    let d = half::f16::from_ne_bytes([b[0], b[1]]).to_f32();
                    for (y, &q) in y.iter_mut().zip(&b[2..]) {
                        *y = (q as i8) as f32 * d;
                    }
                }
            });
        }
    });
    out
}

/// `weight` `[out, in]` (any float dtype, `in` a multiple of `q.block_size()`) → GGML blocks,
/// row-major like the source. The blocks are independent, so the rows are split over
/// candle's CPU threads (`RAYON_NUM_THREADS`, i.e. `--threads`); the result is the same as
/// `QTensor::quantize` on the whole tensor.
fn quantize(weight: &Tensor, q: Quant) -> Result<QTensor> {
    let (out_dim, in_dim) = weight.dims2()?;
    if !weight.device().is_cpu() {
        return QTensor::quantize(weight, q.ggml());
    }
    let values = weight
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let storage: Box<dyn candle_core::quantized::QuantizedType> = match q {
        Quant::Q8_0 => Box::new(quantize_blocks::<BlockQ8_0>(&values)),
        Quant::Q4K => Box::new(quantize_blocks::<BlockQ4K>(&values)),
    };
    QTensor::new(QStorage::Cpu(storage), (out_dim, in_dim))
}

/// Blocks per CPU thread when `n_blocks` are split into one contiguous range per thread.
fn blocks_per_thread(n_blocks: usize) -> usize {
    let threads = candle_core::utils::get_num_threads().clamp(1, n_blocks.max(1));
    n_blocks.div_ceil(threads).max(1)
}

/// candle's quantizer for `T`, over the threads.
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
    /// Targeted by the plan but stored in another format because the input width is not a
    /// multiple of the block size (`q4_k` → `q8_0` or float, `q8_0` → float).
    pub fallbacks: usize,
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
        // DeepSeek-VL2 tiny/small expert widths
        assert_eq!(Quant::Q4K.for_input_width(896), Some(Quant::Q8_0));
        assert_eq!(Quant::Q4K.for_input_width(1408), Some(Quant::Q8_0));
        assert_eq!(Quant::Q8_0.for_input_width(1408), Some(Quant::Q8_0));
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
                let ours = quantize(&w, q)?;
                let theirs = QTensor::quantize(&w, q.ggml())?;
                assert_eq!(ours.data()?, theirs.data()?, "{q}");
                assert_eq!(
                    ours.storage_size_in_bytes(),
                    w.elem_count() / q.block_size() * q.block_bytes()
                );
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
        let (out_dim, in_dim, rows) = (96, 768, 5);
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
            let w_hat = qw.w.dequantize(&Device::Cpu)?;
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
                "{q}: activation rounding exceeds its bound by {excess}"
            );

            // 2. against the float weights
            let e = rel_rms(&got, &float)?;
            assert!(e < rel_gate, "{q}: relative RMS error {e} ≥ {rel_gate}");
            assert!(
                e > 1e-4,
                "{q}: suspiciously exact ({e}); is it quantized at all?"
            );
        }
        Ok(())
    }

    /// Many rows without a many-row kernel: the weight is dequantized (our q8_0 dequantizer
    /// gives candle's values exactly) and the product is a float GEMM, which agrees with the
    /// quantized kernel up to the kernel's activation rounding.
    #[test]
    fn many_rows_without_a_kernel_dequantize() -> Result<()> {
        let w = randn((48, 512), 11)?;
        let x = randn((DEQUANT_MIN_ROWS + 4, 512), 12)?;
        for q in [Quant::Q8_0, Quant::Q4K] {
            let slow = QuantWeight {
                fast_gemm: false,
                ..QuantWeight::new(quantize(&w, q)?, q)?
            };
            let kernel = QuantWeight {
                fast_gemm: true,
                ..slow.clone()
            };
            let w_hat = slow.w.dequantize(&Device::Cpu)?;
            assert_eq!(
                slow.dequantize()?.flatten_all()?.to_vec1::<f32>()?,
                w_hat.flatten_all()?.to_vec1::<f32>()?,
                "{q}"
            );
            let got = slow.matmul_t(&x)?;
            let want = x.matmul(&w_hat.t()?)?;
            assert!(rel_rms(&got, &want)? < 1e-6, "{q}: not the float GEMM");
            let e = rel_rms(&kernel.matmul_t(&x)?, &got)?;
            assert!(e < 0.02 && e > 0.0, "{q}: kernel vs dequantized {e}");
            let y16 = slow.matmul_t(&x.to_dtype(DType::BF16)?)?;
            assert_eq!(y16.dtype(), DType::BF16);
            // one row never dequantizes
            let one = x.narrow(0, 0, 1)?;
            let (a, b) = (slow.matmul_t(&one)?, kernel.matmul_t(&one)?);
            assert_eq!(a.to_vec2::<f32>()?, b.to_vec2::<f32>()?);
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
        r.add(&wide, plan.layers());
        r.add(&mid, plan.layers());
        r.add(&head, plan.head());
        assert_eq!(
            (r.linears, r.q4k, r.q8_0, r.float, r.fallbacks),
            (3, 1, 1, 1, 1)
        );
        let q4k_bytes = 16 * 2 * 144;
        let q8_bytes = 16 * 3 * 34;
        assert_eq!(r.bytes, (q4k_bytes + q8_bytes + 16 * 512 * 4) as u64);
        let text = r.to_string();
        assert!(
            text.starts_with(
                "q4_k: 2 of 3 linear layers quantized (1 q4_k, 1 q8_0, 1 float; 1 fell back"
            ),
            "{text}"
        );
        Ok(())
    }
}
