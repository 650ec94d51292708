//! `language_config` of a DeepSeek-VL2 `config.json` → [`DeepseekV2Spec`] (v2 §1.3).
//!
//! The raw mirror carries the official `DeepseekV2Config.__init__` defaults
//! (`deepseek_vl2/models/configuration_deepseek.py` at `ef9f91e`): a key that is missing takes
//! the default, a key that is present with `null` is `None` (as in Python). Resolution then
//! checks what the official modelling code would trip over at load or forward time, and what
//! this engine does not implement, as typed errors that name the file and the key.

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};

/// How the gate picks experts (`topk_method`, v2 §8.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TopkMethod {
    /// Plain top-k over all experts (tiny, small).
    Greedy,
    /// Keep the `topk_group` groups with the highest max score, then top-k (DeepSeek-V2).
    GroupLimitedGreedy,
    /// Choose by `score + e_score_correction_bias`, group score = sum of the top 2 per group,
    /// weight by the unbiased score (base; DeepSeek-V3 style).
    NoauxTc,
}

/// Gate scoring function (`scoring_func`, v2 §8.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScoringFunc {
    Softmax,
    Sigmoid,
}

/// Attention flavour (`use_mla`, v2 §8.2–8.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionKind {
    /// transformers 4.38 `LlamaAttention` (tiny): half-rotation RoPE over `head_dim`.
    Mha { head_dim: usize },
    /// Multi-head latent attention (small, base). Only `q_lora_rank: None` is supported.
    Mla {
        q_lora_rank: Option<usize>,
        kv_lora_rank: usize,
        qk_nope_head_dim: usize,
        qk_rope_head_dim: usize,
        v_head_dim: usize,
    },
}

/// Routed-expert settings; present when `n_routed_experts` is not null (v2 §8.4).
#[derive(Debug, Clone, PartialEq)]
pub struct MoeSpec {
    pub n_routed_experts: usize,
    /// 0 when `n_shared_experts` is null: no shared expert.
    pub n_shared_experts: usize,
    pub num_experts_per_tok: usize,
    pub moe_intermediate_size: usize,
    pub topk_method: TopkMethod,
    pub scoring_func: ScoringFunc,
    pub norm_topk_prob: bool,
    pub routed_scaling_factor: f64,
    /// Expert groups; required (and checked) for the group methods, 1 for greedy.
    pub n_group: usize,
    pub topk_group: usize,
}

/// The checked description of a DeepSeek-V2 / DeepSeekMoE language model (v2 §8).
#[derive(Debug, Clone, PartialEq)]
pub struct DeepseekV2Spec {
    pub vocab_size: usize,
    pub hidden_size: usize,
    /// Dense FFN width (layers before `first_k_dense_replace`, or off the `moe_layer_freq` grid).
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    /// Used by MHA only (MLA shares one latent across heads).
    pub num_kv_heads: usize,
    pub attention: AttentionKind,
    pub moe: Option<MoeSpec>,
    pub first_k_dense_replace: usize,
    pub moe_layer_freq: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    /// Only sizes the reference's initial RoPE table; not a limit (v2 §9).
    pub max_position_embeddings: usize,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
}

impl DeepseekV2Spec {
    /// Whether decoder layer `l` is a MoE layer. ref: `n_routed_experts is not None and
    /// layer_idx >= first_k_dense_replace and layer_idx % moe_layer_freq == 0`.
    pub fn is_moe_layer(&self, l: usize) -> bool {
        self.moe.is_some()
            && l >= self.first_k_dense_replace
            && l.is_multiple_of(self.moe_layer_freq)
    }

    /// Dims of the rotated part of each query/key (the RoPE table width).
    pub fn rope_dim(&self) -> usize {
        match self.attention {
            AttentionKind::Mha { head_dim } => head_dim,
            AttentionKind::Mla {
                qk_rope_head_dim, ..
            } => qk_rope_head_dim,
        }
    }

