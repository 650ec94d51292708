//! DeepSeek-OCR's image views and image-token layout (`process/image_process.py`,
//! `DeepseekOCRProcessor.tokenize_with_images`, github deepseek-ai/DeepSeek-OCR @ e4ac34e).
//!
//! Per image: one global view of `base_size²` (the image padded, aspect ratio kept, with grey 127),
//! and in the Gundam mode, for an image larger than 640 on a side, 2–`max_crops` local tiles of
//! 640² from the aspect-ratio grid. The views are normalised with mean = std = 0.5. The image's
//! token run is, in embedding order: the local grid (rows of `q·columns` features plus a newline),
//! the global grid (rows of `q_base` features plus a newline), one view separator.

use std::str::FromStr;

use candle_core::{Device, Tensor};

use crate::error::{Error, Result};
use crate::image::{aspect_tiles, contain_size, pil_pad, resize_bicubic, RgbImage};
use crate::models::inputs::{ChatMessage, ImageInput, Prepared, ViewsImage};
use crate::prompt::tokenizer::PromptTokenizer;

/// `color=tuple(int(x * 255) for x in image_mean)` with mean 0.5.
pub const PAD_COLOR: [u8; 3] = [127, 127, 127];
/// SAM patch size and the two stride-2 convolutions: one token per 16·4 = 64 pixels of a side.
const PATCH: u32 = 16;
const DOWNSAMPLE: u32 = 4;
/// `MIN_CROPS` of the published config.py.
pub const MIN_CROPS: u32 = 2;
/// `MAX_CROPS` of the published config.py ("max:9; ... it is recommended to set it to 6").
pub const DEFAULT_MAX_CROPS: u32 = 6;
/// The largest `MAX_CROPS` the official comment allows.
pub const MAX_CROPS_LIMIT: u32 = 9;
/// Gundam tiles an image only when a side exceeds 640 (a literal in `tokenize_with_images`).
const UNTILED_MAX_SIDE: u32 = 640;

/// The official resolution modes (`config.py` and `run_dpsk_ocr.py` comments).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum OcrMode {
    /// 512² global view (the image is first resized to 512² without keeping its aspect), 64 tokens + 8 newlines + 1.
    Tiny,
    /// 640² global view (first resized to 640²), 100 + 10 + 1 tokens.
    Small,
    /// 1024² padded global view, 256 + 16 + 1 tokens.
    Base,
    /// 1280² padded global view, 400 + 20 + 1 tokens.
    Large,
    /// 1024² padded global view plus 640² tiles: the published default.
    #[default]
    Gundam,
}

impl OcrMode {
    pub const ALL: [OcrMode; 5] = [
        OcrMode::Tiny,
        OcrMode::Small,
        OcrMode::Base,
        OcrMode::Large,
        OcrMode::Gundam,
    ];
    const CHOICES: &'static str =
        "tiny (512), small (640), base (1024), large (1280), gundam (1024 + 640 tiles)";

    pub fn name(self) -> &'static str {
        match self {
            OcrMode::Tiny => "tiny",
            OcrMode::Small => "small",
            OcrMode::Base => "base",
            OcrMode::Large => "large",
            OcrMode::Gundam => "gundam",
        }
    }

    /// `base_size`: the side of the global view.
    pub fn base_size(self) -> u32 {
        match self {
            OcrMode::Tiny => 512,
            OcrMode::Small => 640,
            OcrMode::Base | OcrMode::Gundam => 1024,
            OcrMode::Large => 1280,
        }
    }

    /// `image_size`: the side of a local tile (and of the pre-resize in Tiny / Small).
    pub fn image_size(self) -> u32 {
        match self {
            OcrMode::Tiny => 512,
            OcrMode::Small | OcrMode::Gundam => 640,
            OcrMode::Base => 1024,
            OcrMode::Large => 1280,
        }
    }

    /// `crop_mode`: whether large images get local tiles.
    pub fn crop_mode(self) -> bool {
        self == OcrMode::Gundam
    }
}

impl FromStr for OcrMode {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        OcrMode::ALL
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| Error::UnknownMode {
                given: s.to_string(),
                choices: OcrMode::CHOICES,
            })
    }
}

/// One image cut into DeepSeek-OCR views (RGB8, before normalisation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OcrViews {
    /// `base_size²`.
    pub global: RgbImage,
    /// `columns · rows` tiles of `image_size²`, row-major; empty when untiled.
    pub tiles: Vec<RgbImage>,
    /// `images_spatial_crop`: `(columns, rows)`, `(1, 1)` when untiled.
    pub grid: (u32, u32),
}

/// Tokens per side of a view of `size` pixels: `ceil((size // 16) / 4)`.
pub fn side_tokens(size: u32) -> u32 {
    (size / PATCH).div_ceil(DOWNSAMPLE)
}

