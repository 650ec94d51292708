//! Few-row matrix products `y = x·Wᵀ` for decode steps, on the CPU, with `W` kept in the
//! checkpoint's `[out, in]` layout as f32 or bf16.
//!
//! A decode step multiplies one row (or one row per running sequence) by every weight of the
//! model, so its speed is the speed of reading the weights. This kernel streams each weight row
//! once per call, whatever the number of input rows, and reads bf16 weights as bf16 (half the
//! bytes of f32), widening them in registers.
//!
//! Every output element is one dot product computed in a fixed order (8-wide partial sums over
//! `in` in ascending order, then a fixed pairwise reduction, then the tail), independent of the
//! number of rows, of the other rows and of the thread count. A sequence therefore gets bit for
//! bit the same logits whether it is decoded alone or batched with others (batch invariance,
//! server issue #3).

use half::bf16;
use rayon::prelude::*;

/// Largest row count routed to this kernel by [`super::Linear`]; above it a blocked GEMM wins.
/// The server's `--max-running` is capped to it so a batched decode step stays batch-invariant.
pub const MAX_ROWS: usize = 32;

/// Weight rows per task: enough work per task to amortize scheduling, small enough to split
/// the smallest projection of a model over the threads.
const ROWS_PER_TASK: usize = 64;

/// A weight matrix `[out, in]`, row-major.
#[derive(Clone, Copy)]
pub enum WeightRows<'a> {
    F32(&'a [f32]),
    Bf16(&'a [bf16]),
}

/// `y[m, o] = Σ_i x[m, i] · w[o, i]` for `m < rows`. `x` is `[rows, k]`, `w` is `[n, k]`, the
/// result is `[rows, n]`.
pub fn matmul_rows(x: &[f32], rows: usize, k: usize, w: WeightRows<'_>, n: usize) -> Vec<f32> {
    assert_eq!(x.len(), rows * k, "x is not [rows, k]");
    match w {
        WeightRows::F32(w) => assert_eq!(w.len(), n * k, "w is not [n, k]"),
        WeightRows::Bf16(w) => assert_eq!(w.len(), n * k, "w is not [n, k]"),
    }
    // Output transposed ([n, rows]) so each task owns one contiguous piece.
    let mut yt = vec![0f32; n * rows];
    let kernel = Kernel::detect();
    yt.par_chunks_mut(ROWS_PER_TASK * rows)
        .enumerate()
        .for_each(|(task, out)| {
            let o0 = task * ROWS_PER_TASK;
            let count = out.len() / rows.max(1);
            for (j, out_o) in out.chunks_mut(rows).enumerate().take(count) {
                let o = o0 + j;
                for (m, y) in out_o.iter_mut().enumerate() {
                    let xm = &x[m * k..(m + 1) * k];
                    *y = match w {
                        WeightRows::F32(w) => kernel.dot_f32(xm, &w[o * k..(o + 1) * k]),
                        WeightRows::Bf16(w) => kernel.dot_bf16(xm, &w[o * k..(o + 1) * k]),
                    };
                }
            }
        });
    if rows == 1 {
        return yt;
    }
    let mut y = vec![0f32; rows * n];
    for (o, col) in yt.chunks_exact(rows).enumerate() {
        for (m, v) in col.iter().enumerate() {
            y[m * n + o] = *v;
        }
    }
    y
}

#[derive(Clone, Copy)]
enum Kernel {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2Fma,
}

impl Kernel {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return Kernel::Avx2Fma;
        }
        Kernel::Portable
    }

    #[inline]
    fn dot_f32(self, x: &[f32], w: &[f32]) -> f32 {
        match self {
            Kernel::Portable => portable::dot(x, w, |v| v),
            // SAFETY: the CPU has AVX2 and FMA (checked in `detect`); both slices have the
            // same length (checked by the caller's chunking).
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2Fma => unsafe { avx2::dot_f32(x, w) },
        }
    }

    #[inline]
    fn dot_bf16(self, x: &[f32], w: &[bf16]) -> f32 {
        match self {
            Kernel::Portable => portable::dot(x, w, bf16::to_f32),
            // SAFETY: as in `dot_f32`.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2Fma => unsafe { avx2::dot_bf16(x, w) },
        }
    }
}

/// For CPUs without AVX2/FMA: 8 partial sums in a fixed order (deterministic, not the same
/// rounding as the SIMD kernel).
mod portable {
    pub fn dot<T: Copy>(x: &[f32], w: &[T], f: impl Fn(T) -> f32) -> f32 {
        let body = x.len() / 8 * 8;
        let mut acc = [0f32; 8];
        for (xc, wc) in x[..body].chunks_exact(8).zip(w[..body].chunks_exact(8)) {
            for l in 0..8 {
                acc[l] += xc[l] * f(wc[l]);
            }
        }
        let mut s = reduce8(acc);
        for (a, b) in x[body..].iter().zip(&w[body..]) {
            s += a * f(*b);
        }
        s
    }

