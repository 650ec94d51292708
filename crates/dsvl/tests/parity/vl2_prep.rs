//! DeepSeek-VL2 host-side preprocessing against the official processor (fixtures/vl2 README §4–6): for every
//! case, dynamic tiling (v2 §2: best resolution, `images_spatial_crop`, the SHA-256 of every global and local tile,
//! bit-exact) and the prompt ids (v2 §6: `input_ids`, `image_token_spans`, exact).

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, ensure, Context};
use dsvl::image::{
    self, tile_image, vl2_image_tokens, vl2_token_grid, TiledImage, DEFAULT_MAX_PIXELS,
};
use dsvl::prompt::vl2::{build_vl2_ids, vl2_cropping, vl2_role, Vl2Turn, VL2_SPECIAL_TOKENS};
use dsvl::prompt::PromptTokenizer;
use dsvl::Error;
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// The VL2 fixture root: `$DSVL_VL2_FIXTURES`, else our own `tests/fixtures/v2` when it exists, else the shared
/// reference set next to the workspace. A missing directory fails the test (never a silent skip).
fn fixtures() -> anyhow::Result<PathBuf> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = match std::env::var_os("DSVL_VL2_FIXTURES") {
        Some(d) => PathBuf::from(d),
        None => {
            let ours = manifest.join("tests/fixtures/v2");
            if ours.is_dir() {
                ours
            } else {
                manifest.join("../../../shared/fixtures/vl2")
            }
        }
    };
    ensure!(
        dir.join("cases").is_dir() && dir.join("ref").is_dir(),
        "VL2 fixtures not found at {} (no cases/ and ref/ there); set DSVL_VL2_FIXTURES to the fixture directory",
        dir.display()
    );
    Ok(dir)
}

#[derive(Deserialize)]
struct CaseMessage {
    role: String,
    content: String,
    #[serde(default)]
    images: Vec<String>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    model: String,
    messages: Vec<CaseMessage>,
}

#[derive(Deserialize)]
struct SpecialIds {
    bos: u32,
    eos: u32,
    image: u32,
}

#[derive(Deserialize)]
struct RefImage {
    file: String,
    file_sha256: String,
    size_wh: [u32; 2],
    best_resolution_wh: [u32; 2],
    images_spatial_crop: [usize; 2],
    num_tiles: usize,
    first_tile: usize,
    num_image_tokens: usize,
    token_span: [usize; 2],
}

#[derive(Deserialize)]
struct RefTile {
    image: usize,
    kind: String,
    row: Option<u32>,
    col: Option<u32>,
    crop_box_ltrb: Option<[u32; 4]>,
    u8_hwc_sha256: String,
}

#[derive(Deserialize)]
struct Ref {
    special_ids: SpecialIds,
    cropping: bool,
    num_images: usize,
    num_tiles: usize,
    prompt_len: usize,
    input_ids: Vec<u32>,
    image_token_spans: Vec<[usize; 2]>,
    images: Vec<RefImage>,
    tiles: Vec<RefTile>,
}

/// The `processor_config.json` fields the preprocessing needs (v2 §1.4).
#[derive(Deserialize)]
struct ProcessorConfig {
    candidate_resolutions: Vec<[u32; 2]>,
    patch_size: u32,
    downsample_ratio: u32,
    image_mean: [f64; 3],
    image_token: String,
}

