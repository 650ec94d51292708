//! Grounding markup → structured boxes (v2 §6.4).
//!
//! The official renderer (`parse_ref_bbox`, `deepseek_vl2/serve/app_modules/utils.py`) pairs the n-th
//! `<|ref|>…<|/ref|>` with the n-th `<|det|>…<|/det|>`, evaluates each `[..]` inside a det as a Python list
//! and maps it with `int(x / 999 * W)`. It gives up on the whole answer (returns `None`) as soon as anything
//! is off. Here the same pairing is done in one left-to-right pass: a det takes the label of the last ref
//! that has no det yet, or no label. Everything malformed is reported in [`Grounding::problems`] and the
//! valid boxes around it are kept, since users mostly see odd-length, out-of-range or cut-off boxes
//! (v2 §13, landscape §7 item 3).

use serde::{Deserialize, Serialize};

const REF_OPEN: &str = "<|ref|>";
const REF_CLOSE: &str = "<|/ref|>";
const DET_OPEN: &str = "<|det|>";
const DET_CLOSE: &str = "<|/det|>";
const GROUNDING: &str = "<|grounding|>";
/// sep2 of the conversation template (v2 §6.1); present when the text was decoded with special tokens.
const EOS: &str = "<｜end▁of▁sentence｜>";
const TAGS: [&str; 6] = [REF_OPEN, REF_CLOSE, DET_OPEN, DET_CLOSE, GROUNDING, EOS];

/// The largest coordinate the model emits: coordinates are integers on a 0–999 scale (v2 §6.4).
pub const COORD_MAX: u32 = 999;

/// What [`parse_grounding`] found in one answer.
///
/// JSON (what `--boxes-json` writes and the server returns):
/// ```json
/// {
///   "objects": [
///     { "label": "The giraffe at the back.",
///       "boxes": [ { "normalized": [580, 270, 999, 900], "pixels": [371, 129, 639, 432] } ] },
///     { "label": null, "boxes": [ { "normalized": [0, 0, 10, 10], "pixels": [0, 0, 6, 4] } ] }
///   ],
///   "problems": ["byte 80: box [1, 2, 3] has 3 values, expected 4 (x1, y1, x2, y2); box dropped"],
///   "plain_text": "The giraffe at the back.",
///   "image_size": [640, 480]
/// }
/// ```
/// `pixels` and `image_size` are `null` when no image size was given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grounding {
    /// One entry per det, in the order of the text.
    pub objects: Vec<GroundedObject>,
    /// Human-readable notes on malformed markup, each starting with the byte offset in the input.
    pub problems: Vec<String>,
    /// The text with the markup removed: ref labels kept, det blocks and `<|grounding|>` dropped.
    pub plain_text: String,
    /// `[width, height]` of the image the `pixels` refer to.
    pub image_size: Option<[u32; 2]>,
}

/// One det block and the label of the ref it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroundedObject {
    /// The ref text (trimmed); `None` for a det without a ref.
    pub label: Option<String>,
    /// At least one box.
    pub boxes: Vec<BoxCoords>,
}

/// One box, `[x1, y1, x2, y2]` with `x1 <= x2`, `y1 <= y2` (top-left, bottom-right).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoxCoords {
    /// As emitted, 0–999 relative to the original image (out-of-range values clamped, see `problems`).
    pub normalized: [u32; 4],
    /// Inclusive pixel corners, see [`to_pixels`]; `None` without an image size.
    pub pixels: Option<[u32; 4]>,
}

/// Maps a 0–999 box to inclusive pixel corners of a `width`×`height` image (v2 §6.4).
///
/// Each coordinate is `int(x / 999 * W)` exactly as the official `parse_ref_bbox` computes it, in f64
/// (Python floats are f64 and `int` truncates). This is NOT always the integer `x * W / 999`: for W = 111,
/// x = 63 the float path gives 6 and the integer one 7. The result is then clamped to the last pixel
/// (`W - 1`, `H - 1`), which only the value 999 reaches; PIL clips the same way when it draws.
/// A zero-sized image gives all zeros.
pub fn to_pixels(normalized: [u32; 4], width: u32, height: u32) -> [u32; 4] {
    let map = |v: u32, size: u32| {
        // ref: int(box[0] / 999 * image_w)
        let px = (f64::from(v) / 999.0 * f64::from(size)) as u32;
        px.min(size.saturating_sub(1))
    };
    let [x1, y1, x2, y2] = normalized;
    [
        map(x1, width),
        map(y1, height),
        map(x2, width),
        map(y2, height),
    ]
}

