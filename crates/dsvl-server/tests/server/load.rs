//! A bounded load test over a real loopback socket: 64 concurrent clients, one in five sending a
//! bad input (each kind of the server issue's list), some streaming clients hanging up after the
//! first chunk. No 5xx, every bad input its 4xx, every valid answer correct, no slot leaked, the
//! server healthy afterwards; the process's peak resident memory is reported.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use dsvl_server::ServerConfig;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::harness::*;
use super::v1::{case, image_bytes, model_dir, single_image_messages};

const CLIENTS: usize = 64;
const VALID_TOKENS: usize = 4;
const STREAM_TOKENS: usize = 8000;

fn request_head(addr: SocketAddr, body_len: usize) -> String {
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {body_len}\r\n\r\n"
    )
}

/// A streaming request whose client hangs up as soon as the first SSE event arrives.
async fn hang_up_after_first_chunk(addr: SocketAddr, body: &str) -> u16 {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request_head(addr, body.len()).as_bytes())
        .await
        .expect("write");
    s.write_all(body.as_bytes()).await.expect("write");
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("data: ") {
        let n = s.read(&mut buf).await.expect("read");
        assert!(n > 0, "stream ended before its first event");
        seen.extend_from_slice(&buf[..n]);
    }
    drop(s);
    String::from_utf8_lossy(&seen)
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status line")
}

/// A PNG whose header announces `w × h` (valid signature and chunks with their CRCs, almost no
/// pixel data): a decompression bomb's header.
fn png_header(w: u32, h: u32) -> Vec<u8> {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut c = !0u32;
        for &b in bytes {
            c ^= u32::from(b);
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
        }
        !c
    }
    fn chunk(png: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        png.extend_from_slice(&(data.len() as u32).to_be_bytes());
        png.extend_from_slice(&body);
        png.extend_from_slice(&crc32(&body).to_be_bytes());
    }
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut png, b"IHDR", &ihdr);
    // A header reader stops at the first image-data chunk: a few bytes of it, then the end.
    chunk(&mut png, b"IDAT", &[0x78, 0x9c, 0x03, 0x00]);
    chunk(&mut png, b"IEND", &[]);
    png
}

fn with_image(url: &str) -> Value {
    json!({"messages": [{"role": "user", "content": [
        image_part(url), {"type": "text", "text": "Describe this image in detail."}]}],
        "temperature": 0, "max_tokens": VALID_TOKENS})
}

/// Bad input `k` as `(what, raw body, expected status)`.
fn bad_input(k: usize) -> (&'static str, String, u16) {
    let png = image_bytes("landscape_500x333.png");
    let valid = json!({"messages": single_image_messages(), "temperature": 0, "max_tokens": 4});
    let mut wrong_model = valid.clone();
    wrong_model["model"] = json!("gpt-4o");
    match k % 8 {
        0 => (
            "broken base64",
            with_image("data:image/png;base64,iVBOR@@@not-base64").to_string(),
            400,
        ),
        1 => (
            "truncated PNG",
            with_image(&data_url(&png[..png.len() / 2])).to_string(),
            400,
        ),
        2 => (
            "non-image bytes",
            with_image(&data_url(b"%PDF-1.7 this is not an image")).to_string(),
            400,
        ),
        3 => (
            "PNG header claiming 60000x60000",
            with_image(&data_url(&png_header(60_000, 60_000))).to_string(),
            413,
        ),
        4 => ("invalid JSON", "{\"messages\": [".to_string(), 400),
        5 => (
            "wrong types",
            json!({"messages": single_image_messages(), "max_tokens": "many"}).to_string(),
            400,
        ),
        6 => (
            "prompt over the context",
            json!({"messages": [{"role": "user", "content": "word ".repeat(20_000)}]}).to_string(),
            400,
        ),
        _ => ("unknown model name", wrong_model.to_string(), 404),
    }
}

fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

