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
