//! The request path for model calls, stage by stage (see
//! `docs/architecture.md`):
//!
//! 1. parse the client's body in its API shape ([`crate::formats`]) → 400;
//! 2. resolve the public model name to a route ([`crate::config`]) → 404;
//! 3. run the attempt loop ([`crate::routing`]) over the route's targets;
//! 4. answer: a JSON body, or an SSE stream pumped chunk by chunk from the
//!    provider, re-encoded in the client's shape, ending with an explicit
//!    error event if the provider's stream breaks;
//! 5. account ([`crate::usage`]) and record ([`crate::telemetry`]) the call.
//!
//! The HTTP server glue lives in [`crate::server`]; this module only sees a
//! [`Downstream`] to write to, which keeps it independent of Pingora.

use crate::cache;
use crate::config::{EdgeConfig, Route};
use crate::error::{ApiError, ErrorKind};
use crate::formats::{self, ApiFormat, BlockKind, ChatRequest, StreamEncoder, StreamEvent, Usage};
use crate::limits::{self, Admission, Caller, Estimate, Limits, Rejection};
use crate::routing::{OpenStream, Router, Success};
use crate::telemetry::log::{CallLog, CallLogger, Tags};
use crate::telemetry::metrics;
use crate::upstream::UpstreamClient;
use crate::usage;
use arc_swap::ArcSwap;
use bytes::{Bytes, BytesMut};
use http::{header, HeaderName};
use std::sync::Arc;
use std::time::SystemTime;
use tokio::time::Instant;

/// Where the response goes. Implemented over Pingora's server session.
#[async_trait::async_trait]
pub trait Downstream: Send {
    /// Writes a complete response.
    async fn respond(
        &mut self,
        status: u16,
        headers: &[(HeaderName, String)],
        body: Bytes,
    ) -> std::io::Result<()>;
    /// Writes the head of a streamed (chunked) response.
    async fn start_stream(
        &mut self,
        status: u16,
        headers: &[(HeaderName, String)],
    ) -> std::io::Result<()>;
    /// Writes a chunk; `end` finishes the response.
    async fn send(&mut self, data: Bytes, end: bool) -> std::io::Result<()>;
    /// Resolves when the client has gone away (after its request was read);
    /// pending forever otherwise. Must be cancel-safe.
    async fn client_closed(&mut self);
}

/// Request metadata the gateway needs besides the body.
#[derive(Debug, Default, Clone)]
pub struct RequestMeta {
    pub path: String,
    pub trace_id: String,
    pub tags: Tags,
    /// The virtual API key the client presented, if any.
    pub credential: Option<String>,
    /// The request's `Cache-Control` directives.
    pub cache_control: cache::CacheControl,
}

/// Per-call state threaded through the request path.
#[derive(Default)]
struct CallCtx {
    log: CallLog,
    /// Extra response headers (`x-ratelimit-*`), on success and on errors.
    headers: Vec<(HeaderName, String)>,
    /// Held limits; settled with the real usage when the call ends.
    admission: Option<Admission>,
}

/// Everything shared by all requests on an edge.
pub struct Gateway {
    pub config: Arc<ArcSwap<EdgeConfig>>,
    pub client: Arc<UpstreamClient>,
    pub router: Arc<Router>,
    pub logger: CallLogger,
    pub limits: Arc<Limits>,
    pub cache: cache::ResponseCache,
    pub node_id: String,
    /// With a control plane: where every admitted call's usage record goes
    /// (the reporter's spool).
    pub usage: Option<Arc<dyn usage::UsageSink>>,
}

/// How long a call waits for a grant when this edge's share of a global
/// budget is used up and the control plane was asked for more.
const GRANT_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

/// Picks the trace id: a sane `x-request-id`, else the W3C `traceparent`
/// trace id, else a fresh random id.
pub fn trace_id(request_id: Option<&str>, traceparent: Option<&str>) -> String {
    if let Some(id) = request_id {
        let id = id.trim();
        if !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()) {
            return id.to_string();
        }
    }
    if let Some(tp) = traceparent {
        let mut parts = tp.trim().split('-');
        if let (Some(_ver), Some(tid)) = (parts.next(), parts.next()) {
            if tid.len() == 32
                && tid.bytes().all(|b| b.is_ascii_hexdigit())
                && tid != "0".repeat(32)
            {
                return tid.to_ascii_lowercase();
            }
        }
    }
    uuid::Uuid::new_v4().simple().to_string()
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

