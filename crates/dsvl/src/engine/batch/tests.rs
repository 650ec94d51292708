//! The engine loop with a fake backend: no model, no tensors; what it logs is what the loop did.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::runner::{Backend, Emit};
use super::*;
use crate::engine::FinishReason;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Did {
    /// Started a request with this many prompt tokens.
    Start(usize),
    /// One batched decode step over this many sequences.
    Decode(usize),
}

struct Fake {
    log: Arc<Mutex<Vec<Did>>>,
    /// When set, each start waits for a message (to hold the engine busy).
    gate: Option<Receiver<()>>,
    /// Decode steps wait for a message from `gate` too (to pace the engine).
    gate_decodes: bool,
}

struct FakeSeq {
    generated: usize,
    max: usize,
}

impl Backend for Fake {
    type Seq = FakeSeq;

    fn start(&mut self, r: &Request) -> Result<FakeSeq> {
        if let Some(gate) = &self.gate {
            let _ = gate.recv();
        }
        self.log
            .lock()
            .unwrap()
            .push(Did::Start(r.prepared.ids.len()));
        Ok(FakeSeq {
            generated: 0,
            max: r.params.sampling.max_new_tokens,
        })
    }

    fn sample(&mut self, seq: &mut FakeSeq, emit: &mut Emit<'_>) -> Result<Option<u32>> {
        seq.generated += 1;
        let token = EngineEvent::Token(TokenOut {
            text: "x".into(),
            token_text: "x".into(),
            logprob: None,
            top_logprobs: Vec::new(),
        });
        if emit(token).is_break() || seq.generated == seq.max {
            return Ok(None);
        }
        Ok(Some(seq.generated as u32))
    }

    fn decode(&mut self, batch: &mut [(&mut FakeSeq, u32)]) -> Result<()> {
        if let Some(gate) = self.gate.as_ref().filter(|_| self.gate_decodes) {
            let _ = gate.recv();
        }
        self.log.lock().unwrap().push(Did::Decode(batch.len()));
        Ok(())
    }

    fn finish(&mut self, seq: FakeSeq, r: &Request, _: &mut Emit<'_>) -> Result<EngineEvent> {
        Ok(EngineEvent::Done {
            finish_reason: FinishReason::Length,
            prompt_tokens: r.prepared.ids.len(),
            completion_tokens: seq.generated,
            cached_tokens: None,
            grounding: None,
        })
    }
}

fn request(prompt_tokens: usize, new_tokens: usize) -> Request {
    let mut params = GenerateParams::default();
    params.sampling.max_new_tokens = new_tokens;
    let prepared = Prepared {
        prompt: String::new(),
        ids: vec![7; prompt_tokens],
        images: Vec::new(),
        image_sizes: Vec::new(),
        image_tokens: Vec::new(),
        n_images: 0,
        preprocess_ms: 0.0,
    };
    Request::new(prepared, params)
}

struct Engine {
    queue: Queue,
    log: Arc<Mutex<Vec<Did>>>,
    gate: Sender<()>,
}

/// An engine on the fake backend whose starts each wait for `open()` (when `gated`).
fn engine(max_queue: usize, policy: Policy, gated: bool) -> Engine {
    engine_paced(max_queue, policy, gated, false)
}

/// [`engine`]; with `gate_decodes`, each decode step waits for `open()` too.
fn engine_paced(max_queue: usize, policy: Policy, gated: bool, gate_decodes: bool) -> Engine {
    let log = Arc::new(Mutex::new(Vec::new()));
    let (gate, opened) = channel();
    let fake = Fake {
        log: log.clone(),
        gate: gated.then_some(opened),
        gate_decodes,
    };
    let queue = Queue::spawn(
        max_queue,
        Arc::new(EngineStats::default()),
        move |jobs, stats| Runner::new(fake, stats, policy).run(jobs),
    )
    .expect("engine thread");
    Engine { queue, log, gate }
}

impl Engine {
    fn open(&self, starts: usize) {
        for _ in 0..starts {
            self.gate.send(()).expect("engine alive");
        }
    }
    fn log(&self) -> Vec<Did> {
        self.log.lock().unwrap().clone()
    }
}

