//! The engine: a loaded model with its tokenizer, turning conversations into streamed tokens.
//!
//! [`Pipeline::prepare`] renders the prompt, tokenizes it, expands image tokens and preprocesses
//! images (all checks that a user can fail happen here, before any model work);
//! [`Pipeline::generate`] runs vision, prefill and the decode loop, reporting each token through a
//! callback that can stop generation. [`Pipeline::start`], [`Sequence::step`] and
//! [`Pipeline::decode_batch`] are the same loop cut into steps, for decoding many requests together.

mod feature_cache;
mod generate;
mod sequence;

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};

use crate::config::{ModelConfig, ModelSpec, Vl2ProcessorSpec, Vl2Spec};
use crate::error::{Error, Result};
use crate::image::{self, RgbImage};
use crate::models::Model;
use crate::nn::{Quant, QuantPlan};
use crate::prompt::expand::{check_context, expand_prompt};
use crate::prompt::template::{render, Message, Role, DEFAULT_SYSTEM_PROMPT};
use crate::prompt::tokenizer::PromptTokenizer;
use crate::prompt::vl2::{build_vl2_ids, vl2_cropping, Vl2Turn};
use crate::weights::Progress;

pub use feature_cache::FeatureCache;
pub use generate::{
    Conversation, Event, FinishReason, GenerateParams, Outcome, PrefixCache, Timings, TokenEvent,
    DEFAULT_PREFILL_CHUNK,
};
pub use sequence::Sequence;

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
    /// Quantize the language model's linear layers at load time (issue #4 item 4); `None`
    /// keeps every weight in `dtype`. See [`QuantPlan`] for what is and is not quantized.
    pub quant: Option<Quant>,
    /// With `quant`, also quantize `lm_head` (kept in `dtype` by default).
    pub quant_lm_head: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            dtype: DType::F32,
            device: Device::Cpu,
            progress: None,
            max_image_pixels: image::DEFAULT_MAX_PIXELS,
            quant: None,
            quant_lm_head: false,
        }
    }
}

/// A conversation turned into model inputs.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The prompt as text, one marker per image (v1: exactly what is tokenized; VL2: for display,
    /// since VL2 tokenizes the segments between images separately).
    pub prompt: String,
    /// Token ids with every image expanded to its image-token positions.
    pub ids: Vec<u32>,
    /// Vision-tower inputs of all images, `None` for text-only prompts. v1: `[N, 3, S, S]` f32 in
    /// [0, 1]; VL2: every image's tiles (global view, then the local tiles) `[T, 3, S, S]`,
    /// normalised.
    pub pixels: Option<Tensor>,
    /// VL2: each image's tile layout `(nw, nh)`, in order (`1 + nw·nh` tiles each); empty for v1.
    pub tile_grids: Vec<(usize, usize)>,
    /// Each image's decoded `(width, height)`, in order (grounding boxes map to these).
    pub image_sizes: Vec<(u32, u32)>,
    pub n_images: usize,
    pub preprocess_ms: f64,
}

/// One image's vision-tower input: v1 `[3, S, S]`; VL2 its tiles `[1 + nw·nh, 3, S, S]` with
/// `grid = Some((nw, nh))`.
#[derive(Debug, Clone)]
pub struct ImageInput {
    pub pixels: Tensor,
    pub grid: Option<(usize, usize)>,
}

/// Preprocessed v1 images `[N, 3, S, S]` (none for text-only prompts) and their decoded sizes.
pub type PreprocessedImages = (Option<Tensor>, Vec<(u32, u32)>);

impl Prepared {
    /// Each image's vision input and tile layout, in order.
    pub fn image_inputs(&self) -> Result<Vec<ImageInput>> {
        let Some(px) = &self.pixels else {
            return Ok(Vec::new());
        };
        if self.tile_grids.is_empty() {
            return (0..self.n_images)
                .map(|i| {
                    Ok(ImageInput {
                        pixels: px.get(i)?,
                        grid: None,
                    })
                })
                .collect();
        }
        let mut out = Vec::with_capacity(self.tile_grids.len());
        let mut start = 0;
        for &(nw, nh) in &self.tile_grids {
            let n = 1 + nw * nh;
            out.push(ImageInput {
                pixels: px.narrow(0, start, n)?,
                grid: Some((nw, nh)),
            });
            start += n;
        }
        Ok(out)
    }
}

pub struct Pipeline {
    config: ModelConfig,
    model: Model,
    tokenizer: PromptTokenizer,
    max_image_pixels: u64,
}

