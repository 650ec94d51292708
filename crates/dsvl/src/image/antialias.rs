//! torch's CPU antialiased bilinear resize in float32 (v1 §3.3): how the 7B model derives its 384×384 SigLIP
//! view from the padded 1024×1024 image (`torchvision.transforms.Resize(384, antialias=True)` →
//! `F.interpolate(x, size, mode="bilinear", align_corners=False, antialias=True)`).
//!
//! Transcribes ATen `UpSampleKernel.cpp` (`_separable_upsample_generic_Nd_kernel_impl`,
//! `HelperInterpBase::_compute_indices_min_size_weights_aa`, `interpolate_aa_single_dim*`), with the
//! arithmetic pinned down by experiment against torch 2.15.0 CPU (AVX-512 build):
//! - separable, last (width) dimension first, then height; a dimension whose size is unchanged is skipped;
//! - weights in f32, with the C promotions kept (centre, bounds and filter argument go through f64);
//! - per output, `acc = t0·w0`, then the remaining taps in order. The compiled kernel adds the taps in blocks
//!   of four with separate multiply and add, and the last `(n−1) mod 4` taps with a fused multiply-add. This
//!   reproduces torch bit for bit on every size tried; another torch build (other compiler / CPU dispatch) may
//!   differ in the last ulp.

use crate::error::{Error, Result};

/// Taps of one axis: output `i` reads `xsize[i]` inputs from `xmin[i]`, weights at `w[i * stride ..]`.
struct AaWeights {
    stride: usize,
    xmin: Vec<usize>,
    xsize: Vec<usize>,
    w: Vec<f32>,
}

/// The interpolation of an antialiased resize.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AaFilter {
    /// `mode="bilinear"`: triangle filter, 2 taps at scale 1.
    Bilinear,
    /// `mode="bicubic"`: Keys cubic with a = −0.5 (not the −0.75 of the non-antialiased bicubic), 4 taps.
    Bicubic,
}

impl AaFilter {
    fn interp_size(self) -> f64 {
        match self {
            AaFilter::Bilinear => 2.0,
            AaFilter::Bicubic => 4.0,
        }
    }

    /// `aa_filter` of `HelperInterpLinear` / `HelperInterpCubic`.
    fn eval(self, x: f32) -> f32 {
        let x = x.abs();
        match self {
            AaFilter::Bilinear if x < 1.0 => (1.0f64 - f64::from(x)) as f32,
            AaFilter::Bilinear => 0.0,
            AaFilter::Bicubic => {
                const A: f32 = -0.5;
                if x < 1.0 {
                    // ref: cubic_convolution1(x, A) = ((A + 2) * x - (A + 3)) * x * x + 1
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    // ref: cubic_convolution2(x, A) = ((A * x - 5 * A) * x + 8 * A) * x - 4 * A
                    ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A
                } else {
                    0.0
                }
            }
        }
    }
}

fn aa_weights(in_size: usize, out_size: usize, filter: AaFilter) -> AaWeights {
    // area_pixel_compute_scale<float>(align_corners = false, no scale given): in / out in float.
    let scale = in_size as f32 / out_size as f32;
    // support = (interp_size * 0.5) * scale for downscaling, interp_size * 0.5 otherwise.
    let half = filter.interp_size() * 0.5;
    let support = if scale >= 1.0 {
        (half * f64::from(scale)) as f32
    } else {
        half as f32
    };
    let stride = support.ceil() as usize * 2 + 1;
    let invscale = if scale >= 1.0 {
        (1.0 / f64::from(scale)) as f32
    } else {
        1.0
    };
    let mut aw = AaWeights {
        stride,
        xmin: Vec::with_capacity(out_size),
        xsize: Vec::with_capacity(out_size),
        w: vec![0.0; out_size * stride],
    };
    for i in 0..out_size {
        // ref: scalar_t center = scale * (i + 0.5);  (i + 0.5 is a double)
        let center = (f64::from(scale) * (i as f64 + 0.5)) as f32;
        let xmin = ((f64::from(center - support) + 0.5) as i64).max(0);
        let xsize = (((f64::from(center + support) + 0.5) as i64).min(in_size as i64) - xmin)
            .clamp(0, stride as i64);
        let (xmin, xsize) = (xmin as usize, xsize as usize);
        let w = &mut aw.w[i * stride..(i + 1) * stride];
        let mut total = 0.0f32;
        for (j, wj) in w.iter_mut().enumerate().take(xsize) {
            // ref: filter_fn((j + xmin - center + 0.5) * invscale): int64 - float, then double, then float.
            let arg = ((f64::from((j + xmin) as f32 - center) + 0.5) * f64::from(invscale)) as f32;
            *wj = filter.eval(arg);
            total += *wj;
        }
        if total != 0.0 {
            for wj in w.iter_mut().take(xsize) {
                *wj /= total;
            }
        }
        aw.xmin.push(xmin);
        aw.xsize.push(xsize);
    }
    aw
}

/// One output value: `src(j)` is input tap `j` of this output's window.
#[inline]
fn dot(w: &[f32], src: impl Fn(usize) -> f32) -> f32 {
    let n = w.len();
    let mut acc = src(0) * w[0];
    // Taps 1..=plain in blocks of four: separate multiply and add; the remainder is contracted to FMA.
    let plain = (n - 1) / 4 * 4;
    for (j, &wj) in w.iter().enumerate().skip(1) {
        if j <= plain {
            acc += src(j) * wj;
        } else {
            acc = src(j).mul_add(wj, acc);
        }
    }
    acc
}

