//! Every path against a scalar f64 reference on the dequantized blocks, every path equal to
//! the portable one bit for bit, batch invariance, and the activation rounding bound.

use half::f16;

use super::*;
use crate::isa::with_each_level;

/// A deterministic pseudo-random u64 sequence.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 11
    }
    /// In [-1, 1).
    fn f(&mut self) -> f32 {
        (self.next() >> 29) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut r = Rng(seed);
    // Varying magnitudes per 32, as in real activations (and a few outliers).
    (0..len)
        .map(|i| {
            let scale = 1.0 + ((i / 32) % 7) as f32;
            let v = r.f() * scale;
            if i % 97 == 5 {
                v * 20.0
            } else {
                v
            }
        })
        .collect()
}

/// Random `q8_0` blocks (any bit pattern with |q| ≤ 127 is a valid weight).
fn q8_0_weight(n: usize, k: usize, seed: u64) -> Vec<BlockQ8_0> {
    let mut r = Rng(seed);
    (0..n * k / QK8_0)
        .map(|_| BlockQ8_0 {
            d: f16::from_f32(0.001 + (r.f().abs() * 0.02)),
            qs: std::array::from_fn(|_| ((r.next() % 255) as i32 - 127) as i8),
        })
        .collect()
}

/// Random `q4_k` super-blocks: every bit pattern is a valid weight.
fn q4k_weight(n: usize, k: usize, seed: u64) -> Vec<BlockQ4K> {
    let mut r = Rng(seed);
    (0..n * k / QK_K)
        .map(|_| BlockQ4K {
            d: f16::from_f32(0.0005 + r.f().abs() * 0.002),
            dmin: f16::from_f32(r.f().abs() * 0.002),
            scales: std::array::from_fn(|_| r.next() as u8),
            qs: std::array::from_fn(|_| r.next() as u8),
        })
        .collect()
}

fn dequant(w: QWeight<'_>, n: usize, k: usize) -> Vec<f64> {
    let mut out = vec![0f64; n * k];
    match w {
        QWeight::Q8_0(b) => {
            for (i, blk) in b.iter().enumerate() {
                for j in 0..QK8_0 {
                    out[i * QK8_0 + j] = blk.d.to_f64() * blk.qs[j] as f64;
                }
            }
        }
        QWeight::Q4K(b) => {
            for (i, blk) in b.iter().enumerate() {
                for j in 0..8 {
                    let (sc, m) = blk.scale_min(j);
                    for t in 0..32 {
                        let byte = blk.qs[32 * (j / 2) + t];
                        let q = if j % 2 == 0 { byte & 0xF } else { byte >> 4 };
                        out[i * QK_K + 32 * j + t] =
                            blk.d.to_f64() * sc as f64 * q as f64 - blk.dmin.to_f64() * m as f64;
                    }
                }
            }
        }
    }
    out
}

/// The quantized activations back as f64, natural order.
fn dequant_x(xq: &QRows, q8k: bool) -> Vec<f64> {
    let k = xq.k;
    let block = if q8k { QK_K } else { QK8_0 };
    let mut out = vec![0f64; xq.rows * k];
    for r in 0..xq.rows {
        for i in 0..k {
            let b = i / block;
            let pos = if q8k {
                b * QK_K + q8k_order(i % QK_K)
            } else {
                i
            };
            out[r * k + i] = xq.row_qs(r)[pos] as f64 * xq.d[r * (k / block) + b] as f64;
        }
    }
    out
}

fn dot(a: &[f64], b: &[f64]) -> (f64, f64) {
    a.iter()
        .zip(b)
        .fold((0.0, 0.0), |(s, m), (x, y)| (s + x * y, m + (x * y).abs()))
}

const SHAPES: [(usize, usize, usize); 8] = [
    // (rows, n, k in blocks of 256)
    (1, 1, 1),
    (1, 37, 2),
    (2, 16, 1),
    (3, 17, 3),
    (4, 64, 2),
    (5, 33, 1),
    (17, 20, 2),
    (32, 45, 1),
];

