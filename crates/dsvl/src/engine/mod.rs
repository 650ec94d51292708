//! The engine: a loaded model with its tokenizer, turning conversations into streamed tokens.
//!
//! [`Pipeline::prepare`] renders the prompt, tokenizes it, expands image tokens and preprocesses
//! images (all checks that a user can fail happen here, before any model work);
//! [`Pipeline::generate`] runs vision, prefill and the decode loop, reporting each token through a
//! callback that can stop generation.

mod feature_cache;
mod generate;

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};

use crate::config::ModelSpec;
use crate::error::{Error, Result};
use crate::image::{self, RgbImage};
use crate::models::DeepseekVl;
use crate::prompt::expand::{check_context, expand_prompt};
use crate::prompt::template::{render, Message, Role, DEFAULT_SYSTEM_PROMPT};
use crate::prompt::tokenizer::PromptTokenizer;
use crate::weights::Progress;

pub use feature_cache::FeatureCache;
pub use generate::{Event, FinishReason, GenerateParams, Outcome, Timings, TokenEvent};

/// Where an image comes from.
#[derive(Debug, Clone)]
pub enum ImageSource {
    Path(PathBuf),
    /// Raw file bytes (e.g. a base64 data URL), with a name for error messages.
    Bytes {
        name: String,
        data: Vec<u8>,
    },
}

impl ImageSource {
    fn decode(&self, max_pixels: u64) -> Result<RgbImage> {
        match self {
            ImageSource::Path(p) => image::load(p, max_pixels),
            ImageSource::Bytes { name, data } => image::decode(data, name, max_pixels),
        }
    }
}

/// One conversation turn with its images, in placeholder order.
#[derive(Debug, Clone)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
    pub images: Vec<ImageSource>,
}

impl ChatMessage {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
            images: Vec::new(),
        }
    }
    pub fn with_images(mut self, images: Vec<ImageSource>) -> Self {
        self.images = images;
        self
    }
}

/// How to load a model.
#[derive(Clone)]
pub struct LoadOptions {
    pub dtype: DType,
    pub device: Device,
    pub progress: Option<Progress>,
    /// Images with more pixels are refused before decoding (decompression bombs).
    pub max_image_pixels: u64,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            dtype: DType::F32,
            device: Device::Cpu,
            progress: None,
            max_image_pixels: image::DEFAULT_MAX_PIXELS,
        }
    }
}

/// A conversation turned into model inputs.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The rendered prompt text (before tokenization).
    pub prompt: String,
    /// Token ids with each image placeholder expanded to `num_image_tokens` ids.
    pub ids: Vec<u32>,
    /// Preprocessed images `[N, 3, S, S]` f32 in [0, 1], `None` for text-only prompts.
    pub pixels: Option<Tensor>,
    pub n_images: usize,
    pub preprocess_ms: f64,
}

pub struct Pipeline {
    model: DeepseekVl,
    tokenizer: PromptTokenizer,
    max_image_pixels: u64,
}

/// Finds `tokenizer.json` (and `tokenizer_config.json`) in a model directory.
pub fn load_tokenizer(dir: &Path) -> Result<PromptTokenizer> {
    let json = dir.join("tokenizer.json");
    if !json.is_file() {
        return Err(Error::Tokenizer {
            path: json,
            message: "file not found; the model directory must contain the tokenizer.json published with the model".into(),
        });
    }
    let cfg = dir.join("tokenizer_config.json");
    PromptTokenizer::from_files(&json, cfg.is_file().then_some(cfg.as_path()))
}

impl Pipeline {
    /// Loads the model directory `dir`: config, tokenizer, then the weights.
    pub fn load(dir: &Path, opts: &LoadOptions) -> Result<Self> {
        let _span = tracing::info_span!("load", path = %dir.display()).entered();
        let spec = ModelSpec::from_dir(dir)?;
        let tokenizer = load_tokenizer(dir)?;
        let model = DeepseekVl::load(&spec, opts.dtype, &opts.device, opts.progress.clone())?;
        Ok(Self {
            model,
            tokenizer,
            max_image_pixels: opts.max_image_pixels,
        })
    }

    pub fn model(&self) -> &DeepseekVl {
        &self.model
    }
    pub fn tokenizer(&self) -> &PromptTokenizer {
        &self.tokenizer
    }
    pub fn spec(&self) -> &ModelSpec {
        self.model.spec()
    }

    /// Renders, tokenizes and expands the prompt, checks it fits, and preprocesses the images.
    /// `system`: `None` for the official system prompt.
    pub fn prepare(
        &self,
        system: Option<&str>,
        messages: &[ChatMessage],
        max_new_tokens: usize,
    ) -> Result<Prepared> {
        let t0 = Instant::now();
        let spec = self.model.spec();
        let tag = &spec.processor.image_tag;
        let turns: Vec<Message> = messages
            .iter()
            .map(|m| Message::new(m.role, m.content.clone()).with_images(m.images.len()))
            .collect();
        let prompt = render(system.unwrap_or(DEFAULT_SYSTEM_PROMPT), &turns)?;
        let ids = self.tokenizer.encode_prompt(&prompt)?;
        let n_images: usize = messages.iter().map(|m| m.images.len()).sum();
        let expanded = expand_prompt(
            &ids,
            self.tokenizer.image_id(),
            spec.processor.num_image_tokens,
            n_images,
            tag,
        )?;
        check_context(
            expanded.ids.len(),
            max_new_tokens,
            spec.llm.max_position_embeddings,
        )?;
        let pixels = self.preprocess_images(messages.iter().flat_map(|m| m.images.iter()))?;
        Ok(Prepared {
            prompt,
            ids: expanded.ids,
            pixels,
            n_images,
            preprocess_ms: t0.elapsed().as_secs_f64() * 1e3,
        })
    }

    /// Decodes and preprocesses images into `[N, 3, S, S]` f32 (v1 §3.1).
    pub fn preprocess_images<'a>(
        &self,
        images: impl Iterator<Item = &'a ImageSource>,
    ) -> Result<Option<Tensor>> {
        let p = &self.model.spec().processor;
        let s = p.image_size;
        let mut data = Vec::new();
        let mut n = 0;
        for src in images {
            let img = src.decode(self.max_image_pixels)?;
            let padded = image::preprocess(&img, s as u32, p.min_size as u32, p.background);
            data.extend(image::to_chw_f32(&padded));
            n += 1;
        }
        if n == 0 {
            return Ok(None);
        }
        Ok(Some(Tensor::from_vec(data, (n, 3, s, s), &Device::Cpu)?))
    }
}
