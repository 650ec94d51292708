//! Opening a PDF and rendering its pages (hayro).

use std::sync::{mpsc, Arc};
use std::time::Duration;

use hayro::hayro_interpret::util::TransformExt;
use hayro::hayro_interpret::InterpreterSettings;
use hayro::hayro_syntax::{DecryptionError, LoadPdfError, Pdf};
use hayro::kurbo::Affine;
use hayro::vello_cpu::color::palette::css::WHITE;
use hayro::vello_cpu::{Pixmap, RasterizerSettings, RenderContext, Resources, TargetInit};
use hayro::{RenderCache, RenderSettings};

use super::PdfError;
use crate::image::RgbImage;
use crate::models::ImageSource;

/// Limits on one document, checked before the work they bound.
#[derive(Debug, Clone, PartialEq)]
pub struct PdfLimits {
    /// Most pages a document may have; checked when it is opened. Default 100.
    pub max_pages: usize,
    /// Most pixels one rendered page may have (width × height at the asked DPI); checked before
    /// rendering. Default 50 million, the image decoder's own limit
    /// ([`crate::image::DEFAULT_MAX_PIXELS`]): an A0 poster at 144 dpi is 32 million, an A4 page
    /// 2 million.
    pub max_page_pixels: u64,
    /// Longest one page may take to render. Default 30 s (an ordinary page takes milliseconds).
    /// hayro cannot be interrupted: a page past its time is reported as
    /// [`PdfError::Timeout`] at once while its worker thread is left to finish in the
    /// background and its result is dropped.
    pub page_timeout: Duration,
}

impl Default for PdfLimits {
    fn default() -> Self {
        Self {
            max_pages: 100,
            max_page_pixels: crate::image::DEFAULT_MAX_PIXELS,
            page_timeout: Duration::from_secs(30),
        }
    }
}

/// Whether `bytes` start like a PDF file (`%PDF-`).
pub fn looks_like_pdf(bytes: &[u8]) -> bool {
    bytes.starts_with(b"%PDF-")
}

/// Whether the file's last KiB holds `startxref`, as every complete PDF's end does.
fn ends_like_a_pdf(bytes: &[u8]) -> bool {
    let tail = &bytes[bytes.len().saturating_sub(1024)..];
    tail.windows(9).any(|w| w == b"startxref")
}

/// hayro draws into buffers whose sides are `u16`.
const MAX_SIDE: u64 = u16::MAX as u64;

/// An opened PDF: its pages are known and counted; each is rendered on demand.
pub struct PdfDocument {
    /// Shared with the render worker threads (a thread past its time limit keeps its copy).
    pdf: Arc<Pdf>,
    name: String,
    /// Each page's size in points `(width, height)` as displayed: crop box, `/Rotate` applied.
    page_sizes: Vec<(f32, f32)>,
    limits: PdfLimits,
}

impl std::fmt::Debug for PdfDocument {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PdfDocument")
            .field("name", &self.name)
            .field("pages", &self.page_sizes.len())
            .field("limits", &self.limits)
            .finish()
    }
}

impl PdfDocument {
    /// Opens a PDF held in memory; `name` names it in errors. Fails when the bytes are not a
    /// PDF or cannot be parsed, when the document needs a password (a document encrypted with an
    /// empty user password, one that only restricts printing or copying, opens), when it has no
    /// pages, or more than `limits.max_pages`.
    pub fn from_bytes(bytes: Vec<u8>, name: &str, limits: &PdfLimits) -> Result<Self, PdfError> {
        let name = name.to_owned();
        if !looks_like_pdf(&bytes) {
            return Err(PdfError::NotAPdf { name });
        }
        let complete = ends_like_a_pdf(&bytes);
        let pdf = match Pdf::new(Arc::new(bytes)) {
            Ok(pdf) => pdf,
            Err(LoadPdfError::Decryption(e)) => {
                let detail = match e {
                    DecryptionError::PasswordProtected => "it needs a password",
                    DecryptionError::UnsupportedAlgorithm => "with an unsupported method",
                    DecryptionError::InvalidEncryption | DecryptionError::MissingIDEntry => {
                        "and its encryption dictionary is damaged"
                    }
                };
                return Err(PdfError::Encrypted {
                    name,
                    detail: detail.into(),
                });
            }
            Err(LoadPdfError::Invalid) => {
                return Err(PdfError::Broken {
                    name,
                    detail: "no readable cross-reference table or page tree".into(),
                })
            }
        };
        let page_sizes: Vec<(f32, f32)> =
            pdf.pages().iter().map(|p| p.render_dimensions()).collect();
        if page_sizes.is_empty() && !complete {
            // hayro's recovery found objects but no page: the file was cut short.
            return Err(PdfError::Broken {
                name,
                detail: "no pages, and the file ends without `startxref`: it is truncated".into(),
            });
        }
        if page_sizes.is_empty() {
            return Err(PdfError::NoPages { name });
        }
        if page_sizes.len() > limits.max_pages {
            return Err(PdfError::TooManyPages {
                name,
                pages: page_sizes.len(),
                limit: limits.max_pages,
            });
        }
        Ok(Self {
            pdf: Arc::new(pdf),
            name,
            page_sizes,
            limits: limits.clone(),
        })
    }

    pub fn page_count(&self) -> usize {
        self.page_sizes.len()
    }

