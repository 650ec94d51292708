//! DeepSeek-VL2 tiny / small / base for `cargo xtask make-checkpoint`: the tensor inventory
//! (v2 §11) in `DeepseekVLV2ForCausalLM.state_dict()` order, the shard split of the published
//! files (v2 §1.1) and the config files (v2 §1.2–1.4).
//!
//! **Shard split (reconstructed from the published sizes).** The published shards were not
//! written by transformers' `save_pretrained`: their names carry a 6-digit total, and transformers
//! closes a shard *before* it passes the limit, which gives small 8.586 ×3 + 6.539 GB instead of
//! the published 6.52. What reproduces every published size: tensors go, in `state_dict()` order,
//! into the current shard, which is closed as soon as it holds at least 8 GiB of bf16 data (so
//! full shards end just above 2³³ bytes: 8.590–8.596 GB). Base was saved as two pipeline halves,
//! each split on its own: the first holds `image_newline`, `view_seperator`, the vision tower, the
//! projector, `embed_tokens` and layers 0–14; the second `lm_head`, then layers 15–29 and the final
//! norm. File sizes, safetensors headers included:
//!
//! | | ours (GB) | published listing (GB) |
//! |---|---|---|
//! | tiny | 6.741 | 6.74 |
//! | small | 8.592 8.592 8.592 6.522 | 8.59 8.59 8.59 6.52 |
//! | base | 8.591 8.594 8.594 1.369 8.595 8.594 8.593 2.031 | 8.59 8.59 8.59 1.37 8.6 8.59 8.59 2.03 |
//!
//! Base in one piece gives 7 shards; any other halving point, or the second half without `lm_head`
//! first, misses the listing (shard 5 comes out at 8.594, not 8.6). Where `lm_head` sits in small
//! cannot be told from its sizes (first or last in the language model both give the listing); we
//! keep `state_dict()` order there. The index files come out at the published sizes too (247, 553
//! and 687 kB), a check on every tensor name.

use std::path::Path;

use anyhow::{ensure, Context};
use serde::Serialize;
use serde_json::{json, Value};

use super::plan::{Inventory, Plan, SiglipShape, TensorSpec};
use super::StoredDtype;

/// The three published variants (v2 §0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Variant {
    Tiny,
    Small,
    Base,
}

/// SigLIP-SO400M/14 @384 (v2 §11.1): width 1152, 27 blocks, MLP `int(1152 · 3.7362)` = 4304,
/// 27×27 patches. Same tower in all three variants.
const SIGLIP_SO400M: SiglipShape = SiglipShape {
    width: 1152,
    layers: 27,
    mlp: 4304,
    patch: 14,
    grid: 27,
};
/// `vision_config.mlp_ratio` as published (v2 §1.2).
const VISION_MLP_RATIO: f64 = 3.7362;
/// `downsample_mlp_gelu` input: 2×2 space-to-channel of the 1152-wide features (v2 §0).
const PROJECTOR_IN: usize = 1152 * 2 * 2;

/// MLA dimensions of small and base: the `DeepseekV2Config` defaults (v2 §1.3).
const KV_LORA_RANK: usize = 512;
const QK_NOPE_HEAD_DIM: usize = 128;
const QK_ROPE_HEAD_DIM: usize = 64;
const V_HEAD_DIM: usize = 128;
/// MoE layout of all three (v2 §0): layer 0 dense, then 6 routed experts per token plus 2 shared
/// ones, fused into one MLP of `2 · moe_intermediate_size`.
const FIRST_K_DENSE_REPLACE: usize = 1;
const EXPERTS_PER_TOK: usize = 6;
const N_SHARED_EXPERTS: usize = 2;
const MAX_POSITION_EMBEDDINGS: usize = 4096;
/// A shard is closed once it holds this much bf16 data (module doc).
const SHARD_FILL_BYTES: u64 = 8 << 30;

