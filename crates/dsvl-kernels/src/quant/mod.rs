//! Quantized products `y[rows, n] = x[rows, k] · Wᵀ` with `W` `[n, k]` in GGML blocks (`q8_0`
//! or `q4_k`) and `x` f32, for decode steps (one row per running sequence) and small batches.
//!
//! ## Weight layout
//! The blocks are GGML's, bit for bit ([`BlockQ8_0`], [`BlockQ4K`], the same `#[repr(C)]`
//! layout as candle's blocks of those names), each weight row `k / block` consecutive blocks,
//! rows one after the other. Nothing is repacked: the blocks are the only copy of the weight.
//! - `q8_0`: 32 weights per 34-byte block, `w = d · q` with `d` f16 and `q` i8.
//! - `q4_k`: 256 weights per 144-byte super-block: `d`, `dmin` f16; 12 bytes holding eight 6-bit
//!   scales `sc_j` and mins `m_j`, one per 32 weights; 128 bytes of 4-bit `q`, byte `32c + b`
//!   holding weight `64c + b` in its low nibble and `64c + 32 + b` in its high one;
//!   `w = d · sc_j · q − dmin · m_j`.
//!
//! ## Activations
//! Each row of `x` is quantized to 8 bits per block as ggml does it for these formats: for
//! `q8_0` weights, 32 values per block with `d = f16(max|x| / 127)` and `q = round(x / d)`; for
//! `q4_k`, 256 per block (`q8_K`) with `d = max / −127` (`max` the value of largest magnitude,
//! f32) and `q = clamp(round(x / d), −128, 127)`, plus the integer sum of each 32 `q`s (for the
//! mins). The quantized row is kept in our own layout (`q`s of a `q8_K` block in the order the
//! kernels read them, scales as f32).
//!
//! ## Arithmetic and reduction order
//! Every product of 8-bit values is summed exactly in 32-bit integers, in 8 lanes: lane `l`
//! holds the products of bytes `4l..4l + 4` of each 32-byte group (what `vpmaddubsw` +
//! `vpmaddwd` and `vpdpbusd` produce on 256-bit registers; the 512-bit paths hold two such
//! groups side by side). The float work per output element is then fixed, with `dx` the
//! activation block's scale and `S_j` the sum of its quants `32j..32j + 32`:
//! - `q8_0`: two accumulators of 8 lanes, `A` for the even blocks and `B` for the odd ones, each
//!   block `b` in ascending order doing `acc[l] = acc[l] + f32(isum_b[l]) · (dw_b · dx_b)`;
//!   then `y = h(A + B)` (lane by lane, then `h` below). Two chains instead of one halve the
//!   latency of the sum per block; a 512-bit register holds both.
//! - `q4_k`, per super-block: `acc[l] = acc[l] + f32(isum[l]) · (d · dx)` with
//!   `isum[l] = Σ_j sc_j · (lane l of sub-block j)`, and per sub-block
//!   `mins[j] = mins[j] + f32(m_j · S_j) · (dmin · dx)`; then `y = h(acc) − h(mins)`.
//!
//! `h(a) = ((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7))`. Multiplies and adds are
//! separate (no FMA), so **every path gives the same bits** (portable, AVX2, AVX-512, VNNI), and
//! a row's result never depends on the other rows of the call or on the threads (batch
//! invariance). Compared with candle's `k_quants::matmul` the integer sums and the quantized
//! activations are the same; only the float summation order differs (the last bits).
//!
//! ## Threads
//! Output columns (weight rows) are split over rayon's pool in contiguous ranges, so each
//! thread streams its own stretch of the weight once per call, whatever the number of rows.
//! Within a column the rows are taken four at a time while the column's blocks stay in L1.

mod portable;
#[cfg(target_arch = "x86_64")]
mod x86;

use half::f16;
use rayon::prelude::*;

// Tasks write disjoint columns of the output (`matmul_t_with`) through the GEMM's pointer.
use crate::gemm::OutPtr;

use crate::isa::{self, Isa};

/// Weights per `q8_0` block.
pub const QK8_0: usize = 32;
/// Weights per `q4_k` super-block.
pub const QK_K: usize = 256;

/// GGML's `q8_0` block (layout of candle's `BlockQ8_0`): `w = d · qs[i]`.
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct BlockQ8_0 {
    pub d: f16,
    pub qs: [i8; QK8_0],
}
const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == 34);

/// GGML's `q4_k` super-block (layout of candle's `BlockQ4K`; module docs).
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct BlockQ4K {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; 12],
    pub qs: [u8; QK_K / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ4K>() == 144);

