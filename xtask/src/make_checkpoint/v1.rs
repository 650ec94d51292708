//! DeepSeek-VL 1.3B / 7B for `cargo xtask make-checkpoint`: the tensor inventory (v1 §11) in
//! `MultiModalityCausalLM.state_dict()` order, the shard split of the published files (v1 §1) and
//! the config files (v1 §2).

use serde_json::{json, Value};

use super::plan::{Inventory, Plan, SiglipShape, TensorSpec};
use super::StoredDtype;

/// The two published sizes (v1 §0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Variant {
    /// deepseek-vl-1.3b-chat: SigLIP-L, Llama 1.3B, one `model.safetensors`.
    B1_3,
    /// deepseek-vl-7b-chat: SAM-B + SigLIP-L hybrid, Llama 7B, three shards + index.
    B7,
}

/// transformers 4.38 `save_pretrained(max_shard_size="5GB")`: 5·10⁹ bytes. Replays the published
/// 7B split (4.98 / 4.96 / 4.75 GB, v1 §1) when sizes are counted in float16.
const SHARD_LIMIT_F16_BYTES: u64 = 5_000_000_000;

/// SigLIP-L/16 @384 (`siglip_large_patch16_384`, v1 §11.2): 306 tensors.
const SIGLIP_LARGE: SiglipShape = SiglipShape {
    width: 1024,
    layers: 24,
    mlp: 4096,
    patch: 16,
    grid: 24,
};

/// SAM-B `sam_b_downsample` under prefix `p` (v1 §11.3): 186 tensors.
fn sam_b(inv: &mut Inventory, p: &str) {
    let (w, hd) = (768, 64);
    // Direct parameters first, in registration order: pos_embed, then hd_alpha_downsamples.
    inv.add(format!("{p}pos_embed"), &[1, 64, 64, w]);
    inv.add(format!("{p}hd_alpha_downsamples"), &[1]);
    inv.add(format!("{p}patch_embed.proj.weight"), &[w, 3, 16, 16]);
    inv.add(format!("{p}patch_embed.proj.bias"), &[w]);
    for i in 0..12 {
        let b = format!("{p}blocks.{i}");
        // Global blocks 2, 5, 8, 11 see the 64×64 grid, windowed ones 14×14: 2·size − 1 rows.
        let rel = if i % 3 == 2 { 127 } else { 27 };
        inv.layer_norm(&format!("{b}.norm1"), w);
        inv.add(format!("{b}.attn.rel_pos_h"), &[rel, hd]);
        inv.add(format!("{b}.attn.rel_pos_w"), &[rel, hd]);
        inv.linear(&format!("{b}.attn.qkv"), 3 * w, w);
        inv.linear(&format!("{b}.attn.proj"), w, w);
        inv.layer_norm(&format!("{b}.norm2"), w);
        inv.linear(&format!("{b}.mlp.lin1"), 4 * w, w);
        inv.linear(&format!("{b}.mlp.lin2"), w, 4 * w);
    }
    sam_neck(inv, &format!("{p}neck"));
    inv.add(format!("{p}downsamples.0.weight"), &[512, 256, 3, 3]);
    inv.add(format!("{p}downsamples.1.weight"), &[1024, 512, 3, 3]);
    sam_neck(inv, &format!("{p}neck_hd"));
}

/// Conv1×1 768→256, LayerNorm2d, Conv3×3 256→256, LayerNorm2d; convs without bias.
fn sam_neck(inv: &mut Inventory, p: &str) {
    inv.add(format!("{p}.0.weight"), &[256, 768, 1, 1]);
    inv.layer_norm(&format!("{p}.1"), 256);
    inv.add(format!("{p}.2.weight"), &[256, 256, 3, 3]);
    inv.layer_norm(&format!("{p}.3"), 256);
}

/// `LlamaForCausalLM` (v1 §11.1), MHA, no biases, separate lm_head.
fn llama(inv: &mut Inventory, d: usize, f: usize, layers: usize) {
    let vocab = 102_400;
    let p = "language_model.model";
    inv.add(format!("{p}.embed_tokens.weight"), &[vocab, d]);
    for i in 0..layers {
        let l = format!("{p}.layers.{i}");
        for proj in ["q_proj", "k_proj", "v_proj", "o_proj"] {
            inv.add(format!("{l}.self_attn.{proj}.weight"), &[d, d]);
        }
        inv.add(format!("{l}.mlp.gate_proj.weight"), &[f, d]);
        inv.add(format!("{l}.mlp.up_proj.weight"), &[f, d]);
        inv.add(format!("{l}.mlp.down_proj.weight"), &[d, f]);
        inv.add(format!("{l}.input_layernorm.weight"), &[d]);
        inv.add(format!("{l}.post_attention_layernorm.weight"), &[d]);
    }
    inv.add(format!("{p}.norm.weight"), &[d]);
    inv.add("language_model.lm_head.weight", &[vocab, d]);
}

