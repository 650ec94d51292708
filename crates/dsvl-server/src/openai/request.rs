//! Request bodies as clients send them (OpenAI Chat Completions, landscape §5.1, plus the
//! llama.cpp-style `/tokenize` and `/apply-template`). Unknown fields are ignored; a field of the
//! wrong type is a 400 naming its JSON path (see `extract::parse`).

use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;

/// `POST /v1/chat/completions`.
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    /// The served model's name (`--served-model-name`), or absent; any other name is a 404.
    pub model: Option<String>,
    pub messages: Vec<WireMessage>,
    pub max_tokens: Option<u64>,
    pub max_completion_tokens: Option<u64>,
    /// OpenAI default 1.0 (sampling); send 0 for greedy decoding.
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    /// Extension (vLLM, llama.cpp): top-k filtering; absent = none.
    pub top_k: Option<u64>,
    /// Extension: HF-style repetition penalty on generated tokens.
    pub repetition_penalty: Option<f32>,
    /// Extension: DeepSeek-OCR's windowed no-repeat n-gram ban: an id that would repeat an
    /// n-gram of this size among the last `no_repeat_ngram_window` generated ids is banned.
    /// Absent or 0: off.
    pub no_repeat_ngram_size: Option<u64>,
    /// Generated ids searched by `no_repeat_ngram_size` (default 90, the published image script).
    pub no_repeat_ngram_window: Option<u64>,
    /// Ids the n-gram ban never applies to (DeepSeek-OCR's scripts exempt `<td>` and `</td>`,
    /// 128821 and 128822).
    pub no_repeat_ngram_whitelist: Option<Vec<u32>>,
    /// Extension (as in vLLM): leave special tokens out of the text. Default: v1 skips them,
    /// VL2 keeps its grounding markup (`<|ref|>`, `<|det|>`, …).
    pub skip_special_tokens: Option<bool>,
    /// Extension (as in vLLM): keep generating past the end-of-sentence token until
    /// `max_tokens` (benchmarks, reference comparisons). Default false.
    pub ignore_eos: Option<bool>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub seed: Option<i64>,
    pub stop: Option<Stop>,
    pub n: Option<u64>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<u64>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub response_format: Option<ResponseFormat>,
    /// Extensions (vLLM's guided decoding): at most one of these, or `response_format`.
    /// A JSON Schema (an object, or a string holding one).
    pub guided_json: Option<serde_json::Value>,
    pub guided_regex: Option<String>,
    pub guided_choice: Option<Vec<String>>,
    /// A Lark grammar (llguidance's dialect).
    pub guided_grammar: Option<String>,
    /// vLLM's current form of the same (`extra_body={"structured_outputs": {...}}`).
    pub structured_outputs: Option<StructuredOutputs>,
    pub tools: Option<Vec<serde_json::Value>>,
    /// Extension: DeepSeek-VL2 cuts each image into at most this many local tiles (fewer image
    /// tokens, faster, less detail). Default: the server's `--max-tiles`, else every tiling.
    pub max_tiles: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    pub include_usage: Option<bool>,
}

/// `response_format`: `{"type": "text" | "json_object"}` or
/// `{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}`.
#[derive(Debug, Deserialize)]
pub struct ResponseFormat {
    pub r#type: String,
    pub json_schema: Option<JsonSchemaFormat>,
}

#[derive(Debug, Deserialize)]
pub struct JsonSchemaFormat {
    /// Required by OpenAI; only echoed in errors here.
    pub name: Option<String>,
    pub schema: Option<serde_json::Value>,
    /// Accepted either way: the schema is always enforced exactly (within the supported subset).
    #[allow(dead_code)]
    pub strict: Option<bool>,
}

/// vLLM's `structured_outputs` (its `StructuredOutputsParams`): one of the fields.
#[derive(Debug, Default, Deserialize)]
pub struct StructuredOutputs {
    pub json: Option<serde_json::Value>,
    pub regex: Option<String>,
    pub choice: Option<Vec<String>>,
    pub grammar: Option<String>,
    pub json_object: Option<bool>,
}

/// One chat message.
#[derive(Debug, Clone, Deserialize)]
pub struct WireMessage {
    pub role: String,
    /// `null` is allowed (assistant turns without text).
    #[serde(default)]
    pub content: Content,
}

/// `content`: a string, an array of typed parts, or null.
#[derive(Debug, Clone, Default)]
pub enum Content {
    #[default]
    Empty,
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Part {
    Text {
        text: String,
    },
    ImageUrl {
        image_url: ImageUrl,
    },
    /// OpenAI's file part; only PDFs, inline (`file_data`), each page becoming an image.
    File {
        file: FilePart,
    },
}

/// `file`: `{"filename", "file_data": "data:application/pdf;base64,..."}` or `{"file_id"}`
/// (refused: there is no Files API here).
#[derive(Debug, Clone, Deserialize)]
pub struct FilePart {
    pub filename: Option<String>,
    pub file_data: Option<String>,
    pub file_id: Option<String>,
}

/// `image_url`: `{"url", "detail"}` (OpenAI) or a bare URL string (some clients).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ImageUrl {
    Object {
        url: String,
        /// `auto | low | high`: accepted and ignored, DeepSeek-VL sees one fixed-size view and DeepSeek-VL2 tiles by the image's own size.
        #[allow(dead_code)]
        detail: Option<String>,
    },
    Bare(String),
}

impl ImageUrl {
    pub fn url(&self) -> &str {
        match self {
            ImageUrl::Object { url, .. } | ImageUrl::Bare(url) => url,
        }
    }
}

// A hand-written visitor instead of `#[serde(untagged)]`, so an error inside a part keeps its
// path (`messages[0].content[1]`) instead of "data did not match any variant".
impl<'de> Deserialize<'de> for Content {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ContentVisitor;
        impl<'de> Visitor<'de> for ContentVisitor {
            type Value = Content;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, an array of content parts, or null")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Content, E> {
                Ok(Content::Text(v.to_string()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Content, E> {
                Ok(Content::Text(v))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Content, E> {
                Ok(Content::Empty)
            }
            fn visit_none<E: de::Error>(self) -> Result<Content, E> {
                Ok(Content::Empty)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Content, A::Error> {
                let mut parts = Vec::new();
                while let Some(p) = seq.next_element::<Part>()? {
                    parts.push(p);
                }
                Ok(Content::Parts(parts))
            }
        }
        d.deserialize_any(ContentVisitor)
    }
}

/// `POST /tokenize`: a raw string (`content`) or a conversation (`messages`, rendered with the
/// chat template and with image tokens expanded, i.e. exactly the ids the model sees).
#[derive(Debug, Deserialize)]
pub struct TokenizeRequest {
    pub content: Option<String>,
    pub messages: Option<Vec<WireMessage>>,
    /// Also return each token's text.
    #[serde(default)]
    pub with_pieces: bool,
}

/// `POST /apply-template`.
#[derive(Debug, Deserialize)]
pub struct ApplyTemplateRequest {
    pub messages: Vec<WireMessage>,
}

/// `POST /detokenize` (llama.cpp): ids → text.
#[derive(Debug, Deserialize)]
pub struct DetokenizeRequest {
    pub tokens: Vec<u32>,
    /// Leave special tokens out; default false, so the text shows exactly what the ids hold.
    #[serde(default)]
    pub skip_special_tokens: bool,
}
