//! PDF documents as images: each page rendered to RGB8 on a white background, so that a PDF
//! flows through the same image pipeline as a photo (`models::ImageSource::Rendered`).
//!
//! Rendering is hayro's (pure Rust). A document is opened once ([`PdfDocument::from_bytes`]:
//! checks the header, the encryption, the page count against [`PdfLimits::max_pages`]); pages
//! are rendered one at a time ([`PdfDocument::render`]: the pixel count at the asked DPI is
//! checked against [`PdfLimits::max_page_pixels`] before anything is drawn, and the render runs
//! under [`PdfLimits::page_timeout`]). [`parse_page_ranges`] reads what users write ("1-3,7").

mod document;
mod error;
mod ranges;

pub use document::{looks_like_pdf, PdfDocument, PdfLimits};
pub use error::PdfError;
pub use ranges::parse_page_ranges;
