//! Metric names and the recorder. Every metric the edge emits is defined
//! here so names stay consistent and documented (`docs/metrics.md`).

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const REQUESTS: &str = "switchyard_requests_total";
pub const REQUEST_DURATION: &str = "switchyard_request_duration_seconds";
pub const TTFT: &str = "switchyard_ttft_seconds";
pub const TOKENS: &str = "switchyard_tokens_total";
pub const COST: &str = "switchyard_cost_usd_total";
pub const UPSTREAM_ATTEMPTS: &str = "switchyard_upstream_attempts_total";
pub const FAILOVERS: &str = "switchyard_failovers_total";
pub const EJECTIONS: &str = "switchyard_target_ejections_total";
pub const RETRY_BUDGET_EXHAUSTED: &str = "switchyard_retry_budget_exhausted_total";
pub const PROVIDER_UP: &str = "switchyard_provider_up";
pub const STREAMS_INCOMPLETE: &str = "switchyard_streams_incomplete_total";
pub const REJECTED: &str = "switchyard_rejected_requests_total";
pub const CONFIG_VERSION: &str = "switchyard_config_version";
pub const TARGET_STATE: &str = "switchyard_target_state";
pub const RATE_LIMITED: &str = "switchyard_rate_limited_total";
pub const BUDGET_EXCEEDED: &str = "switchyard_budget_exceeded_total";
pub const BUDGET_SOFT_ALERTS: &str = "switchyard_budget_soft_alerts_total";
pub const BUDGET_DOWNGRADES: &str = "switchyard_budget_downgrades_total";
pub const CONFIG_AGE: &str = "switchyard_config_age_seconds";
pub const CONTROL_PLANE_CONNECTED: &str = "switchyard_control_plane_connected";
pub const CONFIG_APPLIES: &str = "switchyard_config_applies_total";
pub const COST_BY_TEAM: &str = "switchyard_cost_by_team_usd_total";
pub const COST_BY_FEATURE: &str = "switchyard_cost_by_feature_usd_total";
pub const BUDGET_ALLOWANCE: &str = "switchyard_budget_allowance_usd";
pub const BUDGET_COMMITTED: &str = "switchyard_budget_committed_usd";
pub const BUDGET_LEASE_LIVE: &str = "switchyard_budget_lease_live";
pub const BUDGET_GRANT_WAITS: &str = "switchyard_budget_grant_waits_total";
pub const USAGE_PENDING: &str = "switchyard_usage_pending_records";
pub const USAGE_ACKED_SEQ: &str = "switchyard_usage_acked_seq";
pub const USAGE_REPORTS: &str = "switchyard_usage_reports_total";
pub const USAGE_CONNECTED: &str = "switchyard_usage_stream_connected";

