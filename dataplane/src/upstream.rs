//! HTTP transport to providers over Pingora's pooled connector.
//!
//! This is the only place that touches upstream sockets. It knows nothing of
//! LLM formats: providers build an [`UpstreamRequest`], the routing layer
//! decides what to do with an [`UpstreamError`]. Every wait is bounded:
//! connect, time to first byte, and the idle gap between body chunks.

use crate::config::ProviderConfig;
use bytes::{Bytes, BytesMut};
use dashmap::DashMap;
use pingora_core::connectors::http::Connector;
use pingora_core::protocols::http::client::HttpSession;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_http::RequestHeader;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

/// An HTTP request to a provider, fully built by a provider adapter.
#[derive(Debug, Clone)]
pub struct UpstreamRequest {
    pub method: &'static str,
    /// Path including the provider's base path, e.g. `/v1/chat/completions`.
    pub path: String,
    pub headers: Vec<(http::HeaderName, String)>,
    pub body: Bytes,
}

/// Why an upstream attempt failed. Low-cardinality [`label`](Self::label)s
/// are used in metrics and in the per-attempt log.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot resolve {host}: {message}")]
    Resolve { host: String, message: String },
    #[error("connect failed: {0}")]
    Connect(String),
    #[error("connect timed out")]
    ConnectTimeout,
    #[error("no response within the first-byte timeout")]
    FirstByteTimeout,
    #[error("stream idle for longer than the idle timeout")]
    IdleTimeout,
    #[error("connection error: {0}")]
    Io(String),
    #[error("provider answered {status}: {message}")]
    Status {
        status: u16,
        retry_after: Option<Duration>,
        message: String,
    },
    #[error("malformed provider response: {0}")]
    Malformed(String),
    #[error("provider response larger than {0} bytes")]
    TooLarge(usize),
}

impl UpstreamError {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Resolve { .. } => "resolve",
            Self::Connect(_) => "connect",
            Self::ConnectTimeout => "connect_timeout",
            Self::FirstByteTimeout => "first_byte_timeout",
            Self::IdleTimeout => "idle_timeout",
            Self::Io(_) => "io",
            Self::Status { status: 429, .. } => "status_429",
            Self::Status { status: 529, .. } => "status_529",
            Self::Status { status, .. } if *status >= 500 => "status_5xx",
            Self::Status { .. } => "status_4xx",
            Self::Malformed(_) => "malformed",
            Self::TooLarge(_) => "too_large",
        }
    }

    /// The provider said the request itself is bad: retrying anywhere is
    /// pointless and the client should see the error.
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            Self::Status {
                status: 400 | 404 | 413 | 422,
                ..
            }
        )
    }

    /// Rate limited by the provider: eject the target and move on at once.
    pub fn is_rate_limit(&self) -> bool {
        matches!(self, Self::Status { status: 429, .. })
    }

    pub fn is_timeout(&self) -> bool {
        matches!(
            self,
            Self::ConnectTimeout | Self::FirstByteTimeout | Self::IdleTimeout
        )
    }
}

/// Parses `Retry-After` as seconds or an HTTP-date.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// A response whose header has arrived; the body is read on demand.
pub struct UpstreamResponse {
    session: HttpSession,
    peer: HttpPeer,
    pub status: u16,
    pub content_type: String,
    /// Time from sending the request to the response header.
    pub header_latency: Duration,
}

impl UpstreamResponse {
    /// Next body chunk; `None` at the end. Each wait is capped by `idle`.
    pub async fn next_chunk(&mut self, idle: Duration) -> Result<Option<Bytes>, UpstreamError> {
        match tokio::time::timeout(idle, self.session.read_response_body()).await {
            Err(_) => Err(UpstreamError::IdleTimeout),
            Ok(Err(e)) => Err(UpstreamError::Io(e.to_string())),
            Ok(Ok(chunk)) => Ok(chunk),
        }
    }

