//! x86-64 kernels. Each one takes a group of up to [`ROW_GROUP`] rows against one weight
//! column, with the column's blocks loaded once per block for the whole group; every row gets
//! exactly the operations it would get alone (const-generic group size, unrolled per row).
//!
//! - `q8_0`: `|w|` (unsigned) times `x` with `w`'s sign (`vpsignb`, or a masked negation on
//!   AVX-512), 256 bits per block (AVX2) or 512 bits per pair of blocks (AVX-512, the even
//!   block's lanes low, the odd one's high: the two accumulators of the portable order):
//!   `vpmaddubsw` then `vpmaddwd` by ones, or one `vpdpbusd` (AVX512-VNNI). The pair sums of
//!   `vpmaddubsw` cannot saturate: `|w| ≤ 128` and our quantized activations stay in
//!   `[−127, 127]`, so a pair is at most 2 · 128 · 127 < 2¹⁵.
//! - `q4_k`: nibbles (unsigned) times `x` by `vpmaddubsw` (a pair is at most 2 · 15 · 128),
//!   then `vpmaddwd` by the sub-block's scale (or `vpdpwssd`, AVX512-VNNI), 256 bits per 64
//!   weights (AVX2) or 512 bits per 128 (AVX-512, the two halves folded at the end of the
//!   super-block, in integers).
//!
//! Integer lane `l` always holds the products of bytes `4l..4l + 4` of each 32-byte group, and
//! the float steps are those of the portable path, so all paths agree bit for bit.

// The kernels index their per-row register arrays by row on purpose (unrolled per row).
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use half::f16;

use super::{hsum8, BlockQ4K, BlockQ8_0, Out, Path, QRows, QK8_0, QK_K, ROW_GROUP};

/// Quantizes the rows with AVX2 available (SSE4.1's rounding instead of a libm call).
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn quantize_rows(x: &[f32], rows: usize, k: usize, q8k: bool) -> QRows {
    super::quantize_rows_generic(x, rows, k, q8k)
}

#[inline]
#[target_feature(enable = "f16c")]
fn h2f(h: f16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h.to_bits() as i32)))
}

#[inline]
#[target_feature(enable = "avx")]
fn store8(v: __m256) -> [f32; 8] {
    let mut a = [0f32; 8];
    // SAFETY: `a` holds 8 floats.
    unsafe { _mm256_storeu_ps(a.as_mut_ptr(), v) };
    a
}

macro_rules! by_group {
    ($g:expr, $write:ident, $f:ident, $($arg:expr),*) => {
        match $g {
            1 => $write(&$f::<1>($($arg),*)),
            2 => $write(&$f::<2>($($arg),*)),
            3 => $write(&$f::<3>($($arg),*)),
            4 => $write(&$f::<4>($($arg),*)),
            g => unreachable!("{g} rows in a group"),
        }
    };
}
const _: () = assert!(ROW_GROUP == 4);

/// Every row of `xq` against weight columns `col0..` (`w`, `nb` blocks each).
///
/// # Safety
/// `p` is not [`Path::Portable`] and runs on this CPU; `out` columns `col0..col0 + w.len() /
/// nb` are this task's for every row of `xq`.
pub(crate) unsafe fn q8_0_cols(
    p: Path,
    w: &[BlockQ8_0],
    nb: usize,
    col0: usize,
    xq: &QRows,
    out: Out,
) {
    assert!(xq.qs.len() >= xq.rows * nb * QK8_0 && xq.d.len() >= xq.rows * nb);
    for (c, wc) in w.chunks_exact(nb).enumerate() {
        let mut r0 = 0;
        while r0 < xq.rows {
            let g = ROW_GROUP.min(xq.rows - r0);
            let write_group = |v: &[f32]| {
                for (r, &v) in v.iter().enumerate() {
                    // SAFETY: by the caller's contract (row `r0 + r` < rows).
                    unsafe { out.write(r0 + r, col0 + c, v) }
                }
            };
            // SAFETY: the path's features are present; the row range is inside `xq` (checked
            // above).
            unsafe {
                match p {
                    Path::Avx512 { vnni: true } => {
                        by_group!(g, write_group, q8_0_512_vnni, wc, xq, r0)
                    }
                    Path::Avx512 { vnni: false } => by_group!(g, write_group, q8_0_512, wc, xq, r0),
                    _ => by_group!(g, write_group, q8_0_avx2, wc, xq, r0),
                }
            }
            r0 += g;
        }
    }
}

