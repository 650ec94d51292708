//! Labelled boxes on an image, like the official `parse_ref_bbox` renders them (v2 §6.4): an outline per box
//! and the label above it. Differences, on purpose: one colour per label rather than per box, line width and
//! text size scaled to the image rather than a fixed 3 px and 20 pt, the label on a filled tag so it stays
//! readable, and the tag kept inside the image when the box touches the top or right edge.

use super::font::{self, GLYPH_H, GLYPH_W};
use super::parse::{to_pixels, GroundedObject};
use crate::image::RgbImage;

/// Box colours, one per distinct label in order of first appearance, then repeated.
const PALETTE: [[u8; 3]; 10] = [
    [230, 25, 75],
    [60, 180, 75],
    [0, 130, 200],
    [245, 130, 48],
    [145, 30, 180],
    [70, 240, 240],
    [240, 50, 230],
    [210, 245, 60],
    [0, 128, 128],
    [255, 225, 25],
];

/// Line width and font scale for an image: 3 px and 14 px text at 640, growing with the longer side.
fn style(width: u32, height: u32) -> (u32, u32) {
    let long = width.max(height);
    let thickness = (long.saturating_add(100) / 200).clamp(2, 12);
    let scale = (long / 320).clamp(1, 8);
    (thickness, scale)
}

/// Returns a copy of `img` with every box of `objects` outlined and tagged with its label (v2 §6.4).
///
/// Boxes are mapped from their 0–999 `normalized` corners to `img`'s own size with [`to_pixels`], so this
/// works whether or not `pixels` was filled in; pass the original image the question was asked about.
/// Objects without a label get a box and no tag. Boxes with the same label share a colour. Text is
/// printable ASCII in a 5×7 bitmap font; other characters are drawn as hollow boxes. An image whose `data`
/// does not match its size is returned unchanged.
pub fn draw_boxes(img: &RgbImage, objects: &[GroundedObject]) -> RgbImage {
    let mut out = img.clone();
    let (w, h) = (img.width, img.height);
    if w == 0 || h == 0 || img.data.len() != w as usize * h as usize * 3 {
        return out;
    }
    let (thickness, scale) = style(w, h);
    let mut labels: Vec<Option<&str>> = Vec::new();
    let mut tags = Vec::new();
    for obj in objects {
        let label = obj.label.as_deref();
        let index = labels.iter().position(|l| *l == label).unwrap_or_else(|| {
            labels.push(label);
            labels.len() - 1
        });
        let colour = PALETTE[index % PALETTE.len()];
        for b in &obj.boxes {
            let [x1, y1, x2, y2] = to_pixels(b.normalized, w, h);
            // Parsed boxes are ordered already; hand-built ones may not be.
            let (x1, x2, y1, y2) = (x1.min(x2), x1.max(x2), y1.min(y2), y1.max(y2));
            outline(&mut out, [x1, y1, x2, y2], thickness, colour);
            if let Some(text) = label.filter(|t| !t.is_empty()) {
                tags.push((x1, y1, text, colour));
            }
        }
    }
    // Tags after all outlines, so no box is drawn across a label.
    for (x1, y1, text, colour) in tags {
        tag(&mut out, x1, y1, text, colour, scale);
    }
    out
}

/// A `thickness`-wide outline drawn inwards from the inclusive corners, as PIL's `rectangle(width=..)` does.
fn outline(img: &mut RgbImage, [x1, y1, x2, y2]: [u32; 4], thickness: u32, colour: [u8; 3]) {
    let t = thickness - 1;
    fill(img, [x1, y1, x2, (y1 + t).min(y2)], colour);
    fill(img, [x1, y2.saturating_sub(t).max(y1), x2, y2], colour);
    fill(img, [x1, y1, (x1 + t).min(x2), y2], colour);
    fill(img, [x2.saturating_sub(t).max(x1), y1, x2, y2], colour);
}

/// The label on a filled tag whose bottom row sits right above the box's top edge; inside the box when
/// there is no room above it, moved left when it would cross the right edge.
fn tag(img: &mut RgbImage, x1: u32, y1: u32, text: &str, colour: [u8; 3], scale: u32) {
    let pad = scale;
    let advance = (GLYPH_W + 1) * scale;
    let chars = text.chars().count() as u32;
    let tag_w = (chars.saturating_mul(advance) - scale + 2 * pad).min(img.width); // chars >= 1
    let tag_h = GLYPH_H * scale + 2 * pad;
    let x0 = x1.min(img.width - tag_w);
    let y0 = if y1 >= tag_h { y1 - tag_h } else { y1 };
    let right = x0 + tag_w - 1;
    let bottom = (y0 + tag_h - 1).min(img.height - 1);
    fill(img, [x0, y0, right, bottom], colour);

    let luma = 299 * u32::from(colour[0]) + 587 * u32::from(colour[1]) + 114 * u32::from(colour[2]);
    let ink = if luma > 150_000 {
        [0, 0, 0]
    } else {
        [255, 255, 255]
    };
    for (i, c) in text.chars().enumerate() {
        let gx = x0 + pad + i as u32 * advance;
        if gx > right {
            break;
        }
        for (row, bits) in font::glyph(c).iter().enumerate() {
            for col in 0..GLYPH_W {
                if bits >> (GLYPH_W - 1 - col) & 1 == 1 {
                    let px = gx + col * scale;
                    let py = y0 + pad + row as u32 * scale;
                    let rect = [
                        px,
                        py,
                        (px + scale - 1).min(right),
                        (py + scale - 1).min(bottom),
                    ];
                    fill(img, rect, ink);
                }
            }
        }
    }
}

