//! x86-64 micro-kernels: AVX2+FMA (6 rows × 16 columns, a panel in two halves), AVX-512
//! (12 rows × 32 columns) and AVX512-BF16 (12 rows × 32 columns by `vdpbf16ps`). Each is
//! generic over its row count so a short last tile (and a decode step's single row) runs with
//! exactly as many rows as it has, in the same order of operations per row.

use std::arch::x86_64::*;

use super::portable;
use super::{AForm, Plan, Tile, TileA, TileB, NR};
use crate::isa::Isa;

macro_rules! by_rows {
    ($rows:expr, $f:ident, $($arg:expr),*) => {
        match $rows {
            1 => $f::<1>($($arg),*),
            2 => $f::<2>($($arg),*),
            3 => $f::<3>($($arg),*),
            4 => $f::<4>($($arg),*),
            5 => $f::<5>($($arg),*),
            6 => $f::<6>($($arg),*),
            7 => $f::<7>($($arg),*),
            8 => $f::<8>($($arg),*),
            9 => $f::<9>($($arg),*),
            10 => $f::<10>($($arg),*),
            11 => $f::<11>($($arg),*),
            12 => $f::<12>($($arg),*),
            r => unreachable!("{r} rows in a tile"),
        }
    };
}

pub(crate) fn tile(plan: Plan, t: &Tile<'_>) {
    // SAFETY (all arms): `plan.isa` never exceeds `Isa::detected()` (`gemm_with` clamps it),
    // so the CPU has the features each kernel enables; slice bounds are checked below and the
    // output region is valid per `Tile`'s contract.
    unsafe {
        match (plan.isa, plan.a, &t.a, &t.b) {
            (Isa::Avx512Bf16, AForm::Bf16Pairs, TileA::Pairs(a), TileB::Bf16(b)) => {
                assert!(a.len() * 2 * NR >= b.len() * t.rows);
                by_rows!(t.rows, bf16_dot_512, a, b, t)
            }
            (Isa::Avx512 | Isa::Avx512Bf16, AForm::F32, TileA::F32(a), TileB::F32(b)) => {
                assert!(a.len() * NR >= b.len() * t.rows);
                by_rows!(t.rows, f32_512, a, b, t)
            }
            (Isa::Avx512 | Isa::Avx512Bf16, AForm::F32, TileA::F32(a), TileB::Bf16(b)) => {
                assert!(a.len() * NR >= b.len() * t.rows);
                by_rows!(t.rows, bf16_widen_512, a, b, t)
            }
            (Isa::Avx2, AForm::F32, TileA::F32(a), TileB::F32(b)) => {
                assert!(a.len() * NR >= b.len() * t.rows);
                by_rows!(t.rows, f32_256, a, b, t)
            }
            (Isa::Avx2, AForm::F32, TileA::F32(a), TileB::Bf16(b)) => {
                assert!(a.len() * NR >= b.len() * t.rows);
                by_rows!(t.rows, bf16_widen_256, a, b, t)
            }
            _ => portable::tile(t),
        }
    }
}

/// Stores 32 columns of one row (`lo` columns 0–15, `hi` 16–31), `cols` of them valid, adding
/// to what is there when accumulating.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn store_row_512(c: *mut f32, lo: __m512, hi: __m512, cols: usize, accumulate: bool) {
    let m0: __mmask16 = if cols >= 16 {
        0xFFFF
    } else {
        (1u16 << cols) - 1
    };
    let m1: __mmask16 = if cols >= 32 {
        0xFFFF
    } else if cols > 16 {
        (1u16 << (cols - 16)) - 1
    } else {
        0
    };
    let (mut lo, mut hi) = (lo, hi);
    if accumulate {
        lo = _mm512_add_ps(_mm512_maskz_loadu_ps(m0, c), lo);
        hi = _mm512_add_ps(_mm512_maskz_loadu_ps(m1, c.add(16)), hi);
    }
    _mm512_mask_storeu_ps(c, m0, lo);
    _mm512_mask_storeu_ps(c.add(16), m1, hi);
}

