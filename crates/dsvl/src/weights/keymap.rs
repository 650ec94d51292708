//! The ONLY place where checkpoint names are remapped (v1 §12.3).
//!
//! Canonical names are the official `deepseek-ai` keys (v1 §11). For each layout, [`source`] says
//! how to obtain a canonical tensor from the names stored in the files.

use crate::error::CheckpointLayout;

/// How to build one canonical tensor from the stored ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Stored under this name, unchanged.
    Name(String),
    /// Concatenate these along dim 0 (transformers splits SigLIP's fused qkv into q/k/v).
    Concat0(Vec<String>),
    /// Stored without the leading unit dim (transformers squeezes SigLIP's `pos_embed`).
    Unsqueeze0(String),
}

/// Tensors present in published checkpoints that the forward pass never uses (v1 §14).
pub fn is_known_unused(layout: CheckpointLayout, name: &str) -> bool {
    match layout {
        CheckpointLayout::Original => {
            name.contains(".attn_pool.")
                || name.starts_with("vision_model.high_layer_norm.")
                || name.starts_with("vision_model.low_layer_norm.")
                // DeepSeek-OCR's CLIP-L: its patch embedding is bypassed by the SAM features, and
                // `position_ids` is the saved `arange(257)` buffer
                || name == "model.vision_model.embeddings.patch_embedding.weight"
                || name == "model.vision_model.embeddings.position_ids"
        }
        CheckpointLayout::Transformers => name.contains(".head.") && name.contains("vision_model"),
    }
}

/// Where a canonical (original-layout) key lives in a checkpoint of `layout`.
/// `siglip_in_vision_model`: whether transformers files spell the SigLIP prefix with two
/// `vision_model` segments (`model.vision_model.vision_model.`) or one (v1 ref §3 notes).
pub fn source(layout: CheckpointLayout, canonical: &str, hf: &HfNaming) -> Source {
    match layout {
        CheckpointLayout::Original => Source::Name(canonical.to_string()),
        CheckpointLayout::Transformers => transformers_source(canonical, hf),
    }
}

/// Spelling details of a transformers-layout checkpoint, detected from its key set.
#[derive(Debug, Clone, Default)]
pub struct HfNaming {
    /// `model.vision_model.vision_model.` (true) or `model.vision_model.` (false).
    pub siglip_double_prefix: bool,
}

const SIGLIP_PREFIXES: [&str; 2] = [
    "vision_model.vision_tower_low.vision_tower.",
    "vision_model.vision_tower.",
];
const SAM_PREFIX: &str = "vision_model.vision_tower_high.vision_tower.";

fn transformers_source(c: &str, hf: &HfNaming) -> Source {
    let name = |s: String| Source::Name(s);
    // Language model.
    if let Some(rest) = c.strip_prefix("language_model.model.") {
        return name(format!("model.language_model.{rest}"));
    }
    if c == "language_model.lm_head.weight" {
        return name("lm_head.weight".into());
    }
    // SigLIP.
    for prefix in SIGLIP_PREFIXES {
        if let Some(rest) = c.strip_prefix(prefix) {
            let p = if hf.siglip_double_prefix {
                "model.vision_model.vision_model."
            } else {
                "model.vision_model."
            };
            return siglip_source(p, rest);
        }
    }
    // SAM.
    if let Some(rest) = c.strip_prefix(SAM_PREFIX) {
        return name(sam_name(rest));
    }
    // Aligner.
    if let Some(rest) = c.strip_prefix("aligner.") {
        let mapped = rest
            .replacen("high_up_proj.", "high_res_vision_proj.", 1)
            .replacen("low_up_proj.", "vision_proj.", 1);
        let mapped = match mapped.as_str() {
            m if m.starts_with("layers.0.") => m.replacen("layers.0.", "linear1.", 1),
            m if m.starts_with("layers.2.") => m.replacen("layers.2.", "linear2.", 1),
            m if m.starts_with("layers.1.") => m.replacen("layers.1.", "proj.", 1),
            m => m.to_string(),
        };
        return name(format!("model.aligner.{mapped}"));
    }
    name(c.to_string())
}

