//! `dsvl run --image doc.pdf`: a PDF given as an image is its pages, in order.

use std::path::PathBuf;

use dsvl::pdf::{PdfDocument, PdfLimits};

use super::{dsvl, model, stderr, stdout};

fn pdf_fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../dsvl/tests/fixtures/pdf")
        .join(name)
}

fn run_jsonl(images: &[String], extra: &[&str]) -> std::process::Output {
    let siglip = model("siglip-tiny");
    let mut args = vec![
        "run",
        "--model",
        &siglip,
        "--max-tokens",
        "6",
        "--format",
        "jsonl",
    ];
    for img in images {
        args.extend(["--image", img.as_str()]);
    }
    args.extend_from_slice(extra);
    args.push("What do these pages show?");
    dsvl(&args)
}

#[test]
fn a_pdf_image_answers_like_its_pages_as_png_files() {
    let pdf = pdf_fixture("fidelity.pdf");
    let dir = std::env::temp_dir().join(format!("dsvl-cli-pdf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let doc = PdfDocument::from_bytes(
        std::fs::read(&pdf).unwrap(),
        "fidelity.pdf",
        &PdfLimits::default(),
    )
    .unwrap();
    let pages: Vec<String> = (0..doc.page_count())
        .map(|p| {
            let path = dir.join(format!("page-{}.png", p + 1));
            std::fs::write(&path, doc.render(p, 72.0).unwrap().to_png().unwrap()).unwrap();
            path.display().to_string()
        })
        .collect();

    let as_pdf = run_jsonl(&[pdf.display().to_string()], &["--pdf-dpi", "72"]);
    assert!(as_pdf.status.success(), "{}", stderr(&as_pdf));
    let as_pngs = run_jsonl(&pages, &[]);
    assert!(as_pngs.status.success(), "{}", stderr(&as_pngs));
    // The same tokens, then a summary with the same counts (its timings differ).
    let lines = |o: &std::process::Output| -> Vec<serde_json::Value> {
        stdout(o)
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON line"))
            .collect()
    };
    let (a, b) = (lines(&as_pdf), lines(&as_pngs));
    assert_eq!(a.len(), 7, "6 tokens and a summary");
    assert_eq!(a[..6], b[..6]);
    for key in [
        "prompt_tokens",
        "completion_tokens",
        "finish_reason",
        "text",
    ] {
        assert_eq!(a[6][key], b[6][key], "{key}");
    }
    // Five images of 576 tokens each are in the prompt.
    assert!(
        a[6]["prompt_tokens"].as_u64().unwrap() > 5 * 576,
        "{}",
        a[6]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn pdf_limits_and_bad_pdfs_stop_before_loading_with_a_message() {
    let pdf = pdf_fixture("fidelity.pdf").display().to_string();
    let o = run_jsonl(&[pdf], &["--max-pdf-pages", "2"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("the PDF has 5 pages, over the limit of 2 pages per document"),
        "{}",
        stderr(&o)
    );

    let o = run_jsonl(&[pdf_fixture("encrypted.pdf").display().to_string()], &[]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("encrypted.pdf: the PDF is encrypted (it needs a password)"),
        "{}",
        stderr(&o)
    );

    let o = run_jsonl(
        &[pdf_fixture("fidelity.pdf").display().to_string()],
        &["--pdf-dpi", "0"],
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("not a resolution between 1 and 2400 dpi"),
        "{}",
        stderr(&o)
    );
}
