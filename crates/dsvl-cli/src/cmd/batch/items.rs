//! What a batch is made of: each input expanded into items with stable ids (files as given,
//! folders searched recursively in sorted order, request files one item per line).

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

/// Extensions a folder search picks up when no `--glob` is given: images and PDFs.
pub const EXTENSIONS: &[&str] = &[
    "png", "jpg", "jpeg", "webp", "gif", "bmp", "tif", "tiff", "pdf",
];

/// One unit of work, answered by one output line.
#[derive(Debug, Clone)]
pub struct Item {
    /// Stable and unique within the job: the path as found; `path#page=N` for a PDF page; a
    /// request's `custom_id`. Resuming and sharding go by it.
    pub id: String,
    /// The file it came from.
    pub source: PathBuf,
    pub work: Work,
}

impl Item {
    /// A PDF page's number as users count (from 1).
    pub fn page(&self) -> Option<usize> {
        match self.work {
            Work::PdfPage { page } => Some(page + 1),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub enum Work {
    /// One image file (a missing or unreadable one becomes an error line).
    Image,
    /// One page of a PDF (0-based), rendered when its turn comes.
    PdfPage { page: usize },
    /// A file that could not be expanded into items (a PDF that does not open, pages it does
    /// not have): one error line, and the run goes on.
    Broken(String),
    /// One line of a request file, read again when its turn comes (so a file of a thousand
    /// inline images is never held in memory at once).
    Request {
        line: usize,
        offset: u64,
        len: usize,
    },
}

/// How inputs are picked: `--glob` patterns (matched against the path below the folder given),
/// else image extensions.
pub struct Filter {
    globs: Option<GlobSet>,
}

impl Filter {
    pub fn new(patterns: &[String]) -> anyhow::Result<Self> {
        if patterns.is_empty() {
            return Ok(Self { globs: None });
        }
        let mut set = GlobSetBuilder::new();
        for p in patterns {
            // `*` stops at `/`, `**` crosses folders: `*.png` only at the top, `**/*.png` anywhere.
            let glob = GlobBuilder::new(p)
                .literal_separator(true)
                .case_insensitive(true)
                .build()
                .with_context(|| format!("--glob {p}: not a valid pattern"))?;
            set.add(glob);
        }
        Ok(Self {
            globs: Some(set.build().context("--glob: cannot combine the patterns")?),
        })
    }

    fn keeps(&self, relative: &Path) -> bool {
        match &self.globs {
            Some(set) => set.is_match(relative),
            None => relative
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str())),
        }
    }
}

/// Whether `path` is a request file (OpenAI Batch API input: JSON lines).
pub fn is_request_file(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("jsonl"))
}

/// Whether `path` names a PDF (by its extension; the renderer checks the content).
pub fn is_pdf(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("pdf"))
}

/// Which pages of each PDF, and the limits a document is opened with.
pub struct PdfSelection {
    /// `--pages` as given (`1-3,7`); `None`: every page.
    pub pages: Option<String>,
    pub limits: dsvl::pdf::PdfLimits,
}

/// Files as given, folders searched recursively (sorted, through `filter`), PDFs one item per
/// selected page, request files one item per line. An id met twice is kept once.
pub fn collect(
    inputs: &[PathBuf],
    filter: &Filter,
    pdf: &PdfSelection,
) -> anyhow::Result<Vec<Item>> {
    let mut items = Vec::new();
    let mut seen = HashSet::new();
    for input in inputs {
        let found = if input.is_dir() {
            let mut files = Vec::new();
            walk(input, input, filter, &mut files)
                .with_context(|| format!("cannot list the folder {}", input.display()))?;
            files.sort();
            files
                .into_iter()
                .flat_map(|path| file_items(path, pdf))
                .collect()
        } else if is_request_file(input) {
            request_lines(input)?
        } else {
            // A missing file is an item too: it becomes an error line, and the run goes on.
            file_items(input.clone(), pdf)
        };
        items.extend(found.into_iter().filter(|i| seen.insert(i.id.clone())));
    }
    Ok(items)
}

/// An image file's one item, or a PDF's pages (an error item when it cannot be opened).
fn file_items(path: PathBuf, pdf: &PdfSelection) -> Vec<Item> {
    let id = path.display().to_string();
    if !is_pdf(&path) {
        return vec![Item {
            id,
            source: path,
            work: Work::Image,
        }];
    }
    let pages = std::fs::read(&path)
        .map_err(|e| format!("cannot read {id}: {e}"))
        .and_then(|bytes| {
            let doc = dsvl::pdf::PdfDocument::from_bytes(bytes, &id, &pdf.limits)
                .map_err(|e| e.to_string())?;
            match &pdf.pages {
                None => Ok((0..doc.page_count()).collect()),
                Some(spec) => dsvl::pdf::parse_page_ranges(spec, doc.page_count())
                    .map_err(|e| format!("{id}: {e}")),
            }
        });
    match pages {
        Ok(pages) => pages
            .into_iter()
            .map(|page| Item {
                id: format!("{id}#page={}", page + 1),
                source: path.clone(),
                work: Work::PdfPage { page },
            })
            .collect(),
        Err(message) => vec![Item {
            id,
            source: path,
            work: Work::Broken(message),
        }],
    }
}

