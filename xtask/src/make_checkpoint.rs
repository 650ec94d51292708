//! `cargo xtask make-checkpoint`: a random-weight checkpoint with the exact published layout, for
//! benchmarks without downloading 4 to 55 GB.
//!
//! The tensor inventories are v1 §11 and v2 §11 (names, shapes), in the reference's `state_dict()`
//! order, which decides how tensors fall into shards; the config files are v1 §2 and v2 §1 (the
//! DeepSeek-VL2 shapes live in `make_checkpoint/vl2.rs`). Values are uniform in ±0.02 (norm
//! weights 1, norm biases 0) so activations stay finite through every layer. Tensors are
//! generated and written one at a time, in 8 MiB chunks, so memory stays flat.

mod vl2;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context};
use clap::ValueEnum;
use serde_json::{json, Value};

/// The test fixture with DeepSeek-VL tokenizer files (real special-token ids, 102400-row vocab),
/// named in messages only: the binary does not know where the repository is.
const V1_TOKENIZER_FIXTURE: &str = "crates/dsvl/tests/fixtures/v1/models/siglip-tiny";
const TOKENIZER_FILES: [&str; 3] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
];
/// transformers 4.38 `save_pretrained(max_shard_size="5GB")`: 5·10⁹ bytes. Replays the published
/// 7B split (4.98 / 4.96 / 4.75 GB, v1 §1) when sizes are counted in float16.
const SHARD_LIMIT_F16_BYTES: u64 = 5_000_000_000;

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
        shard files without writing anything. The answers of such a model are gibberish; its speed is \
        that of the real model. Never commit the output.",
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

