//! Smoke tests of `dsvl bench` on the tiny fixtures and on random-weight copies of them written
//! by `cargo xtask make-checkpoint` (speed itself is measured by hand, see BENCHMARKS.md;
//! nothing here asserts a timing).

use std::path::{Path, PathBuf};
use std::process::Output;

use super::dsvl;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../dsvl/tests/fixtures/v1/models")
        .join(name)
}

fn ok(o: &Output) {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dsvl-bench-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn positive(j: &serde_json::Value, path: &[&str]) -> f64 {
    let mut v = j;
    for p in path {
        v = &v[*p];
    }
    let x = v
        .as_f64()
        .unwrap_or_else(|| panic!("{} is not a number: {v}", path.join(".")));
    assert!(
        x.is_finite() && x > 0.0,
        "{} = {x} is not positive",
        path.join(".")
    );
    x
}

#[test]
fn bench_writes_every_figure() {
    let dir = scratch("json");
    std::fs::create_dir_all(&dir).expect("temp dir");
    let json = dir.join("bench.json");
    let o = dsvl(&[
        "bench",
        "--model",
        fixture("siglip-tiny").to_str().expect("utf-8 path"),
        "--repeats",
        "1",
        "--decode-tokens",
        "4",
        "--long-context",
        "64",
        "--bandwidth-mib",
        "16",
        "--json",
        json.to_str().expect("utf-8 path"),
    ]);
    ok(&o);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("decode / roofline"), "{stdout}");
    let j: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("bench wrote --json")).expect("JSON");
    for field in [
        "load_ms",
        "preprocess_ms",
        "vision_ms_per_image",
        "prefill_tokens_per_s",
        "ttft_ms",
        "decode_tokens_per_s",
        "peak_rss_bytes",
        "memory_bandwidth_gb_s",
        "weight_bytes_per_token",
        "decode_roofline_tokens_per_s",
        "decode_roofline_pct",
    ] {
        positive(&j, &[field]);
    }
    positive(&j, &["second_turn", "ttft_ms"]);
    // The second turn continues the first: at least the first prompt is not prefilled again.
    let reused = positive(&j, &["second_turn", "reused_prompt_tokens"]);
    assert!(
        reused >= positive(&j, &["workload", "prompt_tokens"]) - 1.0,
        "second turn reused only {reused} positions"
    );
    positive(&j, &["long_context", "decode_tokens_per_s"]);
    // 576 image tokens + system prompt + question.
    assert!(positive(&j, &["workload", "prompt_tokens"]) > 600.0);
    assert!(positive(&j, &["workload", "question_tokens"]) >= 40.0);
    // On the CPU: the device is named, and there are no GPU figures.
    assert_eq!(j["machine"]["device"], "cpu");
    assert!(j["machine"]["gpu"].is_null() && j["gpu_memory"].is_null());
    // siglip-tiny's LLM: hidden 16, 2 layers, ffn 48, vocab 102400; f32; all but the embedding table.
    let per_layer = 4 * 16 * 16 + 3 * 16 * 48 + 2 * 16;
    let want = (2 * per_layer + 16 + 102_400 * 16 + 16) * 4;
    assert_eq!(j["weight_bytes_per_token"].as_u64(), Some(want as u64));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The same workload on a DeepSeek-VL2 folder: tiled image, MoE-aware weights per token.
