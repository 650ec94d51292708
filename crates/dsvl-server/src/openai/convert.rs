//! Wire request → engine inputs (STYLE §3.10: wire types stay separate from engine types).
//! Every error names the JSON path of the offending field. No I/O happens here: image URLs are
//! only collected; `media` resolves them.

use std::str::FromStr;
use std::sync::Arc;

use dsvl::engine::{FinishReason, GenerateParams, TokenOut};
use dsvl::pdf::PdfDocument;
use dsvl::prompt::template::{Message, Role};
use dsvl::sampling::{NoRepeatNgram, SamplingParams};
use dsvl::Constraint;

use super::request::{ChatRequest, Content, Part, Stop, WireMessage};
use super::response::{TokenLogprob, TopLogprob};
use crate::error::ApiError;
use crate::media::PdfPolicy;

/// OpenAI caps `top_logprobs` at 20.
pub const MAX_TOP_LOGPROBS: u64 = 20;

/// One conversation turn: text with one `<image_placeholder>` per image part, in order.
#[derive(Debug, Clone)]
pub struct Turn {
    pub role: Role,
    pub text: String,
    pub images: Vec<ImageRef>,
}

/// An image part not yet loaded, or one page of a PDF file part.
#[derive(Debug, Clone)]
pub struct ImageRef {
    /// JSON path of the part (`messages[0].content[1]`), used in error messages.
    pub param: String,
    /// The image URL (empty for a PDF page).
    pub url: String,
    /// The PDF page this image is, rendered when loaded.
    pub pdf_page: Option<PdfPage>,
    /// The body of an `http(s)` URL once fetched (`MediaPolicy::fetch_remote`).
    pub fetched: Option<Vec<u8>>,
}

/// One page (0-based `index`) of an opened PDF.
#[derive(Debug, Clone)]
pub struct PdfPage {
    pub doc: Arc<PdfDocument>,
    pub index: usize,
}

/// A validated chat request, ready for image loading and prompt preparation.
#[derive(Debug)]
pub struct ChatPlan {
    pub turns: Vec<Turn>,
    /// `max_completion_tokens`, else `max_tokens`; `None`: fill the context up to the server default.
    pub max_tokens: Option<usize>,
    /// Sampling settings; `max_new_tokens` is set once the prompt length is known.
    pub params: GenerateParams,
    /// `max_tiles`: at most this many local tiles per image (DeepSeek-VL2).
    pub max_tiles: Option<usize>,
    pub stream: bool,
    pub include_usage: bool,
    /// The request field the constraint came from (`response_format.json_schema.schema`), for
    /// the errors of its compile.
    pub constraint_param: Option<String>,
}

impl ChatPlan {
    /// Validates everything that does not need the model. `max_images`: images allowed per
    /// request (PDF pages count); `marker`: the model's image marker; `pdf`: how file parts
    /// are opened (see [`conversation`]).
    pub fn try_from_request(
        req: ChatRequest,
        max_images: usize,
        marker: &str,
        pdf: &PdfPolicy,
    ) -> Result<Self, ApiError> {
        if let Some(n) = req.n.filter(|&n| n != 1) {
            return Err(ApiError::invalid(
                "n",
                format!("n = {n}: only n = 1 is supported"),
            ));
        }
        if req.tools.as_ref().is_some_and(|t| !t.is_empty()) {
            return Err(ApiError::invalid(
                "tools",
                "tool calling is not supported by this server",
            ));
        }
        let max_tokens = max_tokens(&req)?;
        let max_tiles = match req.max_tiles {
            Some(0) => {
                return Err(ApiError::invalid(
                    "max_tiles",
                    "max_tiles = 0, expected an integer >= 1 (1 = one local tile per image)",
                ))
            }
            n => n.map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
        };
        let mut params = generate_params(&req)?;
        let constraint = constraint(&req)?;
        let constraint_param = constraint.as_ref().map(|(_, p)| p.to_string());
        params.sampling.constraint = constraint.map(|(c, _)| c);
        let turns = conversation(&req.messages, max_images, marker, pdf)?;
        Ok(Self {
            turns,
            max_tokens,
            max_tiles,
            params,
            constraint_param,
            stream: req.stream.unwrap_or(false),
            include_usage: req
                .stream_options
                .and_then(|o| o.include_usage)
                .unwrap_or(false),
        })
    }
}