/// `MultiModalityCausalLM.state_dict()` of deepseek-vl-1.3b-chat: vision_model, aligner, language_model.
fn inventory_1_3b() -> Vec<TensorSpec> {
    let mut inv = Inventory::default();
    inv.siglip("vision_model.vision_tower.", &SIGLIP_LARGE);
    inv.linear("aligner.layers.0", 2048, 1024);
    inv.linear("aligner.layers.2", 2048, 2048);
    llama(&mut inv, 2048, 5632, 24);
    inv.0
}

/// deepseek-vl-7b-chat: `HybridVisionTower` (high, low, then the two unused LayerNorms), aligner, Llama.
fn inventory_7b() -> Vec<TensorSpec> {
    let mut inv = Inventory::default();
    sam_b(&mut inv, "vision_model.vision_tower_high.vision_tower.");
    inv.siglip("vision_model.vision_tower_low.vision_tower.", &SIGLIP_LARGE);
    inv.layer_norm("vision_model.high_layer_norm", 1024);
    inv.layer_norm("vision_model.low_layer_norm", 1024);
    inv.linear("aligner.high_up_proj", 2048, 1024);
    inv.linear("aligner.low_up_proj", 2048, 1024);
    inv.linear("aligner.layers.1", 4096, 4096);
    llama(&mut inv, 4096, 11008, 30);
    inv.0
}

/// Shard index of each tensor: a new shard starts when the next tensor would pass the limit
/// (transformers 4.38 `shard_checkpoint`), sizes counted in f16 so every dtype keeps the layout.
fn shard_split(tensors: &[TensorSpec], limit: u64) -> Vec<usize> {
    let mut shard = 0;
    let mut used = 0u64;
    let mut out = Vec::with_capacity(tensors.len());
    for (i, t) in tensors.iter().enumerate() {
        let size = t.numel() as u64 * 2;
        if used + size > limit && i > 0 && used > 0 {
            shard += 1;
            used = 0;
        }
        used += size;
        out.push(shard);
    }
    out
}

/// 1.3B: one `model.safetensors`, no index; 7B: `model-0000k-of-00003.safetensors` + index.
pub(super) fn plan(v: Variant) -> Plan {
    match v {
        Variant::B1_3 => Plan::single(inventory_1_3b()),
        Variant::B7 => {
            let tensors = inventory_7b();
            let shard_of = shard_split(&tensors, SHARD_LIMIT_F16_BYTES);
            let n = shard_of.iter().max().map_or(1, |m| m + 1);
            Plan {
                tensors,
                shard_of,
                files: (1..=n)
                    .map(|k| format!("model-{k:05}-of-{n:05}.safetensors"))
                    .collect(),
                index: true,
            }
        }
    }
}

