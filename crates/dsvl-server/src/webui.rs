//! The built-in chat page (issue #19): `GET /` and its assets under `/webui/`, compiled into the
//! binary from `crates/dsvl-server/webui/` (plain HTML, CSS and JavaScript, no build step, no
//! third-party code). The page is a client of the public API like any other: it streams
//! `/v1/chat/completions` and reads `/v1/models`, sending the API key the user types when the
//! server has one. `dsvl serve --no-webui` leaves these routes out (then `/` is a 404).
//!
//! Every asset is answered with a strict Content-Security-Policy (only this origin; no inline
//! script or style; images also from `data:` and `blob:` URLs, which is how attached pictures
//! are shown), `nosniff`, and an `ETag` (a hash of the embedded bytes), so browsers revalidate
//! with a cheap 304 and never keep a stale page after an upgrade.

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::error::ApiError;
use crate::state::AppState;

/// The page's policy: everything from this origin only, nothing inline, no plugins, no framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
    style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; font-src 'self'; \
    object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

const INDEX: Asset = Asset {
    name: "index.html",
    content_type: "text/html; charset=utf-8",
    bytes: include_bytes!("../webui/index.html"),
};

/// The files under `/webui/`.
const ASSETS: [Asset; 4] = [
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../webui/app.js"),
    },
    Asset {
        name: "markdown.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../webui/markdown.js"),
    },
    Asset {
        name: "style.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("../webui/style.css"),
    },
    Asset {
        name: "icon.svg",
        content_type: "image/svg+xml",
        bytes: include_bytes!("../webui/icon.svg"),
    },
];

/// The page's routes, to merge into the router (outside the API-key layer: the page holds no
/// secret, and asks for the key itself).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/webui/{name}", get(asset))
}

async fn index(headers: HeaderMap) -> Response {
    serve(&INDEX, &headers)
}

async fn asset(Path(name): Path<String>, headers: HeaderMap) -> Response {
    match ASSETS.iter().find(|a| a.name == name) {
        Some(a) => serve(a, &headers),
        None => ApiError::not_found(format!("web page file `{name}`")).into_response(),
    }
}

fn serve(asset: &Asset, request: &HeaderMap) -> Response {
    let etag = etag(asset.bytes);
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut resp = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            )],
            asset.bytes,
        )
            .into_response()
    };
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // Revalidate every time: a 304 costs one round trip on loopback, and an upgraded binary
    // is never shown with the previous version's script.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    resp
}

/// A strong validator: FNV-1a (64 bit) of the file, quoted. Not for security, only to tell
/// versions of an embedded file apart.
fn etag(bytes: &[u8]) -> String {
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("\"{hash:016x}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_differ_by_content_and_are_quoted() {
        assert_ne!(etag(b"a"), etag(b"b"));
        assert_eq!(etag(b""), "\"cbf29ce484222325\"");
        let names: Vec<&str> = ASSETS.iter().map(|a| a.name).collect();
        assert_eq!(names.len(), 4);
        assert!(ASSETS.iter().all(|a| !a.bytes.is_empty()));
    }

    #[test]
    fn the_page_loads_only_its_own_files() {
        let html = std::str::from_utf8(INDEX.bytes).expect("utf-8");
        assert!(!html.contains("http://") && !html.contains("https://"));
        assert!(
            !html.contains("<script>"),
            "no inline script: the CSP forbids it"
        );
        assert!(
            !html.contains("style="),
            "no inline style: the CSP forbids it"
        );
        for a in &ASSETS {
            // The SVG namespace is a name, not a request.
            let text = String::from_utf8_lossy(a.bytes).replace("http://www.w3.org/2000/svg", "");
            assert!(
                !text.contains("http://") && !text.contains("https://"),
                "{}",
                a.name
            );
        }
    }
}
