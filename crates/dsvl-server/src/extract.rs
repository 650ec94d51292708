//! `ApiJson<T>`: our JSON body extractor. Unlike `axum::Json`, every rejection is an OpenAI
//! error body, a wrong type names its JSON path (`temperature`, `messages[0].role`), and a body
//! that takes longer than `--body-timeout` to arrive is a 408 that closes the connection.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::state::AppState;

/// A JSON request body deserialized into `T`.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let deadline = state.limits().body_timeout;
        let read = tokio::time::timeout(deadline, Bytes::from_request(req, state));
        let bytes = read
            .await
            .map_err(|_| ApiError::body_timeout(deadline))?
            .map_err(|e| {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::payload_too_large(state.limits().max_body_bytes)
                } else {
                    ApiError::bad_request(format!("cannot read the request body: {e}"))
                }
            })?;
        parse(&bytes).map(ApiJson)
    }
}

/// Deserializes `bytes`, naming the JSON path of the first problem.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            return ApiError::bad_request(format!("the request body is not valid JSON: {inner}"));
        }
        if path == "." {
            return ApiError::bad_request(format!("invalid request body: {inner}"));
        }
        ApiError::invalid(path.clone(), format!("invalid value at `{path}`: {inner}"))
    })
}