enum Client {
    Bad(&'static str, u16),
    HangUp,
    Valid,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_clients_with_bad_inputs_and_hang_ups() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let cfg = ServerConfig {
        model_dir: model_dir(),
        max_queue: CLIENTS,
        max_running: 8,
        ..Default::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(dsvl_server::serve_on(listener, cfg, async move {
        let _ = stopped.await;
    }));
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut loading_503 = 0.0;
    loop {
        match http_raw(addr, "GET", "/health", "").await.0 {
            200 => break,
            503 => loading_503 += 1.0,
            other => panic!("/health answered {other} while loading"),
        }
        assert!(
            Instant::now() < deadline,
            "the model loads within two minutes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let valid =
        json!({"messages": single_image_messages(), "temperature": 0, "max_tokens": VALID_TOKENS})
            .to_string();
    let streaming = json!({"messages": single_image_messages(), "temperature": 0,
        "max_tokens": STREAM_TOKENS, "ignore_eos": true, "stream": true})
    .to_string();
    let mut kinds = Vec::new();
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (kind, body) = if i % 5 == 0 {
                let (what, body, status) = bad_input(i / 5);
                (Client::Bad(what, status), body)
            } else if i % 10 == 1 {
                (Client::HangUp, streaming.clone())
            } else {
                (Client::Valid, valid.clone())
            };
            let hang_up = matches!(kind, Client::HangUp);
            kinds.push(kind);
            tokio::spawn(async move {
                if hang_up {
                    (hang_up_after_first_chunk(addr, &body).await, String::new())
                } else {
                    http_raw(addr, "POST", "/v1/chat/completions", &body).await
                }
            })
        })
        .collect();

    let want = case("siglip-tiny__single")["decoded"]
        .as_str()
        .expect("reference text")
        .to_string();
    let (mut valid_n, mut hang_ups, mut bad_n) = (0usize, 0usize, 0usize);
    for (kind, t) in kinds.into_iter().zip(tasks) {
        let (status, body) = tokio::time::timeout(Duration::from_secs(600), t)
            .await
            .expect("every client finishes")
            .expect("client task");
        assert!(status < 500, "no 5xx: {status} {body}");
        match kind {
            Client::Bad(what, expected) => {
                bad_n += 1;
                assert_eq!(status, expected, "{what}: {body}");
                let j: Value = serde_json::from_str(&body).expect("error JSON");
                assert!(
                    j["error"]["message"]
                        .as_str()
                        .is_some_and(|m| !m.is_empty()),
                    "{what}: {j}"
                );
            }
            Client::HangUp => {
                hang_ups += 1;
                assert_eq!(status, 200);
            }
            Client::Valid => {
                valid_n += 1;
                assert_eq!(status, 200, "{body}");
                let j: Value = serde_json::from_str(&body).expect("JSON");
                let text = j["choices"][0]["message"]["content"]
                    .as_str()
                    .unwrap_or_default();
                assert!(
                    !text.is_empty() && want.starts_with(text),
                    "{text:?} vs {want:?}"
                );
                assert_eq!(j["usage"]["completion_tokens"], VALID_TOKENS);
            }
        }
    }
    assert_eq!((bad_n, hang_ups, valid_n), (13, 7, 44));

    // Hung-up streams end at their next token: no slot stays taken.
    let mut m = String::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        m = http_raw(addr, "GET", "/metrics", "").await.1;
        if metric(&m, "dsvl_running_sequences") == 0.0 && metric(&m, "dsvl_queue_depth") == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(metric(&m, "dsvl_running_sequences"), 0.0, "{m}");
    assert_eq!(metric(&m, "dsvl_queue_depth"), 0.0, "{m}");
    let generated = metric(&m, "dsvl_generation_tokens_total");
    let cap = (valid_n * VALID_TOKENS + hang_ups * STREAM_TOKENS / 4) as f64;
    assert!(
        generated < cap,
        "hung-up streams stopped early: {generated} tokens, {m}"
    );
    // The only 5xx: /health's 503 while the model loaded.
    let fives: Vec<&str> = m
        .lines()
        .filter(|l| l.starts_with("dsvl_http_requests_total{status=\"5"))
        .collect();
    let want_503 = format!("dsvl_http_requests_total{{status=\"503\"}} {loading_503}");
    assert!(
        fives.is_empty() || fives == [want_503.as_str()],
        "no 5xx but the loading 503s ({loading_503}): {fives:?}"
    );

    // Still serving.
    let (status, body) = http_raw(addr, "POST", "/v1/chat/completions", &valid).await;
    assert_eq!(status, 200, "{body}");

    let peak = peak_rss_mib();
    eprintln!("load test: peak resident memory of the test process {peak:?} MiB");
    if let Some(p) = peak {
        assert!(p < 6144.0, "resident memory stays bounded: peak {p:.0} MiB");
    }

    let _ = stop.send(());
    let result = tokio::time::timeout(Duration::from_secs(60), server)
        .await
        .expect("stops")
        .expect("task");
    assert!(result.is_ok(), "{result:?}");
}
