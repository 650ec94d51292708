//! What differs between model families, as two traits: [`Family`] (a resolved model directory:
//! its processor, its reports, its loader) and [`VisionLanguageModel`] (its loaded weights:
//! vision, embedding merge, language model). Everything outside `models/` talks to a family
//! through these traits only; [`super::registry`] picks the family of a directory.
//!
//! # Adding a family
//!
//! A family is one folder under `models/` (see `deepseek_vl/` and `deepseek_vl2/`) with:
//!
//! - `config.rs`: the serde mirrors of its JSON files and their resolution into one checked spec
//!   struct (STYLE §3.1), reading `config.json` from the value the registry already parsed, and
//!   the other files of the directory itself;
//! - `processor.rs`: conversation → [`Prepared`]: the chat template, tokenization, each image's
//!   preprocessing into an [`ImageInput`] (a new kind of vision input is a new variant there),
//!   and image-token expansion; every error a user can cause is raised here, before any model
//!   work;
//! - `model.rs`: the loaded weights (towers from `vision/`, a projector, an LLM from `llm/`) and
//!   the embedding merge (`models::merge`);
//! - `family.rs`: `impl Family` for the spec and `impl VisionLanguageModel` for the model, and
//!   the `resolve` function the registry calls;
//! - `mod.rs`: the module declarations, `MODEL_TYPES` and the re-exports.
//!
//! Then one entry in [`super::registry`]'s table: the `model_type` values of `config.json` that
//! name the family, and its resolve function (and those values in the message an unknown
//! `model_type` gets). Shared maths stays in `image/`, `vision/`, `nn/`,
//! `llm/`, `prompt/`; a family folder composes it.

use std::any::Any;
use std::fmt;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::inputs::{ChatMessage, ImageInput, ImageOptions, Prepared, PromptText};
use crate::error::{CheckpointLayout, Result};
use crate::llm::KvCache;
use crate::nn::{QuantPlan, QuantReport};
use crate::prompt::template::Message;
use crate::prompt::tokenizer::PromptTokenizer;
use crate::weights::Progress;

/// A resolved model directory of one family: what it is, how it turns conversations into model
/// inputs, and how its weights load. Made by [`super::from_dir`]; no weights are read until
/// [`Family::load`].
pub trait Family: fmt::Debug + Send + Sync {
    // ---- what it is ------------------------------------------------------------------------

    /// The family's name in reports: `DeepSeek-VL`, `DeepSeek-VL2`.
    fn family(&self) -> &'static str;

    /// The model directory.
    fn dir(&self) -> &Path;

    /// How the checkpoint names its tensors.
    fn layout(&self) -> CheckpointLayout;

    /// Positions the model was trained for; a prompt plus its new tokens must fit.
    fn context_length(&self) -> usize;

    /// One line naming the architecture, for benchmark reports (`SigLIP-L + Llama (1.3B-style)`).
    fn summary(&self) -> &'static str;

