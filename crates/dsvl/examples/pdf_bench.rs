//! Renders every page of a PDF and prints pages per second: the cost of PDF input before any
//! model work.
//!
//! ```sh
//! python3 tools/fixtures/gen_pdfs.py bench /tmp/bench20.pdf     # 20 text-and-figures A4 pages
//! cargo run --release -p dsvl --example pdf_bench -- /tmp/bench20.pdf [DPI] [ROUNDS]
//! ```

use std::time::Instant;

use dsvl::pdf::{PdfDocument, PdfLimits};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let Some(path) = args.next() else {
        anyhow::bail!("usage: pdf_bench FILE.pdf [DPI (144)] [ROUNDS (3)]");
    };
    let dpi: f32 = args.next().map_or(Ok(144.0), |s| s.parse())?;
    let rounds: usize = args.next().map_or(Ok(3), |s| s.parse())?;
    let bytes = std::fs::read(&path)?;
    let limits = PdfLimits {
        max_pages: 10_000,
        ..PdfLimits::default()
    };
    let opened = Instant::now();
    let doc = PdfDocument::from_bytes(bytes, &path, &limits)?;
    let open_ms = opened.elapsed().as_secs_f64() * 1e3;
    let (w, h) = doc.page_size_pixels(0, dpi)?;
    println!(
        "{path}: {} pages, first page {w}x{h} px at {dpi} dpi, opened in {open_ms:.1} ms",
        doc.page_count()
    );
    let mut best = f64::INFINITY;
    for round in 1..=rounds {
        let started = Instant::now();
        for page in 0..doc.page_count() {
            std::hint::black_box(doc.render(page, dpi)?);
        }
        let s = started.elapsed().as_secs_f64();
        best = best.min(s);
        println!(
            "round {round}: {:.2} s, {:.1} pages/s (one thread)",
            s,
            doc.page_count() as f64 / s
        );
    }
    println!(
        "best: {:.1} pages/s, {:.1} ms/page",
        doc.page_count() as f64 / best,
        best * 1e3 / doc.page_count() as f64
    );
    Ok(())
}