/// Parses the grounding markup in a model answer (v2 §6.4).
///
/// `text` is the decoded answer with special tokens kept (`skip_special_tokens=False`, as the official
/// example decodes; with them stripped there is nothing left to parse). `image_size` is `(width, height)` of
/// the original image; with it each box also gets pixel corners. Never fails: whatever is malformed
/// (unclosed or stray tags, wrong value counts, non-numbers, values over 999, swapped corners, empty dets,
/// output cut off at max_tokens) is described in `problems`, and every valid box is still returned.
pub fn parse_grounding(text: &str, image_size: Option<(u32, u32)>) -> Grounding {
    let mut p = Parser {
        image_size,
        ..Parser::default()
    };
    if let Some((w, h)) = image_size {
        if w == 0 || h == 0 {
            p.problems.push(format!(
                "image size {w}x{h} has no pixels; boxes get no pixel corners"
            ));
            p.image_size = None;
        }
    }
    p.run(text);
    Grounding {
        objects: p.objects,
        problems: p.problems,
        plain_text: p.plain,
        image_size: p.image_size.map(|(w, h)| [w, h]),
    }
}

/// Where the scan is: in prose, inside a ref (collecting its label) or inside a det (collecting boxes).
#[derive(Default)]
enum State {
    #[default]
    Text,
    Ref {
        at: usize,
        label: String,
    },
    Det {
        at: usize,
        content: String,
    },
}

#[derive(Default)]
struct Parser {
    image_size: Option<(u32, u32)>,
    state: State,
    /// The last closed ref that has no det yet, with its byte offset.
    pending_label: Option<(usize, String)>,
    /// Right after a det was cut out: drop one following space so "a <det> b" reads "a b".
    skip_space: bool,
    objects: Vec<GroundedObject>,
    problems: Vec<String>,
    plain: String,
}

impl Parser {
    fn run(&mut self, text: &str) {
        let mut i = 0;
        while let Some(c) = text[i..].chars().next() {
            let rest = &text[i..];
            if let Some(tag) = TAGS.into_iter().find(|t| rest.starts_with(t)) {
                self.tag(tag, i);
                i += tag.len();
                continue;
            }
            if is_cut_tag(rest) {
                self.problems.push(format!(
                    "byte {i}: output ends inside a tag ({rest:?}); dropped"
                ));
                break;
            }
            self.char(c);
            i += c.len_utf8();
        }
        self.finish(text.len());
    }

    fn char(&mut self, c: char) {
        match &mut self.state {
            State::Text => {
                if !(self.skip_space && c == ' ') {
                    self.plain.push(c);
                }
                self.skip_space = false;
            }
            State::Ref { label, .. } => label.push(c),
            State::Det { content, .. } => content.push(c),
        }
    }

    fn tag(&mut self, tag: &'static str, at: usize) {
        self.skip_space = false;
        let empty = String::new;
        match (std::mem::take(&mut self.state), tag) {
            (state, GROUNDING | EOS) => self.state = state,
            (State::Text, REF_OPEN) => {
                self.unpaired_label();
                self.state = State::Ref { at, label: empty() };
            }
            (State::Text, DET_OPEN) => {
                self.state = State::Det {
                    at,
                    content: empty(),
                }
            }
            (State::Ref { at: open, label }, REF_CLOSE) => self.close_ref(open, label),
            (State::Ref { at: open, label }, DET_OPEN) => {
                self.problems.push(format!(
                    "byte {open}: <|ref|> is not closed before the <|det|> at byte {at}; closed there"
                ));
                self.close_ref(open, label);
                self.state = State::Det {
                    at,
                    content: empty(),
                };
            }
            (State::Det { at: open, content }, DET_CLOSE) => self.close_det(open, &content, false),
            (State::Det { at: open, content }, REF_OPEN) => {
                self.problems.push(format!(
                    "byte {open}: <|det|> is not closed before the <|ref|> at byte {at}; closed there"
                ));
                self.close_det(open, &content, false);
                self.state = State::Ref { at, label: empty() };
            }
            (state, _) => {
                let what = match (&state, tag) {
                    (State::Ref { .. }, REF_OPEN) | (State::Det { .. }, DET_OPEN) => "nested",
                    _ => "stray",
                };
                self.problems
                    .push(format!("byte {at}: {what} {tag} ignored"));
                self.state = state;
            }
        }
    }

