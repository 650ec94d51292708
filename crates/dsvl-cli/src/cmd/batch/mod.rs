//! `dsvl batch`: many items through the engine's continuous batching, into a JSONL file that a
//! restarted run resumes.
//!
//! - Items ([`items`]): image files; folders searched recursively (sorted; image extensions, or
//!   `--glob`); request files in the OpenAI Batch API input format ([`requests`]), one item per
//!   line. An item's id is its path as found, or its request's `custom_id`.
//! - `--shard I/N` keeps the items whose id hashes to I modulo N (FNV-1a: stable across runs and
//!   machines), so N processes share a job with no coordinator.
//! - Output ([`output`]): one JSON object per line, written whole with one write; a run killed at
//!   any point leaves at most one partial last line, which the next run drops before skipping the
//!   items already answered.
//! - Items that fail (unreadable image, invalid request) are error lines; the run goes on and
//!   exits non-zero.
//! - While the engine runs the model, the next items' images are decoded and preprocessed on this
//!   thread, up to the engine queue's capacity ahead.

mod items;
mod output;
mod requests;

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, sync_channel};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;
use dsvl::{
    ChatMessage, EngineConfig, EngineEvent, EngineHandle, ImageSource, Pipeline, Request, Role,
};
use serde_json::{json, Value};

use crate::args::{ModelArgs, SamplingArgs};
use items::{Item, Work};
use output::Line;

#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    dsvl batch --model DIR --prompt \"What is the total of this receipt?\" receipts/ --output totals.jsonl\n  \
    dsvl batch --model DIR --prompt \"Describe the image.\" a.jpg b.png --output out.jsonl --max-tokens 128\n  \
    dsvl batch --model DIR --prompt \"Extract the fields.\" --json-schema receipt.schema.json scans/ --glob '**/*.jpg' -o receipts.jsonl\n  \
    dsvl batch --model DIR requests.jsonl --output results.jsonl   # OpenAI Batch API files, unchanged\n  \
    dsvl batch --model DIR --prompt \"…\" scans/ --output part-3.jsonl --shard 3/8   # one of 8 machines\n\n\
    Each line of the output, for images: {\"id\", \"source\", \"answer\", \"json\" (with --json-schema or --json: \
    the answer parsed), \"finish_reason\", \"prompt_tokens\", \"image_tokens\", \"completion_tokens\", \"elapsed_ms\", \
    \"grounding\" (DeepSeek-VL2 boxes, when any)} or {\"id\", \"source\", \"error\"}. For request files: OpenAI's \
    batch output format, {\"id\", \"custom_id\", \"response\": {\"status_code\", \"request_id\", \"body\"}, \"error\"}, \
    each body exactly what `dsvl serve` answers to that request (its sampling settings, not this command's). \
    Run the same command again to resume: items already in the output are skipped, failed ones retried.")]
