//! The engine thread (STYLE §3.10): one dedicated OS thread owns generation and takes
//! [`GenerationRequest`]s from a bounded queue. Each request carries its own event channel;
//! when the receiver is dropped (client gone) the next token's send fails, so the request ends
//! and frees its slot and cache at that step.
//!
//! Continuous batching: up to `max_running` requests decode together, one batched forward
//! pass per step ([`Pipeline::decode_batch`]); between steps, waiting requests join (their
//! vision tower and prefill run then) and finished ones leave. A request's tokens are the same
//! as when it runs alone: the batched step does, row by row, the arithmetic of a single step.

use std::ops::ControlFlow;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::Instant;

use dsvl::engine::{
    Event, FeatureCache, FinishReason, GenerateParams, Outcome, Pipeline, PrefixCache, Prepared,
    Sequence,
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
        /// Prompt tokens taken from the prefix cache; `None` when it is off.
        cached_tokens: Option<usize>,
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
    /// Starts the engine thread with room for `max_queue` waiting requests, decoding up to
    /// `max_running` together.
    pub fn spawn(
        pipeline: Arc<Pipeline>,
        max_queue: usize,
        max_running: usize,
        image_cache_bytes: usize,
        prefix_cache_bytes: usize,
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
                let cache = FeatureCache::new(image_cache_bytes);
                let prefixes =
                    (prefix_cache_bytes > 0).then(|| PrefixCache::new(prefix_cache_bytes));
                Scheduler::new(&p, &m, cache, prefixes, max_running.max(1)).run(&jobs);
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

/// Prompt tokens prefilled between two decode steps while other requests are running (one
/// request is always admitted, whatever its length).
const PREFILL_TOKENS_PER_STEP: usize = 4096;

/// A request between its prefill and its last token.
struct Running<'p> {
    seq: Sequence<'p>,
    job: GenerationRequest,
    /// When the last token (or the request) was sent: the latency histograms.
    last: Instant,
    first: bool,
}

struct Scheduler<'p> {
    pipeline: &'p Pipeline,
    metrics: &'p Metrics,
    cache: FeatureCache,
    /// Finished requests' caches, continued by later requests that extend them (`None`: off).
    prefixes: Option<PrefixCache>,
    max_running: usize,
    running: Vec<Running<'p>>,
    /// Something ran since the engine was last idle.
    worked: bool,
}

impl<'p> Scheduler<'p> {
    fn new(
        pipeline: &'p Pipeline,
        metrics: &'p Metrics,
        cache: FeatureCache,
        prefixes: Option<PrefixCache>,
        max_running: usize,
    ) -> Self {
        Self {
            pipeline,
            metrics,
            cache,
            prefixes,
            max_running,
            running: Vec::with_capacity(max_running),
            worked: false,
        }
    }

    /// Until every request handle is gone and nothing runs: admit, sample, decode.
    fn run(mut self, jobs: &Receiver<GenerationRequest>) {
        loop {
            if !self.admit(jobs) {
                return;
            }
            self.step();
        }
    }

    /// Starts waiting requests while there is room: blocks for one when nothing runs. False
    /// when the queue is closed and nothing runs (the server is shutting down). While others
    /// are decoding, admission stops once [`PREFILL_TOKENS_PER_STEP`] prompt tokens were
    /// prefilled, so a burst of long prompts delays the running streams by a bounded time.
    fn admit(&mut self, jobs: &Receiver<GenerationRequest>) -> bool {
        let mut prefilled = 0;
        while self.running.len() < self.max_running {
            if prefilled >= PREFILL_TOKENS_PER_STEP && !self.running.is_empty() {
                return true;
            }
            let job = if self.running.is_empty() {
                if std::mem::take(&mut self.worked) {
                    // Idle: give back what the finished requests' activations and caches freed
                    // (glibc keeps freed memory in its arenas otherwise).
                    dsvl::memory::release_freed();
                }
                match jobs.recv() {
                    Ok(job) => job,
                    Err(_) => return false,
                }
            } else {
                match jobs.try_recv() {
                    Ok(job) => job,
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => return true,
                }
            };
            self.metrics.queue_depth.fetch_sub(1, Relaxed);
            prefilled += job.prepared.ids.len();
            self.start(job);
        }
        true
    }

    /// Vision tower and prefill of a new request; it joins the running set.
    fn start(&mut self, job: GenerationRequest) {
        if job.events.is_closed() {
            return; // the client left while queued
        }
        self.worked = true;
        self.metrics
            .images
            .fetch_add(job.prepared.n_images as u64, Relaxed);
        let (pipeline, cache) = (self.pipeline, &mut self.cache);
        let prefixes = self.prefixes.as_mut();
        let started = catch_unwind(AssertUnwindSafe(|| match prefixes {
            Some(prefixes) => {
                pipeline.start_with_prefixes(&job.prepared, &job.params, Some(cache), prefixes)
            }
            None => pipeline.start(&job.prepared, &job.params, Some(cache)),
        }));
        if let Some(prefixes) = &self.prefixes {
            self.metrics.prefix_cache_hits.store(prefixes.hits, Relaxed);
            self.metrics
                .prefix_cache_reused_tokens
                .store(prefixes.reused_tokens, Relaxed);
        }
        self.metrics
            .image_cache_hits
            .store(self.cache.hits, Relaxed);
        self.metrics
            .image_cache_misses
            .store(self.cache.misses, Relaxed);
        match started {
            Ok(Ok(seq)) => {
                self.metrics.running.fetch_add(1, Relaxed);
                self.running.push(Running {
                    seq,
                    last: job.enqueued,
                    job,
                    first: true,
                });
            }
            Ok(Err(e)) => {
                let _ = job.events.send(EngineEvent::Failed(e));
            }
            Err(_) => {
                let _ = job.events.send(EngineEvent::Failed(panicked()));
            }
        }
    }

