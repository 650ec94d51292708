//! Helpers shared by the fuzz targets (`fuzz_targets/`): the fixture models they run against,
//! a scratch directory for the inputs that the library reads from files, and input splitting.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use dsvl::models::Family;
use dsvl::prompt::PromptTokenizer;

/// `crates/dsvl/tests/fixtures/<rel>`.
pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../crates/dsvl/tests/fixtures")
        .join(rel)
}

/// A fixture model's family (config resolved, no weights) and tokenizer.
pub struct Model {
    pub family: Box<dyn Family>,
    pub tok: PromptTokenizer,
}

fn load(rel: &str) -> Model {
    let dir = fixture(rel);
    let family = dsvl::models::from_dir(&dir).expect("fixture model config resolves");
    let tok = family.tokenizer().expect("fixture tokenizer loads");
    Model { family, tok }
}

/// The tiny DeepSeek-VL (v1, hybrid tower) fixture.
pub fn v1() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| load("v1/models/hybrid-tiny"))
}

/// The tiny DeepSeek-VL2 fixture.
pub fn v2() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| load("v2/models/vl2-tiny-random"))
}

/// An empty directory of this process's own (emptied again on each call), for inputs the
/// library only reads from files (checkpoints, configs, tokenizers).
pub fn scratch_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir =
        DIR.get_or_init(|| std::env::temp_dir().join(format!("dsvl-fuzz-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).expect("temporary directory is writable");
    dir
}

/// Splits `data` at NUL bytes into at most `n` parts (the last part keeps any further NULs).
pub fn split_nul(data: &[u8], n: usize) -> Vec<&[u8]> {
    data.splitn(n, |&b| b == 0).collect()
}

/// Lets a panic raised inside the `tokenizers` crate unwind instead of aborting the run:
/// `prompt::tokenizer` catches those (the crate `expect`s on some malformed files) and turns them
/// into errors, so they are not findings. Any other panic still aborts (libFuzzer's hook), and a
/// `tokenizers` panic the library does not catch still fails the input when it unwinds out of
/// the target.
pub fn tolerate_caught_tokenizers_panics() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let abort = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let inside = info
                .location()
                .is_some_and(|l| l.file().contains("/tokenizers-"));
            if !inside {
                abort(info);
            }
        }));
    });
}
