//! Building blocks shared by the vision towers, the aligners and the language models, one file
//! per concern: [`mod@linear`] (float and quantized linears), [`mod@matmul`] (cuBLAS-safe and mixed
//! f32 × bf16 products), [`attention`] (the one `sdpa` kernel), [`norm`] (LayerNorm, RMSNorm),
//! [`mlp`] (activations, the towers' two-layer MLP), [`conv`] (Conv2d), [`quant`] (GGML block
//! formats) and [`rowmat`] (the few-row, batch-invariant product).

pub mod attention;
pub mod conv;
pub mod linear;
pub mod matmul;
pub mod mlp;
pub mod norm;
pub mod quant;
pub mod rowmat;

pub use attention::{sdpa, sdpa_masked, Mask, Scale};
pub use conv::{conv2d, Conv2d};
pub(crate) use linear::{fuse_projections, qlinear, SharedInput};
pub use linear::{linear, linear_from_weight, Linear};
pub use matmul::{matmul, matmul_mixed};
pub use mlp::{Activation, Mlp};
pub use norm::{layer_norm, LayerNorm, RmsNorm};
pub use quant::{linear_from_weight_quant, LinearStorage, Quant, QuantPlan, QuantReport};

/// Largest `|a − b|` over all elements (tests).
#[cfg(test)]
pub(crate) fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    use candle_core::DType;
    let d = (a
        .to_dtype(DType::F32)
        .and_then(|a| a - b.to_dtype(DType::F32)?))
    .and_then(|d| d.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>());
    d.unwrap_or(f32::NAN)
}
