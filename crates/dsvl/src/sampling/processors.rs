//! Logit processors of HF `generate` 4.38 (v1 §10), on f32 logits (v1 §13.12), plus softmax helpers.
//! Each function transcribes one HF class; the order is fixed by [`super::Sampler`].

use std::cmp::Ordering;
use std::collections::HashMap;

/// How often each id occurs in `generated`.
pub fn token_counts(generated: &[u32]) -> HashMap<u32, usize> {
    let mut counts = HashMap::new();
    for &id in generated {
        *counts.entry(id).or_insert(0) += 1;
    }
    counts
}

/// `RepetitionPenaltyLogitsProcessor`: each distinct id in `counts` once (ref: gather, then
/// `torch.where(score < 0, score * penalty, score / penalty)`, then scatter). Ids outside the logits are ignored.
pub fn apply_repetition_penalty(logits: &mut [f32], counts: &HashMap<u32, usize>, penalty: f32) {
    if penalty == 1.0 {
        return;
    }
    for &id in counts.keys() {
        if let Some(x) = logits.get_mut(id as usize) {
            *x = if *x < 0.0 { *x * penalty } else { *x / penalty };
        }
    }
}

/// OpenAI presence/frequency penalties: `logit -= presence·[count > 0] + frequency·count`.
pub fn apply_presence_frequency(
    logits: &mut [f32],
    counts: &HashMap<u32, usize>,
    presence: f32,
    frequency: f32,
) {
    if presence == 0.0 && frequency == 0.0 {
        return;
    }
    for (&id, &count) in counts {
        if let Some(x) = logits.get_mut(id as usize) {
            *x -= presence + frequency * count as f32;
        }
    }
}

/// `TemperatureLogitsWarper`: `scores / temperature` (temperature > 0).
pub fn apply_temperature(logits: &mut [f32], temperature: f32) {
    if temperature != 1.0 {
        logits.iter_mut().for_each(|x| *x /= temperature);
    }
}

/// `TopKLogitsWarper`: ref `indices_to_remove = scores < torch.topk(scores, top_k)[0][..., -1, None]` → −inf.
/// Every logit equal to the k-th largest survives, so ties can keep more than `k` tokens.
pub fn apply_top_k(logits: &mut [f32], k: usize) {
    if k == 0 || k >= logits.len() {
        return;
    }
    let mut sorted = logits.to_vec();
    let (_, &mut threshold, _) = sorted.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
    logits
        .iter_mut()
        .filter(|x| **x < threshold)
        .for_each(|x| *x = f32::NEG_INFINITY);
}

/// `TopPLogitsWarper` (`min_tokens_to_keep = 1`): sort ascending, `cumsum(softmax)`, remove the tokens whose
/// cumulative probability is `<= 1 - top_p`, never the most likely one. Equal logits are ordered by descending
/// id in the ascending sort, so on a tie at the edge the lower id is kept (torch's sort order is unspecified).
pub fn apply_top_p(logits: &mut [f32], top_p: f32) {
    if top_p >= 1.0 {
        return;
    }
    // −inf entries have probability 0 and cumulative 0 ≤ 1 − top_p: removed already, leave them out of the sort.
    let mut order: Vec<usize> = (0..logits.len())
        .filter(|&i| logits[i] > f32::NEG_INFINITY)
        .collect();
    order.sort_by(|&a, &b| logits[a].total_cmp(&logits[b]).then(b.cmp(&a)));
    let Some(&top) = order.last() else { return };
    let max = logits[top];
    let exps: Vec<f32> = order.iter().map(|&i| (logits[i] - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    let mut cum = 0.0f32;
    for (&i, e) in order[..order.len() - 1].iter().zip(&exps) {
        cum += e / sum;
        if cum > 1.0 - top_p {
            break;
        }
        logits[i] = f32::NEG_INFINITY;
    }
}

/// Softmax in f32 (f64 sum); −inf logits get probability 0.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|&x| (x - max).exp()).collect();
    let sum: f64 = exps.iter().map(|&e| e as f64).sum();
    exps.iter().map(|&e| (e as f64 / sum) as f32).collect()
}

/// `log_softmax` in f32 (log-sum-exp with f64 accumulation), for OpenAI `logprobs`.
pub fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&x| ((x - max) as f64).exp()).sum();
    let lse = max + sum.ln() as f32;
    logits.iter().map(|&x| x - lse).collect()
}

