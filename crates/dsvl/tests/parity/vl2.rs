//! DeepSeek-VL2 end to end against the official implementation (fixture format:
//! `shared/fixtures/vl2/README.md`): prompt ids, vision tower and projector outputs, merged
//! embeddings, and the greedy tokens with their log-probabilities, for the tiny (MHA), small (MLA)
//! and base (MLA + sigmoid routing) flavours, through the same `Pipeline` the CLI and server use.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};
use dsvl::engine::{
    ChatMessage, Event, GenerateParams, ImageInput, ImageSource, LoadOptions, Pipeline,
};
use dsvl::models::DeepseekVl2;
use dsvl::prompt::template::Role;
use dsvl::sampling::SamplingParams;
use serde::Deserialize;

use crate::npy;
use crate::tol::{assert_close, F32_STAGE};

/// The VL2 fixture root: `$DSVL_VL2_FIXTURES`, else our own (`tools/fixtures/gen_v2.py`) when
/// present, else the shared set. A missing folder fails the test (see [`vl2_fixtures_checked`]).
pub fn vl2_fixtures() -> PathBuf {
    if let Some(dir) = std::env::var_os("DSVL_VL2_FIXTURES") {
        return PathBuf::from(dir);
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let own = manifest.join("tests/fixtures/v2");
    if own.is_dir() {
        return own;
    }
    manifest.join("../../../shared/fixtures/vl2")
}

/// [`vl2_fixtures`], failing with what to do when it has no `cases/` and `ref/` (never a silent
/// skip).
pub fn vl2_fixtures_checked() -> anyhow::Result<PathBuf> {
    let dir = vl2_fixtures();
    anyhow::ensure!(
        dir.join("cases").is_dir() && dir.join("ref").is_dir(),
        "DeepSeek-VL2 fixtures not found at {} (no cases/ and ref/ there); set DSVL_VL2_FIXTURES \
         to a fixture set or regenerate ours with tools/fixtures/gen_v2.py",
        dir.display()
    );
    Ok(dir)
}

#[derive(Deserialize)]
struct CaseMessage {
    role: String,
    content: String,
    #[serde(default)]
    images: Vec<String>,
}

#[derive(Deserialize)]
struct CaseInput {
    model: String,
    max_new_tokens: usize,
    messages: Vec<CaseMessage>,
}

#[derive(Deserialize)]
struct Step {
    token: u32,
    logprob: f32,
    top5: Vec<(u32, f32)>,
}

#[derive(Deserialize)]
struct Reference {
    input_ids: Vec<u32>,
    generated_ids: Vec<u32>,
    steps: Vec<Step>,
    #[serde(default)]
    dumps: serde_json::Map<String, serde_json::Value>,
}

/// Every case name in the fixture set (`cases/*.json`), sorted.
pub fn case_names() -> anyhow::Result<Vec<String>> {
    let dir = vl2_fixtures().join("cases");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .map_err(|e| anyhow::anyhow!("VL2 fixtures not found at {}: {e}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let p = e.path();
            (p.extension()? == "json").then(|| p.file_stem()?.to_str().map(String::from))?
        })
        .collect();
    names.sort();
    anyhow::ensure!(!names.is_empty(), "no cases in {}", dir.display());
    Ok(names)
}

fn role(s: &str) -> anyhow::Result<Role> {
    Ok(match s {
        "<|User|>" => Role::User,
        "<|Assistant|>" => Role::Assistant,
        other => other.parse()?,
    })
}

/// The case conversation as engine messages; the reference's trailing empty assistant turn
/// (the slot for the answer) is what `prepare` adds itself.
fn messages(case: &CaseInput) -> anyhow::Result<Vec<ChatMessage>> {
    let cases = vl2_fixtures().join("cases");
    let mut out = Vec::new();
    for m in &case.messages {
        let images = m
            .images
            .iter()
            .map(|p| ImageSource::Path(cases.join(p)))
            .collect();
        out.push(ChatMessage::new(role(&m.role)?, m.content.clone()).with_images(images));
    }
    if out
        .last()
        .is_some_and(|m| m.role == Role::Assistant && m.content.is_empty())
    {
        out.pop();
    }
    Ok(out)
}

fn load(name: &str) -> anyhow::Result<(CaseInput, Reference)> {
    let dir = vl2_fixtures();
    let read = |p: PathBuf| -> anyhow::Result<Vec<u8>> {
        std::fs::read(&p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))
    };
    let case: CaseInput = serde_json::from_slice(&read(dir.join(format!("cases/{name}.json")))?)?;
    let reference: Reference =
        serde_json::from_slice(&read(dir.join(format!("ref/{name}.json")))?)?;
    Ok((case, reference))
}

