//! `dsvl run`: one answer, streamed to stdout (text) or as JSON lines with logprobs.

use std::io::Write;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use anyhow::Context;
use dsvl::engine::{ChatMessage, Event, ImageSource, Outcome, Pipeline};
use dsvl::prompt::template::Role;
use serde::Deserialize;
use serde_json::json;

use super::{generate_params, load_pipeline};
use crate::args::{Format, RunArgs};
use crate::pdf_input::expand_pdfs;

/// One entry of `--messages conversation.json`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MessageJson {
    role: String,
    #[serde(default)]
    content: String,
    #[serde(default)]
    images: Vec<PathBuf>,
}

/// Reads a conversation file; relative image paths are taken from the file's folder.
pub fn read_messages(path: &Path) -> anyhow::Result<Vec<ChatMessage>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let raw: Vec<MessageJson> = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a conversation: expected a JSON array of {{\"role\", \"content\", \"images\"}} objects",
            path.display()
        )
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    raw.into_iter()
        .enumerate()
        .map(|(i, m)| {
            // user/assistant/system in any case, or DeepSeek-VL2's own `<|User|>`/`<|Assistant|>`.
            let role: Role = dsvl::prompt::vl2::vl2_role(&m.role)
                .with_context(|| format!("{}: message {i}", path.display()))?;
            let images = m
                .images
                .into_iter()
                .map(|p| ImageSource::Path(base.join(p)))
                .collect();
            Ok(ChatMessage::new(role, m.content).with_images(images))
        })
        .collect()
}

