//! DeepSeekMoE feed-forward (v2 §8.4): the SiLU-gated MLP used for the dense layers, the
//! routed experts and the shared experts, and the gate.
//!
//! The gate runs its `[T, E]` logits GEMM in f32 on the device, then reads them to the host
//! once per layer: scores, top-k and weights are a few hundred floats per token, and the expert
//! ids are needed on the host anyway to group tokens by expert. Each used expert then runs once
//! on all of its tokens (one gather, one MLP, weights applied in f32), and one gather by the
//! inverse permutation puts the `T·k` weighted outputs back in token order for the sum over k,
//! as the reference's `moe_infer` does.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::config::{MoeSpec, ScoringFunc, TopkMethod};
use crate::nn::{linear_from_weight, linear_from_weight_quant, qlinear, Linear, Quant};

/// `DeepseekV2MLP`: `down(silu(gate(x)) · up(x))`, no biases. `gate_proj` and `up_proj` are
/// fused into one `[D, 2F]` GEMM at load time (same dot products, one pass over `x`).
pub(super) struct GluMlp {
    gate_up: Linear,
    down_proj: Linear,
    inter: usize,
}

impl GluMlp {
    /// Loads `{gate,up,down}_proj.weight` under `vb` for hidden `d` and width `inter`, stored
    /// as `quant` (rows are quantized independently, so fusing gate and up changes nothing).
    pub(super) fn new(
        d: usize,
        inter: usize,
        quant: Option<Quant>,
        vb: VarBuilder,
    ) -> Result<Self> {
        let gate = vb.pp("gate_proj").get((inter, d), "weight")?;
        let up = vb.pp("up_proj").get((inter, d), "weight")?;
        Ok(Self {
            gate_up: linear_from_weight_quant(&Tensor::cat(&[&gate, &up], 0)?, quant)?,
            down_proj: qlinear(inter, d, quant, vb.pp("down_proj"))?,
            inter,
        })
    }

    /// The fused gate/up projection and `down_proj`.
    pub(super) fn linears(&self) -> [&Linear; 2] {
        [&self.gate_up, &self.down_proj]
    }

    pub(super) fn weight_bytes(&self) -> u64 {
        self.gate_up.weight_bytes() + self.down_proj.weight_bytes()
    }
}

impl Module for GluMlp {
    /// `[.., D] -> [.., D]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gu = self.gate_up.forward(x)?;
        let last = gu.rank() - 1;
        let g = candle_nn::ops::silu(&gu.narrow(last, 0, self.inter)?)?;
        let u = gu.narrow(last, self.inter, self.inter)?;
        self.down_proj.forward(&(g * u)?)
    }
}

/// Experts chosen for `T` tokens: `experts[t·k + j]` with weight `weights[t·k + j]`, `j` in
/// descending order of the selection score (the reference's top-k is unsorted; only the set
/// and the summation order can differ).
#[derive(Debug, Clone, PartialEq)]
pub struct Routing {
    pub top_k: usize,
    pub experts: Vec<u32>,
    pub weights: Vec<f32>,
}

/// `MoEGate` (inference branch) on host-side f32 logits.
pub(super) struct Gate {
    /// `gate.weight` as f32 `[E, D]`: ref `F.linear(h.float(), weight.float())`.
    weight: Linear,
    /// `e_score_correction_bias` (noaux_tc only), as f32.
    bias: Option<Vec<f32>>,
    spec: MoeSpec,
}

impl Gate {
    fn new(d: usize, spec: &MoeSpec, vb: VarBuilder) -> Result<Self> {
        let e = spec.n_routed_experts;
        // Loaded in the model dtype then widened, as the reference's `.type(torch.float32)` of a
        // bf16 parameter does (a stored-F32 bias is rounded the same way).
        let weight = linear_from_weight(&vb.get((e, d), "weight")?.to_dtype(DType::F32)?)?;
        let bias = match spec.topk_method {
            TopkMethod::NoauxTc => Some(
                vb.get(e, "e_score_correction_bias")?
                    .to_dtype(DType::F32)?
                    .to_vec1::<f32>()?,
            ),
            TopkMethod::Greedy | TopkMethod::GroupLimitedGreedy => None,
        };
        Ok(Self {
            weight,
            bias,
            spec: spec.clone(),
        })
    }

    /// f32 logits `[T, E]` (row-major) → routing.
    pub(super) fn route(&self, logits: &[f32]) -> Routing {
        route(&self.spec, self.bias.as_deref(), logits)
    }
}

