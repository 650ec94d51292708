//! Multi-head attention as transformers 4.38 `LlamaAttention` computes it (eager, v1 §7):
//! q/k/v projections, half-rotation RoPE, grouped KV heads, softmax in f32, `o_proj`. The v1
//! Llama and DeepSeek-VL2 tiny's DeepSeek-V2 (`use_mla: false`, v2 §8.2) both use it.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::step::StepCtx;
use super::KvCache;
use crate::nn::{fuse_projections, qlinear, sdpa_masked, Linear, Mask, Quant, Scale, SharedInput};

/// The sizes of one `Attention`: what the v1 Llama (`LlamaSpec`) and the DeepSeek-V2 MHA
/// variant (`AttentionKind::Mha`) both resolve to. The RoPE tables come with each forward call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionSpec {
    pub hidden_size: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

/// transformers 4.38 `LlamaAttention` (eager). DeepSeek-VL2 tiny uses it unchanged (v2 §8.2).
pub(crate) struct Attention {
    qkv: SharedInput,
    o_proj: Linear,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    /// `quant`: the format of the four projections (`None`: the compute dtype).
    pub(crate) fn new(cfg: &AttentionSpec, quant: Option<Quant>, vb: VarBuilder) -> Result<Self> {
        let fuse = fuse_projections(vb.device(), quant);
        Self::with_fusion(cfg, quant, fuse, vb)
    }

    pub(crate) fn with_fusion(
        cfg: &AttentionSpec,
        quant: Option<Quant>,
        fuse: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let (h, d) = (cfg.hidden_size, cfg.head_dim);
        let (q_out, kv_out) = (cfg.num_heads * d, cfg.num_kv_heads * d);
        let parts = [("q_proj", q_out), ("k_proj", kv_out), ("v_proj", kv_out)];
        let qkv = SharedInput::new(&vb, &parts, h, quant, fuse)?;
        Ok(Self {
            qkv,
            o_proj: qlinear(q_out, h, quant, vb.pp("o_proj"))?,
            heads: cfg.num_heads,
            kv_heads: cfg.num_kv_heads,
            head_dim: d,
        })
    }

    pub(crate) fn forward(
        &self,
        x: &Tensor,
        ctx: &StepCtx,
        cache: &mut KvCache,
        layer: usize,
    ) -> Result<Tensor> {
        let (q, k, v) = self.qkv(x)?;
        self.o_proj
            .forward(&self.attend(&q, &k, &v, ctx, cache, layer)?)
    }

    /// One decode position for each of `B` sequences (`x` is `[B, 1, D]`): the projections
    /// run over all rows at once, the attention of row `r` against `caches[r]` at its own
    /// position `ctxs[r]`.
    pub(crate) fn forward_rows(
        &self,
        x: &Tensor,
        ctxs: &[StepCtx],
        caches: &mut [&mut KvCache],
        layer: usize,
    ) -> Result<Tensor> {
        let (q, k, v) = self.qkv(x)?;
        let mut rows = Vec::with_capacity(caches.len());
        for (r, (ctx, cache)) in ctxs.iter().zip(caches.iter_mut()).enumerate() {
            let row = |t: &Tensor| t.narrow(0, r, 1);
            rows.push(self.attend(&row(&q)?, &row(&k)?, &row(&v)?, ctx, cache, layer)?);
        }
        self.o_proj.forward(&Tensor::cat(&rows, 0)?)
    }

    fn qkv(&self, x: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        match <[Tensor; 3]>::try_from(self.qkv.forward(x)?) {
            Ok([q, k, v]) => Ok((q, k, v)),
            Err(_) => candle_core::bail!("q/k/v projections: not three outputs"),
        }
    }

    /// Projected `q`, `k`, `v` (`[b, t, heads·d]`) → attention output `[b, t, heads·d]`
    /// before `o_proj`, appending the rotated keys and the values to `cache`.
    fn attend(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        ctx: &StepCtx,
        cache: &mut KvCache,
        layer: usize,
    ) -> Result<Tensor> {
        let (b, t, _) = q.dims3()?;
        let split = |y: &Tensor, n: usize| -> Result<Tensor> {
            y.reshape((b, t, n, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = split(q, self.heads)?;
        let k = split(k, self.kv_heads)?;
        let v = split(v, self.kv_heads)?;
        let q = candle_nn::rotary_emb::rope(&q, &ctx.cos, &ctx.sin)?;
        let k = candle_nn::rotary_emb::rope(&k, &ctx.cos, &ctx.sin)?;
        let (k, v) = cache.append(layer, &k, &v)?;
        let (k, v) = (
            repeat_kv(k, self.heads / self.kv_heads)?,
            repeat_kv(v, self.heads / self.kv_heads)?,
        );
        // Eager attention: softmax(q·kᵀ / √d + causal) in f32, cast back, @ v.
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let mask = ctx.mask.as_ref().map_or(Mask::None, Mask::Causal);
        let o = sdpa_masked(&q, &k, &v, Scale::Scores(scale), mask)?;
        o.transpose(1, 2)?
            .reshape((b, t, self.heads * self.head_dim))
    }

    /// The projections as stored: `q`, `k`, `v`, `o` in checkpoint order, or the fused
    /// `qkv` and `o`.
    pub(crate) fn linears(&self) -> Vec<&Linear> {
        let mut all = self.qkv.linears();
        all.push(&self.o_proj);
        all
    }
}

fn repeat_kv(x: Tensor, n: usize) -> Result<Tensor> {
    if n == 1 {
        return Ok(x);
    }
    let (b, h, t, d) = x.dims4()?;
    x.unsqueeze(2)?
        .expand((b, h, n, t, d))?
        .reshape((b, h * n, t, d))
}
