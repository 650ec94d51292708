//! `ApiError`: every failure a handler can return, rendered as an OpenAI error body
//! `{"error": {"message", "type", "param", "code"}}` (STYLE §3.5). Engine errors are mapped to
//! status codes in one `match` ([`ApiError::from_engine`]); internal errors are logged in full and
//! answered with a generic message.

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

/// A request failure with its HTTP status and OpenAI error fields.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// The JSON path of the offending request field (`messages[0].content[1].image_url.url`).
    pub param: Option<String>,
    /// Machine-readable code (`context_length_exceeded`, `invalid_image`, ...).
    pub code: Option<&'static str>,
    /// Seconds for the `Retry-After` header (429, 503).
    pub retry_after: Option<Duration>,
    /// Answer with `Connection: close`: the request's body was not (or not wholly) read, so the
    /// connection cannot carry another request.
    pub close: bool,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            param: None,
            code: None,
            retry_after: None,
            close: false,
        }
    }

    /// 400 for a request field: `param` is its JSON path.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message).with_param(param)
    }

    /// 400 about the request as a whole.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "missing or wrong API key; send `Authorization: Bearer <key>`",
        )
        .with_code("invalid_api_key")
    }

    pub fn not_found(what: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::NOT_FOUND, format!("{what} not found")).with_code("not_found")
    }

    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is over the server's limit of {limit} bytes; send smaller or fewer images"),
        )
        .with_code("request_too_large")
    }

    /// 413 for one request part over a server limit: `param` is its JSON path, `message` names
    /// the limit and how to raise it.
    /// A `Content-Length` over the limit, refused before any of the body is read.
    pub fn declared_too_large(declared: u64, limit: usize) -> Self {
        let mut e = Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request declares a {declared}-byte body, over the server's limit of {limit} bytes; send smaller or fewer images"),
        )
        .with_code("request_too_large");
        e.close = true;
        e
    }

    /// The body did not arrive within the server's body timeout.
    pub fn body_timeout(timeout: Duration) -> Self {
        let mut e = Self::new(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request body did not arrive within {} s; send it at once (the server's --body-timeout)",
                timeout.as_secs_f64()
            ),
        )
        .with_code("request_timeout");
        e.close = true;
        e
    }

    pub fn payload_too_large_param(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, message).with_param(param)
    }

    /// 429: the engine queue is full.
    pub fn overloaded(queue: usize) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!("the server is busy ({queue} requests queued); retry shortly"),
        )
        .with_code("queue_full");
        e.retry_after = Some(Duration::from_secs(1));
        e
    }

    /// 503 while the model loads or after the engine stopped.
    /// Too many requests are already waiting to have their images and prompts prepared.
    pub fn preparing_full(waiting: usize) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "the server is busy ({waiting} requests waiting to be prepared); retry shortly"
            ),
        )
        .with_code("queue_full");
        e.retry_after = Some(Duration::from_secs(1));
        e
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::SERVICE_UNAVAILABLE, message).with_code("unavailable");
        e.retry_after = Some(Duration::from_secs(5));
        e
    }

    /// 500: logs `detail` in full, tells the client only that something failed.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!("internal error: {detail}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal server error; the server log has the details",
        )
    }

    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    /// The one place engine errors become HTTP statuses (STYLE §3.5).
    pub fn from_engine(err: dsvl::Error) -> Self {
        use dsvl::Error as E;
        let msg = err.to_string();
        match err {
            E::ImageDecode { source_name, .. } => {
                Self::invalid(source_name, msg).with_code("invalid_image")
            }
            E::ImageTooLarge { source_name, .. } => Self::new(StatusCode::PAYLOAD_TOO_LARGE, msg)
                .with_param(source_name)
                .with_code("image_too_large"),
            E::ImageTooThin { .. } => Self::invalid("messages", msg).with_code("invalid_image"),
            E::UnknownMode { .. } | E::TileLimit { .. } => Self::invalid("messages", msg),
            E::ImageCountMismatch { .. } => {
                Self::invalid("messages", msg).with_code("image_count_mismatch")
            }
            E::ContextOverflow { .. } | E::PromptTooLong { .. } => {
                Self::invalid("messages", msg).with_code("context_length_exceeded")
            }
            E::QueueFull { capacity } => Self::overloaded(capacity),
            E::EngineStopped => Self::unavailable(msg),
            E::Conversation(_) => Self::invalid("messages", msg),
            E::Pdf(_) => Self::invalid("messages", msg).with_code("invalid_pdf"),
            E::Tokenize(_) => Self::invalid("messages", msg),
            E::Sampling(ref detail) => {
                // "temperature = -1, expected ..." names the field first.
                let field = detail.split(" = ").next().unwrap_or_default().to_string();
                Self::invalid(field, msg)
            }
            E::InvalidConstraint { .. } | E::ConstraintTooLarge { .. } | E::Grammar(_) => {
                Self::invalid("response_format", msg).with_code("invalid_response_format")
            }
            other => Self::internal(format!("{other:#?}")),
        }
    }

    /// The body as JSON (also sent as an SSE event when a stream fails midway).
    pub fn body(&self) -> serde_json::Value {
        let kind = match self.status.as_u16() {
            401 => "authentication_error",
            404 => "not_found_error",
            429 => "rate_limit_error",
            500..=599 if self.status != StatusCode::SERVICE_UNAVAILABLE => "server_error",
            503 => "service_unavailable_error",
            _ => "invalid_request_error",
        };
        serde_json::to_value(ErrorBody {
            error: ErrorDetail {
                message: &self.message,
                r#type: kind,
                param: self.param.as_deref(),
                code: self.code,
            },
        })
        .unwrap_or_default()
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    message: &'a str,
    r#type: &'static str,
    param: Option<&'a str>,
    code: Option<&'static str>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, Json(self.body())).into_response();
        if let Some(after) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&after.as_secs().to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        if self.close {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.message)
    }
}
