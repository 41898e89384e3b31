//! Target health: active probe results per provider plus passive outlier
//! detection per target (consecutive failures → ejection with a growing
//! penalty → single-request probation), and 429 ejections for `Retry-After`.
//!
//! All timing uses `tokio::time::Instant`, so the state machine is tested
//! with paused time.

use dashmap::DashMap;
use parking_lot::Mutex;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Passive outlier-detection settings.
#[derive(Debug, Clone)]
pub struct OutlierSettings {
    /// Consecutive failures that eject a target.
    pub consecutive_failures: u32,
    /// First ejection; doubles with each re-ejection.
    pub base_ejection: Duration,
    pub max_ejection: Duration,
    /// Ejection for a 429 without `Retry-After`.
    pub default_rate_limit_ejection: Duration,
    /// Consecutive failed probes that mark a provider down.
    pub probe_failures: u32,
}

impl Default for OutlierSettings {
    fn default() -> Self {
        Self {
            consecutive_failures: 3,
            base_ejection: Duration::from_secs(2),
            max_ejection: Duration::from_secs(60),
            default_rate_limit_ejection: Duration::from_secs(30),
            probe_failures: 2,
        }
    }
}

/// Why a target was ejected (metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EjectReason {
    ConsecutiveFailures,
    RateLimited,
    ProbationFailed,
}

impl EjectReason {
    pub fn label(self) -> &'static str {
        match self {
            Self::ConsecutiveFailures => "consecutive_failures",
            Self::RateLimited => "rate_limited",
            Self::ProbationFailed => "probation_failed",
        }
    }
}

/// Whether a target may take a request now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    Healthy,
    /// Ejection expired: one request may test it.
    Probation,
    Ejected,
    /// Active probes say its provider is down.
    ProbeDown,
}

#[derive(Debug, Default)]
struct TargetState {
    consecutive_failures: u32,
    ejected_until: Option<Instant>,
    /// Number of ejections since the target last proved healthy.
    ejections: u32,
    probation_in_flight: bool,
    last_reason: Option<EjectReason>,
    ewma_ttfb_ms: Option<f64>,
    successes: u64,
    failures: u64,
}

#[derive(Debug, Default)]
struct ProbeState {
    consecutive_failures: u32,
    down: bool,
    last_error: Option<String>,
}

/// Live health of every target and provider on this edge.
#[derive(Debug, Default)]
pub struct HealthRegistry {
    settings: OutlierSettings,
    targets: DashMap<String, Arc<Mutex<TargetState>>>,
    providers: DashMap<String, Arc<Mutex<ProbeState>>>,
}

/// A serialisable view for the admin endpoint.
#[derive(Debug, Serialize)]
pub struct TargetView {
    pub target: String,
    pub state: &'static str,
    pub consecutive_failures: u32,
    pub ejected_for_ms: Option<u64>,
    pub ejections: u32,
    pub last_reason: Option<EjectReason>,
    pub ewma_ttfb_ms: Option<f64>,
    pub successes: u64,
    pub failures: u64,
}

/// What happened to an attempt, from the health point of view.
#[derive(Debug, Clone, Copy)]
pub enum Outcome {
    Success { ttfb: Duration },
    Failure,
    RateLimited { retry_after: Option<Duration> },
}

impl HealthRegistry {
    pub fn new(settings: OutlierSettings) -> Self {
        Self {
            settings,
            targets: DashMap::new(),
            providers: DashMap::new(),
        }
    }

    fn target(&self, id: &str) -> Arc<Mutex<TargetState>> {
        if let Some(t) = self.targets.get(id) {
            return t.clone();
        }
        self.targets.entry(id.to_string()).or_default().clone()
    }

    fn provider_down(&self, provider: &str) -> bool {
        self.providers.get(provider).is_some_and(|p| p.lock().down)
    }

    /// Current availability of a target of `provider`.
    pub fn availability(&self, provider: &str, target: &str, now: Instant) -> Availability {
        if self.provider_down(provider) {
            return Availability::ProbeDown;
        }
        let Some(t) = self.targets.get(target).map(|t| t.clone()) else {
            return Availability::Healthy;
        };
        let t = t.lock();
        match t.ejected_until {
            None => Availability::Healthy,
            Some(until) if now < until => Availability::Ejected,
            Some(_) if t.probation_in_flight => Availability::Ejected,
            Some(_) => Availability::Probation,
        }
    }

