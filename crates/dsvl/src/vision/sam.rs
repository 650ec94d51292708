//! SAM-B ViTDet image encoder with DeepSeek's downsample convs: the DeepSeek-VL 7B variant with its
//! HD path (v1 §5), and DeepSeek-OCR's DeepEncoder variant (`deepencoder/sam_vary_sdpa.py`).
//!
//! Keys under the tower prefix: `patch_embed.proj`, `pos_embed [1, g, g, C]`,
//! `blocks.{i}.{norm1, attn.{qkv, proj, rel_pos_h, rel_pos_w}, norm2, mlp.{lin1, lin2}}`, `neck.{0..3}`;
//! v1: `neck_hd.{0..3}`, `downsamples.{k}`, `hd_alpha_downsamples`; DeepSeek-OCR: `net_2`, `net_3`.
//! DeepSeek-OCR feeds other sizes than the checkpoint's 1024: the position embedding and the
//! global blocks' relative-position tables are then interpolated as the reference does.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::image::{resize_antialias_f32, AaFilter};
use crate::nn::{
    conv2d, layer_norm, linear, matmul, sdpa, Activation, Conv2d, LayerNorm, Linear, Mlp, Scale,
};

/// SAM-B ViTDet encoder with the DeepSeek downsample and HD path (v1 §5).
#[derive(Debug, Clone, PartialEq)]
pub struct SamSpec {
    pub image_size: usize,
    pub patch_size: usize,
    pub width: usize,
    pub layers: usize,
    pub heads: usize,
    pub mlp_hidden: usize,
    pub window_size: usize,
    pub global_attn_indexes: Vec<usize>,
    /// Neck channels (`prompt_embed_dim` / transformers `output_channels`).
    pub neck_channels: usize,
    pub downsample_channels: Vec<usize>,
    pub ln_eps: f64,
    pub pixel_mean: [f64; 3],
    pub pixel_std: [f64; 3],
    /// The 64→96 upsample before the downsample convs is hard-coded in the reference (v1 §5.2).
    pub upsample_size: usize,
}

impl SamSpec {
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }
    /// Output channels (last downsample conv, or the neck when there is none).
    pub fn out_dim(&self) -> usize {
        self.downsample_channels
            .last()
            .copied()
            .unwrap_or(self.neck_channels)
    }
}

/// Score matrices above this many bytes are computed a few heads at a time (global blocks on a
/// 64×64 grid have 4096² scores per head).
const SCORE_CHUNK_BYTES: usize = 256 << 20;

/// `[2·size−1, C]` table → `[size, size, C]` with `R[i, j] = table[i − j + size − 1]`
/// (ref `get_rel_pos` with q_size == k_size, so no resizing).
fn gather_rel_pos(table: &Tensor, size: usize) -> Result<Tensor> {
    let idx: Vec<u32> = (0..size)
        .flat_map(|i| (0..size).map(move |j| (i + size - 1 - j) as u32))
        .collect();
    let idx = Tensor::from_vec(idx, size * size, table.device())?;
    let c = table.dim(1)?;
    table.index_select(&idx, 0)?.reshape((size, size, c))
}

/// `get_rel_pos` resizing: `F.interpolate(table[None].permute(0, 2, 1), size=len, mode="linear")`
/// (align_corners False) in f32, `[L, C] -> [len, C]`.
fn interpolate_rel_pos(table: &Tensor, len: usize) -> Result<Tensor> {
    let (l, c) = table.dims2()?;
    let dtype = table.dtype();
    let src: Vec<Vec<f32>> = table.to_dtype(DType::F32)?.to_vec2()?;
    let scale = l as f32 / len as f32;
    let mut out = Vec::with_capacity(len * c);
    for i in 0..len {
        // ref: area_pixel_compute_source_index: max(scale * (i + 0.5) - 0.5, 0)
        let x = (scale * (i as f32 + 0.5) - 0.5).max(0.0);
        let i0 = (x as usize).min(l - 1);
        let i1 = (i0 + 1).min(l - 1);
        let w1 = x - i0 as f32;
        let w0 = 1.0 - w1;
        out.extend((0..c).map(|k| w0 * src[i0][k] + w1 * src[i1][k]));
    }
    Tensor::from_vec(out, (len, c), table.device())?.to_dtype(dtype)
}