/// # Safety
/// As [`q8_0_cols`].
pub(crate) unsafe fn q4k_cols(
    p: Path,
    w: &[BlockQ4K],
    nb: usize,
    col0: usize,
    xq: &QRows,
    out: Out,
) {
    assert!(
        xq.qs.len() >= xq.rows * nb * QK_K
            && xq.d.len() >= xq.rows * nb
            && xq.sums.len() >= xq.rows * nb * 8
    );
    for (c, wc) in w.chunks_exact(nb).enumerate() {
        let mut r0 = 0;
        while r0 < xq.rows {
            let g = ROW_GROUP.min(xq.rows - r0);
            let write_group = |v: &[f32]| {
                for (r, &v) in v.iter().enumerate() {
                    // SAFETY: by the caller's contract (row `r0 + r` < rows).
                    unsafe { out.write(r0 + r, col0 + c, v) }
                }
            };
            // SAFETY: the path's features are present; the row range is inside `xq`.
            unsafe {
                // One row alone goes through the 256-bit kernel on every x86 path: on Zen 4 the
                // 512-bit one's per-super-block setup is not paid back by a single row (10–20 %
                // slower measured); all kernels give the same bits, so this choice never
                // changes a result.
                match p {
                    _ if g == 1 => by_group!(g, write_group, q4k_avx2, wc, xq, r0),
                    Path::Avx512 { vnni: true } => {
                        by_group!(g, write_group, q4k_512_vnni, wc, xq, r0)
                    }
                    Path::Avx512 { vnni: false } => by_group!(g, write_group, q4k_512, wc, xq, r0),
                    _ => by_group!(g, write_group, q4k_avx2, wc, xq, r0),
                }
            }
            r0 += g;
        }
    }
}

/// One `q8_0` block on 256 bits for `R` rows into their accumulators `acc` (AVX2).
macro_rules! q8_0_block_256 {
    ($blk:expr, $b:expr, $xs:expr, $ds:expr, $k:expr, $nb:expr, $acc:expr, $R:expr) => {{
        let blk: &BlockQ8_0 = $blk;
        // SAFETY: a block's 32 quants are 32 bytes (unaligned load).
        let wq = unsafe { _mm256_loadu_si256(blk.qs.as_ptr() as *const __m256i) };
        let aw = _mm256_sign_epi8(wq, wq);
        let dw = _mm256_set1_ps(h2f(blk.d));
        let ones = _mm256_set1_epi16(1);
        for r in 0..$R {
            // SAFETY: row r0 + r, block b: inside `xq` (checked by the caller).
            let (xv, dx) = unsafe {
                (
                    _mm256_loadu_si256($xs.add(r * $k + $b * QK8_0) as *const __m256i),
                    _mm256_set1_ps(*$ds.add(r * $nb + $b)),
                )
            };
            let sx = _mm256_sign_epi8(xv, wq);
            let isum = _mm256_madd_epi16(_mm256_maddubs_epi16(aw, sx), ones);
            let s = _mm256_mul_ps(dw, dx);
            $acc[r] = _mm256_add_ps($acc[r], _mm256_mul_ps(_mm256_cvtepi32_ps(isum), s));
        }
    }};
}

/// `q8_0`, 256 bits per block (AVX2): `R` rows from `r0` of `xq` against one weight column.
///
/// # Safety
/// The CPU has AVX2, FMA, F16C; rows `r0..r0 + R` exist in `xq`, whose `k` is `w.len() · 32`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_0_avx2<const R: usize>(w: &[BlockQ8_0], xq: &QRows, r0: usize) -> [f32; R] {
    let nb = w.len();
    let k = xq.k;
    let mut even = [_mm256_setzero_ps(); R];
    let mut odd = [_mm256_setzero_ps(); R];
    // SAFETY: rows r0..r0+R of `k` quants and `nb` scales each are inside `xq`.
    let (xs, ds) = unsafe { (xq.qs.as_ptr().add(r0 * k), xq.d.as_ptr().add(r0 * nb)) };
    let mut b = 0;
    while b + 1 < nb {
        q8_0_block_256!(&w[b], b, xs, ds, k, nb, even, R);
        q8_0_block_256!(&w[b + 1], b + 1, xs, ds, k, nb, odd, R);
        b += 2;
    }
    if b < nb {
        q8_0_block_256!(&w[b], b, xs, ds, k, nb, even, R);
    }
    let mut out = [0f32; R];
    for r in 0..R {
        out[r] = hsum8(store8(_mm256_add_ps(even[r], odd[r])));
    }
    out
}

