//! The attempt loop. Everything here happens before the first byte goes to
//! the client, which is what makes retries and fallback safe:
//!
//! 1. Order the route's targets ([`super::regions::plan`]).
//! 2. For each target: build the provider request (a target whose API cannot
//!    express the request is skipped), then try it up to `1 + max_retries`
//!    times with exponential backoff and full jitter, each retry paid for
//!    from the retry budget.
//! 3. Connect errors, I/O errors, 5xx, 529 and malformed answers retry the
//!    same target; timeouts, 401/403 and 429 move on to the next target at
//!    once (a 429 also ejects the target for its `Retry-After`); 400, 404,
//!    413 and 422 are the request's fault and go straight back to the client.
//! 4. A stream counts as started only when its first content token arrived;
//!    a stream that fails before that fails over like a non-streamed call.

use super::health::Outcome;
use super::regions::{plan, Candidate};
use super::retry::backoff;
use super::Router;
use crate::config::{Route, Target};
use crate::error::{ApiError, ErrorKind};
use crate::formats::{ChatRequest, ChatResponse, FormatError, StreamDecoder, StreamEvent};
use crate::providers::{adapter, AttemptLimits};
use crate::telemetry::metrics;
use crate::upstream::{UpstreamClient, UpstreamError, UpstreamResponse};
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// One upstream attempt, as shown in the call log.
#[derive(Debug, Clone, Serialize)]
pub struct AttemptRecord {
    pub target: String,
    pub provider: String,
    pub tier: usize,
    /// `ok` or an error label (`connect`, `status_5xx`, `first_byte_timeout`, ...).
    pub outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    pub latency_ms: f64,
}

/// A stream whose first content token has arrived (or that completed).
pub struct OpenStream {
    pub response: UpstreamResponse,
    pub decoder: StreamDecoder,
    /// Events decoded before the hand-off, to be sent first.
    pub pending: Vec<StreamEvent>,
    /// The target's in-flight slot, held until the stream ends.
    pub slot: Option<super::queue::Slot>,
}

// Produced once per call and moved once: boxing would only add an allocation.
#[allow(clippy::large_enum_variant)]
pub enum Success {
    Full(ChatResponse),
    Stream(OpenStream),
}

/// What the attempt loop produced.
pub struct Routed {
    pub result: Result<Success, ApiError>,
    /// The target that answered.
    pub target: Option<Arc<Target>>,
    pub attempts: Vec<AttemptRecord>,
    /// Time to the winning response's first byte, from the call's start.
    pub ttfb: Option<Duration>,
}

enum Next {
    RetrySame,
    OtherTarget,
    GiveUp(ApiError),
}

fn decide(e: &UpstreamError) -> Next {
    match e {
        _ if e.is_client_error() => {
            let UpstreamError::Status {
                status, message, ..
            } = e
            else {
                return Next::OtherTarget;
            };
            Next::GiveUp(
                ApiError::new(
                    ErrorKind::InvalidRequest,
                    format!("provider rejected the request: {message}"),
                )
                .with_status(*status)
                .with_code("upstream_rejected"),
            )
        }
        _ if e.is_rate_limit() || e.is_timeout() => Next::OtherTarget,
        UpstreamError::Status {
            status: 401 | 403, ..
        } => Next::OtherTarget,
        UpstreamError::Status { status, .. } if *status < 500 && *status != 429 => {
            Next::OtherTarget
        }
        UpstreamError::Resolve { .. } => Next::OtherTarget,
        _ => Next::RetrySame,
    }
}

/// Pulls a freshly opened stream until its first content token (or its
/// end). Errors here are attempt failures and may be retried.
async fn await_first_content(
    response: UpstreamResponse,
    mut decoder: StreamDecoder,
    idle: Duration,
) -> Result<OpenStream, UpstreamError> {
    let mut response = response;
    let mut pending = Vec::new();
    loop {
        if decoder.saw_content() || decoder.is_complete() {
            return Ok(OpenStream {
                response,
                decoder,
                pending,
                slot: None,
            });
        }
        match response.next_chunk(idle).await? {
            Some(chunk) => {
                let events = decoder
                    .feed(&chunk)
                    .map_err(|e: FormatError| UpstreamError::Malformed(e.message))?;
                pending.extend(events);
            }
            None => return Err(UpstreamError::Io("stream ended before any content".into())),
        }
    }
}

