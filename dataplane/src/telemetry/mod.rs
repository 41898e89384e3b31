//! Observability: Prometheus metrics ([`metrics`]) and the structured
//! per-call log ([`log`]). Metric names are documented in `docs/metrics.md`.

pub mod log;
pub mod metrics;
