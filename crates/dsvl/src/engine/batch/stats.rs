//! What the batching engine counts, as atomics any thread can read while it runs (the server
//! exports them as Prometheus metrics; a batch job can print them).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Fixed-bucket histogram of durations.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Non-cumulative count per bucket; the last one is past every bound.
    counts: Vec<AtomicU64>,
    sum_us: AtomicU64,
}

impl Histogram {
    /// `bounds`: the buckets' upper limits in seconds, increasing.
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_us: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = self
            .bounds
            .iter()
            .position(|&b| s <= b)
            .unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(d.as_micros() as u64, Relaxed);
    }

    /// The buckets' upper limits in seconds.
    pub fn bounds(&self) -> &'static [f64] {
        self.bounds
    }

    /// Observations per bucket (not cumulative), one more than [`Histogram::bounds`].
    pub fn counts(&self) -> Vec<u64> {
        self.counts.iter().map(|c| c.load(Relaxed)).collect()
    }

    /// Sum of the observations, in seconds.
    pub fn sum_secs(&self) -> f64 {
        self.sum_us.load(Relaxed) as f64 / 1e6
    }
}

const TTFT_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
const TPOT_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5];

/// Counters and gauges of one engine.
#[derive(Debug)]
pub struct EngineStats {
    pub prompt_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
    pub images: AtomicU64,
    pub image_cache_hits: AtomicU64,
    pub image_cache_misses: AtomicU64,
    pub prefix_cache_hits: AtomicU64,
    pub prefix_cache_reused_tokens: AtomicU64,
    /// Requests submitted and not yet started.
    pub queue_depth: AtomicI64,
    /// Requests between their prefill and their last token.
    pub running: AtomicI64,
    /// Batched decode steps, and the sequences they carried (rows / steps = mean batch size).
    pub decode_steps: AtomicU64,
    pub decode_rows: AtomicU64,
    /// From submission to the first token.
    pub time_to_first_token: Histogram,
    /// Between two tokens of one request.
    pub time_per_output_token: Histogram,
}

impl Default for EngineStats {
    fn default() -> Self {
        Self {
            prompt_tokens: AtomicU64::new(0),
            generated_tokens: AtomicU64::new(0),
            images: AtomicU64::new(0),
            image_cache_hits: AtomicU64::new(0),
            image_cache_misses: AtomicU64::new(0),
            prefix_cache_hits: AtomicU64::new(0),
            prefix_cache_reused_tokens: AtomicU64::new(0),
            queue_depth: AtomicI64::new(0),
            running: AtomicI64::new(0),
            decode_steps: AtomicU64::new(0),
            decode_rows: AtomicU64::new(0),
            time_to_first_token: Histogram::new(TTFT_BUCKETS),
            time_per_output_token: Histogram::new(TPOT_BUCKETS),
        }
    }
}
