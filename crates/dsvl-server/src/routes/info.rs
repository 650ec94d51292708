//! `/health`, `/ready`, `/v1/models`, `/v1/models/{id}`, `/metrics`.

use axum::extract::{Path, State};
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
    Ok(Json(json!({"object": "list", "data": [model_card(&s)?]})))
}

/// `GET /v1/models/{id}` (the OpenAI SDK's `models.retrieve`): the served model, 404 for any
/// other id. Ids may contain `/` (`--served-model-name deepseek-ai/deepseek-vl2-tiny`).
pub async fn model(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let card = model_card(&s)?;
    if id != s.model_name() {
        return Err(ApiError::not_found(format!(
            "model `{id}` (this server serves `{}`)",
            s.model_name()
        ))
        .with_code("model_not_found"));
    }
    Ok(Json(card))
}

fn model_card(s: &AppState) -> Result<Value, ApiError> {
    let config = s.engine()?.pipeline().config();
    // v1: every image is 576 tokens of one 384/1024 view; VL2: 421 untiled, more when tiled.
    let (image_tokens, image_size) = (config.tokens_per_image(), config.image_size());
    Ok(json!({
        "id": s.model_name(),
        "object": "model",
        "created": s.created(),
        "owned_by": "dsvl",
        "capabilities": ["completion", "multimodal"],
        "modalities": {"input": ["text", "image"], "output": ["text"]},
        "architecture": {"input_modalities": ["text", "image"], "output_modalities": ["text"]},
        "meta": {
            "family": config.family(),
            "context_length": config.context_length(),
            "image_tokens": image_tokens,
            "image_size": image_size,
            "max_images_per_request": s.limits().max_images_per_request,
        },
    }))
}

/// Prometheus text format.
pub async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics().render(),
    )
}
