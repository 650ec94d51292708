//! Server-sent events for `stream: true` (landscape §5.2): a first chunk with the role, one chunk
//! per content delta, a chunk with `finish_reason`, the usage chunk (`choices: []`) when
//! `stream_options.include_usage` is set, then `data: [DONE]`; keep-alive comments every 10 s.
//! The `finish_reason` chunk also carries `delta.grounding` for VL2 answers with boxes.
//! A relay task turns engine events into SSE events; when the client goes away the SSE body is
//! dropped, the relay's next send fails, it drops the engine receiver, and generation stops.

use std::convert::Infallible;
use std::time::Duration;

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use dsvl::engine::EngineEvent;
use tokio::sync::mpsc::{channel, Sender, UnboundedReceiver};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};

use super::chat::ReplyMeta;
use crate::error::ApiError;
use crate::openai::convert::{finish_reason, token_logprob};
use crate::openai::response::{ChatChunk, ChunkChoice, Delta, Logprobs, Usage};

pub fn sse(
    events: UnboundedReceiver<EngineEvent>,
    meta: ReplyMeta,
    include_usage: bool,
    with_logprobs: bool,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let (tx, rx) = channel(32);
    let relay = Relay {
        tx,
        meta,
        include_usage,
        with_logprobs,
    };
    tokio::spawn(relay.run(events));
    Sse::new(ReceiverStream::new(rx).map(Ok))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(10)))
}

struct Relay {
    tx: Sender<SseEvent>,
    meta: ReplyMeta,
    include_usage: bool,
    with_logprobs: bool,
}

/// The client is gone.
struct Closed;

impl Relay {
    async fn run(self, mut events: UnboundedReceiver<EngineEvent>) {
        let role = Delta {
            role: Some("assistant"),
            content: Some(String::new()),
            grounding: None,
        };
        if self.chunk(role, None, None).await.is_err() {
            return;
        }
        while let Some(ev) = events.recv().await {
            if self.forward(ev).await.is_err() {
                return; // dropping `events` cancels the generation
            }
        }
    }

    /// Sends what `ev` calls for; `Err` once the stream is over (finished or client gone).
    async fn forward(&self, ev: EngineEvent) -> Result<(), Closed> {
        match ev {
            EngineEvent::Token(t) if t.text.is_empty() && !self.with_logprobs => Ok(()),
            EngineEvent::Token(t) => {
                let logprobs = self.with_logprobs.then(|| Logprobs {
                    content: vec![token_logprob(&t)],
                });
                self.chunk(text_delta(t.text), logprobs, None).await
            }
            EngineEvent::Tail(text) => self.chunk(text_delta(text), None, None).await,
            EngineEvent::Done {
                finish_reason: f,
                prompt_tokens,
                completion_tokens,
                cached_tokens,
                grounding,
            } => {
                let last = Delta {
                    grounding,
                    ..Delta::default()
                };
                self.chunk(last, None, Some(finish_reason(f))).await?;
                if self.include_usage {
                    let usage = Usage::new(prompt_tokens, completion_tokens, cached_tokens);
                    self.send_json(&self.envelope(Vec::new(), Some(usage)))
                        .await?;
                }
                self.send(SseEvent::default().data("[DONE]")).await?;
                Err(Closed)
            }
            EngineEvent::Failed(e) => {
                // Headers are sent already: report the error in-band, as OpenAI does.
                let body = ApiError::from_engine(e).body();
                self.send(SseEvent::default().data(body.to_string()))
                    .await?;
                self.send(SseEvent::default().data("[DONE]")).await?;
                Err(Closed)
            }
        }
    }

    fn envelope(&self, choices: Vec<ChunkChoice>, usage: Option<Usage>) -> ChatChunk<'_> {
        ChatChunk {
            id: &self.meta.id,
            object: "chat.completion.chunk",
            created: self.meta.created,
            model: &self.meta.model,
            choices,
            usage,
        }
    }

    async fn chunk(
        &self,
        delta: Delta,
        logprobs: Option<Logprobs>,
        finish: Option<&'static str>,
    ) -> Result<(), Closed> {
        let choice = ChunkChoice {
            index: 0,
            delta,
            logprobs,
            finish_reason: finish,
        };
        self.send_json(&self.envelope(vec![choice], None)).await
    }

    async fn send_json(&self, chunk: &ChatChunk<'_>) -> Result<(), Closed> {
        match serde_json::to_string(chunk) {
            Ok(json) => self.send(SseEvent::default().data(json)).await,
            Err(e) => {
                tracing::error!("cannot serialize a stream chunk: {e}");
                Err(Closed)
            }
        }
    }

    async fn send(&self, ev: SseEvent) -> Result<(), Closed> {
        self.tx.send(ev).await.map_err(|_| Closed)
    }
}

fn text_delta(text: String) -> Delta {
    Delta {
        content: Some(text),
        ..Delta::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::chat::tests::{grounded_answer, PIECES};
    use axum::response::IntoResponse;
    use http_body_util::BodyExt;
    use serde_json::Value;
    use tokio::sync::mpsc::unbounded_channel;

    #[tokio::test]
    async fn grounding_rides_on_the_finish_chunk() {
        let (tx, rx) = unbounded_channel();
        for ev in grounded_answer(&PIECES) {
            tx.send(ev).expect("open");
        }
        let body = sse(rx, ReplyMeta::new("m"), true, false)
            .into_response()
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let text = String::from_utf8_lossy(&body);
        let data: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .collect();
        assert_eq!(data.last(), Some(&"[DONE]"), "{text}");
        let chunks: Vec<Value> = data[..data.len() - 1]
            .iter()
            .map(|d| serde_json::from_str(d).expect("JSON"))
            .collect();
        let with_boxes: Vec<&Value> = chunks
            .iter()
            .filter(|c| c["choices"][0]["delta"].get("grounding").is_some())
            .collect();
        assert_eq!(with_boxes.len(), 1, "{text}");
        let last = &with_boxes[0]["choices"][0];
        assert_eq!(last["finish_reason"], "stop");
        assert_eq!(
            last["delta"]["grounding"]["objects"][0]["boxes"][0]["pixels"],
            serde_json::json!([36, 36, 183, 522])
        );
        let content: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(content, PIECES.concat());
        assert_eq!(
            chunks.last().expect("usage")["usage"]["completion_tokens"],
            5
        );
    }
}