fn max_tokens(req: &ChatRequest) -> Result<Option<usize>, ApiError> {
    let (param, value) = match (req.max_completion_tokens, req.max_tokens) {
        (Some(v), _) => ("max_completion_tokens", v),
        (None, Some(v)) => ("max_tokens", v),
        (None, None) => return Ok(None),
    };
    if value == 0 {
        return Err(ApiError::invalid(
            param,
            format!("{param} = 0, expected an integer >= 1"),
        ));
    }
    Ok(Some(usize::try_from(value).unwrap_or(usize::MAX)))
}

/// Sampling fields with OpenAI's defaults: temperature 1 and top_p 1 (sampling), no top-k, no
/// penalties, a random seed. Greedy decoding (the reference setting) needs `temperature: 0`.
fn generate_params(req: &ChatRequest) -> Result<GenerateParams, ApiError> {
    let stop = match &req.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s.clone()],
        Some(Stop::Many(v)) => v.clone(),
    };
    let sampling = SamplingParams {
        temperature: req.temperature.unwrap_or(1.0),
        // vLLM and llama.cpp read 0 (and vLLM -1) as "no top-k".
        top_k: req
            .top_k
            .and_then(|k| usize::try_from(k).ok())
            .filter(|&k| k > 0),
        top_p: req.top_p.unwrap_or(1.0),
        repetition_penalty: req.repetition_penalty.unwrap_or(1.0),
        presence_penalty: req.presence_penalty.unwrap_or(0.0),
        frequency_penalty: req.frequency_penalty.unwrap_or(0.0),
        seed: req.seed.map_or_else(random_seed, |s| s as u64),
        max_new_tokens: 1, // replaced once the prompt length is known
        stop,
        constraint: None,
        no_repeat_ngram: match req.no_repeat_ngram_size {
            None | Some(0) => None,
            Some(n) => Some(NoRepeatNgram {
                ngram_size: usize::try_from(n).unwrap_or(usize::MAX),
                window_size: req
                    .no_repeat_ngram_window
                    .map_or(90, |w| usize::try_from(w).unwrap_or(usize::MAX)),
                whitelist: req.no_repeat_ngram_whitelist.clone().unwrap_or_default(),
            }),
        },
    };
    sampling.validate().map_err(ApiError::from_engine)?;
    let logprobs = match (req.logprobs.unwrap_or(false), req.top_logprobs) {
        (_, Some(k)) if k > MAX_TOP_LOGPROBS => {
            return Err(ApiError::invalid(
                "top_logprobs",
                format!("top_logprobs = {k}, expected 0 to {MAX_TOP_LOGPROBS}"),
            ))
        }
        (false, Some(_)) => {
            return Err(ApiError::invalid(
                "top_logprobs",
                "top_logprobs needs \"logprobs\": true",
            ))
        }
        (true, k) => Some(k.unwrap_or(0) as usize),
        (false, None) => None,
    };
    Ok(GenerateParams {
        sampling,
        ignore_eos: req.ignore_eos.unwrap_or(false),
        logprobs,
        skip_special_tokens: req.skip_special_tokens,
        prefill_chunk: None,
    })
}

