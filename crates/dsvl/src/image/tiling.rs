//! DeepSeek-VL2 dynamic tiling (v2 §2): one global 384² view plus a grid of 384² local tiles cut from the image
//! padded to the best candidate resolution, and the number of `<image>` tokens such an image takes (v2 §5).
//!
//! Mirrors `DeepseekVLV2Processor.tokenize_with_images` (`processing_deepseek_vl_v2.py`, HEAD `ef9f91e`) with
//! Pillow 13's `ImageOps.pad` / `ImageOps.contain` for the resizing and padding. Everything runs on RGB8.

use super::resample::resize_bicubic;
use super::rgb::RgbImage;
use crate::error::{Error, Result};

/// `select_best_resolution` (v2 §2.2): the candidate `(width, height)` that keeps the most of the image's pixels
/// when the image is scaled to fit inside it, and among those the one wasting the least area.
///
/// Per candidate, in list order and in f64 as Python computes it: `scale = min(cw / W, ch / H)`,
/// `(dw, dh) = (trunc(W·scale), trunc(H·scale))`, `effective = min(dw·dh, W·H)`, `wasted = cw·ch − effective`.
/// A candidate wins only with a strictly larger `effective`, or an equal one and a strictly smaller `wasted`, so
/// ties go to the earliest candidate (list order matters, v2 §1.2).
///
/// Degenerate input, where Python would fail (no candidates, or a 0-pixel image so no candidate beats
/// `effective = 0`): returns the first candidate, or `(0, 0)` for an empty list. [`tile_image`] rejects such
/// input before calling this.
pub fn select_best_resolution(width: u32, height: u32, candidates: &[(u32, u32)]) -> (u32, u32) {
    let (w, h) = (f64::from(width), f64::from(height));
    let original_area = u64::from(width) * u64::from(height);
    let mut best: Option<(u32, u32)> = None;
    let mut max_effective = 0u64;
    let mut min_wasted = i64::MAX; // ref: float("inf"); areas fit i64 by far
    for &(cw, ch) in candidates {
        // ref: scale = min(width / original_width, height / original_height)
        let scale = (f64::from(cw) / w).min(f64::from(ch) / h);
        // ref: int(original_width * scale) — truncation toward zero (`as` saturates NaN/∞ to 0/MAX, harmless here)
        let (dw, dh) = ((w * scale) as u64, (h * scale) as u64);
        let effective = (dw * dh).min(original_area);
        let wasted = (u64::from(cw) * u64::from(ch)) as i64 - effective as i64;
        if effective > max_effective || (effective == max_effective && wasted < min_wasted) {
            max_effective = effective;
            min_wasted = wasted;
            best = Some((cw, ch));
        }
    }
    best.or_else(|| candidates.first().copied())
        .unwrap_or((0, 0))
}

/// Size of `ImageOps.contain(image, (tw, th))` (v2 §2.5 step 1): the largest size with the image's aspect ratio
/// that fits in `tw × th`, the free side rounded with Python `round` (half to even) from `H / W · tw` (division
/// first). Equal float ratios give exactly `(tw, th)`.
pub fn contain_size(width: u32, height: u32, tw: u32, th: u32) -> (u32, u32) {
    let (w, h) = (f64::from(width), f64::from(height));
    let im_ratio = w / h;
    let dest_ratio = f64::from(tw) / f64::from(th);
    if im_ratio > dest_ratio {
        // ref: new_height = round(image.height / image.width * size[0])
        (tw, (h / w * f64::from(tw)).round_ties_even() as u32)
    } else if im_ratio < dest_ratio {
        // ref: new_width = round(image.width / image.height * size[1])
        ((w / h * f64::from(th)).round_ties_even() as u32, th)
    } else {
        (tw, th)
    }
}

