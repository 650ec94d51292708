//! The engine: a loaded model with its tokenizer, turning conversations into streamed tokens.
//!
//! [`Pipeline::prepare`] renders the prompt, tokenizes it, expands image tokens and preprocesses
//! images (all checks that a user can fail happen here, before any model work);
//! [`Pipeline::generate`] runs vision, prefill and the decode loop, reporting each token through a
//! callback that can stop generation. [`Pipeline::start`], [`Sequence::step`] and
//! [`Pipeline::decode_batch`] are the same loop cut into steps, for decoding many requests together.

mod batch;
mod feature_cache;
mod generate;
mod sequence;

use std::path::Path;
use std::sync::OnceLock;
use std::time::Instant;

use candle_core::{DType, Device};

use crate::error::{Error, Result};
use crate::image;
use crate::models::{Family, VisionLanguageModel};
use crate::nn::{Quant, QuantPlan};
use crate::prompt::expand::check_context;
use crate::prompt::template::Message;
use crate::prompt::tokenizer::PromptTokenizer;
use crate::structured::{Constraint, Grammars, TokenConstraint};
use crate::weights::Progress;

pub use crate::models::{
    ChatMessage, ImageInput, ImageOptions, ImageSource, Prepared, PromptText, TiledImage,
};
pub use batch::{
    EngineConfig, EngineEvent, EngineHandle, EngineStats, Histogram, Policy, Request, TokenOut,
    DEFAULT_PREFILL_TOKENS_PER_STEP,
};
pub use feature_cache::FeatureCache;
pub use generate::{
    Conversation, Event, FinishReason, GenerateParams, Outcome, PrefixCache, Timings, TokenEvent,
    DEFAULT_PREFILL_CHUNK,
};
pub use sequence::Sequence;

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
    /// DeepSeek-VL2: at most this many local tiles per image, unless a request says otherwise
    /// ([`Pipeline::prepare_with`]); `None`: the processor's every tiling. Families without
    /// tiles refuse it at load.
    pub max_tiles: Option<usize>,
}

/// Every field but the progress callback, which prints as whether there is one.
impl std::fmt::Debug for LoadOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadOptions")
            .field("dtype", &self.dtype)
            .field("device", &self.device)
            .field("progress", &self.progress.as_ref().map(|_| "callback"))
            .field("max_image_pixels", &self.max_image_pixels)
            .field("quant", &self.quant)
            .field("quant_lm_head", &self.quant_lm_head)
            .field("max_tiles", &self.max_tiles)
            .finish()
    }
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
            max_tiles: None,
        }
    }
}

/// A loaded model with its tokenizer: the family's configuration and processor, its weights.
pub struct Pipeline {
    config: Box<dyn Family>,
    model: Box<dyn VisionLanguageModel>,
    tokenizer: PromptTokenizer,
    max_image_pixels: u64,
    max_tiles: Option<usize>,
    /// Built on the first constrained request (about 0.1 s), so unconstrained use pays nothing.
    grammars: OnceLock<Grammars>,
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
        let config = crate::models::from_dir(dir)?;
        if let Some(n) = opts.max_tiles.filter(|_| !config.tiles_images()) {
            return Err(crate::Error::Unsupported {
                what: format!("a tile cap ({n}) for a {} model", config.family()),
                hint: "this model reads every image as one fixed-size view, with no tiles to \
                       cap; drop --max-tiles (it applies to DeepSeek-VL2 models)"
                    .into(),
            });
        }
        let tokenizer = config.tokenizer()?;
        let quant = QuantPlan {
            quant: opts.quant,
            lm_head: opts.quant_lm_head,
        };
        let model = config.load(opts.dtype, &opts.device, quant, opts.progress.clone())?;
        crate::memory::release_freed();
        Ok(Self {
            config,
            model,
            tokenizer,
            max_image_pixels: opts.max_image_pixels,
            max_tiles: opts.max_tiles,
            grammars: OnceLock::new(),
        })
    }

    /// The loaded weights.
    pub fn model(&self) -> &dyn VisionLanguageModel {
        self.model.as_ref()
    }
    pub fn tokenizer(&self) -> &PromptTokenizer {
        &self.tokenizer
    }
    /// The model's family and resolved configuration.
    pub fn config(&self) -> &dyn Family {
        self.config.as_ref()
    }

    /// Renders, tokenizes and expands the prompt, checks that it leaves room for at least one
    /// new token, and preprocesses the images. `system`: `None` for the family's default (v1:
    /// the official system prompt; VL2: none). The new-token budget is given once, in the
    /// [`GenerateParams`] of the generation, which checks that prompt and budget fit.
    pub fn prepare(&self, system: Option<&str>, messages: &[ChatMessage]) -> Result<Prepared> {
        self.prepare_with(system, messages, None)
    }

    /// [`Pipeline::prepare`] with at most `max_tiles` local tiles per image (DeepSeek-VL2;
    /// other families refuse a cap); `None`: the pipeline's [`LoadOptions::max_tiles`].
    /// [`Prepared::image_tokens`] says what each image took.
    pub fn prepare_with(
        &self,
        system: Option<&str>,
        messages: &[ChatMessage],
        max_tiles: Option<usize>,
    ) -> Result<Prepared> {
        let _span = tracing::debug_span!("prepare", messages = messages.len()).entered();
        let t0 = Instant::now();
        let text_bytes =
            system.map_or(0, str::len) + messages.iter().map(|m| m.content.len()).sum::<usize>();
        // Room for one new token at least; the exact check with `max_new_tokens` follows.
        self.check_prompt_bytes(text_bytes, self.config.context_length().saturating_sub(1))?;
        let mut prepared = self.config.prepare(
            &self.tokenizer,
            system,
            messages,
            &ImageOptions {
                max_pixels: self.max_image_pixels,
                max_tiles: max_tiles.or(self.max_tiles),
            },
        )?;
        self.check_fits(prepared.ids.len(), 1)?;
        prepared.preprocess_ms = t0.elapsed().as_secs_f64() * 1e3;
        Ok(prepared)
    }

    /// The structured-output compiler for this model's tokenizer, built on first use.
    pub fn grammars(&self) -> Result<&Grammars> {
        if let Some(g) = self.grammars.get() {
            return Ok(g);
        }
        let built = Grammars::new(&self.tokenizer)?;
        Ok(self.grammars.get_or_init(|| built))
    }

    /// Compiles `constraint` for this model: a bad schema, regex or grammar is an
    /// [`Error::InvalidConstraint`] here, before any model work (the server's 400).
    pub fn compile_constraint(&self, constraint: &Constraint) -> Result<TokenConstraint> {
        let _span = tracing::debug_span!("compile_constraint", kind = constraint.kind()).entered();
        self.grammars()?.compile(constraint)
    }

    /// [`Error::ContextOverflow`] unless `prompt_tokens` and up to `max_new_tokens` fit in the
    /// model's context.
    pub fn check_fits(&self, prompt_tokens: usize, max_new_tokens: usize) -> Result<()> {
        check_context(prompt_tokens, max_new_tokens, self.config.context_length())
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

    /// The prompt [`Pipeline::prepare`] builds for `turns`, whose images are known only by their
    /// number, without reading or preprocessing any image and without the context check; `None`
    /// when the family's prompt depends on the images themselves
    /// ([`Family::prompt_reads_images`]): then use [`Pipeline::prepare`].
    pub fn prompt_from_counts(
        &self,
        system: Option<&str>,
        turns: &[Message],
    ) -> Result<Option<PromptText>> {
        self.config
            .prompt_from_counts(&self.tokenizer, system, turns)
    }
}