impl Shape {
    /// The DeepSeek-VL2 variant this shape imitates, if any.
    fn vl2(self) -> Option<vl2::Variant> {
        match self {
            Shape::Vl2Tiny => Some(vl2::Variant::Tiny),
            Shape::Vl2Small => Some(vl2::Variant::Small),
            Shape::Vl2Base => Some(vl2::Variant::Base),
            Shape::B1_3 | Shape::B7 | Shape::Tiny => None,
        }
    }
    /// The published stored dtype: bf16 for DeepSeek-VL2 (v2 §1.1), f16 for DeepSeek-VL (v1 §1).
    fn default_dtype(self) -> StoredDtype {
        if self.vl2().is_some() {
            StoredDtype::Bf16
        } else {
            StoredDtype::F16
        }
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
    /// safetensors header name.
    fn st_name(self) -> &'static str {
        match self {
            StoredDtype::F16 => "F16",
            StoredDtype::Bf16 => "BF16",
            StoredDtype::F32 => "F32",
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

/// One tensor of the inventory: name and shape, in `state_dict()` order.
#[derive(Debug, Clone)]
struct TensorSpec {
    name: String,
    shape: Vec<usize>,
}

impl TensorSpec {
    fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// The dimensions of a SigLIP tower that decide its tensor shapes.
struct SiglipShape {
    width: usize,
    layers: usize,
    mlp: usize,
    /// Patch size (conv kernel and stride).
    patch: usize,
    /// Patches per side: 384 / patch.
    grid: usize,
}

/// SigLIP-L/16 @384 (`siglip_large_patch16_384`, v1 §11.2): 306 tensors.
const SIGLIP_LARGE: SiglipShape = SiglipShape {
    width: 1024,
    layers: 24,
    mlp: 4096,
    patch: 16,
    grid: 24,
};

/// Collects the inventory in order.
#[derive(Default)]
struct Inventory(Vec<TensorSpec>);

impl Inventory {
    fn add(&mut self, name: impl Into<String>, shape: &[usize]) {
        self.0.push(TensorSpec {
            name: name.into(),
            shape: shape.to_vec(),
        });
    }
    /// `nn.Linear` with bias: `{p}.weight [out, in]`, `{p}.bias [out]`.
    fn linear(&mut self, p: &str, out: usize, inp: usize) {
        self.add(format!("{p}.weight"), &[out, inp]);
        self.add(format!("{p}.bias"), &[out]);
    }
    /// LayerNorm: `{p}.weight`, `{p}.bias` `[d]`.
    fn layer_norm(&mut self, p: &str, d: usize) {
        self.add(format!("{p}.weight"), &[d]);
        self.add(format!("{p}.bias"), &[d]);
    }

    /// A timm SigLIP `VisionTransformer` under prefix `p`: `12·layers + 18` tensors, the unused
    /// attention-pool head included (it is in the published files: v1 §1 and v2 §1.1 size checks).
    fn siglip(&mut self, p: &str, s: &SiglipShape) {
        let (w, mlp, k) = (s.width, s.mlp, s.patch);
        // Direct parameters come first in state_dict() (timm VisionTransformer: pos_embed).
        self.add(format!("{p}pos_embed"), &[1, s.grid * s.grid, w]);
        self.add(format!("{p}patch_embed.proj.weight"), &[w, 3, k, k]);
        self.add(format!("{p}patch_embed.proj.bias"), &[w]);
        for i in 0..s.layers {
            let b = format!("{p}blocks.{i}");
            self.layer_norm(&format!("{b}.norm1"), w);
            self.linear(&format!("{b}.attn.qkv"), 3 * w, w);
            self.linear(&format!("{b}.attn.proj"), w, w);
            self.layer_norm(&format!("{b}.norm2"), w);
            self.linear(&format!("{b}.mlp.fc1"), mlp, w);
            self.linear(&format!("{b}.mlp.fc2"), w, mlp);
        }
        self.layer_norm(&format!("{p}norm"), w);
        // Unused at inference (ignore_head=True), present in the published files.
        self.add(format!("{p}attn_pool.latent"), &[1, 1, w]);
        self.linear(&format!("{p}attn_pool.q"), w, w);
        self.linear(&format!("{p}attn_pool.kv"), 2 * w, w);
        self.linear(&format!("{p}attn_pool.proj"), w, w);
        self.layer_norm(&format!("{p}attn_pool.norm"), w);
        self.linear(&format!("{p}attn_pool.mlp.fc1"), mlp, w);
        self.linear(&format!("{p}attn_pool.mlp.fc2"), w, mlp);
    }

    /// SAM-B `sam_b_downsample` under prefix `p` (v1 §11.3): 186 tensors.
    fn sam_b(&mut self, p: &str) {
        let (w, hd) = (768, 64);
        // Direct parameters first, in registration order: pos_embed, then hd_alpha_downsamples.
        self.add(format!("{p}pos_embed"), &[1, 64, 64, w]);
        self.add(format!("{p}hd_alpha_downsamples"), &[1]);
        self.add(format!("{p}patch_embed.proj.weight"), &[w, 3, 16, 16]);
        self.add(format!("{p}patch_embed.proj.bias"), &[w]);
        for i in 0..12 {
            let b = format!("{p}blocks.{i}");
            // Global blocks 2, 5, 8, 11 see the 64×64 grid, windowed ones 14×14: 2·size − 1 rows.
            let rel = if i % 3 == 2 { 127 } else { 27 };
            self.layer_norm(&format!("{b}.norm1"), w);
            self.add(format!("{b}.attn.rel_pos_h"), &[rel, hd]);
            self.add(format!("{b}.attn.rel_pos_w"), &[rel, hd]);
            self.linear(&format!("{b}.attn.qkv"), 3 * w, w);
            self.linear(&format!("{b}.attn.proj"), w, w);
            self.layer_norm(&format!("{b}.norm2"), w);
            self.linear(&format!("{b}.mlp.lin1"), 4 * w, w);
            self.linear(&format!("{b}.mlp.lin2"), w, 4 * w);
        }
        self.sam_neck(&format!("{p}neck"));
        self.add(format!("{p}downsamples.0.weight"), &[512, 256, 3, 3]);
        self.add(format!("{p}downsamples.1.weight"), &[1024, 512, 3, 3]);
        self.sam_neck(&format!("{p}neck_hd"));
    }

    /// Conv1×1 768→256, LayerNorm2d, Conv3×3 256→256, LayerNorm2d; convs without bias.
    fn sam_neck(&mut self, p: &str) {
        self.add(format!("{p}.0.weight"), &[256, 768, 1, 1]);
        self.layer_norm(&format!("{p}.1"), 256);
        self.add(format!("{p}.2.weight"), &[256, 256, 3, 3]);
        self.layer_norm(&format!("{p}.3"), 256);
    }

    /// `LlamaForCausalLM` (v1 §11.1), MHA, no biases, separate lm_head.
    fn llama(&mut self, d: usize, f: usize, layers: usize) {
        let vocab = 102_400;
        let p = "language_model.model";
        self.add(format!("{p}.embed_tokens.weight"), &[vocab, d]);
        for i in 0..layers {
            let l = format!("{p}.layers.{i}");
            for proj in ["q_proj", "k_proj", "v_proj", "o_proj"] {
                self.add(format!("{l}.self_attn.{proj}.weight"), &[d, d]);
            }
            self.add(format!("{l}.mlp.gate_proj.weight"), &[f, d]);
            self.add(format!("{l}.mlp.up_proj.weight"), &[f, d]);
            self.add(format!("{l}.mlp.down_proj.weight"), &[d, f]);
            self.add(format!("{l}.input_layernorm.weight"), &[d]);
            self.add(format!("{l}.post_attention_layernorm.weight"), &[d]);
        }
        self.add(format!("{p}.norm.weight"), &[d]);
        self.add("language_model.lm_head.weight", &[vocab, d]);
    }
}

/// `MultiModalityCausalLM.state_dict()` of deepseek-vl-1.3b-chat: vision_model, aligner, language_model.
fn inventory_1_3b() -> Vec<TensorSpec> {
    let mut inv = Inventory::default();
    inv.siglip("vision_model.vision_tower.", &SIGLIP_LARGE);
    inv.linear("aligner.layers.0", 2048, 1024);
    inv.linear("aligner.layers.2", 2048, 2048);
    inv.llama(2048, 5632, 24);
    inv.0
}

/// deepseek-vl-7b-chat: `HybridVisionTower` (high, low, then the two unused LayerNorms), aligner, Llama.
fn inventory_7b() -> Vec<TensorSpec> {
    let mut inv = Inventory::default();
    inv.sam_b("vision_model.vision_tower_high.vision_tower.");
    inv.siglip("vision_model.vision_tower_low.vision_tower.", &SIGLIP_LARGE);
    inv.layer_norm("vision_model.high_layer_norm", 1024);
    inv.layer_norm("vision_model.low_layer_norm", 1024);
    inv.linear("aligner.high_up_proj", 2048, 1024);
    inv.linear("aligner.low_up_proj", 2048, 1024);
    inv.linear("aligner.layers.1", 4096, 4096);
    inv.llama(4096, 11008, 30);
    inv.0
}

/// What to write: every tensor in `state_dict()` order, the shard file each one goes to, and
/// whether `model.safetensors.index.json` is written.
struct Plan {
    tensors: Vec<TensorSpec>,
    /// Index into `files`, one per tensor.
    shard_of: Vec<usize>,
    files: Vec<String>,
    /// DeepSeek-VL2 writes the index even for a single shard (v2 §1.1).
    index: bool,
}

impl Plan {
    /// One `model.safetensors`, no index (deepseek-vl-1.3b-chat).
    fn single(tensors: Vec<TensorSpec>) -> Self {
        let n = tensors.len();
        Plan {
            tensors,
            shard_of: vec![0; n],
            files: vec!["model.safetensors".into()],
            index: false,
        }
    }
    /// The tensors of shard `k`, in inventory order.
    fn shard(&self, k: usize) -> Vec<&TensorSpec> {
        self.tensors
            .iter()
            .zip(&self.shard_of)
            .filter(|(_, s)| **s == k)
            .map(|(t, _)| t)
            .collect()
    }
    fn params(&self) -> u64 {
        self.tensors.iter().map(|t| t.numel() as u64).sum()
    }
}

/// Shard index of each tensor: a new shard starts when the next tensor would pass the limit
/// (transformers 4.38 `shard_checkpoint`), sizes counted in f16 so every dtype keeps the layout.
fn shard_split(tensors: &[TensorSpec], limit: u64) -> Vec<usize> {
    let mut shard = 0;
    let mut used = 0u64;
    let mut out = Vec::with_capacity(tensors.len());
    for (i, t) in tensors.iter().enumerate() {
        let size = t.numel() as u64 * 2;
        if used + size > limit && i > 0 && used > 0 {
            shard += 1;
            used = 0;
        }
        used += size;
        out.push(shard);
    }
    out
}

/// What `--shape` writes; `from` is only read for `--shape tiny`.
fn plan(shape: Shape, from: Option<&Path>) -> anyhow::Result<Plan> {
    Ok(match shape {
        Shape::B1_3 => Plan::single(inventory_1_3b()),
        Shape::B7 => {
            let tensors = inventory_7b();
            let shard_of = shard_split(&tensors, SHARD_LIMIT_F16_BYTES);
            let n = shard_of.iter().max().map_or(1, |m| m + 1);
            Plan {
                tensors,
                shard_of,
                files: (1..=n)
                    .map(|k| format!("model-{k:05}-of-{n:05}.safetensors"))
                    .collect(),
                index: true,
            }
        }
        Shape::Vl2Tiny | Shape::Vl2Small | Shape::Vl2Base => {
            let v = shape.vl2().expect("matched VL2 shapes only");
            vl2::plan(v)
        }
        Shape::Tiny => {
            inventory_from(from.context("--shape tiny copies the structure of --from")?)?
        }
    })
}

fn config_1_3b(dtype: StoredDtype) -> Value {
    // v1 §2.2 (1.3B chat assumed identical to the verified 1.3B base).
    json!({
        "aligner_config": {"cls": "MlpProjector", "model_type": "aligner",
            "params": {"depth": 2, "input_dim": 1024, "n_embed": 2048, "projector_type": "mlp_gelu"}},
        "architectures": ["MultiModalityCausalLM"],
        "language_config": {"hidden_size": 2048, "intermediate_size": 5632, "max_position_embeddings": 16384,
            "model_type": "llama", "num_attention_heads": 16, "num_hidden_layers": 24, "num_key_value_heads": 16,
            "torch_dtype": dtype.torch_name(), "vocab_size": 102400},
        "model_type": "multi_modality",
        "torch_dtype": dtype.torch_name(),
        "transformers_version": "4.38.2",
        "vision_config": {"cls": "CLIPVisionTower", "model_type": "vision",
            "params": {"image_size": 384, "model_name": "siglip_large_patch16_384",
                "pixel_mean": [0.5, 0.5, 0.5], "pixel_std": [0.5, 0.5, 0.5],
                "select_feature": "same", "select_layer": -1}}
    })
}

fn config_7b(dtype: StoredDtype) -> Value {
    // v1 §2.1; the language_config omits what LlamaConfig defaults (hidden 4096, FFN 11008, 32 heads).
    let clip_mean = json!([0.48145466, 0.4578275, 0.40821073]);
    let clip_std = json!([0.26862954, 0.26130258, 0.27577711]);
    json!({
        "aligner_config": {"cls": "MlpProjector", "model_type": "aligner",
            "params": {"depth": 2, "input_dim": 1024, "n_embed": 4096,
                "projector_type": "low_high_hybrid_split_mlp_gelu"}},
        "architectures": ["MultiModalityCausalLM"],
        "language_config": {"max_position_embeddings": 16384, "model_type": "llama",
            "num_hidden_layers": 30, "torch_dtype": dtype.torch_name(), "vocab_size": 102400},
        "model_type": "multi_modality",
        "torch_dtype": dtype.torch_name(),
        "transformers_version": "4.38.2",
        "vision_config": {"cls": "HybridVisionTower", "model_type": "vision",
            "params": {"concat_type": "tuple", "freeze_high": true, "freeze_low": true,
                "high_res_cfg": {"ckpt_path": "", "image_size": 1024, "model_name": "sam_b_downsample",
                    "output_dim": 1024, "pixel_mean": clip_mean, "pixel_std": clip_std,
                    "select_feature": "same", "select_layer": -1},
                "low_res_cfg": {"ckpt_path": "", "image_size": 384, "model_name": "siglip_large_patch16_384",
                    "output_dim": 1024, "pixel_mean": [0.5, 0.5, 0.5], "pixel_std": [0.5, 0.5, 0.5],
                    "select_feature": "same", "select_layer": -1}}}
    })
}

/// v1 §2.3.
fn preprocessor_config(shape: Shape) -> Value {
    let (size, mean, std, bg) = match shape {
        Shape::B7 => (
            1024,
            json!([0.48145466, 0.4578275, 0.40821073]),
            json!([0.26862954, 0.26130258, 0.27577711]),
            json!([122, 116, 104]),
        ),
        _ => (
            384,
            json!([0.5, 0.5, 0.5]),
            json!([0.5, 0.5, 0.5]),
            json!([127, 127, 127]),
        ),
    };
    json!({
        "background_color": bg, "do_normalize": false, "image_mean": mean,
        "image_processor_type": "VLMImageProcessor", "image_size": size, "image_std": std,
        "min_size": 14, "processor_class": "VLChatProcessor", "rescale_factor": 0.00392156862745098
    })
}

/// v1 §2.4 (identical in all four repos).
fn processor_config() -> Value {
    json!({
        "add_special_token": false, "ignore_id": -100, "image_tag": "<image_placeholder>",
        "mask_prompt": true, "num_image_tokens": 576, "processor_class": "VLChatProcessor",
        "sft_format": "deepseek"
    })
}

/// Tensor names and shapes of one safetensors file, in the file's data order.
fn read_safetensors_header(path: &Path) -> anyhow::Result<Vec<TensorSpec>> {
    let mut f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .with_context(|| format!("{}: not a safetensors file", path.display()))?;
    let len = u64::from_le_bytes(len);
    ensure!(
        len < 100 << 20,
        "{}: safetensors header of {len} bytes is implausible",
        path.display()
    );
    let mut header = vec![0u8; len as usize];
    f.read_exact(&mut header)
        .with_context(|| format!("{}: truncated safetensors header", path.display()))?;
    let map: BTreeMap<String, Value> = serde_json::from_slice(&header)
        .with_context(|| format!("{}: safetensors header is not JSON", path.display()))?;
    let mut out: Vec<(u64, TensorSpec)> = Vec::new();
    for (name, v) in map {
        if name == "__metadata__" {
            continue;
        }
        let shape = v["shape"]
            .as_array()
            .and_then(|a| a.iter().map(|d| d.as_u64().map(|d| d as usize)).collect())
            .with_context(|| format!("{}: tensor {name} has no shape", path.display()))?;
        let start = v["data_offsets"][0].as_u64().unwrap_or(0);
        out.push((start, TensorSpec { name, shape }));
    }
    out.sort_by_key(|(start, _)| *start);
    Ok(out.into_iter().map(|(_, t)| t).collect())
}

/// `--shape tiny`: the tensor list and shard names of the `--from` folder; the index is written
/// when the folder has one (a single VL2 shard has one too).
fn inventory_from(dir: &Path) -> anyhow::Result<Plan> {
    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    if single.is_file() && !index.is_file() {
        return Ok(Plan::single(read_safetensors_header(&single)?));
    }
    ensure!(
        index.is_file(),
        "{} has neither model.safetensors nor model.safetensors.index.json; point --from at a model folder",
        dir.display()
    );
    let idx: Value = serde_json::from_slice(
        &std::fs::read(&index).with_context(|| format!("cannot read {}", index.display()))?,
    )
    .with_context(|| format!("{} is not JSON", index.display()))?;
    let mut files: Vec<String> = idx["weight_map"]
        .as_object()
        .with_context(|| format!("{}: no weight_map", index.display()))?
        .values()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    files.sort();
    files.dedup();
    let (mut tensors, mut shard_of) = (Vec::new(), Vec::new());
    for (k, file) in files.iter().enumerate() {
        let t = read_safetensors_header(&dir.join(file))?;
        shard_of.extend(std::iter::repeat_n(k, t.len()));
        tensors.extend(t);
    }
    Ok(Plan {
        tensors,
        shard_of,
        files,
        index: true,
    })
}

/// splitmix64: fast, seedable, good enough for benchmark weights.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// FNV-1a of a tensor name: each tensor's values depend on the seed and its name only.
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// What a tensor is filled with.
enum Fill {
    /// Norm weights: 1 (identity scale).
    One,
    /// Norm biases: 0.
    Zero,
    /// Everything else: uniform in ±0.02 (4096 levels).
    Uniform,
}

fn fill_for(name: &str) -> Fill {
    // LayerNorm / RMSNorm / LayerNorm2d (SAM neck.1, neck.3) parameters.
    let leaf = name.rsplit('.').next().unwrap_or("");
    let is_norm = name.contains("norm")
        || [".neck.1.", ".neck.3.", ".neck_hd.1.", ".neck_hd.3."]
            .iter()
            .any(|n| name.contains(n));
    match (is_norm, leaf) {
        (true, "weight") => Fill::One,
        (true, "bias") => Fill::Zero,
        _ => Fill::Uniform,
    }
}

/// One safetensors file before its data: the tensors in data order and the padded JSON header.
struct ShardLayout<'a> {
    sorted: Vec<&'a TensorSpec>,
    header: Vec<u8>,
    data_bytes: u64,
}

impl<'a> ShardLayout<'a> {
    fn new(tensors: &[&'a TensorSpec], dtype: StoredDtype) -> anyhow::Result<Self> {
        // safetensors (and torch's save_file) store the data sorted by name when all dtypes agree.
        let mut sorted: Vec<&TensorSpec> = tensors.to_vec();
        sorted.sort_by(|a, b| a.name.cmp(&b.name));
        let mut header = serde_json::Map::new();
        header.insert("__metadata__".into(), json!({"format": "pt"}));
        let mut offset = 0u64;
        for t in &sorted {
            let bytes = (t.numel() * dtype.bytes()) as u64;
            header.insert(
                t.name.clone(),
                json!({"dtype": dtype.st_name(), "shape": t.shape, "data_offsets": [offset, offset + bytes]}),
            );
            offset += bytes;
        }
        let mut header = serde_json::to_vec(&Value::Object(header))?;
        // The data must start 8-byte aligned: pad the header with spaces.
        while header.len() % 8 != 0 {
            header.push(b' ');
        }
        Ok(ShardLayout {
            sorted,
            header,
            data_bytes: offset,
        })
    }
    /// Size of the file on disk: header length, header, data.
    fn file_bytes(&self) -> u64 {
        8 + self.header.len() as u64 + self.data_bytes
    }
}

/// Writes one safetensors file tensor by tensor; returns the bytes of tensor data written.
fn write_safetensors(
    path: &Path,
    tensors: &[&TensorSpec],
    dtype: StoredDtype,
    seed: u64,
    mut progress: impl FnMut(u64),
) -> anyhow::Result<u64> {
    let layout = ShardLayout::new(tensors, dtype)?;
    let file = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut w = BufWriter::with_capacity(8 << 20, file);
    w.write_all(&(layout.header.len() as u64).to_le_bytes())?;
    w.write_all(&layout.header)?;

    // 4096 levels of uniform ±0.02, pre-encoded in the stored dtype: 12 random bits per value.
    let levels: Vec<Vec<u8>> = (0..4096)
        .map(|i| {
            let mut b = Vec::new();
            dtype.encode((i as f32 / 4095.0 * 2.0 - 1.0) * 0.02, &mut b);
            b
        })
        .collect();
    let (mut one, mut zero) = (Vec::new(), Vec::new());
    dtype.encode(1.0, &mut one);
    dtype.encode(0.0, &mut zero);

    const CHUNK: usize = 1 << 22;
    let mut buf: Vec<u8> = Vec::with_capacity(CHUNK * dtype.bytes());
    for t in &layout.sorted {
        let mut rng = SplitMix(seed ^ name_hash(&t.name));
        let fill = fill_for(&t.name);
        let mut left = t.numel();
        while left > 0 {
            let n = left.min(CHUNK);
            buf.clear();
            match fill {
                Fill::One => (0..n).for_each(|_| buf.extend_from_slice(&one)),
                Fill::Zero => (0..n).for_each(|_| buf.extend_from_slice(&zero)),
                Fill::Uniform => {
                    let mut done = 0;
                    while done < n {
                        let mut r = rng.next();
                        for _ in 0..5.min(n - done) {
                            buf.extend_from_slice(&levels[(r & 0xfff) as usize]);
                            r >>= 12;
                        }
                        done += 5.min(n - done);
                    }
                }
            }
            w.write_all(&buf)
                .with_context(|| format!("while writing {}", path.display()))?;
            progress(buf.len() as u64);
            left -= n;
        }
    }
    w.flush()
        .with_context(|| format!("while writing {}", path.display()))?;
    Ok(layout.data_bytes)
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
        let name = shape
            .to_possible_value()
            .map_or_else(|| format!("{shape:?}"), |v| v.get_name().to_string());
        let what = match shape.vl2() {
            Some(v) => format!(
                "a {} folder with its tokenizer files, e.g. {} in the dsvl repository",
                v.repo(),
                v.fixture()
            ),
            None if shape == Shape::Tiny => format!(
                "the model folder whose config files, tensors and shards to copy, e.g. {V1_TOKENIZER_FIXTURE} \
                 in the dsvl repository"
            ),
            None => format!(
                "a DeepSeek-VL folder with tokenizer.json, tokenizer_config.json and \
                 special_tokens_map.json, e.g. {V1_TOKENIZER_FIXTURE} in the dsvl repository"
            ),
        };
        bail!("--shape {name} needs --from DIR: {what}");
    };
    Ok(from.to_path_buf())
}

/// `--dry-run`: the inventory and every file with its size, on stdout.
fn print_plan(shape: Shape, plan: &Plan, dtype: StoredDtype) -> anyhow::Result<()> {
    let name = shape
        .to_possible_value()
        .map_or_else(|| format!("{shape:?}"), |v| v.get_name().to_string());
    let params = plan.params();
    let data = params * dtype.bytes() as u64;
    println!(
        "{name}: {} tensors, {params} parameters ({:.4} B), {data} bytes ({:.2} GB) of {} tensor data in {} file(s)",
        plan.tensors.len(),
        params as f64 / 1e9,
        data as f64 / 1e9,
        dtype.st_name(),
        plan.files.len(),
    );
    // Published shard sizes compare only in the published dtype.
    let published = match shape.vl2() {
        Some(v) if dtype == StoredDtype::Bf16 => v.published_shard_gb(),
        _ => &[],
    };
    for (k, file) in plan.files.iter().enumerate() {
        let part = plan.shard(k);
        let bytes = ShardLayout::new(&part, dtype)?.file_bytes();
        let note = published
            .get(k)
            .map(|p| format!("  (published: {p} GB)"))
            .unwrap_or_default();
        println!(
            "  {file}  {:>5} tensors  {bytes:>11} bytes  {:.2} GB{note}",
            part.len(),
            bytes as f64 / 1e9
        );
    }
    if plan.index {
        println!(
            "  model.safetensors.index.json  (weight_map of {} names)",
            plan.tensors.len()
        );
    }
    Ok(())
}

/// config.json and the processor files of `shape`.
fn write_configs(shape: Shape, dtype: StoredDtype, from: &Path, out: &Path) -> anyhow::Result<()> {
    match shape {
        Shape::B1_3 | Shape::B7 => {
            let config = if shape == Shape::B7 {
                config_7b(dtype)
            } else {
                config_1_3b(dtype)
            };
            write_json(&out.join("config.json"), &config)?;
            write_json(
                &out.join("preprocessor_config.json"),
                &preprocessor_config(shape),
            )?;
            write_json(&out.join("processor_config.json"), &processor_config())?;
        }
        Shape::Vl2Tiny | Shape::Vl2Small | Shape::Vl2Base => {
            let v = shape.vl2().expect("matched VL2 shapes only");
            // No preprocessor_config.json in the VL2 repos (v2 §1.1).
            write_json(&out.join("config.json"), &vl2::config(v, dtype))?;
            write_json(&out.join("processor_config.json"), &vl2::processor_config())?;
        }
        Shape::Tiny => {
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
        let bytes = write_safetensors(&out.join(file), &part, dtype, seed, |_| {})?;
        eprintln!(
            "[{}/{}] {file}: {} tensors, {bytes} bytes",
            k + 1,
            plan.files.len(),
            part.len()
        );
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
    if let Some(v) = a.shape.vl2() {
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
        dtype.st_name(),
        plan.files.len(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// v1 §1 / §11: tensor and parameter counts of the published checkpoints.
    #[test]
    fn inventories_match_the_published_counts() {
        let small = inventory_1_3b();
        assert_eq!(small.len(), 529);
        assert_eq!(
            small.iter().map(TensorSpec::numel).sum::<usize>(),
            1_975_235_584
        );
        let big = inventory_7b();
        assert_eq!(big.len(), 775);
        assert_eq!(
            big.iter().map(TensorSpec::numel).sum::<usize>(),
            7_343_990_017
        );
    }

    /// The published 7B shards are 4.98 / 4.96 / 4.75 GB (v1 §1).
    #[test]
    fn seven_b_splits_into_the_published_three_shards() {
        let t = inventory_7b();
        let s = shard_split(&t, SHARD_LIMIT_F16_BYTES);
        let mut sizes = [0u64; 3];
        for (t, &k) in t.iter().zip(&s) {
            assert!(k < 3, "more than three shards");
            sizes[k] += t.numel() as u64 * 2;
        }
        let gb: Vec<String> = sizes
            .iter()
            .map(|b| format!("{:.2}", *b as f64 / 1e9))
            .collect();
        assert_eq!(gb, ["4.98", "4.96", "4.75"]);
    }

    #[test]
    fn norms_are_identity() {
        assert!(matches!(
            fill_for("language_model.model.norm.weight"),
            Fill::One
        ));
        assert!(matches!(
            fill_for("vision_model.vision_tower_high.vision_tower.neck_hd.3.bias"),
            Fill::Zero
        ));
        assert!(matches!(
            fill_for("vision_model.vision_tower_high.vision_tower.neck.2.weight"),
            Fill::Uniform
        ));
        assert!(matches!(
            fill_for("language_model.model.layers.0.self_attn.q_proj.weight"),
            Fill::Uniform
        ));
    }
}
