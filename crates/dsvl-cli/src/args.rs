//! Command-line flags (clap derive). What the user typed, validated; resolved in `cmd::*`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use dsvl::device::DeviceChoice;

#[derive(Parser, Debug)]
#[command(
    name = "dsvl",
    version,
    about = "Run DeepSeek-VL vision-language models locally: one binary, no Python.",
    long_about = "Run DeepSeek-VL vision-language models locally: one binary, no Python.\n\n\
        --model takes a local model folder (deepseek-ai/* or deepseek-community/* layout) or a Hugging Face \
        repo id, which is looked up in the Hugging Face cache ($HF_HOME, default ~/.cache/huggingface) and \
        downloaded there if absent ($HF_ENDPOINT honoured).",
    after_help = "Examples:\n  \
        dsvl run --model deepseek-ai/deepseek-vl-1.3b-chat --image receipt.jpg \"What is the total?\"\n  \
        dsvl run --model ./deepseek-vl-7b-chat --messages conversation.json --max-tokens 256\n  \
        dsvl chat --model ./deepseek-vl-1.3b-chat\n  \
        dsvl inspect ./deepseek-vl-7b-chat"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log more (-v: debug timings, -vv: trace). Logs go to stderr.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Write a timeline of the run to FILE in Chrome's trace format (open it in
    /// https://ui.perfetto.dev or chrome://tracing): the load, image preprocessing, each vision
    /// pass, each prefill chunk and decode step, and every decoder layer and MoE block inside
    /// them. Written when the command ends; independent of -v.
    #[arg(long, global = true, value_name = "FILE")]
    pub trace_chrome: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Answer one prompt (or a whole conversation from a file) and stream the answer to stdout.
    #[command(after_help = "Examples:\n  \
        dsvl run --model DIR --image a.jpg \"Describe this image.\"\n  \
        dsvl run --model DIR --image a.jpg --image b.png \"<image_placeholder>A. <image_placeholder>B. Compare them.\"\n  \
        dsvl run --model DIR --messages conversation.json\n  \
        dsvl run --model DIR --image a.jpg --logprobs 5 --format jsonl \"What is this?\"\n  \
        dsvl run --model DIR --image receipt.png --json-schema receipt.schema.json \"Read this receipt.\"\n  \
        dsvl run --model DIR --image report.pdf --pdf-dpi 144 \"What is the total on the last page?\"\n  \
        dsvl run --model deepseek-ai/deepseek-vl2-tiny --image street.jpg --draw-boxes boxes.png --boxes-json boxes.json \\\n      \
        \"<|ref|>the red car<|/ref|>.\"\n\n\
        Image markers: <image_placeholder> for DeepSeek-VL, <image> for DeepSeek-VL2. Images without markers in the prompt are placed, one marker each, at the start of the user turn.\n\
        A PDF given as --image is its pages, one image each, in order (give no markers for them).\n\
        DeepSeek-VL2 grounding: ask with <|ref|>object<|/ref|> or start with <|grounding|>; the answer keeps its <|ref|>/<|det|> markup, \
        --boxes-json and --draw-boxes turn it into boxes on the last image.\n\
        conversation.json: [{\"role\": \"user\", \"content\": \"<image_placeholder>What is this?\", \"images\": [\"a.jpg\"]}, …]\n\
        (roles system/user/assistant, any case; image paths relative to the JSON file's folder).")]
    Run(RunArgs),
    /// Interactive multi-turn chat (/image PATH, /clear, /system TEXT, /exit).
    Chat(ChatArgs),
    /// Describe a model folder (layout, architecture, sizes, dtype, tokenizer) and report problems, without loading the weights.
    Inspect(InspectArgs),
    /// Serve the model over an OpenAI-compatible HTTP API (/v1/chat/completions with images, streaming).
    Serve(crate::cmd::serve::ServeArgs),
    /// Ask one question about many images (files, folders) through continuous batching, into a
    /// resumable JSONL file.
    Batch(crate::cmd::batch::BatchArgs),
    // about/long_about/after_help: on `BenchArgs` (cmd/bench.rs).
    Bench(crate::cmd::bench::BenchArgs),
}

