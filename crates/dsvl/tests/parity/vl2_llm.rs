//! DeepSeek-VL2 language model (v2 §8) against the official float32 references
//! (`fixtures/vl2/README.md` §5–8): for the four cases with tensor dumps, the merged prompt
//! embeddings go through the LM alone and we compare the hidden state at the last prompt position
//! after every layer, the experts and weights chosen for every position in every MoE layer, the
//! top-5 log-probs, and every greedy token (with the KV cache, and for the MLA models also by
//! full recompute without it). MLA prefill runs in both the absorbed and the expanded form.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{ensure, Context};
use candle_core::{DType, Device, Tensor};
use dsvl::llm::deepseek_v2::{AttentionKind, MlaForm, ScoringFunc, Trace};
use dsvl::llm::Logits;
use dsvl::llm::{DeepseekV2, DeepseekV2Spec};
use dsvl::weights::Checkpoint;
use dsvl::CheckpointLayout;
use serde::Deserialize;

use crate::npy::Npy;
use crate::tol::{assert_close, diff, F32_STAGE};

/// Log-prob gate for an f32 implementation (fixtures README §8: "within about 1e-3").
const LOGPROB_TOL: f32 = 1e-3;

fn fixtures() -> anyhow::Result<PathBuf> {
    crate::vl2::vl2_fixtures_checked()
}

#[derive(Deserialize)]
struct Step {
    token: u32,
    logprob: f32,
    top5: Vec<(u32, f32)>,
}

#[derive(Deserialize)]
struct Reference {
    model_dir: String,
    prompt_len: usize,
    max_new_tokens: usize,
    generated_ids: Vec<u32>,
    steps: Vec<Step>,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
}

fn spec_of(model_dir: &Path) -> anyhow::Result<DeepseekV2Spec> {
    let path = model_dir.join("config.json");
    let cfg: serde_json::Value = read_json(&path)?;
    let lc = cfg
        .get("language_config")
        .with_context(|| format!("{} has no language_config", path.display()))?;
    Ok(DeepseekV2Spec::from_language_config(&path, lc)?)
}

/// The LM alone, in f32, checking that every `language.*` tensor was used.
fn load_lm(model_dir: &Path) -> anyhow::Result<DeepseekV2> {
    let spec = spec_of(model_dir)?;
    let ckpt = Arc::new(Checkpoint::open(
        model_dir,
        CheckpointLayout::Original,
        None,
    )?);
    let vb = ckpt.var_builder(DType::F32, &Device::Cpu);
    let built = DeepseekV2::new(&spec, vb.pp("language"));
    Ok(ckpt.finish_under(built, "language.")?)
}

fn log_softmax(logits: &Tensor) -> anyhow::Result<Vec<f32>> {
    let v = logits.flatten_all()?.to_vec1::<f32>()?;
    let max = v.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    let lse = v
        .iter()
        .map(|&x| ((x - max) as f64).exp())
        .sum::<f64>()
        .ln() as f32
        + max;
    Ok(v.iter().map(|&x| x - lse).collect())
}

/// Indices of the 5 largest, descending, first index on ties (as the reference's argmax).
fn top5(lp: &[f32]) -> Vec<(u32, f32)> {
    let mut idx: Vec<usize> = (0..lp.len()).collect();
    idx.sort_by(|&a, &b| lp[b].total_cmp(&lp[a]).then(a.cmp(&b)));
    idx.iter().take(5).map(|&i| (i as u32, lp[i])).collect()
}

/// Largest deviations seen in one case, printed for the record (`--nocapture`).
#[derive(Default, Debug)]
struct Worst {
    hidden: f32,
    moe_weight: f32,
    top5_logprob: f32,
    step_logprob: f32,
}

/// Step `i`'s logits: greedy token and its log-prob (and, every step, the top-5 ids).
fn check_step(
    what: &str,
    i: usize,
    logits: &Tensor,
    r: &Reference,
    worst: &mut Worst,
) -> anyhow::Result<u32> {
    let lp = log_softmax(logits)?;
    let ours = top5(&lp);
    let want = &r.steps[i];
    let ids: Vec<u32> = ours.iter().map(|p| p.0).collect();
    let want_ids: Vec<u32> = want.top5.iter().map(|p| p.0).collect();
    ensure!(
        ids == want_ids,
        "{what} step {i}: top-5 ids {ids:?}, reference {want_ids:?}"
    );
    for ((id, got), (_, exp)) in ours.iter().zip(&want.top5) {
        let d = (got - exp).abs();
        worst.top5_logprob = worst.top5_logprob.max(d);
        ensure!(
            d <= LOGPROB_TOL,
            "{what} step {i}: logprob of {id} is {got}, reference {exp}"
        );
    }
    let tok = ours[0].0;
    ensure!(
        tok == r.generated_ids[i] && tok == want.token,
        "{what} step {i}: greedy token {tok}, reference {}",
        r.generated_ids[i]
    );
    let d = (lp[tok as usize] - want.logprob).abs();
    worst.step_logprob = worst.step_logprob.max(d);
    ensure!(
        d <= LOGPROB_TOL,
        "{what} step {i}: logprob {} vs {}",
        lp[tok as usize],
        want.logprob
    );
    Ok(tok)
}

