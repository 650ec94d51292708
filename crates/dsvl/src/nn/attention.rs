//! Scaled-dot-product attention, written once for every model (STYLE §3.4): the models differ
//! only in where the scale goes ([`Scale`]) and in the bias they add (causal mask, SAM rel-pos).
//!
//! On a CPU with AVX2 or more, prompts and vision passes (several query rows) run on our kernels
//! ([`dsvl_kernels::attention`]): by blocks of query rows, with the reference's bf16 rounding
//! points, without a `[heads, Tq, Tk]` score tensor, and for a causal prompt over only the keys
//! each block can see. A decode step (one query row) and GPUs take the tensor path below.

use candle_core::{CpuStorage, DType, Result, Storage, Tensor};
use dsvl_kernels::attention::{self as kernel, Bias, Dims, Heads};

use super::matmul::matmul_mixed;

/// Where the attention scale is applied (v1 §13.7): SigLIP/Llama scale `q·kᵀ`, SAM scales `q` first.
#[derive(Debug, Clone, Copy)]
pub enum Scale {
    Scores(f64),
    Query(f64),
}

/// What is added to the scaled scores: nothing, a causal mask over the last `Tq` of `Tk`
/// positions (given as the tensor for the tensor path), or a bias tensor.
#[derive(Clone, Copy)]
pub enum Mask<'a> {
    None,
    Causal(&'a Tensor),
    Bias(&'a Tensor),
}

/// Query rows from which a CPU call takes the kernel path.
const KERNEL_MIN_ROWS: usize = 2;

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
    sdpa_masked(q, k, v, scale, bias.map_or(Mask::None, Mask::Bias))
}

/// [`sdpa`] with the mask's kind known (a causal mask need not be read).
pub fn sdpa_masked(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: Scale,
    mask: Mask<'_>,
) -> Result<Tensor> {
    if let Some(out) = on_kernels(q, k, v, scale, mask)? {
        return Ok(out);
    }
    let bias = match mask {
        Mask::None => None,
        Mask::Causal(m) | Mask::Bias(m) => Some(m),
    };
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

/// The kernel path, when it applies: CPU, f32/bf16 operands (keys and values may be f32 under a
/// bf16 query: the f32 KV cache), at least [`KERNEL_MIN_ROWS`] query rows, rank 3 or 4.
fn on_kernels(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: Scale,
    mask: Mask<'_>,
) -> Result<Option<Tensor>> {
    let dtype = q.dtype();
    let float = |t: &Tensor| matches!(t.dtype(), DType::F32 | DType::BF16);
    let rank = q.rank();
    // Below AVX2 the kernels' portable path is slower than candle's (see `Linear`).
    let applies = dsvl_kernels::isa::active() >= dsvl_kernels::Isa::Avx2
        && q.device().is_cpu()
        && float(q)
        && float(k)
        && float(v)
        && (rank == 3 || rank == 4)
        && k.rank() == rank
        && v.rank() == rank;
    if !applies {
        return Ok(None);
    }
    let (tq, d) = (q.dim(rank - 2)?, q.dim(rank - 1)?);
    let (tk, dv) = (k.dim(rank - 2)?, v.dim(rank - 1)?);
    let heads = q.elem_count() / (tq * d).max(1);
    if tq < KERNEL_MIN_ROWS
        || k.elem_count() != heads * tk * d
        || v.elem_count() != heads * tk * dv
        || k.dim(rank - 1)? != d
        || v.dim(rank - 2)? != tk
    {
        return Ok(None);
    }
    let dense;
    let bias = match mask {
        Mask::None => Bias::None,
        Mask::Causal(_) if tk >= tq => Bias::Causal { offset: tk - tq },
        Mask::Causal(_) => return Ok(None),
        Mask::Bias(b) => {
            // Broadcast to [heads or 1, Tq, Tk] as f32.
            let b = b.to_dtype(DType::F32)?;
            let hb = if b.elem_count() == tq * tk { 1 } else { heads };
            let shape = if rank == 4 {
                let lead = q.dims()[..2].to_vec();
                if hb == 1 {
                    vec![1, 1, tq, tk]
                } else {
                    vec![lead[0], lead[1], tq, tk]
                }
            } else if hb == 1 {
                vec![1, tq, tk]
            } else {
                vec![heads, tq, tk]
            };
            dense = b
                .broadcast_as(shape)?
                .contiguous()?
                .flatten_all()?
                .to_vec1::<f32>()?;
            Bias::Dense {
                data: &dense,
                heads: hb,
            }
        }
    };
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    let (sq, lq) = q.storage_and_layout();
    let (sk, lk) = k.storage_and_layout();
    let (sv, lv) = v.storage_and_layout();
    let out = match (
        heads_of(&sq, lq.contiguous_offsets()),
        heads_of(&sk, lk.contiguous_offsets()),
        heads_of(&sv, lv.contiguous_offsets()),
    ) {
        (Some(hq), Some(hk), Some(hv)) => {
            let scale = match scale {
                Scale::Scores(s) => kernel::Scale::Scores(s as f32),
                Scale::Query(s) => kernel::Scale::Query(s as f32),
            };
            let dims = Dims {
                heads,
                tq,
                tk,
                d,
                dv,
            };
            kernel::attention(hq, hk, hv, dims, scale, bias, dtype == DType::BF16)
        }
        _ => return Ok(None),
    };
    let mut shape = q.dims().to_vec();
    shape[rank - 1] = dv;
    Tensor::from_vec(out, shape, q.device())?
        .to_dtype(dtype)
        .map(Some)
}

fn heads_of<'a>(s: &'a Storage, offsets: Option<(usize, usize)>) -> Option<Heads<'a>> {
    let (start, end) = offsets?;
    match s {
        Storage::Cpu(CpuStorage::F32(v)) => Some(Heads::F32(&v[start..end])),
        Storage::Cpu(CpuStorage::BF16(v)) => Some(Heads::Bf16(&v[start..end])),
        _ => None,
    }
}