/// Every event of one request, until `Done`.
fn drain(mut rx: UnboundedReceiver<EngineEvent>) -> (usize, EngineEvent) {
    let mut tokens = 0;
    while let Some(ev) = rx.blocking_recv() {
        match ev {
            EngineEvent::Token(_) => tokens += 1,
            EngineEvent::Tail(_) => {}
            last => return (tokens, last),
        }
    }
    panic!("the engine dropped the request without a last event");
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let t = std::time::Instant::now();
    while !done() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "timed out waiting: {what}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

const POLICY: Policy = Policy {
    max_running: 4,
    prefill_tokens_per_step: 4096,
};

#[test]
fn admission_under_the_token_budget_interleaves_decode_steps() {
    let e = engine(16, POLICY, true);
    // A stream (held at its start) and three long prompts queued behind it.
    let stream = e.queue.submit(request(10, 50)).expect("queued");
    let long: Vec<_> = (0..3)
        .map(|_| e.queue.submit(request(3000, 3)).expect("queued"))
        .collect();
    e.open(4);
    for rx in long {
        assert_eq!(drain(rx).0, 3);
    }
    assert_eq!(drain(stream).0, 50);
    let log = e.log();
    // Two long prompts fit the 4096-token budget (the second starts at 3000 < 4096), then a
    // decode step for the running sequences, then the third.
    let starts: Vec<usize> = log
        .iter()
        .enumerate()
        .filter(|(_, d)| **d == Did::Start(3000))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(starts.len(), 3, "{log:?}");
    assert_eq!(starts[1], starts[0] + 1, "{log:?}");
    assert!(
        log[starts[1]..starts[2]]
            .iter()
            .any(|d| matches!(d, Did::Decode(_))),
        "no decode step between the second and third long prompt: {log:?}"
    );
    assert!(
        log.contains(&Did::Decode(4)),
        "all four decoded together: {log:?}"
    );
}

#[test]
fn a_full_queue_refuses_and_frees_room_as_requests_start() {
    let e = engine(2, POLICY, true);
    // The first is taken by the engine thread (held at its start), two fill the queue.
    let first = e.queue.submit(request(5, 2)).expect("queued");
    wait_until("the engine takes the first", || {
        e.queue.stats.queue_depth.load(Relaxed) == 0
    });
    let queued: Vec<_> = (0..2)
        .map(|_| e.queue.submit(request(5, 2)).expect("room"))
        .collect();
    assert!(!e.queue.has_room());
    let refused = e.queue.submit(request(5, 2)).expect_err("full");
    assert!(
        matches!(refused, Error::QueueFull { capacity: 2 }),
        "{refused:?}"
    );
    e.open(3);
    for rx in std::iter::once(first).chain(queued) {
        assert!(matches!(drain(rx).1, EngineEvent::Done { .. }));
    }
    assert!(e.queue.has_room());
    assert_eq!(e.queue.stats.running.load(Relaxed), 0);
}

#[test]
fn a_request_whose_client_leaves_mid_stream_ends_and_frees_its_slot() {
    // Starts and decode steps each wait for a tick, so the order is fixed.
    let e = engine_paced(8, POLICY, true, true);
    let stays = e.queue.submit(request(5, 400)).expect("queued");
    let mut leaves = e.queue.submit(request(5, 400)).expect("queued");
    e.open(2);
    // Its first token (sampled before the first decode step), then it hangs up.
    assert!(matches!(
        leaves.blocking_recv(),
        Some(EngineEvent::Token(_))
    ));
    drop(leaves);
    e.open(1000);
    let (tokens, last) = drain(stays);
    assert_eq!(tokens, 400);
    assert!(matches!(
        last,
        EngineEvent::Done {
            completion_tokens: 400,
            ..
        }
    ));
    // One step together; at the next, its token cannot be sent: it ends, the other goes on
    // alone for its remaining 398 steps.
    let decodes: Vec<Did> = e
        .log()
        .into_iter()
        .filter(|d| matches!(d, Did::Decode(_)))
        .collect();
    assert_eq!(decodes[0], Did::Decode(2));
    assert_eq!(decodes[1..], vec![Did::Decode(1); 398][..]);
    wait_until("the slot is freed", || {
        e.queue.stats.running.load(Relaxed) == 0
    });
    // The one that left generated its sent token and the one that could not be sent.
    assert_eq!(e.queue.stats.generated_tokens.load(Relaxed), 402);
}

#[test]
fn a_request_whose_client_left_while_queued_never_starts() {
    let e = engine(8, POLICY, true);
    let running = e.queue.submit(request(5, 2)).expect("queued");
    wait_until("the engine takes the first", || {
        e.queue.stats.queue_depth.load(Relaxed) == 0
    });
    drop(e.queue.submit(request(777, 2)).expect("queued"));
    e.open(2);
    drain(running);
    let _ = e.queue.submit(request(6, 1)).map(drain).expect("queued");
    assert!(!e.log().contains(&Did::Start(777)), "{:?}", e.log());
}

#[test]
fn fairness_a_long_prompt_burst_does_not_starve_a_decoding_stream() {
    let e = engine(
        32,
        Policy {
            max_running: 16,
            prefill_tokens_per_step: 4096,
        },
        true,
    );
    let stream = e.queue.submit(request(10, 200)).expect("queued");
    let burst: Vec<_> = (0..8)
        .map(|_| e.queue.submit(request(3000, 2)).expect("queued"))
        .collect();
    e.open(9);
    for rx in burst {
        drain(rx);
    }
    drain(stream);
    // Between two decode steps, at most 4096 + one request's prompt tokens are prefilled: the
    // eight prompts start two by two over four rounds (the stream with the first two), each
    // round followed by a decode step.
    let log = e.log();
    let rounds = log
        .split(|d| matches!(d, Did::Decode(_)))
        .filter(|r| !r.is_empty());
    assert_eq!(rounds.count(), 4, "{log:?}");
    let mut prefilled = 0;
    for d in log {
        match d {
            Did::Start(n) => {
                prefilled += n;
                assert!(prefilled <= 4096 + 3000, "{:?}", e.log());
            }
            Did::Decode(_) => prefilled = 0,
        }
    }
}