/// Resample the last axis of `[rows, in_w]` to `[rows, out_w]`.
fn pass_width(x: &[f32], rows: usize, in_w: usize, out_w: usize, filter: AaFilter) -> Vec<f32> {
    let aw = aa_weights(in_w, out_w, filter);
    let mut out = vec![0.0f32; rows * out_w];
    for (r, out_row) in out.chunks_exact_mut(out_w).enumerate() {
        let row = &x[r * in_w..(r + 1) * in_w];
        for (i, o) in out_row.iter_mut().enumerate() {
            let (x0, n) = (aw.xmin[i], aw.xsize[i]);
            *o = dot(&aw.w[i * aw.stride..i * aw.stride + n], |j| row[x0 + j]);
        }
    }
    out
}

/// Resample the middle axis of `[channels, in_h, w]` to `[channels, out_h, w]`.
fn pass_height(
    x: &[f32],
    channels: usize,
    in_h: usize,
    w: usize,
    out_h: usize,
    filter: AaFilter,
) -> Vec<f32> {
    let aw = aa_weights(in_h, out_h, filter);
    let mut out = vec![0.0f32; channels * out_h * w];
    for c in 0..channels {
        let plane = &x[c * in_h * w..(c + 1) * in_h * w];
        for i in 0..out_h {
            let (y0, n) = (aw.xmin[i], aw.xsize[i]);
            let wts = &aw.w[i * aw.stride..i * aw.stride + n];
            let out_row = &mut out[(c * out_h + i) * w..(c * out_h + i + 1) * w];
            for (col, o) in out_row.iter_mut().enumerate() {
                *o = dot(wts, |j| plane[(y0 + j) * w + col]);
            }
        }
    }
    out
}

/// torch `F.interpolate(x, size=(out_h, out_w), mode="bilinear", align_corners=False, antialias=True)` on a
/// CPU float32 tensor, bit-exact with torch 2.15.0 (module docs). In: float32 CHW `[channels, in_h, in_w]`;
/// out: float32 CHW `[channels, out_h, out_w]`. No clamping (torchvision does not clamp floats).
///
/// Errors with [`Error::Unsupported`] if `chw.len() != channels * in_h * in_w` or an input side is zero while
/// the output side is not.
pub fn resize_bilinear_antialias_f32(
    chw: &[f32],
    channels: usize,
    in_h: usize,
    in_w: usize,
    out_h: usize,
    out_w: usize,
) -> Result<Vec<f32>> {
    resize_antialias_f32(
        chw,
        channels,
        (in_h, in_w),
        (out_h, out_w),
        AaFilter::Bilinear,
    )
}

/// torch `F.interpolate(x, size, mode=bilinear|bicubic, align_corners=False, antialias=True)` on a CPU
/// float32 CHW buffer (see [`resize_bilinear_antialias_f32`]). DeepSeek-OCR interpolates its SAM and
/// CLIP position embeddings this way (bicubic) for inputs other than 1024².
pub fn resize_antialias_f32(
    chw: &[f32],
    channels: usize,
    (in_h, in_w): (usize, usize),
    (out_h, out_w): (usize, usize),
    filter: AaFilter,
) -> Result<Vec<f32>> {
    if chw.len() != channels * in_h * in_w || (in_h == 0 && out_h != 0) || (in_w == 0 && out_w != 0)
    {
        return Err(Error::Unsupported {
            what: format!(
                "antialiased resize of a buffer of {} floats as [{channels}, {in_h}, {in_w}] to [{out_h}, {out_w}]",
                chw.len()
            ),
            hint: "pass a CHW float32 buffer whose length is channels * height * width, with non-empty sides"
                .into(),
        });
    }
    if out_h == 0 || out_w == 0 || channels == 0 {
        return Ok(Vec::new());
    }
    // ref: _separable_upsample_generic_Nd_kernel_impl: width (contiguous dim) first, then height.
    let x = if out_w != in_w {
        pass_width(chw, channels * in_h, in_w, out_w, filter)
    } else {
        chw.to_vec()
    };
    Ok(if out_h != in_h {
        pass_height(&x, channels, in_h, out_w, out_h, filter)
    } else {
        x
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_are_normalised_triangles() {
        let aw = aa_weights(1024, 384, AaFilter::Bilinear);
        assert_eq!(aw.stride, 7); // support 2.667 -> ceil 3 -> 7 taps max
        for i in 0..384 {
            let s: f32 = aw.w[i * aw.stride..i * aw.stride + aw.xsize[i]]
                .iter()
                .sum();
            assert!((s - 1.0).abs() < 1e-6, "output {i}: weights sum to {s}");
        }
    }

    #[test]
    fn constant_input_stays_constant_and_bad_shapes_are_errors() {
        let x = vec![0.25f32; 2 * 9 * 7];
        let y = resize_bilinear_antialias_f32(&x, 2, 9, 7, 4, 3).unwrap_or_default();
        assert_eq!(y.len(), 2 * 4 * 3);
        assert!(y.iter().all(|&v| (v - 0.25).abs() < 1e-7));
        let err = resize_bilinear_antialias_f32(&x, 2, 9, 8, 4, 3);
        assert!(matches!(err, Err(Error::Unsupported { .. })));
        // bicubic: weights sum to 1 up and down, so a constant stays constant
        for (out_h, out_w) in [(4, 3), (20, 15)] {
            let y = resize_antialias_f32(&x, 2, (9, 7), (out_h, out_w), AaFilter::Bicubic)
                .unwrap_or_default();
            assert_eq!(y.len(), 2 * out_h * out_w);
            assert!(y.iter().all(|&v| (v - 0.25).abs() < 1e-6), "{y:?}");
        }
    }
}
