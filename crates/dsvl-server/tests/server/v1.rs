//! The server end to end on the tiny v1 fixture model: `router(state).oneshot(..)` for each route
//! and error path, and one real-socket test with concurrent clients.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use dsvl::engine::Pipeline;
use dsvl_server::{router, AppState, ServerConfig};
use serde_json::{json, Value};
use tower::ServiceExt;

use super::harness::*;

pub fn fixtures() -> PathBuf {
    engine_fixtures("v1")
}

pub fn model_dir() -> PathBuf {
    fixtures().join("models/siglip-tiny")
}

/// The tiny model, loaded once for the whole binary.
pub fn pipeline() -> Arc<Pipeline> {
    load_pipeline(&model_dir())
}

pub fn app_with(cfg: ServerConfig) -> Router {
    router(AppState::from_pipeline(pipeline(), &cfg).expect("engine thread starts"))
}

pub fn app() -> Router {
    app_with(ServerConfig::default())
}

pub fn case(name: &str) -> Value {
    let bytes = std::fs::read(fixtures().join(format!("cases/{name}.json"))).expect("case file");
    serde_json::from_slice(&bytes).expect("case JSON")
}

pub fn image_bytes(name: &str) -> Vec<u8> {
    std::fs::read(fixtures().join("images").join(name)).expect("fixture image")
}

/// The CLI prompt of `siglip-tiny__single` as OpenAI parts: `[image, text]`.
pub fn single_image_messages() -> Value {
    json!([{"role": "user", "content": [
        image_part(&data_url(&image_bytes("landscape_500x333.png"))),
        {"type": "text", "text": "Describe this image in detail."},
    ]}])
}

#[tokio::test]
async fn greedy_single_image_matches_the_reference() {
    let body = json!({"model": "deepseek-vl", "messages": single_image_messages(), "temperature": 0, "max_tokens": 32});
    let r = post(app(), "/v1/chat/completions", &body).await;
    let j = r.json();
    assert_eq!(r.status, StatusCode::OK, "{j}");
    assert_eq!(j["object"], "chat.completion");
    assert_eq!(j["choices"][0]["message"]["role"], "assistant");
    assert_eq!(
        j["choices"][0]["message"]["content"],
        case("siglip-tiny__single")["decoded"]
    );
    assert_eq!(j["choices"][0]["finish_reason"], "length");
    assert_eq!(j["choices"][0]["logprobs"], Value::Null);
    assert_eq!(
        j["usage"],
        json!({"prompt_tokens": 668, "completion_tokens": 32, "total_tokens": 700})
    );
}

#[tokio::test]
async fn streaming_deltas_add_up_to_the_reference() {
    let body = json!({"messages": single_image_messages(), "temperature": 0, "max_tokens": 32,
                      "stream": true, "stream_options": {"include_usage": true}});
    let r = post(app(), "/v1/chat/completions", &body).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.content_type.starts_with("text/event-stream"),
        "{}",
        r.content_type
    );
    let data = sse_data(&r.body);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).expect("chunk JSON"))
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let id = &chunks[0]["id"];
    assert!(chunks
        .iter()
        .all(|c| &c["id"] == id && c["object"] == "chat.completion.chunk"));
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(
        text,
        case("siglip-tiny__single")["decoded"].as_str().unwrap()
    );
    let finish: Vec<&Value> = chunks
        .iter()
        .map(|c| &c["choices"][0]["finish_reason"])
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finish, [&json!("length")]);
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["prompt_tokens"], 668);
    assert_eq!(usage["usage"]["completion_tokens"], 32);
}

#[tokio::test]
async fn logprobs_report_the_top_alternatives() {
    let body = json!({"messages": single_image_messages(), "temperature": 0, "max_tokens": 4,
                      "logprobs": true, "top_logprobs": 3});
    let r = post(app(), "/v1/chat/completions", &body).await;
    let j = r.json();
    assert_eq!(r.status, StatusCode::OK, "{j}");
    let content = j["choices"][0]["logprobs"]["content"]
        .as_array()
        .expect("logprobs.content");
    assert_eq!(content.len(), 4);
    for t in content {
        let top = t["top_logprobs"].as_array().expect("top_logprobs");
        assert_eq!(top.len(), 3);
        assert!(t["logprob"].as_f64().unwrap() <= 0.0);
        assert_eq!(top[0]["token"], t["token"], "greedy picks the top token");
        assert!(top[0]["logprob"].as_f64() >= top[1]["logprob"].as_f64());
    }
    let text: String = content
        .iter()
        .map(|t| t["token"].as_str().unwrap())
        .collect();
    assert!(case("siglip-tiny__single")["decoded"]
        .as_str()
        .unwrap()
        .starts_with(&text));
}

