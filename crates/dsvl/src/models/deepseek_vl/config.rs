//! A DeepSeek-VL model directory → [`DeepseekVlSpec`]: the checked, layout-independent
//! description of a v1 model (both checkpoint layouts, v1 §2 and §12.2).
//!
//! [`super::raw`] mirrors the JSON files; the layout comes from `config.json`'s `model_type`
//! (never from a path or repo name), and every default is resolved here.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use super::raw::*;
use crate::config::{config_err, parse_value, read_json_opt};
use crate::error::{CheckpointLayout, Error, Result};
use crate::llm::LlamaSpec;
use crate::models::registry::ConfigFile;
use crate::nn::Activation;
use crate::projector::{AlignerKind, AlignerSpec};
use crate::vision::sam::SamSpec;
use crate::vision::siglip::SiglipSpec;

/// CLIP mean/std used by the SAM branch (v1 §2.1).
pub const CLIP_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
pub const CLIP_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];
const HALF: [f64; 3] = [0.5, 0.5, 0.5];

#[derive(Debug, Clone, PartialEq)]
pub enum VisionSpec {
    /// 1.3B: `CLIPVisionTower` with SigLIP-L.
    Siglip(SiglipSpec),
    /// 7B: `HybridVisionTower`, SAM-B on the full image, SigLIP-L on a 384 view of it.
    Hybrid { sam: SamSpec, siglip: SiglipSpec },
}

impl VisionSpec {
    pub fn siglip(&self) -> &SiglipSpec {
        match self {
            VisionSpec::Siglip(s) | VisionSpec::Hybrid { siglip: s, .. } => s,
        }
    }
}

/// Host-side preprocessing (v1 §3.1) and prompt expansion (v1 §2.4).
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessorSpec {
    /// Long side after resizing, and the padded square size.
    pub image_size: usize,
    pub min_size: usize,
    pub background: [u8; 3],
    pub image_tag: String,
    pub num_image_tokens: usize,
}

/// A resolved DeepSeek-VL (v1) model directory.
#[derive(Debug, Clone, PartialEq)]
pub struct DeepseekVlSpec {
    pub dir: PathBuf,
    pub layout: CheckpointLayout,
    pub vision: VisionSpec,
    pub aligner: AlignerSpec,
    pub llm: LlamaSpec,
    pub processor: ProcessorSpec,
}

/// The `model_type` values of a DeepSeek-VL `config.json`: the original layout
/// (`deepseek-ai/deepseek-vl-*`) and the transformers one (`deepseek-community/*`).
pub(crate) const MODEL_TYPES: &[&str] = &["multi_modality", "deepseek_vl", "deepseek_vl_hybrid"];

impl DeepseekVlSpec {
    /// Resolves a v1 directory whose `config.json` the registry has read (`file.model_type` is
    /// one of [`MODEL_TYPES`]), with its processor files.
    pub(crate) fn resolve(file: ConfigFile) -> Result<Self> {
        let ConfigFile {
            dir,
            path: config_path,
            model_type,
            value,
        } = file;
        let dir = dir.as_path();
        let preproc: Option<ImageProcessorJson> =
            read_json_opt(&dir.join("preprocessor_config.json"))?;
        let proc: ProcessorJson =
            read_json_opt(&dir.join("processor_config.json"))?.unwrap_or_default();
        let image_proc = preproc
            .or_else(|| proc.image_processor.clone())
            .unwrap_or_default();

        let (layout, vision, aligner, llm) = if model_type == "multi_modality" {
            let cfg: OriginalConfig = parse_value(&config_path, value)?;
            let (vision, aligner, llm) = resolve_original(&config_path, &cfg)?;
            (CheckpointLayout::Original, vision, aligner, llm)
        } else {
            let cfg: TransformersConfig = parse_value(&config_path, value)?;
            let hybrid = model_type == "deepseek_vl_hybrid";
            let (vision, aligner, llm) =
                resolve_transformers(&config_path, &cfg, hybrid, &image_proc)?;
            (CheckpointLayout::Transformers, vision, aligner, llm)
        };

        let processor = resolve_processor(&config_path, &vision, &image_proc, &proc)?;
        let spec = DeepseekVlSpec {
            dir: dir.to_path_buf(),
            layout,
            vision,
            aligner,
            llm,
            processor,
        };
        spec.check(&config_path)?;
        Ok(spec)
    }

