//! The constraint alone, driven by random logits over the fixture tokenizers (no model): every
//! answer must parse and validate, whatever the logits; bad constraints are clear errors.

use std::path::Path;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use super::*;
use crate::prompt::tokenizer::PromptTokenizer;
use crate::sampling::{Sampler, SamplingParams};

fn tokenizer(model: &str) -> PromptTokenizer {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(model);
    crate::models::from_dir(&dir).unwrap().tokenizer().unwrap()
}

const V1: &str = "v1/models/siglip-tiny";
const VL2: &str = "v2/models/vl2-tiny-random";

/// Generates with random logits (a sampler at temperature 1, or greedy) until the constraint
/// is done or EOS is drawn; the text and whether it ended before `budget` tokens.
fn drive(
    grammars: &Grammars,
    tok: &PromptTokenizer,
    c: &Constraint,
    seed: u64,
    greedy: bool,
    budget: usize,
) -> (String, bool) {
    let mut tc = grammars.compile(c).unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    let params = SamplingParams {
        temperature: if greedy { 0.0 } else { 1.0 },
        top_k: None,
        seed,
        ..Default::default()
    };
    let mut sampler = Sampler::new(&params).unwrap();
    let vocab = tc.vocab_size() + 7; // lm_head rows past the tokenizer are masked too
    let mut ids = Vec::new();
    for _ in 0..budget {
        let mut logits: Vec<f32> = (0..vocab).map(|_| rng.random::<f32>() * 8.0).collect();
        tc.mask(&mut logits).unwrap();
        let id = sampler.sample(&logits, &ids).unwrap();
        assert!((id as usize) < tc.vocab_size(), "padding id {id} sampled");
        if id == tok.eos_id() {
            assert!(
                tc.is_accepting(),
                "EOS allowed before the answer is complete"
            );
            return (tok.decode(&ids, false).unwrap(), true);
        }
        tc.accept(id).unwrap();
        ids.push(id);
        if tc.is_done() {
            return (tok.decode(&ids, false).unwrap(), true);
        }
    }
    (tok.decode(&ids, false).unwrap(), false)
}

/// Schemas covering the supported subset; strings and arrays bounded so that random logits end.
fn schemas() -> Vec<Value> {
    vec![
        json!({"type": "object", "properties": {
            "name": {"type": "string", "maxLength": 12},
            "age": {"type": "integer", "minimum": 0, "maximum": 120}},
            "required": ["name", "age"], "additionalProperties": false}),
        json!({"type": "object", "properties": {
            "vendor": {"type": "object", "properties": {
                "name": {"type": "string", "maxLength": 10},
                "country": {"enum": ["FR", "DE", "US"]}},
                "required": ["name", "country"], "additionalProperties": false},
            "lines": {"type": "array", "minItems": 1, "maxItems": 3, "items": {
                "type": "object", "properties": {
                    "qty": {"type": "integer", "minimum": 1, "maximum": 99},
                    "price": {"type": "number", "minimum": 0, "maximum": 1000}},
                "required": ["qty", "price"], "additionalProperties": false}},
            "paid": {"type": "boolean"},
            "note": {"type": ["string", "null"], "maxLength": 8}},
            "required": ["vendor", "lines", "paid"], "additionalProperties": false}),
        json!({"type": "object", "properties": {
            "code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$"},
            "kind": {"const": "receipt"},
            "tags": {"type": "array", "items": {"enum": ["food", "travel"]}, "maxItems": 2}},
            "required": ["code", "kind"], "additionalProperties": false}),
        json!({"$defs": {"point": {"type": "array", "prefixItems": [
                {"type": "integer", "minimum": 0, "maximum": 999},
                {"type": "integer", "minimum": 0, "maximum": 999}], "items": false}},
            "type": "object", "properties": {"a": {"$ref": "#/$defs/point"},
            "b": {"anyOf": [{"$ref": "#/$defs/point"}, {"type": "null"}]}},
            "required": ["a", "b"], "additionalProperties": false}),
        json!({"type": "array", "items": {"type": "integer", "exclusiveMinimum": -5, "exclusiveMaximum": 5},
            "minItems": 2, "maxItems": 4}),
        json!({"type": "string", "format": "date"}),
    ]
}