impl BlockQ4K {
    /// The 6-bit scale and min of sub-block `j` (0..8): `j < 4` in the low 6 bits of bytes `j`
    /// and `j + 4`; `j ≥ 4` in the nibbles of byte `j + 4` with their top 2 bits in the top
    /// bits of bytes `j − 4` and `j`.
    #[inline(always)]
    pub fn scale_min(&self, j: usize) -> (u8, u8) {
        let q = &self.scales;
        if j < 4 {
            (q[j] & 63, q[j + 4] & 63)
        } else {
            (
                (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
                (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
            )
        }
    }

    /// All eight scales and mins, one byte each (`[sc_0..sc_8]`, `[m_0..m_8]`), decoded four
    /// at a time in 32-bit words.
    #[inline(always)]
    pub fn scales_mins(&self) -> ([u8; 8], [u8; 8]) {
        let q = &self.scales;
        let a = u32::from_le_bytes([q[0], q[1], q[2], q[3]]);
        let b = u32::from_le_bytes([q[4], q[5], q[6], q[7]]);
        let c = u32::from_le_bytes([q[8], q[9], q[10], q[11]]);
        const LOW6: u32 = 0x3f3f_3f3f;
        const LOW4: u32 = 0x0f0f_0f0f;
        const TOP2: u32 = 0x0303_0303;
        let sc_lo = a & LOW6;
        let m_lo = b & LOW6;
        let sc_hi = (c & LOW4) | (((a >> 6) & TOP2) << 4);
        let m_hi = ((c >> 4) & LOW4) | (((b >> 6) & TOP2) << 4);
        let join = |lo: u32, hi: u32| (lo as u64 | (hi as u64) << 32).to_le_bytes();
        (join(sc_lo, sc_hi), join(m_lo, m_hi))
    }
}

/// A quantized weight `[n, k]`: `n · k / block` blocks, row-major.
#[derive(Clone, Copy)]
pub enum QWeight<'a> {
    Q8_0(&'a [BlockQ8_0]),
    Q4K(&'a [BlockQ4K]),
}

impl QWeight<'_> {
    /// Weights per block.
    pub fn block(&self) -> usize {
        match self {
            QWeight::Q8_0(_) => QK8_0,
            QWeight::Q4K(_) => QK_K,
        }
    }

    fn blocks(&self) -> usize {
        match self {
            QWeight::Q8_0(b) => b.len(),
            QWeight::Q4K(b) => b.len(),
        }
    }

    /// Bytes of the blocks.
    pub fn bytes(&self) -> usize {
        match self {
            QWeight::Q8_0(b) => std::mem::size_of_val(*b),
            QWeight::Q4K(b) => std::mem::size_of_val(*b),
        }
    }
}

/// Which code runs the products (for reports and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    Portable,
    /// 256-bit `vpmaddubsw`/`vpmaddwd`.
    Avx2,
    /// `q8_0`: 256-bit `vpdpbusd` (AVX512-VNNI with VL); `q4_k`: 512-bit `vpmaddubsw` and
    /// `vpdpwssd` (`vpmaddwd` without VNNI).
    Avx512 {
        vnni: bool,
    },
}

#[cfg(test)]
static NO_VNNI: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The path taken at level `isa` (clamped to what the CPU has).
pub fn path_for(isa: Isa) -> Path {
    let isa = isa.min(Isa::detected());
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if isa >= Isa::Avx512 {
            let vnni = has!("avx512vnni");
            #[cfg(test)]
            let vnni = vnni && !NO_VNNI.load(std::sync::atomic::Ordering::Relaxed);
            return Path::Avx512 { vnni };
        }
        if isa >= Isa::Avx2 && has!("f16c") {
            return Path::Avx2;
        }
    }
    let _ = isa;
    Path::Portable
}

/// The path taken now ([`isa::active`]).
pub fn path() -> Path {
    path_for(isa::active())
}

/// Activation rows quantized for one weight format (module docs).
pub(crate) struct QRows {
    pub rows: usize,
    pub k: usize,
    /// `[rows][k]`; for `q8_K` each 256 reordered (see [`q8k_order`]).
    pub qs: Vec<i8>,
    /// `[rows][k / block]` block scales.
    pub d: Vec<f32>,
    /// `q8_K` only: `[rows][k / 32]` the sum of each 32 `q`s, natural order.
    pub sums: Vec<i32>,
}

