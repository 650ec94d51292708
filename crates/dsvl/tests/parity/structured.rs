//! Structured output on the random-weight fixture models (which, left alone, write gibberish):
//! every constrained answer parses and validates against its schema (checked by an independent
//! validator, the `jsonschema` crate), for v1 and VL2, greedy and sampled, alone and batched
//! through the engine; constrained greedy answers are batch-invariant and unconstrained ones in
//! the same batch are unchanged.

use std::ops::ControlFlow;

use candle_core::DType;
use dsvl::engine::{
    ChatMessage, EngineConfig, EngineEvent, EngineHandle, FinishReason, GenerateParams,
    ImageSource, Pipeline, Prepared, Request,
};
use dsvl::prompt::template::Role;
use dsvl::sampling::SamplingParams;
use dsvl::{Constraint, Error};
use serde_json::{json, Value};

use crate::batch::load;
use crate::v1::fixtures;
use crate::vl2::vl2_fixtures;

fn params(constraint: Option<Constraint>, seed: Option<u64>, max: usize) -> GenerateParams {
    GenerateParams {
        sampling: SamplingParams {
            temperature: if seed.is_some() { 1.0 } else { 0.0 },
            seed: seed.unwrap_or(0),
            max_new_tokens: max,
            constraint,
            ..Default::default()
        },
        ..Default::default()
    }
}

fn prompt(p: &Pipeline, with_image: bool) -> Prepared {
    let marker = p.config().image_marker();
    let (text, images) = match with_image {
        true => {
            let image = match p.config().family() {
                f if f.contains("2") => vl2_fixtures().join("images/chart_520x390_L.png"),
                _ => fixtures().join("images/landscape_500x333.png"),
            };
            (
                format!("{marker}Read this receipt as JSON."),
                vec![ImageSource::Path(image)],
            )
        }
        false => ("Give me the invoice as JSON.".to_string(), vec![]),
    };
    let msg = ChatMessage::new(Role::User, text).with_images(images);
    p.prepare(None, &[msg]).expect("prompt prepares")
}

/// Schemas of the supported subset, bounded so that an answer ends well within the budget.
fn schemas() -> Vec<Value> {
    vec![
        json!({"type": "object", "properties": {
            "vendor": {"type": "object", "properties": {
                "name": {"type": "string", "maxLength": 16},
                "country": {"enum": ["FR", "DE", "US"]}},
                "required": ["name", "country"], "additionalProperties": false},
            "lines": {"type": "array", "minItems": 1, "maxItems": 3, "items": {
                "type": "object", "properties": {
                    "qty": {"type": "integer", "minimum": 1, "maximum": 99},
                    "price": {"type": "number", "minimum": 0, "maximum": 1000, "multipleOf": 0.01}},
                "required": ["qty", "price"], "additionalProperties": false}},
            "paid": {"type": "boolean"},
            "note": {"type": ["string", "null"], "maxLength": 8}},
            "required": ["vendor", "lines", "paid"], "additionalProperties": false}),
        json!({"type": "object", "properties": {
            "code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$"},
            "kind": {"const": "receipt"},
            // Without `multipleOf`, a number may have any number of decimals (and a
            // random model writes them until the budget ends).
            "total": {"type": "number", "exclusiveMinimum": 0, "maximum": 500, "multipleOf": 0.01},
            "tags": {"type": "array", "items": {"enum": ["food", "travel"]}, "maxItems": 2}},
            "required": ["code", "kind", "total"], "additionalProperties": false}),
        json!({"type": "array", "minItems": 2, "maxItems": 4,
            "items": {"type": "integer", "minimum": -5, "maximum": 5}}),
    ]
}

fn validate(schema: &Value, text: &str, what: &str) {
    let value: Value =
        serde_json::from_str(text).unwrap_or_else(|e| panic!("{what}: {text:?} is not JSON: {e}"));
    let validator = jsonschema::validator_for(schema).expect("test schema compiles");
    if let Err(e) = validator.validate(&value) {
        panic!("{what}: {text} does not validate against {schema}: {e}");
    }
}

fn models() -> Vec<(&'static str, std::path::PathBuf)> {
    vec![
        ("v1", fixtures().join("models/siglip-tiny")),
        ("vl2", vl2_fixtures().join("models/vl2-tiny-random")),
    ]
}

