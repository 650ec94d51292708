//! `dsvl batch`: one prompt over many images, through the engine's continuous batching, into a
//! JSONL file that a restarted run resumes.
//!
//! - Items: image files, and folders searched recursively (sorted; image extensions only). An
//!   item's id is its path as found.
//! - `--shard I/N` keeps the items whose id hashes to I modulo N (FNV-1a: stable across runs and
//!   machines), so N processes share a job with no coordinator.
//! - Output: one JSON object per line, written whole with one write; a run killed at any point
//!   leaves at most one partial last line, which the next run drops before skipping the items
//!   already answered.
//! - Items whose image cannot be read are error lines; the run goes on and exits non-zero.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, sync_channel};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;
use dsvl::{ChatMessage, EngineConfig, EngineEvent, EngineHandle, ImageSource, Request, Role};
use serde_json::{json, Value};

use crate::args::{ModelArgs, SamplingArgs};

const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "webp", "gif", "bmp", "tif", "tiff"];

#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    dsvl batch --model DIR --prompt \"What is the total of this receipt?\" receipts/ --output totals.jsonl\n  \
    dsvl batch --model DIR --prompt \"Describe the image.\" a.jpg b.png --output out.jsonl --max-tokens 128\n  \
    dsvl batch --model DIR --prompt \"…\" scans/ --output part-3.jsonl --shard 3/8   # one of 8 machines\n\n\
    Each line of the output: {\"id\", \"source\", \"answer\", \"finish_reason\", \"prompt_tokens\", \
    \"completion_tokens\", \"elapsed_ms\", \"grounding\" (DeepSeek-VL2 boxes, when any)} or {\"id\", \"source\", \
    \"error\"}. Run the same command again to resume: items already in the output are skipped.")]
pub struct BatchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// The question asked about every image.
    #[arg(long)]
    pub prompt: String,
    /// Image files and folders (searched recursively for image files).
    #[arg(required = true, value_name = "INPUT")]
    pub inputs: Vec<PathBuf>,
    /// The JSONL file answers are appended to (created if missing; resumed if present).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Requests decoded together (continuous batching). At most 32.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=32))]
    pub max_running: u16,
    /// Process only shard I of N (0-based), chosen by a stable hash of each item's id.
    #[arg(long, value_name = "I/N", value_parser = parse_shard)]
    pub shard: Option<(u64, u64)>,
}

fn parse_shard(s: &str) -> Result<(u64, u64), String> {
    let (i, n) = s
        .split_once('/')
        .ok_or_else(|| format!("`{s}`: expected I/N, e.g. 0/4"))?;
    let (i, n): (u64, u64) = (
        i.trim()
            .parse()
            .map_err(|_| format!("`{i}` is not a number"))?,
        n.trim()
            .parse()
            .map_err(|_| format!("`{n}` is not a number"))?,
    );
    if n == 0 || i >= n {
        return Err(format!(
            "shard {i}/{n}: I must be below N (0-based), N at least 1"
        ));
    }
    Ok((i, n))
}

pub fn run(a: BatchArgs) -> anyhow::Result<()> {
    let mut items = collect_items(&a.inputs)?;
    if let Some((i, n)) = a.shard {
        items.retain(|p| fnv1a(&item_id(p)) % n == i);
    }
    let done = resume(&a.output)?;
    let total = items.len();
    items.retain(|p| !done.contains(&item_id(p)));
    eprintln!(
        "{total} item(s){}; {} already in {}, {} to do",
        a.shard
            .map(|(i, n)| format!(" in shard {i}/{n}"))
            .unwrap_or_default(),
        total - items.len(),
        a.output.display(),
        items.len()
    );
    if items.is_empty() {
        return Ok(());
    }

    let pipeline = Arc::new(super::load_pipeline(&a.model)?);
    let params = super::generate_params(&a.sampling, None)?;
    params.sampling.validate()?;
    // One compile up front: a bad schema or grammar fails the job, not every item.
    if let Some(c) = &params.sampling.constraint {
        pipeline.compile_constraint(c)?;
    }
    let max_running = usize::from(a.max_running);
    let mut cfg = EngineConfig::default();
    cfg.policy.max_running = max_running;
    cfg.max_queue = 2 * max_running;
    let engine = EngineHandle::spawn(pipeline.clone(), &cfg)?;

    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&a.output)
        .with_context(|| format!("cannot open {} for appending", a.output.display()))?;
    let (lines, written) = channel::<(bool, Value)>();
    let bar = progress_bar(items.len());
    let writer = {
        let bar = bar.clone();
        std::thread::spawn(move || write_lines(out, written, &bar))
    };

    // In flight (queued or running) at most the queue's capacity, so it never refuses: enough
    // for a full running set and as many waiting to join it.
    let (slot_back, slots) = sync_channel::<()>(cfg.max_queue);
    for _ in 0..cfg.max_queue {
        let _ = slot_back.send(());
    }
    let mut collectors = Vec::with_capacity(items.len());
    for path in items {
        slots.recv().context("the batch's collectors stopped")?;
        let (id, source) = (item_id(&path), path.display().to_string());
        let message = ChatMessage::new(Role::User, a.prompt.clone())
            .with_images(vec![ImageSource::Path(path)]);
        let started = Instant::now();
        let submitted = pipeline
            .prepare(a.sampling.system.as_deref(), &[message])
            .and_then(|prepared| engine.submit(Request::new(prepared, params.clone())));
        let events = match submitted {
            Ok(events) => events,
            Err(e) => {
                let _ = lines.send((false, error_line(&id, &source, &e.to_string())));
                let _ = slot_back.send(());
                continue;
            }
        };
        let (lines, slot_back) = (lines.clone(), slot_back.clone());
        collectors.push(std::thread::spawn(move || {
            let line = collect(&id, &source, events, started);
            let _ = lines.send(line);
            let _ = slot_back.send(());
        }));
    }
    for c in collectors {
        let _ = c.join();
    }
    drop(lines);
    let (ok, failed) = writer
        .join()
        .map_err(|_| anyhow::anyhow!("the output writer panicked"))??;
    bar.finish_and_clear();
    eprintln!(
        "{ok} answered, {failed} failed, written to {}",
        a.output.display()
    );
    if failed > 0 {
        bail!("{failed} item(s) failed; their lines in the output say why (run the same command again to retry them)");
    }
    Ok(())
}

