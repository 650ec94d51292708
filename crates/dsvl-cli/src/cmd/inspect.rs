//! `dsvl inspect`: what a model folder holds, from its headers only.

use anyhow::Context;
use dsvl::weights::Checkpoint;

use crate::args::InspectArgs;
use crate::model_path::resolve_model;

pub fn run(a: InspectArgs) -> anyhow::Result<()> {
    let dir = resolve_model(&a.model, false)?;
    println!("folder:        {}", dir.display());
    let config =
        dsvl::models::from_dir(&dir).with_context(|| format!("while reading {}", dir.display()))?;
    println!("family:        {}", config.family());
    for (label, text) in config.describe() {
        println!("{:<15}{text}", format!("{label}:"));
    }
    let mut problems = Vec::new();
    match Checkpoint::open(&dir, config.layout(), None) {
        Ok(ck) => {
            let n = ck.stored_names().count();
            let dtype = ck
                .stored_names()
                .find(|n| n.contains("embed_tokens"))
                .and_then(|n| ck.stored_dtype(n))
                .unwrap_or_else(|| "?".into());
            println!(
                "weights:       {n} tensors, {:.2} GB, stored as {dtype}",
                ck.total_bytes() as f64 / 1e9
            );
        }
        Err(e) => problems.push(format!("weights: {e}")),
    }
    match config.tokenizer() {
        Ok(t) => println!(
            "tokenizer:     {} tokens; bos {} eos {} image {}",
            t.vocab_size(),
            t.bos_id(),
            t.eos_id(),
            t.image_id()
        ),
        Err(e) => problems.push(format!("tokenizer: {e}")),
    }
    if problems.is_empty() {
        println!("problems:      none found");
        Ok(())
    } else {
        for p in &problems {
            println!("problem:       {p}");
        }
        anyhow::bail!("{} problem(s) found in {}", problems.len(), dir.display())
    }
}
