//! Scaled-dot-product attention for prefill and vision, on the GEMM kernels, one task per
//! (head, block of query rows): no `[heads, Tq, Tk]` score tensor is built, only a block of
//! `ROWS × Tk` scores per task, and a causal block multiplies only the keys it can see.
//!
//! The reference's eager attention in bf16 rounds at fixed points, and so does this one when
//! `round_bf16` is set: the scores `q·kᵀ` to bf16, then (scale on the scores) `scores · bf16(s)`
//! to bf16, then `+ bias` to bf16; the softmax in f32; the probabilities to bf16 before `·v`.
//! With the scale on the query (SAM), `q · bf16(s)` is rounded to bf16 before the product. In
//! f32 nothing is rounded in between. The output is f32 `[H, Tq, Dv]`; the caller rounds it to
//! its dtype, as the reference rounds the product.

use half::bf16;
use rayon::prelude::*;

use crate::gemm::{gemm_serial, Lhs, PackedB};
use crate::isa::{self, Isa};

/// Query rows per task.
const ROWS: usize = 32;

/// One attention input `[H, T, D]`, contiguous.
#[derive(Clone, Copy)]
pub enum Heads<'a> {
    F32(&'a [f32]),
    Bf16(&'a [bf16]),
}

/// Where the scale goes.
#[derive(Clone, Copy, Debug)]
pub enum Scale {
    /// `softmax(q·kᵀ · s)`.
    Scores(f32),
    /// `softmax((q · s)·kᵀ)`.
    Query(f32),
}

/// What is added to the scaled scores before the softmax.
#[derive(Clone, Copy)]
pub enum Bias<'a> {
    None,
    /// Query `i` sees keys `0..=offset + i` (a prompt continuing `offset` cached positions).
    Causal {
        offset: usize,
    },
    /// `[Hb, Tq, Tk]` f32 values with `Hb` 1 (shared) or `H`; in a bf16 model they are bf16
    /// values stored as f32.
    Dense {
        data: &'a [f32],
        heads: usize,
    },
}

/// The shapes of one call.
#[derive(Clone, Copy, Debug)]
pub struct Dims {
    pub heads: usize,
    pub tq: usize,
    pub tk: usize,
    /// Query/key width.
    pub d: usize,
    /// Value width.
    pub dv: usize,
}

fn round(v: f32) -> f32 {
    bf16::from_f32(v).to_f32()
}

/// `softmax(q·kᵀ ⊙ scale + bias)·v` for every head (module docs); `[H, Tq, Dv]` f32.
pub fn attention(
    q: Heads<'_>,
    k: Heads<'_>,
    v: Heads<'_>,
    dims: Dims,
    scale: Scale,
    bias: Bias<'_>,
    round_bf16: bool,
) -> Vec<f32> {
    let Dims {
        heads,
        tq,
        tk,
        d,
        dv,
    } = dims;
    let len = |h: &Heads<'_>| match h {
        Heads::F32(x) => x.len(),
        Heads::Bf16(x) => x.len(),
    };
    assert_eq!(len(&q), heads * tq * d, "q is not [H, Tq, D]");
    assert_eq!(len(&k), heads * tk * d, "k is not [H, Tk, D]");
    assert_eq!(len(&v), heads * tk * dv, "v is not [H, Tk, Dv]");
    if let Bias::Dense { data, heads: hb } = bias {
        assert!(hb == 1 || hb == heads, "bias heads {hb} for {heads} heads");
        assert_eq!(data.len(), hb * tq * tk, "bias is not [Hb, Tq, Tk]");
    }
    if let Bias::Causal { offset } = bias {
        assert_eq!(
            offset + tq,
            tk,
            "causal attention over {tk} keys for {tq} queries at {offset}"
        );
    }
    let mut out = vec![0f32; heads * tq * dv];
    if heads == 0 || tq == 0 {
        return out;
    }
    // Keys and values packed once per head (in parallel), shared by the head's row blocks.
    let packed: Vec<(PackedB, PackedB)> = (0..heads)
        .into_par_iter()
        .map(|h| {
            let (ks, ke) = (h * tk * d, (h + 1) * tk * d);
            let (vs, ve) = (h * tk * dv, (h + 1) * tk * dv);
            match (k, v) {
                (Heads::Bf16(k), Heads::Bf16(v)) => (
                    PackedB::from_bf16_serial(&k[ks..ke], tk, d),
                    PackedB::from_bf16_kn(&v[vs..ve], tk, dv),
                ),
                _ => {
                    let wide = |x: &Heads<'_>, s: usize, e: usize| -> Vec<f32> {
                        match x {
                            Heads::F32(x) => x[s..e].to_vec(),
                            Heads::Bf16(x) => x[s..e].iter().map(|v| v.to_f32()).collect(),
                        }
                    };
                    (
                        PackedB::from_f32_serial(&wide(&k, ks, ke), tk, d),
                        PackedB::from_f32_kn(&wide(&v, vs, ve), tk, dv),
                    )
                }
            }
        })
        .collect();
    let blocks = tq.div_ceil(ROWS);
    // Read on the calling thread (its cap applies), used by every task.
    let level = isa::active();
    let tasks: Vec<(usize, usize)> = (0..heads)
        .flat_map(|h| (0..blocks).map(move |b| (h, b)))
        .collect();
    let results: Vec<(usize, usize, Vec<f32>)> = tasks
        .into_par_iter()
        .map(|(h, b)| {
            let r0 = b * ROWS;
            let rows = ROWS.min(tq - r0);
            let o = block(
                level, q, &packed[h], dims, h, r0, rows, scale, bias, round_bf16,
            );
            (h, r0, o)
        })
        .collect();
    for (h, r0, o) in results {
        let at = (h * tq + r0) * dv;
        out[at..at + o.len()].copy_from_slice(&o);
    }
    out
}