impl Gateway {
    fn base_log(&self, cfg: &EdgeConfig, fmt: ApiFormat, meta: &RequestMeta) -> CallLog {
        CallLog {
            ts: now_rfc3339(),
            trace_id: meta.trace_id.clone(),
            node_id: self.node_id.clone(),
            region: self.router.home_region.clone(),
            config_version: cfg.version,
            api: fmt.as_str(),
            path: meta.path.clone(),
            tags: meta.tags.clone(),
            ..CallLog::default()
        }
    }

    /// Answers an error in the caller's shape and logs the call.
    pub async fn reject(
        &self,
        fmt: ApiFormat,
        meta: &RequestMeta,
        err: &ApiError,
        started: Instant,
        down: &mut dyn Downstream,
    ) {
        let cfg = self.config.load();
        let mut log = self.base_log(&cfg, fmt, meta);
        log.status = err.status();
        log.error_type = Some(err.kind.label());
        log.error_message = Some(err.message.clone());
        log.latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        metrics::rejected(err.kind.label());
        let _ = down
            .respond(
                err.status(),
                &error_headers(err, &meta.trace_id),
                Bytes::from(err.body(fmt)),
            )
            .await;
        self.logger.emit(&log);
    }

    /// Serves one model call.
    pub async fn chat(
        &self,
        fmt: ApiFormat,
        body: Bytes,
        meta: RequestMeta,
        started: Instant,
        down: &mut dyn Downstream,
    ) {
        let cfg = self.config.load_full();
        let mut ctx = CallCtx {
            log: self.base_log(&cfg, fmt, &meta),
            ..CallCtx::default()
        };
        let outcome = self
            .chat_inner(&cfg, fmt, &body, &meta, started, &mut ctx, down)
            .await;
        let CallCtx {
            mut log,
            headers,
            admission,
        } = ctx;
        let admitted = admission.is_some();
        if let Err(err) = outcome {
            log.status = err.status();
            log.error_type = Some(err.kind.label());
            log.error_message = Some(err.message.clone());
            let mut h = error_headers(&err, &meta.trace_id);
            h.extend(headers);
            let _ = down
                .respond(err.status(), &h, Bytes::from(err.body(fmt)))
                .await;
        }
        if let Some(adm) = admission {
            let tokens = log.input_tokens + log.output_tokens;
            for alert in self.limits.settle(adm, tokens, log.cost_usd) {
                metrics::budget_soft_alert(&alert.budget);
                self.logger.emit_event(&serde_json::json!({
                    "event": "budget_soft_limit",
                    "ts": now_rfc3339(),
                    "node_id": self.node_id,
                    "budget": alert.budget,
                    "window": alert.window,
                    "soft_limit_usd": alert.soft_usd,
                    "spent_usd": alert.spent_usd,
                    "trace_id": log.trace_id,
                }));
            }
        }
        log.latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        if admitted {
            if let Some(sink) = &self.usage {
                sink.record(usage_record(&log));
            }
        }
        if log.cost_usd > 0.0 {
            metrics::attributed_cost(
                cfg.limits.team_label(log.tags.team.as_deref()),
                cfg.limits.feature_label(log.tags.feature.as_deref()),
                log.cost_usd,
            );
        }
        metrics::call(&metrics::CallMetrics {
            api: log.api,
            route: log.route.as_deref().unwrap_or("-"),
            model: log.model_served.as_deref().unwrap_or("-"),
            provider: log.provider.as_deref().unwrap_or("-"),
            status: log.status,
            error_type: log.error_type.unwrap_or("none"),
            duration_s: log.latency_ms / 1000.0,
            ttft_s: log.ttft_ms.map(|t| t / 1000.0),
            input_tokens: log.input_tokens,
            output_tokens: log.output_tokens,
            cached_tokens: log.cached_tokens,
            cost_usd: log.cost_usd,
        });
        self.logger.emit(&log);
    }

