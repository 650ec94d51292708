//! The real [`Backend`]: a loaded [`Pipeline`] with the engine's image and prefix caches.

use std::ops::ControlFlow;
use std::sync::atomic::Ordering::Relaxed;

use super::events::{EngineEvent, TokenOut};
use super::runner::{Backend, Emit};
use super::stats::EngineStats;
use super::Request;
use crate::engine::{Event, FeatureCache, Pipeline, PrefixCache, Sequence};
use crate::error::Result;
use crate::grounding::outcome_grounding;

pub(crate) struct PipelineBackend<'p> {
    pipeline: &'p Pipeline,
    /// A conversation that resends its images skips the vision tower for them.
    images: FeatureCache,
    /// Finished requests' caches, continued by later requests that extend them (`None`: off).
    prefixes: Option<PrefixCache>,
}

impl<'p> PipelineBackend<'p> {
    pub fn new(
        pipeline: &'p Pipeline,
        image_cache_bytes: usize,
        prefix_cache_bytes: usize,
    ) -> Self {
        Self {
            pipeline,
            images: FeatureCache::new(image_cache_bytes),
            prefixes: (prefix_cache_bytes > 0).then(|| PrefixCache::new(prefix_cache_bytes)),
        }
    }
}

impl<'p> Backend for PipelineBackend<'p> {
    type Seq = Sequence<'p>;

    fn start(&mut self, r: &Request) -> Result<Sequence<'p>> {
        let (pipeline, images) = (self.pipeline, &mut self.images);
        match self.prefixes.as_mut() {
            Some(prefixes) => {
                pipeline.start_with_prefixes(&r.prepared, &r.params, Some(images), prefixes)
            }
            None => pipeline.start(&r.prepared, &r.params, Some(images)),
        }
    }

    fn sample(&mut self, seq: &mut Sequence<'p>, emit: &mut Emit<'_>) -> Result<Option<u32>> {
        let p = self.pipeline;
        seq.step(|ev| emit(event(p, ev)))
    }

    fn decode(&mut self, batch: &mut [(&mut Sequence<'p>, u32)]) -> Result<()> {
        self.pipeline.decode_batch(batch)
    }

    fn finish(
        &mut self,
        seq: Sequence<'p>,
        r: &Request,
        emit: &mut Emit<'_>,
    ) -> Result<EngineEvent> {
        let p = self.pipeline;
        let caching = self.prefixes.is_some();
        let on_event = |ev: &Event| {
            let _ = emit(event(p, ev));
            ControlFlow::Continue(())
        };
        let outcome = match self.prefixes.as_mut() {
            Some(prefixes) => seq.finish_into(on_event, prefixes)?,
            None => seq.finish(on_event)?,
        };
        let grounding = if p.config().supports_grounding() {
            outcome_grounding(p.tokenizer(), &r.params, &r.prepared.image_sizes, &outcome)
        } else {
            None
        };
        Ok(EngineEvent::Done {
            finish_reason: outcome.finish_reason,
            prompt_tokens: outcome.prompt_tokens,
            completion_tokens: outcome.completion_tokens(),
            cached_tokens: caching.then_some(outcome.reused_prompt_tokens),
            grounding: grounding.map(Box::new),
        })
    }

    fn report(&self, stats: &EngineStats) {
        if let Some(prefixes) = &self.prefixes {
            stats.prefix_cache_hits.store(prefixes.hits, Relaxed);
            stats
                .prefix_cache_reused_tokens
                .store(prefixes.reused_tokens, Relaxed);
        }
        stats.image_cache_hits.store(self.images.hits, Relaxed);
        stats.image_cache_misses.store(self.images.misses, Relaxed);
    }

    fn idle(&mut self) {
        // The finished requests' activations and caches: glibc keeps freed memory otherwise.
        crate::memory::release_freed();
    }
}

/// The library event with the alternatives' text decoded (what a client shows).
fn event(pipeline: &Pipeline, ev: &Event) -> EngineEvent {
    match ev {
        Event::Tail(s) => EngineEvent::Tail(s.clone()),
        Event::Token(t) => {
            let tok = pipeline.tokenizer();
            let top_logprobs = t
                .top_logprobs
                .iter()
                .map(|&(id, lp)| (tok.decode(&[id], false).unwrap_or_default(), lp))
                .collect();
            EngineEvent::Token(TokenOut {
                text: t.text.clone(),
                token_text: t.token_text.clone(),
                logprob: t.logprob,
                top_logprobs,
            })
        }
    }
}