/// Rows `r0..r0 + rows` of head `h`: `[rows, Dv]`.
#[allow(clippy::too_many_arguments)]
fn block(
    level: Isa,
    q: Heads<'_>,
    (kp, vp): &(PackedB, PackedB),
    dims: Dims,
    h: usize,
    r0: usize,
    rows: usize,
    scale: Scale,
    bias: Bias<'_>,
    round_bf16: bool,
) -> Vec<f32> {
    let Dims { tq, tk, d, dv, .. } = dims;
    // Keys this block can see: all, or up to the last row's causal limit.
    let seen = match bias {
        Bias::Causal { offset } => (offset + r0 + rows).min(tk),
        _ => tk,
    };
    let qs = (h * tq + r0) * d;
    let qe = qs + rows * d;
    // The query rows, scaled first when the scale goes on the query.
    let q_rows: QRows = match (q, scale) {
        (Heads::Bf16(x), Scale::Scores(_)) => QRows::Bf16(x[qs..qe].to_vec()),
        (Heads::F32(x), Scale::Scores(_)) => QRows::F32(x[qs..qe].to_vec()),
        (Heads::Bf16(x), Scale::Query(s)) => {
            let s = bf16::from_f32(s);
            QRows::Bf16(x[qs..qe].iter().map(|v| *v * s).collect())
        }
        (Heads::F32(x), Scale::Query(s)) => QRows::F32(x[qs..qe].iter().map(|v| v * s).collect()),
    };
    let mut scores = vec![0f32; rows * seen];
    let lhs = match &q_rows {
        QRows::F32(x) => Lhs::F32 { data: x, stride: d },
        QRows::Bf16(x) => Lhs::Bf16 { data: x, stride: d },
    };
    gemm_serial(level, lhs, rows, kp, d, seen, &mut scores, seen);
    let score_scale = match scale {
        Scale::Scores(s) if round_bf16 => Some(round(s)),
        Scale::Scores(s) => Some(s),
        Scale::Query(_) => None,
    };
    for (r, row) in scores.chunks_exact_mut(seen.max(1)).enumerate() {
        let i = r0 + r;
        for (j, s) in row.iter_mut().enumerate() {
            let mut x = *s;
            if round_bf16 {
                x = round(x);
            }
            if let Some(f) = score_scale {
                x *= f;
                if round_bf16 {
                    x = round(x);
                }
            }
            match bias {
                Bias::Dense { data, heads: hb } => {
                    let hh = if hb == 1 { 0 } else { h };
                    x += data[(hh * tq + i) * tk + j];
                    if round_bf16 {
                        x = round(x);
                    }
                }
                Bias::Causal { offset } if j > offset + i => x = f32::NEG_INFINITY,
                _ => {}
            }
            *s = x;
        }
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0f32;
        for s in row.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        for s in row.iter_mut() {
            *s /= sum;
        }
    }
    let mut o = vec![0f32; rows * dv];
    if round_bf16 {
        let probs: Vec<bf16> = scores.iter().map(|&p| bf16::from_f32(p)).collect();
        gemm_serial(
            level,
            Lhs::Bf16 {
                data: &probs,
                stride: seen,
            },
            rows,
            vp,
            seen,
            dv,
            &mut o,
            dv,
        );
    } else {
        gemm_serial(
            level,
            Lhs::F32 {
                data: &scores,
                stride: seen,
            },
            rows,
            vp,
            seen,
            dv,
            &mut o,
            dv,
        );
    }
    o
}