/// Waits for one request's answer and makes its output line.
fn collect(
    id: &str,
    source: &str,
    mut events: tokio::sync::mpsc::UnboundedReceiver<EngineEvent>,
    started: Instant,
) -> (bool, Value) {
    let mut answer = String::new();
    while let Some(ev) = events.blocking_recv() {
        match ev {
            EngineEvent::Token(t) => answer.push_str(&t.text),
            EngineEvent::Tail(t) => answer.push_str(&t),
            EngineEvent::Failed(e) => return (false, error_line(id, source, &e.to_string())),
            EngineEvent::Done {
                finish_reason,
                prompt_tokens,
                completion_tokens,
                grounding,
                ..
            } => {
                let mut line = json!({
                    "id": id,
                    "source": source,
                    "answer": answer,
                    "finish_reason": finish_reason.as_str(),
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "elapsed_ms": started.elapsed().as_millis() as u64,
                });
                if let Some(g) = grounding {
                    line["grounding"] = serde_json::to_value(&*g).unwrap_or(Value::Null);
                }
                return (true, line);
            }
        }
    }
    (
        false,
        error_line(id, source, "the engine stopped before answering"),
    )
}

fn error_line(id: &str, source: &str, message: &str) -> Value {
    json!({"id": id, "source": source, "error": {"message": message}})
}

/// Appends each line whole (one write each, flushed); counts answered and failed items.
fn write_lines(
    mut out: File,
    lines: std::sync::mpsc::Receiver<(bool, Value)>,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<(usize, usize)> {
    let (mut ok, mut failed) = (0, 0);
    for (answered, line) in lines {
        let mut text = line.to_string();
        text.push('\n');
        out.write_all(text.as_bytes())
            .and_then(|()| out.flush())
            .context("cannot write to the output file")?;
        if answered {
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

/// The ids already answered in `output`. A partial last line (a run killed while writing it) is
/// cut off, and error lines are dropped (their items are tried again), so that every item ends
/// with exactly one line.
fn resume(output: &Path) -> anyhow::Result<HashSet<String>> {
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
        match (v["id"].as_str(), v.get("error")) {
            (Some(id), None) => {
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

/// Files as given; folders searched recursively, sorted, image extensions only.
fn collect_items(inputs: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut items = Vec::new();
    let mut seen = HashSet::new();
    for input in inputs {
        if input.is_dir() {
            let mut found = Vec::new();
            walk(input, &mut found)
                .with_context(|| format!("cannot list the folder {}", input.display()))?;
            found.sort();
            items.extend(found);
        } else {
            // A missing file is an item too: it becomes an error line, and the run goes on.
            items.push(input.clone());
        }
    }
    items.retain(|p| seen.insert(p.clone()));
    Ok(items)
}

fn walk(dir: &Path, found: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            walk(&path, found)?;
        } else if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        {
            found.push(path);
        }
    }
    Ok(())
}

fn item_id(path: &Path) -> String {
    path.display().to_string()
}

/// FNV-1a, 64 bits: the same on every machine and in every release (unlike std's hasher).
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A progress bar on a terminal; a hidden one otherwise.
fn progress_bar(len: usize) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len as u64);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{bar:30} {pos}/{len} items, {per_sec}, ETA {eta} {msg}",
    ) {
        bar.set_style(style);
    }
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_stable_disjoint_and_cover_the_job() {
        // Fixed values: the hash must never change, or resumed shards would take other items.
        assert_eq!(fnv1a(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a("a"), 0xaf63_dc4c_8601_ec8c);
        let ids: Vec<String> = (0..100).map(|i| format!("scans/page-{i:03}.png")).collect();
        let shards: Vec<Vec<&String>> = (0..4)
            .map(|s| ids.iter().filter(|id| fnv1a(id) % 4 == s).collect())
            .collect();
        assert_eq!(shards.iter().map(Vec::len).sum::<usize>(), 100);
        assert!(
            shards.iter().all(|s| s.len() > 10),
            "{:?}",
            shards.iter().map(Vec::len).collect::<Vec<_>>()
        );
    }

    #[test]
    fn shard_flags_are_checked() {
        assert_eq!(parse_shard("3/8"), Ok((3, 8)));
        assert!(parse_shard("8/8").is_err());
        assert!(parse_shard("1/0").is_err());
        assert!(parse_shard("two/4").is_err());
    }
}
