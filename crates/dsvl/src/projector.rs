//! v1 aligner `MlpProjector` (v1 §6), keys `aligner.*`.
//!
//! - `mlp_gelu`, depth d: `layers = [Linear(in→n), (GELU, Linear(n→n)) × (d−1)]` → keys `layers.0`, `layers.2`, …
//! - `low_high_hybrid_split_mlp_gelu`: `high_up_proj`, `low_up_proj` (in → n/2 each), concatenated
//!   **[SAM half, SigLIP half]** (v1 §13.15), then `[(GELU, Linear(n→n)) × (d−1)]` → keys `layers.1`, `layers.3`, …

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::nn::{linear, Activation, Linear};

/// `MlpProjector.projector_type` (v1 §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlignerKind {
    Identity,
    Linear,
    MlpGelu,
    LowHighHybridSplitMlpGelu,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AlignerSpec {
    pub kind: AlignerKind,
    pub depth: usize,
    pub input_dim: usize,
    pub n_embed: usize,
}

/// `MlpProjector` of the SigLIP-only models (`identity`, `linear`, `mlp_gelu`): one feature
/// sequence `[B, T, in]` → `[B, T, n_embed]`.
pub struct Aligner {
    /// `(apply GELU first, Linear)` in order.
    layers: Vec<(bool, Linear)>,
}

impl Aligner {
    /// Any kind but `low_high_hybrid_split_mlp_gelu` ([`HybridAligner`]).
    pub fn new(cfg: &AlignerSpec, vb: VarBuilder) -> Result<Self> {
        let (n, i) = (cfg.n_embed, cfg.input_dim);
        let lv = vb.pp("layers");
        let mut layers = Vec::new();
        match cfg.kind {
            AlignerKind::Identity => {}
            AlignerKind::Linear => {
                // `modules = nn.Linear(...)`: the Linear *is* `layers`, keys `layers.weight`.
                layers.push((false, linear(i, n, true, lv.clone())?));
            }
            AlignerKind::MlpGelu => {
                layers.push((false, linear(i, n, true, lv.pp(0))?));
                for k in 1..cfg.depth {
                    layers.push((true, linear(n, n, true, lv.pp(2 * k))?));
                }
            }
            AlignerKind::LowHighHybridSplitMlpGelu => {
                candle_core::bail!(
                    "the `low_high_hybrid_split_mlp_gelu` aligner needs the hybrid vision tower"
                )
            }
        }
        Ok(Self { layers })
    }

    /// `[B, T, in]` → `[B, T, n_embed]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        gelu_mlp(&self.layers, x.clone())
    }
}

/// `MlpProjector` with `low_high_hybrid_split_mlp_gelu` (the 7B hybrid tower): SAM and SigLIP
/// features, each `[B, 576, in]`, projected to `n_embed / 2` each, concatenated, then the MLP.
pub struct HybridAligner {
    high_up_proj: Linear,
    low_up_proj: Linear,
    /// `(apply GELU first, Linear)` in order.
    layers: Vec<(bool, Linear)>,
}