    /// Reads the whole body (bounded by `cap`), then returns the connection
    /// to the pool.
    pub async fn read_all(
        mut self,
        client: &UpstreamClient,
        idle: Duration,
        cap: usize,
    ) -> Result<Bytes, UpstreamError> {
        let mut buf = BytesMut::new();
        while let Some(chunk) = self.next_chunk(idle).await? {
            if buf.len() + chunk.len() > cap {
                return Err(UpstreamError::TooLarge(cap));
            }
            buf.extend_from_slice(&chunk);
        }
        client.release(self).await;
        Ok(buf.freeze())
    }
}

/// The shared upstream client: Pingora's connection pool plus a small DNS
/// cache.
pub struct UpstreamClient {
    connector: Connector,
    dns: DashMap<String, (Instant, SocketAddr)>,
}

const DNS_TTL: Duration = Duration::from_secs(30);
const ERROR_BODY_CAP: usize = 64 * 1024;

impl Default for UpstreamClient {
    fn default() -> Self {
        Self::new()
    }
}

impl UpstreamClient {
    pub fn new() -> Self {
        Self {
            connector: Connector::new(None),
            dns: DashMap::new(),
        }
    }

    async fn resolve(&self, host: &str, port: u16) -> Result<SocketAddr, UpstreamError> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, port));
        }
        let key = format!("{host}:{port}");
        if let Some(hit) = self.dns.get(&key) {
            if hit.0.elapsed() < DNS_TTL {
                return Ok(hit.1);
            }
        }
        let addr = tokio::net::lookup_host(&key)
            .await
            .map_err(|e| UpstreamError::Resolve {
                host: host.to_string(),
                message: e.to_string(),
            })?
            .next()
            .ok_or_else(|| UpstreamError::Resolve {
                host: host.to_string(),
                message: "no addresses".into(),
            })?;
        self.dns.insert(key, (Instant::now(), addr));
        Ok(addr)
    }

    async fn peer(&self, p: &ProviderConfig, connect: Duration) -> Result<HttpPeer, UpstreamError> {
        let addr = self.resolve(&p.host, p.port).await?;
        let mut peer = HttpPeer::new(addr, p.tls, p.host.clone());
        peer.options.connection_timeout = Some(connect);
        peer.options.total_connection_timeout = Some(connect);
        peer.options.idle_timeout = Some(Duration::from_secs(60));
        if p.tls {
            // Prefer HTTP/2 to real providers; fall back to HTTP/1.1.
            peer.options.set_http_version(2, 1);
        }
        Ok(peer)
    }

    /// Sends `req` and waits for the response header. Non-2xx answers are
    /// returned as [`UpstreamError::Status`] with the provider's message and
    /// `Retry-After`, and the connection is returned to the pool.
    pub async fn send(
        &self,
        provider: &ProviderConfig,
        req: &UpstreamRequest,
        connect_timeout: Duration,
        first_byte_timeout: Duration,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let peer = self.peer(provider, connect_timeout).await?;
        // A pooled connection the provider already closed fails on first
        // use; that is not the provider's fault, so try once more on a fresh
        // one before reporting an error.
        for _ in 0..2 {
            let (mut session, reused) = self
                .connector
                .get_http_session(&peer)
                .await
                .map_err(|e| classify_connect(&e))?;
            match self
                .exchange(&mut session, provider, req, first_byte_timeout)
                .await
            {
                Ok(header_latency) => {
                    return self.finish_header(session, peer, header_latency).await;
                }
                Err(e) if reused && matches!(e, UpstreamError::Io(_)) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(UpstreamError::Io("pooled connections failed".into()))
    }

    async fn exchange(
        &self,
        session: &mut HttpSession,
        provider: &ProviderConfig,
        req: &UpstreamRequest,
        first_byte_timeout: Duration,
    ) -> Result<Duration, UpstreamError> {
        let io = |e: Box<pingora_error::Error>| UpstreamError::Io(e.to_string());
        let mut head =
            RequestHeader::build(req.method, req.path.as_bytes(), Some(req.headers.len() + 3))
                .map_err(io)?;
        let host =
            if (provider.tls && provider.port == 443) || (!provider.tls && provider.port == 80) {
                provider.host.clone()
            } else {
                format!("{}:{}", provider.host, provider.port)
            };
        head.insert_header("host", host).map_err(io)?;
        for (k, v) in &req.headers {
            head.insert_header(k, v.as_str()).map_err(io)?;
        }
        head.insert_header("content-length", req.body.len().to_string())
            .map_err(io)?;
        let sent = Instant::now();
        session
            .write_request_header(Box::new(head))
            .await
            .map_err(io)?;
        if !req.body.is_empty() {
            session
                .write_request_body(req.body.clone(), true)
                .await
                .map_err(io)?;
        }
        session.finish_request_body().await.map_err(io)?;
        match tokio::time::timeout(first_byte_timeout, session.read_response_header()).await {
            Err(_) => Err(UpstreamError::FirstByteTimeout),
            Ok(Err(e)) => Err(io(e)),
            Ok(Ok(())) => Ok(sent.elapsed()),
        }
    }

    async fn finish_header(
        &self,
        session: HttpSession,
        peer: HttpPeer,
        header_latency: Duration,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let Some(head) = session.response_header() else {
            return Err(UpstreamError::Malformed("no response header".into()));
        };
        let status = head.status.as_u16();
        let header = |name: &str| {
            head.headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let content_type = header("content-type").unwrap_or_default();
        let retry_after =
            header("retry-after").and_then(|v| parse_retry_after(&v, SystemTime::now()));
        let resp = UpstreamResponse {
            session,
            peer,
            status,
            content_type,
            header_latency,
        };
        if (200..300).contains(&status) {
            return Ok(resp);
        }
        let body = resp
            .read_all(self, Duration::from_secs(5), ERROR_BODY_CAP)
            .await
            .unwrap_or_default();
        Err(UpstreamError::Status {
            status,
            retry_after,
            message: provider_error_message(&body),
        })
    }

    /// Returns a fully read connection to the pool.
    pub async fn release(&self, resp: UpstreamResponse) {
        let UpstreamResponse {
            mut session, peer, ..
        } = resp;
        if session.response_done() {
            self.connector
                .release_http_session(session, &peer, Some(Duration::from_secs(60)))
                .await;
        }
    }
}

fn classify_connect(e: &pingora_error::Error) -> UpstreamError {
    use pingora_error::ErrorType;
    match e.etype() {
        ErrorType::ConnectTimedout => UpstreamError::ConnectTimeout,
        _ => UpstreamError::Connect(e.to_string()),
    }
}

/// Extracts a human message from a provider's error body (OpenAI
/// `{"error":{"message"}}`, Anthropic `{"error":{"message"}}`), else a
/// bounded snippet of the raw body.
fn provider_error_message(body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        if let Some(m) = v.pointer("/error/message").and_then(|m| m.as_str()) {
            return m.to_string();
        }
    }
    let text = String::from_utf8_lossy(body);
    text.chars().take(200).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_both_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        let date = httpdate::fmt_http_date(now + Duration::from_secs(12));
        assert_eq!(parse_retry_after(&date, now), Some(Duration::from_secs(12)));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(12));
        assert_eq!(parse_retry_after(&past, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-1", now), None);
    }

    #[test]
    fn error_classes() {
        let s = |status| UpstreamError::Status {
            status,
            retry_after: None,
            message: String::new(),
        };
        assert!(s(400).is_client_error());
        assert!(!s(503).is_client_error());
        assert!(s(429).is_rate_limit());
        assert_eq!(s(529).label(), "status_529");
        assert_eq!(s(502).label(), "status_5xx");
        assert_eq!(
            provider_error_message(br#"{"error":{"message":"slow down"}}"#),
            "slow down"
        );
    }
}