    fn reduce8(a: [f32; 8]) -> f32 {
        let h = [a[0] + a[4], a[1] + a[5], a[2] + a[6], a[3] + a[7]];
        let q = [h[0] + h[2], h[1] + h[3]];
        q[0] + q[1]
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use half::bf16;

    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let q = _mm_add_ps(h, _mm_movehl_ps(h, h));
        let s = _mm_add_ss(q, _mm_shuffle_ps(q, q, 1));
        _mm_cvtss_f32(s)
    }

    /// `Σ x[i]·w[i]` over `i < body` (a multiple of 8) as 8-lane partial sums: four
    /// independent chains over 32-value steps (one FMA latency does not bound the loop), the
    /// leftover 8-value steps on the first chain, then `(c0 + c1) + (c2 + c3)`.
    #[inline(always)]
    unsafe fn fma_chains(xp: *const f32, body: usize, load: impl Fn(usize) -> __m256) -> __m256 {
        let mut c = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= body {
            for (j, cj) in c.iter_mut().enumerate() {
                let at = i + 8 * j;
                *cj = _mm256_fmadd_ps(_mm256_loadu_ps(xp.add(at)), load(at), *cj);
            }
            i += 32;
        }
        while i < body {
            c[0] = _mm256_fmadd_ps(_mm256_loadu_ps(xp.add(i)), load(i), c[0]);
            i += 8;
        }
        _mm256_add_ps(_mm256_add_ps(c[0], c[1]), _mm256_add_ps(c[2], c[3]))
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_f32(x: &[f32], w: &[f32]) -> f32 {
        let k = x.len().min(w.len());
        let body = k / 8 * 8;
        let (xp, wp) = (x.as_ptr(), w.as_ptr());
        let load = |i: usize| _mm256_loadu_ps(wp.add(i));
        let mut s = hsum(fma_chains(xp, body, load));
        let mut i = body;
        while i < k {
            s = (*xp.add(i)).mul_add(*wp.add(i), s);
            i += 1;
        }
        s
    }

    /// bf16 is the high half of an f32: widen 8 at a time by a 16-bit shift.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_bf16(x: &[f32], w: &[bf16]) -> f32 {
        let k = x.len().min(w.len());
        let body = k / 8 * 8;
        let (xp, wp) = (x.as_ptr(), w.as_ptr() as *const u16);
        let load = |i: usize| {
            let h = _mm_loadu_si128(wp.add(i) as *const __m128i);
            _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
        };
        let mut s = hsum(fma_chains(xp, body, load));
        let mut i = body;
        while i < k {
            s = (*xp.add(i)).mul_add(bf16::from_bits(*wp.add(i)).to_f32(), s);
            i += 1;
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| {
                let v = (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8;
                (v % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    fn reference(x: &[f32], rows: usize, k: usize, w: &[f32], n: usize) -> Vec<f64> {
        let mut y = vec![0f64; rows * n];
        for m in 0..rows {
            for o in 0..n {
                y[m * n + o] = (0..k)
                    .map(|i| x[m * k + i] as f64 * w[o * k + i] as f64)
                    .sum();
            }
        }
        y
    }

    #[test]
    fn matches_a_float64_product_for_odd_shapes() {
        for &(rows, k, n) in &[
            (1, 1, 1),
            (1, 7, 3),
            (3, 37, 130),
            (5, 256, 65),
            (32, 96, 200),
        ] {
            let (x, w) = (data(rows * k, 1), data(n * k, 2));
            let got = matmul_rows(&x, rows, k, WeightRows::F32(&w), n);
            let want = reference(&x, rows, k, &w, n);
            for (g, r) in got.iter().zip(&want) {
                assert!(
                    (*g as f64 - r).abs() < 1e-4 * (k as f64).sqrt(),
                    "{g} vs {r}"
                );
            }
            let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
            let wr: Vec<f32> = wb.iter().map(|v| v.to_f32()).collect();
            let got = matmul_rows(&x, rows, k, WeightRows::Bf16(&wb), n);
            let want = reference(&x, rows, k, &wr, n);
            for (g, r) in got.iter().zip(&want) {
                assert!(
                    (*g as f64 - r).abs() < 1e-4 * (k as f64).sqrt(),
                    "{g} vs {r}"
                );
            }
        }
    }

    #[test]
    fn each_row_is_the_same_alone_or_batched() {
        let (k, n, rows) = (300, 150, 9);
        let (x, w) = (data(rows * k, 3), data(n * k, 4));
        let batched = matmul_rows(&x, rows, k, WeightRows::F32(&w), n);
        for m in 0..rows {
            let alone = matmul_rows(&x[m * k..(m + 1) * k], 1, k, WeightRows::F32(&w), n);
            assert_eq!(alone, batched[m * n..(m + 1) * n], "row {m}");
        }
    }
}