    #[allow(clippy::too_many_arguments)]
    async fn chat_inner(
        &self,
        cfg: &EdgeConfig,
        fmt: ApiFormat,
        body: &[u8],
        meta: &RequestMeta,
        started: Instant,
        ctx: &mut CallCtx,
        down: &mut dyn Downstream,
    ) -> Result<(), ApiError> {
        // Who is calling (401 before anything else).
        let key = cfg
            .limits
            .keys
            .authenticate(meta.credential.as_deref())
            .map_err(|e| limits::auth_error(&e))?;
        let caller = Caller {
            feature: meta
                .tags
                .feature
                .clone()
                .or_else(|| key.as_ref().and_then(|k| k.default_feature.clone())),
            team: key
                .as_ref()
                .and_then(|k| k.team.clone())
                .or_else(|| meta.tags.team.clone()),
            user: key
                .as_ref()
                .and_then(|k| k.user.clone())
                .or_else(|| meta.tags.user.clone()),
            key,
        };
        let log = &mut ctx.log;
        log.key_id = caller.key.as_ref().map(|k| k.id.clone());
        log.tags = Tags {
            feature: caller.feature.clone(),
            team: caller.team.clone(),
            user: caller.user.clone(),
        };
        let mut req = formats::parse_request(fmt, body)?;
        log.stream = req.stream;
        log.model_requested = Some(req.model.clone());
        log.temperature = req.temperature;
        log.max_tokens = req.max_tokens;
        let prompt = req.prompt_text();
        log.prompt_sha256 = Some(sha256_hex(&prompt));
        let route = cfg.routes.get(&req.model).cloned().ok_or_else(|| {
            ApiError::new(
                ErrorKind::NotFound,
                format!(
                    "The model `{}` does not exist or you do not have access to it.",
                    req.model
                ),
            )
            .with_param("model")
            .with_code("model_not_found")
        })?;
        if let Some(k) = &caller.key {
            if !k.may_call(&req.model) {
                return Err(ApiError::new(
                    ErrorKind::PermissionDenied,
                    format!("API key `{}` may not call model `{}`", k.id, req.model),
                )
                .with_param("model")
                .with_code("model_not_allowed"));
            }
        }
        // Rate limits and budgets; a hard budget may downgrade the route.
        let mut route = route;
        let mut allow_downgrade = true;
        // A global budget may make the call wait (bounded) for more of it.
        let wait_until = Instant::now() + GRANT_WAIT;
        let admission = loop {
            let tier = route
                .tier
                .as_deref()
                .or(caller.key.as_ref().and_then(|k| k.tier.as_deref()));
            let est = estimate(cfg, &route, &req, &prompt);
            let may_wait = Instant::now() < wait_until;
            match self
                .limits
                .admit_with(&cfg.limits, &caller, tier, est, allow_downgrade, may_wait)
            {
                Ok(a) => break a,
                Err(Rejection::AwaitGrant(w)) => {
                    metrics::budget_grant_wait();
                    w.wait(wait_until.saturating_duration_since(Instant::now()))
                        .await;
                }
                Err(Rejection::Limited(err, headers)) => {
                    metrics::rate_limited(err.code.unwrap_or("rate_limited"));
                    ctx.headers = headers;
                    return Err(err);
                }
                Err(Rejection::Downgrade(e)) => {
                    let to = e.downgrade_to.clone().unwrap_or_default();
                    let next = cfg.routes.get(&to).cloned().ok_or_else(|| {
                        ApiError::internal(format!(
                            "budget `{}` downgrades to unknown model `{to}`",
                            e.budget
                        ))
                    })?;
                    metrics::budget_downgrade(&e.budget, &to);
                    ctx.log.downgraded_from = Some(route.name.clone());
                    route = next;
                    allow_downgrade = false;
                }
            }
        };
        // The reservation priced a missing max_tokens at the route's
        // default: cap the answer there so a hard budget holds.
        if req.max_tokens.is_none() && admission.hard_budget() {
            req.max_tokens = Some(route.default_max_tokens);
        }
        ctx.headers = admission.headers.clone();
        ctx.admission = Some(admission);
        ctx.log.route = Some(route.name.clone());
        if route.log_bodies {
            ctx.log.prompt = Some(prompt);
        }
        let deadline = started + route.timeouts.total;

        // Exact-match cache: a hit (or the answer of an identical request
        // already in flight) is served without calling a provider.
        let policy = route.cache.as_ref().map(|c| cache::CachePolicy {
            ttl: c.ttl,
            max_entry_bytes: c.max_entry_bytes,
            cache_nondeterministic: c.cache_nondeterministic,
        });
        let mut guard: Option<cache::LeaderGuard> = None;
        if policy.is_some() || !meta.cache_control.is_empty() {
            let sig = cache::RouteSignature::new(
                &route.name,
                route.default_max_tokens,
                route
                    .tiers
                    .iter()
                    .map(|t| t.targets.iter().map(|x| x.id.as_str())),
            );
            let lookup = self.cache.begin(
                &req,
                caller.team.as_deref(),
                &sig,
                policy.as_ref(),
                &meta.cache_control,
            );
            let lookup = match lookup {
                cache::Lookup::Follow(w) => {
                    let out = tokio::select! {
                        o = w.wait(deadline.saturating_duration_since(Instant::now())) => o,
                        _ = down.client_closed() => {
                            ctx.log.status = 499;
                            ctx.log.error_type = Some("client_closed");
                            return Ok(());
                        }
                    };
                    match out {
                        cache::FollowOutcome::Hit(e) => cache::Lookup::Hit(e),
                        cache::FollowOutcome::Lead(g) => cache::Lookup::Lead(g),
                    }
                }
                other => other,
            };
            match lookup {
                cache::Lookup::Disabled | cache::Lookup::Follow(_) => {}
                cache::Lookup::Bypass(_) => cache_status(ctx, cache::CacheStatus::Bypass),
                cache::Lookup::Hit(entry) => {
                    cache_status(ctx, cache::CacheStatus::Hit);
                    self.serve_cached(cfg, fmt, &req, &route, &entry, meta, started, ctx, down)
                        .await;
                    return Ok(());
                }
                cache::Lookup::Lead(g) => {
                    cache_status(ctx, g.status());
                    guard = Some(g);
                }
            }
        }
        let log = &mut ctx.log;
        let attempt = tokio::time::timeout_at(
            deadline,
            self.router
                .execute(&self.client, &route, &req, started, deadline),
        );
        // A client that leaves cancels the upstream work: dropping the
        // attempt future closes the upstream connection.
        let routed = tokio::select! {
            r = attempt => match r {
                Ok(r) => r,
                Err(_) => {
                    return Err(ApiError::new(
                        ErrorKind::Timeout,
                        format!("model `{}` did not answer within the deadline", route.name),
                    )
                    .with_code("deadline_exceeded"))
                }
            },
            _ = down.client_closed() => {
                log.status = 499;
                log.error_type = Some("client_closed");
                return Ok(());
            }
        };
        log.attempts = routed.attempts;
        if let Some(t) = &routed.target {
            log.provider = Some(t.provider.name.clone());
            log.model_served = Some(t.model.clone());
        }
        let success = routed.result?;
        let target = routed
            .target
            .ok_or_else(|| ApiError::internal("attempt loop returned no target"))?;
        let price = cfg.prices.get(&target.model).copied();
        log.priced = price.is_some();
        match success {
            Success::Full(resp) => {
                log.ttft_ms = routed.ttfb.map(|d| d.as_secs_f64() * 1000.0);
                account(log, &resp.usage, price);
                log.tool_calls = resp.tool_call_names();
                if route.log_bodies {
                    log.response = Some(resp.text());
                }
                let out = formats::encode_response(fmt, &resp, &req.model);
                log.status = 200;
                log.complete = true;
                if let Some(g) = guard.take() {
                    g.complete(
                        resp,
                        cache::ResponseOrigin {
                            provider: target.provider.name.clone(),
                            model: target.model.clone(),
                        },
                    );
                }
                let mut headers = vec![
                    (header::CONTENT_TYPE, "application/json".to_string()),
                    (
                        HeaderName::from_static("x-request-id"),
                        meta.trace_id.clone(),
                    ),
                ];
                headers.extend(ctx.headers.iter().cloned());
                // A failed write means the client left; the call is still
                // accounted and logged.
                let _ = down.respond(200, &headers, Bytes::from(out)).await;
                Ok(())
            }
            Success::Stream(open) => {
                let extra = ctx.headers.clone();
                let store = guard.take().map(|g| {
                    let asm = g.stream_assembler(target.provider.kind.format());
                    let origin = cache::ResponseOrigin {
                        provider: target.provider.name.clone(),
                        model: target.model.clone(),
                    };
                    (g, asm, origin)
                });
                self.pump_stream(
                    fmt, &req, &route, open, meta, &extra, started, deadline, price, store, log,
                    down,
                )
                .await;
                Ok(())
            }
        }
    }