struct Attention {
    qkv: Linear,
    proj: Linear,
    heads: usize,
    /// Grid side the checkpoint's tables are for (the window, or the 1024 input's grid).
    size: usize,
    /// `[2·size−1, hd]`, as stored.
    rel_pos_h: Tensor,
    rel_pos_w: Tensor,
    /// `[h, h, hd]` and `[w, w, hd]` for `size`, gathered once at load.
    rel_h: Tensor,
    rel_w: Tensor,
}

impl Attention {
    fn new(cfg: &SamSpec, size: usize, vb: VarBuilder) -> Result<Self> {
        let hd = cfg.width / cfg.heads;
        let table_len = 2 * size - 1;
        let rel_pos_h = vb.get((table_len, hd), "rel_pos_h")?;
        let rel_pos_w = vb.get((table_len, hd), "rel_pos_w")?;
        Ok(Self {
            qkv: linear(cfg.width, 3 * cfg.width, true, vb.pp("qkv"))?,
            proj: linear(cfg.width, cfg.width, true, vb.pp("proj"))?,
            heads: cfg.heads,
            size,
            rel_h: gather_rel_pos(&rel_pos_h, size)?,
            rel_w: gather_rel_pos(&rel_pos_w, size)?,
            rel_pos_h,
            rel_pos_w,
        })
    }

    /// The gathered tables for an `h × w` grid: the load-time ones, or (global blocks on another
    /// input size) the tables resized to `2·side − 1` first (ref `get_rel_pos`).
    fn rel_tables(&self, h: usize, w: usize) -> Result<(Tensor, Tensor)> {
        let table = |t: &Tensor, gathered: &Tensor, side: usize| -> Result<Tensor> {
            if side == self.size {
                Ok(gathered.clone())
            } else {
                gather_rel_pos(&interpolate_rel_pos(t, 2 * side - 1)?, side)
            }
        };
        Ok((
            table(&self.rel_pos_h, &self.rel_h, h)?,
            table(&self.rel_pos_w, &self.rel_w, w)?,
        ))
    }

    /// `[B, h, w, C] -> [B, h, w, C]` (B = images × windows).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, h, w, c) = x.dims4()?;
        let hd = c / self.heads;
        let t = h * w;
        // ref: qkv.reshape(B, H*W, 3, heads, -1).permute(2, 0, 3, 1, 4).reshape(3, B*heads, H*W, -1)
        let qkv = self
            .qkv
            .forward(x)?
            .reshape((b, t, 3, self.heads, hd))?
            .permute((2, 0, 3, 1, 4))?
            .reshape((3, b * self.heads, t, hd))?;
        let (q, k, v) = (qkv.get(0)?, qkv.get(1)?, qkv.get(2)?);
        let (rel_h, rel_w) = self.rel_tables(h, w)?;
        let bh = b * self.heads;
        let per_item = t * t * 4;
        let chunk = (SCORE_CHUNK_BYTES / per_item.max(1)).clamp(1, bh);
        let mut outs = Vec::with_capacity(bh.div_ceil(chunk));
        for start in (0..bh).step_by(chunk) {
            let n = chunk.min(bh - start);
            let q = q.narrow(0, start, n)?.contiguous()?;
            let k = k.narrow(0, start, n)?.contiguous()?;
            let v = v.narrow(0, start, n)?.contiguous()?;
            let bias = rel_pos_bias(&q, h, w, &rel_h, &rel_w)?;
            // v1 §13.7: q scaled before q·kᵀ; rel-pos terms use the unscaled q.
            outs.push(sdpa(
                &q,
                &k,
                &v,
                Scale::Query((hd as f64).powf(-0.5)),
                Some(&bias),
            )?);
        }
        let o = Tensor::cat(&outs, 0)?; // (B·heads, T, hd)
                                        // ref: .view(B, heads, H, W, -1).permute(0, 2, 3, 1, 4).reshape(B, H, W, -1)
        let o = o
            .reshape((b, self.heads, h, w, hd))?
            .permute((0, 2, 3, 1, 4))?
            .reshape((b, h, w, c))?;
        self.proj.forward(&o)
    }
}

