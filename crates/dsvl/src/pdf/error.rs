//! What can go wrong with a PDF, each message saying what to do. Pages are numbered from 1 in
//! messages, as users count them.

/// An error opening a PDF, rendering one of its pages, or reading a page range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PdfError {
    #[error("{name}: not a PDF (it does not start with `%PDF-`); send a PDF file")]
    NotAPdf { name: String },
    #[error("{name}: the PDF is damaged or truncated and cannot be read ({detail}); re-export it from the application that made it")]
    Broken { name: String, detail: String },
    #[error("{name}: the PDF is encrypted ({detail}); remove the password first (for example `qpdf --decrypt --password=PASSWORD in.pdf out.pdf`) and send the decrypted file")]
    Encrypted { name: String, detail: String },
    #[error("{name}: the PDF has no pages; send a document with at least one page")]
    NoPages { name: String },
    #[error("{name}: the PDF has {pages} pages, over the limit of {limit} pages per document; send fewer pages (split the document or choose a page range) or raise the limit (--max-pdf-pages)")]
    TooManyPages {
        name: String,
        pages: usize,
        limit: usize,
    },
    #[error("{name}: page {page} does not exist; the document has {page_count} pages")]
    NoSuchPage {
        name: String,
        page: usize,
        page_count: usize,
    },
    #[error("{name}: page {page} at {dpi} dpi would be {width}x{height} = {pixels} pixels, over the limit of {limit} pixels per page; render at a lower resolution (--pdf-dpi) or raise the limit")]
    PageTooLarge {
        name: String,
        page: usize,
        dpi: f32,
        width: u64,
        height: u64,
        pixels: u64,
        limit: u64,
    },
    #[error("{name}: page {page} did not finish rendering within {seconds} s (the per-page time limit); the page is too complex: send it as an image or raise the limit")]
    Timeout {
        name: String,
        page: usize,
        seconds: f64,
    },
    #[error(
        "{name}: page {page} cannot be rendered ({detail}); send the page as an image instead"
    )]
    RenderFailed {
        name: String,
        page: usize,
        detail: String,
    },
    #[error("PDF resolution {dpi} dpi is not usable; give a positive number of dots per inch such as 144")]
    BadDpi { dpi: f32 },
    #[error(
        "page range `{spec}`: {problem}; write pages as 1-based numbers and ranges, e.g. `1-3,7`"
    )]
    PageRange { spec: String, problem: String },
}