#[tokio::test]
async fn multi_turn_with_images_in_an_earlier_turn_matches_the_reference() {
    let want = case("siglip-tiny__multi");
    let messages = json!([
        {"role": "user", "content": [
            image_part(&data_url(&image_bytes("landscape_500x333.png"))),
            {"type": "text", "text": "What is in the first picture?"}]},
        {"role": "assistant", "content": "A red square and a blue circle."},
        {"role": "user", "content": [
            {"type": "text", "text": "And here: "},
            image_part(&data_url(&image_bytes("portrait_333x500.png"))),
            {"type": "text", "text": " Compare them."}]},
    ]);
    let body = json!({"messages": messages, "temperature": 0, "max_tokens": 32});
    let r = post(app(), "/v1/chat/completions", &body).await;
    let j = r.json();
    assert_eq!(r.status, StatusCode::OK, "{j}");
    assert_eq!(j["choices"][0]["message"]["content"], want["decoded"]);
    assert_eq!(j["usage"]["prompt_tokens"], want["n_tokens"]);

    let t = post(app(), "/apply-template", &json!({"messages": messages}))
        .await
        .json();
    assert_eq!(t["prompt"], want["prompt"]);
    let t = post(app(), "/tokenize", &json!({"messages": messages}))
        .await
        .json();
    assert_eq!(
        t["tokens"].as_array().map(Vec::len),
        want["n_tokens"].as_u64().map(|n| n as usize)
    );
}

pub fn one_image(url: &str, text: &str) -> Value {
    json!({"messages": [{"role": "user", "content": [image_part(url), {"type": "text", "text": text}]}],
           "temperature": 0, "max_tokens": 2})
}

#[tokio::test]
async fn bad_requests_are_openai_errors_naming_the_field() {
    let png = image_bytes("landscape_500x333.png");
    let good = data_url(&png);
    let url_param = "messages[0].content[0].image_url.url";
    let cases: Vec<(&str, Value, Option<&str>, Option<&str>)> = vec![
        (
            "bad base64",
            one_image("data:image/png;base64,@@@", "hi"),
            Some(url_param),
            Some("invalid_image_url"),
        ),
        (
            "not base64 data URL",
            one_image("data:image/png,abc", "hi"),
            Some(url_param),
            None,
        ),
        (
            "remote URL",
            one_image("https://example.com/a.png", "hi"),
            Some(url_param),
            None,
        ),
        (
            "non-image bytes",
            one_image(&data_url(b"hello, not an image"), "hi"),
            Some("messages[0].content[0]"),
            Some("invalid_image"),
        ),
        (
            "truncated PNG",
            one_image(&data_url(&png[..png.len() / 3]), "hi"),
            Some("messages[0].content[0]"),
            Some("invalid_image"),
        ),
        (
            "image count mismatch",
            one_image(&good, "<image_placeholder> and <image_placeholder>"),
            Some("messages"),
            Some("image_count_mismatch"),
        ),
        (
            "context overflow",
            json!({"messages": single_image_messages(), "max_tokens": 100_000}),
            Some("messages"),
            Some("context_length_exceeded"),
        ),
        (
            "n = 2",
            json!({"messages": single_image_messages(), "n": 2}),
            Some("n"),
            None,
        ),
        (
            "temperature type",
            json!({"messages": single_image_messages(), "temperature": "hot"}),
            Some("temperature"),
            None,
        ),
        (
            "temperature range",
            json!({"messages": single_image_messages(), "temperature": -1}),
            Some("temperature"),
            None,
        ),
        (
            "top_logprobs range",
            json!({"messages": single_image_messages(), "logprobs": true, "top_logprobs": 21}),
            Some("top_logprobs"),
            None,
        ),
        (
            "response format",
            json!({"messages": single_image_messages(), "response_format": {"type": "xml"}}),
            Some("response_format.type"),
            None,
        ),
        (
            "content type",
            json!({"messages": [{"role": "user", "content": 7}]}),
            Some("messages[0].content"),
            None,
        ),
        (
            "role",
            json!({"messages": [{"role": "robot", "content": "hi"}]}),
            Some("messages[0].role"),
            None,
        ),
        (
            "no user turn",
            json!({"messages": []}),
            Some("messages"),
            None,
        ),
    ];
    for (what, body, param, code) in cases {
        let r = post(app(), "/v1/chat/completions", &body).await;
        let j = r.json();
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{what}: {j}");
        assert_eq!(j["error"]["type"], "invalid_request_error", "{what}: {j}");
        if let Some(p) = param {
            assert_eq!(j["error"]["param"], p, "{what}: {j}");
        }
        if let Some(c) = code {
            assert_eq!(j["error"]["code"], c, "{what}: {j}");
        }
    }
    let r = post(
        app(),
        "/v1/chat/completions",
        &json!({"messages": single_image_messages(), "temperature": "hot"}),
    )
    .await;
    let msg = r.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(msg.contains("`temperature`"), "{msg}");
    let bad_json = Request::post("/v1/chat/completions")
        .body(Body::from("{not json"))
        .expect("request");
    assert_error(
        &send(app(), bad_json).await,
        StatusCode::BAD_REQUEST,
        None,
        None,
    );
}