/// The 23 candidate resolutions `[width, height]`: every (m·384, n·384) with m·n ≤ 9, in the
/// published order, which breaks ties in the tiling choice (v2 §1.2, §2.2).
const CANDIDATE_RESOLUTIONS: [[u32; 2]; 23] = [
    [384, 384],
    [384, 768],
    [768, 384],
    [384, 1152],
    [1152, 384],
    [384, 1536],
    [1536, 384],
    [768, 768],
    [384, 1920],
    [1920, 384],
    [384, 2304],
    [2304, 384],
    [768, 1152],
    [1152, 768],
    [384, 2688],
    [2688, 384],
    [384, 3072],
    [3072, 384],
    [768, 1536],
    [1536, 768],
    [384, 3456],
    [3456, 384],
    [1152, 1152],
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attention {
    /// `use_mla: false`: q/k/v/o projections of `hidden` (tiny).
    Mha,
    /// Multi-head latent attention, `q_lora_rank: null` (small, base).
    Mla,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gate {
    /// softmax, greedy top-k (tiny, small).
    Softmax,
    /// sigmoid + `e_score_correction_bias`, `noaux_tc` (base).
    NoauxTc,
}

/// The language model of one variant (v2 §0, §1.3).
struct Lm {
    hidden: usize,
    /// Dense FFN of layer 0.
    intermediate: usize,
    /// Width of one routed expert.
    moe_intermediate: usize,
    layers: usize,
    heads: usize,
    vocab: usize,
    routed_experts: usize,
    attention: Attention,
    gate: Gate,
    /// Saved as two pipeline halves (module doc).
    saved_in_halves: bool,
}

impl Variant {
    fn lm(self) -> Lm {
        match self {
            Variant::Tiny => Lm {
                hidden: 1280,
                intermediate: 6848,
                moe_intermediate: 896,
                layers: 12,
                heads: 10,
                vocab: 129_280,
                routed_experts: 64,
                attention: Attention::Mha,
                gate: Gate::Softmax,
                saved_in_halves: false,
            },
            Variant::Small => Lm {
                hidden: 2048,
                intermediate: 10944,
                moe_intermediate: 1408,
                layers: 27,
                heads: 16,
                vocab: 102_400,
                routed_experts: 64,
                attention: Attention::Mla,
                gate: Gate::Softmax,
                saved_in_halves: false,
            },
            Variant::Base => Lm {
                hidden: 2560,
                intermediate: 12288,
                moe_intermediate: 1536,
                layers: 30,
                heads: 32,
                vocab: 129_280,
                routed_experts: 72,
                attention: Attention::Mla,
                gate: Gate::NoauxTc,
                saved_in_halves: true,
            },
        }
    }

    /// bos, eos and `<image>` ids of the variant's tokenizer family (v2 §0): v3 for tiny and
    /// base, v2 for small.
    fn token_ids(self) -> (u32, u32, u32) {
        match self {
            Variant::Tiny | Variant::Base => (0, 1, 128_815),
            Variant::Small => (100_000, 100_001, 100_003),
        }
    }

    /// The repo name without `deepseek-ai/`.
    pub(super) fn repo(self) -> &'static str {
        match self {
            Variant::Tiny => "deepseek-vl2-tiny",
            Variant::Small => "deepseek-vl2-small",
            Variant::Base => "deepseek-vl2",
        }
    }

    /// The test fixture with this variant's tokenizer files, from the repository root (named in
    /// messages only).
    pub(super) fn fixture(self) -> &'static str {
        match self {
            Variant::Tiny => "crates/dsvl/tests/fixtures/v2/models/vl2-tiny-random",
            Variant::Small => "crates/dsvl/tests/fixtures/v2/models/vl2-small-random",
            Variant::Base => "crates/dsvl/tests/fixtures/v2/models/vl2-base-random",
        }
    }

    /// Shard sizes in the Hugging Face file listing (v2 §1.1; the listing shows 8.60 as "8.6").
    pub(super) fn published_shard_gb(self) -> &'static [&'static str] {
        match self {
            Variant::Tiny => &["6.74"],
            Variant::Small => &["8.59", "8.59", "8.59", "6.52"],
            Variant::Base => &[
                "8.59", "8.59", "8.59", "1.37", "8.60", "8.59", "8.59", "2.03",
            ],
        }
    }
}

/// `DeepseekV2MLP` without biases: gate_proj, up_proj `[f, d]`, down_proj `[d, f]`.
fn mlp(inv: &mut Inventory, p: &str, d: usize, f: usize) {
    inv.add(format!("{p}.gate_proj.weight"), &[f, d]);
    inv.add(format!("{p}.up_proj.weight"), &[f, d]);
    inv.add(format!("{p}.down_proj.weight"), &[d, f]);
}