impl ProcessorConfig {
    fn candidates(&self) -> Vec<(u32, u32)> {
        self.candidate_resolutions
            .iter()
            .map(|&[w, h]| (w, h))
            .collect()
    }
    /// ref: `self.image_size = candidate_resolutions[0][0]`.
    fn tile(&self) -> anyhow::Result<u32> {
        self.candidate_resolutions
            .first()
            .map(|c| c[0])
            .ok_or_else(|| anyhow!("processor_config.json: empty candidate_resolutions"))
    }
    /// ref: `tuple(int(x * 255) for x in image_mean)` = (127, 127, 127).
    fn pad_color(&self) -> [u8; 3] {
        self.image_mean.map(|m| (m * 255.0) as u8)
    }
    fn grid(&self) -> anyhow::Result<usize> {
        Ok(vl2_token_grid(
            self.tile()?,
            self.patch_size,
            self.downsample_ratio,
        ))
    }
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> anyhow::Result<T> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A model directory's VL2 tokenizer, set up as `DeepseekVLV2Processor.__init__` does.
fn tokenizer(model_dir: &Path, image_token: &str) -> anyhow::Result<PromptTokenizer> {
    let mut tok = PromptTokenizer::from_files_with_image_token(
        model_dir.join("tokenizer.json"),
        Some(&model_dir.join("tokenizer_config.json")),
        image_token,
    )?;
    tok.ensure_special_tokens(&VL2_SPECIAL_TOKENS);
    Ok(tok)
}

fn case_names(dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir.join("cases"))? {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) == Some("json") {
            let stem = path.file_stem().and_then(|s| s.to_str());
            names.push(
                stem.ok_or_else(|| anyhow!("bad case file name {}", path.display()))?
                    .to_string(),
            );
        }
    }
    names.sort();
    Ok(names)
}

/// Everything our side computes for one case.
struct Prepared {
    /// Decoded `(width, height)` of each image.
    sizes: Vec<(u32, u32)>,
    tiled: Vec<TiledImage>,
    image_tokens: Vec<usize>,
    ids: Vec<u32>,
    spans: Vec<[usize; 2]>,
    cropping: bool,
}

/// Load a case's images, tile them (cropping from the whole conversation's image count) and build its ids.
fn prepare(
    dir: &Path,
    case: &Case,
    proc_cfg: &ProcessorConfig,
    tok: &PromptTokenizer,
) -> anyhow::Result<Prepared> {
    let files: Vec<PathBuf> = case
        .messages
        .iter()
        .flat_map(|m| m.images.iter().map(|rel| dir.join("cases").join(rel)))
        .collect();
    let cropping = vl2_cropping(files.len());
    let (candidates, tile, grid) = (proc_cfg.candidates(), proc_cfg.tile()?, proc_cfg.grid()?);
    let (mut sizes, mut tiled) = (Vec::new(), Vec::new());
    for f in &files {
        let img = image::load(f, DEFAULT_MAX_PIXELS)?;
        sizes.push((img.width, img.height));
        tiled.push(tile_image(
            &img,
            &candidates,
            tile,
            cropping,
            proc_cfg.pad_color(),
        )?);
    }
    let image_tokens: Vec<usize> = tiled
        .iter()
        .map(|t| vl2_image_tokens(t.nw, t.nh, grid))
        .collect();
    let turns = case
        .messages
        .iter()
        .map(
            |m| Ok(Vl2Turn::new(vl2_role(&m.role)?, m.content.clone()).with_images(m.images.len())),
        )
        .collect::<dsvl::Result<Vec<_>>>()?;
    let prompt = build_vl2_ids(tok, &proc_cfg.image_token, &turns, &image_tokens)?;
    Ok(Prepared {
        sizes,
        tiled,
        image_tokens,
        ids: prompt.ids,
        spans: prompt
            .image_spans
            .iter()
            .map(|s| [s.start, s.end])
            .collect(),
        cropping,
    })
}

/// First index where two id lists differ, for readable failures.
fn first_diff(got: &[u32], want: &[u32]) -> String {
    match got.iter().zip(want).position(|(g, w)| g != w) {
        Some(i) => format!(
            "first difference at {i}: got {:?}, want {:?}",
            &got[i..(i + 8).min(got.len())],
            &want[i..(i + 8).min(want.len())]
        ),
        None => format!("lengths differ: got {}, want {}", got.len(), want.len()),
    }
}

