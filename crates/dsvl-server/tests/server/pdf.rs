//! PDF file parts (`{"type": "file", "file": {"filename", "file_data"}}`) on the tiny v1 model:
//! a PDF answers exactly like its pages sent as PNG images; its limits and bad documents are
//! OpenAI errors naming the part.

use std::path::PathBuf;

use axum::http::StatusCode;
use base64::Engine as _;
use dsvl::pdf::{PdfDocument, PdfLimits};
use dsvl_server::ServerConfig;
use serde_json::{json, Value};

use super::harness::*;
use super::v1::{app, app_with};

fn pdf_fixture(name: &str) -> Vec<u8> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../dsvl/tests/fixtures/pdf");
    std::fs::read(dir.join(name)).expect("PDF fixture")
}

fn file_part(filename: &str, bytes: &[u8]) -> Value {
    let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
    json!({"type": "file", "file": {"filename": filename, "file_data": format!("data:application/pdf;base64,{b64}")}})
}

fn ask(parts: Vec<Value>) -> Value {
    let mut content = parts;
    content.push(json!({"type": "text", "text": "What do these pages show?"}));
    json!({"messages": [{"role": "user", "content": content}], "temperature": 0, "max_tokens": 12})
}

#[tokio::test]
async fn a_pdf_part_answers_like_its_pages_sent_as_png_images() {
    let pdf = pdf_fixture("fidelity.pdf");
    // The same pages, rendered by the library at the server's default resolution, as PNGs.
    let doc = PdfDocument::from_bytes(pdf.clone(), "fidelity.pdf", &PdfLimits::default()).unwrap();
    let pngs: Vec<Value> = (0..doc.page_count())
        .map(|p| image_part(&data_url(&doc.render(p, 144.0).unwrap().to_png().unwrap())))
        .collect();
    assert_eq!(pngs.len(), 5);

    let as_pdf = post(
        app(),
        "/v1/chat/completions",
        &ask(vec![file_part("fidelity.pdf", &pdf)]),
    )
    .await;
    let as_images = post(app(), "/v1/chat/completions", &ask(pngs)).await;
    let (a, b) = (as_pdf.json(), as_images.json());
    assert_eq!(as_pdf.status, StatusCode::OK, "{a}");
    assert_eq!(as_images.status, StatusCode::OK, "{b}");
    assert_eq!(
        a["choices"][0]["message"]["content"],
        b["choices"][0]["message"]["content"]
    );
    assert_eq!(a["usage"], b["usage"]);
    // Five images of 576 tokens each are in the prompt.
    assert!(
        a["usage"]["prompt_tokens"].as_u64().unwrap() > 5 * 576,
        "{a}"
    );
    assert!(!a["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn page_limits_are_400s_naming_the_limit_and_the_part() {
    let pdf = pdf_fixture("fidelity.pdf");
    let few_pages = app_with(ServerConfig {
        max_pdf_pages: 4,
        ..Default::default()
    });
    let r = post(
        few_pages,
        "/v1/chat/completions",
        &ask(vec![file_part("fidelity.pdf", &pdf)]),
    )
    .await;
    let j = assert_error(
        &r,
        StatusCode::BAD_REQUEST,
        Some("messages[0].content[0]"),
        Some("too_many_pdf_pages"),
    );
    let msg = j["error"]["message"].as_str().unwrap();
    assert!(msg.contains("messages[0].content[0] (fidelity.pdf): the PDF has 5 pages, over the limit of 4 pages per document"), "{msg}");

    // Each page is an image for the per-request image limit.
    let few_images = app_with(ServerConfig {
        max_images_per_request: 4,
        ..Default::default()
    });
    let r = post(
        few_images,
        "/v1/chat/completions",
        &ask(vec![file_part("fidelity.pdf", &pdf)]),
    )
    .await;
    let j = assert_error(
        &r,
        StatusCode::BAD_REQUEST,
        Some("messages"),
        Some("too_many_images"),
    );
    assert!(
        j["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("5 images sent"),
        "{j}"
    );

    // A page over the pixel limit is refused before it is drawn.
    let r = post(
        app(),
        "/v1/chat/completions",
        &ask(vec![file_part("huge.pdf", &pdf_fixture("huge-page.pdf"))]),
    )
    .await;
    let j = assert_error(
        &r,
        StatusCode::PAYLOAD_TOO_LARGE,
        Some("messages[0].content[0]"),
        Some("pdf_page_too_large"),
    );
    assert!(
        j["error"]["message"]
            .as_str()
            .unwrap()
            .contains("page 1 at 144 dpi would be 45600x45600"),
        "{j}"
    );
}

#[tokio::test]
async fn bad_documents_and_unsupported_forms_are_400s() {
    let png = pdf_fixture("fidelity-1.png");
    for (part, param, code, says) in [
        (
            file_part("c.pdf", &pdf_fixture("corrupt.pdf")),
            "messages[0].content[0]",
            "invalid_pdf",
            "damaged or truncated",
        ),
        (
            file_part("e.pdf", &pdf_fixture("encrypted.pdf")),
            "messages[0].content[0]",
            "encrypted_pdf",
            "needs a password",
        ),
        (
            file_part("z.pdf", &pdf_fixture("zero-pages.pdf")),
            "messages[0].content[0]",
            "invalid_pdf",
            "no pages",
        ),
        (
            file_part("scan.pdf", &png),
            "messages[0].content[0]",
            "invalid_pdf",
            "not a PDF",
        ),
        (
            json!({"type": "file", "file": {"file_id": "file-abc123"}}),
            "messages[0].content[0].file.file_id",
            "unsupported_file_id",
            "no Files API",
        ),
        (
            json!({"type": "file", "file": {"filename": "a.png", "file_data": data_url(&png)}}),
            "messages[0].content[0].file.file_data",
            "invalid_file",
            "PDF documents only",
        ),
        (
            json!({"type": "file", "file": {"filename": "a.pdf", "file_data": "JVBERi0x"}}),
            "messages[0].content[0].file.file_data",
            "invalid_file",
            "must be a data URL",
        ),
    ] {
        let r = post(app(), "/v1/chat/completions", &ask(vec![part])).await;
        let j = assert_error(&r, StatusCode::BAD_REQUEST, Some(param), Some(code));
        assert!(
            j["error"]["message"].as_str().unwrap().contains(says),
            "{says}: {j}"
        );
    }
}
