//! `dsvl bench`: a fixed single-user workload, timed stage by stage, with the memory-bandwidth
//! roofline that bounds CPU decoding.
//!
//! Workload: `--images` generated chart images (or `--image FILE`) and a question of about
//! `--prompt-tokens` text tokens, answered greedily for exactly `--decode-tokens` tokens (EOS
//! ignored); then a second turn about the same image (image feature cache hit); optionally a
//! text-only prefill of `--long-context` tokens followed by the same number of decode steps.
//! Figures are medians over `--repeats` runs after one warm-up run.
//!
//! Decode on CPU is bound by memory bandwidth: every step reads all LLM weights except the
//! embedding table (one row); MoE layers read only the router, the shared and the top-k routed
//! experts. The bytes are counted on the loaded model, as stored (with `--quant`, the GGML
//! blocks of the quantized layers). The roofline is `bandwidth / bytes per token`; the report
//! says how close decode comes to it.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{ensure, Context};
use dsvl::engine::{
    ChatMessage, Conversation, Event, GenerateParams, ImageSource, Pipeline, Prepared,
};
use dsvl::prompt::template::Role;
use dsvl::sampling::SamplingParams;
use serde_json::{json, Value};

use super::load_pipeline;
use crate::args::ModelArgs;

#[derive(clap::Args, Debug)]
#[command(
    about = "Measure load, vision, prefill and decode speed on a fixed workload",
    long_about = "Measure load, vision, prefill and decode speed on a fixed workload: one generated chart \
        image and a question of about 40 tokens, answered greedily for a fixed number of tokens (EOS ignored), \
        then a second turn about the same image in the same conversation (cached image features and \
        prefix keys/values). Prints medians over --repeats runs (after one warm-up run), \
        the peak resident memory, the machine's measured memory bandwidth and the decode roofline \
        (bandwidth / weight bytes read per token).\n\n\
        Any model folder works; for the real shapes without downloading, make one in a checkout \
        of the dsvl repository with `cargo xtask make-checkpoint --shape 1.3b --from DIR --out DIR`. \
        Run on a quiet machine: other processes change every figure.",
    after_help = "Examples:\n  \
        dsvl bench --model /tmp/dsvl-1.3b-random\n  \
        dsvl bench --model /tmp/dsvl-1.3b-random --dtype bf16 --long-context 2048 --json bf16.json\n  \
        dsvl bench --model /tmp/dsvl-1.3b-random --quant q4_k --json q4k.json\n  \
        dsvl bench --model ./deepseek-vl-7b-chat --image examples/chart.png --repeats 5\n\n\
        Timings: preprocess = template + tokenizer + image decode/resize/pad; TTFT = preprocess + vision + prefill; \
        decode tok/s = (tokens − 1) / time between the first and the last token."
)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Images in the prompt (each a different generated chart, or copies of --image).
    #[arg(long, default_value_t = 1)]
    pub images: usize,
    /// Use this image file instead of the generated chart (e.g. examples/chart.png).
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// Approximate length of the question in text tokens (the image tokens come on top).
    #[arg(long, default_value_t = 40)]
    pub prompt_tokens: usize,
    /// Tokens generated per run (at least 2; the decode rate is measured between the first and the last).
    #[arg(long, default_value_t = 32)]
    pub decode_tokens: usize,
    /// Also measure prefill and decode after a text-only prompt of this many tokens (e.g. 2048; 0 = skip).
    #[arg(long, default_value_t = 0)]
    pub long_context: usize,
    /// Measured runs; figures are medians.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Unmeasured runs first (2 decode tokens each), so caches and allocators are warm.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Size of the memory-bandwidth test in MiB (0 = skip it and the roofline).
    #[arg(long, default_value_t = 1024)]
    pub bandwidth_mib: usize,
    /// Use this memory bandwidth (GB/s) for the roofline instead of measuring the host's; on a
    /// GPU the host test says nothing about the device, so the roofline is left out unless this
    /// is given (e.g. 4800 for an H200, 3350 for an H100 SXM).
    #[arg(long, value_name = "GB/S")]
    pub bandwidth_gb_s: Option<f64>,
    /// Skip the second-turn measurement.
    #[arg(long)]
    pub no_second_turn: bool,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// The question: a fixed chart question, extended with more requests to reach the target length.
const QUESTION: &str =
    "Describe this chart: what do the axes show, which bar is the tallest, which is the shortest,";