/// The `q8_0` 512-bit kernel (two blocks per register), generic over the integer dot product
/// of `|w|` and `x` with `w`'s sign.
macro_rules! q8_0_512_kernel {
    ($name:ident, $features:literal, |$aw:ident, $sx:ident, $ones:ident| $dot:expr) => {
        /// `q8_0`, 512 bits per two blocks (AVX-512): `R` rows from `r0` of `xq` against one
        /// weight column.
        ///
        /// # Safety
        /// The CPU has the enabled features; rows `r0..r0 + R` exist in `xq`, whose `k` is
        /// `w.len() · 32`.
        #[target_feature(enable = $features)]
        unsafe fn $name<const R: usize>(w: &[BlockQ8_0], xq: &QRows, r0: usize) -> [f32; R] {
            let nb = w.len();
            let k = xq.k;
            let mut acc = [_mm512_setzero_ps(); R];
            #[allow(unused_variables)]
            let $ones = _mm512_set1_epi16(1);
            let zero = _mm512_setzero_si512();
            // Lanes 0–7 take the even block's scale, 8–15 the odd one's.
            let pick = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
            // SAFETY: rows r0..r0+R of `k` quants and `nb` scales each are inside `xq`.
            let (xs, ds) = unsafe { (xq.qs.as_ptr().add(r0 * k), xq.d.as_ptr().add(r0 * nb)) };
            let mut b = 0;
            while b + 1 < nb {
                let (b0, b1) = (&w[b], &w[b + 1]);
                // SAFETY: each block's 32 quants are 32 bytes (unaligned loads).
                let wq = unsafe {
                    _mm512_inserti64x4(
                        _mm512_castsi256_si512(
                            _mm256_loadu_si256(b0.qs.as_ptr() as *const __m256i),
                        ),
                        _mm256_loadu_si256(b1.qs.as_ptr() as *const __m256i),
                        1,
                    )
                };
                let $aw = _mm512_abs_epi8(wq);
                let neg = _mm512_movepi8_mask(wq);
                let dw = _mm_cvtph_ps(_mm_set_epi16(
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    b1.d.to_bits() as i16,
                    b0.d.to_bits() as i16,
                ));
                for r in 0..R {
                    // SAFETY: row r0 + r, blocks b and b + 1 (64 quants, 2 scales) are inside
                    // `xq`.
                    let (xv, dx) = unsafe {
                        (
                            _mm512_loadu_si512(xs.add(r * k + b * QK8_0) as *const __m512i),
                            _mm_castpd_ps(_mm_load_sd(ds.add(r * nb + b) as *const f64)),
                        )
                    };
                    let $sx = _mm512_mask_sub_epi8(xv, neg, zero, xv);
                    let isum: __m512i = $dot;
                    let s = _mm512_permutexvar_ps(pick, _mm512_castps128_ps512(_mm_mul_ps(dw, dx)));
                    acc[r] = _mm512_add_ps(acc[r], _mm512_mul_ps(_mm512_cvtepi32_ps(isum), s));
                }
                b += 2;
            }
            let mut even = [_mm256_setzero_ps(); R];
            let mut odd = [_mm256_setzero_ps(); R];
            for r in 0..R {
                even[r] = _mm512_castps512_ps256(acc[r]);
                odd[r] = _mm512_extractf32x8_ps(acc[r], 1);
            }
            if b < nb {
                q8_0_block_256!(&w[b], b, xs, ds, k, nb, even, R);
            }
            let mut out = [0f32; R];
            for r in 0..R {
                out[r] = hsum8(store8(_mm256_add_ps(even[r], odd[r])));
            }
            out
        }
    };
}

q8_0_512_kernel!(
    q8_0_512,
    "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq",
    |aw, sx, ones| _mm512_madd_epi16(_mm512_maddubs_epi16(aw, sx), ones)
);
q8_0_512_kernel!(
    q8_0_512_vnni,
    "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni",
    |aw, sx, _ones| _mm512_dpbusd_epi32(_mm512_setzero_si512(), aw, sx)
);

