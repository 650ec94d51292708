//! The boxes of a whole answer: an answer with `<|det|>` markup gets a [`Grounding`], parsed
//! with its special tokens kept (also when the request asked to skip them in its text); pixels
//! refer to the last image of the request.

use super::{parse_grounding, Grounding};
use crate::engine::{GenerateParams, Outcome};
use crate::prompt::tokenizer::PromptTokenizer;

/// The tag that opens a box list; answers without it get no `grounding` field.
const DET_OPEN: &str = "<|det|>";

/// The boxes of one answer. `raw`: the answer decoded with special tokens kept; `image_sizes`:
/// every image of the request, in order (`Prepared::image_sizes`); pixels refer to the last one.
pub fn answer_grounding(raw: &str, image_sizes: &[(u32, u32)]) -> Option<Grounding> {
    raw.contains(DET_OPEN)
        .then(|| parse_grounding(raw, image_sizes.last().copied()))
}

/// The boxes of a finished VL2 generation. The answer is parsed with its special tokens kept: when
/// the request asked for `skip_special_tokens`, the text it got has no markup left, so the
/// generated ids are decoded again with special tokens (all of them: a stop string that ended the
/// answer is then part of the parsed text).
pub fn outcome_grounding(
    tok: &PromptTokenizer,
    params: &GenerateParams,
    image_sizes: &[(u32, u32)],
    o: &Outcome,
) -> Option<Grounding> {
    // VL2's default keeps special tokens (`GenerateParams::skip_special_tokens`).
    if !params.skip_special_tokens.unwrap_or(false) {
        return answer_grounding(&o.text, image_sizes);
    }
    match tok.decode(&o.ids, false) {
        Ok(raw) => answer_grounding(&raw, image_sizes),
        Err(e) => {
            tracing::warn!("cannot decode the answer with special tokens for grounding: {e}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{FinishReason, Timings};

    /// The VL2 small fixture's tokenizer: its grounding tags are single special tokens.
    fn vl2_tokenizer() -> PromptTokenizer {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/v2/models/vl2-small-random");
        PromptTokenizer::from_files_with_image_token(
            dir.join("tokenizer.json"),
            Some(&dir.join("tokenizer_config.json")),
            "<image>",
        )
        .expect("fixture tokenizer")
    }

    fn outcome(tok: &PromptTokenizer, answer: &str, skip: bool) -> Outcome {
        let ids = tok.encode_segment(answer).expect("encode");
        assert!(ids.contains(&tok.token_to_id("<|det|>").expect("special")));
        Outcome {
            text: tok.decode(&ids, skip).expect("decode"),
            ids,
            finish_reason: FinishReason::Stop,
            prompt_tokens: 10,
            reused_prompt_tokens: 0,
            timings: Timings::default(),
        }
    }

    #[test]
    fn skipped_special_tokens_still_give_boxes() {
        let tok = vl2_tokenizer();
        let answer = "<|ref|>the red window<|/ref|><|det|>[[120, 40, 610, 580]]<|/det|>";
        for skip in [None, Some(false), Some(true)] {
            let o = outcome(&tok, answer, skip == Some(true));
            assert_eq!(o.text.contains("<|det|>"), skip != Some(true));
            let params = GenerateParams {
                skip_special_tokens: skip,
                ..Default::default()
            };
            let g = outcome_grounding(&tok, &params, &[(300, 900)], &o)
                .unwrap_or_else(|| panic!("{skip:?}: boxes found"));
            assert_eq!(g.objects[0].label.as_deref(), Some("the red window"));
            assert_eq!(g.objects[0].boxes[0].normalized, [120, 40, 610, 580]);
            // int(120/999*300) = 36, int(40/999*900) = 36, int(610/999*300) = 183, int(580/999*900) = 522.
            assert_eq!(g.objects[0].boxes[0].pixels, Some([36, 36, 183, 522]));
        }
    }

    #[test]
    fn boxes_map_to_the_last_image() {
        let raw = "<|ref|>The cat<|/ref|><|det|>[[0, 0, 999, 499]]<|/det|> sits.";
        let g = answer_grounding(raw, &[(640, 480), (300, 900)]).expect("det present");
        assert_eq!(g.image_size, Some([300, 900]));
        assert_eq!(g.objects.len(), 1);
        assert_eq!(g.objects[0].label.as_deref(), Some("The cat"));
        assert_eq!(g.objects[0].boxes[0].normalized, [0, 0, 999, 499]);
        // int(999/999*300) = 300, clamped to the last pixel 299; int(499/999*900) = 449.
        assert_eq!(g.objects[0].boxes[0].pixels, Some([0, 0, 299, 449]));
        assert_eq!(g.plain_text, "The cat sits.");
        assert!(g.problems.is_empty(), "{:?}", g.problems);
    }

    #[test]
    fn no_image_gives_normalized_boxes_only() {
        let g = answer_grounding("<|det|>[[1, 2, 3, 4]]<|/det|>", &[]).expect("det present");
        assert_eq!(g.image_size, None);
        assert_eq!(g.objects[0].boxes[0].pixels, None);
        assert_eq!(g.objects[0].label, None);
    }

    #[test]
    fn text_without_det_gets_no_field() {
        assert!(answer_grounding("<|grounding|><|ref|>a cat<|/ref|>", &[(4, 4)]).is_none());
        assert!(answer_grounding("plain answer", &[]).is_none());
    }

    #[test]
    fn malformed_boxes_are_reported_not_fatal() {
        let g = answer_grounding("<|det|>[[1, 2, 3], [5, 6, 7, 8]", &[(100, 100)])
            .expect("det present");
        assert_eq!(g.objects[0].boxes.len(), 1);
        assert_eq!(g.objects[0].boxes[0].normalized, [5, 6, 7, 8]);
        assert!(g.problems.len() >= 2, "{:?}", g.problems);
    }
}