/// The structured-output request, from `response_format` (OpenAI) or vLLM's `guided_*` /
/// `structured_outputs`: at most one of them; with the JSON path it came from. Checked here
/// as far as no tokenizer is needed (sizes, the JSON Schema subset).
fn constraint(req: &ChatRequest) -> Result<Option<(Constraint, &'static str)>, ApiError> {
    let mut found: Vec<(Constraint, &'static str)> = Vec::new();
    if let Some(f) = &req.response_format {
        match f.r#type.as_str() {
            "text" => {}
            "json_object" => found.push((Constraint::JsonObject, "response_format")),
            "json_schema" => {
                let schema = f.json_schema.as_ref().and_then(|j| j.schema.clone());
                let Some(schema) = schema else {
                    return Err(ApiError::invalid(
                        "response_format.json_schema.schema",
                        "response_format `json_schema` needs `json_schema.schema`, the JSON Schema of the answer",
                    ));
                };
                found.push((
                    Constraint::JsonSchema(schema),
                    "response_format.json_schema.schema",
                ));
            }
            other => {
                return Err(ApiError::invalid(
                    "response_format.type",
                    format!("response_format `{other}` is not supported; use `text`, `json_object` or `json_schema`"),
                ))
            }
        }
    }
    if let Some(v) = &req.guided_json {
        found.push((
            Constraint::JsonSchema(schema_value(v, "guided_json")?),
            "guided_json",
        ));
    }
    if let Some(rx) = &req.guided_regex {
        found.push((Constraint::Regex(rx.clone()), "guided_regex"));
    }
    if let Some(c) = &req.guided_choice {
        found.push((Constraint::Choice(c.clone()), "guided_choice"));
    }
    if let Some(g) = &req.guided_grammar {
        found.push((Constraint::Lark(g.clone()), "guided_grammar"));
    }
    if let Some(so) = &req.structured_outputs {
        if let Some(v) = &so.json {
            let schema = schema_value(v, "structured_outputs.json")?;
            found.push((Constraint::JsonSchema(schema), "structured_outputs.json"));
        }
        if let Some(rx) = &so.regex {
            found.push((Constraint::Regex(rx.clone()), "structured_outputs.regex"));
        }
        if let Some(c) = &so.choice {
            found.push((Constraint::Choice(c.clone()), "structured_outputs.choice"));
        }
        if let Some(g) = &so.grammar {
            found.push((Constraint::Lark(g.clone()), "structured_outputs.grammar"));
        }
        if so.json_object == Some(true) {
            found.push((Constraint::JsonObject, "structured_outputs.json_object"));
        }
    }
    if found.len() > 1 {
        let names: Vec<&str> = found.iter().map(|(_, p)| *p).collect();
        return Err(ApiError::invalid(
            names[1],
            format!(
                "{} ask for structured output together; send only one",
                names.join(" and ")
            ),
        ));
    }
    let Some((c, param)) = found.pop() else {
        return Ok(None);
    };
    c.validate()
        .map_err(|e| ApiError::from_engine(e).with_param(param))?;
    Ok(Some((c, param)))
}

/// A schema given as a JSON object, or as a string holding one (vLLM accepts both).
fn schema_value(v: &serde_json::Value, param: &str) -> Result<serde_json::Value, ApiError> {
    match v {
        serde_json::Value::String(s) => serde_json::from_str(s).map_err(|e| {
            ApiError::invalid(param, format!("{param} is a string but not JSON: {e}"))
        }),
        other => Ok(other.clone()),
    }
}

fn random_seed() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(std::time::SystemTime::now())
}

/// Wire messages → turns. A user turn's text is its parts concatenated in order, each image part
/// replaced by the model's image marker and text parts verbatim, nothing in between.
/// `marker`: the model's image marker (`<image_placeholder>` for v1, `<image>` for VL2), written
/// into the text at each image part. A PDF file part is opened here (`pdf`: its limits) and
/// stands for one image per page, in order; its pages count against `max_images`.
pub fn conversation(
    messages: &[WireMessage],
    max_images: usize,
    marker: &str,
    pdf: &PdfPolicy,
) -> Result<Vec<Turn>, ApiError> {
    let turns = messages
        .iter()
        .enumerate()
        .map(|(i, m)| turn(i, m, marker, pdf))
        .collect::<Result<Vec<_>, _>>()?;
    let n_images: usize = turns.iter().map(|t| t.images.len()).sum();
    if n_images > max_images {
        return Err(ApiError::invalid(
            "messages",
            format!("{n_images} images sent (PDF pages included), over the server's limit of {max_images} per request"),
        )
        .with_code("too_many_images"));
    }
    Ok(turns)
}

fn turn(i: usize, m: &WireMessage, marker: &str, pdf: &PdfPolicy) -> Result<Turn, ApiError> {
    // OpenAI's newer `developer` role plays the part of `system`.
    let role = match m.role.as_str() {
        "developer" => Ok(Role::System),
        r => Role::from_str(r),
    }
    .map_err(|e| ApiError::invalid(format!("messages[{i}].role"), e.to_string()))?;
    let mut text = String::new();
    let mut images = Vec::new();
    match &m.content {
        Content::Empty => {}
        Content::Text(t) => text.push_str(t),
        Content::Parts(parts) => {
            for (j, part) in parts.iter().enumerate() {
                match part {
                    Part::Text { text: t } => text.push_str(t),
                    Part::ImageUrl { image_url } => {
                        text.push_str(marker);
                        images.push(ImageRef {
                            param: format!("messages[{i}].content[{j}]"),
                            url: image_url.url().to_string(),
                            pdf_page: None,
                            fetched: None,
                        });
                    }
                    Part::File { file } => {
                        let param = format!("messages[{i}].content[{j}]");
                        let doc = pdf.open(&param, file)?;
                        for index in 0..doc.page_count() {
                            text.push_str(marker);
                            images.push(ImageRef {
                                param: param.clone(),
                                url: String::new(),
                                pdf_page: Some(PdfPage {
                                    doc: Arc::clone(&doc),
                                    index,
                                }),
                                fetched: None,
                            });
                        }
                    }
                }
            }
        }
    }
    Ok(Turn { role, text, images })
}

