//! GEMM micro-benchmark on the model's shapes: each of our paths (f32 and bf16 weights) against
//! candle's matmul, in GFLOP/s, with the threads of the rayon pool (`RAYON_NUM_THREADS`).
//!
//! `cargo run --release -p dsvl-kernels --example gemm_bench [iters] [rows]`
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use dsvl_kernels::{gemm::gemm_with, isa::Isa, Lhs, PackedB};
use half::bf16;

fn best_of(iters: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut best = f64::INFINITY;
    for _ in 0..iters {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
    }
    best
}

fn main() -> candle_core::Result<()> {
    let mut args = std::env::args().skip(1);
    let iters: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(5);
    let rows: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(700);
    let dev = Device::Cpu;
    println!(
        "threads {}, detected {}, features {:?}",
        rayon::current_num_threads(),
        Isa::detected(),
        Isa::cpu_features()
    );
    // (name, out, in): the 1.3B language model and SigLIP-L's linears.
    let shapes = [
        ("llm q/o 2048x2048", 2048usize, 2048usize),
        ("llm gate/up 5632x2048", 5632, 2048),
        ("llm down 2048x5632", 2048, 5632),
        ("siglip fc1 4096x1024", 4096, 1024),
        ("lm_head 102400x2048", 102400, 2048),
    ];
    for (name, n, k) in shapes {
        let m = rows;
        if n > 50_000 && m > 16 {
            continue; // lm_head runs once per step (one row per sequence)
        }
        let flop = 2.0 * (m * n * k) as f64 / 1e9;
        let w = Tensor::randn(0f32, 1.0, (n, k), &dev)?;
        let x = Tensor::randn(0f32, 1.0, (m, k), &dev)?;
        let wb = w.to_dtype(DType::BF16)?;
        let xb = x.to_dtype(DType::BF16)?;
        let t_f32 = best_of(iters, || {
            x.matmul(&w.t().unwrap()).unwrap();
        });
        let t_bf16 = best_of(iters, || {
            xb.matmul(&wb.t().unwrap()).unwrap();
        });
        let wv = w.flatten_all()?.to_vec1::<f32>()?;
        let xv = x.flatten_all()?.to_vec1::<f32>()?;
        let wbv = wb.flatten_all()?.to_vec1::<bf16>()?;
        let xbv = xb.flatten_all()?.to_vec1::<bf16>()?;
        let pf = PackedB::from_f32(&wv, n, k);
        let pb = PackedB::from_bf16(&wbv, n, k);
        let mut c = vec![0f32; m * n];
        let mut line = format!(
            "{name:<24} m {m:>4}: candle f32 {:6.1}  candle bf16 {:6.1} |",
            flop / t_f32,
            flop / t_bf16
        );
        for isa in Isa::ALL.into_iter().filter(|&i| i <= Isa::detected()) {
            let tf = best_of(iters, || {
                gemm_with(
                    isa,
                    Lhs::F32 {
                        data: &xv,
                        stride: k,
                    },
                    m,
                    &pf,
                    &mut c,
                )
            });
            let tb = best_of(iters, || {
                gemm_with(
                    isa,
                    Lhs::Bf16 {
                        data: &xbv,
                        stride: k,
                    },
                    m,
                    &pb,
                    &mut c,
                )
            });
            line += &format!(" {isa} f32 {:6.1} bf16 {:6.1} |", flop / tf, flop / tb);
        }
        println!("{line}  (GFLOP/s)");
        if m <= 4 {
            // Decode: weight bytes read per second.
            let tb = best_of(iters, || {
                gemm_with(
                    Isa::detected(),
                    Lhs::Bf16 {
                        data: &xbv,
                        stride: k,
                    },
                    m,
                    &pb,
                    &mut c,
                )
            });
            let tf = best_of(iters, || {
                gemm_with(
                    Isa::detected(),
                    Lhs::F32 {
                        data: &xv,
                        stride: k,
                    },
                    m,
                    &pf,
                    &mut c,
                )
            });
            println!(
                "{:<24} weight read: bf16 {:.1} GB/s, f32 {:.1} GB/s",
                "",
                (n * k * 2) as f64 / tb / 1e9,
                (n * k * 4) as f64 / tf / 1e9
            );
        }
    }
    Ok(())
}
