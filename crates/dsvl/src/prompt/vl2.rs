//! DeepSeek-VL2 prompt token ids (v2 §6.1–6.2), built turn by turn exactly as the official
//! `DeepseekVLV2Processor.process_one(conversations=…, inference_mode=True)` does (`format_messages_v2` +
//! `tokenize_with_images`, `processing_deepseek_vl_v2.py` at HEAD `ef9f91e`). The printed `sft_format` string is
//! never tokenized as a whole, so there is no render-then-encode step as in v1.
//!
//! Sequence: `[BOS]`, then per message
//! - first-message `system`: `encode(content.strip())`, right after BOS with no separator (v2 §6.1 quirk);
//! - user: the `deepseek` template's two-message prompt `"<|User|>: " + content.strip() + "\n\n" +
//!   "<|Assistant|>:"` (`"<|User|>:<|Assistant|>:"` when the stripped content is empty, the template's `role + ":"`
//!   rule), split at the image marker; each text segment is encoded on its own with no special tokens added, and
//!   image k in between becomes `image_tokens[k]` copies of the image id (v2 §5);
//! - assistant: `encode(content.strip()) + [EOS]`; the next user turn follows with nothing in between.
//!
//! In inference mode the reference drops the final EOS. A conversation ending with a user turn gets the empty
//! assistant turn the official examples append, so the prompt ends with the tokens of `"<|Assistant|>:"`; one ending
//! with a non-empty assistant answer ends with that answer's tokens and no EOS (the model continues the answer),
//! exactly as the reference does.
//!
//! Choices where the official processor has no rule (covered by tests):
//! - **Images without markers.** A user turn with images but no marker in its text gets one `"<image>\n"` per image
//!   in front of its text before stripping, as the official web demo does (`"\n".join([IMAGE_TOKEN] * n) + "\n" +
//!   text`); so `("What is this?", 1 image)` gives the canonical `"<image>\nWhat is this?"`. The processor itself
//!   would silently hand the image to the next marker of a later turn, or drop it.
//! - **Mismatches are errors.** A turn whose marker count differs from its image count (other than zero markers),
//!   a marker in a system or assistant message (the reference asserts on the latter and would embed the former as
//!   a text token), or images on a system/assistant message give [`Error::ImageCountMismatch`] or
//!   [`Error::Conversation`]. The web demo would drop surplus markers instead.
//! - **Roles.** [`vl2_role`] accepts the official `<|User|>` / `<|Assistant|>` and the OpenAI `user` / `assistant` /
//!   `system` spellings (plus the reference's `deepseekapi-sys`). A system message is only allowed first (the
//!   reference asserts this). Turns need not alternate: consecutive user turns are formatted one after the other, as
//!   the reference does. At least one user turn is required.

use std::ops::Range;

use super::template::{py_strip, Role};
use super::tokenizer::PromptTokenizer;
use crate::error::{Error, Result};

/// The image marker of `processor_config.json` (`image_token`, v2 §1.4).
pub const VL2_IMAGE_TOKEN: &str = "<image>";
/// User role string of the `deepseek` template (v2 §6.1; ASCII bars).
pub const VL2_USER: &str = "<|User|>";
/// Assistant role string of the `deepseek` template (v2 §6.1).
pub const VL2_ASSISTANT: &str = "<|Assistant|>";
/// The tokens `DeepseekVLV2Processor.__init__` adds when the tokenizer lacks them, in its order (grounding tokens,
/// then the chat roles; v2 §6.3). The published tokenizers have them all.
pub const VL2_SPECIAL_TOKENS: [&str; 7] = [
    "<|ref|>",
    "<|/ref|>",
    "<|det|>",
    "<|/det|>",
    "<|grounding|>",
    VL2_USER,
    VL2_ASSISTANT,
];

/// `sep` of the `deepseek` template, written after a non-empty user message (v2 §6.1).
const SEP: &str = "\n\n";

