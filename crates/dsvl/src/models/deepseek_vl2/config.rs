//! DeepSeek-VL2 model directories (v2 §1): `config.json` with `model_type: deepseek_vl_v2` and
//! `processor_config.json`, resolved into a checked [`DeepseekVl2Spec`].
//!
//! Every key missing from the files takes the default of the official config classes
//! (`VisionEncoderConfig`, `MlpProjectorConfig`, `DeepseekV2Config`, `DeepseekVLV2Processor`),
//! because that is what the official code does with the published files.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config::{config_err, parse_value, read_json_opt};
use crate::error::{Error, Result};
use crate::llm::deepseek_v2::DeepseekV2Spec;
use crate::models::registry::ConfigFile;
use crate::nn::Activation;
use crate::projector::DownsampleProjectorSpec;
use crate::vision::siglip::SiglipSpec;

/// Where the global view goes relative to the local tiles (v2 §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GlobalViewPos {
    /// Global view, separator, local grid (every published model).
    Head,
    /// Local grid, separator, global view.
    Tail,
}

/// Host-side image processing and prompt settings (`processor_config.json`, v2 §1.4, §2).
#[derive(Debug, Clone, PartialEq)]
pub struct Vl2ProcessorSpec {
    /// `(width, height)` tiling layouts, in file order (order breaks ties, v2 §2.2).
    pub candidates: Vec<(u32, u32)>,
    /// Tile side (`candidate_resolutions[0][0]`).
    pub tile_size: u32,
    pub patch_size: usize,
    pub downsample_ratio: usize,
    pub image_mean: [f64; 3],
    pub image_std: [f64; 3],
    pub normalize: bool,
    /// `tuple(int(x * 255) for x in image_mean)`: (127, 127, 127) for the published models.
    pub pad_color: [u8; 3],
    pub image_token: String,
    pub pad_token: String,
}

impl Vl2ProcessorSpec {
    /// Side of one tile's token grid after the 2×2 space-to-channel step: `ceil((S / p) / r)` = 14.
    pub fn token_grid(&self) -> usize {
        (self.tile_size as usize / self.patch_size).div_ceil(self.downsample_ratio)
    }
}

/// The `model_type` of a DeepSeek-VL2 `config.json`.
pub(crate) const MODEL_TYPES: &[&str] = &["deepseek_vl_v2"];

/// A resolved DeepSeek-VL2 model directory.
#[derive(Debug, Clone, PartialEq)]
pub struct DeepseekVl2Spec {
    pub dir: PathBuf,
    pub vision: SiglipSpec,
    pub projector: DownsampleProjectorSpec,
    pub llm: DeepseekV2Spec,
    pub processor: Vl2ProcessorSpec,
    pub global_view_pos: GlobalViewPos,
}

// ---- serde mirrors, defaults as in the official classes ----------------------------------------

#[derive(Debug, Deserialize)]
struct Vl2ConfigJson {
    /// The Python class default is the string "tile_tag"; published files say "2D".
    #[serde(default = "default_tile_tag")]
    tile_tag: String,
    #[serde(default = "default_head")]
    global_view_pos: String,
    #[serde(default)]
    vision_config: VisionJson,
    #[serde(default)]
    projector_config: ProjectorJson,
    #[serde(default)]
    language_config: serde_json::Value,
}

fn default_tile_tag() -> String {
    "tile_tag".into()
}
fn default_head() -> String {
    "head".into()
}

/// `VisionEncoderConfig` (v2 §1.2).
#[derive(Debug, Deserialize)]
#[serde(default)]
struct VisionJson {
    model_name: String,
    image_size: usize,
    patch_size: usize,
    width: usize,
    layers: usize,
    heads: usize,
    mlp_ratio: f64,
    global_pool: String,
    ignore_head: bool,
    class_token: bool,
}

impl Default for VisionJson {
    fn default() -> Self {
        Self {
            model_name: "siglip_large_patch16_384".into(),
            image_size: 384,
            patch_size: 16,
            width: 1024,
            layers: 24,
            heads: 16,
            mlp_ratio: 4.0,
            global_pool: "map".into(),
            ignore_head: true,
            class_token: false,
        }
    }
}

/// `MlpProjectorConfig` (v2 §1.2).
#[derive(Debug, Deserialize)]
#[serde(default)]
struct ProjectorJson {
    projector_type: String,
    input_dim: usize,
    n_embed: usize,
    depth: usize,
    mlp_ratio: usize,
    downsample_ratio: usize,
    token_pooling: bool,
}

impl Default for ProjectorJson {
    fn default() -> Self {
        Self {
            projector_type: "downsample_mlp_gelu".into(),
            input_dim: 1152,
            n_embed: 2048,
            depth: 2,
            mlp_ratio: 1,
            downsample_ratio: 2,
            token_pooling: false,
        }
    }
}

