//! Multi-head latent attention, `q_lora_rank: None` (v2 §8.3; official `DeepseekV2Attention`).
//!
//! Per token the cache holds the normalised latent `c` (`kv_lora_rank` values) and the rotated
//! shared rope key `k_pe` (`qk_rope_head_dim`), 576 values for the released models, in a
//! [`KvCache`] with one "head": `c` in the key slot, `k_pe` in the value slot.
//!
//! Two equal forms of the same maths (v2 §10.10), picked per call by a FLOP count:
//! * absorbed (the reference at HEAD): `q_lat = q_nope·W_UK` per head, scores `q_lat·cᵀ +
//!   q_pe·k_peᵀ` over the latent, `o = (p·c)·W_UVᵀ`. Nothing per cached token is expanded, so
//!   decode reads 576 values per position; it costs `2·kv_lora + rope` per query-key pair.
//! * expanded (the first public commit): `[k_nope | v] = c·W_UKVᵀ` for every cached position,
//!   then ordinary attention over `nope + rope` dims. Expanding costs
//!   `T·kv_lora·(nope + v)` per head, but every query-key pair is then 3.4× cheaper (320 vs
//!   1088 multiply-adds for the released dims), so a prefill (t ≈ T) always wins this way,
//!   while decode (t = 1) and short chunks after a long cache stay absorbed.
//!
//! RoPE is interleaved (GPT-J pairs) on the rope dims (v2 §8.3): the reference permutes each
//! vector to half layout and rotates halves, which sends pair `(x[2i], x[2i+1])` to slots
//! `(i, d/2+i)`; `rope_i` writes the same rotated pair to `(2i, 2i+1)`. Queries and keys get
//! the same layout, so every dot product is the same sum (in another order), and the cached
//! `k_pe` differs from the reference's only by that fixed permutation.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::rotary_emb::rope_i;
use candle_nn::VarBuilder;

use super::config::{AttentionKind, DeepseekV2Spec};
use crate::llm::step::StepCtx;
use crate::llm::KvCache;
use crate::nn::{matmul, matmul_mixed, qlinear, Linear, Quant, RmsNorm};

/// Which MLA form to compute (see the module docs). `Auto` picks the cheaper one per call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MlaForm {
    Auto,
    Absorbed,
    Expanded,
}

/// Most score values (`B·H·rows·T`) one attention block holds: 64 Mi, 256 MiB in f32.
const SCORE_BUDGET: usize = 1 << 26;

/// The reference builds `kv_a_layernorm` with the RMSNorm default eps, not `rms_norm_eps`.
const KV_A_LAYERNORM_EPS: f64 = 1e-6;

pub(super) struct Mla {
    /// `[D] -> [H·(nope + rope)]`
    q_proj: Linear,
    /// `[D] -> [kv_lora + rope]`: the latent and the shared rope key.
    kv_a_proj_with_mqa: Linear,
    kv_a_layernorm: RmsNorm,
    /// `kv_b_proj.weight` `[H·(nope + v), kv_lora]` viewed as `[H, nope + v, kv_lora]`: rows
    /// `..nope` of each head are W_UK (→ k_nope), the rest W_UV (→ v). Kept once; the absorbed
    /// and expanded forms read strided views of it. A bf16 model keeps it widened to f32:
    /// candle multiplies bf16 by widening both operands' whole storage to f32 on every call,
    /// which for this weight cost two full conversions per layer and decode step (tens of MB
    /// per layer at the released shapes); the products are the same, since a widened bf16 value
    /// is exact in f32 and the inputs and results are rounded to bf16 as before
    /// ([`per_head_matmul`]).
    kv_b: Tensor,
    /// `[H·v] -> [D]`
    o_proj: Linear,
    heads: usize,
    nope: usize,
    rope: usize,
    v_dim: usize,
    kv_lora: usize,
    /// ref: `softmax_scale = q_head_dim ** -0.5` (no YaRN mscale: rope_scaling is null).
    scale: f64,
    /// [`SCORE_BUDGET`]; smaller in tests to exercise several query blocks.
    score_budget: usize,
}