fn walk(root: &Path, dir: &Path, filter: &Filter, found: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            walk(root, &path, filter, found)?;
        } else if filter.keeps(path.strip_prefix(root).unwrap_or(&path)) {
            found.push(path);
        }
    }
    Ok(())
}

/// One item per non-blank line of an OpenAI Batch API input file, by `custom_id` (which must be
/// there and unique: it is how results are matched, resumed and sharded). Only the ids are
/// kept; each line is read again when its turn comes.
fn request_lines(path: &Path) -> anyhow::Result<Vec<Item>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut reader = BufReader::new(file);
    let (mut items, mut first_line) = (Vec::new(), HashMap::new());
    let (mut offset, mut line_no, mut buf) = (0u64, 0usize, Vec::new());
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        line_no += 1;
        let start = offset;
        offset += n as u64;
        if buf.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let at = || format!("{} line {line_no}", path.display());
        let v: serde_json::Value = serde_json::from_slice(&buf).with_context(|| {
            format!(
                "{}: not JSON; a request file has one request per line: \
                 {{\"custom_id\": …, \"method\": \"POST\", \"url\": \"/v1/chat/completions\", \"body\": {{…}}}}",
                at()
            )
        })?;
        let Some(id) = v.get("custom_id").and_then(|c| c.as_str()) else {
            bail!(
                "{}: no \"custom_id\" string; every request needs a unique one",
                at()
            );
        };
        if let Some(first) = first_line.insert(id.to_string(), line_no) {
            bail!(
                "{}: custom_id {id:?} is also on line {first}; custom ids must be unique",
                at()
            );
        }
        items.push(Item {
            id: id.to_string(),
            source: path.to_path_buf(),
            work: Work::Request {
                line: line_no,
                offset: start,
                len: n,
            },
        });
    }
    Ok(items)
}

/// The text of a request line found by [`collect`].
pub fn read_request(path: &Path, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let mut file = std::fs::File::open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    let mut buf = vec![0; len];
    file.read_exact(&mut buf)?;
    Ok(buf)
}

/// FNV-1a, 64 bits: the same on every machine and in every release (unlike std's hasher).
pub fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_stable_disjoint_and_cover_the_job() {
        // Fixed values: the hash must never change, or resumed shards would take other items.
        assert_eq!(fnv1a(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a("a"), 0xaf63_dc4c_8601_ec8c);
        let ids: Vec<String> = (0..100).map(|i| format!("scans/page-{i:03}.png")).collect();
        let shards: Vec<Vec<&String>> = (0..4)
            .map(|s| ids.iter().filter(|id| fnv1a(id) % 4 == s).collect())
            .collect();
        assert_eq!(shards.iter().map(Vec::len).sum::<usize>(), 100);
        assert!(
            shards.iter().all(|s| s.len() > 10),
            "{:?}",
            shards.iter().map(Vec::len).collect::<Vec<_>>()
        );
    }

    #[test]
    fn globs_match_below_the_folder_and_stop_at_separators() {
        let f = Filter::new(&["*.PNG".into(), "scans/**/*.jpg".into()]).unwrap();
        assert!(f.keeps(Path::new("a.png")));
        assert!(!f.keeps(Path::new("nested/a.png")));
        assert!(f.keeps(Path::new("scans/2024/03/r.jpg")));
        assert!(!f.keeps(Path::new("other/r.jpg")));
        let default = Filter::new(&[]).unwrap();
        assert!(default.keeps(Path::new("deep/x.JPEG")));
        assert!(!default.keeps(Path::new("notes.txt")));
        assert!(Filter::new(&["[".into()]).is_err());
    }

    #[test]
    fn request_lines_are_found_by_offset_and_ids_must_be_unique() {
        let dir = std::env::temp_dir().join(format!("dsvl-items-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("in.jsonl");
        let a = r#"{"custom_id": "a", "body": {}}"#;
        let b = r#"{"custom_id": "b", "body": {"x": "é"}}"#;
        std::fs::write(&path, format!("{a}\n\n{b}")).unwrap();
        let items = request_lines(&path).unwrap();
        assert_eq!(items.len(), 2);
        for (item, text) in items.iter().zip([a, b]) {
            let Work::Request { offset, len, .. } = item.work else {
                panic!("{item:?}")
            };
            let got = read_request(&path, offset, len).unwrap();
            assert_eq!(String::from_utf8(got).unwrap().trim_end(), text);
        }
        std::fs::write(&path, format!("{a}\n{a}\n")).unwrap();
        let e = request_lines(&path).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("also on line 1"), "{e}");
        std::fs::write(&path, "{\"body\": {}}\n").unwrap();
        assert!(request_lines(&path)
            .unwrap_err()
            .to_string()
            .contains("custom_id"));
    }
}