const FILLER: &[&str] = &[
    "how", "do", "the", "values", "change", "from", "left", "to", "right,", "what", "colour", "is",
    "each", "bar,", "and", "what", "would", "you", "conclude", "from", "it?",
];
/// The fixed first answer used to build the second turn (generated text could contain anything).
const FIRST_ANSWER: &str =
    "The chart shows five bars; the third bar is the tallest and the first is the shortest.";
const SECOND_QUESTION: &str =
    "And what is the difference between the tallest and the shortest bar?";

/// One measured run.
#[derive(Debug, Clone, Default)]
struct Run {
    preprocess_ms: f64,
    vision_ms: f64,
    prefill_ms: f64,
    ttft_ms: f64,
    decode_tok_s: f64,
    second_ttft_ms: Option<f64>,
    second_vision_ms: Option<f64>,
    second_reused_tokens: Option<usize>,
    long_prefill_tok_s: Option<f64>,
    long_decode_tok_s: Option<f64>,
    vision_flops: u64,
    prefill_flops: u64,
}

pub fn run(a: BenchArgs) -> anyhow::Result<()> {
    ensure!(a.images >= 1, "--images must be at least 1");
    ensure!(
        a.bandwidth_gb_s.is_none_or(|b| b.is_finite() && b > 0.0),
        "--bandwidth-gb-s must be a positive number of GB/s"
    );
    ensure!(a.repeats >= 1, "--repeats must be at least 1");
    ensure!(
        a.decode_tokens >= 2,
        "--decode-tokens must be at least 2 (the rate is measured between the first and the last token)"
    );
    let image_bytes = match &a.image {
        Some(p) => {
            Some(std::fs::read(p).with_context(|| format!("cannot read --image {}", p.display()))?)
        }
        None => None,
    };
    let images: Vec<ImageSource> = (0..a.images)
        .map(|i| match &image_bytes {
            Some(data) => ImageSource::Bytes {
                name: a
                    .image
                    .as_ref()
                    .map_or(String::new(), |p| p.display().to_string()),
                data: data.clone(),
            },
            None => ImageSource::Bytes {
                name: format!("generated-chart-{i}.bmp"),
                data: chart_bmp(640, 480, i as u32),
            },
        })
        .collect();

    let t = Instant::now();
    let pipeline = load_pipeline(&a.model)?;
    let load_ms = ms(t);
    let rss_after_load = dsvl::memory::status_kib("VmRSS").map(|k| k * 1024);
    let device = pipeline.model().device().clone();
    let gpu_after_load = dsvl::device::gpu_memory(&device);
    let config = pipeline.config();
    let facts = config.llm_facts();

    let question = build_question(&pipeline, a.prompt_tokens)?;
    let question_tokens = pipeline.tokenizer().encode_prompt(&question)?.len() - 1;
    let placeholders = pipeline.config().image_marker().repeat(a.images);
    let turn1 = vec![
        ChatMessage::new(Role::User, format!("{placeholders}{question}"))
            .with_images(images.clone()),
    ];
    let turn2 = vec![
        turn1[0].clone(),
        ChatMessage::new(Role::Assistant, FIRST_ANSWER),
        ChatMessage::new(Role::User, SECOND_QUESTION),
    ];
    let long_ids = long_prompt(&pipeline, a.long_context, a.decode_tokens)?;

    for w in 0..a.warmup {
        tracing::info!("warm-up run {}/{}", w + 1, a.warmup);
        one_run(&pipeline, &turn1, &turn2, None, 2, !a.no_second_turn)?;
    }
    let mut runs = Vec::with_capacity(a.repeats);
    let mut prompt_tokens = 0;
    for r in 0..a.repeats {
        tracing::info!("run {}/{}", r + 1, a.repeats);
        let (run, n) = one_run(
            &pipeline,
            &turn1,
            &turn2,
            long_ids.as_deref(),
            a.decode_tokens,
            !a.no_second_turn,
        )?;
        prompt_tokens = n;
        runs.push(run);
    }
    // Read before the bandwidth test, which allocates its own buffer. The peak includes the
    // load (the weights kept plus the tensor being converted); the resident size after the
    // runs is the steady state (weights, caches, what the allocator keeps).
    let peak_rss = dsvl::memory::status_kib("VmHWM").map(|k| k * 1024);
    let rss_after_runs = dsvl::memory::status_kib("VmRSS").map(|k| k * 1024);
    let gpu_after_runs = dsvl::device::gpu_memory(&device);

    let threads = a
        .model
        .threads
        .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
        .unwrap_or(1);
    let bandwidth = match a.bandwidth_gb_s {
        Some(given) => Some(given),
        None if !pipeline.model().device().is_cpu() => None,
        None => {
            (a.bandwidth_mib > 0).then(|| memory_bandwidth_gb_s(a.bandwidth_mib << 20, threads))
        }
    };

    // As stored: quantized layers count their blocks, the MoE router its f32 copy.
    let weight_bytes = pipeline.model().decode_weight_bytes();
    let kv_dtype =
        dsvl::llm::KvCache::stored_dtype(pipeline.model().dtype(), pipeline.model().device());
    let kv_bytes_per_pos = facts.kv_values_per_position * kv_dtype.size_in_bytes() as u64;
    let quant = pipeline.model().quant_report();

    let med = |f: &dyn Fn(&Run) -> Option<f64>| median(runs.iter().filter_map(f).collect());
    let preprocess_ms = med(&|r| Some(r.preprocess_ms));
    let vision_ms = med(&|r| Some(r.vision_ms));
    let prefill_ms = med(&|r| Some(r.prefill_ms));
    let ttft_ms = med(&|r| Some(r.ttft_ms));
    let decode_tok_s = med(&|r| Some(r.decode_tok_s));
    let second_ttft = med(&|r| r.second_ttft_ms);
    let second_vision = med(&|r| r.second_vision_ms);
    let second_reused = runs.iter().find_map(|r| r.second_reused_tokens);
    let long_prefill = med(&|r| r.long_prefill_tok_s);
    let long_decode = med(&|r| r.long_decode_tok_s);
    // Achieved GFLOP/s of the CPU kernels per stage, against their peak on this machine for the
    // model's dtype (the same kernel on a large square product).
    let gflop_s = |flops: &dyn Fn(&Run) -> u64, ms: &dyn Fn(&Run) -> f64| {
        med(&|r| (flops(r) > 0 && ms(r) > 0.0).then(|| flops(r) as f64 / (ms(r) * 1e6)))
    };
    let vision_gflop_s = gflop_s(&|r| r.vision_flops, &|r| r.vision_ms);
    let prefill_gflop_s = gflop_s(&|r| r.prefill_flops, &|r| r.prefill_ms);
    let kernel_weight = match pipeline.model().dtype() {
        candle_core::DType::BF16 => Some(dsvl::kernels::WeightType::Bf16),
        candle_core::DType::F32 => Some(dsvl::kernels::WeightType::F32),
        _ => None,
    };
    let peak_gflop_s = kernel_weight
        .filter(|_| pipeline.model().device().is_cpu())
        .map(dsvl::kernels::gemm::peak_gflops);
    let share = |got: Option<f64>| match (got, peak_gflop_s) {
        (Some(g), Some(p)) if p > 0.0 => Some(100.0 * g / p),
        _ => None,
    };

    // Decode at the short context reads the weights plus a KV cache of ~prompt length.
    let short_ctx = prompt_tokens + a.decode_tokens / 2;
    let roofline = |ctx: usize| {
        bandwidth.map(|bw| bw * 1e9 / (weight_bytes + kv_bytes_per_pos * ctx as u64) as f64)
    };
    let roof_short = roofline(short_ctx);
    let long_ctx = a.long_context + a.decode_tokens / 2;
    let roof_long = (a.long_context > 0).then(|| roofline(long_ctx)).flatten();
    let pct = |got: Option<f64>, roof: Option<f64>| match (got, roof) {
        (Some(g), Some(r)) if r > 0.0 => Some(100.0 * g / r),
        _ => None,
    };

    let (model_desc, layout) = (config.summary(), format!("{:?}", config.layout()));
    let llm_params = facts.params;
    let report = json!({
        "tool": "dsvl bench",
        "dsvl_version": env!("CARGO_PKG_VERSION"),
        "machine": {
            "cpu": cpu_model(),
            "logical_cores": std::thread::available_parallelism().map(|n| n.get()).ok(),
            "threads": threads,
            "mem_total_bytes": dsvl::memory::meminfo_kib("MemTotal").map(|k| k * 1024),
            "device": device_name(&device),
            "gpu": dsvl::device::gpu_name(&device),
        },
        "model": {
            "dir": config.dir().display().to_string(),
            "family": config.family(),
            "layout": layout,
            "architecture": model_desc,
            "dtype": format!("{:?}", pipeline.model().dtype()).to_lowercase(),
            "quant": quant.plan.quant.map(|q| q.name()),
            "quant_lm_head": quant.plan.lm_head,
            "llm_linears": {
                "total": quant.linears,
                "q8_0": quant.q8_0,
                "q4_k": quant.q4k,
                "float": quant.float,
                "fallbacks": quant.fallbacks,
                "bytes": quant.bytes,
            },
            "llm_params": llm_params,
            "llm_active_params_per_token": facts.decode_params,
            "llm_layers": facts.layers,
            "llm_hidden": facts.hidden,
        },
        "workload": {
            "images": a.images,
            "image": a.image.as_ref().map_or("generated 640x480 chart (BMP)".to_string(), |p| p.display().to_string()),
            "question": question,
            "question_tokens": question_tokens,
            "prompt_tokens": prompt_tokens,
            "decode_tokens": a.decode_tokens,
            "long_context": a.long_context,
            "repeats": a.repeats,
            "warmup": a.warmup,
            "sampling": "greedy, EOS ignored",
        },
        "load_ms": load_ms,
        "rss_after_load_bytes": rss_after_load,
        "preprocess_ms": preprocess_ms,
        "vision_ms": vision_ms,
        "vision_ms_per_image": vision_ms.map(|v| v / a.images as f64),
        "prefill_ms": prefill_ms,
        "prefill_tokens_per_s": prefill_ms.map(|p| prompt_tokens as f64 / (p / 1e3)),
        "ttft_ms": ttft_ms,
        "kernels": {
            "isa": dsvl::kernels::isa::active().name(),
            "cpu_features": dsvl::kernels::Isa::cpu_features(),
            "peak_gflop_s": peak_gflop_s,
            "vision_gflop_s": vision_gflop_s,
            "vision_pct_of_peak": share(vision_gflop_s),
            "prefill_gflop_s": prefill_gflop_s,
            "prefill_pct_of_peak": share(prefill_gflop_s),
            "note": "FLOPs of the linear layers and attention done by dsvl's CPU kernels over the stage's whole time (element-wise work included in the time, not in the FLOPs); peak = the same kernels on a 768 x 2048 x 2048 product in the model's dtype",
        },
        "decode_tokens_per_s": decode_tok_s,
        "second_turn": if a.no_second_turn { Value::Null } else { json!({
            "ttft_ms": second_ttft,
            "vision_ms": second_vision,
            "reused_prompt_tokens": second_reused,
            "note": "the same conversation continued: image feature cache hit, and the prefix shared with the first turn (its prompt) is not prefilled again",
        })},
        "long_context": if a.long_context == 0 { Value::Null } else { json!({
            "context": a.long_context,
            "prefill_tokens_per_s": long_prefill,
            "decode_tokens_per_s": long_decode,
            "decode_roofline_tokens_per_s": roof_long,
            "decode_roofline_pct": pct(long_decode, roof_long),
        })},
        "peak_rss_bytes": peak_rss,
        "gpu_memory": match (gpu_after_load, gpu_after_runs) {
            (Some(load), Some(runs)) => json!({
                "total_bytes": runs.total,
                "used_after_load_bytes": load.used,
                "used_after_runs_bytes": runs.used,
                "peak_allocated_bytes": runs.peak_allocated,
                "note": "used = the whole device as the driver reports it (all processes, the CUDA context included); peak allocated = this process's memory-pool high-water mark",
            }),
            _ => Value::Null,
        },
        "rss_after_runs_bytes": rss_after_runs,
        "memory_bandwidth_gb_s": bandwidth,
        "weight_bytes_per_token": weight_bytes,
        "kv_bytes_per_position": kv_bytes_per_pos,
        "decode_roofline_tokens_per_s": roof_short,
        "decode_roofline_pct": pct(decode_tok_s, roof_short),
        "runs": runs.iter().map(|r| json!({
            "preprocess_ms": r.preprocess_ms, "vision_ms": r.vision_ms, "prefill_ms": r.prefill_ms,
            "ttft_ms": r.ttft_ms, "decode_tokens_per_s": r.decode_tok_s,
            "second_turn_ttft_ms": r.second_ttft_ms, "long_prefill_tokens_per_s": r.long_prefill_tok_s,
            "long_decode_tokens_per_s": r.long_decode_tok_s,
        })).collect::<Vec<_>>(),
    });

    print_table(&report);
    if let Some(path) = &a.json {
        let mut text = serde_json::to_string_pretty(&report)?;
        text.push('\n');
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// One pass of the workload; returns the run and the prompt length in tokens.
fn one_run(
    pipeline: &Pipeline,
    turn1: &[ChatMessage],
    turn2: &[ChatMessage],
    long_ids: Option<&[u32]>,
    decode_tokens: usize,
    second_turn: bool,
) -> anyhow::Result<(Run, usize)> {
    let params = GenerateParams {
        sampling: SamplingParams {
            max_new_tokens: decode_tokens,
            ..Default::default()
        },
        ignore_eos: true,
        logprobs: None,
        skip_special_tokens: None,
        prefill_chunk: None,
    };
    let mut conversation = Conversation::new(256 << 20);
    let prepared = pipeline.prepare(None, turn1)?;
    let (outcome, tok_s) = timed_generate(pipeline, &prepared, &params, &mut conversation)?;
    ensure!(
        outcome.ids.len() == decode_tokens,
        "generated {} tokens instead of {decode_tokens}",
        outcome.ids.len()
    );
    let t = &outcome.timings;
    let mut run = Run {
        preprocess_ms: t.preprocess_ms,
        vision_ms: t.vision_ms,
        vision_flops: t.vision_flops,
        prefill_flops: t.prefill_flops,
        prefill_ms: t.prefill_ms,
        ttft_ms: t.time_to_first_token_ms(),
        decode_tok_s: tok_s,
        ..Default::default()
    };
    if second_turn {
        // Only the first token matters here.
        let one = GenerateParams {
            sampling: SamplingParams {
                max_new_tokens: 1,
                ..Default::default()
            },
            ..params.clone()
        };
        let prepared2 = pipeline.prepare(None, turn2)?;
        let out2 = pipeline.generate_in(&mut conversation, &prepared2, &one, |_| {
            ControlFlow::Continue(())
        })?;
        run.second_ttft_ms = Some(out2.timings.time_to_first_token_ms());
        run.second_vision_ms = Some(out2.timings.vision_ms);
        run.second_reused_tokens = Some(out2.reused_prompt_tokens);
    }
    if let Some(ids) = long_ids {
        let (prefill, decode) = long_context_run(pipeline, ids, &params)?;
        run.long_prefill_tok_s = Some(prefill);
        run.long_decode_tok_s = Some(decode);
    }
    Ok((run, prepared.ids.len()))
}

/// Generates and returns the decode rate between the first and the last token.
fn timed_generate(
    pipeline: &Pipeline,
    prepared: &Prepared,
    params: &GenerateParams,
    conversation: &mut Conversation,
) -> anyhow::Result<(dsvl::engine::Outcome, f64)> {
    let mut stamps: Vec<Instant> = Vec::new();
    let outcome = pipeline.generate_in(conversation, prepared, params, |ev| {
        if let Event::Token(_) = ev {
            stamps.push(Instant::now());
        }
        ControlFlow::Continue(())
    })?;
    let rate = match (stamps.first(), stamps.last()) {
        (Some(first), Some(last)) if stamps.len() > 1 => {
            (stamps.len() - 1) as f64 / last.duration_since(*first).as_secs_f64()
        }
        _ => 0.0,
    };
    Ok((outcome, rate))
}

/// Text-only prefill of `ids` in one pass, then greedy decode steps; (prefill tok/s, decode
/// tok/s). The library's prefill and decode steps, timed as the language model's alone: the
/// prompt is not chunked, no position keys are tracked (no conversation), and each step takes the
/// argmax of the logits without [`dsvl::engine::Sequence::step`]'s sampler and detokenizer.
fn long_context_run(
    pipeline: &Pipeline,
    ids: &[u32],
    params: &GenerateParams,
) -> anyhow::Result<(f64, f64)> {
    let prepared = Prepared {
        prompt: String::new(),
        ids: ids.to_vec(),
        images: Vec::new(),
        image_sizes: Vec::new(),
        image_tokens: Vec::new(),
        n_images: 0,
        preprocess_ms: 0.0,
    };
    let one_pass = GenerateParams {
        prefill_chunk: Some(0),
        ..params.clone()
    };
    let mut seq = pipeline.start(&prepared, &one_pass, None)?;
    let prefill_ms = seq.timings().prefill_ms;
    let decode_tokens = params.sampling.max_new_tokens;
    let t = Instant::now();
    for _ in 1..decode_tokens {
        let id = argmax(seq.logits());
        seq.decode(id)?;
    }
    let decode_s = t.elapsed().as_secs_f64();
    Ok((
        ids.len() as f64 / (prefill_ms / 1e3),
        (decode_tokens - 1) as f64 / decode_s,
    ))
}

/// The first index of the largest logit. Not `dsvl::sampling::processors::argmax`: this loop is
/// the one the long-context decode figures were measured with, and the library's (which carries
/// the best value in an `Option`) takes about 30 µs more per step over a 100k-token vocabulary.
fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// `QUESTION` extended with `FILLER` words until it has at least `target` tokens.
fn build_question(pipeline: &Pipeline, target: usize) -> anyhow::Result<String> {
    let tok = pipeline.tokenizer();
    let count = |s: &str| -> anyhow::Result<usize> { Ok(tok.encode_prompt(s)?.len() - 1) };
    let mut q = QUESTION.to_string();
    let mut words = FILLER.iter().cycle();
    while count(&q)? < target {
        if let Some(w) = words.next() {
            q.push(' ');
            q.push_str(w);
        }
    }
    Ok(q)
}

/// BOS + the question text repeated to exactly `context` tokens; `None` for 0.
fn long_prompt(
    pipeline: &Pipeline,
    context: usize,
    decode_tokens: usize,
) -> anyhow::Result<Option<Vec<u32>>> {
    if context == 0 {
        return Ok(None);
    }
    let max = pipeline.config().context_length();
    ensure!(
        context + decode_tokens <= max,
        "--long-context {context} + --decode-tokens {decode_tokens} exceeds the model's {max} positions"
    );
    let tok = pipeline.tokenizer();
    let body: Vec<u32> = tok.encode_prompt(&format!(" {QUESTION}"))?[1..].to_vec();
    ensure!(
        !body.is_empty(),
        "the tokenizer returned no tokens for the filler text"
    );
    let mut ids = vec![tok.bos_id()];
    ids.extend(body.iter().cycle().take(context.saturating_sub(1)));
    Ok(Some(ids))
}

/// A deterministic bar chart (white background, axes, five coloured bars whose heights depend on
/// `variant`) as an uncompressed 24-bit BMP.
fn chart_bmp(w: u32, h: u32, variant: u32) -> Vec<u8> {
    let colors: [[u8; 3]; 5] = [
        [66, 133, 244],
        [219, 68, 55],
        [244, 180, 0],
        [15, 157, 88],
        [171, 71, 188],
    ];
    let heights: Vec<u32> = (0..5)
        .map(|i| 60 + ((i * 97 + variant * 53 + 31) % 7) * (h - 140) / 7)
        .collect();
    let (x0, y0) = (60, h - 50); // axis origin (top-down y)
    let bar_w = (w - 100) / 5;
    let pixel = |x: u32, y: u32| -> [u8; 3] {
        if (x == x0 || x == x0 + 1) && y <= y0 && y > 20 || (y == y0 || y == y0 + 1) && x >= x0 {
            return [0, 0, 0];
        }
        if x > x0 + 1 && y < y0 {
            let i = (x - x0 - 2) / bar_w;
            let inside = (x - x0 - 2) % bar_w;
            if i < 5 && inside > 8 && inside < bar_w - 8 && y0 - y < heights[i as usize] {
                return colors[i as usize];
            }
            if y.is_multiple_of(40) {
                return [220, 220, 220]; // grid line
            }
        }
        [255, 255, 255]
    };
    let row = (w * 3).div_ceil(4) * 4;
    let data_len = row * h;
    let mut out = Vec::with_capacity((54 + data_len) as usize);
    out.extend(b"BM");
    out.extend((54 + data_len).to_le_bytes());
    out.extend(0u32.to_le_bytes());
    out.extend(54u32.to_le_bytes());
    out.extend(40u32.to_le_bytes()); // BITMAPINFOHEADER
    out.extend((w as i32).to_le_bytes());
    out.extend((h as i32).to_le_bytes()); // positive: rows stored bottom-up
    out.extend(1u16.to_le_bytes());
    out.extend(24u16.to_le_bytes());
    out.extend(0u32.to_le_bytes()); // BI_RGB
    out.extend(data_len.to_le_bytes());
    out.extend(2835i32.to_le_bytes());
    out.extend(2835i32.to_le_bytes());
    out.extend(0u32.to_le_bytes());
    out.extend(0u32.to_le_bytes());
    for y in (0..h).rev() {
        for x in 0..w {
            let [r, g, b] = pixel(x, y);
            out.extend([b, g, r]);
        }
        out.extend(std::iter::repeat_n(0u8, (row - w * 3) as usize));
    }
    out
}

/// Multi-threaded sequential read of a `bytes` buffer; best of 5 passes, in GB/s (10⁹ bytes).
fn memory_bandwidth_gb_s(bytes: usize, threads: usize) -> f64 {
    let n = bytes / 8;
    let threads = threads.max(1);
    let chunk = n.div_ceil(threads);
    let mut buf = vec![0u64; n];
    // Touch every page from the thread that will read it.
    std::thread::scope(|s| {
        for (k, part) in buf.chunks_mut(chunk).enumerate() {
            s.spawn(move || {
                for (i, v) in part.iter_mut().enumerate() {
                    *v = (k * chunk + i) as u64;
                }
            });
        }
    });
    let mut best = 0.0f64;
    let mut sink = 0u64;
    for _ in 0..5 {
        let t = Instant::now();
        let sums: Vec<u64> = std::thread::scope(|s| {
            let handles: Vec<_> = buf
                .chunks(chunk)
                .map(|part| s.spawn(move || sum_u64(part)))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or(0)).collect()
        });
        let secs = t.elapsed().as_secs_f64();
        sink = sink.wrapping_add(sums.iter().fold(0, |a, b| a.wrapping_add(*b)));
        best = best.max((n * 8) as f64 / secs / 1e9);
    }
    std::hint::black_box(sink);
    best
}

/// Sum with four independent accumulators so the loop is bound by loads, not by the add chain.
fn sum_u64(v: &[u64]) -> u64 {
    let mut acc = [0u64; 4];
    let mut it = v.chunks_exact(4);
    for c in &mut it {
        for j in 0..4 {
            acc[j] = acc[j].wrapping_add(c[j]);
        }
    }
    let tail: u64 = it.remainder().iter().fold(0, |a, b| a.wrapping_add(*b));
    acc.iter().fold(tail, |a, b| a.wrapping_add(*b))
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    })
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// The CPU's model name from `/proc/cpuinfo` (Linux); `None` elsewhere.
fn cpu_model() -> Option<String> {
    let text = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|rest| rest.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
}

