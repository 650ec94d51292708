//! llguidance's view of the tokenizer: every token's bytes, built from our `tokenizers`
//! tokenizer.
//!
//! Not `toktrie_hf_tokenizers`: it depends on `tokenizers` 0.21 (we use 0.22), so it would
//! build a second copy of the tokenizer library, with other features, and need the tokenizer
//! loaded twice. Reading the bytes needs only the vocabulary and the decoder type:
//! - byte-level BPE (the DeepSeek tokenizers): each symbol of a token stands for one byte
//!   (GPT-2's byte-to-unicode table); a character outside the table is its own UTF-8 bytes,
//!   as `tokenizers`' ByteLevel decoder reads it;
//! - byte fallback (SentencePiece-style): `<0x0A>` is the byte 0x0A, `▁` a space.
//!
//! Special tokens (added tokens marked special, or written `<…>`) get llguidance's special
//! marker byte before their name: no text can produce them, and a Lark grammar names them
//! (`<|ref|>`). Ids the tokenizer does not use (the gap between VL2's vocabulary and its
//! added tokens) get no bytes and are never allowed.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde_json::Value;
use toktrie::{TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};

use crate::error::{Error, Result};
use crate::prompt::tokenizer::PromptTokenizer;

/// How the tokenizer's symbols map to bytes, read from its decoder.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Decoding {
    ByteLevel,
    ByteFallback { space: char },
}

/// The tokenizer environment llguidance compiles against.
pub fn token_env(tokenizer: &PromptTokenizer) -> Result<TokEnv> {
    let (info, bytes) = token_bytes(tokenizer)?;
    let trie = TokTrie::from(&info, &bytes);
    Ok(Arc::new(Env {
        trie,
        tokenizer: tokenizer.clone(),
    }))
}

/// Every token's bytes, indexed by id (special tokens marked), and the trie's token facts.
pub(super) fn token_bytes(tokenizer: &PromptTokenizer) -> Result<(TokRxInfo, Vec<Vec<u8>>)> {
    let hf = tokenizer.inner();
    let decoding = decoding(hf.get_decoder().and_then(|d| serde_json::to_value(d).ok()))?;
    let vocab = hf.get_vocab(true);
    let n_vocab = vocab.values().copied().max().map_or(0, |m| m as usize + 1);
    let specials: HashSet<u32> = hf
        .get_added_tokens_decoder()
        .into_iter()
        .filter(|(_, t)| {
            t.special
                || (t.content.len() > 2 && t.content.starts_with('<') && t.content.ends_with('>'))
        })
        .map(|(id, _)| id)
        .collect();
    let byte_of = byte_level_table();
    let mut bytes = vec![Vec::new(); n_vocab];
    for (name, id) in vocab {
        let b = &mut bytes[id as usize];
        if specials.contains(&id) {
            b.push(TokTrie::SPECIAL_TOKEN_MARKER);
            b.extend_from_slice(name.as_bytes());
            continue;
        }
        match decoding {
            Decoding::ByteLevel => {
                for c in name.chars() {
                    match byte_of.get(&c) {
                        Some(&byte) => b.push(byte),
                        None => b.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
                    }
                }
            }
            Decoding::ByteFallback { space } => match fallback_byte(&name) {
                Some(byte) => b.push(byte),
                None => b.extend_from_slice(name.replace(space, " ").as_bytes()),
            },
        }
    }
    let mut info = TokRxInfo::new(n_vocab as u32, tokenizer.eos_id());
    info.tok_bos = Some(tokenizer.bos_id());
    Ok((info, bytes))
}

