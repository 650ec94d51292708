//! Micro-benchmark of quantized products at decode row counts on the 1.3B model's shapes:
//! `dsvl_kernels::quant` against candle's `k_quants::matmul`, in GB/s of weight read and as a
//! share of the machine's measured memory bandwidth.
//! `cargo run --release -p dsvl --example quant_bench [iters] [rows,...]`.
//!
//! Each shape is timed over enough copies of the weight (at least 512 MB in all, used in turn)
//! that every call reads its weight from memory, as a decode step does, not from the caches.
use std::time::Instant;

use candle_core::quantized::k_quants::{self, BlockQ4K, BlockQ8_0, GgmlType};
use dsvl_kernels::quant as kq;
use rayon::prelude::*;

/// candle's blocks seen as the kernels' (the same `#[repr(C)]` layout).
fn q8_0_view(b: &[BlockQ8_0]) -> &[kq::BlockQ8_0] {
    assert_eq!(size_of::<BlockQ8_0>(), size_of::<kq::BlockQ8_0>());
    assert_eq!(align_of::<BlockQ8_0>(), align_of::<kq::BlockQ8_0>());
    // SAFETY: both are `#[repr(C)] { d: half::f16, qs: [i8; 32] }`, same size and alignment.
    unsafe { std::slice::from_raw_parts(b.as_ptr().cast(), b.len()) }
}

fn q4k_view(b: &[BlockQ4K]) -> &[kq::BlockQ4K] {
    assert_eq!(size_of::<BlockQ4K>(), size_of::<kq::BlockQ4K>());
    assert_eq!(align_of::<BlockQ4K>(), align_of::<kq::BlockQ4K>());
    // SAFETY: both are `#[repr(C)] { d, dmin: f16, scales: [u8; 12], qs: [u8; 128] }`.
    unsafe { std::slice::from_raw_parts(b.as_ptr().cast(), b.len()) }
}

/// Best-of-5 parallel sequential read of 1 GiB, GB/s (10⁹ bytes).
fn bandwidth_gb_s() -> f64 {
    let buf: Vec<u64> = (0..(1usize << 27))
        .into_par_iter()
        .map(|i| i as u64)
        .collect();
    let mut best = 0f64;
    for _ in 0..5 {
        let t = Instant::now();
        let s: u64 = buf
            .par_chunks(1 << 16)
            .map(|c| {
                let mut acc = [0u64; 4];
                for q in c.chunks_exact(4) {
                    for j in 0..4 {
                        acc[j] = acc[j].wrapping_add(q[j]);
                    }
                }
                acc.iter().fold(0u64, |a, b| a.wrapping_add(*b))
            })
            .reduce(|| 0, |a, b| a.wrapping_add(b));
        std::hint::black_box(s);
        best = best.max((buf.len() * 8) as f64 / t.elapsed().as_secs_f64() / 1e9);
    }
    best
}

/// Seconds per call of `f(copy)`, cycling over the copies; best of 3 rounds.
fn time(iters: usize, copies: usize, mut f: impl FnMut(usize)) -> f64 {
    for c in 0..copies.min(2) {
        f(c);
    }
    let mut best = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        for i in 0..iters {
            f(i % copies);
        }
        best = best.min(t.elapsed().as_secs_f64() / iters as f64);
    }
    best
}

fn randn(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn main() -> candle_core::Result<()> {
    let mut args = std::env::args().skip(1);
    let iters: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(20);
    let row_counts: Vec<usize> = args
        .next()
        .map(|s| s.split(',').filter_map(|v| v.parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 4]);
    let bw = bandwidth_gb_s();
    println!(
        "threads {}, memory read bandwidth {bw:.1} GB/s, kernel path {:?}",
        rayon::current_num_threads(),
        kq::path()
    );
    for &(n, k) in &[
        (11264usize, 2048usize),
        (2048, 5632),
        (2048, 2048),
        (102400, 2048),
    ] {
        let w = randn(n * k, 1);
        for fmt in ["q8_0", "q4_k"] {
            let (bytes, blocks8, blocks4): (usize, Vec<Vec<BlockQ8_0>>, Vec<Vec<BlockQ4K>>) =
                match fmt {
                    "q8_0" => {
                        let mut b = vec![BlockQ8_0::zeros(); n * k / 32];
                        BlockQ8_0::from_float(&w, &mut b);
                        let bytes = b.len() * size_of::<BlockQ8_0>();
                        let copies = (512usize << 20).div_ceil(bytes);
                        (bytes, vec![b; copies], Vec::new())
                    }
                    _ => {
                        let mut b = vec![BlockQ4K::zeros(); n * k / 256];
                        BlockQ4K::from_float(&w, &mut b);
                        let bytes = b.len() * size_of::<BlockQ4K>();
                        let copies = (512usize << 20).div_ceil(bytes);
                        (bytes, Vec::new(), vec![b; copies])
                    }
                };
            let copies = blocks8.len().max(blocks4.len());
            let gb = bytes as f64 / 1e9;
            for &rows in &row_counts {
                let x = randn(rows * k, 2);
                let mut y = vec![0f32; rows * n];
                let ours = time(iters, copies, |c| match fmt {
                    "q8_0" => kq::matmul_t(
                        &x,
                        rows,
                        k,
                        kq::QWeight::Q8_0(q8_0_view(&blocks8[c])),
                        n,
                        &mut y,
                    ),
                    _ => kq::matmul_t(
                        &x,
                        rows,
                        k,
                        kq::QWeight::Q4K(q4k_view(&blocks4[c])),
                        n,
                        &mut y,
                    ),
                });
                let theirs = time(iters, copies, |c| {
                    match fmt {
                        "q8_0" => k_quants::matmul((rows, k, n), &x, &blocks8[c], &mut y),
                        _ => k_quants::matmul((rows, k, n), &x, &blocks4[c], &mut y),
                    }
                    .unwrap()
                });
                println!(
                    "{fmt} {n:>6}x{k:<5} rows {rows:>2}: ours {:7.3} ms {:5.1} GB/s ({:3.0} %)   candle {:7.3} ms {:5.1} GB/s ({:3.0} %)   {:.2}x",
                    ours * 1e3,
                    gb / ours,
                    100.0 * gb / ours / bw,
                    theirs * 1e3,
                    gb / theirs,
                    100.0 * gb / theirs / bw,
                    theirs / ours
                );
            }
        }
    }
    Ok(())
}
