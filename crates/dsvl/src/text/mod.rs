//! Generated ids → text the client sees (STYLE §3.10): [`DecodeStream`] turns ids into UTF-8-safe deltas and
//! [`StopMatcher`] cuts the text at user stop strings matched across token boundaries.

pub mod decode_stream;
pub mod stop;

pub use decode_stream::DecodeStream;
pub use stop::{StopHit, StopMatcher};
