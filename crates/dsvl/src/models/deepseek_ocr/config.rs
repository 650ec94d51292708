//! DeepSeek-OCR's `config.json`: the DeepEncoder sizes.
//!
//! The official vLLM code hard-codes the encoder (`build_sam_vit_b`, `build_clip_l`, the 2048 → 1280
//! projector); the defaults below are those values. `vision_config.width` may carry per-tower size
//! overrides (`"sam_vit_b"`, `"clip-l-14-224"`), which the tiny test checkpoints use, and which
//! this resolver honours; a published config that lacks them gets the hard-coded sizes.

use serde::Deserialize;

use crate::vision::clip_l::ClipLSpec;
use crate::vision::sam::SamSpec;

/// `build_sam_vit_b()` with `_build_sam`: width 768, 12 blocks, 12 heads, global attention at 2, 5,
/// 8, 11 (windows of 14 elsewhere), 1024 / 16, MLP ratio 4, neck 256, `net_2` 512, `net_3` 1024.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct SamJson {
    pub width: usize,
    pub layers: usize,
    pub heads: usize,
    pub global_attn_indexes: Vec<usize>,
    pub downsample_channels: Vec<usize>,
    pub neck_channels: usize,
    pub window_size: usize,
    pub mlp_ratio: f64,
}

impl Default for SamJson {
    fn default() -> Self {
        Self {
            width: 768,
            layers: 12,
            heads: 12,
            global_attn_indexes: vec![2, 5, 8, 11],
            downsample_channels: vec![512, 1024],
            neck_channels: 256,
            window_size: 14,
            mlp_ratio: 4.0,
        }
    }
}

/// `vit_model_cfg` of `clip_sdpa.py`: width 1024, 24 layers, 16 heads, ffn 4096, 224 / 14.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ClipJson {
    pub width: usize,
    pub layers: usize,
    pub heads: usize,
    pub ffn_hidden_size: usize,
    pub image_size: usize,
    pub patch_size: usize,
}

impl Default for ClipJson {
    fn default() -> Self {
        Self {
            width: 1024,
            layers: 24,
            heads: 16,
            ffn_hidden_size: 4096,
            image_size: 224,
            patch_size: 14,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct TowerWidths {
    #[serde(rename = "sam_vit_b")]
    pub sam: SamJson,
    #[serde(rename = "clip-l-14-224")]
    pub clip: ClipJson,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct OcrVisionJson {
    /// A number in some configs (a plain width); only the per-tower object form carries sizes.
    #[serde(deserialize_with = "widths_or_default")]
    pub width: TowerWidths,
}

fn widths_or_default<'de, D: serde::Deserializer<'de>>(d: D) -> Result<TowerWidths, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    if v.is_object() {
        serde_json::from_value(v).map_err(serde::de::Error::custom)
    } else {
        Ok(TowerWidths::default())
    }
}

/// `MlpProjector(projector_type="linear", input_dim=2048, n_embed=1280)`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct OcrProjectorJson {
    pub input_dim: usize,
    pub n_embed: usize,
}

impl Default for OcrProjectorJson {
    fn default() -> Self {
        Self {
            input_dim: 2048,
            n_embed: 1280,
        }
    }
}

/// The encoder part of `config.json`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct OcrEncoderJson {
    pub vision_config: OcrVisionJson,
    pub projector_config: OcrProjectorJson,
}

/// Resolved DeepEncoder sizes.
#[derive(Debug, Clone, PartialEq)]
pub struct DeepEncoderSpec {
    pub sam: SamSpec,
    pub clip: ClipLSpec,
    /// Projector input (`clip.width + sam.out_dim()`) and output (the language model's width).
    pub projector_in: usize,
    pub n_embed: usize,
}

impl OcrEncoderJson {
    pub fn resolve(&self) -> DeepEncoderSpec {
        let (s, c) = (
            &self.vision_config.width.sam,
            &self.vision_config.width.clip,
        );
        let sam = SamSpec {
            image_size: 1024,
            patch_size: 16,
            width: s.width,
            layers: s.layers,
            heads: s.heads,
            mlp_hidden: (s.width as f64 * s.mlp_ratio) as usize,
            window_size: s.window_size,
            global_attn_indexes: s.global_attn_indexes.clone(),
            neck_channels: s.neck_channels,
            downsample_channels: s.downsample_channels.clone(),
            // `partial(torch.nn.LayerNorm, eps=1e-6)`; LayerNorm2d's default eps is 1e-6 too
            ln_eps: 1e-6,
            // normalisation happens in the processor (mean = std = 0.5), not in the tower
            pixel_mean: [0.5; 3],
            pixel_std: [0.5; 3],
            upsample_size: 0,
        };
        let clip = ClipLSpec {
            width: c.width,
            layers: c.layers,
            heads: c.heads,
            ffn_hidden: c.ffn_hidden_size,
            pos_grid: c.image_size / c.patch_size,
            ln_eps: 1e-5,
            pre_ln_eps: 1e-5,
        };
        DeepEncoderSpec {
            projector_in: self.projector_config.input_dim,
            n_embed: self.projector_config.n_embed,
            sam,
            clip,
        }
    }
}
