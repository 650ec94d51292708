//! `cargo xtask make-checkpoint`: a random-weight checkpoint with the exact published layout, for
//! benchmarks without downloading 4 to 55 GB.
//!
//! The tensor inventories are v1 §11 and v2 §11 (names, shapes), in the reference's `state_dict()`
//! order, which decides how tensors fall into shards; the config files are v1 §2 and v2 §1
//! (`make_checkpoint/v1.rs`, `make_checkpoint/vl2.rs`). Values are uniform in ±0.02 (norm
//! weights 1, norm biases 0) so activations stay finite through every layer. The `safetensors`
//! crate writes each shard and asks for one tensor's bytes at a time, which are generated then
//! (`make_checkpoint/shards.rs`), so memory holds one tensor, not a 55 GB checkpoint.

mod plan;
mod shards;
mod v1;
mod vl2;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context};
use clap::ValueEnum;
use serde_json::json;

use plan::Plan;

/// The test fixture with DeepSeek-VL tokenizer files (real special-token ids, 102400-row vocab),
/// named in messages only: the binary does not know where the repository is.
const V1_TOKENIZER_FIXTURE: &str = "crates/dsvl/tests/fixtures/v1/models/siglip-tiny";
const TOKENIZER_FILES: [&str; 3] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
];

#[derive(clap::Args, Debug)]
#[command(
    about = "Write a random-weight checkpoint with the exact published shapes, names and files (for benchmarks)",
    long_about = "Write a random-weight checkpoint with the exact tensor names, shapes, dtype and file layout of \
        a published DeepSeek-VL or DeepSeek-VL2 checkpoint, including the unused tensors (attn_pool.*, \
        {high,low}_layer_norm), with the published config files and the tokenizer files of the --from \
        folder (a test fixture has the real special-token ids):\n\
        - 1.3b: deepseek-ai/deepseek-vl-1.3b-chat, one model.safetensors, 529 tensors, 3.95 GB in f16;\n\
        - 7b: deepseek-vl-7b-chat, model-0000k-of-00003.safetensors + index, 775 tensors, 14.69 GB in f16;\n\
        - vl2-tiny: deepseek-ai/deepseek-vl2-tiny, model-00001-of-000001.safetensors + index, 2582 tensors, \
        3.37 B parameters, 6.74 GB in bf16;\n\
        - vl2-small: deepseek-vl2-small, 4 shards model-0000k-of-000004.safetensors + index, 5639 tensors, \
        16.15 B parameters, 32.30 GB in bf16;\n\
        - vl2-base: deepseek-vl2, 8 shards model-0000k-of-000008.safetensors + index, 6973 tensors, \
        27.48 B parameters, 54.96 GB in bf16;\n\
        - tiny: the structure of the --from folder (its config files, tensor list and sharding).\n\n\
        The VL2 shards reproduce the published file sizes. --dry-run prints the tensor count, sizes and \
        shard files without writing anything. Memory holds one tensor at a time (at most 0.66 GB, VL2's \
        embedding in bf16). The answers of such a model are gibberish; its speed is that of the real \
        model. Never commit the output.",
    after_help = "Examples (from the repository root; F=crates/dsvl/tests/fixtures):\n  \
        cargo xtask make-checkpoint --shape 1.3b --from $F/v1/models/siglip-tiny --out /tmp/dsvl-1.3b-random\n  \
        cargo xtask make-checkpoint --shape 7b --from $F/v1/models/siglip-tiny --out /tmp/dsvl-7b-random --seed 1\n  \
        cargo xtask make-checkpoint --shape vl2-tiny --from $F/v2/models/vl2-tiny-random --out /tmp/dsvl-vl2-tiny-random\n  \
        cargo xtask make-checkpoint --shape vl2-base --dry-run     # 8 shards, 54.96 GB: check before writing\n  \
        cargo xtask make-checkpoint --shape tiny --from $F/v1/models/hybrid-tiny --out /tmp/h   # its structure\n\n\
        Then: dsvl bench --model /tmp/dsvl-1.3b-random"
)]
pub struct MakeCheckpointArgs {
    /// Which checkpoint to imitate: 1.3b, 7b, vl2-tiny, vl2-small, vl2-base, or tiny (the
    /// structure of the --from folder: its config files, tensor list and sharding).
    #[arg(long, value_enum)]
    pub shape: Shape,
    /// Output folder (created; must be empty or absent unless --force). Not needed with --dry-run.
    #[arg(long, required_unless_present = "dry_run")]
    pub out: Option<PathBuf>,
    /// Stored dtype [default: what deepseek-ai published: bf16 for vl2-*, f16 otherwise].
    #[arg(long, value_enum)]
    pub dtype: Option<StoredDtype>,
    /// Seed of the random values; the same seed writes the same bytes.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Folder to copy the tokenizer files from (tokenizer.json, tokenizer_config.json,
    /// special_tokens_map.json) and, for --shape tiny, the config files and tensor list. Needed
    /// unless --dry-run of a published shape. In the repository: the siglip-tiny fixture
    /// (crates/dsvl/tests/fixtures/v1/models/siglip-tiny) for 1.3b and 7b, the vl2-X-random
    /// fixture (crates/dsvl/tests/fixtures/v2/models/) for vl2-X.
    #[arg(long)]
    pub from: Option<PathBuf>,
    /// Write into a non-empty --out folder, replacing files of the same names.
    #[arg(long)]
    pub force: bool,
    /// Print the tensor count, the total size and each file with its size, and write nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    #[value(name = "1.3b")]
    B1_3,
    #[value(name = "7b")]
    B7,
    #[value(name = "vl2-tiny")]
    Vl2Tiny,
    #[value(name = "vl2-small")]
    Vl2Small,
    #[value(name = "vl2-base")]
    Vl2Base,
    Tiny,
}

