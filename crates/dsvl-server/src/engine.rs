//! The engine thread (STYLE §3.10): one dedicated OS thread owns generation and takes
//! [`GenerationRequest`]s from a bounded queue. Each request carries its own event channel;
//! when the receiver is dropped (client gone) the generate callback returns `Break`, so the slot
//! frees at the next token. Requests run one after another for now; a scheduler that batches
//! them only has to replace [`worker`], the request type already carries everything per request.

use std::ops::ControlFlow;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Instant;

use dsvl::config::ModelConfig;
use dsvl::engine::{
    Event, FeatureCache, FinishReason, GenerateParams, Outcome, Pipeline, Prepared,
};
use dsvl::grounding::Grounding;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use crate::error::ApiError;
use crate::grounding::outcome_grounding;
use crate::metrics::Metrics;

/// One queued generation.
pub struct GenerationRequest {
    pub prepared: Prepared,
    pub params: GenerateParams,
    events: UnboundedSender<EngineEvent>,
    enqueued: Instant,
}

/// One generated token, with its alternatives' text already decoded.
#[derive(Debug, Clone)]
pub struct TokenOut {
    /// Text that became final with this token (may be empty).
    pub text: String,
    pub token_text: String,
    pub logprob: Option<f32>,
    pub top_logprobs: Vec<(String, f32)>,
}

/// What a request's receiver gets, in order: tokens and text, then `Done` or `Failed`.
#[derive(Debug)]
pub enum EngineEvent {
    Token(TokenOut),
    /// Text released after the last token (held back by the UTF-8 window or stop matcher).
    Tail(String),
    Done {
        finish_reason: FinishReason,
        prompt_tokens: usize,
        completion_tokens: usize,
        /// VL2 answers with `<|det|>` markup: their boxes (see [`crate::grounding`]).
        grounding: Option<Box<Grounding>>,
    },
    Failed(dsvl::Error),
}

/// Cheap to clone; the engine thread stops when the last handle is dropped.
#[derive(Clone)]
pub struct EngineHandle {
    queue: SyncSender<GenerationRequest>,
    pipeline: Arc<Pipeline>,
    metrics: Arc<Metrics>,
    capacity: usize,
}

impl EngineHandle {
    /// Starts the engine thread with room for `max_queue` waiting requests.
    pub fn spawn(
        pipeline: Arc<Pipeline>,
        max_queue: usize,
        image_cache_bytes: usize,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Self> {
        let capacity = max_queue.max(1);
        let (queue, jobs) = sync_channel::<GenerationRequest>(capacity);
        let (p, m) = (pipeline.clone(), metrics.clone());
        std::thread::Builder::new()
            .name("dsvl-engine".into())
            .spawn(move || {
                // Owned by the engine thread: no lock. A conversation that resends its images
                // skips the vision tower for them.
                let mut cache = FeatureCache::new(image_cache_bytes);
                for job in jobs {
                    m.queue_depth.fetch_sub(1, Relaxed);
                    worker(&p, &m, &mut cache, job);
                }
            })?;
        Ok(Self {
            queue,
            pipeline,
            metrics,
            capacity,
        })
    }

    /// The model, for tokenizer-only work on request threads (the engine thread generates).
    pub fn pipeline(&self) -> &Arc<Pipeline> {
        &self.pipeline
    }

    /// True when the queue has room (a cheap check before preparing images).
    pub fn has_room(&self) -> bool {
        (self.metrics.queue_depth.load(Relaxed) as usize) < self.capacity
    }

    /// Queues a prepared prompt; 429 when the queue is full.
    pub fn submit(
        &self,
        prepared: Prepared,
        params: GenerateParams,
    ) -> Result<UnboundedReceiver<EngineEvent>, ApiError> {
        let (events, rx) = unbounded_channel();
        let req = GenerationRequest {
            prepared,
            params,
            events,
            enqueued: Instant::now(),
        };
        self.metrics.queue_depth.fetch_add(1, Relaxed);
        match self.queue.try_send(req) {
            Ok(()) => Ok(rx),
            Err(e) => {
                self.metrics.queue_depth.fetch_sub(1, Relaxed);
                Err(match e {
                    TrySendError::Full(_) => ApiError::overloaded(self.capacity),
                    TrySendError::Disconnected(_) => {
                        ApiError::unavailable("the engine has stopped")
                    }
                })
            }
        }
    }
}

/// Runs one request to completion, streaming its events.
fn worker(
    pipeline: &Pipeline,
    metrics: &Metrics,
    cache: &mut FeatureCache,
    job: GenerationRequest,
) {
    if job.events.is_closed() {
        return; // the client left while queued
    }
    metrics.running.fetch_add(1, Relaxed);
    metrics
        .images
        .fetch_add(job.prepared.n_images as u64, Relaxed);
    let mut last = job.enqueued;
    let mut first = true;
    let result = catch_unwind(AssertUnwindSafe(|| {
        pipeline.generate_cached(&job.prepared, &job.params, Some(&mut *cache), |ev| {
            if let Event::Token(_) = ev {
                let now = Instant::now();
                let hist = if first {
                    &metrics.time_to_first_token
                } else {
                    &metrics.time_per_output_token
                };
                hist.observe(now - last);
                (first, last) = (false, now);
            }
            let out = to_engine_event(pipeline, ev);
            if job.events.send(out).is_err() {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
    }));
    let final_event = match result {
        Ok(Ok(outcome)) => done(metrics, &outcome, grounding(pipeline, &job, &outcome)),
        Ok(Err(e)) => EngineEvent::Failed(e),
        Err(_) => EngineEvent::Failed(dsvl::Error::Unsupported {
            what: "this request".into(),
            hint: "the engine panicked while generating; see the server log".into(),
        }),
    };
    metrics.image_cache_hits.store(cache.hits, Relaxed);
    metrics.image_cache_misses.store(cache.misses, Relaxed);
    metrics.running.fetch_sub(1, Relaxed);
    let _ = job.events.send(final_event);
}

fn done(metrics: &Metrics, o: &Outcome, grounding: Option<Grounding>) -> EngineEvent {
    metrics
        .prompt_tokens
        .fetch_add(o.prompt_tokens as u64, Relaxed);
    metrics
        .generated_tokens
        .fetch_add(o.completion_tokens() as u64, Relaxed);
    EngineEvent::Done {
        finish_reason: o.finish_reason,
        prompt_tokens: o.prompt_tokens,
        completion_tokens: o.completion_tokens(),
        grounding: grounding.map(Box::new),
    }
}

/// VL2 only: the answer's boxes (see [`outcome_grounding`]).
fn grounding(pipeline: &Pipeline, job: &GenerationRequest, o: &Outcome) -> Option<Grounding> {
    if !matches!(pipeline.config(), ModelConfig::V2(_)) {
        return None;
    }
    outcome_grounding(
        pipeline.tokenizer(),
        &job.params,
        &job.prepared.image_sizes,
        o,
    )
}

fn to_engine_event(pipeline: &Pipeline, ev: &Event) -> EngineEvent {
    match ev {
        Event::Tail(s) => EngineEvent::Tail(s.clone()),
        Event::Token(t) => {
            let tok = pipeline.tokenizer();
            let top_logprobs = t
                .top_logprobs
                .iter()
                .map(|&(id, lp)| (tok.decode(&[id], false).unwrap_or_default(), lp))
                .collect();
            EngineEvent::Token(TokenOut {
                text: t.text.clone(),
                token_text: t.token_text.clone(),
                logprob: t.logprob,
                top_logprobs,
            })
        }
    }
}