#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Model folder, or a Hugging Face repo id such as deepseek-ai/deepseek-vl-1.3b-chat.
    #[arg(short, long)]
    pub model: String,
    /// Compute dtype. f32 is exact to the reference on CPU; bf16/f16 halve the memory.
    /// Default: f32 on the CPU, bf16 on a GPU.
    #[arg(long, value_enum)]
    pub dtype: Option<DtypeArg>,
    /// Where to run: auto (a GPU when this build has CUDA and the machine one, else the CPU),
    /// cpu, cuda or cuda:N. The choice is printed on stderr.
    #[arg(long, default_value = "auto", value_parser = parse_device)]
    pub device: DeviceChoice,
    /// CPU threads for tensor maths (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Refuse images with more pixels than this, before decoding them.
    #[arg(long, default_value_t = dsvl::image::DEFAULT_MAX_PIXELS)]
    pub max_image_pixels: u64,
    /// DeepSeek-VL2: cut each image into at most N local tiles (plus the global view). Fewer
    /// tiles mean fewer image tokens (faster prefill, less detail): 1 gives 421 tokens per image
    /// at the published tile size, where 9 tiles (the most the published list has) give up to
    /// 2,101. Default: every tiling the model's processor lists. `serve`: the cap for requests
    /// without `max_tiles`.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub max_tiles: Option<u16>,
    /// Quantize the language model's linear layers at load time: q8_0 (8.5 bits per weight,
    /// close to the float model) or q4_k (4.5 bits, faster decode, larger accuracy cost). Under
    /// q4_k, layers whose input width is not a multiple of 256 are zero-padded to one (or stay
    /// q8_0 when that is smaller); widths that are not a multiple of 32 stay float. Embeddings,
    /// norms, the MoE router, lm_head and the vision towers stay in --dtype. Default: no
    /// quantization.
    #[arg(long, value_enum)]
    pub quant: Option<QuantArg>,
    /// With --quant, quantize lm_head too (smaller and faster, but it is where most of the
    /// remaining accuracy is lost).
    #[arg(long, requires = "quant")]
    pub quant_lm_head: bool,
}

#[derive(Args, Debug, Clone)]
pub struct SamplingArgs {
    /// System prompt (default: the official DeepSeek-VL one).
    #[arg(long)]
    pub system: Option<String>,
    /// Maximum number of new tokens.
    #[arg(long, default_value_t = 512)]
    pub max_tokens: usize,
    /// Sampling temperature; 0 = greedy (deterministic).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub temperature: f32,
    /// Nucleus sampling mass (used when temperature > 0).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Keep the k most likely tokens (used when temperature > 0; 0 disables it). The default 50 matches
    /// the reference's transformers generate().
    #[arg(long, default_value_t = 50)]
    pub top_k: usize,
    /// Penalise tokens already generated (1.0 = off; the official chat demos use 1.1).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub repetition_penalty: f32,
    /// Ban any token that would repeat an n-gram of this size among the last --no-repeat-window
    /// generated tokens (DeepSeek-OCR's processor; its scripts use 30 with a window of 90; 0 = off).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub no_repeat_ngram: usize,
    /// Generated tokens searched by --no-repeat-ngram.
    #[arg(long, value_name = "W", default_value_t = 90)]
    pub no_repeat_window: usize,
    /// Token id the n-gram ban never applies to (repeatable; DeepSeek-OCR exempts <td> and </td>,
    /// 128821 and 128822).
    #[arg(long, value_name = "ID")]
    pub no_repeat_keep: Vec<u32>,
    /// Seed for sampling: the same seed gives the same text.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop when the answer contains this string (repeatable); the string is not printed.
    #[arg(long)]
    pub stop: Vec<String>,
    /// Keep generating after the end-of-sentence token (benchmarks).
    #[arg(long)]
    pub ignore_eos: bool,
    /// Leave special tokens out of the answer. DeepSeek-VL2 keeps them by default, since its
    /// grounding answers are written with them (<|ref|>label<|/ref|><|det|>[[x1, y1, x2, y2]]<|/det|>).
    #[arg(long)]
    pub skip_special_tokens: bool,
    /// Prefill long prompts in chunks of at most N tokens, bounding the memory of attention over
    /// many image tokens (default 2048; 0 = one pass).
    #[arg(long, value_name = "N")]
    pub prefill_chunk: Option<usize>,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// Structured output: the answer is generated so that it always matches (at most one of these).
/// JSON is written compact; an answer cut by --max-tokens is incomplete.
#[derive(Args, Debug, Clone, Default)]
#[group(multiple = false)]
pub struct OutputArgs {
    /// Answer with JSON valid against this JSON Schema file (the supported subset is in the README).
    #[arg(long, value_name = "FILE", help_heading = "Structured output")]
    pub json_schema: Option<PathBuf>,
    /// Answer with a JSON object.
    #[arg(long, help_heading = "Structured output")]
    pub json: bool,
    /// Answer with text matching this regular expression as a whole.
    #[arg(long, value_name = "RE", help_heading = "Structured output")]
    pub regex: Option<String>,
    /// Answer with exactly one of these strings (repeat: --choice yes --choice no).
    #[arg(long, value_name = "TEXT", help_heading = "Structured output")]
    pub choice: Vec<String>,
    /// Answer following this Lark grammar file (llguidance's dialect; examples/grounding.lark).
    #[arg(long, value_name = "FILE.lark", help_heading = "Structured output")]
    pub grammar: Option<PathBuf>,
}

/// PDFs given as images: each page becomes one image (`run`, `chat`, `serve`).
#[derive(Args, Debug, Clone)]
pub struct PdfArgs {
    /// Resolution PDF pages are rendered at, in dots per inch (an A4 page at 144 dpi is
    /// 1191x1684 pixels).
    #[arg(long, value_name = "DPI", default_value_t = 144.0, value_parser = parse_dpi, help_heading = "PDF input")]
    pub pdf_dpi: f32,
    /// Most pages one PDF may have; a longer one is refused (split it first).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 16,
        help_heading = "PDF input"
    )]
    pub max_pdf_pages: usize,
}

