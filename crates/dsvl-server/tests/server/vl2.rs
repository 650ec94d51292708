//! DeepSeek-VL2 through the server: every conversation of the engine's VL2 fixture set
//! (`crates/dsvl/tests/fixtures/v2`, three model flavours) sent as an OpenAI request gives the
//! official reference's greedy tokens, text, log-probs and prompt length; the debug routes see the
//! reference prompt ids.

use std::path::PathBuf;
use std::sync::Arc;

use axum::http::StatusCode;
use axum::Router;
use dsvl::engine::Pipeline;
use dsvl_server::{router, AppState, ServerConfig};
use serde_json::{json, Value};

use super::harness::*;

fn v2() -> PathBuf {
    engine_fixtures("v2")
}

fn read_json(path: PathBuf) -> Value {
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every case of the fixture set, sorted.
fn case_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(v2().join("cases"))
        .expect("cases dir")
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_suffix(".json").map(str::to_string)
        })
        .collect();
    names.sort();
    assert!(names.len() >= 12, "{names:?}");
    names
}

/// One fixture case as an OpenAI request, with its official reference.
struct Case {
    name: String,
    model: String,
    max_new_tokens: u64,
    /// OpenAI `messages`: each `<image>` of the case text becomes an `image_url` part (a data URL
    /// of the case's image file) at the same place, the text around it becomes text parts.
    messages: Value,
    reference: Value,
}

fn load_case(name: &str) -> Case {
    let input = read_json(v2().join(format!("cases/{name}.json")));
    let reference = read_json(v2().join(format!("ref/{name}.json")));
    let mut turns = input["messages"].as_array().expect("messages").clone();
    // The reference's final empty assistant turn is the generation prompt; OpenAI has no such turn.
    let last = turns.pop().expect("a final turn");
    assert_eq!(last["role"], "<|Assistant|>");
    assert_eq!(last["content"], "");
    let messages = turns.iter().map(openai_message).collect();
    Case {
        name: name.to_string(),
        model: input["model"].as_str().expect("model").to_string(),
        max_new_tokens: input["max_new_tokens"].as_u64().expect("max_new_tokens"),
        messages: Value::Array(messages),
        reference,
    }
}

fn openai_message(turn: &Value) -> Value {
    let role = match turn["role"].as_str().expect("role") {
        "<|User|>" => "user",
        "<|Assistant|>" => "assistant",
        "system" => "system",
        other => panic!("unexpected role {other}"),
    };
    let text = turn["content"].as_str().expect("content");
    let images = turn["images"].as_array().cloned().unwrap_or_default();
    if images.is_empty() {
        return json!({"role": role, "content": text});
    }
    let segments: Vec<&str> = text.split("<image>").collect();
    assert_eq!(segments.len(), images.len() + 1, "one marker per image");
    let mut parts = Vec::new();
    for (k, segment) in segments.iter().enumerate() {
        if k > 0 {
            let rel = images[k - 1].as_str().expect("image path");
            let bytes = std::fs::read(v2().join("cases").join(rel)).expect("image file");
            parts.push(image_part(&data_url(&bytes)));
        }
        if !segment.is_empty() {
            parts.push(json!({"type": "text", "text": segment}));
        }
    }
    json!({"role": role, "content": parts})
}

fn pipeline(model: &str) -> Arc<Pipeline> {
    load_pipeline(&v2().join("models").join(model))
}

pub fn app(model: &str) -> Router {
    let state = AppState::from_pipeline(pipeline(model), &ServerConfig::default())
        .expect("engine thread starts");
    router(state)
}

impl Case {
    /// The reference's greedy request: `max_tokens` = its step count, EOS does not stop it.
    fn request(&self, extra: Value) -> Value {
        let mut body = json!({
            "model": "deepseek-vl", "messages": self.messages, "temperature": 0,
            "max_tokens": self.max_new_tokens, "ignore_eos": true,
        });
        for (k, v) in extra.as_object().expect("object").iter() {
            body[k] = v.clone();
        }
        body
    }

    fn generated_ids(&self) -> Vec<u32> {
        self.reference["generated_ids"]
            .as_array()
            .expect("generated_ids")
            .iter()
            .map(|v| v.as_u64().expect("id") as u32)
            .collect()
    }

    /// The reference ids decoded by the fixture tokenizer, special tokens kept (VL2's default).
    /// Also checked against the reference's own `generated_text`.
    fn expected_text(&self) -> String {
        let tok = pipeline(&self.model);
        let text = tok
            .tokenizer()
            .decode(&self.generated_ids(), false)
            .expect("decode");
        assert_eq!(text, self.reference["generated_text"], "{}", self.name);
        text
    }

