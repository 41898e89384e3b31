//! Pingora glue: the client-facing HTTP app ([`EdgeApp`]), the admin app
//! ([`admin::AdminApp`]) and process start-up ([`run`]).
//!
//! The edge implements Pingora's `HttpServerApp` directly instead of
//! `ProxyHttp`: the request path is the edge's own (parse, route, attempt
//! loop with retries on status codes, re-encode), driving Pingora's pooled
//! upstream connector from [`crate::upstream`].

pub mod admin;
pub mod startup;

pub use startup::{run, EdgeOptions, StartupError};

use crate::config::{EdgeConfig, ServerLimits};
use crate::error::{ApiError, ErrorKind};
use crate::formats::ApiFormat;
use crate::gateway::{self, Downstream, Gateway, RequestMeta};
use crate::telemetry::log::Tags;
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::FutureExt;
use http::HeaderName;
use pingora_core::apps::{HttpServerApp, HttpServerOptions, ReusedHttpStream};
use pingora_core::protocols::http::ServerSession;
use pingora_core::server::ShutdownWatch;
use pingora_http::ResponseHeader;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use tokio::time::Instant;

/// Attribution headers (documented in docs/config.md).
pub const HEADER_FEATURE: &str = "x-switchyard-feature";
pub const HEADER_TEAM: &str = "x-switchyard-team";
pub const HEADER_USER: &str = "x-switchyard-user";

/// The client-facing HTTP application.
pub struct EdgeApp {
    pub gateway: Arc<Gateway>,
    options: HttpServerOptions,
}

impl EdgeApp {
    pub fn new(gateway: Arc<Gateway>) -> Self {
        let mut options = HttpServerOptions::default();
        options.keepalive_request_limit = Some(10_000);
        Self { gateway, options }
    }
}

struct PingoraDownstream<'a> {
    session: &'a mut ServerSession,
}

fn io_err(e: Box<pingora_error::Error>) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

fn response_header(
    status: u16,
    headers: &[(HeaderName, String)],
    extra: usize,
) -> std::io::Result<ResponseHeader> {
    let mut h = ResponseHeader::build(status, Some(headers.len() + extra)).map_err(io_err)?;
    for (k, v) in headers {
        h.insert_header(k, v.as_str()).map_err(io_err)?;
    }
    h.insert_header("server", "switchyard").map_err(io_err)?;
    Ok(h)
}

#[async_trait]
impl Downstream for PingoraDownstream<'_> {
    async fn respond(
        &mut self,
        status: u16,
        headers: &[(HeaderName, String)],
        body: Bytes,
    ) -> std::io::Result<()> {
        let mut h = response_header(status, headers, 2)?;
        h.insert_header("content-length", body.len().to_string())
            .map_err(io_err)?;
        self.session
            .write_response_header(Box::new(h))
            .await
            .map_err(io_err)?;
        self.session
            .write_response_body(body, true)
            .await
            .map_err(io_err)
    }

    async fn start_stream(
        &mut self,
        status: u16,
        headers: &[(HeaderName, String)],
    ) -> std::io::Result<()> {
        let mut h = response_header(status, headers, 2)?;
        if !self.session.is_http2() {
            h.insert_header("transfer-encoding", "chunked")
                .map_err(io_err)?;
        }
        self.session
            .write_response_header(Box::new(h))
            .await
            .map_err(io_err)
    }

    async fn send(&mut self, data: Bytes, end: bool) -> std::io::Result<()> {
        self.session
            .write_response_body(data, end)
            .await
            .map_err(io_err)
    }

    async fn client_closed(&mut self) {
        // With the body fully read, Pingora's idle read returns an error as
        // soon as the client closes (abort-on-close is the default).
        loop {
            match self.session.read_body_or_idle(true).await {
                Err(_) => return,
                Ok(None) => std::future::pending::<()>().await,
                Ok(Some(_)) => continue,
            }
        }
    }
}

