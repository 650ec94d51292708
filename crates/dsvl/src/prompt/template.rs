//! The `deepseek` conversation template (v1 §8.1), as rendered by the official
//! `VLChatProcessor.apply_sft_template_for_multi_turn_prompts` + `Conversation.get_prompt`
//! (`deepseek_vl/models/processing_vlm.py`, `deepseek_vl/utils/conversation.py`).
//!
//! Choices where the official code has no rule of its own (all covered by tests):
//! - **System message in the list.** The official renderer has no notion of it: a `{"role": "system"}` entry would be
//!   printed literally as `system: …` and shift the separator parity. We follow the OpenAI convention instead: a
//!   system message is accepted only as the *first* message and replaces the system prompt; anywhere else it is an
//!   [`Error::Conversation`].
//! - **Turn order.** The official renderer does not check that User and Assistant alternate: it picks the separator
//!   by message *index* (`seps[i % 2]`, `"\n\n"` at even, `sep2` at odd indexes) and prints each message's own role.
//!   We mirror that exactly, so two User turns in a row render as the official code would render them.
//! - **Ready for the assistant.** A conversation ending with a User message gets the empty Assistant turn the
//!   official examples append (`{"role": "Assistant", "content": ""}`) → the prompt ends in `"Assistant:"`. A
//!   conversation ending with a *non-empty* Assistant message is rejected (it would end in `sep2`, after which the
//!   model has nothing to answer).
//! - **Images without placeholders.** One `<image_placeholder>` per image is put at the start of the (stripped)
//!   message text, with no newline: this is the position of the official single-turn example
//!   (`"User: <image_placeholder>Describe each stage of this image."`). The gradio demo's extra `"\n"` is a demo
//!   detail, not part of the template.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// The image marker of v1 §8.2 (`VLChatProcessor.image_tag`); one per image, expanded to 576 tokens later.
pub const IMAGE_PLACEHOLDER: &str = "<image_placeholder>";

/// `sep2` of the `deepseek` template (v1 §8.1): the EOS token text, written after every Assistant turn.
pub const END_OF_SENTENCE: &str = "<｜end▁of▁sentence｜>";

/// The separator written after a turn at an even index (v1 §8.1 `sep`).
const SEP: &str = "\n\n";

/// `VLChatProcessor.system_prompt` (v1 §8.1), used by the official code for base and chat checkpoints alike.
pub const DEFAULT_SYSTEM_PROMPT: &str = "You are a helpful language and vision assistant. \
You are able to understand the visual content that the user provides, \
and assist the user with a variety of tasks using natural language.";

/// A conversation role. Parsed case-insensitively, so the official `"User"`/`"Assistant"` and the OpenAI
/// `"user"`/`"assistant"`/`"system"` spellings all work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    /// The role name as the template writes it (v1 §8.1 roles `("User", "Assistant")`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "System",
            Role::User => "User",
            Role::Assistant => "Assistant",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "system" => Ok(Role::System),
            "user" => Ok(Role::User),
            "assistant" => Ok(Role::Assistant),
            _ => Err(Error::Conversation(format!(
                "unknown role `{s}`; use \"system\", \"user\" or \"assistant\""
            ))),
        }
    }
}

/// One conversation turn. Images are opaque here: only their number matters to the template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub role: Role,
    pub content: String,
    /// How many images belong to this message, in the order of its placeholders.
    pub n_images: usize,
}