/// Decomposed relative-position bias `[n, T, T]` for queries `q` `[n, T, hd]` (v1 §5.1 step 3), with the
/// gathered tables `rel_h [h, h, hd]`, `rel_w [w, w, hd]`.
fn rel_pos_bias(
    q: &Tensor,
    h: usize,
    w: usize,
    rel_h_t: &Tensor,
    rel_w_t: &Tensor,
) -> Result<Tensor> {
    let (n, _, hd) = q.dims3()?;
    let r_q = q.reshape((n, h, w, hd))?;
    // ref: rel_h = einsum("bhwc,hkc->bhwk", r_q, Rh): one (n·w, hd)×(hd, k) GEMM per row qh.
    let rows_h = r_q.permute((1, 0, 2, 3))?.reshape((h, n * w, hd))?;
    let rel_h = matmul(&rows_h, &rel_h_t.transpose(1, 2)?)?
        .reshape((h, n, w, h))?
        .permute((1, 0, 2, 3))?; // (n, qh, qw, kh)
                                 // ref: rel_w = einsum("bhwc,wkc->bhwk", r_q, Rw): one GEMM per column qw.
    let rows_w = r_q.permute((2, 0, 1, 3))?.reshape((w, n * h, hd))?;
    let rel_w = matmul(&rows_w, &rel_w_t.transpose(1, 2)?)?
        .reshape((w, n, h, w))?
        .permute((1, 2, 0, 3))?; // (n, qh, qw, kw)
                                 // ref: attn.view(B, qh, qw, kh, kw) + rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]
    let bias = rel_h
        .unsqueeze(4)?
        .broadcast_add(&rel_w.unsqueeze(3)?)?
        .reshape((n, h * w, h * w))?;
    Ok(bias)
}

struct Block {
    norm1: LayerNorm,
    attn: Attention,
    norm2: LayerNorm,
    mlp: Mlp,
    /// 0 = global attention.
    window: usize,
}

impl Block {
    fn new(cfg: &SamSpec, global: bool, vb: VarBuilder) -> Result<Self> {
        let window = if global { 0 } else { cfg.window_size };
        let size = if global { cfg.grid() } else { window };
        Ok(Self {
            norm1: layer_norm(cfg.width, cfg.ln_eps, vb.pp("norm1"))?,
            attn: Attention::new(cfg, size, vb.pp("attn"))?,
            norm2: layer_norm(cfg.width, cfg.ln_eps, vb.pp("norm2"))?,
            mlp: Mlp::new(
                cfg.width,
                cfg.mlp_hidden,
                Activation::GeluErf,
                ("lin1", "lin2"),
                vb.pp("mlp"),
            )?,
            window,
        })
    }

    /// `[B, H, W, C] -> [B, H, W, C]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let shortcut = x;
        let y = self.norm1.forward(x)?;
        let y = if self.window > 0 {
            let (_, h, w, _) = y.dims4()?;
            let (windows, hp, wp) = window_partition(&y, self.window)?;
            let a = self.attn.forward(&windows)?;
            window_unpartition(&a, self.window, (hp, wp), (h, w))?
        } else {
            self.attn.forward(&y)?
        };
        let x = (shortcut + y)?;
        &x + self.mlp.forward(&self.norm2.forward(&x)?)?
    }
}

