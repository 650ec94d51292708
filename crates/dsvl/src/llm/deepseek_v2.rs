//! DeepSeek-V2 / DeepSeekMoE decoder, the language model of DeepSeek-VL2 (v2 §8; official
//! `deepseek_vl2/models/modeling_deepseek.py` at `ef9f91e`, eager attention, inference branch).
//!
//! `h = h + Attn(RMSNorm(h)); h = h + FFN(RMSNorm(h))` per layer; attention is transformers
//! 4.38 `LlamaAttention` (tiny, `use_mla: false`) or MLA (`mla.rs`, small/base); the FFN is a
//! dense SiLU MLP for layers `< first_k_dense_replace` (and off the `moe_layer_freq` grid), else
//! routed + shared experts (`moe.rs`). Final RMSNorm, untied `lm_head`, f32 logits (v2 §8.5).
//!
//! Keys, under the `language` prefix the caller passes in (v2 §11.3):
//! `model.embed_tokens.weight`, `model.layers.{l}.{input_layernorm, post_attention_layernorm}`,
//! `model.layers.{l}.self_attn.{q,k,v,o}_proj` (MHA) or
//! `self_attn.{q_proj, kv_a_proj_with_mqa, kv_a_layernorm, kv_b_proj, o_proj}` (MLA),
//! `model.layers.{l}.mlp.{gate,up,down}_proj` (dense) or `mlp.gate.weight`,
//! `mlp.gate.e_score_correction_bias` (noaux_tc), `mlp.experts.{j}.*`, `mlp.shared_experts.*`,
//! `model.norm.weight`, `lm_head.weight`.

mod config;
mod mla;
mod moe;

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{Embedding, VarBuilder};

pub use config::{AttentionKind, DeepseekV2Spec, MoeSpec, ScoringFunc, TopkMethod};
pub use mla::MlaForm;
pub use moe::Routing;

use super::attention::{Attention, AttentionSpec};
use super::logits::{logits, project, Logits};
use super::rope::Rope;
use super::step::{step_contexts, StepCtx};
use super::KvCache;
use crate::nn::{qlinear, Linear, Quant, QuantPlan, QuantReport, RmsNorm};
use mla::Mla;
use moe::{GluMlp, Moe};

enum SelfAttn {
    /// tiny: exactly transformers' `LlamaAttention` (v2 §8.2), shared with the v1 decoder.
    Mha(Attention),
    Mla(Mla),
}

enum Ffn {
    Dense(GluMlp),
    Moe(Moe),
}

struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: SelfAttn,
    post_attention_layernorm: RmsNorm,
    mlp: Ffn,
}

impl DecoderLayer {
    fn new(spec: &DeepseekV2Spec, l: usize, quant: Option<Quant>, vb: VarBuilder) -> Result<Self> {
        let (d, eps) = (spec.hidden_size, spec.rms_norm_eps);
        let self_attn = match spec.attention {
            AttentionKind::Mha { head_dim } => {
                let sizes = AttentionSpec {
                    hidden_size: d,
                    num_heads: spec.num_heads,
                    num_kv_heads: spec.num_kv_heads,
                    head_dim,
                };
                SelfAttn::Mha(Attention::new(&sizes, quant, vb.pp("self_attn"))?)
            }
            AttentionKind::Mla { .. } => SelfAttn::Mla(Mla::new(spec, quant, vb.pp("self_attn"))?),
        };
        let mlp = match &spec.moe {
            Some(moe) if spec.is_moe_layer(l) => Ffn::Moe(Moe::new(d, moe, quant, vb.pp("mlp"))?),
            _ => Ffn::Dense(GluMlp::new(d, spec.intermediate_size, quant, vb.pp("mlp"))?),
        };
        Ok(Self {
            input_layernorm: RmsNorm::new(d, eps, vb.pp("input_layernorm"))?,
            self_attn,
            post_attention_layernorm: RmsNorm::new(d, eps, vb.pp("post_attention_layernorm"))?,
            mlp,
        })
    }

    /// `[B, t, D] -> [B, t, D]`, plus the routing when this is a MoE layer.
    fn forward(
        &self,
        x: &Tensor,
        ctx: &StepCtx,
        cache: &mut KvCache,
        l: usize,
        form: MlaForm,
    ) -> Result<(Tensor, Option<Routing>)> {
        let _span = tracing::trace_span!("layer", l).entered();
        let a = self.input_layernorm.forward(x)?;
        let a = match &self.self_attn {
            SelfAttn::Mha(m) => m.forward(&a, ctx, cache, l)?,
            SelfAttn::Mla(m) => m.forward(&a, ctx, cache, l, form)?,
        };
        let h = (x + a)?;
        let f = self.post_attention_layernorm.forward(&h)?;
        let (f, routing) = match &self.mlp {
            Ffn::Dense(m) => (m.forward(&f)?, None),
            Ffn::Moe(m) => {
                let (y, r) = m.forward(&f)?;
                (y, Some(r))
            }
        };
        Ok(((h + f)?, routing))
    }

