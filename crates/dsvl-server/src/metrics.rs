//! Prometheus counters, gauges and histograms, kept with atomics and rendered as text for
//! `GET /metrics` (names follow vLLM's where one exists, prefixed `dsvl_`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};

use dsvl::engine::{EngineStats, Histogram};

/// Everything `/metrics` reports: HTTP responses by status, and the engine's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<u16, u64>>,
    /// Shared with the engine once the model is loaded (zeros until then).
    pub engine: Arc<EngineStats>,
}

/// A histogram in the Prometheus text format (cumulative buckets, sum, count).
fn render_histogram(h: &Histogram, out: &mut String, name: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    let mut cumulative = 0;
    for (i, c) in h.counts().into_iter().enumerate() {
        cumulative += c;
        let le = h
            .bounds()
            .get(i)
            .map_or("+Inf".to_string(), |b| b.to_string());
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
    }
    let _ = writeln!(
        out,
        "{name}_sum {}\n{name}_count {cumulative}",
        h.sum_secs()
    );
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
        let e = &*self.engine;
        let counters = [
            (
                "dsvl_prompt_tokens_total",
                "Prompt tokens processed (image tokens included).",
                &e.prompt_tokens,
            ),
            (
                "dsvl_generation_tokens_total",
                "Tokens generated.",
                &e.generated_tokens,
            ),
            (
                "dsvl_images_processed_total",
                "Images decoded and encoded.",
                &e.images,
            ),
            (
                "dsvl_image_cache_hits_total",
                "Images whose embeddings came from the image feature cache.",
                &e.image_cache_hits,
            ),
            (
                "dsvl_image_cache_misses_total",
                "Images that ran through the vision tower.",
                &e.image_cache_misses,
            ),
            (
                "dsvl_prefix_cache_hits_total",
                "Requests that continued a cached prefix (--prefix-cache-mb).",
                &e.prefix_cache_hits,
            ),
            (
                "dsvl_prefix_cache_reused_tokens_total",
                "Prompt tokens taken from the prefix cache instead of prefilled.",
                &e.prefix_cache_reused_tokens,
            ),
            (
                "dsvl_decode_steps_total",
                "Decode forward passes (each carries every running sequence).",
                &e.decode_steps,
            ),
            (
                "dsvl_decode_rows_total",
                "Sequence-steps decoded; divided by dsvl_decode_steps_total: the mean batch size.",
                &e.decode_rows,
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
                &e.queue_depth,
            ),
            (
                "dsvl_running_sequences",
                "Requests being generated.",
                &e.running,
            ),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}",
                v.load(Relaxed)
            );
        }
        render_histogram(
            &e.time_to_first_token,
            &mut out,
            "dsvl_time_to_first_token_seconds",
            "From queueing to the first generated token.",
        );
        render_histogram(
            &e.time_per_output_token,
            &mut out,
            "dsvl_time_per_output_token_seconds",
            "Time between consecutive generated tokens.",
        );
        out
    }
}