impl PdfArgs {
    /// The library's limits for these flags; a page is refused for its size at the image limit.
    pub fn limits(&self, max_image_pixels: u64) -> dsvl::pdf::PdfLimits {
        dsvl::pdf::PdfLimits {
            max_pages: self.max_pdf_pages,
            max_page_pixels: max_image_pixels,
            ..dsvl::pdf::PdfLimits::default()
        }
    }
}

fn parse_dpi(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(d) if d.is_finite() && (1.0..=2400.0).contains(&d) => Ok(d),
        _ => Err(format!(
            "`{s}` is not a resolution between 1 and 2400 dpi (e.g. 144)"
        )),
    }
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[command(flatten)]
    pub pdf: PdfArgs,
    /// Image file (JPEG, PNG, WebP, GIF, BMP, TIFF), or a PDF (each page becomes an image);
    /// repeat for several images.
    #[arg(short, long)]
    pub image: Vec<PathBuf>,
    /// A whole conversation as JSON (see below) instead of PROMPT and --image.
    #[arg(long, conflicts_with_all = ["image", "prompt"])]
    pub messages: Option<PathBuf>,
    /// Report the K most likely alternatives with logprobs for every token (use with --format jsonl).
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u32).range(0..=20))]
    pub logprobs: Option<u32>,
    /// Output format: plain text, or one JSON object per token and a final summary.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// DeepSeek-VL2 grounding: write the answer's boxes as JSON (labels; 0–999 coordinates and
    /// pixel corners in the last image).
    #[arg(long, value_name = "FILE")]
    pub boxes_json: Option<PathBuf>,
    /// DeepSeek-VL2 grounding: draw the answer's labelled boxes on the last image and save it as PNG.
    #[arg(long, value_name = "FILE")]
    pub draw_boxes: Option<PathBuf>,
    /// The question. Put one image marker per --image where the image belongs (<image_placeholder>
    /// for DeepSeek-VL, <image> for DeepSeek-VL2), or none: images without markers go first.
    #[arg(required_unless_present = "messages")]
    pub prompt: Option<String>,
}

#[derive(Args, Debug)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[command(flatten)]
    pub pdf: PdfArgs,
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Model folder or Hugging Face repo id (from the local cache only).
    pub model: String,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum DtypeArg {
    F32,
    Bf16,
    F16,
}

/// `--device` values, parsed by the library so the CLI and the error text agree.
pub fn parse_device(s: &str) -> Result<DeviceChoice, String> {
    s.parse()
}

/// `--dtype` as given, else the device's default: f32 on the CPU (exact to the reference),
/// bf16 on a GPU.
pub fn dtype_for(arg: Option<DtypeArg>, device: &candle_core::Device) -> candle_core::DType {
    match arg {
        Some(d) => d.dtype(),
        None if device.is_cpu() => candle_core::DType::F32,
        None => candle_core::DType::BF16,
    }
}

impl DtypeArg {
    pub fn dtype(self) -> candle_core::DType {
        match self {
            DtypeArg::F32 => candle_core::DType::F32,
            DtypeArg::Bf16 => candle_core::DType::BF16,
            DtypeArg::F16 => candle_core::DType::F16,
        }
    }
}

/// `--quant`: a GGML block format for the LLM's linear layers.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantArg {
    #[value(name = "q8_0")]
    Q8_0,
    #[value(name = "q4_k")]
    Q4K,
}

impl QuantArg {
    pub fn quant(self) -> dsvl::nn::Quant {
        match self {
            QuantArg::Q8_0 => dsvl::nn::Quant::Q8_0,
            QuantArg::Q4K => dsvl::nn::Quant::Q4K,
        }
    }
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Jsonl,
}
