//! Matrix products: candle's batched matmul made safe for cuBLAS layouts, and the mixed
//! f32 × bf16 product of an f32 KV cache under a bf16 model.

use candle_core::{DType, Result, Tensor};

/// `a·b`, candle's batched matmul. On a GPU an operand whose strides cuBLAS cannot take is made
/// contiguous first: candle's CUDA matmul accepts only dense inner matrices (leading dimension
/// equal to the row or column count) and one batch stride, while its CPU GEMM takes any
/// strides — so a strided view that works on the CPU (a slice of the last dim, e.g. the key
/// half of `[k | v]`) would fail there. The CPU gets the views as they are.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.device().is_cpu() {
        return a.matmul(b);
    }
    let (a_ok, b_ok) = cublas_takes(a.dims(), a.stride(), b.dims(), b.stride());
    match (a_ok, b_ok) {
        (true, true) => a.matmul(b),
        (true, false) => a.matmul(&b.contiguous()?),
        (false, true) => a.contiguous()?.matmul(b),
        (false, false) => a.contiguous()?.matmul(&b.contiguous()?),
    }
}

/// Whether candle's CUDA matmul (`gemm_config` in candle-core 0.11's CUDA backend) accepts the
/// layouts of `lhs` `[…, m, k]` and `rhs` `[…, k, n]`: each inner matrix row- or column-major
/// with no padding (a dimension of one may have any stride), and at most two batch dims that
/// fold into one stride.
fn cublas_takes(
    lhs_dims: &[usize],
    lhs_stride: &[usize],
    rhs_dims: &[usize],
    rhs_stride: &[usize],
) -> (bool, bool) {
    let r = lhs_dims.len();
    if r < 2 || rhs_dims.len() != r || lhs_stride.len() != r || rhs_stride.len() != r {
        return (false, false);
    }
    let (m, k, n) = (lhs_dims[r - 2], lhs_dims[r - 1], rhs_dims[r - 1]);
    // An inner `[rows, cols]` matrix with strides (s_rows, s_cols): row-major or column-major.
    let inner = |rows: usize, cols: usize, s_rows: usize, s_cols: usize| {
        ((s_cols == 1 || cols == 1) && (s_rows == cols || rows == 1))
            || ((s_cols == rows || cols == 1) && (s_rows == 1 || rows == 1))
    };
    let batch = |dims: &[usize], stride: &[usize]| match (dims, stride) {
        ([], []) | ([_], [_]) => true,
        ([d0, d1], [s0, s1]) => *s0 == s1 * d1 || *d0 == 1 || *d1 == 1,
        _ => false,
    };
    let lhs = inner(m, k, lhs_stride[r - 2], lhs_stride[r - 1])
        && batch(&lhs_dims[..r - 2], &lhs_stride[..r - 2]);
    let rhs = inner(k, n, rhs_stride[r - 2], rhs_stride[r - 1])
        && batch(&rhs_dims[..r - 2], &rhs_stride[..r - 2]);
    (lhs, rhs)
}

/// `a·b` where one side may be f32 and the other bf16 (an f32 KV cache under a bf16 model,
/// [`crate::llm::KvCache::for_model`]): multiplied in f32 and rounded to bf16 — what candle's
/// bf16 matmul computes (it widens both sides), without widening the f32 side again.
pub fn matmul_mixed(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    match (a.dtype(), b.dtype()) {
        (x, y) if x == y => matmul(a, b),
        (DType::F32, narrow) | (narrow, DType::F32) => {
            matmul(&a.to_dtype(DType::F32)?, &b.to_dtype(DType::F32)?)?.to_dtype(narrow)
        }
        (x, y) => candle_core::bail!("matmul of {x:?} with {y:?}"),
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};

    /// Layouts candle's CUDA matmul takes and refuses (its `gemm_config` rules).
    #[test]
    fn cublas_layout_rules() {
        use super::cublas_takes;
        let dev = Device::Cpu;
        let takes =
            |a: &Tensor, b: &Tensor| cublas_takes(a.dims(), a.stride(), b.dims(), b.stride());
        let t = |dims: &[usize]| Tensor::zeros(dims, DType::F32, &dev).unwrap();
        // Dense operands, and a transposed weight.
        assert_eq!(takes(&t(&[2, 4, 5, 8]), &t(&[2, 4, 8, 3])), (true, true));
        assert_eq!(takes(&t(&[7, 8]), &t(&[3, 8]).t().unwrap()), (true, true));
        // The KV cache: the first `len` of `cap` positions; keys transposed.
        let cache = t(&[1, 4, 256, 16]);
        let k = cache.narrow(2, 0, 100).unwrap();
        let q = t(&[1, 4, 1, 16]);
        assert_eq!(takes(&q, &k.t().unwrap()), (true, true));
        assert_eq!(takes(&t(&[1, 4, 1, 100]), &k), (true, true));
        // A slice of the last dim (the key half of `[k | v]`): padded rows, refused.
        let kv = t(&[1, 4, 100, 24]);
        let k_half = kv.narrow(3, 0, 16).unwrap();
        let v_half = kv.narrow(3, 16, 8).unwrap();
        assert_eq!(takes(&q, &k_half.t().unwrap()), (true, false));
        assert_eq!(takes(&t(&[1, 4, 1, 100]), &v_half), (true, false));
        // …and the same slice on the left.
        assert_eq!(takes(&k_half, &t(&[1, 4, 16, 2])), (false, true));
        // A head dim broadcast with stride 0 folds into one batch stride when B = 1.
        let c = t(&[1, 1, 50, 12]).broadcast_as((1, 4, 50, 12)).unwrap();
        assert_eq!(takes(&c.squeeze(0).unwrap(), &t(&[4, 12, 6])), (true, true));
        // Three batch dims: refused whatever the strides.
        assert_eq!(
            takes(&t(&[2, 2, 2, 3, 4]), &t(&[2, 2, 2, 4, 5])),
            (false, false)
        );
        // What matmul makes of the refused views is what candle computes on the dense copies.
        let a = Tensor::randn(0f32, 1.0, (1, 4, 3, 16), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, (1, 4, 100, 24), &dev).unwrap();
        let bt = b.narrow(3, 0, 16).unwrap().t().unwrap();
        let want = a.matmul(&bt.contiguous().unwrap()).unwrap();
        let got = super::matmul(&a, &bt).unwrap();
        let d = crate::nn::max_abs_diff(&want, &got);
        assert_eq!(d, 0.0);
    }
}
