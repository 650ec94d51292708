//! Bad inputs a user can send: each gives the typed error with a message that says what was wrong,
//! never a panic.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use dsvl::engine::{ChatMessage, ImageSource, LoadOptions, Pipeline};
use dsvl::prompt::template::Role;
use dsvl::Error;

use crate::v1::{fixtures, load_model};

/// A scratch copy of a fixture model directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn copy_of(model: &str, tag: &str) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("dsvl-test-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        for entry in std::fs::read_dir(fixtures().join("models").join(model))? {
            let entry = entry?;
            std::fs::copy(entry.path(), dir.join(entry.file_name()))?;
        }
        Ok(Self(dir))
    }
    fn path(&self) -> &Path {
        &self.0
    }
    fn load(&self) -> dsvl::Result<Pipeline> {
        Pipeline::load(&self.0, &LoadOptions::default())
    }
    fn rewrite_weights(
        &self,
        edit: impl FnOnce(&mut HashMap<String, Tensor>),
    ) -> anyhow::Result<()> {
        let file = self.0.join("model.safetensors");
        let mut tensors = candle_core::safetensors::load(&file, &Device::Cpu)?;
        edit(&mut tensors);
        candle_core::safetensors::save(&tensors, &file)?;
        Ok(())
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn user(text: &str, images: Vec<ImageSource>) -> Vec<ChatMessage> {
    vec![ChatMessage::new(Role::User, text).with_images(images)]
}

fn image_file(name: &str) -> ImageSource {
    ImageSource::Path(crate::v1::fixtures().join("images").join(name))
}

fn bad_input(name: &str) -> ImageSource {
    ImageSource::Path(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/images/inputs/bad")
            .join(name),
    )
}

#[test]
fn bad_images_are_clear_errors() -> anyhow::Result<()> {
    let p = load_model("siglip-tiny", DType::F32)?;
    let bad_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/images/inputs/bad");
    let mut names: Vec<String> = std::fs::read_dir(&bad_dir)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    names.sort();
    anyhow::ensure!(
        names.len() >= 5,
        "expected the bad-input fixtures, found {names:?}"
    );
    for name in &names {
        let err = p
            .prepare(None, &user("What is this?", vec![bad_input(name)]))
            .unwrap_err();
        let msg = err.to_string();
        match &err {
            Error::ImageDecode { .. } => {
                anyhow::ensure!(msg.contains("cannot read image"), "{name}: {msg}")
            }
            Error::ImageTooLarge { pixels, .. } => {
                anyhow::ensure!(
                    *pixels == 60000 * 60000 && msg.contains("over the limit"),
                    "{name}: {msg}"
                )
            }
            other => anyhow::bail!("{name}: unexpected error {other:?}"),
        }
    }
    let missing = p
        .prepare(None, &user("x", vec![image_file("nope.png")]))
        .unwrap_err();
    anyhow::ensure!(
        matches!(missing, Error::Io { .. }) && missing.to_string().contains("nope.png"),
        "{missing}"
    );
    Ok(())
}

#[test]
fn placeholder_count_mismatch_is_an_error() -> anyhow::Result<()> {
    let p = load_model("siglip-tiny", DType::F32)?;
    let two = "<image_placeholder>A <image_placeholder>B";
    let err = p
        .prepare(None, &user(two, vec![image_file("landscape_500x333.png")]))
        .unwrap_err();
    anyhow::ensure!(matches!(err, Error::ImageCountMismatch { .. }), "{err:?}");
    anyhow::ensure!(
        err.to_string()
            .contains("2 image placeholders but 1 images"),
        "{err}"
    );
    // A typed placeholder with no image at all is a mismatch too (v1 §14).
    let err = p.prepare(None, &user(two, vec![])).unwrap_err();
    anyhow::ensure!(matches!(err, Error::ImageCountMismatch { .. }), "{err:?}");
    // Images without placeholders get one each, at the start of the turn.
    let ok = p.prepare(
        None,
        &user("Describe.", vec![image_file("landscape_500x333.png")]),
    )?;
    anyhow::ensure!(
        ok.prompt.contains("User: <image_placeholder>Describe."),
        "{}",
        ok.prompt
    );
    Ok(())
}

#[test]
fn prompt_over_the_context_is_refused_not_truncated() -> anyhow::Result<()> {
    let p = load_model("siglip-tiny", DType::F32)?;
    let max = p.config().context_length();
    let prepared = p.prepare(None, &user("Hello", vec![]))?;
    let mut params = dsvl::engine::GenerateParams::default();
    params.sampling.max_new_tokens = max;
    let err = p
        .generate(&prepared, &params, |_| std::ops::ControlFlow::Continue(()))
        .unwrap_err();
    anyhow::ensure!(matches!(err, Error::ContextOverflow { .. }), "{err:?}");
    anyhow::ensure!(
        err.to_string().contains(&format!("context holds {max}")),
        "{err}"
    );
    Ok(())
}

#[test]
fn missing_tensor_names_the_tensor() -> anyhow::Result<()> {
    let s = Scratch::copy_of("siglip-tiny", "missing")?;
    s.rewrite_weights(|t| {
        t.remove("language_model.model.layers.1.mlp.up_proj.weight");
    })?;
    let err = s
        .load()
        .err()
        .ok_or_else(|| anyhow::anyhow!("loaded without a tensor"))?;
    anyhow::ensure!(matches!(err, Error::MissingTensor { .. }), "{err:?}");
    let msg = err.to_string();
    anyhow::ensure!(
        msg.contains("language_model.model.layers.1.mlp.up_proj.weight")
            && msg.contains("[48, 16]"),
        "{msg}"
    );
    Ok(())
}

#[test]
fn wrongly_shaped_tensor_names_both_shapes() -> anyhow::Result<()> {
    let s = Scratch::copy_of("siglip-tiny", "shape")?;
    s.rewrite_weights(|t| {
        let bad = Tensor::zeros((48, 15), DType::F16, &Device::Cpu).expect("small zeros");
        t.insert(
            "language_model.model.layers.0.mlp.gate_proj.weight".into(),
            bad,
        );
    })?;
    let err = s
        .load()
        .err()
        .ok_or_else(|| anyhow::anyhow!("loaded a wrong shape"))?;
    let msg = err.to_string();
    anyhow::ensure!(matches!(err, Error::TensorShape { .. }), "{err:?}");
    anyhow::ensure!(
        msg.contains("gate_proj.weight") && msg.contains("[48, 15]") && msg.contains("[48, 16]"),
        "{msg}"
    );
    Ok(())
}

#[test]
fn unexpected_tensor_is_reported() -> anyhow::Result<()> {
    let s = Scratch::copy_of("siglip-tiny", "extra")?;
    s.rewrite_weights(|t| {
        let extra = Tensor::zeros(4, DType::F16, &Device::Cpu).expect("small zeros");
        t.insert("language_model.model.layers.7.extra.weight".into(), extra);
    })?;
    let err = s
        .load()
        .err()
        .ok_or_else(|| anyhow::anyhow!("loaded with an extra tensor"))?;
    anyhow::ensure!(err.to_string().contains("layers.7.extra.weight"), "{err}");
    Ok(())
}

#[test]
fn corrupt_safetensors_header_is_an_error() -> anyhow::Result<()> {
    let s = Scratch::copy_of("siglip-tiny", "corrupt")?;
    let file = s.path().join("model.safetensors");
    let mut bytes = std::fs::read(&file)?;
    bytes[8..40].copy_from_slice(&[b'#'; 32]);
    std::fs::write(&file, &bytes)?;
    let err = s
        .load()
        .err()
        .ok_or_else(|| anyhow::anyhow!("loaded a corrupt file"))?;
    anyhow::ensure!(matches!(err, Error::Safetensors { .. }), "{err:?}");
    anyhow::ensure!(
        err.to_string().contains("model.safetensors") && err.to_string().contains("re-download"),
        "{err}"
    );
    Ok(())
}

#[test]
fn missing_tokenizer_is_an_error() -> anyhow::Result<()> {
    let s = Scratch::copy_of("siglip-tiny", "notok")?;
    std::fs::remove_file(s.path().join("tokenizer.json"))?;
    let err = s
        .load()
        .err()
        .ok_or_else(|| anyhow::anyhow!("loaded without a tokenizer"))?;
    anyhow::ensure!(matches!(err, Error::Tokenizer { .. }), "{err:?}");
    anyhow::ensure!(err.to_string().contains("tokenizer.json"), "{err}");
    Ok(())
}

#[test]
fn unknown_projector_type_is_an_error() -> anyhow::Result<()> {
    let s = Scratch::copy_of("siglip-tiny", "proj")?;
    let cfg = s.path().join("config.json");
    let text = std::fs::read_to_string(&cfg)?.replace("\"mlp_gelu\"", "\"mlp_swish\"");
    std::fs::write(&cfg, text)?;
    let err = s
        .load()
        .err()
        .ok_or_else(|| anyhow::anyhow!("loaded an unknown projector"))?;
    anyhow::ensure!(matches!(err, Error::Unsupported { .. }), "{err:?}");
    anyhow::ensure!(err.to_string().contains("mlp_swish"), "{err}");
    Ok(())
}

#[test]
fn not_a_model_dir() -> anyhow::Result<()> {
    let err = Pipeline::load(&std::env::temp_dir(), &LoadOptions::default()).err();
    anyhow::ensure!(matches!(err, Some(Error::NotAModelDir(_))), "{err:?}");
    Ok(())
}

#[test]
fn a_tile_cap_is_refused_by_models_without_tiles() -> anyhow::Result<()> {
    let p = load_model("siglip-tiny", DType::F32)?;
    let msg = user("Describe.", vec![image_file("landscape_500x333.png")]);
    let prepared = p.prepare(None, &msg)?;
    anyhow::ensure!(
        prepared.image_tokens == vec![576],
        "{:?}",
        prepared.image_tokens
    );
    let err = p.prepare_with(None, &msg, Some(2)).unwrap_err();
    anyhow::ensure!(matches!(err, Error::Unsupported { .. }), "{err:?}");
    anyhow::ensure!(err.to_string().contains("DeepSeek-VL2"), "{err}");
    Ok(())
}