pub fn run(a: RunArgs) -> anyhow::Result<()> {
    // Validate everything the user typed before spending seconds on loading.
    let messages = match &a.messages {
        Some(path) => read_messages(path)?,
        None => {
            let prompt = a.prompt.clone().unwrap_or_default();
            let images = a.image.iter().cloned().map(ImageSource::Path).collect();
            vec![ChatMessage::new(Role::User, prompt).with_images(images)]
        }
    };
    for img in messages.iter().flat_map(|m| &m.images) {
        if let ImageSource::Path(p) = img {
            anyhow::ensure!(p.is_file(), "image {} does not exist", p.display());
        }
    }
    // A PDF becomes its pages, rendered now, so that a bad document stops us before loading.
    let messages = messages
        .into_iter()
        .map(|mut m| {
            m.images = expand_pdfs(
                std::mem::take(&mut m.images),
                &a.pdf,
                a.model.max_image_pixels,
            )?;
            Ok(m)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let last_image = messages.iter().flat_map(|m| &m.images).last().cloned();
    if let Some(out) = &a.draw_boxes {
        anyhow::ensure!(
            last_image.is_some(),
            "--draw-boxes {} needs an image to draw on; give one with --image",
            out.display()
        );
    }
    let params = generate_params(&a.sampling, a.logprobs.map(|k| k as usize))?;
    params.sampling.validate()?;
    let pipeline = load_pipeline(&a.model)?;
    let prepared = pipeline.prepare(a.sampling.system.as_deref(), &messages)?;
    let mut out = std::io::stdout().lock();
    let mut io_err = None;
    let outcome = pipeline.generate(&prepared, &params, |ev| {
        let r = match a.format {
            Format::Text => out
                .write_all(ev.text().as_bytes())
                .and_then(|_| out.flush()),
            Format::Jsonl => write_jsonl(&mut out, &pipeline, ev),
        };
        match r {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => {
                io_err = Some(e);
                ControlFlow::Break(())
            }
        }
    })?;
    if let Some(e) = io_err {
        return Err(e.into());
    }
    match a.format {
        Format::Text => writeln!(out)?,
        Format::Jsonl => writeln!(out, "{}", summary(&outcome))?,
    }
    report_timings(&outcome);
    if a.boxes_json.is_some() || a.draw_boxes.is_some() {
        write_grounding(&a, &pipeline, &prepared, &outcome, last_image.as_ref())?;
    }
    Ok(())
}

/// `--boxes-json` / `--draw-boxes`: the answer's grounding markup (decoded with its special
/// tokens, whatever --skip-special-tokens did to the printed text) as boxes on the last image.
fn write_grounding(
    a: &RunArgs,
    pipeline: &Pipeline,
    prepared: &dsvl::engine::Prepared,
    outcome: &Outcome,
    last_image: Option<&ImageSource>,
) -> anyhow::Result<()> {
    let raw = pipeline.tokenizer().decode(&outcome.ids, false)?;
    let size = prepared.image_sizes.last().copied();
    let grounding = dsvl::grounding::parse_grounding(&raw, size);
    if grounding.objects.is_empty() {
        tracing::warn!(
            "the answer has no <|det|> boxes; DeepSeek-VL2 grounds with prompts like \
             \"<|ref|>the object<|/ref|>.\" or \"<|grounding|>Describe the image.\""
        );
    }
    for p in &grounding.problems {
        tracing::warn!("grounding output: {p}");
    }
    if let Some(path) = &a.boxes_json {
        let mut text = serde_json::to_string_pretty(&grounding)?;
        text.push('\n');
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let (Some(path), Some(src)) = (&a.draw_boxes, last_image) {
        let img = src.decode(a.model.max_image_pixels)?;
        let drawn = dsvl::grounding::draw_boxes(&img, &grounding.objects);
        std::fs::write(path, drawn.to_png()?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

fn write_jsonl(out: &mut impl Write, p: &Pipeline, ev: &Event) -> std::io::Result<()> {
    let Event::Token(t) = ev else {
        // Trailing text released at the end belongs to tokens already reported.
        return Ok(());
    };
    let top: Vec<_> = t
        .top_logprobs
        .iter()
        .map(|&(id, lp)| {
            let text = p.tokenizer().decode(&[id], false).unwrap_or_default();
            json!({"token_id": id, "text": text, "logprob": lp})
        })
        .collect();
    let line = json!({
        "token_id": t.id,
        "text": t.token_text,
        "logprob": t.logprob,
        "top_logprobs": top,
    });
    writeln!(out, "{line}")
}

pub fn summary(o: &Outcome) -> serde_json::Value {
    let t = &o.timings;
    json!({
        "finish_reason": o.finish_reason.as_str(),
        "prompt_tokens": o.prompt_tokens,
        "completion_tokens": o.completion_tokens(),
        "text": o.text,
        "timings_ms": {
            "preprocess": t.preprocess_ms,
            "vision": t.vision_ms,
            "prefill": t.prefill_ms,
            "decode": t.decode_ms,
            "constraint": t.constraint_ms,
            "time_to_first_token": t.time_to_first_token_ms(),
        },
    })
}

pub fn report_timings(o: &Outcome) {
    let t = &o.timings;
    let decode_rate = if t.decode_ms > 0.0 {
        o.completion_tokens() as f64 / (t.decode_ms / 1e3)
    } else {
        0.0
    };
    let prefilled = o.prompt_tokens - o.reused_prompt_tokens;
    let prefill_rate = if t.prefill_ms > 0.0 {
        prefilled as f64 / (t.prefill_ms / 1e3)
    } else {
        0.0
    };
    tracing::debug!(
        "preprocess {:.0} ms, vision {:.0} ms, prefill {} tokens ({} reused from the previous turn) in {:.0} ms ({:.1} tok/s), decode {} tokens in {:.0} ms ({:.2} tok/s), finish: {}",
        t.preprocess_ms,
        t.vision_ms,
        prefilled,
        o.reused_prompt_tokens,
        t.prefill_ms,
        prefill_rate,
        o.completion_tokens(),
        t.decode_ms,
        decode_rate,
        o.finish_reason.as_str()
    );
    if t.constraint_ms > 0.0 {
        tracing::debug!(
            "structured output: token masks took {:.1} ms of the decode ({:.2}%)",
            t.constraint_ms,
            100.0 * t.constraint_ms / t.decode_ms
        );
    }
}
