//! DeepSeek-VL behind the family traits: [`DeepseekVlSpec`] is its [`Family`], [`DeepseekVl`] its
//! [`VisionLanguageModel`].

use std::any::Any;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::config::{DeepseekVlSpec, VisionSpec};
use super::model::DeepseekVl;
use super::processor;
use crate::error::{CheckpointLayout, Error, Result};
use crate::llm::KvCache;
use crate::models::family::{Family, LlmFacts, VisionLanguageModel};
use crate::models::inputs::{ChatMessage, ImageInput, ImageOptions, Prepared, PromptText};
use crate::models::registry::ConfigFile;
use crate::nn::{QuantPlan, QuantReport};
use crate::prompt::template::{Message, DEFAULT_SYSTEM_PROMPT, IMAGE_PLACEHOLDER};
use crate::prompt::tokenizer::PromptTokenizer;
use crate::weights::Progress;

/// The registry's entry point: a v1 directory whose `config.json` names a v1 `model_type`.
pub(crate) fn resolve(file: ConfigFile) -> Result<Box<dyn Family>> {
    Ok(Box::new(DeepseekVlSpec::resolve(file)?))
}

impl Family for DeepseekVlSpec {
    fn family(&self) -> &'static str {
        "DeepSeek-VL"
    }

    fn dir(&self) -> &Path {
        &self.dir
    }

    fn layout(&self) -> CheckpointLayout {
        self.layout
    }

    fn context_length(&self) -> usize {
        self.llm.max_position_embeddings
    }

    fn summary(&self) -> &'static str {
        match &self.vision {
            VisionSpec::Siglip(_) => "SigLIP-L + Llama (1.3B-style)",
            VisionSpec::Hybrid { .. } => "SAM-B + SigLIP-L + Llama (7B-style)",
        }
    }

    fn describe(&self) -> Vec<(&'static str, String)> {
        let vision = match &self.vision {
            VisionSpec::Siglip(s) => format!(
                "SigLIP {}px/{} width {} × {} layers, {} heads",
                s.image_size, s.patch_size, s.width, s.layers, s.heads
            ),
            VisionSpec::Hybrid { sam, siglip } => format!(
                "hybrid: SAM {}px width {} × {} layers (global {:?}, neck {}, downsample {:?}) + SigLIP {}px width {} × {} layers",
                sam.image_size, sam.width, sam.layers, sam.global_attn_indexes, sam.neck_channels,
                sam.downsample_channels, siglip.image_size, siglip.width, siglip.layers
            ),
        };
        let a = &self.aligner;
        let l = &self.llm;
        let p = &self.processor;
        vec![
            ("layout", format!("{:?}", self.layout)),
            ("vision", vision),
            (
                "aligner",
                format!(
                    "{:?} depth {} ({} → {})",
                    a.kind, a.depth, a.input_dim, a.n_embed
                ),
            ),
            (
                "language",
                format!(
                    "Llama hidden {} × {} layers, {} heads ({} kv), ffn {}, vocab {}, context {}",
                    l.hidden_size,
                    l.num_layers,
                    l.num_heads,
                    l.num_kv_heads,
                    l.intermediate_size,
                    l.vocab_size,
                    l.max_position_embeddings
                ),
            ),
            (
                "preprocessing",
                format!(
                    "resize long side to {} (min {}), pad with {:?}, {} tokens per image ({})",
                    p.image_size, p.min_size, p.background, p.num_image_tokens, p.image_tag
                ),
            ),
        ]
    }

    fn llm_facts(&self) -> LlmFacts {
        let l = &self.llm;
        let d = l.hidden_size as u64;
        let params = l.param_count();
        LlmFacts {
            params,
            decode_params: params - l.vocab_size as u64 * d + d,
            kv_values_per_position: l.kv_values_per_position(),
            layers: l.num_layers,
            hidden: l.hidden_size,
        }
    }

    fn image_marker(&self) -> &str {
        &self.processor.image_tag
    }

    fn tokens_per_image(&self) -> usize {
        self.processor.num_image_tokens
    }

    fn image_size(&self) -> u32 {
        self.processor.image_size as u32
    }

    fn default_system_prompt(&self) -> Option<&'static str> {
        Some(DEFAULT_SYSTEM_PROMPT)
    }

    /// Special tokens are left out, as the official demo decodes (v1 §10).
    fn skip_special_tokens(&self) -> bool {
        true
    }

    fn supports_grounding(&self) -> bool {
        false
    }

    fn tokenizer(&self) -> Result<PromptTokenizer> {
        // The official `VLChatProcessor` always uses `<image_placeholder>` (v1 §2.5).
        PromptTokenizer::from_model_dir(&self.dir, IMAGE_PLACEHOLDER)
    }

    fn prompt_reads_images(&self) -> bool {
        false
    }

    fn prompt_from_counts(
        &self,
        tok: &PromptTokenizer,
        system: Option<&str>,
        turns: &[Message],
    ) -> Result<Option<PromptText>> {
        let system = system.unwrap_or(DEFAULT_SYSTEM_PROMPT);
        processor::prompt(self, tok, system, turns).map(Some)
    }

    fn prepare(
        &self,
        tok: &PromptTokenizer,
        system: Option<&str>,
        messages: &[ChatMessage],
        images: &ImageOptions,
    ) -> Result<Prepared> {
        let system = system.unwrap_or(DEFAULT_SYSTEM_PROMPT);
        processor::prepare(self, tok, system, messages, images)
    }

    fn load(
        &self,
        dtype: DType,
        device: &Device,
        quant: QuantPlan,
        progress: Option<Progress>,
    ) -> Result<Box<dyn VisionLanguageModel>> {
        Ok(Box::new(DeepseekVl::load(
            self, dtype, device, quant, progress,
        )?))
    }
}

impl VisionLanguageModel for DeepseekVl {
    fn dtype(&self) -> DType {
        DeepseekVl::dtype(self)
    }

    fn device(&self) -> &Device {
        DeepseekVl::device(self)
    }

    fn new_cache(&self) -> KvCache {
        self.llm().new_cache()
    }

    fn encode_image(&self, image: &ImageInput) -> Result<Tensor> {
        let ImageInput::Square(pixels) = image else {
            return Err(Error::Unsupported {
                what: "a tiled (DeepSeek-VL2) image input for a DeepSeek-VL model".into(),
                hint: "prepare the conversation with the pipeline of the model that runs it".into(),
            });
        };
        Ok(self.encode_images(&pixels.unsqueeze(0)?)?.squeeze(0)?)
    }

    fn input_embeddings(
        &self,
        ids: &[u32],
        image_token_id: u32,
        images: &[Tensor],
    ) -> Result<Tensor> {
        if images.is_empty() {
            return DeepseekVl::input_embeddings(self, ids, image_token_id, None);
        }
        let rows = Tensor::cat(images, 0)?.unsqueeze(0)?;
        DeepseekVl::input_embeddings(self, ids, image_token_id, Some(&rows))
    }

    fn forward_embeds(&self, embeds: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        DeepseekVl::forward_embeds(self, embeds, cache)
    }

    fn decode_step(&self, id: u32, cache: &mut KvCache) -> Result<Tensor> {
        DeepseekVl::decode_step(self, id, cache)
    }

    fn decode_batch(&self, ids: &[u32], caches: &mut [&mut KvCache]) -> Result<Tensor> {
        DeepseekVl::decode_batch(self, ids, caches)
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
