//! The official `openai` Python package against the server (issue #3's compatibility test):
//! `tests/openai_compat.py` run against the v1 and the VL2 tiny fixture models, each served by
//! `serve_on` (what `dsvl serve` runs) on a free loopback port.
//!
//! Ignored by default, since it needs PyPI once:
//! `cargo test -p dsvl-server --test server openai_compat -- --ignored --nocapture`.
//! It creates a virtualenv in `target/tmp/openai-venv` (reused afterwards) and installs `openai`
//! there; without python3, venv or PyPI it prints `SKIPPED: ...` and passes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use dsvl_server::ServerConfig;
use serde_json::Value;

use super::harness::{engine_fixtures, start_server};

fn run(cmd: &mut Command) -> Result<Output, String> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| format!("{shown}: {e}"))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(format!(
            "{shown}: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The virtualenv's python with `openai` importable, or why not.
fn python_with_openai() -> Result<PathBuf, String> {
    // The two tests here share the virtualenv: one creates it at a time.
    static CREATING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = CREATING.lock().unwrap_or_else(|e| e.into_inner());
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("openai-venv");
    let python = venv.join("bin/python");
    let has_openai = |py: &Path| run(Command::new(py).args(["-c", "import openai"])).is_ok();
    if python.is_file() && has_openai(&python) {
        return Ok(python);
    }
    let system = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    run(Command::new(&system).arg("-m").arg("venv").arg(&venv))
        .map_err(|e| format!("cannot create a virtualenv with {system}: {e}"))?;
    run(Command::new(&python).args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--timeout",
        "20",
        "--retries",
        "1",
        "openai",
    ]))
    .map_err(|e| format!("cannot install `openai` from PyPI (offline?): {e}"))?;
    Ok(python)
}

/// Serves `model_dir` on a free loopback port until the returned sender is dropped or fired.
async fn start(model_dir: PathBuf) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    start_server(ServerConfig {
        model_dir,
        model_name: "dsvl-fixture".into(),
        ..Default::default()
    })
    .await
}

fn read_json(path: PathBuf) -> Value {
    serde_json::from_slice(&std::fs::read(&path).expect("fixture")).expect("fixture JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "installs the openai package from PyPI; run with --ignored"]
async fn openai_compat() {
    let python = match tokio::task::spawn_blocking(python_with_openai)
        .await
        .expect("task")
    {
        Ok(p) => p,
        Err(why) => {
            println!("SKIPPED openai_compat: {why}");
            return;
        }
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openai_compat.py");
    let v1 = engine_fixtures("v1");
    let v2 = engine_fixtures("v2");
    let v1_case = read_json(v1.join("cases/siglip-tiny__single.json"));
    let v2_ref = read_json(v2.join("ref/tiny_single_wide.json"));
    let runs = [
        (
            v1.join("models/siglip-tiny"),
            v1.join("images/landscape_500x333.png"),
            "Describe this image in detail.".to_string(),
            32,
            v1_case["decoded"].as_str().expect("decoded").to_string(),
            v1_case["n_tokens"].as_u64().expect("n_tokens"),
            "{}",
        ),
        (
            v2.join("models/vl2-tiny-random"),
            v2.join("images/panorama_1200x320.png"),
            "\nDescribe this panorama in detail.".to_string(),
            v2_ref["max_new_tokens"].as_u64().expect("steps"),
            v2_ref["generated_text"].as_str().expect("text").to_string(),
            v2_ref["prompt_len"].as_u64().expect("prompt_len"),
            r#"{"ignore_eos": true}"#,
        ),
    ];
    for (model, image, prompt, max_tokens, text, prompt_tokens, extra) in runs {
        let (addr, stop) = start(model.clone()).await;
        let mut cmd = Command::new(&python);
        cmd.arg(&script)
            .arg("--base-url")
            .arg(format!("http://{addr}/v1"))
            .arg("--image")
            .arg(&image)
            .arg("--prompt")
            .arg(&prompt)
            .arg("--max-tokens")
            .arg(max_tokens.to_string())
            .arg("--expect-text")
            .arg(&text)
            .arg("--expect-prompt-tokens")
            .arg(prompt_tokens.to_string())
            .arg("--extra-body")
            .arg(extra);
        let out = tokio::task::spawn_blocking(move || cmd.output())
            .await
            .expect("task")
            .expect("python runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        println!("--- {}\n{stdout}", model.display());
        assert!(
            out.status.success() && stdout.contains("ALL OK"),
            "{}: {stdout}{}",
            model.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let _ = stop.send(());
    }
}

/// The Pydantic flow of structured output (`client.beta.chat.completions.parse(response_format=
/// Model)`) against the v1 fixture model: `tests/openai_structured.py`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "installs the openai package from PyPI; run with --ignored"]
async fn openai_structured() {
    let python = match tokio::task::spawn_blocking(python_with_openai)
        .await
        .expect("task")
    {
        Ok(p) => p,
        Err(why) => {
            println!("SKIPPED openai_structured: {why}");
            return;
        }
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openai_structured.py");
    let v1 = engine_fixtures("v1");
    let (addr, stop) = start(v1.join("models/siglip-tiny")).await;
    let mut cmd = Command::new(&python);
    cmd.arg(&script)
        .arg("--base-url")
        .arg(format!("http://{addr}/v1"))
        .arg("--image")
        .arg(v1.join("images/landscape_500x333.png"));
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("task")
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success() && stdout.contains("ALL OK"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = stop.send(());
}
