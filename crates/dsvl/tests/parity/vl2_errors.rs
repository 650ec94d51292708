//! DeepSeek-VL2 folders and requests a user can get wrong: each is a typed error whose message
//! names the file, key or tensor and what to do; nothing panics.

use std::path::{Path, PathBuf};

use dsvl::engine::{ChatMessage, ImageSource, LoadOptions, Pipeline};
use dsvl::prompt::template::Role;
use dsvl::Error;

use crate::vl2::vl2_fixtures;

/// A scratch copy of a VL2 fixture model, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn copy_of(model: &str, tag: &str) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("dsvl-vl2-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        for entry in std::fs::read_dir(vl2_fixtures().join("models").join(model))? {
            let entry = entry?;
            let dst = dir.join(entry.file_name());
            std::fs::write(&dst, std::fs::read(entry.path())?)?;
        }
        Ok(Self(dir))
    }
    fn path(&self) -> &Path {
        &self.0
    }
    fn load(&self) -> dsvl::Result<Pipeline> {
        Pipeline::load(&self.0, &LoadOptions::default())
    }
    /// Edits `config.json` (or another JSON file of the folder) in place.
    fn edit_json(
        &self,
        file: &str,
        edit: impl FnOnce(&mut serde_json::Value),
    ) -> anyhow::Result<()> {
        let path = self.0.join(file);
        let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
        edit(&mut v);
        std::fs::write(&path, serde_json::to_vec_pretty(&v)?)?;
        Ok(())
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn load_err(s: &Scratch) -> anyhow::Result<Error> {
    match s.load() {
        Ok(_) => anyhow::bail!("{} loaded although it is broken", s.path().display()),
        Err(e) => Ok(e),
    }
}

fn expect(e: &Error, parts: &[&str]) -> anyhow::Result<()> {
    let msg = e.to_string();
    for p in parts {
        anyhow::ensure!(msg.contains(p), "message {msg:?} lacks {p:?}");
    }
    Ok(())
}

#[test]
fn vl2_unknown_topk_method_names_the_key() -> anyhow::Result<()> {
    let s = Scratch::copy_of("vl2-small-random", "topk")?;
    s.edit_json("config.json", |v| {
        v["language_config"]["topk_method"] = "sinkhorn".into()
    })?;
    let e = load_err(&s)?;
    expect(&e, &["topk_method", "sinkhorn", "config.json"])
}

#[test]
fn vl2_unknown_tile_tag_is_unsupported() -> anyhow::Result<()> {
    let s = Scratch::copy_of("vl2-tiny-random", "tiletag")?;
    s.edit_json("config.json", |v| v["tile_tag"] = "1D".into())?;
    let e = load_err(&s)?;
    anyhow::ensure!(matches!(e, Error::Unsupported { .. }), "{e:?}");
    expect(&e, &["tile_tag", "1D", "2D"])?;
    // A config without tile_tag takes the official class default, the string "tile_tag".
    s.edit_json("config.json", |v| {
        v.as_object_mut().map(|o| o.remove("tile_tag"));
    })?;
    expect(&load_err(&s)?, &["tile_tag `tile_tag`"])
}

#[test]
fn vl2_missing_processor_config_says_what_is_missing() -> anyhow::Result<()> {
    let s = Scratch::copy_of("vl2-tiny-random", "noproc")?;
    std::fs::remove_file(s.path().join("processor_config.json"))?;
    expect(&load_err(&s)?, &["processor_config.json", "file not found"])?;
    let s = Scratch::copy_of("vl2-tiny-random", "nocands")?;
    s.edit_json("processor_config.json", |v| {
        v.as_object_mut().map(|o| o.remove("candidate_resolutions"));
    })?;
    expect(&load_err(&s)?, &["candidate_resolutions", "missing"])
}

#[test]
fn vl2_mismatched_projector_and_unknown_projector_type() -> anyhow::Result<()> {
    let s = Scratch::copy_of("vl2-base-random", "projdim")?;
    s.edit_json("config.json", |v| {
        v["projector_config"]["input_dim"] = 1152.into()
    })?;
    expect(&load_err(&s)?, &["input_dim 1152", "vision width"])?;
    s.edit_json("config.json", |v| {
        v["projector_config"]["input_dim"] = v["vision_config"]["width"].clone();
        v["projector_config"]["projector_type"] = "token_pooling_mlp".into();
    })?;
    let e = load_err(&s)?;
    anyhow::ensure!(matches!(e, Error::Unsupported { .. }), "{e:?}");
    expect(&e, &["token_pooling_mlp", "downsample_mlp_gelu"])
}

#[test]
fn vl2_missing_separator_tensor_is_named() -> anyhow::Result<()> {
    let s = Scratch::copy_of("vl2-tiny-random", "nosep")?;
    // Drop `view_seperator` (sic) from its shard and from the index.
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(
        s.path().join("model.safetensors.index.json"),
    )?)?;
    let shard = s.path().join(
        index["weight_map"]["view_seperator"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("fixture index lacks view_seperator"))?,
    );
    let mut tensors = candle_core::safetensors::load(&shard, &candle_core::Device::Cpu)?;
    tensors.remove("view_seperator");
    candle_core::safetensors::save(&tensors, &shard)?;
    s.edit_json("model.safetensors.index.json", |v| {
        v["weight_map"]
            .as_object_mut()
            .map(|o| o.remove("view_seperator"));
    })?;
    let e = load_err(&s)?;
    anyhow::ensure!(matches!(e, Error::MissingTensor { .. }), "{e:?}");
    expect(&e, &["view_seperator", "missing"])
}