/// Installs the global Prometheus recorder and returns its handle. Call
/// `handle.run_upkeep()` periodically (the edge does every 5 s).
pub fn install() -> Result<PrometheusHandle, metrics_exporter_prometheus::BuildError> {
    let latency = [
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
    ];
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(REQUEST_DURATION.into()), &latency)?
        .set_buckets_for_metric(Matcher::Full(TTFT.into()), &latency)?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder)
        .map_err(metrics_exporter_prometheus::BuildError::FailedToSetGlobalRecorder)?;
    describe();
    crate::cache::describe_metrics();
    Ok(handle)
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        REQUESTS,
        "Client requests by api, route, provider, status and error type."
    );
    describe_histogram!(
        REQUEST_DURATION,
        Unit::Seconds,
        "Total request latency as seen by the edge."
    );
    describe_histogram!(
        TTFT,
        Unit::Seconds,
        "Time to first token (streams) or first byte (non-streamed)."
    );
    describe_counter!(
        TOKENS,
        "Tokens by route, model, provider and kind (input, output, cached)."
    );
    describe_counter!(
        COST,
        "Cost in USD by route, model and provider (from the price table)."
    );
    describe_counter!(
        UPSTREAM_ATTEMPTS,
        "Upstream attempts by target and outcome (ok or error label)."
    );
    describe_counter!(
        FAILOVERS,
        "Moves to another target by route, target moved to, and reason."
    );
    describe_counter!(EJECTIONS, "Target ejections by target and reason.");
    describe_counter!(
        RETRY_BUDGET_EXHAUSTED,
        "Retries skipped because the retry budget was spent."
    );
    describe_gauge!(
        PROVIDER_UP,
        "1 when a provider's active probes pass, 0 when it is marked down."
    );
    describe_counter!(
        STREAMS_INCOMPLETE,
        "Streams that ended with an error event after content was sent."
    );
    describe_counter!(REJECTED, "Requests rejected before routing, by reason.");
    describe_gauge!(CONFIG_VERSION, "Config version this edge serves.");
    describe_gauge!(
        CONFIG_AGE,
        Unit::Seconds,
        "Seconds since the served config version was committed (control plane) or loaded (file)."
    );
    describe_gauge!(
        CONTROL_PLANE_CONNECTED,
        "1 while a Watch stream to the control plane is open, else 0."
    );
    describe_counter!(
        CONFIG_APPLIES,
        "Config versions from the control plane by result (accepted, rejected)."
    );
    describe_gauge!(
        COST_BY_TEAM,
        "USD by team (monotonic); teams not named in the config's keys or budgets are `other`, none is `none`."
    );
    describe_gauge!(
        COST_BY_FEATURE,
        "USD by feature (monotonic); features not named in the config's keys or budgets are `other`, none is `none`."
    );
    describe_gauge!(
        BUDGET_ALLOWANCE,
        "This edge's granted share of a global budget's current window (USD, absolute)."
    );
    describe_gauge!(
        BUDGET_COMMITTED,
        "Spend plus worst-case reservations of this edge in a global budget's current window (USD)."
    );
    describe_gauge!(
        BUDGET_LEASE_LIVE,
        "1 while this edge's lease on a global budget share is live, else 0."
    );
    describe_counter!(
        BUDGET_GRANT_WAITS,
        "Calls that waited for a global budget grant."
    );
    describe_gauge!(
        USAGE_PENDING,
        "Usage records not yet acknowledged by the control plane (spooled or queued)."
    );
    describe_gauge!(
        USAGE_ACKED_SEQ,
        "Highest usage record seq the control plane acknowledged."
    );
    describe_counter!(
        USAGE_REPORTS,
        "Usage reports sent to the control plane, by result (acked, failed)."
    );
    describe_gauge!(
        USAGE_CONNECTED,
        "1 while the usage stream to the control plane is open, else 0."
    );
}

/// Everything recorded once per finished call.
pub struct CallMetrics<'a> {
    pub api: &'static str,
    pub route: &'a str,
    pub model: &'a str,
    pub provider: &'a str,
    pub status: u16,
    pub error_type: &'a str,
    pub duration_s: f64,
    pub ttft_s: Option<f64>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_tokens: u64,
    pub cost_usd: f64,
}

pub fn call(m: &CallMetrics<'_>) {
    let status = m.status.to_string();
    counter!(REQUESTS, "api" => m.api, "route" => m.route.to_string(), "provider" => m.provider.to_string(), "status" => status, "error_type" => m.error_type.to_string()).increment(1);
    histogram!(REQUEST_DURATION, "route" => m.route.to_string(), "provider" => m.provider.to_string()).record(m.duration_s);
    if let Some(t) = m.ttft_s {
        histogram!(TTFT, "route" => m.route.to_string(), "provider" => m.provider.to_string())
            .record(t);
    }
    for (kind, n) in [
        ("input", m.input_tokens),
        ("output", m.output_tokens),
        ("cached", m.cached_tokens),
    ] {
        if n > 0 {
            counter!(TOKENS, "route" => m.route.to_string(), "model" => m.model.to_string(), "provider" => m.provider.to_string(), "kind" => kind).increment(n);
        }
    }
    if m.cost_usd > 0.0 {
        // Prometheus counters are floats; metrics' counter is u64, so cost is
        // accumulated through an absolute f64 gauge kept monotonic here.
        gauge!(COST, "route" => m.route.to_string(), "model" => m.model.to_string(), "provider" => m.provider.to_string()).increment(m.cost_usd);
    }
}

pub fn attempt(target: &str, outcome: &'static str) {
    counter!(UPSTREAM_ATTEMPTS, "target" => target.to_string(), "outcome" => outcome).increment(1);
}

pub fn failover(route: &str, to_target: &str, reason: &'static str) {
    counter!(FAILOVERS, "route" => route.to_string(), "to" => to_target.to_string(), "reason" => reason).increment(1);
}

pub fn ejection(target: &str, reason: &'static str) {
    counter!(EJECTIONS, "target" => target.to_string(), "reason" => reason).increment(1);
}

