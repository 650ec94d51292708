//! Every path against a scalar f64 reference, on shapes that exercise the tails (rows not a
//! multiple of the tile, columns not a multiple of the panel, odd `k`, `k` over one cache
//! block), plus batch invariance and the widening paths' equality with the f32 ones.

use half::bf16;

use super::*;
use crate::isa::with_each_level;

/// A deterministic pseudo-random sequence in [-1, 1).
fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn reference(a: &[f32], m: usize, w: &[f32], n: usize, k: usize) -> Vec<f64> {
    let mut c = vec![0f64; m * n];
    for r in 0..m {
        for j in 0..n {
            c[r * n + j] = (0..k)
                .map(|i| a[r * k + i] as f64 * w[j * k + i] as f64)
                .sum();
        }
    }
    c
}

/// Largest |got − want| relative to Σ|a·w| of the element (the scale of the rounding error).
fn worst_error(
    got: &[f32],
    want: &[f64],
    a: &[f32],
    w: &[f32],
    m: usize,
    n: usize,
    k: usize,
) -> f64 {
    let mut worst = 0f64;
    for r in 0..m {
        for j in 0..n {
            let scale: f64 = (0..k)
                .map(|i| (a[r * k + i] as f64 * w[j * k + i] as f64).abs())
                .sum::<f64>()
                .max(1e-30);
            worst = worst.max((got[r * n + j] as f64 - want[r * n + j]).abs() / scale);
        }
    }
    worst
}

const SHAPES: [(usize, usize, usize); 9] = [
    (1, 1, 1),
    (1, 32, 64),
    (1, 77, 301),
    (5, 33, 17),
    (12, 64, 256),
    (13, 100, 513),
    (25, 31, 600),
    (7, 65, 1),
    (40, 96, 260),
];

#[test]
fn f32_paths_match_the_reference() {
    with_each_level(|isa| {
        for (idx, &(m, n, k)) in SHAPES.iter().enumerate() {
            let a = values(m * k, idx as u64);
            let w = values(n * k, 100 + idx as u64);
            let packed = PackedB::from_f32(&w, n, k);
            let mut c = vec![f32::NAN; m * n];
            gemm(
                Lhs::F32 {
                    data: &a,
                    stride: k,
                },
                m,
                &packed,
                &mut c,
            );
            let err = worst_error(&c, &reference(&a, m, &w, n, k), &a, &w, m, n, k);
            // f32 accumulation over k terms: a few ulps per term at most.
            assert!(
                err < 4e-7 * (k as f64).sqrt().max(1.0) * 4.0,
                "{isa} {m}x{n}x{k}: {err:e}"
            );
        }
    });
}

#[test]
fn bf16_paths_match_the_reference() {
    with_each_level(|isa| {
        for (idx, &(m, n, k)) in SHAPES.iter().enumerate() {
            // Operands that are exactly bf16, so only the accumulation rounds.
            let round = |v: Vec<f32>| -> Vec<bf16> { v.into_iter().map(bf16::from_f32).collect() };
            let a = round(values(m * k, idx as u64));
            let w = round(values(n * k, 100 + idx as u64));
            let af: Vec<f32> = a.iter().map(|v| v.to_f32()).collect();
            let wf: Vec<f32> = w.iter().map(|v| v.to_f32()).collect();
            let packed = PackedB::from_bf16(&w, n, k);
            assert_eq!(packed.unpack_f32(), wf);
            let want = reference(&af, m, &wf, n, k);
            for lhs in [
                Lhs::Bf16 {
                    data: &a,
                    stride: k,
                },
                Lhs::F32 {
                    data: &af,
                    stride: k,
                },
            ] {
                let mut c = vec![f32::NAN; m * n];
                gemm(lhs, m, &packed, &mut c);
                let err = worst_error(&c, &want, &af, &wf, m, n, k);
                assert!(
                    err < 4e-7 * (k as f64).sqrt().max(1.0) * 4.0,
                    "{isa} {m}x{n}x{k}: {err:e}"
                );
            }
        }
    });
}

/// A row's result is bit for bit the same alone, in any tile position, and with any number of
/// other rows; and the widening bf16 paths compute exactly the f32 path on the widened weight.
#[test]
fn rows_are_independent_and_widening_is_exact() {
    let (n, k) = (70, 530);
    let w = values(n * k, 7);
    let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
    let wbf: Vec<f32> = wb.iter().map(|v| v.to_f32()).collect();
    let (pf, pb, pwf) = (
        PackedB::from_f32(&w, n, k),
        PackedB::from_bf16(&wb, n, k),
        PackedB::from_f32(&wbf, n, k),
    );
    with_each_level(|isa| {
        for packed in [&pf, &pb] {
            let m = 29;
            let a = values(m * k, 3);
            let mut all = vec![0f32; m * n];
            gemm(
                Lhs::F32 {
                    data: &a,
                    stride: k,
                },
                m,
                packed,
                &mut all,
            );
            for r in [0, 5, 11, 12, 13, 28] {
                let mut one = vec![0f32; n];
                gemm(
                    Lhs::F32 {
                        data: &a[r * k..(r + 1) * k],
                        stride: k,
                    },
                    1,
                    packed,
                    &mut one,
                );
                assert_eq!(one, all[r * n..(r + 1) * n], "{isa}: row {r}");
            }
        }
        {
            let a = values(9 * k, 4);
            let (mut cb, mut cf) = (vec![0f32; 9 * n], vec![0f32; 9 * n]);
            gemm(
                Lhs::F32 {
                    data: &a,
                    stride: k,
                },
                9,
                &pb,
                &mut cb,
            );
            gemm(
                Lhs::F32 {
                    data: &a,
                    stride: k,
                },
                9,
                &pwf,
                &mut cf,
            );
            assert_eq!(cb, cf, "{isa}");
        }
    });
}

#[test]
fn strided_rows_and_empty_shapes() {
    let (m, n, k, stride) = (3, 40, 20, 27);
    let a = values(m * stride, 1);
    let w = values(n * k, 2);
    let dense: Vec<f32> = (0..m)
        .flat_map(|r| a[r * stride..r * stride + k].to_vec())
        .collect();
    let packed = PackedB::from_f32(&w, n, k);
    let (mut c1, mut c2) = (vec![0f32; m * n], vec![0f32; m * n]);
    gemm(Lhs::F32 { data: &a, stride }, m, &packed, &mut c1);
    gemm(
        Lhs::F32 {
            data: &dense,
            stride: k,
        },
        m,
        &packed,
        &mut c2,
    );
    assert_eq!(c1, c2);
    let empty = PackedB::from_f32(&[], 5, 0);
    let mut c = vec![f32::NAN; 2 * 5];
    gemm(
        Lhs::F32 {
            data: &[],
            stride: 0,
        },
        2,
        &empty,
        &mut c,
    );
    assert!(c.iter().all(|&v| v == 0.0));
    gemm(
        Lhs::F32 {
            data: &[],
            stride: k,
        },
        0,
        &packed,
        &mut [],
    );
}