    /// (all parameters, parameters one decode step reads): attention, norms, dense MLPs; for a
    /// MoE layer the router (with its noaux_tc bias) and the shared experts, plus all routed
    /// experts in the first count and `num_experts_per_tok` of them in the second; the
    /// embedding and `lm_head` (one embedding row read per step).
    pub fn param_counts(&self) -> (u64, u64) {
        let d = self.hidden_size as u64;
        let heads = self.num_heads as u64;
        let attention = match self.attention {
            AttentionKind::Mha { head_dim } => {
                let (q, kv) = (
                    heads * head_dim as u64,
                    self.num_kv_heads as u64 * head_dim as u64,
                );
                d * q + 2 * d * kv + q * d
            }
            AttentionKind::Mla {
                kv_lora_rank,
                qk_nope_head_dim,
                qk_rope_head_dim,
                v_head_dim,
                ..
            } => {
                let (c, nope, rope, v) = (
                    kv_lora_rank as u64,
                    qk_nope_head_dim as u64,
                    qk_rope_head_dim as u64,
                    v_head_dim as u64,
                );
                d * heads * (nope + rope)
                    + d * (c + rope)
                    + c
                    + c * heads * (nope + v)
                    + heads * v * d
            }
        };
        let (mut all, mut read) = (0u64, 0u64);
        for layer in 0..self.num_layers {
            let norms = 2 * d;
            let (ffn_all, ffn_read) = match (&self.moe, self.is_moe_layer(layer)) {
                (Some(m), true) => {
                    let expert = 3 * d * m.moe_intermediate_size as u64;
                    let shared = m.n_shared_experts as u64 * expert;
                    let gate = m.n_routed_experts as u64 * d
                        + if m.topk_method == TopkMethod::NoauxTc {
                            m.n_routed_experts as u64
                        } else {
                            0
                        };
                    (
                        gate + shared + m.n_routed_experts as u64 * expert,
                        gate + shared + m.num_experts_per_tok as u64 * expert,
                    )
                }
                _ => {
                    let dense = 3 * d * self.intermediate_size as u64;
                    (dense, dense)
                }
            };
            all += attention + norms + ffn_all;
            read += attention + norms + ffn_read;
        }
        let vocab = self.vocab_size as u64 * d;
        (all + 2 * vocab + d, read + vocab + 2 * d)
    }

    /// Cached values per position over all layers: MHA keys and values; MLA the normalised
    /// latent and the rope key.
    pub fn kv_values_per_position(&self) -> u64 {
        let per_layer = match self.attention {
            AttentionKind::Mha { head_dim } => 2 * self.num_kv_heads * head_dim,
            AttentionKind::Mla {
                kv_lora_rank,
                qk_rope_head_dim,
                ..
            } => kv_lora_rank + qk_rope_head_dim,
        };
        (self.num_layers * per_layer) as u64
    }

    /// Reads `language_config` (`v`, an object) of the `config.json` at `path`.
    pub fn from_language_config(path: &Path, v: &Value) -> Result<Self> {
        let raw = parse_raw(path, v)?;
        resolve(path, &raw)
    }
}

/// Mirror of `DeepseekV2Config.__init__`; `Default` holds the official defaults (v2 §1.3).
/// Nullable arguments are `Option`s whose default is what Python's signature says.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
struct DeepseekV2ConfigJson {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    moe_intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    /// `null` means "same as num_attention_heads" (backward compatibility in the reference).
    num_key_value_heads: Option<usize>,
    n_shared_experts: Option<usize>,
    n_routed_experts: Option<usize>,
    routed_scaling_factor: f64,
    kv_lora_rank: Option<usize>,
    q_lora_rank: Option<usize>,
    qk_rope_head_dim: Option<usize>,
    v_head_dim: Option<usize>,
    qk_nope_head_dim: Option<usize>,
    /// `None` = absent: the official default is the typo `"gready"`, which no gate branch
    /// accepts, so a MoE model must state it.
    topk_method: Option<TopkMethod>,
    n_group: Option<usize>,
    topk_group: Option<usize>,
    num_experts_per_tok: Option<usize>,
    moe_layer_freq: usize,
    first_k_dense_replace: usize,
    norm_topk_prob: bool,
    scoring_func: ScoringFunc,
    hidden_act: String,
    max_position_embeddings: usize,
    rms_norm_eps: f64,
    bos_token_id: Option<u32>,
    eos_token_id: Option<u32>,
    tie_word_embeddings: bool,
    rope_theta: f64,
    rope_scaling: Option<Value>,
    attention_bias: bool,
    use_mla: bool,
}

