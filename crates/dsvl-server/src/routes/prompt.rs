//! `/tokenize` and `/apply-template`: see the prompt the model would get (llama.cpp's debug routes).
//! Images are counted, not loaded.

use axum::extract::State;
use axum::Json;
use dsvl::engine::Pipeline;
use dsvl::prompt::expand::expand_prompt;
use dsvl::prompt::template::{render, DEFAULT_SYSTEM_PROMPT};
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::openai::convert::{conversation, template_messages};
use crate::openai::request::{ApplyTemplateRequest, TokenizeRequest, WireMessage};
use crate::state::AppState;

/// `{"content": "..."}` → the string's ids (BOS first, as the model sees it); `{"messages": [...]}`
/// → the whole rendered prompt's ids with image tokens expanded (its length is `prompt_tokens`).
pub async fn tokenize(
    State(s): State<AppState>,
    ApiJson(req): ApiJson<TokenizeRequest>,
) -> Result<Json<Value>, ApiError> {
    let pipeline = s.engine()?.pipeline();
    let tok = pipeline.tokenizer();
    let ids = match (&req.content, &req.messages) {
        (Some(text), None) => tok.encode_prompt(text).map_err(ApiError::from_engine)?,
        (None, Some(messages)) => {
            prompt_ids(pipeline, messages, s.limits().max_images_per_request)?
        }
        _ => {
            return Err(ApiError::bad_request(
                "send either \"content\" or \"messages\"",
            ))
        }
    };
    if !req.with_pieces {
        return Ok(Json(json!({ "tokens": ids })));
    }
    let pieces: Vec<Value> = ids
        .iter()
        .map(|&id| json!({"id": id, "piece": tok.id_to_token(id).unwrap_or_default()}))
        .collect();
    Ok(Json(json!({ "tokens": pieces })))
}

/// `{"messages": [...]}` → `{"prompt": "..."}`, the rendered template (placeholders not expanded).
pub async fn apply_template(
    State(s): State<AppState>,
    ApiJson(req): ApiJson<ApplyTemplateRequest>,
) -> Result<Json<Value>, ApiError> {
    s.engine()?;
    let turns = conversation(&req.messages, s.limits().max_images_per_request)?;
    let prompt =
        render(DEFAULT_SYSTEM_PROMPT, &template_messages(&turns)).map_err(ApiError::from_engine)?;
    Ok(Json(json!({ "prompt": prompt })))
}

fn prompt_ids(
    pipeline: &Pipeline,
    messages: &[WireMessage],
    max_images: usize,
) -> Result<Vec<u32>, ApiError> {
    let turns = conversation(messages, max_images)?;
    let n_images = turns.iter().map(|t| t.images.len()).sum();
    let prompt =
        render(DEFAULT_SYSTEM_PROMPT, &template_messages(&turns)).map_err(ApiError::from_engine)?;
    let tok = pipeline.tokenizer();
    let ids = tok.encode_prompt(&prompt).map_err(ApiError::from_engine)?;
    let p = &pipeline.spec().processor;
    let expanded = expand_prompt(
        &ids,
        tok.image_id(),
        p.num_image_tokens,
        n_images,
        &p.image_tag,
    )
    .map_err(ApiError::from_engine)?;
    Ok(expanded.ids)
}