fn siglip_source(p: &str, rest: &str) -> Source {
    if rest == "pos_embed" {
        return Source::Unsqueeze0(format!("{p}embeddings.position_embedding.weight"));
    }
    if let Some(r) = rest.strip_prefix("patch_embed.proj.") {
        return Source::Name(format!("{p}embeddings.patch_embedding.{r}"));
    }
    if let Some(r) = rest.strip_prefix("norm.") {
        return Source::Name(format!("{p}post_layernorm.{r}"));
    }
    if let Some(r) = rest.strip_prefix("blocks.") {
        // r = "{i}.{module}..."
        let (i, m) = r.split_once('.').unwrap_or((r, ""));
        let l = format!("{p}encoder.layers.{i}.");
        if let Some(w) = m.strip_prefix("attn.qkv.") {
            return Source::Concat0(
                ["q_proj", "k_proj", "v_proj"]
                    .iter()
                    .map(|x| format!("{l}self_attn.{x}.{w}"))
                    .collect(),
            );
        }
        if let Some(w) = m.strip_prefix("attn.proj.") {
            return Source::Name(format!("{l}self_attn.out_proj.{w}"));
        }
        if let Some(w) = m.strip_prefix("norm1.") {
            return Source::Name(format!("{l}layer_norm1.{w}"));
        }
        if let Some(w) = m.strip_prefix("norm2.") {
            return Source::Name(format!("{l}layer_norm2.{w}"));
        }
        return Source::Name(format!("{l}{m}")); // mlp.fc1 / mlp.fc2
    }
    Source::Name(format!("{p}{rest}"))
}