#[test]
fn vl2_requests_with_wrong_markers_or_too_many_tokens_fail_clearly() -> anyhow::Result<()> {
    let p = crate::vl2::load_vl2_model("vl2-tiny-random", candle_core::DType::F32)?;
    let img = ImageSource::Path(vl2_fixtures().join("images/tower_300x900.png"));
    // Two markers, one image.
    let two =
        vec![ChatMessage::new(Role::User, "<image>\n<image>\nCompare.")
            .with_images(vec![img.clone()])];
    let e = p
        .prepare(None, &two)
        .err()
        .ok_or_else(|| anyhow::anyhow!("accepted"))?;
    anyhow::ensure!(
        matches!(
            e,
            Error::ImageCountMismatch {
                markers: 2,
                images: 1,
                ..
            }
        ),
        "{e:?}"
    );
    expect(&e, &["<image>"])?;
    // The v1 marker in a VL2 prompt is plain text, so the image has no marker and goes first.
    let v1_marker = vec![
        ChatMessage::new(Role::User, "<image_placeholder>What is it?")
            .with_images(vec![img.clone()]),
    ];
    p.prepare(None, &v1_marker)?;
    // Context overflow: prompt plus new tokens over 4096.
    let prepared = p.prepare(
        None,
        &[ChatMessage::new(Role::User, "Hi.").with_images(vec![img.clone()])],
    )?;
    let mut params = dsvl::engine::GenerateParams::default();
    params.sampling.max_new_tokens = 4000;
    let e = p
        .generate(&prepared, &params, |_| std::ops::ControlFlow::Continue(()))
        .err()
        .ok_or_else(|| anyhow::anyhow!("accepted"))?;
    anyhow::ensure!(matches!(e, Error::ContextOverflow { .. }), "{e:?}");
    // A broken image file.
    let bad = ImageSource::Bytes {
        name: "upload.png".into(),
        data: b"\x89PNG\r\n\x1a\nbroken".to_vec(),
    };
    let e = p
        .prepare(
            None,
            &[ChatMessage::new(Role::User, "What?").with_images(vec![bad])],
        )
        .err()
        .ok_or_else(|| anyhow::anyhow!("accepted"))?;
    expect(&e, &["upload.png"])?;
    // Images on an assistant message.
    let conv = vec![
        ChatMessage::new(Role::User, "Hi."),
        ChatMessage::new(Role::Assistant, "Hello.").with_images(vec![img]),
        ChatMessage::new(Role::User, "And?"),
    ];
    let e = p
        .prepare(None, &conv)
        .err()
        .ok_or_else(|| anyhow::anyhow!("accepted"))?;
    expect(&e, &["assistant", "user messages only"])
}

#[test]
fn vl2_max_tiles_caps_the_tiling_and_reports_image_tokens() -> anyhow::Result<()> {
    let p = crate::vl2::load_vl2_model("vl2-tiny-random", candle_core::DType::F32)?;
    let img = ImageSource::Path(vl2_fixtures().join("images/tower_300x900.png"));
    let msg = [ChatMessage::new(Role::User, "<image>\nRead it.").with_images(vec![img])];
    let grid = |prep: &dsvl::engine::Prepared| match &prep.images[0] {
        dsvl::engine::ImageInput::Tiled(t) => t.grid(),
        other => panic!("{other:?}"),
    };
    let full = p.prepare_with(None, &msg, None)?;
    let (nw, nh) = grid(&full);
    anyhow::ensure!(nw * nh >= 2, "the fixture image should tile: {nw}x{nh}");
    anyhow::ensure!(full.ids == p.prepare(None, &msg)?.ids);
    for cap in [1, 2] {
        let capped = p.prepare_with(None, &msg, Some(cap))?;
        let (w, h) = grid(&capped);
        anyhow::ensure!(w * h <= cap, "cap {cap}: {w}x{h}");
        anyhow::ensure!(capped.image_tokens.len() == 1);
        // The tokens saved are exactly the image positions dropped from the prompt.
        anyhow::ensure!(
            full.ids.len() - capped.ids.len() == full.image_tokens[0] - capped.image_tokens[0],
            "cap {cap}: {} vs {} ids, {:?} vs {:?} image tokens",
            full.ids.len(),
            capped.ids.len(),
            full.image_tokens,
            capped.image_tokens
        );
        anyhow::ensure!(capped.image_tokens[0] < full.image_tokens[0]);
    }
    let e = p
        .prepare_with(None, &msg, Some(0))
        .err()
        .ok_or_else(|| anyhow::anyhow!("a cap of 0 tiles was accepted"))?;
    expect(&e, &["at least 1"])?;
    Ok(())
}
