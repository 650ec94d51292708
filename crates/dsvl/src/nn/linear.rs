//! `nn.Linear` and the helpers that build one: from the checkpoint (`linear`), from a weight
//! already in memory (`linear_from_weight`), quantized or not (`qlinear`), and several linears
//! that read the same input (`SharedInput`).

use std::sync::Arc;

use candle_core::{CpuStorage, DType, Device, Module, Result, Storage, Tensor};
use candle_nn::VarBuilder;
use dsvl_kernels::{Lhs, PackedB, WeightType};

use super::matmul::matmul;
use super::quant::{self, linear_from_weight_quant, LinearStorage, Quant};
use super::rowmat::{self, WeightRows};

/// `nn.Linear(in, out, bias)`: weight `[out, in]`, `y = x·Wᵀ + b` over the last dim of any rank.
/// Inputs are flattened to 2-D so every call is one GEMM.
#[derive(Clone)]
pub struct Linear {
    pub(super) weight: LinearWeight,
    pub(super) bias: Option<Tensor>,
}

#[derive(Clone)]
pub(super) enum LinearWeight {
    /// `[out, in]`, the checkpoint layout, contiguous: weights on a GPU, float types other than
    /// bf16 (f32 included: candle's GEMM is as fast as ours there), and every weight on a CPU
    /// without AVX2 (our kernels' portable path is slower
    /// than candle's GEMM there, e.g. on aarch64 until they have a NEON path). On the CPU a few
    /// rows go through [`rowmat`] (one pass over the weight, batch-invariant), more through
    /// candle's GEMM on the transposed view.
    Float(Tensor),
    /// bf16 on the CPU, packed once into our kernels' panels
    /// ([`dsvl_kernels::gemm`]): one path for decode steps and prefill alike, batch-invariant
    /// for any number of rows, bf16 multiplied as bf16 (no widening of the weight per call).
    Packed(Arc<PackedB>),
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
            LinearWeight::Packed(p) => p.dims().0,
            LinearWeight::Quant(q) => q.dims().0,
        }
    }

    pub fn in_dim(&self) -> usize {
        match &self.weight {
            LinearWeight::Float(w) => w.dim(1).unwrap_or(0),
            LinearWeight::Packed(p) => p.dims().1,
            LinearWeight::Quant(q) => q.dims().1,
        }
    }

    /// What the weight is stored as.
    pub fn storage(&self) -> LinearStorage {
        match &self.weight {
            LinearWeight::Float(w) => LinearStorage::Float(w.dtype()),
            LinearWeight::Packed(p) => LinearStorage::Float(match p.weight_type() {
                WeightType::F32 => DType::F32,
                WeightType::Bf16 => DType::BF16,
            }),
            LinearWeight::Quant(q) => LinearStorage::Quant(q.quant()),
        }
    }

    /// Bytes of the weight as stored (the bias excluded).
    pub fn weight_bytes(&self) -> u64 {
        match &self.weight {
            LinearWeight::Float(w) => (w.elem_count() * w.dtype().size_in_bytes()) as u64,
            LinearWeight::Packed(p) => {
                let (n, k) = p.dims();
                let size = match p.weight_type() {
                    WeightType::F32 => 4,
                    WeightType::Bf16 => 2,
                };
                (n * k * size) as u64
            }
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
        weight: float_weight(&weight)?,
        bias,
    })
}

/// A float weight `[out, in]` as the forward pass wants it: packed for our kernels on the CPU
/// (f32 and bf16), as a contiguous tensor otherwise.
fn float_weight(weight: &Tensor) -> Result<LinearWeight> {
    let (n, k) = weight.dims2()?;
    // f32 stays with candle's GEMM (ours is no faster in f32, BENCHMARKS.md) and the few-row
    // kernel, which saves packing a second 4-byte copy at load (+3-4 s for the 1.3B model).
    let kernels = dsvl_kernels::isa::active() >= dsvl_kernels::Isa::Avx2;
    if kernels && weight.device().is_cpu() && weight.dtype() == DType::BF16 {
        let weight = weight.contiguous()?;
        let (storage, layout) = weight.storage_and_layout();
        if let (Storage::Cpu(cpu), Some((start, end))) = (&*storage, layout.contiguous_offsets()) {
            let packed = match cpu {
                CpuStorage::F32(v) => Some(PackedB::from_f32(&v[start..end], n, k)),
                CpuStorage::BF16(v) => Some(PackedB::from_bf16(&v[start..end], n, k)),
                _ => None,
            };
            if let Some(p) = packed {
                return Ok(LinearWeight::Packed(Arc::new(p)));
            }
        }
    }
    Ok(LinearWeight::Float(weight.contiguous()?))
}