fn sam_name(rest: &str) -> String {
    const ENC: &str = "model.high_res_vision_model.vision_encoder.";
    let neck = |prefix: &str, r: &str| -> String {
        let (idx, w) = r.split_once('.').unwrap_or((r, ""));
        let part = match idx {
            "0" => "conv1",
            "1" => "layer_norm1",
            "2" => "conv2",
            "3" => "layer_norm2",
            other => other,
        };
        format!("{prefix}{part}.{w}")
    };
    if let Some(r) = rest.strip_prefix("neck_hd.") {
        return neck("model.high_res_vision_neck.", r);
    }
    if let Some(r) = rest.strip_prefix("neck.") {
        return neck(&format!("{ENC}neck."), r);
    }
    if let Some(r) = rest.strip_prefix("downsamples.") {
        let (idx, w) = r.split_once('.').unwrap_or((r, ""));
        let conv = match idx {
            "0" => "conv1",
            "1" => "conv2",
            other => other,
        };
        return format!("model.high_res_vision_proj.{conv}.{w}");
    }
    if rest == "hd_alpha_downsamples" {
        return "model.high_res_vision_alpha".into();
    }
    if let Some(r) = rest.strip_prefix("patch_embed.proj.") {
        return format!("{ENC}patch_embed.projection.{r}");
    }
    if let Some(r) = rest.strip_prefix("blocks.") {
        let r = r
            .replacen(".norm1.", ".layer_norm1.", 1)
            .replacen(".norm2.", ".layer_norm2.", 1);
        return format!("{ENC}layers.{r}");
    }
    format!("{ENC}{rest}") // pos_embed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hf(c: &str) -> Source {
        source(
            CheckpointLayout::Transformers,
            c,
            &HfNaming {
                siglip_double_prefix: true,
            },
        )
    }
    fn n(s: &str) -> Source {
        Source::Name(s.into())
    }

    #[test]
    fn original_is_identity() {
        let c = "vision_model.vision_tower.blocks.3.attn.qkv.weight";
        assert_eq!(
            source(CheckpointLayout::Original, c, &HfNaming::default()),
            n(c)
        );
    }

    #[test]
    fn transformers_map_matches_spec_table() {
        // v1 §12.3, one row each.
        assert_eq!(
            hf("language_model.model.layers.0.self_attn.q_proj.weight"),
            n("model.language_model.layers.0.self_attn.q_proj.weight")
        );
        assert_eq!(hf("language_model.lm_head.weight"), n("lm_head.weight"));
        assert_eq!(
            hf("vision_model.vision_tower.pos_embed"),
            Source::Unsqueeze0(
                "model.vision_model.vision_model.embeddings.position_embedding.weight".into()
            )
        );
        assert_eq!(
            hf("vision_model.vision_tower_low.vision_tower.blocks.1.attn.qkv.bias"),
            Source::Concat0(vec![
                "model.vision_model.vision_model.encoder.layers.1.self_attn.q_proj.bias".into(),
                "model.vision_model.vision_model.encoder.layers.1.self_attn.k_proj.bias".into(),
                "model.vision_model.vision_model.encoder.layers.1.self_attn.v_proj.bias".into(),
            ])
        );
        assert_eq!(
            hf("vision_model.vision_tower.blocks.0.attn.proj.weight"),
            n("model.vision_model.vision_model.encoder.layers.0.self_attn.out_proj.weight")
        );
        assert_eq!(
            hf("vision_model.vision_tower.blocks.0.mlp.fc2.bias"),
            n("model.vision_model.vision_model.encoder.layers.0.mlp.fc2.bias")
        );
        assert_eq!(
            hf("vision_model.vision_tower.norm.weight"),
            n("model.vision_model.vision_model.post_layernorm.weight")
        );
        assert_eq!(
            hf("vision_model.vision_tower_high.vision_tower.blocks.2.attn.rel_pos_h"),
            n("model.high_res_vision_model.vision_encoder.layers.2.attn.rel_pos_h")
        );
        assert_eq!(
            hf("vision_model.vision_tower_high.vision_tower.blocks.2.norm1.weight"),
            n("model.high_res_vision_model.vision_encoder.layers.2.layer_norm1.weight")
        );
        assert_eq!(
            hf("vision_model.vision_tower_high.vision_tower.neck.3.bias"),
            n("model.high_res_vision_model.vision_encoder.neck.layer_norm2.bias")
        );
        assert_eq!(
            hf("vision_model.vision_tower_high.vision_tower.neck_hd.2.weight"),
            n("model.high_res_vision_neck.conv2.weight")
        );
        assert_eq!(
            hf("vision_model.vision_tower_high.vision_tower.downsamples.1.weight"),
            n("model.high_res_vision_proj.conv2.weight")
        );
        assert_eq!(
            hf("vision_model.vision_tower_high.vision_tower.hd_alpha_downsamples"),
            n("model.high_res_vision_alpha")
        );
        assert_eq!(
            hf("vision_model.vision_tower_high.vision_tower.patch_embed.proj.weight"),
            n("model.high_res_vision_model.vision_encoder.patch_embed.projection.weight")
        );
        assert_eq!(
            hf("vision_model.vision_tower_high.vision_tower.pos_embed"),
            n("model.high_res_vision_model.vision_encoder.pos_embed")
        );
        assert_eq!(
            hf("aligner.layers.0.weight"),
            n("model.aligner.linear1.weight")
        );
        assert_eq!(hf("aligner.layers.2.bias"), n("model.aligner.linear2.bias"));
        assert_eq!(
            hf("aligner.high_up_proj.weight"),
            n("model.aligner.high_res_vision_proj.weight")
        );
        assert_eq!(
            hf("aligner.low_up_proj.bias"),
            n("model.aligner.vision_proj.bias")
        );
        assert_eq!(
            hf("aligner.layers.1.weight"),
            n("model.aligner.proj.weight")
        );
    }

    #[test]
    fn single_prefix_siglip_spelling() {
        let s = source(
            CheckpointLayout::Transformers,
            "vision_model.vision_tower.norm.bias",
            &HfNaming::default(),
        );
        assert_eq!(s, n("model.vision_model.post_layernorm.bias"));
    }

    #[test]
    fn unused_allow_list() {
        assert!(is_known_unused(
            CheckpointLayout::Original,
            "vision_model.vision_tower.attn_pool.latent"
        ));
        assert!(is_known_unused(
            CheckpointLayout::Original,
            "vision_model.low_layer_norm.weight"
        ));
        assert!(!is_known_unused(
            CheckpointLayout::Original,
            "vision_model.vision_tower.norm.weight"
        ));
        assert!(is_known_unused(
            CheckpointLayout::Original,
            "model.vision_model.embeddings.position_ids"
        ));
        assert!(!is_known_unused(
            CheckpointLayout::Original,
            "model.vision_model.embeddings.position_embedding.weight"
        ));
    }
}