pub fn load_vl2_model(model: &str, dtype: DType) -> anyhow::Result<Pipeline> {
    let opts = LoadOptions {
        dtype,
        device: crate::test_device(),
        ..Default::default()
    };
    Ok(Pipeline::load(
        &vl2_fixtures().join("models").join(model),
        &opts,
    )?)
}

fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let lse = logits
        .iter()
        .map(|&v| ((v - max) as f64).exp())
        .sum::<f64>()
        .ln() as f32
        + max;
    logits.iter().map(|&v| v - lse).collect()
}

/// One case end to end in f32.
fn check_case(name: &str) -> anyhow::Result<()> {
    let (case, reference) = load(name)?;
    let p = load_vl2_model(&case.model, DType::F32)?;
    let msgs = messages(&case)?;
    let prepared = p.prepare(None, &msgs)?;
    anyhow::ensure!(
        prepared.ids == reference.input_ids,
        "{name}: prompt ids differ (got {} ids, want {})",
        prepared.ids.len(),
        reference.input_ids.len()
    );

    let m = p
        .model()
        .downcast_ref::<DeepseekVl2>()
        .ok_or_else(|| anyhow::anyhow!("{name}: not loaded as a VL2 model"))?;
    // Every image's tiles, in order: `[T, 3, S, S]`.
    let tiles = prepared
        .images
        .iter()
        .map(|image| match image {
            ImageInput::Tiled(t) => Ok(t.tiles().clone()),
            ImageInput::Square(_) => anyhow::bail!("{name}: a VL2 prompt with a square image"),
            ImageInput::Views(_) => anyhow::bail!("{name}: a VL2 prompt with an OCR image"),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let tiles = (!tiles.is_empty())
        .then(|| Tensor::cat(&tiles, 0))
        .transpose()?;
    let dump = |file: &str| -> anyhow::Result<Option<Tensor>> {
        if !reference.dumps.contains_key(file) {
            return Ok(None);
        }
        let path = vl2_fixtures().join("ref").join(name).join(file);
        Ok(Some(npy::Npy::read(&path)?.tensor()?))
    };
    if let (Some(px), Some(want_proj)) = (&tiles, dump("projector_out.npy")?) {
        let st = m.vision_stages(px)?;
        if let Some(want) = dump("vision_out_tile0.npy")? {
            assert_close(
                &format!("{name}: vision_out tile 0"),
                &st.vision_out.get(0)?,
                &want,
                F32_STAGE,
            )?;
        }
        assert_close(
            &format!("{name}: projector_out"),
            &st.projector_out,
            &want_proj,
            F32_STAGE,
        )?;
    }
    if let Some(want) = dump("inputs_embeds.npy")? {
        let images = p.image_embeddings(&prepared, None)?;
        let embeds =
            p.model()
                .input_embeddings(&prepared.ids, p.tokenizer().image_id(), &images)?;
        assert_close(
            &format!("{name}: inputs_embeds"),
            &embeds.squeeze(0)?,
            &want,
            F32_STAGE,
        )?;
    }

    // Greedy decoding through the engine (EOS does not stop the reference).
    let params = GenerateParams {
        sampling: SamplingParams {
            max_new_tokens: case.max_new_tokens,
            ..Default::default()
        },
        ignore_eos: true,
        logprobs: Some(5),
        skip_special_tokens: None,
        prefill_chunk: None,
    };
    let mut steps = Vec::new();
    let outcome = p.generate(&prepared, &params, |ev| {
        if let Event::Token(t) = ev {
            steps.push((t.id, t.logprob, t.top_logprobs.clone()));
        }
        ControlFlow::Continue(())
    })?;
    anyhow::ensure!(
        outcome.ids == reference.generated_ids,
        "{name}: greedy ids differ\n got  {:?}\n want {:?}",
        outcome.ids,
        reference.generated_ids
    );
    for (i, ((id, lp, top), want)) in steps.iter().zip(&reference.steps).enumerate() {
        anyhow::ensure!(*id == want.token, "{name}: step {i} token");
        let lp = lp.ok_or_else(|| anyhow::anyhow!("{name}: no logprob at step {i}"))?;
        anyhow::ensure!(
            (lp - want.logprob).abs() <= 1e-3,
            "{name}: step {i} logprob {lp} vs reference {}",
            want.logprob
        );
        let got_ids: Vec<u32> = top.iter().map(|(t, _)| *t).collect();
        let want_ids: Vec<u32> = want.top5.iter().map(|(t, _)| *t).collect();
        anyhow::ensure!(
            got_ids == want_ids,
            "{name}: step {i} top-5 {got_ids:?} vs reference {want_ids:?}"
        );
        for ((_, g), (_, w)) in top.iter().zip(&want.top5) {
            anyhow::ensure!(
                (g - w).abs() <= 1e-3,
                "{name}: step {i} top-5 logprob {g} vs {w}"
            );
        }
    }
    Ok(())
}

#[test]
fn every_vl2_case_matches_the_official_reference() -> anyhow::Result<()> {
    let names = case_names()?;
    let mut failures = Vec::new();
    for name in &names {
        if let Err(e) = check_case(name) {
            failures.push(format!("{e:#}"));
        }
    }
    anyhow::ensure!(
        failures.is_empty(),
        "{} of {} VL2 cases failed:\n{}",
        failures.len(),
        names.len(),
        failures.join("\n")
    );
    Ok(())
}

/// Without the KV cache: every step recomputes the whole sequence and must pick the same ids.
/// One case per model (the shortest prompt), since each step re-runs the whole prompt.
#[test]
fn vl2_greedy_without_cache_matches() -> anyhow::Result<()> {
    let mut shortest: std::collections::BTreeMap<String, (usize, String)> = Default::default();
    for name in case_names()? {
        let (case, reference) = load(&name)?;
        let len = reference.input_ids.len();
        let entry = shortest
            .entry(case.model)
            .or_insert((usize::MAX, String::new()));
        if len < entry.0 {
            *entry = (len, name);
        }
    }
    anyhow::ensure!(
        shortest.len() >= 3,
        "expected the tiny, small and base models"
    );
    for (_, name) in shortest.values() {
        let (case, reference) = load(name)?;
        let p = load_vl2_model(&case.model, DType::F32)?;
        let prepared = p.prepare(None, &messages(&case)?)?;
        let images = p.image_embeddings(&prepared, None)?;
        let model = p.model();
        let mut ids = prepared.ids.clone();
        for (i, want) in reference.generated_ids.iter().enumerate() {
            let e = model.input_embeddings(&ids, p.tokenizer().image_id(), &images)?;
            let mut fresh = model.new_cache();
            let logits = model.forward_embeds(&e, &mut fresh)?.to_vec1::<f32>()?;
            let lp = log_softmax(&logits);
            let best = lp
                .iter()
                .enumerate()
                .fold(
                    (0, f32::NEG_INFINITY),
                    |b, (j, &v)| if v > b.1 { (j, v) } else { b },
                )
                .0 as u32;
            anyhow::ensure!(
                best == *want,
                "{name}: step {i} without cache: {best} vs {want}"
            );
            ids.push(best);
        }
    }
    Ok(())
}

/// bf16 compute (weights stored as bf16 in the fixtures, as published) against the f32 reference.
/// There is no official bf16 run of these fixtures, so this bounds bf16 drift rather than proving
/// bf16 parity: the first token's top-5 log-probabilities stay within `ANY_TOL` everywhere and
/// within `TYPICAL_TOL` for most cases (a near-tie in MoE routing can flip an expert under bf16
/// and move a case further: measured worst 0.65 on `base_text_grounding_answer`, most cases
/// under 0.1), and the greedy choice is the reference's wherever its top-1/top-2 gap exceeds 1.
#[test]
fn vl2_bf16_stays_close_to_the_f32_reference() -> anyhow::Result<()> {
    const ANY_TOL: f32 = 0.75;
    const TYPICAL_TOL: f32 = 0.2;
    let names = case_names()?;
    let mut per_case = Vec::new();
    for name in &names {
        let (case, reference) = load(name)?;
        let p = load_vl2_model(&case.model, DType::BF16)?;
        let prepared = p.prepare(None, &messages(&case)?)?;
        let images = p.image_embeddings(&prepared, None)?;
        let model = p.model();
        let e = model.input_embeddings(&prepared.ids, p.tokenizer().image_id(), &images)?;
        let logits = model
            .forward_embeds(&e, &mut model.new_cache())?
            .to_vec1::<f32>()?;
        let lp = log_softmax(&logits);
        let step = &reference.steps[0];
        let worst = step
            .top5
            .iter()
            .map(|&(id, want)| (lp[id as usize] - want).abs())
            .fold(0f32, f32::max);
        anyhow::ensure!(
            worst.is_finite() && worst <= ANY_TOL,
            "{name}: bf16 top-5 logprobs deviate by {worst} from the f32 reference"
        );
        let gap = step.top5[0].1 - step.top5[1].1;
        let best = lp
            .iter()
            .enumerate()
            .fold(
                (0, f32::NEG_INFINITY),
                |b, (j, &v)| if v > b.1 { (j, v) } else { b },
            )
            .0 as u32;
        if gap > 1.0 {
            anyhow::ensure!(
                best == step.token,
                "{name}: bf16 picks {best}, reference {}",
                step.token
            );
        }
        per_case.push((worst, name.clone()));
    }
    per_case.sort_by(|a, b| a.0.total_cmp(&b.0));
    let typical = per_case.iter().filter(|(w, _)| *w <= TYPICAL_TOL).count();
    eprintln!("bf16 vs f32 reference, worst top-5 logprob deviation per case: {per_case:?}");
    anyhow::ensure!(
        typical * 4 >= per_case.len() * 3,
        "only {typical} of {} cases within {TYPICAL_TOL}: {per_case:?}",
        per_case.len()
    );
    Ok(())
}

/// Chunked prefill (`--prefill-chunk`) gives the one-pass logits up to float rounding and the same
/// greedy answer, for a tiled two-image VL2 prompt of each attention kind.
#[test]
fn vl2_chunked_prefill_matches_one_pass() -> anyhow::Result<()> {
    let mut checked = 0;
    for name in case_names()? {
        let (case, reference) = load(&name)?;
        if reference.input_ids.len() < 1000 {
            continue;
        }
        let p = load_vl2_model(&case.model, DType::F32)?;
        let prepared = p.prepare(None, &messages(&case)?)?;
        let images = p.image_embeddings(&prepared, None)?;
        let model = p.model();
        let e = model.input_embeddings(&prepared.ids, p.tokenizer().image_id(), &images)?;
        let one = p.prefill(&e, &mut model.new_cache(), 0)?;
        let mut cache = model.new_cache();
        let chunked = p.prefill(&e, &mut cache, 300)?;
        anyhow::ensure!(
            cache.len() == prepared.ids.len(),
            "{name}: cache holds {}",
            cache.len()
        );
        assert_close(
            &format!("{name}: chunked prefill logits"),
            &chunked,
            &one,
            F32_STAGE,
        )?;
        let params = GenerateParams {
            sampling: SamplingParams {
                max_new_tokens: case.max_new_tokens,
                ..Default::default()
            },
            ignore_eos: true,
            prefill_chunk: Some(300),
            ..Default::default()
        };
        let out = p.generate(&prepared, &params, |_| ControlFlow::Continue(()))?;
        anyhow::ensure!(
            out.ids == reference.generated_ids,
            "{name}: chunked greedy ids differ"
        );
        checked += 1;
    }
    anyhow::ensure!(checked >= 3, "only {checked} long cases");
    Ok(())
}
