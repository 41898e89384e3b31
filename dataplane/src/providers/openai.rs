//! OpenAI Chat Completions (and any OpenAI-compatible API).

use super::{base_headers, path, InferenceProvider};
use crate::config::ProviderConfig;
use crate::formats::{self, ApiFormat, ChatRequest, FormatError};
use crate::upstream::UpstreamRequest;

/// Adapter for `kind: openai` providers.
pub struct OpenAiProvider;

impl InferenceProvider for OpenAiProvider {
    fn format(&self) -> ApiFormat {
        ApiFormat::OpenAi
    }

    fn build_request(
        &self,
        provider: &ProviderConfig,
        req: &ChatRequest,
        model: &str,
        default_max_tokens: u32,
    ) -> Result<UpstreamRequest, FormatError> {
        let body = formats::encode_request(ApiFormat::OpenAi, req, model, default_max_tokens)?;
        let mut headers = base_headers(provider, req.stream);
        if let Some(key) = &provider.api_key {
            headers.push((http::header::AUTHORIZATION, format!("Bearer {key}")));
        }
        Ok(UpstreamRequest {
            method: "POST",
            path: path(provider, "/chat/completions"),
            headers,
            body: body.into(),
        })
    }

    fn probe_request(&self, provider: &ProviderConfig) -> UpstreamRequest {
        let mut headers = base_headers(provider, false);
        if let Some(key) = &provider.api_key {
            headers.push((http::header::AUTHORIZATION, format!("Bearer {key}")));
        }
        UpstreamRequest {
            method: "GET",
            path: path(provider, "/models"),
            headers,
            body: Default::default(),
        }
    }
}
