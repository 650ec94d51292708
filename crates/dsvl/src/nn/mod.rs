//! Building blocks shared by the vision towers, the aligner and the language model.

pub mod quant;
pub mod rowmat;

use candle_core::{CpuStorage, DType, Module, Result, Storage, Tensor, D};
use candle_nn::VarBuilder;

use crate::config::Activation;

pub use candle_nn::LayerNorm;
use rowmat::WeightRows;

pub use quant::{linear_from_weight_quant, LinearStorage, Quant, QuantPlan, QuantReport};

/// `nn.Linear(in, out, bias)`: weight `[out, in]`, `y = x·Wᵀ + b` over the last dim of any rank.
/// Inputs are flattened to 2-D so every call is one GEMM.
#[derive(Clone)]
pub struct Linear {
    weight: LinearWeight,
    bias: Option<Tensor>,
}

#[derive(Clone)]
enum LinearWeight {
    /// `[out, in]`, the checkpoint layout, contiguous: a few rows go through [`rowmat`] (one
    /// pass over the weight, batch-invariant), many rows through candle's GEMM on the
    /// transposed view.
    Float(Tensor),
    /// GGML blocks of `[out, in]`, blocks along `in` ([`quant`]).
    Quant(quant::QuantWeight),
}

impl std::fmt::Debug for Linear {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Linear")
            .field("in", &self.in_dim())
            .field("out", &self.out_dim())
            .field("storage", &self.storage())
            .field("bias", &self.bias.is_some())
            .finish()
    }
}

impl Linear {
    pub fn out_dim(&self) -> usize {
        match &self.weight {
            LinearWeight::Float(w) => w.dim(0).unwrap_or(0),
            LinearWeight::Quant(q) => q.dims().0,
        }
    }

    pub fn in_dim(&self) -> usize {
        match &self.weight {
            LinearWeight::Float(w) => w.dim(1).unwrap_or(0),
            LinearWeight::Quant(q) => q.dims().1,
        }
    }

    /// What the weight is stored as.
    pub fn storage(&self) -> LinearStorage {
        match &self.weight {
            LinearWeight::Float(w) => LinearStorage::Float(w.dtype()),
            LinearWeight::Quant(q) => LinearStorage::Quant(q.quant()),
        }
    }

    /// Bytes of the weight as stored (the bias excluded).
    pub fn weight_bytes(&self) -> u64 {
        match &self.weight {
            LinearWeight::Float(w) => (w.elem_count() * w.dtype().size_in_bytes()) as u64,
            LinearWeight::Quant(q) => q.bytes(),
        }
    }
}

pub fn linear(in_dim: usize, out_dim: usize, bias: bool, vb: VarBuilder) -> Result<Linear> {
    let weight = vb.get((out_dim, in_dim), "weight")?;
    let bias = if bias {
        Some(vb.get(out_dim, "bias")?)
    } else {
        None
    };
    Ok(Linear {
        weight: LinearWeight::Float(weight.contiguous()?),
        bias,
    })
}

/// A bias-free linear from a weight `[out, in]` already in memory, e.g. two projections
/// concatenated along `out` to run as one GEMM (DeepSeek-V2's fused gate/up, v2 §8.4).
pub fn linear_from_weight(weight: &Tensor) -> Result<Linear> {
    Ok(Linear {
        weight: LinearWeight::Float(weight.contiguous()?),
        bias: None,
    })
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims();
        let (in_dim, out_dim) = (self.in_dim(), self.out_dim());
        let rows = x.elem_count() / in_dim.max(1);
        let x2 = x.reshape((rows, in_dim))?;
        let y = match &self.weight {
            LinearWeight::Float(w) => match few_rows(&x2, w)? {
                Some(y) => y,
                None => matmul(&x2, &w.t()?)?,
            },
            LinearWeight::Quant(q) => q.matmul_t(&x2)?,
        };
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut out = dims.to_vec();
        if let Some(last) = out.last_mut() {
            *last = out_dim;
        }
        y.reshape(out)
    }
}

