//! `cargo xtask make-checkpoint` end to end on the tiny fixtures: what it writes, and what it
//! refuses. That `dsvl` loads the result is tested in crates/dsvl-cli/tests/cli/bench.rs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../crates/dsvl/tests/fixtures/v1/models")
        .join(name)
}

fn xtask(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .output()
        .expect("the xtask binary runs")
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
    let dir = std::env::temp_dir().join(format!("xtask-mkckpt-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// The JSON header of a safetensors file and the length of its data.
fn header(path: &Path) -> (serde_json::Value, u64) {
    let bytes = std::fs::read(path).expect("shard");
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    let json = serde_json::from_slice(&bytes[8..8 + n as usize]).expect("JSON header");
    (json, bytes.len() as u64 - 8 - n)
}

#[test]
fn tiny_copies_the_structure_and_keeps_the_sharding() {
    // Single file: siglip-tiny's structure with new random values.
    let out = scratch("single");
    let from = fixture("siglip-tiny");
    ok(&xtask(&[
        "make-checkpoint",
        "--shape",
        "tiny",
        "--from",
        from.to_str().expect("utf-8 path"),
        "--out",
        out.to_str().expect("utf-8 path"),
        "--seed",
        "7",
    ]));
    let original = std::fs::read(from.join("model.safetensors")).expect("fixture");
    let written = std::fs::read(out.join("model.safetensors")).expect("written");
    assert_eq!(
        written.len(),
        original.len(),
        "same tensors, dtype and header"
    );
    assert_ne!(written, original, "values are new random ones");
    // Refuses to overwrite without --force.
    let again = xtask(&[
        "make-checkpoint",
        "--shape",
        "tiny",
        "--from",
        from.to_str().expect("utf-8 path"),
        "--out",
        out.to_str().expect("utf-8 path"),
    ]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    let _ = std::fs::remove_dir_all(&out);

    // Sharded: the hybrid fixture's two shards and index, in bf16.
    let out = scratch("sharded");
    let from = fixture("hybrid-tiny");
    ok(&xtask(&[
        "make-checkpoint",
        "--shape",
        "tiny",
        "--from",
        from.to_str().expect("utf-8 path"),
        "--dtype",
        "bf16",
        "--out",
        out.to_str().expect("utf-8 path"),
    ]));
    let read_index = |dir: &Path| -> serde_json::Value {
        serde_json::from_slice(
            &std::fs::read(dir.join("model.safetensors.index.json")).expect("index"),
        )
        .expect("JSON")
    };
    let (want, got) = (read_index(&from), read_index(&out));
    assert_eq!(got["weight_map"], want["weight_map"]);
    let mut data = 0;
    for f in [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ] {
        let (h, bytes) = header(&out.join(f));
        data += bytes;
        let tensors = h.as_object().expect("header object");
        assert!(tensors.len() > 1, "{f}: no tensors");
        for (name, t) in tensors.iter().filter(|(n, _)| *n != "__metadata__") {
            assert_eq!(t["dtype"], "BF16", "{f}: {name}");
        }
    }
    assert_eq!(got["metadata"]["total_size"].as_u64(), Some(data));
    let _ = std::fs::remove_dir_all(&out);
}

/// The published shapes plan without any folder, but writing needs tokenizer files: the binary
/// may run outside the repository, so it names what to pass instead of guessing a fixture path.
#[test]
fn dry_run_needs_no_folder_and_writing_asks_for_from() {
    let o = xtask(&["make-checkpoint", "--shape", "1.3b", "--dry-run"]);
    ok(&o);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.starts_with("1.3b: 529 tensors, 1975235584 parameters"),
        "{stdout}"
    );
    // The published file is 3,950,537,560 bytes, header included.
    assert!(
        stdout.contains("\n  model.safetensors    529 tensors   3950537560 bytes  3.95 GB\n"),
        "{stdout}"
    );

    let out = scratch("no-from");
    let o = xtask(&[
        "make-checkpoint",
        "--shape",
        "vl2-tiny",
        "--out",
        out.to_str().expect("utf-8 path"),
    ]);
    assert!(!o.status.success());
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("--shape vl2-tiny needs --from DIR")
            && stderr.contains("crates/dsvl/tests/fixtures/v2/models/vl2-tiny-random"),
        "{stderr}"
    );
    assert!(!out.exists(), "nothing written");
}