/// The float steps of one super-block (portable order): `acc += f32(isum) · (d · dx)`,
/// `mins[j] += f32(m_j · S_j) · (dmin · dx)`. A macro so it is always inlined into the kernels
/// (their per-row registers stay registers).
macro_rules! finish_block {
    ($blk:expr, $m:expr, $xq:expr, $r0:expr, $b:expr, $nb:expr, $isum:expr, $acc:expr, $mins:expr, $R:expr) => {{
        let blk: &BlockQ4K = $blk;
        let m: &[u8; 8] = $m;
        let xq: &QRows = $xq;
        let d = h2f(blk.d);
        let dmin = h2f(blk.dmin);
        let m32 = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(u64::from_le_bytes(*m) as i64));
        for r in 0..$R {
            let i = ($r0 + r) * $nb + $b;
            let dx = xq.d[i];
            let sums = &xq.sums[i * 8..i * 8 + 8];
            // SAFETY: `sums` holds 8 i32.
            let s = unsafe { _mm256_loadu_si256(sums.as_ptr() as *const __m256i) };
            let ms = _mm256_cvtepi32_ps(_mm256_mullo_epi32(m32, s));
            let sd = _mm256_set1_ps(d * dx);
            let smin = _mm256_set1_ps(dmin * dx);
            $acc[r] = _mm256_add_ps($acc[r], _mm256_mul_ps(_mm256_cvtepi32_ps($isum[r]), sd));
            $mins[r] = _mm256_add_ps($mins[r], _mm256_mul_ps(ms, smin));
        }
    }};
}

/// `q4_k`, 256 bits per 64 weights (AVX2).
///
/// # Safety
/// The CPU has AVX2, FMA, F16C; rows `r0..r0 + R` exist in `xq`, whose `k` is `w.len() · 256`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4k_avx2<const R: usize>(w: &[BlockQ4K], xq: &QRows, r0: usize) -> [f32; R] {
    let nb = w.len();
    let k = xq.k;
    let m4 = _mm256_set1_epi8(0xF);
    let mut acc = [_mm256_setzero_ps(); R];
    let mut mins = [_mm256_setzero_ps(); R];
    // SAFETY: rows r0..r0+R are inside `xq`.
    let xs = unsafe { xq.qs.as_ptr().add(r0 * k) };
    for (b, blk) in w.iter().enumerate() {
        let (sc, m) = blk.scales_mins();
        // The 8 scales as i16 in both 128-bit lanes; `vpshufb` by `pick(j)` spreads scale j.
        let sc16 = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_cvtsi64_si128(
            u64::from_le_bytes(sc) as i64,
        )));
        let pick = |j: i16| _mm256_set1_epi16(((2 * j + 1) << 8) | (2 * j));
        let mut isum = [_mm256_setzero_si256(); R];
        for c in 0..4 {
            // SAFETY: 32 bytes of the block's 128 quant bytes.
            let q = unsafe { _mm256_loadu_si256(blk.qs.as_ptr().add(32 * c) as *const __m256i) };
            let lo = _mm256_and_si256(q, m4);
            let hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
            let slo = _mm256_shuffle_epi8(sc16, pick(2 * c as i16));
            let shi = _mm256_shuffle_epi8(sc16, pick(2 * c as i16 + 1));
            // Where the activations for chunk c sit in the reordered q8_K block.
            let olo = b * QK_K + 128 * (c / 2) + 32 * (c % 2);
            for r in 0..R {
                // SAFETY: 32 bytes at olo and olo + 64 of row r0 + r's block b.
                let (xlo, xhi) = unsafe {
                    let p = xs.add(r * k + olo);
                    (
                        _mm256_loadu_si256(p as *const __m256i),
                        _mm256_loadu_si256(p.add(64) as *const __m256i),
                    )
                };
                let plo = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, xlo), slo);
                let phi = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, xhi), shi);
                isum[r] = _mm256_add_epi32(isum[r], _mm256_add_epi32(plo, phi));
            }
        }
        finish_block!(blk, &m, xq, r0, b, nb, isum, acc, mins, R);
    }
    let mut out = [0f32; R];
    for r in 0..R {
        out[r] = hsum8(store8(acc[r])) - hsum8(store8(mins[r]));
    }
    out
}