    fn prompt_len(&self) -> u64 {
        self.reference["prompt_len"].as_u64().expect("prompt_len")
    }
}

/// Non-streaming, every case: text, finish reason, usage, and per token the reference's token and
/// log-probability (through `logprobs`, which names each token by its text).
#[tokio::test]
async fn every_vl2_case_matches_the_official_reference() {
    for name in case_names() {
        let case = load_case(&name);
        let body = case.request(json!({"logprobs": true, "top_logprobs": 2}));
        let r = post(app(&case.model), "/v1/chat/completions", &body).await;
        let j = r.json();
        assert_eq!(r.status, StatusCode::OK, "{name}: {j}");
        let choice = &j["choices"][0];
        assert_eq!(choice["message"]["content"], case.expected_text(), "{name}");
        assert_eq!(choice["finish_reason"], "length", "{name}");
        assert!(
            choice["message"].get("grounding").is_none(),
            "{name}: no <|det|> in the answer, no grounding field: {j}"
        );
        let n = case.max_new_tokens;
        assert_eq!(
            j["usage"],
            json!({"prompt_tokens": case.prompt_len(), "completion_tokens": n,
                   "total_tokens": case.prompt_len() + n}),
            "{name}"
        );
        let tok = pipeline(&case.model);
        let tokens = choice["logprobs"]["content"].as_array().expect("logprobs");
        let steps = case.reference["steps"].as_array().expect("steps");
        assert_eq!(tokens.len(), steps.len(), "{name}");
        for (k, (got, step)) in tokens.iter().zip(steps).enumerate() {
            let id = step["token"].as_u64().expect("token") as u32;
            let want = tok.tokenizer().decode(&[id], false).expect("decode");
            assert_eq!(got["token"], want.as_str(), "{name} step {k}");
            let (lp, want_lp) = (
                got["logprob"].as_f64().expect("logprob"),
                step["logprob"].as_f64().expect("ref logprob"),
            );
            assert!(
                (lp - want_lp).abs() <= 1e-3,
                "{name} step {k}: logprob {lp} vs reference {want_lp}"
            );
            assert_eq!(got["top_logprobs"].as_array().map(Vec::len), Some(2));
        }
    }
}

/// Streaming, one case per flavour (0, 1 and 2 images): the deltas add up to the reference text,
/// one `finish_reason`, then the usage chunk with the reference prompt length.
#[tokio::test]
async fn vl2_streaming_matches_the_reference() {
    for name in [
        "tiny_text_system_multiturn",
        "small_single_tall_grounding",
        "base_two_images_grounding",
    ] {
        let case = load_case(name);
        let body = case.request(json!({"stream": true, "stream_options": {"include_usage": true}}));
        let r = post(app(&case.model), "/v1/chat/completions", &body).await;
        assert_eq!(r.status, StatusCode::OK, "{name}");
        let chunks = sse_chunks(&r.body);
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        let text: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(text, case.expected_text(), "{name}");
        let finishes: Vec<&Value> = chunks
            .iter()
            .filter(|c| !c["choices"][0]["finish_reason"].is_null())
            .collect();
        assert_eq!(finishes.len(), 1, "{name}");
        assert_eq!(finishes[0]["choices"][0]["finish_reason"], "length");
        assert!(finishes[0]["choices"][0]["delta"]
            .get("grounding")
            .is_none());
        let usage = chunks.last().expect("usage chunk");
        assert_eq!(usage["choices"], json!([]), "{name}");
        assert_eq!(usage["usage"]["prompt_tokens"], case.prompt_len(), "{name}");
        assert_eq!(
            usage["usage"]["completion_tokens"], case.max_new_tokens,
            "{name}"
        );
    }
}

/// VL2 keeps special tokens by default (the reference text has `<|grounding|>` in it);
/// `skip_special_tokens: true` strips them from `content`.
#[tokio::test]
async fn vl2_special_tokens_kept_by_default_and_skipped_on_request() {
    let case = load_case("small_text_multiturn");
    let kept = case.expected_text();
    assert!(kept.contains("<|grounding|>"), "{kept:?}");
    let r = post(
        app(&case.model),
        "/v1/chat/completions",
        &case.request(json!({})),
    )
    .await;
    assert_eq!(r.json()["choices"][0]["message"]["content"], kept);

    let body = case.request(json!({"skip_special_tokens": true}));
    let j = post(app(&case.model), "/v1/chat/completions", &body)
        .await
        .json();
    let skipped = pipeline(&case.model)
        .tokenizer()
        .decode(&case.generated_ids(), true)
        .expect("decode");
    assert!(!skipped.contains("<|grounding|>") && !skipped.is_empty());
    assert_eq!(
        j["choices"][0]["message"]["content"],
        skipped.as_str(),
        "{j}"
    );
    assert_eq!(j["usage"]["completion_tokens"], case.max_new_tokens);
}