    /// Serves a cached answer: JSON, or a replayed SSE stream in the
    /// client's shape. Costs nothing; logs the cost it saved.
    #[allow(clippy::too_many_arguments)]
    async fn serve_cached(
        &self,
        cfg: &EdgeConfig,
        fmt: ApiFormat,
        req: &ChatRequest,
        route: &Route,
        entry: &cache::CachedResponse,
        meta: &RequestMeta,
        started: Instant,
        ctx: &mut CallCtx,
        down: &mut dyn Downstream,
    ) {
        let log = &mut ctx.log;
        log.status = 200;
        log.complete = true;
        log.provider = Some(entry.origin.provider.clone());
        log.model_served = Some(entry.origin.model.clone());
        log.priced = cfg.prices.contains_key(&entry.origin.model);
        log.cost_saved_usd = cfg
            .prices
            .get(&entry.origin.model)
            .map_or(0.0, |p| usage::cost_usd(p, &entry.usage()));
        log.tool_calls = entry.response.tool_call_names();
        if route.log_bodies {
            log.response = Some(entry.response.text());
        }
        log.ttft_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
        let mut headers = vec![
            (
                HeaderName::from_static("x-request-id"),
                meta.trace_id.clone(),
            ),
            (header::AGE, entry.age().as_secs().to_string()),
        ];
        headers.extend(ctx.headers.iter().cloned());
        if req.stream {
            headers.push((header::CONTENT_TYPE, "text/event-stream".to_string()));
            headers.push((header::CACHE_CONTROL, "no-cache".to_string()));
            let mut enc = StreamEncoder::new(fmt, &req.model, req.include_usage);
            let mut buf = BytesMut::with_capacity(4096);
            for ev in entry.replay_events() {
                enc.encode(&ev, &mut buf);
            }
            enc.finish(&mut buf);
            if down.start_stream(200, &headers).await.is_ok() {
                let _ = down.send(buf.freeze(), true).await;
            }
        } else {
            headers.push((header::CONTENT_TYPE, "application/json".to_string()));
            let out = formats::encode_response(fmt, &entry.response, &req.model);
            let _ = down.respond(200, &headers, Bytes::from(out)).await;
        }
    }

