//! Image URLs → image bytes (landscape §5.3): `data:` base64 URLs always; `file://` only under
//! `--allowed-local-media-path` (canonicalized, so `..` and symlinks cannot leave it); `http(s)`
//! only with `--allow-remote-images` (`remote`). Remote images are fetched first, on the request's
//! task ([`MediaPolicy::fetch_remote`]); [`MediaPolicy::load`] then runs on a blocking thread (it
//! reads files).

mod remote;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use dsvl::engine::ImageSource;
use dsvl::pdf::{PdfDocument, PdfError, PdfLimits};

use crate::error::ApiError;
use crate::openai::convert::{ImageRef, Turn};
use crate::openai::request::FilePart;

pub use remote::{RemoteImages, MAX_REDIRECTS};

/// Where images may come from.
#[derive(Debug, Clone, Default)]
pub struct MediaPolicy {
    /// Canonical directory that `file://` URLs must resolve into; `None`: `file://` refused.
    pub allowed_local_media_path: Option<PathBuf>,
    /// How `http(s)` URLs are fetched; `None`: they are refused.
    pub remote: Option<RemoteImages>,
    /// How PDF file parts become images.
    pub pdf: PdfPolicy,
}

/// `dsvl serve --pdf-dpi` default: 144 dpi makes an A4 page 1191x1684 pixels, enough for body
/// text to stay legible after the vision tower's resize.
pub const DEFAULT_PDF_DPI: f32 = 144.0;
/// `dsvl serve --max-pdf-pages` default.
pub const DEFAULT_MAX_PDF_PAGES: usize = 16;

/// How PDF file parts become images: every page, in order, rendered at `dpi` under `limits`.
#[derive(Debug, Clone)]
pub struct PdfPolicy {
    pub dpi: f32,
    pub limits: PdfLimits,
}

impl Default for PdfPolicy {
    fn default() -> Self {
        Self {
            dpi: DEFAULT_PDF_DPI,
            limits: PdfLimits {
                max_pages: DEFAULT_MAX_PDF_PAGES,
                ..PdfLimits::default()
            },
        }
    }
}

impl PdfPolicy {
    /// Opens the PDF of a file part (`param`: the part's JSON path) from its `file_data` URL,
    /// checking its page count; pages are rendered later, by [`MediaPolicy::load`].
    pub fn open(&self, param: &str, file: &FilePart) -> Result<Arc<PdfDocument>, ApiError> {
        if file.file_id.is_some() {
            return Err(ApiError::invalid(
                format!("{param}.file.file_id"),
                format!(
                    "{param}: `file_id` is not supported (this server has no Files API); send the \
                     file inline as \"file_data\": \"data:application/pdf;base64,...\""
                ),
            )
            .with_code("unsupported_file_id"));
        }
        let bad_data = |message: String| {
            ApiError::invalid(
                format!("{param}.file.file_data"),
                format!("{param}: {message}"),
            )
            .with_code("invalid_file")
        };
        let Some(data) = &file.file_data else {
            return Err(bad_data(
                "a file part needs `file_data`, the PDF as data:application/pdf;base64,...".into(),
            ));
        };
        let Some(rest) = data.trim().strip_prefix("data:") else {
            return Err(bad_data(
                "`file_data` must be a data URL: data:application/pdf;base64,...".into(),
            ));
        };
        let media_type = rest.split([';', ',']).next().unwrap_or_default();
        if !(media_type.is_empty() || media_type.eq_ignore_ascii_case("application/pdf")) {
            return Err(bad_data(format!(
                "file parts take PDF documents only (application/pdf), not {media_type}; send \
                 images as image_url parts"
            )));
        }
        let bytes = decode_data_url(rest).map_err(bad_data)?;
        let name = match file.filename.as_deref().map(str::trim) {
            Some(f) if !f.is_empty() => format!("{param} ({f})"),
            _ => param.to_owned(),
        };
        PdfDocument::from_bytes(bytes, &name, &self.limits)
            .map(Arc::new)
            .map_err(|e| pdf_error(param, e))
    }
}

/// A PDF error about the part at `param`: 413 for a page over the pixel limit, else 400.
pub fn pdf_error(param: &str, e: PdfError) -> ApiError {
    let message = e.to_string();
    match e {
        PdfError::PageTooLarge { .. } => {
            ApiError::payload_too_large_param(param, message).with_code("pdf_page_too_large")
        }
        PdfError::TooManyPages { .. } => {
            ApiError::invalid(param, message).with_code("too_many_pdf_pages")
        }
        PdfError::Encrypted { .. } => ApiError::invalid(param, message).with_code("encrypted_pdf"),
        _ => ApiError::invalid(param, message).with_code("invalid_pdf"),
    }
}

/// Standard alphabet, padding optional (clients differ).
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

