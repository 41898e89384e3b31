//! Anthropic Messages API.

use super::{base_headers, path, InferenceProvider};
use crate::config::ProviderConfig;
use crate::formats::{self, ApiFormat, ChatRequest, FormatError};
use crate::upstream::UpstreamRequest;

/// Adapter for `kind: anthropic` providers.
pub struct AnthropicProvider;

fn auth_headers(provider: &ProviderConfig, headers: &mut Vec<(http::HeaderName, String)>) {
    headers.push((
        http::HeaderName::from_static("anthropic-version"),
        provider.anthropic_version.clone(),
    ));
    if let Some(key) = &provider.api_key {
        headers.push((http::HeaderName::from_static("x-api-key"), key.clone()));
    }
}

impl InferenceProvider for AnthropicProvider {
    fn format(&self) -> ApiFormat {
        ApiFormat::Anthropic
    }

    fn build_request(
        &self,
        provider: &ProviderConfig,
        req: &ChatRequest,
        model: &str,
        default_max_tokens: u32,
    ) -> Result<UpstreamRequest, FormatError> {
        let body = formats::encode_request(ApiFormat::Anthropic, req, model, default_max_tokens)?;
        let mut headers = base_headers(provider, req.stream);
        auth_headers(provider, &mut headers);
        Ok(UpstreamRequest {
            method: "POST",
            path: path(provider, "/messages"),
            headers,
            body: body.into(),
        })
    }

    fn probe_request(&self, provider: &ProviderConfig) -> UpstreamRequest {
        let mut headers = base_headers(provider, false);
        auth_headers(provider, &mut headers);
        UpstreamRequest {
            method: "GET",
            path: path(provider, "/models"),
            headers,
            body: Default::default(),
        }
    }
}
