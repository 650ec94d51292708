//! Checkpoint headers and indexes: the input becomes a model directory, which
//! `weights::Checkpoint::open` maps and indexes, then every stored tensor is loaded as f32 and
//! bf16 (the dtypes models load in). Lying offsets, overlapping tensors, absurd shapes, dtype and
//! length mismatches and huge header lengths must be errors, never panics or allocations of the
//! size the file claims.
//!
//! First byte even: the rest is `model.safetensors`. Odd: the rest is
//! `model.safetensors.index.json`, a NUL, then the shard `model-00001-of-00001.safetensors`.
#![no_main]
use std::sync::Arc;

use dsvl::weights::Checkpoint;
use dsvl::CheckpointLayout;
use dsvl_fuzz::{scratch_dir, split_nul};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let dir = scratch_dir();
    if mode & 1 == 0 {
        std::fs::write(dir.join("model.safetensors"), rest).expect("write shard");
    } else {
        let parts = split_nul(rest, 2);
        std::fs::write(dir.join("model.safetensors.index.json"), parts[0]).expect("write index");
        let shard = parts.get(1).copied().unwrap_or_default();
        std::fs::write(dir.join("model-00001-of-00001.safetensors"), shard).expect("write shard");
    }
    let Ok(ckpt) = Checkpoint::open(dir, CheckpointLayout::Original, None) else {
        return;
    };
    let ckpt = Arc::new(ckpt);
    let mut names: Vec<String> = ckpt.stored_names().map(String::from).collect();
    names.sort();
    for name in names.iter().take(64) {
        for dtype in [candle_core::DType::F32, candle_core::DType::BF16] {
            if let Ok(t) = ckpt.load_stored_as(name, dtype) {
                assert_eq!(t.dtype(), dtype, "loaded in the wanted dtype");
            }
        }
    }
});