/// `ignore_eos` is a boolean like every other field: a wrong type names it.
#[tokio::test]
async fn vl2_ignore_eos_must_be_a_boolean() {
    let case = load_case("tiny_text_system_multiturn");
    let body = case.request(json!({"ignore_eos": "yes"}));
    let r = post(app(&case.model), "/v1/chat/completions", &body).await;
    assert_error(&r, StatusCode::BAD_REQUEST, Some("ignore_eos"), None);
}

/// `/tokenize` gives exactly the reference prompt ids (image tokens expanded per tiling);
/// `/apply-template` gives those ids decoded with each image's run shown as one `<image>`.
#[tokio::test]
async fn vl2_tokenize_and_apply_template_see_the_reference_prompt() {
    for name in [
        "tiny_text_system_multiturn",
        "tiny_three_images_untiled",
        "small_two_images_two_turns",
        "base_text_grounding_answer",
        "base_two_images_grounding",
    ] {
        let case = load_case(name);
        let want: Vec<u64> = case.reference["input_ids"]
            .as_array()
            .expect("input_ids")
            .iter()
            .map(|v| v.as_u64().expect("id"))
            .collect();
        let j = post(
            app(&case.model),
            "/tokenize",
            &json!({"messages": case.messages}),
        )
        .await
        .json();
        let got: Vec<u64> = j["tokens"]
            .as_array()
            .unwrap_or_else(|| panic!("{name}: {j}"))
            .iter()
            .map(|v| v.as_u64().expect("id"))
            .collect();
        assert_eq!(got.len() as u64, case.prompt_len(), "{name}");
        assert_eq!(got, want, "{name}");

        let spans: Vec<(usize, usize)> = case.reference["image_token_spans"]
            .as_array()
            .expect("spans")
            .iter()
            .map(|s| {
                (
                    s[0].as_u64().unwrap() as usize,
                    s[1].as_u64().unwrap() as usize,
                )
            })
            .collect();
        let shown: Vec<u32> = want
            .iter()
            .enumerate()
            .filter(|(i, _)| !spans.iter().any(|&(a, b)| *i > a && *i < b))
            .map(|(_, &id)| id as u32)
            .collect();
        let prompt = pipeline(&case.model)
            .tokenizer()
            .decode(&shown, false)
            .expect("decode");
        let j = post(
            app(&case.model),
            "/apply-template",
            &json!({"messages": case.messages}),
        )
        .await
        .json();
        assert_eq!(j["prompt"], prompt.as_str(), "{name}");
        assert_eq!(
            prompt.matches("<image>").count(),
            spans.len(),
            "{name}: one marker per image"
        );
    }
}

/// `/detokenize` turns the reference's generated ids back into its text.
#[tokio::test]
async fn vl2_detokenize_gives_the_reference_text() {
    let case = load_case("small_text_multiturn");
    let ids = case.generated_ids();
    let j = post(app(&case.model), "/detokenize", &json!({"tokens": ids}))
        .await
        .json();
    assert_eq!(j["content"], case.expected_text(), "{j}");
    let j = post(
        app(&case.model),
        "/detokenize",
        &json!({"tokens": ids, "skip_special_tokens": true}),
    )
    .await
    .json();
    assert!(!j["content"].as_str().unwrap_or("<|").contains("<|"), "{j}");
}

#[tokio::test]
async fn vl2_models_route_reports_the_family() {
    for (model, bos) in [
        ("vl2-tiny-random", 0),
        ("vl2-small-random", 100000),
        ("vl2-base-random", 0),
    ] {
        let j = get(app(model), "/v1/models").await.json();
        let meta = &j["data"][0]["meta"];
        assert_eq!(meta["family"], "DeepSeek-VL2", "{j}");
        assert_eq!(meta["image_size"], 384, "{j}");
        assert_eq!(meta["image_tokens"], 421, "untiled image: v2 §2; {j}");
        let t = post(app(model), "/tokenize", &json!({"content": "Hi"}))
            .await
            .json();
        assert_eq!(t["tokens"][0], bos, "BOS first: {t}");
    }
}

