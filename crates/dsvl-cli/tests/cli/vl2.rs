//! `dsvl` with DeepSeek-VL2 folders: `--messages` with VL2's own roles, the answer with its special
//! tokens kept (grounding markup) or skipped, `--boxes-json` / `--draw-boxes`, and `inspect`.

use std::path::PathBuf;

use crate::{dsvl, stderr, stdout};

fn v2() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../dsvl/tests/fixtures/v2")
}

fn read_json(p: PathBuf) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .unwrap()
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dsvl-cli-vl2-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes the fixture case's conversation as a `--messages` file (image paths made absolute) and
/// returns (file, model folder, reference json).
fn case_as_messages(case: &str, dir: &std::path::Path) -> (PathBuf, String, serde_json::Value) {
    let c = read_json(v2().join(format!("cases/{case}.json")));
    let mut messages = c["messages"].clone();
    for m in messages.as_array_mut().unwrap() {
        if let Some(imgs) = m.get_mut("images") {
            for i in imgs.as_array_mut().unwrap() {
                *i = v2()
                    .join("cases")
                    .join(i.as_str().unwrap())
                    .display()
                    .to_string()
                    .into();
            }
        }
    }
    let file = dir.join(format!("{case}.json"));
    std::fs::write(&file, messages.to_string()).unwrap();
    let model = v2().join("models").join(c["model"].as_str().unwrap());
    let reference = read_json(v2().join(format!("ref/{case}.json")));
    (file, model.display().to_string(), reference)
}

#[test]
fn vl2_run_prints_the_reference_answer_with_its_special_tokens() {
    let dir = temp_dir("text");
    let (file, model, reference) = case_as_messages("small_text_multiturn", &dir);
    let n = reference["max_new_tokens"].to_string();
    let want = reference["generated_text"].as_str().unwrap();
    assert!(want.contains("<|grounding|>"), "fixture changed: {want:?}");
    let args = [
        "run",
        "--model",
        &model,
        "--messages",
        file.to_str().unwrap(),
        "--max-tokens",
        &n,
        "--ignore-eos",
    ];
    let o = dsvl(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim_end_matches('\n'), want);

    let mut skip = args.to_vec();
    skip.push("--skip-special-tokens");
    let o = dsvl(&skip);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(!text.contains("<|grounding|>"), "{text:?}");
    assert_eq!(
        text.trim_end_matches('\n'),
        want.replace("<|grounding|>", "")
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn vl2_boxes_json_and_draw_boxes_write_their_files() {
    let dir = temp_dir("boxes");
    let (file, model, reference) = case_as_messages("tiny_single_wide", &dir);
    let (json, png) = (dir.join("boxes.json"), dir.join("boxes.png"));
    let o = dsvl(&[
        "run",
        "--model",
        &model,
        "--messages",
        file.to_str().unwrap(),
        "--max-tokens",
        &reference["max_new_tokens"].to_string(),
        "--ignore-eos",
        "--boxes-json",
        json.to_str().unwrap(),
        "--draw-boxes",
        png.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o).trim_end_matches('\n'),
        reference["generated_text"].as_str().unwrap()
    );
    // A random model answers without boxes: an empty list for the panorama's size, and a warning.
    let boxes = read_json(json);
    assert_eq!(boxes["objects"], serde_json::json!([]));
    assert_eq!(boxes["image_size"], serde_json::json!([1200, 320]));
    assert!(stderr(&o).contains("no <|det|> boxes"), "{}", stderr(&o));
    // The drawing is the last image, unchanged since there is nothing to draw.
    let drawn = dsvl::image::load(&png, 1 << 30).unwrap();
    let input = dsvl::image::load(&v2().join("images/panorama_1200x320.png"), 1 << 30).unwrap();
    assert_eq!(drawn, input);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn vl2_draw_boxes_without_an_image_is_refused_before_loading() {
    let o = dsvl(&[
        "run",
        "--model",
        "/nonexistent/model",
        "--draw-boxes",
        "/tmp/x.png",
        "Find the cat.",
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--draw-boxes"), "{}", stderr(&o));
}

#[test]
fn vl2_inspect_describes_the_model() {
    let model = v2().join("models/vl2-base-random");
    let o = dsvl(&["inspect", model.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    for want in [
        "DeepSeek-VL2",
        "MLA",
        "NoauxTc",
        "Sigmoid",
        "image 128815",
        "problems:      none found",
    ] {
        assert!(out.contains(want), "missing {want:?} in\n{out}");
    }
}

/// `--max-tiles` caps VL2's tiling (fewer image tokens per item, reported by `batch`); a
/// DeepSeek-VL model refuses it at load, naming the flag.
#[test]
fn vl2_max_tiles_caps_image_tokens_and_v1_refuses_it() {
    let dir = temp_dir("tiles");
    let model = v2().join("models/vl2-tiny-random").display().to_string();
    let image = v2().join("images/tower_300x900.png").display().to_string();
    let tokens = |extra: &[&str], name: &str| {
        let out = dir.join(name);
        let _ = std::fs::remove_file(&out);
        let mut args = vec![
            "batch",
            "--model",
            &model,
            "--prompt",
            "<image>\nRead it.",
            "--max-tokens",
            "2",
            "--output",
            out.to_str().unwrap(),
            &image,
        ];
        args.extend_from_slice(extra);
        let o = dsvl(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        let line: serde_json::Value =
            serde_json::from_str(std::fs::read_to_string(&out).unwrap().trim()).unwrap();
        line["image_tokens"].as_u64().unwrap()
    };
    let full = tokens(&[], "full.jsonl");
    let one = tokens(&["--max-tiles", "1"], "one.jsonl");
    assert!(one < full, "{one} vs {full}");
    let v1 = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../dsvl/tests/fixtures/v1/models/siglip-tiny")
        .display()
        .to_string();
    let o = dsvl(&["run", "--model", &v1, "--max-tiles", "2", "hello"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--max-tiles"), "{}", stderr(&o));
    assert!(stdout(&o).is_empty());
}