impl QRows {
    #[inline(always)]
    pub fn row_qs(&self, r: usize) -> &[i8] {
        &self.qs[r * self.k..(r + 1) * self.k]
    }
}

/// Where value `i` (0..256) of a `q8_K` block is stored: per 128, the 32-value groups in the
/// order 0, 2, 1, 3, so that the low nibbles of a 64-byte run of `q4_k` quants (groups 0 and 2
/// of the 128) meet one contiguous 64 bytes, and the high nibbles the next 64.
#[inline(always)]
pub(crate) fn q8k_order(i: usize) -> usize {
    let (half, g, b) = (i / 128, (i / 32) % 4, i % 32);
    let slot = [0, 2, 1, 3][g];
    half * 128 + slot * 32 + b
}

/// ggml's rounding (half away from zero).
#[inline(always)]
fn round(v: f32) -> f32 {
    v.round()
}

#[inline(always)]
fn quantize_q8_0_rows(x: &[f32], rows: usize, k: usize) -> QRows {
    let nb = k / QK8_0;
    let mut qs = vec![0i8; rows * k];
    let mut d = vec![0f32; rows * nb];
    for (xs, (q, db)) in x
        .chunks_exact(QK8_0)
        .zip(qs.chunks_exact_mut(QK8_0).zip(d.iter_mut()))
    {
        let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
        let dd = amax / 127.0;
        let id = if dd != 0.0 { 1.0 / dd } else { 0.0 };
        *db = f16::from_f32(dd).to_f32();
        for (q, &v) in q.iter_mut().zip(xs) {
            *q = round(v * id) as i8;
        }
    }
    QRows {
        rows,
        k,
        qs,
        d,
        sums: Vec::new(),
    }
}

#[inline(always)]
fn quantize_q8k_rows(x: &[f32], rows: usize, k: usize) -> QRows {
    let nb = k / QK_K;
    let mut qs = vec![0i8; rows * k];
    let mut d = vec![0f32; rows * nb];
    let mut sums = vec![0i32; rows * k / 32];
    for (xs, ((q, db), s)) in x.chunks_exact(QK_K).zip(
        qs.chunks_exact_mut(QK_K)
            .zip(d.iter_mut())
            .zip(sums.chunks_exact_mut(QK_K / 32)),
    ) {
        let mut max = 0f32;
        let mut amax = 0f32;
        for &v in xs {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        if amax == 0.0 {
            *db = 0.0;
            continue;
        }
        let iscale = -127f32 / max;
        let mut natural = [0i8; QK_K];
        for (n, &v) in natural.iter_mut().zip(xs) {
            *n = round(iscale * v).clamp(-128.0, 127.0) as i8;
        }
        for (j, s) in s.iter_mut().enumerate() {
            *s = natural[j * 32..(j + 1) * 32]
                .iter()
                .map(|&v| v as i32)
                .sum();
        }
        for (i, &n) in natural.iter().enumerate() {
            q[q8k_order(i)] = n;
        }
        *db = 1.0 / iscale;
    }
    QRows {
        rows,
        k,
        qs,
        d,
        sums,
    }
}

/// Quantizes `x` `[rows, k]` for `w`'s format (module docs).
pub(crate) fn quantize_rows(x: &[f32], rows: usize, k: usize, q8k: bool, p: Path) -> QRows {
    #[cfg(target_arch = "x86_64")]
    if p != Path::Portable {
        // SAFETY: every path but the portable one is only chosen on CPUs with AVX2 and F16C.
        return unsafe { x86::quantize_rows(x, rows, k, q8k) };
    }
    let _ = p;
    if q8k {
        quantize_q8k_rows(x, rows, k)
    } else {
        quantize_q8_0_rows(x, rows, k)
    }
}

/// Used by the x86 wrapper, which compiles the same code with SSE4.1 rounding available.
#[inline(always)]
pub(crate) fn quantize_rows_generic(x: &[f32], rows: usize, k: usize, q8k: bool) -> QRows {
    if q8k {
        quantize_q8k_rows(x, rows, k)
    } else {
        quantize_q8_0_rows(x, rows, k)
    }
}

/// The fixed reduction `h` of the 8 lanes (module docs).
#[inline(always)]
pub(crate) fn hsum8(a: [f32; 8]) -> f32 {
    ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]))
}

/// Output columns per task.
const COLS_PER_TASK: usize = 16;

/// Where a kernel writes: `y[r * ldy + col]` for the rows and columns it is given.
#[derive(Clone, Copy)]
pub(crate) struct Out {
    ptr: OutPtr,
    ldy: usize,
}