impl HybridAligner {
    /// The `low_high_hybrid_split_mlp_gelu` kind only ([`Aligner`] takes the others).
    pub fn new(cfg: &AlignerSpec, vb: VarBuilder) -> Result<Self> {
        if cfg.kind != AlignerKind::LowHighHybridSplitMlpGelu {
            candle_core::bail!(
                "the hybrid vision tower needs the `low_high_hybrid_split_mlp_gelu` aligner, not {:?}",
                cfg.kind
            )
        }
        let (n, i) = (cfg.n_embed, cfg.input_dim);
        let lv = vb.pp("layers");
        let layers = (1..cfg.depth)
            .map(|k| Ok((true, linear(n, n, true, lv.pp(2 * k - 1))?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            high_up_proj: linear(i, n / 2, true, vb.pp("high_up_proj"))?,
            low_up_proj: linear(i, n / 2, true, vb.pp("low_up_proj"))?,
            layers,
        })
    }

    /// `high` (SAM) and `low` (SigLIP) `[B, T, in]` → `[B, T, n_embed]`.
    pub fn forward(&self, high: &Tensor, low: &Tensor) -> Result<Tensor> {
        let x = Tensor::cat(
            &[
                self.high_up_proj.forward(high)?,
                self.low_up_proj.forward(low)?,
            ],
            2,
        )?;
        gelu_mlp(&self.layers, x)
    }
}

/// The linears in order, each after an exact-erf GELU where marked.
fn gelu_mlp(layers: &[(bool, Linear)], mut x: Tensor) -> Result<Tensor> {
    for (gelu, l) in layers {
        if *gelu {
            x = Activation::GeluErf.forward(&x)?;
        }
        x = l.forward(&x)?;
    }
    Ok(x)
}

/// `MlpProjector` with `projector_type: downsample_mlp_gelu` (v2 §4).
#[derive(Debug, Clone, PartialEq)]
pub struct DownsampleProjectorSpec {
    pub input_dim: usize,
    pub n_embed: usize,
    pub depth: usize,
    pub mlp_ratio: usize,
    pub downsample_ratio: usize,
}

/// VL2 `MlpProjector` with `projector_type: downsample_mlp_gelu` (v2 §4), keys `projector.layers.{0,2,…}`:
/// zero-pad the `g × g` grid to a multiple of `r`, `r × r` space-to-channel (channel-major, kernel
/// position innermost, as `F.unfold`), then `Linear → (GELU → Linear)…` with exact-erf GELU.
pub struct DownsampleProjector {
    ratio: usize,
    layers: Vec<Linear>,
}

impl DownsampleProjector {
    pub fn new(cfg: &DownsampleProjectorSpec, vb: VarBuilder) -> Result<Self> {
        let r = cfg.downsample_ratio;
        let hidden = cfg.n_embed * cfg.mlp_ratio;
        // The official builder always ends with GELU + Linear(hidden → n_embed), so depth 1
        // still has two linears.
        let n_linear = cfg.depth.max(2);
        let lv = vb.pp("layers");
        let mut layers = Vec::with_capacity(n_linear);
        for k in 0..n_linear {
            let in_dim = if k == 0 {
                cfg.input_dim * r * r
            } else {
                hidden
            };
            let out_dim = if k + 1 == n_linear {
                cfg.n_embed
            } else {
                hidden
            };
            layers.push(linear(in_dim, out_dim, true, lv.pp(2 * k))?);
        }
        Ok(Self { ratio: r, layers })
    }

    /// `[T, g², C]` vision features → `[T, ceil(g/r)², n_embed]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = self.space_to_channel(x)?;
        let mut x = self.layers[0].forward(&x)?;
        for l in &self.layers[1..] {
            x = l.forward(&Activation::GeluErf.forward(&x)?)?;
        }
        Ok(x)
    }

    /// `[T, g², C]` → `[T, (g'/r)², C·r²]` with `feat[c·r² + di·r + dj] = x[r·i + di, r·j + dj, c]`.
    fn space_to_channel(&self, x: &Tensor) -> Result<Tensor> {
        let (t, hw, c) = x.dims3()?;
        let g = (hw as f64).sqrt() as usize;
        if g * g != hw {
            candle_core::bail!("projector input has {hw} tokens per tile, not a square grid");
        }
        let r = self.ratio;
        let pad = (r - g % r) % r;
        let x = x.reshape((t, g, g, c))?;
        // Zeros appended after the final LayerNorm: one row at the bottom, one column at the right.
        let x = if pad > 0 {
            x.pad_with_zeros(1, 0, pad)?.pad_with_zeros(2, 0, pad)?
        } else {
            x
        };
        let n = (g + pad) / r;
        x.reshape((t, n, r, n, r, c))?
            .permute((0, 1, 3, 5, 2, 4))?
            .reshape((t, n * n, c * r * r))
    }
}
