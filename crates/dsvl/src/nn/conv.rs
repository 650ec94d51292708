//! `nn.Conv2d` (patch embeddings, SAM necks and downsamples).

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

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
