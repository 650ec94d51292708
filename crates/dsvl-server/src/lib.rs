//! dsvl-server: an OpenAI-compatible HTTP server for DeepSeek-VL, on top of the `dsvl` engine.
//!
//! - [`serve`] binds, answers `/health` with 503 while the model loads on a blocking thread, then
//!   serves until SIGINT/SIGTERM, waiting at most `shutdown_grace` for in-flight requests.
//! - [`router`] builds every route around an [`AppState`], so tests call `oneshot` without a socket;
//!   [`AppState::from_pipeline`] wraps an already-loaded model.
//! - Generation runs on one engine thread fed by a bounded queue (`engine`); handlers only parse,
//!   validate, prepare the prompt, submit and map (STYLE §3.10).
//!
//! Modules: `openai` (wire types and their conversion), `media` (image URLs), `engine` (the
//! thread and its request type), `routes` (handlers), `error` (OpenAI error bodies), `metrics`,
//! `grounding` (the VL2 boxes extension field).
//!
//! Sampling defaults follow OpenAI, not the reference CLI: `temperature` 1 and `top_p` 1 when
//! omitted, no top-k, a random seed. Send `"temperature": 0` for the reference's greedy output.

pub mod engine;
pub mod error;
pub mod extract;
pub mod grounding;
pub mod media;
pub mod metrics;
pub mod openai;
mod routes;
pub mod state;

use std::future::{Future, IntoFuture};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, Context as _};
use dsvl::engine::{LoadOptions, Pipeline};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};

pub use error::ApiError;
pub use routes::router;
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

    let load_error = Arc::new(Mutex::new(None));
    let (begun_tx, mut begun_rx) = watch::channel(false);
    let trigger = {
        let load_error = load_error.clone();
        async move {
            tokio::select! {
                () = shutdown => tracing::info!("shutting down"),
                Ok(e) = failed_rx => {
                    if let Ok(mut slot) = load_error.lock() { *slot = Some(e) }
                }
            }
            let _ = begun_tx.send(true);
        }
    };
    let app = router(state);
    let mut server = tokio::spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(trigger)
            .into_future(),
    );
    let ended = tokio::select! {
        r = &mut server => Some(r),
        _ = begun_rx.changed() => None,
    };
    let result = match ended {
        Some(r) => r,
        None => match tokio::time::timeout(cfg.shutdown_grace, &mut server).await {
            Ok(r) => r,
            Err(_) => {
                tracing::warn!(
                    "requests still running after {:?}; stopping anyway",
                    cfg.shutdown_grace
                );
                server.abort();
                Ok(Ok(()))
            }
        },
    };
    if let Some(e) = load_error.lock().ok().and_then(|mut slot| slot.take()) {
        return Err(e);
    }
    result
        .context("server task failed")?
        .context("server failed")
}

async fn load_in_background(
    state: AppState,
    cfg: ServerConfig,
    failed: oneshot::Sender<anyhow::Error>,
) {
    let loaded = tokio::task::spawn_blocking(move || {
        let opts = LoadOptions {
            dtype: cfg.dtype,
            device: cfg.device.clone(),
            quant: cfg.quant,
            quant_lm_head: cfg.quant_lm_head,
            max_image_pixels: cfg.max_image_pixels,
            ..Default::default()
        };
        Pipeline::load(&cfg.model_dir, &opts)
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