/// f32 × f32, AVX-512: per input, two 16-wide weight loads and one broadcast per row.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
unsafe fn f32_512<const R: usize>(a: &[f32], b: &[f32], t: &Tile<'_>) {
    let kc = b.len() / NR;
    let (ap, bp) = (a.as_ptr(), b.as_ptr());
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    for i in 0..kc {
        let b0 = _mm512_loadu_ps(bp.add(i * NR));
        let b1 = _mm512_loadu_ps(bp.add(i * NR + 16));
        for (r, acc_r) in acc.iter_mut().enumerate() {
            let av = _mm512_set1_ps(*ap.add(i * R + r));
            acc_r[0] = _mm512_fmadd_ps(av, b0, acc_r[0]);
            acc_r[1] = _mm512_fmadd_ps(av, b1, acc_r[1]);
        }
    }
    for (r, acc_r) in acc.iter().enumerate() {
        store_row_512(t.c.add(r * t.ldc), acc_r[0], acc_r[1], t.cols, t.accumulate);
    }
}

/// bf16 weights widened in registers, f32 activations, AVX-512: each input pair's 32-bit lane
/// gives the even input's weight by a 16-bit shift and the odd one's by masking the low half;
/// even then odd, so the chain is the f32 path's on the widened weight.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
unsafe fn bf16_widen_512<const R: usize>(a: &[f32], b: &[u16], t: &Tile<'_>) {
    let kp = b.len() / (2 * NR);
    let (ap, bp) = (a.as_ptr(), b.as_ptr());
    let high = _mm512_set1_epi32(0xFFFF_0000u32 as i32);
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    for p in 0..kp {
        let v0 = _mm512_loadu_si512(bp.add(p * 2 * NR) as *const __m512i);
        let v1 = _mm512_loadu_si512(bp.add(p * 2 * NR + NR) as *const __m512i);
        let e0 = _mm512_castsi512_ps(_mm512_slli_epi32(v0, 16));
        let e1 = _mm512_castsi512_ps(_mm512_slli_epi32(v1, 16));
        let o0 = _mm512_castsi512_ps(_mm512_and_si512(v0, high));
        let o1 = _mm512_castsi512_ps(_mm512_and_si512(v1, high));
        for (r, acc_r) in acc.iter_mut().enumerate() {
            let ae = _mm512_set1_ps(*ap.add(2 * p * R + r));
            let ao = _mm512_set1_ps(*ap.add((2 * p + 1) * R + r));
            acc_r[0] = _mm512_fmadd_ps(ae, e0, acc_r[0]);
            acc_r[1] = _mm512_fmadd_ps(ae, e1, acc_r[1]);
            acc_r[0] = _mm512_fmadd_ps(ao, o0, acc_r[0]);
            acc_r[1] = _mm512_fmadd_ps(ao, o1, acc_r[1]);
        }
    }
    for (r, acc_r) in acc.iter().enumerate() {
        store_row_512(t.c.add(r * t.ldc), acc_r[0], acc_r[1], t.cols, t.accumulate);
    }
}

/// bf16 × bf16 by `vdpbf16ps`: per input pair, two weight loads and one 32-bit broadcast of
/// the row's pair per row; each lane adds both products into its f32 chain.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma")]
unsafe fn bf16_dot_512<const R: usize>(a: &[u32], b: &[u16], t: &Tile<'_>) {
    let kp = b.len() / (2 * NR);
    let (ap, bp) = (a.as_ptr(), b.as_ptr());
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    for p in 0..kp {
        let b0: __m512bh =
            std::mem::transmute(_mm512_loadu_si512(bp.add(p * 2 * NR) as *const __m512i));
        let b1: __m512bh =
            std::mem::transmute(_mm512_loadu_si512(bp.add(p * 2 * NR + NR) as *const __m512i));
        for (r, acc_r) in acc.iter_mut().enumerate() {
            let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(*ap.add(p * R + r) as i32));
            acc_r[0] = _mm512_dpbf16_ps(acc_r[0], av, b0);
            acc_r[1] = _mm512_dpbf16_ps(acc_r[1], av, b1);
        }
    }
    for (r, acc_r) in acc.iter().enumerate() {
        store_row_512(t.c.add(r * t.ldc), acc_r[0], acc_r[1], t.cols, t.accumulate);
    }
}

