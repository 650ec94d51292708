//! SigLIP ViT (v1 §4): patch conv, learned absolute positions, pre-norm blocks, final LayerNorm.
//! No class token, no attention-pool head (its weights are in the checkpoint but never run).
//! Keys under the tower prefix: `pos_embed`, `patch_embed.proj`, `blocks.{i}.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}`, `norm`.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::nn::{
    conv2d, layer_norm, linear, sdpa, Activation, Conv2d, LayerNorm, Linear, Mlp, Scale,
};

/// SigLIP ViT (v1 §4).
#[derive(Debug, Clone, PartialEq)]
pub struct SiglipSpec {
    pub image_size: usize,
    pub patch_size: usize,
    pub width: usize,
    pub layers: usize,
    pub heads: usize,
    pub mlp_hidden: usize,
    pub ln_eps: f64,
    pub act: Activation,
    pub pixel_mean: [f64; 3],
    pub pixel_std: [f64; 3],
}

impl SiglipSpec {
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }
}

struct Attention {
    qkv: Linear,
    proj: Linear,
    heads: usize,
}

impl Attention {
    fn new(cfg: &SiglipSpec, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            qkv: linear(cfg.width, 3 * cfg.width, true, vb.pp("qkv"))?,
            proj: linear(cfg.width, cfg.width, true, vb.pp("proj"))?,
            heads: cfg.heads,
        })
    }

    /// `[B, N, C] -> [B, N, C]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, c) = x.dims3()?;
        let hd = c / self.heads;
        // ref: qkv.reshape(B, N, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
        let qkv = self
            .qkv
            .forward(x)?
            .reshape((b, n, 3, self.heads, hd))?
            .permute((2, 0, 3, 1, 4))?;
        let q = qkv.get(0)?.contiguous()?;
        let k = qkv.get(1)?.contiguous()?;
        let v = qkv.get(2)?.contiguous()?;
        let scale = 1.0 / (hd as f64).sqrt();
        let o = sdpa(&q, &k, &v, Scale::Scores(scale), None)?; // (B, H, N, hd)
        let o = o.transpose(1, 2)?.reshape((b, n, c))?;
        self.proj.forward(&o)
    }
}

struct Block {
    norm1: LayerNorm,
    attn: Attention,
    norm2: LayerNorm,
    mlp: Mlp,
}

impl Block {
    fn new(cfg: &SiglipSpec, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm1: layer_norm(cfg.width, cfg.ln_eps, vb.pp("norm1"))?,
            attn: Attention::new(cfg, vb.pp("attn"))?,
            norm2: layer_norm(cfg.width, cfg.ln_eps, vb.pp("norm2"))?,
            mlp: Mlp::new(
                cfg.width,
                cfg.mlp_hidden,
                cfg.act,
                ("fc1", "fc2"),
                vb.pp("mlp"),
            )?,
        })
    }

    /// x + attn(norm1(x)), then + mlp(norm2(x)).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = (x + self.attn.forward(&self.norm1.forward(x)?)?)?;
        &x + self.mlp.forward(&self.norm2.forward(&x)?)?
    }
}

/// SigLIP trunk. Input: normalised `[B, 3, S, S]`; output `[B, (S/p)², width]`.
pub struct Siglip {
    patch_embed: Conv2d,
    pos_embed: Tensor,
    blocks: Vec<Block>,
    norm: LayerNorm,
}

impl Siglip {
    pub fn new(cfg: &SiglipSpec, vb: VarBuilder) -> Result<Self> {
        let p = cfg.patch_size;
        let patch_embed = conv2d(3, cfg.width, p, p, 0, true, vb.pp("patch_embed.proj"))?;
        let n = cfg.grid() * cfg.grid();
        let pos_embed = vb.get((1, n, cfg.width), "pos_embed")?;
        let blocks = (0..cfg.layers)
            .map(|i| Block::new(cfg, vb.pp("blocks").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let norm = layer_norm(cfg.width, cfg.ln_eps, vb.pp("norm"))?;
        Ok(Self {
            patch_embed,
            pos_embed,
            blocks,
            norm,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let _span = tracing::debug_span!("siglip").entered();
        // Patch conv → (B, C, g, g) → flatten row-major → (B, g², C).
        let x = self
            .patch_embed
            .forward(x)?
            .flatten_from(2)?
            .transpose(1, 2)?;
        let mut x = x.broadcast_add(&self.pos_embed)?;
        for block in &self.blocks {
            x = block.forward(&x)?;
        }
        self.norm.forward(&x)
    }
}
