//! DeepSeek-OCR's CLIP-L/14 (`deepencoder/clip_sdpa.py`, `VitModel`, github deepseek-ai/DeepSeek-OCR
//! @ e4ac34e): a pre-norm ViT whose patch embedding is bypassed by the SAM features.
//!
//! Keys under the tower prefix: `embeddings.{class_embedding [C], patch_embedding.weight (unused),
//! position_embedding.weight [257, C]}`, `pre_layrnorm`, `transformer.layers.{i}.{layer_norm1,
//! self_attn.{qkv_proj, out_proj}, layer_norm2, mlp.{fc1, fc2}}`. No final LayerNorm.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::image::{resize_antialias_f32, AaFilter};
use crate::nn::{layer_norm, linear, sdpa, Activation, LayerNorm, Linear, Mlp, Scale};

/// Sizes of the CLIP-L of the DeepEncoder (published: width 1024, 24 layers, 16 heads, ffn 4096,
/// 224 / 14 → 16×16 + 1 positions, LayerNorm eps 1e-5).
#[derive(Debug, Clone, PartialEq)]
pub struct ClipLSpec {
    pub width: usize,
    pub layers: usize,
    pub heads: usize,
    pub ffn_hidden: usize,
    /// Side of the position grid (`image_size / patch_size`, 16).
    pub pos_grid: usize,
    pub ln_eps: f64,
    pub pre_ln_eps: f64,
}

struct Attention {
    qkv_proj: Linear,
    out_proj: Linear,
    heads: usize,
}

impl Attention {
    /// `[B, T, C] -> [B, T, C]`; ref: `xqkv.view(bsz, seqlen, 3, heads, head_dim)`, SDPA, default scale.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, c) = x.dims3()?;
        let hd = c / self.heads;
        let qkv = self
            .qkv_proj
            .forward(x)?
            .reshape((b, t, 3, self.heads, hd))?
            .permute((2, 0, 3, 1, 4))?; // (3, B, heads, T, hd)
        let q = qkv.get(0)?.reshape((b * self.heads, t, hd))?.contiguous()?;
        let k = qkv.get(1)?.reshape((b * self.heads, t, hd))?.contiguous()?;
        let v = qkv.get(2)?.reshape((b * self.heads, t, hd))?.contiguous()?;
        let o = sdpa(&q, &k, &v, Scale::Scores((hd as f64).powf(-0.5)), None)?;
        // ref: output.permute(0, 2, 1, 3).reshape(bsz, seqlen, -1)
        let o = o
            .reshape((b, self.heads, t, hd))?
            .transpose(1, 2)?
            .reshape((b, t, c))?;
        self.out_proj.forward(&o)
    }
}

struct Layer {
    layer_norm1: LayerNorm,
    self_attn: Attention,
    layer_norm2: LayerNorm,
    mlp: Mlp,
}

impl Layer {
    fn new(cfg: &ClipLSpec, vb: VarBuilder) -> Result<Self> {
        let a = vb.pp("self_attn");
        Ok(Self {
            layer_norm1: layer_norm(cfg.width, cfg.ln_eps, vb.pp("layer_norm1"))?,
            self_attn: Attention {
                qkv_proj: linear(cfg.width, 3 * cfg.width, true, a.pp("qkv_proj"))?,
                out_proj: linear(cfg.width, cfg.width, true, a.pp("out_proj"))?,
                heads: cfg.heads,
            },
            layer_norm2: layer_norm(cfg.width, cfg.ln_eps, vb.pp("layer_norm2"))?,
            mlp: Mlp::new(
                cfg.width,
                cfg.ffn_hidden,
                Activation::QuickGelu,
                ("fc1", "fc2"),
                vb.pp("mlp"),
            )?,
        })
    }

    /// ref: `h = x + attn(layer_norm1(x)); out = h + mlp(layer_norm2(h))`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = (x + self.self_attn.forward(&self.layer_norm1.forward(x)?)?)?;
        &h + self.mlp.forward(&self.layer_norm2.forward(&h)?)?
    }
}

/// CLIP-L over SAM features. `forward(patch_embeds [B, C, g, g]) -> [B, 1 + g², C]` (class token first).
pub struct ClipL {
    class_embedding: Tensor,
    /// `[1 + pos_grid², C]`.
    position_embedding: Tensor,
    pos_grid: usize,
    pre_layrnorm: LayerNorm,
    layers: Vec<Layer>,
}

impl ClipL {
    pub fn new(cfg: &ClipLSpec, vb: VarBuilder) -> Result<Self> {
        let e = vb.pp("embeddings");
        let n_pos = cfg.pos_grid * cfg.pos_grid + 1;
        Ok(Self {
            class_embedding: e.get(cfg.width, "class_embedding")?,
            position_embedding: e.get((n_pos, cfg.width), "position_embedding.weight")?,
            pos_grid: cfg.pos_grid,
            pre_layrnorm: layer_norm(cfg.width, cfg.pre_ln_eps, vb.pp("pre_layrnorm"))?,
            layers: (0..cfg.layers)
                .map(|i| Layer::new(cfg, vb.pp("transformer.layers").pp(i)))
                .collect::<Result<Vec<_>>>()?,
        })
    }

    /// `get_abs_pos`: the class position, then the `pos_grid²` grid resized to `side²` (bicubic,
    /// antialiased, in f32) when `side` differs. Out: `[1 + side², C]`.
    pub fn position_embedding(&self, side: usize) -> Result<Tensor> {
        if side == self.pos_grid {
            return Ok(self.position_embedding.clone());
        }
        let c = self.position_embedding.dim(1)?;
        let dtype = self.position_embedding.dtype();
        let cls = self.position_embedding.narrow(0, 0, 1)?;
        let g = self.pos_grid;
        // ref: old_pos_embed.view(1, g, g, dim).permute(0, 3, 1, 2).to(float32)
        let grid = self
            .position_embedding
            .narrow(0, 1, g * g)?
            .to_dtype(candle_core::DType::F32)?
            .t()?
            .contiguous()?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let resized = resize_antialias_f32(&grid, c, (g, g), (side, side), AaFilter::Bicubic)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        // [C, side, side] -> [side², C]
        let resized = Tensor::from_vec(resized, (c, side * side), cls.device())?
            .t()?
            .to_dtype(dtype)?;
        Tensor::cat(&[&cls, &resized], 0)
    }

    pub fn forward(&self, patch_embeds: &Tensor) -> Result<Tensor> {
        let _span = tracing::debug_span!("clip_l").entered();
        let (b, c, h, w) = patch_embeds.dims4()?;
        // ref: patch_embeds.flatten(2).transpose(1, 2); cat([class, patches]) + get_abs_pos(...)
        let patches = patch_embeds.flatten_from(2)?.transpose(1, 2)?;
        let cls = self
            .class_embedding
            .reshape((1, 1, c))?
            .broadcast_as((b, 1, c))?;
        let x = Tensor::cat(&[&cls, &patches], 1)?;
        let side = ((h * w) as f64).sqrt() as usize;
        let x = x.broadcast_add(&self.position_embedding(side)?.unsqueeze(0)?)?;
        let mut x = self.pre_layrnorm.forward(&x)?;
        for layer in &self.layers {
            x = layer.forward(&x)?;
        }
        Ok(x)
    }
}
