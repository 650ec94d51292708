//! One generation as a state machine, so that many can be decoded together: [`Pipeline::start`]
//! runs the vision tower and the prefill, [`Sequence::step`] samples the next token and reports
//! it, [`Pipeline::decode_batch`] computes the next logits of any number of sequences in one
//! forward pass, and [`Sequence::finish`] releases the held-back text.
//!
//! [`Pipeline::generate`] is the one-sequence loop over these calls; the server's scheduler runs
//! the same calls over all its running requests (continuous batching). A sequence's tokens are
//! the same either way: every per-row computation of a batched step is the one of a single step
//! (see [`crate::nn::rowmat`]).

use std::ops::ControlFlow;
use std::time::Instant;

use candle_core::Tensor;

use super::generate::{
    position_keys, shared_len, Event, FinishReason, GenerateParams, Outcome, Prefix, PrefixCache,
    Timings, TokenEvent, DEFAULT_PREFILL_CHUNK,
};
use super::{FeatureCache, Pipeline, Prepared};
use crate::error::Result;
use crate::llm::KvCache;
use crate::sampling::processors::{log_softmax, top_logprobs};
use crate::sampling::Sampler;
use crate::structured::TokenConstraint;
use crate::text::{DecodeStream, StopMatcher};

type DecodeFn<'p> = Box<dyn FnMut(&[u32]) -> Result<String> + 'p>;
type Detokenizer<'p> = DecodeStream<DecodeFn<'p>>;

/// A request between its prefill and its end: its cache, the logits of its next position and
/// everything the sampler and the detokenizer carry from token to token.
pub struct Sequence<'p> {
    pipeline: &'p Pipeline,
    params: GenerateParams,
    cache: KvCache,
    /// What each cached position holds ([`position_keys`]), tracked only when the cache may be
    /// reused (a [`Conversation`] or a [`PrefixCache`]); `None` otherwise.
    ///
    /// [`Conversation`]: super::Conversation
    positions: Option<Vec<u64>>,
    logits: Vec<f32>,
    sampler: Sampler,
    /// Structured output: masks the logits before each sample, advanced by each token.
    constraint: Option<TokenConstraint>,
    stream: Detokenizer<'p>,
    stops: StopMatcher,
    ids: Vec<u32>,
    text: String,
    prompt_tokens: usize,
    reused_prompt_tokens: usize,
    timings: Timings,
    decode_started: Option<Instant>,
    finish: Option<FinishReason>,
}