impl Mla {
    /// `quant`: the format of `q_proj`, `kv_a_proj_with_mqa` and `o_proj`; `kv_b_proj` is
    /// always kept in the compute dtype (the absorbed form multiplies its per-head halves).
    pub(super) fn new(spec: &DeepseekV2Spec, quant: Option<Quant>, vb: VarBuilder) -> Result<Self> {
        let AttentionKind::Mla {
            kv_lora_rank: dc,
            qk_nope_head_dim: dn,
            qk_rope_head_dim: dr,
            v_head_dim: dv,
            ..
        } = spec.attention
        else {
            candle_core::bail!("Mla::new needs an MLA spec")
        };
        let (d, h) = (spec.hidden_size, spec.num_heads);
        let kv_b = vb
            .pp("kv_b_proj")
            .get((h * (dn + dv), dc), "weight")?
            .reshape((h, dn + dv, dc))?;
        let kv_b = match kv_b.dtype() {
            DType::BF16 => kv_b.to_dtype(DType::F32)?,
            _ => kv_b,
        };
        Ok(Self {
            q_proj: qlinear(d, h * (dn + dr), quant, vb.pp("q_proj"))?,
            kv_a_proj_with_mqa: qlinear(d, dc + dr, quant, vb.pp("kv_a_proj_with_mqa"))?,
            kv_a_layernorm: RmsNorm::new(dc, KV_A_LAYERNORM_EPS, vb.pp("kv_a_layernorm"))?,
            kv_b,
            o_proj: qlinear(h * dv, d, quant, vb.pp("o_proj"))?,
            heads: h,
            nope: dn,
            rope: dr,
            v_dim: dv,
            kv_lora: dc,
            scale: ((dn + dr) as f64).powf(-0.5),
            score_budget: SCORE_BUDGET,
        })
    }

    /// The three plain linears (`kv_b_proj` is not one of them).
    pub(super) fn linears(&self) -> [&Linear; 3] {
        [&self.q_proj, &self.kv_a_proj_with_mqa, &self.o_proj]
    }

    /// Weight bytes one decode step reads: the linears, `kv_b_proj`, `kv_a_layernorm`.
    pub(super) fn decode_weight_bytes(&self) -> u64 {
        let elt = self.kv_b.dtype().size_in_bytes() as u64;
        let linears: u64 = self.linears().iter().map(|l| l.weight_bytes()).sum();
        linears + (self.kv_b.elem_count() + self.kv_lora) as u64 * elt
    }

    /// Whether the expanded form costs fewer multiply-adds for `t` queries over `big_t` keys.
    fn expanded_is_cheaper(&self, t: usize, big_t: usize) -> bool {
        let (dn, dr, dv, dc) = (self.nope, self.rope, self.v_dim, self.kv_lora);
        let absorbed = t * (dc * (dn + dv) + big_t * (2 * dc + dr));
        let expanded = big_t * dc * (dn + dv) + t * big_t * (dn + dr + dv);
        expanded < absorbed
    }

