//! Activations and the two-layer MLP of the vision towers.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::linear::{linear, Linear};

/// Which activation an MLP uses. v1 uses exact erf GELU everywhere (v1 §13.2); the VL2 SigLIP
/// uses the tanh approximation (v2 §3); DeepSeek-OCR's CLIP-L uses quick GELU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    GeluErf,
    GeluTanh,
    /// `x * sigmoid(1.702 * x)` (`quick_gelu` of DeepSeek-OCR's `clip_sdpa.py`).
    QuickGelu,
}

impl Activation {
    pub fn forward(self, x: &Tensor) -> Result<Tensor> {
        match self {
            Activation::GeluErf => x.gelu_erf(),
            Activation::GeluTanh => x.gelu(),
            Activation::QuickGelu => x * candle_nn::ops::sigmoid(&(x * 1.702)?)?,
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
