//! The grounding extension (issue #6, v2 §6.4): a DeepSeek-VL2 answer that contains
//! `<|ref|>label<|/ref|><|det|>[[x1, y1, x2, y2], …]<|/det|>` also gets its boxes as JSON, in
//! `choices[0].message.grounding` (non-streaming) or `choices[0].delta.grounding` on the chunk that
//! carries `finish_reason` (streaming). The value is [`dsvl::grounding::Grounding`]:
//!
//! ```json
//! {"objects": [{"label": "the red window",
//!               "boxes": [{"normalized": [120, 40, 610, 580], "pixels": [36, 36, 183, 522]}]}],
//!  "problems": [], "plain_text": "the red window", "image_size": [300, 900]}
//! ```
//!
//! - `normalized`: the model's 0–999 coordinates; `pixels`: inclusive corners in the **last image of
//!   the request** (the last `image_url` part of the last message that has one), whose decoded
//!   `[width, height]` is `image_size`. Without images `pixels` and `image_size` are `null`.
//! - The boxes are parsed from the answer with its special tokens kept, also when the request set
//!   `skip_special_tokens: true` and `content` therefore has no markup.
//! - Malformed markup (odd value counts, values over 999, cut-off blocks) is listed in `problems`;
//!   the valid boxes around it are kept. v1 models never get the field.

pub use dsvl::grounding::answer_grounding;
