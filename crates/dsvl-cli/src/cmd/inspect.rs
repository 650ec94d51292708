//! `dsvl inspect`: what a model folder holds, from its headers only.

use anyhow::Context;
use dsvl::config::{ModelConfig, ModelSpec, VisionSpec, Vl2Spec};
use dsvl::llm::deepseek_v2::AttentionKind;
use dsvl::weights::Checkpoint;
use dsvl::CheckpointLayout;

use crate::args::InspectArgs;
use crate::model_path::resolve_model;

pub fn run(a: InspectArgs) -> anyhow::Result<()> {
    let dir = resolve_model(&a.model, false)?;
    println!("folder:        {}", dir.display());
    let config =
        ModelConfig::from_dir(&dir).with_context(|| format!("while reading {}", dir.display()))?;
    println!("family:        {}", config.family());
    let layout = match &config {
        ModelConfig::V1(spec) => {
            print_v1(spec);
            spec.layout
        }
        ModelConfig::V2(spec) => {
            print_v2(spec);
            CheckpointLayout::Original
        }
    };
    let mut problems = Vec::new();
    match Checkpoint::open(&dir, layout, None) {
        Ok(ck) => {
            let n = ck.stored_names().count();
            let dtype = ck
                .stored_names()
                .find(|n| n.contains("embed_tokens"))
                .and_then(|n| ck.stored_dtype(n))
                .unwrap_or_else(|| "?".into());
            println!(
                "weights:       {n} tensors, {:.2} GB, stored as {dtype}",
                ck.total_bytes() as f64 / 1e9
            );
        }
        Err(e) => problems.push(format!("weights: {e}")),
    }
    match dsvl::engine::load_tokenizer(&config) {
        Ok(t) => println!(
            "tokenizer:     {} tokens; bos {} eos {} image {}",
            t.vocab_size(),
            t.bos_id(),
            t.eos_id(),
            t.image_id()
        ),
        Err(e) => problems.push(format!("tokenizer: {e}")),
    }
    if problems.is_empty() {
        println!("problems:      none found");
        Ok(())
    } else {
        for p in &problems {
            println!("problem:       {p}");
        }
        anyhow::bail!("{} problem(s) found in {}", problems.len(), dir.display())
    }
}

fn print_v2(spec: &Vl2Spec) {
    let v = &spec.vision;
    println!(
        "vision:        SigLIP {}px/{} width {} × {} layers, {} heads, mlp {} (tiles)",
        v.image_size, v.patch_size, v.width, v.layers, v.heads, v.mlp_hidden
    );
    let p = &spec.projector;
    println!(
        "projector:     downsample_mlp_gelu {}x{} ({} → {}), depth {}",
        p.downsample_ratio,
        p.downsample_ratio,
        p.input_dim * p.downsample_ratio * p.downsample_ratio,
        p.n_embed,
        p.depth
    );
    let l = &spec.llm;
    let attention = match &l.attention {
        AttentionKind::Mha { head_dim } => format!("MHA head_dim {head_dim}"),
        AttentionKind::Mla {
            kv_lora_rank,
            qk_nope_head_dim,
            qk_rope_head_dim,
            v_head_dim,
            ..
        } => format!(
            "MLA kv_lora {kv_lora_rank}, nope {qk_nope_head_dim} + rope {qk_rope_head_dim}, v {v_head_dim}"
        ),
    };
    let moe = match &l.moe {
        Some(m) => format!(
            "{} routed + {} shared experts of {}, top-{} ({:?}, {:?}, ×{}), first {} dense (ffn {})",
            m.n_routed_experts,
            m.n_shared_experts,
            m.moe_intermediate_size,
            m.num_experts_per_tok,
            m.topk_method,
            m.scoring_func,
            m.routed_scaling_factor,
            l.first_k_dense_replace,
            l.intermediate_size
        ),
        None => format!("dense ffn {}", l.intermediate_size),
    };
    println!(
        "language:      DeepSeekMoE hidden {} × {} layers, {} heads, {attention}; {moe}; vocab {}, context {}",
        l.hidden_size, l.num_layers, l.num_heads, l.vocab_size, l.max_position_embeddings
    );
    let pr = &spec.processor;
    println!(
        "preprocessing: {}px tiles, {} layouts up to {:?}, pad {:?}, {} tokens per untiled image ({}), global view {:?}",
        pr.tile_size,
        pr.candidates.len(),
        pr.candidates.iter().max_by_key(|(w, h)| w * h).copied().unwrap_or_default(),
        pr.pad_color,
        spec.image_tokens(1, 1),
        pr.image_token,
        spec.global_view_pos
    );
}

fn print_v1(spec: &ModelSpec) {
    println!("layout:        {:?}", spec.layout);
    match &spec.vision {
        VisionSpec::Siglip(s) => println!(
            "vision:        SigLIP {}px/{} width {} × {} layers, {} heads",
            s.image_size, s.patch_size, s.width, s.layers, s.heads
        ),
        VisionSpec::Hybrid { sam, siglip } => {
            println!(
                "vision:        hybrid: SAM {}px width {} × {} layers (global {:?}, neck {}, downsample {:?}) + SigLIP {}px width {} × {} layers",
                sam.image_size, sam.width, sam.layers, sam.global_attn_indexes, sam.neck_channels,
                sam.downsample_channels, siglip.image_size, siglip.width, siglip.layers
            )
        }
    }
    println!(
        "aligner:       {:?} depth {} ({} → {})",
        spec.aligner.kind, spec.aligner.depth, spec.aligner.input_dim, spec.aligner.n_embed
    );
    let l = &spec.llm;
    println!(
        "language:      Llama hidden {} × {} layers, {} heads ({} kv), ffn {}, vocab {}, context {}",
        l.hidden_size, l.num_layers, l.num_heads, l.num_kv_heads, l.intermediate_size, l.vocab_size,
        l.max_position_embeddings
    );
    let p = &spec.processor;
    println!(
        "preprocessing: resize long side to {} (min {}), pad with {:?}, {} tokens per image ({})",
        p.image_size, p.min_size, p.background, p.num_image_tokens, p.image_tag
    );
}