/// `DeepseekV2DecoderLayer` `l` (v2 §11.3): self_attn, mlp, then the two RMSNorms.
fn decoder_layer(inv: &mut Inventory, lm: &Lm, l: usize) {
    let (d, h) = (lm.hidden, lm.heads);
    let p = format!("language.model.layers.{l}");
    let a = format!("{p}.self_attn");
    match lm.attention {
        Attention::Mha => {
            for proj in ["q_proj", "k_proj", "v_proj", "o_proj"] {
                inv.add(format!("{a}.{proj}.weight"), &[d, d]);
            }
        }
        Attention::Mla => {
            // q_lora_rank null: one projection to every head's [nope | rope] query.
            inv.add(
                format!("{a}.q_proj.weight"),
                &[h * (QK_NOPE_HEAD_DIM + QK_ROPE_HEAD_DIM), d],
            );
            inv.add(
                format!("{a}.kv_a_proj_with_mqa.weight"),
                &[KV_LORA_RANK + QK_ROPE_HEAD_DIM, d],
            );
            inv.add(format!("{a}.kv_a_layernorm.weight"), &[KV_LORA_RANK]);
            inv.add(
                format!("{a}.kv_b_proj.weight"),
                &[h * (QK_NOPE_HEAD_DIM + V_HEAD_DIM), KV_LORA_RANK],
            );
            inv.add(format!("{a}.o_proj.weight"), &[d, h * V_HEAD_DIM]);
        }
    }
    let m = format!("{p}.mlp");
    if l < FIRST_K_DENSE_REPLACE {
        mlp(inv, &m, d, lm.intermediate);
    } else {
        // DeepseekV2MoE registers experts, gate, shared_experts in this order.
        for j in 0..lm.routed_experts {
            mlp(inv, &format!("{m}.experts.{j}"), d, lm.moe_intermediate);
        }
        inv.add(format!("{m}.gate.weight"), &[lm.routed_experts, d]);
        if lm.gate == Gate::NoauxTc {
            inv.add(
                format!("{m}.gate.e_score_correction_bias"),
                &[lm.routed_experts],
            );
        }
        mlp(
            inv,
            &format!("{m}.shared_experts"),
            d,
            N_SHARED_EXPERTS * lm.moe_intermediate,
        );
    }
    inv.add(format!("{p}.input_layernorm.weight"), &[d]);
    inv.add(format!("{p}.post_attention_layernorm.weight"), &[d]);
}

/// The tensors in the order they were saved, one list per separately split part (module doc).
fn saved_parts(v: Variant) -> Vec<Vec<TensorSpec>> {
    let lm = v.lm();
    let d = lm.hidden;
    let mut first = Inventory::default();
    // The model's own parameters precede its submodules' in state_dict(); the misspelling is the
    // published name.
    first.add("image_newline", &[d]);
    first.add("view_seperator", &[d]);
    first.siglip("vision.", &SIGLIP_SO400M);
    // nn.Sequential(Linear, GELU, Linear): the GELU is layers.1.
    first.linear("projector.layers.0", d, PROJECTOR_IN);
    first.linear("projector.layers.2", d, d);
    first.add("language.model.embed_tokens.weight", &[lm.vocab, d]);
    let lm_head = |inv: &mut Inventory| inv.add("language.lm_head.weight", &[lm.vocab, d]);
    let norm = |inv: &mut Inventory| inv.add("language.model.norm.weight", &[d]);
    if !lm.saved_in_halves {
        for l in 0..lm.layers {
            decoder_layer(&mut first, &lm, l);
        }
        norm(&mut first);
        lm_head(&mut first);
        return vec![first.0];
    }
    let half = lm.layers / 2;
    for l in 0..half {
        decoder_layer(&mut first, &lm, l);
    }
    let mut second = Inventory::default();
    lm_head(&mut second);
    for l in half..lm.layers {
        decoder_layer(&mut second, &lm, l);
    }
    norm(&mut second);
    vec![first.0, second.0]
}

/// Shard of each tensor: each part fills shards until they hold at least [`SHARD_FILL_BYTES`],
/// counted in bf16 so every `--dtype` keeps the published layout.
fn fill_shards(parts: &[Vec<TensorSpec>]) -> (Vec<usize>, usize) {
    let mut shard_of = Vec::new();
    let mut shard = 0;
    for part in parts {
        let mut used = 0u64;
        for t in part {
            shard_of.push(shard);
            used += t.numel() as u64 * 2;
            if used >= SHARD_FILL_BYTES {
                shard += 1;
                used = 0;
            }
        }
        if used > 0 {
            shard += 1;
        }
    }
    (shard_of, shard)
}

/// Tensors, shards `model-0000k-of-00000N.safetensors` (5-digit index, 6-digit total) and an
/// index even for one shard (v2 §1.1).
pub(super) fn plan(v: Variant) -> Plan {
    let parts = saved_parts(v);
    let (shard_of, n) = fill_shards(&parts);
    Plan {
        tensors: parts.into_iter().flatten().collect(),
        shard_of,
        files: (1..=n)
            .map(|k| format!("model-{k:05}-of-{n:06}.safetensors"))
            .collect(),
        index: true,
    }
}

