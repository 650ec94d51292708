//! The engine thread's loop: admit waiting requests under the [`Policy`], sample one token of
//! every running request, run one batched decode step for those that go on, repeat. The model
//! is behind [`Backend`], so the loop is tested with a fake one that has no tensors.

use std::ops::ControlFlow;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::Instant;

use tokio::sync::mpsc::UnboundedSender;

use super::events::EngineEvent;
use super::policy::Policy;
use super::stats::EngineStats;
use super::Request;
use crate::error::{Error, Result};

/// One queued request with where its events go.
pub(crate) struct Job {
    pub request: Request,
    pub events: UnboundedSender<EngineEvent>,
    pub enqueued: Instant,
}

/// Where an event goes; `Break` when the client is gone.
pub(crate) type Emit<'a> = dyn FnMut(EngineEvent) -> ControlFlow<()> + 'a;

/// What the loop needs from a model.
pub(crate) trait Backend {
    /// One request between its prefill and its last token.
    type Seq;
    /// Vision and prefill of a new request.
    fn start(&mut self, request: &Request) -> Result<Self::Seq>;
    /// Samples and emits the next token; `None` when the sequence has ended (EOS, stop string,
    /// length, or `emit` said the client is gone).
    fn sample(&mut self, seq: &mut Self::Seq, emit: &mut Emit<'_>) -> Result<Option<u32>>;
    /// One batched forward pass: each sequence's sampled token goes into its cache.
    fn decode(&mut self, batch: &mut [(&mut Self::Seq, u32)]) -> Result<()>;
    /// Releases held-back text and returns the final [`EngineEvent::Done`].
    fn finish(
        &mut self,
        seq: Self::Seq,
        request: &Request,
        emit: &mut Emit<'_>,
    ) -> Result<EngineEvent>;
    /// Publishes the backend's own counters (cache hits) into `stats`.
    fn report(&self, _stats: &EngineStats) {}
    /// Nothing runs: a moment to give memory back.
    fn idle(&mut self) {}
}

struct Running<S> {
    seq: S,
    job: Job,
    /// When the last token (or the request) was sent: the latency histograms.
    last: Instant,
    first: bool,
}

pub(crate) struct Runner<'s, B: Backend> {
    backend: B,
    stats: &'s EngineStats,
    policy: Policy,
    running: Vec<Running<B::Seq>>,
    /// Something ran since the engine was last idle.
    worked: bool,
}

impl<'s, B: Backend> Runner<'s, B> {
    pub fn new(backend: B, stats: &'s EngineStats, policy: Policy) -> Self {
        Self {
            backend,
            stats,
            policy,
            running: Vec::with_capacity(policy.max_running),
            worked: false,
        }
    }

    /// Until every handle is gone and nothing runs.
    pub fn run(mut self, jobs: &Receiver<Job>) {
        while self.admit(jobs) {
            self.step();
        }
    }

