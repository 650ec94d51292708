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

fn fixtures() -> anyhow::Result<PathBuf> {
    crate::vl2::vl2_fixtures_checked()
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
/// whose image messages start with exactly those markers (and hold no others) give the same ids without them.
#[test]
fn vl2_prep_images_without_markers_go_first() -> anyhow::Result<()> {
    let mut checked = 0;
    for name in case_names(&fixtures()?)? {
        let (dir, mut case, proc_cfg, tok, want) = load_case(&name)?;
        if case.messages.iter().all(|m| m.images.is_empty()) {
            continue;
        }
        let mut fits = true;
        for m in &mut case.messages {
            let prefix = "<image>\n".repeat(m.images.len());
            if m.images.is_empty() {
                continue;
            }
            match m.content.strip_prefix(&prefix) {
                Some(rest) if !rest.contains("<image>") => m.content = rest.to_string(),
                _ => fits = false,
            }
        }
        if !fits {
            continue;
        }
        let got = prepare(&dir, &case, &proc_cfg, &tok)?;
        ensure!(
            got.ids == want.input_ids,
            "{name}: {}",
            first_diff(&got.ids, &want.input_ids)
        );
        ensure!(
            got.spans == want.image_token_spans,
            "{name}: spans {:?} != {:?}",
            got.spans,
            want.image_token_spans
        );
        checked += 1;
    }
    ensure!(
        checked >= 3,
        "only {checked} cases had leading markers to strip"
    );
    Ok(())
}

#[test]
fn vl2_prep_marker_count_mismatch_is_an_error() -> anyhow::Result<()> {
    let names = case_names(&fixtures()?)?;
    // A user turn with n >= 2 markers but one image.
    let mut multi = None;
    let mut answered = None;
    for name in &names {
        let (_, case, ..) = load_case(name)?;
        if multi.is_none() {
            multi = case
                .messages
                .iter()
                .position(|m| m.images.len() >= 2)
                .map(|i| (name.clone(), i));
        }
        if answered.is_none() {
            answered = case
                .messages
                .iter()
                .position(|m| {
                    vl2_role(&m.role).ok() == Some(dsvl::prompt::template::Role::Assistant)
                        && !m.content.is_empty()
                })
                .map(|i| (name.clone(), i));
        }
    }
    let (name, i) = multi.ok_or_else(|| anyhow!("no case has a turn with two images"))?;
    let (dir, mut case, proc_cfg, tok, _) = load_case(&name)?;
    let n = case.messages[i].images.len();
    case.messages[i].images.truncate(1);
    match prepare(&dir, &case, &proc_cfg, &tok) {
        Err(e) => match e.downcast_ref::<Error>() {
            Some(Error::ImageCountMismatch {
                markers,
                images: 1,
                marker,
            }) if *markers == n => ensure!(marker.contains("<image>"), "{marker}"),
            _ => bail!(
                "{name}: expected ImageCountMismatch {{ markers: {n}, images: 1 }}, got {e:#}"
            ),
        },
        Ok(_) => bail!("{name}: a {n}-marker, 1-image turn was accepted"),
    }
    // A marker in an assistant answer.
    let (name, i) = answered.ok_or_else(|| anyhow!("no case has an assistant answer"))?;
    let (dir, mut case, proc_cfg, tok, _) = load_case(&name)?;
    case.messages[i].content = "It says <image>.".into();
    let e = prepare(&dir, &case, &proc_cfg, &tok)
        .err()
        .ok_or_else(|| anyhow!("{name}: accepted"))?;
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

/// Three images across turns switch tiling off for all of them (v2 §2.1, §2.4): each image is 1×1 with one
/// local tile identical to its global view and 421 tokens. The same conversation cut to its first turn's images
/// tiles again, with the layouts the official processor chose for those image sizes in the tiled cases.
#[test]
fn vl2_prep_three_images_across_turns_disable_tiling() -> anyhow::Result<()> {
    let dir = fixtures()?;
    let names = case_names(&dir)?;
    // Official layouts by image size, from every tiled case.
    let mut official = std::collections::HashMap::new();
    for name in &names {
        let want: Ref = read_json(&dir.join(format!("ref/{name}.json")))?;
        if want.cropping {
            for img in &want.images {
                official.insert(img.size_wh, img.images_spatial_crop);
            }
        }
    }
    let mut checked = 0;
    for name in &names {
        let (dir, case, proc_cfg, tok, want) = load_case(name)?;
        let turns_with_images = case
            .messages
            .iter()
            .filter(|m| !m.images.is_empty())
            .count();
        let n: usize = case.messages.iter().map(|m| m.images.len()).sum();
        if n < 3 || turns_with_images < 2 {
            continue;
        }
        let got = prepare(&dir, &case, &proc_cfg, &tok)?;
        ensure!(!got.cropping && !want.cropping, "{name}: tiling not off");
        for (t, w) in got.tiled.iter().zip(&want.images) {
            ensure!(
                (t.nw, t.nh) == (1, 1) && w.images_spatial_crop == [1, 1],
                "{name}: tiled"
            );
            ensure!(
                t.tiles == vec![t.global.clone()],
                "{name}: local tile differs from the global view"
            );
        }
        ensure!(
            got.image_tokens.iter().all(|&k| k == 421),
            "{name}: {:?}",
            got.image_tokens
        );
        ensure!(got.spans == want.image_token_spans, "{name}: spans");

        // Only the first image turn (and what precedes it): at most two images, tiled again.
        let first = case
            .messages
            .iter()
            .position(|m| !m.images.is_empty())
            .ok_or_else(|| anyhow!("{name}: no image turn"))?;
        let mut cut = case;
        cut.messages.truncate(first + 1);
        let got = prepare(&dir, &cut, &proc_cfg, &tok)?;
        ensure!(got.cropping, "{name}: cut conversation not tiled");
        for (size, t) in got.sizes.iter().zip(&got.tiled) {
            let key = [size.0, size.1];
            if let Some(want) = official.get(&key) {
                ensure!(
                    [t.nw, t.nh] == *want,
                    "{name}: {size:?} tiled {}x{}, official {want:?}",
                    t.nw,
                    t.nh
                );
                checked += 1;
            }
        }
    }
    ensure!(
        checked >= 2,
        "only {checked} re-tiled images could be checked"
    );
    Ok(())
}

#[derive(Deserialize)]
struct TilingRef {
    candidate_resolutions: Vec<[u32; 2]>,
    sizes: Vec<TilingSize>,
}

#[derive(Deserialize)]
struct TilingSize {
    size_wh: [u32; 2],
    best_resolution_wh: [u32; 2],
    images_spatial_crop: [u32; 2],
    num_image_tokens: usize,
    global_content_box_ltrb: [u32; 4],
    local_content_box_ltrb: [u32; 4],
}

/// The `[l, t, r, b)` box of pixels that are not the pad colour.
fn content_box(img: &dsvl::image::RgbImage, pad: [u8; 3]) -> [u32; 4] {
    let (mut l, mut t, mut r, mut b) = (u32::MAX, u32::MAX, 0, 0);
    for y in 0..img.height {
        for x in 0..img.width {
            let i = ((y * img.width + x) * 3) as usize;
            if img.data[i..i + 3] != pad {
                (l, t, r, b) = (l.min(x), t.min(y), r.max(x + 1), b.max(y + 1));
            }
        }
    }
    [l, t, r, b]
}

/// `ref/tiling.json`: the official processor's choice for 77 image sizes (tiny, extreme aspect ratios, exact
/// candidates, float64 near-ties), and where the resized image lands inside the padded global and local views.
#[test]
fn vl2_prep_tiling_matches_the_official_processor_for_many_sizes() -> anyhow::Result<()> {
    let dir = fixtures()?;
    let path = dir.join("ref/tiling.json");
    if !path.is_file() && std::env::var_os("DSVL_VL2_FIXTURES").is_some() {
        return Ok(()); // the shared set has no tiling.json; ours always does
    }
    let want: TilingRef = read_json(&path)?;
    let candidates: Vec<(u32, u32)> = want
        .candidate_resolutions
        .iter()
        .map(|c| (c[0], c[1]))
        .collect();
    let pad = [127u8; 3];
    let mut failures = Vec::new();
    for s in &want.sizes {
        let [w, h] = s.size_wh;
        let best = dsvl::image::select_best_resolution(w, h, &candidates);
        let img = dsvl::image::RgbImage::filled(w, h, [200, 30, 60]);
        let tiled = tile_image(&img, &candidates, 384, true, pad)?;
        let tokens = vl2_image_tokens(tiled.nw, tiled.nh, 14);
        // Stitch the local tiles back into the padded local view.
        let (lw, lh) = (tiled.nw as u32 * 384, tiled.nh as u32 * 384);
        let mut local = dsvl::image::RgbImage::filled(lw, lh, pad);
        for (k, tile) in tiled.tiles.iter().enumerate() {
            let (ox, oy) = ((k % tiled.nw) as u32 * 384, (k / tiled.nw) as u32 * 384);
            for y in 0..384 {
                let src = (y * 384 * 3) as usize;
                let dst = (((oy + y) * lw + ox) * 3) as usize;
                local.data[dst..dst + 384 * 3].copy_from_slice(&tile.data[src..src + 384 * 3]);
            }
        }
        let got = (
            [best.0, best.1],
            [tiled.nw as u32, tiled.nh as u32],
            tokens,
            content_box(&tiled.global, pad),
            content_box(&local, pad),
        );
        let expect = (
            s.best_resolution_wh,
            s.images_spatial_crop,
            s.num_image_tokens,
            s.global_content_box_ltrb,
            s.local_content_box_ltrb,
        );
        if got != expect {
            failures.push(format!("{w}x{h}: got {got:?}, official {expect:?}"));
        }
    }
    ensure!(
        failures.is_empty() && want.sizes.len() >= 50,
        "{} of {} sizes differ:\n{}",
        failures.len(),
        want.sizes.len(),
        failures.join("\n")
    );
    Ok(())
}
