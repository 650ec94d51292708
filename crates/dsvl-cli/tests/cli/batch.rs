//! `dsvl batch` on the tiny fixture model: answers equal `dsvl run`'s, bad items are error lines,
//! an interrupted output is repaired and resumed, shards split the job.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{dsvl, fixtures, model, reference_text, stderr};

const PROMPT: &str = "Describe this image in detail.";

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dsvl-batch-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn batch(inputs: &[&Path], output: &Path, extra: &[&str]) -> std::process::Output {
    let m = model("siglip-tiny");
    let mut args = vec!["batch", "--model", &m, "--prompt", PROMPT, "--output"];
    let out = output.to_str().unwrap();
    args.push(out);
    args.extend_from_slice(extra);
    let inputs: Vec<String> = inputs.iter().map(|p| p.display().to_string()).collect();
    args.extend(inputs.iter().map(String::as_str));
    dsvl(&args)
}

/// Output lines by id (each id must appear once).
fn lines(output: &Path) -> BTreeMap<String, Value> {
    let text = std::fs::read_to_string(output).unwrap();
    let mut by_id = BTreeMap::new();
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        let id = v["id"].as_str().unwrap().to_string();
        assert!(
            by_id.insert(id.clone(), v).is_none(),
            "{id} twice in {text}"
        );
    }
    by_id
}