    /// Cross-component invariants the weights rely on.
    fn check(&self, path: &Path) -> Result<()> {
        let a = &self.aligner;
        let tower_out = self.vision.siglip().width;
        if a.input_dim != tower_out {
            return Err(config_err(
                path,
                format!(
                    "aligner input_dim {} does not match the vision width {tower_out}",
                    a.input_dim
                ),
            ));
        }
        if let VisionSpec::Hybrid { sam, .. } = &self.vision {
            if sam.out_dim() != a.input_dim {
                return Err(config_err(
                    path,
                    format!(
                        "SAM output channels {} do not match the aligner input_dim {}",
                        sam.out_dim(),
                        a.input_dim
                    ),
                ));
            }
        }
        let out = if a.kind == AlignerKind::Identity {
            a.input_dim
        } else {
            a.n_embed
        };
        if out != self.llm.hidden_size {
            return Err(config_err(
                path,
                format!(
                    "aligner output {out} does not match the language model's hidden_size {}",
                    self.llm.hidden_size
                ),
            ));
        }
        let tokens = self.vision.siglip().grid().pow(2);
        if tokens != self.processor.num_image_tokens {
            return Err(config_err(
                path,
                format!(
                    "the vision tower yields {tokens} tokens per image but num_image_tokens is {}",
                    self.processor.num_image_tokens
                ),
            ));
        }
        Ok(())
    }
}

/// Official SigLIP factory table (`siglip_vit.py::SigLIP_MODEL_CONFIG`): (patch, width, layers, heads, mlp_ratio).
fn siglip_table(name: &str) -> Option<(usize, usize, usize, usize, f64)> {
    match name {
        "siglip_large_patch16_384" => Some((16, 1024, 24, 16, 4.0)),
        "siglip_so400m_patch14_384" | "siglip_so400m_patch14_224" => {
            Some((14, 1152, 27, 16, 3.7362))
        }
        _ => None,
    }
}

/// One row of the official SAM factory table: (width, layers, heads, global blocks, downsample channels).
type SamRow = (usize, usize, usize, Vec<usize>, Vec<usize>);

/// Official SAM factory table (`sam.py::SAM_MODEL_CONFIG`).
fn sam_table(name: &str) -> Option<SamRow> {
    match name {
        "sam_b_downsample" => Some((768, 12, 12, vec![2, 5, 8, 11], vec![512, 1024])),
        "sam_vit_b" => Some((768, 12, 12, vec![2, 5, 8, 11], vec![])),
        _ => None,
    }
}

fn siglip_from_params(path: &Path, p: &TowerParams) -> Result<SiglipSpec> {
    let (patch, width, layers, heads, ratio) =
        siglip_table(&p.model_name).ok_or_else(|| Error::Unsupported {
            what: format!(
                "vision tower model_name `{}` in {}",
                p.model_name,
                path.display()
            ),
            hint: "DeepSeek-VL v1 uses `siglip_large_patch16_384`".into(),
        })?;
    let width = p.width.unwrap_or(width);
    let all_layers = p.layers.unwrap_or(layers);
    // create_siglip_vit: select_layer <= 0 keeps L + select_layer + 1 blocks, else select_layer.
    let select = p.select_layer.unwrap_or(-1);
    let layers = if select <= 0 {
        (all_layers as i64 + select + 1).clamp(0, all_layers as i64) as usize
    } else {
        (select as usize).min(all_layers)
    };
    let ratio = p.mlp_ratio.unwrap_or(ratio);
    Ok(SiglipSpec {
        image_size: p.image_size.unwrap_or(384),
        patch_size: patch,
        width,
        layers,
        heads: p.heads.unwrap_or(heads),
        mlp_hidden: (width as f64 * ratio) as usize,
        ln_eps: 1e-6,
        act: Activation::GeluErf,
        pixel_mean: p.pixel_mean.unwrap_or(HALF),
        pixel_std: p.pixel_std.unwrap_or(HALF),
    })
}