/// Indices of the `k` largest values, descending; ties go to the lower index.
fn top_k(values: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    idx.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

/// The reference gate for one batch of logits (v2 §8.4; `MoEGate.forward`, eval mode).
pub(super) fn route(spec: &MoeSpec, bias: Option<&[f32]>, logits: &[f32]) -> Routing {
    let e = spec.n_routed_experts;
    let k = spec.num_experts_per_tok;
    let t = logits.len() / e;
    let per_group = e / spec.n_group;
    let mut experts = Vec::with_capacity(t * k);
    let mut weights = Vec::with_capacity(t * k);
    let mut scores = vec![0f32; e];
    let mut choice = vec![0f32; e];
    for row in logits.chunks_exact(e) {
        match spec.scoring_func {
            ScoringFunc::Softmax => {
                // ref: logits.softmax(dim=-1, dtype=torch.float32)
                let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
                let mut sum = 0f32;
                for (s, &x) in scores.iter_mut().zip(row) {
                    *s = (x - max).exp();
                    sum += *s;
                }
                scores.iter_mut().for_each(|s| *s /= sum);
            }
            ScoringFunc::Sigmoid => {
                for (s, &x) in scores.iter_mut().zip(row) {
                    *s = 1.0 / (1.0 + (-x).exp());
                }
            }
        }
        // Which values the top-k runs over, and which values become the weights.
        let from_choice = match spec.topk_method {
            TopkMethod::Greedy => {
                choice.copy_from_slice(&scores);
                true
            }
            TopkMethod::GroupLimitedGreedy => {
                // ref: group score = max over the group; keep topk_group groups; others → 0.0;
                // the weights are read from the masked scores.
                let group: Vec<f32> = scores
                    .chunks_exact(per_group)
                    .map(|g| g.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)))
                    .collect();
                mask_groups(&scores, &group, spec.topk_group, per_group, &mut choice);
                true
            }
            TopkMethod::NoauxTc => {
                // ref: choose by scores + bias; group score = sum of the group's top 2; others
                // filled with 0.0; the weights are gathered from the UNBIASED scores.
                let biased: Vec<f32> = match bias {
                    Some(b) => scores.iter().zip(b).map(|(s, b)| s + b).collect(),
                    None => scores.clone(),
                };
                let group: Vec<f32> = biased
                    .chunks_exact(per_group)
                    .map(|g| top_k(g, 2).iter().map(|&i| g[i]).sum())
                    .collect();
                mask_groups(&biased, &group, spec.topk_group, per_group, &mut choice);
                false
            }
        };
        let idx = top_k(&choice, k);
        let src = if from_choice { &choice } else { &scores };
        let mut w: Vec<f32> = idx.iter().map(|&i| src[i]).collect();
        let scale = spec.routed_scaling_factor as f32;
        if k > 1 && spec.norm_topk_prob {
            // ref: topk_weight / (topk_weight.sum(-1) + 1e-20) * routed_scaling_factor
            let denom = w.iter().sum::<f32>() + 1e-20;
            w.iter_mut().for_each(|x| *x = *x / denom * scale);
        } else {
            w.iter_mut().for_each(|x| *x *= scale);
        }
        experts.extend(idx.iter().map(|&i| i as u32));
        weights.extend(w);
    }
    Routing {
        top_k: k,
        experts,
        weights,
    }
}

/// `choice = values` where the expert's group is among the `keep` best groups, else 0.0.
fn mask_groups(values: &[f32], group: &[f32], keep: usize, per_group: usize, out: &mut [f32]) {
    let kept = top_k(group, keep);
    for (g, (o, v)) in out
        .chunks_exact_mut(per_group)
        .zip(values.chunks_exact(per_group))
        .enumerate()
    {
        if kept.contains(&g) {
            o.copy_from_slice(v);
        } else {
            o.fill(0.0);
        }
    }
}

/// `DeepseekV2MoE`: routed experts plus the shared experts (v2 §8.4).
pub(super) struct Moe {
    gate: Gate,
    experts: Vec<GluMlp>,
    shared_experts: Option<GluMlp>,
}

impl Moe {
    /// `quant`: the format of the routed and shared experts; the router stays f32.
    pub(super) fn new(
        d: usize,
        spec: &MoeSpec,
        quant: Option<Quant>,
        vb: VarBuilder,
    ) -> Result<Self> {
        let f = spec.moe_intermediate_size;
        let experts = (0..spec.n_routed_experts)
            .map(|j| GluMlp::new(d, f, quant, vb.pp("experts").pp(j)))
            .collect::<Result<Vec<_>>>()?;
        let shared_experts = (spec.n_shared_experts > 0)
            .then(|| GluMlp::new(d, f * spec.n_shared_experts, quant, vb.pp("shared_experts")))
            .transpose()?;
        Ok(Self {
            gate: Gate::new(d, spec, vb.pp("gate"))?,
            experts,
            shared_experts,
        })
    }

