//! The chat page of `dsvl serve` in a real browser: headless Chromium driven over WebDriver
//! (Debian's `chromium` and `chromium-driver`; `.ci/run` installs them) against the real binary on
//! the tiny fixture models. The page must give the server's greedy answer for the same request,
//! draw VL2 boxes where the server's pixels say, stop a running answer, show the server's
//! errors, log nothing to the console, and load nothing from anywhere but the server (the
//! browser's network to anything else is blocked by a dead proxy). Screenshots go to
//! `target/webui-screenshots/`.
//!
//! The WebDriver client is the few commands this needs, written over `std::net` (JSON over
//! HTTP/1.1): a client crate would add an async HTTP stack to this test binary for no gain.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

// ------------------------------------------------------------------ HTTP/1.1, just enough

struct HttpReply {
    status: u16,
    headers: String,
    body: Vec<u8>,
}

impl HttpReply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn http(port: u16, method: &str, path: &str, body: Option<&Value>) -> HttpReply {
    request(port, method, path, body, &[])
}

/// One request with `extra` headers, on its own connection.
fn request(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&Value>,
    extra: &[(&str, &str)],
) -> HttpReply {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("connect to 127.0.0.1:{port}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(120))).ok();
    let body = body.map(Value::to_string).unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n{}\r\n",
        body.len(),
        extra
            .iter()
            .map(|(k, v)| format!("{k}: {v}\r\n"))
            .collect::<String>()
    );
    s.write_all(head.as_bytes()).expect("send");
    s.write_all(body.as_bytes()).expect("send");
    // Read the header, then exactly the body: a server may keep the connection open anyway.
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 << 10];
    let split = loop {
        if let Some(p) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        let n = s.read(&mut buf).expect("read the reply");
        assert!(n > 0, "connection closed before a full header");
        raw.extend_from_slice(&buf[..n]);
    };
    let headers = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = headers
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status");
    let mut reply = HttpReply {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    };
    let length = reply
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok());
    let chunked = reply
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    loop {
        let complete = match length {
            Some(n) => reply.body.len() >= n,
            None if chunked => reply.body.ends_with(b"0\r\n\r\n"),
            None => false,
        };
        if complete || status == 304 || status == 204 {
            break;
        }
        match s.read(&mut buf).expect("read the reply") {
            0 => break,
            n => reply.body.extend_from_slice(&buf[..n]),
        }
    }
    if chunked {
        reply.body = dechunk(&reply.body);
    }
    reply
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = data.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&data[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next()?.trim(), 16).ok())
            .expect("a chunk size");
        if size == 0 {
            break;
        }
        out.extend_from_slice(&data[eol + 2..eol + 2 + size]);
        data = &data[eol + 2 + size + 2..];
    }
    out
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn wait_for(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let t = Instant::now();
    while !ready() {
        assert!(t.elapsed() < timeout, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A child process killed when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// ------------------------------------------------------------------ `dsvl serve`

struct Server {
    _process: Process,
    port: u16,
}

impl Server {
    fn start(model: &Path, extra: &[&str]) -> Self {
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_dsvl"))
            .arg("serve")
            .arg("--model")
            .arg(model)
            .args(["--port", &port.to_string()])
            .args(extra)
            .env("DSVL_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dsvl serve starts");
        let server = Self {
            _process: Process(child),
            port,
        };
        wait_for("dsvl serve healthy", Duration::from_secs(60), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
                && http(port, "GET", "/health", None).status == 200
        });
        server
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }
}

// ------------------------------------------------------------------ WebDriver

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// `DSVL_CHROMIUM` / `DSVL_CHROMEDRIVER`, else Debian's paths; a clear failure when missing.
fn browser_paths() -> (PathBuf, PathBuf) {
    let pick = |var: &str, default: &str| {
        std::env::var_os(var).map_or_else(|| PathBuf::from(default), PathBuf::from)
    };
    let (chromium, driver) = (
        pick("DSVL_CHROMIUM", CHROMIUM),
        pick("DSVL_CHROMEDRIVER", CHROMEDRIVER),
    );
    for p in [&chromium, &driver] {
        assert!(
            p.is_file(),
            "{} is missing: the web page test needs Chromium and its WebDriver. Install them \
             with `sudo apt-get install chromium chromium-driver` (Debian/Ubuntu; `.ci/run` does \
             this in CI), or point DSVL_CHROMIUM and DSVL_CHROMEDRIVER at a Chromium/Chrome and \
             the chromedriver of the same version.",
            p.display()
        );
    }
    (chromium, driver)
}

struct Browser {
    port: u16,
    session: String,
    _driver: Process,
    profile: PathBuf,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.raw("DELETE", &format!("/session/{}", self.session), None);
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

impl Browser {
    fn start(tag: &str) -> Self {
        let (chromium, driver) = browser_paths();
        let port = free_port();
        let child = Command::new(&driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{} does not start: {e}", driver.display()));
        let driver_process = Process(child);
        wait_for("chromedriver up", Duration::from_secs(30), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
                && http(port, "GET", "/status", None).json()["value"]["ready"] == true
        });
        let profile = std::env::temp_dir().join(format!("dsvl-webui-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&profile);
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:loggingPrefs": {"browser": "ALL"},
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--window-size=1000,900",
                    format!("--user-data-dir={}", profile.display()),
                    // Everything but loopback (which Chromium never proxies) goes to a closed
                    // port: the page must work with only the server reachable.
                    "--proxy-server=http://127.0.0.1:9",
                ],
            },
        }}});
        let reply = http(port, "POST", "/session", Some(&caps)).json();
        let session = reply["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {reply}"))
            .to_string();
        Self {
            port,
            session,
            _driver: driver_process,
            profile,
        }
    }

    fn raw(&self, method: &str, path: &str, body: Option<&Value>) -> HttpReply {
        http(self.port, method, path, body)
    }

    /// A session command; panics with WebDriver's message when it fails.
    fn cmd(&self, method: &str, path: &str, body: Value) -> Value {
        let path = format!("/session/{}{path}", self.session);
        let body = (method == "POST").then_some(&body);
        let reply = self.raw(method, &path, body);
        let j = reply.json();
        assert!(reply.status == 200, "WebDriver {method} {path}: {j}");
        j["value"].clone()
    }

    fn goto(&self, url: &str) {
        self.cmd("POST", "/url", json!({"url": url}));
    }

    fn find(&self, css: &str) -> String {
        let v = self.cmd(
            "POST",
            "/element",
            json!({"using": "css selector", "value": css}),
        );
        v.as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element id for {css}: {v}"))
            .to_string()
    }

    fn click(&self, css: &str) {
        let el = self.find(css);
        self.cmd("POST", &format!("/element/{el}/click"), json!({}));
    }

    fn type_into(&self, css: &str, text: &str) {
        let el = self.find(css);
        self.cmd(
            "POST",
            &format!("/element/{el}/value"),
            json!({"text": text}),
        );
    }

    fn clear(&self, css: &str) {
        let el = self.find(css);
        self.cmd("POST", &format!("/element/{el}/clear"), json!({}));
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page.
    fn js(&self, script: &str, args: Value) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            json!({"script": script, "args": args}),
        )
    }

    fn wait_js(&self, what: &str, script: &str, args: Value) -> Value {
        let mut last = Value::Null;
        wait_for(what, Duration::from_secs(60), || {
            last = self.js(script, args.clone());
            !(last.is_null() || last == false)
        });
        last
    }

    fn screenshot(&self, name: &str) {
        let png = self.cmd("GET", "/screenshot", Value::Null);
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().expect("base64 PNG"))
            .expect("valid base64");
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).expect("screenshot folder");
        std::fs::write(dir.join(format!("{name}.png")), bytes).expect("screenshot written");
    }

    /// Browser console entries since the last call (Chromium's log endpoint).
    fn console(&self) -> Vec<Value> {
        let v = self.cmd("POST", "/se/log", json!({"type": "browser"}));
        v.as_array().cloned().unwrap_or_default()
    }
}

