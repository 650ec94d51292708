//! The DeepSeek-VL2 processor (`DeepseekVLV2Processor`, v2 §2, §5, §6): each image tiled (a
//! global view and `nw × nh` local tiles, chosen among the candidate resolutions; tiling only when
//! the whole conversation has at most two images), normalised, and expanded to its own number of
//! image tokens; the prompt ids built turn by turn ([`crate::prompt::vl2`]).

use candle_core::{Device, Tensor};

use super::config::{DeepseekVl2Spec, Vl2ProcessorSpec};
use crate::error::{Error, Result};
use crate::image::{self, RgbImage};
use crate::models::inputs::{ChatMessage, ImageInput, ImageOptions, Prepared, TiledImage};
use crate::prompt::template::Role;
use crate::prompt::tokenizer::PromptTokenizer;
use crate::prompt::vl2::{build_vl2_ids, vl2_cropping, Vl2Turn};

/// Tiling depends on the number of images in the whole conversation; each image expands to its
/// own number of image tokens. An empty `system` adds no system turn.
pub(super) fn prepare(
    spec: &DeepseekVl2Spec,
    tok: &PromptTokenizer,
    system: Option<&str>,
    messages: &[ChatMessage],
    options: &ImageOptions,
) -> Result<Prepared> {
    let p = &spec.processor;
    let candidates = capped_candidates(&p.candidates, p.tile_size, options.max_tiles)?;
    let n_images: usize = messages.iter().map(|m| m.images.len()).sum();
    let cropping = vl2_cropping(n_images);
    let s = p.tile_size as usize;
    let mut images = Vec::with_capacity(n_images);
    let mut image_tokens = Vec::with_capacity(n_images);
    let mut image_sizes = Vec::with_capacity(n_images);
    for src in messages.iter().flat_map(|m| m.images.iter()) {
        let img = src.decode(options.max_pixels)?;
        image_sizes.push((img.width, img.height));
        let tiled = image::tile_image(&img, &candidates, p.tile_size, cropping, p.pad_color)?;
        let views: Vec<&RgbImage> = std::iter::once(&tiled.global).chain(&tiled.tiles).collect();
        let mut data = Vec::with_capacity(views.len() * 3 * s * s);
        for view in &views {
            data.extend(normalized_chw(view, p));
        }
        let tiles = Tensor::from_vec(data, (views.len(), 3, s, s), &Device::Cpu)?;
        images.push(ImageInput::Tiled(TiledImage::new(
            tiles, tiled.nw, tiled.nh,
        )?));
        image_tokens.push(spec.image_tokens(tiled.nw, tiled.nh));
    }
    let mut turns = Vec::with_capacity(messages.len() + 1);
    if let Some(text) = system.filter(|s| !s.trim().is_empty()) {
        turns.push(Vl2Turn {
            role: Role::System,
            content: text.to_string(),
            n_images: 0,
        });
    }
    turns.extend(messages.iter().map(|m| Vl2Turn {
        role: m.role,
        content: m.content.clone(),
        n_images: m.images.len(),
    }));
    let built = build_vl2_ids(tok, &p.image_token, &turns, &image_tokens)?;
    // For display: what was tokenized, each image's run of ids shown as one marker.
    let mut shown = Vec::with_capacity(built.ids.len());
    let mut prev = None;
    for (i, &id) in built.ids.iter().enumerate() {
        let in_image = built.image_spans.iter().position(|r| r.contains(&i));
        if in_image.is_none() || in_image != prev {
            shown.push(id);
        }
        prev = in_image;
    }
    let prompt = tok.decode(&shown, false)?;
    Ok(Prepared {
        prompt,
        ids: built.ids,
        images,
        image_sizes,
        image_tokens,
        n_images,
        preprocess_ms: 0.0,
    })
}

/// The candidate resolutions with at most `max_tiles` local tiles, in the published order (so
/// ties still go to the earliest); all of them without a cap.
fn capped_candidates(
    candidates: &[(u32, u32)],
    tile: u32,
    max_tiles: Option<usize>,
) -> Result<Vec<(u32, u32)>> {
    let Some(max) = max_tiles else {
        return Ok(candidates.to_vec());
    };
    let tiles = |&(w, h): &(u32, u32)| (w / tile.max(1)) as usize * (h / tile.max(1)) as usize;
    let kept: Vec<_> = candidates
        .iter()
        .filter(|c| tiles(c) <= max)
        .copied()
        .collect();
    if kept.is_empty() {
        let fewest = candidates.iter().map(tiles).min().unwrap_or(1);
        return Err(Error::Unsupported {
            what: format!("max tiles {max}"),
            hint: format!(
                "this model's smallest tiling has {fewest} tile(s); ask for at least {fewest}"
            ),
        });
    }
    Ok(kept)
}

/// VL2 `ToTensor` + `Normalize` (v2 §2.7): RGB8 → `[3, H, W]` f32, `(v / 255 − mean) / std`
/// computed in f32 as torchvision does.
fn normalized_chw(img: &RgbImage, p: &Vl2ProcessorSpec) -> Vec<f32> {
    let plane = img.width as usize * img.height as usize;
    let mut out = vec![0f32; plane * 3];
    let mean = p.image_mean.map(|m| m as f32);
    let std = p.image_std.map(|s| s as f32);
    for (i, px) in img.data.chunks_exact(3).enumerate() {
        for (c, &v) in px.iter().enumerate() {
            let x = f32::from(v) / 255.0;
            out[c * plane + i] = if p.normalize {
                (x - mean[c]) / std[c]
            } else {
                x
            };
        }
    }
    out
}
