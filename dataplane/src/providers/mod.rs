//! Provider adapters: one module per upstream API, behind one trait.
//!
//! Adapters are pure mapping, like TensorZero's `InferenceProvider`: they turn
//! the canonical [`ChatRequest`] into the provider's HTTP request and the
//! provider's bytes back into canonical responses and stream events. They do
//! no rate limiting, caching, retries or metrics — the request path does that
//! around them — and they receive the transport ([`UpstreamClient`]) as an
//! argument so `infer`/`infer_stream` stay thin.

pub mod anthropic;
pub mod openai;

use crate::config::{ProviderConfig, ProviderKind};
use crate::formats::{self, ApiFormat, ChatRequest, ChatResponse, FormatError, StreamDecoder};
use crate::upstream::{UpstreamClient, UpstreamError, UpstreamRequest, UpstreamResponse};
use http::{header, HeaderName};
use std::time::Duration;

/// Per-attempt limits handed to `infer` / `infer_stream`.
#[derive(Debug, Clone, Copy)]
pub struct AttemptLimits {
    pub connect: Duration,
    pub first_byte: Duration,
    pub idle: Duration,
}

/// Largest non-streamed provider response we accept.
pub const MAX_RESPONSE_BYTES: usize = 32 * 1024 * 1024;

/// One upstream API.
#[async_trait::async_trait]
pub trait InferenceProvider: Send + Sync {
    /// The wire format this provider speaks.
    fn format(&self) -> ApiFormat;

    /// Maps a canonical request to the provider's HTTP request for `model`.
    fn build_request(
        &self,
        provider: &ProviderConfig,
        req: &ChatRequest,
        model: &str,
        default_max_tokens: u32,
    ) -> Result<UpstreamRequest, FormatError>;

    /// A cheap request used as an active health probe.
    fn probe_request(&self, provider: &ProviderConfig) -> UpstreamRequest;

    /// Maps a 2xx non-streamed body to the canonical response.
    fn parse_response(&self, body: &[u8]) -> Result<ChatResponse, FormatError> {
        formats::decode_response(self.format(), body)
    }

    /// A decoder for the provider's SSE stream.
    fn stream_decoder(&self) -> StreamDecoder {
        StreamDecoder::new(self.format())
    }

    /// Non-streamed call: send, read the whole body, parse it.
    async fn infer(
        &self,
        client: &UpstreamClient,
        provider: &ProviderConfig,
        request: &UpstreamRequest,
        limits: AttemptLimits,
    ) -> Result<ChatResponse, UpstreamError> {
        let resp = client
            .send(provider, request, limits.connect, limits.first_byte)
            .await?;
        let body = resp
            .read_all(client, limits.idle, MAX_RESPONSE_BYTES)
            .await?;
        self.parse_response(&body)
            .map_err(|e| UpstreamError::Malformed(e.message))
    }

    /// Streamed call: send and return the open response with a decoder; the
    /// caller pulls chunks so it controls when bytes reach the client.
    async fn infer_stream(
        &self,
        client: &UpstreamClient,
        provider: &ProviderConfig,
        request: &UpstreamRequest,
        limits: AttemptLimits,
    ) -> Result<(UpstreamResponse, StreamDecoder), UpstreamError> {
        let resp = client
            .send(provider, request, limits.connect, limits.first_byte)
            .await?;
        if !resp.content_type.starts_with("text/event-stream") {
            return Err(UpstreamError::Malformed(format!(
                "expected an event stream, got content-type {:?}",
                resp.content_type
            )));
        }
        Ok((resp, self.stream_decoder()))
    }
}

static OPENAI: openai::OpenAiProvider = openai::OpenAiProvider;
static ANTHROPIC: anthropic::AnthropicProvider = anthropic::AnthropicProvider;

/// The adapter for a provider kind.
pub fn adapter(kind: ProviderKind) -> &'static dyn InferenceProvider {
    match kind {
        ProviderKind::OpenAi => &OPENAI,
        ProviderKind::Anthropic => &ANTHROPIC,
    }
}

/// Joins the provider's base path and an API path.
fn path(provider: &ProviderConfig, suffix: &str) -> String {
    let mut p = String::with_capacity(provider.base_path.len() + suffix.len());
    p.push_str(&provider.base_path);
    p.push_str(suffix);
    p
}

/// Common headers: JSON content type, SSE accept when streaming, and the
/// provider's configured extra headers. Client headers are never forwarded.
fn base_headers(provider: &ProviderConfig, stream: bool) -> Vec<(HeaderName, String)> {
    let mut h = Vec::with_capacity(5 + provider.headers.len());
    h.push((header::CONTENT_TYPE, "application/json".to_string()));
    h.push((
        header::ACCEPT,
        if stream {
            "text/event-stream"
        } else {
            "application/json"
        }
        .to_string(),
    ));
    h.push((
        header::USER_AGENT,
        concat!("switchyard/", env!("CARGO_PKG_VERSION")).to_string(),
    ));
    h.extend(provider.headers.iter().cloned());
    h
}
