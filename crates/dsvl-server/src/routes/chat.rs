//! `POST /v1/chat/completions`: parse, validate, prepare (images + prompt, on a blocking thread),
//! submit to the engine, answer as JSON or as an SSE stream.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use dsvl::engine::{ChatMessage, EngineEvent, Pipeline, Prepared, Request};
use tokio::sync::mpsc::UnboundedReceiver;

use super::stream;
use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::openai::convert::{finish_reason, token_logprob, ChatPlan, Turn};
use crate::openai::request::ChatRequest;
use crate::openai::response::{AssistantMessage, ChatCompletion, Choice, Logprobs, Usage};
use crate::state::{AppState, Limits};

/// New tokens when the request gives no `max_tokens`: this many, or what the context has left.
pub const DEFAULT_MAX_TOKENS: usize = 2048;

pub async fn chat_completions(
    State(s): State<AppState>,
    ApiJson(req): ApiJson<ChatRequest>,
) -> Result<Response, ApiError> {
    let engine = s.engine()?.clone();
    if let Some(m) = req.model.as_deref() {
        if m != s.model_name() {
            return Err(ApiError::not_found(format!(
                "model `{m}`: this server serves `{}` (GET /v1/models lists it; \
                 `dsvl serve --served-model-name NAME` changes it)",
                s.model_name()
            ))
            .with_param("model")
            .with_code("model_not_found"));
        }
    }
    if !engine.has_room() {
        return Err(ApiError::overloaded(s.limits().max_queue));
    }
    let marker = engine.pipeline().config().image_marker().to_string();
    let mut plan = ChatPlan::try_from_request(
        req,
        s.limits().max_images_per_request,
        &marker,
        &s.limits().media.pdf,
    )?;
    if let Some(n) = plan
        .max_tiles
        .filter(|_| !engine.pipeline().config().tiles_images())
    {
        return Err(ApiError::invalid(
            "max_tiles",
            format!(
                "max_tiles = {n}: this model ({}) reads every image as one fixed-size view, \
                 with no tiles to cap; leave max_tiles out",
                engine.pipeline().config().family()
            ),
        ));
    }
    let mut turns = std::mem::take(&mut plan.turns);
    refuse_unfittable(engine.pipeline(), s.limits(), &turns)?;
    let _slot = s.preparing().enter().await?;
    s.limits().media.fetch_remote(&mut turns).await?;
    let (pipeline, limits, requested, max_tiles) = (
        engine.pipeline().clone(),
        s.limits().clone(),
        plan.max_tokens,
        plan.max_tiles,
    );
    let constraint = plan
        .params
        .sampling
        .constraint
        .clone()
        .zip(plan.constraint_param.clone());
    let (prepared, max_new) = prepare_blocking(turns, move |turns| {
        // A schema, regex or grammar that does not compile is a 400 before any image work.
        if let Some((c, param)) = &constraint {
            pipeline
                .compile_constraint(c)
                .map_err(|e| ApiError::from_engine(e).with_param(param.clone()))?;
        }
        prepare(&pipeline, turns, &limits, requested, max_tiles)
    })
    .await?;
    plan.params.sampling.max_new_tokens = max_new;
    let with_logprobs = plan.params.logprobs.is_some();
    let events = engine
        .submit(Request::new(prepared, plan.params))
        .map_err(ApiError::from_engine)?;
    let meta = ReplyMeta::new(s.model_name());
    Ok(if plan.stream {
        stream::sse(events, meta, plan.include_usage, with_logprobs).into_response()
    } else {
        Json(collect(events, meta, with_logprobs).await?).into_response()
    })
}

/// Refuses, for the cost of reading it, prompt text that cannot fit in the context (or the
/// server's `--max-prompt-tokens`), before any image is loaded or token counted.
pub(crate) fn refuse_unfittable(
    pipeline: &Pipeline,
    limits: &Limits,
    turns: &[Turn],
) -> Result<(), ApiError> {
    let text_bytes = turns.iter().map(|t| t.text.len()).sum();
    let room = pipeline.config().context_length().saturating_sub(1);
    let max = limits.max_prompt_tokens.map_or(room, |m| m.min(room));
    pipeline
        .check_prompt_bytes(text_bytes, max)
        .map_err(ApiError::from_engine)
}

/// Runs `work` on `turns` on a blocking thread (image decoding and tokenizing are CPU work).
pub(crate) async fn prepare_blocking<T: Send + 'static>(
    turns: Vec<Turn>,
    work: impl FnOnce(&[Turn]) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(move || work(&turns))
        .await
        .map_err(ApiError::internal)?
}

