//! `C = A·Bᵀ` for a linear layer: `A` the activations `[m, k]` (f32 or bf16), `B` the weight
//! `[n, k]` in the checkpoint's layout, packed once at load into column panels ([`PackedB`]),
//! `C` `[m, n]` f32.
//!
//! ## Layout
//! `B` is cut into panels of [`NR`] = 32 output columns (the last one zero-padded):
//! - f32: a panel is `[k][32]`, one row of 32 weights per input index;
//! - bf16: a panel is `[⌈k/2⌉][32][2]`, two consecutive input indices of a column side by side
//!   (`k` zero-padded to even), the operand layout of AVX512-BF16's `vdpbf16ps`, which also
//!   widens to f32 with one shift or mask per half on CPUs without it.
//!
//! Every path reads both layouts, so a weight packed once serves whatever level [`crate::isa`]
//! allows at the call.
//!
//! ## Arithmetic
//! Each output element is accumulated in f32 over `k` in ascending order, in blocks of
//! [`KC`] inputs: within a block one register chain (one FMA or one `vdpbf16ps` pair-step per
//! input pair), then the block is added to `C`. The order depends only on `k`, never on `m`,
//! on the row's place in its tile, on `n` or on the threads, so a row's result is the same
//! whatever rows are computed with it (batch invariance). bf16 weights with f32 activations
//! (the widening paths) compute exactly what the f32 path computes on the widened weight;
//! bf16 activations with bf16 weights take `vdpbf16ps` where the CPU has it, which adds each
//! pair of products into the chain as one step (round-to-nearest-even, denormals flushed), as
//! PyTorch's oneDNN bf16 products do; f32 activations are never rounded to bf16.
//!
//! ## Threads
//! Panels are split over rayon's pool (sized by `--threads` through `RAYON_NUM_THREADS`) in
//! contiguous ranges; `A` is packed once and shared; each task writes its own columns of `C`.

mod portable;
#[cfg(target_arch = "x86_64")]
mod x86;

use std::sync::atomic::{AtomicU64, Ordering};

use half::bf16;
use rayon::prelude::*;

use crate::isa::{self, Isa};

/// Output columns per panel.
pub const NR: usize = 32;
/// Inputs per cache block: a bf16 panel block is 32 × 256 × 2 B = 16 KiB, an f32 one 32 KiB,
/// so it stays in L1 while every row tile of `A` passes over it.
pub const KC: usize = 256;

/// A weight `[n, k]` packed into panels (module docs).
#[derive(Clone)]
pub struct PackedB {
    n: usize,
    k: usize,
    data: PackedData,
}

#[derive(Clone)]
enum PackedData {
    F32(Vec<f32>),
    /// bf16 bit patterns.
    Bf16(Vec<u16>),
}

/// The element type of a packed weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightType {
    F32,
    Bf16,
}

/// Activations `[m, k]`, row-major, rows `stride` elements apart.
#[derive(Clone, Copy)]
pub enum Lhs<'a> {
    F32 { data: &'a [f32], stride: usize },
    Bf16 { data: &'a [bf16], stride: usize },
}

impl Lhs<'_> {
    fn get_bf16_bits(&self, r: usize, c: usize) -> u16 {
        match *self {
            // Not reached: f32 activations take an f32 form (`plan`).
            Lhs::F32 { data, stride } => bf16::from_f32(data[r * stride + c]).to_bits(),
            Lhs::Bf16 { data, stride } => data[r * stride + c].to_bits(),
        }
    }
    fn fits(&self, m: usize, k: usize) -> bool {
        let (len, stride) = match *self {
            Lhs::F32 { data, stride } => (data.len(), stride),
            Lhs::Bf16 { data, stride } => (data.len(), stride),
        };
        m == 0 || (stride >= k && len >= (m - 1) * stride + k)
    }
}

