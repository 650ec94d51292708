//! Whole models: towers + projector + LLM, and the embedding merge.

pub mod deepseek_vl;
pub mod deepseek_vl2;
pub mod merge;

use candle_core::{DType, Device, Tensor};

pub use deepseek_vl::{DeepseekVl, VisionStages};
pub use deepseek_vl2::{DeepseekVl2, Vl2VisionStages};

use crate::config::ModelConfig;
use crate::error::Result;
use crate::llm::KvCache;
use crate::nn::{QuantPlan, QuantReport};
use crate::weights::Progress;

/// A loaded model of either family; the engine talks to it through this type only.
pub enum Model {
    V1(Box<DeepseekVl>),
    V2(Box<DeepseekVl2>),
}

impl Model {
    /// Loads either family; `quant` says how the LLM's linear layers are stored.
    pub fn load(
        config: &ModelConfig,
        dtype: DType,
        device: &Device,
        quant: QuantPlan,
        progress: Option<Progress>,
    ) -> Result<Self> {
        Ok(match config {
            ModelConfig::V1(s) => Model::V1(Box::new(DeepseekVl::load(
                s, dtype, device, quant, progress,
            )?)),
            ModelConfig::V2(s) => Model::V2(Box::new(DeepseekVl2::load(
                s, dtype, device, quant, progress,
            )?)),
        })
    }

    /// How the language model's linear layers are stored.
    pub fn quant_report(&self) -> QuantReport {
        match self {
            Model::V1(m) => m.llm().quant_report(),
            Model::V2(m) => m.llm().quant_report(),
        }
    }

    /// Bytes of language-model weights one decode step reads (as stored: quantized layers
    /// count their GGML blocks; MoE layers count the router, the shared and `top_k` experts).
    pub fn decode_weight_bytes(&self) -> u64 {
        match self {
            Model::V1(m) => m.llm().decode_weight_bytes(),
            Model::V2(m) => m.llm().decode_weight_bytes(),
        }
    }

    pub fn v1(&self) -> Option<&DeepseekVl> {
        match self {
            Model::V1(m) => Some(m),
            Model::V2(_) => None,
        }
    }

    pub fn v2(&self) -> Option<&DeepseekVl2> {
        match self {
            Model::V2(m) => Some(m),
            Model::V1(_) => None,
        }
    }

    pub fn dtype(&self) -> DType {
        match self {
            Model::V1(m) => m.dtype(),
            Model::V2(m) => m.dtype(),
        }
    }

    pub fn device(&self) -> &Device {
        match self {
            Model::V1(m) => m.device(),
            Model::V2(m) => m.device(),
        }
    }

    pub fn new_cache(&self) -> KvCache {
        match self {
            Model::V1(m) => m.llm().new_cache(),
            Model::V2(m) => m.llm().new_cache(),
        }
    }

    /// One image's embedding sequence `[N, hidden]` from its preprocessed pixels: v1 `[3, S, S]`
    /// in [0, 1] (`grid` is `None`); VL2 the normalised tiles `[1 + nw·nh, 3, S, S]` with
    /// `grid = Some((nw, nh))`.
    pub fn encode_image(&self, pixels: &Tensor, grid: Option<(usize, usize)>) -> Result<Tensor> {
        match (self, grid) {
            (Model::V1(m), _) => Ok(m.encode_images(&pixels.unsqueeze(0)?)?.squeeze(0)?),
            (Model::V2(m), Some((nw, nh))) => m.encode_image(pixels, nw, nh),
            (Model::V2(_), None) => Err(crate::Error::Unsupported {
                what: "a DeepSeek-VL2 image without its tile layout".into(),
                hint: "internal: prepare() records the layout of every image".into(),
            }),
        }
    }

    /// Token embeddings `[1, T, hidden]` with the image positions filled, in order, from the
    /// per-image sequences `images` (each `[N_i, hidden]`).
    pub fn input_embeddings(
        &self,
        ids: &[u32],
        image_token_id: u32,
        images: &[Tensor],
    ) -> Result<Tensor> {
        match self {
            Model::V1(m) => {
                if images.is_empty() {
                    return m.input_embeddings(ids, image_token_id, None);
                }
                let rows = Tensor::cat(images, 0)?.unsqueeze(0)?;
                m.input_embeddings(ids, image_token_id, Some(&rows))
            }
            Model::V2(m) => m.input_embeddings(ids, image_token_id, images),
        }
    }

    /// Prefill: f32 logits `[vocab]` of the last position.
    pub fn forward_embeds(&self, embeds: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        match self {
            Model::V1(m) => m.forward_embeds(embeds, cache),
            Model::V2(m) => m.forward_embeds(embeds, cache),
        }
    }

    /// One decode step for each sequence: token `ids[r]` against `caches[r]`; f32 logits
    /// `[B, vocab]`, row `r` bit for bit what [`Self::decode_step`] gives for it alone.
    pub fn decode_batch(&self, ids: &[u32], caches: &mut [&mut KvCache]) -> Result<Tensor> {
        match self {
            Model::V1(m) => m.decode_batch(ids, caches),
            Model::V2(m) => m.decode_batch(ids, caches),
        }
    }

    /// One decode step for token `id`; f32 logits `[vocab]`.
    pub fn decode_step(&self, id: u32, cache: &mut KvCache) -> Result<Tensor> {
        match self {
            Model::V1(m) => m.decode_step(id, cache),
            Model::V2(m) => m.decode_step(id, cache),
        }
    }
}
