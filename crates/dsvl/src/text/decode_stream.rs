//! UTF-8-safe incremental detokenization (STYLE §3.10), in the style of candle's `TokenOutputStream` and the
//! `tokenizers` crate's `DecodeStream`.
//!
//! A byte-level BPE (the DeepSeek tokenizer, v1 §2.5) can split one character over several tokens: decoding such a
//! partial sequence gives U+FFFD. So the stream keeps the ids, decodes a window that starts at the previously emitted
//! group (the context some decoders need for spacing), and emits only the new suffix, and only once the window no
//! longer ends in U+FFFD.

use crate::error::{Error, Result};

/// Incremental decoder over a decode function `ids → text`. For the engine:
/// `DecodeStream::new(move |ids: &[u32]| tokenizer.decode(ids, true))`: special tokens skipped, as the reference
/// decodes with `skip_special_tokens=True` (v1 §10).
pub struct DecodeStream<D> {
    decode: D,
    /// Ids from the start of the previous emitted group on; older ids are dropped.
    tokens: Vec<u32>,
    /// `tokens[..prefix_len]` were emitted already; `prefix` is their decoded text.
    prefix_len: usize,
    prefix: String,
}

impl<D: FnMut(&[u32]) -> Result<String>> DecodeStream<D> {
    pub fn new(decode: D) -> Self {
        Self {
            decode,
            tokens: Vec::new(),
            prefix_len: 0,
            prefix: String::new(),
        }
    }

    /// Add one generated id; returns the new text once it is complete UTF-8, `None` while a character is pending.
    pub fn push(&mut self, id: u32) -> Result<Option<String>> {
        self.tokens.push(id);
        let text = (self.decode)(&self.tokens)?;
        if text.len() <= self.prefix.len() || text.ends_with('\u{FFFD}') {
            return Ok(None);
        }
        let delta = self.new_suffix(&text)?;
        // The group just emitted becomes the next window's context.
        self.tokens.drain(..self.prefix_len);
        self.prefix_len = self.tokens.len();
        self.prefix = (self.decode)(&self.tokens)?;
        Ok(Some(delta))
    }

    /// At the end of generation: whatever is still pending (an unfinished character decodes as U+FFFD, like the
    /// reference's final `decode`). `None` if nothing is left.
    pub fn finish(&mut self) -> Result<Option<String>> {
        let text = (self.decode)(&self.tokens)?;
        let delta = if text.len() > self.prefix.len() {
            Some(self.new_suffix(&text)?)
        } else {
            None
        };
        self.tokens.clear();
        self.prefix_len = 0;
        self.prefix.clear();
        Ok(delta)
    }

    fn new_suffix(&self, text: &str) -> Result<String> {
        text.strip_prefix(self.prefix.as_str())
            .map(str::to_string)
            .ok_or_else(|| {
                Error::Tokenize(format!(
                    "incremental decode: `{text}` does not extend the previous text `{}`; the tokenizer's decoder is not prefix-stable",
                    self.prefix
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prompt::tokenizer::test_tokenizer;

    /// Run `ids` through a stream, returning every delta (None included) and the final flush.
    fn run(
        decode: impl FnMut(&[u32]) -> Result<String>,
        ids: &[u32],
    ) -> (Vec<Option<String>>, Option<String>) {
        let mut s = DecodeStream::new(decode);
        let deltas = ids.iter().map(|&id| s.push(id).unwrap()).collect();
        (deltas, s.finish().unwrap())
    }

    #[test]
    fn byte_level_emoji_and_cjk() {
        let tok = test_tokenizer::build(true);
        let text = "Hi 你好😀!";
        let mut ids = tok.encode(text, false).unwrap().get_ids().to_vec();
        ids.push(tok.token_to_id("<｜end▁of▁sentence｜>").unwrap());
        // One token per byte: "你" is 3 tokens, "😀" 4.
        assert_eq!(ids.len(), text.len() + 1);
        let (deltas, rest) = run(
            |ids| {
                tok.decode(ids, true)
                    .map_err(|e| Error::Tokenize(e.to_string()))
            },
            &ids,
        );
        let emitted: Vec<&str> = deltas.iter().flatten().map(String::as_str).collect();
        assert_eq!(emitted, ["H", "i", " ", "你", "好", "😀", "!"]);
        // Nothing is emitted mid-character, and the special EOS decodes to nothing.
        assert_eq!(deltas.iter().filter(|d| d.is_none()).count(), 2 + 2 + 3 + 1);
        assert_eq!(rest, None);
    }

    #[test]
    fn finish_flushes_an_unfinished_character() {
        let tok = test_tokenizer::build(true);
        let ids = tok.encode("a😀", false).unwrap().get_ids().to_vec();
        let (deltas, rest) = run(
            |ids| {
                tok.decode(ids, true)
                    .map_err(|e| Error::Tokenize(e.to_string()))
            },
            &ids[..3],
        );
        assert_eq!(deltas, [Some("a".to_string()), None, None]);
        assert_eq!(rest.as_deref(), Some("\u{FFFD}"));
    }

    #[test]
    fn window_gives_context_to_spacing_decoders() {
        // A SentencePiece-like decoder that drops the leading space of the window's first word.
        let words = ["▁Hello", "▁world", "!"];
        let decode = |ids: &[u32]| {
            let s: String = ids.iter().map(|&i| words[i as usize]).collect();
            Ok(s.replace('▁', " ").trim_start().to_string())
        };
        let (deltas, _) = run(decode, &[0, 1, 2]);
        let out: String = deltas.into_iter().flatten().collect();
        assert_eq!(out, "Hello world!");
    }

    /// The fixture's greedy ids, streamed token by token, concatenate to the reference `decoded` text
    /// (`tokenizer.decode(ids, skip_special_tokens=True)`, v1 §10).
    #[test]
    fn fixture_greedy_ids_stream_to_reference_text() {
        use crate::prompt::PromptTokenizer;
        let dir = crate::prompt::tokenizer::tests::fixture_dir();
        let tok =
            PromptTokenizer::from_file(dir.join("models/siglip-tiny/tokenizer.json")).unwrap();
        let mut n_cases = 0;
        for entry in std::fs::read_dir(dir.join("cases")).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let case: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            let ids: Vec<u32> = case["greedy_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect();
            let (deltas, rest) = run(|ids| tok.decode(ids, true), &ids);
            let text: String = deltas.into_iter().flatten().chain(rest).collect();
            assert_eq!(
                text,
                case["decoded"].as_str().unwrap(),
                "{}",
                path.display()
            );
            n_cases += 1;
        }
        assert!(n_cases > 0);
    }
}