/// The decoder type: byte-level, or byte fallback with its space symbol; anything else cannot
/// be mapped to bytes.
fn decoding(decoder: Option<Value>) -> Result<Decoding> {
    fn visit(d: &Value, found: &mut (bool, bool, char)) {
        match d.get("type").and_then(Value::as_str) {
            Some("ByteLevel") => found.0 = true,
            Some("ByteFallback") => found.1 = true,
            Some("Replace") if d.get("content").and_then(Value::as_str) == Some(" ") => {
                let pattern = d.pointer("/pattern/String").and_then(Value::as_str);
                if let Some(mut chars) = pattern.map(str::chars) {
                    if let (Some(c), None) = (chars.next(), chars.next()) {
                        found.2 = c;
                    }
                }
            }
            Some("Sequence") => {
                for d in d
                    .get("decoders")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    visit(d, found);
                }
            }
            _ => {}
        }
    }
    let mut found = (false, false, ' ');
    if let Some(d) = &decoder {
        visit(d, &mut found);
    }
    match found {
        (true, _, _) => Ok(Decoding::ByteLevel),
        (false, true, space) => Ok(Decoding::ByteFallback { space }),
        _ => Err(Error::Unsupported {
            what: "constrained decoding with this tokenizer".into(),
            hint: format!(
                "its decoder ({}) is neither byte-level nor byte-fallback, so token bytes are unknown",
                decoder.map_or("none".into(), |d| d.to_string())
            ),
        }),
    }
}

/// `<0x0A>` → 0x0A.
fn fallback_byte(name: &str) -> Option<u8> {
    let hex = name.strip_prefix("<0x")?.strip_suffix('>')?;
    (hex.len() == 2).then(|| u8::from_str_radix(hex, 16).ok())?
}

/// GPT-2's byte-to-unicode table, inverted: printable Latin-1 bytes stand for themselves, the
/// others for U+0100 onwards, in byte order.
fn byte_level_table() -> HashMap<char, u8> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut next = 0x100u32;
    (0..=255u8)
        .map(|b| {
            let c = if printable(b) {
                char::from(b)
            } else {
                next += 1;
                char::from_u32(next - 1).unwrap_or(char::REPLACEMENT_CHARACTER)
            };
            (c, b)
        })
        .collect()
}

struct Env {
    trie: TokTrie,
    tokenizer: PromptTokenizer,
}

impl TokenizerEnv for Env {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    /// The tokenizer's own (canonical) tokenization where the trie cannot decide greedily;
    /// llguidance uses it for text a grammar forces.
    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        self.trie.tokenize_with_greedy_fallback(s, |text| {
            match self.tokenizer.inner().encode(text, false) {
                Ok(enc) => enc.get_ids().to_vec(),
                // Unreachable for valid UTF-8 text; the trie's greedy split is still valid.
                Err(_) => self.trie.greedy_tokenize(text.as_bytes()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_table_is_gpt2s() {
        let t = byte_level_table();
        assert_eq!(t.len(), 256);
        assert_eq!(t[&'Ġ'], b' ');
        assert_eq!(t[&'Ċ'], b'\n');
        assert_eq!(t[&'a'], b'a');
        assert_eq!(t[&'\u{100}'], 0);
        assert_eq!(t[&'ÿ'], 0xFF);
    }

    #[test]
    fn byte_fallback_tokens_are_bytes() {
        assert_eq!(fallback_byte("<0x0A>"), Some(b'\n'));
        assert_eq!(fallback_byte("<0xzz>"), None);
        assert_eq!(fallback_byte("<0x0A0>"), None);
        assert_eq!(fallback_byte("hello"), None);
    }

    #[test]
    fn decoder_kinds() {
        let seq = serde_json::json!({"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"}]});
        assert_eq!(
            decoding(Some(seq)).unwrap(),
            Decoding::ByteFallback { space: '▁' }
        );
        let bl = serde_json::json!({"type": "ByteLevel", "add_prefix_space": true});
        assert_eq!(decoding(Some(bl)).unwrap(), Decoding::ByteLevel);
        let err = decoding(Some(serde_json::json!({"type": "WordPiece"}))).unwrap_err();
        assert!(err.to_string().contains("neither byte-level"), "{err}");
    }
}