impl Pipeline {
    /// Runs the vision tower (through `cache` when given) and the prefill of `prepared`: a
    /// sequence ready for its first [`Sequence::step`].
    pub fn start(
        &self,
        prepared: &Prepared,
        params: &GenerateParams,
        cache: Option<&mut FeatureCache>,
    ) -> Result<Sequence<'_>> {
        self.start_from(prepared, params, cache, Reuse::Nothing)
    }

    /// [`Pipeline::start`] continuing the entry of `prefixes` that shares the longest prefix
    /// with this prompt (the server's automatic prefix caching): only the rest is prefilled.
    /// End the sequence with [`Sequence::finish_into`] to offer its cache to later requests.
    pub fn start_with_prefixes(
        &self,
        prepared: &Prepared,
        params: &GenerateParams,
        cache: Option<&mut FeatureCache>,
        prefixes: &mut PrefixCache,
    ) -> Result<Sequence<'_>> {
        self.start_from(prepared, params, cache, Reuse::Pool(prefixes))
    }

    /// [`Pipeline::start`] continuing a previous sequence's cache (`reuse`): the positions the
    /// new prompt shares with it (at most all but the last prompt token, whose logits are
    /// needed) are kept, the rest is prefilled.
    pub(super) fn start_from(
        &self,
        prepared: &Prepared,
        params: &GenerateParams,
        cache: Option<&mut FeatureCache>,
        reuse: Reuse<'_>,
    ) -> Result<Sequence<'_>> {
        let sp = &params.sampling;
        sp.validate()?;
        self.check_fits(prepared.ids.len(), sp.max_new_tokens)?;
        let sampler = Sampler::new(sp)?;
        let stops = StopMatcher::new(&sp.stop)?;
        let constraint = sp
            .constraint
            .as_ref()
            .map(|c| self.compile_constraint(c))
            .transpose()?;
        let model = self.model();
        let mut timings = Timings {
            preprocess_ms: prepared.preprocess_ms,
            ..Default::default()
        };

        let t = Instant::now();
        let flops = dsvl_kernels::gemm::flops_done();
        let keep_positions = !matches!(reuse, Reuse::Nothing);
        let keyed = self.keyed_image_embeddings(prepared, cache, keep_positions)?;
        // A GPU runs the tower asynchronously: wait for it, so the vision time is the tower's
        // and not charged to the prefill (the first token waits for both either way).
        if !keyed.is_empty() && !model.device().is_cpu() {
            model.device().synchronize()?;
        }
        timings.vision_ms = ms(t);
        let flops_after_vision = dsvl_kernels::gemm::flops_done();
        timings.vision_flops = flops_after_vision - flops;

        let t = Instant::now();
        let tok = self.tokenizer();
        let positions = match keep_positions {
            true => {
                let images = keyed
                    .iter()
                    .map(|(emb, key)| Ok((emb.dim(0)?, *key)))
                    .collect::<Result<Vec<(usize, u64)>>>()?;
                Some(position_keys(&prepared.ids, tok.image_id(), &images))
            }
            false => None,
        };
        let image_embeds: Vec<Tensor> = keyed.into_iter().map(|(emb, _)| emb).collect();
        let embeds = model.input_embeddings(&prepared.ids, tok.image_id(), &image_embeds)?;
        let (prefix, pool) = match reuse {
            Reuse::Nothing => (None, None),
            Reuse::From(prefix) => (Some(prefix), None),
            Reuse::Pool(pool) => (
                positions.as_ref().and_then(|new| pool.take_longest(new)),
                Some(pool),
            ),
        };
        let (mut kv, reused) = match (prefix, &positions) {
            (Some(mut prefix), Some(new)) => {
                let shared = shared_len(&prefix.positions, new).min(new.len().saturating_sub(1));
                prefix.kv.truncate(shared);
                (prefix.kv, shared)
            }
            _ => (model.new_cache(), 0),
        };
        if let Some(pool) = pool.filter(|_| reused > 0) {
            pool.hits += 1;
            pool.reused_tokens += reused as u64;
        }
        let embeds = match reused {
            0 => embeds,
            n => embeds.narrow(1, n, embeds.dim(1)? - n)?,
        };
        let chunk = params.prefill_chunk.unwrap_or(DEFAULT_PREFILL_CHUNK);
        let logits = self.prefill(&embeds, &mut kv, chunk)?.to_vec1::<f32>()?;
        timings.prefill_ms = ms(t);
        timings.prefill_flops = dsvl_kernels::gemm::flops_done() - flops_after_vision;
        // The vision tower and the prefill free hundreds of MB of temporaries that glibc would
        // otherwise keep (in every worker thread's arena) for the life of the process.
        crate::memory::release_freed();

        let skip_special = params
            .skip_special_tokens
            .unwrap_or(self.config().skip_special_tokens());
        let decode: DecodeFn<'_> = Box::new(move |ids: &[u32]| tok.decode(ids, skip_special));
        Ok(Sequence {
            pipeline: self,
            params: params.clone(),
            cache: kv,
            positions,
            logits,
            sampler,
            constraint,
            stream: DecodeStream::new(decode),
            stops,
            ids: Vec::new(),
            text: String::new(),
            prompt_tokens: prepared.ids.len(),
            reused_prompt_tokens: reused,
            timings,
            decode_started: None,
            finish: None,
        })
    }

    /// One decode step for each `(sequence, token)`: a single forward pass over all of them,
    /// each against its own cache; every sequence gets the logits of its next position.
    pub fn decode_batch(&self, batch: &mut [(&mut Sequence<'_>, u32)]) -> Result<()> {
        let _span = tracing::debug_span!("decode_batch", rows = batch.len()).entered();
        let ids: Vec<u32> = batch.iter().map(|(_, id)| *id).collect();
        let logits = {
            let mut caches: Vec<&mut KvCache> =
                batch.iter_mut().map(|(s, _)| &mut s.cache).collect();
            self.model().decode_batch(&ids, &mut caches)?
        };
        for (row, (seq, id)) in batch.iter_mut().enumerate() {
            seq.logits = logits.get(row)?.to_vec1::<f32>()?;
            if let Some(p) = seq.positions.as_mut() {
                p.push(u64::from(*id));
            }
        }
        Ok(())
    }
}

impl<'p> Sequence<'p> {
    /// Samples the next token from the current logits and reports it through `on_event`.
    /// Returns the token to feed back (through [`Pipeline::decode_batch`] or
    /// [`Sequence::decode`]) or `None` when the sequence has ended (EOS, a stop string,
    /// `max_new_tokens`, or `on_event` returning `Break`): then call [`Sequence::finish`].
    pub fn step(
        &mut self,
        mut on_event: impl FnMut(&Event) -> ControlFlow<()>,
    ) -> Result<Option<u32>> {
        if self.finish.is_some() {
            return Ok(None);
        }
        self.decode_started.get_or_insert_with(Instant::now);
        let max = self.params.sampling.max_new_tokens;
        if self.ids.len() >= max {
            self.finish = Some(FinishReason::Length);
            return Ok(None);
        }
        let tok = self.pipeline.tokenizer();
        let id = match self.constraint.as_mut() {
            None => self.sampler.sample(&self.logits, &self.ids)?,
            Some(constraint) => {
                let t = Instant::now();
                let mut masked = self.logits.clone();
                constraint.mask(&mut masked)?;
                self.timings.constraint_ms += ms(t);
                self.sampler.sample(&masked, &self.ids)?
            }
        };
        // A constrained answer ends at its EOS even with `ignore_eos`: nothing may follow it.
        if id == tok.eos_id() && (!self.params.ignore_eos || self.constraint.is_some()) {
            self.finish = Some(FinishReason::Stop);
            return Ok(None);
        }
        if let Some(constraint) = self.constraint.as_mut() {
            constraint.accept(id)?;
        }
        self.ids.push(id);
        let (logprob, top) = match self.params.logprobs {
            Some(k) => {
                let lp = log_softmax(&self.logits);
                (lp.get(id as usize).copied(), top_logprobs(&lp, k))
            }
            None => (None, Vec::new()),
        };
        let delta = self.stream.push(id)?.unwrap_or_default();
        let (emit, hit) = self.stops.push(&delta);
        self.text.push_str(&emit);
        let event = Event::Token(TokenEvent {
            id,
            text: emit,
            token_text: tok.decode(&[id], false)?,
            logprob,
            top_logprobs: top,
        });
        if on_event(&event).is_break() {
            self.finish = Some(FinishReason::Cancelled);
            return Ok(None);
        }
        // A complete constrained answer (nothing may follow) ends without sampling its EOS.
        if hit.is_some()
            || self
                .constraint
                .as_ref()
                .is_some_and(TokenConstraint::is_done)
        {
            self.finish = Some(FinishReason::Stop);
            return Ok(None);
        }
        if self.ids.len() >= max {
            self.finish = Some(FinishReason::Length);
            return Ok(None);
        }
        Ok(Some(id))
    }

    /// A decode step for this sequence alone.
    pub fn decode(&mut self, id: u32) -> Result<()> {
        let _span = tracing::debug_span!("decode_step", position = self.cache.len()).entered();
        self.logits = self
            .pipeline
            .model()
            .decode_step(id, &mut self.cache)?
            .to_vec1::<f32>()?;
        if let Some(p) = self.positions.as_mut() {
            p.push(u64::from(id));
        }
        Ok(())
    }

    /// Ends the sequence: releases the text held back by the UTF-8 window and the stop matcher
    /// (as a last [`Event::Tail`]) unless it was cancelled or stopped by a stop string.
    pub fn finish(self, on_event: impl FnMut(&Event) -> ControlFlow<()>) -> Result<Outcome> {
        Ok(self.finish_keeping_prefix(on_event)?.0)
    }

    /// [`Sequence::finish`], offering the cache to later requests through `prefixes` (for a
    /// sequence started by [`Pipeline::start_with_prefixes`]; others have no position keys and
    /// are not kept).
    pub fn finish_into(
        self,
        on_event: impl FnMut(&Event) -> ControlFlow<()>,
        prefixes: &mut PrefixCache,
    ) -> Result<Outcome> {
        let (outcome, prefix) = self.finish_keeping_prefix(on_event)?;
        prefixes.put(prefix)?;
        Ok(outcome)
    }

    /// [`Sequence::finish`], also returning the cache and its position keys for the next turn.
    pub(super) fn finish_keeping_prefix(
        mut self,
        mut on_event: impl FnMut(&Event) -> ControlFlow<()>,
    ) -> Result<(Outcome, Prefix)> {
        let finish = self.finish.unwrap_or(FinishReason::Length);
        if finish != FinishReason::Cancelled && !self.stops.is_stopped() {
            let tail = self.stream.finish()?.unwrap_or_default();
            let (mut emit, _) = self.stops.push(&tail);
            if !self.stops.is_stopped() {
                emit.push_str(&self.stops.flush());
            }
            if !emit.is_empty() {
                self.text.push_str(&emit);
                let _ = on_event(&Event::Tail(emit));
            }
        }
        self.timings.decode_ms = self.decode_started.map_or(0.0, ms);
        let outcome = Outcome {
            ids: self.ids,
            text: self.text,
            finish_reason: finish,
            prompt_tokens: self.prompt_tokens,
            reused_prompt_tokens: self.reused_prompt_tokens,
            timings: self.timings,
        };
        let prefix = Prefix {
            kv: self.cache,
            positions: self.positions.unwrap_or_default(),
        };
        Ok((outcome, prefix))
    }

    /// f32 logits of the next position (what the next [`Sequence::step`] samples from).
    pub fn logits(&self) -> &[f32] {
        &self.logits
    }

    /// The times so far: preprocessing, vision and prefill from [`Pipeline::start`]; the decode
    /// time is filled in by [`Sequence::finish`].
    pub fn timings(&self) -> &Timings {
        &self.timings
    }
}

/// Where a new sequence's cache comes from.
pub(super) enum Reuse<'a> {
    /// A fresh prefill; positions are not tracked.
    Nothing,
    /// A previous turn's cache ([`super::Conversation`]).
    From(Prefix),
    /// The best entry of a pool, if any shares a prefix.
    Pool(&'a mut PrefixCache),
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}
