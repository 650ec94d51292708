//! `/health`, `/ready`, `/v1/models`, `/metrics`.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::state::AppState;

/// 200 once the model is loaded, 503 while it loads (llama.cpp convention).
pub async fn health(State(s): State<AppState>) -> Result<Json<Value>, ApiError> {
    s.engine()?;
    Ok(Json(json!({"status": "ok"})))
}

/// 200 when a request would be accepted now: model loaded and room in the queue.
pub async fn ready(State(s): State<AppState>) -> Result<Json<Value>, ApiError> {
    if !s.engine()?.has_room() {
        return Err(ApiError::overloaded(s.limits().max_queue));
    }
    Ok(Json(json!({"status": "ready"})))
}

/// The one served model; advertises image input like llama.cpp (`modalities`, `capabilities`).
pub async fn models(State(s): State<AppState>) -> Result<Json<Value>, ApiError> {
    let spec = s.engine()?.pipeline().spec();
    Ok(Json(json!({
        "object": "list",
        "data": [{
            "id": s.model_name(),
            "object": "model",
            "created": s.created(),
            "owned_by": "dsvl",
            "capabilities": ["completion", "multimodal"],
            "modalities": {"input": ["text", "image"], "output": ["text"]},
            "architecture": {"input_modalities": ["text", "image"], "output_modalities": ["text"]},
            "meta": {
                "context_length": spec.llm.max_position_embeddings,
                "image_tokens": spec.processor.num_image_tokens,
                "image_size": spec.processor.image_size,
                "max_images_per_request": s.limits().max_images_per_request,
            },
        }],
    })))
}

/// Prometheus text format.
pub async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics().render(),
    )
}