/// `target/webui-screenshots`, beside the binary under test.
fn screenshot_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_dsvl"))
        .ancestors()
        .nth(2)
        .expect("target/<profile>/dsvl")
        .join("webui-screenshots")
}

fn severe(entries: &[Value]) -> Vec<&Value> {
    entries
        .iter()
        .filter(|e| e["level"] == "SEVERE" || e["level"] == "WARNING")
        .collect()
}

// ------------------------------------------------------------------ the page, as a user

const LAST_ANSWER: &str = "const a = [...document.querySelectorAll('li.msg.assistant')].pop();";

/// Types `question` (as the textarea's value: a typed newline would send), sends it, and waits
/// for the answer to finish; returns (raw text, the visible meta line).
fn ask(b: &Browser, question: &str) -> (String, String) {
    b.js(
        "document.getElementById('prompt').value = arguments[0]",
        json!([question]),
    );
    send_and_wait(b, || b.click("#send"))
}

/// Sends with `send` (a click, a key) and waits for the new answer to finish.
fn send_and_wait(b: &Browser, send: impl FnOnce()) -> (String, String) {
    let before = b.js(
        "return document.querySelectorAll('li.msg.assistant').length",
        json!([]),
    );
    send();
    let done = b.wait_js(
        "the answer finishes",
        &format!(
            "const n = document.querySelectorAll('li.msg.assistant').length; \
             if (n <= arguments[0]) return null; {LAST_ANSWER} \
             return a.dataset.finish !== undefined ? [a.dataset.raw || '', \
             a.querySelector('.meta').textContent] : null"
        ),
        json!([before]),
    );
    (
        done[0].as_str().unwrap_or_default().to_string(),
        done[1].as_str().unwrap_or_default().to_string(),
    )
}

fn set_max_tokens(b: &Browser, n: usize) {
    b.clear("#max-tokens");
    b.type_into("#max-tokens", &n.to_string());
}

/// Attaches `image` through the file input, as the "Attach image" button's dialog would.
fn attach(b: &Browser, image: &Path) {
    let path = image.canonicalize().expect("the image exists");
    b.type_into("#file", &path.display().to_string());
    b.wait_js(
        "the attached image's thumbnail",
        "const t = document.querySelector('#pending img'); return t && t.complete && t.naturalWidth > 0",
        json!([]),
    );
}

fn image_part(bytes: &[u8]) -> Value {
    let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
    json!({"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{b64}")}})
}