fn weights(n: usize, k: usize, seed: u64) -> (Vec<BlockQ8_0>, Vec<BlockQ4K>) {
    (q8_0_weight(n, k, seed), q4k_weight(n, k, seed + 1))
}

fn each_format(w: &(Vec<BlockQ8_0>, Vec<BlockQ4K>), mut f: impl FnMut(QWeight<'_>, bool)) {
    f(QWeight::Q8_0(&w.0), false);
    if !w.1.is_empty() {
        f(QWeight::Q4K(&w.1), true);
    }
}

/// The paths level `isa` can take: the Avx512 levels also without VNNI.
fn paths_at(isa: Isa) -> Vec<Path> {
    let p = path_for(isa);
    match p {
        Path::Avx512 { vnni: true } => vec![p, Path::Avx512 { vnni: false }],
        _ => vec![p],
    }
}

#[test]
fn every_path_matches_the_reference_and_the_portable_bits() {
    with_each_level(|isa| {
        for p in paths_at(isa) {
            // Then `q8_0` alone with an odd number of blocks (1, 3, 5, 9).
            let odd = [(1, 3, 1), (2, 9, 3), (5, 31, 5), (17, 8, 9)];
            let shapes = SHAPES
                .iter()
                .map(|&(r, n, kb)| (r, n, kb * QK_K))
                .chain(odd.iter().map(|&(r, n, b)| (r, n, b * QK8_0)));
            for (idx, (rows, n, k)) in shapes.enumerate() {
                let x = values(rows * k, idx as u64);
                let mut w = weights(n, k.next_multiple_of(QK_K), 100 + idx as u64);
                if k % QK_K != 0 {
                    w = (q8_0_weight(n, k, 100 + idx as u64), Vec::new());
                }
                each_format(&w, |qw, q8k| {
                    let mut y = vec![f32::NAN; rows * n];
                    matmul_t_with(p, &x, rows, k, qw, n, &mut y);
                    let mut yp = vec![f32::NAN; rows * n];
                    matmul_t_with(Path::Portable, &x, rows, k, qw, n, &mut yp);
                    let same = y.iter().zip(&yp).all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(
                        same,
                        "{isa} {p:?} {rows}x{n}x{k} q8k={q8k}: not the portable bits"
                    );

                    let wd = dequant(qw, n, k);
                    let xq = quantize_rows(&x, rows, k, q8k, Path::Portable);
                    let xd = dequant_x(&xq, q8k);
                    let xf: Vec<f64> = x.iter().map(|&v| v as f64).collect();
                    for r in 0..rows {
                        for j in 0..n {
                            let wrow = &wd[j * k..(j + 1) * k];
                            // Exact on the quantized values, up to f32 rounding.
                            let (want, mag) = dot(&xd[r * k..(r + 1) * k], wrow);
                            let got = y[r * n + j] as f64;
                            assert!(
                                (got - want).abs() <= 1e-5 * mag + 1e-6,
                                "{isa} {p:?} {rows}x{n}x{k} q8k={q8k} ({r},{j}): {got} vs {want}"
                            );
                            // Against the float row: the activation rounding, at most half a
                            // step per value.
                            let (exact, _) = dot(&xf[r * k..(r + 1) * k], wrow);
                            let block = qw.block();
                            let bound: f64 = (0..k)
                                .map(|i| {
                                    let step = xq.d[r * (k / block) + i / block].abs() as f64;
                                    0.5 * step * wrow[i].abs()
                                })
                                .sum::<f64>()
                                * 1.01
                                + 1e-5 * mag;
                            assert!(
                                (got - exact).abs() <= bound,
                                "{isa} {p:?} ({r},{j}) q8k={q8k}: {got} vs float {exact}, bound {bound}"
                            );
                        }
                    }
                });
            }
        }
    });
}

#[test]
fn a_row_alone_equals_the_same_row_among_others() {
    let (rows, n, k) = (18, 29, 2 * QK_K);
    let x = values(rows * k, 7);
    let w = weights(n, k, 8);
    // `q8_0` with an odd block count (the last block outside the 512-bit pairs).
    let k_odd = 17 * QK8_0;
    let x_odd = values(rows * k_odd, 9);
    let w_odd = (q8_0_weight(n, k_odd, 10), Vec::new());
    with_each_level(|isa| {
        for p in paths_at(isa) {
            for (x, w, k) in [(&x, &w, k), (&x_odd, &w_odd, k_odd)] {
                each_format(w, |qw, q8k| {
                    let mut all = vec![0f32; rows * n];
                    matmul_t_with(p, x, rows, k, qw, n, &mut all);
                    for r in [0, 5, 16, 17] {
                        let mut one = vec![0f32; n];
                        matmul_t_with(p, &x[r * k..(r + 1) * k], 1, k, qw, n, &mut one);
                        assert_eq!(
                            one.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                            all[r * n..(r + 1) * n]
                                .iter()
                                .map(|v| v.to_bits())
                                .collect::<Vec<_>>(),
                            "{isa} {p:?} q8k={q8k} k={k} row {r}"
                        );
                    }
                });
            }
        }
    });
}

#[test]
fn q4k_scales_and_mins_unpack_as_ggml_packs_them() {
    let w = q4k_weight(64, QK_K, 5);
    for blk in &w {
        let (sc, m) = blk.scales_mins();
        for j in 0..8 {
            assert_eq!((sc[j], m[j]), blk.scale_min(j));
        }
    }
}

#[test]
fn q8_0_activations_round_as_ggml_does() {
    // Block maximum 127 → d = 1, values rounded half away from zero.
    let mut x = vec![0f32; 32];
    x[0] = 127.0;
    x[1] = 2.5;
    x[2] = -2.5;
    x[3] = 0.49;
    let q = quantize_rows(&x, 1, 32, false, Path::Portable);
    assert_eq!(q.d, vec![1.0]);
    assert_eq!(&q.qs[..4], &[127, 3, -3, 0]);
    // All zeros: scale 0, quants 0.
    let q = quantize_rows(&[0.0; 64], 1, 64, false, path());
    assert_eq!(q.d, vec![0.0, 0.0]);
    assert!(q.qs.iter().all(|&v| v == 0));
}

#[test]
fn q8k_activations_keep_sums_and_order() {
    let x = values(2 * QK_K, 3);
    let q = quantize_rows(&x, 1, 2 * QK_K, true, Path::Portable);
    for b in 0..2 {
        let max =
            x[b * QK_K..(b + 1) * QK_K]
                .iter()
                .fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
        assert_eq!(q.d[b], 1.0 / (-127.0 / max));
        for j in 0..8 {
            let s: i32 = (0..32)
                .map(|t| q.qs[b * QK_K + q8k_order(32 * j + t)] as i32)
                .sum();
            assert_eq!(s, q.sums[b * 8 + j]);
        }
        // The value of largest magnitude maps to −127.
        let imax = (0..QK_K).find(|&i| x[b * QK_K + i] == max).unwrap();
        assert_eq!(q.qs[b * QK_K + q8k_order(imax)], -127);
    }
    // The SIMD paths quantize identically.
    let q2 = quantize_rows(&x, 1, 2 * QK_K, true, path());
    assert_eq!(
        (q.qs.clone(), q.d.clone(), q.sums.clone()),
        (q2.qs, q2.d, q2.sums)
    );
    let (a, b) = (
        quantize_rows(&x, 4, QK_K / 2, false, Path::Portable),
        quantize_rows(&x, 4, QK_K / 2, false, path()),
    );
    assert_eq!((a.qs, a.d), (b.qs, b.d));
}

#[test]
fn no_vnni_path_is_tested_when_the_cpu_has_vnni() {
    // `paths_at` covers the non-VNNI 512-bit path by asking for it directly; the dispatch
    // switch exists for completeness.
    let _guard = crate::isa::LEVEL_LOCK
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    NO_VNNI.store(true, std::sync::atomic::Ordering::Relaxed);
    let p = path_for(Isa::Avx512Bf16);
    NO_VNNI.store(false, std::sync::atomic::Ordering::Relaxed);
    assert!(!matches!(p, Path::Avx512 { vnni: true }));
}