/// `config.json` (v2 §1.2). Field order as in the published files; keys the reference classes
/// default (vision `image_size`/`heads`, projector type/depth/`input_dim`) are absent, as there.
#[derive(Serialize)]
pub(super) struct Config {
    model_type: &'static str,
    candidate_resolutions: [[u32; 2]; 23],
    global_view_pos: &'static str,
    tile_tag: &'static str,
    vision_config: VisionConfig,
    projector_config: ProjectorConfig,
    /// A JSON object: its keys come out sorted, as in the published files.
    language_config: Value,
    torch_dtype: &'static str,
    transformers_version: &'static str,
}

#[derive(Serialize)]
struct VisionConfig {
    model_type: &'static str,
    model_name: &'static str,
    width: usize,
    layers: usize,
    patch_size: usize,
    mlp_ratio: f64,
}

#[derive(Serialize)]
struct ProjectorConfig {
    model_type: &'static str,
    n_embed: usize,
}

pub(super) fn config(v: Variant, dtype: StoredDtype) -> Config {
    let lm = v.lm();
    Config {
        model_type: "deepseek_vl_v2",
        candidate_resolutions: CANDIDATE_RESOLUTIONS,
        global_view_pos: "head",
        tile_tag: "2D",
        vision_config: VisionConfig {
            model_type: "vision",
            model_name: "siglip_so400m_patch14_384",
            width: SIGLIP_SO400M.width,
            layers: SIGLIP_SO400M.layers,
            patch_size: SIGLIP_SO400M.patch,
            mlp_ratio: VISION_MLP_RATIO,
        },
        projector_config: ProjectorConfig {
            model_type: "mlp_projector",
            n_embed: lm.hidden,
        },
        language_config: language_config(v, dtype),
        torch_dtype: dtype.torch_name(),
        // What the official code pins (v2 §1.2, §13).
        transformers_version: "4.38.2",
    }
}

/// `language_config` (v2 §1.3): the keys of the published files; what they leave out takes the
/// `DeepseekV2Config` defaults, which is why small and base state no `use_mla`, `rope_theta` or
/// `rms_norm_eps`.
fn language_config(v: Variant, dtype: StoredDtype) -> Value {
    let lm = v.lm();
    let (bos, eos, _) = v.token_ids();
    let mut c = json!({
        "bos_token_id": bos,
        "eos_token_id": eos,
        "first_k_dense_replace": FIRST_K_DENSE_REPLACE,
        "hidden_size": lm.hidden,
        "intermediate_size": lm.intermediate,
        "max_position_embeddings": MAX_POSITION_EMBEDDINGS,
        "model_type": "deepseek_v2",
        "moe_intermediate_size": lm.moe_intermediate,
        "moe_layer_freq": 1,
        "n_group": 1,
        "n_routed_experts": lm.routed_experts,
        "n_shared_experts": N_SHARED_EXPERTS,
        "num_attention_heads": lm.heads,
        "num_experts_per_tok": EXPERTS_PER_TOK,
        "num_hidden_layers": lm.layers,
        "num_key_value_heads": lm.heads,
        "q_lora_rank": null,
        "topk_group": 1,
        "topk_method": "greedy",
        "torch_dtype": dtype.torch_name(),
        "vocab_size": lm.vocab,
    });
    let extra = match lm.attention {
        // The config DeepSeek-OCR shares with tiny: no MLA dims, plus two unused flags.
        Attention::Mha => json!({
            "kv_lora_rank": null, "qk_nope_head_dim": 0, "qk_rope_head_dim": 0, "v_head_dim": 0,
            "use_mla": false, "lm_head": true, "rm_head": false,
            "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
        }),
        Attention::Mla => json!({
            "kv_lora_rank": KV_LORA_RANK, "qk_nope_head_dim": QK_NOPE_HEAD_DIM,
            "qk_rope_head_dim": QK_ROPE_HEAD_DIM, "v_head_dim": V_HEAD_DIM,
        }),
    };
    let gate = match lm.gate {
        Gate::Softmax => json!({}),
        Gate::NoauxTc => json!({
            "topk_method": "noaux_tc", "scoring_func": "sigmoid",
            "norm_topk_prob": true, "routed_scaling_factor": 2.0,
        }),
    };
    if let (Some(c), Some(extra), Some(gate)) =
        (c.as_object_mut(), extra.as_object(), gate.as_object())
    {
        c.extend(extra.clone());
        c.extend(gate.clone());
    }
    c
}

/// `processor_config.json`, identical in the three repos (v2 §1.4).
pub(super) fn processor_config() -> Value {
    json!({
        "add_special_token": false,
        "candidate_resolutions": CANDIDATE_RESOLUTIONS,
        "downsample_ratio": 2,
        "ignore_id": -100,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "image_token": "<image>",
        "mask_prompt": false,
        "normalize": true,
        "pad_token": "<｜▁pad▁｜>",
        "patch_size": SIGLIP_SO400M.patch,
        "processor_class": "DeepseekVLV2Processor",
        "sft_format": "deepseek"
    })
}

