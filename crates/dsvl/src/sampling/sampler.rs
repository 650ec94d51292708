//! One request's sampler: HF `generate` 4.38 processor order (v1 §10) plus a per-request seeded RNG (STYLE §3.10).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::params::SamplingParams;
use super::processors::{
    apply_presence_frequency, apply_repetition_penalty, apply_temperature, apply_top_k,
    apply_top_p, argmax, softmax, token_counts,
};
use crate::error::{Error, Result};

/// Picks the next token from f32 logits. Create one per request; its RNG is seeded from `params.seed`, so the same
/// seed and logits give the same tokens. The draw cannot reproduce `torch.multinomial` bit for bit (different RNG),
/// only its distribution.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
}

fn bad_logits(msg: &str) -> Error {
    Error::Tensor(candle_core::Error::Msg(format!("sampler: {msg}")))
}

impl Sampler {
    /// Validate `params` and seed the RNG (`StdRng::seed_from_u64(seed)`).
    pub fn new(params: &SamplingParams) -> Result<Self> {
        params.validate()?;
        Ok(Self {
            params: params.clone(),
            rng: StdRng::seed_from_u64(params.seed),
        })
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// The logits after the penalties and, when sampling, temperature/top-k/top-p (−inf = removed). `generated`
    /// holds this request's generated ids only: the reference never penalizes prompt tokens (v1 §10).
    pub fn process(&self, logits: &[f32], generated: &[u32]) -> Vec<f32> {
        let p = &self.params;
        let mut l = logits.to_vec();
        // vLLM runs a request's logits processors before its penalties and sampling.
        if let Some(ngram) = &p.no_repeat_ngram {
            ngram.apply(&mut l, generated);
        }
        let counts = token_counts(generated);
        apply_repetition_penalty(&mut l, &counts, p.repetition_penalty);
        apply_presence_frequency(&mut l, &counts, p.presence_penalty, p.frequency_penalty);
        if p.is_sampling() {
            apply_temperature(&mut l, p.temperature);
            if let Some(k) = p.top_k {
                apply_top_k(&mut l, k);
            }
            apply_top_p(&mut l, p.top_p);
        }
        l
    }

    /// Next token: `process`, then argmax (temperature 0; ties → lowest id like `torch.argmax`) or softmax and one
    /// multinomial draw. Errors only on broken logits (empty, NaN, or no finite value), which a model bug produces.
    pub fn sample(&mut self, logits: &[f32], generated: &[u32]) -> Result<u32> {
        if logits.iter().any(|x| x.is_nan()) {
            return Err(bad_logits("the logits contain NaN"));
        }
        let l = self.process(logits, generated);
        if !l.iter().any(|x| x.is_finite()) {
            return Err(bad_logits("no token has a finite logit"));
        }
        if !self.params.is_sampling() {
            return argmax(&l).ok_or_else(|| bad_logits("the logits are empty"));
        }
        let probs = softmax(&l);
        let total: f64 = probs.iter().map(|&p| p as f64).sum();
        let u = self.rng.random::<f64>() * total;
        let mut cum = 0.0f64;
        let mut last = 0;
        for (i, &p) in probs.iter().enumerate() {
            if p > 0.0 {
                cum += p as f64;
                last = i;
                if u < cum {
                    return Ok(i as u32);
                }
            }
        }
        // Rounding left u at the very end: the last token with mass.
        Ok(last as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampling(seed: u64) -> SamplingParams {
        SamplingParams {
            temperature: 1.0,
            top_k: None,
            seed,
            ..SamplingParams::default()
        }
    }

    fn draws(params: &SamplingParams, n: usize) -> Vec<u32> {
        let logits: Vec<f32> = (0..64).map(|i| (i % 7) as f32 * 0.3).collect();
        let mut s = Sampler::new(params).unwrap();
        (0..n).map(|_| s.sample(&logits, &[]).unwrap()).collect()
    }

    #[test]
    fn greedy_is_argmax_after_repetition_penalty() {
        let mut s = Sampler::new(&SamplingParams::default()).unwrap();
        assert_eq!(s.sample(&[0.5, 2.0, 2.0, 1.0], &[]).unwrap(), 1);
        let mut s = Sampler::new(&SamplingParams {
            repetition_penalty: 2.5,
            ..SamplingParams::default()
        })
        .unwrap();
        // 2.0 / 2.5 = 0.8 < 1.0: the penalized ids lose to id 3.
        assert_eq!(s.sample(&[0.5, 2.0, 2.0, 1.0], &[1, 2, 1]).unwrap(), 3);
        // Negative logits are multiplied: -0.1 * 2.5 = -0.25 < -0.2.
        assert_eq!(s.sample(&[-0.1, -0.2], &[0]).unwrap(), 1);
    }

    #[test]
    fn same_seed_same_draws_different_seed_differs() {
        let a = draws(&sampling(7), 200);
        assert_eq!(a, draws(&sampling(7), 200));
        assert_ne!(a, draws(&sampling(8), 200));
        // The draws actually spread over several tokens.
        let mut distinct = a.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert!(distinct.len() > 5, "{distinct:?}");
    }

    #[test]
    fn sampling_respects_top_k_and_top_p() {
        let logits = [0.0, 5.0, 4.9, 4.8, 1.0];
        let mut s = Sampler::new(&SamplingParams {
            top_k: Some(2),
            ..sampling(1)
        })
        .unwrap();
        for _ in 0..100 {
            assert!(matches!(s.sample(&logits, &[]).unwrap(), 1 | 2));
        }
        let mut s = Sampler::new(&SamplingParams {
            top_p: 0.01,
            ..sampling(1)
        })
        .unwrap();
        for _ in 0..20 {
            assert_eq!(s.sample(&logits, &[]).unwrap(), 1);
        }
        let p = SamplingParams {
            temperature: 0.7,
            top_p: 0.9,
            ..sampling(3)
        };
        let l = Sampler::new(&p).unwrap().process(&logits, &[]);
        assert_eq!(l[0], f32::NEG_INFINITY);
        assert!((l[1] - 5.0 / 0.7).abs() < 1e-6);
    }

    #[test]
    fn no_repeat_ngram_runs_before_greedy_choice() {
        let params = SamplingParams {
            no_repeat_ngram: Some(crate::sampling::NoRepeatNgram {
                ngram_size: 2,
                window_size: 10,
                whitelist: vec![],
            }),
            ..SamplingParams::default()
        };
        let mut s = Sampler::new(&params).unwrap();
        // (3, 1) was generated: after another 3, id 1 is banned and the runner-up 2 wins.
        assert_eq!(s.sample(&[0.0, 5.0, 4.0, 0.0], &[3, 1, 3]).unwrap(), 2);
        assert_eq!(s.sample(&[0.0, 5.0, 4.0, 0.0], &[3, 1, 2]).unwrap(), 1);
        let bad = SamplingParams {
            no_repeat_ngram: Some(crate::sampling::NoRepeatNgram {
                ngram_size: 0,
                window_size: 10,
                whitelist: vec![],
            }),
            ..SamplingParams::default()
        };
        assert!(Sampler::new(&bad).is_err());
    }

    #[test]
    fn broken_logits_and_params_are_errors() {
        let mut s = Sampler::new(&SamplingParams::default()).unwrap();
        assert!(s.sample(&[], &[]).is_err());
        assert!(s.sample(&[1.0, f32::NAN], &[]).is_err());
        assert!(s.sample(&[f32::NEG_INFINITY], &[]).is_err());
        let err = Sampler::new(&SamplingParams {
            top_p: 2.0,
            ..SamplingParams::default()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("top_p = 2"), "{err}");
    }
}