/// Which API shape an error on this request should use.
fn guess_format(session: &ServerSession) -> ApiFormat {
    let path = session.req_header().uri.path();
    if path.starts_with("/v1/messages")
        || session.get_header("anthropic-version").is_some()
        || (session.get_header("x-api-key").is_some()
            && session.get_header("authorization").is_none())
    {
        ApiFormat::Anthropic
    } else {
        ApiFormat::OpenAi
    }
}

fn header_str(session: &ServerSession, name: &str) -> Option<String> {
    session
        .get_header(name)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty() && s.len() <= 256)
}

fn header_bytes(session: &ServerSession) -> usize {
    let req = session.req_header();
    req.uri.to_string().len()
        + req
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum::<usize>()
}

/// Reads the request body, enforcing the size cap (also for chunked bodies)
/// and the body deadline.
async fn read_body(session: &mut ServerSession, limits: &ServerLimits) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            ErrorKind::PayloadTooLarge,
            format!(
                "request body exceeds the {} byte limit",
                limits.max_body_bytes
            ),
        )
        .with_code("request_too_large")
    };
    if let Some(len) = session
        .get_header("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        if len > limits.max_body_bytes {
            return Err(too_large());
        }
    }
    let deadline = Instant::now() + limits.body_timeout;
    let mut buf = BytesMut::new();
    loop {
        match tokio::time::timeout_at(deadline, session.read_request_body()).await {
            Err(_) => {
                return Err(ApiError::new(
                    ErrorKind::RequestTimeout,
                    "request body not received in time",
                )
                .with_code("request_timeout"))
            }
            Ok(Err(e)) => return Err(ApiError::invalid(format!("cannot read request body: {e}"))),
            Ok(Ok(None)) => break,
            Ok(Ok(Some(chunk))) => {
                if buf.len() + chunk.len() > limits.max_body_bytes {
                    return Err(too_large());
                }
                buf.extend_from_slice(&chunk);
            }
        }
    }
    Ok(buf.freeze())
}

impl EdgeApp {
    async fn serve(&self, session: &mut ServerSession, started: Instant) {
        let gw = &self.gateway;
        let cfg = gw.config.load_full();
        let fmt = guess_format(session);
        let meta = RequestMeta {
            path: session.req_header().uri.path().to_string(),
            trace_id: gateway::trace_id(
                header_str(session, "x-request-id").as_deref(),
                header_str(session, "traceparent").as_deref(),
            ),
            credential: crate::limits::keys::presented_secret(
                header_str(session, "authorization").as_deref(),
                header_str(session, "x-api-key").as_deref(),
            ),
            cache_control: crate::cache::CacheControl::parse_all(
                session
                    .req_header()
                    .headers
                    .get_all(http::header::CACHE_CONTROL)
                    .iter()
                    .filter_map(|v| v.to_str().ok()),
            ),
            tags: Tags {
                feature: header_str(session, HEADER_FEATURE),
                team: header_str(session, HEADER_TEAM),
                user: header_str(session, HEADER_USER),
            },
        };
        if header_bytes(session) > cfg.server.max_header_bytes {
            let err = ApiError::new(
                ErrorKind::HeadersTooLarge,
                format!(
                    "request headers exceed the {} byte limit",
                    cfg.server.max_header_bytes
                ),
            );
            session.set_keepalive(None);
            let mut down = PingoraDownstream { session };
            gw.reject(fmt, &meta, &err, started, &mut down).await;
            return;
        }
        let method = session.req_header().method.clone();
        let path = meta.path.clone();
        let endpoint = match (method.as_str(), path.as_str()) {
            ("POST", "/v1/chat/completions" | "/chat/completions") => Ok(Some(ApiFormat::OpenAi)),
            ("POST", "/v1/messages" | "/messages") => Ok(Some(ApiFormat::Anthropic)),
            ("GET", "/v1/models" | "/models") => Ok(None),
            (_, "/v1/chat/completions" | "/v1/messages" | "/v1/models") => Err(ApiError::new(
                ErrorKind::MethodNotAllowed,
                format!("method {method} is not allowed on {path}"),
            )),
            _ => Err(
                ApiError::new(ErrorKind::NotFound, format!("unknown path {path}"))
                    .with_code("unknown_url"),
            ),
        };
        match endpoint {
            Err(err) => {
                let _ = session.drain_request_body().await;
                let mut down = PingoraDownstream { session };
                gw.reject(fmt, &meta, &err, started, &mut down).await;
            }
            Ok(None) => {
                let _ = session.drain_request_body().await;
                let body = models_body(&cfg, fmt);
                let mut down = PingoraDownstream { session };
                let headers = [(http::header::CONTENT_TYPE, "application/json".to_string())];
                let _ = down.respond(200, &headers, Bytes::from(body)).await;
            }
            Ok(Some(api)) => match read_body(session, &cfg.server).await {
                Err(err) => {
                    session.set_keepalive(None);
                    let mut down = PingoraDownstream { session };
                    gw.reject(api, &meta, &err, started, &mut down).await;
                }
                Ok(body) => {
                    let mut down = PingoraDownstream { session };
                    gw.chat(api, body, meta, started, &mut down).await;
                }
            },
        }
    }
}

