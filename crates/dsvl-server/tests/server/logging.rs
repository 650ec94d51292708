//! Nothing a client sends reaches the log: requests carrying a unique marker in their prompt, their
//! image bytes, a malformed body and a bad field value, with every event the server and the engine
//! emit at DEBUG captured (stricter than `dsvl serve`'s default, `warn,dsvl=info`).

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use dsvl_server::ServerConfig;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::harness::{data_url, image_part, start_server};
use super::v1::model_dir;

const MARKER: &str = "QX7-client-secret-9ZK";

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

async fn post(addr: SocketAddr, path: &str, body: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.expect("write head");
    s.write_all(body).await.expect("write body");
    let mut got = Vec::new();
    s.read_to_end(&mut got).await.expect("read reply");
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompts_and_image_bytes_are_not_logged() {
    let captured = Captured::default();
    let sink = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .finish();
    tracing::subscriber::set_global_default(subscriber)
        .expect("no other test of this binary installs a subscriber");

    let (addr, _stop) = start_server(ServerConfig {
        model_dir: model_dir(),
        ..Default::default()
    })
    .await;

    // A PNG with the marker after its end chunk: it decodes, and the bytes reach the server.
    let mut png =
        std::fs::read(super::harness::engine_fixtures("images").join("inputs/tiny_10x7.png"))
            .expect("fixture image");
    png.extend_from_slice(MARKER.as_bytes());
    let url = data_url(&png);
    let ok = json!({"temperature": 0, "max_tokens": 2, "messages": [{"role": "user", "content": [
        image_part(&url), {"type": "text", "text": format!("Describe {MARKER}.")}]}]});
    let reply = post(addr, "/v1/chat/completions", ok.to_string().as_bytes()).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");

    // Errors the client causes: an image that is not one, a bad field, broken JSON.
    let not_image = json!({"messages": [{"role": "user", "content": [
        image_part(&data_url(MARKER.as_bytes())), {"type": "text", "text": MARKER}]}]});
    let bad_field =
        json!({"temperature": MARKER, "messages": [{"role": "user", "content": MARKER}]});
    let broken = format!("{{\"messages\": [{{\"role\": \"user\", \"content\": \"{MARKER}");
    for body in [not_image.to_string(), bad_field.to_string(), broken] {
        let reply = post(addr, "/v1/chat/completions", body.as_bytes()).await;
        assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    }
    let reply = post(
        addr,
        "/tokenize",
        json!({"content": MARKER}).to_string().as_bytes(),
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");

    let logs =
        String::from_utf8_lossy(&captured.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned();
    // The capture hears the server's own threads (this line comes from the loading task).
    assert!(logs.contains("model loaded; ready for requests"), "{logs}");
    assert!(
        !logs.contains(MARKER),
        "a client's text reached the log:\n{logs}"
    );
    let payload = url.split_once(',').expect("data URL").1;
    assert!(
        !logs.contains(&payload[..32]),
        "a client's image bytes reached the log:\n{logs}"
    );
}
