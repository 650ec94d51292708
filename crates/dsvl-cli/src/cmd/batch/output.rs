//! The output file: one JSON object per line, each written whole with one write, so a run killed
//! at any point leaves at most one partial last line, which the next run drops ([`resume`]).

use std::collections::HashSet;
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::mpsc::Receiver;
use std::time::Instant;

use anyhow::Context;
use serde_json::Value;

/// A finished item: its line, and whether it was answered.
pub struct Line {
    pub ok: bool,
    pub value: Value,
}

/// The item id a line answers: a request's `custom_id`, else `id`.
fn line_id(v: &Value) -> Option<&str> {
    v.get("custom_id")
        .and_then(Value::as_str)
        .or_else(|| v.get("id").and_then(Value::as_str))
}

/// Whether a line records a failure: an `error` that is not null, or (OpenAI's batch output
/// format) a response whose status is not 200.
fn failed(v: &Value) -> bool {
    v.get("error").is_some_and(|e| !e.is_null())
        || v.get("response")
            .and_then(|r| r.get("status_code"))
            .is_some_and(|s| s.as_u64() != Some(200))
}

/// The ids already answered in `output`. A partial last line (a run killed while writing it) is
/// cut off, and failure lines are dropped (their items are tried again), so that every item
/// ends with exactly one line.
pub fn resume(output: &Path) -> anyhow::Result<HashSet<String>> {
    let mut done = HashSet::new();
    let text = match std::fs::read(output) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(done),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", output.display())),
    };
    let whole = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if whole < text.len() {
        eprintln!(
            "{}: dropping a partial last line ({} bytes) left by an interrupted run",
            output.display(),
            text.len() - whole
        );
    }
    let mut kept = Vec::with_capacity(whole);
    let mut retried = 0;
    for (n, line) in text[..whole].split(|&b| b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        let v: Value = serde_json::from_slice(line).with_context(|| {
            format!(
                "{} line {}: not JSON; is this a dsvl batch output file?",
                output.display(),
                n + 1
            )
        })?;
        match line_id(&v) {
            Some(id) if !failed(&v) => {
                if done.insert(id.to_string()) {
                    kept.extend_from_slice(line);
                    kept.push(b'\n');
                }
            }
            _ => retried += 1,
        }
    }
    if kept.len() != text.len() {
        if retried > 0 {
            eprintln!("{retried} failed item(s) will be tried again");
        }
        // Written aside, then renamed over: a kill now leaves the old file or the new one.
        let tmp = output.with_extension("jsonl.resume");
        std::fs::write(&tmp, &kept)
            .and_then(|()| std::fs::rename(&tmp, output))
            .with_context(|| format!("cannot rewrite {}", output.display()))?;
    }
    Ok(done)
}

/// Appends each line whole (one write each, flushed); counts answered and failed items.
pub fn write_lines(
    mut out: File,
    lines: Receiver<Line>,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<(usize, usize)> {
    let (mut ok, mut failed) = (0, 0);
    for line in lines {
        let mut text = line.value.to_string();
        text.push('\n');
        out.write_all(text.as_bytes())
            .and_then(|()| out.flush())
            .context("cannot write to the output file")?;
        if line.ok {
            ok += 1;
        } else {
            failed += 1;
        }
        bar.inc(1);
        if failed > 0 {
            bar.set_message(format!("{failed} failed"));
        }
    }
    out.sync_data().ok();
    Ok((ok, failed))
}

/// A progress bar on a terminal (items done/total, items per minute, ETA, failures); a hidden
/// one otherwise.
pub fn progress_bar(len: usize) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len as u64);
    let started = Instant::now();
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{bar:30} {pos}/{len} items, {per_min} items/min, ETA {eta} {msg}",
    ) {
        bar.set_style(style.with_key(
            "per_min",
            move |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                let minutes = started.elapsed().as_secs_f64() / 60.0;
                let rate = if minutes > 0.0 {
                    s.pos() as f64 / minutes
                } else {
                    0.0
                };
                let _ = write!(w, "{rate:.1}");
            },
        ));
    }
    bar
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn failures_are_read_in_both_formats() {
        assert!(!failed(&json!({"id": "a", "answer": "x"})));
        assert!(failed(&json!({"id": "a", "error": {"message": "m"}})));
        let ok = json!({"id": "batch_req_1", "custom_id": "c", "response": {"status_code": 200}, "error": null});
        assert!(!failed(&ok));
        assert_eq!(line_id(&ok), Some("c"));
        assert!(failed(
            &json!({"custom_id": "c", "response": {"status_code": 400}, "error": null})
        ));
    }
}
