//! DeepSeek-OCR's no-repeat n-gram logits processor (`process/ngram_norepeat.py`,
//! `NoRepeatNGramLogitsProcessor`, github deepseek-ai/DeepSeek-OCR @ e4ac34e).
//!
//! Unlike transformers' `no_repeat_ngram_size`, it looks back only `window_size` ids and never bans
//! the whitelisted ids (the published scripts exempt `<td>` / `</td>`, which tables repeat). vLLM
//! hands a two-argument logits processor the ids generated so far, not the prompt, so `generated`
//! is the request's output ids only.

use crate::error::{Error, Result};

/// `<td>` and `</td>` in the DeepSeek-OCR tokenizer: the whitelist of every published script.
pub const OCR_NGRAM_WHITELIST: [u32; 2] = [128821, 128822];

/// Settings of the no-repeat n-gram processor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoRepeatNgram {
    /// n: an id that would complete an n-gram already present in the window is banned (≥ 1).
    pub ngram_size: usize,
    /// How many of the last generated ids are searched (≥ 1).
    pub window_size: usize,
    /// Ids that are never banned.
    pub whitelist: Vec<u32>,
}

impl NoRepeatNgram {
    /// `run_dpsk_ocr_image.py`: `ngram_size=30, window_size=90`, whitelist `<td>`, `</td>`.
    pub fn ocr_image() -> Self {
        Self {
            ngram_size: 30,
            window_size: 90,
            whitelist: OCR_NGRAM_WHITELIST.to_vec(),
        }
    }

    /// `run_dpsk_ocr_pdf.py`: `ngram_size=20, window_size=50` (a shorter window, for speed).
    pub fn ocr_pdf() -> Self {
        Self {
            ngram_size: 20,
            window_size: 50,
            whitelist: OCR_NGRAM_WHITELIST.to_vec(),
        }
    }

    /// The constructor's checks: both sizes strictly positive.
    pub fn validate(&self) -> Result<()> {
        if self.ngram_size == 0 {
            return Err(Error::Sampling(
                "no_repeat_ngram_size = 0, expected an integer >= 1".into(),
            ));
        }
        if self.window_size == 0 {
            return Err(Error::Sampling(
                "no_repeat_ngram_window = 0, expected an integer >= 1".into(),
            ));
        }
        Ok(())
    }

    /// The ids banned after `generated`, ascending.
    ///
    /// ref: `current_prefix = tuple(input_ids[-(n - 1):])`; for `i in range(max(0, len - window),
    /// len - n + 1)`: ban `input_ids[i + n - 1]` when `input_ids[i:i + n - 1] == current_prefix`.
    /// With n = 1 the reference's slice `input_ids[-0:]` is the whole list, which never equals the
    /// empty n-gram prefix: n = 1 bans nothing. That is kept.
    pub fn banned(&self, generated: &[u32]) -> Vec<u32> {
        let (n, len) = (self.ngram_size, generated.len());
        if n == 0 || len < n {
            return Vec::new();
        }
        let prefix = if n == 1 {
            generated
        } else {
            &generated[len - (n - 1)..]
        };
        let start = len.saturating_sub(self.window_size);
        let end = len - n + 1;
        let mut out: Vec<u32> = (start..end)
            .filter(|&i| &generated[i..i + n - 1] == prefix)
            .map(|i| generated[i + n - 1])
            .filter(|id| !self.whitelist.contains(id))
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Set the banned ids' logits to −inf (ids outside the logits are ignored).
    pub fn apply(&self, logits: &mut [f32], generated: &[u32]) {
        for id in self.banned(generated) {
            if let Some(x) = logits.get_mut(id as usize) {
                *x = f32::NEG_INFINITY;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(n: usize, w: usize, wl: &[u32]) -> NoRepeatNgram {
        NoRepeatNgram {
            ngram_size: n,
            window_size: w,
            whitelist: wl.to_vec(),
        }
    }

    #[test]
    fn bans_the_ids_that_complete_a_seen_ngram() {
        assert_eq!(p(3, 100, &[]).banned(&[1, 2, 3, 1, 2]), [3]);
        assert_eq!(p(3, 100, &[]).banned(&[5, 6, 7, 5, 6, 8, 5, 6]), [7, 8]);
        assert_eq!(p(2, 100, &[]).banned(&[3, 4, 3]), [4]);
        // the n-gram may overlap the current prefix
        assert_eq!(p(3, 100, &[]).banned(&[1, 1, 1]), [1]);
        assert_eq!(p(4, 100, &[]).banned(&[9; 6]), [9]);
    }

    #[test]
    fn whitelist_window_and_short_inputs() {
        assert_eq!(p(3, 100, &[8]).banned(&[5, 6, 7, 5, 6, 8, 5, 6]), [7]);
        // window 4 of 7 ids: the search starts at 3, the old (1, 2, 3) is out of reach
        assert!(p(3, 4, &[]).banned(&[1, 2, 3, 9, 9, 1, 2]).is_empty());
        assert_eq!(p(3, 7, &[]).banned(&[1, 2, 3, 9, 9, 1, 2]), [3]);
        // a window shorter than n searches nothing
        assert!(p(5, 3, &[])
            .banned(&[1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3])
            .is_empty());
        assert!(p(2, 2, &[]).banned(&[7, 8, 7]).is_empty());
        assert_eq!(p(2, 3, &[]).banned(&[7, 8, 7]), [8]);
        assert!(p(3, 100, &[]).banned(&[1, 2]).is_empty());
        assert!(p(2, 100, &[]).banned(&[3]).is_empty());
        assert!(p(3, 100, &[]).banned(&[]).is_empty());
    }

    #[test]
    fn ngram_size_one_bans_nothing_like_the_reference() {
        assert!(p(1, 100, &[]).banned(&[4, 4, 4]).is_empty());
    }

    #[test]
    fn table_cells_repeat_freely_with_the_published_whitelist() {
        let row: Vec<u32> = [128821, 55, 128822].repeat(40);
        let mut logits = vec![0.0f32; 129280];
        NoRepeatNgram {
            ngram_size: 3,
            ..NoRepeatNgram::ocr_image()
        }
        .apply(&mut logits, &row);
        assert!(logits.iter().all(|x| x.is_finite()));
        let mut logits = vec![0.0f32; 129280];
        p(3, 90, &[]).apply(&mut logits, &row);
        assert_eq!(logits[128821], f32::NEG_INFINITY);
        assert_eq!(logits.iter().filter(|x| x.is_infinite()).count(), 1);
    }

    #[test]
    fn zero_sizes_are_rejected() {
        let e = p(0, 10, &[]).validate().unwrap_err().to_string();
        assert!(e.contains("no_repeat_ngram_size = 0"), "{e}");
        let e = p(3, 0, &[]).validate().unwrap_err().to_string();
        assert!(e.contains("no_repeat_ngram_window = 0"), "{e}");
        NoRepeatNgram::ocr_pdf().validate().unwrap();
    }
}
