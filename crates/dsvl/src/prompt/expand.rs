//! Image-token expansion (v1 §8.2) and the context budget.
//!
//! ref (`VLChatProcessor.add_image_token`, `add_special_token=False`): each `<image_placeholder>` id is *replaced*
//! by `num_image_tokens` (576) copies of the same id; no begin/end-of-image tokens. Image k fills the k-th span
//! (v1 §8.2.3, §9: `images_seq_mask = input_ids == image_id`).

use std::ops::Range;

use crate::error::{Error, Result};

/// Replace every `image_id` in `ids` by `tokens_per_image` copies of it.
pub fn expand_image_tokens(ids: &[u32], image_id: u32, tokens_per_image: usize) -> Vec<u32> {
    let n_images = ids.iter().filter(|&&id| id == image_id).count();
    let mut out = Vec::with_capacity(ids.len() + n_images * tokens_per_image.saturating_sub(1));
    for &id in ids {
        if id == image_id {
            out.extend(std::iter::repeat_n(image_id, tokens_per_image));
        } else {
            out.push(id);
        }
    }
    out
}

/// For *unexpanded* `ids`: the span each image occupies in the expanded sequence, in image order. Adjacent
/// placeholders give adjacent spans (a plain `== image_id` run could not tell them apart).
pub fn image_spans(ids: &[u32], image_id: u32, tokens_per_image: usize) -> Vec<Range<usize>> {
    let mut spans = Vec::new();
    let mut pos = 0;
    for &id in ids {
        if id == image_id {
            spans.push(pos..pos + tokens_per_image);
            pos += tokens_per_image;
        } else {
            pos += 1;
        }
    }
    spans
}

/// A prompt ready for the model: expanded ids and one span per image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpandedPrompt {
    pub ids: Vec<u32>,
    pub image_spans: Vec<Range<usize>>,
}

/// Check that the tokenized prompt holds exactly `n_images` image tokens (v1 §8.2.3; the reference would fail
/// with a shape error in the masked assignment, v1 §14), then expand it.
pub fn expand_prompt(
    ids: &[u32],
    image_id: u32,
    tokens_per_image: usize,
    n_images: usize,
    marker: &str,
) -> Result<ExpandedPrompt> {
    let markers = ids.iter().filter(|&&id| id == image_id).count();
    if markers != n_images {
        return Err(Error::ImageCountMismatch {
            markers,
            images: n_images,
            marker: marker.to_string(),
        });
    }
    Ok(ExpandedPrompt {
        ids: expand_image_tokens(ids, image_id, tokens_per_image),
        image_spans: image_spans(ids, image_id, tokens_per_image),
    })
}

/// Error unless `prompt_len + max_new_tokens` fits in `max_context` (e.g. `max_position_embeddings`). A prompt is
/// never cut to fit (STYLE §3.5); the gradio demo's budgeting counts a placeholder as 1 token (v1 §14), so pass the
/// *expanded* length.
pub fn check_context(prompt_len: usize, max_new_tokens: usize, max_context: usize) -> Result<()> {
    let needed = prompt_len.saturating_add(max_new_tokens);
    if needed > max_context {
        return Err(Error::ContextOverflow {
            prompt: prompt_len,
            max_new: max_new_tokens,
            needed,
            max: max_context,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const IMG: u32 = 9;

    #[test]
    fn expands_each_placeholder_in_place() {
        let ids = [1, IMG, 5, IMG, IMG, 6];
        let out = expand_image_tokens(&ids, IMG, 3);
        assert_eq!(out, [1, 9, 9, 9, 5, 9, 9, 9, 9, 9, 9, 6]);
        let spans = image_spans(&ids, IMG, 3);
        assert_eq!(spans, [1..4, 5..8, 8..11]);
        assert!(spans
            .iter()
            .all(|s| out[s.clone()].iter().all(|&t| t == IMG)));
        assert_eq!(expand_image_tokens(&[1, 2], IMG, 576), [1, 2]);
    }

    #[test]
    fn expand_prompt_checks_count() {
        let p = expand_prompt(&[1, IMG, 2], IMG, 576, 1, "<image_placeholder>").unwrap();
        assert_eq!(p.ids.len(), 578);
        assert_eq!(p.image_spans.len(), 1);
        assert_eq!(p.image_spans[0], 1..577);
        assert!(matches!(
            expand_prompt(&[1, IMG, 2], IMG, 576, 2, "<image_placeholder>"),
            Err(Error::ImageCountMismatch {
                markers: 1,
                images: 2,
                ..
            })
        ));
    }

    #[test]
    fn context_budget() {
        check_context(3584, 512, 4096).unwrap();
        match check_context(3585, 512, 4096) {
            Err(Error::ContextOverflow {
                prompt: 3585,
                max_new: 512,
                needed: 4097,
                max: 4096,
            }) => {}
            other => panic!("{other:?}"),
        }
        assert!(check_context(usize::MAX, 1, 4096).is_err());
    }
}
