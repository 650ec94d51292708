//! `dsvl serve` as a process: its flags reaching the served model, and what hostile clients
//! cost it in memory, read from its own `/proc/PID/status` (in-process tests share their
//! address space with every other test).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::model;

/// The server process, killed when dropped.
struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(extra: &[&str]) -> Self {
        // A free port: bind, read it, release it for the server.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new(env!("CARGO_BIN_EXE_dsvl"))
            .args(["serve", "--model", &model("siglip-tiny"), "--port"])
            .arg(port.to_string())
            .args(extra)
            .env("DSVL_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dsvl serve starts");
        let server = Self { child, port };
        let t = Instant::now();
        while server.get("/health").0 != 200 {
            assert!(t.elapsed() < Duration::from_secs(60), "not healthy in 60 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }

    fn kib(&self, field: &str) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).expect("procfs");
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .expect("field")
    }

    fn exchange(&self, request: &[u8]) -> (u16, String) {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return (0, String::new());
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
        if s.write_all(request).is_err() {
            return (0, String::new());
        }
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        let status = out
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (status, out)
    }

    fn get(&self, path: &str) -> (u16, String) {
        self.exchange(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
    }

    fn post_chat(&self, body: &str) -> (u16, String) {
        let head = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        self.exchange([head.as_bytes(), body.as_bytes()].concat().as_slice())
    }
}

fn over_context_prompt(bytes: usize) -> String {
    serde_json::json!({"messages": [{"role": "user", "content": "a".repeat(bytes)}]}).to_string()
}

const MIB: u64 = 1024;

/// The figures before the fix: a 16 MB prompt took 9.7 s and 1.1 GiB to refuse; sixteen
/// concurrent 8 MB prompts would have needed about 9 GiB.
#[test]
fn over_context_prompts_cost_little_more_than_their_bytes() {
    let server = Server::start(&["--prefix-cache-mb", "0"]);
    let base = server.kib("VmHWM");

    let t = Instant::now();
    let (status, body) = server.post_chat(&over_context_prompt(16 << 20));
    let took = t.elapsed();
    assert_eq!(status, 400, "{body:.300}");
    assert!(body.contains("context_length_exceeded"), "{body:.300}");
    let one = server.kib("VmHWM") - base;
    eprintln!(
        "one 16 MB prompt: refused in {took:?}, peak +{} MiB",
        one / MIB
    );
    // Body, parsed request and prompt text: a few copies of 16 MB, not 75 bytes per byte.
    assert!(
        one < 100 * MIB,
        "one 16 MB prompt raised the peak by {} MiB",
        one / MIB
    );

    let body = over_context_prompt(8 << 20);
    let t = Instant::now();
    std::thread::scope(|s| {
        let clients: Vec<_> = (0..16)
            .map(|_| s.spawn(|| server.post_chat(&body)))
            .collect();
        for c in clients {
            let (status, reply) = c.join().expect("client");
            assert_eq!(status, 400, "{reply:.300}");
        }
    });
    let took = t.elapsed();
    let sixteen = server.kib("VmHWM") - base;
    eprintln!(
        "16 concurrent 8 MB prompts: refused in {took:?}, peak +{} MiB",
        sixteen / MIB
    );
    assert!(
        sixteen < 400 * MIB,
        "16 concurrent 8 MB prompts raised the peak by {} MiB",
        sixteen / MIB
    );
    assert_eq!(server.get("/health").0, 200);
}

/// `serve` takes the model flags `run` takes, and they reach the loaded model: the pixel limit
/// is the pipeline's, so an image one pixel count over it is refused (413) and one at it is
/// answered.
#[test]
fn model_flags_reach_the_served_model() {
    let images = super::fixtures()
        .join("../images/inputs")
        .canonicalize()
        .expect("fixture images");
    let server = Server::start(&[
        "--threads",
        "1",
        "--device",
        "cpu",
        "--dtype",
        "f32",
        "--max-image-pixels",
        "3072",
        "--allowed-local-media-path",
        images.to_str().expect("utf-8 path"),
    ]);
    let ask = |name: &str| {
        let url = format!("file://{}", images.join(name).display());
        let body = serde_json::json!({"max_tokens": 1, "temperature": 0, "messages": [{"role": "user",
            "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "Hi"}]}]});
        server.post_chat(&body.to_string())
    };
    // 64 × 48 = 3072 pixels: at the limit.
    let (status, body) = ask("bilevel_64x48.png");
    assert_eq!(status, 200, "{body:.500}");
    // 80 × 60 = 4800 pixels.
    let (status, body) = ask("gray16_80x60.png");
    assert_eq!(status, 413, "{body:.500}");
    assert!(
        body.contains("over the limit of 3072 pixels"),
        "{body:.500}"
    );
}

/// The short soak (the long one is in RELIABILITY.md): 8 clients for 45 s, a fifth of them
/// faulty (broken JSON and types, bad base64, truncated and corrupt images, PNG/GIF/BMP
/// decompression bombs, oversize bodies, over-context and 1 MB prompts, too many images, hang-ups
/// mid-stream, slow bodies, hostile text). `bench/soak.py` exits non-zero on any 5xx, any valid
/// answer that differs from the same request alone, queue or running not back to 0, or RSS at the
/// end more than 50 % over the post-warm-up value (a short run still fills its caches).
#[test]
fn short_soak_under_faults() {
    let server = Server::start(&[]);
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/soak.py");
    let out = Command::new("python3")
        .arg(&script)
        .args(["--port", &server.port.to_string()])
        .args(["--pid", &server.child.id().to_string()])
        .args(["--clients", "8", "--duration", "45", "--warmup", "20"])
        .args(["--rss-tolerance", "0.5"])
        .output()
        .expect("python3 runs bench/soak.py (the CI machine has Python 3)");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(report.contains("5xx: 0;"), "{report}");
    assert!(report.contains("valid one: 200"), "{report}");
    eprintln!("{report}");
}