#[test]
fn batch_answers_like_run_records_bad_items_and_resumes() {
    let dir = temp_dir("resume");
    let images = dir.join("images");
    std::fs::create_dir_all(images.join("nested")).unwrap();
    let src = fixtures().join("images");
    for (name, to) in [
        ("landscape_500x333.png", "a.png"),
        ("portrait_333x500.png", "nested/b.png"),
        ("photo_640x480_q90_420.jpg", "c.jpg"),
    ] {
        std::fs::copy(src.join(name), images.join(to)).unwrap();
    }
    std::fs::write(images.join("truncated.png"), b"\x89PNG\r\n\x1a\n\0\0").unwrap();
    std::fs::write(images.join("notes.txt"), "not an image").unwrap();
    let output = dir.join("out.jsonl");

    let o = batch(
        &[&images],
        &output,
        &["--max-tokens", "32", "--max-running", "2"],
    );
    assert!(
        !o.status.success(),
        "a failed item makes the exit code non-zero"
    );
    assert!(
        stderr(&o).contains("3 answered, 1 failed"),
        "{}",
        stderr(&o)
    );
    let first = lines(&output);
    assert_eq!(first.len(), 4, "{first:?}");
    let a = &first[&images.join("a.png").display().to_string()];
    // The same image and question as the fixture case, greedy: `dsvl run`'s answer.
    assert_eq!(a["answer"], reference_text("siglip-tiny__single"));
    assert_eq!(a["completion_tokens"], 32);
    let bad = &first[&images.join("truncated.png").display().to_string()];
    assert!(
        bad["error"]["message"]
            .as_str()
            .unwrap()
            .contains("truncated.png"),
        "{bad}"
    );

    // A run killed while writing: the last answer is cut in half.
    let text = std::fs::read_to_string(&output).unwrap();
    let last = text.trim_end().rfind('\n').unwrap() + 1;
    let cut = last + (text.len() - last) / 2;
    std::fs::write(&output, &text[..cut]).unwrap();
    std::fs::remove_file(images.join("truncated.png")).unwrap();

    let o = batch(&[&images], &output, &["--max-tokens", "32"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("dropping a partial last line"),
        "{}",
        stderr(&o)
    );
    let resumed = lines(&output);
    // The cut item was answered again, the failed one is gone (its file too), the rest kept.
    assert_eq!(resumed.len(), 3, "{resumed:?}");
    for (id, v) in &resumed {
        assert_eq!(v["answer"], first[id]["answer"], "{id}");
    }
    // Everything done: a third run does nothing.
    let o = batch(&[&images], &output, &["--max-tokens", "32"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("3 already in"), "{}", stderr(&o));
    assert_eq!(lines(&output).len(), 3);
}

#[test]
fn shards_are_disjoint_and_cover_the_job() {
    let dir = temp_dir("shards");
    let images = fixtures().join("images");
    let mut all = BTreeMap::new();
    for shard in ["0/2", "1/2"] {
        let output = dir.join(format!("part-{}.jsonl", &shard[..1]));
        let o = batch(
            &[&images],
            &output,
            &["--max-tokens", "2", "--shard", shard],
        );
        assert!(o.status.success(), "{}", stderr(&o));
        for (id, v) in lines(&output) {
            assert!(all.insert(id.clone(), v).is_none(), "{id} in both shards");
        }
    }
    assert_eq!(all.len(), 3, "{all:?}");
    let o = batch(&[&images], &dir.join("x.jsonl"), &["--shard", "2/2"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("I must be below N"), "{}", stderr(&o));
}

/// Killed (SIGKILL) at several moments and resumed each time, the job ends with every item once
/// and the answers of an uninterrupted run.
#[test]
fn killed_runs_resume_to_the_uninterrupted_result() {
    let dir = temp_dir("kill");
    let images = dir.join("images");
    std::fs::create_dir_all(&images).unwrap();
    let src = fixtures().join("images");
    let names = [
        "landscape_500x333.png",
        "portrait_333x500.png",
        "photo_640x480_q90_420.jpg",
    ];
    for i in 0..12 {
        let name = names[i % names.len()];
        let ext = Path::new(name).extension().unwrap().to_str().unwrap();
        std::fs::copy(src.join(name), images.join(format!("{i:02}.{ext}"))).unwrap();
    }
    let extra = ["--max-tokens", "24", "--max-running", "4"];
    let whole = dir.join("whole.jsonl");
    let o = batch(&[&images], &whole, &extra);
    assert!(o.status.success(), "{}", stderr(&o));
    let expected = lines(&whole);
    assert_eq!(expected.len(), 12);

    let output = dir.join("killed.jsonl");
    let m = model("siglip-tiny");
    for (round, after_ms) in [150u64, 400, 700, 250, 900].into_iter().enumerate() {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_dsvl"))
            .args(["batch", "--model", &m, "--prompt", PROMPT, "--output"])
            .arg(&output)
            .args(extra)
            .arg(&images)
            .env("DSVL_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(after_ms));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        eprintln!("round {round}: killed after {after_ms} ms");
    }
    let o = batch(&[&images], &output, &extra);
    assert!(o.status.success(), "{}", stderr(&o));
    let resumed = lines(&output);
    assert_eq!(
        resumed.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    for (id, v) in &resumed {
        assert_eq!(v["answer"], expected[id]["answer"], "{id}");
    }
}

fn dsvl_batch(args: &[&str]) -> std::process::Output {
    let m = model("siglip-tiny");
    let mut all = vec!["batch", "--model", &m];
    all.extend_from_slice(args);
    dsvl(&all)
}

/// An OpenAI Batch API input file runs unchanged: answers as `dsvl serve` gives them, in
/// OpenAI's batch output format, invalid lines as 400 responses, and a resumed run retries
/// only those.
#[test]
fn openai_batch_files_round_trip() {
    use base64::Engine as _;
    let dir = temp_dir("openai");
    let png = fixtures().join("images/landscape_500x333.png");
    std::fs::copy(&png, dir.join("receipt.png")).unwrap();
    let data_url = format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(std::fs::read(&png).unwrap())
    );
    let request = |id: &str, url: &str, extra: serde_json::Value| {
        let mut body = serde_json::json!({
            "model": "gpt-4o",  // OpenAI's model names are accepted and ignored
            "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": url}},
                {"type": "text", "text": "Describe this image in detail."},
            ]}],
            "temperature": 0,
            "max_tokens": 32,
        });
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        serde_json::json!({"custom_id": id, "method": "POST", "url": "/v1/chat/completions", "body": body})
            .to_string()
    };
    let input = dir.join("requests.jsonl");
    let text = [
        request("inline", &data_url, serde_json::json!({})),
        request(
            "by-path",
            "receipt.png",
            serde_json::json!({"logprobs": true, "top_logprobs": 2}),
        ),
        request(
            "bad-type",
            &data_url,
            serde_json::json!({"temperature": "hot"}),
        ),
        request("remote", "https://example.com/a.png", serde_json::json!({})),
        // A PDF file part: its pages become images, as in the server.
        serde_json::json!({"custom_id": "pdf", "method": "POST", "url": "/v1/chat/completions",
            "body": {"messages": [{"role": "user", "content": [
                {"type": "file", "file": {"filename": "f.pdf", "file_data": format!(
                    "data:application/pdf;base64,{}",
                    base64::engine::general_purpose::STANDARD.encode(
                        std::fs::read(pdf_fixtures().join("fidelity.pdf")).unwrap()))}},
                {"type": "text", "text": "Read it."}]}],
                "max_tokens": 3, "temperature": 0}})
        .to_string(),
    ]
    .join("\n");
    std::fs::write(&input, text + "\n").unwrap();
    let output = dir.join("results.jsonl");
    let args = [
        "--output",
        output.to_str().unwrap(),
        input.to_str().unwrap(),
    ];
    let o = dsvl_batch(&args);
    assert!(!o.status.success(), "two requests are invalid");
    assert!(
        stderr(&o).contains("3 answered, 2 failed"),
        "{}",
        stderr(&o)
    );
    let by_id: BTreeMap<String, Value> = std::fs::read_to_string(&output)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (v["custom_id"].as_str().unwrap().to_string(), v)
        })
        .collect();
    assert_eq!(by_id.len(), 5);
    let pdf = &by_id["pdf"]["response"];
    assert_eq!(pdf["status_code"], 200, "{pdf}");
    // Five pages of 576 image tokens each, plus the text.
    assert!(
        pdf["body"]["usage"]["prompt_tokens"].as_u64().unwrap() > 5 * 576,
        "{pdf}"
    );
    let reference = reference_text("siglip-tiny__single");
    for id in ["inline", "by-path"] {
        let v = &by_id[id];
        assert!(v["id"].as_str().unwrap().starts_with("batch_req_"), "{v}");
        assert_eq!(v["error"], Value::Null);
        assert_eq!(v["response"]["status_code"], 200);
        let body = &v["response"]["body"];
        assert_eq!(body["object"], "chat.completion");
        assert_eq!(v["response"]["request_id"], body["id"]);
        assert_eq!(body["choices"][0]["message"]["content"], reference, "{id}");
        assert_eq!(body["usage"]["completion_tokens"], 32);
    }
    assert_eq!(
        by_id["by-path"]["response"]["body"]["choices"][0]["logprobs"]["content"]
            .as_array()
            .unwrap()
            .len(),
        32
    );
    let bad = &by_id["bad-type"]["response"];
    assert_eq!(bad["status_code"], 400);
    assert_eq!(bad["body"]["error"]["param"], "temperature", "{bad}");
    let remote = &by_id["remote"]["response"];
    assert_eq!(remote["status_code"], 400);
    assert!(
        remote["body"]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("does not download"),
        "{remote}"
    );

    // Resumed: the answered requests are kept, the failed ones tried again (and fail again).
    let o = dsvl_batch(&args);
    assert!(stderr(&o).contains("3 already in"), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("0 answered, 2 failed"),
        "{}",
        stderr(&o)
    );
    assert_eq!(std::fs::read_to_string(&output).unwrap().lines().count(), 5);

    // Mixed inputs, a missing prompt, a prompt with request files: refused before loading.
    let o = dsvl_batch(&[
        "--output",
        "x.jsonl",
        input.to_str().unwrap(),
        png.to_str().unwrap(),
    ]);
    assert!(stderr(&o).contains("cannot be mixed"), "{}", stderr(&o));
    let o = dsvl_batch(&["--output", "x.jsonl", png.to_str().unwrap()]);
    assert!(stderr(&o).contains("--prompt is needed"), "{}", stderr(&o));
    let o = dsvl_batch(&[
        "--prompt",
        "x",
        "--output",
        "x.jsonl",
        input.to_str().unwrap(),
    ]);
    assert!(
        stderr(&o).contains("does not apply to request files"),
        "{}",
        stderr(&o)
    );
}