/// v1 §5.1/§13.14: zero-pad H and W up to a multiple of the window AFTER norm1 and do NOT mask the
/// padding: padded tokens take part as keys/values with bias-only q/k/v. Masking them would look
/// cleaner and break parity. `[B, H, W, C] -> [B·nw, win, win, C]`.
fn window_partition(x: &Tensor, win: usize) -> Result<(Tensor, usize, usize)> {
    let (b, h, w, c) = x.dims4()?;
    let pad_h = (win - h % win) % win;
    let pad_w = (win - w % win) % win;
    let x = x.pad_with_zeros(1, 0, pad_h)?.pad_with_zeros(2, 0, pad_w)?;
    let (hp, wp) = (h + pad_h, w + pad_w);
    let windows = x
        .reshape((b, hp / win, win, wp / win, win, c))?
        .permute((0, 1, 3, 2, 4, 5))?
        .reshape((b * (hp / win) * (wp / win), win, win, c))?;
    Ok((windows, hp, wp))
}

fn window_unpartition(
    windows: &Tensor,
    win: usize,
    (hp, wp): (usize, usize),
    (h, w): (usize, usize),
) -> Result<Tensor> {
    let c = windows.dim(3)?;
    let b = windows.dim(0)? / ((hp / win) * (wp / win));
    windows
        .reshape((b, hp / win, wp / win, win, win, c))?
        .permute((0, 1, 3, 2, 4, 5))?
        .reshape((b, hp, wp, c))?
        .narrow(1, 0, h)?
        .narrow(2, 0, w)
}

/// SAM's `LayerNorm2d` over channels of `[B, C, H, W]`, computed op by op as the reference does
/// (v1 §13.4): u = mean_c(x), s = mean_c((x−u)²), (x−u)/sqrt(s+eps), then weight·x + bias.
struct LayerNorm2d {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm2d {
    fn new(c: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get(c, "weight")?.reshape((1, c, 1, 1))?,
            bias: vb.get(c, "bias")?.reshape((1, c, 1, 1))?,
            eps,
        })
    }
}

impl Module for LayerNorm2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let u = x.mean_keepdim(1)?;
        let d = x.broadcast_sub(&u)?;
        let s = d.sqr()?.mean_keepdim(1)?;
        let x = d.broadcast_div(&(s + self.eps)?.sqrt()?)?;
        x.broadcast_mul(&self.weight)?.broadcast_add(&self.bias)
    }
}

/// `neck` / `neck_hd`: Conv1×1 (no bias) → LayerNorm2d → Conv3×3 pad 1 (no bias) → LayerNorm2d.
struct Neck {
    conv1: Conv2d,
    ln1: LayerNorm2d,
    conv2: Conv2d,
    ln2: LayerNorm2d,
}

impl Neck {
    fn new(cfg: &SamSpec, vb: VarBuilder) -> Result<Self> {
        let c = cfg.neck_channels;
        Ok(Self {
            conv1: conv2d(cfg.width, c, 1, 1, 0, false, vb.pp("0"))?,
            ln1: LayerNorm2d::new(c, cfg.ln_eps, vb.pp("1"))?,
            conv2: conv2d(c, c, 3, 1, 1, false, vb.pp("2"))?,
            ln2: LayerNorm2d::new(c, cfg.ln_eps, vb.pp("3"))?,
        })
    }

    /// `[B, H, W, C]` (channels-last trunk output) → `[B, neck, H, W]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.permute((0, 3, 1, 2))?.contiguous()?;
        let x = self.ln1.forward(&self.conv1.forward(&x)?)?;
        self.ln2.forward(&self.conv2.forward(&x)?)
    }
}

/// The v1 HD path: `neck_hd` on the first global block's output, scaled by a learned alpha.
struct HdPath {
    neck_hd: Neck,
    hd_alpha: Tensor,
}