/// Loads the images, renders and checks the prompt; returns it with the new-token budget.
/// `max_tiles`: the request's tile cap (`None`: the server's).
pub(crate) fn prepare(
    pipeline: &Pipeline,
    turns: &[Turn],
    limits: &Limits,
    requested: Option<usize>,
    max_tiles: Option<usize>,
) -> Result<(Prepared, usize), ApiError> {
    let messages = turns
        .iter()
        .map(|t| {
            let images = t
                .images
                .iter()
                .map(|i| limits.media.load(i))
                .collect::<Result<_, _>>()?;
            Ok(ChatMessage::new(t.role, t.text.clone()).with_images(images))
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    let prepared = pipeline
        .prepare_with(None, &messages, max_tiles)
        .map_err(ApiError::from_engine)?;
    let n = prepared.ids.len();
    if let Some(max) = limits.max_prompt_tokens.filter(|&max| n > max) {
        return Err(ApiError::invalid(
            "messages",
            format!(
                "the prompt has {n} tokens (images included), over the server's limit of {max}"
            ),
        )
        .with_code("context_length_exceeded"));
    }
    if let Some(r) = requested {
        pipeline.check_fits(n, r).map_err(ApiError::from_engine)?;
    }
    // `prepare` checked that n + 1 fits, so the remaining context is at least 1.
    let left = pipeline.config().context_length().saturating_sub(n).max(1);
    Ok((prepared, requested.unwrap_or(DEFAULT_MAX_TOKENS.min(left))))
}

/// What every response of one request shares.
pub struct ReplyMeta {
    pub id: String,
    pub created: u64,
    pub model: String,
}

impl ReplyMeta {
    pub fn new(model: &str) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Self {
            id: format!("chatcmpl-{created:x}{:06x}", NEXT.fetch_add(1, Relaxed)),
            created,
            model: model.to_string(),
        }
    }
}

/// Waits for the whole answer (non-streaming).
async fn collect(
    mut events: UnboundedReceiver<EngineEvent>,
    meta: ReplyMeta,
    with_logprobs: bool,
) -> Result<ChatCompletion, ApiError> {
    let mut reply = CompletionBuilder::new(meta, with_logprobs);
    while let Some(ev) = events.recv().await {
        if let Some(done) = reply.push(ev) {
            return done;
        }
    }
    Err(ApiError::internal(
        "the engine dropped a request without finishing it",
    ))
}

/// A non-streaming completion built from the engine's events, one at a time: the server's
/// reader and `dsvl batch`'s (which waits on a thread, not a task) share it.
pub struct CompletionBuilder {
    meta: Option<ReplyMeta>,
    content: String,
    logprobs: Logprobs,
    with_logprobs: bool,
}

impl CompletionBuilder {
    pub fn new(meta: ReplyMeta, with_logprobs: bool) -> Self {
        Self {
            meta: Some(meta),
            content: String::new(),
            logprobs: Logprobs::default(),
            with_logprobs,
        }
    }

    /// Takes the next event; the completion (or the request's failure) once the answer is over.
    pub fn push(&mut self, ev: EngineEvent) -> Option<Result<ChatCompletion, ApiError>> {
        match ev {
            EngineEvent::Token(t) => {
                self.content.push_str(&t.text);
                if self.with_logprobs {
                    self.logprobs.content.push(token_logprob(&t));
                }
                None
            }
            EngineEvent::Tail(text) => {
                self.content.push_str(&text);
                None
            }
            EngineEvent::Failed(e) => Some(Err(ApiError::from_engine(e))),
            EngineEvent::Done {
                finish_reason: f,
                prompt_tokens,
                completion_tokens,
                cached_tokens,
                grounding,
            } => {
                let meta = self.meta.take()?;
                Some(Ok(ChatCompletion {
                    id: meta.id,
                    object: "chat.completion",
                    created: meta.created,
                    model: meta.model,
                    choices: vec![Choice {
                        index: 0,
                        message: AssistantMessage {
                            role: "assistant",
                            content: std::mem::take(&mut self.content),
                            grounding,
                        },
                        finish_reason: finish_reason(f),
                        logprobs: self
                            .with_logprobs
                            .then(|| std::mem::take(&mut self.logprobs)),
                    }],
                    usage: Usage::new(prompt_tokens, completion_tokens, cached_tokens),
                }))
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::grounding::answer_grounding;
    use dsvl::engine::FinishReason;
    use dsvl::engine::TokenOut;
    use tokio::sync::mpsc::unbounded_channel;

    /// Engine events of a VL2 answer with grounding markup, as the worker sends them.
    pub(crate) fn grounded_answer(pieces: &[&str]) -> Vec<EngineEvent> {
        let raw: String = pieces.concat();
        let mut events: Vec<EngineEvent> = pieces
            .iter()
            .map(|p| {
                EngineEvent::Token(TokenOut {
                    text: p.to_string(),
                    token_text: p.to_string(),
                    logprob: None,
                    top_logprobs: Vec::new(),
                })
            })
            .collect();
        events.push(EngineEvent::Done {
            finish_reason: FinishReason::Stop,
            prompt_tokens: 7,
            completion_tokens: pieces.len(),
            cached_tokens: None,
            grounding: answer_grounding(&raw, &[(640, 480), (300, 900)]).map(Box::new),
        });
        events
    }

    pub(crate) const PIECES: [&str; 5] = [
        "<|ref|>",
        "the red window",
        "<|/ref|>",
        "<|det|>[[120, 40, 610, 580]]",
        "<|/det|>",
    ];

    #[tokio::test]
    async fn non_streaming_answer_carries_the_grounding_extension() {
        let (tx, rx) = unbounded_channel();
        for ev in grounded_answer(&PIECES) {
            tx.send(ev).expect("open");
        }
        let reply = collect(rx, ReplyMeta::new("m"), false).await.expect("done");
        let j = serde_json::to_value(&reply).expect("serializes");
        let message = &j["choices"][0]["message"];
        assert_eq!(message["content"], PIECES.concat());
        assert_eq!(
            message["grounding"],
            serde_json::json!({
                "objects": [{"label": "the red window",
                             "boxes": [{"normalized": [120, 40, 610, 580], "pixels": [36, 36, 183, 522]}]}],
                "problems": [],
                "plain_text": "the red window",
                "image_size": [300, 900],
            })
        );
        assert_eq!(j["choices"][0]["finish_reason"], "stop");
    }

    #[tokio::test]
    async fn answers_without_boxes_have_no_grounding_key() {
        let (tx, rx) = unbounded_channel();
        for ev in grounded_answer(&["plain ", "text"]) {
            tx.send(ev).expect("open");
        }
        let reply = collect(rx, ReplyMeta::new("m"), false).await.expect("done");
        let j = serde_json::to_value(&reply).expect("serializes");
        assert!(j["choices"][0]["message"].get("grounding").is_none(), "{j}");
    }
}
