//! Structured output: constrained decoding, so that an answer always parses.
//!
//! A [`Constraint`] (a JSON Schema, any JSON object, a regex, a choice among strings or a Lark
//! grammar) is compiled by llguidance into a parser over the model's tokens; before each token
//! is sampled, the parser's mask removes every token that cannot continue a valid answer
//! (greedy and sampled alike), and the chosen token advances it. The compile is lazy (no index
//! is built per schema): a token mask costs a trie walk over the tokens that can continue the
//! current lexeme, well under a millisecond for typical JSON schemas (see BENCHMARKS.md).
//!
//! - [`Constraint`] is the request (what the server and the CLI build); [`Constraint::validate`]
//!   checks what can be checked without a tokenizer (sizes, the JSON Schema subset).
//! - [`Grammars`] holds the tokenizer environment (every token's bytes, built from our
//!   `tokenizers` tokenizer by [`token_env`]) and compiles constraints;
//!   [`Pipeline::grammars`](crate::Pipeline::grammars) builds it once, on first use.
//! - [`TokenConstraint`] is one sequence's parser: [`TokenConstraint::mask`] then
//!   [`TokenConstraint::accept`] per token ([`crate::engine::Sequence::step`]).
//!
//! JSON is generated compact (`{"a":1,"b":[2,3]}`): no whitespace between tokens, so a small
//! model cannot spend its budget on spaces and newlines. An answer cut by `max_new_tokens`
//! (finish reason `length`) or by a stop string is a prefix of a valid answer, not a valid one.

mod schema;
mod tokenizer_env;

use llguidance::api::TopLevelGrammar;
use llguidance::{Matcher, ParserFactory};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::prompt::tokenizer::PromptTokenizer;

pub use schema::{SUPPORTED_KEYWORDS, UNSUPPORTED_KEYWORDS};
pub use tokenizer_env::token_env;

/// Largest constraint accepted, in bytes of its text (the schema as JSON, the regex, the
/// grammar, all choices together): bounds the compile time and memory one request can cause.
pub const MAX_CONSTRAINT_BYTES: usize = 64 * 1024;
/// Most strings a [`Constraint::Choice`] may list.
pub const MAX_CHOICES: usize = 1024;

/// What an answer must look like.
#[derive(Debug, Clone, PartialEq)]
pub enum Constraint {
    /// A JSON value valid against this JSON Schema (the subset in [`SUPPORTED_KEYWORDS`]).
    JsonSchema(Value),
    /// Any JSON object (OpenAI's `response_format: {"type": "json_object"}`).
    JsonObject,
    /// Text matching this regular expression as a whole (Rust `regex` syntax, anchored at both
    /// ends).
    Regex(String),
    /// Exactly one of these strings.
    Choice(Vec<String>),
    /// A grammar in llguidance's Lark dialect (`start: ...`); special tokens are written
    /// `<|ref|>`, see `examples/grounding.lark`.
    Lark(String),
}

impl Constraint {
    /// The kind, as error messages name it.
    pub fn kind(&self) -> &'static str {
        match self {
            Constraint::JsonSchema(_) => "JSON schema",
            Constraint::JsonObject => "JSON object",
            Constraint::Regex(_) => "regex",
            Constraint::Choice(_) => "choice",
            Constraint::Lark(_) => "grammar",
        }
    }

    /// Checks what needs no tokenizer: the size limits, a non-empty choice list, and that a
    /// JSON Schema uses only supported keywords (the error names the keyword and its JSON
    /// path). The compile ([`Grammars::compile`]) finds the rest (a bad regex, grammar, pattern).
    pub fn validate(&self) -> Result<()> {
        let bytes = match self {
            Constraint::JsonSchema(v) => serde_json::to_string(v).map_or(usize::MAX, |s| s.len()),
            Constraint::JsonObject => 0,
            Constraint::Regex(s) | Constraint::Lark(s) => s.len(),
            Constraint::Choice(c) => c.iter().map(String::len).sum(),
        };
        if bytes > MAX_CONSTRAINT_BYTES {
            return Err(Error::ConstraintTooLarge {
                kind: self.kind(),
                bytes,
                limit: MAX_CONSTRAINT_BYTES,
            });
        }
        let invalid = |message: String| Error::InvalidConstraint {
            kind: self.kind(),
            message,
        };
        match self {
            Constraint::JsonSchema(v) => schema::check(v).map_err(invalid),
            Constraint::Choice(c) if c.is_empty() => Err(invalid(
                "the list is empty; give at least one string".into(),
            )),
            Constraint::Choice(c) if c.len() > MAX_CHOICES => Err(invalid(format!(
                "{} strings, over the limit of {MAX_CHOICES}",
                c.len()
            ))),
            Constraint::Choice(c) => match c.iter().position(String::is_empty) {
                Some(i) => Err(invalid(format!(
                    "choice {i} is empty; every choice needs text"
                ))),
                None => Ok(()),
            },
            Constraint::Regex(s) | Constraint::Lark(s) if s.trim().is_empty() => {
                Err(invalid("it is empty".into()))
            }
            _ => Ok(()),
        }
    }

    /// The llguidance grammar: JSON compact (no whitespace between tokens), strict about
    /// unsupported keywords.
    fn grammar(&self) -> Result<TopLevelGrammar> {
        self.validate()?;
        Ok(match self {
            Constraint::JsonSchema(v) => TopLevelGrammar::from_json_schema(schema::compact(v)),
            Constraint::JsonObject => TopLevelGrammar::from_json_schema(schema::compact(
                &serde_json::json!({"type": "object"}),
            )),
            Constraint::Regex(rx) => TopLevelGrammar::from_regex(rx),
            Constraint::Choice(choices) => {
                // JSON string literals are Lark string literals (same escapes).
                let alternatives: Vec<String> = choices
                    .iter()
                    .map(|c| serde_json::to_string(c).unwrap_or_default())
                    .collect();
                TopLevelGrammar::from_lark(format!("start: {}", alternatives.join(" | ")))
            }
            Constraint::Lark(g) => TopLevelGrammar::from_lark(g.clone()),
        })
    }
}