/// `x·wᵀ` by [`rowmat`] when `x` has at most [`rowmat::MAX_ROWS`] rows and both live on the
/// CPU as f32 or bf16; `None` otherwise. A bf16 input is widened first and the result narrowed,
/// as candle's bf16 matmul does.
fn few_rows(x: &Tensor, w: &Tensor) -> Result<Option<Tensor>> {
    let (rows, k) = x.dims2()?;
    let n = w.dim(0)?;
    let dtype = x.dtype();
    if rows > rowmat::MAX_ROWS
        || !x.device().is_cpu()
        || dtype != w.dtype()
        || !matches!(dtype, DType::F32 | DType::BF16)
    {
        return Ok(None);
    }
    let xs = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let (storage, layout) = w.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        return Ok(None);
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        return Ok(None);
    };
    let y = match cpu {
        CpuStorage::F32(v) => rowmat::matmul_rows(&xs, rows, k, WeightRows::F32(&v[start..end]), n),
        CpuStorage::BF16(v) => {
            rowmat::matmul_rows(&xs, rows, k, WeightRows::Bf16(&v[start..end]), n)
        }
        _ => return Ok(None),
    };
    Tensor::from_vec(y, (rows, n), x.device())?
        .to_dtype(dtype)
        .map(Some)
}

/// `nn.LayerNorm(dim, eps)` with affine weight and bias, computed in f32.
pub fn layer_norm(dim: usize, eps: f64, vb: VarBuilder) -> Result<LayerNorm> {
    candle_nn::layer_norm(dim, eps, vb)
}

impl Activation {
    pub fn forward(self, x: &Tensor) -> Result<Tensor> {
        match self {
            Activation::GeluErf => x.gelu_erf(),
            Activation::GeluTanh => x.gelu(),
        }
    }
}

/// Two-layer MLP `fc2(act(fc1(x)))` with biases; `names` are the checkpoint names of the two
/// linears (`fc1`/`fc2` in SigLIP, `lin1`/`lin2` in SAM).
pub struct Mlp {
    fc1: Linear,
    fc2: Linear,
    act: Activation,
}

impl Mlp {
    pub fn new(
        dim: usize,
        hidden: usize,
        act: Activation,
        names: (&str, &str),
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            fc1: linear(dim, hidden, true, vb.pp(names.0))?,
            fc2: linear(hidden, dim, true, vb.pp(names.1))?,
            act,
        })
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.fc2.forward(&self.act.forward(&self.fc1.forward(x)?)?)
    }
}

/// Where the attention scale is applied (v1 §13.7): SigLIP/Llama scale `q·kᵀ`, SAM scales `q` first.
#[derive(Debug, Clone, Copy)]
pub enum Scale {
    Scores(f64),
    Query(f64),
}

/// Plain scaled-dot-product attention over `[B, H, T, D]` tensors, softmax computed in f32 and cast
/// back to the working dtype (v1 §13.8). `bias` (broadcastable to `[B, H, Tq, Tk]`) is added to the
/// scaled scores before the softmax (causal masks, SAM relative positions).
pub fn sdpa(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: Scale,
    bias: Option<&Tensor>,
) -> Result<Tensor> {
    let dtype = q.dtype();
    let scores = match scale {
        Scale::Scores(s) => (matmul_mixed(q, &k.t()?)? * s)?,
        Scale::Query(s) => matmul_mixed(&(q * s)?, &k.t()?)?,
    };
    let scores = match bias {
        Some(b) => scores.broadcast_add(b)?,
        None => scores,
    };
    let probs = candle_nn::ops::softmax_last_dim(&scores.to_dtype(DType::F32)?)?.to_dtype(dtype)?;
    matmul_mixed(&probs, v)
}