    /// `x` `[B, t, D]` at positions `cache.len()..` → `[B, t, D]`; appends `c` and `k_pe`.
    pub(super) fn forward(
        &self,
        x: &Tensor,
        ctx: &StepCtx,
        cache: &mut KvCache,
        layer: usize,
        form: MlaForm,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let (h, dn, dr, dv, dc) = (self.heads, self.nope, self.rope, self.v_dim, self.kv_lora);

        // ref: q = q_proj(x).view(b, t, h, dn + dr).transpose(1, 2); split [dn, dr]
        let q = self
            .q_proj
            .forward(x)?
            .reshape((b, t, h, dn + dr))?
            .transpose(1, 2)?
            .contiguous()?; // [B, H, t, dn + dr]
        let q_nope = q.narrow(3, 0, dn)?;
        let q_pe = rope_i(&q.narrow(3, dn, dr)?.contiguous()?, &ctx.cos, &ctx.sin)?;

        // ref: compressed_kv, k_pe = split(kv_a_proj_with_mqa(x), [dc, dr]); c = kv_a_layernorm(c)
        let kv = self.kv_a_proj_with_mqa.forward(x)?; // [B, t, dc + dr]
        let c = self
            .kv_a_layernorm
            .forward(&kv.narrow(2, 0, dc)?)?
            .unsqueeze(1)?; // [B, 1, t, dc]
        let k_pe = kv.narrow(2, dc, dr)?.contiguous()?.unsqueeze(1)?;
        let k_pe = rope_i(&k_pe, &ctx.cos, &ctx.sin)?; // [B, 1, t, dr]
        let (c, k_pe) = cache.append(layer, &c, &k_pe)?;
        let big_t = c.dim(2)?;
        let (c, k_pe) = (c.squeeze(1)?, k_pe.squeeze(1)?); // [B, T, dc], [B, T, dr]

        let expanded = match form {
            MlaForm::Absorbed => false,
            MlaForm::Expanded => true,
            MlaForm::Auto => self.expanded_is_cheaper(t, big_t),
        };
        // Queries go in blocks of rows so the `[B, H, rows, T]` scores stay bounded on a long
        // one-shot prefill; the GEMMs and their results are the same as in one block.
        let rows = (self.score_budget / (b * h * big_t).max(1)).clamp(1, t);
        let blocks = (0..t).step_by(rows).map(|r0| (r0, rows.min(t - r0)));
        let mask = |r0: usize, n: usize| -> Result<Option<Tensor>> {
            ctx.mask.as_ref().map(|m| m.narrow(0, r0, n)).transpose()
        };
        // q_pe·k_peᵀ: the rope key is shared by all heads, so heads fold into rows, one GEMM.
        let pe_scores = |r0: usize, n: usize| -> Result<Tensor> {
            matmul_mixed(&q_pe.narrow(2, r0, n)?.reshape((b, h * n, dr))?, &k_pe.t()?)?
                .reshape((b, h, n, big_t))
        };
        let o = if expanded {
            // [k_nope | v] for every cached position: c · W_UKVᵀ per head.
            let c_h = c
                .to_dtype(self.kv_b.dtype())?
                .unsqueeze(1)?
                .broadcast_as((b, h, big_t, dc))?;
            let kv = per_head_matmul(&c_h, &self.kv_b.t()?)?.to_dtype(x.dtype())?; // [B, H, T, dn + dv]
            let k_nope_t = kv.narrow(3, 0, dn)?.t()?;
            let v = kv.narrow(3, dn, dv)?;
            let outs = blocks
                .map(|(r0, n)| {
                    let nope = matmul(&q_nope.narrow(2, r0, n)?, &k_nope_t)?;
                    let p = self.probs((nope + pe_scores(r0, n)?)?, mask(r0, n)?)?;
                    matmul(&p, &v) // [B, H, n, dv]
                })
                .collect::<Result<Vec<_>>>()?;
            Tensor::cat(&outs, 2)?
        } else {
            // ref: q_nope = q_nope @ kv_b[:, :dn, :]; scores = q_pe·k_peᵀ + q_nope·cᵀ
            let q_lat = per_head_matmul(&q_nope, &self.kv_b.narrow(1, 0, dn)?)?; // [B, H, t, dc]
            let outs = blocks
                .map(|(r0, n)| {
                    let nope =
                        matmul_mixed(&q_lat.narrow(2, r0, n)?.reshape((b, h * n, dc))?, &c.t()?)?
                            .reshape((b, h, n, big_t))?;
                    let p = self.probs((pe_scores(r0, n)? + nope)?, mask(r0, n)?)?;
                    // ref: einsum('bhql,blc->bhqc', p, c)
                    matmul_mixed(&p.reshape((b, h * n, big_t))?, &c)?.reshape((b, h, n, dc))
                })
                .collect::<Result<Vec<_>>>()?;
            let o_lat = Tensor::cat(&outs, 2)?;
            // ref: o_lat @ kv_b[:, dn:, :].mT
            per_head_matmul(&o_lat, &self.kv_b.narrow(1, dn, dv)?.t()?)? // [B, H, t, dv]
        };
        let o = o.transpose(1, 2)?.reshape((b, t, h * dv))?;
        self.o_proj.forward(&o)
    }

    /// ref: softmax(scores · scale + mask, dtype=f32).to(dtype) — `[B, H, rows, T]`.
    fn probs(&self, scores: Tensor, mask: Option<Tensor>) -> Result<Tensor> {
        let dtype = scores.dtype();
        let scores = (scores * self.scale)?;
        let scores = match &mask {
            Some(m) => scores.broadcast_add(m)?,
            None => scores,
        };
        candle_nn::ops::softmax_last_dim(&scores.to_dtype(DType::F32)?)?.to_dtype(dtype)
    }
}