/// `--glob` picks files below the folder; `--json` answers carry the parsed value (or say why
/// not); every line reports its image tokens.
#[test]
fn glob_json_and_image_tokens() {
    let dir = temp_dir("glob");
    let images = dir.join("images");
    std::fs::create_dir_all(images.join("deep")).unwrap();
    let src = fixtures().join("images");
    std::fs::copy(src.join("landscape_500x333.png"), images.join("top.png")).unwrap();
    std::fs::copy(
        src.join("portrait_333x500.png"),
        images.join("deep/low.png"),
    )
    .unwrap();
    std::fs::copy(
        src.join("photo_640x480_q90_420.jpg"),
        images.join("deep/photo.jpg"),
    )
    .unwrap();
    let output = dir.join("out.jsonl");
    let o = batch(
        &[&images],
        &output,
        &["--glob", "**/*.png", "--json", "--max-tokens", "6"],
    );
    let got = lines(&output);
    assert_eq!(
        got.keys().cloned().collect::<Vec<_>>(),
        [images.join("deep/low.png"), images.join("top.png")]
            .map(|p| p.display().to_string())
            .to_vec(),
        "{}",
        stderr(&o)
    );
    for v in got.values() {
        assert_eq!(v["image_tokens"], 576, "{v}");
        // Six tokens of a constrained random model: JSON that may or may not be finished, and
        // the line says which.
        let answer = v["answer"].as_str().unwrap();
        match serde_json::from_str::<Value>(answer) {
            Ok(parsed) => assert_eq!(v["json"], parsed, "{v}"),
            Err(_) => assert!(
                v["json_error"].as_str().unwrap().contains("--max-tokens"),
                "{v}"
            ),
        }
        assert!(answer.trim_start().starts_with('{'), "{v}");
    }
}