/// Hidden rows and MoE routing of one prefill against the dumps.
fn check_trace(
    what: &str,
    dir: &Path,
    trace: &Trace,
    spec: &DeepseekV2Spec,
    worst: &mut Worst,
) -> anyhow::Result<()> {
    let l = spec.num_layers;
    let want = Npy::read(&dir.join("hidden_last.npy"))?.tensor()?;
    ensure!(
        want.dims() == [l + 1, spec.hidden_size],
        "hidden_last shape {:?}",
        want.dims()
    );
    ensure!(
        trace.hidden.len() == l + 1,
        "trace has {} hidden states",
        trace.hidden.len()
    );
    // Row 0 is the input, rows 1..L-1 the outputs of layers 0..L-2, row L the final norm.
    for row in 0..=l {
        let got = if row < l {
            &trace.hidden[row]
        } else {
            &trace.final_norm
        };
        let got = got.squeeze(0)?;
        let w = want.get(row)?;
        worst.hidden = worst.hidden.max(diff(&got, &w)?.max_abs);
        assert_close(&format!("{what} hidden_last[{row}]"), &got, &w, F32_STAGE)?;
    }

    let moe_layers: Vec<usize> = (0..l).filter(|&i| spec.is_moe_layer(i)).collect();
    let traced: Vec<usize> = trace.moe.iter().map(|m| m.layer).collect();
    ensure!(traced == moe_layers, "routing traced for layers {traced:?}");
    for m in &trace.moe {
        let idx = Npy::read(&dir.join(format!("moe_l{}_idx.npy", m.layer)))?;
        let wts = Npy::read(&dir.join(format!("moe_l{}_weight.npy", m.layer)))?;
        let k = m.routing.top_k;
        ensure!(
            idx.shape.len() == 2 && idx.shape[1] == k,
            "moe idx shape {:?}",
            idx.shape
        );
        let s = idx.shape[0];
        ensure!(
            m.routing.experts.len() == s * k,
            "routing covers {} slots, want {}",
            m.routing.experts.len(),
            s * k
        );
        let want_idx = idx.i32s()?;
        let mut got_w = Vec::with_capacity(s * k);
        for p in 0..s {
            let mut pairs: Vec<(u32, f32)> = (0..k)
                .map(|j| (m.routing.experts[p * k + j], m.routing.weights[p * k + j]))
                .collect();
            pairs.sort_by_key(|x| x.0);
            let ids: Vec<i32> = pairs.iter().map(|x| x.0 as i32).collect();
            ensure!(
                ids == want_idx[p * k..(p + 1) * k],
                "{what} layer {} position {p}: experts {ids:?}, reference {:?}",
                m.layer,
                &want_idx[p * k..(p + 1) * k]
            );
            got_w.extend(pairs.iter().map(|x| x.1));
        }
        let got_w = Tensor::from_vec(got_w, (s, k), &Device::Cpu)?;
        let want_w = wts.tensor()?;
        worst.moe_weight = worst.moe_weight.max(diff(&got_w, &want_w)?.max_abs);
        assert_close(
            &format!("{what} moe_l{}_weight", m.layer),
            &got_w,
            &want_w,
            F32_STAGE,
        )?;
    }
    Ok(())
}