impl PackedB {
    /// Packs `w` `[n, k]` (row-major f32) over the threads.
    pub fn from_f32(w: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k, "weight is not [n, k]");
        let panels = n.div_ceil(NR);
        let mut data = vec![0f32; panels * k * NR];
        if k > 0 {
            data.par_chunks_mut(k * NR)
                .enumerate()
                .for_each(|(p, panel)| fill_panel_f32(panel, w, p, n, k));
        }
        Self {
            n,
            k,
            data: PackedData::F32(data),
        }
    }

    /// Packs `w` `[n, k]` (row-major bf16) over the threads.
    pub fn from_bf16(w: &[bf16], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k, "weight is not [n, k]");
        let panels = n.div_ceil(NR);
        let kp = k.div_ceil(2);
        let mut data = vec![0u16; panels * kp * NR * 2];
        if k > 0 {
            data.par_chunks_mut(kp * NR * 2)
                .enumerate()
                .for_each(|(p, panel)| fill_panel_bf16(panel, w, p, n, k));
        }
        Self {
            n,
            k,
            data: PackedData::Bf16(data),
        }
    }

    /// Packs `b` given as `[k, n]` row-major f32 (the right operand of `A·B`, e.g. the values
    /// of attention), on the calling thread.
    pub fn from_f32_kn(b: &[f32], k: usize, n: usize) -> Self {
        assert_eq!(b.len(), n * k, "B is not [k, n]");
        let panels = n.div_ceil(NR);
        let mut data = vec![0f32; panels * k * NR];
        for (i, row) in b.chunks_exact(n.max(1)).enumerate().take(k) {
            for (p, part) in row.chunks(NR).enumerate() {
                let at = p * k * NR + i * NR;
                data[at..at + part.len()].copy_from_slice(part);
            }
        }
        Self {
            n,
            k,
            data: PackedData::F32(data),
        }
    }

    /// Packs `b` given as `[k, n]` row-major bf16, on the calling thread.
    pub fn from_bf16_kn(b: &[bf16], k: usize, n: usize) -> Self {
        assert_eq!(b.len(), n * k, "B is not [k, n]");
        let panels = n.div_ceil(NR);
        let kp = k.div_ceil(2);
        let mut data = vec![0u16; panels * kp * NR * 2];
        for (i, row) in b.chunks_exact(n.max(1)).enumerate().take(k) {
            for (j, v) in row.iter().enumerate() {
                let (p, jj) = (j / NR, j % NR);
                data[p * kp * NR * 2 + (i / 2) * NR * 2 + jj * 2 + i % 2] = v.to_bits();
            }
        }
        Self {
            n,
            k,
            data: PackedData::Bf16(data),
        }
    }

    /// Packs `w` `[n, k]` on the calling thread (for per-call operands such as attention's
    /// keys, packed inside a task that already runs in parallel with others).
    pub fn from_bf16_serial(w: &[bf16], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k, "weight is not [n, k]");
        let kp = k.div_ceil(2);
        let mut data = vec![0u16; n.div_ceil(NR) * kp * NR * 2];
        if k > 0 {
            for (p, panel) in data.chunks_mut(kp * NR * 2).enumerate() {
                fill_panel_bf16(panel, w, p, n, k);
            }
        }
        Self {
            n,
            k,
            data: PackedData::Bf16(data),
        }
    }

    /// [`PackedB::from_bf16_serial`] for f32.
    pub fn from_f32_serial(w: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k, "weight is not [n, k]");
        let mut data = vec![0f32; n.div_ceil(NR) * k * NR];
        if k > 0 {
            for (p, panel) in data.chunks_mut(k * NR).enumerate() {
                fill_panel_f32(panel, w, p, n, k);
            }
        }
        Self {
            n,
            k,
            data: PackedData::F32(data),
        }
    }

    /// `(n, k)`.
    pub fn dims(&self) -> (usize, usize) {
        (self.n, self.k)
    }

    pub fn weight_type(&self) -> WeightType {
        match self.data {
            PackedData::F32(_) => WeightType::F32,
            PackedData::Bf16(_) => WeightType::Bf16,
        }
    }

    /// Bytes held (padding included).
    pub fn bytes(&self) -> usize {
        match &self.data {
            PackedData::F32(d) => d.len() * 4,
            PackedData::Bf16(d) => d.len() * 2,
        }
    }

    /// The weight back as row-major `[n, k]` f32 (for tests and for code that needs the matrix).
    pub fn unpack_f32(&self) -> Vec<f32> {
        let (n, k) = (self.n, self.k);
        let mut out = vec![0f32; n * k];
        for j in 0..n {
            for i in 0..k {
                out[j * k + i] = self.at(j, i);
            }
        }
        out
    }

    fn at(&self, j: usize, i: usize) -> f32 {
        let (p, jj) = (j / NR, j % NR);
        match &self.data {
            PackedData::F32(d) => d[p * self.k * NR + i * NR + jj],
            PackedData::Bf16(d) => {
                let kp = self.k.div_ceil(2);
                bf16::from_bits(d[p * kp * NR * 2 + (i / 2) * NR * 2 + jj * 2 + i % 2]).to_f32()
            }
        }
    }
}