/// What a `--shape` imitates.
enum Family {
    V1(v1::Variant),
    Vl2(vl2::Variant),
    /// `--shape tiny`: whatever the `--from` folder holds.
    Folder,
}

impl Shape {
    fn family(self) -> Family {
        match self {
            Shape::B1_3 => Family::V1(v1::Variant::B1_3),
            Shape::B7 => Family::V1(v1::Variant::B7),
            Shape::Vl2Tiny => Family::Vl2(vl2::Variant::Tiny),
            Shape::Vl2Small => Family::Vl2(vl2::Variant::Small),
            Shape::Vl2Base => Family::Vl2(vl2::Variant::Base),
            Shape::Tiny => Family::Folder,
        }
    }
    /// The published stored dtype: bf16 for DeepSeek-VL2 (v2 §1.1), f16 for DeepSeek-VL (v1 §1).
    fn default_dtype(self) -> StoredDtype {
        match self.family() {
            Family::Vl2(_) => StoredDtype::Bf16,
            Family::V1(_) | Family::Folder => StoredDtype::F16,
        }
    }
    /// The `--shape` value as typed.
    fn name(self) -> String {
        self.to_possible_value()
            .map_or_else(|| format!("{self:?}"), |v| v.get_name().to_string())
    }
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredDtype {
    F16,
    Bf16,
    F32,
}

impl StoredDtype {
    fn bytes(self) -> usize {
        match self {
            StoredDtype::F16 | StoredDtype::Bf16 => 2,
            StoredDtype::F32 => 4,
        }
    }
    /// The dtype in the safetensors header.
    fn st_dtype(self) -> safetensors::Dtype {
        match self {
            StoredDtype::F16 => safetensors::Dtype::F16,
            StoredDtype::Bf16 => safetensors::Dtype::BF16,
            StoredDtype::F32 => safetensors::Dtype::F32,
        }
    }
    /// `torch_dtype` in config.json.
    fn torch_name(self) -> &'static str {
        match self {
            StoredDtype::F16 => "float16",
            StoredDtype::Bf16 => "bfloat16",
            StoredDtype::F32 => "float32",
        }
    }
    /// Little-endian bytes of `v`.
    fn encode(self, v: f32, out: &mut Vec<u8>) {
        match self {
            StoredDtype::F16 => out.extend(half::f16::from_f32(v).to_le_bytes()),
            StoredDtype::Bf16 => out.extend(half::bf16::from_f32(v).to_le_bytes()),
            StoredDtype::F32 => out.extend(v.to_le_bytes()),
        }
    }
}

