//! The official host-side preprocessing, composed (v1 §3.1 steps 2–6).

use super::pad::expand_to_square;
use super::resample::{resize_bicubic, target_size};
use super::rgb::RgbImage;

/// `VLMImageProcessor.resize` (v1 §3.1 steps 2–4): [`target_size`], Pillow BICUBIC [`resize_bicubic`], then
/// [`expand_to_square`]. In: decoded RGB8; out: RGB8 `[S, S, 3]` (`S = image_size`, given `min_size ≤ S`).
pub fn preprocess(img: &RgbImage, image_size: u32, min_size: u32, background: [u8; 3]) -> RgbImage {
    let (new_w, new_h) = target_size(img.width, img.height, image_size, min_size);
    let resized = resize_bicubic(img, new_w, new_h);
    expand_to_square(&resized, background)
}

/// Rescale (v1 §3.1 steps 5–6): RGB8 `[H, W, 3]` → float32 `[3, H, W]` (CHW), value `f32(u8 · 0.00392156862745098)`
/// computed in f64 as `transformers.image_transforms.rescale` does. No normalisation here (v1 §3.2).
pub fn to_chw_f32(img: &RgbImage) -> Vec<f32> {
    const RESCALE: f64 = 0.003_921_568_627_450_98; // 1/255 as printed in preprocessor_config.json
    let plane = img.width as usize * img.height as usize;
    let mut out = vec![0f32; plane * 3];
    for (i, px) in img.data.chunks_exact(3).enumerate() {
        for (c, &v) in px.iter().enumerate() {
            out[c * plane + i] = (f64::from(v) * RESCALE) as f32;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rescale_equals_f32_division_and_is_planar() {
        // v1 §3.1 step 6: identical to f32(x)/255f for all 256 values.
        let img = RgbImage {
            width: 256,
            height: 1,
            data: (0..=255u8).flat_map(|v| [v, 255 - v, 0]).collect(),
        };
        let chw = to_chw_f32(&img);
        for v in 0..=255u8 {
            assert_eq!(chw[v as usize], f32::from(v) / 255.0);
            assert_eq!(chw[256 + v as usize], f32::from(255 - v) / 255.0);
            assert_eq!(chw[512 + v as usize], 0.0);
        }
    }

    #[test]
    fn preprocess_gives_a_square_of_image_size() {
        let img = RgbImage::filled(50, 10, [200, 0, 0]);
        let out = preprocess(&img, 64, 14, [122, 116, 104]);
        assert_eq!((out.width, out.height), (64, 64));
        // target (64, 14): rows (64 - 14) / 2 = 25 ..39 are image, row 0 is background.
        assert_eq!(&out.data[0..3], &[122, 116, 104]);
        assert_eq!(&out.data[25 * 64 * 3..25 * 64 * 3 + 3], &[200, 0, 0]);
    }
}
