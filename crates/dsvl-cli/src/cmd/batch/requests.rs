//! Request files in the OpenAI Batch API input format: one JSON line per request,
//! `{"custom_id", "method": "POST", "url": "/v1/chat/completions", "body": {…}}`, the body a
//! chat completions request exactly as the server takes it (same validation, same errors).
//! Answers are written in OpenAI's batch output format, so a batch written for OpenAI runs here
//! unchanged and its results read the same way.

use std::path::Path;

use dsvl::engine::{ChatMessage, GenerateParams, ImageSource, Pipeline, Prepared};
use dsvl_server::media::{MediaPolicy, PdfPolicy};
use dsvl_server::openai::convert::{ChatPlan, ImageRef};
use dsvl_server::openai::request::ChatRequest;
use dsvl_server::{ApiError, CompletionBuilder, ReplyMeta, DEFAULT_MAX_TOKENS};
use serde_json::{json, Value};

use super::items::fnv1a;

/// Images one request may carry, as the server's default.
pub const MAX_IMAGES: usize = 8;

/// A request ready for the engine.
pub struct Ready {
    pub prepared: Prepared,
    pub params: GenerateParams,
    pub with_logprobs: bool,
}

/// How request files' images are read: data and `file://` URLs as the server reads them (any
/// local path: the user runs the batch on their own files), PDF file parts rendered with
/// `pdf`, web URLs refused.
pub fn media_policy(pdf: PdfPolicy) -> MediaPolicy {
    MediaPolicy {
        allowed_local_media_path: Some("/".into()),
        remote: None,
        pdf,
    }
}

/// Parses, validates and prepares one request line. `base`: the request file's folder, which
/// relative image paths are read from.
pub fn prepare(
    pipeline: &Pipeline,
    raw: &[u8],
    base: &Path,
    media: &MediaPolicy,
) -> Result<Ready, ApiError> {
    let line: Value = serde_json::from_slice(raw)
        .map_err(|e| ApiError::bad_request(format!("the line is not JSON ({e})")))?;
    if let Some(m) = line.get("method").filter(|m| m.as_str() != Some("POST")) {
        return Err(ApiError::invalid(
            "method",
            format!("method {m}: only \"POST\" is supported"),
        ));
    }
    match line.get("url").and_then(Value::as_str) {
        Some("/v1/chat/completions" | "/chat/completions") => {}
        other => {
            return Err(ApiError::invalid(
                "url",
                format!(
                    "url {}: only \"/v1/chat/completions\" is supported",
                    other.map_or("missing".to_string(), |u| format!("{u:?}"))
                ),
            ))
        }
    }
    let body = line
        .get("body")
        .filter(|b| b.is_object())
        .ok_or_else(|| ApiError::invalid("body", "no \"body\" object with the chat request"))?;
    // The same parser as the server's, for the same errors (each naming its JSON path).
    let req: ChatRequest = dsvl_server::extract::parse(body.to_string().as_bytes())?;
    let mut plan = ChatPlan::try_from_request(
        req,
        MAX_IMAGES,
        pipeline.config().image_marker(),
        &media.pdf,
    )?;
    if let Some(c) = &plan.params.sampling.constraint {
        let param = plan.constraint_param.clone().unwrap_or_default();
        pipeline
            .compile_constraint(c)
            .map_err(|e| ApiError::from_engine(e).with_param(param))?;
    }
    let messages = plan
        .turns
        .iter()
        .map(|t| {
            let images = t
                .images
                .iter()
                .map(|i| image(i, base, media))
                .collect::<Result<_, _>>()?;
            Ok(ChatMessage::new(t.role, t.text.clone()).with_images(images))
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    let prepared = pipeline
        .prepare_with(None, &messages, plan.max_tiles)
        .map_err(ApiError::from_engine)?;
    let n = prepared.ids.len();
    if let Some(r) = plan.max_tokens {
        pipeline.check_fits(n, r).map_err(ApiError::from_engine)?;
    }
    let left = pipeline.config().context_length().saturating_sub(n).max(1);
    plan.params.sampling.max_new_tokens = plan.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS.min(left));
    Ok(Ready {
        prepared,
        with_logprobs: plan.params.logprobs.is_some(),
        params: plan.params,
    })
}

/// An image part: a data URL, `file://` URL or PDF page as the server reads them, or a plain
/// path (relative to the request file's folder). Web URLs are not fetched.
fn image(img: &ImageRef, base: &Path, media: &MediaPolicy) -> Result<ImageSource, ApiError> {
    if img.pdf_page.is_some() {
        return media.load(img);
    }
    let url = img.url.trim();
    let scheme = url.split_once(':').map(|(s, _)| s.to_ascii_lowercase());
    match scheme.as_deref() {
        Some("data" | "file") => media.load(img),
        Some("http" | "https") => Err(ApiError::invalid(
            format!("{}.image_url.url", img.param),
            format!(
                "{}: dsvl batch does not download images; save it and give its path, or \
                 inline it as a data:image/...;base64,... URL",
                img.param
            ),
        )),
        _ => Ok(ImageSource::Path(base.join(url))),
    }
}

/// Waits for the answer and makes the output line (OpenAI's batch output format).
pub fn collect(
    custom_id: &str,
    model: &str,
    with_logprobs: bool,
    mut events: tokio::sync::mpsc::UnboundedReceiver<dsvl::EngineEvent>,
) -> (bool, Value) {
    let mut reply = CompletionBuilder::new(ReplyMeta::new(model), with_logprobs);
    while let Some(ev) = events.blocking_recv() {
        if let Some(done) = reply.push(ev) {
            return match done {
                Ok(completion) => {
                    let request_id = completion.id.clone();
                    let body = serde_json::to_value(&completion).unwrap_or(Value::Null);
                    (true, line(custom_id, 200, &request_id, body))
                }
                Err(e) => (false, failure(custom_id, &e)),
            };
        }
    }
    (
        false,
        failure(
            custom_id,
            &ApiError::internal("the engine stopped before answering"),
        ),
    )
}

/// A request that failed: its status and OpenAI error body as the server would answer.
pub fn failure(custom_id: &str, e: &ApiError) -> Value {
    line(custom_id, e.status.as_u16(), "", e.body())
}

fn line(custom_id: &str, status: u16, request_id: &str, body: Value) -> Value {
    json!({
        "id": format!("batch_req_{:016x}", fnv1a(custom_id)),
        "custom_id": custom_id,
        "response": {"status_code": status, "request_id": request_id, "body": body},
        "error": null,
    })
}
