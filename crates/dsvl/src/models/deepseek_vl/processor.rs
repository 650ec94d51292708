//! The DeepSeek-VL processor (`VLChatProcessor`, v1 §3.1, §8): the `deepseek` template rendered
//! to one string, tokenized, each `<image_placeholder>` replaced by 576 image tokens; each image
//! resized so its long side is the tower's input size, padded to a square with the background
//! colour, and handed to the model as [0, 1] f32 (the model normalises it, v1 §3.2).

use candle_core::{Device, Tensor};

use super::config::DeepseekVlSpec;
use crate::error::{Error, Result};
use crate::image;
use crate::models::inputs::{
    ChatMessage, ImageInput, ImageOptions, ImageSource, Prepared, PromptText,
};
use crate::prompt::expand::expand_prompt;
use crate::prompt::template::{render, Message};
use crate::prompt::tokenizer::PromptTokenizer;

/// The prompt string and its expanded ids (v1 §8): `system` (or the family's default) and the
/// turns rendered, tokenized with BOS, every placeholder expanded.
pub(super) fn prompt(
    spec: &DeepseekVlSpec,
    tok: &PromptTokenizer,
    system: &str,
    turns: &[Message],
) -> Result<PromptText> {
    let prompt = render(system, turns)?;
    let ids = tok.encode_prompt(&prompt)?;
    let n_images: usize = turns.iter().map(|m| m.n_images).sum();
    let p = &spec.processor;
    let expanded = expand_prompt(
        &ids,
        tok.image_id(),
        p.num_image_tokens,
        n_images,
        &p.image_tag,
    )?;
    Ok(PromptText {
        prompt,
        ids: expanded.ids,
    })
}

/// [`prompt`], then every image decoded and preprocessed, in order.
pub(super) fn prepare(
    spec: &DeepseekVlSpec,
    tok: &PromptTokenizer,
    system: &str,
    messages: &[ChatMessage],
    options: &ImageOptions,
) -> Result<Prepared> {
    if let Some(n) = options.max_tiles {
        return Err(Error::Unsupported {
            what: format!("a tile cap ({n}) for a DeepSeek-VL model"),
            hint: "DeepSeek-VL reads every image as one fixed-size view, with no tiles to cap; \
                   drop the max-tiles setting (it applies to DeepSeek-VL2 models)"
                .into(),
        });
    }
    let turns: Vec<Message> = messages
        .iter()
        .map(|m| Message::new(m.role, m.content.clone()).with_images(m.images.len()))
        .collect();
    let PromptText { prompt, ids } = prompt(spec, tok, system, &turns)?;
    let sources = messages.iter().flat_map(|m| m.images.iter());
    let (images, image_sizes) = preprocess(spec, sources, options.max_pixels)?;
    Ok(Prepared {
        prompt,
        ids,
        n_images: images.len(),
        image_tokens: vec![spec.processor.num_image_tokens; images.len()],
        images,
        image_sizes,
        preprocess_ms: 0.0,
    })
}

/// Each image's vision input and its decoded `(width, height)`.
type Preprocessed = (Vec<ImageInput>, Vec<(u32, u32)>);

/// Decodes and preprocesses images (v1 §3.1) into square views `[3, S, S]` f32 in [0, 1];
/// also returns each image's decoded size.
fn preprocess<'a>(
    spec: &DeepseekVlSpec,
    sources: impl Iterator<Item = &'a ImageSource>,
    max_image_pixels: u64,
) -> Result<Preprocessed> {
    let p = &spec.processor;
    let s = p.image_size;
    let (mut images, mut sizes) = (Vec::new(), Vec::new());
    for src in sources {
        let img = src.decode(max_image_pixels)?;
        sizes.push((img.width, img.height));
        let padded = image::preprocess(&img, s as u32, p.min_size as u32, p.background);
        let px = Tensor::from_vec(image::to_chw_f32(&padded), (3, s, s), &Device::Cpu)?;
        images.push(ImageInput::Square(px));
    }
    Ok((images, sizes))
}