#[test]
fn every_constrained_answer_validates_v1_and_vl2() {
    for (name, dir) in models() {
        let p = load(dir, DType::F32);
        for (i, schema) in schemas().iter().enumerate() {
            for seed in [None, Some(1), Some(2)] {
                let prep = prompt(&p, i == 0);
                let c = Constraint::JsonSchema(schema.clone());
                let out = p
                    .generate(&prep, &params(Some(c), seed, 1500), |_| {
                        ControlFlow::Continue(())
                    })
                    .expect("generates");
                let what = format!("{name} schema {i} seed {seed:?}");
                assert_eq!(
                    out.finish_reason,
                    FinishReason::Stop,
                    "{what}: {}",
                    out.text
                );
                validate(schema, &out.text, &what);
            }
        }
        // Unconstrained, the same model writes no JSON (the constraint did the work).
        let free = p
            .generate(&prompt(&p, false), &params(None, None, 30), |_| {
                ControlFlow::Continue(())
            })
            .expect("generates");
        assert!(
            serde_json::from_str::<Value>(&free.text).is_err(),
            "{}",
            free.text
        );
    }
}

#[test]
fn regex_choice_and_json_object_on_the_models() {
    for (name, dir) in models() {
        let p = load(dir, DType::F32);
        let prep = prompt(&p, false);
        for seed in [None, Some(3), Some(4)] {
            let run = |c: Constraint| {
                p.generate(&prep, &params(Some(c), seed, 200), |_| {
                    ControlFlow::Continue(())
                })
                .expect("generates")
            };
            let out = run(Constraint::Regex(r"[A-Z]{2}-[0-9]{3}".into()));
            let b = out.text.as_bytes();
            assert!(
                b.len() == 6
                    && b[..2].iter().all(u8::is_ascii_uppercase)
                    && b[2] == b'-'
                    && b[3..].iter().all(u8::is_ascii_digit),
                "{name}: {:?}",
                out.text
            );
            let out = run(Constraint::Choice(vec![
                "invoice".into(),
                "receipt".into(),
                "other".into(),
            ]));
            assert!(
                ["invoice", "receipt", "other"].contains(&out.text.as_str()),
                "{name}: {:?}",
                out.text
            );
            assert_eq!(out.finish_reason, FinishReason::Stop);
            let out = run(Constraint::JsonObject);
            if out.finish_reason == FinishReason::Stop {
                let v: Value = serde_json::from_str(&out.text).expect("a JSON object");
                assert!(v.is_object(), "{name}: {}", out.text);
            } else {
                // Unbounded keys and values may use the whole budget: then a prefix of one.
                assert!(out.text.starts_with('{'), "{name}: {}", out.text);
            }
            assert!(
                !out.text.contains(['\n', ' ']) || out.text.contains('"'),
                "{}",
                out.text
            );
        }
    }
}

/// `max_tokens` before the end: `length`, and the text is a prefix of a valid answer.
#[test]
fn budget_ends_an_unfinished_answer_with_length() {
    let p = load(fixtures().join("models/siglip-tiny"), DType::F32);
    let schema = schemas().remove(0);
    let out = p
        .generate(
            &prompt(&p, false),
            &params(Some(Constraint::JsonSchema(schema)), None, 4),
            |_| ControlFlow::Continue(()),
        )
        .expect("generates");
    assert_eq!(out.finish_reason, FinishReason::Length);
    assert_eq!(out.ids.len(), 4);
    assert!(
        "{\"vendor\":{\"name\":\"".starts_with(out.text.as_str())
            || out.text.starts_with("{\"vendor\":{\"name\":\""),
        "{}",
        out.text
    );
}

#[test]
fn bad_constraints_fail_before_the_prefill() {
    let p = load(fixtures().join("models/siglip-tiny"), DType::F32);
    let prep = prompt(&p, false);
    let cases = [
        (
            Constraint::JsonSchema(json!({"type": "array", "uniqueItems": true})),
            "`uniqueItems` at /uniqueItems is not supported",
        ),
        (Constraint::Regex("(".into()), "invalid regex"),
        (Constraint::Choice(vec![]), "the list is empty"),
        (Constraint::Lark("start: x".into()), "invalid grammar"),
    ];
    for (c, want) in cases {
        let err = match p.start(&prep, &params(Some(c), None, 8), None) {
            Err(e) => e,
            Ok(_) => panic!("{want}: started"),
        };
        assert!(matches!(err, Error::InvalidConstraint { .. }), "{err:?}");
        assert!(err.to_string().contains(want), "{err}");
    }
}

