//! `http(s)` image URLs, fetched from a loopback image host: off by default, then allowed, too
//! big (declared and chunked), 404, redirects (followed, to `file://`, in a loop), a timeout and
//! the host allow-list.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get as get_route;
use dsvl_server::{router, AppState, ServerConfig};
use serde_json::{json, Value};
use tokio::net::TcpListener;

use super::harness::*;
use super::v1::{app_with, case, image_bytes, one_image};

const PNG: &str = "landscape_500x333.png";

/// A loopback HTTP server with one route per behaviour; runs until the test binary exits.
async fn image_host() -> SocketAddr {
    let png = image_bytes(PNG);
    let chunked = png.clone();
    let app = axum::Router::new()
        .route(
            "/img.png",
            get_route(move || async move { ([(header::CONTENT_TYPE, "image/png")], png) }),
        )
        .route(
            "/chunked.png",
            get_route(move || async move {
                // No Content-Length: the size cap must hold while reading.
                let parts: Vec<Result<Vec<u8>, std::io::Error>> =
                    chunked.chunks(512).map(|c| Ok(c.to_vec())).collect();
                Response::new(Body::from_stream(tokio_stream::iter(parts)))
            }),
        )
        .route(
            "/missing.png",
            get_route(|| async { (StatusCode::NOT_FOUND, "no such image") }),
        )
        .route(
            "/to-img",
            get_route(|| async { Redirect::temporary("/img.png") }),
        )
        .route(
            "/to-file",
            get_route(|| async { Redirect::temporary("file:///etc/passwd") }),
        )
        .route(
            "/loop",
            get_route(|| async { Redirect::temporary("/loop") }),
        )
        .route(
            "/slow.png",
            get_route(|| async {
                std::future::pending::<()>().await;
                ().into_response()
            }),
        );
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

fn remote(cfg: ServerConfig) -> ServerConfig {
    ServerConfig {
        allow_remote_images: true,
        ..cfg
    }
}

const URL_PARAM: &str = "messages[0].content[0].image_url.url";

fn message(j: &Value) -> String {
    j["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn remote_urls_are_refused_unless_enabled() {
    let host = image_host().await;
    let body = one_image(&format!("http://{host}/img.png"), "hi");
    let r = post(
        app_with(ServerConfig::default()),
        "/v1/chat/completions",
        &body,
    )
    .await;
    let j = assert_error(
        &r,
        StatusCode::BAD_REQUEST,
        Some(URL_PARAM),
        Some("invalid_image_url"),
    );
    let m = message(&j);
    assert!(
        m.starts_with("messages[0].content[0]:") && m.contains("--allow-remote-images"),
        "{m}"
    );
}

#[tokio::test]
async fn an_allowed_remote_image_gives_the_reference_answer() {
    let host = image_host().await;
    let want = case("siglip-tiny__single")["decoded"].clone();
    for path in ["/img.png", "/to-img", "/chunked.png"] {
        let mut body = one_image(
            &format!("http://{host}{path}"),
            "Describe this image in detail.",
        );
        body["max_tokens"] = json!(32);
        let r = post(
            app_with(remote(ServerConfig::default())),
            "/v1/chat/completions",
            &body,
        )
        .await;
        let j = r.json();
        assert_eq!(r.status, StatusCode::OK, "{path}: {j}");
        assert_eq!(j["choices"][0]["message"]["content"], want, "{path}");
        assert_eq!(j["usage"]["prompt_tokens"], 668, "{path}");
    }
}

#[tokio::test]
async fn remote_image_failures_name_the_part_and_the_limit() {
    let host = image_host().await;
    let small = remote(ServerConfig {
        max_remote_image_bytes: 1000,
        ..Default::default()
    });
    for path in ["/img.png", "/chunked.png"] {
        let body = one_image(&format!("http://{host}{path}"), "hi");
        let r = post(app_with(small.clone()), "/v1/chat/completions", &body).await;
        let j = assert_error(
            &r,
            StatusCode::PAYLOAD_TOO_LARGE,
            Some(URL_PARAM),
            Some("remote_image_too_large"),
        );
        assert!(message(&j).contains("--max-remote-image-bytes"), "{j}");
    }

    let cases = [
        ("/missing.png", "404"),
        ("/to-file", "file:///etc/passwd"),
        ("/loop", "redirects"),
    ];
    for (path, needle) in cases {
        let body = one_image(&format!("http://{host}{path}"), "hi");
        let r = post(
            app_with(remote(ServerConfig::default())),
            "/v1/chat/completions",
            &body,
        )
        .await;
        let j = assert_error(
            &r,
            StatusCode::BAD_REQUEST,
            Some(URL_PARAM),
            Some("invalid_image_url"),
        );
        assert!(message(&j).contains(needle), "{path}: {j}");
    }

    let impatient = remote(ServerConfig {
        remote_image_timeout: Duration::from_millis(300),
        ..Default::default()
    });
    let body = one_image(&format!("http://{host}/slow.png"), "hi");
    let r = post(app_with(impatient), "/v1/chat/completions", &body).await;
    let j = assert_error(
        &r,
        StatusCode::BAD_REQUEST,
        Some(URL_PARAM),
        Some("remote_image_timeout"),
    );
    assert!(message(&j).contains("--remote-image-timeout"), "{j}");

    let only_example = remote(ServerConfig {
        allowed_remote_hosts: vec!["images.example.com".into()],
        ..Default::default()
    });
    let body = one_image(&format!("http://{host}/img.png"), "hi");
    let r = post(app_with(only_example), "/v1/chat/completions", &body).await;
    let j = assert_error(&r, StatusCode::BAD_REQUEST, Some(URL_PARAM), None);
    assert!(message(&j).contains("--allowed-remote-hosts"), "{j}");

    let loopback_only = remote(ServerConfig {
        allowed_remote_hosts: vec!["127.0.0.1".into()],
        ..Default::default()
    });
    let body = one_image(&format!("http://{host}/img.png"), "hi");
    let r = post(app_with(loopback_only), "/v1/chat/completions", &body).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json());
}

/// VL2's debug routes load images (the tiling sets the prompt), so they fetch remote ones too.
#[tokio::test]
async fn vl2_tokenize_fetches_remote_images() {
    let host = image_host().await;
    let model = engine_fixtures("v2").join("models/vl2-tiny-random");
    let state = AppState::from_pipeline(load_pipeline(&model), &remote(ServerConfig::default()))
        .expect("engine");
    let mut counts = Vec::new();
    for url in [
        format!("http://{host}/img.png"),
        data_url(&image_bytes(PNG)),
    ] {
        let body = json!({"messages": [{"role": "user", "content": [
            image_part(&url), {"type": "text", "text": "Describe."}]}]});
        let r = post(router(state.clone()), "/tokenize", &body).await;
        let j = r.json();
        assert_eq!(r.status, StatusCode::OK, "{j}");
        counts.push(j["tokens"].as_array().map(Vec::len));
    }
    assert_eq!(counts[0], counts[1]);
    assert!(
        counts[0] > Some(421),
        "a 500x333 image is tiled: {counts:?}"
    );
}