/// What `--shape` writes; `from` is only read for `--shape tiny`.
fn plan(shape: Shape, from: Option<&Path>) -> anyhow::Result<Plan> {
    match shape.family() {
        Family::V1(v) => Ok(v1::plan(v)),
        Family::Vl2(v) => Ok(vl2::plan(v)),
        Family::Folder => {
            Plan::from_folder(from.context("--shape tiny copies the structure of --from")?)
        }
    }
}

/// Pretty JSON (2-space indent, as `json.dumps(indent=2)`) plus a final newline. A `Value`
/// keeps its keys sorted; a `Serialize` struct keeps its field order.
fn write_json(path: &Path, v: &impl serde::Serialize) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(v)?;
    text.push('\n');
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// Copies the bytes, not the mode: the fixtures are read-only, and a copy that kept that mode
/// could not be replaced by a later `--force` run.
fn copy_from(from: &Path, out: &Path, name: &str) -> anyhow::Result<()> {
    let (src, dst) = (from.join(name), out.join(name));
    let bytes = std::fs::read(&src).with_context(|| {
        format!(
            "cannot copy {} (point --from at a model folder with tokenizer files)",
            src.display()
        )
    })?;
    if dst.is_file() {
        std::fs::remove_file(&dst).with_context(|| format!("cannot replace {}", dst.display()))?;
    }
    std::fs::write(&dst, bytes).with_context(|| format!("cannot write {}", dst.display()))
}

/// The `--from` folder. There is no default: this binary may run outside the repository (the
/// GPU machines get it packed), so it never guesses where the fixtures are.
fn from_dir(shape: Shape, from: Option<&Path>) -> anyhow::Result<PathBuf> {
    let Some(from) = from else {
        let what = match shape.family() {
            Family::V1(_) => format!(
                "a DeepSeek-VL folder with tokenizer.json, tokenizer_config.json and \
                 special_tokens_map.json, e.g. {V1_TOKENIZER_FIXTURE} in the dsvl repository"
            ),
            Family::Vl2(v) => format!(
                "a {} folder with its tokenizer files, e.g. {} in the dsvl repository",
                v.repo(),
                v.fixture()
            ),
            Family::Folder => format!(
                "the model folder whose config files, tensors and shards to copy, e.g. \
                 {V1_TOKENIZER_FIXTURE} in the dsvl repository"
            ),
        };
        bail!("--shape {} needs --from DIR: {what}", shape.name());
    };
    Ok(from.to_path_buf())
}

/// `--dry-run`: the inventory and every file with its size, on stdout.
fn print_plan(shape: Shape, plan: &Plan, dtype: StoredDtype) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    let params = plan.params();
    let data = params * dtype.bytes() as u64;
    writeln!(
        stdout,
        "{}: {} tensors, {params} parameters ({:.4} B), {data} bytes ({:.2} GB) of {} tensor data in {} file(s)",
        shape.name(),
        plan.tensors.len(),
        params as f64 / 1e9,
        data as f64 / 1e9,
        dtype.st_dtype(),
        plan.files.len(),
    )?;
    // Published shard sizes compare only in the published dtype.
    let published = match shape.family() {
        Family::Vl2(v) if dtype == StoredDtype::Bf16 => v.published_shard_gb(),
        _ => &[],
    };
    for (k, file) in plan.files.iter().enumerate() {
        let part = plan.shard(k);
        let bytes = shards::file_bytes(&part, dtype)?;
        let note = published
            .get(k)
            .map(|p| format!("  (published: {p} GB)"))
            .unwrap_or_default();
        writeln!(
            stdout,
            "  {file}  {:>5} tensors  {bytes:>11} bytes  {:.2} GB{note}",
            part.len(),
            bytes as f64 / 1e9
        )?;
    }
    if plan.index {
        writeln!(
            stdout,
            "  model.safetensors.index.json  (weight_map of {} names)",
            plan.tensors.len()
        )?;
    }
    Ok(())
}