impl Out {
    /// # Safety
    /// `(r, col)` must be inside `y` and written by this task only.
    #[inline(always)]
    pub unsafe fn write(self, r: usize, col: usize, v: f32) {
        // SAFETY: by the caller's contract.
        unsafe { *self.ptr.get().add(r * self.ldy + col) = v }
    }
}

/// `y[rows, n] = x[rows, k] · Wᵀ` (module docs). `x` is `[rows, k]` row-major, `k` a multiple
/// of `w`'s block; `w` holds `n · k / block` blocks; `y` must hold `rows · n`.
pub fn matmul_t(x: &[f32], rows: usize, k: usize, w: QWeight<'_>, n: usize, y: &mut [f32]) {
    matmul_t_with(path(), x, rows, k, w, n, y)
}

/// [`matmul_t`] on path `p` (which must be one this CPU runs: from [`path_for`]).
pub fn matmul_t_with(
    p: Path,
    x: &[f32],
    rows: usize,
    k: usize,
    w: QWeight<'_>,
    n: usize,
    y: &mut [f32],
) {
    let block = w.block();
    assert!(
        k.is_multiple_of(block),
        "k = {k} is not a multiple of {block}"
    );
    assert_eq!(x.len(), rows * k, "x is not [rows, k]");
    assert_eq!(w.blocks() * block, n * k, "w is not [n, k]");
    assert_eq!(y.len(), rows * n, "y is not [rows, n]");
    if rows == 0 || n == 0 {
        return;
    }
    if k == 0 {
        y.fill(0.0);
        return;
    }
    let xq = quantize_rows(x, rows, k, matches!(w, QWeight::Q4K(_)), p);
    let out = Out {
        ptr: OutPtr(y.as_mut_ptr()),
        ldy: n,
    };
    let nb = k / block;
    let tasks = n.div_ceil(COLS_PER_TASK);
    (0..tasks).into_par_iter().for_each(|t| {
        let cols = t * COLS_PER_TASK..((t + 1) * COLS_PER_TASK).min(n);
        // SAFETY: each task writes only its own columns, every row, all inside `y`
        // (`y.len() == rows * n`, checked above); the path was chosen for this CPU.
        unsafe {
            match w {
                QWeight::Q8_0(wb) => {
                    let wb = &wb[cols.start * nb..cols.end * nb];
                    run_q8_0(p, wb, nb, cols.start, &xq, out)
                }
                QWeight::Q4K(wb) => {
                    let wb = &wb[cols.start * nb..cols.end * nb];
                    run_q4k(p, wb, nb, cols.start, &xq, out)
                }
            }
        }
    });
}

/// Rows taken together against one weight column.
pub(crate) const ROW_GROUP: usize = 4;

/// # Safety
/// `out` columns `col0..col0 + w.len() / nb` for every row of `xq` are this task's; `p` runs
/// on this CPU.
unsafe fn run_q8_0(p: Path, w: &[BlockQ8_0], nb: usize, col0: usize, xq: &QRows, out: Out) {
    match p {
        Path::Portable => {
            for (c, wc) in w.chunks_exact(nb).enumerate() {
                for r in 0..xq.rows {
                    let v = portable::dot_q8_0(wc, xq, r);
                    // SAFETY: by the caller's contract.
                    unsafe { out.write(r, col0 + c, v) }
                }
            }
        }
        #[cfg(target_arch = "x86_64")]
        _ => {
            // SAFETY: by the caller's contract.
            unsafe { x86::q8_0_cols(p, w, nb, col0, xq, out) }
        }
        #[cfg(not(target_arch = "x86_64"))]
        _ => unreachable!(),
    }
}

/// # Safety
/// As [`run_q8_0`].
unsafe fn run_q4k(p: Path, w: &[BlockQ4K], nb: usize, col0: usize, xq: &QRows, out: Out) {
    match p {
        Path::Portable => {
            for (c, wc) in w.chunks_exact(nb).enumerate() {
                for r in 0..xq.rows {
                    let v = portable::dot_q4k(wc, xq, r);
                    // SAFETY: by the caller's contract.
                    unsafe { out.write(r, col0 + c, v) }
                }
            }
        }
        #[cfg(target_arch = "x86_64")]
        _ => {
            // SAFETY: by the caller's contract.
            unsafe { x86::q4k_cols(p, w, nb, col0, xq, out) }
        }
        #[cfg(not(target_arch = "x86_64"))]
        _ => unreachable!(),
    }
}

#[cfg(test)]
mod tests;
