//! DeepSeek-VL2 behind the family traits: [`DeepseekVl2Spec`] is its [`Family`], [`DeepseekVl2`] its
//! [`VisionLanguageModel`].

use std::any::Any;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::config::DeepseekVl2Spec;
use super::model::DeepseekVl2;
use super::processor;
use crate::error::{CheckpointLayout, Error, Result};
use crate::llm::deepseek_v2::{AttentionKind, ScoringFunc};
use crate::llm::KvCache;
use crate::models::family::{Family, LlmFacts, VisionLanguageModel};
use crate::models::inputs::{ChatMessage, ImageInput, ImageOptions, Prepared, PromptText};
use crate::models::registry::ConfigFile;
use crate::nn::{QuantPlan, QuantReport};
use crate::prompt::template::Message;
use crate::prompt::tokenizer::PromptTokenizer;
use crate::weights::Progress;

/// The registry's entry point: a directory whose `config.json` says `deepseek_vl_v2`.
pub(crate) fn resolve(file: ConfigFile) -> Result<Box<dyn Family>> {
    Ok(Box::new(DeepseekVl2Spec::resolve(file)?))
}

impl Family for DeepseekVl2Spec {
    fn family(&self) -> &'static str {
        "DeepSeek-VL2"
    }

    fn dir(&self) -> &Path {
        &self.dir
    }

    /// VL2 checkpoints exist in the `deepseek-ai` layout only.
    fn layout(&self) -> CheckpointLayout {
        CheckpointLayout::Original
    }

    fn context_length(&self) -> usize {
        self.llm.max_position_embeddings
    }

    fn summary(&self) -> &'static str {
        match (
            &self.llm.attention,
            self.llm.moe.as_ref().map(|m| m.scoring_func),
        ) {
            (AttentionKind::Mha { .. }, _) => {
                "SigLIP-SO400M tiles + DeepSeekMoE MHA (VL2-tiny-style)"
            }
            (_, Some(ScoringFunc::Sigmoid)) => {
                "SigLIP-SO400M tiles + DeepSeekMoE MLA, sigmoid routing (VL2-base-style)"
            }
            _ => "SigLIP-SO400M tiles + DeepSeekMoE MLA (VL2-small-style)",
        }
    }

    fn describe(&self) -> Vec<(&'static str, String)> {
        let v = &self.vision;
        let p = &self.projector;
        let l = &self.llm;
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
        let pr = &self.processor;
        vec![
            (
                "vision",
                format!(
                    "SigLIP {}px/{} width {} × {} layers, {} heads, mlp {} (tiles)",
                    v.image_size, v.patch_size, v.width, v.layers, v.heads, v.mlp_hidden
                ),
            ),
            (
                "projector",
                format!(
                    "downsample_mlp_gelu {}x{} ({} → {}), depth {}",
                    p.downsample_ratio,
                    p.downsample_ratio,
                    p.input_dim * p.downsample_ratio * p.downsample_ratio,
                    p.n_embed,
                    p.depth
                ),
            ),
            (
                "language",
                format!(
                    "DeepSeekMoE hidden {} × {} layers, {} heads, {attention}; {moe}; vocab {}, context {}",
                    l.hidden_size, l.num_layers, l.num_heads, l.vocab_size, l.max_position_embeddings
                ),
            ),
            (
                "preprocessing",
                format!(
                    "{}px tiles, {} layouts up to {:?}, pad {:?}, {} tokens per untiled image ({}), global view {:?}",
                    pr.tile_size,
                    pr.candidates.len(),
                    pr.candidates
                        .iter()
                        .max_by_key(|(w, h)| w * h)
                        .copied()
                        .unwrap_or_default(),
                    pr.pad_color,
                    self.image_tokens(1, 1),
                    pr.image_token,
                    self.global_view_pos
                ),
            ),
        ]
    }

    fn llm_facts(&self) -> LlmFacts {
        let l = &self.llm;
        let (params, decode_params) = l.param_counts();
        LlmFacts {
            params,
            decode_params,
            kv_values_per_position: l.kv_values_per_position(),
            layers: l.num_layers,
            hidden: l.hidden_size,
        }
    }

    fn image_marker(&self) -> &str {
        &self.processor.image_token
    }

    /// An untiled image: one global view and one local tile.
    fn tokens_per_image(&self) -> usize {
        self.image_tokens(1, 1)
    }

    fn image_size(&self) -> u32 {
        self.processor.tile_size
    }

    /// The official VL2 examples send no system prompt.
    fn default_system_prompt(&self) -> Option<&'static str> {
        None
    }

    /// Special tokens are kept: the grounding markup is made of them (v2 §6.4).
    fn skip_special_tokens(&self) -> bool {
        false
    }

    fn supports_grounding(&self) -> bool {
        true
    }

    fn tokenizer(&self) -> Result<PromptTokenizer> {
        PromptTokenizer::from_model_dir(&self.dir, &self.processor.image_token)
    }

    fn prompt_reads_images(&self) -> bool {
        true
    }

    fn tiles_images(&self) -> bool {
        true
    }

    /// VL2 prompts depend on each image's tiling: always `None`.
    fn prompt_from_counts(
        &self,
        _tok: &PromptTokenizer,
        _system: Option<&str>,
        _turns: &[Message],
    ) -> Result<Option<PromptText>> {
        Ok(None)
    }

    fn prepare(
        &self,
        tok: &PromptTokenizer,
        system: Option<&str>,
        messages: &[ChatMessage],
        images: &ImageOptions,
    ) -> Result<Prepared> {
        let system = system.or(self.default_system_prompt());
        processor::prepare(self, tok, system, messages, images)
    }

    fn load(
        &self,
        dtype: DType,
        device: &Device,
        quant: QuantPlan,
        progress: Option<Progress>,
    ) -> Result<Box<dyn VisionLanguageModel>> {
        Ok(Box::new(DeepseekVl2::load(
            self, dtype, device, quant, progress,
        )?))
    }
}

impl VisionLanguageModel for DeepseekVl2 {
    fn dtype(&self) -> DType {
        DeepseekVl2::dtype(self)
    }

    fn device(&self) -> &Device {
        DeepseekVl2::device(self)
    }

    fn new_cache(&self) -> KvCache {
        self.llm().new_cache()
    }

    fn encode_image(&self, image: &ImageInput) -> Result<Tensor> {
        let ImageInput::Tiled(tiled) = image else {
            return Err(Error::Unsupported {
                what: "a square (DeepSeek-VL) image input for a DeepSeek-VL2 model".into(),
                hint: "prepare the conversation with the pipeline of the model that runs it".into(),
            });
        };
        self.encode_tiled(tiled)
    }

    fn input_embeddings(
        &self,
        ids: &[u32],
        image_token_id: u32,
        images: &[Tensor],
    ) -> Result<Tensor> {
        DeepseekVl2::input_embeddings(self, ids, image_token_id, images)
    }

    fn forward_embeds(&self, embeds: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        DeepseekVl2::forward_embeds(self, embeds, cache)
    }

    fn decode_step(&self, id: u32, cache: &mut KvCache) -> Result<Tensor> {
        DeepseekVl2::decode_step(self, id, cache)
    }

    fn decode_batch(&self, ids: &[u32], caches: &mut [&mut KvCache]) -> Result<Tensor> {
        DeepseekVl2::decode_batch(self, ids, caches)
    }

    fn quant_report(&self) -> QuantReport {
        self.llm().quant_report()
    }

    fn decode_weight_bytes(&self) -> u64 {
        self.llm().decode_weight_bytes()
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