/// A request whose greedy answer (base fixture model) emits `<|det|>` after 18 tokens, every one
/// with a top-1/top-2 logprob gap of at least 0.016 (found by a search over short prompts; the
/// random weights never close the det, so the boxes list is empty and `problems` says why).
fn det_request(extra: Value) -> Value {
    let bytes = std::fs::read(v2().join("images/tiles_384x768.png")).expect("image");
    let mut body = json!({
        "messages": [{"role": "user", "content": [
            image_part(&data_url(&bytes)), {"type": "text", "text": "\nbox Describe"}]}],
        "temperature": 0, "max_tokens": 20, "ignore_eos": true,
    });
    for (k, v) in extra.as_object().expect("object").iter() {
        body[k] = v.clone();
    }
    body
}

/// The grounding extension end to end: the field appears exactly when the answer has `<|det|>`,
/// equals the library's parse of the raw answer with the request's (last) image size, rides on the
/// finish chunk when streaming, and survives `skip_special_tokens` stripping the markup.
#[tokio::test]
async fn vl2_grounding_extension_end_to_end() {
    let model = "vl2-base-random";
    let j = post(app(model), "/v1/chat/completions", &det_request(json!({})))
        .await
        .json();
    let message = &j["choices"][0]["message"];
    let raw = message["content"].as_str().expect("content").to_string();
    assert!(
        raw.contains("<|det|>"),
        "the prompt no longer makes the model emit <|det|> (engine numerics changed?): {raw:?}"
    );
    let want = serde_json::to_value(dsvl::grounding::parse_grounding(&raw, Some((384, 768))))
        .expect("serializes");
    assert_eq!(message["grounding"], want, "{j}");
    assert_eq!(want["image_size"], json!([384, 768]));
    assert!(
        !want["problems"].as_array().expect("problems").is_empty(),
        "{want}"
    );

    let body = det_request(json!({"stream": true}));
    let chunks = sse_chunks(&post(app(model), "/v1/chat/completions", &body).await.body);
    let carrying: Vec<&Value> = chunks
        .iter()
        .filter(|c| c["choices"][0]["delta"].get("grounding").is_some())
        .collect();
    assert_eq!(carrying.len(), 1);
    assert_eq!(carrying[0]["choices"][0]["finish_reason"], "length");
    assert_eq!(carrying[0]["choices"][0]["delta"]["grounding"], want);
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(streamed, raw);

    let body = det_request(json!({"skip_special_tokens": true}));
    let j = post(app(model), "/v1/chat/completions", &body).await.json();
    let message = &j["choices"][0]["message"];
    let content = message["content"].as_str().expect("content");
    assert!(!content.contains("<|det|>") && !content.is_empty(), "{j}");
    assert_eq!(
        message["grounding"], want,
        "boxes come from the raw answer: {j}"
    );
}

/// `max_tiles` caps VL2's tiling: fewer prompt tokens for the same image; 0 and a model without
/// tiles are 400s naming the field.
#[tokio::test]
async fn max_tiles_caps_the_image_tokens() {
    let image =
        std::fs::read(engine_fixtures("v2").join("images/tower_300x900.png")).expect("fixture");
    let body = |tiles: Value| {
        let mut b = json!({
            "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": data_url(&image)}},
                {"type": "text", "text": "Read it."},
            ]}],
            "temperature": 0, "max_tokens": 1,
        });
        if !tiles.is_null() {
            b["max_tiles"] = tiles;
        }
        b
    };
    let app = app("vl2-tiny-random");
    let prompt_tokens = |r: &Reply| r.json()["usage"]["prompt_tokens"].as_u64().expect("usage");
    let full = post(app.clone(), "/v1/chat/completions", &body(Value::Null)).await;
    assert_eq!(full.status, StatusCode::OK, "{}", full.json());
    let one = post(app.clone(), "/v1/chat/completions", &body(json!(1))).await;
    assert_eq!(one.status, StatusCode::OK, "{}", one.json());
    assert!(prompt_tokens(&one) < prompt_tokens(&full));
    let zero = post(app, "/v1/chat/completions", &body(json!(0))).await;
    assert_eq!(zero.status, StatusCode::BAD_REQUEST);
    assert_eq!(zero.json()["error"]["param"], "max_tiles");
    let v1 = post(super::v1::app(), "/v1/chat/completions", &body(json!(2))).await;
    assert_eq!(v1.status, StatusCode::BAD_REQUEST);
    assert_eq!(v1.json()["error"]["param"], "max_tiles", "{}", v1.json());
}
