//! Llama decoder as used by DeepSeek-VL v1 (v1 §7; transformers 4.38 `LlamaForCausalLM`, eager
//! attention). Keys: `language_model.model.{embed_tokens, layers.{i}.{self_attn.{q,k,v,o}_proj,
//! mlp.{gate,up,down}_proj, input_layernorm, post_attention_layernorm}, norm}`, `language_model.lm_head`.

use std::sync::{Mutex, PoisonError};

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{Embedding, VarBuilder};

use super::KvCache;
use crate::config::LlamaSpec;
use crate::nn::{
    linear_from_weight_quant, sdpa, Linear, Quant, QuantPlan, QuantReport, RmsNorm, Scale,
};

/// RoPE tables in f32 (v1 §13.10): `inv_freq[i] = 1 / theta^(2i/d)`, angle = position × inv_freq,
/// rotate-half (NeoX) layout. Also used by DeepSeek-V2 (v2 §8.2–8.3), whose interleaved MLA RoPE
/// takes the same `[t, d/2]` tables.
///
/// The tables of positions `0..n` are kept on the model's device in its dtype and grown by
/// doubling, so a decode step takes a view of them instead of computing and uploading two small
/// tensors (a host-to-device copy per step on a GPU). Every entry is the same f32 value however
/// the table was grown.
pub(crate) struct Rope {
    inv_freq: Vec<f32>,
    kept: Mutex<Option<Tables>>,
}

/// `cos`, `sin` `[n, d/2]` for positions `0..n`.
struct Tables {
    dtype: DType,
    device: Device,
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    fn new(cfg: &LlamaSpec) -> Self {
        Self::with_dim(cfg.head_dim, cfg.rope_theta)
    }

    /// Tables for `d` rotated dims with base `theta`.
    pub(crate) fn with_dim(d: usize, theta: f64) -> Self {
        // ref: 1.0 / (base ** (torch.arange(0, dim, 2).float() / dim)), all in float32
        let inv_freq = (0..d / 2)
            .map(|i| 1.0f32 / (theta as f32).powf((2 * i) as f32 / d as f32))
            .collect();
        Self {
            inv_freq,
            kept: Mutex::new(None),
        }
    }

    /// `(cos, sin)`, each `[t, d/2]`, for positions `offset..offset+t`, in `dtype`.
    pub(crate) fn tables(
        &self,
        offset: usize,
        t: usize,
        dtype: DType,
        dev: &Device,
    ) -> Result<(Tensor, Tensor)> {
        let need = offset + t;
        let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        let fits = match kept.as_ref() {
            Some(k) => k.dtype == dtype && k.device.same_device(dev) && k.cos.dim(0)? >= need,
            None => false,
        };
        if !fits {
            let n = need.next_power_of_two().max(MIN_ROPE_POSITIONS);
            let (cos, sin) = self.compute(0, n, dtype, dev)?;
            *kept = Some(Tables {
                dtype,
                device: dev.clone(),
                cos,
                sin,
            });
        }
        let Some(k) = kept.as_ref() else {
            candle_core::bail!("rope tables kept above")
        };
        Ok((k.cos.narrow(0, offset, t)?, k.sin.narrow(0, offset, t)?))
    }

