//! `--model`: a local folder, or a Hugging Face repo id resolved from the local cache
//! (`$HF_HOME/hub`, default `~/.cache/huggingface/hub`) and downloaded there if absent.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

/// Files a DeepSeek-VL model folder may have besides the weights.
const SIDE_FILES: &[&str] = &[
    "config.json",
    "preprocessor_config.json",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
];

fn looks_like_repo_id(s: &str) -> bool {
    let mut parts = s.split('/');
    let ok = |p: Option<&str>| {
        p.is_some_and(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                && p != ".."
                && p != "."
        })
    };
    ok(parts.next()) && ok(parts.next()) && parts.next().is_none()
}

fn hub_cache_dir() -> Option<PathBuf> {
    if let Ok(h) = std::env::var("HF_HUB_CACHE") {
        return Some(PathBuf::from(h));
    }
    if let Ok(h) = std::env::var("HF_HOME") {
        return Some(Path::new(&h).join("hub"));
    }
    std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/huggingface/hub"))
}

/// The snapshot folder of `repo` in the cache, if it holds a config.json.
fn cached_snapshot(cache: &Path, repo: &str) -> Option<PathBuf> {
    let base = cache.join(format!("models--{}", repo.replace('/', "--")));
    let rev = std::fs::read_to_string(base.join("refs/main")).ok()?;
    let snap = base.join("snapshots").join(rev.trim());
    snap.join("config.json").is_file().then_some(snap)
}

pub fn resolve_model(arg: &str, allow_download: bool) -> anyhow::Result<PathBuf> {
    let p = Path::new(arg);
    if p.is_dir() {
        return Ok(p.to_path_buf());
    }
    if !looks_like_repo_id(arg) {
        bail!("--model {arg}: no such folder, and not a Hugging Face repo id (owner/name)");
    }
    let cache = hub_cache_dir().context("cannot locate the Hugging Face cache: set HF_HOME")?;
    if let Some(snap) = cached_snapshot(&cache, arg) {
        return Ok(snap);
    }
    if !allow_download {
        bail!("{arg} is not in the Hugging Face cache at {}; run `dsvl run --model {arg} …` to download it", cache.display());
    }
    download(&cache, arg)
}

fn download(cache: &Path, repo_id: &str) -> anyhow::Result<PathBuf> {
    use hf_hub::api::sync::ApiBuilder;
    eprintln!("downloading {repo_id} into {}", cache.display());
    let api = ApiBuilder::from_env()
        .with_cache_dir(cache.to_path_buf())
        .with_progress(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .build()
        .context("cannot set up the Hugging Face client")?;
    let repo = api.model(repo_id.to_string());
    let info = repo.info().with_context(|| {
        format!("cannot list the files of {repo_id} (no network, wrong repo id, or a gated repo?)")
    })?;
    let names: Vec<String> = info.siblings.iter().map(|s| s.rfilename.clone()).collect();
    let mut wanted: Vec<&str> = SIDE_FILES
        .iter()
        .copied()
        .filter(|f| names.iter().any(|n| n == f))
        .collect();
    let weights: Vec<&str> = names
        .iter()
        .map(|s| s.as_str())
        .filter(|n| n.ends_with(".safetensors") || *n == "model.safetensors.index.json")
        .collect();
    if weights.is_empty() {
        bail!("{repo_id} has no safetensors weights; dsvl loads safetensors checkpoints only");
    }
    wanted.extend(weights);
    let mut dir = None;
    for f in wanted {
        let path = repo
            .get(f)
            .with_context(|| format!("while downloading {f} from {repo_id}"))?;
        dir = path.parent().map(Path::to_path_buf);
    }
    dir.context("nothing was downloaded")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids() {
        assert!(looks_like_repo_id("deepseek-ai/deepseek-vl-1.3b-chat"));
        assert!(!looks_like_repo_id("a/b/c"));
        assert!(!looks_like_repo_id("../x"));
        assert!(!looks_like_repo_id("plain"));
    }
}