/// Stores 16 columns of one row from two 8-wide registers, `cols` (≤ 16) valid.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn store_row_256(c: *mut f32, v0: __m256, v1: __m256, cols: usize, accumulate: bool) {
    if cols == 16 {
        let (mut v0, mut v1) = (v0, v1);
        if accumulate {
            v0 = _mm256_add_ps(_mm256_loadu_ps(c), v0);
            v1 = _mm256_add_ps(_mm256_loadu_ps(c.add(8)), v1);
        }
        _mm256_storeu_ps(c, v0);
        _mm256_storeu_ps(c.add(8), v1);
        return;
    }
    let mut tmp = [0f32; 16];
    _mm256_storeu_ps(tmp.as_mut_ptr(), v0);
    _mm256_storeu_ps(tmp.as_mut_ptr().add(8), v1);
    for (j, v) in tmp.iter().enumerate().take(cols) {
        if accumulate {
            *c.add(j) += v;
        } else {
            *c.add(j) = *v;
        }
    }
}

/// f32 × f32, AVX2: the panel in two halves of 16 columns, each 2 loads + 1 broadcast per row.
#[target_feature(enable = "avx2,fma")]
unsafe fn f32_256<const R: usize>(a: &[f32], b: &[f32], t: &Tile<'_>) {
    let kc = b.len() / NR;
    let (ap, bp) = (a.as_ptr(), b.as_ptr());
    for h in 0..2 {
        if t.cols <= h * 16 {
            break;
        }
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        for i in 0..kc {
            let b0 = _mm256_loadu_ps(bp.add(i * NR + h * 16));
            let b1 = _mm256_loadu_ps(bp.add(i * NR + h * 16 + 8));
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let av = _mm256_set1_ps(*ap.add(i * R + r));
                acc_r[0] = _mm256_fmadd_ps(av, b0, acc_r[0]);
                acc_r[1] = _mm256_fmadd_ps(av, b1, acc_r[1]);
            }
        }
        let cols = (t.cols - h * 16).min(16);
        for (r, acc_r) in acc.iter().enumerate() {
            store_row_256(
                t.c.add(r * t.ldc + h * 16),
                acc_r[0],
                acc_r[1],
                cols,
                t.accumulate,
            );
        }
    }
}

/// bf16 weights widened in registers, f32 activations, AVX2 (as [`bf16_widen_512`], by halves).
#[target_feature(enable = "avx2,fma")]
unsafe fn bf16_widen_256<const R: usize>(a: &[f32], b: &[u16], t: &Tile<'_>) {
    let kp = b.len() / (2 * NR);
    let (ap, bp) = (a.as_ptr(), b.as_ptr());
    let high = _mm256_set1_epi32(0xFFFF_0000u32 as i32);
    for h in 0..2 {
        if t.cols <= h * 16 {
            break;
        }
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        for p in 0..kp {
            // Columns h·16 + 0..8 and h·16 + 8..16, two inputs each.
            let base = bp.add(p * 2 * NR + h * 32);
            let v0 = _mm256_loadu_si256(base as *const __m256i);
            let v1 = _mm256_loadu_si256(base.add(16) as *const __m256i);
            let e0 = _mm256_castsi256_ps(_mm256_slli_epi32(v0, 16));
            let e1 = _mm256_castsi256_ps(_mm256_slli_epi32(v1, 16));
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let ae = _mm256_set1_ps(*ap.add(2 * p * R + r));
                acc_r[0] = _mm256_fmadd_ps(ae, e0, acc_r[0]);
                acc_r[1] = _mm256_fmadd_ps(ae, e1, acc_r[1]);
            }
            let o0 = _mm256_castsi256_ps(_mm256_and_si256(v0, high));
            let o1 = _mm256_castsi256_ps(_mm256_and_si256(v1, high));
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let ao = _mm256_set1_ps(*ap.add((2 * p + 1) * R + r));
                acc_r[0] = _mm256_fmadd_ps(ao, o0, acc_r[0]);
                acc_r[1] = _mm256_fmadd_ps(ao, o1, acc_r[1]);
            }
        }
        let cols = (t.cols - h * 16).min(16);
        for (r, acc_r) in acc.iter().enumerate() {
            store_row_256(
                t.c.add(r * t.ldc + h * 16),
                acc_r[0],
                acc_r[1],
                cols,
                t.accumulate,
            );
        }
    }
}