/// `cpu`, `cuda:N`, `metal:N`: where the model runs.
fn device_name(device: &candle_core::Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".to_string(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// The human-readable report (stdout).
fn print_table(r: &Value) {
    let f = |v: &Value, prec: usize| -> String {
        v.as_f64()
            .map_or("n/a".to_string(), |x| format!("{x:.prec$}"))
    };
    let gib = |v: &Value| -> String {
        v.as_f64().map_or("n/a".to_string(), |x| {
            format!("{:.2}", x / (1u64 << 30) as f64)
        })
    };
    let gb = |v: &Value| -> String {
        v.as_f64()
            .map_or("n/a".to_string(), |x| format!("{:.3}", x / 1e9))
    };
    let m = &r["model"];
    let w = &r["workload"];
    let quant = match m["quant"].as_str() {
        Some(q) => format!(
            ", LLM linears {q}{}: {} q4_k, {} q8_0, {} float",
            if m["quant_lm_head"].as_bool() == Some(true) {
                " with lm_head"
            } else {
                ""
            },
            m["llm_linears"]["q4_k"],
            m["llm_linears"]["q8_0"],
            m["llm_linears"]["float"],
        ),
        None => String::new(),
    };
    let machine = &r["machine"];
    let cpu = machine["cpu"].as_str().unwrap_or("unknown CPU");
    let place = match machine["device"].as_str() {
        Some("cpu") | None => format!("{} thread(s) on {cpu}", machine["threads"]),
        Some(gpu) => format!(
            "{gpu} ({}), host {cpu}",
            machine["gpu"].as_str().unwrap_or("unknown GPU")
        ),
    };
    println!(
        "dsvl bench: {} ({} layout, {}{quant}, {} LLM layers), {place}",
        m["architecture"].as_str().unwrap_or("?"),
        m["layout"].as_str().unwrap_or("?"),
        m["dtype"].as_str().unwrap_or("?"),
        m["llm_layers"],
    );
    let k = &r["kernels"];
    println!(
        "CPU kernels: {} path; CPU features: {}",
        k["isa"].as_str().unwrap_or("?"),
        k["cpu_features"]
            .as_array()
            .map(|f| f
                .iter()
                .filter_map(|v| v.as_str())
                .collect::<Vec<_>>()
                .join(" "))
            .unwrap_or_default()
    );
    println!(
        "workload: {} image(s), {} prompt tokens ({} question tokens), {} decode tokens, median of {} run(s)",
        w["images"], w["prompt_tokens"], w["question_tokens"], w["decode_tokens"], w["repeats"]
    );
    let rows: Vec<(&str, String, &str)> = vec![
        ("load", f(&r["load_ms"], 0), "ms (one load)"),
        ("preprocess", f(&r["preprocess_ms"], 1), "ms"),
        ("vision per image", f(&r["vision_ms_per_image"], 1), "ms"),
        ("prefill", f(&r["prefill_tokens_per_s"], 1), "tokens/s"),
        ("time to first token", f(&r["ttft_ms"], 1), "ms"),
        ("decode", f(&r["decode_tokens_per_s"], 2), "tokens/s"),
        (
            "vision / prefill GFLOP/s",
            format!(
                "{} / {}",
                f(&r["kernels"]["vision_gflop_s"], 1),
                f(&r["kernels"]["prefill_gflop_s"], 1)
            ),
            "(matrix kernels' FLOPs over the stage's time)",
        ),
        (
            "kernel peak",
            f(&r["kernels"]["peak_gflop_s"], 1),
            "GFLOP/s (vision / prefill reach the shares in the JSON report)",
        ),
        (
            "second-turn TTFT",
            if r["second_turn"].is_null() {
                "skipped".into()
            } else {
                f(&r["second_turn"]["ttft_ms"], 1)
            },
            "ms (same conversation: image features cached, first turn's prompt not prefilled again)",
        ),
        (
            "long-context prefill",
            if r["long_context"].is_null() {
                "skipped".into()
            } else {
                f(&r["long_context"]["prefill_tokens_per_s"], 1)
            },
            "tokens/s",
        ),
        (
            "long-context decode",
            if r["long_context"].is_null() {
                "skipped".into()
            } else {
                f(&r["long_context"]["decode_tokens_per_s"], 2)
            },
            "tokens/s",
        ),
        (
            "peak resident memory",
            gib(&r["peak_rss_bytes"]),
            "GiB (load included)",
        ),
        (
            "resident after the runs",
            gib(&r["rss_after_runs_bytes"]),
            "GiB",
        ),
    ];
    let gpu = &r["gpu_memory"];
    let gpu_rows: Vec<(&str, String, &str)> = if gpu.is_null() {
        Vec::new()
    } else {
        vec![
            (
                "GPU memory after load",
                gib(&gpu["used_after_load_bytes"]),
                "GiB in use on the device (all processes)",
            ),
            (
                "GPU memory after runs",
                gib(&gpu["used_after_runs_bytes"]),
                "GiB in use on the device (all processes)",
            ),
            (
                "GPU peak allocated",
                gib(&gpu["peak_allocated_bytes"]),
                "GiB (this process, memory-pool high-water mark)",
            ),
        ]
    };
    let tail: Vec<(&str, String, &str)> = vec![
        (
            "memory bandwidth",
            f(&r["memory_bandwidth_gb_s"], 1),
            if r["machine"]["device"].as_str() == Some("cpu") {
                "GB/s"
            } else {
                "GB/s (given with --bandwidth-gb-s)"
            },
        ),
        (
            "weights read per token",
            gb(&r["weight_bytes_per_token"]),
            "GB (LLM weights as stored, except the embedding table)",
        ),
        (
            "decode roofline",
            f(&r["decode_roofline_tokens_per_s"], 2),
            "tokens/s",
        ),
        ("decode / roofline", f(&r["decode_roofline_pct"], 1), "%"),
    ];
    for (name, value, unit) in rows.into_iter().chain(gpu_rows).chain(tail) {
        println!("  {name:<24} {value:>12}  {unit}");
    }
    if let Some(l) = r["long_context"].as_object() {
        println!(
            "  (long context {}: roofline {} tokens/s, {} %)",
            l["context"],
            f(&l["decode_roofline_tokens_per_s"], 2),
            f(&l["decode_roofline_pct"], 1)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes counted on a loaded f32 model are the analytic parameter count × 4, for both
    /// families (v1 Llama; VL2 MLA + MoE with noaux_tc routing).
    #[test]
    fn decode_bytes_of_a_loaded_model_match_the_parameter_count() -> anyhow::Result<()> {
        let fixtures =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../dsvl/tests/fixtures");
        for dir in [
            fixtures.join("v1/models/siglip-tiny"),
            fixtures.join("v2/models/vl2-base-random"),
        ] {
            let p = Pipeline::load(&dir, &dsvl::engine::LoadOptions::default())?;
            let facts = p.config().llm_facts();
            assert_eq!(
                p.model().decode_weight_bytes(),
                facts.decode_params * 4,
                "{}",
                dir.display()
            );
        }
        Ok(())
    }

    #[test]
    fn median_of_even_and_odd() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
    }
}