    /// A ref is closed: its label goes into the prose and waits for its det.
    fn close_ref(&mut self, at: usize, label: String) {
        self.plain.push_str(&label);
        let trimmed = label.trim();
        if trimmed.is_empty() {
            self.problems
                .push(format!("byte {at}: empty <|ref|>; its boxes get no label"));
        } else {
            self.pending_label = Some((at, trimmed.to_string()));
        }
    }

    /// A det is closed (or cut off): its boxes become one object under the pending label.
    fn close_det(&mut self, at: usize, content: &str, truncated: bool) {
        let label = self.pending_label.take().map(|(_, l)| l);
        let boxes = parse_boxes(content, at, truncated, self.image_size, &mut self.problems);
        if boxes.is_empty() {
            let name = label
                .as_deref()
                .map_or(String::new(), |l| format!(" for {l:?}"));
            self.problems
                .push(format!("byte {at}: <|det|>{name} holds no valid box"));
        } else {
            self.objects.push(GroundedObject { label, boxes });
        }
        self.skip_space = self.plain.is_empty() || self.plain.ends_with(char::is_whitespace);
    }

    /// A new ref starts, or the text ends, while the previous ref still has no det.
    fn unpaired_label(&mut self) {
        if let Some((at, label)) = self.pending_label.take() {
            self.problems.push(format!(
                "byte {at}: <|ref|>{label}<|/ref|> is not followed by a <|det|>; no box for it"
            ));
        }
    }

    fn finish(&mut self, end: usize) {
        match std::mem::take(&mut self.state) {
            State::Text => {}
            State::Ref { at, label } => {
                self.problems.push(format!("byte {at}: <|ref|> is not closed at the end of the output (cut off at max_tokens?)"));
                self.plain.push_str(&label);
            }
            State::Det { at, content } => {
                self.problems.push(format!(
                    "byte {at}: <|det|> is not closed at the end of the output (byte {end}; cut off at max_tokens?); complete boxes kept"
                ));
                self.close_det(at, &content, true);
            }
        }
        self.unpaired_label();
    }
}

/// True when `rest` is a proper prefix of a tag, i.e. the text stops in the middle of one.
fn is_cut_tag(rest: &str) -> bool {
    rest.len() >= 2
        && TAGS
            .iter()
            .any(|t| t.len() > rest.len() && t.starts_with(rest))
}

/// Boxes inside one det: every innermost `[...]`, which covers `[[a, b, c, d], [..]]` as well as a bare
/// `[a, b, c, d]` (the official code takes `box[1:-1]` and then each `\[.*?\]`).
fn parse_boxes(
    content: &str,
    at: usize,
    truncated: bool,
    image_size: Option<(u32, u32)>,
    problems: &mut Vec<String>,
) -> Vec<BoxCoords> {
    let mut boxes = Vec::new();
    let mut group: Option<usize> = None;
    let mut junk = false;
    for (i, c) in content.char_indices() {
        match c {
            '[' => group = Some(i + 1),
            ']' => {
                if let Some(start) = group.take() {
                    if let Some(b) = parse_box(&content[start..i], at, image_size, problems) {
                        boxes.push(b);
                    }
                }
            }
            _ if group.is_some() || c == ',' || c.is_whitespace() => {}
            _ => junk = true,
        }
    }
    if junk {
        problems.push(format!(
            "byte {at}: <|det|> holds text outside [x1, y1, x2, y2] lists ({content:?}); ignored"
        ));
    }
    if let Some(start) = group {
        let why = if truncated {
            "cut off"
        } else {
            "missing its `]`"
        };
        problems.push(format!(
            "byte {at}: box [{} is {why}; dropped",
            &content[start..]
        ));
    }
    boxes
}