/// A bias-free linear from a weight `[out, in]` already in memory, e.g. two projections
/// concatenated along `out` to run as one GEMM (DeepSeek-V2's fused gate/up, v2 §8.4).
pub fn linear_from_weight(weight: &Tensor) -> Result<Linear> {
    Ok(Linear {
        weight: float_weight(weight)?,
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
            LinearWeight::Packed(p) => packed_matmul(&x2, p)?,
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

/// `x·wᵀ` for `x` `[rows, in]` by our kernels, in `x`'s dtype: f32 and bf16 activations are
/// read in place, others widened to f32 first; the f32 result is rounded to bf16 for a bf16
/// input, as the reference's bf16 matmul rounds its output.
fn packed_matmul(x: &Tensor, w: &PackedB) -> Result<Tensor> {
    let (rows, k) = x.dims2()?;
    let n = w.dims().0;
    let dtype = x.dtype();
    let x = match dtype {
        DType::F32 | DType::BF16 => x.contiguous()?,
        _ => x.to_dtype(DType::F32)?.contiguous()?,
    };
    let mut y = vec![0f32; rows * n];
    {
        let (storage, layout) = x.storage_and_layout();
        let (Storage::Cpu(cpu), Some((start, end))) = (&*storage, layout.contiguous_offsets())
        else {
            candle_core::bail!("packed linear: the input is not a contiguous CPU tensor");
        };
        let lhs = match cpu {
            CpuStorage::F32(v) => Lhs::F32 {
                data: &v[start..end],
                stride: k,
            },
            CpuStorage::BF16(v) => Lhs::Bf16 {
                data: &v[start..end],
                stride: k,
            },
            _ => candle_core::bail!("packed linear: unexpected input dtype {:?}", x.dtype()),
        };
        dsvl_kernels::gemm(lhs, rows, w, &mut y);
    }
    let y = Tensor::from_vec(y, (rows, n), x.device())?;
    match dtype {
        DType::F32 => Ok(y),
        DType::BF16 => y.to_dtype(DType::BF16),
        other => y.to_dtype(other),
    }
}

/// A bias-free `[in] -> [out]` linear with weight `{vb}.weight`, stored as `quant` (with the
/// block-size fallback of [`Quant::for_input_width`]) or in the compute dtype.
pub(crate) fn qlinear(
    in_dim: usize,
    out_dim: usize,
    quant: Option<Quant>,
    vb: VarBuilder,
) -> Result<Linear> {
    linear_from_weight_quant(&vb.get((out_dim, in_dim), "weight")?, quant)
}

/// Linears that read the same input: the checkpoint's separate ones, or one whose weight is
/// theirs concatenated along `out` — one GEMM instead of several, each output the same dot
/// product. A GPU, whose decode step is bound by kernel launches, gets the fused one; the CPU
/// keeps the separate ones (quantized per projection, reported per projection).
pub(crate) enum SharedInput {
    Separate(Vec<Linear>),
    Fused { linear: Linear, outs: Vec<usize> },
}

impl SharedInput {
    /// The linears `{vb}.{name}.weight` `[out, in_dim]` for each `(name, out)` of `parts`.
    pub(crate) fn new(
        vb: &VarBuilder,
        parts: &[(&str, usize)],
        in_dim: usize,
        quant: Option<Quant>,
        fuse: bool,
    ) -> Result<Self> {
        if !fuse {
            return parts
                .iter()
                .map(|&(name, out)| qlinear(in_dim, out, quant, vb.pp(name)))
                .collect::<Result<Vec<_>>>()
                .map(Self::Separate);
        }
        let weights = parts
            .iter()
            .map(|&(name, out)| vb.pp(name).get((out, in_dim), "weight"))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self::Fused {
            linear: linear_from_weight_quant(&Tensor::cat(&weights, 0)?, quant)?,
            outs: parts.iter().map(|&(_, out)| out).collect(),
        })
    }

    /// Each linear's output, in the order of `parts`.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        match self {
            Self::Separate(linears) => linears.iter().map(|l| l.forward(x)).collect(),
            Self::Fused { linear, outs } => {
                let y = linear.forward(x)?;
                let last = y.rank() - 1;
                let mut start = 0;
                outs.iter()
                    .map(|&n| {
                        start += n;
                        y.narrow(last, start - n, n)
                    })
                    .collect()
            }
        }
    }

    /// The linears as stored.
    pub(crate) fn linears(&self) -> Vec<&Linear> {
        match self {
            Self::Separate(linears) => linears.iter().collect(),
            Self::Fused { linear, .. } => vec![linear],
        }
    }
}