/// The tokenizer in `from` must be the variant's family: small's vocab has 102400 rows, so a v3
/// tokenizer's `<image>` id (128815) would index past the embedding.
pub(super) fn check_tokenizer(from: &Path, v: Variant) -> anyhow::Result<()> {
    let path = from.join("tokenizer.json");
    let tok: Value = serde_json::from_slice(
        &std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?,
    )
    .with_context(|| format!("{} is not JSON", path.display()))?;
    let id = tok["added_tokens"]
        .as_array()
        .and_then(|a| a.iter().find(|t| t["content"] == "<image>"))
        .and_then(|t| t["id"].as_u64());
    let (_, _, want) = v.token_ids();
    ensure!(
        id == Some(u64::from(want)),
        "{}: <image> is {}, but {} uses id {want}; point --from at a {} folder (tokenizer of the same family)",
        path.display(),
        id.map_or_else(|| "absent".to_string(), |i| format!("id {i}")),
        v.repo(),
        v.repo()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::super::shards::{self, SplitMix};
    use super::super::write_weights;
    use super::*;

    const ALL: [Variant; 3] = [Variant::Tiny, Variant::Small, Variant::Base];

    fn params(p: &Plan) -> u64 {
        p.tensors.iter().map(|t| t.numel() as u64).sum()
    }

    fn shape_of<'a>(p: &'a Plan, name: &str) -> Option<&'a [usize]> {
        p.tensors
            .iter()
            .find(|t| t.name == name)
            .map(|t| t.shape.as_slice())
    }

    /// v2 §1.1: tiny 3.3705 B, small 16.148 B, base 27.480 B parameters (vision tower with its
    /// unused attention-pool head, projector, LM with untied lm_head).
    #[test]
    fn parameter_and_tensor_counts_match_the_published_checkpoints() {
        let want = [
            (Variant::Tiny, 2582, 3_370_501_440u64, "3.3705"),
            (Variant::Small, 5639, 16_148_349_504, "16.1483"),
            (Variant::Base, 6973, 27_480_134_248, "27.4801"),
        ];
        for (v, tensors, n, billions) in want {
            let p = plan(v);
            assert_eq!(p.tensors.len(), tensors, "{v:?}");
            assert_eq!(params(&p), n, "{v:?}");
            assert_eq!(format!("{:.4}", n as f64 / 1e9), billions);
            let names: std::collections::BTreeSet<&str> =
                p.tensors.iter().map(|t| t.name.as_str()).collect();
            assert_eq!(names.len(), tensors, "{v:?}: duplicate names");
        }
    }

    /// v2 §11: a sample of names and shapes from every part of the tables.
    #[test]
    fn names_and_shapes_follow_the_spec_tables() {
        let (t, s, b) = (
            plan(Variant::Tiny),
            plan(Variant::Small),
            plan(Variant::Base),
        );
        for p in [&t, &s, &b] {
            assert_eq!(shape_of(p, "vision.pos_embed"), Some(&[1, 729, 1152][..]));
            assert_eq!(
                shape_of(p, "vision.patch_embed.proj.weight"),
                Some(&[1152, 3, 14, 14][..])
            );
            assert_eq!(
                shape_of(p, "vision.blocks.26.mlp.fc1.weight"),
                Some(&[4304, 1152][..])
            );
            assert_eq!(
                shape_of(p, "vision.attn_pool.kv.weight"),
                Some(&[2304, 1152][..])
            );
            assert_eq!(
                shape_of(p, "vision.attn_pool.latent"),
                Some(&[1, 1, 1152][..])
            );
            assert!(shape_of(p, "vision.blocks.27.norm1.weight").is_none());
        }
        assert_eq!(
            shape_of(&t, "projector.layers.0.weight"),
            Some(&[1280, 4608][..])
        );
        assert_eq!(
            shape_of(&b, "projector.layers.2.weight"),
            Some(&[2560, 2560][..])
        );
        assert_eq!(shape_of(&s, "view_seperator"), Some(&[2048][..]));
        assert_eq!(
            shape_of(&t, "language.model.layers.11.self_attn.v_proj.weight"),
            Some(&[1280, 1280][..])
        );
        assert_eq!(
            shape_of(&t, "language.model.layers.0.mlp.down_proj.weight"),
            Some(&[1280, 6848][..])
        );
        assert_eq!(
            shape_of(
                &t,
                "language.model.layers.1.mlp.shared_experts.up_proj.weight"
            ),
            Some(&[1792, 1280][..])
        );
        assert_eq!(
            shape_of(&s, "language.model.layers.26.self_attn.q_proj.weight"),
            Some(&[3072, 2048][..])
        );
        assert_eq!(
            shape_of(&s, "language.model.layers.26.self_attn.kv_b_proj.weight"),
            Some(&[4096, 512][..])
        );
        assert_eq!(
            shape_of(
                &s,
                "language.model.layers.5.mlp.experts.63.down_proj.weight"
            ),
            Some(&[2048, 1408][..])
        );
        assert_eq!(
            shape_of(&s, "language.lm_head.weight"),
            Some(&[102_400, 2048][..])
        );
        assert_eq!(
            shape_of(&b, "language.model.layers.29.self_attn.o_proj.weight"),
            Some(&[2560, 4096][..])
        );
        assert_eq!(
            shape_of(
                &b,
                "language.model.layers.3.self_attn.kv_a_proj_with_mqa.weight"
            ),
            Some(&[576, 2560][..])
        );
        assert_eq!(
            shape_of(
                &b,
                "language.model.layers.1.mlp.experts.71.gate_proj.weight"
            ),
            Some(&[1536, 2560][..])
        );
        assert_eq!(
            shape_of(
                &b,
                "language.model.layers.29.mlp.gate.e_score_correction_bias"
            ),
            Some(&[72][..])
        );
        // Only base has the bias, and only MoE layers have a gate.
        for p in [&t, &s, &b] {
            assert!(shape_of(p, "language.model.layers.0.mlp.gate.weight").is_none());
        }
        for p in [&t, &s] {
            assert!(!p.tensors.iter().any(|x| x.name.contains("e_score")));
        }
        let biases = b
            .tensors
            .iter()
            .filter(|x| x.name.contains("e_score"))
            .count();
        assert_eq!(biases, 29);
    }

    fn file_gb(p: &Plan) -> Vec<String> {
        (0..p.files.len())
            .map(|k| {
                let bytes =
                    shards::file_bytes(&p.shard(k), StoredDtype::Bf16).expect("header serialises");
                format!("{:.2}", bytes as f64 / 1e9)
            })
            .collect()
    }

    /// v2 §1.1: the file names and the sizes of the Hugging Face listing.
    #[test]
    fn shards_reproduce_the_published_files() {
        for v in ALL {
            let p = plan(v);
            assert_eq!(file_gb(&p), v.published_shard_gb(), "{v:?}");
            let n = p.files.len();
            for (k, f) in p.files.iter().enumerate() {
                assert_eq!(*f, format!("model-{:05}-of-{n:06}.safetensors", k + 1));
            }
            assert!(p.index, "{v:?}: VL2 writes the index even for one shard");
        }
        assert_eq!(
            plan(Variant::Tiny).files,
            ["model-00001-of-000001.safetensors"]
        );
        assert_eq!(
            plan(Variant::Base).files[7],
            "model-00008-of-000008.safetensors"
        );
    }

    /// The published split only comes out with base in two halves and lm_head first in the second.
    #[test]
    fn base_needs_both_halves_to_match() {
        let parts = saved_parts(Variant::Base);
        assert_eq!(parts[1][0].name, "language.lm_head.weight");
        assert!(parts[0]
            .iter()
            .any(|t| t.name.starts_with("language.model.layers.14.")));
        assert!(parts[1]
            .iter()
            .any(|t| t.name.starts_with("language.model.layers.15.")));
        let whole: Vec<TensorSpec> = parts.concat();
        let (_, n) = fill_shards(&[whole]);
        assert_eq!(
            n, 7,
            "in one piece base would have 7 shards, not the published 8"
        );
    }

    /// The index weight_map names every tensor once and points it at the file that holds it; the
    /// index text has the published size (tiny 247 kB, small 553 kB, base 687 kB), which checks
    /// the length of every name.
    #[test]
    fn index_points_every_name_at_its_shard() {
        for (v, kb) in [
            (Variant::Tiny, 247),
            (Variant::Small, 553),
            (Variant::Base, 687),
        ] {
            let p = plan(v);
            let mut weight_map = serde_json::Map::new();
            for (k, file) in p.files.iter().enumerate() {
                let part = p.shard(k);
                assert!(!part.is_empty(), "{v:?}: empty shard {file}");
                let header = shards::header(&part, StoredDtype::Bf16).expect("header");
                for t in &part {
                    let info = header.info(&t.name).expect("every name in the header");
                    assert_eq!(info.shape, t.shape, "{}", t.name);
                    let old = weight_map.insert(t.name.clone(), json!(file));
                    assert!(old.is_none(), "{v:?}: {} in two shards", t.name);
                }
            }
            assert_eq!(weight_map.len(), p.tensors.len());
            let index =
                json!({"metadata": {"total_size": params(&p) * 2}, "weight_map": weight_map});
            let text = serde_json::to_string_pretty(&index).expect("index serialises");
            assert_eq!((text.len() as f64 / 1e3).round() as usize, kb, "{v:?}");
        }
    }

    /// Every count in language_config agrees with the inventory: the parameters computed from the
    /// config alone equal the inventory's (catches a config typo the loader would trust).
    #[test]
    fn config_describes_the_inventory() {
        for v in ALL {
            let c = serde_json::to_value(config(v, StoredDtype::Bf16)).expect("config");
            let l = &c["language_config"];
            let g = |k: &str| l[k].as_u64().unwrap_or(0);
            let (d, heads, vocab) = (g("hidden_size"), g("num_attention_heads"), g("vocab_size"));
            let attn = if l["use_mla"] == json!(false) {
                4 * d * d
            } else {
                let (r, nope, rope, vh) = (
                    g("kv_lora_rank"),
                    g("qk_nope_head_dim"),
                    g("qk_rope_head_dim"),
                    g("v_head_dim"),
                );
                heads * (nope + rope) * d
                    + (r + rope) * d
                    + r
                    + heads * (nope + vh) * r
                    + d * heads * vh
            };
            let (e, mi) = (g("n_routed_experts"), g("moe_intermediate_size"));
            let bias = u64::from(l["topk_method"] == "noaux_tc");
            let moe = 3 * d * mi * (e + g("n_shared_experts")) + e * d + bias * e;
            let dense = 3 * d * g("intermediate_size");
            let layers = g("num_hidden_layers");
            let dense_layers = g("first_k_dense_replace");
            let lm = 2 * vocab * d
                + d
                + layers * (attn + 2 * d)
                + dense_layers * dense
                + (layers - dense_layers) * moe;
            let vis = &c["vision_config"];
            let (w, depth, k) = (
                vis["width"].as_u64().unwrap_or(0),
                vis["layers"].as_u64().unwrap_or(0),
                vis["patch_size"].as_u64().unwrap_or(0),
            );
            let mlp = (w as f64 * vis["mlp_ratio"].as_f64().unwrap_or(0.0)) as u64;
            let block = 4 * w + (3 * w * w + 3 * w) + (w * w + w) + 2 * mlp * w + mlp + w;
            let grid = 384 / k;
            let pool =
                w + (w * w + w) + (2 * w * w + 2 * w) + (w * w + w) + 2 * w + 2 * mlp * w + mlp + w;
            let vision = grid * grid * w + 3 * k * k * w + w + depth * block + 2 * w + pool;
            let n = c["projector_config"]["n_embed"].as_u64().unwrap_or(0);
            let projector = 4 * w * n + n + n * n + n + 2 * n;
            assert_eq!(lm + vision + projector, params(&plan(v)), "{v:?}");
        }
    }

    #[test]
    fn config_has_the_published_layout() {
        let c = serde_json::to_string_pretty(&config(Variant::Tiny, StoredDtype::Bf16))
            .expect("config");
        let top: Vec<&str> = c
            .lines()
            .filter(|l| l.starts_with("  \"") && !l.starts_with("   "))
            .map(|l| l.trim().split('"').nth(1).unwrap_or(""))
            .collect();
        assert_eq!(
            top,
            [
                "model_type",
                "candidate_resolutions",
                "global_view_pos",
                "tile_tag",
                "vision_config",
                "projector_config",
                "language_config",
                "torch_dtype",
                "transformers_version"
            ]
        );
        // All (m, n) with m·n ≤ 9, each once, 384×384 first (the processor's tile size).
        let mut seen = std::collections::BTreeSet::new();
        for [w, h] in CANDIDATE_RESOLUTIONS {
            assert!(w % 384 == 0 && h % 384 == 0 && (w / 384) * (h / 384) <= 9);
            assert!(seen.insert((w, h)));
        }
        let all = (1..=9u32)
            .flat_map(|m| (1..=9u32).map(move |n| (m, n)))
            .filter(|(m, n)| m * n <= 9)
            .count();
        assert_eq!(seen.len(), all);
        assert_eq!(CANDIDATE_RESOLUTIONS[0], [384, 384]);

        let base = serde_json::to_value(config(Variant::Base, StoredDtype::Bf16)).expect("config");
        let l = &base["language_config"];
        assert_eq!(l["topk_method"], "noaux_tc");
        assert_eq!(l["scoring_func"], "sigmoid");
        assert_eq!(l["routed_scaling_factor"], 2.0);
        assert_eq!(l["norm_topk_prob"], true);
        assert!(
            l.get("use_mla").is_none(),
            "small/base take use_mla from the default"
        );
        let small = serde_json::to_value(config(Variant::Small, StoredDtype::F16)).expect("config");
        assert_eq!(small["language_config"]["bos_token_id"], 100_000);
        assert_eq!(small["language_config"]["topk_method"], "greedy");
        assert_eq!(small["torch_dtype"], "float16");
        let tiny = serde_json::to_value(config(Variant::Tiny, StoredDtype::Bf16)).expect("config");
        assert_eq!(tiny["language_config"]["use_mla"], false);
        assert_eq!(tiny["language_config"]["kv_lora_rank"], Value::Null);
        assert_eq!(tiny["language_config"]["q_lora_rank"], Value::Null);
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("dsvl-mkckpt-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    /// The random MoE gate must route different tokens to different experts: top-6 of the real
    /// tiny gate (as written, bf16) over 64 random RMS-normalised hidden states.
    #[test]
    fn gate_weights_spread_tokens_over_the_experts() {
        let name = "language.model.layers.1.mlp.gate.weight";
        let p = plan(Variant::Tiny);
        let gate = p.tensors.iter().find(|t| t.name == name).expect("gate");
        let (e, d) = (gate.shape[0], gate.shape[1]);
        let dir = scratch("gate");
        let path = dir.join("gate.safetensors");
        shards::write_shard(&path, &[gate], StoredDtype::Bf16, 0).expect("write");
        let bytes = std::fs::read(&path).expect("read");
        let _ = std::fs::remove_dir_all(&dir);
        let start = 8 + u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
        let w: Vec<f32> = bytes[start..]
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect();
        assert_eq!(w.len(), e * d);
        let mut rng = SplitMix(42);
        let mut choices = std::collections::BTreeSet::new();
        let mut used = vec![false; e];
        for _ in 0..64 {
            // Hidden states after RMSNorm: roughly unit RMS.
            let h: Vec<f32> = (0..d)
                .map(|_| (rng.next() >> 40) as f32 / (1u64 << 24) as f32 * 3.46 - 1.73)
                .collect();
            let mut logits: Vec<(f32, usize)> = (0..e)
                .map(|j| {
                    (
                        w[j * d..(j + 1) * d]
                            .iter()
                            .zip(&h)
                            .map(|(a, b)| a * b)
                            .sum(),
                        j,
                    )
                })
                .collect();
            logits.sort_by(|a, b| b.0.total_cmp(&a.0));
            let top: Vec<usize> = logits[..EXPERTS_PER_TOK].iter().map(|x| x.1).collect();
            top.iter().for_each(|&j| used[j] = true);
            // Softmax spread: the top logit must not be a near-tie with all others.
            assert!(logits[0].0 - logits[e - 1].0 > 0.5, "logits too flat");
            choices.insert(top);
        }
        assert!(
            choices.len() >= 60,
            "only {} distinct top-6 sets",
            choices.len()
        );
        assert!(used.iter().filter(|u| **u).count() >= 48);
    }

    /// A VL2-style plan on disk: 6-digit shard names, an index for a single shard, total_size.
    #[test]
    fn writes_the_index_even_for_one_shard() {
        let tensors = vec![
            TensorSpec {
                name: "image_newline".into(),
                shape: vec![8],
            },
            TensorSpec {
                name: "language.model.norm.weight".into(),
                shape: vec![8],
            },
        ];
        let plan = Plan {
            shard_of: vec![0, 0],
            files: vec!["model-00001-of-000001.safetensors".into()],
            index: true,
            tensors,
        };
        let dir = scratch("index");
        let total = write_weights(&dir, &plan, StoredDtype::Bf16, 0).expect("write");
        assert_eq!(total, 32);
        let index: Value = serde_json::from_slice(
            &std::fs::read(dir.join("model.safetensors.index.json")).expect("index"),
        )
        .expect("JSON");
        assert_eq!(index["metadata"]["total_size"], 32);
        assert_eq!(
            index["weight_map"]["language.model.norm.weight"],
            "model-00001-of-000001.safetensors"
        );
        let shard = std::fs::read(dir.join("model-00001-of-000001.safetensors")).expect("shard");
        let _ = std::fs::remove_dir_all(&dir);
        let header = u64::from_le_bytes(shard[..8].try_into().expect("8 bytes")) as usize;
        assert_eq!(shard.len(), 8 + header + 32);
        // The norm weight is 1.0 in bf16 (0x3f80), little-endian.
        let norm = &shard[8 + header + 16..];
        assert!(norm.chunks_exact(2).all(|b| b == [0x80, 0x3f]));
    }
}
