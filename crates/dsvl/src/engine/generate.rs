//! The generation loop: vision → embedding merge → prefill → decode, one token per step (v1 §9–§10).

use std::ops::ControlFlow;

use candle_core::Tensor;

use super::{FeatureCache, Pipeline, Prepared};
use crate::error::Result;
use crate::sampling::SamplingParams;

/// Prompt tokens per prefill pass unless [`GenerateParams::prefill_chunk`] says otherwise: one pass
/// for every prompt that fits the published models' 4096-token context twice over, i.e. chunking
/// only matters for very long prompts.
pub const DEFAULT_PREFILL_CHUNK: usize = 2048;

/// Per-request generation settings.
#[derive(Debug, Clone, Default)]
pub struct GenerateParams {
    /// Temperature, top-k/p, penalties, seed, max new tokens and stop strings.
    pub sampling: SamplingParams,
    /// Keep generating past EOS (benchmarks).
    pub ignore_eos: bool,
    /// Report this many top alternatives (with logprobs) per token; `None`: no logprobs.
    pub logprobs: Option<usize>,
    /// Prefill the prompt in chunks of at most this many tokens (`None`: [`DEFAULT_PREFILL_CHUNK`]);
    /// bounds the attention scores a long multi-image prompt materialises at once. The result is
    /// the same as one pass up to float rounding.
    pub prefill_chunk: Option<usize>,
    /// Leave special tokens out of the text. `None`: the family's default — v1 skips them (as
    /// the official demo decodes), VL2 keeps them, because its grounding markup
    /// (`<|ref|>…<|/ref|><|det|>[[…]]<|/det|>`) is made of special tokens (v2 §6.4).
    pub skip_special_tokens: Option<bool>,
}

/// One generated token.
#[derive(Debug, Clone)]
pub struct TokenEvent {
    pub id: u32,
    /// Text that became final with this token (may be empty: an incomplete UTF-8 character or
    /// text held back because it may start a stop string).
    pub text: String,
    /// The token's own text, decoded alone (for logprob reports).
    pub token_text: String,
    /// log p(token) under the model's raw distribution, when logprobs were requested.
    pub logprob: Option<f32>,
    pub top_logprobs: Vec<(u32, f32)>,
}

/// What the decode loop reports.
#[derive(Debug, Clone)]
pub enum Event {
    /// A generated token and the text it completed.
    Token(TokenEvent),
    /// Text released at the end (held back by the UTF-8 window or a possible stop string).
    Tail(String),
}

