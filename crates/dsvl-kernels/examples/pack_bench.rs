//! How fast a weight is packed at load: `cargo run --release -p dsvl-kernels --example pack_bench`.
use std::time::Instant;

use dsvl_kernels::PackedB;
use half::bf16;

fn main() {
    let (n, k) = (5632, 2048);
    let w: Vec<f32> = (0..n * k).map(|i| (i % 977) as f32 * 1e-3).collect();
    let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
    for _ in 0..3 {
        let t = Instant::now();
        let p = PackedB::from_bf16(&wb, n, k);
        let tb = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let q = PackedB::from_f32(&w, n, k);
        let tf = t.elapsed().as_secs_f64();
        println!(
            "{n}x{k}: bf16 {:.1} ms ({:.2} GB/s), f32 {:.1} ms ({:.2} GB/s)",
            tb * 1e3,
            p.bytes() as f64 / tb / 1e9,
            tf * 1e3,
            q.bytes() as f64 / tf / 1e9
        );
    }
}
