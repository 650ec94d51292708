//! The prompt tokenizer (v1 §2.5, §8.2): `tokenizer.json` through the HF `tokenizers` crate, with the special ids
//! read from the tokenizer itself, never hard-coded (v1 §14: the `language_config` bos/eos 1/2 are wrong).
//!
//! BOS handling mirrors `LlamaTokenizerFast`, the class of the DeepSeek tokenizer: it rebuilds its post-processor
//! from `add_bos_token` / `add_eos_token` (defaults true / false). So [`PromptTokenizer::encode_prompt`] encodes the
//! text without the post-processor's template and adds BOS (and EOS) itself according to those flags. With the
//! official files this equals `tokenizer.encode(prompt)` = `[100000, …]` (v1 §8.2.1), and the BOS is never doubled
//! whether or not `tokenizer.json`'s post-processor also adds one.
//!
//! The image marker is `<image_placeholder>` for v1 ([`PromptTokenizer::from_files`]) and the processor config's
//! `image_token` (`<image>`) for v2 ([`PromptTokenizer::from_files_with_image_token`], v2 §1.4, §6.3). The VL2
//! processor never lets the tokenizer add BOS/EOS: it encodes each text segment with `add_special_tokens=False`
//! ([`PromptTokenizer::encode_segment`]) and places BOS/EOS itself (v2 §6.1–6.2).

use std::path::{Path, PathBuf};

use tokenizers::{AddedToken, Tokenizer};

use super::template::{END_OF_SENTENCE, IMAGE_PLACEHOLDER};
use crate::error::{Error, Result};

/// BOS text of the DeepSeek LLM tokenizer (v1 §2.5 `special_tokens_map.json`), used when no config names one.
pub const BEGIN_OF_SENTENCE: &str = "<｜begin▁of▁sentence｜>";

/// A loaded tokenizer plus the three special ids the engine needs.
#[derive(Debug, Clone)]
pub struct PromptTokenizer {
    inner: Tokenizer,
    bos_id: u32,
    eos_id: u32,
    image_id: u32,
    image_token: String,
    add_bos: bool,
    add_eos: bool,
    /// Most prompt bytes one token can stand for, when that bounds the token count (see
    /// [`PromptTokenizer::min_tokens`]).
    max_token_bytes: Option<usize>,
}

/// The fields of `tokenizer_config.json` we read. Token fields are a string or an `AddedToken` object.
#[derive(Debug, Default)]
struct TokenizerConfig {
    bos_token: Option<String>,
    eos_token: Option<String>,
    add_bos_token: Option<bool>,
    add_eos_token: Option<bool>,
}

impl TokenizerConfig {
    fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|source| Error::Json {
            path: path.to_path_buf(),
            source,
        })?;
        let token = |key: &str| match v.get(key) {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(obj) => obj
                .get("content")
                .and_then(|c| c.as_str())
                .map(String::from),
            None => None,
        };
        Ok(Self {
            bos_token: token("bos_token"),
            eos_token: token("eos_token"),
            add_bos_token: v.get("add_bos_token").and_then(|b| b.as_bool()),
            add_eos_token: v.get("add_eos_token").and_then(|b| b.as_bool()),
        })
    }
}

/// `tokenizer.json` → `Tokenizer`, every malformed file an error message. `tokenizers` 0.22 panics
/// on some malformed files instead of returning an error (found by fuzzing, `fuzz/`): a JSON
/// syntax error inside `decoder` hits its `expect("Helper")`, a bad `Precompiled` normalizer its
/// `expect("Precompiled")`. Syntax is therefore checked first (which also gives the line and
/// column), and any panic left inside the parser is caught and reported like an error.
fn parse_tokenizer_json(path: &Path) -> std::result::Result<Tokenizer, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read it ({e})"))?;
    serde_json::from_slice::<serde::de::IgnoredAny>(&bytes)
        .map_err(|e| format!("not valid JSON ({e}); re-download the model's tokenizer.json"))?;
    let parsed = std::panic::catch_unwind(|| Tokenizer::from_bytes(&bytes)).map_err(|panic| {
        let why = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("malformed content");
        format!("the tokenizers library rejects it ({why}); re-download the model's tokenizer.json")
    })?;
    parsed.map_err(|e| format!("{e}; re-download the model's tokenizer.json"))
}

