//! The one pixel container of this module.

/// A packed RGB8 image: `data` is `[height, width, 3]` u8, row-major, no padding between rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
}

impl RgbImage {
    /// An image of `width`×`height` filled with one colour.
    pub fn filled(width: u32, height: u32, rgb: [u8; 3]) -> Self {
        let n = width as usize * height as usize;
        let mut data = Vec::with_capacity(n * 3);
        for _ in 0..n {
            data.extend_from_slice(&rgb);
        }
        Self {
            width,
            height,
            data,
        }
    }

    /// Bytes per row (`3 * width`).
    pub fn stride(&self) -> usize {
        self.width as usize * 3
    }
}

impl RgbImage {
    /// PNG bytes of the image (8-bit RGB), e.g. for images with drawn grounding boxes.
    pub fn to_png(&self) -> crate::Result<Vec<u8>> {
        use image::ImageEncoder;
        let mut out = Vec::new();
        image::codecs::png::PngEncoder::new(&mut out)
            .write_image(
                &self.data,
                self.width,
                self.height,
                image::ExtendedColorType::Rgb8,
            )
            .map_err(|e| crate::Error::ImageDecode {
                source_name: "PNG encoder".into(),
                message: e.to_string(),
            })?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn png_round_trip_keeps_every_pixel() -> crate::Result<()> {
        let mut img = RgbImage::filled(7, 5, [10, 20, 30]);
        img.data[3 * 8] = 250;
        let png = img.to_png()?;
        let back = crate::image::decode(&png, "round-trip.png", 1_000)?;
        assert_eq!(back, img);
        Ok(())
    }
}