/// Whether to fuse projections that share their input on `device` (see [`SharedInput`]).
pub(crate) fn fuse_projections(device: &Device, quant: Option<Quant>) -> bool {
    !device.is_cpu() && quant.is_none()
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Module, Tensor};
    use dsvl_kernels::isa::{self, Isa};

    use super::*;

    /// The packed linear against candle's matmul, on every instruction-set level this CPU has,
    /// for f32 and bf16 weights and inputs, decode and prefill row counts, with a bias.
    #[test]
    fn packed_linear_matches_candle_on_every_level() -> Result<()> {
        let dev = Device::Cpu;
        let (n, k) = (45, 70);
        let w = Tensor::randn(0f32, 1.0, (n, k), &dev)?;
        let b = Tensor::randn(0f32, 1.0, n, &dev)?;
        isa::with_each_level(|level| {
            for dtype in [DType::F32, DType::BF16] {
                let lin = Linear {
                    weight: float_weight(&w.to_dtype(dtype).unwrap()).unwrap(),
                    bias: Some(b.to_dtype(dtype).unwrap()),
                };
                let packed = matches!(lin.weight, LinearWeight::Packed(_));
                let want = level >= Isa::Avx2 && dtype == DType::BF16;
                assert_eq!(packed, want, "{level} {dtype:?}: packed {packed}");
                for rows in [1, 5, 40] {
                    let x = Tensor::randn(0f32, 1.0, (2, rows, k), &dev)
                        .unwrap()
                        .to_dtype(dtype)
                        .unwrap();
                    let got = lin.forward(&x).unwrap();
                    assert_eq!(got.dims(), &[2, rows, n]);
                    assert_eq!(got.dtype(), dtype);
                    let xf = x.to_dtype(DType::F32).unwrap();
                    let wf = w.to_dtype(dtype).unwrap().to_dtype(DType::F32).unwrap();
                    let bf = b.to_dtype(dtype).unwrap().to_dtype(DType::F32).unwrap();
                    let want = xf
                        .broadcast_matmul(&wf.t().unwrap())
                        .unwrap()
                        .broadcast_add(&bf)
                        .unwrap();
                    let d = crate::nn::max_abs_diff(&got.to_dtype(DType::F32).unwrap(), &want);
                    // bf16: the output is rounded to bf16 (|y| up to ~30: 2^-8 relative).
                    let tol = if dtype == DType::F32 { 1e-4 } else { 0.25 };
                    assert!(d < tol, "{level} {dtype:?} rows {rows}: {d}");
                }
            }
        });
        Ok(())
    }

    /// f32 activations through a bf16 weight are computed in f32 (never rounded to bf16):
    /// DeepSeek-V2's router multiplies f32 hidden states by its weight this way.
    #[test]
    fn f32_inputs_are_not_rounded_under_bf16_weights() -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (40, 64), &dev)?.to_dtype(DType::BF16)?;
        let lin = Linear {
            weight: float_weight(&w)?,
            bias: None,
        };
        let x = Tensor::randn(0f32, 1.0, (3, 64), &dev)?;
        let got = lin.forward(&x)?;
        let want = x.matmul(&w.to_dtype(DType::F32)?.t()?)?;
        assert_eq!(got.dtype(), DType::F32);
        assert!(crate::nn::max_abs_diff(&got, &want) < 1e-4);
        Ok(())
    }
}
