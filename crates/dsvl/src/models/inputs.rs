//! What a family's processor takes (a conversation with its images) and what it makes of it
//! (prompt ids and one vision input per image), shared by every family.

use std::path::PathBuf;
use std::sync::Arc;

use candle_core::Tensor;

use crate::error::{Error, Result};
use crate::image::{self, RgbImage};
use crate::prompt::template::Role;

/// Where an image comes from.
#[derive(Debug, Clone)]
pub enum ImageSource {
    Path(PathBuf),
    /// Raw file bytes (e.g. a base64 data URL), with a name for error messages.
    Bytes {
        name: String,
        data: Vec<u8>,
    },
    /// Pixels already in memory (a rendered PDF page), with a name for error messages. The
    /// image caches key images by their preprocessed pixels, so a rendered page is cached like
    /// the same picture sent as a file.
    Rendered {
        name: String,
        image: Arc<RgbImage>,
    },
}

impl ImageSource {
    /// Decodes the image, refusing more than `max_pixels` pixels before decoding.
    pub fn decode(&self, max_pixels: u64) -> Result<RgbImage> {
        match self {
            ImageSource::Path(p) => image::load(p, max_pixels),
            ImageSource::Bytes { name, data } => image::decode(data, name, max_pixels),
            ImageSource::Rendered { name, image } => {
                let pixels = u64::from(image.width) * u64::from(image.height);
                if pixels > max_pixels {
                    return Err(Error::ImageTooLarge {
                        source_name: name.clone(),
                        width: image.width.into(),
                        height: image.height.into(),
                        pixels,
                        limit: max_pixels,
                    });
                }
                Ok(RgbImage::clone(image))
            }
        }
    }
}

/// One conversation turn with its images, in placeholder order.
#[derive(Debug, Clone)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
    pub images: Vec<ImageSource>,
}

impl ChatMessage {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
            images: Vec::new(),
        }
    }
    pub fn with_images(mut self, images: Vec<ImageSource>) -> Self {
        self.images = images;
        self
    }
}

/// One image's vision-tower input, as its family's processor made it. Each variant carries
/// exactly what its vision path needs.
#[derive(Debug, Clone)]
pub enum ImageInput {
    /// DeepSeek-VL: the resized, padded square view `[3, S, S]`, f32 in [0, 1] (v1 §3.1; the
    /// model normalises it).
    Square(Tensor),
    /// DeepSeek-VL2: the global view and the local tiles (v2 §2).
    Tiled(TiledImage),
    /// DeepSeek-OCR: a global view and local tiles of another size.
    Views(ViewsImage),
}

impl ImageInput {
    /// The preprocessed pixels: `[3, S, S]`, or the tiles `[1 + nw·nh, 3, S, S]`.
    pub fn pixels(&self) -> &Tensor {
        match self {
            ImageInput::Square(px) => px,
            ImageInput::Tiled(t) => &t.tiles,
            ImageInput::Views(v) => &v.pixels,
        }
    }
}

/// A DeepSeek-OCR image: the global view `[1, 3, B, B]` and `cols · rows` local tiles
/// `[n, 3, S, S]` (row-major), normalised f32, stored as one flat tensor (global first), so that
/// one tensor identifies the image for the feature cache.
#[derive(Debug, Clone)]
pub struct ViewsImage {
    pixels: Tensor,
    global_size: usize,
    tile_size: usize,
    grid: (usize, usize),
    n_tiles: usize,
}

impl ViewsImage {
    /// `pixels`: `3·B²` global values then `n_tiles · 3·S²` tile values; `grid` `(cols, rows)`.
    pub fn new(
        pixels: Tensor,
        global_size: usize,
        tile_size: usize,
        grid: (usize, usize),
        n_tiles: usize,
    ) -> Result<Self> {
        let want = 3 * global_size * global_size + n_tiles * 3 * tile_size * tile_size;
        let n = pixels.elem_count();
        if n != want || (n_tiles > 0 && n_tiles != grid.0 * grid.1) {
            return Err(Error::Unsupported {
                what: format!("{n} pixel values for a {global_size}² view and {n_tiles} tiles of {tile_size}² in a {grid:?} grid"),
                hint: "the views come from the DeepSeek-OCR processor".into(),
            });
        }
        Ok(Self {
            pixels: pixels.flatten_all()?,
            global_size,
            tile_size,
            grid,
            n_tiles,
        })
    }

