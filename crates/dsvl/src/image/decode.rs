//! Bytes → RGB8 as `PIL.Image.open(f).convert("RGB")` gives them (v1 §3.1 step 1): no EXIF rotation, alpha
//! dropped without compositing, L/LA/P/1 expanded, GIF first frame. The format is recognised from the content
//! (as Pillow does), the pixel count is checked from the header before any pixel is decoded.

use std::io::Cursor;
use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader};

use super::jpeg::decode_jpeg;
use super::rgb::RgbImage;
use crate::error::{Error, Result};

/// Default decompression-bomb limit on `width × height` (Pillow warns at 89 M and refuses at 179 M pixels; ours
/// is lower because every accepted image is decoded in memory and then resized to at most 1024²).
pub const DEFAULT_MAX_PIXELS: u64 = 50_000_000;

/// Decode an encoded image to RGB8 `[H, W, 3]`, matching Pillow's `open(..).convert("RGB")` byte for byte
/// (JPEG via libjpeg-turbo; PNG in all colour types and depths, GIF, BMP, TIFF, lossless WebP via `image`).
///
/// `source_name` only labels errors. Errors: [`Error::ImageDecode`] for empty, unrecognised, truncated or
/// corrupt data; [`Error::ImageTooLarge`] when the header announces more than `max_pixels` pixels (checked
/// before decoding pixels).
pub fn decode(bytes: &[u8], source_name: &str, max_pixels: u64) -> Result<RgbImage> {
    let fail = |message: String| Error::ImageDecode {
        source_name: source_name.to_owned(),
        message,
    };
    if bytes.is_empty() {
        return Err(fail("the file is empty (0 bytes)".into()));
    }
    let format = image::guess_format(bytes).map_err(|_| {
        fail(format!(
            "unrecognised image format (starts with {:02x?}); this is not a JPEG, PNG, WebP, GIF, BMP or TIFF file",
            &bytes[..bytes.len().min(8)]
        ))
    })?;
    if format == ImageFormat::Jpeg {
        return decode_jpeg(bytes, source_name, max_pixels);
    }

    let decoder = ImageReader::with_format(Cursor::new(bytes), format)
        .into_decoder()
        .map_err(|e| fail(format!("cannot read the {format:?} header: {e}")))?;
    let (width, height) = decoder.dimensions();
    check_pixels(source_name, width, height, max_pixels)?;
    let img = DynamicImage::from_decoder(decoder).map_err(|e| {
        fail(format!(
            "truncated or corrupt {format:?} data (image file is truncated?): {e}"
        ))
    })?;
    to_rgb_like_pillow(img).map_err(fail)
}

/// [`decode`] on the contents of `path`; errors name the path. [`Error::Io`] if it cannot be read.
pub fn load(path: &Path, max_pixels: u64) -> Result<RgbImage> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode(&bytes, &path.display().to_string(), max_pixels)
}

/// Pillow's `convert("RGB")` from the mode Pillow would have opened (checked with Pillow 13.0.0):
/// 8-bit modes copy or replicate the gray value and drop alpha; 16-bit RGB/RGBA/LA PNGs keep the high
/// byte (`RGB;16B` unpackers); a 16-bit gray PNG opens as `I;16`, whose conversion to RGB clips at 255.
/// Refuses an image whose header announces more than `max_pixels` pixels (decompression bombs),
/// before any pixel is decoded.
pub(super) fn check_pixels(
    source_name: &str,
    width: u32,
    height: u32,
    max_pixels: u64,
) -> Result<()> {
    let pixels = u64::from(width) * u64::from(height);
    if pixels > max_pixels {
        return Err(Error::ImageTooLarge {
            source_name: source_name.to_owned(),
            width: width.into(),
            height: height.into(),
            pixels,
            limit: max_pixels,
        });
    }
    Ok(())
}

fn to_rgb_like_pillow(img: DynamicImage) -> std::result::Result<RgbImage, String> {
    let (width, height) = (img.width(), img.height());
    let gray = |g: &mut dyn Iterator<Item = u8>| g.flat_map(|v| [v, v, v]).collect::<Vec<u8>>();
    let data = match img {
        DynamicImage::ImageRgb8(b) => b.into_raw(),
        DynamicImage::ImageRgba8(b) => b.chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect(),
        DynamicImage::ImageLuma8(b) => gray(&mut b.iter().copied()),
        DynamicImage::ImageLumaA8(b) => gray(&mut b.chunks_exact(2).map(|p| p[0])),
        DynamicImage::ImageLuma16(b) => gray(&mut b.iter().map(|&v| v.min(255) as u8)),
        DynamicImage::ImageLumaA16(b) => gray(&mut b.chunks_exact(2).map(|p| (p[0] >> 8) as u8)),
        DynamicImage::ImageRgb16(b) => b.iter().map(|&v| (v >> 8) as u8).collect(),
        DynamicImage::ImageRgba16(b) => b
            .chunks_exact(4)
            .flat_map(|p| [p[0], p[1], p[2]].map(|v| (v >> 8) as u8))
            .collect(),
        other => {
            return Err(format!(
            "pixel format {:?} (floating point) is not supported; convert the image to 8-bit RGB",
            other.color()
        ))
        }
    };
    Ok(RgbImage {
        width,
        height,
        data,
    })
}
