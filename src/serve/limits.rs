//! Request limits and OpenAI-style errors: `{"error": {"message", "type", "code"}}` with
//! the HTTP status that goes with them.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Limits applied to every request; each has a command-line flag (docs/serve.md).
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest request body in bytes (base64 images included).
    pub max_body_bytes: usize,
    /// Largest image, in pixels (width × height), checked from the header before decoding.
    pub max_image_pixels: u64,
    /// Largest `max_tokens` a request may ask for (also the default cap).
    pub max_tokens: usize,
    /// Longest prompt, in tokens, image tokens included.
    pub max_prompt_tokens: usize,
    /// Requests generating at once (one batch).
    pub max_batch: usize,
    /// Requests waiting beyond the running batch before new ones are refused with 503.
    pub max_queue: usize,
    /// How long a job may wait to join a running batch, so that more of the jobs
    /// arriving meanwhile share its vision and prefill passes.
    pub join_wait: JoinWait,
}

/// How long jobs taken by the worker wait, while the running batch steps on, before they
/// join it. The wait always ends when the waiting jobs fill the batch's free rows or when
/// nothing runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JoinWait {
    /// Up to this many decode steps (0: the next step).
    Steps(usize),
    /// As long as joining has recently cost the batch per joining request: each join
    /// stalls every running row for its vision pass and prefill, so the jobs wait at most
    /// one such share (time to first token grows by at most that) and joins come in
    /// groups that amortise the fixed part of their cost.
    Auto,
}

impl std::str::FromStr for JoinWait {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "auto" {
            return Ok(JoinWait::Auto);
        }
        s.parse()
            .map(JoinWait::Steps)
            .map_err(|_| format!("expected `auto` or a number of decode steps, found `{s}`"))
    }
}

impl std::fmt::Display for JoinWait {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JoinWait::Auto => f.write_str("auto"),
            JoinWait::Steps(n) => write!(f, "{n}"),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 20 << 20,
            max_image_pixels: 40_000_000,
            max_tokens: 256,
            max_prompt_tokens: 512,
            max_batch: 8,
            max_queue: 64,
            join_wait: JoinWait::Auto,
        }
    }
}

/// An error answered to the client.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// OpenAI's `type`: invalid_request_error, authentication_error, server_error...
    pub kind: &'static str,
    /// OpenAI's `code`: a short machine-readable reason (or none).
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn new(
        status: StatusCode,
        kind: &'static str,
        code: Option<&'static str>,
        msg: impl Into<String>,
    ) -> ApiError {
        ApiError {
            status,
            message: msg.into(),
            kind,
            code,
        }
    }

    /// 400: a parameter or a message part the server cannot use.
    pub fn invalid(code: &'static str, msg: impl Into<String>) -> ApiError {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            Some(code),
            msg,
        )
    }

    /// 400: an image that cannot be read or is too large.
    pub fn bad_image(msg: impl Into<String>) -> ApiError {
        Self::invalid("invalid_image", msg)
    }

    pub fn unauthorized() -> ApiError {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            Some("invalid_api_key"),
            "missing or wrong API key: send the header 'Authorization: Bearer KEY'",
        )
    }

    pub fn too_large(limit: usize) -> ApiError {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            Some("request_too_large"),
            format!(
                "request body larger than the server's limit of {limit} bytes (--max-body-bytes)"
            ),
        )
    }

    /// 503 with `Retry-After`: every batch slot and queue place is taken.
    pub fn queue_full(max: usize) -> ApiError {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_overloaded",
            Some("queue_full"),
            format!("the server is busy ({max} requests running or queued); retry later"),
        )
    }

    pub fn loading() -> ApiError {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_overloaded",
            Some("model_loading"),
            "the model is still loading; retry later",
        )
    }

    pub fn not_found(msg: impl Into<String>) -> ApiError {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            Some("not_found"),
            msg,
        )
    }

    /// 400 for a request the loaded checkpoint cannot serve (e.g. chat on a retrieval
    /// checkpoint).
    pub fn unsupported(msg: impl Into<String>) -> ApiError {
        Self::invalid("unsupported_by_model", msg)
    }

    pub fn internal(msg: impl Into<String>) -> ApiError {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", None, msg)
    }

    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "code": self.code,
                "param": null,
            }
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, axum::Json(self.body())).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE
            || self.status == StatusCode::TOO_MANY_REQUESTS
        {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
    }
}

/// A model error from the worker: the library's `Invalid` and `Image` errors are the
/// request's fault (400); everything else is the server's (500).
pub fn from_model_error(e: &crate::Error) -> ApiError {
    use crate::Error as E;
    match e {
        E::Image { .. } => ApiError::bad_image(e.to_string()),
        E::TooLarge { what, .. } if what == "image" => ApiError::bad_image(e.to_string()),
        E::Invalid(_) => ApiError::invalid("invalid_parameter", e.to_string()),
        E::PromptTooLong { .. } => ApiError::invalid("prompt_too_long", e.to_string()),
        _ => ApiError::internal(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::JoinWait;

    #[test]
    fn join_wait_parses_auto_and_steps() {
        assert_eq!("auto".parse::<JoinWait>(), Ok(JoinWait::Auto));
        assert_eq!("0".parse::<JoinWait>(), Ok(JoinWait::Steps(0)));
        assert_eq!("12".parse::<JoinWait>(), Ok(JoinWait::Steps(12)));
        let e = "-1".parse::<JoinWait>().unwrap_err();
        assert!(e.contains("`-1`"), "{e}");
        assert!("soon".parse::<JoinWait>().is_err());
        assert_eq!(JoinWait::Auto.to_string(), "auto");
        assert_eq!(JoinWait::Steps(4).to_string(), "4");
    }
}
