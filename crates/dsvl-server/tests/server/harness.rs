//! What every test module shares: fixture models loaded once per binary, requests through
//! `router(..).oneshot(..)`, SSE parsing and OpenAI error assertions.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use base64::Engine as _;
use dsvl::engine::{LoadOptions, Pipeline};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

/// The engine crate's fixture folder (`v1` or `v2`).
pub fn engine_fixtures(family: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../dsvl/tests/fixtures")
        .join(family)
}

/// The model in `dir`, loaded once for the whole test binary (f32, CPU).
pub fn load_pipeline(dir: &Path) -> Arc<Pipeline> {
    static LOADED: Mutex<Option<HashMap<PathBuf, Arc<Pipeline>>>> = Mutex::new(None);
    let mut loaded = LOADED.lock().unwrap_or_else(|e| e.into_inner());
    loaded
        .get_or_insert_with(HashMap::new)
        .entry(dir.to_path_buf())
        .or_insert_with(|| {
            let p = Pipeline::load(dir, &LoadOptions::default())
                .unwrap_or_else(|e| panic!("fixture model {} loads: {e}", dir.display()));
            Arc::new(p)
        })
        .clone()
}

pub fn data_url(bytes: &[u8]) -> String {
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

pub fn image_part(url: &str) -> Value {
    json!({"type": "image_url", "image_url": {"url": url, "detail": "auto"}})
}

pub struct Reply {
    pub status: StatusCode,
    pub content_type: String,
    pub headers: axum::http::HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

pub async fn send(app: Router, req: Request<Body>) -> Reply {
    let resp = app.oneshot(req).await.expect("router answers");
    let status = resp.status();
    let headers = resp.headers().clone();
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = resp
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
        .to_vec();
    Reply {
        status,
        content_type,
        headers,
        body,
    }
}

pub async fn post(app: Router, path: &str, body: &Value) -> Reply {
    let req = Request::post(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .expect("request");
    send(app, req).await
}

pub async fn get(app: Router, path: &str) -> Reply {
    send(
        app,
        Request::get(path).body(Body::empty()).expect("request"),
    )
    .await
}

/// `data: ...` payloads of an SSE body.
pub fn sse_data(body: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(body)
        .lines()
        .filter_map(|l| l.strip_prefix("data: ").map(str::to_string))
        .collect()
}

/// Asserts an OpenAI error body with `status`, and `param`/`code` when given.
pub fn assert_error(
    r: &Reply,
    status: StatusCode,
    param: Option<&str>,
    code: Option<&str>,
) -> Value {
    let j = r.json();
    assert_eq!(r.status, status, "{j}");
    let e = &j["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{j}");
    assert!(e["type"].is_string(), "{j}");
    if let Some(p) = param {
        assert_eq!(e["param"], p, "{j}");
    }
    if let Some(c) = code {
        assert_eq!(e["code"], c, "{j}");
    }
    j
}

/// The JSON chunks of an SSE body (without the final `[DONE]`, which is asserted).
pub fn sse_chunks(body: &[u8]) -> Vec<Value> {
    let data = sse_data(body);
    assert_eq!(
        data.last().map(String::as_str),
        Some("[DONE]"),
        "{}",
        String::from_utf8_lossy(body)
    );
    data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).expect("chunk JSON"))
        .collect()
}

/// One HTTP/1.1 request over a fresh loopback connection (`Connection: close`), the whole
/// response read: `(status, body)`. `body` is sent as is (it may be invalid JSON on purpose).
pub async fn http_raw(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.expect("write");
    s.write_all(body.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.expect("read");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP response");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status line");
    (status, body.to_string())
}

/// The value of the Prometheus sample `name` (with its labels) in a `/metrics` body.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("{name} missing from\n{text}"))
}

/// Serves `cfg` on a free loopback port until the returned sender is dropped or fired; returns
/// once `/health` answers 200 (the model is loaded).
pub async fn start_server(
    mut cfg: dsvl_server::ServerConfig,
) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    cfg.port = addr.port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(dsvl_server::serve_on(listener, cfg, async move {
        let _ = stopped.await;
    }));
    for _ in 0..600 {
        if let Ok(mut s) = tokio::net::TcpStream::connect(addr).await {
            let req = format!("GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
            let mut resp = String::new();
            if s.write_all(req.as_bytes()).await.is_ok()
                && s.read_to_string(&mut resp).await.is_ok()
                && resp.starts_with("HTTP/1.1 200")
            {
                return (addr, stop);
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the server did not become healthy within a minute");
}
