//! A loaded DeepSeek-OCR checkpoint: the DeepEncoder and the DeepSeek-VL2 MoE language model.
//!
//! Checkpoint layout as published (one bf16 `model.safetensors`): the encoder under `model.`
//! (`model.sam_model.*`, `model.vision_model.*`, `model.projector.*`, `model.image_newline`,
//! `model.view_seperator`) and the language model at the top level (`model.embed_tokens`,
//! `model.layers.*`, `model.norm`, `lm_head`), which the official `load_weights` renames to
//! `language.*`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

use super::config::{DeepEncoderSpec, OcrEncoderJson};
use super::encoder::DeepEncoder;
use super::processor::{normalize, OcrMode, OcrViews, DEFAULT_MAX_CROPS};
use crate::config::{config_err, read_json};
use crate::error::Result;
use crate::llm::{DeepseekV2, DeepseekV2Spec, KvCache, Logits};
use crate::models::inputs::ViewsImage;
use crate::models::merge::merge_image_embeddings;
use crate::nn::QuantPlan;
use crate::weights::{Checkpoint, Progress};

/// A resolved DeepSeek-OCR directory.
#[derive(Debug, Clone)]
pub struct DeepseekOcrSpec {
    pub dir: PathBuf,
    pub encoder: DeepEncoderSpec,
    pub llm: DeepseekV2Spec,
    /// The resolution mode images are prepared in (published default: Gundam).
    pub mode: OcrMode,
    /// Most local tiles in the Gundam mode (`MAX_CROPS`, published default 6).
    pub max_crops: u32,
}

#[derive(Deserialize)]
struct LanguageJson {
    language_config: Option<serde_json::Value>,
}

impl DeepseekOcrSpec {
    /// Reads `dir/config.json`: the encoder sizes and `language_config`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let enc: OcrEncoderJson = read_json(&path)?;
        let lang: LanguageJson = read_json(&path)?;
        let lc = lang.language_config.ok_or_else(|| {
            config_err(&path, "no language_config; not a DeepSeek-OCR config.json")
        })?;
        let llm = DeepseekV2Spec::from_language_config(&path, &lc)?;
        let encoder = enc.resolve();
        if encoder.n_embed != llm.hidden_size {
            return Err(config_err(
                &path,
                format!(
                    "projector_config.n_embed {} differs from the language model's hidden_size {}",
                    encoder.n_embed, llm.hidden_size
                ),
            ));
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            encoder,
            llm,
            mode: OcrMode::default(),
            max_crops: DEFAULT_MAX_CROPS,
        })
    }
}

/// A loaded DeepSeek-OCR model.
pub struct DeepseekOcr {
    encoder: DeepEncoder,
    llm: DeepseekV2,
    dtype: DType,
    device: Device,
}

impl DeepseekOcr {
    /// Loads `spec.dir` in `dtype` on `device`; the language model's linear layers as `quant` says.
    pub fn load(
        spec: &DeepseekOcrSpec,
        dtype: DType,
        device: &Device,
        quant: QuantPlan,
        progress: Option<Progress>,
    ) -> Result<Self> {
        let ckpt = Arc::new(Checkpoint::open(
            &spec.dir,
            crate::CheckpointLayout::Original,
            progress,
        )?);
        let vb = ckpt.var_builder(dtype, device);
        let built = (|| -> candle_core::Result<_> {
            let encoder = DeepEncoder::new(&spec.encoder, vb.pp("model"))?;
            let llm = DeepseekV2::new_quantized(&spec.llm, quant, vb.clone())?;
            Ok((encoder, llm))
        })();
        let (encoder, llm) = ckpt.finish(built)?;
        Ok(Self {
            encoder,
            llm,
            dtype,
            device: device.clone(),
        })
    }

    pub fn encoder(&self) -> &DeepEncoder {
        &self.encoder
    }
    pub fn llm(&self) -> &DeepseekV2 {
        &self.llm
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn device(&self) -> &Device {
        &self.device
    }

    fn views_tensor(&self, imgs: &[crate::image::RgbImage]) -> Result<Tensor> {
        let (w, h) = (imgs[0].width as usize, imgs[0].height as usize);
        let data: Vec<f32> = imgs.iter().flat_map(normalize).collect();
        Ok(Tensor::from_vec(data, (imgs.len(), 3, h, w), &Device::Cpu)?
            .to_dtype(self.dtype)?
            .to_device(&self.device)?)
    }

    /// One image's embeddings `[N, hidden]` from its views (local grid, global grid, separator).
    pub fn encode_views(&self, views: &OcrViews) -> Result<Tensor> {
        let _span = tracing::debug_span!("vision", tiles = views.tiles.len()).entered();
        let global = self.views_tensor(std::slice::from_ref(&views.global))?;
        let grid = (views.grid.0 as usize, views.grid.1 as usize);
        if views.tiles.is_empty() {
            return Ok(self.encoder.encode_image(&global, None)?);
        }
        let tiles = self.views_tensor(&views.tiles)?;
        Ok(self.encoder.encode_image(&global, Some((&tiles, grid)))?)
    }

    /// One prepared image's embeddings `[N, hidden]` (the processor's normalised views).
    pub fn encode_views_image(&self, image: &ViewsImage) -> Result<Tensor> {
        let _span = tracing::debug_span!("vision").entered();
        let prep =
            |t: Tensor| -> Result<Tensor> { Ok(t.to_dtype(self.dtype)?.to_device(&self.device)?) };
        let global = prep(image.global()?)?;
        match image.tiles()? {
            None => Ok(self.encoder.encode_image(&global, None)?),
            Some((tiles, grid)) => {
                let tiles = prep(tiles)?;
                Ok(self.encoder.encode_image(&global, Some((&tiles, grid)))?)
            }
        }
    }

    /// Token embeddings `[1, T, hidden]` with the `image_token_id` positions filled, in order, from
    /// the per-image sequences `images`.
    pub fn input_embeddings(
        &self,
        ids: &[u32],
        image_token_id: u32,
        images: &[Tensor],
    ) -> Result<Tensor> {
        let ids_t = Tensor::new(ids, &self.device)?.unsqueeze(0)?;
        let text = self.llm.embed(&ids_t)?;
        if images.is_empty() {
            return Ok(text);
        }
        let rows = Tensor::cat(images, 0)?
            .to_dtype(text.dtype())?
            .unsqueeze(0)?;
        merge_image_embeddings(&text, ids, image_token_id, &rows, "<image>")
    }

    /// Prefill `embeds` `[1, T, hidden]`, appending to `cache`; f32 logits `[vocab]` of the last position.
    pub fn forward_embeds(&self, embeds: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let _span = tracing::debug_span!("llm", tokens = embeds.dim(1).unwrap_or(0)).entered();
        Ok(self.llm.forward(embeds, cache, Logits::Last)?.squeeze(0)?)
    }

    /// One decode step for token `id`; f32 logits `[vocab]`.
    pub fn decode_step(&self, id: u32, cache: &mut KvCache) -> Result<Tensor> {
        let ids = Tensor::new(&[id], &self.device)?.unsqueeze(0)?;
        let embeds = self.llm.embed(&ids)?;
        self.forward_embeds(&embeds, cache)
    }
}
