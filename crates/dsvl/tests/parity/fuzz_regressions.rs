//! Inputs the fuzz targets (`fuzz/`, RELIABILITY.md) found crashing, replayed as the targets
//! feed them: `tests/fixtures/fuzz-regressions/<target>/<input>`. Each must now be an error
//! (or a result), never a panic. A new finding is one more file in its target's folder.

use std::path::{Path, PathBuf};

use dsvl::prompt::PromptTokenizer;
use dsvl::Error;

fn inputs(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/fuzz-regressions")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    files
}

/// An empty scratch directory, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("dsvl-fuzzreg-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `fuzz_targets/tokenizer_json.rs`: `tokenizer.json`, a NUL, `tokenizer_config.json`.
fn load_tokenizer(tag: &str, data: &[u8]) -> anyhow::Result<dsvl::Result<PromptTokenizer>> {
    let dir = Dir::new(tag)?;
    let mut parts = data.splitn(2, |&b| b == 0);
    std::fs::write(
        dir.0.join("tokenizer.json"),
        parts.next().unwrap_or_default(),
    )?;
    if let Some(cfg) = parts.next() {
        std::fs::write(dir.0.join("tokenizer_config.json"), cfg)?;
    }
    Ok(PromptTokenizer::from_model_dir(&dir.0, "<image>"))
}

fn assert_tokenizer_error(what: &str, got: dsvl::Result<PromptTokenizer>) -> anyhow::Result<()> {
    let err = got
        .err()
        .ok_or_else(|| anyhow::anyhow!("{what}: a malformed tokenizer.json loaded"))?;
    let msg = err.to_string();
    eprintln!("{what}: {msg}");
    anyhow::ensure!(matches!(err, Error::Tokenizer { .. }), "{what}: {err:?}");
    anyhow::ensure!(
        msg.contains("tokenizer.json") && msg.contains("re-download"),
        "{what}: {msg}"
    );
    Ok(())
}

#[test]
fn tokenizer_json_findings_are_errors() -> anyhow::Result<()> {
    let found = inputs("tokenizer_json");
    anyhow::ensure!(!found.is_empty(), "no tokenizer_json inputs");
    for (i, path) in found.iter().enumerate() {
        let got = load_tokenizer(&format!("tok{i}"), &std::fs::read(path)?)?;
        assert_tokenizer_error(&path.display().to_string(), got)?;
    }
    Ok(())
}

/// The two `expect`s of `tokenizers` 0.22 that malformed files reach, in their smallest form: a
/// syntax error inside `decoder` (its untagged helper), and a `Precompiled` normalizer whose
/// charsmap does not parse.
#[test]
fn tokenizer_json_library_panics_are_errors() -> anyhow::Result<()> {
    let model = r#""model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}"#;
    let cases = [
        (
            "decoder",
            format!(r#"{{"version": "1.0", "decoder": {{"type": "ByteLevel" "x": 1}}, {model}}}"#),
        ),
        (
            "precompiled",
            format!(
                r#"{{"version": "1.0", "normalizer": {{"type": "Precompiled", "precompiled_charsmap": "AAAA"}}, {model}}}"#
            ),
        ),
    ];
    for (what, json) in cases {
        assert_tokenizer_error(what, load_tokenizer(what, json.as_bytes())?)?;
    }
    Ok(())
}
