//! `dsvl::pdf` against poppler: the fixtures of `tools/fixtures/gen_pdfs.py` rendered by us and
//! by `pdftoppm` at the same DPI, compared page by page; the bad documents give their errors.

use std::path::PathBuf;
use std::time::Duration;

use dsvl::image::RgbImage;
use dsvl::pdf::{PdfDocument, PdfError, PdfLimits};

/// The references' resolution (`REF_DPI` in gen_pdfs.py).
const REF_DPI: f32 = 100.0;

/// Each page of `fidelity.pdf`, and the lowest PSNR (dB) accepted between our render and
/// poppler's. Measured (hayro 0.9, pdftoppm 22.12): text 20.8, vector 27.9, JPEG 27.1, rotated
/// 27.3, non-Latin 26.5; a blank white page scores 5.9 to 16.2, and must fail every gate. What
/// is left between two correct renderers is anti-aliasing (each has its own coverage rule, so
/// every edge pixel differs a little), glyph hinting, and JPEG upsampling; on the text page also
/// the fonts themselves: Helvetica, Times and Courier are not embedded, and hayro draws its
/// built-in Foxit fonts where poppler takes the system's substitutes (same metrics, other
/// outlines), hence its lower gate. The margins (1.5 to 2.9 dB) absorb renderer updates.
const PAGES: [(&str, f64); 5] = [
    ("text", 19.0),
    ("vector", 25.0),
    ("jpeg", 25.0),
    ("rotated", 25.0),
    ("non-latin", 25.0),
];

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pdf")
}

fn open(name: &str, limits: &PdfLimits) -> Result<PdfDocument, PdfError> {
    let bytes = std::fs::read(dir().join(name)).expect("fixture present");
    PdfDocument::from_bytes(bytes, name, limits)
}

fn psnr(a: &RgbImage, b: &RgbImage) -> f64 {
    assert_eq!((a.width, a.height), (b.width, b.height), "sizes differ");
    let mse = a
        .data
        .iter()
        .zip(&b.data)
        .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
        .sum::<f64>()
        / a.data.len() as f64;
    if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (255.0f64 * 255.0 / mse).log10()
    }
}

#[test]
fn pages_match_pdftoppm_above_the_psnr_threshold() {
    let doc = open("fidelity.pdf", &PdfLimits::default()).unwrap();
    assert_eq!(doc.page_count(), 5);
    let mut report = Vec::new();
    for (page, &(what, gate)) in PAGES.iter().enumerate() {
        let ours = doc.render(page, REF_DPI).unwrap();
        let reference =
            dsvl::image::load(&dir().join(format!("fidelity-{}.png", page + 1)), 1 << 20).unwrap();
        // The reference is no blank page, and a blank page would fail the gate.
        let white = RgbImage::filled(reference.width, reference.height, [255, 255, 255]);
        let blank = psnr(&white, &reference);
        let got = psnr(&ours, &reference);
        report.push(format!("{what}: {got:.1} dB (blank {blank:.1} dB)"));
        assert!(
            blank < gate,
            "page {} ({what}): a blank page scores {blank:.1} dB",
            page + 1
        );
        assert!(
            got > gate,
            "page {} ({what}): {got:.1} dB <= {gate} dB; {report:?}",
            page + 1
        );
    }
    eprintln!("PSNR vs pdftoppm at {REF_DPI} dpi: {report:?}");
}

#[test]
fn page_size_follows_points_dpi_and_rotation() {
    let doc = open("fidelity.pdf", &PdfLimits::default()).unwrap();
    assert_eq!(doc.page_size_points(0).unwrap(), (288.0, 216.0));
    assert_eq!(
        doc.page_size_points(3).unwrap(),
        (216.0, 288.0),
        "/Rotate 90 swaps the sides"
    );
    let page = doc.render(0, 144.0).unwrap();
    assert_eq!((page.width, page.height), (576, 432));
    let rotated = doc.render(3, 144.0).unwrap();
    assert_eq!((rotated.width, rotated.height), (432, 576));
    assert_eq!(rotated.data.len(), 432 * 576 * 3);
    // The corners are the white background.
    assert_eq!(&page.data[..3], &[255, 255, 255]);
}