    /// Claims the single probation request of a target whose ejection has
    /// expired. Returns false if another request already holds it.
    pub fn try_start_probation(&self, target: &str, now: Instant) -> bool {
        let t = self.target(target);
        let mut t = t.lock();
        match t.ejected_until {
            Some(until) if now >= until && !t.probation_in_flight => {
                t.probation_in_flight = true;
                true
            }
            None => true,
            _ => false,
        }
    }

    /// Records the outcome of an attempt. Returns the ejection it caused.
    pub fn record(
        &self,
        target: &str,
        outcome: Outcome,
        now: Instant,
    ) -> Option<(EjectReason, Duration)> {
        let t = self.target(target);
        let mut t = t.lock();
        let on_probation = t.probation_in_flight;
        t.probation_in_flight = false;
        match outcome {
            Outcome::Success { ttfb } => {
                t.successes += 1;
                t.consecutive_failures = 0;
                t.ejected_until = None;
                t.ejections = 0;
                let ms = ttfb.as_secs_f64() * 1000.0;
                t.ewma_ttfb_ms = Some(match t.ewma_ttfb_ms {
                    Some(prev) => prev * 0.8 + ms * 0.2,
                    None => ms,
                });
                None
            }
            Outcome::RateLimited { retry_after } => {
                t.failures += 1;
                let d = retry_after.unwrap_or(self.settings.default_rate_limit_ejection);
                t.ejected_until = Some(now + d);
                t.last_reason = Some(EjectReason::RateLimited);
                Some((EjectReason::RateLimited, d))
            }
            Outcome::Failure => {
                t.failures += 1;
                t.consecutive_failures += 1;
                let reason = if on_probation {
                    EjectReason::ProbationFailed
                } else if t.consecutive_failures >= self.settings.consecutive_failures
                    && t.ejected_until.is_none_or(|u| now >= u)
                {
                    EjectReason::ConsecutiveFailures
                } else {
                    return None;
                };
                let factor = 1u32 << t.ejections.min(16);
                let d = self
                    .settings
                    .base_ejection
                    .saturating_mul(factor)
                    .min(self.settings.max_ejection);
                t.ejections += 1;
                t.ejected_until = Some(now + d);
                t.last_reason = Some(reason);
                Some((reason, d))
            }
        }
    }

    /// Releases a probation slot without a verdict (e.g. client went away).
    pub fn abandon_probation(&self, target: &str) {
        if let Some(t) = self.targets.get(target) {
            t.lock().probation_in_flight = false;
        }
    }

    /// Records an active probe result for a provider. Returns the new
    /// "down" state when it changed.
    pub fn record_probe(&self, provider: &str, ok: bool, error: Option<String>) -> Option<bool> {
        let p = self
            .providers
            .entry(provider.to_string())
            .or_default()
            .clone();
        let mut p = p.lock();
        let was = p.down;
        if ok {
            p.consecutive_failures = 0;
            p.down = false;
            p.last_error = None;
        } else {
            p.consecutive_failures += 1;
            p.last_error = error;
            if p.consecutive_failures >= self.settings.probe_failures {
                p.down = true;
            }
        }
        (was != p.down).then_some(p.down)
    }

    /// Smoothed time to first byte, for latency-aware balancing.
    pub fn ewma_ttfb_ms(&self, target: &str) -> Option<f64> {
        self.targets.get(target).and_then(|t| t.lock().ewma_ttfb_ms)
    }

    /// Failure share of a target's recorded attempts (0 when unknown).
    pub fn error_ratio(&self, target: &str) -> f64 {
        self.targets.get(target).map_or(0.0, |t| {
            let t = t.lock();
            let total = t.successes + t.failures;
            if total == 0 {
                0.0
            } else {
                t.failures as f64 / total as f64
            }
        })
    }