/// `a·b`, candle's batched matmul. On a GPU an operand whose strides cuBLAS cannot take is made
/// contiguous first: candle's CUDA matmul accepts only dense inner matrices (leading dimension
/// equal to the row or column count) and one batch stride, while its CPU GEMM takes any
/// strides — so a strided view that works on the CPU (a slice of the last dim, e.g. the key
/// half of `[k | v]`) would fail there. The CPU gets the views as they are.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.device().is_cpu() {
        return a.matmul(b);
    }
    let (a_ok, b_ok) = cublas_takes(a.dims(), a.stride(), b.dims(), b.stride());
    match (a_ok, b_ok) {
        (true, true) => a.matmul(b),
        (true, false) => a.matmul(&b.contiguous()?),
        (false, true) => a.contiguous()?.matmul(b),
        (false, false) => a.contiguous()?.matmul(&b.contiguous()?),
    }
}

/// Whether candle's CUDA matmul (`gemm_config` in candle-core 0.11's CUDA backend) accepts the
/// layouts of `lhs` `[…, m, k]` and `rhs` `[…, k, n]`: each inner matrix row- or column-major
/// with no padding (a dimension of one may have any stride), and at most two batch dims that
/// fold into one stride.
fn cublas_takes(
    lhs_dims: &[usize],
    lhs_stride: &[usize],
    rhs_dims: &[usize],
    rhs_stride: &[usize],
) -> (bool, bool) {
    let r = lhs_dims.len();
    if r < 2 || rhs_dims.len() != r || lhs_stride.len() != r || rhs_stride.len() != r {
        return (false, false);
    }
    let (m, k, n) = (lhs_dims[r - 2], lhs_dims[r - 1], rhs_dims[r - 1]);
    // An inner `[rows, cols]` matrix with strides (s_rows, s_cols): row-major or column-major.
    let inner = |rows: usize, cols: usize, s_rows: usize, s_cols: usize| {
        ((s_cols == 1 || cols == 1) && (s_rows == cols || rows == 1))
            || ((s_cols == rows || cols == 1) && (s_rows == 1 || rows == 1))
    };
    let batch = |dims: &[usize], stride: &[usize]| match (dims, stride) {
        ([], []) | ([_], [_]) => true,
        ([d0, d1], [s0, s1]) => *s0 == s1 * d1 || *d0 == 1 || *d1 == 1,
        _ => false,
    };
    let lhs = inner(m, k, lhs_stride[r - 2], lhs_stride[r - 1])
        && batch(&lhs_dims[..r - 2], &lhs_stride[..r - 2]);
    let rhs = inner(k, n, rhs_stride[r - 2], rhs_stride[r - 1])
        && batch(&rhs_dims[..r - 2], &rhs_stride[..r - 2]);
    (lhs, rhs)
}

/// `a·b` where one side may be f32 and the other bf16 (an f32 KV cache under a bf16 model,
/// [`crate::llm::KvCache::for_model`]): multiplied in f32 and rounded to bf16 — what candle's
/// bf16 matmul computes (it widens both sides), without widening the f32 side again.
pub fn matmul_mixed(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    match (a.dtype(), b.dtype()) {
        (x, y) if x == y => matmul(a, b),
        (DType::F32, narrow) | (narrow, DType::F32) => {
            matmul(&a.to_dtype(DType::F32)?, &b.to_dtype(DType::F32)?)?.to_dtype(narrow)
        }
        (x, y) => candle_core::bail!("matmul of {x:?} with {y:?}"),
    }
}

/// Numerically careful RMSNorm (v1 §13.11): normalise in f32, cast back, then multiply by the weight.
pub struct RmsNorm {
    weight: Tensor,
    /// Ones in the weight's dtype: the weight of the fused normalisation ([`Self::forward_fused`]).
    unit: Tensor,
    eps: f64,
}

