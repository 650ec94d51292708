//! Prometheus counters, gauges and histograms, kept with atomics and rendered as text for
//! `GET /metrics` (names follow vLLM's where one exists, prefixed `dsvl_`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

/// Fixed-bucket histogram of durations (seconds).
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Non-cumulative count per bucket; the last one is `+Inf`.
    counts: Vec<AtomicU64>,
    sum_us: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
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

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, c) in self.counts.iter().enumerate() {
            cumulative += c.load(Relaxed);
            let le = self
                .bounds
                .get(i)
                .map_or("+Inf".to_string(), |b| b.to_string());
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let sum = self.sum_us.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {cumulative}");
    }
}

const TTFT_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
const TPOT_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5];

/// Everything `/metrics` reports.
#[derive(Debug)]
pub struct Metrics {
    requests: Mutex<BTreeMap<u16, u64>>,
    pub prompt_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
    pub images: AtomicU64,
    pub image_cache_hits: AtomicU64,
    pub image_cache_misses: AtomicU64,
    pub prefix_cache_hits: AtomicU64,
    pub prefix_cache_reused_tokens: AtomicU64,
    pub queue_depth: AtomicI64,
    pub running: AtomicI64,
    /// Batched decode steps, and the sequences they carried (rows / steps = mean batch size).
    pub decode_steps: AtomicU64,
    pub decode_rows: AtomicU64,
    pub time_to_first_token: Histogram,
    pub time_per_output_token: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: Mutex::new(BTreeMap::new()),
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

impl Metrics {
    pub fn count_response(&self, status: u16) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry(status).or_default() += 1;
        }
    }

    /// The Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP dsvl_http_requests_total HTTP responses by status code.\n");
        out.push_str("# TYPE dsvl_http_requests_total counter\n");
        if let Ok(m) = self.requests.lock() {
            for (status, n) in m.iter() {
                let _ = writeln!(out, "dsvl_http_requests_total{{status=\"{status}\"}} {n}");
            }
        }
        let counters = [
            (
                "dsvl_prompt_tokens_total",
                "Prompt tokens processed (image tokens included).",
                &self.prompt_tokens,
            ),
            (
                "dsvl_generation_tokens_total",
                "Tokens generated.",
                &self.generated_tokens,
            ),
            (
                "dsvl_images_processed_total",
                "Images decoded and encoded.",
                &self.images,
            ),
            (
                "dsvl_image_cache_hits_total",
                "Images whose embeddings came from the image feature cache.",
                &self.image_cache_hits,
            ),
            (
                "dsvl_image_cache_misses_total",
                "Images that ran through the vision tower.",
                &self.image_cache_misses,
            ),
            (
                "dsvl_prefix_cache_hits_total",
                "Requests that continued a cached prefix (--prefix-cache-mb).",
                &self.prefix_cache_hits,
            ),
            (
                "dsvl_prefix_cache_reused_tokens_total",
                "Prompt tokens taken from the prefix cache instead of prefilled.",
                &self.prefix_cache_reused_tokens,
            ),
            (
                "dsvl_decode_steps_total",
                "Decode forward passes (each carries every running sequence).",
                &self.decode_steps,
            ),
            (
                "dsvl_decode_rows_total",
                "Sequence-steps decoded; divided by dsvl_decode_steps_total: the mean batch size.",
                &self.decode_rows,
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Relaxed)
            );
        }
        let gauges = [
            (
                "dsvl_queue_depth",
                "Requests waiting for the engine.",
                &self.queue_depth,
            ),
            (
                "dsvl_running_sequences",
                "Requests being generated.",
                &self.running,
            ),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}",
                v.load(Relaxed)
            );
        }
        self.time_to_first_token.render(
            &mut out,
            "dsvl_time_to_first_token_seconds",
            "From queueing to the first generated token.",
        );
        self.time_per_output_token.render(
            &mut out,
            "dsvl_time_per_output_token_seconds",
            "Time between consecutive generated tokens.",
        );
        out
    }
}