impl Default for DeepseekV2ConfigJson {
    /// `DeepseekV2Config()` (configuration_deepseek.py, v2 §1.3).
    fn default() -> Self {
        Self {
            vocab_size: 102400,
            hidden_size: 4096,
            intermediate_size: 11008,
            moe_intermediate_size: 1407,
            num_hidden_layers: 30,
            num_attention_heads: 32,
            num_key_value_heads: Some(32),
            n_shared_experts: None,
            n_routed_experts: None,
            routed_scaling_factor: 1.0,
            kv_lora_rank: Some(512),
            q_lora_rank: Some(1536),
            qk_rope_head_dim: Some(64),
            v_head_dim: Some(128),
            qk_nope_head_dim: Some(128),
            topk_method: None,
            n_group: None,
            topk_group: None,
            num_experts_per_tok: None,
            moe_layer_freq: 1,
            first_k_dense_replace: 0,
            norm_topk_prob: false,
            scoring_func: ScoringFunc::Softmax,
            hidden_act: "silu".into(),
            max_position_embeddings: 2048,
            rms_norm_eps: 1e-6,
            bos_token_id: Some(100000),
            eos_token_id: Some(100001),
            tie_word_embeddings: false,
            rope_theta: 10000.0,
            rope_scaling: None,
            attention_bias: false,
            use_mla: true,
        }
    }
}

const KEY: &str = "language_config";

fn config_err(path: &Path, key: &str, message: impl std::fmt::Display) -> Error {
    Error::Config {
        path: path.to_path_buf(),
        message: format!("{KEY}.{key}: {message}"),
    }
}

fn unsupported(path: &Path, what: impl std::fmt::Display, hint: &str) -> Error {
    Error::Unsupported {
        what: format!("{KEY}.{what} in {}", path.display()),
        hint: hint.into(),
    }
}

/// Deserialises the mirror; on failure, finds the offending key so the message names it.
fn parse_raw(path: &Path, v: &Value) -> Result<DeepseekV2ConfigJson> {
    let Some(obj) = v.as_object() else {
        return Err(Error::Config {
            path: path.to_path_buf(),
            message: format!("{KEY} must be a JSON object"),
        });
    };
    serde_json::from_value(v.clone()).map_err(|whole| {
        let culprit = obj.iter().find_map(|(k, val)| {
            let one = Value::Object([(k.clone(), val.clone())].into_iter().collect());
            serde_json::from_value::<DeepseekV2ConfigJson>(one)
                .err()
                .map(|e| (k.clone(), e))
        });
        match culprit {
            Some((k, e)) => config_err(path, &k, e),
            None => Error::Config {
                path: path.to_path_buf(),
                message: format!("{KEY}: {whole}"),
            },
        }
    })
}

fn required(path: &Path, key: &str, v: Option<usize>, why: &str) -> Result<usize> {
    match v {
        Some(x) if x > 0 => Ok(x),
        Some(_) => Err(config_err(path, key, format!("must be > 0 ({why})"))),
        None => Err(config_err(
            path,
            key,
            format!("is null but required ({why})"),
        )),
    }
}

