//! Structured output over HTTP on the v1 fixture model (random weights: free text is noise, so
//! every well-formed answer here is the constraint's doing): OpenAI's `response_format`
//! (`json_schema`, `json_object`), vLLM's `guided_*` and `structured_outputs`, streamed and not,
//! and a 400 naming the field for every bad constraint.

use axum::http::StatusCode;
use serde_json::{json, Value};

use super::harness::{assert_error, post, sse_chunks};
use super::v1::app;

fn ask(extra: Value) -> Value {
    let mut body = json!({
        "messages": [{"role": "user", "content": "Read the receipt as JSON."}],
        "temperature": 0,
        "max_tokens": 200,
    });
    for (k, v) in extra.as_object().expect("object") {
        body[k] = v.clone();
    }
    body
}

fn receipt_schema() -> Value {
    json!({"type": "object", "properties": {
        "merchant": {"type": "string", "maxLength": 20},
        "currency": {"enum": ["EUR", "USD"]},
        "items": {"type": "array", "minItems": 1, "maxItems": 3, "items": {
            "type": "object", "properties": {
                "name": {"type": "string", "maxLength": 12},
                "price": {"type": "number", "minimum": 0, "maximum": 100, "multipleOf": 0.01}},
            "required": ["name", "price"], "additionalProperties": false}},
        "total": {"type": "number", "minimum": 0, "maximum": 1000, "multipleOf": 0.01}},
        "required": ["merchant", "currency", "items", "total"], "additionalProperties": false})
}

/// The fields of [`receipt_schema`], checked by hand.
fn check_receipt(text: &str) {
    let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
    let o = v.as_object().expect("an object");
    assert_eq!(o.len(), 4, "{text}");
    assert!(
        o["merchant"]
            .as_str()
            .is_some_and(|m| m.chars().count() <= 20),
        "{text}"
    );
    assert!(
        ["EUR", "USD"].contains(&o["currency"].as_str().unwrap_or("")),
        "{text}"
    );
    let items = o["items"].as_array().expect("items");
    assert!((1..=3).contains(&items.len()), "{text}");
    for it in items {
        assert!(
            it["name"].is_string()
                && it["price"]
                    .as_f64()
                    .is_some_and(|p| (0.0..=100.0).contains(&p)),
            "{text}"
        );
    }
    assert!(
        o["total"]
            .as_f64()
            .is_some_and(|t| (0.0..=1000.0).contains(&t)),
        "{text}"
    );
    assert!(
        !text.contains('\n') && !text.contains(": "),
        "not compact: {text}"
    );
}