/// `config.json`: v1 §2.2 for 1.3B (1.3B chat assumed identical to the verified 1.3B base), v1
/// §2.1 for 7B, whose language_config omits what LlamaConfig defaults (hidden 4096, FFN 11008,
/// 32 heads).
pub(super) fn config(v: Variant, dtype: StoredDtype) -> Value {
    match v {
        Variant::B1_3 => json!({
            "aligner_config": {"cls": "MlpProjector", "model_type": "aligner",
                "params": {"depth": 2, "input_dim": 1024, "n_embed": 2048, "projector_type": "mlp_gelu"}},
            "architectures": ["MultiModalityCausalLM"],
            "language_config": {"hidden_size": 2048, "intermediate_size": 5632, "max_position_embeddings": 16384,
                "model_type": "llama", "num_attention_heads": 16, "num_hidden_layers": 24, "num_key_value_heads": 16,
                "torch_dtype": dtype.torch_name(), "vocab_size": 102400},
            "model_type": "multi_modality",
            "torch_dtype": dtype.torch_name(),
            "transformers_version": "4.38.2",
            "vision_config": {"cls": "CLIPVisionTower", "model_type": "vision",
                "params": {"image_size": 384, "model_name": "siglip_large_patch16_384",
                    "pixel_mean": [0.5, 0.5, 0.5], "pixel_std": [0.5, 0.5, 0.5],
                    "select_feature": "same", "select_layer": -1}}
        }),
        Variant::B7 => {
            let clip_mean = json!([0.48145466, 0.4578275, 0.40821073]);
            let clip_std = json!([0.26862954, 0.26130258, 0.27577711]);
            json!({
                "aligner_config": {"cls": "MlpProjector", "model_type": "aligner",
                    "params": {"depth": 2, "input_dim": 1024, "n_embed": 4096,
                        "projector_type": "low_high_hybrid_split_mlp_gelu"}},
                "architectures": ["MultiModalityCausalLM"],
                "language_config": {"max_position_embeddings": 16384, "model_type": "llama",
                    "num_hidden_layers": 30, "torch_dtype": dtype.torch_name(), "vocab_size": 102400},
                "model_type": "multi_modality",
                "torch_dtype": dtype.torch_name(),
                "transformers_version": "4.38.2",
                "vision_config": {"cls": "HybridVisionTower", "model_type": "vision",
                    "params": {"concat_type": "tuple", "freeze_high": true, "freeze_low": true,
                        "high_res_cfg": {"ckpt_path": "", "image_size": 1024, "model_name": "sam_b_downsample",
                            "output_dim": 1024, "pixel_mean": clip_mean, "pixel_std": clip_std,
                            "select_feature": "same", "select_layer": -1},
                        "low_res_cfg": {"ckpt_path": "", "image_size": 384, "model_name": "siglip_large_patch16_384",
                            "output_dim": 1024, "pixel_mean": [0.5, 0.5, 0.5], "pixel_std": [0.5, 0.5, 0.5],
                            "select_feature": "same", "select_layer": -1}}}
            })
        }
    }
}

/// `preprocessor_config.json` (v1 §2.3): the 7B one describes the 1024-pixel SAM input.
pub(super) fn preprocessor_config(v: Variant) -> Value {
    let (size, mean, std, bg) = match v {
        Variant::B7 => (
            1024,
            json!([0.48145466, 0.4578275, 0.40821073]),
            json!([0.26862954, 0.26130258, 0.27577711]),
            json!([122, 116, 104]),
        ),
        Variant::B1_3 => (
            384,
            json!([0.5, 0.5, 0.5]),
            json!([0.5, 0.5, 0.5]),
            json!([127, 127, 127]),
        ),
    };
    json!({
        "background_color": bg, "do_normalize": false, "image_mean": mean,
        "image_processor_type": "VLMImageProcessor", "image_size": size, "image_std": std,
        "min_size": 14, "processor_class": "VLChatProcessor", "rescale_factor": 0.00392156862745098
    })
}

/// `processor_config.json` (v1 §2.4, identical in all four repos).
pub(super) fn processor_config() -> Value {
    json!({
        "add_special_token": false, "ignore_id": -100, "image_tag": "<image_placeholder>",
        "mask_prompt": true, "num_image_tokens": 576, "processor_class": "VLChatProcessor",
        "sft_format": "deepseek"
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// v1 §1 / §11: tensor and parameter counts of the published checkpoints.
    #[test]
    fn inventories_match_the_published_counts() {
        let small = inventory_1_3b();
        assert_eq!(small.len(), 529);
        assert_eq!(
            small.iter().map(TensorSpec::numel).sum::<usize>(),
            1_975_235_584
        );
        let big = inventory_7b();
        assert_eq!(big.len(), 775);
        assert_eq!(
            big.iter().map(TensorSpec::numel).sum::<usize>(),
            7_343_990_017
        );
    }

    /// The published 7B shards are 4.98 / 4.96 / 4.75 GB (v1 §1).
    #[test]
    fn seven_b_splits_into_the_published_three_shards() {
        let t = inventory_7b();
        let s = shard_split(&t, SHARD_LIMIT_F16_BYTES);
        let mut sizes = [0u64; 3];
        for (t, &k) in t.iter().zip(&s) {
            assert!(k < 3, "more than three shards");
            sizes[k] += t.numel() as u64 * 2;
        }
        let gb: Vec<String> = sizes
            .iter()
            .map(|b| format!("{:.2}", *b as f64 / 1e9))
            .collect();
        assert_eq!(gb, ["4.98", "4.96", "4.75"]);
    }
}
