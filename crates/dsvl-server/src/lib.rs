//! dsvl-server: an OpenAI-compatible HTTP server for DeepSeek-VL, on top of the `dsvl` engine.
//!
//! - [`serve`] binds, answers `/health` with 503 while the model loads on a blocking thread, then
//!   serves until SIGINT/SIGTERM, waiting at most `shutdown_grace` for in-flight requests. Slow
//!   and silent clients are cut by the header and body timeouts; connections are capped.
//! - [`router`] builds every route around an [`AppState`], so tests call `oneshot` without a socket;
//!   [`AppState::from_pipeline`] wraps an already-loaded model.
//! - Generation runs on the library's engine thread ([`dsvl::engine::EngineHandle`], continuous
//!   batching); handlers only parse, validate, prepare the prompt, submit and map (STYLE §3.10).
//!
//! Modules: `openai` (wire types and their conversion), `media` (image URLs), `routes`
//! (handlers), `error` (OpenAI error bodies), `metrics`, `grounding` (the VL2 boxes extension
//! field), `preparing` (the bound on request preparation), `release` (memory after large
//! requests), `webui` (the built-in chat page at `/`).
//!
//! Sampling defaults follow OpenAI, not the reference CLI: `temperature` 1 and `top_p` 1 when
//! omitted, no top-k, a random seed. Send `"temperature": 0` for the reference's greedy output.

pub mod error;
pub mod extract;
pub mod grounding;
pub mod media;
pub mod metrics;
pub mod openai;
pub mod preparing;
pub mod release;
mod routes;
pub mod state;
pub mod webui;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use axum::Router;
use dsvl::engine::Pipeline;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, Semaphore};

pub use error::ApiError;
pub use routes::{router, CompletionBuilder, ReplyMeta, DEFAULT_MAX_TOKENS};
pub use state::{AppState, ServerConfig};

/// Binds `cfg.host:cfg.port` and serves until SIGINT or SIGTERM.
pub async fn serve(cfg: ServerConfig) -> anyhow::Result<()> {
    let addr = format!("{}:{}", cfg.host, cfg.port);
    let listener = TcpListener::bind(&addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    serve_on(listener, cfg, shutdown_signal()).await
}

/// [`serve`] on a bound listener, stopping when `shutdown` completes (tests pass their own).
/// Returns the load error if the model could not be loaded.
///
/// Connections are served by our own accept loop rather than `axum::serve`, for the limits a
/// public server needs: at most `max_connections` open (the others wait in the listen backlog),
/// a complete request header within `header_timeout` of opening or of the previous response
/// (hyper's header-read timer, which also ends idle keep-alive connections), and on shutdown no
/// new connections while those open finish, for at most `shutdown_grace`.
pub async fn serve_on(
    listener: TcpListener,
    mut cfg: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    if let Some(dir) = &cfg.allowed_local_media_path {
        cfg.allowed_local_media_path = Some(media::canonical_root(dir)?);
    }
    tracing::info!("listening on http://{}", listener.local_addr()?);
    let state = AppState::loading(&cfg);
    let (failed_tx, failed_rx) = oneshot::channel();
    tokio::spawn(load_in_background(state.clone(), cfg.clone(), failed_tx));

    let app = router(state);
    let connections = Arc::new(Semaphore::new(cfg.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(cfg.header_timeout)
        .keep_alive(true);
    let load_error = tokio::select! {
        () = shutdown => {
            tracing::info!("shutting down");
            None
        }
        Ok(e) = failed_rx => Some(e),
        () = accept_loop(&listener, &app, &http, &graceful, &connections) => None,
    };
    drop(listener);
    if tokio::time::timeout(cfg.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "requests still running after {:?}; stopping anyway",
            cfg.shutdown_grace
        );
    }
    match load_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Accepts connections for ever, each served on its own task while it holds a connection slot.
async fn accept_loop(
    listener: &TcpListener,
    app: &Router,
    http: &http1::Builder,
    graceful: &GracefulShutdown,
    connections: &Arc<Semaphore>,
) {
    loop {
        let Ok(slot) = connections.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: wait instead of spinning.
                tracing::warn!("cannot accept a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("connection closed: {e}");
            }
            drop(slot);
        });
    }
}

async fn load_in_background(
    state: AppState,
    cfg: ServerConfig,
    failed: oneshot::Sender<anyhow::Error>,
) {
    let loaded = tokio::task::spawn_blocking(move || {
        Pipeline::load(&cfg.model_dir, &cfg.load)
            .with_context(|| format!("while loading {}", cfg.model_dir.display()))
    })
    .await;
    let ready = loaded
        .unwrap_or_else(|e| Err(anyhow!("model loading panicked: {e}")))
        .and_then(|p| {
            state
                .set_ready(Arc::new(p))
                .context("cannot start the engine thread")
        });
    match ready {
        Ok(()) => tracing::info!("model loaded; ready for requests"),
        Err(e) => {
            tracing::error!("{e:#}");
            let _ = failed.send(e);
        }
    }
}

/// Ctrl-C, or SIGTERM on Unix.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!("cannot listen for Ctrl-C: {e}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
