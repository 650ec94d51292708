//! `expand2square` (v1 §3.1 step 4).

use super::rgb::RgbImage;

/// Pad to a square with `background`, the image centred with floor offsets: at `(0, (W−H)/2)` when landscape,
/// `((H−W)/2, 0)` when portrait. A square input is returned unchanged. In/out: RGB8 `[H, W, 3]` → `[L, L, 3]`,
/// `L = max(W, H)`. Backgrounds: (127,127,127) for 1.3B, (122,116,104) for 7B (`int(mean * 255)`).
pub fn expand_to_square(img: &RgbImage, background: [u8; 3]) -> RgbImage {
    if img.width == img.height {
        return img.clone();
    }
    let side = img.width.max(img.height);
    let (x0, y0) = ((side - img.width) / 2, (side - img.height) / 2);
    let mut out = RgbImage::filled(side, side, background);
    let (src_stride, dst_stride) = (img.stride(), out.stride());
    for y in 0..img.height as usize {
        let dst = (y + y0 as usize) * dst_stride + x0 as usize * 3;
        out.data[dst..dst + src_stride]
            .copy_from_slice(&img.data[y * src_stride..(y + 1) * src_stride]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn centres_with_floor_offsets() {
        let img = RgbImage::filled(4, 1, [9, 9, 9]);
        let out = expand_to_square(&img, [1, 2, 3]);
        assert_eq!((out.width, out.height), (4, 4));
        // (4 - 1) / 2 = 1: row 1 holds the image, rows 0, 2, 3 the background.
        assert_eq!(&out.data[0..3], &[1, 2, 3]);
        assert_eq!(&out.data[12..24], &[9; 12]);
        assert_eq!(&out.data[24..27], &[1, 2, 3]);

        let tall = RgbImage::filled(1, 2, [9, 9, 9]);
        let out = expand_to_square(&tall, [1, 2, 3]);
        // (2 - 1) / 2 = 0: column 0.
        assert_eq!(out.data, vec![9, 9, 9, 1, 2, 3, 9, 9, 9, 1, 2, 3]);
    }
}