/// `processor_config.json` (`DeepseekVLV2Processor.__init__`, v2 §1.4). `candidate_resolutions`,
/// `patch_size` and `downsample_ratio` have no defaults there: the file must give them.
#[derive(Debug, Deserialize)]
struct ProcessorJson {
    candidate_resolutions: Option<Vec<[u32; 2]>>,
    patch_size: Option<usize>,
    downsample_ratio: Option<usize>,
    #[serde(default = "half")]
    image_mean: [f64; 3],
    #[serde(default = "half")]
    image_std: [f64; 3],
    #[serde(default = "yes")]
    normalize: bool,
    #[serde(default = "image_token")]
    image_token: String,
    #[serde(default = "pad_token")]
    pad_token: String,
    sft_format: Option<String>,
}

fn half() -> [f64; 3] {
    [0.5; 3]
}
fn yes() -> bool {
    true
}
fn image_token() -> String {
    "<image>".into()
}
fn pad_token() -> String {
    "<｜▁pad▁｜>".into()
}

impl DeepseekVl2Spec {
    /// Resolves a VL2 directory whose `config.json` the registry has read, with its
    /// `processor_config.json`.
    pub(crate) fn resolve(file: ConfigFile) -> Result<Self> {
        let ConfigFile {
            dir, path, value, ..
        } = file;
        let (dir, config_path) = (dir.as_path(), path.as_path());
        let cfg: Vl2ConfigJson = parse_value(config_path, value)?;
        if cfg.tile_tag != "2D" {
            return Err(Error::Unsupported {
                what: format!("tile_tag `{}` in {}", cfg.tile_tag, config_path.display()),
                hint: "DeepSeek-VL2 checkpoints use tile_tag \"2D\" (the \"1D\" layout is unused \
                       by the official code); check that config.json is complete"
                    .into(),
            });
        }
        let global_view_pos = match cfg.global_view_pos.as_str() {
            "head" => GlobalViewPos::Head,
            "tail" => GlobalViewPos::Tail,
            other => {
                return Err(config_err(
                    config_path,
                    format!("global_view_pos `{other}` is neither \"head\" nor \"tail\""),
                ))
            }
        };
        let vision = vision_spec(config_path, &cfg.vision_config)?;
        let projector = projector_spec(config_path, &cfg.projector_config)?;
        let llm = DeepseekV2Spec::from_language_config(config_path, &cfg.language_config)?;

        let proc_path = dir.join("processor_config.json");
        let proc: ProcessorJson = read_json_opt(&proc_path)?.ok_or_else(|| {
            config_err(
                &proc_path,
                "file not found; DeepSeek-VL2 folders carry processor_config.json (tiling layouts, \
                 patch size); download it with the model",
            )
        })?;
        let processor = processor_spec(&proc_path, proc)?;
        let spec = DeepseekVl2Spec {
            dir: dir.to_path_buf(),
            vision,
            projector,
            llm,
            processor,
            global_view_pos,
        };
        spec.check(config_path)?;
        Ok(spec)
    }

    /// Image tokens of one image tiled `nw × nh` (v2 §5): global rows + newline, separator,
    /// local rows + newline.
    pub fn image_tokens(&self, nw: usize, nh: usize) -> usize {
        let g = self.processor.token_grid();
        g * (g + 1) + 1 + g * nh * (g * nw + 1)
    }

    fn check(&self, path: &Path) -> Result<()> {
        let (v, p, pr) = (&self.vision, &self.projector, &self.processor);
        let mismatch = |what: String| Err(config_err(path, what));
        if p.input_dim != v.width {
            return mismatch(format!(
                "projector_config.input_dim {} does not match the vision width {}",
                p.input_dim, v.width
            ));
        }
        if p.n_embed != self.llm.hidden_size {
            return mismatch(format!(
                "projector_config.n_embed {} does not match the language model's hidden_size {}",
                p.n_embed, self.llm.hidden_size
            ));
        }
        if pr.tile_size as usize != v.image_size || pr.patch_size != v.patch_size {
            return mismatch(format!(
                "processor tiles are {}px with patch {} but the vision tower takes {}px with patch {}",
                pr.tile_size, pr.patch_size, v.image_size, v.patch_size
            ));
        }
        if pr.downsample_ratio != p.downsample_ratio {
            return mismatch(format!(
                "processor downsample_ratio {} differs from the projector's {}",
                pr.downsample_ratio, p.downsample_ratio
            ));
        }
        if v.width % v.heads != 0 {
            return mismatch(format!(
                "vision width {} is not divisible by {} heads",
                v.width, v.heads
            ));
        }
        Ok(())
    }
}

