//! Continuous batching: one engine thread owns generation and takes [`Request`]s from a bounded
//! queue; every client (the HTTP server, a batch job, a program) submits to an
//! [`EngineHandle`] and reads its request's [`EngineEvent`]s from the receiver it gets back.
//!
//! Up to `max_running` requests decode together, one batched forward pass per step
//! ([`crate::engine::Pipeline::decode_batch`]); between steps, waiting requests start (their
//! vision tower and prefill run then, within the [`Policy`]'s prompt-token budget) and finished
//! ones leave. A request's tokens are the same as when it runs alone: the batched step does, row
//! by row, the arithmetic of a single step. When a receiver is dropped (the client is gone) the
//! next event's send fails, and the request ends and frees its slot and cache at that step.
//!
//! ```no_run
//! # fn main() -> dsvl::Result<()> {
//! use std::sync::Arc;
//! use dsvl::{EngineConfig, EngineEvent, EngineHandle, LoadOptions, Pipeline, Request};
//! # let (dir, messages): (&std::path::Path, Vec<dsvl::ChatMessage>) = todo!();
//! let pipeline = Arc::new(Pipeline::load(dir, &LoadOptions::default())?);
//! let engine = EngineHandle::spawn(pipeline.clone(), &EngineConfig::default())?;
//! let request = Request::new(pipeline.prepare(None, &messages)?, Default::default());
//! let mut events = engine.submit(request)?;
//! while let Some(event) = events.blocking_recv() {
//!     if let EngineEvent::Token(t) = event { print!("{}", t.text) }
//! }
//! # Ok(()) }
//! ```

mod backend;
mod events;
mod policy;
mod runner;
mod stats;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use crate::engine::{GenerateParams, Pipeline, Prepared};
use crate::error::{Error, Result};
use backend::PipelineBackend;
use runner::{Job, Runner};

pub use events::{EngineEvent, TokenOut};
pub use policy::{Policy, DEFAULT_PREFILL_TOKENS_PER_STEP};
pub use stats::{EngineStats, Histogram};

/// One generation: a prepared prompt and how to sample it.
#[derive(Debug, Clone)]
pub struct Request {
    pub prepared: Prepared,
    pub params: GenerateParams,
}

impl Request {
    pub fn new(prepared: Prepared, params: GenerateParams) -> Self {
        Self { prepared, params }
    }
}

/// How an engine runs.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Requests waiting to start; past this, [`EngineHandle::submit`] refuses with
    /// [`Error::QueueFull`].
    pub max_queue: usize,
    /// Admission: sequences decoded together (at most [`crate::nn::rowmat::MAX_ROWS`], the
    /// largest batch that stays batch-invariant) and the prefill budget between steps.
    pub policy: Policy,
    /// Memory for cached image embeddings (a conversation resending an image skips the tower).
    pub image_cache_bytes: usize,
    /// Memory for the caches of finished requests, continued by later requests that extend the
    /// same conversation; 0 turns prefix caching off.
    pub prefix_cache_bytes: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_queue: 64,
            policy: Policy {
                max_running: 8,
                prefill_tokens_per_step: DEFAULT_PREFILL_TOKENS_PER_STEP,
            },
            image_cache_bytes: 512 << 20,
            prefix_cache_bytes: 0,
        }
    }
}

/// Cheap to clone; the engine thread stops once every handle is dropped and nothing runs.
#[derive(Clone)]
pub struct EngineHandle {
    queue: Queue,
    pipeline: Arc<Pipeline>,
}

impl EngineHandle {
    /// Starts the engine thread on `pipeline`.
    pub fn spawn(pipeline: Arc<Pipeline>, cfg: &EngineConfig) -> Result<Self> {
        Self::spawn_with_stats(pipeline, cfg, Arc::new(EngineStats::default()))
    }

    /// [`EngineHandle::spawn`], counting into `stats` (a server that exports them from before
    /// the model is loaded).
    pub fn spawn_with_stats(
        pipeline: Arc<Pipeline>,
        cfg: &EngineConfig,
        stats: Arc<EngineStats>,
    ) -> Result<Self> {
        let mut policy = cfg.policy;
        policy.max_running = policy.max_running.clamp(1, crate::nn::rowmat::MAX_ROWS);
        let (p, image_bytes, prefix_bytes) = (
            pipeline.clone(),
            cfg.image_cache_bytes,
            cfg.prefix_cache_bytes,
        );
        let queue = Queue::spawn(cfg.max_queue, stats, move |jobs, stats| {
            let backend = PipelineBackend::new(&p, image_bytes, prefix_bytes);
            Runner::new(backend, stats, policy).run(jobs);
        })?;
        Ok(Self { queue, pipeline })
    }

    /// The model, for tokenizer-only work on other threads (the engine thread generates).
    pub fn pipeline(&self) -> &Arc<Pipeline> {
        &self.pipeline
    }

    pub fn stats(&self) -> &Arc<EngineStats> {
        &self.queue.stats
    }

    /// The queue's capacity.
    pub fn capacity(&self) -> usize {
        self.queue.capacity
    }

    /// True when the queue has room (a cheap check before preparing images).
    pub fn has_room(&self) -> bool {
        self.queue.has_room()
    }

    /// Queues `request`; its events arrive on the returned receiver (`recv().await` in async
    /// code, `blocking_recv()` elsewhere). [`Error::QueueFull`] when the queue is full.
    pub fn submit(&self, request: Request) -> Result<UnboundedReceiver<EngineEvent>> {
        self.queue.submit(request)
    }
}

/// The engine thread's bounded queue and its counters, whatever the backend.
#[derive(Clone)]
struct Queue {
    jobs: SyncSender<Job>,
    stats: Arc<EngineStats>,
    capacity: usize,
}

impl Queue {
    fn spawn(
        max_queue: usize,
        stats: Arc<EngineStats>,
        body: impl FnOnce(&Receiver<Job>, &EngineStats) + Send + 'static,
    ) -> Result<Self> {
        let capacity = max_queue.max(1);
        let (jobs, rx) = sync_channel::<Job>(capacity);
        let s = stats.clone();
        std::thread::Builder::new()
            .name("dsvl-engine".into())
            .spawn(move || body(&rx, &s))
            .map_err(|e| Error::Unsupported {
                what: "starting the engine thread".into(),
                hint: format!("the system refused a new thread ({e})"),
            })?;
        Ok(Self {
            jobs,
            stats,
            capacity,
        })
    }

    fn has_room(&self) -> bool {
        (self.stats.queue_depth.load(Relaxed).max(0) as usize) < self.capacity
    }

    fn submit(&self, request: Request) -> Result<UnboundedReceiver<EngineEvent>> {
        let (events, rx) = unbounded_channel();
        let job = Job {
            request,
            events,
            enqueued: Instant::now(),
        };
        self.stats.queue_depth.fetch_add(1, Relaxed);
        match self.jobs.try_send(job) {
            Ok(()) => Ok(rx),
            Err(e) => {
                self.stats.queue_depth.fetch_sub(1, Relaxed);
                Err(match e {
                    TrySendError::Full(_) => Error::QueueFull {
                        capacity: self.capacity,
                    },
                    TrySendError::Disconnected(_) => Error::EngineStopped,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests;
