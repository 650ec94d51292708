//! `/tokenize`, `/detokenize` and `/apply-template`: see the prompt the model would get
//! (llama.cpp's debug routes), as the library prepares it.
//! Images are only counted where the prompt depends on their number alone (v1); otherwise (VL2,
//! whose tiling sets each image's token count) they are loaded.

use axum::extract::State;
use axum::Json;
use dsvl::engine::{Pipeline, PromptText};
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::openai::convert::{conversation, template_messages, Turn};
use crate::openai::request::{
    ApplyTemplateRequest, DetokenizeRequest, TokenizeRequest, WireMessage,
};
use crate::routes::chat::{prepare, prepare_blocking, refuse_unfittable};
use crate::state::{AppState, Limits};

/// `{"content": "..."}` → the string's ids (BOS first, as the model sees it); `{"messages": [...]}`
/// → the whole rendered prompt's ids with image tokens expanded (its length is `prompt_tokens`).
pub async fn tokenize(
    State(s): State<AppState>,
    ApiJson(req): ApiJson<TokenizeRequest>,
) -> Result<Json<Value>, ApiError> {
    let pipeline = s.engine()?.pipeline();
    let tok = pipeline.tokenizer();
    let ids = match (req.content, &req.messages) {
        (Some(text), None) => {
            let turns = vec![Turn {
                role: dsvl::prompt::template::Role::User,
                text,
                images: Vec::new(),
            }];
            refuse_unfittable(pipeline, s.limits(), &turns)?;
            let _slot = s.preparing().enter().await?;
            let pipeline = pipeline.clone();
            prepare_blocking(turns, move |turns| {
                let tok = pipeline.tokenizer();
                tok.encode_prompt(&turns[0].text)
                    .map_err(ApiError::from_engine)
            })
            .await?
        }
        (None, Some(messages)) => {
            let turns = turns_for_prompt(&s, messages).await?;
            let _slot = s.preparing().enter().await?;
            let (pipeline, limits) = (pipeline.clone(), s.limits().clone());
            prepare_blocking(turns, move |turns| prompt_ids(&pipeline, &limits, turns)).await?
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

/// `{"tokens": [ids]}` → `{"content": "..."}`, special tokens kept unless
/// `"skip_special_tokens": true`. Ids the vocabulary does not have are a 400 naming their index.
pub async fn detokenize(
    State(s): State<AppState>,
    ApiJson(req): ApiJson<DetokenizeRequest>,
) -> Result<Json<Value>, ApiError> {
    let tok = s.engine()?.pipeline().tokenizer();
    if let Some(i) = req
        .tokens
        .iter()
        .position(|&id| tok.id_to_token(id).is_none())
    {
        return Err(ApiError::invalid(
            format!("tokens[{i}]"),
            format!(
                "token id {} is not in the model's vocabulary",
                req.tokens[i]
            ),
        ));
    }
    let content = tok
        .decode(&req.tokens, req.skip_special_tokens)
        .map_err(ApiError::from_engine)?;
    Ok(Json(json!({ "content": content })))
}

/// `{"messages": [...]}` → `{"prompt": "..."}`, the rendered template (placeholders not
/// expanded). VL2 prompts depend on the images' tilings, so their images are loaded.
pub async fn apply_template(
    State(s): State<AppState>,
    ApiJson(req): ApiJson<ApplyTemplateRequest>,
) -> Result<Json<Value>, ApiError> {
    let pipeline = s.engine()?.pipeline().clone();
    let turns = turns_for_prompt(&s, &req.messages).await?;
    let _slot = s.preparing().enter().await?;
    let limits = s.limits().clone();
    let prompt = prepare_blocking(turns, move |turns| prompt_text(&pipeline, &limits, turns))
        .await?
        .prompt;
    Ok(Json(json!({ "prompt": prompt })))
}

/// The conversation's turns; where the prompt depends on the images themselves (VL2), with
/// remote images fetched (otherwise images are only counted).
async fn turns_for_prompt(s: &AppState, messages: &[WireMessage]) -> Result<Vec<Turn>, ApiError> {
    let pipeline = s.engine()?.pipeline();
    let marker = pipeline.config().image_marker();
    let mut turns = conversation(
        messages,
        s.limits().max_images_per_request,
        marker,
        &s.limits().media.pdf,
    )?;
    refuse_unfittable(pipeline, s.limits(), &turns)?;
    if pipeline.config().prompt_reads_images() {
        s.limits().media.fetch_remote(&mut turns).await?;
    }
    Ok(turns)
}

fn prompt_ids(pipeline: &Pipeline, limits: &Limits, turns: &[Turn]) -> Result<Vec<u32>, ApiError> {
    Ok(prompt_text(pipeline, limits, turns)?.ids)
}

/// The prompt the model would get: from the images' count alone where the family allows it,
/// else from the full preparation (images loaded, tiled, and checked against the context).
fn prompt_text(
    pipeline: &Pipeline,
    limits: &Limits,
    turns: &[Turn],
) -> Result<PromptText, ApiError> {
    let counted = pipeline
        .prompt_from_counts(None, &template_messages(turns))
        .map_err(ApiError::from_engine)?;
    if let Some(prompt) = counted {
        return Ok(prompt);
    }
    let (prepared, _) = prepare(pipeline, turns, limits, Some(1), None)?;
    Ok(PromptText {
        prompt: prepared.prompt,
        ids: prepared.ids,
    })
}