/// Turns as the template sees them (images counted, not loaded): for `/apply-template` and `/tokenize`.
pub fn template_messages(turns: &[Turn]) -> Vec<Message> {
    turns
        .iter()
        .map(|t| Message::new(t.role, t.text.clone()).with_images(t.images.len()))
        .collect()
}

/// The engine's finish reason as OpenAI spells it. A cancelled request has no reader left, so
/// its reason is never sent; it maps to `stop` for completeness.
pub fn finish_reason(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Length => "length",
        FinishReason::Stop | FinishReason::Cancelled => "stop",
    }
}

/// One token's logprob entry (`choices[].logprobs.content[]`).
pub fn token_logprob(t: &TokenOut) -> TokenLogprob {
    TokenLogprob {
        token: t.token_text.clone(),
        logprob: t.logprob.unwrap_or(0.0),
        bytes: t.token_text.as_bytes().to_vec(),
        top_logprobs: t
            .top_logprobs
            .iter()
            .map(|(token, logprob)| TopLogprob {
                token: token.clone(),
                logprob: *logprob,
                bytes: token.as_bytes().to_vec(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extract::parse;

    #[test]
    fn parts_concatenate_with_one_placeholder_per_image() {
        let req: ChatRequest = parse(
            br#"{"messages":[{"role":"user","content":[
                {"type":"text","text":"And here: "},
                {"type":"image_url","image_url":{"url":"data:image/png;base64,AA==","detail":"low"}},
                {"type":"text","text":" Compare them."}]}]}"#,
        )
        .unwrap();
        let plan = ChatPlan::try_from_request(req, 8, "<image_placeholder>", &PdfPolicy::default())
            .unwrap();
        assert_eq!(
            plan.turns[0].text,
            "And here: <image_placeholder> Compare them."
        );
        assert_eq!(plan.turns[0].images[0].param, "messages[0].content[1]");
        assert_eq!(plan.params.sampling.temperature, 1.0, "OpenAI default");
        assert_eq!(plan.params.sampling.top_k, None);
    }

    #[test]
    fn no_repeat_ngram_fields() {
        let plan = |body: &str| {
            let req: ChatRequest = parse(body.as_bytes()).unwrap();
            ChatPlan::try_from_request(req, 8, "<image>", &PdfPolicy::default()).unwrap()
        };
        let p = plan(
            r#"{"messages":[],"no_repeat_ngram_size":30,"no_repeat_ngram_whitelist":[128821,128822]}"#,
        );
        assert_eq!(
            p.params.sampling.no_repeat_ngram,
            Some(NoRepeatNgram {
                ngram_size: 30,
                window_size: 90,
                whitelist: vec![128821, 128822],
            })
        );
        let p = plan(r#"{"messages":[],"no_repeat_ngram_size":0}"#);
        assert_eq!(p.params.sampling.no_repeat_ngram, None);
    }

    #[test]
    fn bad_fields_name_their_path() {
        for (body, param) in [
            (
                r#"{"messages":[{"role":"user","content":[{"type":"audio"}]}]}"#,
                "messages[0].content[0].type",
            ),
            (
                r#"{"messages":[{"role":"robot","content":"hi"}]}"#,
                "messages[0].role",
            ),
            (r#"{"messages":[],"top_logprobs":3}"#, "top_logprobs"),
            (r#"{"messages":[],"top_p":0}"#, "top_p"),
            (r#"{"messages":[],"max_tokens":0}"#, "max_tokens"),
            (
                r#"{"messages":[],"no_repeat_ngram_size":30,"no_repeat_ngram_window":0}"#,
                "no_repeat_ngram_window",
            ),
        ] {
            let err = parse::<ChatRequest>(body.as_bytes())
                .and_then(|r| {
                    ChatPlan::try_from_request(r, 8, "<image_placeholder>", &PdfPolicy::default())
                })
                .unwrap_err();
            assert_eq!(err.param.as_deref(), Some(param), "{body}: {}", err.message);
        }
    }
}