/// Panel `p` of `w` `[n, k]` in the f32 layout `[k][NR]`: sequential writes, one read stream
/// per column (prefetch-friendly; the other order writes every cache line of the panel 32 times).
fn fill_panel_f32(panel: &mut [f32], w: &[f32], p: usize, n: usize, k: usize) {
    let cols = NR.min(n - p * NR);
    let rows: Vec<&[f32]> = (0..cols)
        .map(|j| &w[(p * NR + j) * k..(p * NR + j + 1) * k])
        .collect();
    for (i, out) in panel.chunks_exact_mut(NR).enumerate() {
        for (o, row) in out.iter_mut().zip(&rows) {
            *o = row[i];
        }
    }
}

/// Panel `p` of `w` `[n, k]` in the bf16 pair layout `[⌈k/2⌉][NR][2]`, written as
/// [`fill_panel_f32`] writes its panel.
fn fill_panel_bf16(panel: &mut [u16], w: &[bf16], p: usize, n: usize, k: usize) {
    let cols = NR.min(n - p * NR);
    let rows: Vec<&[bf16]> = (0..cols)
        .map(|j| &w[(p * NR + j) * k..(p * NR + j + 1) * k])
        .collect();
    for (q, out) in panel.chunks_exact_mut(2 * NR).enumerate() {
        for (pair, row) in out.chunks_exact_mut(2).zip(&rows) {
            pair[0] = row[2 * q].to_bits();
            pair[1] = row.get(2 * q + 1).map_or(0, |v| v.to_bits());
        }
    }
}

/// How a path wants `A`: rows per tile and element form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    pub isa: Isa,
    /// Rows per full tile (the last tile may have fewer).
    pub mr: usize,
    pub a: AForm,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AForm {
    /// Tile `[k'][rows]` f32, `k' = k` (f32 weights) or `k` rounded up to even (bf16 weights).
    F32,
    /// Tile `[⌈k/2⌉][rows]` u32, each two bf16 of consecutive inputs (low half first).
    Bf16Pairs,
}

/// The path for a level, weight type and activation type. bf16 × bf16 takes `vdpbf16ps`
/// where the CPU has it; f32 activations are never rounded to bf16 (a bf16 weight with f32
/// activations, e.g. DeepSeek-V2's router, takes the widening path and computes in f32).
pub(crate) fn plan(isa: Isa, w: WeightType, a_is_bf16: bool) -> Plan {
    let (mr, a) = match (isa, w, a_is_bf16) {
        (Isa::Portable, _, _) => (portable::MR, AForm::F32),
        (Isa::Avx2, _, _) => (6, AForm::F32),
        (Isa::Avx512Bf16, WeightType::Bf16, true) => (12, AForm::Bf16Pairs),
        (Isa::Avx512 | Isa::Avx512Bf16, _, _) => (12, AForm::F32),
    };
    Plan { isa, mr, a }
}

/// `A` packed into row tiles for one plan.
pub(crate) enum PackedA {
    F32 { data: Vec<f32>, kk: usize },
    Pairs { data: Vec<u32>, kp: usize },
}

