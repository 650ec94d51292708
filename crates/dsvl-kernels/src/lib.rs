//! dsvl's CPU matrix kernels, below the model code: the products of every linear layer.
//!
//! - [`gemm`]: `C = A·Bᵀ` with the weight `B` packed once at load ([`gemm::PackedB`]), f32 or
//!   bf16, for prefill, vision and decode alike (a decode step is a product with one row per
//!   running sequence).
//! - [`attention`]: scaled-dot-product attention for prefill and vision on the same kernels,
//!   by blocks of query rows (no `[heads, Tq, Tk]` score tensor).
//! - [`isa`]: which instruction sets the kernels use, detected at run time and capped by
//!   `DSVL_ISA`, so every path can be tested on one machine.
//!
//! Paths: portable Rust, AVX2+FMA, AVX-512, AVX512-BF16 (`vdpbf16ps`). Results are batch
//! invariant: a row's output does not depend on the other rows of the call.

pub mod attention;
pub mod gemm;
pub mod isa;
pub mod quant;

pub use gemm::{gemm, Lhs, PackedB, WeightType};
pub use isa::Isa;