/// The request the page sends for one question with one image (its defaults: no system prompt,
/// temperature 0).
fn page_request(model: &str, image: &[u8], question: &str, max_tokens: usize) -> Value {
    json!({
        "model": model,
        "messages": [{"role": "user", "content": [image_part(image), {"type": "text", "text": question}]}],
        "temperature": 0,
        "max_tokens": max_tokens,
    })
}

fn v1_model() -> PathBuf {
    super::fixtures().join("models/siglip-tiny")
}

fn v2_fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../dsvl/tests/fixtures/v2")
}

fn chat(server: &Server, body: &Value) -> HttpReply {
    http(server.port, "POST", "/v1/chat/completions", Some(body))
}

fn model_line(b: &Browser, family: &str) -> String {
    b.wait_js(
        "the model's name and family",
        "const t = document.getElementById('model').textContent; \
         return t.endsWith(' · ' + arguments[0]) ? t : null",
        json!([family]),
    )
    .as_str()
    .unwrap_or_default()
    .to_string()
}

fn assert_console_clean(b: &Browser, step: &str) {
    let log = b.console();
    assert!(severe(&log).is_empty(), "{step}: console: {log:#?}");
}

/// Every resource the page loaded came from the server.
fn assert_same_origin_only(b: &Browser, server: &Server) {
    let names = b.js(
        "return [location.href, ...performance.getEntriesByType('resource').map(e => e.name)]",
        json!([]),
    );
    let names = names.as_array().expect("a list");
    assert!(
        names.len() >= 5,
        "page, script, module, style, icon: {names:?}"
    );
    for n in names {
        let n = n.as_str().unwrap_or_default();
        assert!(n.starts_with(&server.url()), "{n} is not from the server");
    }
}

/// A PDF attached through the file input shows as a labelled tile (no thumbnail: the server
/// renders its pages), is sent as a file part, and the page's answer is the API's greedy answer
/// for the same file part.
#[test]
fn webui_sends_a_pdf_as_a_file_part() {
    let server = Server::start(&v1_model(), &[]);
    let b = Browser::start("v1-pdf");
    b.goto(&server.url());
    model_line(&b, "DeepSeek-VL");
    b.click("#settings-toggle");
    set_max_tokens(&b, 8);
    let pdf = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../dsvl/tests/fixtures/pdf/fidelity.pdf")
        .canonicalize()
        .expect("the PDF fixture exists");
    b.type_into("#file", &pdf.display().to_string());
    let tile = b.wait_js(
        "the attached PDF's tile",
        "const t = document.querySelector('#pending .thumb.pdf'); return t ? t.textContent : null",
        json!([]),
    );
    assert_eq!(tile, "PDF fidelity.pdf");
    let question = "What do these pages show?";
    let (raw, _) = send_and_wait(&b, || {
        b.type_into("#prompt", &format!("{question}\u{E007}"))
    });
    let b64 = base64::engine::general_purpose::STANDARD.encode(std::fs::read(&pdf).expect("PDF"));
    let file_part = json!({"type": "file", "file": {
        "filename": "fidelity.pdf",
        "file_data": format!("data:application/pdf;base64,{b64}"),
    }});
    let api = chat(
        &server,
        &json!({
            "model": "siglip-tiny",
            "messages": [{"role": "user", "content": [file_part, {"type": "text", "text": question}]}],
            "temperature": 0,
            "max_tokens": 8,
        }),
    )
    .json();
    assert_eq!(
        raw,
        api["choices"][0]["message"]["content"]
            .as_str()
            .expect("content"),
        "the page's answer is the API's greedy answer for the file part"
    );
    assert_eq!(
        api["usage"]["prompt_tokens"].as_u64().map(|n| n > 5 * 576),
        Some(true)
    );
    let shown = b.js(
        "const t = document.querySelector('li.msg.user .thumb.pdf'); return [t.textContent, t.title]",
        json!([]),
    );
    assert_eq!(
        shown,
        json!(["PDF fidelity.pdf", "Attached PDF: fidelity.pdf"])
    );
    b.screenshot("v1-pdf");
    assert_console_clean(&b, "after the PDF answer");
}

