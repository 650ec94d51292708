//! The one place that knows which families exist: `config.json`'s `model_type` picks the family,
//! whose `config.rs` resolves the rest of the directory.

use std::path::{Path, PathBuf};

use super::family::Family;
use super::{deepseek_ocr, deepseek_vl, deepseek_vl2};
use crate::config::{config_err, read_json};
use crate::error::{Error, Result};

/// A model directory's `config.json`, read once, handed to its family's resolver.
pub(crate) struct ConfigFile {
    pub(crate) dir: PathBuf,
    /// `dir/config.json`, for error messages.
    pub(crate) path: PathBuf,
    /// `model_type` (empty when the file has none).
    pub(crate) model_type: String,
    /// The whole file.
    pub(crate) value: serde_json::Value,
}

/// One family: the `model_type` values that name it, the `architectures` entries it needs (empty:
/// any; DeepSeek-OCR shares VL2's `model_type`), and how its directory resolves.
struct Entry {
    model_types: &'static [&'static str],
    architectures: &'static [&'static str],
    resolve: fn(ConfigFile) -> Result<Box<dyn Family>>,
}

/// Every supported family. A new family adds one entry (see `models::family`).
/// The first matching entry wins.
const FAMILIES: &[Entry] = &[
    Entry {
        model_types: deepseek_vl::MODEL_TYPES,
        architectures: &[],
        resolve: deepseek_vl::resolve,
    },
    Entry {
        model_types: deepseek_ocr::MODEL_TYPES,
        architectures: deepseek_ocr::ARCHITECTURES,
        resolve: deepseek_ocr::resolve,
    },
    Entry {
        model_types: deepseek_vl2::MODEL_TYPES,
        architectures: &[],
        resolve: deepseek_vl2::resolve,
    },
];

/// What an unknown `model_type` is told: the values of [`FAMILIES`] and where each comes from.
const KNOWN_MODEL_TYPES: &str = "`multi_modality` (deepseek-ai/deepseek-vl-*), `deepseek_vl` / \
    `deepseek_vl_hybrid` (deepseek-community/*) or `deepseek_vl_v2` (deepseek-ai/deepseek-vl2*, \
    deepseek-ai/DeepSeek-OCR)";

/// Reads a model directory: its family (from `config.json`'s `model_type`) and that family's
/// resolved configuration. No weights are read.
pub fn from_dir(dir: &Path) -> Result<Box<dyn Family>> {
    let path = dir.join("config.json");
    if !path.is_file() {
        return Err(Error::NotAModelDir(dir.to_path_buf()));
    }
    let value: serde_json::Value = read_json(&path)?;
    let model_type = value
        .get("model_type")
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .to_string();
    let architectures: Vec<&str> = value
        .get("architectures")
        .and_then(|v| v.as_array())
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    let Some(entry) = FAMILIES.iter().find(|e| {
        e.model_types.contains(&model_type.as_str())
            && (e.architectures.is_empty()
                || e.architectures.iter().any(|a| architectures.contains(a)))
    }) else {
        return Err(config_err(
            &path,
            format!(
                "model_type `{model_type}` is not a DeepSeek-VL model; expected {KNOWN_MODEL_TYPES}"
            ),
        ));
    };
    (entry.resolve)(ConfigFile {
        dir: dir.to_path_buf(),
        path,
        model_type,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error for an unknown `model_type` names every value the registry accepts.
    #[test]
    fn unknown_model_type_message_lists_every_family() {
        for entry in FAMILIES {
            for t in entry.model_types {
                assert!(KNOWN_MODEL_TYPES.contains(&format!("`{t}`")), "{t}");
            }
        }
    }
}
