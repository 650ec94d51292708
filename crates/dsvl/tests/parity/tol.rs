//! Comparison helper for parity tests: exact shapes, no broadcasting, a readable failure message.

use candle_core::{DType, Tensor};

/// Absolute tolerance `abs`, plus `rel` × max|want| (the "logit scale").
#[derive(Debug, Clone, Copy)]
pub struct Tol {
    pub abs: f32,
    pub rel: f32,
}

/// f32 stage gates (v1 issue: logits within 1e-4 of the logit scale). Vision and aligner outputs
/// get the same relative gate; reference-v1 §6 measured 6e-5 for an independent implementation.
pub const F32_STAGE: Tol = Tol {
    abs: 1e-5,
    rel: 1e-4,
};
/// bf16 has 8 bits of mantissa: ulp at 1.0 is 2^-7; end-to-end logits drift a few ulps.
pub const BF16_LOGITS: Tol = Tol {
    abs: 0.0,
    rel: 3e-2,
};

pub struct Diff {
    pub max_abs: f32,
    pub at: usize,
    pub got: f32,
    pub want: f32,
    pub scale: f32,
}

pub fn diff(got: &Tensor, want: &Tensor) -> anyhow::Result<Diff> {
    anyhow::ensure!(
        got.dims() == want.dims(),
        "shape mismatch: got {:?}, want {:?}",
        got.dims(),
        want.dims()
    );
    let g = got.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let w = want.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let scale = w.iter().fold(0f32, |m, v| m.max(v.abs()));
    let mut d = Diff {
        max_abs: 0.0,
        at: 0,
        got: 0.0,
        want: 0.0,
        scale,
    };
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        anyhow::ensure!(a.is_finite(), "non-finite value {a} at flat index {i}");
        let e = (a - b).abs();
        if e > d.max_abs {
            d = Diff {
                max_abs: e,
                at: i,
                got: *a,
                want: *b,
                scale,
            };
        }
    }
    Ok(d)
}

/// Fails with `name: max|Δ| … > gate at flat index … (got …, want …); shape …`.
pub fn assert_close(name: &str, got: &Tensor, want: &Tensor, tol: Tol) -> anyhow::Result<()> {
    let w = want.to_dtype(DType::F32)?.flatten_all()?;
    let mean = w.mean_all()?.to_scalar::<f32>()?;
    let std = (w
        .broadcast_sub(&Tensor::new(mean, w.device())?)?
        .sqr()?
        .mean_all()?
        .to_scalar::<f32>()?)
    .sqrt();
    anyhow::ensure!(
        std > 0.0,
        "{name}: the reference is constant ({mean}); the fixture is trivial"
    );
    let d = diff(got, want).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
    let gate = tol.abs + tol.rel * d.scale;
    anyhow::ensure!(
        d.max_abs <= gate,
        "{name}: max|Δ| {:.3e} > {:.3e} at flat index {} (got {}, want {}); shape {:?}",
        d.max_abs,
        gate,
        d.at,
        d.got,
        d.want,
        want.dims()
    );
    Ok(())
}

#[test]
fn assert_close_rejects_a_perturbation_just_past_the_gate() -> anyhow::Result<()> {
    let dev = candle_core::Device::Cpu;
    let want = Tensor::new(&[1.0f32, -2.0, 4.0, 0.5], &dev)?;
    let gate = F32_STAGE.abs + F32_STAGE.rel * 4.0;
    let ok = Tensor::new(&[1.0f32 + gate * 0.9, -2.0, 4.0, 0.5], &dev)?;
    let bad = Tensor::new(&[1.0f32, -2.0, 4.0, 0.5 + gate * 1.5], &dev)?;
    assert_close("ok", &ok, &want, F32_STAGE)?;
    let err = assert_close("bad", &bad, &want, F32_STAGE)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("bad: max|Δ|") && err.contains("flat index 3"),
        "{err}"
    );
    let shape = assert_close("shape", &want.reshape((2, 2))?, &want, F32_STAGE)
        .unwrap_err()
        .to_string();
    assert!(shape.contains("shape mismatch"), "{shape}");
    Ok(())
}