fn pack_a(a: &Lhs<'_>, m: usize, k: usize, plan: Plan, w: WeightType) -> PackedA {
    let mr = plan.mr;
    let tiles = m.div_ceil(mr);
    let min_len = tiles.div_ceil(64).max(1);
    match plan.a {
        AForm::F32 => {
            let kk = match w {
                WeightType::F32 => k,
                WeightType::Bf16 => k.div_ceil(2) * 2,
            };
            let mut data = vec![0f32; m * kk];
            let a = *a;
            data.par_chunks_mut(mr * kk)
                .enumerate()
                .with_min_len(min_len)
                .for_each(|(t, tile)| {
                    let rows = mr.min(m - t * mr);
                    for r in 0..rows {
                        let row = t * mr + r;
                        match a {
                            Lhs::F32 { data, stride } => {
                                let src = &data[row * stride..row * stride + k];
                                for (i, v) in src.iter().enumerate() {
                                    tile[i * rows + r] = *v;
                                }
                            }
                            Lhs::Bf16 { data, stride } => {
                                let src = &data[row * stride..row * stride + k];
                                for (i, v) in src.iter().enumerate() {
                                    tile[i * rows + r] = v.to_f32();
                                }
                            }
                        }
                    }
                });
            PackedA::F32 { data, kk }
        }
        AForm::Bf16Pairs => {
            let kp = k.div_ceil(2);
            let mut data = vec![0u32; m * kp];
            let a = *a;
            data.par_chunks_mut(mr * kp)
                .enumerate()
                .with_min_len(min_len)
                .for_each(|(t, tile)| {
                    let rows = mr.min(m - t * mr);
                    for r in 0..rows {
                        let row = t * mr + r;
                        let bits = |i: usize| a.get_bf16_bits(row, i) as u32;
                        match a {
                            Lhs::Bf16 { data, stride } => {
                                // Two consecutive bf16 are one little-endian pair.
                                let src = &data[row * stride..row * stride + k];
                                for (p, pair) in src.chunks_exact(2).enumerate() {
                                    tile[p * rows + r] =
                                        pair[0].to_bits() as u32 | (pair[1].to_bits() as u32) << 16;
                                }
                                if k % 2 == 1 {
                                    tile[(kp - 1) * rows + r] = src[k - 1].to_bits() as u32;
                                }
                            }
                            Lhs::F32 { .. } => {
                                for p in 0..kp {
                                    let hi = if 2 * p + 1 < k { bits(2 * p + 1) } else { 0 };
                                    tile[p * rows + r] = bits(2 * p) | (hi << 16);
                                }
                            }
                        }
                    }
                });
            PackedA::Pairs { data, kp }
        }
    }
}

/// A raw output pointer shared by tasks that write disjoint columns (also used by `quant`).
#[derive(Clone, Copy)]
pub(crate) struct OutPtr(pub(crate) *mut f32);
// SAFETY: tasks write disjoint column ranges of the output (see `gemm`).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// By method, so closures capture the whole (`Send`) wrapper, not its raw field.
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}

/// One micro-tile call: rows `rows` (≤ plan.mr) of packed `A` against one panel over the
/// inputs `[k0, k0 + kc)`, into `c` (row stride `ldc`), `cols` valid columns.
pub(crate) struct Tile<'a> {
    pub a: TileA<'a>,
    pub b: TileB<'a>,
    pub rows: usize,
    pub cols: usize,
    pub c: *mut f32,
    pub ldc: usize,
    pub accumulate: bool,
}

