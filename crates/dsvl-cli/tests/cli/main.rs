//! The `dsvl` binary end to end on the tiny fixture models: exit codes, stdout/stderr, formats.

mod batch;
mod bench;
mod pdf;
mod serve;
mod structured;
mod vl2;
mod webui;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../dsvl/tests/fixtures/v1")
}

fn model(name: &str) -> String {
    fixtures().join("models").join(name).display().to_string()
}

fn dsvl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dsvl"))
        .args(args)
        .env("DSVL_LOG", "warn")
        .output()
        .expect("the dsvl binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The reference's greedy answer for the single-image case, decoded.
fn reference_text(case: &str) -> String {
    let j: serde_json::Value = serde_json::from_slice(
        &std::fs::read(fixtures().join(format!("cases/{case}.json"))).unwrap(),
    )
    .unwrap();
    j["decoded"].as_str().unwrap().to_string()
}

#[test]
fn run_prints_the_reference_answer() {
    let img = fixtures().join("images/landscape_500x333.png");
    let o = dsvl(&[
        "run",
        "--model",
        &model("siglip-tiny"),
        "--image",
        img.to_str().unwrap(),
        "--max-tokens",
        "32",
        "<image_placeholder>Describe this image in detail.",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o).trim_end_matches('\n'),
        reference_text("siglip-tiny__single")
    );
}

#[test]
fn messages_file_and_jsonl_logprobs() {
    let dir = std::env::temp_dir().join(format!("dsvl-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let img = fixtures().join("images/landscape_500x333.png");
    let conv = serde_json::json!([
        {"role": "user", "content": "<image_placeholder>Describe this image in detail.", "images": [img]},
    ]);
    let file = dir.join("conv.json");
    std::fs::write(&file, conv.to_string()).unwrap();
    let o = dsvl(&[
        "run",
        "--model",
        &model("siglip-tiny"),
        "--messages",
        file.to_str().unwrap(),
        "--max-tokens",
        "4",
        "--logprobs",
        "3",
        "--format",
        "jsonl",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lines: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    assert_eq!(lines.len(), 5, "4 tokens and a summary");
    for tok in &lines[..4] {
        assert_eq!(tok["top_logprobs"].as_array().unwrap().len(), 3);
        assert!(tok["logprob"].as_f64().unwrap() <= 0.0);
        assert_eq!(
            tok["top_logprobs"][0]["token_id"], tok["token_id"],
            "greedy picks the top token"
        );
    }
    let summary = &lines[4];
    assert_eq!(summary["finish_reason"], "length");
    assert_eq!(summary["completion_tokens"], 4);
    assert_eq!(summary["prompt_tokens"], 668);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn inspect_describes_both_layouts() {
    for (name, layout) in [
        ("hybrid-tiny", "Original"),
        ("hybrid-tiny-hf", "Transformers"),
    ] {
        let o = dsvl(&["inspect", &model(name)]);
        assert!(o.status.success(), "{}", stderr(&o));
        let out = stdout(&o);
        assert!(out.contains(&format!("layout:        {layout}")), "{out}");
        assert!(out.contains("hybrid: SAM 1024px"), "{out}");
        assert!(out.contains("bos 100000 eos 100001 image 100015"), "{out}");
        assert!(out.contains("problems:      none found"), "{out}");
    }
}

#[test]
fn user_errors_exit_non_zero_with_a_message() {
    let o = dsvl(&["run", "--model", "/nonexistent/dir", "hi"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("no such folder"), "{}", stderr(&o));

    let o = dsvl(&[
        "run",
        "--model",
        &model("siglip-tiny"),
        "--image",
        "/nonexistent.png",
        "hi",
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("/nonexistent.png does not exist"),
        "{}",
        stderr(&o)
    );

    let o = dsvl(&[
        "run",
        "--model",
        &model("siglip-tiny"),
        "--temperature",
        "-1",
        "hi",
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("temperature"), "{}", stderr(&o));
    assert!(!stderr(&o).contains("panicked"));

    let o = dsvl(&[
        "run",
        "--model",
        &model("siglip-tiny"),
        "--device",
        "metal",
        "hi",
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("use auto, cpu, cuda or cuda:N"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn device_choice_is_reported_and_cuda_needs_a_cuda_build() {
    let o = dsvl(&[
        "run",
        "--model",
        &model("siglip-tiny"),
        "--device",
        "cpu",
        "--max-tokens",
        "2",
        "hi",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("device: cpu"), "{}", stderr(&o));
    if !cfg!(feature = "cuda") {
        let o = dsvl(&[
            "run",
            "--model",
            &model("siglip-tiny"),
            "--device",
            "cuda",
            "hi",
        ]);
        assert!(!o.status.success());
        let err = stderr(&o);
        assert!(
            err.contains("built without CUDA support") && err.contains("build-cuda.sh"),
            "{err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}

/// A loopback server in the Hub's URL layout (`/api/models/{repo}/revision/main`,
/// `/{repo}/resolve/main/{file}` with the headers hf-hub reads), serving one fixture model.
/// Bounded: it stops after `max_requests` connections or when the test drops the listener.
fn serve_hub(
    repo: &str,
    dir: PathBuf,
    max_requests: usize,
) -> (String, std::thread::JoinHandle<usize>) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let repo = repo.to_string();
    let handle = std::thread::spawn(move || {
        let commit = "0123456789abcdef0123456789abcdef01234567";
        let mut served = 0;
        for stream in listener.incoming().take(max_requests) {
            let Ok(mut stream) = stream else { break };
            let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(10)));
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            if reader.read_line(&mut request).is_err() {
                continue;
            }
            let mut range_start = None;
            let mut range_end = None;
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                    break;
                }
                if let Some(r) = h.to_ascii_lowercase().strip_prefix("range: bytes=") {
                    let (a, b) = r.trim().split_once('-').unwrap_or(("0", ""));
                    range_start = a.parse::<usize>().ok();
                    range_end = b.parse::<usize>().ok();
                }
            }
            let path = request.split_whitespace().nth(1).unwrap_or("/").to_string();
            let info_path = format!("/api/models/{repo}/revision/main");
            let file_prefix = format!("/{repo}/resolve/main/");
            let (status, headers, body): (&str, Vec<String>, Vec<u8>) = if path == info_path {
                let siblings: Vec<_> = std::fs::read_dir(&dir)
                    .unwrap()
                    .map(|e| serde_json::json!({"rfilename": e.unwrap().file_name().to_string_lossy()}))
                    .collect();
                let body = serde_json::json!({"sha": commit, "siblings": siblings}).to_string();
                (
                    "200 OK",
                    vec!["Content-Type: application/json".into()],
                    body.into_bytes(),
                )
            } else if let Some(file) = path.strip_prefix(&file_prefix) {
                match std::fs::read(dir.join(file)) {
                    Ok(bytes) => {
                        let size = bytes.len();
                        let start = range_start.unwrap_or(0).min(size);
                        let end = range_end.map_or(size, |e| (e + 1).min(size));
                        let headers = vec![
                            format!("ETag: \"etag-{file}-{size}\""),
                            format!("X-Repo-Commit: {commit}"),
                            format!(
                                "Content-Range: bytes {start}-{}/{size}",
                                end.saturating_sub(1)
                            ),
                        ];
                        ("206 Partial Content", headers, bytes[start..end].to_vec())
                    }
                    Err(_) => ("404 Not Found", vec![], b"not found".to_vec()),
                }
            } else {
                ("404 Not Found", vec![], b"not found".to_vec())
            };
            let mut head = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
                body.len()
            );
            for h in headers {
                head.push_str(&h);
                head.push_str("\r\n");
            }
            head.push_str("\r\n");
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
            served += 1;
        }
        served
    });
    (addr, handle)
}

#[test]
fn repo_id_is_downloaded_into_the_hub_cache_then_reused() {
    let home = std::env::temp_dir().join(format!("dsvl-hfhome-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&home);
    let repo = "dsvl-test/siglip-tiny";
    let files = std::fs::read_dir(fixtures().join("models/siglip-tiny"))
        .unwrap()
        .count();
    // One info request, then per file a metadata request and a download.
    let (endpoint, server) = serve_hub(repo, fixtures().join("models/siglip-tiny"), 1 + 2 * files);
    let img = fixtures().join("images/landscape_500x333.png");
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_dsvl"))
            .args([
                "run",
                "--model",
                repo,
                "--image",
                img.to_str().unwrap(),
                "--max-tokens",
                "32",
            ])
            .arg("<image_placeholder>Describe this image in detail.")
            .env("HF_ENDPOINT", &endpoint)
            .env("HF_HOME", &home)
            .env_remove("HF_HUB_CACHE")
            .env("DSVL_LOG", "warn")
            .output()
            .unwrap()
    };
    let o = run();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o).trim_end_matches('\n'),
        reference_text("siglip-tiny__single")
    );
    let snapshot = home.join("hub/models--dsvl-test--siglip-tiny/snapshots");
    assert!(snapshot.is_dir(), "the model is in the Hub cache layout");
    assert_eq!(
        server.join().unwrap(),
        1 + 2 * files,
        "every file was fetched once"
    );
    // The server is gone: a second run must come from the cache.
    let o = run();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o).trim_end_matches('\n'),
        reference_text("siglip-tiny__single")
    );
    let _ = std::fs::remove_dir_all(&home);
}