    /// Relays a started stream to the client. Ends with the client shape's
    /// terminator only if the provider's stream completed; otherwise with an
    /// explicit error event. Partial usage is always accounted.
    #[allow(clippy::too_many_arguments)]
    async fn pump_stream(
        &self,
        fmt: ApiFormat,
        req: &ChatRequest,
        route: &Route,
        open: OpenStream,
        meta: &RequestMeta,
        extra_headers: &[(HeaderName, String)],
        started: Instant,
        deadline: Instant,
        price: Option<crate::config::Price>,
        mut store: Option<(
            cache::LeaderGuard,
            cache::StreamAssembler,
            cache::ResponseOrigin,
        )>,
        log: &mut CallLog,
        down: &mut dyn Downstream,
    ) {
        let OpenStream {
            mut response,
            mut decoder,
            pending,
            slot: _slot,
        } = open;
        let mut headers = vec![
            (header::CONTENT_TYPE, "text/event-stream".to_string()),
            (header::CACHE_CONTROL, "no-cache".to_string()),
            (
                HeaderName::from_static("x-request-id"),
                meta.trace_id.clone(),
            ),
        ];
        headers.extend(extra_headers.iter().cloned());
        log.status = 200;
        let mut enc = StreamEncoder::new(fmt, &req.model, req.include_usage);
        let mut buf = BytesMut::with_capacity(4096);
        let mut text = route.log_bodies.then(String::new);
        let mut tool_calls = Vec::new();
        for ev in &pending {
            observe(ev, &mut text, &mut tool_calls);
            if let Some((_, asm, _)) = store.as_mut() {
                asm.push(ev);
            }
            enc.encode(ev, &mut buf);
        }
        if down.start_stream(200, &headers).await.is_err() {
            log.error_type = Some("client_closed");
            log.status = 499;
            account(log, &decoder.usage(), price);
            return;
        }
        log.ttft_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
        let mut failure: Option<(&'static str, String)> = None;
        let mut client_gone = false;
        loop {
            if !buf.is_empty() && down.send(buf.split().freeze(), false).await.is_err() {
                client_gone = true;
                break;
            }
            if decoder.is_complete() {
                break;
            }
            let idle = route
                .timeouts
                .idle
                .min(deadline.saturating_duration_since(Instant::now()));
            let next = tokio::select! {
                n = response.next_chunk(idle) => n,
                _ = down.client_closed() => {
                    client_gone = true;
                    break;
                }
            };
            match next {
                Ok(Some(chunk)) => match decoder.feed(&chunk) {
                    Ok(events) => {
                        for ev in &events {
                            observe(ev, &mut text, &mut tool_calls);
                            if let Some((_, asm, _)) = store.as_mut() {
                                asm.push(ev);
                            }
                            enc.encode(ev, &mut buf);
                        }
                    }
                    Err(e) => {
                        failure = Some(("upstream_stream_error", e.message));
                        break;
                    }
                },
                Ok(None) => {
                    if !decoder.is_complete() {
                        failure = Some((
                            "upstream_stream_cut",
                            "the provider's stream ended before the answer was complete".into(),
                        ));
                    }
                    break;
                }
                Err(e) => {
                    let kind = if e.is_timeout() {
                        "upstream_stream_timeout"
                    } else {
                        "upstream_stream_cut"
                    };
                    failure = Some((kind, format!("the provider's stream broke: {e}")));
                    break;
                }
            }
        }
        if client_gone {
            // Dropping `response` closes the upstream connection: no leaked
            // upstream work.
            log.status = 499;
            log.error_type = Some("client_closed");
            metrics::stream_incomplete(&route.name, "client_closed");
        } else if let Some((kind, message)) = failure {
            enc.error(
                if fmt == ApiFormat::Anthropic {
                    "api_error"
                } else {
                    "server_error"
                },
                &message,
                &mut buf,
            );
            let _ = down.send(buf.split().freeze(), true).await;
            log.error_type = Some(kind);
            log.error_message = Some(message);
            metrics::stream_incomplete(&route.name, kind);
        } else {
            enc.finish(&mut buf);
            let _ = down.send(buf.split().freeze(), true).await;
            log.complete = true;
            self.client.release(response).await;
            // Only complete, successful answers are stored.
            if let Some((g, mut asm, origin)) = store.take() {
                asm.set_usage(decoder.usage());
                match asm.into_response() {
                    Ok(r) => {
                        g.complete(r, origin);
                    }
                    Err(Some(why)) => cache::record_not_stored(why.as_str()),
                    Err(None) => {}
                }
            }
        }
        log.response = text;
        log.tool_calls = tool_calls;
        let mut usage = decoder.usage();
        if usage.input_tokens == 0 && !decoder.is_complete() {
            // OpenAI reports prompt tokens only at the end of a stream; a cut
            // stream is charged for its prompt by estimate (~4 chars/token).
            usage.input_tokens = estimate_tokens(&req.prompt_text());
            log.usage_estimated = true;
        }
        account(log, &usage, price);
    }
}

fn cache_status(ctx: &mut CallCtx, s: cache::CacheStatus) {
    ctx.headers.push((
        HeaderName::from_static(cache::CACHE_STATUS_HEADER),
        s.as_str().to_string(),
    ));
    ctx.log.cache = Some(s.as_str());
}

/// Collects what the call log needs from stream events.
fn observe(ev: &StreamEvent, text: &mut Option<String>, tool_calls: &mut Vec<String>) {
    match ev {
        StreamEvent::TextDelta { text: t, .. } => {
            if let Some(buf) = text.as_mut() {
                buf.push_str(t);
            }
        }
        StreamEvent::BlockStart {
            block: BlockKind::ToolUse { name, .. },
            ..
        } => tool_calls.push(name.clone()),
        _ => {}
    }
}

/// Rough token count of `text` (~4 characters per token), at least 1.
pub fn estimate_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4).max(1)
}