fn check_case(dir: &Path, name: &str) -> anyhow::Result<()> {
    let case: Case = read_json(&dir.join(format!("cases/{name}.json")))?;
    let want: Ref = read_json(&dir.join(format!("ref/{name}.json")))?;
    ensure!(
        case.name == name,
        "case file {name} names itself {}",
        case.name
    );
    let model_dir = dir.join("models").join(&case.model);
    let proc_cfg: ProcessorConfig = read_json(&model_dir.join("processor_config.json"))?;
    let tok = tokenizer(&model_dir, &proc_cfg.image_token)?;
    ensure!(
        (tok.bos_id(), tok.eos_id(), tok.image_id())
            == (
                want.special_ids.bos,
                want.special_ids.eos,
                want.special_ids.image
            ),
        "special ids (bos, eos, image) = {:?}, reference {:?}",
        (tok.bos_id(), tok.eos_id(), tok.image_id()),
        (
            want.special_ids.bos,
            want.special_ids.eos,
            want.special_ids.image
        )
    );

    let got = prepare(dir, &case, &proc_cfg, &tok)?;
    let tile = proc_cfg.tile()?;
    ensure!(
        got.cropping == want.cropping,
        "cropping {} != reference {}",
        got.cropping,
        want.cropping
    );
    ensure!(
        got.tiled.len() == want.num_images && want.images.len() == want.num_images,
        "{} images, reference {}",
        got.tiled.len(),
        want.num_images
    );

    // ---- tiling (v2 §2) ----
    let files = case.messages.iter().flat_map(|m| &m.images);
    let mut tile_index = 0;
    for (k, ((t, w), rel)) in got.tiled.iter().zip(&want.images).zip(files).enumerate() {
        let bytes = std::fs::read(dir.join("cases").join(rel))?;
        ensure!(
            sha256_hex(&bytes) == w.file_sha256 && rel.ends_with(&w.file),
            "image {k}: {rel} is not the reference's input {}",
            w.file
        );
        let g = &t.global;
        ensure!(
            g.width == tile && g.height == tile,
            "image {k}: global view {}x{}",
            g.width,
            g.height
        );
        ensure!(
            got.sizes[k] == (w.size_wh[0], w.size_wh[1]),
            "image {k}: decoded size {:?}, reference {:?}",
            got.sizes[k],
            w.size_wh
        );
        let best = t.best_resolution(tile);
        ensure!(
            best == (w.best_resolution_wh[0], w.best_resolution_wh[1]),
            "image {k} ({}): best resolution {best:?}, reference {:?}",
            w.file,
            w.best_resolution_wh
        );
        ensure!(
            [t.nw, t.nh] == w.images_spatial_crop,
            "image {k} ({}): images_spatial_crop {:?}, reference {:?}",
            w.file,
            [t.nw, t.nh],
            w.images_spatial_crop
        );
        ensure!(
            got.image_tokens[k] == w.num_image_tokens,
            "image {k}: {} tokens, reference {}",
            got.image_tokens[k],
            w.num_image_tokens
        );
        ensure!(
            got.spans[k] == w.token_span,
            "image {k}: span {:?}, reference {:?}",
            got.spans[k],
            w.token_span
        );
        ensure!(
            w.first_tile == tile_index && w.num_tiles == 1 + t.tiles.len(),
            "image {k}: tiles {}..+{} , reference {}..+{}",
            tile_index,
            1 + t.tiles.len(),
            w.first_tile,
            w.num_tiles
        );
        for (v, view) in t.views().enumerate() {
            let r = want
                .tiles
                .get(tile_index)
                .ok_or_else(|| anyhow!("reference has only {} tiles", want.tiles.len()))?;
            ensure!(
                r.image == k,
                "tile {tile_index}: reference image {} != {k}",
                r.image
            );
            if v == 0 {
                ensure!(
                    r.kind == "global",
                    "tile {tile_index}: reference kind {}",
                    r.kind
                );
            } else {
                let (row, col) = (((v - 1) / t.nw) as u32, ((v - 1) % t.nw) as u32);
                let bx = [col * tile, row * tile, (col + 1) * tile, (row + 1) * tile];
                ensure!(
                    r.kind == "local" && r.row == Some(row) && r.col == Some(col) && r.crop_box_ltrb == Some(bx),
                    "tile {tile_index}: ours is local (row {row}, col {col}, box {bx:?}), reference {} {:?} {:?} {:?}",
                    r.kind,
                    r.row,
                    r.col,
                    r.crop_box_ltrb
                );
            }
            ensure!(
                (view.width, view.height) == (tile, tile),
                "tile {tile_index}: {}x{}",
                view.width,
                view.height
            );
            let h = sha256_hex(&view.data);
            ensure!(
                h == r.u8_hwc_sha256,
                "image {k} ({}) tile {tile_index} ({}): pixels differ from the reference (sha256 {h} != {})",
                w.file,
                r.kind,
                r.u8_hwc_sha256
            );
            tile_index += 1;
        }
    }
    ensure!(
        tile_index == want.num_tiles && want.tiles.len() == want.num_tiles,
        "{tile_index} tiles, reference {}",
        want.num_tiles
    );

    // ---- prompt ids (v2 §6) ----
    ensure!(
        got.ids.len() == want.prompt_len && got.ids == want.input_ids,
        "input_ids differ ({} ids, reference {}): {}",
        got.ids.len(),
        want.prompt_len,
        first_diff(&got.ids, &want.input_ids)
    );
    ensure!(
        got.spans == want.image_token_spans,
        "image_token_spans {:?}, reference {:?}",
        got.spans,
        want.image_token_spans
    );
    ensure!(
        got.ids.first() == Some(&want.special_ids.bos),
        "prompt does not start with BOS"
    );
    Ok(())
}