/// Fills the inclusive rectangle `[x1, y1, x2, y2]`, clipped to the image.
fn fill(img: &mut RgbImage, [x1, y1, x2, y2]: [u32; 4], colour: [u8; 3]) {
    if img.width == 0 || img.height == 0 {
        return;
    }
    let x2 = x2.min(img.width - 1) as usize;
    let y2 = y2.min(img.height - 1) as usize;
    let stride = img.stride();
    for y in y1 as usize..=y2 {
        for x in x1 as usize..=x2 {
            let i = y * stride + x * 3;
            img.data[i..i + 3].copy_from_slice(&colour);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grounding::{parse_grounding, BoxCoords};
    use rand::{rngs::StdRng, Rng, SeedableRng};

    const GREY: [u8; 3] = [100, 100, 100];

    fn px(img: &RgbImage, x: u32, y: u32) -> [u8; 3] {
        let i = y as usize * img.stride() + x as usize * 3;
        [img.data[i], img.data[i + 1], img.data[i + 2]]
    }

    fn object(label: Option<&str>, normalized: [u32; 4]) -> GroundedObject {
        GroundedObject {
            label: label.map(str::to_string),
            boxes: vec![BoxCoords {
                normalized,
                pixels: None,
            }],
        }
    }

    #[test]
    fn outline_edges_coloured_inside_and_outside_untouched_tag_above() {
        let img = RgbImage::filled(320, 240, GREY);
        // By hand: 250/999*320 = 80.08 → 80; 500/999*240 = 120.12 → 120; 750/999*320 = 240.24 → 240;
        // 900/999*240 = 216.2 → 216. At 320 px: 2 px lines, font scale 1 → tag 9 px high, rows 111..=119.
        let out = draw_boxes(&img, &[object(Some("cat"), [250, 500, 750, 900])]);
        let c = PALETTE[0];
        for (x, y) in [
            (80, 150),
            (81, 150),
            (240, 150),
            (239, 150),
            (150, 120),
            (150, 121),
            (150, 216),
            (150, 215),
        ] {
            assert_eq!(px(&out, x, y), c, "edge pixel ({x}, {y})");
        }
        for (x, y) in [(82, 150), (238, 150), (150, 122), (150, 214), (160, 170)] {
            assert_eq!(px(&out, x, y), GREY, "inside pixel ({x}, {y})");
        }
        for (x, y) in [
            (79, 150),
            (241, 150),
            (150, 217),
            (150, 110),
            (10, 10),
            (319, 239),
        ] {
            assert_eq!(px(&out, x, y), GREY, "outside pixel ({x}, {y})");
        }
        // The tag: filled with the box colour right above the top edge, starting at x1.
        assert_eq!(px(&out, 80, 119), c);
        assert_eq!(px(&out, 80, 111), c);
        assert_eq!(px(&out, 80, 110), GREY);
        assert_eq!(px(&out, 79, 115), GREY);
        // "cat" is 3 glyphs: 3*6 - 1 + 2 = 19 px wide, x 80..=98; white ink on this red.
        assert_eq!(px(&out, 98, 115), c);
        assert_eq!(px(&out, 99, 115), GREY);
        let ink = (80..=98)
            .flat_map(|x| (111..=119).map(move |y| (x, y)))
            .filter(|&(x, y)| px(&out, x, y) == [255; 3]);
        let ink: Vec<_> = ink.collect();
        assert!(!ink.is_empty(), "no text drawn");
        // 'c' starts at x 81, row 112; its first ink row is glyph row 2 (y 114): 0b01110 → x 82..=84.
        assert!(ink.contains(&(82, 114)) && !ink.contains(&(81, 114)));
        // Nothing else changed.
        let changed = (0..240)
            .flat_map(|y| (0..320).map(move |x| (x, y)))
            .filter(|&(x, y)| px(&out, x, y) != GREY);
        assert!(changed
            .clone()
            .all(|(x, y)| (80..=240).contains(&x) && (111..=216).contains(&y)));
        assert!(img.data.iter().all(|v| *v == 100), "input image modified");
    }

    #[test]
    fn tag_stays_inside_when_box_touches_the_top_and_right_edges() {
        let img = RgbImage::filled(320, 240, GREY);
        // x: 900/999*320 = 288.29 → 288 .. 999 → 319; y: 0 .. 500/999*240 = 120.12 → 120.
        let out = draw_boxes(&img, &[object(Some("a long label"), [900, 0, 999, 500])]);
        let c = PALETTE[0];
        // 12 glyphs: 12*6 - 1 + 2 = 73 px wide, moved left to end at the last column: x 247..=319, y 0..=8.
        assert_eq!(px(&out, 247, 4), c);
        assert_eq!(px(&out, 246, 4), GREY);
        assert_eq!(px(&out, 250, 9), GREY, "below the tag, left of the box");
        assert_eq!(
            px(&out, 319, 120),
            c,
            "right edge clamped to the last column"
        );
        assert_eq!(px(&out, 300, 120), c, "bottom edge");
    }

    #[test]
    fn one_colour_per_label() {
        let img = RgbImage::filled(640, 480, GREY);
        let text = "<|ref|>cat<|/ref|><|det|>[[0, 500, 100, 600], [200, 500, 300, 600]]<|/det|>\
                    <|ref|>dog<|/ref|><|det|>[[400, 500, 500, 600]]<|/det|><|det|>[[600, 500, 700, 600]]<|/det|>\
                    <|ref|>cat<|/ref|><|det|>[[800, 500, 900, 600]]<|/det|>";
        let g = parse_grounding(text, Some((640, 480)));
        let out = draw_boxes(&img, &g.objects);
        // Left edges at y = 550/999*480 = 264: x = int(n/999*640) for n = 0, 200, 400, 600, 800.
        let left: Vec<[u8; 3]> = [0, 128, 256, 384, 512]
            .iter()
            .map(|&x| px(&out, x, 264))
            .collect();
        assert_eq!(
            left,
            vec![PALETTE[0], PALETTE[0], PALETTE[1], PALETTE[2], PALETTE[0]]
        );
    }

    #[test]
    fn unlabelled_boxes_get_no_tag_and_non_ascii_labels_get_placeholders() {
        let img = RgbImage::filled(320, 240, GREY);
        let out = draw_boxes(&img, &[object(None, [250, 500, 750, 900])]);
        assert_eq!(px(&out, 80, 120), PALETTE[0]);
        assert!(
            (111..120).all(|y| px(&out, 80, y) == GREY),
            "no tag expected"
        );

        let out = draw_boxes(&img, &[object(Some("猫"), [250, 500, 750, 900])]);
        // One placeholder glyph: 5 + 2 = 7 px wide; its hollow box ink is at x 81..=85, rows 112..=118.
        assert_eq!(px(&out, 81, 112), [255; 3]);
        assert_eq!(px(&out, 85, 118), [255; 3]);
        assert_eq!(px(&out, 83, 115), PALETTE[0], "placeholder is hollow");
        assert_eq!(px(&out, 87, 115), GREY, "tag is 7 px wide");
    }

    #[test]
    fn scaled_for_large_images() {
        let img = RgbImage::filled(1920, 1080, GREY);
        let (t, s) = style(1920, 1080);
        assert_eq!((t, s), (10, 6));
        // 500/999*1920 = 960.96 → 960; 500/999*1080 = 540.54 → 540.
        let out = draw_boxes(&img, &[object(Some("x"), [500, 500, 999, 999])]);
        assert_eq!(px(&out, 960 + t - 1, 700), PALETTE[0]);
        assert_eq!(px(&out, 960 + t, 700), GREY);
        // Tag 7*6 + 2*6 = 54 px high: rows 486..=539.
        assert_eq!(px(&out, 960, 486), PALETTE[0]);
        assert_eq!(px(&out, 960, 485), GREY);
    }

    #[test]
    fn odd_inputs_do_not_panic() {
        let bad = RgbImage {
            width: 10,
            height: 10,
            data: vec![0; 5],
        };
        assert_eq!(
            draw_boxes(&bad, &[object(Some("a"), [0, 0, 999, 999])]),
            bad
        );
        let mut rng = StdRng::seed_from_u64(0x6472_6177);
        for _ in 0..300 {
            let (w, h) = (rng.random_range(0..40), rng.random_range(0..40));
            let img = RgbImage::filled(w, h, GREY);
            let objects: Vec<_> = (0..rng.random_range(0..4))
                .map(|i| {
                    let n = [0, 0, 0, 0].map(|_: u32| rng.random_range(0..=999u32));
                    let label = ["", "a", "label é 猫 with a long tail"][i % 3];
                    object(Some(label).filter(|_| rng.random_bool(0.8)), n)
                })
                .collect();
            let out = draw_boxes(&img, &objects);
            assert_eq!(
                (out.width, out.height, out.data.len()),
                (w, h, img.data.len())
            );
        }
    }
}
