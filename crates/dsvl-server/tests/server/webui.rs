//! The chat page's routes (`/`, `/webui/*`): content types, the security headers, revalidation
//! with the ETag, `--no-webui`, and that they answer without the API key and while the model
//! loads (the page shows the loading state itself). The page in a browser is tested in the
//! CLI's test binary (`tests/cli/webui.rs`), against the real `dsvl serve`.

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use dsvl_server::webui::CONTENT_SECURITY_POLICY;
use dsvl_server::{router, AppState, ServerConfig};

use crate::harness::{get, send};

/// A server whose model is still loading: the page needs no model.
fn app(cfg: &ServerConfig) -> axum::Router {
    router(AppState::loading(cfg))
}

#[tokio::test]
async fn page_and_assets_have_their_types_and_a_strict_policy() {
    let cfg = ServerConfig::default();
    for (path, kind) in [
        ("/", "text/html; charset=utf-8"),
        ("/webui/app.js", "text/javascript; charset=utf-8"),
        ("/webui/markdown.js", "text/javascript; charset=utf-8"),
        ("/webui/style.css", "text/css; charset=utf-8"),
        ("/webui/icon.svg", "image/svg+xml"),
    ] {
        let r = get(app(&cfg), path).await;
        assert_eq!(r.status, StatusCode::OK, "{path}");
        assert_eq!(r.content_type, kind, "{path}");
        assert!(!r.body.is_empty(), "{path}");
        let h = |name: header::HeaderName| {
            r.headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        assert_eq!(h(header::CONTENT_SECURITY_POLICY), CONTENT_SECURITY_POLICY);
        assert_eq!(h(header::X_CONTENT_TYPE_OPTIONS), "nosniff");
        assert_eq!(h(header::CACHE_CONTROL), "no-cache");
        let etag = h(header::ETAG);
        assert!(etag.starts_with('"') && etag.len() == 18, "{path}: {etag}");

        // Revalidation: the same tag is a 304 with no body, another tag the full file.
        for (sent, status) in [(etag.as_str(), 304), ("\"0000000000000000\"", 200)] {
            let req = Request::get(path)
                .header(header::IF_NONE_MATCH, sent)
                .body(Body::empty())
                .expect("request");
            let r = send(app(&cfg), req).await;
            assert_eq!(r.status.as_u16(), status, "{path} with {sent}");
            assert_eq!(r.body.is_empty(), status == 304, "{path}");
        }
    }
    let csp = CONTENT_SECURITY_POLICY;
    assert!(csp.starts_with("default-src 'self';") && !csp.contains("unsafe"));
}

#[tokio::test]
async fn unknown_files_and_no_webui_are_404s() {
    let r = get(app(&ServerConfig::default()), "/webui/../lib.rs").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = get(app(&ServerConfig::default()), "/webui/secret.txt").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.json()["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("secret.txt")));

    let off = ServerConfig {
        webui: false,
        ..Default::default()
    };
    for path in ["/", "/webui/app.js"] {
        let r = get(app(&off), path).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(r.json()["error"]["code"], "not_found");
    }
}

#[tokio::test]
async fn the_page_is_open_while_the_api_needs_the_key() {
    let cfg = ServerConfig {
        api_key: Some("sesame".into()),
        ..Default::default()
    };
    assert_eq!(get(app(&cfg), "/").await.status, StatusCode::OK);
    assert_eq!(get(app(&cfg), "/webui/app.js").await.status, StatusCode::OK);
    assert_eq!(
        get(app(&cfg), "/v1/models").await.status,
        StatusCode::UNAUTHORIZED
    );
}