fn resolve(path: &Path, c: &DeepseekV2ConfigJson) -> Result<DeepseekV2Spec> {
    if c.hidden_act != "silu" {
        return Err(unsupported(
            path,
            format!("hidden_act `{}`", c.hidden_act),
            "DeepSeek-VL2 language models use silu",
        ));
    }
    if c.rope_scaling.as_ref().is_some_and(|r| !r.is_null()) {
        return Err(unsupported(
            path,
            "rope_scaling",
            "DeepSeek-VL2 uses plain RoPE (rope_scaling null); YaRN/linear/dynamic scaling is not implemented",
        ));
    }
    if c.attention_bias {
        return Err(unsupported(
            path,
            "attention_bias true",
            "DeepSeek-VL2 language models have no attention biases",
        ));
    }
    if c.tie_word_embeddings {
        return Err(unsupported(
            path,
            "tie_word_embeddings true",
            "DeepSeek-VL2 has a separate lm_head",
        ));
    }
    for (key, v) in [
        ("vocab_size", c.vocab_size),
        ("hidden_size", c.hidden_size),
        ("num_hidden_layers", c.num_hidden_layers),
        ("num_attention_heads", c.num_attention_heads),
        ("intermediate_size", c.intermediate_size),
    ] {
        if v == 0 {
            return Err(config_err(path, key, "must be > 0"));
        }
    }
    if c.moe_layer_freq == 0 {
        return Err(config_err(
            path,
            "moe_layer_freq",
            "must be >= 1 (layers with index % moe_layer_freq == 0 are MoE)",
        ));
    }
    if !(c.rms_norm_eps > 0.0 && c.rope_theta > 0.0) {
        return Err(config_err(
            path,
            "rms_norm_eps/rope_theta",
            format!("must be > 0 (got {} / {})", c.rms_norm_eps, c.rope_theta),
        ));
    }
    let heads = c.num_attention_heads;
    let kv_heads = c.num_key_value_heads.unwrap_or(heads);
    let attention = if c.use_mla {
        if let Some(r) = c.q_lora_rank {
            return Err(unsupported(
                path,
                format!("q_lora_rank {r} (a low-rank query projection)"),
                "DeepSeek-VL2 sets q_lora_rank to null; note the DeepseekV2Config default is 1536, \
                 so the key must be present as null",
            ));
        }
        let why = "multi-head latent attention (use_mla true)";
        let rope = required(path, "qk_rope_head_dim", c.qk_rope_head_dim, why)?;
        if rope % 2 != 0 {
            return Err(config_err(
                path,
                "qk_rope_head_dim",
                format!("{rope} must be even (RoPE rotates pairs)"),
            ));
        }
        AttentionKind::Mla {
            q_lora_rank: None,
            kv_lora_rank: required(path, "kv_lora_rank", c.kv_lora_rank, why)?,
            qk_nope_head_dim: required(path, "qk_nope_head_dim", c.qk_nope_head_dim, why)?,
            qk_rope_head_dim: rope,
            v_head_dim: required(path, "v_head_dim", c.v_head_dim, why)?,
        }
    } else {
        if !c.hidden_size.is_multiple_of(heads) {
            return Err(config_err(
                path,
                "hidden_size",
                format!(
                    "{} is not divisible by num_attention_heads {heads} (use_mla false: head_dim = hidden_size / heads)",
                    c.hidden_size
                ),
            ));
        }
        if kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
            return Err(config_err(
                path,
                "num_key_value_heads",
                format!("{kv_heads} does not divide num_attention_heads {heads}"),
            ));
        }
        let head_dim = c.hidden_size / heads;
        if !head_dim.is_multiple_of(2) {
            return Err(config_err(
                path,
                "hidden_size",
                format!("head_dim {head_dim} must be even (RoPE rotates halves)"),
            ));
        }
        AttentionKind::Mha { head_dim }
    };
    let moe = match c.n_routed_experts {
        None => None,
        Some(n) => Some(resolve_moe(path, c, n)?),
    };
    Ok(DeepseekV2Spec {
        vocab_size: c.vocab_size,
        hidden_size: c.hidden_size,
        intermediate_size: c.intermediate_size,
        num_layers: c.num_hidden_layers,
        num_heads: heads,
        num_kv_heads: kv_heads,
        attention,
        moe,
        first_k_dense_replace: c.first_k_dense_replace,
        moe_layer_freq: c.moe_layer_freq,
        rms_norm_eps: c.rms_norm_eps,
        rope_theta: c.rope_theta,
        max_position_embeddings: c.max_position_embeddings,
        bos_token_id: c.bos_token_id,
        eos_token_id: c.eos_token_id,
    })
}