impl Router {
    /// Runs the attempt loop for `req` on `route` until a target answers, the
    /// request is found to be at fault, or every candidate failed. Bounded by
    /// `deadline` (the caller also enforces it).
    pub async fn execute(
        &self,
        client: &UpstreamClient,
        route: &Route,
        req: &ChatRequest,
        started: Instant,
        deadline: Instant,
    ) -> Routed {
        let mut routed = Routed {
            result: Err(ApiError::internal("no attempt made")),
            target: None,
            attempts: Vec::new(),
            ttfb: None,
        };
        let _in_flight = self.budget.start_request();
        let plan = {
            let mut rng = rand::rng();
            let mut unit = || rand::Rng::random::<f64>(&mut rng);
            plan(
                route,
                &self.health,
                &self.home_region,
                Instant::now(),
                &mut unit,
            )
        };
        if plan.candidates.is_empty() {
            routed.result = Err(ApiError::new(
                ErrorKind::Unavailable,
                format!("no healthy target for model `{}`", route.name),
            )
            .with_code("no_healthy_target")
            .with_retry_after(Duration::from_secs(1)));
            return routed;
        }
        let mut last_err: Option<UpstreamError> = None;
        let mut untranslatable: Option<FormatError> = None;
        let mut rate_limited_for: Option<Duration> = None;
        let mut overloaded = 0usize;
        'targets: for Candidate {
            target,
            tier,
            probation,
        } in plan.candidates
        {
            if probation && !self.health.try_start_probation(&target.id, Instant::now()) {
                continue;
            }
            // Frees the probation slot if this call is abandoned (client gone,
            // deadline) before the attempt's outcome is recorded.
            let _probation = probation.then(|| ProbationGuard {
                health: &self.health,
                target: &target.id,
            });
            let provider = &target.provider;
            let adapter = adapter(provider.kind);
            let request =
                match adapter.build_request(provider, req, &target.model, route.default_max_tokens)
                {
                    Ok(r) => r,
                    Err(e) => {
                        if probation {
                            self.health.abandon_probation(&target.id);
                        }
                        untranslatable.get_or_insert(e);
                        continue;
                    }
                };
            if tier > 0 || !routed.attempts.is_empty() {
                metrics::failover(
                    &route.name,
                    &target.id,
                    last_err.as_ref().map_or("untranslatable", |e| e.label()),
                );
            }
            let mut retry = 0u32;
            loop {
                let now = Instant::now();
                if now >= deadline {
                    break 'targets;
                }
                let remaining = deadline - now;
                let limits = AttemptLimits {
                    connect: route.timeouts.connect.min(remaining),
                    first_byte: route.timeouts.first_byte.min(remaining),
                    idle: route.timeouts.idle.min(remaining),
                };
                let slot = match self.queues.acquire(&target.id, provider.queue).await {
                    Ok(slot) => slot,
                    Err(full) => {
                        // Spike protection: this target is saturated; try
                        // the next one rather than queue without bound.
                        overloaded += 1;
                        metrics::attempt(&target.id, full.label());
                        routed.attempts.push(AttemptRecord {
                            target: target.id.clone(),
                            provider: provider.name.clone(),
                            tier,
                            outcome: full.label(),
                            status: None,
                            latency_ms: 0.0,
                        });
                        continue 'targets;
                    }
                };
                let attempt_start = Instant::now();
                let result: Result<Success, UpstreamError> = if req.stream {
                    match adapter
                        .infer_stream(client, provider, &request, limits)
                        .await
                    {
                        Ok((resp, decoder)) => await_first_content(resp, decoder, limits.idle)
                            .await
                            .map(Success::Stream),
                        Err(e) => Err(e),
                    }
                } else {
                    adapter
                        .infer(client, provider, &request, limits)
                        .await
                        .map(Success::Full)
                };
                let elapsed = attempt_start.elapsed();
                match result {
                    Ok(mut success) => {
                        if let Success::Stream(s) = &mut success {
                            s.slot = Some(slot);
                        }
                        let ttfb = match &success {
                            Success::Stream(s) => s.response.header_latency,
                            Success::Full(_) => elapsed,
                        };
                        self.health
                            .record(&target.id, Outcome::Success { ttfb }, Instant::now());
                        metrics::attempt(&target.id, "ok");
                        routed.attempts.push(AttemptRecord {
                            target: target.id.clone(),
                            provider: provider.name.clone(),
                            tier,
                            outcome: "ok",
                            status: Some(200),
                            latency_ms: elapsed.as_secs_f64() * 1000.0,
                        });
                        routed.ttfb = Some(attempt_start.duration_since(started) + ttfb);
                        routed.target = Some(target.clone());
                        routed.result = Ok(success);
                        return routed;
                    }
                    Err(e) => {
                        let outcome = match &e {
                            UpstreamError::Status {
                                status: 429,
                                retry_after,
                                ..
                            } => {
                                let d = retry_after.unwrap_or(Duration::from_secs(30));
                                rate_limited_for = Some(rate_limited_for.map_or(d, |p| p.min(d)));
                                Outcome::RateLimited {
                                    retry_after: *retry_after,
                                }
                            }
                            _ if e.is_client_error() => Outcome::Success { ttfb: elapsed },
                            _ => Outcome::Failure,
                        };
                        if let Some((reason, _)) =
                            self.health.record(&target.id, outcome, Instant::now())
                        {
                            metrics::ejection(&target.id, reason.label());
                        }
                        metrics::attempt(&target.id, e.label());
                        routed.attempts.push(AttemptRecord {
                            target: target.id.clone(),
                            provider: provider.name.clone(),
                            tier,
                            outcome: e.label(),
                            status: match &e {
                                UpstreamError::Status { status, .. } => Some(*status),
                                _ => None,
                            },
                            latency_ms: elapsed.as_secs_f64() * 1000.0,
                        });
                        let next = decide(&e);
                        last_err = Some(e);
                        match next {
                            Next::GiveUp(api) => {
                                routed.target = Some(target.clone());
                                routed.result = Err(api);
                                return routed;
                            }
                            Next::OtherTarget => continue 'targets,
                            Next::RetrySame => {
                                if retry >= route.retry.max_retries {
                                    continue 'targets;
                                }
                                let Some(_slot) = self.budget.try_retry(route.retry.budget_ratio)
                                else {
                                    metrics::retry_budget_exhausted(&route.name);
                                    continue 'targets;
                                };
                                let wait = backoff(
                                    retry,
                                    route.retry.backoff_base,
                                    route.retry.backoff_max,
                                    rand::random::<f64>(),
                                );
                                retry += 1;
                                if Instant::now() + wait >= deadline {
                                    break 'targets;
                                }
                                tokio::time::sleep(wait).await;
                            }
                        }
                    }
                }
            }
        }
        if last_err.is_none() && overloaded > 0 {
            routed.result = Err(ApiError::new(
                ErrorKind::RateLimited,
                format!(
                    "model `{}` is overloaded: every target's queue is full",
                    route.name
                ),
            )
            .with_code("overloaded")
            .with_retry_after(Duration::from_secs(1)));
            return routed;
        }
        routed.result = Err(final_error(
            route,
            last_err,
            untranslatable,
            rate_limited_for,
            Instant::now() >= deadline,
        ));
        routed
    }
}

