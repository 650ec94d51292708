//! Serde mirrors of the JSON files in a model directory, field names exactly as published.
//! Defaults are the reference classes' defaults; `resolve` turns these into a checked [`super::DeepseekVlSpec`].

use serde::Deserialize;
use serde_json::Value;

// ------------------------------------------------------------------------------------------------
// Original layout (`deepseek-ai/*`, `model_type: multi_modality`, v1 §2.1–2.2)
// ------------------------------------------------------------------------------------------------

/// `{cls, model_type, params}` as written by the official `VisionConfig` / `AlignerConfig`.
#[derive(Debug, Clone, Deserialize)]
pub struct ClsParams {
    pub cls: String,
    #[serde(default)]
    pub params: Value,
}

#[derive(Debug, Clone, Deserialize)]
pub struct OriginalConfig {
    pub vision_config: ClsParams,
    pub aligner_config: ClsParams,
    pub language_config: LlamaConfigJson,
}

/// `aligner_config.params` (official `MlpProjector`, v1 §6).
#[derive(Debug, Clone, Deserialize)]
pub struct AlignerParams {
    pub projector_type: String,
    #[serde(default = "one")]
    pub depth: usize,
    pub input_dim: usize,
    pub n_embed: usize,
}

fn one() -> usize {
    1
}

/// One tower's params (`vision_config.params`, or `high_res_cfg` / `low_res_cfg` of the hybrid tower).
/// `width`, `layers`, `heads`, `mlp_ratio`, `global_attn_indexes`, `prompt_embed_dim` and
/// `downsample_channels` are absent from published configs; when present they override the factory
/// table entry for `model_name` (reference-v1 §3, used by the tiny test checkpoints).
#[derive(Debug, Clone, Deserialize)]
pub struct TowerParams {
    pub model_name: String,
    pub image_size: Option<usize>,
    pub select_layer: Option<i64>,
    pub pixel_mean: Option<[f64; 3]>,
    pub pixel_std: Option<[f64; 3]>,
    pub width: Option<usize>,
    pub layers: Option<usize>,
    pub heads: Option<usize>,
    pub mlp_ratio: Option<f64>,
    pub global_attn_indexes: Option<Vec<usize>>,
    pub prompt_embed_dim: Option<usize>,
    pub downsample_channels: Option<Vec<usize>>,
}

/// `HybridVisionTower` params (v1 §2.1).
#[derive(Debug, Clone, Deserialize)]
pub struct HybridParams {
    pub high_res_cfg: TowerParams,
    pub low_res_cfg: TowerParams,
    #[serde(default = "tuple")]
    pub concat_type: String,
}

fn tuple() -> String {
    "tuple".into()
}

/// `language_config` (v1 §7). Defaults: transformers 4.38 `LlamaConfig`.
/// `bos_token_id`/`eos_token_id` are deliberately not read: LlamaConfig's 1/2 are wrong for this
/// tokenizer (v1 §14); the ids come from the tokenizer files.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct LlamaConfigJson {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: Option<usize>,
    pub hidden_act: String,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<Value>,
    pub attention_bias: bool,
    pub tie_word_embeddings: bool,
    pub head_dim: Option<usize>,
}

impl Default for LlamaConfigJson {
    fn default() -> Self {
        // transformers 4.38.2 `LlamaConfig.__init__` defaults.
        Self {
            vocab_size: 32000,
            hidden_size: 4096,
            intermediate_size: 11008,
            num_hidden_layers: 32,
            num_attention_heads: 32,
            num_key_value_heads: None,
            hidden_act: "silu".into(),
            max_position_embeddings: 2048,
            rms_norm_eps: 1e-6,
            rope_theta: 10000.0,
            rope_scaling: None,
            attention_bias: false,
            tie_word_embeddings: false,
            head_dim: None,
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Transformers layout (`deepseek-community/*`, `model_type: deepseek_vl[_hybrid]`, v1 §12.2)
// ------------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Deserialize)]
pub struct TransformersConfig {
    pub text_config: LlamaConfigJson,
    pub vision_config: SiglipVisionConfigJson,
    pub high_res_vision_config: Option<SamVisionConfigJson>,
    pub image_token_id: Option<u32>,
}

/// transformers `SiglipVisionConfig` (defaults from that class, except `hidden_act`, which the
/// DeepSeek-VL conversion sets to exact "gelu", v1 §12.2).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct SiglipVisionConfigJson {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub hidden_act: String,
    pub layer_norm_eps: f64,
    pub vision_use_head: bool,
}

impl Default for SiglipVisionConfigJson {
    fn default() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            image_size: 224,
            patch_size: 16,
            hidden_act: "gelu_pytorch_tanh".into(),
            layer_norm_eps: 1e-6,
            vision_use_head: true,
        }
    }
}

/// transformers `SamVisionConfig` defaults (SAM-B sizes are set explicitly by the conversion).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct SamVisionConfigJson {
    pub hidden_size: usize,
    pub output_channels: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub hidden_act: String,
    pub layer_norm_eps: f64,
    pub window_size: usize,
    pub global_attn_indexes: Vec<usize>,
    pub mlp_dim: Option<usize>,
    pub mlp_ratio: f64,
    pub use_rel_pos: bool,
    pub use_abs_pos: bool,
}

impl Default for SamVisionConfigJson {
    fn default() -> Self {
        Self {
            hidden_size: 768,
            output_channels: 256,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            image_size: 1024,
            patch_size: 16,
            hidden_act: "gelu".into(),
            layer_norm_eps: 1e-6,
            window_size: 14,
            global_attn_indexes: vec![2, 5, 8, 11],
            mlp_dim: None,
            mlp_ratio: 4.0,
            use_rel_pos: true,
            use_abs_pos: true,
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Processor files (v1 §2.3–2.4; transformers 5.x nests the image processor in processor_config.json)
// ------------------------------------------------------------------------------------------------

/// Union of the fields we honour from `preprocessor_config.json` (either layout) and the
/// `image_processor` object inside a 5.x `processor_config.json`. Everything optional: the layout's
/// own defaults are applied in `resolve`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ImageProcessorJson {
    pub image_size: Option<usize>,
    pub min_size: Option<usize>,
    pub image_mean: Option<[f64; 3]>,
    pub image_std: Option<[f64; 3]>,
    pub background_color: Option<[f64; 3]>,
    pub rescale_factor: Option<f64>,
    pub size: Option<Value>,
    pub high_res_size: Option<Value>,
    pub high_res_image_mean: Option<[f64; 3]>,
    pub high_res_image_std: Option<[f64; 3]>,
    pub high_res_background_color: Option<[f64; 3]>,
}

/// `processor_config.json`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ProcessorJson {
    pub image_tag: Option<String>,
    pub num_image_tokens: Option<usize>,
    pub sft_format: Option<String>,
    pub image_processor: Option<ImageProcessorJson>,
}