/// The tokenizer environment and llguidance's parser factory: compiles [`Constraint`]s into
/// per-sequence [`TokenConstraint`]s. One per model; cheap to share (`Sync`).
pub struct Grammars {
    factory: ParserFactory,
    eos_id: u32,
}

impl std::fmt::Debug for Grammars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grammars")
            .field("vocab", &self.factory.tok_env().tok_trie().vocab_size())
            .finish()
    }
}

impl Grammars {
    /// Builds the environment from the model's tokenizer (every token's bytes: about 0.1 s for a
    /// 100k vocabulary).
    pub fn new(tokenizer: &PromptTokenizer) -> Result<Self> {
        let env = token_env(tokenizer)?;
        let mut factory = ParserFactory::new_simple(&env).map_err(|e| Error::Unsupported {
            what: "constrained decoding with this tokenizer".into(),
            hint: format!("llguidance refused its vocabulary ({e})"),
        })?;
        // The library never prints (llguidance logs warnings to stderr by default).
        factory.quiet();
        Ok(Self {
            factory,
            eos_id: tokenizer.eos_id(),
        })
    }

    /// Compiles `constraint` into a fresh per-sequence parser. Errors name what is wrong in the
    /// schema, regex or grammar.
    pub fn compile(&self, constraint: &Constraint) -> Result<TokenConstraint> {
        let grammar = constraint.grammar()?;
        let parser = self
            .factory
            .create_parser(grammar)
            .map_err(|e| Error::InvalidConstraint {
                kind: constraint.kind(),
                message: clean_message(&e.to_string()),
            })?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(Error::InvalidConstraint {
                kind: constraint.kind(),
                message: clean_message(&e),
            });
        }
        Ok(TokenConstraint {
            matcher,
            eos_id: self.eos_id,
            env: self.factory.tok_env().clone(),
        })
    }
}

/// llguidance's message on one line (regex errors span several: the regex, a caret, the
/// reason), cut at 400 characters (a parser-state dump may follow the reason).
fn clean_message(message: &str) -> String {
    let one_line = message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    match one_line.char_indices().nth(400) {
        Some((cut, _)) => format!("{}…", &one_line[..cut]),
        None => one_line,
    }
}

/// One sequence's constraint: which tokens may come next, advanced by each accepted token.
pub struct TokenConstraint {
    matcher: Matcher,
    eos_id: u32,
    env: toktrie::TokEnv,
}

impl std::fmt::Debug for TokenConstraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenConstraint")
            .field("done", &self.matcher.is_stopped())
            .finish()
    }
}

impl TokenConstraint {
    /// Sets to −∞ the logits of every token that cannot come next (EOS is allowed exactly when
    /// the answer is complete). Logits past the tokenizer's vocabulary (padding rows of
    /// `lm_head`) are always removed. [`Error::Grammar`] if no token at all is allowed.
    pub fn mask(&mut self, logits: &mut [f32]) -> Result<()> {
        let _span = tracing::trace_span!("constraint.mask").entered();
        let mask = self.matcher.compute_mask().map_err(grammar_error)?;
        let mut any = false;
        let n = mask.len().min(logits.len());
        for (i, l) in logits.iter_mut().enumerate() {
            if i < n && mask.is_allowed(i as u32) {
                any |= *l > f32::NEG_INFINITY;
            } else {
                *l = f32::NEG_INFINITY;
            }
        }
        if !any {
            return Err(Error::Grammar(
                "no token the model can produce continues the answer here".into(),
            ));
        }
        Ok(())
    }

    /// Advances past `id` (a token [`TokenConstraint::mask`] allowed).
    pub fn accept(&mut self, id: u32) -> Result<()> {
        if id == self.eos_id {
            return Ok(());
        }
        self.matcher.consume_token(id).map_err(grammar_error)
    }

    /// True once the answer is complete and nothing may follow (only EOS would be allowed).
    pub fn is_done(&self) -> bool {
        self.matcher.is_stopped()
    }

    /// True when the answer so far is complete (it may go on, as a number may get more digits).
    pub fn is_accepting(&mut self) -> bool {
        self.matcher.is_accepting().unwrap_or(false)
    }

    /// The trie's token count (the tokenizer's largest id + 1).
    pub fn vocab_size(&self) -> usize {
        self.env.tok_trie().vocab_size()
    }
}

fn grammar_error(e: impl std::fmt::Display) -> Error {
    Error::Grammar(clean_message(&e.to_string()))
}

#[cfg(test)]
mod tests;
