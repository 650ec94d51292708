//! Scaled-dot-product attention, written once for every model (STYLE §3.4): the models differ
//! only in where the scale goes ([`Scale`]) and in the bias they add (causal mask, SAM rel-pos).

use candle_core::{DType, Result, Tensor};

use super::matmul::matmul_mixed;

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