    /// `(label, text)` lines describing the resolved configuration, for `dsvl inspect`.
    fn describe(&self) -> Vec<(&'static str, String)>;

    /// Parameter and cache sizes of the language model, for benchmark rooflines.
    fn llm_facts(&self) -> LlmFacts;

    // ---- prompts and images ----------------------------------------------------------------

    /// The image marker users put in prompt text: `<image_placeholder>` (v1), `<image>` (VL2).
    fn image_marker(&self) -> &str;

    /// Image tokens of one image in its smallest layout (v1: every image; VL2: an untiled one).
    fn tokens_per_image(&self) -> usize;

    /// Side in pixels of the square views the vision tower takes (v1: the padded image; VL2: a tile).
    fn image_size(&self) -> u32;

    /// The system prompt used when a conversation brings none (`None`: no system turn).
    fn default_system_prompt(&self) -> Option<&'static str>;

    /// Whether generated text leaves special tokens out unless a request says otherwise.
    fn skip_special_tokens(&self) -> bool;

    /// Whether answers may carry grounding markup (`<|ref|>…<|det|>[[…]]`, v2 §6.4) to parse
    /// into boxes ([`crate::grounding`]).
    fn supports_grounding(&self) -> bool;

    /// The directory's tokenizer, with this family's image token.
    fn tokenizer(&self) -> Result<PromptTokenizer>;

    /// Whether the prompt depends on the images themselves (VL2: each image's tiling sets its
    /// token count) and not only on how many there are (v1). When it does not,
    /// [`Family::prompt_from_counts`] gives the prompt without reading any image.
    fn prompt_reads_images(&self) -> bool;

    /// Whether images are cut into a varying number of tiles that [`ImageOptions::max_tiles`]
    /// can cap (DeepSeek-VL2); families with one fixed view per image refuse a cap.
    fn tiles_images(&self) -> bool {
        false
    }

    /// The prompt of `turns` (images known only by their number, `Message::n_images`), exactly
    /// as [`Family::prepare`] builds it; `None` when [`Family::prompt_reads_images`].
    fn prompt_from_counts(
        &self,
        tok: &PromptTokenizer,
        system: Option<&str>,
        turns: &[Message],
    ) -> Result<Option<PromptText>>;

    /// Renders and tokenizes the conversation, expands the image tokens and preprocesses every
    /// image as `images` says (pixel limit, tiling cap). `system`: `None` for
    /// [`Family::default_system_prompt`]. Does not check the context length.
    fn prepare(
        &self,
        tok: &PromptTokenizer,
        system: Option<&str>,
        messages: &[ChatMessage],
        images: &ImageOptions,
    ) -> Result<Prepared>;

    // ---- weights ---------------------------------------------------------------------------

    /// Loads the weights in `dtype` on `device`; `quant` says how the language model's linear
    /// layers are stored (vision towers and projectors are never quantized).
    fn load(
        &self,
        dtype: DType,
        device: &Device,
        quant: QuantPlan,
        progress: Option<Progress>,
    ) -> Result<Box<dyn VisionLanguageModel>>;
}

/// A family's loaded weights. The engine calls these once per image, per prefill chunk and per
/// decode step; the per-layer loops inside are the family's own, with no dynamic dispatch.
pub trait VisionLanguageModel: Send + Sync {
    fn dtype(&self) -> DType;

    fn device(&self) -> &Device;

    /// An empty KV cache for one sequence.
    fn new_cache(&self) -> KvCache;

    /// One image's embedding sequence `[N, hidden]` from its preprocessed input. An input made
    /// by another family's processor is an [`crate::Error::Unsupported`].
    fn encode_image(&self, image: &ImageInput) -> Result<Tensor>;

    /// Token embeddings `[1, T, hidden]` with the positions holding `image_token_id` filled, in
    /// order, from the per-image sequences `images` (each `[N_i, hidden]`).
    fn input_embeddings(
        &self,
        ids: &[u32],
        image_token_id: u32,
        images: &[Tensor],
    ) -> Result<Tensor>;

    /// Prefill: runs `embeds` `[1, T, hidden]` through the language model, appending to
    /// `cache`; f32 logits `[vocab]` of the last position.
    fn forward_embeds(&self, embeds: &Tensor, cache: &mut KvCache) -> Result<Tensor>;

    /// One decode step for token `id`; f32 logits `[vocab]`.
    fn decode_step(&self, id: u32, cache: &mut KvCache) -> Result<Tensor>;

    /// One decode step for each sequence: token `ids[r]` against `caches[r]`; f32 logits
    /// `[B, vocab]`, row `r` bit for bit what [`VisionLanguageModel::decode_step`] gives for it
    /// alone.
    fn decode_batch(&self, ids: &[u32], caches: &mut [&mut KvCache]) -> Result<Tensor>;

    /// How the language model's linear layers are stored.
    fn quant_report(&self) -> QuantReport;

    /// Bytes of language-model weights one decode step reads (as stored: quantized layers
    /// count their GGML blocks; MoE layers count the router, the shared and `top_k` experts).
    fn decode_weight_bytes(&self) -> u64;

    /// The concrete model, for callers that need a family's own API (per-stage outputs in
    /// parity tests): see [`downcast_ref`](trait.VisionLanguageModel.html#method.downcast_ref).
    fn as_any(&self) -> &dyn Any;
}

impl dyn VisionLanguageModel + '_ {
    /// The concrete model when it is a `T` (e.g. [`super::DeepseekVl`]).
    pub fn downcast_ref<T: 'static>(&self) -> Option<&T> {
        self.as_any().downcast_ref()
    }
}

/// What a benchmark's roofline needs to know about a language model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LlmFacts {
    /// All parameters (embedding and lm_head included).
    pub params: u64,
    /// Parameters one decode step reads: every weight except the embedding table (one row of
    /// it), and for MoE layers only the router, the shared and the top-k routed experts.
    pub decode_params: u64,
    /// Cached values per position over all layers (K and V; MLA: the latent plus the rope key).
    pub kv_values_per_position: u64,
    pub layers: usize,
    pub hidden: usize,
}