/// `GET /v1/models` in the caller's shape: every public model name.
fn models_body(cfg: &EdgeConfig, fmt: ApiFormat) -> Vec<u8> {
    let mut names: Vec<&String> = cfg.routes.keys().collect();
    names.sort();
    let v = match fmt {
        ApiFormat::OpenAi => serde_json::json!({
            "object": "list",
            "data": names.iter().map(|n| serde_json::json!({"id": n, "object": "model", "created": 0, "owned_by": "switchyard"})).collect::<Vec<_>>(),
        }),
        ApiFormat::Anthropic => serde_json::json!({
            "data": names.iter().map(|n| serde_json::json!({"type": "model", "id": n, "display_name": n, "created_at": "1970-01-01T00:00:00Z"})).collect::<Vec<_>>(),
            "has_more": false,
            "first_id": names.first(),
            "last_id": names.last(),
        }),
    };
    serde_json::to_vec(&v).unwrap_or_default()
}

#[async_trait]
impl HttpServerApp for EdgeApp {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        let header_timeout = self.gateway.config.load().server.header_timeout;
        // A total deadline for the request head: Pingora's per-read timeout
        // alone lets a slowloris client trickle bytes forever.
        match tokio::time::timeout(header_timeout, session.read_request()).await {
            Err(_) => {
                crate::telemetry::metrics::rejected("header_timeout");
                return None;
            }
            Ok(Err(e)) => {
                if e.etype() == &pingora_error::ErrorType::InvalidHTTPHeader
                    && e.to_string().contains("larger than")
                {
                    crate::telemetry::metrics::rejected("headers_too_large");
                    let _ = session.respond_error(431).await;
                }
                return None;
            }
            Ok(Ok(false)) => return None,
            Ok(Ok(true)) => {}
        }
        let started = Instant::now();
        if *shutdown.borrow() {
            session.set_keepalive(None);
        }
        // A panic while serving costs only this request.
        let served = AssertUnwindSafe(self.serve(&mut session, started))
            .catch_unwind()
            .await;
        if served.is_err() {
            tracing::error!("panic while serving a request");
            if session.response_written().is_none() {
                let err = ApiError::internal("internal error");
                let fmt = guess_format(&session);
                let mut h = ResponseHeader::build(500, Some(2)).ok()?;
                h.insert_header("content-type", "application/json").ok()?;
                let body = Bytes::from(err.body(fmt));
                h.insert_header("content-length", body.len().to_string())
                    .ok()?;
                let _ = session.write_response_header(Box::new(h)).await;
                let _ = session.write_response_body(body, true).await;
            }
            session.set_keepalive(None);
        }
        let persistent = pingora_core::apps::HttpPersistentSettings::for_session(&session);
        match session.finish().await {
            Ok(Some(stream)) => Some(ReusedHttpStream::from_reusable_stream(stream, persistent)),
            _ => None,
        }
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        Some(&self.options)
    }
}