    /// [`Self::forward`] for one decode position of each of `B` sequences (`x` `[B, 1, D]`):
    /// attention row by row against each sequence's cache, the feed-forward over all rows.
    fn forward_rows(
        &self,
        x: &Tensor,
        ctxs: &[StepCtx],
        caches: &mut [&mut KvCache],
        l: usize,
    ) -> Result<Tensor> {
        let _span = tracing::trace_span!("layer", l, rows = caches.len()).entered();
        let a = self.input_layernorm.forward(x)?;
        let mut rows = Vec::with_capacity(caches.len());
        for (r, (ctx, cache)) in ctxs.iter().zip(caches.iter_mut()).enumerate() {
            let ar = a.narrow(0, r, 1)?;
            rows.push(match &self.self_attn {
                SelfAttn::Mha(m) => m.forward(&ar, ctx, cache, l)?,
                SelfAttn::Mla(m) => m.forward(&ar, ctx, cache, l, MlaForm::Auto)?,
            });
        }
        let h = (x + Tensor::cat(&rows, 0)?)?;
        let f = self.post_attention_layernorm.forward(&h)?;
        let f = match &self.mlp {
            Ffn::Dense(m) => m.forward(&f)?,
            Ffn::Moe(m) => m.forward(&f)?.0,
        };
        h + f
    }
}

/// The routing of one MoE layer for every position of a forward call.
#[derive(Debug, Clone)]
pub struct LayerRouting {
    pub layer: usize,
    /// `experts[(b·T + t)·k + j]`, `weights` likewise (after renormalisation and scaling).
    pub routing: Routing,
}

/// Intermediate values of one forward call, for parity tests and debugging.
#[derive(Debug, Clone)]
pub struct Trace {
    /// Hidden state at the last position, f32 `[B, D]`: index 0 is the input embedding,
    /// index `l` (1..=L) the output of decoder layer `l − 1`.
    pub hidden: Vec<Tensor>,
    /// The last position after the final RMSNorm, f32 `[B, D]`.
    pub final_norm: Tensor,
    /// One entry per MoE layer, in layer order.
    pub moe: Vec<LayerRouting>,
}

/// The language model of DeepSeek-VL2 (v2 §8).
pub struct DeepseekV2 {
    embed_tokens: Embedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Linear,
    rope: Rope,
    spec: DeepseekV2Spec,
    quant: QuantPlan,
    dtype: DType,
    device: Device,
}

impl DeepseekV2 {
    /// `vb` is rooted at the checkpoint prefix `language`; tensors are converted to `vb`'s dtype
    /// (the gate and its correction bias are then widened to f32, v2 §10.11).
    pub fn new(spec: &DeepseekV2Spec, vb: VarBuilder) -> Result<Self> {
        Self::new_quantized(spec, QuantPlan::NONE, vb)
    }

    /// [`Self::new`] with the linear layers stored as `quant` says (issue #4 item 4): attention
    /// projections (MLA: `q_proj`, `kv_a_proj_with_mqa`, `o_proj`; `kv_b_proj` stays in float,
    /// the absorbed form multiplies its per-head halves directly), dense MLPs, routed and shared
    /// experts, and with `quant.lm_head` the `lm_head`. The router stays f32.
    pub fn new_quantized(spec: &DeepseekV2Spec, quant: QuantPlan, vb: VarBuilder) -> Result<Self> {
        let m = vb.pp("model");
        let (d, v) = (spec.hidden_size, spec.vocab_size);
        let embed_tokens = candle_nn::embedding(v, d, m.pp("embed_tokens"))?;
        let layers = (0..spec.num_layers)
            .map(|l| DecoderLayer::new(spec, l, quant.layers(), m.pp("layers").pp(l)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            embed_tokens,
            layers,
            norm: RmsNorm::new(d, spec.rms_norm_eps, m.pp("norm"))?,
            lm_head: qlinear(d, v, quant.head(), vb.pp("lm_head"))?,
            rope: Rope::new(
                spec.rope_dim(),
                spec.rope_theta,
                spec.max_position_embeddings,
                vb.dtype(),
                vb.device(),
            )?,
            spec: spec.clone(),
            quant,
            dtype: vb.dtype(),
            device: vb.device().clone(),
        })
    }

    pub fn spec(&self) -> &DeepseekV2Spec {
        &self.spec
    }

    /// A cache for one sequence: MHA caches rotated K and V per head; MLA caches the latent
    /// `[B, 1, T, kv_lora]` and the rotated rope key `[B, 1, T, rope]` (v2 §8.3).
    pub fn new_cache(&self) -> KvCache {
        KvCache::for_model(self.layers.len(), self.dtype, &self.device)
    }

    /// How the linear layers are stored (a fused gate/up pair counts as one linear).
    pub fn quant_report(&self) -> QuantReport {
        let asked = self.quant.layers();
        let mut r = QuantReport::new(self.quant);
        for layer in &self.layers {
            match &layer.self_attn {
                SelfAttn::Mha(a) => a.linears().iter().for_each(|l| r.add(l, asked)),
                SelfAttn::Mla(a) => a.linears().iter().for_each(|l| r.add(l, asked)),
            }
            match &layer.mlp {
                Ffn::Dense(m) => m.linears().iter().for_each(|l| r.add(l, asked)),
                Ffn::Moe(m) => m.linears().for_each(|l| r.add(l, asked)),
            }
        }
        r.add(&self.lm_head, self.quant.head());
        r
    }

