//! What structured output costs: building the tokenizer environment, compiling a typical invoice
//! schema (the first token's extra cost), the token mask per step (mean and p99), and the decode
//! step with and without the constraint.
//!
//! ```sh
//! cargo run --release -p dsvl --example structured_cost -- MODEL_DIR [TOKENS]
//! # the mask costs depend on the tokenizer only (the tiny test model has the 1.3B's 100k vocabulary);
//! # the step times need the real shape:
//! cargo xtask make-checkpoint --shape 1.3b --from crates/dsvl/tests/fixtures/v1/models/siglip-tiny --out /tmp/ck13
//! cargo run --release -p dsvl --example structured_cost -- /tmp/ck13 64
//! ```
//!
//! The mask loop drives the constraint with random logits (every answer valid, new constraints
//! started as answers end), so it walks many schema states, not only the greedy path.

use std::ops::ControlFlow;
use std::time::Instant;

use std::sync::Arc;

use dsvl::sampling::{Sampler, SamplingParams};
use dsvl::{
    ChatMessage, Constraint, EngineConfig, EngineEvent, EngineHandle, GenerateParams, LoadOptions,
    Pipeline, Request, Role,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// About ten fields: a nested object, an array of line items, enums, numbers with ranges.
fn invoice_schema() -> serde_json::Value {
    serde_json::json!({
        "type": "object",
        "properties": {
            "invoice_number": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{4,8}$"},
            "date": {"type": "string", "format": "date"},
            "vendor": {"type": "object", "properties": {
                "name": {"type": "string", "maxLength": 60},
                "vat_id": {"type": "string", "maxLength": 20},
                "country": {"enum": ["FR", "DE", "GB", "US", "CH", "IT", "ES"]}},
                "required": ["name", "country"], "additionalProperties": false},
            "currency": {"enum": ["EUR", "USD", "GBP", "CHF"]},
            "lines": {"type": "array", "minItems": 1, "maxItems": 20, "items": {
                "type": "object", "properties": {
                    "description": {"type": "string", "maxLength": 80},
                    "quantity": {"type": "integer", "minimum": 1, "maximum": 9999},
                    "unit_price": {"type": "number", "minimum": 0, "maximum": 1000000, "multipleOf": 0.01},
                    "vat_rate": {"enum": [0, 5.5, 10, 20]}},
                "required": ["description", "quantity", "unit_price"], "additionalProperties": false}},
            "subtotal": {"type": "number", "minimum": 0, "multipleOf": 0.01},
            "vat": {"type": "number", "minimum": 0, "multipleOf": 0.01},
            "total": {"type": "number", "minimum": 0, "multipleOf": 0.01},
            "paid": {"type": "boolean"},
            "notes": {"type": ["string", "null"], "maxLength": 200}
        },
        "required": ["invoice_number", "date", "vendor", "currency", "lines", "total", "paid"],
        "additionalProperties": false
    })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let Some(model) = args.next() else {
        anyhow::bail!("usage: structured_cost MODEL_DIR [TOKENS]");
    };
    let tokens: usize = args.next().map_or(Ok(32), |t| t.parse())?;
    let t = Instant::now();
    let pipeline = Arc::new(Pipeline::load(model.as_ref(), &LoadOptions::default())?);
    println!(
        "model {model}: loaded in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let t = Instant::now();
    pipeline.grammars()?;
    let vocab = pipeline.tokenizer().vocab_size();
    println!(
        "tokenizer environment ({vocab} tokens), once per model: {:.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );

    let schema = Constraint::JsonSchema(invoice_schema());
    let mut compile_ms = Vec::new();
    let mut first_mask_ms = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let mut c = pipeline.compile_constraint(&schema)?;
        compile_ms.push(t.elapsed().as_secs_f64() * 1e3);
        let mut logits = vec![0.0f32; c.vocab_size()];
        let t = Instant::now();
        c.mask(&mut logits)?;
        first_mask_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    println!(
        "invoice schema: compile {:.2} ms, first mask {:.2} ms (first-token cost, best of 5: {:.2} ms)",
        compile_ms.iter().sum::<f64>() / 5.0,
        first_mask_ms.iter().sum::<f64>() / 5.0,
        compile_ms.iter().zip(&first_mask_ms).map(|(a, b)| a + b).fold(f64::MAX, f64::min)
    );

    // The mask per token, over many schema states (random logits through fresh constraints).
    let mut rng = StdRng::seed_from_u64(0);
    let mut sampler = Sampler::new(&SamplingParams {
        temperature: 1.0,
        top_k: None,
        ..Default::default()
    })?;
    let mut mask_us = Vec::new();
    let mut answers = 0;
    let mut c = pipeline.compile_constraint(&schema)?;
    let eos = pipeline.tokenizer().eos_id();
    let n = c.vocab_size();
    let mut logits = vec![0.0f32; n];
    while mask_us.len() < 3000 {
        logits
            .iter_mut()
            .for_each(|l| *l = rng.random::<f32>() * 8.0);
        let t = Instant::now();
        c.mask(&mut logits)?;
        mask_us.push(t.elapsed().as_secs_f64() * 1e6);
        let id = sampler.sample(&logits, &[])?;
        if id != eos {
            c.accept(id)?;
        }
        if id == eos || c.is_done() {
            answers += 1;
            c = pipeline.compile_constraint(&schema)?;
        }
    }
    mask_us.sort_by(f64::total_cmp);
    println!(
        "mask per token over {} tokens ({answers} complete answers): mean {:.0} µs, p50 {:.0} µs, p99 {:.0} µs, max {:.0} µs",
        mask_us.len(),
        mask_us.iter().sum::<f64>() / mask_us.len() as f64,
        percentile(&mask_us, 0.5),
        percentile(&mask_us, 0.99),
        mask_us[mask_us.len() - 1]
    );

    // The decode step with and without the constraint (text prompt, greedy).
    let prepared = pipeline.prepare(
        None,
        &[ChatMessage::new(Role::User, "Read this invoice as JSON.")],
    )?;
    let run = |constraint: Option<Constraint>| -> anyhow::Result<(f64, usize, f64)> {
        let mut params = GenerateParams {
            ignore_eos: constraint.is_none(),
            ..Default::default()
        };
        params.sampling.max_new_tokens = tokens;
        params.sampling.constraint = constraint;
        let out = pipeline.generate(&prepared, &params, |_| ControlFlow::Continue(()))?;
        Ok((
            out.timings.decode_ms / out.completion_tokens().max(1) as f64,
            out.completion_tokens(),
            out.timings.constraint_ms / out.timings.decode_ms.max(1e-9),
        ))
    };
    run(None)?; // warm-up
    for round in 0..2 {
        let (free, n_free, _) = run(None)?;
        let (constrained, n_c, share) = run(Some(schema.clone()))?;
        println!(
            "decode step, round {round}: free {free:.2} ms/token ({n_free} tokens), constrained {constrained:.2} ms/token ({n_c} tokens): {:+.1}%; masks took {:.3}% of the constrained decode time",
            (constrained / free - 1.0) * 100.0,
            share * 100.0
        );
    }

    // Eight concurrent requests through the batching engine, constrained vs free.
    let engine = EngineHandle::spawn(pipeline.clone(), &EngineConfig::default())?;
    let batch = |constraint: Option<Constraint>| -> anyhow::Result<(f64, usize)> {
        let mut params = GenerateParams {
            ignore_eos: constraint.is_none(),
            ..Default::default()
        };
        params.sampling.max_new_tokens = tokens;
        params.sampling.constraint = constraint;
        let t = Instant::now();
        let receivers = (0..8)
            .map(|_| engine.submit(Request::new(prepared.clone(), params.clone())))
            .collect::<dsvl::Result<Vec<_>>>()?;
        let mut total = 0;
        for mut rx in receivers {
            while let Some(ev) = rx.blocking_recv() {
                match ev {
                    EngineEvent::Done {
                        completion_tokens, ..
                    } => total += completion_tokens,
                    EngineEvent::Failed(e) => return Err(e.into()),
                    _ => {}
                }
            }
        }
        Ok((total as f64 / t.elapsed().as_secs_f64(), total))
    };
    for round in 0..2 {
        let (free, n_free) = batch(None)?;
        let (constrained, n_c) = batch(Some(schema.clone()))?;
        println!(
            "8 concurrent requests, round {round}: free {free:.2} tokens/s ({n_free} tokens), constrained {constrained:.2} tokens/s ({n_c} tokens): {:.0}%",
            constrained / free * 100.0
        );
    }
    Ok(())
}