    /// `[1, 3, B, B]`.
    pub fn global(&self) -> Result<Tensor> {
        let b = self.global_size;
        Ok(self.pixels.narrow(0, 0, 3 * b * b)?.reshape((1, 3, b, b))?)
    }

    /// `[n, 3, S, S]` with the grid `(cols, rows)`; `None` when untiled.
    pub fn tiles(&self) -> Result<Option<(Tensor, (usize, usize))>> {
        if self.n_tiles == 0 {
            return Ok(None);
        }
        let (b, s) = (self.global_size, self.tile_size);
        let t = self
            .pixels
            .narrow(0, 3 * b * b, self.n_tiles * 3 * s * s)?
            .reshape((self.n_tiles, 3, s, s))?;
        Ok(Some((t, self.grid)))
    }
}

/// A DeepSeek-VL2 image: its tiles `[1 + nw·nh, 3, S, S]`, normalised f32 (global view first, then
/// the local tiles row-major), and its tile layout `nw × nh`. The tile count always matches the
/// layout ([`TiledImage::new`] checks it).
#[derive(Debug, Clone)]
pub struct TiledImage {
    tiles: Tensor,
    nw: usize,
    nh: usize,
}

impl TiledImage {
    /// `tiles` `[1 + nw·nh, 3, S, S]` laid out `nw` tiles wide and `nh` high.
    pub fn new(tiles: Tensor, nw: usize, nh: usize) -> Result<Self> {
        let n = tiles.dim(0)?;
        if n != 1 + nw * nh {
            return Err(Error::Unsupported {
                what: format!("{n} tiles for a {nw}x{nh} layout"),
                hint: "a tiled image has its global view and nw·nh local tiles".into(),
            });
        }
        Ok(Self { tiles, nw, nh })
    }

    /// `[1 + nw·nh, 3, S, S]`.
    pub fn tiles(&self) -> &Tensor {
        &self.tiles
    }

    /// `(nw, nh)`: local tiles across and down.
    pub fn grid(&self) -> (usize, usize) {
        (self.nw, self.nh)
    }
}

/// A conversation turned into model inputs.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The prompt as text, one marker per image (v1: exactly what is tokenized; VL2: for display,
    /// since VL2 tokenizes the segments between images separately).
    pub prompt: String,
    /// Token ids with every image expanded to its image-token positions.
    pub ids: Vec<u32>,
    /// Each image's vision-tower input, in order.
    pub images: Vec<ImageInput>,
    /// Each image's decoded `(width, height)`, in order (grounding boxes map to these).
    pub image_sizes: Vec<(u32, u32)>,
    /// Each image's number of image-token positions in `ids`, in order.
    pub image_tokens: Vec<usize>,
    pub n_images: usize,
    pub preprocess_ms: f64,
}

/// How a request's images are read and cut into views.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageOptions {
    /// Images with more pixels are refused before decoding (decompression bombs).
    pub max_pixels: u64,
    /// DeepSeek-VL2: at most this many local tiles per image (the candidate resolutions with
    /// more are skipped); `None`: every candidate, as the official processor. Fewer tiles, fewer
    /// image tokens: faster prefill, less detail. Models without tiling refuse it.
    pub max_tiles: Option<usize>,
}

/// The prompt of a conversation without its vision inputs: what `/tokenize` and
/// `/apply-template` show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptText {
    /// The prompt as text, one marker per image.
    pub prompt: String,
    /// Token ids with every image expanded to its image-token positions.
    pub ids: Vec<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_pixels_decode_as_they_are_within_the_pixel_limit() {
        let img = Arc::new(RgbImage::filled(4, 3, [10, 20, 30]));
        let src = ImageSource::Rendered {
            name: "doc.pdf page 1".into(),
            image: Arc::clone(&img),
        };
        assert_eq!(src.decode(12).unwrap(), *img);
        let e = src.decode(11).unwrap_err();
        assert!(
            matches!(
                e,
                Error::ImageTooLarge {
                    pixels: 12,
                    limit: 11,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e
            .to_string()
            .starts_with("doc.pdf page 1: image is 4x3 = 12 pixels"));
    }
}
