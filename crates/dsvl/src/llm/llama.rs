//! Llama decoder as used by DeepSeek-VL v1 (v1 §7; transformers 4.38 `LlamaForCausalLM`, eager
//! attention). Keys: `language_model.model.{embed_tokens, layers.{i}.{self_attn.{q,k,v,o}_proj,
//! mlp.{gate,up,down}_proj, input_layernorm, post_attention_layernorm}, norm}`, `language_model.lm_head`.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{Embedding, VarBuilder};

use super::attention::{Attention, AttentionSpec};
use super::logits::{logits, project, Logits};
use super::rope::Rope;
use super::step::{step_contexts, StepCtx};
use super::KvCache;
use crate::nn::{
    fuse_projections, qlinear, Linear, Quant, QuantPlan, QuantReport, RmsNorm, SharedInput,
};

/// Llama decoder (v1 §7).
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaSpec {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub max_position_embeddings: usize,
}

impl LlamaSpec {
    /// Parameters, the embedding and `lm_head` included.
    pub fn param_count(&self) -> u64 {
        let (d, f, hd) = (
            self.hidden_size as u64,
            self.intermediate_size as u64,
            self.head_dim as u64,
        );
        let (q, kv) = (self.num_heads as u64 * hd, self.num_kv_heads as u64 * hd);
        let per_layer = d * q + 2 * d * kv + q * d + 3 * d * f + 2 * d;
        let vocab = self.vocab_size as u64;
        vocab * d + self.num_layers as u64 * per_layer + d + vocab * d
    }

    /// Cached values per position over all layers (keys and values).
    pub fn kv_values_per_position(&self) -> u64 {
        2 * (self.num_layers * self.num_kv_heads * self.head_dim) as u64
    }

    /// The sizes of each layer's attention.
    pub fn attention(&self) -> AttentionSpec {
        AttentionSpec {
            hidden_size: self.hidden_size,
            num_heads: self.num_heads,
            num_kv_heads: self.num_kv_heads,
            head_dim: self.head_dim,
        }
    }
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
            self_attn: Attention::new(&cfg.attention(), quant, vb.pp("self_attn"))?,
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
            rope: Rope::new(
                cfg.head_dim,
                cfg.rope_theta,
                cfg.max_position_embeddings,
                vb.dtype(),
                vb.device(),
            )?,
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
        let ctx = StepCtx::new(&self.rope, cache.len(), t, self.dtype, &self.device)?;
        let mut x = embeds.to_dtype(self.dtype)?;
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(&x, &ctx, cache, i)?;
        }
        logits(&self.norm, &self.lm_head, &x, which)
    }
}

impl Llama {
    /// One decode step for each of `B` sequences: token `ids[r]` at position `caches[r].len()`,
    /// appended to `caches[r]`. f32 logits `[B, vocab]`; row `r` is what a single-sequence
    /// [`Self::forward`] of `ids[r]` gives (same per-row arithmetic, see [`crate::nn::rowmat`]).
    pub fn decode_batch(&self, ids: &[u32], caches: &mut [&mut KvCache]) -> Result<Tensor> {
        let ctxs = step_contexts(&self.rope, ids, caches)?;
        let ids = Tensor::from_vec(ids.to_vec(), (ids.len(), 1), &self.device)?;
        let mut x = self.embed(&ids)?.to_dtype(self.dtype)?;
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward_rows(&x, &ctxs, caches, i)?;
        }
        project(&self.lm_head, &self.norm.forward(&x)?)?.squeeze(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// v1 §1: the 1.3B LLM has 1,652,656,128 parameters, the 7B one 6,910,365,696.
    #[test]
    fn llm_parameter_counts_match_the_spec() {
        let small = LlamaSpec {
            vocab_size: 102_400,
            hidden_size: 2048,
            intermediate_size: 5632,
            num_layers: 24,
            num_heads: 16,
            num_kv_heads: 16,
            head_dim: 128,
            rms_norm_eps: 1e-6,
            rope_theta: 1e4,
            max_position_embeddings: 16384,
        };
        assert_eq!(small.param_count(), 1_652_656_128);
        let big = LlamaSpec {
            hidden_size: 4096,
            intermediate_size: 11008,
            num_layers: 30,
            num_heads: 32,
            num_kv_heads: 32,
            ..small
        };
        assert_eq!(big.param_count(), 6_910_365_696);
    }

    /// The GPU's fused q/k/v and gate/up projections, run on the CPU, against the checkpoint's
    /// separate ones: identical for the few-row kernel's row counts (decode, short prefill),
    /// within rounding for a GEMM-sized prefill; the cache sees the same keys and values.
    #[test]
    fn fused_projections_match_separate_ones() {
        let spec = small_spec();
        let vb = layer_weights(&spec);
        let attention = spec.attention();
        let separate = Attention::with_fusion(&attention, None, false, vb.clone()).unwrap();
        let fused = Attention::with_fusion(&attention, None, true, vb.clone()).unwrap();
        assert_eq!((separate.linears().len(), fused.linears().len()), (4, 2));
        let rope = Rope::new(16, 10000.0, 512, DType::F32, &Device::Cpu).unwrap();
        let (mut c1, mut c2) = (KvCache::new(1), KvCache::new(1));
        for (t, exact) in [(5, true), (1, true), (40, false), (1, true)] {
            let x = Tensor::randn(0f32, 1.0, (1, t, spec.hidden_size), &Device::Cpu).unwrap();
            let ctx = StepCtx::new(&rope, c1.len(), t, DType::F32, &Device::Cpu).unwrap();
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
