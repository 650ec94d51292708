//! Continuous batching: 16 concurrent greedy requests (different prompts, images and lengths)
//! answer byte for byte what the same requests answer one at a time, on a v1 model and on
//! DeepSeek-VL2 models with MoE (MHA tiny, MLA small), and the engine really batched them.

use std::path::PathBuf;

use axum::http::StatusCode;
use dsvl_server::{router, AppState, ServerConfig};
use serde_json::{json, Value};

use super::harness::*;

const REQUESTS: usize = 16;

fn image(family: &str, name: &str) -> String {
    let bytes =
        std::fs::read(engine_fixtures(family).join("images").join(name)).expect("fixture image");
    data_url(&bytes)
}

/// Request `i`: one of a few images (or none), one of a few questions, 3..=12 new tokens, so
/// sequences join and leave the batch at different steps.
fn request(i: usize, images: &[String]) -> Value {
    let questions = [
        "Describe this image in detail.",
        "What colours do you see?",
        "Count the objects.",
        "Is there any text? Read it.",
        "Where could this be?",
    ];
    let mut parts = Vec::new();
    if i % 4 != 3 {
        parts.push(image_part(&images[i % images.len()]));
    }
    parts.push(json!({"type": "text", "text": questions[i % questions.len()]}));
    json!({
        "messages": [{"role": "user", "content": parts}],
        "temperature": 0,
        "max_tokens": 3 + (i * 5) % 10,
        "ignore_eos": true,
        "logprobs": true,
        "top_logprobs": 3,
    })
}

/// The answer's `choices` and `usage`, the parts that must not depend on batching.
fn answer(r: &Reply) -> Value {
    let j = r.json();
    assert_eq!(r.status, StatusCode::OK, "{j}");
    json!({"choices": j["choices"], "usage": j["usage"]})
}

async fn batch_invariance(model: PathBuf, images: &[String]) {
    let pipeline = load_pipeline(&model);
    let bodies: Vec<Value> = (0..REQUESTS).map(|i| request(i, images)).collect();

    let alone_state = AppState::from_pipeline(
        pipeline.clone(),
        &ServerConfig {
            max_running: 1,
            ..Default::default()
        },
    )
    .expect("engine");
    let mut alone = Vec::new();
    for b in &bodies {
        alone.push(answer(
            &post(router(alone_state.clone()), "/v1/chat/completions", b).await,
        ));
    }

    let state = AppState::from_pipeline(
        pipeline,
        &ServerConfig {
            max_running: REQUESTS,
            max_queue: REQUESTS,
            // All prepared at once, so that they reach the engine together: on the tiny model a
            // request is decoded faster than the next one's images are decoded.
            max_preparing: REQUESTS,
            ..Default::default()
        },
    )
    .expect("engine");
    let tasks: Vec<_> = bodies
        .iter()
        .map(|b| {
            let (app, b) = (router(state.clone()), b.clone());
            tokio::spawn(async move { post(app, "/v1/chat/completions", &b).await })
        })
        .collect();
    for (i, t) in tasks.into_iter().enumerate() {
        let got = answer(&t.await.expect("request task"));
        assert_eq!(got, alone[i], "request {i}: batched differs from alone");
    }

    let m = String::from_utf8_lossy(&get(router(state), "/metrics").await.body).into_owned();
    let (steps, rows) = (
        metric(&m, "dsvl_decode_steps_total"),
        metric(&m, "dsvl_decode_rows_total"),
    );
    let generated: f64 = (0..REQUESTS).map(|i| (3 + (i * 5) % 10) as f64).sum();
    // Every token but each request's last comes from a decode step.
    assert_eq!(rows, generated - REQUESTS as f64, "{m}");
    assert!(
        rows >= 2.0 * steps,
        "the requests were decoded together (mean batch {:.2})",
        rows / steps
    );
    assert_eq!(metric(&m, "dsvl_running_sequences"), 0.0, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn v1_batched_equals_alone() {
    let images = [
        image("v1", "landscape_500x333.png"),
        image("v1", "portrait_333x500.png"),
        image("v1", "photo_640x480_q90_420.jpg"),
    ];
    batch_invariance(engine_fixtures("v1").join("models/siglip-tiny"), &images).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn vl2_moe_batched_equals_alone() {
    let images = [
        image("v2", "chart_520x390_L.png"),
        image("v2", "icon_96x64_P.png"),
        image("v2", "sticker_450x350_RGBA.png"),
    ];
    for model in ["vl2-tiny-random", "vl2-small-random"] {
        batch_invariance(engine_fixtures("v2").join("models").join(model), &images).await;
    }
}
