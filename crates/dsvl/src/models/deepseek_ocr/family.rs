//! DeepSeek-OCR behind the family traits: [`DeepseekOcrSpec`] is its [`Family`], [`DeepseekOcr`]
//! its [`VisionLanguageModel`].

use std::any::Any;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::model::{DeepseekOcr, DeepseekOcrSpec};
use super::processor::{self, image_token_count};
use crate::error::{CheckpointLayout, Error, Result};
use crate::llm::KvCache;
use crate::models::family::{Family, LlmFacts, VisionLanguageModel};
use crate::models::inputs::{ChatMessage, ImageInput, ImageOptions, Prepared, PromptText};
use crate::models::registry::ConfigFile;
use crate::nn::{QuantPlan, QuantReport};
use crate::prompt::template::Message;
use crate::prompt::tokenizer::PromptTokenizer;
use crate::weights::Progress;

/// The image marker of the official prompts.
const IMAGE_MARKER: &str = "<image>";

/// The registry's entry point: `model_type` `deepseek_vl_v2` with the `DeepseekOCRForCausalLM`
/// architecture.
pub(crate) fn resolve(file: ConfigFile) -> Result<Box<dyn Family>> {
    Ok(Box::new(DeepseekOcrSpec::from_dir(&file.dir)?))
}

impl Family for DeepseekOcrSpec {
    fn family(&self) -> &'static str {
        "DeepSeek-OCR"
    }

    fn dir(&self) -> &Path {
        &self.dir
    }

    fn layout(&self) -> CheckpointLayout {
        CheckpointLayout::Original
    }

    fn context_length(&self) -> usize {
        self.llm.max_position_embeddings
    }

    fn summary(&self) -> &'static str {
        "DeepEncoder (SAM-B + CLIP-L) + DeepSeekMoE MHA"
    }

    fn describe(&self) -> Vec<(&'static str, String)> {
        let (s, c, l) = (&self.encoder.sam, &self.encoder.clip, &self.llm);
        vec![
            (
                "vision",
                format!(
                    "SAM-B width {} × {} blocks (global {:?}, windows {}), neck {}, convs {:?}; CLIP-L width {} × {} layers, {} heads",
                    s.width, s.layers, s.global_attn_indexes, s.window_size, s.neck_channels,
                    s.downsample_channels, c.width, c.layers, c.heads
                ),
            ),
            (
                "projector",
                format!("linear {} → {}", self.encoder.projector_in, self.encoder.n_embed),
            ),
            (
                "language",
                format!(
                    "DeepSeekMoE hidden {} × {} layers, {} heads; vocab {}, context {}",
                    l.hidden_size, l.num_layers, l.num_heads, l.vocab_size, l.max_position_embeddings
                ),
            ),
            (
                "preprocessing",
                format!(
                    "mode {} (global {}², tiles {}², up to {} tiles), {} tokens per untiled image",
                    self.mode.name(),
                    self.mode.base_size(),
                    self.mode.image_size(),
                    self.max_crops,
                    self.tokens_per_image()
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
        IMAGE_MARKER
    }

    fn tokens_per_image(&self) -> usize {
        image_token_count(self.mode, (1, 1))
    }

    fn image_size(&self) -> u32 {
        self.mode.base_size()
    }

    /// The official scripts send the prompt alone.
    fn default_system_prompt(&self) -> Option<&'static str> {
        None
    }

    /// Grounding markup is made of special tokens.
    fn skip_special_tokens(&self) -> bool {
        false
    }

    fn supports_grounding(&self) -> bool {
        true
    }

    fn tokenizer(&self) -> Result<PromptTokenizer> {
        PromptTokenizer::from_model_dir(&self.dir, IMAGE_MARKER)
    }

    fn prompt_reads_images(&self) -> bool {
        true
    }

    fn prompt_from_counts(
        &self,
        _tok: &PromptTokenizer,
        _system: Option<&str>,
        _turns: &[Message],
    ) -> Result<Option<PromptText>> {
        Ok(None)
    }

    /// The plain prompt format has no system turn: a non-empty `system` is refused.
    fn prepare(
        &self,
        tok: &PromptTokenizer,
        system: Option<&str>,
        messages: &[ChatMessage],
        images: &ImageOptions,
    ) -> Result<Prepared> {
        if let Some(n) = images.max_tiles {
            return Err(Error::Unsupported {
                what: format!("a tile cap ({n}) for a DeepSeek-OCR model"),
                hint: "DeepSeek-OCR's tiling is set by its resolution mode; drop the max-tiles \
                       setting"
                    .into(),
            });
        }
        if system.is_some_and(|s| !s.trim().is_empty()) {
            return Err(Error::Conversation(
                "DeepSeek-OCR prompts have no system turn; put the instruction in the user message"
                    .into(),
            ));
        }
        processor::prepare(tok, messages, self.mode, self.max_crops, images.max_pixels)
    }

    fn load(
        &self,
        dtype: DType,
        device: &Device,
        quant: QuantPlan,
        progress: Option<Progress>,
    ) -> Result<Box<dyn VisionLanguageModel>> {
        Ok(Box::new(DeepseekOcr::load(
            self, dtype, device, quant, progress,
        )?))
    }
}

impl VisionLanguageModel for DeepseekOcr {
    fn dtype(&self) -> DType {
        DeepseekOcr::dtype(self)
    }

    fn device(&self) -> &Device {
        DeepseekOcr::device(self)
    }

    fn new_cache(&self) -> KvCache {
        self.llm().new_cache()
    }

    fn encode_image(&self, image: &ImageInput) -> Result<Tensor> {
        let ImageInput::Views(views) = image else {
            return Err(Error::Unsupported {
                what: "a DeepSeek-VL / VL2 image input for a DeepSeek-OCR model".into(),
                hint: "prepare the conversation with the pipeline of the model that runs it".into(),
            });
        };
        self.encode_views_image(views)
    }

    fn input_embeddings(
        &self,
        ids: &[u32],
        image_token_id: u32,
        images: &[Tensor],
    ) -> Result<Tensor> {
        DeepseekOcr::input_embeddings(self, ids, image_token_id, images)
    }

    fn forward_embeds(&self, embeds: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        DeepseekOcr::forward_embeds(self, embeds, cache)
    }

    fn decode_step(&self, id: u32, cache: &mut KvCache) -> Result<Tensor> {
        DeepseekOcr::decode_step(self, id, cache)
    }

    fn decode_batch(&self, ids: &[u32], caches: &mut [&mut KvCache]) -> Result<Tensor> {
        Ok(self.llm().decode_batch(ids, caches)?)
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
