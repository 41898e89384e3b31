//! Candidate ordering: tiers in order; within a tier, available targets in
//! the home region first (weighted random or least-latency), then other
//! regions healthiest first. Ejected targets and targets of providers that
//! fail their probes are left out.

use super::health::{Availability, HealthRegistry};
use crate::config::{LoadBalancing, Route, Target};
use std::sync::Arc;
use tokio::time::Instant;

/// A target chosen for (possibly) an attempt.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub target: Arc<Target>,
    pub tier: usize,
    /// Ejection expired: the attempt must claim the probation slot first.
    pub probation: bool,
}

/// Result of ordering a route's targets.
#[derive(Debug, Default)]
pub struct Plan {
    pub candidates: Vec<Candidate>,
    /// Targets left out because they are ejected or probe-down.
    pub skipped: usize,
}

fn is_home(target: &Target, home: &str) -> bool {
    target.provider.region.is_empty() || home.is_empty() || target.provider.region == home
}

/// Weighted random order (Efraimidis–Spirakis): key = u^(1/w), descending.
fn weighted_order(targets: &mut [(Candidate, f64)], rand_unit: &mut impl FnMut() -> f64) {
    for (c, key) in targets.iter_mut() {
        let w = f64::from(c.target.weight.max(1));
        *key = rand_unit().max(f64::MIN_POSITIVE).powf(1.0 / w);
    }
    targets.sort_by(|a, b| b.1.total_cmp(&a.1));
}

/// Orders `route`'s targets for one request.
pub fn plan(
    route: &Route,
    health: &HealthRegistry,
    home_region: &str,
    now: Instant,
    rand_unit: &mut impl FnMut() -> f64,
) -> Plan {
    let mut out = Plan::default();
    for (tier_idx, tier) in route.tiers.iter().enumerate() {
        let mut home = Vec::new();
        let mut away = Vec::new();
        for t in &tier.targets {
            let probation = match health.availability(&t.provider.name, &t.id, now) {
                Availability::Healthy => false,
                Availability::Probation => true,
                Availability::Ejected | Availability::ProbeDown => {
                    out.skipped += 1;
                    continue;
                }
            };
            let c = Candidate {
                target: t.clone(),
                tier: tier_idx,
                probation,
            };
            if is_home(t, home_region) {
                home.push((c, 0.0));
            } else {
                away.push((c, 0.0));
            }
        }
        weighted_order(&mut home, rand_unit);
        if route.load_balancing == LoadBalancing::LeastLatency && home.len() >= 2 {
            // Power of two choices: of the two first weighted picks, the one
            // with the lower smoothed time to first byte goes first.
            let lat = |c: &Candidate| health.ewma_ttfb_ms(&c.target.id).unwrap_or(0.0);
            if lat(&home[1].0) < lat(&home[0].0) {
                home.swap(0, 1);
            }
        }
        weighted_order(&mut away, rand_unit);
        // Other regions: healthiest (lowest error ratio) first.
        away.sort_by(|a, b| {
            health
                .error_ratio(&a.0.target.id)
                .total_cmp(&health.error_ratio(&b.0.target.id))
        });
        out.candidates.extend(home.into_iter().map(|(c, _)| c));
        out.candidates.extend(away.into_iter().map(|(c, _)| c));
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::EdgeConfig;
    use crate::routing::health::{Outcome, OutlierSettings};
    use switchyard_proto::config::from_yaml_str;

    fn route(yaml: &str) -> Arc<Route> {
        let doc = from_yaml_str(yaml, |_| None).unwrap();
        let cfg = EdgeConfig::compile(doc, 0, &|_| None).unwrap();
        cfg.routes["m"].clone()
    }

    const TWO_REGIONS: &str = "providers:\n  a: {kind: openai, base_url: 'http://127.0.0.1:1/v1', region: east}\n  b: {kind: openai, base_url: 'http://127.0.0.1:2/v1', region: west}\n  c: {kind: openai, base_url: 'http://127.0.0.1:3/v1', region: west}\nroutes:\n  m:\n    tiers:\n      - targets: [{provider: b, model: x}, {provider: a, model: x}]\n      - targets: [{provider: c, model: y}]\n";

    #[test]
    fn home_region_first_then_other_regions_then_next_tier() {
        let r = route(TWO_REGIONS);
        let h = HealthRegistry::new(OutlierSettings::default());
        let mut rnd = || 0.5;
        let p = plan(&r, &h, "east", Instant::now(), &mut rnd);
        let ids: Vec<_> = p.candidates.iter().map(|c| c.target.id.as_str()).collect();
        assert_eq!(ids, ["a/x", "b/x", "c/y"]);
        let p = plan(&r, &h, "west", Instant::now(), &mut rnd);
        let ids: Vec<_> = p.candidates.iter().map(|c| c.target.id.as_str()).collect();
        assert_eq!(ids, ["b/x", "a/x", "c/y"]);
    }

    #[test]
    fn ejected_and_probe_down_targets_are_skipped() {
        let r = route(TWO_REGIONS);
        let h = HealthRegistry::new(OutlierSettings::default());
        let now = Instant::now();
        h.record("a/x", Outcome::RateLimited { retry_after: None }, now);
        h.record_probe("c", false, None);
        h.record_probe("c", false, None);
        let p = plan(&r, &h, "east", now, &mut || 0.5);
        let ids: Vec<_> = p.candidates.iter().map(|c| c.target.id.as_str()).collect();
        assert_eq!(ids, ["b/x"]);
        assert_eq!(p.skipped, 2);
    }

    #[test]
    fn weights_shape_the_distribution() {
        let r = route("providers:\n  a: {kind: openai, base_url: 'http://h/v1'}\n  b: {kind: openai, base_url: 'http://h/v1'}\nroutes:\n  m:\n    targets: [{provider: a, model: x, weight: 3}, {provider: b, model: x, weight: 1}]\n");
        let h = HealthRegistry::new(OutlierSettings::default());
        // Deterministic LCG for reproducibility.
        let mut s: u64 = 42;
        let mut rnd = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 11) as f64 / (1u64 << 53) as f64
        };
        let mut first_a = 0;
        for _ in 0..4000 {
            let p = plan(&r, &h, "", Instant::now(), &mut rnd);
            if p.candidates[0].target.id == "a/x" {
                first_a += 1;
            }
        }
        // Expect 75 % ± 3 %.
        assert!((2880..=3120).contains(&first_a), "{first_a}");
    }
}