impl PromptTokenizer {
    /// The tokenizer of a model directory: its `tokenizer.json` and, when present, its
    /// `tokenizer_config.json`, with `image_token` as the image marker
    /// ([`Self::from_files_with_image_token`]).
    pub fn from_model_dir(dir: &Path, image_token: &str) -> Result<Self> {
        let json = dir.join("tokenizer.json");
        if !json.is_file() {
            return Err(Error::Tokenizer {
                path: json,
                message: "file not found; the model directory must contain the tokenizer.json published with the model".into(),
            });
        }
        let cfg = dir.join("tokenizer_config.json");
        let cfg = cfg.is_file().then_some(cfg.as_path());
        Self::from_files_with_image_token(&json, cfg, image_token)
    }

    /// Load `tokenizer.json` alone (BOS/EOS texts of v1 §2.5, `add_bos_token` true).
    pub fn from_file(tokenizer_json: impl AsRef<Path>) -> Result<Self> {
        Self::from_files(tokenizer_json, None)
    }

    /// Load `tokenizer.json` and, if given, `tokenizer_config.json` (its `bos_token`, `eos_token`, `add_bos_token`,
    /// `add_eos_token` win over the defaults).
    ///
    /// If the tokenizer has no `<image_placeholder>`, it is added as a special token, exactly as the official
    /// `VLChatProcessor.__init__` does (v1 §2.5); the official files already contain it (id 100015).
    pub fn from_files(
        tokenizer_json: impl AsRef<Path>,
        tokenizer_config: Option<&Path>,
    ) -> Result<Self> {
        Self::from_files_with_image_token(tokenizer_json, tokenizer_config, IMAGE_PLACEHOLDER)
    }

    /// [`Self::from_files`] with another image marker: `image_token` from the model's processor config, `<image>`
    /// for DeepSeek-VL2 (v2 §1.4). BOS/EOS come from `tokenizer_config.json` as for v1 (VL2: ids 0/1 for the
    /// tiny/base tokenizer family, 100000/100001 for small, v2 §6.3). If the tokenizer lacks the marker it is added
    /// as a special token, as `DeepseekVLV2Processor.__init__` does; the published files already have it.
    pub fn from_files_with_image_token(
        tokenizer_json: impl AsRef<Path>,
        tokenizer_config: Option<&Path>,
        image_token: &str,
    ) -> Result<Self> {
        let path = tokenizer_json.as_ref();
        let fail = |message: String| Error::Tokenizer {
            path: PathBuf::from(path),
            message,
        };
        if !path.is_file() {
            return Err(fail(
                "file not found; expected the model's tokenizer.json".into(),
            ));
        }
        let mut inner = parse_tokenizer_json(path).map_err(fail)?;
        // Never cut a prompt silently (STYLE §3.5): ignore any truncation/padding stored in the file.
        inner
            .with_truncation(None)
            .map_err(|e| fail(e.to_string()))?
            .with_padding(None);
        let cfg = match tokenizer_config {
            Some(p) => TokenizerConfig::read(p)?,
            None => TokenizerConfig::default(),
        };
        let lookup = |inner: &Tokenizer, text: &str, what: &str| {
            inner.token_to_id(text).ok_or_else(|| {
                fail(format!(
                    "the tokenizer has no {what} token `{text}`; this is not a DeepSeek-VL tokenizer"
                ))
            })
        };
        let bos_id = lookup(
            &inner,
            cfg.bos_token.as_deref().unwrap_or(BEGIN_OF_SENTENCE),
            "BOS",
        )?;
        let eos_id = lookup(
            &inner,
            cfg.eos_token.as_deref().unwrap_or(END_OF_SENTENCE),
            "EOS",
        )?;
        if image_token.is_empty() {
            return Err(fail(
                "the image token is empty; processor_config.json must name one (e.g. \"<image>\")"
                    .into(),
            ));
        }
        if inner.token_to_id(image_token).is_none() {
            inner.add_special_tokens(&[AddedToken::from(image_token, true)]);
        }
        let image_id = lookup(&inner, image_token, "image")?;
        let max_token_bytes = max_token_bytes(&inner);
        Ok(Self {
            inner,
            bos_id,
            eos_id,
            image_id,
            image_token: image_token.to_string(),
            // `LlamaTokenizerFast` defaults (v1 §2.5: the official config sets true / false explicitly).
            add_bos: cfg.add_bos_token.unwrap_or(true),
            add_eos: cfg.add_eos_token.unwrap_or(false),
            max_token_bytes,
        })
    }