    /// Every expert linear: the routed experts in order, then the shared experts.
    pub(super) fn linears(&self) -> impl Iterator<Item = &Linear> {
        self.experts
            .iter()
            .chain(&self.shared_experts)
            .flat_map(|e| e.linears())
    }

    /// Weight bytes one token reads: the router (f32, with its correction bias), the shared
    /// experts and `top_k` routed experts (all routed experts are stored alike).
    pub(super) fn decode_weight_bytes(&self) -> u64 {
        let router = self.gate.weight.weight_bytes()
            + self.gate.bias.as_ref().map_or(0, Vec::len) as u64 * 4;
        let shared = self.shared_experts.as_ref().map_or(0, GluMlp::weight_bytes);
        let routed = self.experts.first().map_or(0, GluMlp::weight_bytes)
            * self.gate.spec.num_experts_per_tok as u64;
        router + shared + routed
    }

    /// `[B, T, D] -> [B, T, D]`; also returns the routing of the `B·T` tokens.
    pub(super) fn forward(&self, x: &Tensor) -> Result<(Tensor, Routing)> {
        let (b, t, d) = x.dims3()?;
        let n = b * t;
        let _span = tracing::trace_span!("moe", tokens = n).entered();
        let dev = x.device();
        let xs = x.reshape((n, d))?;
        // ref: logits = F.linear(h.float(), gate.weight.float())  — the one host read per layer.
        let logits = self.gate.weight.forward(&xs.to_dtype(DType::F32)?)?;
        let routing = self.gate.route(&logits.flatten_all()?.to_vec1::<f32>()?);
        let k = routing.top_k;

        // Slots `s = token·k + j`, grouped by expert.
        let mut by_expert: Vec<Vec<u32>> = vec![Vec::new(); self.experts.len()];
        for (s, &e) in routing.experts.iter().enumerate() {
            by_expert[e as usize].push(s as u32);
        }
        let mut outs = Vec::new();
        let mut pos_of_slot = vec![0u32; n * k];
        let mut pos = 0u32;
        for (expert, slots) in self.experts.iter().zip(&by_expert) {
            if slots.is_empty() {
                continue;
            }
            let m = slots.len();
            let tokens: Vec<u32> = slots.iter().map(|s| s / k as u32).collect();
            let w: Vec<f32> = slots.iter().map(|&s| routing.weights[s as usize]).collect();
            let xe = xs.index_select(&Tensor::from_vec(tokens, m, dev)?, 0)?;
            // ref: expert out (working dtype) → f32, × weight in f32
            let ye = expert.forward(&xe)?.to_dtype(DType::F32)?;
            outs.push(ye.broadcast_mul(&Tensor::from_vec(w, (m, 1), dev)?)?);
            for &s in slots {
                pos_of_slot[s as usize] = pos;
                pos += 1;
            }
        }
        // Back to token order, then Σ over the k slots of each token in f32, cast once.
        let sorted = Tensor::cat(&outs, 0)?;
        let y = sorted
            .index_select(&Tensor::from_vec(pos_of_slot, n * k, dev)?, 0)?
            .reshape((n, k, d))?
            .sum(1)?
            .to_dtype(x.dtype())?;
        let y = match &self.shared_experts {
            Some(s) => (y + s.forward(&xs)?)?,
            None => y,
        };
        Ok((y.reshape((b, t, d))?, routing))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(method: TopkMethod, scoring: ScoringFunc, norm: bool, scale: f64) -> MoeSpec {
        MoeSpec {
            n_routed_experts: 4,
            n_shared_experts: 1,
            num_experts_per_tok: 2,
            moe_intermediate_size: 8,
            topk_method: method,
            scoring_func: scoring,
            norm_topk_prob: norm,
            routed_scaling_factor: scale,
            n_group: 1,
            topk_group: 1,
        }
    }

    fn close(a: &[f32], b: &[f32]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6)
    }

    #[test]
    fn greedy_softmax_keeps_raw_probabilities() {
        let s = spec(TopkMethod::Greedy, ScoringFunc::Softmax, false, 1.0);
        let logits = [0.0f32, 2.0, 1.0, -1.0];
        let r = route(&s, None, &logits);
        let z: f32 = logits.iter().map(|x| x.exp()).sum();
        assert_eq!(r.experts, [1, 2]);
        assert!(close(&r.weights, &[2f32.exp() / z, 1f32.exp() / z]));
    }

