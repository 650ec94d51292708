//! The one parity test binary: each stage module against reference fixtures.

mod batch;
mod errors;
mod image;
mod npy;
mod quant;
mod tol;
mod v1;
mod vl2;
mod vl2_errors;
mod vl2_llm;
mod vl2_prep;