    /// Starts waiting requests while the policy allows: blocks for one when nothing runs.
    /// False when the queue is closed and nothing runs.
    fn admit(&mut self, jobs: &Receiver<Job>) -> bool {
        let mut prefilled = 0;
        while self.policy.may_start(self.running.len(), prefilled) {
            let job = if self.running.is_empty() {
                if std::mem::take(&mut self.worked) {
                    self.backend.idle();
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
            self.stats.queue_depth.fetch_sub(1, Relaxed);
            prefilled += job.request.prepared.ids.len();
            self.start(job);
        }
        true
    }

    fn start(&mut self, job: Job) {
        if job.events.is_closed() {
            return; // the client left while queued
        }
        self.worked = true;
        let stats = self.stats;
        stats
            .images
            .fetch_add(job.request.prepared.n_images as u64, Relaxed);
        let backend = &mut self.backend;
        let started = catch_unwind(AssertUnwindSafe(|| backend.start(&job.request)));
        self.backend.report(stats);
        match started {
            Ok(Ok(seq)) => {
                stats.running.fetch_add(1, Relaxed);
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
        let stats = self.stats;
        let mut next = Vec::with_capacity(self.running.len());
        let mut still = Vec::with_capacity(self.running.len());
        for mut r in std::mem::take(&mut self.running) {
            let backend = &mut self.backend;
            let Running {
                seq,
                job,
                last,
                first,
            } = &mut r;
            let sampled = catch_unwind(AssertUnwindSafe(|| {
                backend.sample(seq, &mut |ev| send_timed(stats, job, ev, last, first))
            }));
            match sampled {
                Ok(Ok(Some(id))) => {
                    next.push(id);
                    still.push(r);
                }
                Ok(Ok(None)) => self.finish(r),
                Ok(Err(e)) => fail(stats, r, e),
                Err(_) => fail(stats, r, panicked()),
            }
        }
        if still.is_empty() {
            return;
        }
        let backend = &mut self.backend;
        let decoded = catch_unwind(AssertUnwindSafe(|| {
            let mut batch: Vec<(&mut B::Seq, u32)> = still
                .iter_mut()
                .map(|r| &mut r.seq)
                .zip(next.iter().copied())
                .collect();
            backend.decode(&mut batch)
        }));
        stats.decode_steps.fetch_add(1, Relaxed);
        stats.decode_rows.fetch_add(still.len() as u64, Relaxed);
        match decoded {
            Ok(Ok(())) => self.running = still,
            // One failure fails the whole step: no sequence's cache is known to be consistent.
            Ok(Err(e)) => {
                tracing::error!("batched decode step failed: {e}");
                for r in still {
                    fail(stats, r, step_failed(&e));
                }
            }
            Err(_) => {
                for r in still {
                    fail(stats, r, panicked());
                }
            }
        }
    }

    fn finish(&mut self, r: Running<B::Seq>) {
        let Running { seq, job, .. } = r;
        let stats = self.stats;
        stats.running.fetch_sub(1, Relaxed);
        let backend = &mut self.backend;
        let events = &job.events;
        let finished = catch_unwind(AssertUnwindSafe(|| {
            backend.finish(seq, &job.request, &mut |ev| {
                let _ = events.send(ev);
                ControlFlow::Continue(())
            })
        }));
        self.backend.report(stats);
        let last = match finished {
            Ok(Ok(done)) => {
                if let EngineEvent::Done {
                    prompt_tokens,
                    completion_tokens,
                    ..
                } = &done
                {
                    stats
                        .prompt_tokens
                        .fetch_add(*prompt_tokens as u64, Relaxed);
                    stats
                        .generated_tokens
                        .fetch_add(*completion_tokens as u64, Relaxed);
                }
                done
            }
            Ok(Err(e)) => EngineEvent::Failed(e),
            Err(_) => EngineEvent::Failed(panicked()),
        };
        let _ = job.events.send(last);
    }
}

/// Sends one event, timing tokens into the latency histograms.
fn send_timed(
    stats: &EngineStats,
    job: &Job,
    ev: EngineEvent,
    last: &mut Instant,
    first: &mut bool,
) -> ControlFlow<()> {
    if let EngineEvent::Token(_) = ev {
        let now = Instant::now();
        let hist = if *first {
            &stats.time_to_first_token
        } else {
            &stats.time_per_output_token
        };
        hist.observe(now - *last);
        (*first, *last) = (false, now);
    }
    if job.events.send(ev).is_err() {
        ControlFlow::Break(())
    } else {
        ControlFlow::Continue(())
    }
}

fn fail<S>(stats: &EngineStats, r: Running<S>, e: Error) {
    stats.running.fetch_sub(1, Relaxed);
    let _ = r.job.events.send(EngineEvent::Failed(e));
}

fn panicked() -> Error {
    Error::Unsupported {
        what: "this request".into(),
        hint: "the engine panicked while generating; see the log".into(),
    }
}

/// The same failure for every request of a failed batch step (the error type is not `Clone`).
fn step_failed(e: &Error) -> Error {
    Error::Unsupported {
        what: "this request".into(),
        hint: format!("a batched decode step failed ({e}); see the log"),
    }
}
