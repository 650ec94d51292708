//! The HTTP surface: one file per group of routes, plus the auth and metrics middleware.

mod chat;
pub use chat::{CompletionBuilder, ReplyMeta, DEFAULT_MAX_TOKENS};
mod info;
mod prompt;
mod stream;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_LENGTH};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::error::ApiError;
use crate::release::RELEASE_AFTER_BYTES;
use crate::state::AppState;

/// Every route. `/health`, `/ready` and the web page (`/`, `/webui/*`, unless turned off) are
/// open; the others need the API key when one is set.
pub fn router(state: AppState) -> Router {
    let protected = Router::new()
        .route("/v1/models", get(info::models))
        .route("/v1/models/{*id}", get(info::model))
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/tokenize", post(prompt::tokenize))
        .route("/detokenize", post(prompt::detokenize))
        .route("/apply-template", post(prompt::apply_template))
        .route("/metrics", get(info::metrics))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_api_key,
        ));
    let open = Router::new()
        .route("/health", get(info::health))
        .route("/ready", get(info::ready));
    let open = if state.webui() {
        open.merge(crate::webui::routes())
    } else {
        open
    };
    open.merge(protected)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(state.limits().max_body_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), body_limits))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_responses,
        ))
        .with_state(state)
}

/// 413 from the `Content-Length` header alone, before any of the body is read (the body limit
/// itself only trips once that much has arrived). A large body's memory is given back to the
/// OS once its request is answered (see [`crate::release`]).
async fn body_limits(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let limit = s.limits().max_body_bytes;
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match declared {
        Some(n) if n > limit as u64 => ApiError::declared_too_large(n, limit).into_response(),
        Some(n) if n >= RELEASE_AFTER_BYTES => {
            let resp = next.run(req).await;
            s.releaser().request();
            resp
        }
        _ => next.run(req).await,
    }
}

async fn require_api_key(State(s): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(key) = &s.limits().api_key {
        let sent = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !sent.is_some_and(|sent| constant_time_eq(sent.trim().as_bytes(), key.as_bytes())) {
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(req).await
}

/// Compares without an early exit, so timing does not leak how much of the key matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn count_responses(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    s.metrics().count_response(resp.status().as_u16());
    resp
}

async fn not_found(req: Request) -> ApiError {
    ApiError::not_found(format!("route {} {}", req.method(), req.uri().path()))
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    /// Equal keys only: a shared prefix, a longer or shorter key, or one byte off (first or last,
    /// which an early-exit comparison would tell apart by time) all fail.
    #[test]
    fn api_key_comparison() {
        let key = b"sk-0123456789abcdef";
        assert!(constant_time_eq(key, key));
        assert!(!constant_time_eq(b"sk-0123456789abcdeF", key));
        assert!(!constant_time_eq(b"Xk-0123456789abcdef", key));
        assert!(!constant_time_eq(b"sk-0123456789abcde", key));
        assert!(!constant_time_eq(b"sk-0123456789abcdefg", key));
        assert!(!constant_time_eq(b"", key));
        assert!(constant_time_eq(b"", b""));
    }
}
