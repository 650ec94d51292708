//! User stop strings, matched on the decoded text across token boundaries (STYLE §3.10).
//!
//! The reference has no working text stop (v1 §14: the gradio stop words never fire, generation ends on EOS), so
//! this follows the OpenAI API: the output ends *before* the first occurrence of any stop string, which is not
//! emitted. Text that could still be the start of a stop string is held back until it either completes one or
//! diverges.

use crate::error::{Error, Result};

/// Which stop string ended the output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopHit {
    /// Index into the stop strings given to [`StopMatcher::new`].
    pub index: usize,
    pub stop: String,
}

/// Streaming stop-string matcher: feed text deltas (e.g. from `DecodeStream`), emit what it returns.
#[derive(Debug, Clone)]
pub struct StopMatcher {
    stops: Vec<String>,
    /// The longest tail of the text so far that is a proper prefix of some stop string.
    held: String,
    stopped: bool,
}

impl StopMatcher {
    /// Errors on an empty stop string (it would match at once).
    pub fn new(stops: &[String]) -> Result<Self> {
        if let Some(i) = stops.iter().position(|s| s.is_empty()) {
            return Err(Error::Sampling(format!(
                "stop[{i}] is an empty string; give non-empty stop strings"
            )));
        }
        Ok(Self {
            stops: stops.to_vec(),
            held: String::new(),
            stopped: false,
        })
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Feed the next delta. Returns the text that is safe to emit now and, when a stop string completed, which
    /// one (the returned text then ends right before it; generation should stop). After a stop, returns nothing.
    /// The earliest match in the text wins; among stops starting at the same place, the first listed.
    pub fn push(&mut self, delta: &str) -> (String, Option<StopHit>) {
        if self.stopped {
            return (String::new(), None);
        }
        let mut buf = std::mem::take(&mut self.held);
        buf.push_str(delta);
        let hit = self
            .stops
            .iter()
            .enumerate()
            .filter_map(|(i, s)| buf.find(s.as_str()).map(|pos| (pos, i)))
            .min();
        if let Some((pos, index)) = hit {
            self.stopped = true;
            buf.truncate(pos);
            let stop = self.stops[index].clone();
            return (buf, Some(StopHit { index, stop }));
        }
        let hold_from = buf
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| self.stops.iter().any(|s| s.starts_with(&buf[i..])))
            .unwrap_or(buf.len());
        self.held = buf.split_off(hold_from);
        (buf, None)
    }

    /// At the end of generation (EOS, length): release the held text, which can no longer become a stop.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(stops: &[&str]) -> StopMatcher {
        StopMatcher::new(&stops.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    /// Feed all deltas; return the emitted pieces, the hit, and the flush.
    fn feed(m: &mut StopMatcher, deltas: &[&str]) -> (Vec<String>, Option<StopHit>, String) {
        let mut out = Vec::new();
        let mut hit = None;
        for d in deltas {
            let (text, h) = m.push(d);
            out.push(text);
            if h.is_some() {
                hit = h;
            }
        }
        (out, hit, m.flush())
    }

    #[test]
    fn cjk_without_stop_passes_through() {
        let mut m = matcher(&["User:"]);
        let (out, hit, rest) = feed(&mut m, &["你好，", "世界。"]);
        assert_eq!(out, ["你好，", "世界。"]);
        assert_eq!((hit, rest.as_str()), (None, ""));
    }

    #[test]
    fn stop_split_over_three_deltas() {
        let mut m = matcher(&["<END>"]);
        let (out, hit, rest) = feed(&mut m, &["ab <E", "N", "D> tail", "more"]);
        assert_eq!(out, ["ab ", "", "", ""]);
        assert_eq!(hit.map(|h| h.index), Some(0));
        assert!(m.is_stopped());
        assert_eq!(rest, "");
    }

    #[test]
    fn held_prefix_that_diverges_is_released() {
        let mut m = matcher(&["User:"]);
        let (out, hit, rest) = feed(&mut m, &["Hello Us", "e", "ful", "! U"]);
        assert_eq!(out, ["Hello ", "", "Useful", "! "]);
        assert_eq!(hit, None);
        assert_eq!(rest, "U");
        // Overlapping start: "aab" holds "ab", then "c" completes "abc".
        let mut m = matcher(&["abc"]);
        let (out, hit, _) = feed(&mut m, &["aab", "c"]);
        assert_eq!(out, ["a", ""]);
        assert!(hit.is_some());
    }

    #[test]
    fn earliest_of_multiple_stops_wins() {
        let mut m = matcher(&["User:", "\n\n", "结束"]);
        let (out, hit, _) = feed(&mut m, &["好的结", "束了\n\nUser:"]);
        assert_eq!(out, ["好的", ""]);
        assert_eq!(
            hit,
            Some(StopHit {
                index: 2,
                stop: "结束".into()
            })
        );
        let mut m = matcher(&["User:", "\n\n"]);
        let (text, hit) = m.push("A.\n\nUser: B");
        assert_eq!((text.as_str(), hit.map(|h| h.index)), ("A.", Some(1)));
    }

    #[test]
    fn empty_stop_rejected() {
        let err = StopMatcher::new(&["x".into(), String::new()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("stop[1]"), "{err}");
    }
}