/// SAM-B encoder. v1 ([`Sam::new`]): input normalised `[B, 3, 1024, 1024]`, output `[B, 576, out_dim]`
/// (row-major 24×24). DeepSeek-OCR ([`Sam::new_deep_encoder`]): input `[B, 3, S, S]` for any `S` that is
/// a multiple of 64, output `[B, out_dim, S/64, S/64]` ([`Sam::features`]).
pub struct Sam {
    patch_embed: Conv2d,
    pos_embed: Tensor,
    blocks: Vec<Block>,
    neck: Neck,
    hd: Option<HdPath>,
    downsamples: Vec<Conv2d>,
    /// v1's 64→96 bilinear upsample before the downsample convs; none in DeepSeek-OCR.
    upsample: Option<usize>,
}

impl Sam {
    pub fn new(cfg: &SamSpec, vb: VarBuilder) -> Result<Self> {
        let mut sam = Self::trunk(cfg, &vb, |i| vb.pp("downsamples").pp(i))?;
        sam.hd = Some(HdPath {
            neck_hd: Neck::new(cfg, vb.pp("neck_hd"))?,
            hd_alpha: vb.get(1, "hd_alpha_downsamples")?,
        });
        sam.upsample = Some(cfg.upsample_size);
        Ok(sam)
    }

    /// DeepSeek-OCR's variant (`ImageEncoderViT` of `sam_vary_sdpa.py`): the neck, then the stride-2
    /// convolutions `net_2`, `net_3` (`cfg.downsample_channels`), no upsample, no HD path.
    pub fn new_deep_encoder(cfg: &SamSpec, vb: VarBuilder) -> Result<Self> {
        Self::trunk(cfg, &vb, |i| vb.pp(format!("net_{}", i + 2)))
    }