pub struct BatchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// The question asked about every image (not with request files, which carry their own).
    #[arg(long)]
    pub prompt: Option<String>,
    /// Image files, folders (searched recursively), and request files (`.jsonl`, the OpenAI
    /// Batch API input format: one `{"custom_id", "method", "url", "body"}` per line).
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
    /// In folders, take the files matching this pattern (relative to the folder; `*` stays in
    /// one folder, `**` crosses them; case-insensitive), instead of every image. Repeatable:
    /// `--glob '**/*.jpg' --glob '**/*.png'`.
    #[arg(long, value_name = "PATTERN")]
    pub glob: Vec<String>,
    /// PDFs: only these pages of each document, as 1-based numbers and ranges (`1-3,7`, `5-`).
    /// Default: every page.
    #[arg(long, value_name = "RANGES", help_heading = "PDFs")]
    pub pages: Option<String>,
    /// PDFs: render pages at this resolution (dots per inch; an A4 page at 144 dpi is
    /// 1191x1684 pixels).
    #[arg(
        long,
        visible_alias = "pdf-dpi",
        default_value_t = 144.0,
        help_heading = "PDFs"
    )]
    pub dpi: f32,
    /// PDFs: refuse (as an error line) documents with more pages than this.
    #[arg(long, default_value_t = dsvl::pdf::PdfLimits::default().max_pages, help_heading = "PDFs")]
    pub max_pdf_pages: usize,
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
    anyhow::ensure!(
        a.dpi.is_finite() && a.dpi >= 1.0 && a.dpi <= 1200.0,
        "--dpi {}: expected 1 to 1200 (144 reads small print well)",
        a.dpi
    );
    let filter = items::Filter::new(&a.glob)?;
    let pdf = items::PdfSelection {
        pages: a.pages.clone(),
        limits: dsvl::pdf::PdfLimits {
            max_pages: a.max_pdf_pages,
            max_page_pixels: a.model.max_image_pixels,
            ..Default::default()
        },
    };
    let mut todo = items::collect(&a.inputs, &filter, &pdf)?;
    let requests = todo
        .iter()
        .filter(|i| matches!(i.work, Work::Request { .. }))
        .count();
    let kind = match (requests, todo.len() - requests) {
        (0, _) => Kind::Images,
        (_, 0) => Kind::Requests,
        _ => bail!(
            "request files (.jsonl) cannot be mixed with images in one batch: their outputs \
             have different formats; run them as two batches"
        ),
    };
    let prompt = match (kind, &a.prompt) {
        (Kind::Images, Some(p)) => p.clone(),
        (Kind::Images, None) => bail!("--prompt is needed: the question asked about every image"),
        (Kind::Requests, Some(_)) => {
            bail!("--prompt does not apply to request files: each request carries its own messages")
        }
        (Kind::Requests, None) => String::new(),
    };
    if let Some((i, n)) = a.shard {
        todo.retain(|item| items::fnv1a(&item.id) % n == i);
    }
    let done = output::resume(&a.output)?;
    let total = todo.len();
    todo.retain(|item| !done.contains(&item.id));
    eprintln!(
        "{total} item(s){}; {} already in {}, {} to do",
        a.shard
            .map(|(i, n)| format!(" in shard {i}/{n}"))
            .unwrap_or_default(),
        total - todo.len(),
        a.output.display(),
        todo.len()
    );
    if todo.is_empty() {
        return Ok(());
    }

    let pipeline = Arc::new(super::load_pipeline(&a.model)?);
    let params = super::generate_params(&a.sampling, None)?;
    params.sampling.validate()?;
    // One compile up front: a bad schema or grammar fails the job, not every item.
    if let Some(c) = &params.sampling.constraint {
        pipeline.compile_constraint(c)?;
    }
    let parse_json = matches!(
        params.sampling.constraint,
        Some(dsvl::Constraint::JsonSchema(_) | dsvl::Constraint::JsonObject)
    );
    let max_running = usize::from(a.max_running);
    let mut cfg = EngineConfig::default();
    cfg.policy.max_running = max_running;
    cfg.max_queue = 2 * max_running;
    // Each item is its own image: cached embeddings would only be memory that grows with the
    // job (up to the cache's 512 MB) and is never read again.
    cfg.image_cache_bytes = 0;
    let engine = EngineHandle::spawn(pipeline.clone(), &cfg)?;
    let model_name = a.model.model.clone();

    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&a.output)
        .with_context(|| format!("cannot open {} for appending", a.output.display()))?;
    let (lines, written) = channel::<Line>();
    let bar = output::progress_bar(todo.len());
    let writer = {
        let bar = bar.clone();
        std::thread::spawn(move || output::write_lines(out, written, &bar))
    };

    // In flight (queued or running) at most the queue's capacity, so it never refuses: enough
    // for a full running set and as many waiting to join it.
    let (slot_back, slots) = sync_channel::<()>(cfg.max_queue);
    for _ in 0..cfg.max_queue {
        let _ = slot_back.send(());
    }
    let mut collectors = Vec::new();
    let mut pages = PageRenderer::new(pdf.limits.clone(), a.dpi);
    let media = requests::media_policy(dsvl_server::media::PdfPolicy {
        dpi: a.dpi,
        limits: pdf.limits.clone(),
    });
    for item in todo {
        if let Work::Broken(message) = &item.work {
            let _ = lines.send(Line {
                ok: false,
                value: error_line(&item, message),
            });
            continue;
        }
        slots.recv().context("the batch's collectors stopped")?;
        let started = Instant::now();
        let submitted = match &item.work {
            Work::Broken(_) => continue,
            Work::Image | Work::PdfPage { .. } => pages
                .source(&item)
                .map_err(Failure::Engine)
                .and_then(|image| image_request(&pipeline, image, &prompt, &a, &params)),
            Work::Request { line, offset, len } => {
                request_line(&pipeline, &media, &item, *line, *offset, *len)
            }
        }
        .and_then(|s| match engine.submit(s.request) {
            Ok(events) => Ok((events, s.with_logprobs, s.image_tokens)),
            Err(e) => Err(Failure::Engine(e)),
        });
        let (events, with_logprobs, image_tokens) = match submitted {
            Ok(s) => s,
            Err(e) => {
                let _ = lines.send(Line {
                    ok: false,
                    value: e.line(&item),
                });
                let _ = slot_back.send(());
                continue;
            }
        };
        let (lines, slot_back) = (lines.clone(), slot_back.clone());
        let model_name = model_name.clone();
        collectors.push(std::thread::spawn(move || {
            let (ok, value) = match item.work {
                Work::Request { .. } => {
                    requests::collect(&item.id, &model_name, with_logprobs, events)
                }
                _ => collect(&item, events, started, parse_json, &image_tokens),
            };
            let _ = lines.send(Line { ok, value });
            let _ = slot_back.send(());
        }));
        collectors.retain(|c| !c.is_finished());
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

#[derive(Clone, Copy)]
enum Kind {
    Images,
    Requests,
}

/// Why an item could not be submitted.
enum Failure {
    Engine(dsvl::Error),
    Api(dsvl_server::ApiError),
}

impl Failure {
    /// The item's error line, in its kind's format.
    fn line(self, item: &Item) -> Value {
        match (self, &item.work) {
            (Failure::Engine(e), Work::Request { .. }) => {
                requests::failure(&item.id, &dsvl_server::ApiError::from_engine(e))
            }
            (Failure::Engine(e), _) => error_line(item, &e.to_string()),
            (Failure::Api(e), _) => requests::failure(&item.id, &e),
        }
    }
}

/// An item ready for the engine.
struct Submission {
    request: Request,
    with_logprobs: bool,
    /// Each image's image tokens (reported in image lines).
    image_tokens: Vec<usize>,
}

/// Images for items: files by path; PDF pages rendered, the last document kept open (a
/// document's pages are consecutive items) so it is parsed once, not once per page.
struct PageRenderer {
    limits: dsvl::pdf::PdfLimits,
    dpi: f32,
    open: Option<(PathBuf, dsvl::pdf::PdfDocument)>,
}

impl PageRenderer {
    fn new(limits: dsvl::pdf::PdfLimits, dpi: f32) -> Self {
        Self {
            limits,
            dpi,
            open: None,
        }
    }

    fn source(&mut self, item: &Item) -> dsvl::Result<ImageSource> {
        let Work::PdfPage { page } = item.work else {
            return Ok(ImageSource::Path(item.source.clone()));
        };
        let doc = match &mut self.open {
            Some((path, doc)) if *path == item.source => &*doc,
            slot => {
                let bytes = std::fs::read(&item.source).map_err(|source| dsvl::Error::Io {
                    path: item.source.clone(),
                    source,
                })?;
                let name = item.source.display().to_string();
                let doc = dsvl::pdf::PdfDocument::from_bytes(bytes, &name, &self.limits)?;
                &slot.insert((item.source.clone(), doc)).1
            }
        };
        Ok(ImageSource::Rendered {
            name: item.id.clone(),
            image: Arc::new(doc.render(page, self.dpi)?),
        })
    }
}

/// The prompt about one image (a file, or a rendered page).
fn image_request(
    pipeline: &Pipeline,
    image: ImageSource,
    prompt: &str,
    a: &BatchArgs,
    params: &dsvl::GenerateParams,
) -> Result<Submission, Failure> {
    let message = ChatMessage::new(Role::User, prompt.to_string()).with_images(vec![image]);
    let prepared = pipeline
        .prepare(a.sampling.system.as_deref(), &[message])
        .map_err(Failure::Engine)?;
    Ok(Submission {
        image_tokens: prepared.image_tokens.clone(),
        request: Request::new(prepared, params.clone()),
        with_logprobs: false,
    })
}

/// One line of a request file, read again now.
fn request_line(
    pipeline: &Pipeline,
    media: &dsvl_server::media::MediaPolicy,
    item: &Item,
    line: usize,
    offset: u64,
    len: usize,
) -> Result<Submission, Failure> {
    let raw = items::read_request(&item.source, offset, len).map_err(|e| {
        Failure::Api(dsvl_server::ApiError::bad_request(format!(
            "cannot read {} line {line} again: {e}",
            item.source.display()
        )))
    })?;
    let base = item.source.parent().unwrap_or(Path::new("."));
    let ready = requests::prepare(pipeline, &raw, base, media).map_err(Failure::Api)?;
    Ok(Submission {
        image_tokens: ready.prepared.image_tokens.clone(),
        request: Request::new(ready.prepared, ready.params),
        with_logprobs: ready.with_logprobs,
    })
}

/// Waits for one image's answer and makes its output line.
fn collect(
    item: &Item,
    mut events: tokio::sync::mpsc::UnboundedReceiver<EngineEvent>,
    started: Instant,
    parse_json: bool,
    image_tokens: &[usize],
) -> (bool, Value) {
    let mut answer = String::new();
    while let Some(ev) = events.blocking_recv() {
        match ev {
            EngineEvent::Token(t) => answer.push_str(&t.text),
            EngineEvent::Tail(t) => answer.push_str(&t),
            EngineEvent::Failed(e) => return (false, error_line(item, &e.to_string())),
            EngineEvent::Done {
                finish_reason,
                prompt_tokens,
                completion_tokens,
                grounding,
                ..
            } => {
                let mut line = json!({
                    "id": item.id,
                    "source": item.source.display().to_string(),
                    "page": item.page(),
                    "answer": answer,
                    "finish_reason": finish_reason.as_str(),
                    "prompt_tokens": prompt_tokens,
                    "image_tokens": image_tokens.iter().sum::<usize>(),
                    "completion_tokens": completion_tokens,
                    "elapsed_ms": started.elapsed().as_millis() as u64,
                });
                if parse_json {
                    match serde_json::from_str::<Value>(&answer) {
                        Ok(v) => line["json"] = v,
                        // Cut by --max-tokens before the value closed: say so, keep the text.
                        Err(e) => {
                            line["json_error"] = json!(format!(
                                "the answer is not complete JSON ({e}); raise --max-tokens"
                            ))
                        }
                    }
                }
                if item.page().is_none() {
                    line.as_object_mut().map(|o| o.remove("page"));
                }
                if let Some(g) = grounding {
                    line["grounding"] = serde_json::to_value(&*g).unwrap_or(Value::Null);
                }
                return (true, line);
            }
        }
    }
    (
        false,
        error_line(item, "the engine stopped before answering"),
    )
}

fn error_line(item: &Item, message: &str) -> Value {
    let mut line = json!({
        "id": item.id,
        "source": item.source.display().to_string(),
        "error": {"message": message},
    });
    if let Some(page) = item.page() {
        line["page"] = page.into();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_flags_are_checked() {
        assert_eq!(parse_shard("3/8"), Ok((3, 8)));
        assert!(parse_shard("8/8").is_err());
        assert!(parse_shard("1/0").is_err());
        assert!(parse_shard("two/4").is_err());
    }
}