/// The `k` best `(id, logprob)` pairs, by logprob descending, ties by id ascending.
pub fn top_logprobs(logprobs: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut all: Vec<(u32, f32)> = logprobs
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, l))
        .collect();
    let by_rank = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    if k < all.len() && k > 0 {
        all.select_nth_unstable_by(k - 1, by_rank);
    }
    all.truncate(k);
    all.sort_by(by_rank);
    all
}

/// `torch.argmax`: the first index of the largest value (ties → lowest id). `None` for an empty slice.
pub fn argmax(logits: &[f32]) -> Option<u32> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &x) in logits.iter().enumerate() {
        if best.is_none_or(|(_, b)| x.partial_cmp(&b) == Some(Ordering::Greater)) {
            best = Some((i, x));
        }
    }
    best.map(|(i, _)| i as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEG: f32 = f32::NEG_INFINITY;

    #[test]
    fn repetition_penalty_divides_positive_multiplies_negative_once() {
        let mut l = vec![2.0, -2.0, 1.0, 4.0];
        // id 0 twice: still penalized once; id 9 is outside the logits.
        apply_repetition_penalty(&mut l, &token_counts(&[0, 1, 0, 9]), 2.0);
        assert_eq!(l, [1.0, -4.0, 1.0, 4.0]);
    }

    #[test]
    fn presence_and_frequency() {
        let mut l = vec![1.0, 1.0, 1.0];
        apply_presence_frequency(&mut l, &token_counts(&[0, 0, 0, 2]), 0.5, 0.25);
        assert_eq!(l, [1.0 - 0.5 - 0.75, 1.0, 1.0 - 0.5 - 0.25]);
    }

    #[test]
    fn top_k_keeps_ties_at_threshold() {
        let mut l = vec![1.0, 3.0, 2.0, 2.0, 0.0];
        apply_top_k(&mut l, 2);
        assert_eq!(l, [NEG, 3.0, 2.0, 2.0, NEG]);
        let mut l = vec![1.0, 3.0];
        apply_top_k(&mut l, 5);
        assert_eq!(l, [1.0, 3.0]);
    }

    #[test]
    fn top_p_keep_sets() {
        // probs ≈ [0.6439, 0.2369, 0.0871, 0.0321]
        let base = [3.0f32, 2.0, 1.0, 0.0];
        let keep = |p: f32| {
            let mut l = base.to_vec();
            apply_top_p(&mut l, p);
            l.iter().map(|x| x.is_finite()).collect::<Vec<_>>()
        };
        assert_eq!(keep(0.5), [true, false, false, false]);
        assert_eq!(keep(0.7), [true, true, false, false]);
        assert_eq!(keep(0.88), [true, true, false, false]); // 0.8808 ≥ 0.88
        assert_eq!(keep(0.9), [true, true, true, false]);
        assert_eq!(keep(1e-6), [true, false, false, false]); // at least one token
                                                             // A tie at the edge keeps the lower id.
        let mut l = vec![1.0, 1.0];
        apply_top_p(&mut l, 0.4);
        assert_eq!(l, [1.0, NEG]);
    }

    #[test]
    fn argmax_first_max() {
        assert_eq!(argmax(&[1.0, 5.0, 5.0, -1.0]), Some(1));
        assert_eq!(argmax(&[]), None);
    }

    #[test]
    fn log_softmax_and_top_logprobs() {
        let lp = log_softmax(&[0.0, 0.0, (2.0f32).ln(), NEG]);
        let p: Vec<f32> = lp.iter().map(|l| l.exp()).collect();
        for (got, want) in p.iter().zip([0.25, 0.25, 0.5, 0.0]) {
            assert!((got - want).abs() < 1e-6, "{p:?}");
        }
        let top = top_logprobs(&lp, 2);
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), [2, 0]);
        assert_eq!(top_logprobs(&lp, 10).len(), 4);
        assert!(top_logprobs(&lp, 0).is_empty());
        let s = softmax(&[0.0, NEG]);
        assert_eq!(s, [1.0, 0.0]);
    }
}
