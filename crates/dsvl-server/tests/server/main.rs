//! dsvl-server end to end, in one test binary (STYLE §2): every route over `router(..).oneshot(..)`
//! or a real loopback socket, against the tiny fixture models of the engine crate.
//!
//! - `v1`: the DeepSeek-VL fixture model: reference outputs, streaming, logprobs, every error path,
//!   limits, queueing and cancellation, metrics, the image feature cache.
//! - `vl2`: the three DeepSeek-VL2 fixture models against the official reference outputs, the
//!   debug routes and the grounding extension.
//! - `batching`: 16 concurrent greedy requests equal the same requests run one at a time (v1,
//!   VL2 MoE with MHA and with MLA), and were decoded together.
//! - `limits`: header and body timeouts, a 413 from the declared length, over-context prompts
//!   refused from their length.
//! - `load`: 64 concurrent socket clients, a fifth with bad inputs, some hanging up mid-stream.
//! - `logging`: nothing a client sends (prompt text, image bytes) is logged, even at DEBUG.
//! - `remote_images`: `http(s)` image URLs fetched from a loopback server.
//! - `webui`: the chat page's routes: types, security headers, ETag revalidation, `--no-webui`.
//! - `structured`: `response_format` (JSON Schema, JSON object) and vLLM's `guided_*` /
//!   `structured_outputs`, streamed and not, and their errors.
//! - `pdf`: PDF file parts answer like their pages sent as images; page, size and document errors.
//! - `openai_compat`: the official `openai` Python package against a running server
//!   (`#[ignore]`: needs PyPI once).

mod batching;
mod harness;
mod limits;
mod load;
mod logging;
mod openai_compat;
mod pdf;
mod remote_images;
mod structured;
mod v1;
mod vl2;
mod webui;