#[test]
fn vl2_prep_every_fixture_case_matches_the_reference() -> anyhow::Result<()> {
    let dir = fixtures()?;
    let names = case_names(&dir)?;
    ensure!(
        names.len() >= 9,
        "only {} VL2 cases in {}",
        names.len(),
        dir.display()
    );
    let mut failures = Vec::new();
    for name in &names {
        if let Err(e) = check_case(&dir, name) {
            failures.push(format!("{name}: {e:#}"));
        }
    }
    if !failures.is_empty() {
        bail!(
            "{} of {} cases differ:\n{}",
            failures.len(),
            names.len(),
            failures.join("\n")
        );
    }
    Ok(())
}

/// Case, tokenizer and processor config of one fixture case.
fn load_case(name: &str) -> anyhow::Result<(PathBuf, Case, ProcessorConfig, PromptTokenizer, Ref)> {
    let dir = fixtures()?;
    let case: Case = read_json(&dir.join(format!("cases/{name}.json")))?;
    let want: Ref = read_json(&dir.join(format!("ref/{name}.json")))?;
    let model_dir = dir.join("models").join(&case.model);
    let proc_cfg: ProcessorConfig = read_json(&model_dir.join("processor_config.json"))?;
    let tok = tokenizer(&model_dir, &proc_cfg.image_token)?;
    Ok((dir, case, proc_cfg, tok, want))
}