/// Pillow `ImageOps.pad(img, (tw, th), color=color)` with its defaults BICUBIC and centering (0.5, 0.5)
/// (v2 §2.5): [`contain_size`], Pillow-exact [`resize_bicubic`], then paste centred on a `color` canvas at
/// `round((tw − w')·0.5)` (or the same for y; Python `round`, half to even, so an odd gap puts the extra pixel
/// after the image only when the half-gap is even: 193·0.5 = 96.5 → 96).
///
/// In: RGB8 `[H, W, 3]`; out: RGB8 `[th, tw, 3]`. A contained side that rounds to 0 (aspect ratio beyond
/// `tw:1`, where Pillow raises) gives a plain `color` canvas; [`tile_image`] rejects such images first.
pub fn pil_pad(img: &RgbImage, tw: u32, th: u32, color: [u8; 3]) -> RgbImage {
    let (rw, rh) = contain_size(img.width, img.height, tw, th);
    let resized = resize_bicubic(img, rw, rh);
    if (rw, rh) == (tw, th) {
        return resized;
    }
    let mut out = RgbImage::filled(tw, th, color);
    // ref: x = round((size[0] - resized.width) * 0.5), pasted at (x, 0); else y likewise at (0, y).
    let half_gap = |gap: u32| (f64::from(gap) * 0.5).round_ties_even() as usize;
    let (x0, y0) = if rw != tw {
        (half_gap(tw - rw), 0)
    } else {
        (0, half_gap(th - rh))
    };
    let (src_stride, dst_stride) = (resized.stride(), out.stride());
    for y in 0..rh as usize {
        let dst = (y + y0) * dst_stride + x0 * 3;
        out.data[dst..dst + src_stride]
            .copy_from_slice(&resized.data[y * src_stride..(y + 1) * src_stride]);
    }
    out
}

/// `img.crop((left, top, left + size, top + size))` for a box inside the image. In: RGB8; out: RGB8
/// `[size, size, 3]`.
fn crop_square(img: &RgbImage, left: u32, top: u32, size: u32) -> RgbImage {
    let (stride, row) = (img.stride(), size as usize * 3);
    let mut data = Vec::with_capacity(row * size as usize);
    for y in top as usize..(top + size) as usize {
        let start = y * stride + left as usize * 3;
        data.extend_from_slice(&img.data[start..start + row]);
    }
    RgbImage {
        width: size,
        height: size,
        data,
    }
}

/// One image cut into VL2 views (v2 §2.3–2.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TiledImage {
    /// The global view: the whole image padded to `tile × tile`.
    pub global: RgbImage,
    /// `nw · nh` local tiles of `tile × tile`, row-major (top row first, left to right).
    pub tiles: Vec<RgbImage>,
    /// Tiles per row (`best_width / tile`); the reference's `images_spatial_crop[0]`.
    pub nw: usize,
    /// Tiles per column (`best_height / tile`); `images_spatial_crop[1]`.
    pub nh: usize,
}

impl TiledImage {
    /// The views in the order the vision tower gets them: global first, then the local tiles (v2 §2.4).
    pub fn views(&self) -> impl Iterator<Item = &RgbImage> {
        std::iter::once(&self.global).chain(&self.tiles)
    }

    /// `(best_width, best_height)` of the padded local view.
    pub fn best_resolution(&self, tile: u32) -> (u32, u32) {
        (self.nw as u32 * tile, self.nh as u32 * tile)
    }
}

/// Check a processor's tiling settings: a positive tile size and a non-empty candidate list whose sides are
/// positive multiples of it (true of the published 23 candidates, v2 §1.2; anything else would crop tiles
/// outside the padded view).
pub fn check_candidates(candidates: &[(u32, u32)], tile: u32) -> Result<()> {
    let bad = |hint: String| {
        Err(Error::Unsupported {
            what: format!(
                "VL2 tiling with tile size {tile} and candidate_resolutions {candidates:?}"
            ),
            hint,
        })
    };
    if tile == 0 || candidates.is_empty() {
        return bad("processor_config.json needs a non-empty candidate_resolutions list, e.g. [[384, 384], …]".into());
    }
    if let Some(c) = candidates
        .iter()
        .find(|&&(w, h)| w == 0 || h == 0 || w % tile != 0 || h % tile != 0)
    {
        return bad(format!(
            "candidate {c:?} is not a multiple of the tile size {tile} (candidate_resolutions[0][0])"
        ));
    }
    Ok(())
}