    /// Bytes of weights one decode step reads: attention (MLA's float `kv_b_proj` included),
    /// dense MLPs, the router, the shared experts and `top_k` routed experts per MoE layer
    /// (all experts of a layer are stored alike), the norms, `lm_head`, one embedding row.
    pub fn decode_weight_bytes(&self) -> u64 {
        let elt = self.dtype.size_in_bytes() as u64;
        let d = self.spec.hidden_size as u64;
        let mut bytes = self.lm_head.weight_bytes() + 2 * d * elt; // + final norm, embedding row
        for layer in &self.layers {
            bytes += 2 * d * elt; // the two norms
            bytes += match &layer.self_attn {
                SelfAttn::Mha(a) => a.linears().iter().map(|l| l.weight_bytes()).sum(),
                SelfAttn::Mla(a) => a.decode_weight_bytes(),
            };
            bytes += match &layer.mlp {
                Ffn::Dense(m) => m.weight_bytes(),
                Ffn::Moe(m) => m.decode_weight_bytes(),
            };
        }
        bytes
    }

    /// Token ids `[B, T]` (u32) → embeddings `[B, T, hidden]`.
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        self.embed_tokens.forward(ids)
    }

    /// Runs the decoder on `embeds` `[B, T, hidden]` at positions `cache.len()..`, appending to
    /// the cache. Returns f32 logits `[B, vocab]` (Last) or `[B, T, vocab]` (All) (v2 §8.5).
    pub fn forward(&self, embeds: &Tensor, cache: &mut KvCache, which: Logits) -> Result<Tensor> {
        let x = self.decode(embeds, cache, MlaForm::Auto, None)?;
        logits(&self.norm, &self.lm_head, &x, which)
    }

    /// [`Self::forward`] with `Logits::Last` that also records a [`Trace`]; `form` forces an
    /// MLA form (ignored by MHA models). Costs one small host copy per layer.
    pub fn forward_traced(
        &self,
        embeds: &Tensor,
        cache: &mut KvCache,
        form: MlaForm,
    ) -> Result<(Tensor, Trace)> {
        let mut trace = Trace {
            hidden: Vec::with_capacity(self.layers.len() + 1),
            final_norm: Tensor::zeros(0, DType::F32, &self.device)?,
            moe: Vec::new(),
        };
        let x = self.decode(embeds, cache, form, Some(&mut trace))?;
        let last = self.norm.forward(&x.narrow(1, x.dim(1)? - 1, 1)?)?;
        trace.final_norm = last.squeeze(1)?.to_dtype(DType::F32)?;
        let logits = project(&self.lm_head, &last)?.squeeze(1)?;
        Ok((logits, trace))
    }

    /// One decode step for each of `B` sequences (see [`crate::llm::Llama::decode_batch`]).
    pub fn decode_batch(&self, ids: &[u32], caches: &mut [&mut KvCache]) -> Result<Tensor> {
        let ctxs = step_contexts(&self.rope, ids, caches)?;
        let ids = Tensor::from_vec(ids.to_vec(), (ids.len(), 1), &self.device)?;
        let mut x = self.embed(&ids)?.to_dtype(self.dtype)?;
        for (l, layer) in self.layers.iter().enumerate() {
            x = layer.forward_rows(&x, &ctxs, caches, l)?;
        }
        project(&self.lm_head, &self.norm.forward(&x)?)?.squeeze(1)
    }

    /// The decoder stack without the final norm: `[B, t, D]` in the working dtype.
    fn decode(
        &self,
        embeds: &Tensor,
        cache: &mut KvCache,
        form: MlaForm,
        mut trace: Option<&mut Trace>,
    ) -> Result<Tensor> {
        let (_, t, _) = embeds.dims3()?;
        if t == 0 {
            candle_core::bail!("deepseek_v2: forward needs at least one position");
        }
        let ctx = StepCtx::new(&self.rope, cache.len(), t, self.dtype, &self.device)?;
        let last = |x: &Tensor| -> Result<Tensor> {
            x.narrow(1, t - 1, 1)?.squeeze(1)?.to_dtype(DType::F32)
        };
        let mut x = embeds.to_dtype(self.dtype)?;
        if let Some(tr) = trace.as_deref_mut() {
            tr.hidden.push(last(&x)?);
        }
        for (l, layer) in self.layers.iter().enumerate() {
            let (y, routing) = layer.forward(&x, &ctx, cache, l, form)?;
            x = y;
            if let Some(tr) = trace.as_deref_mut() {
                tr.hidden.push(last(&x)?);
                if let Some(routing) = routing {
                    tr.moe.push(LayerRouting { layer: l, routing });
                }
            }
        }
        Ok(x)
    }
}
