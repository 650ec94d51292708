//! v1 aligner `MlpProjector` (v1 §6), keys `aligner.*`.
//!
//! - `mlp_gelu`, depth d: `layers = [Linear(in→n), (GELU, Linear(n→n)) × (d−1)]` → keys `layers.0`, `layers.2`, …
//! - `low_high_hybrid_split_mlp_gelu`: `high_up_proj`, `low_up_proj` (in → n/2 each), concatenated
//!   **[SAM half, SigLIP half]** (v1 §13.15), then `[(GELU, Linear(n→n)) × (d−1)]` → keys `layers.1`, `layers.3`, …

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::config::{Activation, AlignerKind, AlignerSpec};
use crate::nn::{linear, Linear};

pub struct Aligner {
    /// `(high_up_proj, low_up_proj)` for the hybrid projector.
    split: Option<(Linear, Linear)>,
    /// `(apply GELU first, Linear)` in order.
    layers: Vec<(bool, Linear)>,
}

/// What the vision tower hands to the aligner.
pub enum VisionFeatures {
    Single(Tensor),
    /// `(high = SAM, low = SigLIP)`, each `[B, 576, C]`.
    Hybrid(Tensor, Tensor),
}

impl Aligner {
    pub fn new(cfg: &AlignerSpec, vb: VarBuilder) -> Result<Self> {
        let (n, i) = (cfg.n_embed, cfg.input_dim);
        let lv = vb.pp("layers");
        let mut layers = Vec::new();
        let split = match cfg.kind {
            AlignerKind::Identity => None,
            AlignerKind::Linear => {
                // `modules = nn.Linear(...)`: the Linear *is* `layers`, keys `layers.weight`.
                layers.push((false, linear(i, n, true, lv.clone())?));
                None
            }
            AlignerKind::MlpGelu => {
                layers.push((false, linear(i, n, true, lv.pp(0))?));
                for k in 1..cfg.depth {
                    layers.push((true, linear(n, n, true, lv.pp(2 * k))?));
                }
                None
            }
            AlignerKind::LowHighHybridSplitMlpGelu => {
                for k in 1..cfg.depth {
                    layers.push((true, linear(n, n, true, lv.pp(2 * k - 1))?));
                }
                Some((
                    linear(i, n / 2, true, vb.pp("high_up_proj"))?,
                    linear(i, n / 2, true, vb.pp("low_up_proj"))?,
                ))
            }
        };
        Ok(Self { split, layers })
    }

    /// `[B, T, in]` (or the hybrid pair) → `[B, T, n_embed]`.
    pub fn forward(&self, x: &VisionFeatures) -> Result<Tensor> {
        let mut x = match (x, &self.split) {
            (VisionFeatures::Hybrid(high, low), Some((hp, lp))) => {
                Tensor::cat(&[hp.forward(high)?, lp.forward(low)?], 2)?
            }
            (VisionFeatures::Single(x), None) => x.clone(),
            _ => candle_core::bail!("aligner/vision tower mismatch (validated at load)"),
        };
        for (gelu, l) in &self.layers {
            if *gelu {
                x = Activation::GeluErf.forward(&x)?;
            }
            x = l.forward(&x)?;
        }
        Ok(x)
    }
}
