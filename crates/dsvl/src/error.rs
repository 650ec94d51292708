//! The library's one error type. Every variant a user can cause says what was wrong and what to do.

use std::path::PathBuf;

/// Which checkpoint layout a model directory uses (v1 §2 original, v1 §12 transformers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointLayout {
    /// `deepseek-ai/*`: `model_type: multi_modality`, keys `vision_model.*`, `aligner.*`, `language_model.*`.
    Original,
    /// `deepseek-community/*`: `model_type: deepseek_vl[_hybrid]`, keys `model.*`, `lm_head.*`.
    Transformers,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    // ---- files and configs -------------------------------------------------------------------
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid JSON ({source}); the file is damaged or not a model config")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("{0} is not a model directory: it has no config.json (expected a DeepSeek-VL folder as downloaded from the Hugging Face Hub)")]
    NotAModelDir(PathBuf),
    #[error("{what} is not supported: {hint}")]
    Unsupported { what: String, hint: String },

    // ---- weights -----------------------------------------------------------------------------
    #[error("{path}: not a valid safetensors file ({message}); re-download it")]
    Safetensors { path: PathBuf, message: String },
    #[error("checkpoint {dir}: tensor `{name}` is missing (layout {layout:?}, expected shape {expected:?}); the download is incomplete or this is not a DeepSeek-VL checkpoint")]
    MissingTensor {
        dir: PathBuf,
        name: String,
        layout: CheckpointLayout,
        expected: Vec<usize>,
    },
    #[error("{path}: tensor `{name}` has shape {actual:?} but the config implies {expected:?}; config.json and the weights do not belong together")]
    TensorShape {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },
    #[error("checkpoint {dir}: unexpected tensors {names:?} (layout {layout:?}); the config does not describe these weights")]
    UnexpectedTensors {
        dir: PathBuf,
        names: Vec<String>,
        layout: CheckpointLayout,
    },

    // ---- tokenizer and prompt ----------------------------------------------------------------
    #[error("{path}: cannot load tokenizer ({message})")]
    Tokenizer { path: PathBuf, message: String },
    #[error("tokenizer: {0}")]
    Tokenize(String),
    #[error("the prompt has {markers} image placeholders but {images} images were given; give one image per `{marker}` marker (or no markers at all, and one is put before the text per image)")]
    ImageCountMismatch {
        markers: usize,
        images: usize,
        marker: String,
    },
    #[error("the prompt needs {prompt} tokens and up to {max_new} new tokens, {needed} in all, but the model's context holds {max}; shorten the prompt, send fewer images or lower --max-tokens")]
    ContextOverflow {
        prompt: usize,
        max_new: usize,
        needed: usize,
        max: usize,
    },
    #[error("the prompt's text is {bytes} bytes, at least {min_tokens} tokens, over the {max} prompt tokens that fit; shorten the prompt")]
    PromptTooLong {
        bytes: usize,
        min_tokens: usize,
        max: usize,
    },
    #[error("the engine's queue is full ({capacity} requests waiting); retry shortly")]
    QueueFull { capacity: usize },
    #[error("the engine has stopped; no more requests are taken")]
    EngineStopped,
    #[error("conversation: {0}")]
    Conversation(String),

    // ---- images ------------------------------------------------------------------------------
    #[error("{source_name}: cannot read image ({message}); send a JPEG, PNG, WebP, GIF, BMP or TIFF file")]
    ImageDecode {
        source_name: String,
        message: String,
    },
    #[error("{source_name}: image is {width}x{height} = {pixels} pixels, over the limit of {limit} pixels; downscale it first or raise the pixel limit")]
    ImageTooLarge {
        source_name: String,
        width: u64,
        height: u64,
        pixels: u64,
        limit: u64,
    },

    /// A PDF given as images that cannot be opened or rendered (the message names the document
    /// and the page).
    #[error(transparent)]
    Pdf(#[from] crate::pdf::PdfError),
    #[error("unknown resolution mode `{given}`; use one of {choices}")]
    UnknownMode {
        given: String,
        choices: &'static str,
    },
    #[error("image {width}x{height} cannot be fitted into {target}x{target}: its short side would shrink to 0 pixels; crop it to a less extreme aspect ratio (at most {max_ratio}:1)")]
    ImageTooThin {
        width: u32,
        height: u32,
        target: u32,
        max_ratio: u32,
    },
    #[error("max_crops = {given}: the tiled mode cuts between 2 and {max} tiles; pick a value in that range")]
    TileLimit { given: u32, max: u32 },

    // ---- generation --------------------------------------------------------------------------
    #[error("invalid sampling parameter: {0}")]
    Sampling(String),
    /// A structured-output constraint that cannot be compiled (bad schema, regex or grammar).
    #[error("invalid {kind}: {message}")]
    InvalidConstraint { kind: &'static str, message: String },
    #[error("the {kind} is {bytes} bytes, over the limit of {limit} bytes (MAX_CONSTRAINT_BYTES); simplify it or split the task")]
    ConstraintTooLarge {
        kind: &'static str,
        bytes: usize,
        limit: usize,
    },
    /// The constraint failed while generating (a grammar that allows no token the model has).
    #[error("structured output: {0}")]
    Grammar(String),

    // ---- devices -----------------------------------------------------------------------------
    /// The requested device cannot be used; the message says why and what to do.
    #[error("{0}")]
    Device(String),

    // ---- tensor maths ------------------------------------------------------------------------
    #[error("tensor op failed: {0}")]
    Tensor(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