pub fn retry_budget_exhausted(route: &str) {
    counter!(RETRY_BUDGET_EXHAUSTED, "route" => route.to_string()).increment(1);
}

pub fn provider_probe_state(provider: &str, down: bool) {
    gauge!(PROVIDER_UP, "provider" => provider.to_string()).set(if down { 0.0 } else { 1.0 });
}

pub fn stream_incomplete(route: &str, reason: &'static str) {
    counter!(STREAMS_INCOMPLETE, "route" => route.to_string(), "reason" => reason).increment(1);
}

pub fn rejected(reason: &'static str) {
    counter!(REJECTED, "reason" => reason).increment(1);
}

pub fn config_version(version: u64) {
    gauge!(CONFIG_VERSION).set(version as f64);
}

pub fn config_age(seconds: f64) {
    gauge!(CONFIG_AGE).set(seconds.max(0.0));
}

pub fn control_plane_connected(connected: bool) {
    gauge!(CONTROL_PLANE_CONNECTED).set(if connected { 1.0 } else { 0.0 });
}

/// `result` is `accepted` or `rejected`.
pub fn config_apply(result: &'static str) {
    counter!(CONFIG_APPLIES, "result" => result).increment(1);
}

/// Registers the control-plane series at zero so they are scraped before
/// the first event.
pub fn control_plane_init() {
    control_plane_connected(false);
    for result in ["accepted", "rejected"] {
        counter!(CONFIG_APPLIES, "result" => result).increment(0);
    }
}

pub fn rate_limited(code: &'static str) {
    counter!(RATE_LIMITED, "limit" => code).increment(1);
}

pub fn budget_exceeded(budget: &str) {
    counter!(BUDGET_EXCEEDED, "budget" => budget.to_string()).increment(1);
}

pub fn budget_soft_alert(budget: &str) {
    counter!(BUDGET_SOFT_ALERTS, "budget" => budget.to_string()).increment(1);
}

pub fn budget_downgrade(budget: &str, to: &str) {
    counter!(BUDGET_DOWNGRADES, "budget" => budget.to_string(), "to" => to.to_string())
        .increment(1);
}

/// Circuit state of a target: 0 healthy, 1 probation, 2 ejected, 3 its
/// provider fails active probes. Refreshed on every scrape.
pub fn target_state(target: &str, state: &str) {
    let v = match state {
        "healthy" => 0.0,
        "probation" => 1.0,
        "ejected" => 2.0,
        _ => 3.0,
    };
    gauge!(TARGET_STATE, "target" => target.to_string()).set(v);
}

/// Cost attributed to a team and a feature (labels already bounded by
/// `LimitsConfig::team_label` / `feature_label`).
pub fn attributed_cost(team: &str, feature: &str, cost_usd: f64) {
    gauge!(COST_BY_TEAM, "team" => team.to_string()).increment(cost_usd);
    gauge!(COST_BY_FEATURE, "feature" => feature.to_string()).increment(cost_usd);
}

/// This edge's share of a global budget's current window.
pub fn budget_share(budget: &str, allowance: f64, committed: f64, lease_live: bool) {
    gauge!(BUDGET_ALLOWANCE, "budget" => budget.to_string()).set(allowance);
    gauge!(BUDGET_COMMITTED, "budget" => budget.to_string()).set(committed);
    gauge!(BUDGET_LEASE_LIVE, "budget" => budget.to_string()).set(if lease_live {
        1.0
    } else {
        0.0
    });
}

pub fn budget_grant_wait() {
    counter!(BUDGET_GRANT_WAITS).increment(1);
}

/// The usage spool and stream.
pub fn usage_spool(pending: u64, acked_seq: u64) {
    gauge!(USAGE_PENDING).set(pending as f64);
    gauge!(USAGE_ACKED_SEQ).set(acked_seq as f64);
}

/// `result` is `acked` or `failed`.
pub fn usage_report(result: &'static str) {
    counter!(USAGE_REPORTS, "result" => result).increment(1);
}

/// Registers a `usage_reports_total` series at zero.
pub fn usage_report_init(result: &'static str) {
    counter!(USAGE_REPORTS, "result" => result).increment(0);
}

pub fn usage_connected(up: bool) {
    gauge!(USAGE_CONNECTED).set(if up { 1.0 } else { 0.0 });
}
