//! Image input, step ① of the pipeline (v1 §3): bytes → RGB8 exactly as Pillow decodes them → Pillow-exact
//! BICUBIC resize to the official target size → pad to a square → CHW float32 in [0, 1].
//!
//! Everything here runs on the CPU on `u8`/`f32` buffers and knows nothing about models.
//!
//! - [`decode`] / [`load`]: `PIL.Image.open(f).convert("RGB")` (v1 §3.1 step 1, §13.18). JPEG goes through
//!   libjpeg-turbo's decoder (mozjpeg), the rest through the `image` crate; the pixel count is checked from the
//!   header before any pixel is decoded.
//! - [`target_size`], [`resize_bicubic`]: v1 §3.1 steps 2–3 (Pillow `ImagingResample`, 8-bit fixed point).
//! - [`expand_to_square`], [`preprocess`], [`to_chw_f32`]: v1 §3.1 steps 4–6.
//! - [`resize_bilinear_antialias_f32`]: the 7B low-res view, torch `interpolate(antialias=True)` (v1 §3.3).
//! - [`tile_image`], [`select_best_resolution`], [`pil_pad`], [`vl2_image_tokens`]: DeepSeek-VL2 dynamic tiling
//!   (v2 §2) and its token count (v2 §5).
//! - [`aspect_tiles`], [`closest_grid`], [`target_grids`]: DeepSeek-OCR's aspect-ratio tiling (Gundam mode).

mod antialias;
mod aspect_tiling;
mod decode;
mod jpeg;
mod pad;
mod pipeline;
mod resample;
mod rgb;
mod tiling;

pub use antialias::{resize_antialias_f32, resize_bilinear_antialias_f32, AaFilter};
pub use aspect_tiling::{aspect_tiles, closest_grid, target_grids};
pub use decode::{decode, load, DEFAULT_MAX_PIXELS};
pub use pad::expand_to_square;
pub use pipeline::{preprocess, to_chw_f32};
pub use resample::{resize_bicubic, target_size};
pub use rgb::RgbImage;
pub use tiling::{
    check_candidates, contain_size, pil_pad, select_best_resolution, tile_image, vl2_image_tokens,
    vl2_token_grid, TiledImage,
};