impl Message {
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

/// Python's `str.isspace` per character: Unicode `White_Space` plus U+001C..U+001F (bidi class B/S), which Python
/// also strips and Rust's `char::is_whitespace` does not.
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python `str.strip()` with no argument.
pub fn py_strip(s: &str) -> &str {
    s.trim_matches(is_py_space)
}

/// Number of literal `<image_placeholder>` markers in `text`. A marker typed by a user counts as an image (v1 §14).
pub fn count_placeholders(text: &str) -> usize {
    text.matches(IMAGE_PLACEHOLDER).count()
}

/// Message content as the template writes it: stripped, with one placeholder per image prepended when the text has
/// none. Errors if the text has markers whose count differs from the message's images.
fn message_text(index: usize, m: &Message) -> Result<String> {
    let text = py_strip(&m.content);
    let markers = count_placeholders(text);
    if markers == 0 && m.n_images > 0 {
        return Ok(IMAGE_PLACEHOLDER.repeat(m.n_images) + text);
    }
    if markers != m.n_images {
        return Err(Error::ImageCountMismatch {
            markers,
            images: m.n_images,
            marker: format!("{IMAGE_PLACEHOLDER} (message {index}, {})", m.role),
        });
    }
    Ok(text.to_string())
}

/// Render a conversation into the `deepseek` SFT prompt string (v1 §8.1), byte-identical to
/// `apply_sft_template_for_multi_turn_prompts(conversation, "deepseek", system)` for the conversations the official
/// code accepts. `system` is used unless the first message is a [`Role::System`] message (see the module docs).
///
/// Output: `system + "\n\n"` (nothing if the system prompt is empty), then per message `"Role: " + content +
/// sep` (`"\n\n"` at even, `"<｜end▁of▁sentence｜>"` at odd indexes), or `"Role:"` for empty content, then `.strip()`.
pub fn render(system: &str, messages: &[Message]) -> Result<String> {
    let (system, turns) = match messages.split_first() {
        Some((first, rest)) if first.role == Role::System => {
            if first.n_images > 0 {
                return Err(Error::Conversation(
                    "the system message cannot carry images; attach them to a user message".into(),
                ));
            }
            (first.content.as_str(), rest)
        }
        _ => (system, messages),
    };
    if let Some(i) = turns.iter().position(|m| m.role == Role::System) {
        let index = i + messages.len() - turns.len();
        return Err(Error::Conversation(format!(
            "message {index} has role system; a system message is only allowed as the first message"
        )));
    }
    if turns.is_empty() {
        return Err(Error::Conversation(
            "no user message; send at least one user message".into(),
        ));
    }
    if let Some(last) = turns.last() {
        if last.role == Role::Assistant && !py_strip(&last.content).is_empty() {
            return Err(Error::Conversation(
                "the conversation ends with an assistant answer; end with a user message (or an empty assistant message)"
                    .into(),
            ));
        }
    }

    // ref: `conv.append_message(role, content.strip())` for every message, then `get_prompt()` (DeepSeek style).
    let mut out = String::new();
    if !system.is_empty() {
        out.push_str(system);
        out.push_str(SEP);
    }
    let offset = messages.len() - turns.len();
    let mut n_images = 0;
    for (i, m) in turns.iter().enumerate() {
        let text = message_text(i + offset, m)?;
        n_images += m.n_images;
        out.push_str(m.role.as_str());
        out.push(':');
        if !text.is_empty() {
            out.push(' ');
            out.push_str(&text);
            out.push_str(if i % 2 == 0 { SEP } else { END_OF_SENTENCE });
        }
    }
    if turns.last().map(|m| m.role) == Some(Role::User) {
        // The empty Assistant turn of the official usage: `{"role": "Assistant", "content": ""}` → "Assistant:".
        out.push_str(Role::Assistant.as_str());
        out.push(':');
    }
    // A placeholder in the system prompt (or one produced by joining texts) would also become an image (v1 §8.2.3).
    let markers = count_placeholders(&out);
    if markers != n_images {
        return Err(Error::ImageCountMismatch {
            markers,
            images: n_images,
            marker: format!("{IMAGE_PLACEHOLDER} (whole conversation, system prompt included)"),
        });
    }
    Ok(py_strip(&out).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(s: &str) -> Message {
        Message::new(Role::User, s)
    }
    fn assistant(s: &str) -> Message {
        Message::new(Role::Assistant, s)
    }

    #[test]
    fn official_single_turn_example() {
        // v1 §8.1, official `inference.py`.
        let msgs = [
            user("<image_placeholder>Describe each stage of this image.").with_images(1),
            assistant(""),
        ];
        let want = format!(
            "{DEFAULT_SYSTEM_PROMPT}\n\nUser: <image_placeholder>Describe each stage of this image.\n\nAssistant:"
        );
        assert_eq!(render(DEFAULT_SYSTEM_PROMPT, &msgs).unwrap(), want);
        // Without the trailing empty assistant turn: the same prompt.
        assert_eq!(render(DEFAULT_SYSTEM_PROMPT, &msgs[..1]).unwrap(), want);
    }

    #[test]
    fn placeholders_prepended_without_newline() {
        let msgs = [user("Compare these.").with_images(2)];
        assert_eq!(
            render("S", &msgs).unwrap(),
            "S\n\nUser: <image_placeholder><image_placeholder>Compare these.\n\nAssistant:"
        );
        // Image only, no text.
        let msgs = [user("").with_images(1)];
        assert_eq!(
            render("S", &msgs).unwrap(),
            "S\n\nUser: <image_placeholder>\n\nAssistant:"
        );
    }

    #[test]
    fn multi_turn_with_answer() {
        let msgs = [
            user("<image_placeholder>What is it?").with_images(1),
            assistant(" A cat. "),
            user("Its color?"),
        ];
        assert_eq!(
            render("S", &msgs).unwrap(),
            "S\n\nUser: <image_placeholder>What is it?\n\nAssistant: A cat.<｜end▁of▁sentence｜>User: Its color?\n\nAssistant:"
        );
    }

    #[test]
    fn empty_content_and_stripping() {
        // Empty system prompt: no leading "\n\n"; contents stripped with Python semantics (U+3000, U+001F, NBSP).
        let msgs = [user("\u{3000}\u{1f} hi\u{a0}\n"), assistant("")];
        assert_eq!(render("", &msgs).unwrap(), "User: hi\n\nAssistant:");
        // An empty user turn renders "User:" without a space, like the official `role + ":"`.
        let msgs = [user("   "), assistant("")];
        assert_eq!(render("S", &msgs).unwrap(), "S\n\nUser:Assistant:");
        // The whole prompt is stripped (system prompt with surrounding whitespace).
        assert_eq!(
            render("  S  ", &[user("x")]).unwrap(),
            "S  \n\nUser: x\n\nAssistant:"
        );
        assert_eq!(py_strip("\u{200b}a\u{85}"), "\u{200b}a");
    }

    #[test]
    fn roles_case_insensitive() {
        for (s, r) in [
            ("User", Role::User),
            ("ASSISTANT", Role::Assistant),
            ("system", Role::System),
        ] {
            assert_eq!(s.parse::<Role>().unwrap(), r);
        }
        let err = "tool".parse::<Role>().unwrap_err().to_string();
        assert!(err.contains("`tool`"), "{err}");
    }

    #[test]
    fn system_message_overrides_and_must_be_first() {
        let msgs = [Message::new(Role::System, "Be brief."), user("hi")];
        assert_eq!(
            render(DEFAULT_SYSTEM_PROMPT, &msgs).unwrap(),
            "Be brief.\n\nUser: hi\n\nAssistant:"
        );
        let msgs = [user("hi"), Message::new(Role::System, "x")];
        let err = render("S", &msgs).unwrap_err().to_string();
        assert!(err.contains("message 1 has role system"), "{err}");
        let err = render("S", &msgs[1..]).unwrap_err().to_string();
        assert!(err.contains("no user message"), "{err}");
    }

    #[test]
    fn consecutive_user_turns_mirror_official_parity() {
        // Official `seps[i % 2]`: the second message gets sep2 whatever its role.
        let msgs = [user("a"), user("b")];
        assert_eq!(
            render("S", &msgs).unwrap(),
            "S\n\nUser: a\n\nUser: b<｜end▁of▁sentence｜>Assistant:"
        );
        let err = render("S", &[user("a"), assistant("b")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("ends with an assistant answer"), "{err}");
    }

    #[test]
    fn image_count_mismatch() {
        let msgs = [user("<image_placeholder> and <image_placeholder>").with_images(1)];
        match render("S", &msgs) {
            Err(Error::ImageCountMismatch {
                markers: 2,
                images: 1,
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
        // A literal marker typed without an image counts as an image (v1 §14).
        let msgs = [user("what is <image_placeholder>?")];
        assert!(matches!(
            render("S", &msgs),
            Err(Error::ImageCountMismatch {
                markers: 1,
                images: 0,
                ..
            })
        ));
        // A marker in the system prompt is caught by the whole-conversation count.
        let msgs = [user("x").with_images(1)];
        assert!(matches!(
            render("<image_placeholder>", &msgs),
            Err(Error::ImageCountMismatch {
                markers: 2,
                images: 1,
                ..
            })
        ));
    }
}