#[tokio::test]
async fn json_schema_response_format() {
    let format = json!({"type": "json_schema", "json_schema": {"name": "receipt", "strict": true, "schema": receipt_schema()}});
    let r = post(
        app(),
        "/v1/chat/completions",
        &ask(json!({"response_format": format})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json());
    let j = r.json();
    assert_eq!(j["choices"][0]["finish_reason"], "stop", "{j}");
    check_receipt(
        j["choices"][0]["message"]["content"]
            .as_str()
            .expect("content"),
    );

    // Streamed, sampled: the deltas add up to a valid answer too.
    let body = ask(json!({"response_format": format, "stream": true, "temperature": 1, "seed": 3}));
    let r = post(app(), "/v1/chat/completions", &body).await;
    let chunks = sse_chunks(&r.body);
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    let last = chunks
        .iter()
        .rev()
        .find(|c| !c["choices"][0]["finish_reason"].is_null())
        .expect("end");
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
    check_receipt(&text);
}

#[tokio::test]
async fn json_object_and_vllm_extensions() {
    let r = post(
        app(),
        "/v1/chat/completions",
        &ask(json!({"response_format": {"type": "json_object"}, "max_tokens": 400})),
    )
    .await;
    let text = r.json()["choices"][0]["message"]["content"]
        .as_str()
        .expect("content")
        .to_string();
    if r.json()["choices"][0]["finish_reason"] == "stop" {
        let v: Value = serde_json::from_str(&text).expect("JSON");
        assert!(v.is_object(), "{text}");
    } else {
        assert!(text.starts_with('{'), "{text}");
    }

    let cases = [
        (
            json!({"guided_choice": ["yes", "no", "maybe"]}),
            vec!["yes", "no", "maybe"],
        ),
        (
            json!({"structured_outputs": {"choice": ["cat", "dog"]}}),
            vec!["cat", "dog"],
        ),
    ];
    for (extra, allowed) in cases {
        let r = post(app(), "/v1/chat/completions", &ask(extra.clone())).await;
        let j = r.json();
        let text = j["choices"][0]["message"]["content"]
            .as_str()
            .expect("content");
        assert!(allowed.contains(&text), "{extra}: {text:?}");
        assert_eq!(j["choices"][0]["finish_reason"], "stop");
    }
    for extra in [
        json!({"guided_regex": "[0-9]{3}-[A-Z]{2}"}),
        json!({"structured_outputs": {"regex": "[0-9]{3}-[A-Z]{2}"}}),
    ] {
        let r = post(app(), "/v1/chat/completions", &ask(extra)).await;
        let text = r.json()["choices"][0]["message"]["content"]
            .as_str()
            .expect("content")
            .to_string();
        let b = text.as_bytes();
        assert!(
            b.len() == 6
                && b[..3].iter().all(u8::is_ascii_digit)
                && b[3] == b'-'
                && b[4..].iter().all(u8::is_ascii_uppercase),
            "{text:?}"
        );
    }
    // A schema as a JSON string (vLLM accepts both), and structured_outputs.json.
    let schema = receipt_schema().to_string();
    for extra in [
        json!({"guided_json": schema}),
        json!({"structured_outputs": {"json": receipt_schema()}}),
    ] {
        let r = post(app(), "/v1/chat/completions", &ask(extra)).await;
        check_receipt(
            r.json()["choices"][0]["message"]["content"]
                .as_str()
                .expect("content"),
        );
    }
    let grammar = "start: \"(\" NUM \",\" NUM \")\"\nNUM: /[0-9]{1,3}/";
    let r = post(
        app(),
        "/v1/chat/completions",
        &ask(json!({"guided_grammar": grammar})),
    )
    .await;
    let text = r.json()["choices"][0]["message"]["content"]
        .as_str()
        .expect("content")
        .to_string();
    assert!(
        text.starts_with('(') && text.ends_with(')') && text.contains(','),
        "{text:?}"
    );
}

#[tokio::test]
async fn budget_end_is_length() {
    let format =
        json!({"type": "json_schema", "json_schema": {"name": "r", "schema": receipt_schema()}});
    let r = post(
        app(),
        "/v1/chat/completions",
        &ask(json!({"response_format": format, "max_tokens": 3})),
    )
    .await;
    let j = r.json();
    assert_eq!(j["choices"][0]["finish_reason"], "length", "{j}");
    assert_eq!(j["usage"]["completion_tokens"], 3);
}

#[tokio::test]
async fn bad_constraints_are_400s_naming_the_field() {
    let schema_param = "response_format.json_schema.schema";
    let with_schema = |schema: Value| json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}});
    let big: serde_json::Map<String, Value> = (0..3000)
        .map(|i| (format!("f{i}"), json!({"type": "string"})))
        .collect();
    let cases = [
        (
            with_schema(json!({"type": "array", "items": {"type": "string"}, "uniqueItems": true})),
            schema_param,
            "`uniqueItems` at /uniqueItems is not supported",
        ),
        (
            with_schema(json!({"type": "object", "properties": {"a": {"not": {"type": "null"}}}})),
            schema_param,
            "/properties/a/not",
        ),
        (
            with_schema(json!({"type": "strnig"})),
            schema_param,
            "invalid JSON schema",
        ),
        (
            with_schema(json!({"type": "object", "properties": big})),
            schema_param,
            "MAX_CONSTRAINT_BYTES",
        ),
        (
            json!({"response_format": {"type": "json_schema"}}),
            schema_param,
            "needs `json_schema.schema`",
        ),
        (
            json!({"response_format": {"type": "yaml"}}),
            "response_format.type",
            "not supported",
        ),
        (
            json!({"guided_regex": "[a-z"}),
            "guided_regex",
            "invalid regex",
        ),
        (
            json!({"guided_choice": []}),
            "guided_choice",
            "the list is empty",
        ),
        (
            json!({"guided_grammar": "start: nothing_defined"}),
            "guided_grammar",
            "invalid grammar",
        ),
        (
            json!({"guided_json": "{not json"}),
            "guided_json",
            "not JSON",
        ),
        (
            json!({"guided_regex": "a", "guided_choice": ["a"]}),
            "guided_choice",
            "send only one",
        ),
        (
            json!({"structured_outputs": {"regex": "("}}),
            "structured_outputs.regex",
            "invalid regex",
        ),
    ];
    for (extra, param, needle) in cases {
        let r = post(app(), "/v1/chat/completions", &ask(extra.clone())).await;
        let j = assert_error(&r, StatusCode::BAD_REQUEST, Some(param), None);
        let msg = j["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains(needle), "{extra}: {msg}");
    }
}

/// DeepSeek-VL2 (MoE): a JSON Schema answer, and the grounding grammar, whose boxes the response
/// also carries as the `grounding` extension.
#[tokio::test]
async fn vl2_schema_and_grounding_grammar() {
    let app = || super::vl2::app("vl2-tiny-random");
    let format = json!({"type": "json_schema", "json_schema": {"name": "receipt", "schema": receipt_schema()}});
    let r = post(
        app(),
        "/v1/chat/completions",
        &ask(json!({"response_format": format})),
    )
    .await;
    let j = r.json();
    assert_eq!(j["choices"][0]["finish_reason"], "stop", "{j}");
    check_receipt(
        j["choices"][0]["message"]["content"]
            .as_str()
            .expect("content"),
    );

    let grammar = include_str!("../../../../examples/grounding.lark");
    let body = ask(json!({"guided_grammar": grammar, "max_tokens": 1500}));
    let r = post(app(), "/v1/chat/completions", &body).await;
    let j = r.json();
    let content = j["choices"][0]["message"]["content"]
        .as_str()
        .expect("content");
    assert!(
        content.starts_with("<|ref|>") && content.ends_with("<|/det|>"),
        "{content}"
    );
    assert_eq!(j["choices"][0]["finish_reason"], "stop", "{j}");
    let objects = j["choices"][0]["message"]["grounding"]["objects"]
        .as_array()
        .expect("grounding");
    assert!(!objects.is_empty(), "{j}");
}