    /// Snapshot for `/admin/health`.
    pub fn view(&self, ids: &[(String, String)], now: Instant) -> Vec<TargetView> {
        ids.iter()
            .map(|(provider, id)| {
                let state = match self.availability(provider, id, now) {
                    Availability::Healthy => "healthy",
                    Availability::Probation => "probation",
                    Availability::Ejected => "ejected",
                    Availability::ProbeDown => "probe_down",
                };
                let t = self.target(id);
                let t = t.lock();
                TargetView {
                    target: id.clone(),
                    state,
                    consecutive_failures: t.consecutive_failures,
                    ejected_for_ms: t
                        .ejected_until
                        .filter(|u| *u > now)
                        .map(|u| (u - now).as_millis() as u64),
                    ejections: t.ejections,
                    last_reason: t.last_reason,
                    ewma_ttfb_ms: t.ewma_ttfb_ms,
                    successes: t.successes,
                    failures: t.failures,
                }
            })
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn reg() -> HealthRegistry {
        HealthRegistry::new(OutlierSettings::default())
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_failures_eject_with_growing_penalty_and_probation() {
        let h = reg();
        let now = Instant::now();
        assert_eq!(h.record("t", Outcome::Failure, now), None);
        assert_eq!(h.record("t", Outcome::Failure, now), None);
        assert_eq!(
            h.record("t", Outcome::Failure, now),
            Some((EjectReason::ConsecutiveFailures, Duration::from_secs(2)))
        );
        assert_eq!(
            h.availability("p", "t", Instant::now()),
            Availability::Ejected
        );
        tokio::time::advance(Duration::from_millis(1999)).await;
        assert_eq!(
            h.availability("p", "t", Instant::now()),
            Availability::Ejected
        );
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(
            h.availability("p", "t", Instant::now()),
            Availability::Probation
        );
        // Exactly one request gets the probation slot.
        assert!(h.try_start_probation("t", Instant::now()));
        assert!(!h.try_start_probation("t", Instant::now()));
        assert_eq!(
            h.availability("p", "t", Instant::now()),
            Availability::Ejected
        );
        // Probation fails: ejected again for twice as long.
        assert_eq!(
            h.record("t", Outcome::Failure, Instant::now()),
            Some((EjectReason::ProbationFailed, Duration::from_secs(4)))
        );
        tokio::time::advance(Duration::from_secs(4)).await;
        assert!(h.try_start_probation("t", Instant::now()));
        h.record(
            "t",
            Outcome::Success {
                ttfb: Duration::from_millis(10),
            },
            Instant::now(),
        );
        assert_eq!(
            h.availability("p", "t", Instant::now()),
            Availability::Healthy
        );
        // Penalty reset after proving healthy.
        for _ in 0..2 {
            h.record("t", Outcome::Failure, Instant::now());
        }
        assert_eq!(
            h.record("t", Outcome::Failure, Instant::now()),
            Some((EjectReason::ConsecutiveFailures, Duration::from_secs(2)))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limit_ejects_for_retry_after_or_default() {
        let h = reg();
        let r = h.record(
            "t",
            Outcome::RateLimited {
                retry_after: Some(Duration::from_secs(7)),
            },
            Instant::now(),
        );
        assert_eq!(r, Some((EjectReason::RateLimited, Duration::from_secs(7))));
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(
            h.availability("p", "t", Instant::now()),
            Availability::Ejected
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            h.availability("p", "t", Instant::now()),
            Availability::Probation
        );
        let r = h.record(
            "u",
            Outcome::RateLimited { retry_after: None },
            Instant::now(),
        );
        assert_eq!(r, Some((EjectReason::RateLimited, Duration::from_secs(30))));
    }

    #[test]
    fn probes_mark_provider_down_after_threshold() {
        let h = reg();
        let now = Instant::now();
        assert_eq!(h.record_probe("p", false, None), None);
        assert_eq!(h.availability("p", "t", now), Availability::Healthy);
        assert_eq!(
            h.record_probe("p", false, Some("refused".into())),
            Some(true)
        );
        assert_eq!(h.availability("p", "t", now), Availability::ProbeDown);
        assert_eq!(h.record_probe("p", true, None), Some(false));
        assert_eq!(h.availability("p", "t", now), Availability::Healthy);
    }

    #[test]
    fn ewma_tracks_ttfb() {
        let h = reg();
        let now = Instant::now();
        h.record(
            "t",
            Outcome::Success {
                ttfb: Duration::from_millis(100),
            },
            now,
        );
        h.record(
            "t",
            Outcome::Success {
                ttfb: Duration::from_millis(200),
            },
            now,
        );
        let v = h.ewma_ttfb_ms("t").unwrap();
        assert!((v - 120.0).abs() < 1e-6, "{v}");
    }
}