fn sam_from_params(path: &Path, p: &TowerParams) -> Result<SamSpec> {
    let (width, layers, heads, globals, down) =
        sam_table(&p.model_name).ok_or_else(|| Error::Unsupported {
            what: format!("SAM model_name `{}` in {}", p.model_name, path.display()),
            hint: "DeepSeek-VL v1 uses `sam_b_downsample`".into(),
        })?;
    let width = p.width.unwrap_or(width);
    Ok(SamSpec {
        image_size: p.image_size.unwrap_or(1024),
        patch_size: 16,
        width,
        layers: p.layers.unwrap_or(layers),
        heads: p.heads.unwrap_or(heads),
        mlp_hidden: width * 4,
        window_size: 14,
        global_attn_indexes: p.global_attn_indexes.clone().unwrap_or(globals),
        neck_channels: p.prompt_embed_dim.unwrap_or(256),
        downsample_channels: p.downsample_channels.clone().unwrap_or(down),
        ln_eps: 1e-6,
        pixel_mean: p.pixel_mean.unwrap_or(CLIP_MEAN),
        pixel_std: p.pixel_std.unwrap_or(CLIP_STD),
        upsample_size: 96,
    })
}

fn aligner_kind(path: &Path, name: &str) -> Result<AlignerKind> {
    Ok(match name {
        "identity" => AlignerKind::Identity,
        "linear" => AlignerKind::Linear,
        "mlp_gelu" => AlignerKind::MlpGelu,
        "low_high_hybrid_split_mlp_gelu" => AlignerKind::LowHighHybridSplitMlpGelu,
        other => {
            return Err(Error::Unsupported {
                what: format!("aligner projector_type `{other}` in {}", path.display()),
                hint: "known types: identity, linear, mlp_gelu, low_high_hybrid_split_mlp_gelu"
                    .into(),
            })
        }
    })
}

fn llama_spec(path: &Path, c: &LlamaConfigJson) -> Result<LlamaSpec> {
    if c.hidden_act != "silu" {
        return Err(Error::Unsupported {
            what: format!(
                "language model hidden_act `{}` in {}",
                c.hidden_act,
                path.display()
            ),
            hint: "DeepSeek-VL's Llama uses silu".into(),
        });
    }
    if c.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) {
        return Err(Error::Unsupported {
            what: format!("rope_scaling in {}", path.display()),
            hint: "DeepSeek-VL v1 uses plain RoPE".into(),
        });
    }
    if c.attention_bias {
        return Err(Error::Unsupported {
            what: format!("attention_bias in {}", path.display()),
            hint: "DeepSeek-VL's Llama has no biases".into(),
        });
    }
    let heads = c.num_attention_heads;
    let kv = c.num_key_value_heads.unwrap_or(heads);
    if heads == 0 || !c.hidden_size.is_multiple_of(heads) || kv == 0 || !heads.is_multiple_of(kv) {
        return Err(config_err(
            path,
            format!(
                "language model: hidden_size {} / {heads} heads / {kv} kv heads do not divide",
                c.hidden_size
            ),
        ));
    }
    Ok(LlamaSpec {
        vocab_size: c.vocab_size,
        hidden_size: c.hidden_size,
        intermediate_size: c.intermediate_size,
        num_layers: c.num_hidden_layers,
        num_heads: heads,
        num_kv_heads: kv,
        head_dim: c.head_dim.unwrap_or(c.hidden_size / heads),
        rms_norm_eps: c.rms_norm_eps,
        rope_theta: c.rope_theta,
        max_position_embeddings: c.max_position_embeddings,
    })
}

fn params<T: DeserializeOwned>(path: &Path, what: &str, v: &serde_json::Value) -> Result<T> {
    serde_json::from_value(v.clone()).map_err(|e| config_err(path, format!("{what}: {e}")))
}