/// Parse a VL2 message role: `<|User|>` / `user`, `<|Assistant|>` / `assistant`, `system` / `deepseekapi-sys`
/// (the reference's spellings, v2 §6.1, plus OpenAI's), case-insensitively.
pub fn vl2_role(s: &str) -> Result<Role> {
    match s.to_ascii_lowercase().as_str() {
        "<|user|>" | "user" => Ok(Role::User),
        "<|assistant|>" | "assistant" => Ok(Role::Assistant),
        "system" | "deepseekapi-sys" => Ok(Role::System),
        _ => Err(Error::Conversation(format!(
            "unknown role `{s}`; use \"user\", \"assistant\", \"system\", \"<|User|>\" or \"<|Assistant|>\""
        ))),
    }
}

/// Whether images are tiled (v2 §2.1): only when the *whole conversation* (all turns) has at most two images;
/// with three or more every image gets one global view and one identical 1×1 local tile.
pub fn vl2_cropping(total_images: usize) -> bool {
    total_images <= 2
}

/// One VL2 conversation message. Images are opaque here: only their number matters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vl2Turn {
    pub role: Role,
    pub content: String,
    /// Images of this message, in the order of its markers.
    pub n_images: usize,
}

impl Vl2Turn {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
            n_images: 0,
        }
    }

    pub fn with_images(mut self, n_images: usize) -> Self {
        self.n_images = n_images;
        self
    }
}

/// The model-ready prompt: all ids (BOS first, image positions filled with the image id) and, per image in order,
/// the span of its `<image>` ids (the reference's `images_seq_mask` runs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vl2Prompt {
    pub ids: Vec<u32>,
    pub image_spans: Vec<Range<usize>>,
}

/// A user message's text as the template sees it: one `marker + "\n"` per image in front when the text has no
/// marker (web demo), then Python `strip()`. Errors unless the markers match the message's images.
fn user_text(index: usize, turn: &Vl2Turn, marker: &str) -> Result<String> {
    let prefixed;
    let raw = if turn.n_images > 0 && !turn.content.contains(marker) {
        prefixed = format!("{marker}\n").repeat(turn.n_images) + &turn.content;
        prefixed.as_str()
    } else {
        turn.content.as_str()
    };
    let text = py_strip(raw);
    let markers = text.matches(marker).count();
    if markers != turn.n_images {
        return Err(Error::ImageCountMismatch {
            markers,
            images: turn.n_images,
            marker: format!("{marker} (message {index}, user)"),
        });
    }
    Ok(text.to_string())
}

/// Stripped text of a system or assistant message, which can carry neither images nor markers.
fn plain_text<'a>(index: usize, turn: &'a Vl2Turn, marker: &str) -> Result<&'a str> {
    let who = if turn.role == Role::System {
        "system"
    } else {
        "assistant"
    };
    if turn.n_images > 0 {
        return Err(Error::Conversation(format!(
            "message {index} ({who}) has {} images; attach images to user messages only",
            turn.n_images
        )));
    }
    let text = py_strip(&turn.content);
    let markers = text.matches(marker).count();
    if markers > 0 {
        return Err(Error::ImageCountMismatch {
            markers,
            images: 0,
            marker: format!(
                "{marker} (message {index}, {who}: only user messages can hold images)"
            ),
        });
    }
    Ok(text)
}