/// Images sent without markers are put first, one `<image>\n` each (the web demo's rule): the reference cases
/// whose text starts with exactly those markers give the same ids without them.
#[test]
fn vl2_prep_images_without_markers_go_first() -> anyhow::Result<()> {
    for name in [
        "tiny_single_tiled",
        "tiny_three_images",
        "base_three_images_two_turns",
    ] {
        let (dir, mut case, proc_cfg, tok, want) = load_case(name)?;
        for m in &mut case.messages {
            let prefix = "<image>\n".repeat(m.images.len());
            if !m.images.is_empty() {
                m.content = m
                    .content
                    .strip_prefix(&prefix)
                    .ok_or_else(|| anyhow!("{name}: a message does not start with {prefix:?}"))?
                    .to_string();
                ensure!(
                    !m.content.contains("<image>"),
                    "{name}: marker left in {:?}",
                    m.content
                );
            }
        }
        let got = prepare(&dir, &case, &proc_cfg, &tok)?;
        ensure!(
            got.ids == want.input_ids,
            "{name}: {}",
            first_diff(&got.ids, &want.input_ids)
        );
        let spans: Vec<[usize; 2]> = want.image_token_spans.clone();
        ensure!(
            got.spans == spans,
            "{name}: spans {:?} != {:?}",
            got.spans,
            spans
        );
    }
    Ok(())
}

#[test]
fn vl2_prep_marker_count_mismatch_is_an_error() -> anyhow::Result<()> {
    let (dir, mut case, proc_cfg, tok, _) = load_case("base_grounding_two_images")?;
    // Two markers, one image.
    case.messages[0].images.truncate(1);
    match prepare(&dir, &case, &proc_cfg, &tok) {
        Err(e) => match e.downcast_ref::<Error>() {
            Some(Error::ImageCountMismatch {
                markers: 2,
                images: 1,
                marker,
            }) => ensure!(marker.contains("<image>"), "{marker}"),
            _ => bail!("expected ImageCountMismatch {{ markers: 2, images: 1 }}, got {e:#}"),
        },
        Ok(_) => bail!("a 2-marker, 1-image turn was accepted"),
    }
    // A marker in an assistant answer.
    let (dir, mut case, proc_cfg, tok, _) = load_case("small_two_images_two_turns")?;
    case.messages[1].content = "It says <image>.".into();
    let e = prepare(&dir, &case, &proc_cfg, &tok)
        .err()
        .ok_or_else(|| anyhow!("accepted"))?;
    ensure!(
        matches!(
            e.downcast_ref::<Error>(),
            Some(Error::ImageCountMismatch {
                markers: 1,
                images: 0,
                ..
            })
        ),
        "{e:#}"
    );
    Ok(())
}

/// Three images across two turns switch tiling off for all of them (v2 §2.1, §2.4): each image is 1×1 with one
/// local tile identical to its global view and 421 tokens, although two of them alone would be tiled.
#[test]
fn vl2_prep_three_images_across_turns_disable_tiling() -> anyhow::Result<()> {
    let (dir, case, proc_cfg, tok, want) = load_case("base_three_images_two_turns")?;
    let per_turn: Vec<usize> = case.messages.iter().map(|m| m.images.len()).collect();
    assert_eq!(per_turn, vec![2, 0, 1, 0]);
    let got = prepare(&dir, &case, &proc_cfg, &tok)?;
    assert!(!got.cropping && !want.cropping);
    for (t, w) in got.tiled.iter().zip(&want.images) {
        assert_eq!((t.nw, t.nh), (1, 1));
        assert_eq!(w.images_spatial_crop, [1, 1]);
        assert_eq!(t.tiles, vec![t.global.clone()]);
    }
    assert_eq!(got.image_tokens, vec![421, 421, 421]);
    assert_eq!(want.image_token_spans.len(), 3);
    assert_eq!(got.spans, want.image_token_spans);

    // The first turn's two images alone are tiled: shapes 640×480 → 2×2 (1023 tokens), receipt → 1×2 (631).
    let mut two = case;
    two.messages.truncate(2);
    two.messages[1].content.clear();
    let got = prepare(&dir, &two, &proc_cfg, &tok)?;
    assert!(got.cropping);
    let layouts: Vec<(usize, usize)> = got.tiled.iter().map(|t| (t.nw, t.nh)).collect();
    assert_eq!(layouts, vec![(2, 2), (1, 2)]);
    assert_eq!(got.image_tokens, vec![1023, 631]);
    Ok(())
}
