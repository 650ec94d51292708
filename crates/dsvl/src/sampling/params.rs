//! Per-request sampling parameters, validated before a request is queued (STYLE §3.5).

use super::ngram::NoRepeatNgram;
use crate::error::{Error, Result};
use crate::structured::Constraint;

/// `GenerationConfig.top_k` default of transformers 4.38, silently active whenever the reference samples
/// (`cli_chat.py`, gradio; v1 §10).
pub const HF_DEFAULT_TOP_K: usize = 50;

/// How one request picks its tokens (v1 §10). `Default` is the official `inference.py` setting: greedy,
/// 512 new tokens, no penalties.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 = greedy (`do_sample=False`); > 0 samples with `logits / temperature`.
    pub temperature: f32,
    /// Keep the `k` highest logits (ties at the k-th value kept, like HF). `None` = no top-k. The default is
    /// `Some(50)`, HF's silent `GenerationConfig` default, so a sampling request without `top_k` matches the
    /// reference; an API client that wants plain nucleus sampling passes `None`.
    pub top_k: Option<usize>,
    /// Nucleus mass in (0, 1]; 1 disables it.
    pub top_p: f32,
    /// HF `repetition_penalty` > 0 on previously *generated* ids only (v1 §10); 1 disables it.
    pub repetition_penalty: f32,
    /// OpenAI `presence_penalty` in [-2, 2]: `logit -= presence` for every id generated at least once.
    pub presence_penalty: f32,
    /// OpenAI `frequency_penalty` in [-2, 2]: `logit -= frequency · count`.
    pub frequency_penalty: f32,
    /// Seed of this request's RNG: the same seed and inputs give the same tokens.
    pub seed: u64,
    /// Stop after this many new tokens (≥ 1) unless EOS comes first.
    pub max_new_tokens: usize,
    /// User stop strings, matched on the decoded text across token boundaries (`text::StopMatcher`).
    pub stop: Vec<String>,
    /// Structured output: only tokens that keep the answer valid for this constraint may be
    /// picked (the logits of all others are masked before sampling; see [`crate::structured`]).
    /// `None`: free text.
    pub constraint: Option<Constraint>,
    /// DeepSeek-OCR's windowed no-repeat n-gram ban on the generated ids ([`NoRepeatNgram`]),
    /// applied before every other processor. `None`: off.
    pub no_repeat_ngram: Option<NoRepeatNgram>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: Some(HF_DEFAULT_TOP_K),
            top_p: 1.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: 0,
            max_new_tokens: 512,
            stop: Vec::new(),
            constraint: None,
            no_repeat_ngram: None,
        }
    }
}

impl SamplingParams {
    /// True when the request samples (temperature > 0), false for greedy decoding.
    pub fn is_sampling(&self) -> bool {
        self.temperature > 0.0
    }

    /// Every field in its accepted range; the error names the field, the value and the range.
    pub fn validate(&self) -> Result<()> {
        fn bad(field: &str, value: impl std::fmt::Display, range: &str) -> Error {
            Error::Sampling(format!("{field} = {value}, expected {range}"))
        }
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(bad(
                "temperature",
                self.temperature,
                "a finite number >= 0 (0 = greedy)",
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(bad("top_p", self.top_p, "0 < top_p <= 1"));
        }
        if self.top_k == Some(0) {
            return Err(bad("top_k", 0, "an integer >= 1 (or no top_k)"));
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return Err(bad(
                "repetition_penalty",
                self.repetition_penalty,
                "a finite number > 0 (1 = off)",
            ));
        }
        for (field, v) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if !(-2.0..=2.0).contains(&v) {
                return Err(bad(field, v, "-2 <= value <= 2"));
            }
        }
        if self.max_new_tokens == 0 {
            return Err(bad("max_new_tokens", 0, "an integer >= 1"));
        }
        if let Some(i) = self.stop.iter().position(|s| s.is_empty()) {
            return Err(bad(&format!("stop[{i}]"), "\"\"", "a non-empty string"));
        }
        if let Some(c) = &self.constraint {
            c.validate()?;
        }
        if let Some(ngram) = &self.no_repeat_ngram {
            ngram.validate()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid_greedy() {
        let p = SamplingParams::default();
        p.validate().unwrap();
        assert!(!p.is_sampling());
    }

    #[test]
    fn invalid_params_name_field_and_range() {
        type Case = (fn(&mut SamplingParams), &'static str);
        let cases: [Case; 9] = [
            (
                |p| p.temperature = -0.1,
                "temperature = -0.1, expected a finite number >= 0",
            ),
            (|p| p.temperature = f32::NAN, "temperature = NaN"),
            (|p| p.top_p = 0.0, "top_p = 0, expected 0 < top_p <= 1"),
            (|p| p.top_p = 1.5, "top_p = 1.5"),
            (|p| p.top_k = Some(0), "top_k = 0, expected an integer >= 1"),
            (
                |p| p.repetition_penalty = 0.0,
                "repetition_penalty = 0, expected a finite number > 0",
            ),
            (
                |p| p.presence_penalty = 2.5,
                "presence_penalty = 2.5, expected -2 <= value <= 2",
            ),
            (|p| p.frequency_penalty = -3.0, "frequency_penalty = -3"),
            (
                |p| p.stop = vec!["a".into(), String::new()],
                "stop[1] = \"\"",
            ),
        ];
        for (set, want) in cases {
            let mut p = SamplingParams::default();
            set(&mut p);
            let err = p.validate().unwrap_err().to_string();
            assert!(err.contains(want), "{err} does not contain {want}");
        }
    }
}
