//! Every path of `dsvl_kernels::quant` on the 1.3B model's decode shapes, in GB/s of weight
//! read: `cargo run --release -p dsvl-kernels --example quant_paths [iters] [rows,...]`.
//! The weights are random blocks, in enough copies (512 MB in all, used in turn) that each call
//! reads its weight from memory. (`dsvl`'s `examples/quant_bench.rs` compares with candle.)
use std::time::Instant;

use dsvl_kernels::isa::Isa;
use dsvl_kernels::quant::{self as kq, BlockQ4K, BlockQ8_0, Path, QWeight};
use half::f16;

fn rng(seed: u64) -> impl FnMut() -> u64 {
    let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    }
}

/// Nanoseconds all of this process's threads have run on a CPU (Linux; 0 elsewhere): under
/// load from other processes, time on CPU per call says more than wall time.
fn cpu_ns() -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    dir.filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let iters: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(20);
    let row_counts: Vec<usize> = args
        .next()
        .map(|s| s.split(',').filter_map(|v| v.parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 4]);
    let mut paths = vec![kq::path_for(Isa::Portable), kq::path_for(Isa::Avx2)];
    if let p @ Path::Avx512 { vnni } = kq::path_for(Isa::Avx512) {
        if vnni {
            paths.push(Path::Avx512 { vnni: false });
        }
        paths.push(p);
    }
    paths.dedup();
    let threads = rayon::current_num_threads() as f64;
    {
        // The yardstick: a parallel sequential read of 1 GiB (sum of u64s).
        use rayon::prelude::*;
        let buf: Vec<u64> = (0..1u64 << 27).into_par_iter().collect();
        let (mut best, mut best_cpu) = (f64::MAX, f64::MAX);
        for _ in 0..5 {
            let (t, c) = (Instant::now(), cpu_ns());
            let s: u64 = buf
                .par_chunks(1 << 16)
                .map(|c| {
                    let mut acc = [0u64; 8];
                    for q in c.chunks_exact(8) {
                        for j in 0..8 {
                            acc[j] = acc[j].wrapping_add(q[j]);
                        }
                    }
                    acc.iter().fold(0u64, |a, b| a.wrapping_add(*b))
                })
                .reduce(|| 0, |a, b| a.wrapping_add(b));
            std::hint::black_box(s);
            best = best.min(t.elapsed().as_secs_f64());
            best_cpu = best_cpu.min((cpu_ns() - c) as f64 * 1e-9 / threads);
        }
        let gb = (buf.len() * 8) as f64 / 1e9;
        println!(
            "threads {threads}: memory read {:.1} GB/s (cpu {:.1})",
            gb / best,
            gb / best_cpu
        );
    }
    for &(n, k) in &[
        (11264usize, 2048usize),
        (2048, 5632),
        (2048, 2048),
        (102400, 2048),
    ] {
        let mut r = rng(1);
        let q8: Vec<BlockQ8_0> = (0..n * k / 32)
            .map(|_| BlockQ8_0 {
                d: f16::from_f32(0.01),
                qs: std::array::from_fn(|_| (r() % 255) as i8),
            })
            .collect();
        let q4: Vec<BlockQ4K> = (0..n * k / 256)
            .map(|_| BlockQ4K {
                d: f16::from_f32(0.001),
                dmin: f16::from_f32(0.001),
                scales: std::array::from_fn(|_| r() as u8),
                qs: std::array::from_fn(|_| r() as u8),
            })
            .collect();
        for fmt in ["q8_0", "q4_k"] {
            let bytes = if fmt == "q8_0" {
                std::mem::size_of_val(&q8[..])
            } else {
                std::mem::size_of_val(&q4[..])
            };
            let copies = (512usize << 20).div_ceil(bytes);
            let c8: Vec<Vec<BlockQ8_0>> = if fmt == "q8_0" {
                vec![q8.clone(); copies]
            } else {
                Vec::new()
            };
            let c4: Vec<Vec<BlockQ4K>> = if fmt == "q4_k" {
                vec![q4.clone(); copies]
            } else {
                Vec::new()
            };
            let w = |i: usize| {
                if fmt == "q8_0" {
                    QWeight::Q8_0(&c8[i % copies])
                } else {
                    QWeight::Q4K(&c4[i % copies])
                }
            };
            for &rows in &row_counts {
                let x: Vec<f32> = {
                    let mut r = rng(2);
                    (0..rows * k)
                        .map(|_| (r() >> 40) as f32 / (1u64 << 23) as f32 - 1.0)
                        .collect()
                };
                let mut y = vec![0f32; rows * n];
                let mut line = format!("{fmt} {n:>6}x{k:<5} rows {rows:>2}:");
                for &p in &paths {
                    if p == Path::Portable && (n > 20000 || rows > 4) {
                        continue;
                    }
                    let mut best = f64::MAX;
                    let mut best_cpu = f64::MAX;
                    let mut i = 0;
                    for _ in 0..3 {
                        let (t, c) = (Instant::now(), cpu_ns());
                        for _ in 0..iters {
                            kq::matmul_t_with(p, &x, rows, k, w(i), n, &mut y);
                            i += 1;
                        }
                        best = best.min(t.elapsed().as_secs_f64() / iters as f64);
                        let cpu = (cpu_ns() - c) as f64 * 1e-9 / iters as f64 / threads;
                        best_cpu = best_cpu.min(cpu);
                    }
                    let name = match p {
                        Path::Portable => "portable",
                        Path::Avx2 => "avx2",
                        Path::Avx512 { vnni: false } => "avx512",
                        Path::Avx512 { vnni: true } => "vnni",
                    };
                    line += &format!(
                        "  {name} {:6.2} ms {:5.1} GB/s (cpu {:5.1})",
                        best * 1e3,
                        bytes as f64 / best / 1e9,
                        bytes as f64 / best_cpu / 1e9
                    );
                }
                println!("{line}");
            }
        }
    }
}