/// `x` `[B, H, m, k]` times per-head `w` `[H, k, n]` → `[B, H, m, n]` in `x`'s dtype. Strided
/// views (the `kv_b` halves, a broadcast latent) go to the GEMM as they are when B = 1. A bf16
/// `x` against the f32 `kv_b` is widened and the product rounded back to bf16: the same values
/// as candle's bf16 matmul, which widens both sides.
fn per_head_matmul(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if x.dtype() != w.dtype() {
        return per_head_matmul(&x.to_dtype(w.dtype())?, w)?.to_dtype(x.dtype());
    }
    let (b, h, m, k) = x.dims4()?;
    if b == 1 {
        return matmul(&x.squeeze(0)?, w)?.unsqueeze(0);
    }
    let n = w.dim(2)?;
    let x = x.transpose(0, 1)?.contiguous()?.reshape((h, b * m, k))?;
    matmul(&x, w)?
        .reshape((h, b, m, n))?
        .transpose(0, 1)?
        .contiguous()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::rope::Rope;
    use candle_core::Device;
    use std::collections::HashMap;

    fn spec() -> DeepseekV2Spec {
        DeepseekV2Spec {
            vocab_size: 16,
            hidden_size: 12,
            intermediate_size: 8,
            num_layers: 1,
            num_heads: 3,
            num_kv_heads: 3,
            attention: AttentionKind::Mla {
                q_lora_rank: None,
                kv_lora_rank: 10,
                qk_nope_head_dim: 6,
                qk_rope_head_dim: 4,
                v_head_dim: 5,
            },
            moe: None,
            first_k_dense_replace: 0,
            moe_layer_freq: 1,
            rms_norm_eps: 1e-6,
            rope_theta: 10000.0,
            max_position_embeddings: 64,
            bos_token_id: None,
            eos_token_id: None,
        }
    }

    fn mla(dev: &Device) -> Result<Mla> {
        mla_from(weights(dev)?, dev)
    }

    fn mla_from(m: HashMap<String, Tensor>, dev: &Device) -> Result<Mla> {
        Mla::new(&spec(), None, VarBuilder::from_tensors(m, DType::F32, dev))
    }

    fn weights(dev: &Device) -> Result<HashMap<String, Tensor>> {
        let mut m = HashMap::new();
        for (name, shape) in [
            ("q_proj.weight", (3 * 10, 12)),
            ("kv_a_proj_with_mqa.weight", (14, 12)),
            ("kv_b_proj.weight", (3 * 11, 10)),
            ("o_proj.weight", (12, 15)),
        ] {
            m.insert(name.to_string(), Tensor::randn(0f32, 0.5, shape, dev)?);
        }
        m.insert(
            "kv_a_layernorm.weight".into(),
            (Tensor::randn(0f32, 0.1, 10, dev)? + 1.0)?,
        );
        Ok(m)
    }

    fn run(
        a: &Mla,
        x: &Tensor,
        cache: &mut KvCache,
        form: MlaForm,
        dev: &Device,
    ) -> Result<Tensor> {
        let rope = Rope::new(4, 10000.0, 64, DType::F32, dev)?;
        let ctx = StepCtx::new(&rope, cache.len(), x.dim(1)?, DType::F32, dev)?;
        a.forward(x, &ctx, cache, 0, form)
    }

    /// max|a − b| relative to max(1, max|b|): random weights give outputs of varying scale.
    fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
        let d = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
        let scale = b.abs()?.max_all()?.to_scalar::<f32>()?.max(1.0);
        Ok(d / scale)
    }

    /// Absorbed and expanded forms agree, in one-shot prefill, chunked prefill and decode,
    /// for batch 1 and batch 2 (the strided fast path and the general path).
    #[test]
    fn absorbed_and_expanded_forms_agree() -> Result<()> {
        let dev = Device::Cpu;
        let a = mla(&dev)?;
        for b in [1, 2] {
            let x = Tensor::randn(0f32, 1.0, (b, 9, 12), &dev)?;
            let mut outs = Vec::new();
            for form in [MlaForm::Absorbed, MlaForm::Expanded] {
                let mut cache = KvCache::new(1);
                let full = run(&a, &x, &mut cache, form, &dev)?;
                // the same 9 tokens as 5 + 3 + 1
                let mut cache = KvCache::new(1);
                let parts = [
                    run(&a, &x.narrow(1, 0, 5)?, &mut cache, form, &dev)?,
                    run(&a, &x.narrow(1, 5, 3)?, &mut cache, form, &dev)?,
                    run(&a, &x.narrow(1, 8, 1)?, &mut cache, form, &dev)?,
                ];
                let chunked = Tensor::cat(&parts, 1)?;
                assert!(max_diff(&full, &chunked)? < 1e-5, "{form:?} b={b}");
                outs.push(full);
            }
            let d = max_diff(&outs[0], &outs[1])?;
            assert!(d < 1e-5, "b={b}: absorbed vs expanded {d}");
        }
        Ok(())
    }

    /// Splitting the queries into blocks (long prefill) changes nothing.
    #[test]
    fn query_blocks_give_the_same_result() -> Result<()> {
        let dev = Device::Cpu;
        let w = weights(&dev)?;
        let a = mla_from(w.clone(), &dev)?;
        // 3 heads × 11 keys × 4 rows per block → blocks of 4, 4 and 3 queries
        let blocked = Mla {
            score_budget: 3 * 11 * 4,
            ..mla_from(w, &dev)?
        };
        let x = Tensor::randn(0f32, 1.0, (1, 11, 12), &dev)?;
        for form in [MlaForm::Absorbed, MlaForm::Expanded] {
            let whole = run(&a, &x, &mut KvCache::new(1), form, &dev)?;
            let got = run(&blocked, &x, &mut KvCache::new(1), form, &dev)?;
            let d = max_diff(&whole, &got)?;
            assert!(d < 1e-5, "{form:?}: {d}");
        }
        Ok(())
    }

    /// Batch rows are independent.
    #[test]
    fn batch_rows_match_single_rows() -> Result<()> {
        let dev = Device::Cpu;
        let a = mla(&dev)?;
        let x = Tensor::randn(0f32, 1.0, (2, 6, 12), &dev)?;
        for form in [MlaForm::Absorbed, MlaForm::Expanded] {
            let both = run(&a, &x, &mut KvCache::new(1), form, &dev)?;
            for i in 0..2 {
                let one = run(&a, &x.narrow(0, i, 1)?, &mut KvCache::new(1), form, &dev)?;
                assert!(max_diff(&both.narrow(0, i, 1)?, &one)? < 1e-5);
            }
        }
        Ok(())
    }

    #[test]
    fn auto_picks_absorbed_for_decode_and_expanded_for_prefill() -> Result<()> {
        let a = mla(&Device::Cpu)?;
        // released dims: kv_lora 512, nope 128, rope 64, v 128
        let real = Mla {
            nope: 128,
            rope: 64,
            v_dim: 128,
            kv_lora: 512,
            ..a
        };
        assert!(!real.expanded_is_cheaper(1, 4000));
        assert!(real.expanded_is_cheaper(1000, 1000));
        assert!(real.expanded_is_cheaper(300, 300));
        assert!(!real.expanded_is_cheaper(16, 3000));
        Ok(())
    }

    /// A bf16 model keeps `kv_b` in f32: its per-head products are bit for bit what candle's
    /// bf16 matmul gives on the bf16 weight (strided halves, B = 1 and B = 2), and a bf16 MLA
    /// loads it as f32.
    #[test]
    fn bf16_kv_b_in_f32_gives_the_bf16_products() -> Result<()> {
        let dev = Device::Cpu;
        let w16 = Tensor::randn(0f32, 0.5, (3, 11, 10), &dev)?.to_dtype(DType::BF16)?;
        let w32 = w16.to_dtype(DType::F32)?;
        for b in [1, 2] {
            let q = Tensor::randn(0f32, 1.0, (b, 3, 2, 6), &dev)?.to_dtype(DType::BF16)?;
            let o = Tensor::randn(0f32, 1.0, (b, 3, 2, 10), &dev)?.to_dtype(DType::BF16)?;
            let pairs = [
                (&q, w16.narrow(1, 0, 6)?, w32.narrow(1, 0, 6)?),
                (&o, w16.narrow(1, 6, 5)?.t()?, w32.narrow(1, 6, 5)?.t()?),
            ];
            for (x, old, new) in pairs {
                let want = per_head_matmul(x, &old)?;
                let got = per_head_matmul(x, &new)?;
                assert_eq!(got.dtype(), DType::BF16);
                let (want, got) = (
                    want.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?,
                    got.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?,
                );
                assert_eq!(want, got, "B = {b}");
            }
        }
        let vb = VarBuilder::from_tensors(weights(&dev)?, DType::BF16, &dev);
        let m = Mla::new(&spec(), None, vb)?;
        assert_eq!(m.kv_b.dtype(), DType::F32);
        Ok(())
    }
}
