//! PDFs given where images go (`--image report.pdf`, chat's `/image report.pdf`): each page
//! becomes one image, in order, rendered at `--pdf-dpi`.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use dsvl::engine::ImageSource;
use dsvl::pdf::{looks_like_pdf, PdfDocument};

use crate::args::PdfArgs;

/// Whether the file at `path` is a PDF, by its first bytes (`%PDF-`), whatever its name.
pub fn is_pdf(path: &Path) -> bool {
    let mut head = [0u8; 5];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok_and(|()| looks_like_pdf(&head))
}

/// `images` with every PDF file replaced by its pages, rendered now (so a bad page is reported
/// before the model loads). Other images are left for the pipeline to decode.
pub fn expand_pdfs(
    images: Vec<ImageSource>,
    args: &PdfArgs,
    max_image_pixels: u64,
) -> anyhow::Result<Vec<ImageSource>> {
    let mut out = Vec::with_capacity(images.len());
    for img in images {
        match img {
            ImageSource::Path(p) if is_pdf(&p) => {
                out.extend(pdf_pages(&p, args, max_image_pixels)?)
            }
            other => out.push(other),
        }
    }
    Ok(out)
}

/// The pages of the PDF at `path` as images named `"{path} page {n}"`.
pub fn pdf_pages(
    path: &Path,
    args: &PdfArgs,
    max_image_pixels: u64,
) -> anyhow::Result<Vec<ImageSource>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let doc = PdfDocument::from_bytes(
        bytes,
        &path.display().to_string(),
        &args.limits(max_image_pixels),
    )?;
    (0..doc.page_count())
        .map(|page| {
            Ok(ImageSource::Rendered {
                name: format!("{} page {}", path.display(), page + 1),
                image: Arc::new(doc.render(page, args.pdf_dpi)?),
            })
        })
        .collect()
}