/// Finds `tokenizer.json` (and `tokenizer_config.json`) in a model directory.
pub fn load_tokenizer(config: &ModelConfig) -> Result<PromptTokenizer> {
    let dir = config.dir();
    let json = dir.join("tokenizer.json");
    if !json.is_file() {
        return Err(Error::Tokenizer {
            path: json,
            message: "file not found; the model directory must contain the tokenizer.json published with the model".into(),
        });
    }
    let cfg = dir.join("tokenizer_config.json");
    let cfg = cfg.is_file().then_some(cfg.as_path());
    match config {
        ModelConfig::V1(_) => PromptTokenizer::from_files(&json, cfg),
        ModelConfig::V2(s) => {
            PromptTokenizer::from_files_with_image_token(&json, cfg, &s.processor.image_token)
        }
    }
}

impl Pipeline {
    /// Loads the model directory `dir`: config, tokenizer, then the weights.
    pub fn load(dir: &Path, opts: &LoadOptions) -> Result<Self> {
        let _span = tracing::info_span!("load", path = %dir.display()).entered();
        if opts.quant.is_some() && !opts.device.is_cpu() {
            return Err(crate::Error::Unsupported {
                what: "--quant on a GPU".into(),
                hint: "quantized weights run on the CPU only; on a GPU use --dtype bf16".into(),
            });
        }
        let config = ModelConfig::from_dir(dir)?;
        let tokenizer = load_tokenizer(&config)?;
        let quant = QuantPlan {
            quant: opts.quant,
            lm_head: opts.quant_lm_head,
        };
        let model = Model::load(
            &config,
            opts.dtype,
            &opts.device,
            quant,
            opts.progress.clone(),
        )?;
        crate::memory::release_freed();
        Ok(Self {
            config,
            model,
            tokenizer,
            max_image_pixels: opts.max_image_pixels,
        })
    }

    pub fn model(&self) -> &Model {
        &self.model
    }
    pub fn tokenizer(&self) -> &PromptTokenizer {
        &self.tokenizer
    }
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Renders, tokenizes and expands the prompt, checks it fits, and preprocesses the images.
    /// `system`: `None` for the family's default (v1: the official system prompt; VL2: none).
    pub fn prepare(
        &self,
        system: Option<&str>,
        messages: &[ChatMessage],
        max_new_tokens: usize,
    ) -> Result<Prepared> {
        let _span = tracing::debug_span!("prepare", messages = messages.len()).entered();
        let t0 = Instant::now();
        let text_bytes =
            system.map_or(0, str::len) + messages.iter().map(|m| m.content.len()).sum::<usize>();
        // Room for one new token at least; the exact check with `max_new_tokens` follows.
        self.check_prompt_bytes(text_bytes, self.config.context_length().saturating_sub(1))?;
        let mut prepared = match &self.config {
            ModelConfig::V1(spec) => self.prepare_v1(spec, system, messages)?,
            ModelConfig::V2(spec) => self.prepare_v2(spec, system, messages)?,
        };
        check_context(
            prepared.ids.len(),
            max_new_tokens,
            self.config.context_length(),
        )?;
        prepared.preprocess_ms = t0.elapsed().as_secs_f64() * 1e3;
        Ok(prepared)
    }

    fn prepare_v1(
        &self,
        spec: &ModelSpec,
        system: Option<&str>,
        messages: &[ChatMessage],
    ) -> Result<Prepared> {
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
        let (pixels, image_sizes) =
            self.preprocess_images(messages.iter().flat_map(|m| m.images.iter()))?;
        Ok(Prepared {
            prompt,
            ids: expanded.ids,
            pixels,
            tile_grids: Vec::new(),
            image_sizes,
            n_images,
            preprocess_ms: 0.0,
        })
    }