impl Event {
    /// The text to show for this event.
    pub fn text(&self) -> &str {
        match self {
            Event::Token(t) => &t.text,
            Event::Tail(s) => s,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// EOS or a stop string.
    Stop,
    /// `max_new_tokens` reached.
    Length,
    /// The caller's callback asked to stop.
    Cancelled,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Timings {
    pub preprocess_ms: f64,
    pub vision_ms: f64,
    pub prefill_ms: f64,
    pub decode_ms: f64,
    /// FLOPs our CPU kernels did during the vision pass and the prefill (linear layers and
    /// attention; element-wise work not counted). Read from a process-wide counter, so exact
    /// only while no other request runs (benchmarks); 0 on a GPU.
    pub vision_flops: u64,
    pub prefill_flops: u64,
    /// Of `decode_ms`, the time spent computing structured-output token masks (0 without a
    /// constraint).
    pub constraint_ms: f64,
}

impl Timings {
    pub fn time_to_first_token_ms(&self) -> f64 {
        self.preprocess_ms + self.vision_ms + self.prefill_ms
    }
}

#[derive(Debug, Clone)]
pub struct Outcome {
    /// Generated ids (EOS excluded).
    pub ids: Vec<u32>,
    /// The answer text (stop string excluded).
    pub text: String,
    pub finish_reason: FinishReason,
    pub prompt_tokens: usize,
    /// Prompt tokens whose keys and values came from an earlier sequence (the previous turn of
    /// a [`Conversation`], or a [`PrefixCache`] entry) instead of the prefill; 0 otherwise.
    pub reused_prompt_tokens: usize,
    pub timings: Timings,
}

impl Outcome {
    pub fn completion_tokens(&self) -> usize {
        self.ids.len()
    }
}

impl Pipeline {
    /// Generates the assistant's answer for `prepared`, calling `on_event` for every token; the
    /// callback returns `ControlFlow::Break(())` to stop (a disconnected client).
    pub fn generate(
        &self,
        prepared: &Prepared,
        params: &GenerateParams,
        on_event: impl FnMut(&Event) -> ControlFlow<()>,
    ) -> Result<Outcome> {
        self.generate_cached(prepared, params, None, on_event)
    }

    /// [`Pipeline::generate`] with an image feature cache: images already in `cache` skip the
    /// vision tower, new ones are added to it.
    pub fn generate_cached(
        &self,
        prepared: &Prepared,
        params: &GenerateParams,
        cache: Option<&mut FeatureCache>,
        mut on_event: impl FnMut(&Event) -> ControlFlow<()>,
    ) -> Result<Outcome> {
        let mut seq = self.start(prepared, params, cache)?;
        while let Some(id) = seq.step(&mut on_event)? {
            seq.decode(id)?;
        }
        seq.finish(on_event)
    }

    /// [`Pipeline::generate`] as the next turn of `conversation`: images it has seen skip the
    /// vision tower, and the longest prefix the prompt shares with what the previous turn left
    /// in the cache (its prompt and answer) is not prefilled again, so a follow-up question
    /// costs about its own tokens. The answer is what a fresh prefill gives, up to float
    /// rounding (as with a chunked prefill).
    pub fn generate_in(
        &self,
        conversation: &mut Conversation,
        prepared: &Prepared,
        params: &GenerateParams,
        mut on_event: impl FnMut(&Event) -> ControlFlow<()>,
    ) -> Result<Outcome> {
        // A first turn starts from an empty prefix, so that its positions are tracked too.
        let prefix = conversation.prefix.take().unwrap_or_else(|| Prefix {
            kv: self.model().new_cache(),
            positions: Vec::new(),
        });
        let mut seq = self.start_from(
            prepared,
            params,
            Some(&mut conversation.features),
            super::sequence::Reuse::From(prefix),
        )?;
        while let Some(id) = seq.step(&mut on_event)? {
            seq.decode(id)?;
        }
        let (outcome, prefix) = seq.finish_keeping_prefix(on_event)?;
        conversation.prefix = Some(prefix);
        Ok(outcome)
    }
}

/// What one conversation keeps between its turns: the embeddings of the images it has seen and
/// the keys/values of its last turn (prompt and answer), for [`Pipeline::generate_in`].
#[derive(Debug)]
pub struct Conversation {
    pub features: FeatureCache,
    prefix: Option<Prefix>,
}

impl Conversation {
    /// `feature_bytes` bounds the image embeddings kept.
    pub fn new(feature_bytes: usize) -> Self {
        Self {
            features: FeatureCache::new(feature_bytes),
            prefix: None,
        }
    }

    /// Forgets the cached keys/values and images (a new conversation).
    pub fn clear(&mut self) {
        self.features = FeatureCache::new(self.features.capacity_bytes());
        self.prefix = None;
    }

    /// Positions whose keys/values are held for the next turn.
    pub fn cached_tokens(&self) -> usize {
        self.prefix.as_ref().map_or(0, |p| p.positions.len())
    }
}

/// Caches of finished sequences, kept so that a later request whose prompt starts with the same
/// positions (an API client resending its conversation with one more turn) prefills only the
/// rest: the server's automatic prefix caching. Bounded by bytes (buffers' spare capacity
/// included); the least recently used go first. A request takes the entry it continues out of
/// the cache and puts its own back when it finishes ([`Pipeline::start_with_prefixes`],
/// [`super::Sequence::finish_into`]).
#[derive(Debug)]
pub struct PrefixCache {
    capacity_bytes: usize,
    used_bytes: usize,
    /// (prefix, bytes, last use)
    entries: Vec<(Prefix, usize, u64)>,
    clock: u64,
    /// Requests that continued an entry, and the prompt positions they did not prefill.
    pub hits: u64,
    pub reused_tokens: u64,
}

impl PrefixCache {
    /// `capacity_bytes` 0 keeps nothing.
    pub fn new(capacity_bytes: usize) -> Self {
        Self {
            capacity_bytes,
            used_bytes: 0,
            entries: Vec::new(),
            clock: 0,
            hits: 0,
            reused_tokens: 0,
        }
    }

    /// Removes and returns the entry sharing the longest prefix with `positions` (at least
    /// one position).
    pub(super) fn take_longest(&mut self, positions: &[u64]) -> Option<Prefix> {
        let (best, n) = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, (p, _, _))| (i, shared_len(&p.positions, positions)))
            .max_by_key(|&(i, n)| (n, std::cmp::Reverse(i)))?;
        if n == 0 {
            return None;
        }
        let (prefix, bytes, _) = self.entries.swap_remove(best);
        self.used_bytes -= bytes;
        Some(prefix)
    }

    /// Keeps `prefix`, evicting the least recently used entries to stay within capacity; one
    /// larger than the whole capacity is dropped. Entries it extends are dropped (it serves
    /// every request they would, at least as far); it is dropped itself when an entry already
    /// extends it (concurrent identical requests each finish with the same cache). What is kept
    /// holds no spare capacity.
    pub(super) fn put(&mut self, mut prefix: Prefix) -> Result<()> {
        if prefix.positions.is_empty() {
            return Ok(());
        }
        if self
            .entries
            .iter()
            .any(|(p, _, _)| p.positions.starts_with(&prefix.positions))
        {
            return Ok(());
        }
        let mut freed = 0;
        self.entries.retain(|(p, b, _)| {
            let superseded = prefix.positions.starts_with(&p.positions);
            freed += if superseded { *b } else { 0 };
            !superseded
        });
        self.used_bytes -= freed;
        prefix.kv.compact()?;
        let bytes = prefix.kv.bytes();
        if bytes > self.capacity_bytes {
            return Ok(());
        }
        while self.used_bytes + bytes > self.capacity_bytes {
            let Some(oldest) = (0..self.entries.len()).min_by_key(|&i| self.entries[i].2) else {
                break;
            };
            let (_, b, _) = self.entries.swap_remove(oldest);
            self.used_bytes -= b;
        }
        self.clock += 1;
        self.used_bytes += bytes;
        self.entries.push((prefix, bytes, self.clock));
        Ok(())
    }

    /// Entries held now, and their bytes.
    pub fn usage(&self) -> (usize, usize) {
        (self.entries.len(), self.used_bytes)
    }
}

/// A sequence's cache and what each of its positions holds: a text token's id, or an image
/// row (see [`position_keys`]).
#[derive(Debug)]
pub(super) struct Prefix {
    pub kv: crate::llm::KvCache,
    pub positions: Vec<u64>,
}

/// How many leading positions `a` and `b` have in common.
pub(super) fn shared_len(a: &[u64], b: &[u64]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// One key per prompt position: the token id for text; for the image positions (filled in order
/// from `images`, `(rows, key)` each) a hash of the image's pixel key and the row, with the top
/// bit set so it never equals a token id. Equal keys mean equal input embeddings.
pub(super) fn position_keys(ids: &[u32], image_id: u32, images: &[(usize, u64)]) -> Vec<u64> {
    let mut rows = images
        .iter()
        .flat_map(|&(n, key)| (0..n).map(move |row| (key, row as u64)));
    ids.iter()
        .map(
            |&id| match (id == image_id).then(|| rows.next()).flatten() {
                Some((key, row)) => {
                    let h = key ^ row.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                    (h.rotate_left(17) ^ (h >> 29)) | 1 << 63
                }
                None => u64::from(id),
            },
        )
        .collect()
}

impl Pipeline {
    /// Runs the prompt embeddings `[1, T, hidden]` through the language model in chunks of at most
    /// `chunk` positions (0: one pass), filling `cache`; f32 logits `[vocab]` of the last position.
    pub fn prefill(
        &self,
        embeds: &Tensor,
        cache: &mut crate::llm::KvCache,
        chunk: usize,
    ) -> Result<Tensor> {
        let t = embeds.dim(1)?;
        if t == 0 {
            return Err(crate::Error::Conversation("the prompt is empty".into()));
        }
        let chunk = if chunk == 0 { t.max(1) } else { chunk };
        let mut start = 0;
        loop {
            let n = chunk.min(t - start);
            let _span = tracing::debug_span!("prefill_chunk", start, tokens = n).entered();
            let logits = self
                .model()
                .forward_embeds(&embeds.narrow(1, start, n)?, cache)?;
            start += n;
            if start >= t {
                return Ok(logits);
            }
        }
    }

    /// Each image's embedding sequence `[N_i, hidden]`, running the vision tower only on images
    /// the cache does not hold (keyed by the preprocessed pixels).
    pub fn image_embeddings(
        &self,
        prepared: &Prepared,
        cache: Option<&mut FeatureCache>,
    ) -> Result<Vec<Tensor>> {
        Ok(self
            .keyed_image_embeddings(prepared, cache, false)?
            .into_iter()
            .map(|(emb, _)| emb)
            .collect())
    }

    /// [`Self::image_embeddings`] with each image's [`FeatureCache::key`] (computed when there
    /// is a cache or `want_keys`, else 0).
    pub(super) fn keyed_image_embeddings(
        &self,
        prepared: &Prepared,
        mut cache: Option<&mut FeatureCache>,
        want_keys: bool,
    ) -> Result<Vec<(Tensor, u64)>> {
        let model = self.model();
        let mut out = Vec::with_capacity(prepared.n_images);
        for image in &prepared.images {
            let key = if cache.is_some() || want_keys {
                FeatureCache::key(image.pixels())?
            } else {
                0
            };
            let Some(cache) = cache.as_deref_mut() else {
                out.push((model.encode_image(image)?, key));
                continue;
            };
            let emb = match cache.get(key) {
                Some(e) => e,
                None => {
                    let e = model.encode_image(image)?;
                    cache.insert(key, e.clone());
                    e
                }
            };
            out.push((emb, key));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::KvCache;
    use candle_core::{Device, Tensor};

    /// A one-layer cache of `n` positions, appended one by one (so its buffers have spare room).
    fn prefix(positions: &[u64]) -> Prefix {
        let mut kv = KvCache::new(1);
        for _ in positions {
            let x = Tensor::ones((1, 2, 1, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
            kv.append(0, &x, &x).unwrap();
        }
        Prefix {
            kv,
            positions: positions.to_vec(),
        }
    }

    #[test]
    fn identical_and_extended_prefixes_are_stored_once() {
        let mut cache = PrefixCache::new(1 << 20);
        cache.put(prefix(&[1, 2, 3])).unwrap();
        // The same conversation finished by a concurrent request: not stored twice.
        cache.put(prefix(&[1, 2, 3])).unwrap();
        // Its prefix: already covered.
        cache.put(prefix(&[1, 2])).unwrap();
        assert_eq!(cache.usage().0, 1);
        // A longer turn of the same conversation replaces it.
        cache.put(prefix(&[1, 2, 3, 4])).unwrap();
        // Another conversation is kept beside it.
        cache.put(prefix(&[7, 8])).unwrap();
        let (entries, bytes) = cache.usage();
        assert_eq!(entries, 2);
        // No spare capacity: 2 (k, v) × 2 heads × 4 dims × f32 per position.
        assert_eq!(bytes, (4 + 2) * 2 * 2 * 4 * 4);
        let taken = cache.take_longest(&[1, 2, 3, 4, 5]).expect("hit");
        assert_eq!(taken.positions, [1, 2, 3, 4]);
        assert_eq!(taken.kv.len(), 4);
        assert_eq!(cache.usage(), (1, 2 * 2 * 2 * 4 * 4));
    }

    #[test]
    fn a_compacted_cache_keeps_its_values_and_grows_again() {
        let mut p = prefix(&[1, 2, 3]);
        let before = p.kv.bytes();
        p.kv.compact().unwrap();
        assert!(p.kv.bytes() < before, "{} !< {before}", p.kv.bytes());
        let x = Tensor::full(2f32, (1, 2, 1, 4), &Device::Cpu).unwrap();
        let (k, _) = p.kv.append(0, &x, &x).unwrap();
        let rows: Vec<f32> = k
            .get(0)
            .unwrap()
            .get(0)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(rows, [[1f32; 4], [1.0; 4], [1.0; 4], [2.0; 4]].concat());
    }
}