fn resolve_original(
    path: &Path,
    cfg: &OriginalConfig,
) -> Result<(VisionSpec, AlignerSpec, LlamaSpec)> {
    let vision = match cfg.vision_config.cls.as_str() {
        "CLIPVisionTower" => {
            let p: TowerParams = params(path, "vision_config.params", &cfg.vision_config.params)?;
            VisionSpec::Siglip(siglip_from_params(path, &p)?)
        }
        "HybridVisionTower" => {
            let p: HybridParams = params(path, "vision_config.params", &cfg.vision_config.params)?;
            if p.concat_type != "tuple" {
                return Err(Error::Unsupported {
                    what: format!("HybridVisionTower concat_type `{}`", p.concat_type),
                    hint: "DeepSeek-VL 7B uses `tuple`".into(),
                });
            }
            VisionSpec::Hybrid {
                sam: sam_from_params(path, &p.high_res_cfg)?,
                siglip: siglip_from_params(path, &p.low_res_cfg)?,
            }
        }
        other => {
            return Err(Error::Unsupported {
                what: format!("vision_config.cls `{other}` in {}", path.display()),
                hint: "DeepSeek-VL v1 uses CLIPVisionTower or HybridVisionTower".into(),
            })
        }
    };
    let a: AlignerParams = params(path, "aligner_config.params", &cfg.aligner_config.params)?;
    let aligner = AlignerSpec {
        kind: aligner_kind(path, &a.projector_type)?,
        depth: a.depth,
        input_dim: a.input_dim,
        n_embed: a.n_embed,
    };
    let hybrid_vision = matches!(vision, VisionSpec::Hybrid { .. });
    let hybrid_aligner = aligner.kind == AlignerKind::LowHighHybridSplitMlpGelu;
    if hybrid_vision != hybrid_aligner {
        return Err(config_err(
            path,
            "the hybrid vision tower needs the `low_high_hybrid_split_mlp_gelu` aligner and vice versa",
        ));
    }
    Ok((vision, aligner, llama_spec(path, &cfg.language_config)?))
}

fn resolve_transformers(
    path: &Path,
    cfg: &TransformersConfig,
    hybrid: bool,
    ip: &ImageProcessorJson,
) -> Result<(VisionSpec, AlignerSpec, LlamaSpec)> {
    let v = &cfg.vision_config;
    let act = match v.hidden_act.as_str() {
        "gelu" => Activation::GeluErf,
        "gelu_pytorch_tanh" | "gelu_new" => Activation::GeluTanh,
        other => {
            return Err(Error::Unsupported {
                what: format!("vision hidden_act `{other}` in {}", path.display()),
                hint: "expected `gelu`".into(),
            })
        }
    };
    let siglip = SiglipSpec {
        image_size: v.image_size,
        patch_size: v.patch_size,
        width: v.hidden_size,
        layers: v.num_hidden_layers,
        heads: v.num_attention_heads,
        mlp_hidden: v.intermediate_size,
        ln_eps: v.layer_norm_eps,
        act,
        pixel_mean: ip.image_mean.unwrap_or(HALF),
        pixel_std: ip.image_std.unwrap_or(HALF),
    };
    let llm = llama_spec(path, &cfg.text_config)?;
    let (vision, aligner) = if hybrid {
        let s = cfg.high_res_vision_config.clone().unwrap_or_default();
        let sam = SamSpec {
            image_size: s.image_size,
            patch_size: s.patch_size,
            width: s.hidden_size,
            layers: s.num_hidden_layers,
            heads: s.num_attention_heads,
            mlp_hidden: s
                .mlp_dim
                .unwrap_or((s.hidden_size as f64 * s.mlp_ratio) as usize),
            window_size: s.window_size,
            global_attn_indexes: s.global_attn_indexes.clone(),
            neck_channels: s.output_channels,
            // transformers' DeepseekVLHybrid projection derives its channels from output_channels.
            downsample_channels: vec![2 * s.output_channels, 4 * s.output_channels],
            ln_eps: s.layer_norm_eps,
            pixel_mean: ip.high_res_image_mean.unwrap_or(CLIP_MEAN),
            pixel_std: ip.high_res_image_std.unwrap_or(CLIP_STD),
            upsample_size: 96,
        };
        let aligner = AlignerSpec {
            kind: AlignerKind::LowHighHybridSplitMlpGelu,
            depth: 2,
            input_dim: siglip.width,
            n_embed: llm.hidden_size,
        };
        (VisionSpec::Hybrid { sam, siglip }, aligner)
    } else {
        let aligner = AlignerSpec {
            kind: AlignerKind::MlpGelu,
            depth: 2,
            input_dim: siglip.width,
            n_embed: llm.hidden_size,
        };
        (VisionSpec::Siglip(siglip), aligner)
    };
    Ok((vision, aligner, llm))
}