/// The tile of `A` for one cache block, already offset to the block's first input.
pub(crate) enum TileA<'a> {
    /// `[kc][rows]` f32 (`kc` inputs).
    F32(&'a [f32]),
    /// `[kc/2][rows]` pairs.
    Pairs(&'a [u32]),
}

/// The panel of `B` for one cache block, offset to the block's first input.
pub(crate) enum TileB<'a> {
    /// `[kc][32]`.
    F32(&'a [f32]),
    /// `[kc/2][32][2]`.
    Bf16(&'a [u16]),
}

/// Multiply-adds done by [`gemm`] since the process started, all threads and callers together:
/// read before and after a stage for its achieved FLOP rate (2 FLOPs per multiply-add).
pub fn flops_done() -> u64 {
    2 * MACS.load(Ordering::Relaxed)
}

static MACS: AtomicU64 = AtomicU64::new(0);

/// The machine's practical peak for `w` weights on the active path, in GFLOP/s: the best of a
/// few products of 768 rows by a 2048 × 2048 weight (bf16 activations for bf16 weights, as a
/// bf16 model multiplies), large enough to be compute-bound on every path. About 0.1–1 s.
pub fn peak_gflops(w: WeightType) -> f64 {
    let (m, n, k) = (768, 2048, 2048);
    let vals: Vec<f32> = (0..n * k)
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
        .collect();
    let a: Vec<f32> = vals[..m * k].to_vec();
    let ab: Vec<bf16> = a.iter().map(|&v| bf16::from_f32(v)).collect();
    let packed = match w {
        WeightType::F32 => PackedB::from_f32(&vals, n, k),
        WeightType::Bf16 => {
            let wb: Vec<bf16> = vals.iter().map(|&v| bf16::from_f32(v)).collect();
            PackedB::from_bf16(&wb, n, k)
        }
    };
    let lhs = match w {
        WeightType::F32 => Lhs::F32 {
            data: &a,
            stride: k,
        },
        WeightType::Bf16 => Lhs::Bf16 {
            data: &ab,
            stride: k,
        },
    };
    let mut c = vec![0f32; m * n];
    let mut best = f64::INFINITY;
    for _ in 0..4 {
        let t = std::time::Instant::now();
        gemm(lhs, m, &packed, &mut c);
        best = best.min(t.elapsed().as_secs_f64());
    }
    // The probe's own products are not the caller's work.
    MACS.fetch_sub(4 * (m * n * k) as u64, Ordering::Relaxed);
    2.0 * (m * n * k) as f64 / best / 1e9
}

/// `c[m, n] = a[m, k] · wᵀ` (module docs). `c` must hold `m * n` values; `a` rows must hold `k`.
pub fn gemm(a: Lhs<'_>, m: usize, w: &PackedB, c: &mut [f32]) {
    gemm_with(isa::active(), a, m, w, c)
}

/// [`gemm`] on the path of `isa` (clamped to the CPU's level).
pub fn gemm_with(isa: Isa, a: Lhs<'_>, m: usize, w: &PackedB, c: &mut [f32]) {
    let (n, k) = (w.n, w.k);
    assert!(a.fits(m, k), "A is not [m, k] with k = {k}");
    assert_eq!(c.len(), m * n, "C is not [m, n]");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        c.fill(0.0);
        return;
    }
    MACS.fetch_add((m * n * k) as u64, Ordering::Relaxed);
    let isa = isa.min(Isa::detected());
    let plan = plan(isa, w.weight_type(), matches!(a, Lhs::Bf16 { .. }));
    let pa = pack_a(&a, m, k, plan, w.weight_type());
    let panels = n.div_ceil(NR);
    let threads = rayon::current_num_threads().max(1);
    // Enough tasks to balance uneven panels, each at least one panel.
    let per_task = panels.div_ceil(threads * 4).max(1);
    let tasks = panels.div_ceil(per_task);
    let out = OutPtr(c.as_mut_ptr());
    (0..tasks).into_par_iter().for_each(|t| {
        for p in t * per_task..((t + 1) * per_task).min(panels) {
            run_panel(plan, &pa, m, w, k, p, n, n, out.get());
        }
    });
}

/// `c[r, j] = Σ_{i < k} a[r, i] · w[j, i]` for the first `cols` columns of `w` only
/// (`cols ≤ n`) over its first `k` inputs (`k ≤` the packed width), rows of `c` `ldc` apart,
/// on the calling thread: for callers that parallelise themselves (attention, one task per
/// head and row block, each seeing a prefix of the keys), on the path of `isa` (read by the
/// caller on its own thread). The same arithmetic as [`gemm`].
#[allow(clippy::too_many_arguments)]
pub fn gemm_serial(
    isa: Isa,
    a: Lhs<'_>,
    m: usize,
    w: &PackedB,
    k: usize,
    cols: usize,
    c: &mut [f32],
    ldc: usize,
) {
    assert!(k <= w.k, "k {k} of {}", w.k);
    assert!(a.fits(m, k), "A is not [m, k] with k = {k}");
    assert!(
        cols <= w.n && ldc >= cols,
        "cols {cols} of {} with ldc {ldc}",
        w.n
    );
    assert!(m == 0 || c.len() >= (m - 1) * ldc + cols, "C is too small");
    if m == 0 || cols == 0 {
        return;
    }
    if k == 0 {
        for r in 0..m {
            c[r * ldc..r * ldc + cols].fill(0.0);
        }
        return;
    }
    MACS.fetch_add((m * cols * k) as u64, Ordering::Relaxed);
    let isa = isa.min(Isa::detected());
    let plan = plan(isa, w.weight_type(), matches!(a, Lhs::Bf16 { .. }));
    let pa = pack_a(&a, m, k, plan, w.weight_type());
    for p in 0..cols.div_ceil(NR) {
        run_panel(plan, &pa, m, w, k, p, cols, ldc, c.as_mut_ptr());
    }
}

/// All rows against panel `p`, block by block over the first `k` inputs, writing the panel's
/// columns below `n_used` into `c` (rows `ldc` apart). `pa` holds `A` packed for `k` inputs.
#[allow(clippy::too_many_arguments)]
fn run_panel(
    plan: Plan,
    pa: &PackedA,
    m: usize,
    w: &PackedB,
    k: usize,
    p: usize,
    n_used: usize,
    ldc: usize,
    c: *mut f32,
) {
    let wk = w.k;
    let cols = NR.min(n_used - p * NR);
    let mr = plan.mr;
    let mut k0 = 0;
    while k0 < k {
        let kc = KC.min(k - k0);
        let mut i0 = 0;
        while i0 < m {
            let rows = mr.min(m - i0);
            let a = match pa {
                PackedA::F32 { data, kk } => {
                    let tile = &data[i0 * kk..i0 * kk + rows * kk];
                    // bf16 weights: the block spans whole pairs.
                    let kc_a = match w.data {
                        PackedData::F32(_) => kc,
                        PackedData::Bf16(_) => kc.div_ceil(2) * 2,
                    };
                    TileA::F32(&tile[k0 * rows..(k0 + kc_a) * rows])
                }
                PackedA::Pairs { data, kp } => {
                    let tile = &data[i0 * kp..i0 * kp + rows * kp];
                    TileA::Pairs(&tile[(k0 / 2) * rows..(k0 / 2 + kc.div_ceil(2)) * rows])
                }
            };
            let b = match &w.data {
                PackedData::F32(d) => {
                    TileB::F32(&d[p * wk * NR + k0 * NR..p * wk * NR + (k0 + kc) * NR])
                }
                PackedData::Bf16(d) => {
                    let kp = wk.div_ceil(2);
                    let base = p * kp * NR * 2;
                    TileB::Bf16(
                        &d[base + (k0 / 2) * NR * 2..base + (k0 / 2 + kc.div_ceil(2)) * NR * 2],
                    )
                }
            };
            let tile = Tile {
                a,
                b,
                rows,
                cols,
                // SAFETY: row i0, column p·NR of `c` (rows `ldc` apart, at least `n_used`
                // columns, checked by the callers); the kernel writes `rows` rows of `cols`
                // columns from there, all inside `c`.
                c: unsafe { c.add(i0 * ldc + p * NR) },
                ldc,
                accumulate: k0 > 0,
            };
            match plan.isa {
                Isa::Portable => portable::tile(&tile),
                #[cfg(target_arch = "x86_64")]
                _ => x86::tile(plan, &tile),
                #[cfg(not(target_arch = "x86_64"))]
                _ => portable::tile(&tile),
            }
            i0 += rows;
        }
        k0 += kc;
    }
}

#[cfg(test)]
mod tests;