/// DeepSeek-VL: the page's streamed answer is the server's greedy answer for the same request
/// (and the official reference's); Stop ends a long answer and the server stops generating; a
/// request the server refuses shows its message and puts the question back; no console
/// errors; the policy header; nothing loaded from elsewhere.
#[test]
fn webui_answers_like_the_api_stops_and_shows_errors() {
    let server = Server::start(&v1_model(), &[]);
    let page = http(server.port, "GET", "/", None);
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let csp = page
        .header("content-security-policy")
        .expect("a CSP header");
    for want in [
        "default-src 'self'",
        "script-src 'self'",
        "img-src 'self' data: blob:",
    ] {
        assert!(csp.contains(want), "{csp}");
    }
    assert!(!csp.contains("unsafe"), "{csp}");

    let b = Browser::start("v1");
    b.goto(&server.url());
    assert_eq!(model_line(&b, "DeepSeek-VL"), "siglip-tiny · DeepSeek-VL");
    assert_console_clean(&b, "page load");

    // Settings (max tokens); the image through the file input; the question typed and sent with
    // Enter, as a keyboard user would.
    b.click("#settings-toggle");
    set_max_tokens(&b, 32);
    let image = super::fixtures().join("images/landscape_500x333.png");
    attach(&b, &image);
    let question = "Describe this image in detail.";
    let (raw, meta) = send_and_wait(&b, || {
        b.type_into("#prompt", &format!("{question}\u{E007}"))
    });
    let bytes = std::fs::read(&image).expect("fixture image");
    let api = chat(&server, &page_request("siglip-tiny", &bytes, question, 32)).json();
    let want = api["choices"][0]["message"]["content"]
        .as_str()
        .expect("content");
    assert_eq!(raw, want, "the page's answer is the API's greedy answer");
    assert_eq!(raw, super::reference_text("siglip-tiny__single"));
    let shown = b.js(
        &format!("{LAST_ANSWER} return a.querySelector('.answer').innerText"),
        json!([]),
    );
    assert_eq!(shown, want, "no markdown in this answer: shown as it is");
    for part in ["first token", "tokens/s", "32 tokens", "cut at max tokens"] {
        assert!(meta.contains(part), "{meta}");
    }
    let thumb = b.js(
        "const i = document.querySelector('li.msg.user img'); return [i.alt, i.naturalWidth]",
        json!([]),
    );
    assert_eq!(
        thumb,
        json!(["Attached image: landscape_500x333.png", 500]),
        "the history keeps a described thumbnail"
    );
    b.screenshot("v1-answer");
    assert_console_clean(&b, "first answer");

    // Stop: a long answer (the random model never says EOS) ends when the button is pressed,
    // and the server stops generating it (the dropped stream cancels the request).
    set_max_tokens(&b, 15000);
    b.js(
        "document.getElementById('prompt').value = 'Go on.'",
        json!([]),
    );
    b.click("#send");
    b.wait_js(
        "the long answer streams",
        &format!("{LAST_ANSWER} return a.dataset.finish === undefined && (a.dataset.raw || '').length > 20"),
        json!([]),
    );
    b.click("#stop");
    let finish = b.wait_js(
        "the stopped answer",
        &format!("{LAST_ANSWER} return a.dataset.finish || null"),
        json!([]),
    );
    assert_eq!(finish, "stopped");
    wait_for(
        "the server stops generating",
        Duration::from_secs(10),
        || {
            http(server.port, "GET", "/metrics", None)
                .text()
                .lines()
                .any(|l| l == "dsvl_running_sequences 0")
        },
    );
    b.screenshot("v1-stopped");
    assert_console_clean(&b, "stop");

    // A refused request: the server's own message is shown and the question is kept.
    b.clear("#temperature");
    b.type_into("#temperature", "-1");
    set_max_tokens(&b, 4);
    b.js(
        "document.getElementById('prompt').value = 'And now?'",
        json!([]),
    );
    b.click("#send");
    let shown = b.wait_js(
        "the error message",
        "const s = document.getElementById('status'); return s.hidden ? null : s.textContent",
        json!([]),
    );
    let mut bad = page_request("siglip-tiny", &bytes, question, 4);
    bad["temperature"] = json!(-1);
    let refused = chat(&server, &bad);
    assert_eq!(refused.status, 400);
    let message = refused.json()["error"]["message"]
        .as_str()
        .expect("message")
        .to_string();
    assert!(
        shown.as_str().is_some_and(|s| s.contains(&message)),
        "{shown} does not show {message:?}"
    );
    assert_eq!(
        b.js("return document.getElementById('prompt').value", json!([])),
        "And now?"
    );
    b.screenshot("v1-error");

    // The markdown renderer escapes everything it is given and still draws tables and code.
    let rendered = b.js(
        "const r = window.dsvl.renderMarkdown; return [ \
           r('<img src=x onerror=alert(1)> **b**'), \
           r('| a | b |\\n|---|--:|\\n| <i>1</i> | 2 |'), \
           r('```\\n<script>x()</script>\\n```'), \
           r('[x](javascript:alert(1)) [y](https://example.com/)')]",
        json!([]),
    );
    assert_eq!(
        rendered,
        json!([
            "<p>&lt;img src=x onerror=alert(1)&gt; <strong>b</strong></p>",
            "<div class=\"table-wrap\"><table><thead><tr><th>a</th><th class=\"align-right\">b</th></tr></thead>\
             <tbody><tr><td>&lt;i&gt;1&lt;/i&gt;</td><td class=\"align-right\">2</td></tr></tbody></table></div>",
            "<pre><code>&lt;script&gt;x()&lt;/script&gt;</code></pre>",
            "<p>[x](javascript:alert(1)) <a href=\"https://example.com/\" rel=\"noopener noreferrer\" \
             target=\"_blank\">y</a></p>",
        ])
    );

    // A phone-sized window: nothing wider than the screen.
    b.cmd("POST", "/window/rect", json!({"width": 390, "height": 844}));
    let widths = b.js(
        "return [document.documentElement.scrollWidth, window.innerWidth]",
        json!([]),
    );
    assert!(widths[0].as_f64() <= widths[1].as_f64(), "{widths}");
    b.screenshot("v1-phone");
    // Chromium logs every failed fetch: that one line, and nothing else.
    let log = b.console();
    let logged = severe(&log);
    assert!(
        !logged.is_empty()
            && logged.iter().all(|e| e["message"]
                .as_str()
                .is_some_and(|m| m.contains("status of 400"))),
        "only the refused request's 400 is logged: {log:#?}"
    );
    assert_same_origin_only(&b, &server);
}

