//! Micro-benchmark of one linear layer at decode and prefill row counts, per weight storage:
//! `cargo run --release -p dsvl --example linear_bench [iters]`.
use std::time::Instant;

use candle_core::{DType, Device, Module, Tensor};
use dsvl::nn::rowmat::{matmul_rows, WeightRows};

fn time<F: FnMut() -> candle_core::Result<()>>(iters: usize, mut f: F) -> candle_core::Result<f64> {
    f()?;
    let t = Instant::now();
    for _ in 0..iters {
        f()?;
    }
    Ok(t.elapsed().as_secs_f64() / iters as f64)
}

fn main() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    let iters: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    for &(out, inp) in &[(11264usize, 2048usize), (2048, 5632), (102400, 2048)] {
        let w = Tensor::randn(0f32, 1.0, (out, inp), &dev)?;
        let wt = w.t()?.contiguous()?;
        let wv = w.flatten_all()?.to_vec1::<f32>()?;
        let wb = w
            .to_dtype(DType::BF16)?
            .flatten_all()?
            .to_vec1::<half::bf16>()?;
        let gb = (out * inp * 4) as f64 / 1e9;
        for rows in [1usize, 4, 16] {
            let x = Tensor::randn(0f32, 1.0, (rows, inp), &dev)?;
            let xv = x.flatten_all()?.to_vec1::<f32>()?;
            let a = time(iters, || x.matmul(&wt).map(|_| ()))?;
            let b = time(iters, || x.matmul(&w.t()?).map(|_| ()))?;
            let c = time(iters, || {
                matmul_rows(&xv, rows, inp, WeightRows::F32(&wv), out);
                Ok(())
            })?;
            let d = time(iters, || {
                matmul_rows(&xv, rows, inp, WeightRows::Bf16(&wb), out);
                Ok(())
            })?;
            println!(
                "{out}x{inp} rows {rows:>3}: candle [in,out] {:7.2} ms ({:5.1} GB/s)  candle w.t() {:7.2} ms  rowmat f32 {:7.2} ms ({:5.1} GB/s)  rowmat bf16 {:7.2} ms ({:5.1} GB/s)",
                a * 1e3, gb / a, b * 1e3, c * 1e3, gb / c, d * 1e3, gb / 2.0 / d
            );
        }
        let x = Tensor::randn(0f32, 1.0, (700, inp), &dev)?;
        let a = time(2, || x.matmul(&wt).map(|_| ()))?;
        let b = time(2, || x.matmul(&w.t()?).map(|_| ()))?;
        println!(
            "{out}x{inp} rows 700: candle [in,out] {:.1} ms  candle w.t() {:.1} ms",
            a * 1e3,
            b * 1e3
        );
        let _ = Module::forward(&candle_nn::Linear::new(w.clone(), None), &x)?;
    }
    Ok(())
}
