//! Aspect-ratio tiling of DeepSeek-OCR's Gundam mode: the image is resized, without keeping its
//! aspect ratio, to a grid of `i × j` square tiles whose ratio `i / j` is the closest to the image's,
//! then cut row by row.
//!
//! Mirrors `find_closest_aspect_ratio`, `count_tiles` and `dynamic_preprocess` of
//! `process/image_process.py` (github deepseek-ai/DeepSeek-OCR @ e4ac34e) with Pillow 13's BICUBIC
//! `Image.resize` and `Image.crop`. Everything runs on RGB8.

use super::resample::resize_bicubic;
use super::rgb::RgbImage;

/// The grids `(columns, rows)` with `min_num ≤ i·j ≤ max_num`, by tile count ascending.
///
/// ref: `sorted(set((i, j) for n in range(min_num, max_num + 1) for i in range(1, n + 1) for j in
/// range(1, n + 1) if min_num <= i * j <= max_num), key=lambda x: x[0] * x[1])`. The reference's
/// order within one tile count is Python's set order; it never decides a result (two grids with the
/// same count tie only as `(i, j)` / `(j, i)` around a ratio that a third grid matches better, except
/// for `max_num = 2`, whose set order is `(1, 2), (2, 1)`, the order used here for every count).
pub fn target_grids(min_num: u32, max_num: u32) -> Vec<(u32, u32)> {
    let mut grids: Vec<(u32, u32)> = (1..=max_num)
        .flat_map(|i| (1..=max_num).map(move |j| (i, j)))
        .filter(|&(i, j)| (min_num..=max_num).contains(&(i * j)))
        .collect();
    grids.sort_by_key(|&(i, j)| (i * j, i));
    grids
}

/// `find_closest_aspect_ratio`: the grid whose `i / j` is nearest to `width / height` (f64); on an
/// exact tie, a later grid (more tiles) wins when the image area exceeds half of the grid's area
/// (`area > 0.5 · image_size² · i · j`).
pub fn closest_grid(width: u32, height: u32, grids: &[(u32, u32)], image_size: u32) -> (u32, u32) {
    let aspect = f64::from(width) / f64::from(height);
    let area = f64::from(width) * f64::from(height);
    let size = f64::from(image_size);
    let mut best_diff = f64::INFINITY;
    let mut best = (1, 1);
    for &(i, j) in grids {
        let diff = (aspect - f64::from(i) / f64::from(j)).abs();
        if diff < best_diff {
            best_diff = diff;
            best = (i, j);
        } else if diff == best_diff && area > 0.5 * size * size * f64::from(i) * f64::from(j) {
            best = (i, j);
        }
    }
    best
}

/// `dynamic_preprocess(image, min_num, max_num, image_size)`: resize to `(i·size, j·size)` (Pillow
/// BICUBIC, aspect ratio not kept) and crop the `i·j` tiles row-major (top row first, left to
/// right). Returns the tiles and the grid `(columns, rows)`.
pub fn aspect_tiles(
    img: &RgbImage,
    min_num: u32,
    max_num: u32,
    image_size: u32,
) -> (Vec<RgbImage>, (u32, u32)) {
    let grid = closest_grid(
        img.width,
        img.height,
        &target_grids(min_num, max_num),
        image_size,
    );
    let (cols, rows) = grid;
    let resized = resize_bicubic(img, cols * image_size, rows * image_size);
    let row_bytes = image_size as usize * 3;
    let stride = resized.stride();
    let mut tiles = Vec::with_capacity((cols * rows) as usize);
    for r in 0..rows as usize {
        for c in 0..cols as usize {
            let mut data = Vec::with_capacity(row_bytes * image_size as usize);
            for y in r * image_size as usize..(r + 1) * image_size as usize {
                let start = y * stride + c * row_bytes;
                data.extend_from_slice(&resized.data[start..start + row_bytes]);
            }
            tiles.push(RgbImage {
                width: image_size,
                height: image_size,
                data,
            });
        }
    }
    (tiles, grid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grids_for_the_published_limits() {
        let g = target_grids(2, 6);
        assert_eq!(g.len(), 13);
        assert!(g.iter().all(|&(i, j)| (2..=6).contains(&(i * j))));
        assert_eq!(g[0], (1, 2));
        assert_eq!(target_grids(2, 9).len(), 22);
        assert_eq!(target_grids(2, 2), [(1, 2), (2, 1)]);
    }

    #[test]
    fn closest_grid_and_area_tie_break() {
        let g = target_grids(2, 6);
        assert_eq!(closest_grid(1000, 700, &g, 640), (3, 2));
        assert_eq!(closest_grid(1400, 600, &g, 640), (2, 1));
        assert_eq!(closest_grid(660, 1300, &g, 640), (1, 2));
        // ratio 1: (2, 2) only (3, 3 needs 9 tiles)
        assert_eq!(closest_grid(900, 900, &g, 640), (2, 2));
        // max 9: (2, 2) and (3, 3) tie on ratio 1; (3, 3) wins only above 0.5·640²·9 pixels
        let g9 = target_grids(2, 9);
        assert_eq!(closest_grid(1300, 1300, &g9, 640), (2, 2));
        assert_eq!(closest_grid(1400, 1400, &g9, 640), (3, 3));
    }

    #[test]
    fn tiles_are_row_major_crops_of_the_resized_image() {
        // a 2×1 image with tile size 1 and at most 2 tiles: grid (2, 1), no resampling
        let img = RgbImage {
            width: 2,
            height: 1,
            data: vec![10, 20, 30, 40, 50, 60],
        };
        let (tiles, grid) = aspect_tiles(&img, 2, 2, 1);
        assert_eq!(grid, (2, 1));
        assert_eq!(tiles.len(), 2);
        assert_eq!(tiles[0].data, [10, 20, 30]);
        assert_eq!(tiles[1].data, [40, 50, 60]);
    }
}
