//! Normalisation layers: LayerNorm (vision towers) and the reference-order RMSNorm (LLMs).

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::VarBuilder;

pub use candle_nn::LayerNorm;

/// `nn.LayerNorm(dim, eps)` with affine weight and bias, computed in f32.
pub fn layer_norm(dim: usize, eps: f64, vb: VarBuilder) -> Result<LayerNorm> {
    candle_nn::layer_norm(dim, eps, vb)
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
    /// rounded value as in the reference. The CPU keeps `Self::forward_ops`: candle's CPU
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use candle_core::{DType, Device, Module, Tensor};
    use candle_nn::VarBuilder;

    use super::RmsNorm;

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