/// Image tokens of one image: `q_base·(q_base + 1) + 1`, plus `(rows·q)·(columns·q + 1)` when tiled.
pub fn image_token_count(mode: OcrMode, grid: (u32, u32)) -> usize {
    let qb = side_tokens(mode.base_size()) as usize;
    let mut n = qb * (qb + 1) + 1;
    let (cols, rows) = (grid.0 as usize, grid.1 as usize);
    if cols > 1 || rows > 1 {
        let q = side_tokens(mode.image_size()) as usize;
        n += rows * q * (cols * q + 1);
    }
    n
}

/// Check that Pillow's `ImageOps.contain` keeps both sides of the image non-zero at `target²`.
fn check_fits(img: &RgbImage, target: u32) -> Result<()> {
    let (w, h) = contain_size(img.width, img.height, target, target);
    if img.width == 0 || img.height == 0 || w == 0 || h == 0 {
        return Err(Error::ImageTooThin {
            width: img.width,
            height: img.height,
            target,
            max_ratio: 2 * target,
        });
    }
    Ok(())
}

/// The views of one image for `mode` (`tokenize_with_images` with `cropping = mode.crop_mode()`):
/// Gundam tiles images with a side over 640 into the aspect-ratio grid of 2..=`max_crops` tiles;
/// Tiny and Small first resize the image to `image_size²` (aspect not kept); the global view is
/// the image padded to `base_size²` with grey 127.
pub fn image_views(img: &RgbImage, mode: OcrMode, max_crops: u32) -> Result<OcrViews> {
    if !(MIN_CROPS..=MAX_CROPS_LIMIT).contains(&max_crops) {
        return Err(Error::TileLimit {
            given: max_crops,
            max: MAX_CROPS_LIMIT,
        });
    }
    let untiled = img.width <= UNTILED_MAX_SIDE && img.height <= UNTILED_MAX_SIDE;
    let (tiles, grid) = if mode.crop_mode() && !untiled {
        aspect_tiles(img, MIN_CROPS, max_crops, mode.image_size())
    } else {
        (Vec::new(), (1, 1))
    };
    // ref: `if self.image_size <= 640 and not cropping: image = image.resize((image_size, image_size))`
    let global = if mode.image_size() <= 640 && !mode.crop_mode() {
        let square = resize_bicubic(img, mode.image_size(), mode.image_size());
        pil_pad(&square, mode.base_size(), mode.base_size(), PAD_COLOR)
    } else {
        check_fits(img, mode.base_size())?;
        pil_pad(img, mode.base_size(), mode.base_size(), PAD_COLOR)
    };
    Ok(OcrViews {
        global,
        tiles,
        grid,
    })
}

/// `ToTensor` then `Normalize(0.5, 0.5)`: RGB8 `[H, W, 3]` → f32 `[3, H, W]`, `(v / 255 − 0.5) / 0.5`
/// in f32, as torchvision computes it.
pub fn normalize(img: &RgbImage) -> Vec<f32> {
    let plane = img.width as usize * img.height as usize;
    let mut out = vec![0f32; plane * 3];
    for (i, px) in img.data.chunks_exact(3).enumerate() {
        for (c, &v) in px.iter().enumerate() {
            out[c * plane + i] = (f32::from(v) / 255.0 - 0.5) / 0.5;
        }
    }
    out
}

/// The plain prompt of a conversation (the official scripts send the prompt as is, e.g.
/// `<image>\nFree OCR.`): every turn's text in order, with no role tags. A turn whose images have
/// no `<image>` marker gets one `<image>\n` per image in front of its text.
pub fn plain_prompt(messages: &[ChatMessage], marker: &str) -> String {
    let mut out = String::new();
    for m in messages {
        if !m.images.is_empty() && !m.content.contains(marker) {
            for _ in &m.images {
                out.push_str(marker);
                out.push('\n');
            }
        }
        out.push_str(&m.content);
    }
    out
}

/// Ids of `prompt` (BOS first) with the k-th image marker expanded to `image_tokens[k]` copies.
pub fn expand_ids(tok: &PromptTokenizer, prompt: &str, image_tokens: &[usize]) -> Result<Vec<u32>> {
    let ids = tok.encode_prompt(prompt)?;
    let image_id = tok.image_id();
    let markers = ids.iter().filter(|&&i| i == image_id).count();
    if markers != image_tokens.len() {
        return Err(Error::ImageCountMismatch {
            markers,
            images: image_tokens.len(),
            marker: tok.image_token().to_string(),
        });
    }
    let mut out = Vec::with_capacity(ids.len() + image_tokens.iter().sum::<usize>());
    let mut k = 0;
    for id in ids {
        if id == image_id {
            out.extend(std::iter::repeat_n(image_id, image_tokens[k]));
            k += 1;
        } else {
            out.push(id);
        }
    }
    Ok(out)
}

