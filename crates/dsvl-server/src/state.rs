//! Shared handler state: limits, the engine once the model is loaded, metrics.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use dsvl::engine::{
    EngineConfig, EngineHandle, LoadOptions, Pipeline, Policy, DEFAULT_PREFILL_TOKENS_PER_STEP,
};

use crate::error::ApiError;
use crate::media::{MediaPolicy, PdfPolicy, RemoteImages};
use crate::metrics::Metrics;
use crate::preparing::PrepareGate;
use crate::release::Releaser;

/// Everything `serve` needs. `Default` gives the documented defaults (127.0.0.1:8080, f32, …).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub host: String,
    pub port: u16,
    pub model_dir: PathBuf,
    /// How the model is loaded: dtype, device, quantization, and the image-size limit (images
    /// with more pixels are refused before decoding, 413).
    pub load: LoadOptions,
    /// When set, every route but `/health` and `/ready` needs `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// Requests waiting for the engine before new ones get 429.
    pub max_queue: usize,
    /// Requests decoded together (continuous batching); the engine caps it at
    /// [`dsvl::nn::rowmat::MAX_ROWS`], the largest batch that stays batch-invariant.
    pub max_running: usize,
    /// Largest request body (base64 images included); larger ones get 413.
    pub max_body_bytes: usize,
    /// Images per request; each page of a PDF file part counts as one.
    pub max_images_per_request: usize,
    /// Resolution PDF pages are rendered at (`--pdf-dpi`).
    pub pdf_dpi: f32,
    /// Pages one PDF file part may have (`--max-pdf-pages`); more is a 400.
    pub max_pdf_pages: usize,
    /// Longest prompt in tokens (image tokens included); `None`: the model's context.
    pub max_prompt_tokens: Option<usize>,
    /// Directory `file://` image URLs may point into; `None`: `file://` refused.
    pub allowed_local_media_path: Option<PathBuf>,
    /// Fetch `http(s)` image URLs (any host the server can reach, unless
    /// `allowed_remote_hosts` narrows it); off: such URLs are a 400.
    pub allow_remote_images: bool,
    /// Largest remote image body; larger ones get 413.
    pub max_remote_image_bytes: usize,
    /// Deadline for fetching one remote image (connect, redirects, body).
    pub remote_image_timeout: Duration,
    /// Hosts remote images may come from (`example.com`, `*.example.com`); empty: any host.
    pub allowed_remote_hosts: Vec<String>,
    /// The id `/v1/models` and responses report.
    pub model_name: String,
    /// Memory for cached image embeddings (a conversation resending an image skips the vision tower).
    pub image_cache_bytes: usize,
    /// Memory for the caches of finished requests that later requests extending the same
    /// conversation continue instead of prefilling it again; 0 turns prefix caching off.
    pub prefix_cache_bytes: usize,
    /// How long shutdown waits for in-flight requests.
    pub shutdown_grace: Duration,
    /// Requests whose images and prompt are prepared (decoded, tokenized) at once; more wait,
    /// up to `max_queue` of them, then get 429.
    pub max_preparing: usize,
    /// Open connections; at the cap, new ones wait in the listen backlog until one closes.
    pub max_connections: usize,
    /// A connection must send a complete request header within this time of opening or of its
    /// previous response (so it is also the keep-alive idle timeout); else it is closed.
    pub header_timeout: Duration,
    /// A request's whole body must arrive within this time of its header; else 408 and the
    /// connection is closed.
    pub body_timeout: Duration,
    /// Serve the chat page at `/` (see [`crate::webui`]); off: `/` is a 404.
    pub webui: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8080,
            model_dir: PathBuf::new(),
            load: LoadOptions::default(),
            api_key: None,
            max_queue: 64,
            max_running: 8,
            max_body_bytes: 32 << 20,
            max_images_per_request: 8,
            pdf_dpi: crate::media::DEFAULT_PDF_DPI,
            max_pdf_pages: crate::media::DEFAULT_MAX_PDF_PAGES,
            max_prompt_tokens: None,
            allowed_local_media_path: None,
            allow_remote_images: false,
            max_remote_image_bytes: 20 << 20,
            remote_image_timeout: Duration::from_secs(10),
            allowed_remote_hosts: Vec::new(),
            model_name: "deepseek-vl".into(),
            image_cache_bytes: 512 << 20,
            prefix_cache_bytes: 0,
            shutdown_grace: Duration::from_secs(30),
            max_preparing: default_max_preparing(),
            max_connections: 512,
            header_timeout: Duration::from_secs(15),
            body_timeout: Duration::from_secs(60),
            webui: true,
        }
    }
}

/// One preparation per core: it is CPU work (image decoding, tokenizing), and each holds
/// memory in proportion to its request.
pub fn default_max_preparing() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().max(2))
}

