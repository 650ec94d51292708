//! candle's `q4_k` quantizer (`BlockQ4K::from_float`, llama.cpp's `make_qkx1_quants` search),
//! transcribed step for step but with an inline rounding: candle rounds with `f32::round`, a
//! libm call on the baseline x86-64 target, inside a 5-pass search over every 32 values, and
//! that call was most of the time of loading the 1.3B model with `--quant q4_k` (perf: 46 % of
//! the load's CPU time). The blocks are byte-identical to candle's (tested), so `q4_k` weights
//! do not depend on which quantizer made them.

use half::f16;

/// Values per super-block, bytes per super-block (`BlockQ4K`: d, dmin, 12 scale bytes, 128
/// nibble bytes).
pub(super) const QK_K: usize = 256;
pub(super) const BLOCK_BYTES: usize = 2 + 2 + 12 + QK_K / 2;

/// `v.round() as i32` (half away from zero) without the libm call. Exact: below 2²³ in
/// magnitude `v − trunc(v)` is computed without rounding, above it every f32 is an integer.
#[inline]
fn nearest_int(v: f32) -> i32 {
    if v.is_nan() || v.abs() >= 8_388_608.0 {
        return v.round() as i32; // NaN, ±inf, huge: as candle
    }
    let t = v as i32;
    let f = v - t as f32;
    if f >= 0.5 {
        t + 1
    } else if f <= -0.5 {
        t - 1
    } else {
        t
    }
}

/// ref: candle `quantized::utils::make_qkx1_quants` (llama.cpp k_quants.c@8183159 L224):
/// `(scale, −min)` of 32 values for levels `0..=nmax`.
fn make_qkx1_quants(nmax: i32, ntry: usize, x: &[f32; 32]) -> (f32, f32) {
    let n = x.len();
    let mut l = [0u8; 32];
    let min = *x
        .iter()
        .take(n)
        .min_by(|a, b| a.total_cmp(b))
        .unwrap_or(&x[0]);
    let max = *x.iter().max_by(|a, b| a.total_cmp(b)).unwrap_or(&x[0]);
    if max == min {
        return (0.0, 0.0);
    }
    let mut min = min.min(0.);
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    for _ in 0..ntry {
        let mut sumlx = 0.0;
        let mut suml2 = 0;
        let mut did_change = false;
        for (i, value) in x.iter().enumerate().take(n) {
            let li = nearest_int(iscale * (value - min)).clamp(0, nmax);
            let clamped_li = li as u8;
            if clamped_li != l[i] {
                l[i] = clamped_li;
                did_change = true;
            }
            sumlx += (value - min) * li as f32;
            suml2 += li * li;
        }
        scale = sumlx / suml2 as f32;
        let sum: f32 = x
            .iter()
            .take(n)
            .zip(l.iter().take(n))
            .map(|(xi, &li)| xi - scale * li as f32)
            .sum();
        min = sum / n as f32;
        if min > 0.0 {
            min = 0.0;
        }
        iscale = 1.0 / scale;
        if !did_change {
            break;
        }
    }
    (scale, -min)
}

/// ggml's 6-bit scale/min unpack for `q4_k` super-blocks.
fn get_scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// One super-block of 256 values → its 144 bytes, laid out as `BlockQ4K` (`repr(C)`: `d`,
/// `dmin` as native-endian f16, 12 scale bytes, 128 nibble bytes).
/// ref: candle `BlockQ4K::from_float`.
pub(super) fn quantize_block(x: &[f32; QK_K], out: &mut [u8]) {
    let mut mins = [0f32; QK_K / 32];
    let mut scales = [0f32; QK_K / 32];
    for (j, chunk) in x.chunks_exact(32).enumerate() {
        let chunk: &[f32; 32] = chunk.try_into().expect("chunks_exact(32) yields 32 values");
        (scales[j], mins[j]) = make_qkx1_quants(15, 5, chunk);
    }
    let max_scale = scales.iter().fold(0.0, |max, &val| val.max(max));
    let max_min = mins.iter().fold(0.0, |max, &val| val.max(max));
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };

    let mut sc = [0u8; 12];
    for j in 0..QK_K / 32 {
        let ls = nearest_int(inv_scale * scales[j]).min(63) as u8;
        let lm = nearest_int(inv_min * mins[j]).min(63) as u8;
        if j < 4 {
            sc[j] = ls;
            sc[j + 4] = lm;
        } else {
            sc[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
            sc[j - 4] |= (ls >> 4) << 6;
            sc[j] |= (lm >> 4) << 6;
        }
    }
    let d = f16::from_f32(max_scale / 63.0);
    let dmin = f16::from_f32(max_min / 63.0);

    let mut l = [0u8; QK_K];
    for j in 0..QK_K / 32 {
        let (s, m) = get_scale_min_k4(j, &sc);
        let dj = d.to_f32() * s as f32;
        if dj != 0.0 {
            let dm = dmin.to_f32() * m as f32;
            for ii in 0..32 {
                let v = nearest_int((x[32 * j + ii] + dm) / dj);
                l[32 * j + ii] = v.clamp(0, 15) as u8;
            }
        }
    }

    out[0..2].copy_from_slice(&d.to_ne_bytes());
    out[2..4].copy_from_slice(&dmin.to_ne_bytes());
    out[4..16].copy_from_slice(&sc);
    let qs = &mut out[16..BLOCK_BYTES];
    for j in (0..QK_K).step_by(64) {
        for i in 0..32 {
            qs[(j / 64) * 32 + i] = l[j + i] | (l[j + i + 32] << 4);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_is_f32_round() {
        let mut v: Vec<f32> = vec![
            0.0,
            -0.0,
            0.5,
            -0.5,
            1.5,
            -1.5,
            2.5,
            -2.5,
            0.49999997,
            -0.49999997,
            14.5,
            15.499999,
            63.5,
            8_388_607.5,
            8_388_608.0,
            -8_388_609.0,
            1e20,
            -1e20,
            f32::MAX,
            f32::MIN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::MIN_POSITIVE,
            1e-40,
        ];
        let mut s = 0x1234_5678u32;
        for _ in 0..200_000 {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            // random bit patterns near the range the quantizer sees, and any pattern
            v.push(f32::from_bits(s) % 100.0);
            v.push(f32::from_bits(s));
        }
        for x in v {
            assert_eq!(nearest_int(x), x.round() as i32, "{x} ({:#x})", x.to_bits());
        }
    }
}