    #[test]
    fn noaux_tc_chooses_with_the_bias_and_weighs_without_it() {
        let s = spec(TopkMethod::NoauxTc, ScoringFunc::Sigmoid, true, 2.0);
        let logits = [3.0f32, 2.0, 0.0, -1.0];
        let bias = [-1.0f32, 0.0, 0.5, 0.0];
        let r = route(&s, Some(&bias), &logits);
        let sig = |x: f32| 1.0 / (1.0 + (-x).exp());
        // biased: 0.95-1, 0.88, 0.5+0.5, 0.27 → experts 2 (1.0), 1 (0.88)
        assert_eq!(r.experts, [2, 1]);
        let (a, b) = (sig(0.0), sig(2.0));
        assert!(close(&r.weights, &[a / (a + b) * 2.0, b / (a + b) * 2.0]));
    }

    #[test]
    fn norm_topk_prob_is_ignored_for_top_1() {
        let mut s = spec(TopkMethod::Greedy, ScoringFunc::Sigmoid, true, 3.0);
        s.num_experts_per_tok = 1;
        let r = route(&s, None, &[0.0, 1.0, 0.0, 0.0]);
        assert_eq!(r.experts, [1]);
        assert!(close(&r.weights, &[3.0 / (1.0 + (-1f32).exp())]));
    }

    #[test]
    fn group_limited_greedy_masks_other_groups() {
        let mut s = spec(
            TopkMethod::GroupLimitedGreedy,
            ScoringFunc::Sigmoid,
            false,
            1.0,
        );
        s.n_group = 2;
        s.topk_group = 1;
        // groups {0,1} max sig(3), {2,3} max sig(2.5): group 0 kept, so expert 2 is excluded.
        let r = route(&s, None, &[3.0, -2.0, 2.5, 2.4]);
        assert_eq!(r.experts, [0, 1]);
        let sig = |x: f32| 1.0 / (1.0 + (-x).exp());
        assert!(close(&r.weights, &[sig(3.0), sig(-2.0)]));
    }

    #[test]
    fn noaux_tc_fills_masked_groups_with_zero_like_the_reference() {
        let mut s = spec(TopkMethod::NoauxTc, ScoringFunc::Sigmoid, false, 1.0);
        s.n_group = 2;
        s.topk_group = 1;
        // biased = [-0.5, -0.5, -1.5, -1.5]: group 0 (sum -1) is kept and group 1 masked to
        // 0.0, which then beats the kept negatives (ref: masked_fill(~mask, 0.0) before topk).
        // The weights are the unbiased sigmoids of the chosen experts.
        let bias = [-1.0f32, -1.0, -2.0, -2.0];
        let r = route(&s, Some(&bias), &[0.0; 4]);
        assert_eq!(r.experts, [2, 3]);
        assert!(close(&r.weights, &[0.5, 0.5]));
    }

    #[test]
    fn glu_mlp_matches_separate_projections() -> Result<()> {
        use candle_core::Device;
        use std::collections::HashMap;
        let dev = Device::Cpu;
        let (d, f) = (5, 7);
        let mut m = HashMap::new();
        for (name, shape) in [
            ("gate_proj.weight", (f, d)),
            ("up_proj.weight", (f, d)),
            ("down_proj.weight", (d, f)),
        ] {
            m.insert(name.to_string(), Tensor::randn(0f32, 1.0, shape, &dev)?);
        }
        let x = Tensor::randn(0f32, 1.0, (3, d), &dev)?;
        let want = {
            let g = x.matmul(&m["gate_proj.weight"].t()?)?;
            let u = x.matmul(&m["up_proj.weight"].t()?)?;
            (candle_nn::ops::silu(&g)? * u)?.matmul(&m["down_proj.weight"].t()?)?
        };
        let mlp = GluMlp::new(d, f, None, VarBuilder::from_tensors(m, DType::F32, &dev))?;
        let got = mlp.forward(&x)?;
        // Same dot products, possibly summed in another order: relative f32 rounding only.
        let diff = (&got - &want)?.abs()?.max_all()?.to_scalar::<f32>()?;
        let scale = want.abs()?.max_all()?.to_scalar::<f32>()?.max(1.0);
        assert!(diff <= 1e-5 * scale, "{diff} (scale {scale})");
        Ok(())
    }
}
