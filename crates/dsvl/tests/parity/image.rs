//! Image preprocessing parity with the official pipeline (v1 §3, reference-v1 §6). Fixtures come from
//! `tools/fixtures/gen_images.py` (Pillow 13.0.0, torch 2.15.0): exact bytes for decode → resize → pad on every
//! input (PNG, JPEG, WebP lossless, GIF, BMP, TIFF) at S = 384 and S = 1024, and exact float32 for the 7B
//! antialiased-bilinear low-res view (v1 §3.3).

use std::path::{Path, PathBuf};

use dsvl::image::{self, RgbImage, DEFAULT_MAX_PIXELS};
use dsvl::Error;
use serde_json::Value;

/// Max |Δ| accepted between our antialiased bilinear and torch's (v1 §3.3). We reproduce torch's summation
/// (including its FMA pattern) so the gate is exact.
const ANTIALIAS_GATE: f32 = 0.0;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/images")
}

fn manifest() -> anyhow::Result<Value> {
    let text = std::fs::read_to_string(fixtures().join("manifest.json"))?;
    Ok(serde_json::from_str(&text)?)
}

fn arr<'a>(v: &'a Value, key: &str) -> anyhow::Result<&'a Vec<Value>> {
    v[key]
        .as_array()
        .ok_or_else(|| anyhow::anyhow!("manifest: `{key}` is not an array"))
}

fn str_of<'a>(v: &'a Value, key: &str) -> anyhow::Result<&'a str> {
    v[key]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("manifest: `{key}` is not a string in {v}"))
}

fn u32_of(v: &Value) -> anyhow::Result<u32> {
    Ok(u32::try_from(v.as_u64().ok_or_else(|| {
        anyhow::anyhow!("manifest: {v} is not an integer")
    })?)?)
}

fn load_fixture(rel: &str) -> anyhow::Result<RgbImage> {
    Ok(image::load(&fixtures().join(rel), DEFAULT_MAX_PIXELS)?)
}