/// Per-request limits, taken from [`ServerConfig`].
#[derive(Debug, Clone)]
pub struct Limits {
    pub api_key: Option<String>,
    pub max_queue: usize,
    pub max_running: usize,
    pub max_body_bytes: usize,
    pub max_images_per_request: usize,
    pub max_prompt_tokens: Option<usize>,
    pub image_cache_bytes: usize,
    pub prefix_cache_bytes: usize,
    pub body_timeout: Duration,
    pub media: MediaPolicy,
}

impl Limits {
    /// `allowed_local_media_path` must already be canonical (see [`crate::media::canonical_root`]).
    pub fn from_config(cfg: &ServerConfig) -> Self {
        Self {
            api_key: cfg.api_key.clone(),
            max_queue: cfg.max_queue,
            max_running: cfg.max_running,
            max_body_bytes: cfg.max_body_bytes,
            max_images_per_request: cfg.max_images_per_request,
            max_prompt_tokens: cfg.max_prompt_tokens,
            image_cache_bytes: cfg.image_cache_bytes,
            prefix_cache_bytes: cfg.prefix_cache_bytes,
            body_timeout: cfg.body_timeout,
            media: MediaPolicy {
                allowed_local_media_path: cfg.allowed_local_media_path.clone(),
                remote: cfg.allow_remote_images.then(|| {
                    RemoteImages::new(
                        cfg.max_remote_image_bytes,
                        cfg.remote_image_timeout,
                        &cfg.allowed_remote_hosts,
                    )
                }),
                pdf: PdfPolicy {
                    dpi: cfg.pdf_dpi,
                    limits: dsvl::pdf::PdfLimits {
                        max_pages: cfg.max_pdf_pages,
                        // A page is refused for its size before it is drawn, at the image limit.
                        max_page_pixels: cfg.load.max_image_pixels,
                        ..PdfPolicy::default().limits
                    },
                },
            },
        }
    }
}

/// Handler state: cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    limits: Limits,
    model_name: String,
    created: u64,
    engine: OnceLock<EngineHandle>,
    preparing: PrepareGate,
    releaser: Releaser,
    metrics: Arc<Metrics>,
    webui: bool,
}

impl AppState {
    /// A state whose model is still loading: `/health` answers 503 until [`AppState::set_ready`].
    pub fn loading(cfg: &ServerConfig) -> Self {
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Self {
            inner: Arc::new(Inner {
                limits: Limits::from_config(cfg),
                model_name: cfg.model_name.clone(),
                created,
                engine: OnceLock::new(),
                preparing: PrepareGate::new(cfg.max_preparing, cfg.max_queue),
                releaser: Releaser::default(),
                metrics: Arc::new(Metrics::default()),
                webui: cfg.webui,
            }),
        }
    }

    /// A ready state around an already-loaded model (tests, embedding). Starts the engine thread.
    pub fn from_pipeline(pipeline: Arc<Pipeline>, cfg: &ServerConfig) -> dsvl::Result<Self> {
        let state = Self::loading(cfg);
        state.set_ready(pipeline)?;
        Ok(state)
    }

    /// Starts the engine thread on `pipeline`; from now on the model routes answer.
    pub fn set_ready(&self, pipeline: Arc<Pipeline>) -> dsvl::Result<()> {
        let l = &self.inner.limits;
        let cfg = EngineConfig {
            max_queue: l.max_queue,
            policy: Policy {
                max_running: l.max_running,
                prefill_tokens_per_step: DEFAULT_PREFILL_TOKENS_PER_STEP,
            },
            image_cache_bytes: l.image_cache_bytes,
            prefix_cache_bytes: l.prefix_cache_bytes,
        };
        let stats = self.inner.metrics.engine.clone();
        let handle = EngineHandle::spawn_with_stats(pipeline, &cfg, stats)?;
        // A second call keeps the first engine: the state serves one model for its whole life.
        let _ = self.inner.engine.set(handle);
        Ok(())
    }

    /// The engine, or 503 while the model loads.
    pub fn engine(&self) -> Result<&EngineHandle, ApiError> {
        self.inner
            .engine
            .get()
            .ok_or_else(|| ApiError::unavailable("the model is still loading; retry shortly"))
    }

    pub fn is_ready(&self) -> bool {
        self.inner.engine.get().is_some()
    }

    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }
    /// The bound on requests being prepared at once (see [`crate::preparing`]).
    pub fn preparing(&self) -> &PrepareGate {
        &self.inner.preparing
    }
    /// Gives freed memory back to the OS after large requests.
    pub fn releaser(&self) -> &Releaser {
        &self.inner.releaser
    }
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }
    pub fn model_name(&self) -> &str {
        &self.inner.model_name
    }
    /// Whether the chat page is served.
    pub fn webui(&self) -> bool {
        self.inner.webui
    }
    /// Server start time (Unix seconds), reported as the model's `created`.
    pub fn created(&self) -> u64 {
        self.inner.created
    }
}