    /// The tables of positions `offset..offset+t`, computed on the host.
    fn compute(
        &self,
        offset: usize,
        t: usize,
        dtype: DType,
        dev: &Device,
    ) -> Result<(Tensor, Tensor)> {
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(t * half);
        let mut sin = Vec::with_capacity(t * half);
        for p in offset..offset + t {
            for &f in &self.inv_freq {
                let a = p as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        let cos = Tensor::from_vec(cos, (t, half), dev)?.to_dtype(dtype)?;
        let sin = Tensor::from_vec(sin, (t, half), dev)?.to_dtype(dtype)?;
        Ok((cos, sin))
    }
}

/// The smallest table kept: a short prompt and its answer.
const MIN_ROPE_POSITIONS: usize = 1024;

/// transformers 4.38 `LlamaAttention` (eager). DeepSeek-VL2 tiny uses it unchanged (v2 §8.2).
pub(crate) struct Attention {
    qkv: SharedInput,
    o_proj: Linear,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

/// Linears that read the same input: the checkpoint's separate ones, or one whose weight is
/// theirs concatenated along `out` — one GEMM instead of several, each output the same dot
/// product. A GPU, whose decode step is bound by kernel launches, gets the fused one; the CPU
/// keeps the separate ones (quantized per projection, reported per projection).
enum SharedInput {
    Separate(Vec<Linear>),
    Fused { linear: Linear, outs: Vec<usize> },
}

impl SharedInput {
    /// The linears `{vb}.{name}.weight` `[out, in_dim]` for each `(name, out)` of `parts`.
    fn new(
        vb: &VarBuilder,
        parts: &[(&str, usize)],
        in_dim: usize,
        quant: Option<Quant>,
        fuse: bool,
    ) -> Result<Self> {
        if !fuse {
            return parts
                .iter()
                .map(|&(name, out)| qlinear(in_dim, out, quant, vb.pp(name)))
                .collect::<Result<Vec<_>>>()
                .map(Self::Separate);
        }
        let weights = parts
            .iter()
            .map(|&(name, out)| vb.pp(name).get((out, in_dim), "weight"))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self::Fused {
            linear: linear_from_weight_quant(&Tensor::cat(&weights, 0)?, quant)?,
            outs: parts.iter().map(|&(_, out)| out).collect(),
        })
    }

    /// Each linear's output, in the order of `parts`.
    fn forward(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        match self {
            Self::Separate(linears) => linears.iter().map(|l| l.forward(x)).collect(),
            Self::Fused { linear, outs } => {
                let y = linear.forward(x)?;
                let last = y.rank() - 1;
                let mut start = 0;
                outs.iter()
                    .map(|&n| {
                        start += n;
                        y.narrow(last, start - n, n)
                    })
                    .collect()
            }
        }
    }

    /// The linears as stored.
    fn linears(&self) -> Vec<&Linear> {
        match self {
            Self::Separate(linears) => linears.iter().collect(),
            Self::Fused { linear, .. } => vec![linear],
        }
    }
}

/// Whether to fuse projections that share their input on `device` (see [`SharedInput`]).
fn fuse_projections(device: &Device, quant: Option<Quant>) -> bool {
    !device.is_cpu() && quant.is_none()
}

impl Attention {
    /// `quant`: the format of the four projections (`None`: the compute dtype).
    pub(crate) fn new(cfg: &LlamaSpec, quant: Option<Quant>, vb: VarBuilder) -> Result<Self> {
        let fuse = fuse_projections(vb.device(), quant);
        Self::with_fusion(cfg, quant, fuse, vb)
    }

    fn with_fusion(
        cfg: &LlamaSpec,
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
        let o = sdpa(&q, &k, &v, Scale::Scores(scale), ctx.mask.as_ref())?;
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

/// A bias-free `[in] -> [out]` linear with weight `{vb}.weight`, stored as `quant` (with the
/// block-size fallback of [`Quant::for_input_width`]) or in the compute dtype.
pub(crate) fn qlinear(
    in_dim: usize,
    out_dim: usize,
    quant: Option<Quant>,
    vb: VarBuilder,
) -> Result<Linear> {
    linear_from_weight_quant(&vb.get((out_dim, in_dim), "weight")?, quant)
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

/// `down(silu(gate(x)) * up(x))`; on a GPU `gate` and `up` run as one GEMM ([`SharedInput`]).
struct Mlp {
    gate_up: SharedInput,
    down_proj: Linear,
}

impl Mlp {
    fn new(cfg: &LlamaSpec, quant: Option<Quant>, vb: VarBuilder) -> Result<Self> {
        let fuse = fuse_projections(vb.device(), quant);
        Self::with_fusion(cfg, quant, fuse, vb)
    }

    fn with_fusion(
        cfg: &LlamaSpec,
        quant: Option<Quant>,
        fuse: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let (h, f) = (cfg.hidden_size, cfg.intermediate_size);
        let parts = [("gate_proj", f), ("up_proj", f)];
        Ok(Self {
            gate_up: SharedInput::new(&vb, &parts, h, quant, fuse)?,
            down_proj: qlinear(f, h, quant, vb.pp("down_proj"))?,
        })
    }

    /// The linears as stored (`gate`, `up`, `down`, or the fused `gate_up` and `down`).
    fn linears(&self) -> Vec<&Linear> {
        let mut all = self.gate_up.linears();
        all.push(&self.down_proj);
        all
    }
}

impl Module for Mlp {
    /// down(silu(gate(x)) * up(x))
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let Ok([g, u]) = <[Tensor; 2]>::try_from(self.gate_up.forward(x)?) else {
            candle_core::bail!("gate/up projections: not two outputs")
        };
        self.down_proj.forward(&(candle_nn::ops::silu(&g)? * u)?)
    }
}

struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

impl DecoderLayer {
    fn new(cfg: &LlamaSpec, quant: Option<Quant>, vb: VarBuilder) -> Result<Self> {
        let eps = cfg.rms_norm_eps;
        Ok(Self {
            input_layernorm: RmsNorm::new(cfg.hidden_size, eps, vb.pp("input_layernorm"))?,
            self_attn: Attention::new(cfg, quant, vb.pp("self_attn"))?,
            post_attention_layernorm: RmsNorm::new(
                cfg.hidden_size,
                eps,
                vb.pp("post_attention_layernorm"),
            )?,
            mlp: Mlp::new(cfg, quant, vb.pp("mlp"))?,
        })
    }

    fn forward(&self, x: &Tensor, ctx: &StepCtx, cache: &mut KvCache, i: usize) -> Result<Tensor> {
        let _span = tracing::trace_span!("layer", i).entered();
        let h = (x + self
            .self_attn
            .forward(&self.input_layernorm.forward(x)?, ctx, cache, i)?)?;
        &h + self
            .mlp
            .forward(&self.post_attention_layernorm.forward(&h)?)?
    }

    /// [`Self::forward`] for one decode position of each of `B` sequences.
    fn forward_rows(
        &self,
        x: &Tensor,
        ctxs: &[StepCtx],
        caches: &mut [&mut KvCache],
        i: usize,
    ) -> Result<Tensor> {
        let _span = tracing::trace_span!("layer", i, rows = caches.len()).entered();
        let a = self.input_layernorm.forward(x)?;
        let h = (x + self.self_attn.forward_rows(&a, ctxs, caches, i)?)?;
        &h + self
            .mlp
            .forward(&self.post_attention_layernorm.forward(&h)?)?
    }
}

/// Per-forward inputs shared by all layers: RoPE tables and the causal mask.
pub(crate) struct StepCtx {
    pub(crate) cos: Tensor,
    pub(crate) sin: Tensor,
    pub(crate) mask: Option<Tensor>,
}

/// Which positions need logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    Last,
    All,
}

pub struct Llama {
    embed_tokens: Embedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Linear,
    rope: Rope,
    spec: LlamaSpec,
    quant: QuantPlan,
    dtype: DType,
    device: Device,
}

impl Llama {
    /// `vb` is rooted at `language_model`. All weights in `vb`'s dtype.
    pub fn new(cfg: &LlamaSpec, vb: VarBuilder) -> Result<Self> {
        Self::new_quantized(cfg, QuantPlan::NONE, vb)
    }

    /// [`Self::new`] with the linear layers stored as `quant` says (issue #4 item 4): the
    /// decoder layers' seven projections and, with `quant.lm_head`, `lm_head`. Embedding and
    /// norms stay in `vb`'s dtype.
    pub fn new_quantized(cfg: &LlamaSpec, quant: QuantPlan, vb: VarBuilder) -> Result<Self> {
        let m = vb.pp("model");
        let embed_tokens =
            candle_nn::embedding(cfg.vocab_size, cfg.hidden_size, m.pp("embed_tokens"))?;
        let layers = (0..cfg.num_layers)
            .map(|i| DecoderLayer::new(cfg, quant.layers(), m.pp("layers").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        // Always the separate lm_head, never tied to the embedding (v1 §12.3).
        let lm_head = qlinear(
            cfg.hidden_size,
            cfg.vocab_size,
            quant.head(),
            vb.pp("lm_head"),
        )?;
        Ok(Self {
            embed_tokens,
            layers,
            norm: RmsNorm::new(cfg.hidden_size, cfg.rms_norm_eps, m.pp("norm"))?,
            lm_head,
            rope: Rope::new(cfg),
            spec: cfg.clone(),
            quant,
            dtype: vb.dtype(),
            device: vb.device().clone(),
        })
    }

    pub fn spec(&self) -> &LlamaSpec {
        &self.spec
    }

    pub fn new_cache(&self) -> KvCache {
        KvCache::for_model(self.layers.len(), self.dtype, &self.device)
    }

    /// How the linear layers are stored.
    pub fn quant_report(&self) -> QuantReport {
        let mut r = QuantReport::new(self.quant);
        for l in &self.layers {
            for lin in l.self_attn.linears().into_iter().chain(l.mlp.linears()) {
                r.add(lin, self.quant.layers());
            }
        }
        r.add(&self.lm_head, self.quant.head());
        r
    }

    /// Bytes of weights one decode step reads: every linear as stored, the norms, and one row
    /// of the embedding table.
    pub fn decode_weight_bytes(&self) -> u64 {
        let d = self.spec.hidden_size as u64;
        let norms = (2 * self.layers.len() as u64 + 1) * d;
        self.quant_report().bytes + (norms + d) * self.dtype.size_in_bytes() as u64
    }

    /// Token ids `[B, T]` (u32) → embeddings `[B, T, hidden]`.
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        self.embed_tokens.forward(ids)
    }

    /// Runs the decoder on `embeds` `[B, T, hidden]` at positions `cache.len()..`, appending to the
    /// cache. Returns f32 logits `[B, vocab]` (Last) or `[B, T, vocab]` (All) (v1 §13.12).
    pub fn forward(&self, embeds: &Tensor, cache: &mut KvCache, which: Logits) -> Result<Tensor> {
        let (_, t, _) = embeds.dims3()?;
        let offset = cache.len();
        let (cos, sin) = self.rope.tables(offset, t, self.dtype, &self.device)?;
        let mask = (t > 1)
            .then(|| causal_mask(t, offset, self.dtype, &self.device))
            .transpose()?;
        let ctx = StepCtx { cos, sin, mask };
        let mut x = embeds.to_dtype(self.dtype)?;
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(&x, &ctx, cache, i)?;
        }
        let x = match which {
            Logits::Last => x.narrow(1, t - 1, 1)?,
            Logits::All => x,
        };
        let logits = self
            .lm_head
            .forward(&self.norm.forward(&x)?)?
            .to_dtype(DType::F32)?;
        match which {
            Logits::Last => logits.squeeze(1),
            Logits::All => Ok(logits),
        }
    }
}

impl Llama {
    /// One decode step for each of `B` sequences: token `ids[r]` at position `caches[r].len()`,
    /// appended to `caches[r]`. f32 logits `[B, vocab]`; row `r` is what a single-sequence
    /// [`Self::forward`] of `ids[r]` gives (same per-row arithmetic, see [`crate::nn::rowmat`]).
    pub fn decode_batch(&self, ids: &[u32], caches: &mut [&mut KvCache]) -> Result<Tensor> {
        let ctxs = step_contexts(&self.rope, ids, caches, self.dtype, &self.device)?;
        let ids = Tensor::from_vec(ids.to_vec(), (ids.len(), 1), &self.device)?;
        let mut x = self.embed(&ids)?.to_dtype(self.dtype)?;
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward_rows(&x, &ctxs, caches, i)?;
        }
        self.lm_head
            .forward(&self.norm.forward(&x)?)?
            .to_dtype(DType::F32)?
            .squeeze(1)
    }
}

/// The RoPE tables of each sequence's next position, for a batched decode step.
pub(crate) fn step_contexts(
    rope: &Rope,
    ids: &[u32],
    caches: &[&mut KvCache],
    dtype: DType,
    dev: &Device,
) -> Result<Vec<StepCtx>> {
    if ids.len() != caches.len() || ids.is_empty() {
        candle_core::bail!(
            "decode_batch: {} tokens for {} caches (need one each, at least one)",
            ids.len(),
            caches.len()
        )
    }
    caches
        .iter()
        .map(|c| {
            let (cos, sin) = rope.tables(c.len(), 1, dtype, dev)?;
            Ok(StepCtx {
                cos,
                sin,
                mask: None,
            })
        })
        .collect()
}

/// `[t, offset + t]` additive mask: 0 where key ≤ query position, −∞ after it.
pub(crate) fn causal_mask(t: usize, offset: usize, dtype: DType, dev: &Device) -> Result<Tensor> {
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| {
            (0..offset + t).map(move |j| {
                if j > i + offset {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    Tensor::from_vec(mask, (t, offset + t), dev)?.to_dtype(dtype)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Views of the kept tables equal tables computed for just those positions, before and
    /// after the tables grow, in f32 and bf16.
    #[test]
    fn kept_rope_tables_equal_fresh_ones() {
        let rope = Rope::with_dim(64, 10000.0);
        let dev = Device::Cpu;
        for (offset, t, dtype) in [
            (0, 7, DType::F32),
            (700, 1, DType::F32),
            (1500, 600, DType::F32),
            (3, 1, DType::BF16),
            (5000, 2, DType::F32),
        ] {
            let (cos, sin) = rope.tables(offset, t, dtype, &dev).unwrap();
            let (want_cos, want_sin) = rope.compute(offset, t, dtype, &dev).unwrap();
            assert_eq!(cos.dims(), &[t, 32]);
            for (got, want) in [(cos, want_cos), (sin, want_sin)] {
                let got: Vec<f32> = got
                    .to_dtype(DType::F32)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                let want: Vec<f32> = want
                    .to_dtype(DType::F32)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                assert_eq!(got, want, "offset {offset}, t {t}, {dtype:?}");
            }
        }
        let kept = rope.kept.lock().unwrap();
        assert_eq!(kept.as_ref().map(|k| k.cos.dim(0).unwrap()), Some(8192));
    }

    fn small_spec() -> LlamaSpec {
        LlamaSpec {
            vocab_size: 32,
            hidden_size: 64,
            intermediate_size: 96,
            num_layers: 1,
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: 16,
            rms_norm_eps: 1e-6,
            rope_theta: 10000.0,
            max_position_embeddings: 512,
        }
    }

    fn layer_weights(spec: &LlamaSpec) -> VarBuilder<'static> {
        let (h, f) = (spec.hidden_size, spec.intermediate_size);
        let (q, kv) = (
            spec.num_heads * spec.head_dim,
            spec.num_kv_heads * spec.head_dim,
        );
        let shapes = [
            ("q_proj", q, h),
            ("k_proj", kv, h),
            ("v_proj", kv, h),
            ("o_proj", h, q),
            ("gate_proj", f, h),
            ("up_proj", f, h),
            ("down_proj", h, f),
        ];
        let tensors = shapes
            .iter()
            .map(|&(name, out, inp)| {
                let w = Tensor::randn(0f32, 0.2, (out, inp), &Device::Cpu).unwrap();
                (format!("{name}.weight"), w)
            })
            .collect();
        VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu)
    }

    /// The GPU's fused q/k/v and gate/up projections, run on the CPU, against the checkpoint's
    /// separate ones: identical for the few-row kernel's row counts (decode, short prefill),
    /// within rounding for a GEMM-sized prefill; the cache sees the same keys and values.
    #[test]
    fn fused_projections_match_separate_ones() {
        let spec = small_spec();
        let vb = layer_weights(&spec);
        let separate = Attention::with_fusion(&spec, None, false, vb.clone()).unwrap();
        let fused = Attention::with_fusion(&spec, None, true, vb.clone()).unwrap();
        assert_eq!((separate.linears().len(), fused.linears().len()), (4, 2));
        let rope = Rope::new(&spec);
        let (mut c1, mut c2) = (KvCache::new(1), KvCache::new(1));
        for (t, exact) in [(5, true), (1, true), (40, false), (1, true)] {
            let x = Tensor::randn(0f32, 1.0, (1, t, spec.hidden_size), &Device::Cpu).unwrap();
            let offset = c1.len();
            let (cos, sin) = rope.tables(offset, t, DType::F32, &Device::Cpu).unwrap();
            let mask = (t > 1).then(|| causal_mask(t, offset, DType::F32, &Device::Cpu).unwrap());
            let ctx = StepCtx { cos, sin, mask };
            let a = separate.forward(&x, &ctx, &mut c1, 0).unwrap();
            let b = fused.forward(&x, &ctx, &mut c2, 0).unwrap();
            let d = crate::nn::max_abs_diff(&a, &b);
            assert!(if exact { d == 0.0 } else { d < 1e-5 }, "t {t}: {d}");
        }

        let separate = Mlp::with_fusion(&spec, None, false, vb.clone()).unwrap();
        let fused = Mlp::with_fusion(&spec, None, true, vb).unwrap();
        assert_eq!((separate.linears().len(), fused.linears().len()), (3, 2));
        for (t, exact) in [(1, true), (7, true), (40, false)] {
            let x = Tensor::randn(0f32, 1.0, (1, t, spec.hidden_size), &Device::Cpu).unwrap();
            let d = crate::nn::max_abs_diff(
                &separate.forward(&x).unwrap(),
                &fused.forward(&x).unwrap(),
            );
            assert!(if exact { d == 0.0 } else { d < 1e-5 }, "mlp t {t}: {d}");
        }
    }
}
