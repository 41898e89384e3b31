//! The one error type the request path returns to clients.
//!
//! Each layer has its own `thiserror` enum (config, formats, upstream,
//! routing); they all fold into [`ApiError`], which knows its HTTP status,
//! how to render itself in the caller's API shape (OpenAI or Anthropic), the
//! low-cardinality label used in metrics and logs, and whether it is
//! retryable.

use crate::formats::{ApiFormat, FormatError};
use std::time::Duration;

/// What went wrong, at the granularity of metric labels and error `type`s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// Malformed or untranslatable request (400).
    InvalidRequest,
    /// Missing, unknown or revoked API key (401).
    Authentication,
    /// Key may not use this model (403).
    PermissionDenied,
    /// Unknown path or model (404).
    NotFound,
    /// Method not allowed on this path (405).
    MethodNotAllowed,
    /// Body too large (413).
    PayloadTooLarge,
    /// Request headers too large (431).
    HeadersTooLarge,
    /// Request rate/tokens/concurrency limit (429).
    RateLimited,
    /// Budget exhausted (429).
    BudgetExceeded,
    /// Upstream returned an error or garbage (502).
    UpstreamError,
    /// No healthy target / overloaded (503).
    Unavailable,
    /// Deadline exceeded waiting for upstream (504).
    Timeout,
    /// Client took too long to send its request (408).
    RequestTimeout,
    /// Bug in the gateway (500).
    Internal,
}

impl ErrorKind {
    /// Metric / log label.
    pub fn label(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::Authentication => "authentication",
            Self::PermissionDenied => "permission_denied",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::PayloadTooLarge => "payload_too_large",
            Self::HeadersTooLarge => "headers_too_large",
            Self::RateLimited => "rate_limited",
            Self::BudgetExceeded => "budget_exceeded",
            Self::UpstreamError => "upstream_error",
            Self::Unavailable => "unavailable",
            Self::Timeout => "timeout",
            Self::RequestTimeout => "request_timeout",
            Self::Internal => "internal",
        }
    }

    fn status(self) -> u16 {
        match self {
            Self::InvalidRequest => 400,
            Self::Authentication => 401,
            Self::PermissionDenied => 403,
            Self::NotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::RequestTimeout => 408,
            Self::PayloadTooLarge => 413,
            Self::HeadersTooLarge => 431,
            Self::RateLimited | Self::BudgetExceeded => 429,
            Self::Internal => 500,
            Self::UpstreamError => 502,
            Self::Unavailable => 503,
            Self::Timeout => 504,
        }
    }

    /// OpenAI `error.type`.
    fn openai_type(self) -> &'static str {
        match self {
            Self::InvalidRequest
            | Self::NotFound
            | Self::MethodNotAllowed
            | Self::PayloadTooLarge
            | Self::HeadersTooLarge
            | Self::RequestTimeout => "invalid_request_error",
            Self::Authentication => "authentication_error",
            Self::PermissionDenied => "permission_error",
            Self::RateLimited | Self::BudgetExceeded => "rate_limit_error",
            Self::UpstreamError | Self::Unavailable | Self::Timeout | Self::Internal => "api_error",
        }
    }

    /// Anthropic `error.type`.
    fn anthropic_type(self) -> &'static str {
        match self {
            Self::InvalidRequest | Self::MethodNotAllowed | Self::HeadersTooLarge => {
                "invalid_request_error"
            }
            Self::RequestTimeout => "invalid_request_error",
            Self::Authentication => "authentication_error",
            Self::PermissionDenied => "permission_error",
            Self::NotFound => "not_found_error",
            Self::PayloadTooLarge => "request_too_large",
            Self::RateLimited | Self::BudgetExceeded => "rate_limit_error",
            Self::Unavailable => "overloaded_error",
            Self::UpstreamError | Self::Timeout | Self::Internal => "api_error",
        }
    }
}

/// An error answered to the client.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
    /// The offending request field, if any.
    pub param: Option<String>,
    /// Machine-readable code (`model_not_found`, `budget_exceeded`, ...).
    pub code: Option<&'static str>,
    /// For 429/503: when the client may retry.
    pub retry_after: Option<Duration>,
    /// Overrides the kind's default status (e.g. passing through an upstream 4xx).
    pub status_override: Option<u16>,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            param: None,
            code: None,
            retry_after: None,
            status_override: None,
        }
    }
    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }
    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }
    pub fn with_retry_after(mut self, d: Duration) -> Self {
        self.retry_after = Some(d);
        self
    }
    pub fn with_status(mut self, status: u16) -> Self {
        self.status_override = Some(status);
        self
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidRequest, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    pub fn status(&self) -> u16 {
        self.status_override.unwrap_or_else(|| self.kind.status())
    }

    /// Whether another attempt (on this or another target) may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::UpstreamError | ErrorKind::Unavailable | ErrorKind::Timeout
        )
    }

    /// The JSON body in the caller's API shape.
    pub fn body(&self, format: ApiFormat) -> Vec<u8> {
        let v = match format {
            ApiFormat::OpenAi => serde_json::json!({
                "error": {
                    "message": self.message,
                    "type": self.kind.openai_type(),
                    "param": self.param,
                    "code": self.code.unwrap_or(self.kind.label()),
                }
            }),
            ApiFormat::Anthropic => serde_json::json!({
                "type": "error",
                "error": {
                    "type": self.kind.anthropic_type(),
                    "message": self.message,
                }
            }),
        };
        serde_json::to_vec(&v).unwrap_or_default()
    }

    /// `error.type` used inside streams (OpenAI / Anthropic).
    pub fn stream_type(&self, format: ApiFormat) -> &'static str {
        match format {
            ApiFormat::OpenAi => self.kind.openai_type(),
            ApiFormat::Anthropic => self.kind.anthropic_type(),
        }
    }
}

impl From<FormatError> for ApiError {
    fn from(e: FormatError) -> Self {
        let mut err = ApiError::invalid(e.message);
        err.param = e.param;
        err
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn renders_both_shapes() {
        let e = ApiError::new(ErrorKind::NotFound, "model `x` does not exist")
            .with_param("model")
            .with_code("model_not_found");
        assert_eq!(e.status(), 404);
        let o: serde_json::Value = serde_json::from_slice(&e.body(ApiFormat::OpenAi)).unwrap();
        assert_eq!(o["error"]["code"], "model_not_found");
        assert_eq!(o["error"]["param"], "model");
        assert_eq!(o["error"]["type"], "invalid_request_error");
        let a: serde_json::Value = serde_json::from_slice(&e.body(ApiFormat::Anthropic)).unwrap();
        assert_eq!(a["type"], "error");
        assert_eq!(a["error"]["type"], "not_found_error");
        assert_eq!(a["error"]["message"], "model `x` does not exist");
    }

    #[test]
    fn retryable_kinds() {
        assert!(ApiError::new(ErrorKind::Timeout, "t").is_retryable());
        assert!(!ApiError::invalid("bad").is_retryable());
    }
}