    /// A lower bound on the tokens `text_bytes` bytes of prompt text encode to, known without
    /// tokenizing them: `text_bytes / L` rounded up, where `L` is the longest token's length in
    /// bytes. It holds for tokenizers that cover every input byte by some token (no normalizer,
    /// no pre-tokenizer that drops text, no added token that swallows whitespace), as the
    /// DeepSeek byte-level BPE tokenizers do; for any other tokenizer the bound is 0. A prompt
    /// whose bound is past the context can be refused for the cost of reading it, instead of
    /// tokenizing megabytes (about 75 bytes of memory per prompt byte) to find out.
    pub fn min_tokens(&self, text_bytes: usize) -> usize {
        self.max_token_bytes
            .map_or(0, |longest| text_bytes.div_ceil(longest))
    }

    /// Token ids of a rendered prompt (v1 §8.2.1): BOS first, no EOS, `<image_placeholder>` and
    /// `<｜end▁of▁sentence｜>` matched as single special tokens. Image placeholders are not expanded here.
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::Tokenize(e.to_string()))?;
        let mut ids = Vec::with_capacity(enc.len() + 2);
        if self.add_bos {
            ids.push(self.bos_id);
        }
        ids.extend_from_slice(enc.get_ids());
        if self.add_eos {
            ids.push(self.eos_id);
        }
        Ok(ids)
    }

    /// Ids of one text segment with nothing added: no BOS/EOS whatever the config says (`tokenizer.encode(text,
    /// add_special_tokens=False)`, v2 §6.2). Special tokens in the text (`<|User|>`, `<|ref|>`, the image marker, …)
    /// still match as single tokens; the empty string gives no ids.
    pub fn encode_segment(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::Tokenize(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Add each of `tokens` the tokenizer does not have yet as a special token, in order (new ids follow the
    /// current vocabulary), like the processors' `add_special_tokens` calls; tokens already present keep their id.
    pub fn ensure_special_tokens(&mut self, tokens: &[&str]) {
        for &t in tokens {
            if self.inner.token_to_id(t).is_none() {
                self.inner.add_special_tokens(&[AddedToken::from(t, true)]);
            }
        }
        self.max_token_bytes = max_token_bytes(&self.inner);
    }

    /// Text of `ids`. The reference decodes generated text with `skip_special_tokens=True` (v1 §10). Ids without a
    /// token (the padding rows ≥ tokenizer length, v1 §14) decode to nothing.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| Error::Tokenize(e.to_string()))
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Tokenizer length including added tokens (100016 for the official files, less than the 102400 embedding
    /// rows, v1 §2.5).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn bos_id(&self) -> u32 {
        self.bos_id
    }

    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    pub fn image_id(&self) -> u32 {
        self.image_id
    }

    /// The image marker text (`<image_placeholder>` for v1, `<image>` for v2) whose id is [`Self::image_id`].
    pub fn image_token(&self) -> &str {
        &self.image_token
    }

    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }
}

/// The longest token in bytes (at least as many as the input bytes it covers: a byte-level
/// symbol stands for one byte and takes one or two), or `None` when a token count cannot be
/// bounded by it: a normalizer (it may shorten the text), a pre-tokenizer other than splitting
/// and byte-level mapping (`Whitespace` drops text), or an added token that strips the
/// whitespace around it.
fn max_token_bytes(tok: &Tokenizer) -> Option<usize> {
    if tok.get_normalizer().is_some() {
        return None;
    }
    if let Some(pre) = tok.get_pre_tokenizer() {
        let json = serde_json::to_value(pre).ok()?;
        if !keeps_every_byte(&json) {
            return None;
        }
    }
    let decoder = tok.get_added_tokens_decoder();
    if decoder.values().any(|t| t.lstrip || t.rstrip) {
        return None;
    }
    let longest_added = decoder.values().map(|t| t.content.len()).max().unwrap_or(0);
    let longest = tok
        .get_vocab(false)
        .keys()
        .map(String::len)
        .max()
        .unwrap_or(0)
        .max(longest_added);
    (longest > 0).then_some(longest)
}

/// True for pre-tokenizers that only cut the text into pieces and map bytes to symbols.
fn keeps_every_byte(pre: &serde_json::Value) -> bool {
    match pre.get("type").and_then(|t| t.as_str()) {
        Some("Sequence") => pre
            .get("pretokenizers")
            .and_then(|p| p.as_array())
            .is_some_and(|all| all.iter().all(keeps_every_byte)),
        Some("Split") => pre.get("behavior").and_then(|b| b.as_str()) != Some("Removed"),
        Some("ByteLevel" | "Digits" | "Metaspace") => true,
        _ => false,
    }
}

/// A tiny byte-level BPE tokenizer in the DeepSeek format, for unit tests: the 256 byte symbols (no merges) plus
/// BOS / EOS / `<image_placeholder>` as special added tokens and a `TemplateProcessing` post-processor adding BOS.
#[cfg(test)]
pub(crate) mod test_tokenizer {
    use std::path::PathBuf;

    use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
    use tokenizers::models::bpe::{Vocab, BPE};
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::processors::template::TemplateProcessing;
    use tokenizers::{AddedToken, Tokenizer};

    use super::BEGIN_OF_SENTENCE;
    use crate::prompt::template::{END_OF_SENTENCE, IMAGE_PLACEHOLDER};

    /// Build it; with `image` false the placeholder token is left out.
    pub(crate) fn build(image: bool) -> Tokenizer {
        let mut alphabet: Vec<char> = ByteLevel::alphabet().into_iter().collect();
        alphabet.sort_unstable();
        let vocab: Vocab = alphabet
            .iter()
            .enumerate()
            .map(|(i, c)| (c.to_string(), i as u32))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, vec![])
            .build()
            .expect("static BPE vocab is valid");
        let mut tok = Tokenizer::new(bpe);
        tok.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        tok.with_decoder(Some(ByteLevelDecoder::default()));
        let n = alphabet.len() as u32;
        let mut specials = vec![
            AddedToken::from(BEGIN_OF_SENTENCE, true),
            AddedToken::from(END_OF_SENTENCE, true),
        ];
        if image {
            specials.push(AddedToken::from(IMAGE_PLACEHOLDER, true));
        }
        tok.add_special_tokens(&specials);
        let post = TemplateProcessing::builder()
            .try_single(format!("{BEGIN_OF_SENTENCE} $A"))
            .expect("static template is valid")
            .special_tokens(vec![(BEGIN_OF_SENTENCE, n)])
            .build()
            .expect("static template is valid");
        tok.with_post_processor(Some(post));
        tok
    }

    /// Save it to a unique file under the temp dir and return the path.
    pub(crate) fn save(name: &str, image: bool) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("dsvl-tok-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir is writable");
        let path = dir.join("tokenizer.json");
        build(image)
            .save(&path, false)
            .expect("temp file is writable");
        path
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn encodes_with_single_bos_and_special_tokens() {
        let tok = PromptTokenizer::from_file(test_tokenizer::save("enc", true)).unwrap();
        let n = 256;
        assert_eq!(
            (tok.bos_id(), tok.eos_id(), tok.image_id()),
            (n, n + 1, n + 2)
        );
        assert_eq!(tok.vocab_size(), 259);
        let text = format!("User: {IMAGE_PLACEHOLDER}hi{END_OF_SENTENCE}");
        let ids = tok.encode_prompt(&text).unwrap();
        // Same ids as the post-processor's own BOS template: one BOS, no EOS added.
        let reference = tok.inner().encode(text.as_str(), true).unwrap();
        assert_eq!(ids, reference.get_ids());
        assert_eq!(ids[0], tok.bos_id());
        assert_eq!(ids.iter().filter(|&&i| i == tok.bos_id()).count(), 1);
        assert_eq!(ids.iter().filter(|&&i| i == tok.image_id()).count(), 1);
        assert_eq!(ids.last(), Some(&tok.eos_id()));
        assert_eq!(ids.len(), 1 + "User: ".len() + 1 + 2 + 1);
        assert_eq!(tok.decode(&ids, true).unwrap(), "User: hi");
        assert_eq!(tok.id_to_token(n + 2).as_deref(), Some(IMAGE_PLACEHOLDER));
    }

    #[test]
    fn config_controls_bos() {
        let path = test_tokenizer::save("cfg", true);
        let cfg = path.with_file_name("tokenizer_config.json");
        std::fs::write(
            &cfg,
            r#"{"add_bos_token": false, "bos_token": {"content": "<｜begin▁of▁sentence｜>"}}"#,
        )
        .unwrap();
        let tok = PromptTokenizer::from_files(&path, Some(&cfg)).unwrap();
        assert_eq!(
            tok.encode_prompt("a").unwrap(),
            vec![tok.token_to_id("a").unwrap()]
        );
        std::fs::write(&cfg, r#"{"bos_token": "nope"}"#).unwrap();
        let err = PromptTokenizer::from_files(&path, Some(&cfg))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no BOS token `nope`"), "{err}");
    }

    #[test]
    fn adds_missing_image_token_like_the_official_processor() {
        let tok = PromptTokenizer::from_file(test_tokenizer::save("noimg", false)).unwrap();
        assert_eq!(tok.image_id(), 258);
        let ids = tok.encode_prompt(IMAGE_PLACEHOLDER).unwrap();
        assert_eq!(ids, vec![tok.bos_id(), 258]);
    }

    #[test]
    fn vl2_image_token_and_segments_without_specials() {
        // v2 §1.4: the marker comes from the processor config; added as a special token when missing.
        let path = test_tokenizer::save("vl2img", true);
        let mut tok = PromptTokenizer::from_files_with_image_token(&path, None, "<image>").unwrap();
        assert_eq!((tok.image_id(), tok.image_token()), (259, "<image>"));
        // v1 marker still a token of this file, but not the image marker any more.
        assert_eq!(tok.token_to_id(IMAGE_PLACEHOLDER), Some(258));
        // encode_segment adds no BOS even though add_bos_token defaults to true (v2 §6.2).
        let a = tok.token_to_id("a").unwrap();
        assert_eq!(tok.encode_segment("a<image>a").unwrap(), vec![a, 259, a]);
        assert_eq!(tok.encode_prompt("a").unwrap(), vec![tok.bos_id(), a]);
        assert!(tok.encode_segment("").unwrap().is_empty());
        // ensure_special_tokens: new ones appended in order, present ones untouched.
        tok.ensure_special_tokens(&["<|User|>", "<image>", "<|Assistant|>"]);
        assert_eq!(tok.token_to_id("<|User|>"), Some(260));
        assert_eq!(tok.token_to_id("<|Assistant|>"), Some(261));
        assert_eq!(tok.vocab_size(), 262);
        assert_eq!(
            tok.encode_segment("<|User|>: ").unwrap(),
            vec![
                260,
                tok.token_to_id(":").unwrap(),
                tok.token_to_id("Ġ").unwrap()
            ]
        );
        let err = PromptTokenizer::from_files_with_image_token(&path, None, "")
            .unwrap_err()
            .to_string();
        assert!(err.contains("image token is empty"), "{err}");
    }

    #[test]
    fn missing_or_invalid_file_names_the_path() {
        let err = PromptTokenizer::from_file("/nonexistent/tokenizer.json")
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/tokenizer.json"), "{err}");
        let bad = std::env::temp_dir().join(format!("dsvl-bad-{}.json", std::process::id()));
        std::fs::write(&bad, "{not json").unwrap();
        let err = PromptTokenizer::from_file(&bad).unwrap_err();
        let _ = std::fs::remove_file(&bad);
        assert!(
            matches!(err, Error::Tokenizer { ref path, .. } if path == &bad),
            "{err}"
        );
    }

    /// The v1 fixture tokenizer (real DeepSeek format: byte-level BPE, ids 100000/100001/100015, v1 §2.5).
    pub(crate) fn fixture_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1")
    }

    fn read_json(path: &Path) -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn ids_of(v: &serde_json::Value) -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    }

    #[test]
    fn fixture_tokenizer_matches_reference_encodings() {
        let dir = fixture_dir();
        let models = dir.join("models/siglip-tiny");
        let tok = PromptTokenizer::from_files(
            models.join("tokenizer.json"),
            Some(&models.join("tokenizer_config.json")),
        )
        .unwrap();
        assert_eq!(
            (tok.bos_id(), tok.eos_id(), tok.image_id(), tok.vocab_size()),
            (100000, 100001, 100015, 100016)
        );
        let manifest = read_json(&dir.join("manifest.json"));
        let checks = manifest["tokenizer"]["check_encodings"]
            .as_object()
            .unwrap();
        assert!(!checks.is_empty());
        for (text, want) in checks {
            assert_eq!(tok.encode_prompt(text).unwrap(), ids_of(want), "{text:?}");
        }
    }

    /// The byte bound never exceeds the real count, on the fixtures' real DeepSeek tokenizers (v1
    /// and VL2 vocabularies) and on text built to pack many bytes into few tokens.
    #[test]
    fn min_tokens_is_a_lower_bound_on_real_tokenizers() {
        let root = fixture_dir().join("..");
        let v1 = root.join("v1/models/siglip-tiny");
        let v2 = root.join("v2/models/vl2-tiny-random");
        let tokenizers = [
            PromptTokenizer::from_files(
                v1.join("tokenizer.json"),
                Some(&v1.join("tokenizer_config.json")),
            )
            .unwrap(),
            PromptTokenizer::from_files_with_image_token(
                v2.join("tokenizer.json"),
                Some(&v2.join("tokenizer_config.json")),
                "<image>",
            )
            .unwrap(),
        ];
        let texts = [
            "a".repeat(10_000),
            " ".repeat(5_000),
            "\n".repeat(3_000),
            format!("{IMAGE_PLACEHOLDER}<image><|ref|>{END_OF_SENTENCE}").repeat(200),
            "----------------".repeat(300),
            "the quick brown fox, jumps over: the lazy dog! 1234567890 ".repeat(100),
            "日本語のテキストと emoji 🦀🦀 ".repeat(200),
        ];
        for tok in &tokenizers {
            assert!(
                tok.max_token_bytes.is_some(),
                "DeepSeek tokenizers are bounded"
            );
            for text in &texts {
                let n = tok.encode_segment(text).unwrap().len();
                let bound = tok.min_tokens(text.len());
                assert!(
                    bound >= 1 && bound <= n,
                    "{bound} > {n} for {:?}",
                    &text[..20]
                );
            }
        }
    }

    #[test]
    fn min_tokens_is_zero_when_a_normalizer_may_shorten_the_text() {
        let mut inner = test_tokenizer::build(true);
        let bounded = PromptTokenizer::from_file(test_tokenizer::save("bound", true)).unwrap();
        let longest = bounded.max_token_bytes.unwrap();
        // The longest token is the BOS text, 3 bytes for each of its full-width characters.
        assert_eq!(longest, BEGIN_OF_SENTENCE.len());
        assert_eq!(
            [0, 1, longest, longest + 1].map(|b| bounded.min_tokens(b)),
            [0, 1, 1, 2]
        );
        inner.with_normalizer(Some(tokenizers::normalizers::Strip::new(true, true)));
        let path = test_tokenizer::save("strip", true);
        inner.save(&path, false).unwrap();
        let tok = PromptTokenizer::from_file(&path).unwrap();
        assert_eq!(tok.min_tokens(1 << 20), 0);
    }

    /// Every fixture case: official conversation → `render` → `encode_prompt` → `expand_prompt` gives the
    /// reference `prompt` string and `input_ids` (v1 §8), for both tiny models.
    #[test]
    fn fixture_cases_render_encode_expand_like_the_reference() {
        use crate::prompt::{expand_prompt, render, Message};
        let dir = fixture_dir();
        let mut n_cases = 0;
        for entry in std::fs::read_dir(dir.join("cases")).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let case = read_json(&path);
            let models = dir.join("models").join(case["model"].as_str().unwrap());
            let tok = PromptTokenizer::from_files(
                models.join("tokenizer.json"),
                Some(&models.join("tokenizer_config.json")),
            )
            .unwrap();
            let msgs: Vec<Message> = case["conversation"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| {
                    let n = m
                        .get("images")
                        .and_then(|i| i.as_array())
                        .map_or(0, |i| i.len());
                    Message::new(
                        m["role"].as_str().unwrap().parse().unwrap(),
                        m["content"].as_str().unwrap(),
                    )
                    .with_images(n)
                })
                .collect();
            let prompt = render(case["system_prompt"].as_str().unwrap(), &msgs).unwrap();
            assert_eq!(
                prompt,
                case["prompt"].as_str().unwrap(),
                "{}",
                path.display()
            );
            let n_images = case["n_images"].as_u64().unwrap() as usize;
            let ids = tok.encode_prompt(&prompt).unwrap();
            let expanded =
                expand_prompt(&ids, tok.image_id(), 576, n_images, IMAGE_PLACEHOLDER).unwrap();
            assert_eq!(
                expanded.ids,
                ids_of(&case["input_ids"]),
                "{}",
                path.display()
            );
            assert_eq!(expanded.image_spans.len(), n_images);
            n_cases += 1;
        }
        assert!(n_cases >= 8, "only {n_cases} fixture cases found");
    }
}
