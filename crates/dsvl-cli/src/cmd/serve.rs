//! `dsvl serve`: the OpenAI-compatible HTTP server (crate `dsvl-server`).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use dsvl_server::ServerConfig;

use crate::args::{ModelArgs, PdfArgs};
use crate::model_path::resolve_model;

#[derive(Args, Debug)]
#[command(after_help = "Example:\n  \
    dsvl serve --model deepseek-ai/deepseek-vl-1.3b-chat --port 8080\n  \
    curl http://127.0.0.1:8080/v1/chat/completions -H 'Content-Type: application/json' \\\n    \
    -d '{\"temperature\": 0, \"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"image_url\", \
    \"image_url\": {\"url\": \"data:image/png;base64,…\"}}, {\"type\": \"text\", \"text\": \"Describe it.\"}]}]}'\n\n\
    Open http://127.0.0.1:8080/ for the chat page (--no-webui turns it off).\n\
    /health answers 503 while the model loads, then 200. Ctrl-C or SIGTERM shuts down gracefully.")]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub pdf: PdfArgs,
    /// Address to bind (loopback by default; use 0.0.0.0 to accept other machines).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Require `Authorization: Bearer KEY` on every route except /health and /ready.
    #[arg(long, env = "DSVL_API_KEY")]
    pub api_key: Option<String>,
    /// Requests waiting beyond the running ones; more get 429 with Retry-After.
    #[arg(long, default_value_t = 64)]
    pub max_queue: usize,
    /// Requests decoded together in one batched forward pass per token (continuous batching;
    /// new requests join between steps). 1 serves one request at a time. At most 32.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=32))]
    pub max_running: u16,
    /// Largest request body in bytes (base64 images count).
    #[arg(long, default_value_t = 32 << 20)]
    pub max_body_bytes: usize,
    /// Most images in one request (each page of a PDF file part counts as one).
    #[arg(long, default_value_t = 8)]
    pub max_images: usize,
    /// Largest prompt in tokens (default: the model's context).
    #[arg(long)]
    pub max_prompt_tokens: Option<usize>,
    /// Allow `file://` image URLs under this folder.
    #[arg(long)]
    pub allowed_local_media_path: Option<PathBuf>,
    /// Fetch http(s) image URLs. The server then downloads any URL a client sends, from its
    /// own network position (loopback and private addresses included): narrow it with
    /// --allowed-remote-hosts when clients are not trusted.
    #[arg(long)]
    pub allow_remote_images: bool,
    /// Largest remote image in bytes; larger ones are refused (413).
    #[arg(long, default_value_t = 20 << 20)]
    pub max_remote_image_bytes: usize,
    /// Seconds allowed for fetching one remote image (connect, redirects, body).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub remote_image_timeout: u64,
    /// Only fetch remote images from these hosts (comma-separated; `*.example.com` matches its
    /// subdomains). Default: any host.
    #[arg(long, value_delimiter = ',', requires = "allow_remote_images")]
    pub allowed_remote_hosts: Vec<String>,
    /// Memory for cached image embeddings, in MiB: a conversation that resends an image skips
    /// the vision tower.
    #[arg(long, default_value_t = 512)]
    pub image_cache_mb: usize,
    /// Memory for prefix caching, in MiB: the keys/values of finished requests are kept, and a
    /// request that extends one (a client resending its conversation with a new turn) prefills
    /// only its new tokens; responses then report `usage.prompt_tokens_details.cached_tokens`.
    /// 0 turns it off.
    #[arg(long, default_value_t = 1024)]
    pub prefix_cache_mb: usize,
    /// Requests whose images and prompt are prepared at once (decoding, tokenizing: CPU work
    /// holding memory in proportion to the request). More wait, up to --max-queue of them, then
    /// get 429. Default: the number of cores (at least 2).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_preparing: Option<u32>,
    /// Open connections at most; at the cap, new ones wait until one closes.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// Seconds a connection may take to send a complete request header, counted from its
    /// opening or its previous response (so idle keep-alive connections close after this too).
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..))]
    pub header_timeout: u64,
    /// Seconds a request's whole body may take to arrive after its header; slower ones get 408
    /// and the connection is closed.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub body_timeout: u64,
    /// Model name reported by /v1/models and in responses; requests naming another model get
    /// 404. Default: the --model argument as given for a Hub id (`deepseek-ai/deepseek-vl2-tiny`),
    /// the folder's name for a local directory.
    #[arg(long)]
    pub served_model_name: Option<String>,
    /// Do not serve the chat page at / (open http://HOST:PORT/ in a browser); the API routes
    /// are unchanged.
    #[arg(long)]
    pub no_webui: bool,
}

pub fn run(a: ServeArgs) -> anyhow::Result<()> {
    super::apply_threads(a.model.threads)?;
    let model_dir = resolve_model(&a.model.model, true)?;
    let load = super::load_options(&a.model, super::select_device(a.model.device)?);
    let cfg = ServerConfig {
        host: a.host,
        port: a.port,
        model_dir,
        load,
        api_key: a.api_key,
        max_queue: a.max_queue,
        max_running: usize::from(a.max_running),
        max_body_bytes: a.max_body_bytes,
        max_images_per_request: a.max_images,
        pdf_dpi: a.pdf.pdf_dpi,
        max_pdf_pages: a.pdf.max_pdf_pages,
        max_prompt_tokens: a.max_prompt_tokens,
        allowed_local_media_path: a.allowed_local_media_path,
        allow_remote_images: a.allow_remote_images,
        max_remote_image_bytes: a.max_remote_image_bytes,
        remote_image_timeout: Duration::from_secs(a.remote_image_timeout),
        allowed_remote_hosts: a.allowed_remote_hosts,
        model_name: a
            .served_model_name
            .unwrap_or_else(|| default_model_name(&a.model.model)),
        image_cache_bytes: a.image_cache_mb << 20,
        prefix_cache_bytes: a.prefix_cache_mb << 20,
        max_preparing: a
            .max_preparing
            .map_or_else(dsvl_server::state::default_max_preparing, |n| n as usize),
        max_connections: a.max_connections as usize,
        header_timeout: Duration::from_secs(a.header_timeout),
        body_timeout: Duration::from_secs(a.body_timeout),
        webui: !a.no_webui,
        ..Default::default()
    };
    tokio::runtime::Runtime::new()?.block_on(dsvl_server::serve(cfg))
}

/// The name a model is served under by default: a local folder's name, else the Hub id.
fn default_model_name(model: &str) -> String {
    let path = std::path::Path::new(model);
    if path.is_dir() {
        if let Some(name) = path
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        {
            return name;
        }
    }
    model.trim_end_matches('/').to_string()
}