/// The most a call may cost and use, for reservations: estimated prompt
/// tokens plus `max_tokens` (or the route's default), priced at the most
/// expensive target of the route.
fn estimate(cfg: &EdgeConfig, route: &Route, req: &ChatRequest, prompt: &str) -> Estimate {
    let input = estimate_tokens(prompt);
    let output = u64::from(req.max_tokens.unwrap_or(route.default_max_tokens));
    let cost_usd = route
        .targets()
        .filter_map(|t| cfg.prices.get(&t.model))
        .map(|p| {
            usage::cost_usd(
                p,
                &Usage {
                    input_tokens: input,
                    output_tokens: output,
                    cached_input_tokens: 0,
                },
            )
        })
        .fold(0.0, f64::max);
    Estimate {
        tokens: input + output,
        cost_usd,
    }
}

/// The usage record of a finished call, for the control plane.
fn usage_record(log: &CallLog) -> switchyard_proto::control::UsageRecord {
    let ms = SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    switchyard_proto::control::UsageRecord {
        timestamp_unix_ms: ms,
        key_id: log.key_id.clone().unwrap_or_default(),
        team: log.tags.team.clone().unwrap_or_default(),
        user: log.tags.user.clone().unwrap_or_default(),
        feature: log.tags.feature.clone().unwrap_or_default(),
        route: log.route.clone().unwrap_or_default(),
        model: log.model_served.clone().unwrap_or_default(),
        provider: log.provider.clone().unwrap_or_default(),
        input_tokens: log.input_tokens,
        output_tokens: log.output_tokens,
        cached_tokens: log.cached_tokens,
        cost_usd: log.cost_usd,
        request_id: log.trace_id.clone(),
        seq: 0,
        status: u32::from(log.status),
    }
}