/// Build the VL2 prompt ids of a conversation (v2 §6.1–6.2; see the module docs for the exact layout).
///
/// `image_marker` must be the tokenizer's image token (`processor_config.json` `image_token`, `<image>`).
/// `image_tokens[k]` is the token count of the k-th image of the conversation (turn order, then marker order),
/// i.e. [`crate::image::vl2_image_tokens`] of its tiling; there must be exactly one entry per image of `turns`.
///
/// Errors: [`Error::Conversation`] for an empty conversation, no user turn, a misplaced system message or images on
/// a non-user message; [`Error::ImageCountMismatch`] when a message's markers and images disagree or
/// `image_tokens` has the wrong length; [`Error::Unsupported`] when `image_marker` is not the tokenizer's image
/// token; [`Error::Tokenize`] if encoding fails.
pub fn build_vl2_ids(
    tok: &PromptTokenizer,
    image_marker: &str,
    turns: &[Vl2Turn],
    image_tokens: &[usize],
) -> Result<Vl2Prompt> {
    if image_marker.is_empty() || tok.token_to_id(image_marker) != Some(tok.image_id()) {
        return Err(Error::Unsupported {
            what: format!("image marker `{image_marker}`"),
            hint: format!(
                "this tokenizer's image token is `{}` (id {}); pass the processor config's image_token",
                tok.image_token(),
                tok.image_id()
            ),
        });
    }
    let Some(last) = turns.last() else {
        return Err(Error::Conversation(
            "no messages; send at least one user message".into(),
        ));
    };
    if let Some(i) = turns.iter().skip(1).position(|t| t.role == Role::System) {
        return Err(Error::Conversation(format!(
            "message {} has role system; a system message is only allowed as the first message",
            i + 1
        )));
    }
    if !turns.iter().any(|t| t.role == Role::User) {
        return Err(Error::Conversation(
            "no user message; send at least one user message".into(),
        ));
    }
    let n_images: usize = turns.iter().map(|t| t.n_images).sum();
    if n_images != image_tokens.len() {
        return Err(Error::ImageCountMismatch {
            markers: n_images,
            images: image_tokens.len(),
            marker: format!(
                "{image_marker} (the messages declare {n_images} images, but {} were tiled)",
                image_tokens.len()
            ),
        });
    }

    let image_id = tok.image_id();
    let total_image_tokens: usize = image_tokens.iter().sum();
    let mut ids = Vec::with_capacity(total_image_tokens + 16 * turns.len() + 1);
    let mut image_spans = Vec::with_capacity(image_tokens.len());
    let mut next_image = image_tokens.iter();
    // ref: `if idx == 0: tokenized_data += [self.bos_id]`, whatever the first role.
    ids.push(tok.bos_id());
    for (index, turn) in turns.iter().enumerate() {
        match turn.role {
            Role::System => {
                ids.extend(tok.encode_segment(plain_text(index, turn, image_marker)?)?)
            }
            Role::User => {
                let text = user_text(index, turn, image_marker)?;
                // ref: conv.append_message(roles[0], content.strip()); conv.append_message(roles[1], "");
                // get_prompt(): `role + ": " + message + sep` for a non-empty message, `role + ":"` for an empty one.
                let question = if text.is_empty() {
                    format!("{VL2_USER}:{VL2_ASSISTANT}:")
                } else {
                    format!("{VL2_USER}: {text}{SEP}{VL2_ASSISTANT}:")
                };
                for (k, segment) in question.split(image_marker).enumerate() {
                    if k > 0 {
                        // `user_text` checked markers == n_images, and the sum matches `image_tokens`.
                        let n = *next_image
                            .next()
                            .expect("image_tokens has one entry per marker (checked above)");
                        image_spans.push(ids.len()..ids.len() + n);
                        ids.extend(std::iter::repeat_n(image_id, n));
                    }
                    ids.extend(tok.encode_segment(segment)?);
                }
            }
            Role::Assistant => {
                ids.extend(tok.encode_segment(plain_text(index, turn, image_marker)?)?);
                ids.push(tok.eos_id());
            }
        }
    }
    if last.role == Role::Assistant {
        // ref (inference_mode): `assert input_ids[-1] == self.eos_id; input_ids = input_ids[:-1]`. A trailing user
        // turn gets the empty assistant turn, whose only token is that EOS: nothing to add.
        ids.pop();
    }
    Ok(Vl2Prompt { ids, image_spans })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prompt::tokenizer::test_tokenizer;

    /// The byte-level test tokenizer (ids 0..255 = bytes in alphabet order) plus the VL2 image, chat and
    /// grounding tokens.
    fn tok(name: &str) -> PromptTokenizer {
        let path = test_tokenizer::save(&format!("vl2-{name}"), false);
        let mut t =
            PromptTokenizer::from_files_with_image_token(&path, None, VL2_IMAGE_TOKEN).unwrap();
        t.ensure_special_tokens(&VL2_SPECIAL_TOKENS);
        t
    }

    fn user(s: &str) -> Vl2Turn {
        Vl2Turn::new(Role::User, s)
    }
    fn assistant(s: &str) -> Vl2Turn {
        Vl2Turn::new(Role::Assistant, s)
    }
    fn enc(t: &PromptTokenizer, s: &str) -> Vec<u32> {
        t.encode_segment(s).unwrap()
    }

    #[test]
    fn roles_parse_both_spellings() {
        for (s, r) in [
            ("<|User|>", Role::User),
            ("user", Role::User),
            ("<|Assistant|>", Role::Assistant),
            ("Assistant", Role::Assistant),
            ("system", Role::System),
            ("deepseekapi-sys", Role::System),
        ] {
            assert_eq!(vl2_role(s).unwrap(), r, "{s}");
        }
        let err = vl2_role("<|Tool|>").unwrap_err().to_string();
        assert!(err.contains("`<|Tool|>`"), "{err}");
    }

    #[test]
    fn cropping_depends_on_the_total_image_count() {
        assert!(vl2_cropping(0) && vl2_cropping(1) && vl2_cropping(2));
        assert!(!vl2_cropping(3) && !vl2_cropping(10));
    }

    #[test]
    fn single_turn_layout() {
        let t = tok("single");
        let img = t.image_id();
        let p = build_vl2_ids(
            &t,
            VL2_IMAGE_TOKEN,
            &[user(" <image>\nHi ").with_images(1), assistant("")],
            &[5],
        )
        .unwrap();
        // BOS, "<|User|>: " (segment ends with its own space), 5 image ids, "\nHi\n\n<|Assistant|>:"; no EOS.
        let mut want = vec![t.bos_id()];
        want.extend(enc(&t, "<|User|>: "));
        want.extend([img; 5]);
        want.extend(enc(&t, "\nHi\n\n<|Assistant|>:"));
        assert_eq!(p.ids, want);
        assert_eq!(p.image_spans, vec![4..9]);
        assert_eq!(
            &p.ids[1..4],
            &[
                t.token_to_id(VL2_USER).unwrap(),
                t.token_to_id(":").unwrap(),
                t.token_to_id("Ġ").unwrap()
            ]
        );
        assert_eq!(p.ids.last(), t.token_to_id(":").as_ref());
        // Without the trailing empty assistant turn: the same ids.
        let q = build_vl2_ids(
            &t,
            VL2_IMAGE_TOKEN,
            &[user("<image>\nHi").with_images(1)],
            &[5],
        )
        .unwrap();
        assert_eq!(q, p);
    }

    #[test]
    fn system_answer_and_second_turn() {
        let t = tok("multi");
        let turns = [
            Vl2Turn::new(Role::System, "  Be brief.\n"),
            user("a"),
            assistant(" b "),
            user("c"),
        ];
        let p = build_vl2_ids(&t, VL2_IMAGE_TOKEN, &turns, &[]).unwrap();
        let mut want = vec![t.bos_id()];
        want.extend(enc(&t, "Be brief."));
        want.extend(enc(&t, "<|User|>: a\n\n<|Assistant|>:"));
        want.extend(enc(&t, "b"));
        want.push(t.eos_id());
        want.extend(enc(&t, "<|User|>: c\n\n<|Assistant|>:"));
        assert_eq!(p.ids, want);
        assert!(p.image_spans.is_empty());
        // Ending on a non-empty answer: its tokens, EOS dropped (the reference's inference mode).
        let p = build_vl2_ids(&t, VL2_IMAGE_TOKEN, &turns[..3], &[]).unwrap();
        assert_eq!(
            p.ids,
            want[..want.len() - enc(&t, "<|User|>: c\n\n<|Assistant|>:").len() - 1]
        );
    }

    #[test]
    fn empty_user_text_uses_the_bare_role() {
        let t = tok("empty");
        let p = build_vl2_ids(&t, VL2_IMAGE_TOKEN, &[user(" \u{3000}")], &[]).unwrap();
        let mut want = vec![t.bos_id()];
        want.extend(enc(&t, "<|User|>:<|Assistant|>:"));
        assert_eq!(p.ids, want);
    }

    #[test]
    fn images_without_markers_go_first_one_line_each() {
        let t = tok("nomarker");
        let implicit = build_vl2_ids(
            &t,
            VL2_IMAGE_TOKEN,
            &[user("  Compare.").with_images(2)],
            &[3, 4],
        )
        .unwrap();
        let explicit = build_vl2_ids(
            &t,
            VL2_IMAGE_TOKEN,
            &[user("<image>\n<image>\n  Compare.").with_images(2)],
            &[3, 4],
        )
        .unwrap();
        assert_eq!(implicit, explicit);
        assert_eq!(implicit.image_spans, vec![4..7, 8..12]);
        // Image only: "<image>\n" stripped to "<image>".
        let only = build_vl2_ids(&t, VL2_IMAGE_TOKEN, &[user("").with_images(1)], &[2]).unwrap();
        let mut want = vec![t.bos_id()];
        want.extend(enc(&t, "<|User|>: "));
        want.extend([t.image_id(); 2]);
        want.extend(enc(&t, "\n\n<|Assistant|>:"));
        assert_eq!(only.ids, want);
    }

    #[test]
    fn images_are_consumed_in_order_across_turns() {
        let t = tok("order");
        let turns = [
            user("<image>x<image>").with_images(2),
            assistant("ok"),
            user("y <image>").with_images(1),
        ];
        let p = build_vl2_ids(&t, VL2_IMAGE_TOKEN, &turns, &[1, 2, 3]).unwrap();
        let lens: Vec<usize> = p.image_spans.iter().map(|s| s.len()).collect();
        assert_eq!(lens, vec![1, 2, 3]);
        for s in &p.image_spans {
            assert!(p.ids[s.clone()].iter().all(|&i| i == t.image_id()));
        }
        assert_eq!(p.ids.iter().filter(|&&i| i == t.image_id()).count(), 6);
        // Adjacent to the "x" between the first two images, so spans are not merged.
        assert_eq!(p.image_spans[1].start, p.image_spans[0].end + 1);
    }

    #[test]
    fn mismatches_and_misplaced_messages_are_errors() {
        let t = tok("errors");
        let m = VL2_IMAGE_TOKEN;
        let err = |turns: &[Vl2Turn], n: &[usize]| build_vl2_ids(&t, m, turns, n).unwrap_err();
        assert!(matches!(
            err(&[user("<image> <image>").with_images(1)], &[1]),
            Error::ImageCountMismatch {
                markers: 2,
                images: 1,
                ..
            }
        ));
        assert!(matches!(
            err(&[user("what is <image>?")], &[]),
            Error::ImageCountMismatch {
                markers: 1,
                images: 0,
                ..
            }
        ));
        assert!(matches!(
            err(&[user("<image>").with_images(1)], &[]),
            Error::ImageCountMismatch {
                markers: 1,
                images: 0,
                ..
            }
        ));
        assert!(matches!(
            err(&[user("a"), assistant("see <image>"), user("b")], &[]),
            Error::ImageCountMismatch {
                markers: 1,
                images: 0,
                ..
            }
        ));
        assert!(matches!(
            err(&[Vl2Turn::new(Role::System, "<image>"), user("b")], &[]),
            Error::ImageCountMismatch {
                markers: 1,
                images: 0,
                ..
            }
        ));
        assert!(matches!(
            err(&[user("a"), assistant("b").with_images(1)], &[7]),
            Error::Conversation(_)
        ));
        let e = err(&[user("a"), Vl2Turn::new(Role::System, "s")], &[]).to_string();
        assert!(e.contains("message 1 has role system"), "{e}");
        assert!(matches!(err(&[], &[]), Error::Conversation(_)));
        assert!(matches!(
            err(&[Vl2Turn::new(Role::System, "s")], &[]),
            Error::Conversation(_)
        ));
        assert!(matches!(
            build_vl2_ids(&t, "<image_placeholder>", &[user("a")], &[]),
            Err(Error::Unsupported { .. })
        ));
    }
}