#[test]
fn bad_documents_give_their_errors() {
    let limits = PdfLimits::default();
    let err = |name: &str| open(name, &limits).unwrap_err();
    assert!(
        matches!(err("corrupt.pdf"), PdfError::Broken { .. }),
        "{:?}",
        err("corrupt.pdf")
    );
    let truncated = err("truncated.pdf");
    assert!(
        matches!(truncated, PdfError::Broken { .. }),
        "{truncated:?}"
    );
    assert!(
        truncated.to_string().contains("it is truncated"),
        "{truncated}"
    );
    let encrypted = err("encrypted.pdf");
    assert!(
        matches!(encrypted, PdfError::Encrypted { .. }),
        "{encrypted:?}"
    );
    assert!(encrypted
        .to_string()
        .contains("encrypted.pdf: the PDF is encrypted (it needs a password)"));
    let zero = err("zero-pages.pdf");
    assert!(matches!(zero, PdfError::NoPages { .. }), "{zero:?}");

    let png = std::fs::read(dir().join("fidelity-1.png")).unwrap();
    let not_pdf = PdfDocument::from_bytes(png, "scan.png", &limits).unwrap_err();
    assert_eq!(
        not_pdf,
        PdfError::NotAPdf {
            name: "scan.png".into()
        }
    );
}

#[test]
fn a_page_of_a_billion_pixels_is_refused_before_rendering() {
    let doc = open("huge-page.pdf", &PdfLimits::default()).unwrap();
    let e = doc.render(0, REF_DPI).unwrap_err();
    // 22800 pt at 100 dpi = 31666.7, 31667 px a side.
    assert_eq!(
        e,
        PdfError::PageTooLarge {
            name: "huge-page.pdf".into(),
            page: 1,
            dpi: REF_DPI,
            width: 31667,
            height: 31667,
            pixels: 1_002_798_889,
            limit: dsvl::image::DEFAULT_MAX_PIXELS,
        }
    );
    assert!(
        e.to_string()
            .contains("over the limit of 50000000 pixels per page"),
        "{e}"
    );
}

#[test]
fn the_page_limit_names_itself() {
    let limits = PdfLimits {
        max_pages: 4,
        ..PdfLimits::default()
    };
    let e = open("fidelity.pdf", &limits).unwrap_err();
    assert_eq!(
        e,
        PdfError::TooManyPages {
            name: "fidelity.pdf".into(),
            pages: 5,
            limit: 4
        }
    );
    assert!(e
        .to_string()
        .contains("over the limit of 4 pages per document"));
    assert!(e.to_string().contains("--max-pdf-pages"));
}

#[test]
fn a_page_past_its_time_limit_is_abandoned() {
    // 1 µs for a 1600x1200 page with a JPEG: no renderer finishes that; the call returns at once.
    let limits = PdfLimits {
        page_timeout: Duration::from_micros(1),
        ..PdfLimits::default()
    };
    let doc = open("fidelity.pdf", &limits).unwrap();
    let started = std::time::Instant::now();
    let e = doc.render(2, 400.0).unwrap_err();
    assert!(matches!(e, PdfError::Timeout { page: 3, .. }), "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn pages_and_dpi_out_of_range_are_errors() {
    let doc = open("fidelity.pdf", &PdfLimits::default()).unwrap();
    assert_eq!(
        doc.render(5, 72.0).unwrap_err(),
        PdfError::NoSuchPage {
            name: "fidelity.pdf".into(),
            page: 6,
            page_count: 5
        }
    );
    assert_eq!(
        doc.render(0, 0.0).unwrap_err(),
        PdfError::BadDpi { dpi: 0.0 }
    );
    assert!(matches!(
        doc.render(0, f32::NAN).unwrap_err(),
        PdfError::BadDpi { .. }
    ));
}