/// config.json and the processor files of `shape`.
fn write_configs(shape: Shape, dtype: StoredDtype, from: &Path, out: &Path) -> anyhow::Result<()> {
    match shape.family() {
        Family::V1(v) => {
            write_json(&out.join("config.json"), &v1::config(v, dtype))?;
            write_json(
                &out.join("preprocessor_config.json"),
                &v1::preprocessor_config(v),
            )?;
            write_json(&out.join("processor_config.json"), &v1::processor_config())?;
        }
        Family::Vl2(v) => {
            // No preprocessor_config.json in the VL2 repos (v2 §1.1).
            write_json(&out.join("config.json"), &vl2::config(v, dtype))?;
            write_json(&out.join("processor_config.json"), &vl2::processor_config())?;
        }
        Family::Folder => {
            for f in [
                "config.json",
                "preprocessor_config.json",
                "processor_config.json",
            ] {
                if from.join(f).is_file() {
                    copy_from(from, out, f)?;
                }
            }
        }
    }
    Ok(())
}

/// Every shard, then the index; returns the bytes of tensor data written.
fn write_weights(out: &Path, plan: &Plan, dtype: StoredDtype, seed: u64) -> anyhow::Result<u64> {
    let total_bytes = plan.params() * dtype.bytes() as u64;
    let mut weight_map = serde_json::Map::new();
    for (k, file) in plan.files.iter().enumerate() {
        let part = plan.shard(k);
        for t in &part {
            weight_map.insert(t.name.clone(), json!(file));
        }
        let data: u64 = part
            .iter()
            .map(|t| (t.numel() * dtype.bytes()) as u64)
            .sum();
        eprintln!(
            "[{}/{}] writing {file}: {} tensors, {:.2} GB",
            k + 1,
            plan.files.len(),
            part.len(),
            data as f64 / 1e9
        );
        shards::write_shard(&out.join(file), &part, dtype, seed)?;
    }
    if plan.index {
        // transformers writes the index with sorted keys; serde_json's Map is a BTreeMap.
        write_json(
            &out.join("model.safetensors.index.json"),
            &json!({"metadata": {"total_size": total_bytes}, "weight_map": weight_map}),
        )?;
    }
    Ok(total_bytes)
}

pub fn run(a: MakeCheckpointArgs) -> anyhow::Result<()> {
    let dtype = a.dtype.unwrap_or(a.shape.default_dtype());
    // A dry run of a fixed shape reads nothing; --shape tiny always reads the --from folder.
    let from = if a.dry_run && a.shape != Shape::Tiny {
        None
    } else {
        Some(from_dir(a.shape, a.from.as_deref())?)
    };
    let plan = plan(a.shape, from.as_deref())?;
    if a.dry_run {
        return print_plan(a.shape, &plan, dtype);
    }
    let (Some(from), Some(out)) = (from, a.out) else {
        bail!("--out DIR is required unless --dry-run is given");
    };
    for f in TOKENIZER_FILES {
        ensure!(
            from.join(f).is_file(),
            "{} has no {f}; point --from at a model folder with the tokenizer files",
            from.display()
        );
    }
    if let Family::Vl2(v) = a.shape.family() {
        vl2::check_tokenizer(&from, v)?;
    }
    if out.exists() {
        ensure!(out.is_dir(), "--out {} is a file", out.display());
        let non_empty = std::fs::read_dir(&out)
            .with_context(|| format!("cannot read {}", out.display()))?
            .next()
            .is_some();
        if non_empty && !a.force {
            bail!(
                "--out {} is not empty; choose a new folder or pass --force",
                out.display()
            );
        }
    }
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;

    write_configs(a.shape, dtype, &from, &out)?;
    for f in TOKENIZER_FILES {
        copy_from(&from, &out, f)?;
    }
    let t0 = Instant::now();
    let total_bytes = write_weights(&out, &plan, dtype, a.seed)?;
    eprintln!(
        "wrote {} ({} tensors, {} parameters, {:.2} GB {} in {} file(s)) in {:.1}s; random weights: never commit it",
        out.display(),
        plan.tensors.len(),
        plan.params(),
        total_bytes as f64 / 1e9,
        dtype.st_dtype(),
        plan.files.len(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
