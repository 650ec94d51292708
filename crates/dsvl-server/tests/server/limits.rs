//! The server's defences against slow, silent and oversized clients, over a real loopback
//! socket: header and body timeouts, a 413 from the declared length alone, and prompts that
//! cannot fit refused for the cost of reading them.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use dsvl_server::ServerConfig;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::harness::start_server;
use super::v1::model_dir;

const TIMEOUT: Duration = Duration::from_secs(1);
/// Slack for a loaded 2-core machine, on top of the timeout under test.
const SLACK: Duration = Duration::from_secs(3);

async fn server(cfg: ServerConfig) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    start_server(ServerConfig {
        model_dir: model_dir(),
        header_timeout: TIMEOUT,
        body_timeout: TIMEOUT,
        ..cfg
    })
    .await
}

/// Reads until the server closes the connection; returns what arrived and when it closed.
async fn until_closed(s: &mut TcpStream, since: Instant) -> (String, Duration) {
    let mut seen = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match tokio::time::timeout(Duration::from_secs(30), s.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
            Err(_) => panic!("still open after 30 s"),
        }
    }
    (String::from_utf8_lossy(&seen).into_owned(), since.elapsed())
}

fn chat_head(addr: SocketAddr, body_len: usize) -> String {
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\n\
         Content-Type: application/json\r\nContent-Length: {body_len}\r\n\r\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_slow_and_idle_connections_are_closed_within_the_header_timeout() {
    let (addr, _stop) = server(ServerConfig::default()).await;
    let silent = async {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        until_closed(&mut s, Instant::now()).await
    };
    let partial_header = async {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let t = Instant::now();
        s.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
            .await
            .expect("write");
        until_closed(&mut s, t).await
    };
    let drip_fed_header = async {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let t = Instant::now();
        for b in b"GET /health HTTP/1.1\r\nHost: some.host.example\r\n" {
            if s.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        until_closed(&mut s, t).await
    };
    let idle_keep_alive = async {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(format!("GET /health HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await
            .expect("write");
        let mut buf = [0u8; 1024];
        let n = s.read(&mut buf).await.expect("read");
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        // The answer came; the connection stays open for the next request until it idles out.
        until_closed(&mut s, Instant::now()).await
    };
    let (silent, partial, drip, idle) =
        tokio::join!(silent, partial_header, drip_fed_header, idle_keep_alive);
    for (what, (got, after)) in [
        ("silent", silent),
        ("partial header", partial),
        ("drip-fed header", drip),
        ("idle keep-alive", idle),
    ] {
        assert!(
            after >= TIMEOUT.mul_f32(0.9) && after <= TIMEOUT + SLACK,
            "{what}: closed after {after:?} (header timeout {TIMEOUT:?}); got {got:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_or_stalled_body_gets_408_and_the_connection_closes() {
    let (addr, _stop) = server(ServerConfig::default()).await;
    let stalled = async {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let t = Instant::now();
        s.write_all(chat_head(addr, 1000).as_bytes())
            .await
            .expect("write");
        s.write_all(b"{\"messages\"").await.expect("write");
        until_closed(&mut s, t).await
    };
    let one_byte_a_tick = async {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let t = Instant::now();
        s.write_all(chat_head(addr, 1000).as_bytes())
            .await
            .expect("write");
        for _ in 0..100 {
            if s.write_all(b" ").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            if t.elapsed() > TIMEOUT + SLACK {
                break;
            }
        }
        until_closed(&mut s, t).await
    };
    let (stalled, dripped) = tokio::join!(stalled, one_byte_a_tick);
    for (what, (got, after)) in [("stalled", stalled), ("one byte a tick", dripped)] {
        assert!(got.starts_with("HTTP/1.1 408"), "{what}: {got:?}");
        assert!(got.contains("request_timeout"), "{what}: {got:?}");
        assert!(
            after <= TIMEOUT + SLACK,
            "{what}: closed after {after:?} (body timeout {TIMEOUT:?})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_over_limit_content_length_is_refused_before_the_body() {
    let (addr, _stop) = server(ServerConfig::default()).await;
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let t = Instant::now();
    s.write_all(chat_head(addr, 40_000_000).as_bytes())
        .await
        .expect("write");
    let (got, after) = until_closed(&mut s, t).await;
    assert!(got.starts_with("HTTP/1.1 413"), "{got:?}");
    assert!(got.contains("declares a 40000000-byte body"), "{got:?}");
    // Answered at once, not at the body timeout.
    assert!(after < TIMEOUT, "answered after {after:?}");
}

/// Sixteen clients each send an 8 MB prompt at once. Tokenizing one took about 4 s and 600 MiB
/// before; now each is refused from its length, all in about the time it takes to read them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompts_that_cannot_fit_are_refused_for_the_cost_of_reading_them() {
    let (addr, _stop) = server(ServerConfig::default()).await;
    let body = json!({
        "temperature": 0,
        "messages": [{"role": "user", "content": "a".repeat(8 << 20)}],
    })
    .to_string();
    let t = Instant::now();
    let clients: Vec<_> = (0..16)
        .map(|_| {
            let body = body.clone();
            tokio::spawn(async move {
                let mut s = TcpStream::connect(addr).await.expect("connect");
                let mut head = chat_head(addr, body.len());
                head.insert_str(head.len() - 2, "Connection: close\r\n");
                s.write_all(head.as_bytes()).await.expect("write");
                s.write_all(body.as_bytes()).await.expect("write");
                until_closed(&mut s, Instant::now()).await.0
            })
        })
        .collect();
    for c in clients {
        let got = c.await.expect("client");
        assert!(got.starts_with("HTTP/1.1 400"), "{got:.200}");
        assert!(got.contains("context_length_exceeded"), "{got:.400}");
        assert!(got.contains("at least"), "{got:.400}");
    }
    let took = t.elapsed();
    assert!(took < Duration::from_secs(20), "16 refusals took {took:?}");
    eprintln!("16 concurrent 8 MB over-context prompts refused in {took:?}");
}

/// At the connection cap, a new connection waits in the backlog until a slot frees: here the
/// two silent connections holding the slots are cut by the header timeout, then it is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_connection_cap_new_connections_wait_for_a_slot() {
    let (addr, _stop) = server(ServerConfig {
        max_connections: 2,
        ..Default::default()
    })
    .await;
    // The health probe's connection may still hold its slot for a moment.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _holders = [
        TcpStream::connect(addr).await.expect("connect"),
        TcpStream::connect(addr).await.expect("connect"),
    ];
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = Instant::now();
    let mut s = TcpStream::connect(addr).await.expect("backlog accepts");
    s.write_all(
        format!("GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .expect("write");
    let (got, after) = until_closed(&mut s, t).await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got:?}");
    assert!(
        after >= TIMEOUT.mul_f32(0.5) && after <= TIMEOUT + SLACK,
        "served after {after:?}: it should wait for a slot, about the header timeout"
    );
}
