//! DeepSeek-VL2 grounding output (v2 §6.4): `<|ref|>label<|/ref|><|det|>[[x1, y1, x2, y2], …]<|/det|>`.
//!
//! - [`parse_grounding`]: model text → [`Grounding`] (labels, 0–999 boxes, pixel corners, problems, the text
//!   without markup). Its JSON shape is documented on [`Grounding`]; the CLI writes it to `--boxes-json` and
//!   the server returns it as an extension field.
//! - [`draw_boxes`]: labelled outlines on an [`RgbImage`](crate::image::RgbImage), no font files needed.
//! - [`outcome_grounding`]: a finished answer → its boxes, in the pixels of the request's last image.
//! - [`to_pixels`]: the official `int(x / 999 * W)` mapping, shared by both.

mod answer;
mod draw;
mod font;
mod parse;

pub use answer::{answer_grounding, outcome_grounding};
pub use draw::draw_boxes;
pub use parse::{parse_grounding, to_pixels, BoxCoords, GroundedObject, Grounding, COORD_MAX};