/// The `q4_k` 512-bit kernel, generic over the scale step (`vpmaddwd` + add, or `vpdpwssd`).
macro_rules! q4k_512_kernel {
    ($name:ident, $features:literal, |$acc:ident, $p:ident, $s:ident| $step:expr) => {
        /// `q4_k`, 512 bits per 128 weights (AVX-512).
        ///
        /// # Safety
        /// The CPU has the enabled features; rows `r0..r0 + R` exist in `xq`, whose `k` is
        /// `w.len() · 256`.
        #[target_feature(enable = $features)]
        unsafe fn $name<const R: usize>(w: &[BlockQ4K], xq: &QRows, r0: usize) -> [f32; R] {
            let nb = w.len();
            let k = xq.k;
            let m4 = _mm512_set1_epi8(0xF);
            // `vpshufb` masks: which of the 8 scales (i16, in every 128-bit lane of `sc16`)
            // each i16 lane of a 512-bit step takes: chunk 2h in lanes 0–15, chunk 2h + 1 in
            // 16–31, for the low or the high nibbles.
            let pick = |a: i16, b: i16| {
                let word = |j: i16| ((2 * j + 1) << 8) | (2 * j);
                _mm512_inserti64x4(_mm512_set1_epi16(word(a)), _mm256_set1_epi16(word(b)), 1)
            };
            let picks = [[pick(0, 2), pick(1, 3)], [pick(4, 6), pick(5, 7)]];
            let mut acc = [_mm256_setzero_ps(); R];
            let mut mins = [_mm256_setzero_ps(); R];
            // SAFETY: rows r0..r0+R are inside `xq`.
            let xs = unsafe { xq.qs.as_ptr().add(r0 * k) };
            for (b, blk) in w.iter().enumerate() {
                let (sc, m) = blk.scales_mins();
                let sc16 = _mm512_broadcast_i32x4(_mm_cvtepu8_epi16(_mm_cvtsi64_si128(
                    u64::from_le_bytes(sc) as i64,
                )));
                let mut wide = [_mm512_setzero_si512(); R];
                for h in 0..2 {
                    // SAFETY: 64 of the block's 128 quant bytes.
                    let q = unsafe {
                        _mm512_loadu_si512(blk.qs.as_ptr().add(64 * h) as *const __m512i)
                    };
                    let lo = _mm512_and_si512(q, m4);
                    let hi = _mm512_and_si512(_mm512_srli_epi16(q, 4), m4);
                    let slo = _mm512_shuffle_epi8(sc16, picks[h][0]);
                    let shi = _mm512_shuffle_epi8(sc16, picks[h][1]);
                    let o = b * QK_K + 128 * h;
                    for r in 0..R {
                        // SAFETY: 64 bytes at o and o + 64 of row r0 + r's block b.
                        let (xlo, xhi) = unsafe {
                            let p = xs.add(r * k + o);
                            (
                                _mm512_loadu_si512(p as *const __m512i),
                                _mm512_loadu_si512(p.add(64) as *const __m512i),
                            )
                        };
                        let $acc = wide[r];
                        let ($p, $s) = (_mm512_maddubs_epi16(lo, xlo), slo);
                        let t = $step;
                        let ($acc, $p, $s) = (t, _mm512_maddubs_epi16(hi, xhi), shi);
                        wide[r] = $step;
                    }
                }
                let mut isum = [_mm256_setzero_si256(); R];
                for r in 0..R {
                    isum[r] = _mm256_add_epi32(
                        _mm512_castsi512_si256(wide[r]),
                        _mm512_extracti64x4_epi64(wide[r], 1),
                    );
                }
                finish_block!(blk, &m, xq, r0, b, nb, isum, acc, mins, R);
            }
            let mut out = [0f32; R];
            for r in 0..R {
                out[r] = hsum8(store8(acc[r])) - hsum8(store8(mins[r]));
            }
            out
        }
    };
}

q4k_512_kernel!(
    q4k_512,
    "avx2,fma,f16c,avx512f,avx512bw,avx512vl",
    |acc, p, s| _mm512_add_epi32(acc, _mm512_madd_epi16(p, s))
);
q4k_512_kernel!(
    q4k_512_vnni,
    "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni",
    |acc, p, s| _mm512_dpwssd_epi32(acc, p, s)
);
