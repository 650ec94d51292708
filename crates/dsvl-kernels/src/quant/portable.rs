//! The path for any CPU, and the definition of the others' results: the same 8 integer lanes
//! and the same float operations in the same order (module docs of [`super`]).

use super::{hsum8, q8k_order, BlockQ4K, BlockQ8_0, QRows, QK8_0, QK_K};

/// One output element of a `q8_0` product: weight column `w` (its `k / 32` blocks) against
/// row `r` of `xq`.
pub(crate) fn dot_q8_0(w: &[BlockQ8_0], xq: &QRows, r: usize) -> f32 {
    let nb = w.len();
    let xs = xq.row_qs(r);
    let dx = &xq.d[r * nb..(r + 1) * nb];
    let mut acc = [[0f32; 8]; 2];
    for (b, blk) in w.iter().enumerate() {
        let x = &xs[b * QK8_0..(b + 1) * QK8_0];
        let s = blk.d.to_f32() * dx[b];
        for (l, a) in acc[b % 2].iter_mut().enumerate() {
            let isum: i32 = (4 * l..4 * l + 4)
                .map(|i| blk.qs[i] as i32 * x[i] as i32)
                .sum();
            *a += isum as f32 * s;
        }
    }
    hsum8(std::array::from_fn(|l| acc[0][l] + acc[1][l]))
}

/// One output element of a `q4_k` product.
pub(crate) fn dot_q4k(w: &[BlockQ4K], xq: &QRows, r: usize) -> f32 {
    let nb = w.len();
    let xs = xq.row_qs(r);
    let dx = &xq.d[r * nb..(r + 1) * nb];
    let sums = &xq.sums[r * nb * 8..(r + 1) * nb * 8];
    let mut acc = [0f32; 8];
    let mut mins = [0f32; 8];
    for (b, blk) in w.iter().enumerate() {
        let x = &xs[b * QK_K..(b + 1) * QK_K];
        let (sc, m) = blk.scales_mins();
        let mut isum = [0i32; 8];
        for c in 0..4 {
            for (l, s) in isum.iter_mut().enumerate() {
                let mut lo = 0i32;
                let mut hi = 0i32;
                for i in 4 * l..4 * l + 4 {
                    let q = blk.qs[32 * c + i];
                    lo += (q & 0xF) as i32 * x[q8k_order(64 * c + i)] as i32;
                    hi += (q >> 4) as i32 * x[q8k_order(64 * c + 32 + i)] as i32;
                }
                *s += sc[2 * c] as i32 * lo + sc[2 * c + 1] as i32 * hi;
            }
        }
        let d = blk.d.to_f32() * dx[b];
        let dmin = blk.dmin.to_f32() * dx[b];
        for (a, s) in acc.iter_mut().zip(isum) {
            *a += s as f32 * d;
        }
        for (j, mn) in mins.iter_mut().enumerate() {
            *mn += (m[j] as i32 * sums[b * 8 + j]) as f32 * dmin;
        }
    }
    hsum8(acc) - hsum8(mins)
}