#[test]
fn random_logits_always_give_valid_json() {
    for model in [V1, VL2] {
        let tok = tokenizer(model);
        let grammars = Grammars::new(&tok).unwrap();
        for schema in schemas() {
            let validator = jsonschema::validator_for(&schema).unwrap();
            for (seed, greedy) in [(0, true), (1, false), (2, false), (3, false)] {
                let c = Constraint::JsonSchema(schema.clone());
                let (text, ended) = drive(&grammars, &tok, &c, seed, greedy, 600);
                assert!(ended, "{model} seed {seed}: not finished: {text}");
                let value: Value = serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("{model} seed {seed}: {text:?} is not JSON: {e}"));
                assert!(
                    validator.is_valid(&value),
                    "{model} seed {seed}: {text} vs {schema}"
                );
                assert!(is_compact(&text), "not compact: {text}");
            }
        }
    }
}

#[test]
fn json_object_regex_and_choice() {
    let tok = tokenizer(V1);
    let grammars = Grammars::new(&tok).unwrap();
    let re = regex_lite_check;
    for seed in 0..4 {
        let (text, ended) = drive(&grammars, &tok, &Constraint::JsonObject, seed, false, 1500);
        if ended {
            let v: Value = serde_json::from_str(&text).unwrap();
            assert!(v.is_object(), "{text}");
        } else {
            // Unbounded values may run past the budget; what there is must be a JSON prefix.
            assert!(text.starts_with('{'), "{text}");
        }
        let rx = Constraint::Regex(r"[A-Z]{2}[0-9]{3}(-[a-z]{1,8})?".into());
        let (text, ended) = drive(&grammars, &tok, &rx, seed, seed == 0, 200);
        assert!(ended && re(&text), "{text:?}");
        let choice =
            Constraint::Choice(vec!["cat".into(), "dog".into(), "a \"quoted\" bird".into()]);
        let (text, ended) = drive(&grammars, &tok, &choice, seed, seed == 0, 50);
        assert!(ended, "{text}");
        assert!(
            ["cat", "dog", "a \"quoted\" bird"].contains(&text.as_str()),
            "{text:?}"
        );
    }
}

/// No whitespace outside JSON strings.
pub(crate) fn is_compact(json: &str) -> bool {
    let (mut in_string, mut escaped) = (false, false);
    for c in json.chars() {
        match (in_string, escaped, c) {
            (true, true, _) => escaped = false,
            (true, false, '\\') => escaped = true,
            (_, false, '"') => in_string = !in_string,
            (false, _, c) if c.is_whitespace() => return false,
            _ => {}
        }
    }
    true
}

/// `[A-Z]{2}[0-9]{3}(-[a-z]{1,8})?` by hand (no regex crate in the tests).
fn regex_lite_check(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 5
        && b[..2].iter().all(u8::is_ascii_uppercase)
        && b[2..5].iter().all(u8::is_ascii_digit)
        && (b.len() == 5
            || (b.len() > 6
                && b.len() <= 14
                && b[5] == b'-'
                && b[6..].iter().all(u8::is_ascii_lowercase)))
}

#[test]
fn grounding_grammar_uses_special_tokens() {
    let tok = tokenizer(VL2);
    let grammars = Grammars::new(&tok).unwrap();
    let lark = include_str!("../../../../examples/grounding.lark");
    for seed in 0..3 {
        let (text, ended) = drive(
            &grammars,
            &tok,
            &Constraint::Lark(lark.into()),
            seed,
            false,
            300,
        );
        assert!(ended, "{text}");
        let g = crate::grounding::parse_grounding(&text, None);
        // The grammar fixes the form and the range; it does not order x1 <= x2.
        assert!(
            g.problems.iter().all(|p| p.contains("swapped")),
            "{text}: {:?}",
            g.problems
        );
        assert!(!g.objects.is_empty(), "{text}");
    }
}