/// Cut one decoded image into the VL2 views (v2 §2.1–2.4).
///
/// `candidates`: `candidate_resolutions` as `(width, height)`; `tile`: the processor's image size
/// (`candidate_resolutions[0][0]` = 384); `cropping`: [`crate::prompt::vl2::vl2_cropping`] of the image count
/// of the *whole* conversation; `pad_color`: `int(mean · 255)` per channel = (127, 127, 127).
///
/// Global view = [`pil_pad`] to `tile²`. With `cropping` the local view is [`pil_pad`] to
/// [`select_best_resolution`], else to `tile²`: then there is exactly one local tile, pixel-identical to the
/// global view (v2 §2.4, the reference pads twice). Tiles are cut row-major.
///
/// Errors ([`Error::Unsupported`]): invalid `candidates`/`tile` ([`check_candidates`]), an empty image, or an
/// aspect ratio so extreme that a padded view would have a 0-pixel side (Pillow raises there too).
pub fn tile_image(
    img: &RgbImage,
    candidates: &[(u32, u32)],
    tile: u32,
    cropping: bool,
    pad_color: [u8; 3],
) -> Result<TiledImage> {
    check_candidates(candidates, tile)?;
    let (best_w, best_h) = if cropping {
        select_best_resolution(img.width, img.height, candidates)
    } else {
        (tile, tile)
    };
    for (tw, th) in [(tile, tile), (best_w, best_h)] {
        let (rw, rh) = if img.width == 0 || img.height == 0 {
            (0, 0)
        } else {
            contain_size(img.width, img.height, tw, th)
        };
        if rw == 0 || rh == 0 {
            return Err(Error::Unsupported {
                what: format!(
                    "a {}x{} image (it would be resized to {rw}x{rh} to fit {tw}x{th})",
                    img.width, img.height
                ),
                hint: "the image is too thin for the VL2 views; crop or pad it to a less extreme aspect ratio".into(),
            });
        }
    }

    let global = pil_pad(img, tile, tile, pad_color);
    let (nw, nh) = ((best_w / tile) as usize, (best_h / tile) as usize);
    let tiles = if (best_w, best_h) == (tile, tile) {
        // Same pad of the same image: skip the second resize, the bytes are identical.
        vec![global.clone()]
    } else {
        let local = pil_pad(img, best_w, best_h, pad_color);
        // ref: for i in range(0, best_height, image_size): for j in range(0, best_width, image_size): crop((j, i, …))
        (0..nh as u32)
            .flat_map(|r| (0..nw as u32).map(move |c| (c * tile, r * tile)))
            .map(|(left, top)| crop_square(&local, left, top, tile))
            .collect()
    };
    Ok(TiledImage {
        global,
        tiles,
        nw,
        nh,
    })
}

/// Side of one tile's token grid (v2 §5): `ceil((image_size // patch_size) / downsample_ratio)` = 14 for
/// 384 / 14 / 2 (27×27 patches, zero-padded to 28×28, 2×2 space-to-channel).
pub fn vl2_token_grid(image_size: u32, patch_size: u32, downsample_ratio: u32) -> usize {
    let patches = (image_size / patch_size.max(1)) as usize;
    let r = downsample_ratio.max(1) as usize;
    patches.div_ceil(r)
}