/// Structured output from the settings: a schema that is not JSON is refused in the page (the
/// message by the schema box, nothing sent, the question kept); a valid one gives the server's
/// greedy answer for the same `response_format`, pretty-printed, parsing and matching the
/// schema; an answer cut at max tokens is shown as it is, with a note.
#[test]
fn webui_structured_output_is_the_apis_json_pretty_printed() {
    let server = Server::start(&v1_model(), &[]);
    let b = Browser::start("json");
    b.goto(&server.url());
    model_line(&b, "DeepSeek-VL");
    b.click("#settings-toggle");
    set_max_tokens(&b, 48);
    b.click("#format option[value=json_schema]");
    b.wait_js(
        "the schema box",
        "return !document.getElementById('schema-fields').hidden",
        json!([]),
    );
    // Every new control is labelled (keyboard users reach them in order: they are native ones).
    assert_eq!(
        b.js(
            "return ['format', 'schema', 'schema-name'].map(id => \
               [...document.getElementById(id).labels].map(l => l.textContent.trim().split(/\\s+/)[0]))",
            json!([])
        ),
        json!([["Structured"], ["Schema"], ["Name"]])
    );
    let image = super::fixtures().join("images/landscape_500x333.png");
    attach(&b, &image);
    let question = "What is in this image?";

    // Not JSON: said by the schema box, and nothing leaves the page.
    b.type_into("#schema", r#"{"type": "object", "properties": "#);
    b.js(
        "document.getElementById('prompt').value = arguments[0]",
        json!([question]),
    );
    b.click("#send");
    let shown = b.wait_js(
        "the schema's problem",
        "const e = document.getElementById('schema-error'); return e.hidden ? null : \
         [e.textContent, document.activeElement.id, \
          document.getElementById('schema').getAttribute('aria-invalid')]",
        json!([]),
    );
    assert!(
        shown[0]
            .as_str()
            .is_some_and(|m| m.starts_with("The schema is not valid JSON: ")),
        "{shown}"
    );
    assert_eq!(shown[1], "schema", "the schema box has the focus");
    assert_eq!(shown[2], "true");
    let kept = b.js(
        "return [document.querySelectorAll('#log li').length, \
                 performance.getEntriesByType('resource') \
                   .filter(e => e.name.endsWith('v1/chat/completions')).length, \
                 document.getElementById('prompt').value, \
                 document.querySelectorAll('#pending img').length]",
        json!([]),
    );
    assert_eq!(kept, json!([0, 0, question, 1]), "nothing sent, all kept");
    b.screenshot("structured-not-json");

    // A small schema: a string enum and a bounded integer.
    let schema = json!({
        "type": "object",
        "properties": {
            "kind": {"type": "string", "enum": ["photo", "drawing", "chart"]},
            "count": {"type": "integer", "minimum": 1, "maximum": 5},
        },
        "required": ["kind", "count"],
        "additionalProperties": false,
    });
    b.clear("#schema");
    b.type_into(
        "#schema",
        &serde_json::to_string_pretty(&schema).expect("JSON"),
    );
    assert_eq!(
        b.js(
            "return [document.getElementById('schema-error').hidden, \
                     document.getElementById('schema').hasAttribute('aria-invalid')]",
            json!([])
        ),
        json!([true, false]),
        "the message goes once the schema parses"
    );
    b.type_into("#schema-name", "picture");
    let (raw, meta) = send_and_wait(&b, || b.click("#send"));
    let bytes = std::fs::read(&image).expect("fixture image");
    let mut request = page_request("siglip-tiny", &bytes, question, 48);
    request["response_format"] = json!({"type": "json_schema",
        "json_schema": {"name": "picture", "schema": schema, "strict": true}});
    let api = chat(&server, &request).json();
    let choice = &api["choices"][0];
    assert_eq!(choice["finish_reason"], "stop", "{api}");
    assert_eq!(raw, choice["message"]["content"].as_str().expect("content"));
    let answer: Value = serde_json::from_str(&raw).unwrap_or_else(|e| panic!("{raw:?}: {e}"));
    let fields = answer.as_object().expect("an object");
    assert_eq!(fields.len(), 2, "{answer}");
    assert!(
        ["photo", "drawing", "chart"].contains(&answer["kind"].as_str().unwrap_or_default()),
        "{answer}"
    );
    assert!(
        answer["count"]
            .as_i64()
            .is_some_and(|n| (1..=5).contains(&n)),
        "{answer}"
    );
    let page = b.js(
        &format!(
            "{LAST_ANSWER} return [a.querySelector('.answer pre.json code').textContent, \
             a.dataset.json, a.dataset.format, a.querySelectorAll('.note').length]"
        ),
        json!([]),
    );
    let pretty = page[0].as_str().expect("the shown JSON");
    assert_eq!(
        serde_json::from_str::<Value>(pretty).expect("the shown JSON parses"),
        answer
    );
    // Pretty-printed: one field a line, indented; the same text as the compact answer otherwise
    // (its strings have no spaces).
    let lines: Vec<&str> = pretty.lines().collect();
    assert_eq!(lines.len(), fields.len() + 2, "{pretty}");
    assert!(
        lines[1..=fields.len()]
            .iter()
            .all(|l| l.starts_with("  \"") && l.contains("\": ")),
        "{pretty}"
    );
    assert_eq!(
        pretty
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect::<String>(),
        raw
    );
    assert_eq!(
        page.as_array().expect("a list")[1..],
        [json!("valid"), json!("json_schema"), json!(0)]
    );
    assert!(meta.starts_with("JSON Schema · first token"), "{meta}");
    b.screenshot("structured");
    assert_console_clean(&b, "structured answer");

    // Cut at max tokens: the raw text, and the note.
    b.click("#new-chat");
    set_max_tokens(&b, 3);
    let (raw, _) = ask(&b, question);
    let cut_request = json!({"model": "siglip-tiny",
        "messages": [{"role": "user", "content": question}],
        "temperature": 0, "max_tokens": 3, "response_format": request["response_format"]});
    let cut = chat(&server, &cut_request).json();
    assert_eq!(cut["choices"][0]["finish_reason"], "length", "{cut}");
    assert_eq!(
        raw,
        cut["choices"][0]["message"]["content"]
            .as_str()
            .expect("content")
    );
    assert!(serde_json::from_str::<Value>(&raw).is_err(), "{raw}");
    let page = b.js(
        &format!(
            "{LAST_ANSWER} return [a.querySelector('.answer pre.json code').textContent, \
             a.dataset.json, a.querySelector('.note').textContent]"
        ),
        json!([]),
    );
    assert_eq!(
        page,
        json!([raw, "invalid", "cut at max tokens: not valid JSON"])
    );
    b.screenshot("structured-cut");
    // At phone width, the settings with the schema box fit the screen.
    b.cmd("POST", "/window/rect", json!({"width": 390, "height": 844}));
    let widths = b.js(
        "return [document.documentElement.scrollWidth, window.innerWidth]",
        json!([]),
    );
    assert!(widths[0].as_f64() <= widths[1].as_f64(), "{widths}");
    b.cmd(
        "POST",
        "/window/rect",
        json!({"width": 1000, "height": 900}),
    );
    assert_console_clean(&b, "cut structured answer");

    // Any JSON object: the schema box goes, the request says `json_object`.
    b.click("#new-chat");
    b.click("#format option[value=json_object]");
    assert_eq!(
        b.js(
            "return document.getElementById('schema-fields').hidden",
            json!([])
        ),
        true
    );
    let (raw, meta) = ask(&b, question);
    let mut object = cut_request.clone();
    object["response_format"] = json!({"type": "json_object"});
    let api = chat(&server, &object).json();
    assert_eq!(
        raw,
        api["choices"][0]["message"]["content"]
            .as_str()
            .expect("content")
    );
    assert!(
        raw.starts_with('{') && meta.starts_with("JSON object · "),
        "{raw} {meta}"
    );
    assert_console_clean(&b, "JSON object answer");
    assert_same_origin_only(&b, &server);
}

/// DeepSeek-VL2: the page shows the server's answer and its `grounding` (here, as the random
/// model gives it, no complete box and the problems), then draws boxes where the server's pixels
/// say. The random fixture never closes a `<|det|>`, so for the boxes the page is given the
/// server's own stream for the same request with the finish chunk's `grounding` replaced by the
/// library's parse of an answer with two boxes (`window.fetch` replaced for the chat route, its
/// events paced as a server sends them).
#[test]
fn webui_draws_vl2_boxes_at_the_servers_pixels() {
    let model = v2_fixtures().join("models/vl2-base-random");
    let server = Server::start(&model, &[]);
    let b = Browser::start("vl2");
    b.goto(&server.url());
    assert_eq!(
        model_line(&b, "DeepSeek-VL2"),
        "vl2-base-random · DeepSeek-VL2"
    );
    b.click("#settings-toggle");
    set_max_tokens(&b, 20);
    let image = v2_fixtures().join("images/tiles_384x768.png");
    attach(&b, &image);
    let question = "\nbox Describe";
    let (raw, _) = ask(&b, question);
    let bytes = std::fs::read(&image).expect("fixture image");
    let request = page_request("vl2-base-random", &bytes, question, 20);
    let api = chat(&server, &request).json();
    let message = &api["choices"][0]["message"];
    assert_eq!(raw, message["content"].as_str().expect("content"));
    let problems = message["grounding"]["problems"]
        .as_array()
        .expect("grounding problems (the fixture's answer opens a <|det|>)");
    let shown = b.js(
        &format!(
            "{LAST_ANSWER} const f = a.querySelector('figure.grounding'); \
             return f && [f.querySelector('figcaption').textContent, f.querySelector('.problems').textContent]"
        ),
        json!([]),
    );
    assert_eq!(shown[0], "No complete boxes in this answer.");
    let first = problems[0].as_str().expect("text");
    assert!(
        shown[1].as_str().is_some_and(|s| s.contains(first)),
        "{shown}"
    );
    assert_console_clean(&b, "VL2 answer");

    // The boxes, through the page's stream handling and drawing code.
    let answer = "<|ref|>the upper tile<|/ref|><|det|>[[100, 50, 900, 480]]<|/det|> and \
                  <|ref|>the lower tile<|/ref|><|det|>[[0, 520, 999, 999]]<|/det|>";
    let grounding =
        serde_json::to_value(dsvl::grounding::parse_grounding(answer, Some((384, 768))))
            .expect("serializes");
    let mut streamed = request.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let sse = chat(&server, &streamed).text();
    let mut patched = 0;
    let sse: String = sse
        .split("\n\n")
        .map(|event| match event.strip_prefix("data: ") {
            Some(data) if data != "[DONE]" => {
                let mut chunk: Value = serde_json::from_str(data).expect("a JSON chunk");
                if !chunk["choices"][0]["finish_reason"].is_null() {
                    chunk["choices"][0]["delta"]["grounding"] = grounding.clone();
                    patched += 1;
                }
                format!("data: {chunk}\n\n")
            }
            _ if event.is_empty() => String::new(),
            _ => format!("{event}\n\n"),
        })
        .collect();
    assert_eq!(patched, 1, "one finish chunk: {sse}");
    b.js(
        "const events = arguments[0].split('\\n\\n').filter(e => e).map(e => e + '\\n\\n'); \
         const real = window.fetch, bytes = new TextEncoder(); \
         const body = () => new ReadableStream({async pull(c) { \
           await new Promise(r => setTimeout(r, 25)); /* one event per 25 ms, as a server sends */ \
           const e = events.shift(); if (e) c.enqueue(bytes.encode(e)); else c.close(); }}); \
         window.fetch = (url, opts) => String(url).endsWith('v1/chat/completions') \
           ? Promise.resolve(new Response(body(), {headers: {'Content-Type': 'text/event-stream'}})) \
           : real(url, opts);",
        json!([sse]),
    );
    ask(&b, "Where are the tiles?");
    let drawn = b.js(
        &format!(
            "{LAST_ANSWER} const img = a.querySelector('figure.grounding img'); \
             const r = img.getBoundingClientRect(); \
             return {{alt: img.alt, shown: [r.width, r.height], natural: [img.naturalWidth, img.naturalHeight], \
               boxes: [...a.querySelectorAll('.box')].map(x => {{ const q = x.getBoundingClientRect(); \
                 return {{pixels: x.dataset.pixels, label: x.textContent, \
                          rect: [q.left - r.left, q.top - r.top, q.width, q.height]}}; }})}}"
        ),
        json!([]),
    );
    assert_eq!(drawn["natural"], json!([384, 768]), "{drawn}");
    assert_eq!(
        drawn["alt"],
        "tiles_384x768.png with 2 boxes: the upper tile, the lower tile"
    );
    let (sx, sy) = (
        drawn["shown"][0].as_f64().expect("width") / 384.0,
        drawn["shown"][1].as_f64().expect("height") / 768.0,
    );
    let boxes = drawn["boxes"].as_array().expect("boxes");
    let objects = grounding["objects"].as_array().expect("objects");
    assert_eq!(boxes.len(), objects.len(), "{drawn}");
    for (got, want) in boxes.iter().zip(objects) {
        let px: Vec<f64> = want["boxes"][0]["pixels"]
            .as_array()
            .expect("pixels")
            .iter()
            .map(|v| v.as_f64().expect("number"))
            .collect();
        assert_eq!(got["label"], want["label"]);
        let joined = px
            .iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(got["pixels"], joined);
        let expect = [
            px[0] * sx,
            px[1] * sy,
            (px[2] - px[0]) * sx,
            (px[3] - px[1]) * sy,
        ];
        for (g, e) in got["rect"].as_array().expect("rect").iter().zip(expect) {
            let g = g.as_f64().expect("number");
            assert!((g - e).abs() <= 1.0, "box {got} expected at {expect:?}");
        }
    }
    // Tall enough for the whole conversation (the README's picture, docs/webui.png).
    b.cmd(
        "POST",
        "/window/rect",
        json!({"width": 1000, "height": 1400}),
    );
    b.screenshot("vl2-boxes");
    assert_console_clean(&b, "VL2 boxes");
    assert_same_origin_only(&b, &server);
}

/// `--api-key`: the page asks for the key, says so when it is wrong, keeps it in this tab's
/// session storage only, and sends it with its requests.
#[test]
fn webui_asks_for_the_api_key_and_keeps_it_in_the_tab() {
    let server = Server::start(&v1_model(), &["--api-key", "sesame"]);
    assert_eq!(
        http(server.port, "GET", "/", None).status,
        200,
        "the page itself is open"
    );
    let b = Browser::start("key");
    b.goto(&server.url());
    let key_form_shown = "return !document.getElementById('key-form').hidden \
                          && document.activeElement.id === 'api-key'";
    b.wait_js("the key is asked for", key_form_shown, json!([]));
    b.type_into("#api-key", "wrong\u{E007}");
    b.wait_js("asked again after a wrong key", key_form_shown, json!([]));
    b.type_into("#api-key", "sesame\u{E007}");
    assert_eq!(model_line(&b, "DeepSeek-VL"), "siglip-tiny · DeepSeek-VL");
    let stored = b.js(
        "return [sessionStorage.getItem('dsvl.apiKey'), localStorage.length, document.cookie]",
        json!([]),
    );
    assert_eq!(stored, json!(["sesame", 0, ""]));
    b.click("#settings-toggle");
    set_max_tokens(&b, 3);
    // Several images in one turn, by paste and by drop (events as the browser makes them), one
    // removed again; the answer is the API's for the same two images.
    let images = super::fixtures().join("images");
    let files: Vec<Vec<u8>> = [
        "landscape_500x333.png",
        "portrait_333x500.png",
        "landscape_500x333.png",
    ]
    .iter()
    .map(|n| std::fs::read(images.join(n)).expect("fixture image"))
    .collect();
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    b.js(
        "const file = (b64, name) => new File([Uint8Array.from(atob(b64), c => c.charCodeAt(0))], \
                                             name, {type: 'image/png'}); \
         const data = (...f) => { const d = new DataTransfer(); f.forEach(x => d.items.add(x)); return d; }; \
         document.dispatchEvent(new ClipboardEvent('paste', {clipboardData: data(file(arguments[0], 'a.png')), \
                                                              bubbles: true})); \
         window.dispatchEvent(new DragEvent('drop', {dataTransfer: data(file(arguments[1], 'b.png'), \
                                                                        file(arguments[2], 'c.png')), \
                                                    bubbles: true, cancelable: true}));",
        json!([b64(&files[0]), b64(&files[1]), b64(&files[2])]),
    );
    b.wait_js(
        "three attached",
        "return document.querySelectorAll('#pending img').length === 3",
        json!([]),
    );
    b.click("#pending li:last-child button.remove");
    let pending = b.wait_js(
        "one removed",
        "const t = [...document.querySelectorAll('#pending img')].map(i => i.alt); \
         return t.length === 2 ? t : null",
        json!([]),
    );
    assert_eq!(pending, json!(["Attached: a.png", "Attached: b.png"]));
    let (raw, meta) = ask(&b, "Compare them.");
    assert!(meta.contains("3 tokens"), "{meta}");
    let mut body = page_request("siglip-tiny", &files[0], "Compare them.", 3);
    body["messages"][0]["content"]
        .as_array_mut()
        .expect("parts")
        .insert(1, image_part(&files[1]));
    let reply = request(
        server.port,
        "POST",
        "/v1/chat/completions",
        Some(&body),
        &[("Authorization", "Bearer sesame")],
    )
    .json();
    assert_eq!(
        raw,
        reply["choices"][0]["message"]["content"]
            .as_str()
            .expect("content")
    );
    assert_eq!(
        b.js(
            "return document.querySelectorAll('li.msg.user img').length",
            json!([])
        ),
        2
    );
    b.screenshot("api-key");

    b.click("#new-chat");
    assert_eq!(
        b.js(
            "return document.querySelectorAll('#log li').length",
            json!([])
        ),
        0
    );
    let log = b.console();
    assert!(
        severe(&log).iter().all(|e| e["message"]
            .as_str()
            .is_some_and(|m| m.contains("status of 401"))),
        "only the refused key's 401s are logged: {log:#?}"
    );
}

/// `dsvl serve --no-webui`: no page, the API as before.
#[test]
fn no_webui_turns_the_page_off() {
    let server = Server::start(&v1_model(), &["--no-webui"]);
    assert_eq!(http(server.port, "GET", "/", None).status, 404);
    assert_eq!(http(server.port, "GET", "/webui/app.js", None).status, 404);
    assert_eq!(http(server.port, "GET", "/v1/models", None).status, 200);
}

/// A full queue: the page says the server is busy, with the server's message, and keeps the
/// question for another try.
#[test]
fn webui_says_when_the_server_is_busy() {
    let server = Server::start(&v1_model(), &["--max-queue", "1", "--max-running", "1"]);
    let b = Browser::start("busy");
    b.goto(&server.url());
    model_line(&b, "DeepSeek-VL");
    // One long answer running and one waiting fill the queue; their sockets stay open until
    // the end of the test (closing them cancels both).
    let long = json!({"messages": [{"role": "user", "content": "Count."}], "temperature": 0,
                      "max_tokens": 15000, "stream": true})
    .to_string();
    let metric = |line: &str| {
        http(server.port, "GET", "/metrics", None)
            .text()
            .lines()
            .any(|l| l == line)
    };
    let mut held = Vec::new();
    for gauge in ["dsvl_running_sequences 1", "dsvl_queue_depth 1"] {
        let mut s = TcpStream::connect(("127.0.0.1", server.port)).expect("connect");
        let head = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{long}",
            long.len()
        );
        s.write_all(head.as_bytes()).expect("send");
        held.push(s);
        wait_for(gauge, Duration::from_secs(30), || metric(gauge));
    }
    b.js(
        "document.getElementById('prompt').value = 'Hello?'",
        json!([]),
    );
    b.click("#send");
    let shown = b.wait_js(
        "the busy message",
        "const s = document.getElementById('status'); return s.hidden ? null : s.textContent",
        json!([]),
    );
    let shown = shown.as_str().unwrap_or_default();
    assert!(
        shown.starts_with("Busy (HTTP 429)") && shown.contains("requests queued"),
        "{shown}"
    );
    assert_eq!(
        b.js("return document.getElementById('prompt').value", json!([])),
        "Hello?"
    );
    b.screenshot("busy");
    drop(held);
    wait_for(
        "the held requests cancelled",
        Duration::from_secs(10),
        || metric("dsvl_running_sequences 0") && metric("dsvl_queue_depth 0"),
    );
}
