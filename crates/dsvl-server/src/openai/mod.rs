//! The OpenAI wire format: request and response bodies (`request`, `response`) and their
//! conversion to engine inputs (`convert`). Nothing here touches the model.

pub mod convert;
pub mod request;
pub mod response;
