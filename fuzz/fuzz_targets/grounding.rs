//! The grounding parser (VL2 `<|ref|>…<|/ref|><|det|>[[x1, y1, x2, y2]]<|/det|>` answers) on
//! arbitrary model output, with and without image sizes, and the box drawing of its result.
#![no_main]
use dsvl::grounding::{answer_grounding, draw_boxes, parse_grounding};
use dsvl::image::RgbImage;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((size, text)) = data.split_at_checked(4) else {
        return;
    };
    let text = String::from_utf8_lossy(text);
    let w = u32::from(u16::from_le_bytes([size[0], size[1]]) % 2048);
    let h = u32::from(u16::from_le_bytes([size[2], size[3]]) % 2048);
    let _ = parse_grounding(&text, None);
    let g = parse_grounding(&text, Some((w, h)));
    let _ = answer_grounding(&text, &[(w, h), (h, w)]);
    if w > 0 && h > 0 && w * h <= 1 << 16 && !g.objects.is_empty() {
        let img = RgbImage::filled(w, h, [255, 255, 255]);
        let out = draw_boxes(&img, &g.objects);
        assert_eq!((out.width, out.height), (w, h), "drawing keeps the size");
    }
});