/// Conversation → [`Prepared`]: each image's views for `mode`, normalised; the plain prompt with
/// every image expanded to its own token count.
pub fn prepare(
    tok: &PromptTokenizer,
    messages: &[ChatMessage],
    mode: OcrMode,
    max_crops: u32,
    max_image_pixels: u64,
) -> Result<Prepared> {
    let mut images = Vec::new();
    let mut image_tokens = Vec::new();
    let mut image_sizes = Vec::new();
    for src in messages.iter().flat_map(|m| m.images.iter()) {
        let img = src.decode(max_image_pixels)?;
        image_sizes.push((img.width, img.height));
        let views = image_views(&img, mode, max_crops)?;
        let mut data = normalize(&views.global);
        for t in &views.tiles {
            data.extend(normalize(t));
        }
        let n = data.len();
        let pixels = Tensor::from_vec(data, n, &Device::Cpu)?;
        let grid = (views.grid.0 as usize, views.grid.1 as usize);
        images.push(ImageInput::Views(ViewsImage::new(
            pixels,
            mode.base_size() as usize,
            mode.image_size() as usize,
            grid,
            views.tiles.len(),
        )?));
        image_tokens.push(image_token_count(mode, views.grid));
    }
    let prompt = plain_prompt(messages, tok.image_token());
    let ids = expand_ids(tok, &prompt, &image_tokens)?;
    Ok(Prepared {
        prompt,
        ids,
        n_images: images.len(),
        images,
        image_sizes,
        image_tokens,
        preprocess_ms: 0.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_name_their_sizes() {
        assert_eq!("Gundam".parse::<OcrMode>().unwrap(), OcrMode::Gundam);
        assert_eq!(" tiny ".parse::<OcrMode>().unwrap(), OcrMode::Tiny);
        let e = "huge".parse::<OcrMode>().unwrap_err().to_string();
        assert!(e.contains("unknown resolution mode `huge`"), "{e}");
        assert!(e.contains("gundam"), "{e}");
        let sizes: Vec<_> = OcrMode::ALL
            .iter()
            .map(|m| (m.base_size(), m.image_size(), m.crop_mode()))
            .collect();
        assert_eq!(
            sizes,
            [
                (512, 512, false),
                (640, 640, false),
                (1024, 1024, false),
                (1280, 1280, false),
                (1024, 640, true)
            ]
        );
    }

    #[test]
    fn token_counts_per_mode() {
        assert_eq!(image_token_count(OcrMode::Tiny, (1, 1)), 73);
        assert_eq!(image_token_count(OcrMode::Small, (1, 1)), 111);
        assert_eq!(image_token_count(OcrMode::Base, (1, 1)), 273);
        assert_eq!(image_token_count(OcrMode::Large, (1, 1)), 421);
        assert_eq!(image_token_count(OcrMode::Gundam, (1, 1)), 273);
        // 3 columns × 2 rows of 10×10: 20 rows of 31
        assert_eq!(image_token_count(OcrMode::Gundam, (3, 2)), 273 + 20 * 31);
    }

    #[test]
    fn bad_tile_limits_and_thin_images_are_errors() {
        let img = RgbImage::filled(800, 700, [1, 2, 3]);
        for bad in [0, 1, 10] {
            let e = image_views(&img, OcrMode::Gundam, bad)
                .unwrap_err()
                .to_string();
            assert!(e.contains(&format!("max_crops = {bad}")), "{e}");
        }
        let thin = RgbImage::filled(5000, 1, [1, 2, 3]);
        let e = image_views(&thin, OcrMode::Base, 6)
            .unwrap_err()
            .to_string();
        assert!(e.contains("5000x1 cannot be fitted into 1024x1024"), "{e}");
        // Tiny resizes to 512² first: any decodable image fits
        let v = image_views(&thin, OcrMode::Tiny, 6).unwrap();
        assert_eq!((v.global.width, v.global.height), (512, 512));
    }

    #[test]
    fn plain_prompt_adds_missing_markers() {
        use crate::models::inputs::ImageSource;
        use crate::prompt::template::Role;
        let img = ImageSource::Path("x.png".into());
        let m = ChatMessage::new(Role::User, "Free OCR.").with_images(vec![img.clone()]);
        assert_eq!(plain_prompt(&[m], "<image>"), "<image>\nFree OCR.");
        let m = ChatMessage::new(Role::User, "<image>\nParse the figure.").with_images(vec![img]);
        assert_eq!(plain_prompt(&[m], "<image>"), "<image>\nParse the figure.");
        let m = ChatMessage::new(Role::User, "Write one sentence.");
        assert_eq!(plain_prompt(&[m], "<image>"), "Write one sentence.");
    }

    #[test]
    fn normalisation_is_torchvision_exact() {
        let img = RgbImage {
            width: 2,
            height: 1,
            data: vec![0, 127, 255, 128, 1, 254],
        };
        let x = normalize(&img);
        assert_eq!(x[0], -1.0);
        assert_eq!(x[1], (128.0f32 / 255.0 - 0.5) / 0.5);
        assert_eq!(x[4], (255.0f32 / 255.0 - 0.5) / 0.5);
    }
}