fn run_case(case: &str) -> anyhow::Result<()> {
    let root = fixtures()?;
    let r: Reference = read_json(&root.join("ref").join(format!("{case}.json")))?;
    let dir = root.join("ref").join(case);
    let model_dir = root.join("models").join(&r.model_dir);
    let lm = load_lm(&model_dir)?;
    let spec = lm.spec().clone();
    let dev = Device::Cpu;
    ensure!(
        r.steps.len() == r.max_new_tokens && r.generated_ids.len() == r.max_new_tokens,
        "reference has {} steps for {} tokens",
        r.steps.len(),
        r.max_new_tokens
    );

    let embeds = Npy::read(&dir.join("inputs_embeds.npy"))?.tensor()?;
    ensure!(
        embeds.dims() == [r.prompt_len, spec.hidden_size],
        "inputs_embeds shape {:?}",
        embeds.dims()
    );
    let embeds = embeds.unsqueeze(0)?;
    let mla = matches!(spec.attention, AttentionKind::Mla { .. });
    let mut worst = Worst::default();

    // Prefill, traced, in every form this model has. With the fixtures' dims both forms cost
    // the same, so `Auto` would pick absorbed: force each. The expanded prefill's cache then
    // serves the (absorbed) greedy decode, so the two forms must agree on the cache too.
    let forms: &[MlaForm] = if mla {
        &[MlaForm::Absorbed, MlaForm::Expanded]
    } else {
        &[MlaForm::Auto]
    };
    let mut prefill = None;
    for &form in forms {
        let mut cache = lm.new_cache();
        let (logits, trace) = lm.forward_traced(&embeds, &mut cache, form)?;
        let what = format!("{case} ({form:?})");
        check_trace(&what, &dir, &trace, &spec, &mut worst)?;
        check_step(&what, 0, &logits, &r, &mut worst)?;
        prefill = Some((logits, cache));
    }
    let (mut logits, mut cache) = prefill.context("at least one prefill form")?;

    // Greedy decode with the cache; EOS does not stop (fixtures README §5.4).
    for i in 0..r.max_new_tokens {
        let tok = check_step(&format!("{case} cached"), i, &logits, &r, &mut worst)?;
        if i + 1 < r.max_new_tokens {
            let e = lm.embed(&Tensor::new(&[[tok]], &dev)?)?;
            logits = lm.forward(&e, &mut cache, Logits::Last)?;
        }
    }
    ensure!(
        cache.len() == r.prompt_len + r.max_new_tokens - 1,
        "cache holds {}",
        cache.len()
    );

    // The same ids by full recompute without a cache (checks the cached latent and rope key).
    if mla {
        let ids = Tensor::new(&r.generated_ids[..], &dev)?.unsqueeze(0)?;
        let gen = lm.embed(&ids)?;
        for i in 0..r.max_new_tokens {
            let x = Tensor::cat(&[&embeds, &gen.narrow(1, 0, i)?], 1)?;
            let logits = lm.forward(&x, &mut lm.new_cache(), Logits::Last)?;
            check_step(&format!("{case} recomputed"), i, &logits, &r, &mut worst)?;
        }
    }
    eprintln!("{case}: max deviations {worst:?}");
    Ok(())
}

/// Every case with tensor dumps (`ref/<case>/inputs_embeds.npy`); together they must cover the
/// tiny, small and base models.
#[test]
fn vl2_llm_every_dumped_case_matches() -> anyhow::Result<()> {
    let dir = fixtures()?;
    let mut names: Vec<String> = std::fs::read_dir(dir.join("ref"))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("inputs_embeds.npy").is_file())
        .filter_map(|e| e.file_name().to_str().map(String::from))
        .collect();
    names.sort();
    let flavours: std::collections::BTreeSet<&str> =
        names.iter().filter_map(|n| n.split('_').next()).collect();
    ensure!(
        ["base", "small", "tiny"]
            .iter()
            .all(|f| flavours.contains(f)),
        "dumped cases {names:?} do not cover tiny, small and base"
    );
    let failures: Vec<String> = names
        .iter()
        .filter_map(|n| run_case(n).err().map(|e| format!("{n}: {e:#}")))
        .collect();
    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

/// The fixture configs omit keys on purpose (README §1); the official defaults must apply.
#[test]
fn vl2_llm_fixture_configs_take_the_official_defaults() -> anyhow::Result<()> {
    let models = fixtures()?.join("models");
    let tiny = spec_of(&models.join("vl2-tiny-random"))?;
    assert_eq!(tiny.attention, AttentionKind::Mha { head_dim: 4 });
    for name in ["vl2-small-random", "vl2-base-random"] {
        let s = spec_of(&models.join(name))?;
        assert_eq!((s.rms_norm_eps, s.rope_theta), (1e-6, 10000.0), "{name}");
        assert!(
            matches!(
                s.attention,
                AttentionKind::Mla {
                    q_lora_rank: None,
                    ..
                }
            ),
            "{name}"
        );
    }
    let base = spec_of(&models.join("vl2-base-random"))?;
    let moe = base.moe.context("base is MoE")?;
    assert_eq!(moe.scoring_func, ScoringFunc::Sigmoid);
    assert_eq!(moe.routed_scaling_factor, 2.0);
    Ok(())
}
