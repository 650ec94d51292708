//! Vision towers (v1 §4–§5): SigLIP-L for every model, SAM-B for the 7B high-resolution branch and for
//! DeepSeek-OCR's DeepEncoder, whose CLIP-L ([`clip_l`]) reads the SAM features.

pub mod clip_l;
pub mod sam;
pub mod siglip;

use candle_core::{Result, Tensor};

/// In-model normalisation `(x - mean) / std` on `[B, 3, H, W]` pixels in [0, 1] (v1 §3.2).
/// In reduced precision the reference rounds mean/std to the working dtype first, then subtracts
/// and divides as two rounded ops; doing the same here keeps bf16 runs close to it.
pub fn normalize(x: &Tensor, mean: [f64; 3], std: [f64; 3]) -> Result<Tensor> {
    let dev = x.device();
    let dtype = x.dtype();
    let m = Tensor::new(&mean.map(|v| v as f32), dev)?
        .to_dtype(dtype)?
        .reshape((1, 3, 1, 1))?;
    let s = Tensor::new(&std.map(|v| v as f32), dev)?
        .to_dtype(dtype)?
        .reshape((1, 3, 1, 1))?;
    x.broadcast_sub(&m)?.broadcast_div(&s)
}
