//! What a submitted request's receiver gets, in order: tokens and text, then `Done` or `Failed`.

use crate::engine::FinishReason;
use crate::grounding::Grounding;

/// One generated token, with its alternatives' text already decoded.
#[derive(Debug, Clone)]
pub struct TokenOut {
    /// Text that became final with this token (may be empty).
    pub text: String,
    pub token_text: String,
    pub logprob: Option<f32>,
    pub top_logprobs: Vec<(String, f32)>,
}

#[derive(Debug)]
pub enum EngineEvent {
    Token(TokenOut),
    /// Text released after the last token (held back by the UTF-8 window or stop matcher).
    Tail(String),
    Done {
        finish_reason: FinishReason,
        prompt_tokens: usize,
        completion_tokens: usize,
        /// Prompt tokens taken from the prefix cache; `None` when it is off.
        cached_tokens: Option<usize>,
        /// Answers with `<|det|>` markup (families with grounding): their boxes.
        grounding: Option<Box<Grounding>>,
    },
    Failed(crate::Error),
}