impl MediaPolicy {
    /// Downloads every `http(s)` image of `turns` into its `fetched` field, one after another.
    /// Does nothing when remote images are off ([`MediaPolicy::load`] refuses them then).
    pub async fn fetch_remote(&self, turns: &mut [Turn]) -> Result<(), ApiError> {
        let Some(remote) = &self.remote else {
            return Ok(());
        };
        for img in turns.iter_mut().flat_map(|t| t.images.iter_mut()) {
            if is_remote(&img.url) && img.fetched.is_none() {
                img.fetched = Some(remote.fetch(img).await?);
            }
        }
        Ok(())
    }

    /// Loads one image part. The returned source is named by the part's JSON path, so decode
    /// errors from the engine point at it.
    pub fn load(&self, img: &ImageRef) -> Result<ImageSource, ApiError> {
        if let Some(page) = &img.pdf_page {
            let image = page
                .doc
                .render(page.index, self.pdf.dpi)
                .map_err(|e| pdf_error(&img.param, e))?;
            return Ok(ImageSource::Rendered {
                name: img.param.clone(),
                image: Arc::new(image),
            });
        }
        let url = img.url.trim();
        let data = if let Some(rest) = url.strip_prefix("data:") {
            decode_data_url(rest).map_err(|m| invalid(img, m))?
        } else if let Some(rest) = url.strip_prefix("file://") {
            self.read_local(rest).map_err(|m| invalid(img, m))?
        } else if is_remote(url) {
            match (&self.remote, &img.fetched) {
                (None, _) => {
                    return Err(invalid(
                        img,
                        "http(s) image URLs are disabled on this server (start it with \
                         --allow-remote-images); send the image inline as a \
                         data:image/...;base64,... URL",
                    ))
                }
                (Some(_), Some(bytes)) => bytes.clone(),
                (Some(_), None) => {
                    return Err(ApiError::internal(format!(
                        "{}: remote image was not fetched before loading",
                        img.param
                    )))
                }
            }
        } else {
            return Err(invalid(
                img,
                "unsupported image URL; send a data:image/png;base64,... URL",
            ));
        };
        Ok(ImageSource::Bytes {
            name: img.param.clone(),
            data,
        })
    }

    fn read_local(&self, rest: &str) -> Result<Vec<u8>, String> {
        let Some(root) = &self.allowed_local_media_path else {
            return Err(
                "file:// URLs are disabled; start the server with an allowed local media path"
                    .into(),
            );
        };
        // `file:///abs/path` or `file://localhost/abs/path`.
        let raw = rest.strip_prefix("localhost").unwrap_or(rest);
        let path = PathBuf::from(percent_decode(raw)?);
        if !path.is_absolute() {
            return Err("a file:// URL needs an absolute path (file:///dir/image.png)".into());
        }
        let real = path
            .canonicalize()
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        if !real.starts_with(root) {
            return Err(format!(
                "{} is outside the allowed media directory",
                path.display()
            ));
        }
        std::fs::read(&real).map_err(|e| format!("cannot read {}: {e}", path.display()))
    }
}

/// `http://` or `https://`, in any letter case.
fn is_remote(url: &str) -> bool {
    let url = url.trim_start();
    ["http://", "https://"].iter().any(|p| {
        url.get(..p.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(p))
    })
}

fn invalid(img: &ImageRef, message: impl std::fmt::Display) -> ApiError {
    ApiError::invalid(
        format!("{}.image_url.url", img.param),
        format!("{}: {message}", img.param),
    )
    .with_code("invalid_image_url")
}

/// `data:[<mediatype>];base64,<payload>` (after the `data:` prefix).
fn decode_data_url(rest: &str) -> Result<Vec<u8>, String> {
    let Some((header, payload)) = rest.split_once(',') else {
        return Err("malformed data URL: no ',' before the payload".into());
    };
    if !header.ends_with(";base64") {
        return Err("only base64 data URLs are supported (data:image/png;base64,...)".into());
    }
    let clean: Vec<u8> = payload
        .bytes()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    BASE64
        .decode(clean)
        .map_err(|e| format!("invalid base64 in data URL ({e})"))
}

/// `%XX` escapes of a URL path.
fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .ok_or("truncated %-escape in file URL")?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| "bad %-escape in file URL")?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "file URL is not UTF-8".into())
}

/// Canonicalizes the allowed media directory once, at startup.
pub fn canonical_root(dir: &Path) -> anyhow::Result<PathBuf> {
    use anyhow::Context as _;
    dir.canonicalize()
        .with_context(|| format!("allowed local media path {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_urls_and_escapes() {
        assert_eq!(decode_data_url("image/png;base64,aGk=").unwrap(), b"hi");
        assert_eq!(decode_data_url("image/png;base64,aGk").unwrap(), b"hi");
        assert!(decode_data_url("image/png,hi").is_err());
        assert!(decode_data_url("image/png;base64,@@@").is_err());
        assert_eq!(percent_decode("/a%20b/c.png").unwrap(), "/a b/c.png");
        assert!(percent_decode("/a%2").is_err());
    }
}