#[tokio::test]
async fn limits_on_images_and_body_size() {
    let url = data_url(&image_bytes("landscape_500x333.png"));
    let two =
        json!({"messages": [{"role": "user", "content": [image_part(&url), image_part(&url)]}]});
    let app1 = app_with(ServerConfig {
        max_images_per_request: 1,
        ..Default::default()
    });
    let r = post(app1, "/v1/chat/completions", &two).await;
    assert_error(
        &r,
        StatusCode::BAD_REQUEST,
        Some("messages"),
        Some("too_many_images"),
    );

    let small = app_with(ServerConfig {
        max_body_bytes: 1000,
        ..Default::default()
    });
    let r = post(small, "/v1/chat/completions", &one_image(&url, "hi")).await;
    assert_error(
        &r,
        StatusCode::PAYLOAD_TOO_LARGE,
        None,
        Some("request_too_large"),
    );

    let few_tokens = app_with(ServerConfig {
        max_prompt_tokens: Some(100),
        ..Default::default()
    });
    let r = post(few_tokens, "/v1/chat/completions", &one_image(&url, "hi")).await;
    assert_error(
        &r,
        StatusCode::BAD_REQUEST,
        Some("messages"),
        Some("context_length_exceeded"),
    );
}

#[tokio::test]
async fn file_urls_only_inside_the_allowed_directory() {
    let images = fixtures()
        .join("images")
        .canonicalize()
        .expect("images dir");
    let cfg = ServerConfig {
        allowed_local_media_path: Some(images.clone()),
        ..Default::default()
    };
    let inside = format!("file://{}", images.join("landscape_500x333.png").display());
    let r = post(
        app_with(cfg.clone()),
        "/v1/chat/completions",
        &one_image(&inside, "hi"),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json());
    let escape = format!(
        "file://{}/../models/siglip-tiny/config.json",
        images.display()
    );
    let outside = format!(
        "file://{}",
        model_dir()
            .canonicalize()
            .expect("model dir")
            .join("config.json")
            .display()
    );
    for url in [escape, outside] {
        let r = post(
            app_with(cfg.clone()),
            "/v1/chat/completions",
            &one_image(&url, "hi"),
        )
        .await;
        let j = assert_error(
            &r,
            StatusCode::BAD_REQUEST,
            Some("messages[0].content[0].image_url.url"),
            None,
        );
        assert!(
            j["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains("outside"),
            "{j}"
        );
    }
    let r = post(app(), "/v1/chat/completions", &one_image(&inside, "hi")).await;
    assert_error(
        &r,
        StatusCode::BAD_REQUEST,
        Some("messages[0].content[0].image_url.url"),
        None,
    );
}

#[tokio::test]
async fn api_key_guards_everything_but_health() {
    let cfg = ServerConfig {
        api_key: Some("s3cret".into()),
        ..Default::default()
    };
    let state = AppState::from_pipeline(pipeline(), &cfg).expect("engine");
    let with_key = |key: Option<&str>| {
        let mut b = Request::get("/v1/models");
        if let Some(k) = key {
            b = b.header(header::AUTHORIZATION, format!("Bearer {k}"));
        }
        b.body(Body::empty()).expect("request")
    };
    for key in [None, Some("wrong")] {
        let r = send(router(state.clone()), with_key(key)).await;
        assert_error(&r, StatusCode::UNAUTHORIZED, None, Some("invalid_api_key"));
    }
    let r = send(router(state.clone()), with_key(Some("s3cret"))).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(get(router(state), "/health").await.status, StatusCode::OK);
}

#[tokio::test]
async fn info_routes() {
    let r = get(app(), "/v1/models").await;
    let j = r.json();
    assert_eq!(r.status, StatusCode::OK, "{j}");
    assert_eq!(j["data"][0]["id"], "deepseek-vl");
    assert_eq!(
        j["data"][0]["modalities"]["input"],
        json!(["text", "image"])
    );
    let r = get(app(), "/v1/models/deepseek-vl").await;
    assert_eq!(
        r.json(),
        j["data"][0],
        "models.retrieve gives the listed card"
    );
    let r = get(app(), "/v1/models/gpt-4o").await;
    assert_error(&r, StatusCode::NOT_FOUND, None, Some("model_not_found"));
    assert_eq!(get(app(), "/ready").await.status, StatusCode::OK);
    let r = get(app(), "/nope").await;
    assert_error(&r, StatusCode::NOT_FOUND, None, Some("not_found"));

    let t = post(
        app(),
        "/tokenize",
        &json!({"content": "Hello", "with_pieces": true}),
    )
    .await
    .json();
    assert_eq!(t["tokens"][0]["id"], 100000, "BOS first");
    let r = post(app(), "/tokenize", &json!({"content": 3})).await;
    assert_error(&r, StatusCode::BAD_REQUEST, Some("content"), None);

    // /detokenize undoes /tokenize (BOS shown: special tokens are kept unless asked).
    let ids = post(app(), "/tokenize", &json!({"content": "Hello, world"}))
        .await
        .json()["tokens"]
        .clone();
    let d = post(app(), "/detokenize", &json!({"tokens": ids}))
        .await
        .json();
    assert_eq!(d["content"], "<｜begin▁of▁sentence｜>Hello, world", "{d}");
    let d = post(
        app(),
        "/detokenize",
        &json!({"tokens": ids, "skip_special_tokens": true}),
    )
    .await
    .json();
    assert_eq!(d["content"], "Hello, world", "{d}");
    for (body, param) in [
        (json!({"tokens": [100000, 4_000_000_000u64]}), "tokens[1]"),
        (json!({"tokens": [1, -2]}), "tokens[1]"),
        (json!({"tokens": "Hello"}), "tokens"),
    ] {
        let r = post(app(), "/detokenize", &body).await;
        assert_error(&r, StatusCode::BAD_REQUEST, Some(param), None);
    }
    let single = case("siglip-tiny__single");
    let t = post(
        app(),
        "/apply-template",
        &json!({"messages": single_image_messages()}),
    )
    .await
    .json();
    assert_eq!(t["prompt"], single["prompt"]);
}

#[tokio::test]
async fn loading_state_answers_503() {
    let state = AppState::loading(&ServerConfig::default());
    let r = get(router(state.clone()), "/health").await;
    assert_error(
        &r,
        StatusCode::SERVICE_UNAVAILABLE,
        None,
        Some("unavailable"),
    );
    assert!(r.headers.contains_key(header::RETRY_AFTER));
    let r = post(
        router(state),
        "/v1/chat/completions",
        &json!({"messages": single_image_messages()}),
    )
    .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
}

/// Polls `/metrics` (at most 30 s) until it contains `needle`; returns the last text.
async fn wait_for_metric(state: &AppState, needle: &str) -> String {
    let mut m = String::new();
    for _ in 0..600 {
        m = String::from_utf8_lossy(&get(router(state.clone()), "/metrics").await.body)
            .into_owned();
        if m.contains(needle) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    m
}

#[tokio::test]
async fn full_queue_gets_429_and_a_dropped_stream_frees_the_engine() {
    let state = AppState::from_pipeline(
        pipeline(),
        &ServerConfig {
            max_queue: 1,
            max_running: 1,
            ..Default::default()
        },
    )
    .expect("engine");
    let long = json!({"messages": single_image_messages(), "temperature": 0, "max_tokens": 8000, "stream": true});
    let mut held = Vec::new();
    for i in 0..3 {
        let req = Request::post("/v1/chat/completions")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(long.to_string()))
            .expect("request");
        held.push(
            router(state.clone())
                .oneshot(req)
                .await
                .expect("router answers"),
        );
        if i == 0 {
            wait_for_metric(&state, "\ndsvl_running_sequences 1").await;
        }
    }
    let statuses: Vec<u16> = held.iter().map(|r| r.status().as_u16()).collect();
    assert_eq!(
        statuses,
        [200, 200, 429],
        "one running, one queued, one refused"
    );
    assert!(held[2].headers().contains_key(header::RETRY_AFTER));
    drop(held); // both clients go away: generation stops at the next token

    let mut m = String::new();
    for _ in 0..600 {
        m = String::from_utf8_lossy(&get(router(state.clone()), "/metrics").await.body)
            .into_owned();
        if m.contains("\ndsvl_running_sequences 0")
            && m.contains("\ndsvl_queue_depth 0")
            && m.contains("{status=\"429\"} 1")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let generated: f64 = m
        .lines()
        .find_map(|l| {
            l.strip_prefix("dsvl_generation_tokens_total ")
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(f64::MAX);
    assert!(
        generated > 0.0 && generated < 8000.0,
        "counted, and cancelled well before max_tokens: {m}"
    );
    assert!(
        m.contains("dsvl_http_requests_total{status=\"429\"} 1"),
        "{m}"
    );
}

mod socket {
    use super::*;
    use tokio::net::TcpListener;

    async fn http(
        addr: std::net::SocketAddr,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, String) {
        let body = body.map(Value::to_string).unwrap_or_default();
        http_raw(addr, method, path, &body).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_clients_over_a_real_socket() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let cfg = ServerConfig {
            model_dir: model_dir(),
            max_queue: 16,
            ..Default::default()
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(dsvl_server::serve_on(listener, cfg, async move {
            let _ = stopped.await;
        }));

        let mut ready = false;
        for _ in 0..600 {
            let (status, _) = http(addr, "GET", "/health", None).await;
            assert!(status == 200 || status == 503, "{status}");
            if status == 200 {
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(ready, "the model loads within a minute");

        let body = json!({"messages": single_image_messages(), "temperature": 0, "max_tokens": 4});
        let clients: Vec<_> = (0..8)
            .map(|_| {
                let body = body.clone();
                tokio::spawn(async move {
                    http(addr, "POST", "/v1/chat/completions", Some(&body)).await
                })
            })
            .collect();
        let want = case("siglip-tiny__single")["decoded"]
            .as_str()
            .unwrap()
            .to_string();
        for c in clients {
            let (status, body) = tokio::time::timeout(Duration::from_secs(300), c)
                .await
                .expect("in time")
                .expect("task");
            assert_eq!(status, 200, "{body}");
            let j: Value = serde_json::from_str(&body).expect("JSON");
            let text = j["choices"][0]["message"]["content"].as_str().unwrap();
            assert!(!text.is_empty() && want.starts_with(text), "{text}");
            assert_eq!(j["usage"]["completion_tokens"], 4);
        }

        let (status, m) = http(addr, "GET", "/metrics", None).await;
        assert_eq!(status, 200);
        assert!(
            metric(&m, "dsvl_http_requests_total{status=\"200\"}") >= 9.0,
            "{m}"
        );
        assert_eq!(metric(&m, "dsvl_generation_tokens_total"), 32.0);
        assert_eq!(metric(&m, "dsvl_prompt_tokens_total"), 8.0 * 668.0);
        assert_eq!(metric(&m, "dsvl_images_processed_total"), 8.0);
        assert_eq!(metric(&m, "dsvl_time_to_first_token_seconds_count"), 8.0);
        assert_eq!(metric(&m, "dsvl_time_per_output_token_seconds_count"), 24.0);
        assert_eq!(metric(&m, "dsvl_queue_depth"), 0.0);
        assert_eq!(metric(&m, "dsvl_running_sequences"), 0.0);

        let _ = stop.send(());
        let result = tokio::time::timeout(Duration::from_secs(60), server)
            .await
            .expect("stops")
            .expect("task");
        assert!(result.is_ok(), "{result:?}");
    }
}

/// A second request with the same image reuses its embeddings (image feature cache): the answer is
/// the same and /metrics counts one miss, then one hit.
#[tokio::test]
async fn resent_image_hits_the_feature_cache() {
    let app = app();
    let body = json!({"messages": single_image_messages(), "temperature": 0, "max_tokens": 4});
    let a = post(app.clone(), "/v1/chat/completions", &body)
        .await
        .json();
    let b = post(app.clone(), "/v1/chat/completions", &body)
        .await
        .json();
    assert_eq!(
        a["choices"][0]["message"]["content"],
        b["choices"][0]["message"]["content"]
    );
    let m = String::from_utf8_lossy(&get(app, "/metrics").await.body).into_owned();
    assert!(m.contains("dsvl_image_cache_misses_total 1"), "{m}");
    assert!(m.contains("dsvl_image_cache_hits_total 1"), "{m}");
}

/// Prefix caching (`--prefix-cache-mb`): a client resending its conversation with one more turn
/// gets the second prompt's shared prefix from the cache (reported as
/// `usage.prompt_tokens_details.cached_tokens` and in /metrics), and the same answer, token
/// for token, as a server without the cache.
#[tokio::test]
async fn prefix_cache_continues_a_resent_conversation() {
    let cached = app_with(ServerConfig {
        prefix_cache_bytes: 256 << 20,
        ..ServerConfig::default()
    });
    let ask = |messages: Value| json!({"messages": messages, "temperature": 0, "max_tokens": 8, "logprobs": true});
    let first = post(
        cached.clone(),
        "/v1/chat/completions",
        &ask(single_image_messages()),
    )
    .await;
    let j1 = first.json();
    assert_eq!(first.status, StatusCode::OK, "{j1}");
    assert_eq!(
        j1["usage"]["prompt_tokens_details"]["cached_tokens"], 0,
        "{j1}"
    );
    let prompt1 = j1["usage"]["prompt_tokens"]
        .as_u64()
        .expect("prompt tokens");

    let mut messages = single_image_messages();
    let list = messages.as_array_mut().expect("array");
    list.push(json!({"role": "assistant", "content": j1["choices"][0]["message"]["content"]}));
    list.push(json!({"role": "user", "content": "And the colours?"}));
    let second = post(
        cached.clone(),
        "/v1/chat/completions",
        &ask(messages.clone()),
    )
    .await;
    let j2 = second.json();
    assert_eq!(second.status, StatusCode::OK, "{j2}");
    let reused = j2["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .expect("cached_tokens reported");
    let prompt2 = j2["usage"]["prompt_tokens"]
        .as_u64()
        .expect("prompt tokens");
    assert!(
        reused + 1 >= prompt1 && reused < prompt2,
        "reused {reused} of {prompt2} (first prompt {prompt1})"
    );

    // The same second request on a server without the cache.
    let fresh = post(app(), "/v1/chat/completions", &ask(messages))
        .await
        .json();
    assert!(
        fresh["usage"].get("prompt_tokens_details").is_none(),
        "{fresh}"
    );
    assert_eq!(
        j2["choices"][0]["message"]["content"], fresh["choices"][0]["message"]["content"],
        "continued vs fresh answer"
    );
    let logprobs = |j: &Value| -> Vec<f64> {
        j["choices"][0]["logprobs"]["content"]
            .as_array()
            .expect("logprobs")
            .iter()
            .map(|t| t["logprob"].as_f64().expect("logprob"))
            .collect()
    };
    for (a, b) in logprobs(&j2).iter().zip(logprobs(&fresh)) {
        assert!((a - b).abs() <= 1e-3, "logprob {a} vs {b}");
    }

    let metrics = get(cached, "/metrics").await;
    let text = String::from_utf8_lossy(&metrics.body).to_string();
    assert_eq!(metric(&text, "dsvl_prefix_cache_hits_total"), 1.0, "{text}");
    assert_eq!(
        metric(&text, "dsvl_prefix_cache_reused_tokens_total"),
        reused as f64
    );
}