    /// VL2 (v2 §2, §5, §6): tiling depends on the number of images in the whole conversation;
    /// each image expands to its own number of image tokens.
    fn prepare_v2(
        &self,
        spec: &Vl2Spec,
        system: Option<&str>,
        messages: &[ChatMessage],
    ) -> Result<Prepared> {
        let p = &spec.processor;
        let n_images: usize = messages.iter().map(|m| m.images.len()).sum();
        let cropping = vl2_cropping(n_images);
        let mut data = Vec::new();
        let mut tile_grids = Vec::with_capacity(n_images);
        let mut image_tokens = Vec::with_capacity(n_images);
        let mut n_tiles = 0;
        let mut image_sizes = Vec::with_capacity(n_images);
        for src in messages.iter().flat_map(|m| m.images.iter()) {
            let img = src.decode(self.max_image_pixels)?;
            image_sizes.push((img.width, img.height));
            let tiled = image::tile_image(&img, &p.candidates, p.tile_size, cropping, p.pad_color)?;
            for tile in std::iter::once(&tiled.global).chain(&tiled.tiles) {
                data.extend(normalized_chw(tile, p));
                n_tiles += 1;
            }
            tile_grids.push((tiled.nw, tiled.nh));
            image_tokens.push(spec.image_tokens(tiled.nw, tiled.nh));
        }
        let mut turns = Vec::with_capacity(messages.len() + 1);
        if let Some(text) = system.filter(|s| !s.trim().is_empty()) {
            turns.push(Vl2Turn {
                role: Role::System,
                content: text.to_string(),
                n_images: 0,
            });
        }
        turns.extend(messages.iter().map(|m| Vl2Turn {
            role: m.role,
            content: m.content.clone(),
            n_images: m.images.len(),
        }));
        let built = build_vl2_ids(&self.tokenizer, &p.image_token, &turns, &image_tokens)?;
        let s = p.tile_size as usize;
        let pixels = (n_tiles > 0)
            .then(|| Tensor::from_vec(data, (n_tiles, 3, s, s), &Device::Cpu))
            .transpose()?;
        // For display: what was tokenized, each image's run of ids shown as one marker.
        let mut shown = Vec::with_capacity(built.ids.len());
        let mut prev = None;
        for (i, &id) in built.ids.iter().enumerate() {
            let in_image = built.image_spans.iter().position(|r| r.contains(&i));
            if in_image.is_none() || in_image != prev {
                shown.push(id);
            }
            prev = in_image;
        }
        let prompt = self.tokenizer.decode(&shown, false)?;
        Ok(Prepared {
            prompt,
            ids: built.ids,
            pixels,
            tile_grids,
            image_sizes,
            n_images,
            preprocess_ms: 0.0,
        })
    }

    /// Refuses, without tokenizing it, prompt text of `text_bytes` bytes that cannot fit in
    /// `max_prompt_tokens` tokens (see [`PromptTokenizer::min_tokens`]): an oversized prompt
    /// costs no more than reading it. Text that may fit passes; the exact count is checked later.
    pub fn check_prompt_bytes(&self, text_bytes: usize, max_prompt_tokens: usize) -> Result<()> {
        let min_tokens = self.tokenizer.min_tokens(text_bytes);
        if min_tokens > max_prompt_tokens {
            return Err(Error::PromptTooLong {
                bytes: text_bytes,
                min_tokens,
                max: max_prompt_tokens,
            });
        }
        Ok(())
    }

    /// Decodes and preprocesses v1 images into `[N, 3, S, S]` f32 (v1 §3.1); also returns each
    /// image's decoded size.
    pub fn preprocess_images<'a>(
        &self,
        images: impl Iterator<Item = &'a ImageSource>,
    ) -> Result<PreprocessedImages> {
        let Some(spec) = self.config.v1() else {
            return Err(Error::Unsupported {
                what: "v1 preprocessing for a DeepSeek-VL2 model".into(),
                hint: "use Pipeline::prepare, which tiles VL2 images".into(),
            });
        };
        let p = &spec.processor;
        let s = p.image_size;
        let mut data = Vec::new();
        let mut n = 0;
        let mut sizes = Vec::new();
        for src in images {
            let img = src.decode(self.max_image_pixels)?;
            sizes.push((img.width, img.height));
            let padded = image::preprocess(&img, s as u32, p.min_size as u32, p.background);
            data.extend(image::to_chw_f32(&padded));
            n += 1;
        }
        if n == 0 {
            return Ok((None, sizes));
        }
        Ok((
            Some(Tensor::from_vec(data, (n, 3, s, s), &Device::Cpu)?),
            sizes,
        ))
    }
}

/// VL2 `ToTensor` + `Normalize` (v2 §2.7): RGB8 → `[3, H, W]` f32, `(v / 255 − mean) / std`
/// computed in f32 as torchvision does.
fn normalized_chw(img: &RgbImage, p: &Vl2ProcessorSpec) -> Vec<f32> {
    let plane = img.width as usize * img.height as usize;
    let mut out = vec![0f32; plane * 3];
    let mean = p.image_mean.map(|m| m as f32);
    let std = p.image_std.map(|s| s as f32);
    for (i, px) in img.data.chunks_exact(3).enumerate() {
        for (c, &v) in px.iter().enumerate() {
            let x = f32::from(v) / 255.0;
            out[c * plane + i] = if p.normalize {
                (x - mean[c]) / std[c]
            } else {
                x
            };
        }
    }
    out
}