/// FNV-1a 64 of a byte buffer (mirrors `fnv1a64_np` in gen_images.py).
fn fnv1a64(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// `None` if equal, else "N of M bytes differ, first at (x, y, c): got g, want w".
fn diff_bytes(got: &RgbImage, want: &RgbImage) -> Option<String> {
    if (got.width, got.height) != (want.width, want.height) {
        return Some(format!(
            "size {}x{} != expected {}x{}",
            got.width, got.height, want.width, want.height
        ));
    }
    let mut n = 0usize;
    let mut first = None;
    for (i, (g, w)) in got.data.iter().zip(&want.data).enumerate() {
        if g != w {
            n += 1;
            first.get_or_insert((i, *g, *w));
        }
    }
    first.map(|(i, g, w)| {
        let (px, c) = (i / 3, i % 3);
        let (x, y) = (px % got.width as usize, px / got.width as usize);
        format!(
            "{n} of {} bytes differ, first at (x={x}, y={y}, c={c}): got {g}, want {w}",
            got.data.len()
        )
    })
}

/// Every `step`-th row of `img`.
fn rows_every(img: &RgbImage, step: usize) -> RgbImage {
    let stride = img.stride();
    let data: Vec<u8> = img
        .data
        .chunks_exact(stride)
        .step_by(step)
        .flatten()
        .copied()
        .collect();
    RgbImage {
        width: img.width,
        height: (data.len() / stride.max(1)) as u32,
        data,
    }
}

fn background(v: &Value) -> anyhow::Result<[u8; 3]> {
    let b = v
        .as_array()
        .ok_or_else(|| anyhow::anyhow!("manifest: background {v}"))?;
    let c = |i: usize| -> anyhow::Result<u8> { Ok(u8::try_from(b.get(i).map_or(Ok(0), u32_of)?)?) };
    Ok([c(0)?, c(1)?, c(2)?])
}

/// Check one decoded input against every expected preprocessing output; returns the failures.
fn check_preprocess(case: &Value, img: &RgbImage) -> anyhow::Result<Vec<String>> {
    let mut failures = Vec::new();
    let input = str_of(case, "input")?;
    for out in arr(case, "outputs")? {
        let s = u32_of(&out["image_size"])?;
        let resized = arr(out, "resized")?;
        let (rw, rh) = (u32_of(&resized[0])?, u32_of(&resized[1])?);
        assert_eq!(
            image::target_size(img.width, img.height, s, 14),
            (rw, rh),
            "{input}: target size at S={s}"
        );
        let got = image::preprocess(img, s, 14, background(&out["background"])?);
        let step = usize::try_from(out["row_step"].as_u64().unwrap_or(1))?;
        let want = load_fixture(str_of(out, "file")?)?;
        if let Some(d) = diff_bytes(&rows_every(&got, step), &want) {
            failures.push(format!("{input} S={s} (sampled rows, step {step}): {d}"));
        }
        let hash = format!("{:016x}", fnv1a64(&got.data));
        if hash != str_of(out, "fnv1a64")? {
            failures.push(format!(
                "{input} S={s}: full-image hash {hash} != {}",
                str_of(out, "fnv1a64")?
            ));
        }
    }
    Ok(failures)
}

#[test]
fn preprocess_is_byte_identical_to_pillow_for_every_input() -> anyhow::Result<()> {
    let m = manifest()?;
    let mut failures = Vec::new();
    let cases = arr(&m, "cases")?;
    assert!(
        cases.len() >= 20,
        "manifest lists only {} cases",
        cases.len()
    );
    for case in cases {
        let img = load_fixture(str_of(case, "input")?)?;
        assert_eq!(
            (img.width, img.height),
            (u32_of(&case["width"])?, u32_of(&case["height"])?)
        );
        failures.extend(check_preprocess(case, &img)?);
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
    Ok(())
}

#[test]
fn decode_is_byte_identical_to_pillow_for_jpeg_webp_gif_bmp_tiff() -> anyhow::Result<()> {
    let m = manifest()?;
    let mut failures = Vec::new();
    let mut checked = 0;
    for case in arr(&m, "cases")? {
        let Some(decoded) = case["decoded"].as_str() else {
            continue;
        };
        let input = str_of(case, "input")?;
        let got = load_fixture(input)?;
        let want = load_fixture(decoded)?;
        // Non-trivial: Pillow's decode of every fixture has many distinct values.
        let distinct = want.data.iter().fold([false; 256], |mut s, &v| {
            s[v as usize] = true;
            s
        });
        assert!(
            distinct.iter().filter(|&&b| b).count() > 32,
            "{decoded} is nearly flat"
        );
        if let Some(d) = diff_bytes(&got, &want) {
            failures.push(format!("{input}: {d}"));
        }
        checked += 1;
    }
    assert!(checked >= 9, "only {checked} decode fixtures");
    assert!(
        failures.is_empty(),
        "{} decode mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
    Ok(())
}

#[test]
fn resize_bicubic_is_byte_identical_to_pillow_on_assorted_sizes() -> anyhow::Result<()> {
    let m = manifest()?;
    let (mut failures, mut exact) = (Vec::new(), 0);
    for r in arr(&m, "resize")? {
        let src = load_fixture(str_of(r, "input")?)?;
        let (w, h) = (u32_of(&r["width"])?, u32_of(&r["height"])?);
        let want = load_fixture(str_of(r, "file")?)?;
        match diff_bytes(&image::resize_bicubic(&src, w, h), &want) {
            None => exact += 1,
            Some(d) => failures.push(format!("{w}x{h}: {d}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(exact >= 11, "only {exact} resize cases");
    Ok(())
}

/// The fixtures must catch a wrong algorithm: a single-pass float Catmull-Rom (`image` crate, also Keys
/// a = −0.5, no 8-bit intermediate, no fixed point) disagrees with Pillow on the main fixture.
#[test]
fn a_float_bicubic_does_not_pass_the_fixtures() -> anyhow::Result<()> {
    let m = manifest()?;
    let case = &arr(&m, "cases")?[0];
    let src = load_fixture(str_of(case, "input")?)?;
    let out = &arr(case, "outputs")?[0];
    let s = u32_of(&out["image_size"])?;
    let (w, h) = image::target_size(src.width, src.height, s, 14);
    let buf = ::image::RgbImage::from_raw(src.width, src.height, src.data.clone())
        .ok_or_else(|| anyhow::anyhow!("bad buffer"))?;
    let float = ::image::imageops::resize(&buf, w, h, ::image::imageops::FilterType::CatmullRom);
    let float = RgbImage {
        width: w,
        height: h,
        data: float.into_raw(),
    };
    let ours = image::resize_bicubic(&src, w, h);
    let d = diff_bytes(&float, &ours).unwrap_or_default();
    assert!(
        !d.is_empty(),
        "a float resize matched Pillow's fixed-point one: the fixture is too weak"
    );
    Ok(())
}

fn read_safetensors(name: &str) -> anyhow::Result<(Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(fixtures().join("antialias.safetensors"))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)?;
    let t = st.tensor(name)?;
    anyhow::ensure!(t.dtype() == safetensors::Dtype::F32, "{name}: not f32");
    let data = t
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok((t.shape().to_vec(), data))
}

#[test]
fn antialias_bilinear_matches_torch() -> anyhow::Result<()> {
    let m = manifest()?;
    let mut report = Vec::new();
    for a in arr(&m, "antialias")? {
        let shape_in: Vec<usize> = arr(a, "in")?
            .iter()
            .map(|v| v.as_u64().unwrap_or(0) as usize)
            .collect();
        let shape_out: Vec<usize> = arr(a, "out")?
            .iter()
            .map(|v| v.as_u64().unwrap_or(0) as usize)
            .collect();
        let step = a["row_step"].as_u64().unwrap_or(1) as usize;
        // The 1024 case is the padded 7B image of the main fixture, rebuilt by our (separately verified)
        // preprocessing; the others resize the small source directly.
        let src = if shape_in[1] == 1024 {
            let case = &arr(&m, "cases")?[0];
            image::preprocess(
                &load_fixture(str_of(case, "input")?)?,
                1024,
                14,
                [122, 116, 104],
            )
        } else {
            load_fixture(str_of(a, "input")?)?
        };
        let x = image::to_chw_f32(&src);
        let y = image::resize_bilinear_antialias_f32(
            &x,
            3,
            shape_in[1],
            shape_in[2],
            shape_out[1],
            shape_out[2],
        )?;
        let name = str_of(a, "tensor")?;
        let (shape, want) = read_safetensors(name)?;
        let (c, oh, ow) = (shape_out[0], shape_out[1], shape_out[2]);
        assert_eq!(
            shape,
            vec![c, oh.div_ceil(step), ow],
            "{name}: stored shape"
        );
        let mean = want.iter().sum::<f32>() / want.len() as f32;
        let var = want.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / want.len() as f32;
        assert!(
            var > 1e-3 && want.iter().all(|v| v.is_finite()),
            "{name}: trivial reference"
        );
        let (mut max, mut at, mut ndiff) = (0f32, (0, 0, 0), 0usize);
        for ch in 0..c {
            for (k, row) in (0..oh).step_by(step).enumerate() {
                for col in 0..ow {
                    let g = y[(ch * oh + row) * ow + col];
                    let w = want[(ch * shape[1] + k) * ow + col];
                    let d = (g - w).abs();
                    ndiff += usize::from(g != w);
                    if d > max {
                        (max, at) = (d, (ch, row, col));
                    }
                }
            }
        }
        if max > ANTIALIAS_GATE {
            report.push(format!(
                "{name}: max|Δ| {max:e} > {ANTIALIAS_GATE:e} at {at:?}, {ndiff} values differ"
            ));
        }
    }
    assert!(report.is_empty(), "{}", report.join("\n"));
    Ok(())
}

/// Load a bad fixture and return the error (panics in the test if it decodes).
fn bad(rel: &str, max_pixels: u64) -> Error {
    match image::load(&fixtures().join(rel), max_pixels) {
        Ok(img) => panic!(
            "{rel} decoded to {}x{} but must be refused",
            img.width, img.height
        ),
        Err(e) => e,
    }
}

#[test]
fn bad_inputs_are_typed_errors_with_clear_messages() {
    for (rel, needle) in [
        ("inputs/bad/empty.png", "empty"),
        ("inputs/bad/random.bin", "unrecognised image format"),
        ("inputs/bad/truncated.jpg", "truncated"),
        ("inputs/bad/truncated.png", "truncated"),
    ] {
        match bad(rel, DEFAULT_MAX_PIXELS) {
            Error::ImageDecode {
                source_name,
                message,
            } => {
                assert!(
                    source_name.ends_with(rel.rsplit('/').next().unwrap_or(rel)),
                    "{source_name}"
                );
                assert!(
                    message.contains(needle),
                    "{rel}: message `{message}` lacks `{needle}`"
                );
            }
            other => panic!("{rel}: expected ImageDecode, got {other:?}"),
        }
    }
    // Bytes that start like a JPEG but are garbage after the SOI: libjpeg's error_exit path, no abort.
    let mut junk = vec![0xff, 0xd8, 0xff, 0xe0];
    junk.extend((0..200u32).map(|i| (i * 37 % 251) as u8));
    match image::decode(&junk, "junk.jpg", DEFAULT_MAX_PIXELS) {
        Err(Error::ImageDecode { message, .. }) => {
            assert!(message.contains("invalid JPEG data"), "{message}")
        }
        other => panic!("junk JPEG: expected ImageDecode, got {other:?}"),
    }
    match image::load(
        &fixtures().join("inputs/bad/does-not-exist.png"),
        DEFAULT_MAX_PIXELS,
    ) {
        Err(Error::Io { path, .. }) => assert!(path.ends_with("does-not-exist.png")),
        other => panic!("missing file: expected Io, got {other:?}"),
    }
}

#[test]
fn oversized_headers_are_refused_before_decoding() {
    // Both bombs carry almost no pixel data: decoding would fail as truncated, so ImageTooLarge proves the
    // check happens on the header.
    for rel in [
        "inputs/bad/bomb_60000x60000.png",
        "inputs/bad/bomb_60000x60000.jpg",
    ] {
        match bad(rel, DEFAULT_MAX_PIXELS) {
            Error::ImageTooLarge {
                width,
                height,
                pixels,
                limit,
                ..
            } => {
                assert_eq!(
                    (width, height, pixels, limit),
                    (60000, 60000, 3_600_000_000, DEFAULT_MAX_PIXELS)
                );
            }
            other => panic!("{rel}: expected ImageTooLarge, got {other:?}"),
        }
    }
    // The limit is the caller's: a normal image over a small limit is refused too, for every decoder path.
    for rel in [
        "inputs/rgb_500x333.png",
        "inputs/jpeg420_500x333.jpg",
        "inputs/gif_150x100.gif",
    ] {
        let e = bad(rel, 1000);
        assert!(
            matches!(e, Error::ImageTooLarge { limit: 1000, .. }),
            "{rel}: {e:?}"
        );
        assert!(e.to_string().contains("over the limit"), "{e}");
    }
}