/// `<image>` tokens one image takes in the prompt (v2 §5): global rows with a newline each (`grid·(grid+1)`),
/// one view separator, then the stitched local grid's `grid·nh` rows of `grid·nw` tokens plus a newline:
/// `grid·(grid+1) + 1 + grid·nh·(grid·nw + 1)`. With `grid` = 14: `211 + 14·nh·(14·nw + 1)`, 421 for 1×1.
pub fn vl2_image_tokens(nw: usize, nh: usize, grid: usize) -> usize {
    grid * (grid + 1) + 1 + grid * nh * (grid * nw + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The 23 published candidates in file order (v2 §1.2).
    const CANDIDATES: [(u32, u32); 23] = [
        (384, 384),
        (384, 768),
        (768, 384),
        (384, 1152),
        (1152, 384),
        (384, 1536),
        (1536, 384),
        (768, 768),
        (384, 1920),
        (1920, 384),
        (384, 2304),
        (2304, 384),
        (768, 1152),
        (1152, 768),
        (384, 2688),
        (2688, 384),
        (384, 3072),
        (3072, 384),
        (768, 1536),
        (1536, 768),
        (384, 3456),
        (3456, 384),
        (1152, 1152),
    ];

    #[test]
    fn best_resolution_spec_examples() {
        // v2 §2.2 examples.
        let cases = [
            ((300, 200), (384, 384)),
            ((640, 480), (768, 768)),
            ((800, 600), (1152, 768)),
            ((1000, 500), (1152, 768)),
            ((1024, 1024), (1152, 1152)),
            ((3000, 3000), (1152, 1152)),
            ((2480, 3508), (1152, 1152)),
            ((1280, 720), (1536, 768)),
            ((1920, 1080), (1536, 768)),
            ((4000, 1000), (1536, 384)),
            ((1000, 4000), (384, 1536)),
            ((500, 2000), (384, 1536)),
            // The fixture images (fixtures/vl2 README §3).
            ((1000, 300), (1152, 384)),
            ((300, 420), (384, 768)),
            ((200, 200), (384, 384)),
        ];
        for ((w, h), want) in cases {
            assert_eq!(select_best_resolution(w, h, &CANDIDATES), want, "{w}x{h}");
        }
    }

    #[test]
    fn best_resolution_ties_and_degenerate_input() {
        // Any image smaller than 384² fits every candidate fully: equal effective, least waste = first.
        assert_eq!(select_best_resolution(1, 1, &CANDIDATES), (384, 384));
        // Equal effective and equal waste: the earlier candidate stays (strict `<`).
        assert_eq!(
            select_best_resolution(100, 100, &[(768, 384), (384, 768)]),
            (768, 384)
        );
        assert_eq!(
            select_best_resolution(100, 100, &[(384, 768), (768, 384)]),
            (384, 768)
        );
        // Larger effective wins even when listed later and more wasteful.
        assert_eq!(
            select_best_resolution(800, 800, &[(384, 384), (768, 1536)]),
            (768, 1536)
        );
        assert_eq!(select_best_resolution(0, 5, &CANDIDATES), (384, 384));
        assert_eq!(select_best_resolution(10, 10, &[]), (0, 0));
    }

    #[test]
    fn token_table_of_every_candidate() {
        // v2 §5: nw×nh → tokens, for every candidate layout.
        let table = [
            ((1, 1), 421),
            ((2, 1), 617),
            ((1, 2), 631),
            ((3, 1), 813),
            ((1, 3), 841),
            ((4, 1), 1009),
            ((2, 2), 1023),
            ((1, 4), 1051),
            ((5, 1), 1205),
            ((1, 5), 1261),
            ((6, 1), 1401),
            ((3, 2), 1415),
            ((2, 3), 1429),
            ((1, 6), 1471),
            ((7, 1), 1597),
            ((1, 7), 1681),
            ((8, 1), 1793),
            ((4, 2), 1807),
            ((2, 4), 1835),
            ((1, 8), 1891),
            ((9, 1), 1989),
            ((3, 3), 2017),
            ((1, 9), 2101),
        ];
        let grid = vl2_token_grid(384, 14, 2);
        assert_eq!(grid, 14);
        for ((nw, nh), want) in table {
            assert_eq!(vl2_image_tokens(nw, nh, grid), want, "{nw}x{nh}");
        }
        // The table covers exactly the 23 candidates.
        let mut layouts: Vec<_> = CANDIDATES
            .iter()
            .map(|&(w, h)| ((w / 384) as usize, (h / 384) as usize))
            .collect();
        let mut listed: Vec<_> = table.iter().map(|&(l, _)| l).collect();
        layouts.sort_unstable();
        listed.sort_unstable();
        assert_eq!(layouts, listed);
    }

    #[test]
    fn contain_rounds_half_to_even() {
        // v2 §2.5 example: 1000×500 → 384×192.
        assert_eq!(contain_size(1000, 500, 384, 384), (384, 192));
        // 300 / 1000 · 384 = 115.2 → 115; 420 / 300 · 384 = 537.6 → 538.
        assert_eq!(contain_size(1000, 300, 384, 384), (384, 115));
        assert_eq!(contain_size(300, 420, 384, 768), (384, 538));
        assert_eq!(contain_size(1, 2, 5, 5), (2, 5)); // 1/2·5 = 2.5 → 2
        assert_eq!(contain_size(1, 2, 7, 7), (4, 7)); // 3.5 → 4
        assert_eq!(contain_size(640, 480, 768, 768), (768, 576));
        assert_eq!(contain_size(200, 200, 384, 384), (384, 384));
    }

    #[test]
    fn pad_centres_with_half_even_offset() {
        // 4×1 → contain in 4×4 gives 4×1; gap 3 · 0.5 = 1.5 → 2 (half to even).
        let img = RgbImage::filled(4, 1, [9, 9, 9]);
        let out = pil_pad(&img, 4, 4, [1, 2, 3]);
        assert_eq!((out.width, out.height), (4, 4));
        let row = |y: usize| &out.data[y * 12..(y + 1) * 12];
        assert_eq!(row(0), &[1, 2, 3].repeat(4)[..]);
        assert_eq!(row(1), &[1, 2, 3].repeat(4)[..]);
        assert_eq!(row(2), &[9; 12]);
        assert_eq!(row(3), &[1, 2, 3].repeat(4)[..]);
        // 1×6 in 6×6: gap 5 · 0.5 = 2.5 → 2, column 2.
        let tall = RgbImage::filled(1, 6, [9, 9, 9]);
        let out = pil_pad(&tall, 6, 6, [0, 0, 0]);
        for y in 0..6 {
            let px: Vec<u8> = (0..6).map(|x| out.data[(y * 6 + x) * 3]).collect();
            assert_eq!(px, vec![0, 0, 9, 0, 0, 0], "row {y}");
        }
        // Same aspect ratio: a plain resize, no canvas.
        let sq = RgbImage::filled(3, 3, [5, 6, 7]);
        assert_eq!(
            pil_pad(&sq, 6, 6, [0, 0, 0]),
            RgbImage::filled(6, 6, [5, 6, 7])
        );
    }

    /// An image whose pixels encode their position, to check tile order and crop boxes.
    fn ramp(w: u32, h: u32) -> RgbImage {
        let mut data = Vec::with_capacity((w * h * 3) as usize);
        for y in 0..h {
            for x in 0..w {
                data.extend_from_slice(&[
                    (x % 251) as u8,
                    (y % 251) as u8,
                    ((x / 251) * 16 + y / 251) as u8,
                ]);
            }
        }
        RgbImage {
            width: w,
            height: h,
            data,
        }
    }

    #[test]
    fn tiles_are_row_major_crops_of_the_padded_view() {
        // 768×384 exactly: best (768, 384) → 2×1, no resize, tiles are the two halves.
        let img = ramp(768, 384);
        let t = tile_image(&img, &CANDIDATES, 384, true, [127; 3]).unwrap();
        assert_eq!((t.nw, t.nh, t.tiles.len()), (2, 1, 2));
        assert_eq!(t.best_resolution(384), (768, 384));
        assert_eq!(t.tiles[0], crop_square(&img, 0, 0, 384));
        assert_eq!(t.tiles[1], crop_square(&img, 384, 0, 384));
        assert_eq!(t.global, pil_pad(&img, 384, 384, [127; 3]));
        assert_eq!(t.views().count(), 3);

        // 1152×768: best (1152, 768) → 3×2; tile k is row k / 3, column k % 3.
        let img = ramp(1152, 768);
        let t = tile_image(&img, &CANDIDATES, 384, true, [127; 3]).unwrap();
        assert_eq!((t.nw, t.nh, t.tiles.len()), (3, 2, 6));
        for (k, tile) in t.tiles.iter().enumerate() {
            let (r, c) = ((k / 3) as u32, (k % 3) as u32);
            assert_eq!(tile, &crop_square(&img, c * 384, r * 384, 384), "tile {k}");
        }
    }

    #[test]
    fn no_cropping_gives_one_local_tile_equal_to_the_global_view() {
        let img = ramp(1000, 300);
        let t = tile_image(&img, &CANDIDATES, 384, false, [127; 3]).unwrap();
        assert_eq!((t.nw, t.nh), (1, 1));
        assert_eq!(t.tiles, vec![t.global.clone()]);
        assert_eq!((t.global.width, t.global.height), (384, 384));
        // Vertical padding: 115 rows of image pasted at y = round(269 · 0.5) = 134 (134.5 → 134).
        let gray_row = [127u8; 384 * 3];
        let row = |y: usize| &t.global.data[y * 384 * 3..(y + 1) * 384 * 3];
        assert_eq!(row(133), &gray_row[..]);
        assert_ne!(row(134), &gray_row[..]);
        assert_ne!(row(248), &gray_row[..]);
        assert_eq!(row(249), &gray_row[..]);
    }

    #[test]
    fn rejects_degenerate_input() {
        let img = RgbImage::filled(10, 10, [0; 3]);
        for (cands, tile) in [
            (&[][..], 384),
            (&[(384, 384)][..], 0),
            (&[(384, 500)][..], 384),
        ] {
            assert!(
                matches!(
                    tile_image(&img, cands, tile, true, [127; 3]),
                    Err(Error::Unsupported { .. })
                ),
                "{cands:?} / {tile}"
            );
        }
        let empty = RgbImage {
            width: 0,
            height: 0,
            data: vec![],
        };
        assert!(tile_image(&empty, &CANDIDATES, 384, true, [127; 3]).is_err());
        // 2000×1 → contained height round(1/2000·384) = 0: Pillow raises, so do we.
        let line = RgbImage::filled(2000, 1, [0; 3]);
        let err = tile_image(&line, &CANDIDATES, 384, true, [127; 3]).unwrap_err();
        assert!(err.to_string().contains("2000x1"), "{err}");
    }
}