/// `size` / `high_res_size` may be an int or `{"height": h, "width": w}` / `{"shortest_edge": s}`.
fn size_value(v: &serde_json::Value) -> Option<usize> {
    if let Some(n) = v.as_u64() {
        return Some(n as usize);
    }
    ["height", "shortest_edge", "longest_edge", "width"]
        .iter()
        .find_map(|k| v.get(k).and_then(|x| x.as_u64()))
        .map(|n| n as usize)
}

fn resolve_processor(
    path: &Path,
    vision: &VisionSpec,
    ip: &ImageProcessorJson,
    proc: &ProcessorJson,
) -> Result<ProcessorSpec> {
    // The processor resizes to the input size of the first tower: SAM for the hybrid, SigLIP otherwise.
    let (tower_size, tower_mean) = match vision {
        VisionSpec::Siglip(s) => (s.image_size, ip.image_mean.unwrap_or(s.pixel_mean)),
        VisionSpec::Hybrid { sam, .. } => (
            sam.image_size,
            ip.high_res_image_mean
                .or(ip.image_mean.filter(|_| ip.high_res_size.is_none()))
                .unwrap_or(sam.pixel_mean),
        ),
    };
    let image_size = ip
        .high_res_size
        .as_ref()
        .and_then(size_value)
        .or(ip.image_size)
        .or_else(|| ip.size.as_ref().and_then(size_value))
        .unwrap_or(tower_size);
    if image_size != tower_size {
        return Err(config_err(
            path,
            format!(
                "the image processor resizes to {image_size} but the vision tower expects {tower_size}"
            ),
        ));
    }
    // VLMImageProcessor: background_color = tuple(int(x * 255) for x in image_mean) unless given.
    let bg = ip
        .high_res_background_color
        .filter(|_| matches!(vision, VisionSpec::Hybrid { .. }))
        .or(ip.background_color)
        .unwrap_or([
            (tower_mean[0] * 255.0).trunc(),
            (tower_mean[1] * 255.0).trunc(),
            (tower_mean[2] * 255.0).trunc(),
        ]);
    let mut background = [0u8; 3];
    for (dst, v) in background.iter_mut().zip(bg) {
        if !(0.0..=255.0).contains(&v) {
            return Err(config_err(
                path,
                format!("background_color value {v} is not 0..255"),
            ));
        }
        *dst = v as u8;
    }
    if let Some(f) = ip.rescale_factor {
        if (f - 1.0 / 255.0).abs() > 1e-12 {
            return Err(Error::Unsupported {
                what: format!("rescale_factor {f}"),
                hint: "DeepSeek-VL rescales by 1/255".into(),
            });
        }
    }
    if let Some(fmt) = &proc.sft_format {
        if fmt != "deepseek" {
            return Err(Error::Unsupported {
                what: format!("sft_format `{fmt}`"),
                hint: "DeepSeek-VL v1 uses the `deepseek` chat template".into(),
            });
        }
    }
    Ok(ProcessorSpec {
        image_size,
        min_size: ip.min_size.unwrap_or(14),
        background,
        image_tag: proc
            .image_tag
            .clone()
            .unwrap_or_else(|| "<image_placeholder>".into()),
        num_image_tokens: proc
            .num_image_tokens
            .unwrap_or_else(|| vision.siglip().grid().pow(2)),
    })
}