#[test]
fn token_bytes_match_the_decoder() {
    for model in [V1, VL2] {
        let tok = tokenizer(model);
        let (info, bytes) = tokenizer_env::token_bytes(&tok).unwrap();
        assert_eq!(info.tok_eos, tok.eos_id());
        let mut checked = 0;
        for (id, b) in bytes.iter().enumerate() {
            // (A one-byte token 0xFF is the byte itself, not a special token.)
            if b.len() > 1 && b[0] == toktrie::TokTrie::SPECIAL_TOKEN_MARKER {
                // A special token: its name after the marker.
                assert_eq!(&b[1..], tok.id_to_token(id as u32).unwrap().as_bytes());
                continue;
            }
            if let Ok(text) = std::str::from_utf8(b) {
                if !b.is_empty() {
                    assert_eq!(tok.decode(&[id as u32], false).unwrap(), text, "token {id}");
                    checked += 1;
                }
            }
        }
        assert!(checked > 500, "{model}: only {checked} tokens checked");
        // VL2's grounding markup is special, reachable only by name.
        if model == VL2 {
            let r = tok.token_to_id("<|ref|>").unwrap() as usize;
            assert_eq!(bytes[r][0], toktrie::TokTrie::SPECIAL_TOKEN_MARKER);
        }
    }
}

#[test]
fn unsupported_keywords_are_named_with_their_path() {
    let schema = json!({"type": "object", "properties": {"items": {"type": "array",
        "items": {"type": "string"}, "uniqueItems": true}}});
    let err = Constraint::JsonSchema(schema)
        .validate()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`uniqueItems` at /properties/items/uniqueItems"),
        "{err}"
    );
    let schema = json!({"anyOf": [{"type": "string"}, {"not": {"type": "null"}}]});
    let err = Constraint::JsonSchema(schema)
        .validate()
        .unwrap_err()
        .to_string();
    assert!(err.contains("`not` at /anyOf/1/not"), "{err}");
    let schema = json!({"$defs": {"a/b": {"if": {}}}});
    let err = Constraint::JsonSchema(schema)
        .validate()
        .unwrap_err()
        .to_string();
    assert!(err.contains("/$defs/a~1b/if"), "{err}");
    // Annotations and unknown extension keywords are fine.
    let ok = json!({"title": "t", "description": "d", "x-note": 1, "type": "object"});
    Constraint::JsonSchema(ok).validate().unwrap();
}

#[test]
fn bad_constraints_are_clear_errors() {
    let tok = tokenizer(V1);
    let grammars = Grammars::new(&tok).unwrap();
    let err = |c: Constraint| grammars.compile(&c).unwrap_err().to_string();
    let e = err(Constraint::Choice(vec![]));
    assert!(e.contains("invalid choice: the list is empty"), "{e}");
    let e = err(Constraint::Choice(vec!["a".into(), String::new()]));
    assert!(e.contains("choice 1 is empty"), "{e}");
    let e = err(Constraint::Regex("[a-z".into()));
    assert!(e.starts_with("invalid regex:"), "{e}");
    let e = err(Constraint::Lark("start: foo".into()));
    assert!(e.starts_with("invalid grammar:"), "{e}");
    let e = err(Constraint::JsonSchema(json!("a string")));
    assert!(e.contains("must be a JSON object"), "{e}");
    let e = err(Constraint::JsonSchema(json!({"type": "strin"})));
    assert!(e.starts_with("invalid JSON schema:"), "{e}");
    let e = err(Constraint::JsonSchema(
        json!({"type": "string", "pattern": "(unclosed"}),
    ));
    assert!(e.starts_with("invalid JSON schema:"), "{e}");
    let e = err(Constraint::JsonSchema(
        json!({"type": "integer", "minimum": 5, "maximum": 1}),
    ));
    assert!(e.starts_with("invalid JSON schema:"), "{e}");
    let e = err(Constraint::JsonSchema(json!({"x-guidance": {}})));
    assert!(e.contains("x-guidance"), "{e}");
    let big: serde_json::Map<String, Value> = (0..4000)
        .map(|i| (format!("field_{i}"), json!({"type": "string"})))
        .collect();
    let e = err(Constraint::JsonSchema(
        json!({"type": "object", "properties": big}),
    ));
    assert!(
        e.contains("over the limit of 65536 bytes (MAX_CONSTRAINT_BYTES)"),
        "{e}"
    );
    let e = err(Constraint::Regex("a".repeat(MAX_CONSTRAINT_BYTES + 1)));
    assert!(e.contains("the regex is 65537 bytes"), "{e}");
}