    fn trunk<'a>(
        cfg: &SamSpec,
        vb: &VarBuilder<'a>,
        downsample_vb: impl Fn(usize) -> VarBuilder<'a>,
    ) -> Result<Self> {
        let g = cfg.grid();
        let p = cfg.patch_size;
        let patch_embed = conv2d(3, cfg.width, p, p, 0, true, vb.pp("patch_embed.proj"))?;
        let pos_embed = vb.get((1, g, g, cfg.width), "pos_embed")?;
        let blocks = (0..cfg.layers)
            .map(|i| {
                Block::new(
                    cfg,
                    cfg.global_attn_indexes.contains(&i),
                    vb.pp("blocks").pp(i),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let mut in_c = cfg.neck_channels;
        let mut downsamples = Vec::new();
        for (i, &out_c) in cfg.downsample_channels.iter().enumerate() {
            downsamples.push(conv2d(in_c, out_c, 3, 2, 1, false, downsample_vb(i))?);
            in_c = out_c;
        }
        Ok(Self {
            patch_embed,
            pos_embed,
            blocks,
            neck: Neck::new(cfg, vb.pp("neck"))?,
            hd: None,
            downsamples,
            upsample: None,
        })
    }

    /// `get_abs_pos` of `sam_vary_sdpa.py`: the `[1, g, g, C]` table, resized to `side²` (bicubic,
    /// antialiased, in f32) when `side` differs from the checkpoint's grid.
    pub fn pos_embed(&self, side: usize) -> Result<Tensor> {
        let (_, g, _, c) = self.pos_embed.dims4()?;
        if side == g {
            return Ok(self.pos_embed.clone());
        }
        let dtype = self.pos_embed.dtype();
        // ref: abs_pos.permute(0, 3, 1, 2).to(float32), interpolate, .to(dtype).permute(0, 2, 3, 1)
        let chw = self
            .pos_embed
            .to_dtype(DType::F32)?
            .permute((0, 3, 1, 2))?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let resized = resize_antialias_f32(&chw, c, (g, g), (side, side), AaFilter::Bicubic)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        Tensor::from_vec(resized, (1, c, side, side), self.pos_embed.device())?
            .to_dtype(dtype)?
            .permute((0, 2, 3, 1))
    }

    /// DeepSeek-OCR: patch conv + position embedding, the blocks, the neck, `net_2`, `net_3`.
    /// `[B, 3, S, S] -> [B, out_dim, S/64, S/64]`.
    pub fn features(&self, x: &Tensor) -> Result<Tensor> {
        let _span = tracing::debug_span!("sam").entered();
        let x = self.patch_embed.forward(x)?.permute((0, 2, 3, 1))?;
        let side = x.dim(1)?;
        let mut x = x.broadcast_add(&self.pos_embed(side)?)?;
        for block in &self.blocks {
            x = block.forward(&x)?;
        }
        let mut x = self.neck.forward(&x)?;
        for conv in &self.downsamples {
            x = conv.forward(&x)?;
        }
        Ok(x)
    }

    /// v1 §13.6: the 64→96 bilinear upsample runs in f32, then back to the working dtype; then
    /// the stride-2 convs with no activation in between.
    fn resample_down(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let mut x = match self.upsample {
            Some(size) => x
                .to_dtype(DType::F32)?
                .upsample_bilinear2d(size, size, false)?
                .to_dtype(dtype)?,
            None => x.clone(),
        };
        for conv in &self.downsamples {
            x = conv.forward(&x)?;
        }
        Ok(x)
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let _span = tracing::debug_span!("sam").entered();
        // Patch conv, then channels-last for the whole trunk.
        let x = self.patch_embed.forward(x)?.permute((0, 2, 3, 1))?;
        let mut x = x.broadcast_add(&self.pos_embed)?;
        let mut first_global = None;
        for block in &self.blocks {
            x = block.forward(&x)?;
            if block.window == 0 && first_global.is_none() {
                first_global = Some(x.clone());
            }
        }
        let main = self.resample_down(&self.neck.forward(&x)?)?;
        // HD path (sam_hd=True, v1 §5.2): neck_hd on the first global block's output, same
        // upsample and the SAME downsample convs, scaled by the learned alpha.
        let out = match (first_global, &self.hd) {
            (Some(g), Some(hd)) => {
                let hd_out = self.resample_down(&hd.neck_hd.forward(&g)?)?;
                (main + hd_out.broadcast_mul(&hd.hd_alpha)?)?
            }
            _ => main,
        };
        // ref: rearrange(x, "b c h w -> b (h w) c")
        out.flatten_from(2)?.transpose(1, 2)?.contiguous()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn rel_pos_gather_indexes_i_minus_j() -> Result<()> {
        let table = Tensor::arange(0f32, 5.0, &Device::Cpu)?.reshape((5, 1))?;
        let r = gather_rel_pos(&table, 3)?.squeeze(2)?.to_vec2::<f32>()?;
        // R[i, j] = table[i - j + 2]
        assert_eq!(
            r,
            vec![vec![2., 1., 0.], vec![3., 2., 1.], vec![4., 3., 2.]]
        );
        Ok(())
    }

    #[test]
    fn window_partition_round_trips_and_pads_with_zeros() -> Result<()> {
        let x =
            Tensor::arange(0f32, (2 * 5 * 5 * 3) as f32, &Device::Cpu)?.reshape((2, 5, 5, 3))?;
        let (win, hp, wp) = window_partition(&x, 3)?;
        assert_eq!((win.dims(), hp, wp), (&[8usize, 3, 3, 3][..], 6, 6));
        // Window (0, 1) of image 0 holds rows 0..3, cols 3..6; col 5 is padding.
        let w01 = win.get(1)?;
        assert_eq!(w01.get(0)?.get(2)?.to_vec1::<f32>()?, vec![0., 0., 0.]);
        assert_eq!(
            w01.get(0)?.get(0)?.to_vec1::<f32>()?,
            x.get(0)?.get(0)?.get(3)?.to_vec1::<f32>()?
        );
        let back = window_unpartition(&win, 3, (hp, wp), (5, 5))?;
        let diff = (back - &x)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert_eq!(diff, 0.0);
        Ok(())
    }
}