fn pdf_fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../dsvl/tests/fixtures/pdf")
}

/// PDFs in a folder become one item per selected page (`--pages`), each line saying its page;
/// documents that do not open are one error line each and the run goes on.
#[test]
fn pdf_pages_are_items_and_bad_documents_are_error_lines() {
    let dir = temp_dir("pdf");
    let docs = dir.join("docs");
    std::fs::create_dir_all(&docs).unwrap();
    for name in [
        "fidelity.pdf",
        "encrypted.pdf",
        "truncated.pdf",
        "zero-pages.pdf",
    ] {
        std::fs::copy(pdf_fixtures().join(name), docs.join(name)).unwrap();
    }
    let run = |out: &str, extra: &[&str]| {
        let output = dir.join(out);
        let mut args = vec!["--pages", "1,4", "--dpi", "72", "--max-tokens", "12"];
        args.extend_from_slice(extra);
        let o = batch(&[&docs], &output, &args);
        assert!(!o.status.success(), "three documents do not open");
        assert!(
            stderr(&o).contains("2 answered, 3 failed"),
            "{}",
            stderr(&o)
        );
        lines(&output)
    };
    let got = run("one.jsonl", &["--max-running", "1"]);
    let fidelity = docs.join("fidelity.pdf").display().to_string();
    for page in [1, 4] {
        let v = &got[&format!("{fidelity}#page={page}")];
        assert_eq!(v["page"], page, "{v}");
        assert_eq!(v["source"], fidelity.as_str());
        assert_eq!(v["image_tokens"], 576);
        assert_eq!(v["completion_tokens"], 12);
    }
    for (name, why) in [
        ("encrypted.pdf", "password"),
        ("truncated.pdf", "truncated.pdf"),
        ("zero-pages.pdf", "no pages"),
    ] {
        let v = &got[&docs.join(name).display().to_string()];
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains(why), "{name}: {message}");
    }
    // The same pages decoded together give the same answers (batch invariance).
    let together = run("two.jsonl", &["--max-running", "2"]);
    for (id, v) in &got {
        assert_eq!(v["answer"], together[id]["answer"], "{id}");
    }
    // A page the document does not have: an error line naming its page count.
    let output = dir.join("range.jsonl");
    let o = batch(&[&docs.join("fidelity.pdf")], &output, &["--pages", "9"]);
    assert!(!o.status.success());
    let line = &lines(&output)[&fidelity];
    assert!(
        line["error"]["message"]
            .as_str()
            .unwrap()
            .contains("5 pages"),
        "{line}"
    );
    // A page of 1e9 pixels is refused before it is drawn.
    let huge = pdf_fixtures().join("huge-page.pdf");
    let output = dir.join("huge.jsonl");
    let o = batch(&[&huge], &output, &["--dpi", "100"]);
    assert!(!o.status.success());
    let line = &lines(&output)[&format!("{}#page=1", huge.display())];
    assert!(
        line["error"]["message"]
            .as_str()
            .unwrap()
            .contains("pixels"),
        "{line}"
    );
}