struct ProbationGuard<'a> {
    health: &'a super::HealthRegistry,
    target: &'a str,
}

impl Drop for ProbationGuard<'_> {
    fn drop(&mut self) {
        // Recording an outcome already cleared the flag; this only matters
        // when the attempt never finished.
        self.health.abandon_probation(self.target);
    }
}

fn final_error(
    route: &Route,
    last: Option<UpstreamError>,
    untranslatable: Option<FormatError>,
    rate_limited_for: Option<Duration>,
    deadline_passed: bool,
) -> ApiError {
    if deadline_passed {
        return ApiError::new(
            ErrorKind::Timeout,
            format!("model `{}` did not answer within the deadline", route.name),
        )
        .with_code("deadline_exceeded");
    }
    match last {
        None => match untranslatable {
            Some(e) => e.into(),
            None => ApiError::new(
                ErrorKind::Unavailable,
                format!("no healthy target for model `{}`", route.name),
            )
            .with_code("no_healthy_target")
            .with_retry_after(Duration::from_secs(1)),
        },
        Some(e) if e.is_rate_limit() => ApiError::new(
            ErrorKind::RateLimited,
            format!(
                "every target of model `{}` is rate limited by its provider",
                route.name
            ),
        )
        .with_code("upstream_rate_limited")
        .with_retry_after(
            rate_limited_for
                .unwrap_or(Duration::from_secs(1))
                .max(Duration::from_secs(1)),
        ),
        Some(e) if e.is_timeout() => ApiError::new(
            ErrorKind::Timeout,
            format!(
                "model `{}`: every attempt timed out (last: {e})",
                route.name
            ),
        )
        .with_code("upstream_timeout"),
        Some(e) => ApiError::new(
            ErrorKind::UpstreamError,
            format!("model `{}`: every attempt failed (last: {e})", route.name),
        )
        .with_code("upstream_failed"),
    }
}