impl RmsNorm {
    pub fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get(dim, "weight")?;
        let unit = Tensor::ones(dim, weight.dtype(), weight.device())?;
        Ok(Self { weight, unit, eps })
    }

    /// Op by op, in the reference's order: `x·rsqrt(mean(x²) + eps)` in f32, rounded to the
    /// working dtype, times the weight.
    fn forward_ops(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let xf = x.to_dtype(DType::F32)?;
        let var = xf.sqr()?.mean_keepdim(D::Minus1)?;
        // ref: hidden_states * torch.rsqrt(variance + eps)
        let normed = xf.broadcast_mul(&(var + self.eps)?.sqrt()?.recip()?)?;
        normed.to_dtype(dtype)?.broadcast_mul(&self.weight)
    }

    /// The same in two kernels instead of about nine (what a GPU spends its decode step on):
    /// candle's fused RMSNorm accumulates in f32 and rounds `scale·x·1` once — with a unit
    /// weight that is the reference's normalised, rounded `x` — then the weight multiplies the
    /// rounded value as in the reference. The CPU keeps [`Self::forward_ops`]: candle's CPU
    /// kernel divides by the square root instead of multiplying by its reciprocal.
    pub fn forward_fused(&self, x: &Tensor) -> Result<Tensor> {
        if x.dtype() != self.unit.dtype() {
            return self.forward_ops(x);
        }
        candle_nn::ops::rms_norm(&x.contiguous()?, &self.unit, self.eps as f32)?
            .broadcast_mul(&self.weight)
    }
}

impl Module for RmsNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.device().is_cpu() {
            self.forward_ops(x)
        } else {
            self.forward_fused(x)
        }
    }
}

/// `nn.Conv2d` (square kernel). candle's CPU convolution has no bf16 kernel, so reduced-precision
/// inputs are widened to f32 for the convolution and rounded back once, which is also what a
/// bf16 reference conv does (f32 accumulation, one rounding of the output).
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    stride: usize,
    padding: usize,
}

/// Conv weight `[out, in, k, k]`, optional bias `[out]`.
pub fn conv2d(
    in_c: usize,
    out_c: usize,
    k: usize,
    stride: usize,
    padding: usize,
    bias: bool,
    vb: VarBuilder,
) -> Result<Conv2d> {
    let weight = vb.get((out_c, in_c, k, k), "weight")?;
    let bias = if bias {
        Some(vb.get(out_c, "bias")?)
    } else {
        None
    };
    Ok(Conv2d {
        weight,
        bias,
        stride,
        padding,
    })
}

impl Module for Conv2d {
    /// `[B, in, H, W] -> [B, out, H', W']`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let widen = dtype == DType::BF16 && x.device().is_cpu();
        let (x, w) = if widen {
            (x.to_dtype(DType::F32)?, self.weight.to_dtype(DType::F32)?)
        } else {
            (x.clone(), self.weight.clone())
        };
        let y = x.conv2d(&w, self.padding, self.stride, 1, 1)?;
        let y = match &self.bias {
            Some(b) => y.broadcast_add(&b.to_dtype(y.dtype())?.reshape((1, (), 1, 1))?)?,
            None => y,
        };
        y.to_dtype(dtype)
    }
}