    /// Samples and sends one token of every running request, ends the finished ones, then one
    /// batched decode step for the others.
    fn step(&mut self) {
        let (pipeline, metrics) = (self.pipeline, self.metrics);
        let mut next = Vec::with_capacity(self.running.len());
        let mut still = Vec::with_capacity(self.running.len());
        for mut r in self.running.drain(..) {
            let Running {
                seq,
                job,
                last,
                first,
            } = &mut r;
            let stepped = catch_unwind(AssertUnwindSafe(|| {
                seq.step(|ev| send_event(pipeline, metrics, job, ev, last, first))
            }));
            match stepped {
                Ok(Ok(Some(id))) => {
                    next.push(id);
                    still.push(r);
                }
                Ok(Ok(None)) => finish(pipeline, metrics, self.prefixes.as_mut(), r),
                Ok(Err(e)) => fail(metrics, r, e),
                Err(_) => fail(metrics, r, panicked()),
            }
        }
        if still.is_empty() {
            return;
        }
        let decoded = catch_unwind(AssertUnwindSafe(|| {
            let mut batch: Vec<(&mut Sequence<'p>, u32)> = still
                .iter_mut()
                .map(|r| &mut r.seq)
                .zip(next.iter().copied())
                .collect();
            pipeline.decode_batch(&mut batch)
        }));
        metrics.decode_steps.fetch_add(1, Relaxed);
        metrics.decode_rows.fetch_add(still.len() as u64, Relaxed);
        match decoded {
            Ok(Ok(())) => self.running = still,
            // One failure fails the whole step: no sequence's cache is known to be consistent.
            Ok(Err(e)) => {
                for r in still {
                    fail(metrics, r, clone_error(&e));
                }
            }
            Err(_) => {
                for r in still {
                    fail(metrics, r, panicked());
                }
            }
        }
    }
}

/// Sends one engine event to the request's client; `Break` when the client is gone.
fn send_event(
    pipeline: &Pipeline,
    metrics: &Metrics,
    job: &GenerationRequest,
    ev: &Event,
    last: &mut Instant,
    first: &mut bool,
) -> ControlFlow<()> {
    if let Event::Token(_) = ev {
        let now = Instant::now();
        let hist = if *first {
            &metrics.time_to_first_token
        } else {
            &metrics.time_per_output_token
        };
        hist.observe(now - *last);
        (*first, *last) = (false, now);
    }
    if job.events.send(to_engine_event(pipeline, ev)).is_err() {
        ControlFlow::Break(())
    } else {
        ControlFlow::Continue(())
    }
}

/// Releases the held-back text and reports the outcome.
/// Offers the request's cache to later ones when prefix caching is on (`prefixes`).
fn finish(
    pipeline: &Pipeline,
    metrics: &Metrics,
    prefixes: Option<&mut PrefixCache>,
    r: Running<'_>,
) {
    let Running { seq, job, .. } = r;
    metrics.running.fetch_sub(1, Relaxed);
    let events = &job.events;
    let caching = prefixes.is_some();
    let finished = catch_unwind(AssertUnwindSafe(|| {
        let on_event = |ev: &Event| {
            let _ = events.send(to_engine_event(pipeline, ev));
            ControlFlow::Continue(())
        };
        match prefixes {
            Some(prefixes) => seq.finish_into(on_event, prefixes),
            None => seq.finish(on_event),
        }
    }));
    let final_event = match finished {
        Ok(Ok(outcome)) => {
            let grounding = grounding(pipeline, &job, &outcome);
            done(metrics, &outcome, caching, grounding)
        }
        Ok(Err(e)) => EngineEvent::Failed(e),
        Err(_) => EngineEvent::Failed(panicked()),
    };
    let _ = job.events.send(final_event);
}

fn fail(metrics: &Metrics, r: Running<'_>, e: dsvl::Error) {
    metrics.running.fetch_sub(1, Relaxed);
    let _ = r.job.events.send(EngineEvent::Failed(e));
}

fn panicked() -> dsvl::Error {
    dsvl::Error::Unsupported {
        what: "this request".into(),
        hint: "the engine panicked while generating; see the server log".into(),
    }
}

/// The same failure for every request of a failed batch step (the error type is not `Clone`).
fn clone_error(e: &dsvl::Error) -> dsvl::Error {
    tracing::error!("batched decode step failed: {e}");
    dsvl::Error::Unsupported {
        what: "this request".into(),
        hint: format!("a batched decode step failed ({e}); see the server log"),
    }
}

fn done(
    metrics: &Metrics,
    o: &Outcome,
    caching: bool,
    grounding: Option<Grounding>,
) -> EngineEvent {
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
        cached_tokens: caching.then_some(o.reused_prompt_tokens),
        grounding: grounding.map(Box::new),
    }
}

/// Families with grounding markup (VL2) only: the answer's boxes (see [`outcome_grounding`]).
fn grounding(pipeline: &Pipeline, job: &GenerationRequest, o: &Outcome) -> Option<Grounding> {
    if !pipeline.config().supports_grounding() {
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
