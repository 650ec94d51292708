//! Reading the JSON files of a model directory: the helpers every family's `config.rs` uses to
//! read and check its files (the files themselves are mirrored and resolved in
//! `models/<family>/config.rs`; [`crate::models::from_dir`] picks the family).

use std::path::Path;

use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// Reads and parses the JSON file at `path`.
pub(crate) fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_slice(&bytes).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// Parses a value already read from the JSON file at `path`.
pub(crate) fn parse_value<T: DeserializeOwned>(path: &Path, v: serde_json::Value) -> Result<T> {
    serde_json::from_value(v).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// [`read_json`] of an optional file: `None` when there is no file at `path`.
pub(crate) fn read_json_opt<T: DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    if path.is_file() {
        read_json(path).map(Some)
    } else {
        Ok(None)
    }
}

/// An [`Error::Config`] about the file at `path`.
pub(crate) fn config_err(path: &Path, message: impl Into<String>) -> Error {
    Error::Config {
        path: path.to_path_buf(),
        message: message.into(),
    }
}