/// Through the engine: constrained and free requests decode together; every constrained answer
/// validates, constrained greedy answers equal the same requests alone, and the free request's
/// tokens are those of running it alone.
#[test]
fn batched_constrained_and_free_requests() {
    for (name, dir) in models() {
        let p = std::sync::Arc::new(load(dir, DType::F32));
        let schemas = schemas();
        let mut requests: Vec<(Request, Option<Value>)> = Vec::new();
        for (i, s) in schemas.iter().enumerate() {
            let c = Some(Constraint::JsonSchema(s.clone()));
            requests.push((
                Request::new(prompt(&p, i == 0), params(c.clone(), None, 300)),
                Some(s.clone()),
            ));
            requests.push((
                Request::new(prompt(&p, false), params(c, Some(7 + i as u64), 300)),
                Some(s.clone()),
            ));
        }
        requests.push((Request::new(prompt(&p, true), params(None, None, 24)), None));
        requests.push((
            Request::new(prompt(&p, false), params(None, Some(5), 24)),
            None,
        ));

        let alone: Vec<String> = requests
            .iter()
            .map(|(r, _)| {
                p.generate(&r.prepared, &r.params, |_| ControlFlow::Continue(()))
                    .expect("alone")
                    .text
            })
            .collect();

        let mut cfg = EngineConfig::default();
        cfg.policy.max_running = requests.len();
        let engine = EngineHandle::spawn(p.clone(), &cfg).expect("engine");
        let receivers: Vec<_> = requests
            .iter()
            .map(|(r, _)| engine.submit(r.clone()).expect("queued"))
            .collect();
        for (i, mut rx) in receivers.into_iter().enumerate() {
            let mut text = String::new();
            let mut finish = None;
            while let Some(ev) = rx.blocking_recv() {
                match ev {
                    EngineEvent::Token(t) => text.push_str(&t.text),
                    EngineEvent::Tail(s) => text.push_str(&s),
                    EngineEvent::Done { finish_reason, .. } => finish = Some(finish_reason),
                    EngineEvent::Failed(e) => panic!("{name} request {i}: {e}"),
                }
            }
            let what = format!("{name} request {i}");
            assert_eq!(text, alone[i], "{what}: batched answer differs from alone");
            if let Some(schema) = &requests[i].1 {
                assert_eq!(finish, Some(FinishReason::Stop), "{what}: {text}");
                validate(schema, &text, &what);
            }
        }
    }
}

/// VL2's grounding markup through examples/grounding.lark: special tokens by name, well-formed
/// boxes with coordinates 0–999, greedy and sampled; the answer's boxes are read back.
#[test]
fn grounding_grammar_on_vl2() {
    let p = load(vl2_fixtures().join("models/vl2-tiny-random"), DType::F32);
    let grammar = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/grounding.lark"),
    )
    .expect("example grammar");
    let prep = prompt(&p, true);
    for seed in [None, Some(1), Some(2)] {
        let c = Constraint::Lark(grammar.clone());
        let out = p
            .generate(&prep, &params(Some(c), seed, 1500), |_| {
                ControlFlow::Continue(())
            })
            .expect("generates");
        assert_eq!(out.finish_reason, FinishReason::Stop, "{}", out.text);
        assert!(out.text.starts_with("<|ref|>"), "{}", out.text);
        let g = dsvl::grounding::parse_grounding(&out.text, Some((520, 390)));
        assert!((1..=8).contains(&g.objects.len()), "{}", out.text);
        assert!(g.objects.iter().all(|o| (1..=10).contains(&o.boxes.len())));
        // Only box order is left to the model (x1 <= x2 is not part of the grammar).
        assert!(
            g.problems.iter().all(|p| p.contains("swapped")),
            "{}: {:?}",
            out.text,
            g.problems
        );
        for b in g.objects.iter().flat_map(|o| &o.boxes) {
            assert!(b.normalized.iter().all(|&v| v <= 999), "{b:?}");
        }
    }
}