/// Largest `|a − b|` over all elements (tests).
#[cfg(test)]
pub(crate) fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    let d = (a
        .to_dtype(DType::F32)
        .and_then(|a| a - b.to_dtype(DType::F32)?))
    .and_then(|d| d.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>());
    d.unwrap_or(f32::NAN)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use candle_core::{DType, Device, Module, Tensor};
    use candle_nn::VarBuilder;

    use super::RmsNorm;

    /// Layouts candle's CUDA matmul takes and refuses (its `gemm_config` rules).
    #[test]
    fn cublas_layout_rules() {
        use super::cublas_takes;
        let dev = Device::Cpu;
        let takes =
            |a: &Tensor, b: &Tensor| cublas_takes(a.dims(), a.stride(), b.dims(), b.stride());
        let t = |dims: &[usize]| Tensor::zeros(dims, DType::F32, &dev).unwrap();
        // Dense operands, and a transposed weight.
        assert_eq!(takes(&t(&[2, 4, 5, 8]), &t(&[2, 4, 8, 3])), (true, true));
        assert_eq!(takes(&t(&[7, 8]), &t(&[3, 8]).t().unwrap()), (true, true));
        // The KV cache: the first `len` of `cap` positions; keys transposed.
        let cache = t(&[1, 4, 256, 16]);
        let k = cache.narrow(2, 0, 100).unwrap();
        let q = t(&[1, 4, 1, 16]);
        assert_eq!(takes(&q, &k.t().unwrap()), (true, true));
        assert_eq!(takes(&t(&[1, 4, 1, 100]), &k), (true, true));
        // A slice of the last dim (the key half of `[k | v]`): padded rows, refused.
        let kv = t(&[1, 4, 100, 24]);
        let k_half = kv.narrow(3, 0, 16).unwrap();
        let v_half = kv.narrow(3, 16, 8).unwrap();
        assert_eq!(takes(&q, &k_half.t().unwrap()), (true, false));
        assert_eq!(takes(&t(&[1, 4, 1, 100]), &v_half), (true, false));
        // …and the same slice on the left.
        assert_eq!(takes(&k_half, &t(&[1, 4, 16, 2])), (false, true));
        // A head dim broadcast with stride 0 folds into one batch stride when B = 1.
        let c = t(&[1, 1, 50, 12]).broadcast_as((1, 4, 50, 12)).unwrap();
        assert_eq!(takes(&c.squeeze(0).unwrap(), &t(&[4, 12, 6])), (true, true));
        // Three batch dims: refused whatever the strides.
        assert_eq!(
            takes(&t(&[2, 2, 2, 3, 4]), &t(&[2, 2, 2, 4, 5])),
            (false, false)
        );
        // What matmul makes of the refused views is what candle computes on the dense copies.
        let a = Tensor::randn(0f32, 1.0, (1, 4, 3, 16), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, (1, 4, 100, 24), &dev).unwrap();
        let bt = b.narrow(3, 0, 16).unwrap().t().unwrap();
        let want = a.matmul(&bt.contiguous().unwrap()).unwrap();
        let got = super::matmul(&a, &bt).unwrap();
        let d = super::max_abs_diff(&want, &got);
        assert_eq!(d, 0.0);
    }

    fn norm(dim: usize, dtype: DType) -> RmsNorm {
        let dev = Device::Cpu;
        let w = Tensor::randn(1f32, 0.3, dim, &dev).unwrap();
        let vb = VarBuilder::from_tensors(HashMap::from([("weight".to_string(), w)]), dtype, &dev);
        RmsNorm::new(dim, 1e-6, vb).unwrap()
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    /// The GPU's fused path, run on the CPU through the same candle op, against the reference
    /// order, in f32: equal to a few ulps (summation order; sqrt-divide in candle's CPU kernel vs
    /// reciprocal-multiply). Only f32 can be checked here: for bf16 the CPU kernel rounds the
    /// norm to bf16 and divides in bf16, unlike the CUDA kernel (f32 throughout, one rounding);
    /// the GPU run of the parity tests (`DSVL_TEST_DEVICE=cuda`) checks that one.
    #[test]
    fn fused_rms_norm_follows_the_reference_order() {
        let x = (Tensor::randn(0f32, 2.0, (3, 5, 2048), &Device::Cpu).unwrap() + 0.5).unwrap();
        let n = norm(2048, DType::F32);
        let ops = values(&n.forward(&x).unwrap());
        let fused = values(&n.forward_fused(&x).unwrap());
        for (a, b) in ops.iter().zip(&fused) {
            assert!((a - b).abs() <= 2e-6 * a.abs().max(1e-3), "{a} vs {b}");
        }
    }
}