enum QRows {
    F32(Vec<f32>),
    Bf16(Vec<bf16>),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::isa::with_each_level;

    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// The reference's eager attention, element by element in f64 (f32 model) or with its
    /// bf16 roundings (bf16 model, products accumulated in f64).
    #[allow(clippy::too_many_arguments)]
    fn naive(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        dims: Dims,
        scale: Scale,
        bias: Bias<'_>,
        bf: bool,
    ) -> Vec<f32> {
        let Dims {
            heads,
            tq,
            tk,
            d,
            dv,
        } = dims;
        let r = |x: f64| if bf { round(x as f32) as f64 } else { x };
        let mut out = vec![0f32; heads * tq * dv];
        for h in 0..heads {
            for i in 0..tq {
                let mut s = vec![0f64; tk];
                for (j, sj) in s.iter_mut().enumerate() {
                    let mut acc = 0f64;
                    for c in 0..d {
                        let mut qv = q[(h * tq + i) * d + c] as f64;
                        if let Scale::Query(f) = scale {
                            qv = r(qv * if bf { round(f) as f64 } else { f as f64 });
                        }
                        acc += qv * k[(h * tk + j) * d + c] as f64;
                    }
                    let mut x = r(acc);
                    if let Scale::Scores(f) = scale {
                        x = r(x * if bf { round(f) as f64 } else { f as f64 });
                    }
                    match bias {
                        Bias::Dense { data, heads: hb } => {
                            let hh = if hb == 1 { 0 } else { h };
                            x = r(x + data[(hh * tq + i) * tk + j] as f64);
                        }
                        Bias::Causal { offset } if j > offset + i => x = f64::NEG_INFINITY,
                        _ => {}
                    }
                    *sj = x;
                }
                let max = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|x| (x - max).exp()).collect();
                let sum: f64 = e.iter().sum();
                for c in 0..dv {
                    let mut acc = 0f64;
                    for j in 0..tk {
                        acc += r(e[j] / sum) * v[(h * tk + j) * dv + c] as f64;
                    }
                    out[(h * tq + i) * dv + c] = acc as f32;
                }
            }
        }
        out
    }

    #[test]
    fn attention_matches_the_eager_reference() {
        let cases = [
            // heads, tq, tk, d, dv, scale, bias kind
            (2, 5, 5, 16, 16, Scale::Scores(0.25), 1u8),
            (3, 40, 45, 24, 20, Scale::Scores(0.2041), 1),
            (2, 33, 33, 8, 8, Scale::Query(0.3535), 2),
            (1, 1, 7, 64, 64, Scale::Scores(0.125), 0),
            (2, 70, 70, 32, 32, Scale::Scores(0.17678), 0),
        ];
        with_each_level(|isa| {
            for (idx, &(heads, tq, tk, d, dv, scale, kind)) in cases.iter().enumerate() {
                let dims = Dims {
                    heads,
                    tq,
                    tk,
                    d,
                    dv,
                };
                let seed = idx as u64 * 10;
                for bf in [false, true] {
                    let prep = |x: Vec<f32>| -> Vec<f32> {
                        if bf {
                            x.into_iter().map(round).collect()
                        } else {
                            x
                        }
                    };
                    let q = prep(values(heads * tq * d, seed));
                    let k = prep(values(heads * tk * d, seed + 1));
                    let v = prep(values(heads * tk * dv, seed + 2));
                    let dense = prep(values(heads * tq * tk, seed + 3));
                    let bias = match kind {
                        1 => Bias::Causal { offset: tk - tq },
                        2 => Bias::Dense {
                            data: &dense,
                            heads,
                        },
                        _ => Bias::None,
                    };
                    let want = naive(&q, &k, &v, dims, scale, bias, bf);
                    let got = if bf {
                        let b = |x: &[f32]| -> Vec<bf16> {
                            x.iter().map(|&v| bf16::from_f32(v)).collect()
                        };
                        let (qb, kb, vb) = (b(&q), b(&k), b(&v));
                        attention(
                            Heads::Bf16(&qb),
                            Heads::Bf16(&kb),
                            Heads::Bf16(&vb),
                            dims,
                            scale,
                            bias,
                            true,
                        )
                    } else {
                        attention(
                            Heads::F32(&q),
                            Heads::F32(&k),
                            Heads::F32(&v),
                            dims,
                            scale,
                            bias,
                            false,
                        )
                    };
                    // f32: accumulation rounding only. bf16: a score can round to the other
                    // side of a bf16 step when the f32 sum differs from the exact one, which
                    // moves a probability by one bf16 ulp (2^-8 relative).
                    let tol = if bf { 2e-2 } else { 2e-5 };
                    let worst = got
                        .iter()
                        .zip(&want)
                        .map(|(g, w)| (g - w).abs())
                        .fold(0f32, f32::max);
                    assert!(worst < tol, "{isa} case {idx} bf16 {bf}: {worst:e}");
                }
            }
        });
    }
}