fn vision_spec(path: &Path, v: &VisionJson) -> Result<SiglipSpec> {
    if v.class_token || !v.ignore_head {
        return Err(Error::Unsupported {
            what: format!(
                "vision_config with class_token={} ignore_head={} in {}",
                v.class_token,
                v.ignore_head,
                path.display()
            ),
            hint: "DeepSeek-VL2 runs SigLIP without class token and without its pooling head"
                .into(),
        });
    }
    if v.patch_size == 0 || v.image_size < v.patch_size || v.heads == 0 {
        return Err(config_err(
            path,
            format!(
                "vision_config: image_size {} / patch_size {} / heads {} are not usable",
                v.image_size, v.patch_size, v.heads
            ),
        ));
    }
    Ok(SiglipSpec {
        image_size: v.image_size,
        patch_size: v.patch_size,
        width: v.width,
        layers: v.layers,
        heads: v.heads,
        // timm `Mlp(hidden_features=int(embed_dim * mlp_ratio))`
        mlp_hidden: (v.width as f64 * v.mlp_ratio) as usize,
        ln_eps: 1e-6,
        // `siglip_vit.py` builds its blocks with the tanh GELU (v2 §3).
        act: Activation::GeluTanh,
        // Normalisation happens in the processor for VL2 (v2 §2.7).
        pixel_mean: [0.0; 3],
        pixel_std: [1.0; 3],
    })
}

fn projector_spec(path: &Path, p: &ProjectorJson) -> Result<DownsampleProjectorSpec> {
    if p.projector_type != "downsample_mlp_gelu" || p.token_pooling {
        return Err(Error::Unsupported {
            what: format!(
                "projector_type `{}` (token_pooling {}) in {}",
                p.projector_type,
                p.token_pooling,
                path.display()
            ),
            hint: "DeepSeek-VL2 uses `downsample_mlp_gelu` without token pooling".into(),
        });
    }
    if p.depth == 0 || p.mlp_ratio == 0 || p.downsample_ratio == 0 {
        return Err(config_err(
            path,
            "projector_config: depth, mlp_ratio and downsample_ratio must be positive",
        ));
    }
    Ok(DownsampleProjectorSpec {
        input_dim: p.input_dim,
        n_embed: p.n_embed,
        depth: p.depth,
        mlp_ratio: p.mlp_ratio,
        downsample_ratio: p.downsample_ratio,
    })
}

fn processor_spec(path: &Path, p: ProcessorJson) -> Result<Vl2ProcessorSpec> {
    let need = |what: &str| {
        config_err(
            path,
            format!("`{what}` is missing; it has no default in DeepseekVLV2Processor"),
        )
    };
    let candidates: Vec<(u32, u32)> = p
        .candidate_resolutions
        .ok_or_else(|| need("candidate_resolutions"))?
        .into_iter()
        .map(|[w, h]| (w, h))
        .collect();
    let &(tile_size, _) = candidates
        .first()
        .ok_or_else(|| config_err(path, "candidate_resolutions is empty"))?;
    if let Some(&(w, h)) = candidates
        .iter()
        .find(|&&(w, h)| w == 0 || h == 0 || w % tile_size != 0 || h % tile_size != 0)
    {
        return Err(config_err(
            path,
            format!(
                "candidate resolution [{w}, {h}] is not a multiple of the tile size {tile_size}"
            ),
        ));
    }
    if let Some(f) = &p.sft_format {
        if f != "deepseek" {
            return Err(Error::Unsupported {
                what: format!("sft_format `{f}` in {}", path.display()),
                hint: "DeepSeek-VL2 uses the `deepseek` conversation format".into(),
            });
        }
    }
    let patch_size = p.patch_size.ok_or_else(|| need("patch_size"))?;
    let downsample_ratio = p.downsample_ratio.ok_or_else(|| need("downsample_ratio"))?;
    if patch_size == 0 || downsample_ratio == 0 {
        return Err(config_err(
            path,
            "patch_size and downsample_ratio must be positive",
        ));
    }
    let mut pad_color = [0u8; 3];
    for (dst, m) in pad_color.iter_mut().zip(p.image_mean) {
        if !(0.0..=1.0).contains(&m) {
            return Err(config_err(
                path,
                format!("image_mean value {m} is not in 0..1"),
            ));
        }
        *dst = (m * 255.0).trunc() as u8;
    }
    if p.image_std.iter().any(|&s| s <= 0.0) {
        return Err(config_err(path, "image_std values must be positive"));
    }
    Ok(Vl2ProcessorSpec {
        candidates,
        tile_size,
        patch_size,
        downsample_ratio,
        image_mean: p.image_mean,
        image_std: p.image_std,
        normalize: p.normalize,
        pad_color,
        image_token: p.image_token,
        pad_token: p.pad_token,
    })
}
