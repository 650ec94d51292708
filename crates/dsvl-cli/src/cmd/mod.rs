//! One module per subcommand, plus the model loading they share.

pub mod batch;
pub mod bench;
pub mod chat;
pub mod inspect;
pub mod run;
pub mod serve;

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use dsvl::engine::{GenerateParams, LoadOptions, Pipeline};
use dsvl::sampling::{NoRepeatNgram, SamplingParams};
use dsvl::Constraint;

use crate::args::{ModelArgs, OutputArgs, SamplingArgs};
use crate::model_path::resolve_model;

/// Resolves `--model`, applies `--threads`, and loads the pipeline with a progress bar on a terminal.
pub fn load_pipeline(m: &ModelArgs) -> anyhow::Result<Pipeline> {
    apply_threads(m.threads)?;
    let dir = resolve_model(&m.model, true)?;
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "loading weights {bar:40.cyan/blue} {bytes}/{total_bytes} ({eta})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let progress: Option<dsvl::weights::Progress> = bar.clone().map(|bar| {
        Arc::new(move |done: u64, total: u64| {
            bar.set_length(total);
            bar.set_position(done);
        }) as dsvl::weights::Progress
    });
    let opts = LoadOptions {
        progress,
        ..load_options(m, select_device(m.device)?)
    };
    let dtype = opts.dtype;
    let t = Instant::now();
    let pipeline = Pipeline::load(&dir, &opts)
        .with_context(|| format!("while loading the model from {}", dir.display()))?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    tracing::info!(
        "loaded {} {} ({:?} layout, {:?}) in {:.1}s",
        pipeline.config().family(),
        dir.display(),
        pipeline.config().layout(),
        dtype,
        t.elapsed().as_secs_f64()
    );
    if m.quant.is_some() {
        tracing::info!("language model {}", pipeline.model().quant_report());
    }
    Ok(pipeline)
}

/// `--dtype` (resolved for `device`), `--quant`, `--quant-lm-head`, `--max-image-pixels` and
/// `--max-tiles` as
/// load options for `device`, without a progress callback.
pub fn load_options(m: &ModelArgs, device: candle_core::Device) -> LoadOptions {
    LoadOptions {
        dtype: crate::args::dtype_for(m.dtype, &device),
        device,
        progress: None,
        max_image_pixels: m.max_image_pixels,
        quant: m.quant.map(|q| q.quant()),
        quant_lm_head: m.quant_lm_head,
        max_tiles: m.max_tiles.map(usize::from),
    }
}

/// Resolves `--device` and says on stderr which device runs the model (and, for `auto` without
/// a usable GPU, why not).
pub fn select_device(choice: dsvl::device::DeviceChoice) -> anyhow::Result<candle_core::Device> {
    let selected = dsvl::device::select(choice)?;
    eprintln!("device: {}", selected.description);
    Ok(selected.device)
}

/// `--threads`: candle's CPU kernels size their thread pools from RAYON_NUM_THREADS at first use,
/// so this must run before any tensor work.
pub fn apply_threads(threads: Option<usize>) -> anyhow::Result<()> {
    if let Some(n) = threads {
        anyhow::ensure!(n > 0, "--threads must be at least 1");
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    Ok(())
}

pub fn generate_params(
    s: &SamplingArgs,
    logprobs: Option<usize>,
) -> anyhow::Result<GenerateParams> {
    Ok(GenerateParams {
        sampling: SamplingParams {
            temperature: s.temperature,
            top_k: (s.top_k > 0).then_some(s.top_k),
            top_p: s.top_p,
            repetition_penalty: s.repetition_penalty,
            seed: s.seed,
            max_new_tokens: s.max_tokens,
            stop: s.stop.clone(),
            constraint: constraint(&s.output)?,
            no_repeat_ngram: (s.no_repeat_ngram > 0).then(|| NoRepeatNgram {
                ngram_size: s.no_repeat_ngram,
                window_size: s.no_repeat_window,
                whitelist: s.no_repeat_keep.clone(),
            }),
            ..Default::default()
        },
        ignore_eos: s.ignore_eos,
        logprobs,
        skip_special_tokens: s.skip_special_tokens.then_some(true),
        prefill_chunk: s.prefill_chunk,
    })
}

/// The structured-output flags as a constraint, checked (sizes, the JSON Schema subset) before
/// the model loads; the model compiles it when generation starts.
pub fn constraint(o: &OutputArgs) -> anyhow::Result<Option<Constraint>> {
    let read = |path: &std::path::Path| {
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
    };
    let c = if let Some(path) = &o.json_schema {
        let schema = serde_json::from_str(&read(path)?)
            .with_context(|| format!("{}: not valid JSON", path.display()))?;
        Constraint::JsonSchema(schema)
    } else if o.json {
        Constraint::JsonObject
    } else if let Some(rx) = &o.regex {
        Constraint::Regex(rx.clone())
    } else if !o.choice.is_empty() {
        Constraint::Choice(o.choice.clone())
    } else if let Some(path) = &o.grammar {
        Constraint::Lark(read(path)?)
    } else {
        return Ok(None);
    };
    c.validate()
        .with_context(|| match (&o.json_schema, &o.grammar) {
            (Some(p), _) | (_, Some(p)) => format!("in {}", p.display()),
            _ => "in the structured-output flags".to_string(),
        })?;
    Ok(Some(c))
}