fn resolve_moe(path: &Path, c: &DeepseekV2ConfigJson, n: usize) -> Result<MoeSpec> {
    let why = "n_routed_experts is set, so the model has MoE layers";
    let n = required(path, "n_routed_experts", Some(n), why)?;
    let k = required(path, "num_experts_per_tok", c.num_experts_per_tok, why)?;
    if k > n {
        return Err(config_err(
            path,
            "num_experts_per_tok",
            format!("{k} is more than n_routed_experts {n}"),
        ));
    }
    let moe_inter = required(
        path,
        "moe_intermediate_size",
        Some(c.moe_intermediate_size),
        why,
    )?;
    let Some(method) = c.topk_method else {
        return Err(config_err(
            path,
            "topk_method",
            "is missing; the DeepseekV2Config default is the typo `gready`, which the official \
             gate rejects; set `greedy`, `group_limited_greedy` or `noaux_tc`",
        ));
    };
    let (n_group, topk_group) = match method {
        TopkMethod::Greedy => (1, 1),
        TopkMethod::GroupLimitedGreedy | TopkMethod::NoauxTc => {
            let why = "topk_method groups the experts";
            let g = required(path, "n_group", c.n_group, why)?;
            let tg = required(path, "topk_group", c.topk_group, why)?;
            if n % g != 0 {
                return Err(config_err(
                    path,
                    "n_group",
                    format!("{g} does not divide n_routed_experts {n}"),
                ));
            }
            if tg > g {
                return Err(config_err(
                    path,
                    "topk_group",
                    format!("{tg} is more than n_group {g}"),
                ));
            }
            if method == TopkMethod::NoauxTc && n / g < 2 {
                return Err(config_err(
                    path,
                    "n_group",
                    format!(
                        "noaux_tc scores each group by its top 2 experts, but {n} experts in {g} groups leave {} per group",
                        n / g
                    ),
                ));
            }
            (g, tg)
        }
    };
    Ok(MoeSpec {
        n_routed_experts: n,
        n_shared_experts: c.n_shared_experts.unwrap_or(0),
        num_experts_per_tok: k,
        moe_intermediate_size: moe_inter,
        topk_method: method,
        scoring_func: c.scoring_func,
        norm_topk_prob: c.norm_topk_prob,
        routed_scaling_factor: c.routed_scaling_factor,
        n_group,
        topk_group,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(v: Value) -> Result<DeepseekV2Spec> {
        DeepseekV2Spec::from_language_config(Path::new("/m/config.json"), &v)
    }

    fn err(v: Value) -> String {
        match spec(v) {
            Ok(s) => panic!("expected an error, got {s:?}"),
            Err(e) => e.to_string(),
        }
    }

    /// The `language_config` of `vl2-small-random` (fixtures README §1): no rms_norm_eps,
    /// rope_theta or use_mla, so the official defaults 1e-6, 10000 and true apply.
    fn small() -> Value {
        json!({
            "bos_token_id": 100000, "eos_token_id": 100001, "first_k_dense_replace": 1,
            "hidden_size": 8, "intermediate_size": 24, "kv_lora_rank": 8,
            "max_position_embeddings": 4096, "model_type": "deepseek_v2",
            "moe_intermediate_size": 8, "moe_layer_freq": 1, "n_group": 1,
            "n_routed_experts": 8, "n_shared_experts": 1, "num_attention_heads": 2,
            "num_experts_per_tok": 3, "num_hidden_layers": 3, "num_key_value_heads": 2,
            "q_lora_rank": null, "qk_nope_head_dim": 8, "qk_rope_head_dim": 4, "topk_group": 1,
            "topk_method": "greedy", "torch_dtype": "bfloat16", "v_head_dim": 8,
            "vocab_size": 102400
        })
    }

    /// `vl2-base-random`: sigmoid + noaux_tc, renormalised, × 2.
    fn base() -> Value {
        let mut v = small();
        let o = v.as_object_mut().expect("object literal");
        for (k, x) in [
            ("bos_token_id", json!(0)),
            ("eos_token_id", json!(1)),
            ("norm_topk_prob", json!(true)),
            ("num_experts_per_tok", json!(4)),
            ("routed_scaling_factor", json!(2.0)),
            ("scoring_func", json!("sigmoid")),
            ("topk_method", json!("noaux_tc")),
            ("vocab_size", json!(129280)),
        ] {
            o.insert(k.into(), x);
        }
        v
    }

    /// v2 §1.1: the language models' share of the published totals, and the MLA cache size.
    #[test]
    fn deepseek_v2_parameter_counts() -> Result<()> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/v2/models/vl2-small-random/config.json");
        let v: Value = crate::config::read_json(&path)?;
        let mut lc = v["language_config"].clone();
        // deepseek-vl2-small's language model (v2 §1.3).
        for (k, x) in [
            ("hidden_size", 2048),
            ("intermediate_size", 10944),
            ("moe_intermediate_size", 1408),
            ("num_hidden_layers", 27),
            ("num_attention_heads", 16),
            ("num_key_value_heads", 16),
            ("n_routed_experts", 64),
            ("n_shared_experts", 2),
            ("num_experts_per_tok", 6),
            ("kv_lora_rank", 512),
            ("qk_nope_head_dim", 128),
            ("qk_rope_head_dim", 64),
            ("v_head_dim", 128),
            ("vocab_size", 102400),
        ] {
            lc[k] = serde_json::json!(x);
        }
        let spec = DeepseekV2Spec::from_language_config(&path, &lc)?;
        let (all, read) = spec.param_counts();
        // 16.148 B in all minus SigLIP-SO400M with its head (428.2 M), the projector (4608·2048 +
        // 2048 + 2048² + 2048) and the two 2048-vectors.
        let vision = 428_225_600u64;
        let projector = 4608 * 2048 + 2048 + 2048 * 2048 + 2048 + 2 * 2048;
        assert_eq!(all + vision + projector, 16_148_349_504, "all = {all}");
        // "2.8B activated" (model card) includes the vision tower; the LM reads about 2.4 B.
        assert!((2.3e9..2.6e9).contains(&(read as f64)), "read = {read}");
        assert_eq!(spec.kv_values_per_position(), 27 * 576);
        Ok(())
    }

    #[test]
    fn small_fixture_config_takes_the_official_defaults() -> Result<()> {
        let s = spec(small())?;
        assert_eq!(s.rms_norm_eps, 1e-6);
        assert_eq!(s.rope_theta, 10000.0);
        assert_eq!(
            s.attention,
            AttentionKind::Mla {
                q_lora_rank: None,
                kv_lora_rank: 8,
                qk_nope_head_dim: 8,
                qk_rope_head_dim: 4,
                v_head_dim: 8
            }
        );
        let moe = s.moe.clone().expect("small is MoE");
        assert_eq!(moe.topk_method, TopkMethod::Greedy);
        assert_eq!(moe.scoring_func, ScoringFunc::Softmax);
        assert!(!moe.norm_topk_prob);
        assert_eq!(moe.routed_scaling_factor, 1.0);
        assert_eq!((moe.n_routed_experts, moe.n_shared_experts), (8, 1));
        assert_eq!((moe.num_experts_per_tok, moe.moe_intermediate_size), (3, 8));
        assert_eq!(
            (s.bos_token_id, s.eos_token_id),
            (Some(100000), Some(100001))
        );
        assert!(!s.is_moe_layer(0) && s.is_moe_layer(1) && s.is_moe_layer(2));
        assert_eq!(s.rope_dim(), 4);
        Ok(())
    }

    #[test]
    fn base_fixture_config_is_noaux_tc_sigmoid() -> Result<()> {
        let s = spec(base())?;
        let moe = s.moe.clone().expect("base is MoE");
        assert_eq!(moe.topk_method, TopkMethod::NoauxTc);
        assert_eq!(moe.scoring_func, ScoringFunc::Sigmoid);
        assert!(moe.norm_topk_prob);
        assert_eq!(moe.routed_scaling_factor, 2.0);
        assert_eq!((moe.n_group, moe.topk_group), (1, 1));
        assert_eq!((s.rms_norm_eps, s.rope_theta), (1e-6, 10000.0));
        assert!(matches!(s.attention, AttentionKind::Mla { .. }));
        Ok(())
    }

    #[test]
    fn tiny_style_config_is_mha_and_ignores_null_mla_dims() -> Result<()> {
        let mut v = small();
        let o = v.as_object_mut().expect("object literal");
        for (k, x) in [
            ("use_mla", json!(false)),
            ("kv_lora_rank", Value::Null),
            ("qk_nope_head_dim", json!(0)),
            ("qk_rope_head_dim", json!(0)),
            ("v_head_dim", json!(0)),
            ("lm_head", json!(true)),
        ] {
            o.insert(k.into(), x);
        }
        let s = spec(v)?;
        assert_eq!(s.attention, AttentionKind::Mha { head_dim: 4 });
        assert_eq!(s.rope_dim(), 4);
        Ok(())
    }

    #[test]
    fn an_empty_config_is_the_official_dense_default() -> Result<()> {
        // DeepseekV2Config() has q_lora_rank 1536 → rejected; with it nulled, the rest applies.
        let e = err(json!({}));
        assert!(e.contains("q_lora_rank 1536"), "{e}");
        let s = spec(json!({"q_lora_rank": null}))?;
        assert_eq!(
            (s.vocab_size, s.hidden_size, s.intermediate_size),
            (102400, 4096, 11008)
        );
        assert_eq!((s.num_layers, s.num_heads, s.num_kv_heads), (30, 32, 32));
        assert_eq!(s.max_position_embeddings, 2048);
        assert_eq!((s.first_k_dense_replace, s.moe_layer_freq), (0, 1));
        assert_eq!(
            (s.bos_token_id, s.eos_token_id),
            (Some(100000), Some(100001))
        );
        assert!(s.moe.is_none() && !s.is_moe_layer(0));
        assert_eq!(
            s.attention,
            AttentionKind::Mla {
                q_lora_rank: None,
                kv_lora_rank: 512,
                qk_nope_head_dim: 128,
                qk_rope_head_dim: 64,
                v_head_dim: 128
            }
        );
        Ok(())
    }

    #[test]
    fn null_kv_heads_means_all_heads() -> Result<()> {
        let mut v = small();
        v["use_mla"] = json!(false);
        v["num_key_value_heads"] = Value::Null;
        assert_eq!(spec(v)?.num_kv_heads, 2);
        Ok(())
    }

    #[test]
    fn moe_layer_freq_skips_layers() -> Result<()> {
        let mut v = small();
        v["moe_layer_freq"] = json!(2);
        v["num_hidden_layers"] = json!(5);
        let s = spec(v)?;
        let moe: Vec<bool> = (0..5).map(|l| s.is_moe_layer(l)).collect();
        assert_eq!(moe, [false, false, true, false, true]);
        Ok(())
    }

    #[test]
    fn errors_name_the_file_the_key_and_the_value() {
        let cases: Vec<(&str, Value, &[&str])> = vec![
            (
                "topk_method",
                json!("sinkhorn"),
                &["/m/config.json", "language_config.topk_method", "sinkhorn"],
            ),
            (
                "scoring_func",
                json!("sqrtsoftplus"),
                &["language_config.scoring_func", "sqrtsoftplus"],
            ),
            (
                "rope_scaling",
                json!({"type": "yarn", "factor": 40}),
                &["language_config.rope_scaling", "not supported"],
            ),
            (
                "hidden_act",
                json!("gelu"),
                &["language_config.hidden_act `gelu`", "not supported"],
            ),
            (
                "q_lora_rank",
                json!(1536),
                &["q_lora_rank 1536", "not supported"],
            ),
            (
                "hidden_size",
                json!("wide"),
                &["language_config.hidden_size", "wide"],
            ),
            (
                "num_experts_per_tok",
                Value::Null,
                &["language_config.num_experts_per_tok", "null"],
            ),
            (
                "num_experts_per_tok",
                json!(9),
                &["num_experts_per_tok", "more than n_routed_experts 8"],
            ),
            (
                "moe_layer_freq",
                json!(0),
                &["language_config.moe_layer_freq"],
            ),
            (
                "kv_lora_rank",
                Value::Null,
                &["language_config.kv_lora_rank"],
            ),
            ("qk_rope_head_dim", json!(5), &["qk_rope_head_dim", "even"]),
        ];
        for (key, value, needles) in cases {
            let mut v = small();
            v[key] = value;
            let e = err(v);
            for n in needles {
                assert!(e.contains(n), "{key}: `{e}` lacks `{n}`");
            }
        }
    }

    #[test]
    fn missing_topk_method_explains_the_gready_default() {
        let mut v = small();
        v.as_object_mut().expect("object").remove("topk_method");
        let e = err(v);
        assert!(
            e.contains("language_config.topk_method") && e.contains("gready"),
            "{e}"
        );
    }

    #[test]
    fn mha_divisibility_and_group_checks() {
        let mut v = small();
        v["use_mla"] = json!(false);
        v["num_attention_heads"] = json!(3);
        let e = err(v);
        assert!(e.contains("hidden_size") && e.contains("divisible"), "{e}");

        let mut v = small();
        v["use_mla"] = json!(false);
        v["num_key_value_heads"] = json!(3);
        assert!(err(v).contains("num_key_value_heads"));

        let mut v = base();
        v["n_group"] = json!(3);
        assert!(err(v).contains("does not divide n_routed_experts 8"));

        let mut v = base();
        v["n_group"] = Value::Null;
        assert!(err(v).contains("language_config.n_group"));

        let mut v = base();
        v["n_group"] = json!(8);
        v["topk_group"] = json!(4);
        assert!(err(v).contains("top 2"));
    }
}
