//! What a checkpoint holds: the tensor inventory in `state_dict()` order and the shard each
//! tensor goes to. The published shapes build theirs in `v1.rs` and `vl2.rs`; `--shape tiny`
//! reads it from the `--from` folder ([`Plan::from_folder`]).

use std::path::Path;

use anyhow::{ensure, Context};
use serde_json::Value;

use super::shards;

/// One tensor of the inventory: name and shape, in `state_dict()` order.
#[derive(Debug, Clone)]
pub(super) struct TensorSpec {
    pub(super) name: String,
    pub(super) shape: Vec<usize>,
}

impl TensorSpec {
    pub(super) fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// The dimensions of a SigLIP tower that decide its tensor shapes.
pub(super) struct SiglipShape {
    pub(super) width: usize,
    pub(super) layers: usize,
    pub(super) mlp: usize,
    /// Patch size (conv kernel and stride).
    pub(super) patch: usize,
    /// Patches per side: 384 / patch.
    pub(super) grid: usize,
}

/// Collects the inventory in order.
#[derive(Default)]
pub(super) struct Inventory(pub(super) Vec<TensorSpec>);

impl Inventory {
    pub(super) fn add(&mut self, name: impl Into<String>, shape: &[usize]) {
        self.0.push(TensorSpec {
            name: name.into(),
            shape: shape.to_vec(),
        });
    }
    /// `nn.Linear` with bias: `{p}.weight [out, in]`, `{p}.bias [out]`.
    pub(super) fn linear(&mut self, p: &str, out: usize, inp: usize) {
        self.add(format!("{p}.weight"), &[out, inp]);
        self.add(format!("{p}.bias"), &[out]);
    }
    /// LayerNorm: `{p}.weight`, `{p}.bias` `[d]`.
    pub(super) fn layer_norm(&mut self, p: &str, d: usize) {
        self.add(format!("{p}.weight"), &[d]);
        self.add(format!("{p}.bias"), &[d]);
    }

    /// A timm SigLIP `VisionTransformer` under prefix `p`: `12·layers + 18` tensors, the unused
    /// attention-pool head included (it is in the published files: v1 §1 and v2 §1.1 size checks).
    pub(super) fn siglip(&mut self, p: &str, s: &SiglipShape) {
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
}

/// What to write: every tensor in `state_dict()` order, the shard file each one goes to, and
/// whether `model.safetensors.index.json` is written.
pub(super) struct Plan {
    pub(super) tensors: Vec<TensorSpec>,
    /// Index into `files`, one per tensor.
    pub(super) shard_of: Vec<usize>,
    pub(super) files: Vec<String>,
    /// DeepSeek-VL2 writes the index even for a single shard (v2 §1.1).
    pub(super) index: bool,
}

impl Plan {
    /// One `model.safetensors`, no index (deepseek-vl-1.3b-chat).
    pub(super) fn single(tensors: Vec<TensorSpec>) -> Self {
        let n = tensors.len();
        Plan {
            tensors,
            shard_of: vec![0; n],
            files: vec!["model.safetensors".into()],
            index: false,
        }
    }

    /// `--shape tiny`: the tensor list and shard names of the `--from` folder; the index is
    /// written when the folder has one (a single VL2 shard has one too).
    pub(super) fn from_folder(dir: &Path) -> anyhow::Result<Self> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        if single.is_file() && !index.is_file() {
            return Ok(Plan::single(shards::read_tensor_list(&single)?));
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
            let t = shards::read_tensor_list(&dir.join(file))?;
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

    /// The tensors of shard `k`, in inventory order.
    pub(super) fn shard(&self, k: usize) -> Vec<&TensorSpec> {
        self.tensors
            .iter()
            .zip(&self.shard_of)
            .filter(|(_, s)| **s == k)
            .map(|(t, _)| t)
            .collect()
    }

    pub(super) fn params(&self) -> u64 {
        self.tensors.iter().map(|t| t.numel() as u64).sum()
    }
}