#[test]
fn bench_runs_a_vl2_model() {
    let dir = scratch("vl2");
    std::fs::create_dir_all(&dir).expect("temp dir");
    let json = dir.join("bench.json");
    let model = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../dsvl/tests/fixtures/v2/models/vl2-base-random");
    let o = dsvl(&[
        "bench",
        "--model",
        model.to_str().expect("utf-8 path"),
        "--repeats",
        "1",
        "--warmup",
        "0",
        "--decode-tokens",
        "4",
        "--bandwidth-mib",
        "16",
        "--json",
        json.to_str().expect("utf-8 path"),
    ]);
    ok(&o);
    let j: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("bench wrote --json")).expect("JSON");
    for field in [
        "vision_ms_per_image",
        "ttft_ms",
        "decode_tokens_per_s",
        "decode_roofline_pct",
    ] {
        positive(&j, &[field]);
    }
    positive(&j, &["second_turn", "ttft_ms"]);
    assert_eq!(j["model"]["family"], "DeepSeek-VL2");
    // The 640x480 chart tiles 2x2: 1023 image tokens, plus the question.
    assert!(positive(&j, &["workload", "prompt_tokens"]) > 1023.0 + 40.0);
    // vl2-base-random: hidden 8, 3 heads, MLA (kv_lora 10, nope 4, rope 4, v 6), layer 0 dense
    // (ffn 20), layers 1-2 MoE with 2 shared + top-3 of 9 routed experts of 6, sigmoid gate with
    // its correction bias; vocab 129280; f32. Per decode step: attention 8·3·8 + 8·14 + 10 +
    // 10·3·10 + 3·6·8 = 758 and norms 16 per layer, dense 3·8·20, per MoE layer gate 9·8 + 9,
    // shared 2·144, routed 3·144; then lm_head, one embedding row and the final norm.
    let attention = 8 * 3 * 8 + 8 * 14 + 10 + 10 * 3 * 10 + 3 * 6 * 8;
    let moe = 9 * 8 + 9 + 2 * 144 + 3 * 144;
    let want = (3 * (attention + 16) + 3 * 8 * 20 + 2 * moe + 129_280 * 8 + 2 * 8) * 4;
    assert_eq!(j["weight_bytes_per_token"].as_u64(), Some(want as u64));
    // MLA caches the latent and the rope key: (10 + 4) values per layer.
    assert_eq!(j["kv_bytes_per_position"].as_u64(), Some(3 * 14 * 4));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bench_rejects_a_single_decode_token() {
    let o = dsvl(&[
        "bench",
        "--model",
        fixture("siglip-tiny").to_str().expect("utf-8 path"),
        "--decode-tokens",
        "1",
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--decode-tokens must be at least 2"));
}

/// Writes a random-weight checkpoint as `cargo xtask make-checkpoint ARGS` does (the writing
/// itself is tested in xtask/tests).
fn make_checkpoint(args: &[&str]) {
    use clap::Parser;
    let argv = ["cargo xtask", "make-checkpoint"].iter().chain(args);
    let cli = xtask::Cli::try_parse_from(argv).expect("make-checkpoint flags");
    xtask::run(cli).expect("make-checkpoint writes the checkpoint");
}

/// `bench` and `inspect` read what `cargo xtask make-checkpoint` writes: a single file with new
/// random values runs the workload, and a bf16 copy of a sharded folder has no problems.
#[test]
fn bench_and_inspect_read_a_random_weight_checkpoint() {
    let out = scratch("single");
    let from = fixture("siglip-tiny");
    make_checkpoint(&[
        "--shape",
        "tiny",
        "--from",
        from.to_str().expect("utf-8 path"),
        "--out",
        out.to_str().expect("utf-8 path"),
        "--seed",
        "7",
    ]);
    ok(&dsvl(&[
        "bench",
        "--model",
        out.to_str().expect("utf-8 path"),
        "--repeats",
        "1",
        "--warmup",
        "0",
        "--decode-tokens",
        "2",
        "--no-second-turn",
        "--bandwidth-mib",
        "0",
    ]));
    let _ = std::fs::remove_dir_all(&out);

    let out = scratch("sharded");
    let from = fixture("hybrid-tiny");
    make_checkpoint(&[
        "--shape",
        "tiny",
        "--from",
        from.to_str().expect("utf-8 path"),
        "--dtype",
        "bf16",
        "--out",
        out.to_str().expect("utf-8 path"),
    ]);
    let o = dsvl(&["inspect", out.to_str().expect("utf-8 path")]);
    ok(&o);
    assert!(String::from_utf8_lossy(&o.stdout).contains("BF16"));
    let _ = std::fs::remove_dir_all(&out);
}
