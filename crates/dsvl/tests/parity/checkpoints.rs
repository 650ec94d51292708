//! Malformed checkpoints, crafted byte by byte: lying offsets, overlapping tensors, absurd shapes,
//! dtype/length mismatches, huge header lengths and bad indexes are typed errors that name the
//! file, never panics, and never an allocation of the size the file claims (every case here is a
//! file of a few hundred bytes that claims far more).

use std::path::{Path, PathBuf};

use candle_core::DType;
use dsvl::weights::Checkpoint;
use dsvl::{CheckpointLayout, Error};
use serde_json::json;

/// An empty scratch directory, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("dsvl-ckpt-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A safetensors file: the 8-byte little-endian header length, the header, then `data`.
fn safetensors(header: &serde_json::Value, data: &[u8]) -> Vec<u8> {
    let h = header.to_string().into_bytes();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    out
}

/// Opens `model.safetensors` holding `bytes` and loads every tensor as f32; the first error.
fn open_and_load(tag: &str, bytes: &[u8]) -> anyhow::Result<Error> {
    let dir = Dir::new(tag)?;
    std::fs::write(dir.path().join("model.safetensors"), bytes)?;
    let ckpt = match Checkpoint::open(dir.path(), CheckpointLayout::Original, None) {
        Ok(c) => c,
        Err(e) => return Ok(e),
    };
    let names: Vec<String> = ckpt.stored_names().map(String::from).collect();
    for name in &names {
        if let Err(e) = ckpt.load_stored_as(name, DType::F32) {
            return Ok(e);
        }
    }
    anyhow::bail!("{tag}: every tensor of a malformed file loaded ({names:?})")
}

/// The error is the typed safetensors one, names the file and says what to do.
fn assert_clear(tag: &str, err: &Error, says: &str) -> anyhow::Result<()> {
    let msg = err.to_string();
    eprintln!("{tag}: {msg}");
    anyhow::ensure!(matches!(err, Error::Safetensors { .. }), "{tag}: {err:?}");
    anyhow::ensure!(msg.contains("model.safetensors"), "{tag}: {msg}");
    anyhow::ensure!(msg.contains("re-download"), "{tag}: {msg}");
    anyhow::ensure!(msg.contains(says), "{tag}: expected `{says}` in: {msg}");
    Ok(())
}

#[test]
fn a_valid_crafted_file_loads() -> anyhow::Result<()> {
    // The control for every case below: the same construction, well-formed, loads.
    let dir = Dir::new("valid")?;
    let data: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let header = json!({"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}});
    std::fs::write(
        dir.path().join("model.safetensors"),
        safetensors(&header, &data),
    )?;
    let ckpt = Checkpoint::open(dir.path(), CheckpointLayout::Original, None)?;
    let t = ckpt.load_stored_as("w", DType::F32)?;
    anyhow::ensure!(t.dims() == [2, 3], "{:?}", t.dims());
    anyhow::ensure!(t.flatten_all()?.to_vec1::<f32>()? == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    Ok(())
}

#[test]
fn huge_or_lying_header_lengths_are_errors() -> anyhow::Result<()> {
    // u64::MAX, just over safetensors' 100 MB header cap, and past the end of a 20-byte file.
    for (tag, len) in [("max", u64::MAX), ("cap", 100_000_001), ("past-end", 4096)] {
        let mut bytes = len.to_le_bytes().to_vec();
        bytes.extend_from_slice(b"{\"w\":{}}    ");
        let err = open_and_load(tag, &bytes)?;
        assert_clear(tag, &err, "header")?;
    }
    // Fewer than the 8 bytes of the length itself.
    let err = open_and_load("short", &[1, 0, 0])?;
    assert_clear("short", &err, "")?;
    Ok(())
}

#[test]
fn lying_offsets_overlaps_and_length_mismatches_are_errors() -> anyhow::Result<()> {
    let data = [0u8; 24];
    let cases = [
        // Offsets past the end of the data (a 2 GB tensor claimed by a 24-byte file).
        (
            "offsets-past-end",
            json!({"w": {"dtype": "F32", "shape": [1 << 29], "data_offsets": [0, 1u64 << 31]}}),
        ),
        // Two tensors over the same bytes.
        (
            "overlap",
            json!({"a": {"dtype": "F32", "shape": [6], "data_offsets": [0, 24]},
                   "b": {"dtype": "F32", "shape": [6], "data_offsets": [0, 24]}}),
        ),
        // End before start.
        (
            "reversed",
            json!({"w": {"dtype": "F32", "shape": [6], "data_offsets": [24, 0]}}),
        ),
        // Shape says 6 f32 (24 bytes), offsets say 12.
        (
            "dtype-length",
            json!({"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 12]},
                   "pad": {"dtype": "U8", "shape": [12], "data_offsets": [12, 24]}}),
        ),
        // Element count overflows u64: 2^40 · 2^40 · 2^40.
        (
            "shape-overflow",
            json!({"w": {"dtype": "F32", "shape": [1u64 << 40, 1u64 << 40, 1u64 << 40],
                         "data_offsets": [0, 24]}}),
        ),
        // A gap of unclaimed bytes between tensors.
        (
            "gap",
            json!({"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
                   "b": {"dtype": "U8", "shape": [4], "data_offsets": [8, 12]}}),
        ),
        // An unknown dtype.
        (
            "dtype",
            json!({"w": {"dtype": "F128", "shape": [1], "data_offsets": [0, 16]}}),
        ),
    ];
    for (tag, header) in cases {
        let err = open_and_load(tag, &safetensors(&header, &data))?;
        assert_clear(tag, &err, "")?;
    }
    Ok(())
}

#[test]
fn an_index_naming_missing_or_outside_shards_is_an_error() -> anyhow::Result<()> {
    let dir = Dir::new("index")?;
    let index = dir.path().join("model.safetensors.index.json");
    std::fs::write(
        &index,
        json!({"weight_map": {"w": "model-00001-of-00002.safetensors"}}).to_string(),
    )?;
    let err = Checkpoint::open(dir.path(), CheckpointLayout::Original, None)
        .err()
        .ok_or_else(|| anyhow::anyhow!("opened an index whose shard is missing"))?;
    anyhow::ensure!(
        err.to_string().contains("model-00001-of-00002.safetensors")
            && err.to_string().contains("missing"),
        "{err}"
    );
    // Shards are files of the model directory: no paths out of it.
    for outside in [
        "../model.safetensors",
        "/etc/passwd",
        "sub/../../x.safetensors",
    ] {
        std::fs::write(&index, json!({"weight_map": {"w": outside}}).to_string())?;
        let err = Checkpoint::open(dir.path(), CheckpointLayout::Original, None)
            .err()
            .ok_or_else(|| anyhow::anyhow!("opened a shard outside the directory: {outside}"))?;
        anyhow::ensure!(
            matches!(err, Error::Config { .. }) && err.to_string().contains(outside),
            "{outside}: {err}"
        );
    }
    // Not JSON, and JSON without a weight map.
    for bad in ["{\"weight_map\": ", "{\"metadata\": {}}"] {
        std::fs::write(&index, bad)?;
        let err = Checkpoint::open(dir.path(), CheckpointLayout::Original, None)
            .err()
            .ok_or_else(|| anyhow::anyhow!("opened a malformed index: {bad}"))?;
        anyhow::ensure!(
            err.to_string().contains("model.safetensors.index.json"),
            "{bad}: {err}"
        );
    }
    Ok(())
}