fn account(log: &mut CallLog, u: &Usage, price: Option<crate::config::Price>) {
    log.input_tokens = u.input_tokens;
    log.output_tokens = u.output_tokens;
    log.cached_tokens = u.cached_input_tokens;
    log.cost_usd = price.map_or(0.0, |p| usage::cost_usd(&p, u));
}

/// Headers for an error response: JSON, the trace id, and `Retry-After`
/// (whole seconds, rounded up) when the error carries one.
pub fn error_headers(err: &ApiError, trace_id: &str) -> Vec<(HeaderName, String)> {
    let mut h = vec![
        (header::CONTENT_TYPE, "application/json".to_string()),
        (
            HeaderName::from_static("x-request-id"),
            trace_id.to_string(),
        ),
    ];
    if let Some(d) = err.retry_after {
        let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
        h.push((header::RETRY_AFTER, secs.max(1).to_string()));
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_id_sources() {
        assert_eq!(trace_id(Some("abc-123"), None), "abc-123");
        assert_eq!(
            trace_id(
                None,
                Some("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01")
            ),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        let bad = "x".repeat(200);
        let generated = trace_id(Some(&bad), Some("garbage"));
        assert_eq!(generated.len(), 32);
        assert_ne!(trace_id(None, None), trace_id(None, None));
    }
}