/// One `x1, y1, x2, y2` list. Values are clamped to 0–999 and corners put in order, each with a problem.
fn parse_box(
    list: &str,
    at: usize,
    image_size: Option<(u32, u32)>,
    problems: &mut Vec<String>,
) -> Option<BoxCoords> {
    let mut items: Vec<&str> = list.split(',').map(str::trim).collect();
    if items.len() > 1 && items.last() == Some(&"") {
        items.pop(); // `[1, 2, 3, 4,]` is a valid Python list
    }
    if items.len() != 4 {
        let n = if items == [""] { 0 } else { items.len() };
        problems.push(format!(
            "byte {at}: box [{list}] has {n} values, expected 4 (x1, y1, x2, y2); box dropped"
        ));
        return None;
    }
    let mut v = [0u32; 4];
    for (slot, item) in v.iter_mut().zip(&items) {
        let (negative, digits) = match item.strip_prefix('-') {
            Some(d) => (true, d),
            None => (false, *item),
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            problems.push(format!(
                "byte {at}: box [{list}] has a non-integer value {item:?}; box dropped"
            ));
            return None;
        }
        let magnitude = digits.parse::<u64>().unwrap_or(u64::MAX); // only overflow can fail here
        *slot = if negative && magnitude > 0 {
            problems.push(format!(
                "byte {at}: box [{list}]: {item} is below 0; clamped to 0"
            ));
            0
        } else if magnitude > u64::from(COORD_MAX) {
            problems.push(format!(
                "byte {at}: box [{list}]: {item} is above {COORD_MAX}; clamped to {COORD_MAX}"
            ));
            COORD_MAX
        } else {
            magnitude as u32
        };
    }
    let [mut x1, mut y1, mut x2, mut y2] = v;
    if x2 < x1 {
        problems.push(format!("byte {at}: box [{list}]: x2 < x1; swapped"));
        std::mem::swap(&mut x1, &mut x2);
    }
    if y2 < y1 {
        problems.push(format!("byte {at}: box [{list}]: y2 < y1; swapped"));
        std::mem::swap(&mut y1, &mut y2);
    }
    let normalized = [x1, y1, x2, y2];
    Some(BoxCoords {
        normalized,
        pixels: image_size.map(|(w, h)| to_pixels(normalized, w, h)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    fn b(normalized: [u32; 4], pixels: Option<[u32; 4]>) -> BoxCoords {
        BoxCoords { normalized, pixels }
    }

    fn obj(label: Option<&str>, boxes: &[[u32; 4]]) -> GroundedObject {
        GroundedObject {
            label: label.map(str::to_string),
            boxes: boxes.iter().map(|n| b(*n, None)).collect(),
        }
    }

    /// Asserts that exactly `n` problems mention `needle`.
    fn assert_problems(g: &Grounding, needle: &str, n: usize) {
        let found = g.problems.iter().filter(|p| p.contains(needle)).count();
        assert_eq!(
            found, n,
            "{n} problem(s) with {needle:?} expected in {:#?}",
            g.problems
        );
    }

    #[test]
    fn readme_referring_expression() {
        // v2 §6.4, README answer; 640x480 as in a typical photo.
        let text = "<|ref|>The giraffe at the back.<|/ref|><|det|>[[580, 270, 999, 900]]<|/det|><｜end▁of▁sentence｜>";
        let g = parse_grounding(text, Some((640, 480)));
        // By hand: 580/999*640 = 371.57 → 371; 270/999*480 = 129.73 → 129; 999 → 640 → last column 639;
        // 900/999*480 = 432.43 → 432.
        let want = GroundedObject {
            label: Some("The giraffe at the back.".into()),
            boxes: vec![b([580, 270, 999, 900], Some([371, 129, 639, 432]))],
        };
        assert_eq!(g.objects, vec![want]);
        assert_eq!(g.plain_text, "The giraffe at the back.");
        assert_eq!(g.image_size, Some([640, 480]));
        assert!(g.problems.is_empty(), "{:?}", g.problems);
    }

    #[test]
    fn one_label_many_boxes() {
        let text = "Find all the <|ref|>Watermelon slices<|/ref|><|det|>[[10, 20, 30, 40], [50,60,70,80]]<|/det|>";
        let g = parse_grounding(text, None);
        assert_eq!(
            g.objects,
            vec![obj(
                Some("Watermelon slices"),
                &[[10, 20, 30, 40], [50, 60, 70, 80]]
            )]
        );
        assert_eq!(g.plain_text, "Find all the Watermelon slices");
        assert_eq!(g.image_size, None);
        assert!(g.problems.is_empty(), "{:?}", g.problems);
    }

    #[test]
    fn grounded_conversation_with_several_labels() {
        let text = "<|grounding|>A <|ref|>cat<|/ref|><|det|>[[1, 2, 3, 4]]<|/det|> sits next to \
                    <|ref|>two dogs<|/ref|><|det|>[[5, 6, 7, 8], [9, 10, 11, 12]]<|/det|>.";
        let g = parse_grounding(text, None);
        let want = vec![
            obj(Some("cat"), &[[1, 2, 3, 4]]),
            obj(Some("two dogs"), &[[5, 6, 7, 8], [9, 10, 11, 12]]),
        ];
        assert_eq!(g.objects, want);
        assert_eq!(g.plain_text, "A cat sits next to two dogs.");
        assert!(g.problems.is_empty(), "{:?}", g.problems);
    }

    #[test]
    fn det_without_ref_has_no_label_and_leaves_readable_text() {
        let g = parse_grounding(
            "It is here: <|det|>[[100, 200, 300, 400]]<|/det|> on the left.",
            None,
        );
        assert_eq!(g.objects, vec![obj(None, &[[100, 200, 300, 400]])]);
        assert_eq!(g.plain_text, "It is here: on the left.");
        assert!(g.problems.is_empty(), "{:?}", g.problems);

        // A second det right after a labelled one is a det of its own, without the label.
        let g = parse_grounding(
            "<|ref|>cat<|/ref|><|det|>[[1, 2, 3, 4]]<|/det|><|det|>[[5, 6, 7, 8]]<|/det|>",
            None,
        );
        assert_eq!(
            g.objects,
            vec![
                obj(Some("cat"), &[[1, 2, 3, 4]]),
                obj(None, &[[5, 6, 7, 8]])
            ]
        );
    }

    #[test]
    fn pixels_follow_the_official_float_formula() {
        // ref: int(x / 999 * W). Values worked out by hand:
        // W = 640: 0 → 0; 500/999*640 = 320.32 → 320; 998/999*640 = 639.36 → 639; 999 → 640, clamped to 639.
        // H = 480: 1/999*480 = 0.48 → 0; 999 → 480, clamped to 479.
        assert_eq!(to_pixels([0, 1, 500, 999], 640, 480), [0, 0, 320, 479]);
        assert_eq!(to_pixels([998, 0, 999, 998], 640, 480), [639, 0, 639, 479]);
        // 63 * 111 / 999 = 7 exactly, but 63 / 999 in f64 is just below 7/111, so Python's float path gives
        // 6.999… → 6. We follow the official code, not the integer formula.
        assert_eq!(to_pixels([63, 63, 63, 63], 111, 222), [6, 13, 6, 13]);
        assert_eq!(to_pixels([999, 999, 999, 999], 1, 1), [0, 0, 0, 0]);
        assert_eq!(to_pixels([999, 999, 999, 999], 0, 0), [0, 0, 0, 0]);
    }

    #[test]
    fn pixels_stay_inside_the_image() {
        for (w, h) in [
            (1, 1),
            (2, 3),
            (111, 222),
            (640, 480),
            (999, 1000),
            (4096, 1),
        ] {
            for v in [0, 1, 498, 499, 500, 998, 999] {
                let [x1, y1, x2, y2] = to_pixels([v, v, v, v], w, h);
                assert!(x1 == x2 && x1 < w && y1 == y2 && y1 < h, "{v} on {w}x{h}");
            }
        }
    }

    #[test]
    fn cut_off_at_max_tokens_keeps_complete_boxes() {
        let g = parse_grounding("<|ref|>cat<|/ref|><|det|>[[1, 2, 3, 4], [5, 6, 7", None);
        assert_eq!(g.objects, vec![obj(Some("cat"), &[[1, 2, 3, 4]])]);
        assert_problems(&g, "<|det|> is not closed at the end", 1);
        assert_problems(&g, "box [5, 6, 7 is cut off", 1);
        assert_eq!(g.plain_text, "cat");

        // Cut inside a tag's text (not a single token there, e.g. text from elsewhere).
        let g = parse_grounding("<|ref|>cat<|/ref|><|det|>[[1, 2, 3, 4]]<|/de", None);
        assert_eq!(g.objects, vec![obj(Some("cat"), &[[1, 2, 3, 4]])]);
        assert_problems(&g, "ends inside a tag", 1);
        assert_problems(&g, "<|det|> is not closed", 1);

        // Cut inside the label.
        let g = parse_grounding("There is a <|ref|>black ca", None);
        assert!(g.objects.is_empty());
        assert_eq!(g.plain_text, "There is a black ca");
        assert_problems(&g, "<|ref|> is not closed at the end", 1);
    }

    #[test]
    fn wrong_value_counts_drop_only_those_boxes() {
        let g = parse_grounding(
            "<|det|>[[1, 2, 3], [1, 2, 3, 4, 5], [10, 20, 30, 40], []]<|/det|>",
            None,
        );
        assert_eq!(g.objects, vec![obj(None, &[[10, 20, 30, 40]])]);
        assert_problems(&g, "has 3 values", 1);
        assert_problems(&g, "has 5 values", 1);
        assert_problems(&g, "has 0 values", 1);
        assert_eq!(g.problems.len(), 3, "{:?}", g.problems);
        // A trailing comma is still a valid Python list.
        let g = parse_grounding("<|det|>[[1, 2, 3, 4,]]<|/det|>", None);
        assert_eq!(g.objects, vec![obj(None, &[[1, 2, 3, 4]])]);
        assert!(g.problems.is_empty(), "{:?}", g.problems);
    }

    #[test]
    fn non_integer_values_drop_the_box() {
        let g = parse_grounding(
            "<|det|>[[a, 2, 3, 4], [1.5, 2, 3, 4], [1, , 3, 4], [1, 2, 3, 4]]<|/det|>",
            None,
        );
        assert_eq!(g.objects, vec![obj(None, &[[1, 2, 3, 4]])]);
        assert_problems(&g, "non-integer value", 3);
    }

    #[test]
    fn out_of_range_values_are_clamped_and_reported() {
        let text = "<|det|>[[100, -5, 1200, 99999999999999999999999]]<|/det|>";
        let g = parse_grounding(text, Some((640, 480)));
        assert_eq!(
            g.objects[0].boxes,
            vec![b([100, 0, 999, 999], Some([64, 0, 639, 479]))]
        );
        assert_problems(&g, "above 999; clamped to 999", 2);
        assert_problems(&g, "below 0; clamped to 0", 1);
        // "-0" is 0, not a problem.
        assert!(parse_grounding("<|det|>[[-0, 0, 1, 1]]<|/det|>", None)
            .problems
            .is_empty());
    }

    #[test]
    fn swapped_corners_are_put_in_order() {
        let g = parse_grounding("<|det|>[[500, 600, 100, 200]]<|/det|>", None);
        assert_eq!(g.objects, vec![obj(None, &[[100, 200, 500, 600]])]);
        assert_problems(&g, "x2 < x1; swapped", 1);
        assert_problems(&g, "y2 < y1; swapped", 1);
    }

    #[test]
    fn empty_or_unbracketed_dets_give_no_object() {
        for (text, extra) in [
            ("<|ref|>cat<|/ref|><|det|><|/det|>", None),
            (
                "<|ref|>cat<|/ref|><|det|>[[]]<|/det|>",
                Some("has 0 values"),
            ),
            (
                "<|ref|>cat<|/ref|><|det|>580, 270, 999, 900<|/det|>",
                Some("text outside"),
            ),
            (
                "<|ref|>cat<|/ref|><|det|>[[1, 2, 3, 4<|/det|>",
                Some("missing its `]`"),
            ),
        ] {
            let g = parse_grounding(text, None);
            assert!(g.objects.is_empty(), "{text}");
            assert_problems(&g, "<|det|> for \"cat\" holds no valid box", 1);
            if let Some(extra) = extra {
                assert_problems(&g, extra, 1);
            }
            assert_eq!(g.plain_text, "cat");
        }
        // A bare list without the outer brackets is accepted.
        let g = parse_grounding("<|det|>[1, 2, 3, 4]<|/det|>", None);
        assert_eq!(g.objects, vec![obj(None, &[[1, 2, 3, 4]])]);
        // Junk next to valid boxes is reported, the boxes kept.
        let g = parse_grounding("<|det|>[[1, 2, 3, 4]] oops<|/det|>", None);
        assert_eq!(g.objects, vec![obj(None, &[[1, 2, 3, 4]])]);
        assert_problems(&g, "text outside", 1);
    }

    #[test]
    fn nested_stray_and_unclosed_tags() {
        let g = parse_grounding(
            "<|ref|>a <|ref|>cat<|/ref|><|det|>[[1, 2, 3, 4]]<|/det|>",
            None,
        );
        assert_eq!(g.objects, vec![obj(Some("a cat"), &[[1, 2, 3, 4]])]);
        assert_problems(&g, "nested <|ref|>", 1);

        let g = parse_grounding("<|det|>[[1, 2, 3, 4]]<|det|>[[5, 6, 7, 8]]<|/det|>", None);
        assert_eq!(g.objects, vec![obj(None, &[[1, 2, 3, 4], [5, 6, 7, 8]])]);
        assert_problems(&g, "nested <|det|>", 1);

        let g = parse_grounding(
            "a <|/ref|>b<|/det|> c<|ref|>x<|/ref|><|/ref|><|det|>[[1, 2, 3, 4]]<|/det|><|/det|>",
            None,
        );
        assert_eq!(g.objects, vec![obj(Some("x"), &[[1, 2, 3, 4]])]);
        assert_problems(&g, "stray <|/ref|>", 2);
        assert_problems(&g, "stray <|/det|>", 2);
        assert_eq!(g.plain_text, "a b cx");

        // A det opened inside a ref closes the ref; a ref opened inside a det closes the det.
        let g = parse_grounding(
            "<|ref|>cat<|det|>[[1, 2, 3, 4]]<|ref|>dog<|/ref|><|det|>[[5, 6, 7, 8]]<|/det|>",
            None,
        );
        assert_eq!(
            g.objects,
            vec![
                obj(Some("cat"), &[[1, 2, 3, 4]]),
                obj(Some("dog"), &[[5, 6, 7, 8]])
            ]
        );
        assert_problems(&g, "<|ref|> is not closed before the <|det|>", 1);
        assert_problems(&g, "<|det|> is not closed before the <|ref|>", 1);
        assert_eq!(g.plain_text, "catdog");
    }

    #[test]
    fn ref_without_det_and_empty_ref() {
        let text = "<|ref|>cat<|/ref|> and <|ref|>dog<|/ref|><|det|>[[1, 2, 3, 4]]<|/det|> and <|ref|>bird<|/ref|>";
        let g = parse_grounding(text, None);
        assert_eq!(g.objects, vec![obj(Some("dog"), &[[1, 2, 3, 4]])]);
        assert_problems(&g, "<|ref|>cat<|/ref|> is not followed by a <|det|>", 1);
        assert_problems(&g, "<|ref|>bird<|/ref|> is not followed by a <|det|>", 1);
        assert_eq!(g.plain_text, "cat and dog and bird");

        let g = parse_grounding("<|ref|> <|/ref|><|det|>[[1, 2, 3, 4]]<|/det|>", None);
        assert_eq!(g.objects, vec![obj(None, &[[1, 2, 3, 4]])]);
        assert_problems(&g, "empty <|ref|>", 1);
    }

    #[test]
    fn zero_sized_image_gives_no_pixels() {
        let g = parse_grounding("<|det|>[[1, 2, 3, 4]]<|/det|>", Some((0, 480)));
        assert_eq!(g.objects, vec![obj(None, &[[1, 2, 3, 4]])]);
        assert_eq!(g.image_size, None);
        assert_problems(&g, "image size 0x480", 1);
    }

    #[test]
    fn json_shape() {
        let text = "<|ref|>giraffe<|/ref|><|det|>[[580, 270, 999, 900]]<|/det|> <|det|>[[1, 2, 3]]<|/det|>";
        let got =
            serde_json::to_value(parse_grounding(text, Some((640, 480)))).expect("serialisable");
        // The second det starts at byte 7 + 7 + 8 + 7 + 22 + 8 + 1 = 60.
        let want = serde_json::json!({
            "objects": [
                { "label": "giraffe", "boxes": [ { "normalized": [580, 270, 999, 900], "pixels": [371, 129, 639, 432] } ] }
            ],
            "problems": [
                "byte 60: box [1, 2, 3] has 3 values, expected 4 (x1, y1, x2, y2); box dropped",
                "byte 60: <|det|> holds no valid box"
            ],
            "plain_text": "giraffe ",
            "image_size": [640, 480]
        });
        assert_eq!(got, want);
        let none = serde_json::to_value(parse_grounding("<|det|>[[1, 2, 3, 4]]<|/det|>", None))
            .expect("serialisable");
        assert_eq!(
            none["objects"][0],
            serde_json::json!({ "label": null, "boxes": [ { "normalized": [1, 2, 3, 4], "pixels": null } ] })
        );
        assert_eq!(none["image_size"], serde_json::Value::Null);
    }

    #[test]
    fn random_garbage_never_panics_and_keeps_invariants() {
        const PIECES: [&str; 28] = [
            REF_OPEN,
            REF_CLOSE,
            DET_OPEN,
            DET_CLOSE,
            GROUNDING,
            EOS,
            "[",
            "]",
            "[[",
            "]]",
            ",",
            ", ",
            " ",
            "-",
            "0",
            "7",
            "999",
            "1000",
            "99999999999999999999",
            "12.5",
            "abc",
            "猫",
            "é",
            "\n",
            "<|",
            "<|de",
            "<",
            "|>",
        ];
        let mut rng = StdRng::seed_from_u64(0x6d5f_7631);
        for _ in 0..5000 {
            let n = rng.random_range(0..40);
            let text: String = (0..n)
                .map(|_| PIECES[rng.random_range(0..PIECES.len())])
                .collect();
            let size = match rng.random_range(0..4) {
                0 => None,
                1 => Some((0, rng.random_range(0..5))),
                _ => Some((rng.random_range(1..2000), rng.random_range(1..2000))),
            };
            let g = parse_grounding(&text, size);
            for tag in TAGS {
                assert!(!g.plain_text.contains(tag), "{text:?} → {:?}", g.plain_text);
            }
            for o in &g.objects {
                assert!(!o.boxes.is_empty(), "{text:?}");
                for bx in &o.boxes {
                    let [x1, y1, x2, y2] = bx.normalized;
                    assert!(
                        x1 <= x2 && y1 <= y2 && x2 <= COORD_MAX && y2 <= COORD_MAX,
                        "{text:?}"
                    );
                    match (bx.pixels, g.image_size) {
                        (Some([px1, py1, px2, py2]), Some([w, h])) => {
                            assert!(
                                px1 <= px2 && py1 <= py2 && px2 < w && py2 < h,
                                "{text:?} {size:?}"
                            )
                        }
                        (None, None) => {}
                        other => panic!("pixels and image_size disagree: {other:?} for {text:?}"),
                    }
                }
            }
        }
    }
}