    /// The name given to [`PdfDocument::from_bytes`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Page `page`'s (0-based) displayed size in points, `(width, height)`: its crop box, turned
    /// by its `/Rotate`.
    pub fn page_size_points(&self, page: usize) -> Result<(f32, f32), PdfError> {
        self.page_sizes
            .get(page)
            .copied()
            .ok_or_else(|| PdfError::NoSuchPage {
                name: self.name.clone(),
                page: page + 1,
                page_count: self.page_count(),
            })
    }

    /// Page `page`'s (0-based) size in pixels at `dpi`: `ceil(points × dpi / 72)` per side (as
    /// poppler's `pdftoppm` sizes its output), at least 1.
    pub fn page_size_pixels(&self, page: usize, dpi: f32) -> Result<(u64, u64), PdfError> {
        if !(dpi.is_finite() && dpi > 0.0) {
            return Err(PdfError::BadDpi { dpi });
        }
        let (w, h) = self.page_size_points(page)?;
        // The small slack keeps 288 pt at 50 dpi (199.99998 in f32) at 200 pixels.
        let px = |pt: f32| {
            ((f64::from(pt) * f64::from(dpi) / 72.0 - 1e-3)
                .ceil()
                .max(1.0)) as u64
        };
        Ok((px(w), px(h)))
    }

    /// Renders page `page` (0-based) at `dpi` to RGB8 on a white background; its size is
    /// [`PdfDocument::page_size_pixels`]. The pixel count is checked against the limit before
    /// anything is drawn; the render runs on a worker thread under the per-page time limit.
    pub fn render(&self, page: usize, dpi: f32) -> Result<RgbImage, PdfError> {
        let (width, height) = self.page_size_pixels(page, dpi)?;
        let pixels = width * height;
        if pixels > self.limits.max_page_pixels || width > MAX_SIDE || height > MAX_SIDE {
            return Err(PdfError::PageTooLarge {
                name: self.name.clone(),
                page: page + 1,
                dpi,
                width,
                height,
                pixels,
                limit: self.limits.max_page_pixels.min(MAX_SIDE * MAX_SIDE),
            });
        }
        let failed = |detail: String| PdfError::RenderFailed {
            name: self.name.clone(),
            page: page + 1,
            detail,
        };
        let (tx, rx) = mpsc::sync_channel(1);
        let pdf = Arc::clone(&self.pdf);
        let scale = f64::from(dpi) / 72.0;
        let spawned = std::thread::Builder::new()
            .name(format!("pdf-page-{}", page + 1))
            .spawn(move || {
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    render_page(&pdf, page, scale, width as u16, height as u16)
                }));
                // The receiver is gone when the caller stopped waiting (time limit).
                let _ = tx.send(result.map_err(|panic| panic_message(&panic)));
            });
        if let Err(e) = spawned {
            return Err(failed(format!("cannot start a render thread: {e}")));
        }
        match rx.recv_timeout(self.limits.page_timeout) {
            Ok(Ok(image)) => Ok(image),
            Ok(Err(panic)) => Err(failed(format!("the renderer stopped: {panic}"))),
            Err(mpsc::RecvTimeoutError::Timeout) => Err(PdfError::Timeout {
                name: self.name.clone(),
                page: page + 1,
                seconds: self.limits.page_timeout.as_secs_f64(),
            }),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                Err(failed("the render thread ended without a result".into()))
            }
        }
    }
}

impl PdfDocument {
    /// Every page rendered at `dpi`, in order, as images for a conversation, each named
    /// `"{name} page {n}"`.
    pub fn image_sources(&self, dpi: f32) -> Result<Vec<ImageSource>, PdfError> {
        (0..self.page_count())
            .map(|page| {
                Ok(ImageSource::Rendered {
                    name: format!("{} page {}", self.name, page + 1),
                    image: Arc::new(self.render(page, dpi)?),
                })
            })
            .collect()
    }
}

/// hayro's `render` with our own buffer size (its own truncates `points × scale`).
fn render_page(pdf: &Pdf, page: usize, scale: f64, width: u16, height: u16) -> RgbImage {
    let page = &pdf.pages()[page];
    let cache = RenderCache::new();
    let mut ctx = RenderContext::new(width, height);
    let transform = Affine::scale(scale) * page.initial_transform(true).to_kurbo();
    hayro::render_into(
        page,
        &cache,
        &InterpreterSettings::default(),
        &RenderSettings::default(),
        &mut ctx,
        transform,
    );
    ctx.flush();
    let mut pixmap = Pixmap::new(width, height);
    ctx.render_with(
        &mut pixmap,
        &mut Resources::default(),
        RasterizerSettings {
            target_init: TargetInit::Clear(WHITE),
            ..Default::default()
        },
    );
    // Premultiplied RGBA over an opaque white background: alpha is 255 everywhere, so the colour
    // channels are the plain values.
    let data = pixmap
        .data_as_u8_slice()
        .chunks_exact(4)
        .flat_map(|px| [px[0], px[1], px[2]])
        .collect();
    RgbImage {
        width: u32::from(width),
        height: u32::from(height),
        data,
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>() {}

    #[test]
    fn a_document_can_move_between_threads() {
        assert_send::<PdfDocument>();
    }

    #[test]
    fn only_the_pdf_header_looks_like_a_pdf() {
        assert!(looks_like_pdf(b"%PDF-1.7\n"));
        assert!(!looks_like_pdf(b"\x89PNG\r\n"));
        assert!(!looks_like_pdf(b"%PD"));
    }
}
