//! Global budgets: the allocation math (see `docs/budgets.md`).
//!
//! Every budget with a hard limit (and every tier's per-key daily cap) is
//! shared by all edges. Per budget window the control plane keeps one
//! [`BudgetAllocation`]: per edge process its absolute `allowance` (what it
//! may commit — spend plus worst-case reservations), its last reported
//! `committed`, and `carried` (what earlier processes of the same edge may
//! have spent). The invariant, kept with compare-and-swap in the store:
//!
//! ```text
//! Σ_edges  carried_e + max(committed_e, allowance_e)  ≤  hard limit
//! ```
//!
//! An edge never commits more than the allowance it last applied, and it
//! only ever applies an allowance the control plane has already accounted.
//! Allowances only shrink when the edge itself lowered its own first
//! (`release`) or when the edge process changed (`carried` takes the old
//! process's worst case). So the sum of what all edges really commit stays
//! under the hard limit whatever the message delays, clock skew or outages:
//! no step depends on a lease having expired on the control plane's clock.
//!
//! Leases (`ttl`) decide (a) which edges are live, which sizes the slices,
//! and (b) on the edge, when a `fail_open` budget may fall back to its local
//! hard limit while the control plane is unreachable.

use std::time::Duration;

use switchyard_proto::config::Config;
use switchyard_proto::control::{BudgetAllocation, BudgetGrant, BudgetState, EdgeAllocation};

/// Tunables of the allocation.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Lease length given with every grant (`--budget-lease-ttl`).
    pub lease_ttl: Duration,
    /// Smallest slice as a fraction of the hard limit (unless less is left).
    pub min_slice_fraction: f64,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            lease_ttl: Duration::from_secs(10),
            min_slice_fraction: 0.01,
        }
    }
}

/// A budget the control plane shares between edges.
#[derive(Debug, Clone, PartialEq)]
pub struct GlobalRule {
    /// "day" or "month".
    pub window: &'static str,
    pub hard_usd: f64,
}

/// The global rule named `name` in `cfg`: a configured budget with a hard
/// limit, or a tier's daily cost cap of one key
/// (`tier:<tier>:key:<key id>:daily`, the name the edge gives it).
pub fn rule(cfg: &Config, name: &str) -> Option<GlobalRule> {
    if let Some(b) = cfg.budgets.iter().find(|b| b.name == name) {
        let window = match b.window.as_str() {
            "month" => "month",
            _ => "day",
        };
        return (b.hard_limit_usd > 0.0 && b.hard_limit_usd.is_finite()).then_some(GlobalRule {
            window,
            hard_usd: b.hard_limit_usd,
        });
    }
    let rest = name.strip_prefix("tier:")?.strip_suffix(":daily")?;
    cfg.tiers.iter().find_map(|(tier, t)| {
        let id = rest.strip_prefix(tier.as_str())?.strip_prefix(":key:")?;
        (t.daily_cost_usd > 0.0
            && t.daily_cost_usd.is_finite()
            && cfg.keys.iter().any(|k| k.id == id))
        .then_some(GlobalRule {
            window: "day",
            hard_usd: t.daily_cost_usd,
        })
    })
}

const DAY_MS: i64 = 86_400_000;
/// Earlier processes remembered per edge.
const MAX_RETIRED: usize = 16;

/// Days since 1970-01-01 → (year, month, day) (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Whether `start` is the start of a `window` ("day": UTC midnight;
/// "month": UTC midnight of the 1st) no further than ~two months from `now`.
pub fn window_ok(window: &str, start: i64, now: i64) -> bool {
    if start <= 0 || start % DAY_MS != 0 || (start - now).abs() > 62 * DAY_MS {
        return false;
    }
    match window {
        "day" => true,
        "month" => civil_from_days(start / DAY_MS).2 == 1,
        _ => false,
    }
}

/// What one edge process's allocation counts against the hard limit.
pub fn accounted(e: &EdgeAllocation) -> f64 {
    e.carried_usd + e.committed_usd.max(e.allowance_usd)
}

/// Everything counted against the hard limit.
pub fn total(a: &BudgetAllocation) -> f64 {
    a.edges.iter().map(accounted).sum()
}

fn sane(v: f64) -> f64 {
    if v.is_finite() {
        v.max(0.0)
    } else {
        0.0
    }
}

/// Applies one edge's report of one window to `alloc` and answers it.
///
/// 1. A new `instance` (the edge restarted) moves the old process's worst
///    case, `max(committed, allowance)`, into `carried` and starts the new
///    process at allowance 0; a late report of a retired instance is
///    answered with nothing.
/// 2. `committed` is recorded; with `release` the allowance drops to it
///    (the edge already lowered its own).
/// 3. The lease is renewed (not for a release that wants nothing).
/// 4. If the edge wants more: `available = hard − Σ accounted`; the slice is
///    `max(min_slice, available / (2 × live edges))`; the allowance grows to
///    `max(allowance, committed) + min(want, available, slice)`.
#[allow(clippy::too_many_arguments)]
pub fn apply(
    alloc: &mut BudgetAllocation,
    edge_id: &str,
    instance: u64,
    st: &BudgetState,
    rule: &GlobalRule,
    now_ms: i64,
    policy: &Policy,
) -> BudgetGrant {
    let ttl_ms = i64::try_from(policy.lease_ttl.as_millis()).unwrap_or(i64::MAX / 4);
    let hard = rule.hard_usd;
    alloc.budget = st.budget.clone();
    alloc.window = rule.window.to_string();
    alloc.window_start_unix_ms = st.window_start_unix_ms;
    alloc.hard_limit_usd = hard;
    alloc.updated_unix_ms = now_ms;
    let idx = match alloc.edges.iter().position(|e| e.edge_id == edge_id) {
        Some(i) => i,
        None => {
            alloc.edges.push(EdgeAllocation {
                edge_id: edge_id.to_string(),
                instance_id: instance,
                ..Default::default()
            });
            alloc.edges.len() - 1
        }
    };
    let committed = sane(st.committed_usd);
    let want = if st.want_usd.is_nan() {
        0.0
    } else {
        st.want_usd.clamp(0.0, f64::MAX)
    };
    if alloc.edges[idx].retired_instance_ids.contains(&instance) {
        // A late report of a process this edge has already replaced.
        return BudgetGrant {
            budget: st.budget.clone(),
            window: rule.window.to_string(),
            window_start_unix_ms: st.window_start_unix_ms,
            available_usd: (hard - total(alloc)).max(0.0),
            ..Default::default()
        };
    }
    {
        let e = &mut alloc.edges[idx];
        if e.instance_id != instance {
            e.retired_instance_ids.push(e.instance_id);
            let n = e.retired_instance_ids.len();
            if n > MAX_RETIRED {
                e.retired_instance_ids.drain(..n - MAX_RETIRED);
            }
            e.carried_usd += e.committed_usd.max(e.allowance_usd);
            e.allowance_usd = 0.0;
            e.committed_usd = 0.0;
            e.instance_id = instance;
            e.lease_expires_unix_ms = 0;
        }
        e.committed_usd = committed;
        if st.release {
            e.allowance_usd = e.allowance_usd.min(committed);
        }
        e.last_report_unix_ms = now_ms;
    }
    let renew = !st.release || want > 0.0;
    {
        let e = &mut alloc.edges[idx];
        e.lease_expires_unix_ms = if renew {
            now_ms.saturating_add(ttl_ms)
        } else {
            e.lease_expires_unix_ms.min(now_ms)
        };
    }
    if want > 0.0 {
        let available = hard - total(alloc);
        if available > 1e-12 {
            let live = alloc
                .edges
                .iter()
                .filter(|e| e.lease_expires_unix_ms > now_ms)
                .count()
                .max(1);
            let slice = (hard * policy.min_slice_fraction).max(available / (2.0 * live as f64));
            let inc = want.min(available).min(slice);
            let e = &mut alloc.edges[idx];
            e.allowance_usd = e.allowance_usd.max(e.committed_usd) + inc;
        }
    }
    let e = &alloc.edges[idx];
    BudgetGrant {
        budget: st.budget.clone(),
        window: rule.window.to_string(),
        window_start_unix_ms: st.window_start_unix_ms,
        granted_usd: e.allowance_usd,
        expires_unix_ms: e.lease_expires_unix_ms,
        ttl_ms: if renew { ttl_ms as u64 } else { 0 },
        available_usd: (hard - total(alloc)).max(0.0),
        unmanaged: false,
    }
}

/// The answer to a state the control plane does not manage.
pub fn unmanaged(st: &BudgetState) -> BudgetGrant {
    BudgetGrant {
        budget: st.budget.clone(),
        window: st.window.clone(),
        window_start_unix_ms: st.window_start_unix_ms,
        unmanaged: true,
        ..Default::default()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use std::collections::VecDeque;

    const T0: i64 = 1_795_392_000_000; // 2026-11-23T00:00:00Z

    fn policy() -> Policy {
        Policy {
            lease_ttl: Duration::from_secs(10),
            min_slice_fraction: 0.01,
        }
    }

    fn rule(hard: f64) -> GlobalRule {
        GlobalRule {
            window: "day",
            hard_usd: hard,
        }
    }

    fn state(committed: f64, want: f64, release: bool) -> BudgetState {
        BudgetState {
            budget: "b".into(),
            window: "day".into(),
            window_start_unix_ms: T0,
            committed_usd: committed,
            want_usd: want,
            release,
        }
    }

    #[test]
    fn rules_from_config() {
        let cfg = switchyard_proto::config::from_yaml_str(
            "tiers:\n  free: {daily_cost_usd: 0.5}\n  pro: {requests_per_minute: 5}\nkeys:\n  - {id: k1, secret: s, tier: free}\nbudgets:\n  - {name: b, scope: team, match: t, window: month, hard_limit_usd: 100}\n  - {name: soft-only, scope: team, match: t, window: day, soft_limit_usd: 1}\n",
            |_| None,
        )
        .unwrap();
        assert_eq!(
            super::rule(&cfg, "b"),
            Some(GlobalRule {
                window: "month",
                hard_usd: 100.0
            })
        );
        assert_eq!(super::rule(&cfg, "soft-only"), None);
        assert_eq!(
            super::rule(&cfg, "tier:free:key:k1:daily"),
            Some(GlobalRule {
                window: "day",
                hard_usd: 0.5
            })
        );
        assert_eq!(super::rule(&cfg, "tier:free:key:nope:daily"), None);
        assert_eq!(super::rule(&cfg, "tier:pro:key:k1:daily"), None);
        assert_eq!(super::rule(&cfg, "unknown"), None);
    }

    #[test]
    fn windows() {
        assert!(window_ok("day", T0, T0 + 5));
        assert!(!window_ok("day", T0 + 1, T0));
        // 2026-11-01T00:00:00Z
        let nov1 = T0 - 22 * DAY_MS;
        assert!(window_ok("month", nov1, T0));
        assert!(!window_ok("month", T0, T0));
        assert!(!window_ok("week", T0, T0));
        assert!(!window_ok("day", T0 - 100 * DAY_MS, T0));
    }

    #[test]
    fn slices_shrink_with_what_is_left_and_the_number_of_live_edges() {
        let mut a = BudgetAllocation::default();
        let p = policy();
        let g = apply(
            &mut a,
            "e1",
            1,
            &state(0.0, 100.0, false),
            &rule(1.0),
            T0,
            &p,
        );
        // One live edge: half of what is left.
        assert!((g.granted_usd - 0.5).abs() < 1e-12, "{g:?}");
        assert_eq!(g.ttl_ms, 10_000);
        assert_eq!(g.expires_unix_ms, T0 + 10_000);
        assert!((g.available_usd - 0.5).abs() < 1e-12);
        // Two live edges: a quarter of what is left.
        let g = apply(
            &mut a,
            "e2",
            7,
            &state(0.0, 100.0, false),
            &rule(1.0),
            T0,
            &p,
        );
        assert!((g.granted_usd - 0.125).abs() < 1e-12, "{g:?}");
        // Want caps the increment; the allowance is absolute.
        let g = apply(
            &mut a,
            "e2",
            7,
            &state(0.1, 0.01, false),
            &rule(1.0),
            T0,
            &p,
        );
        assert!((g.granted_usd - 0.135).abs() < 1e-12, "{g:?}");
        // No want: renewal only.
        let g = apply(
            &mut a,
            "e1",
            1,
            &state(0.2, 0.0, false),
            &rule(1.0),
            T0 + 1000,
            &p,
        );
        assert!((g.granted_usd - 0.5).abs() < 1e-12);
        assert_eq!(g.expires_unix_ms, T0 + 11_000);
        // The min slice applies until less than it is left.
        let mut a = BudgetAllocation::default();
        for i in 0..200 {
            apply(
                &mut a,
                &format!("e{i}"),
                1,
                &state(0.0, 100.0, false),
                &rule(1.0),
                T0,
                &p,
            );
        }
        assert!(total(&a) <= 1.0 + 1e-9);
        assert!(total(&a) > 0.999, "everything is handed out: {}", total(&a));
        let g = apply(
            &mut a,
            "late",
            1,
            &state(0.0, 100.0, false),
            &rule(1.0),
            T0,
            &p,
        );
        assert_eq!(g.granted_usd, 0.0);
        assert!(g.available_usd < 1e-9);
    }

    #[test]
    fn expired_leases_stop_counting_as_live_but_keep_their_allowance() {
        let mut a = BudgetAllocation::default();
        let p = policy();
        apply(
            &mut a,
            "e1",
            1,
            &state(0.0, 100.0, false),
            &rule(1.0),
            T0,
            &p,
        );
        // e1's lease has expired when e2 asks: e2 is the only live edge.
        let later = T0 + 11_000;
        let g = apply(
            &mut a,
            "e2",
            2,
            &state(0.0, 100.0, false),
            &rule(1.0),
            later,
            &p,
        );
        assert!((g.granted_usd - 0.25).abs() < 1e-12, "{g:?}");
        // e1's allowance still counts (it may have spent it while away).
        assert!((total(&a) - 0.75).abs() < 1e-12);
        // e1 comes back, idle, and releases: its unused allowance returns.
        let g = apply(
            &mut a,
            "e1",
            1,
            &state(0.1, 0.0, true),
            &rule(1.0),
            later,
            &p,
        );
        assert!((g.granted_usd - 0.1).abs() < 1e-12);
        assert_eq!(g.ttl_ms, 0, "a release that wants nothing is not renewed");
        assert!((total(&a) - 0.35).abs() < 1e-12);
        // A release with a new want renews and grants again.
        let g = apply(
            &mut a,
            "e1",
            1,
            &state(0.1, 0.05, true),
            &rule(1.0),
            later,
            &p,
        );
        assert!((g.granted_usd - 0.15).abs() < 1e-12, "{g:?}");
        assert_eq!(g.ttl_ms, 10_000);
    }

    #[test]
    fn a_restarted_edge_carries_its_previous_worst_case() {
        let mut a = BudgetAllocation::default();
        let p = policy();
        // committed 0.1 + half of the 0.9 left.
        let g = apply(
            &mut a,
            "e1",
            1,
            &state(0.1, 100.0, false),
            &rule(1.0),
            T0,
            &p,
        );
        assert!((g.granted_usd - 0.55).abs() < 1e-12, "{g:?}");
        let g = apply(&mut a, "e1", 2, &state(0.0, 0.0, false), &rule(1.0), T0, &p);
        assert_eq!(g.granted_usd, 0.0, "the new process starts from nothing");
        assert!((a.edges[0].carried_usd - 0.55).abs() < 1e-12);
        assert!((total(&a) - 0.55).abs() < 1e-12);
        // A late report of the old process changes nothing.
        let g = apply(&mut a, "e1", 1, &state(0.3, 1.0, false), &rule(1.0), T0, &p);
        assert_eq!((g.granted_usd, g.ttl_ms), (0.0, 0));
        assert!((total(&a) - 0.55).abs() < 1e-12);
        assert_eq!(a.edges[0].instance_id, 2);
        // Overspend reported by a fail-open edge counts in full.
        let g = apply(&mut a, "e1", 2, &state(0.7, 1.0, false), &rule(1.0), T0, &p);
        assert_eq!(g.granted_usd, 0.0, "nothing left to add");
        assert!((total(&a) - 1.25).abs() < 1e-12);
    }

    /// The edge's side of the protocol, as `dataplane/src/limits/grants.rs`
    /// implements it (fail-closed budgets).
    struct SimEdge {
        instance: u64,
        cap: f64,
        spent: f64,
        reserved: Vec<f64>,
        next_idx: u64,
        min_idx: u64,
        /// Reports on their way to the control plane.
        to_cp: VecDeque<(u64, u64, BudgetState)>,
        /// Acks on their way back: (report idx, grant).
        to_edge: VecDeque<(u64, BudgetGrant)>,
    }

    impl SimEdge {
        fn new(instance: u64) -> Self {
            Self {
                instance,
                cap: 0.0,
                spent: 0.0,
                reserved: vec![],
                next_idx: 0,
                min_idx: 0,
                to_cp: VecDeque::new(),
                to_edge: VecDeque::new(),
            }
        }
        fn committed(&self) -> f64 {
            self.spent + self.reserved.iter().sum::<f64>()
        }
    }

    /// Random interleavings of reservations, settlements, reports, grants,
    /// delayed and lost messages, releases, restarts, time passing and
    /// concurrent control-plane replicas: what the edges really commit never
    /// exceeds the hard limit, and neither does the accounted total.
    #[test]
    fn invariant_holds_under_random_interleavings() {
        let p = policy();
        for seed in 0..300u64 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let hard = rng.random_range(0.05..5.0);
            let r = rule(hard);
            let n = rng.random_range(1..5usize);
            let mut edges: Vec<SimEdge> = (0..n).map(|i| SimEdge::new(i as u64 + 1)).collect();
            let mut next_instance = 100u64;
            // Spend of dead processes (their reservations count as spent).
            let mut dead = 0.0f64;
            // Reports of dead processes may still reach the control plane.
            let mut orphans: VecDeque<(usize, u64, BudgetState)> = VecDeque::new();
            let mut alloc = BudgetAllocation::default();
            let mut now = T0;
            for _ in 0..600 {
                let i = rng.random_range(0..n);
                match rng.random_range(0..100) {
                    // Admission: reserve a worst case if it fits under the cap.
                    0..=29 => {
                        let x = rng.random_range(0.0..hard / 5.0);
                        let e = &mut edges[i];
                        if e.committed() + x <= e.cap + 1e-12 {
                            e.reserved.push(x);
                        }
                    }
                    // Settle: the real cost is at most the reservation.
                    30..=44 => {
                        let e = &mut edges[i];
                        if !e.reserved.is_empty() {
                            let k = rng.random_range(0..e.reserved.len());
                            let x = e.reserved.swap_remove(k);
                            e.spent += x * rng.random_range(0.0..=1.0);
                        }
                    }
                    // Report (sometimes a release of an idle edge).
                    45..=59 => {
                        let release = rng.random_bool(0.15);
                        let e = &mut edges[i];
                        let idx = e.next_idx;
                        e.next_idx += 1;
                        let committed = e.committed();
                        if release {
                            e.cap = committed;
                            e.min_idx = idx;
                        }
                        let want = if rng.random_bool(0.7) {
                            rng.random_range(0.0..hard)
                        } else {
                            0.0
                        };
                        let st = state(committed, want, release);
                        e.to_cp.push_back((idx, e.instance, st));
                    }
                    // The control plane handles the oldest report of an edge
                    // (or of a dead process of it).
                    60..=74 => {
                        if rng.random_bool(0.1) {
                            if let Some((j, inst, st)) = orphans.pop_front() {
                                apply(&mut alloc, &format!("e{j}"), inst, &st, &r, now, &p);
                            }
                        } else if let Some((idx, inst, st)) = edges[i].to_cp.pop_front() {
                            let g = apply(&mut alloc, &format!("e{i}"), inst, &st, &r, now, &p);
                            // Acks can be lost when a stream breaks.
                            if !rng.random_bool(0.05) {
                                edges[i].to_edge.push_back((idx, g));
                            }
                        }
                    }
                    // The edge receives the oldest ack.
                    75..=89 => {
                        let e = &mut edges[i];
                        if let Some((idx, g)) = e.to_edge.pop_front() {
                            if idx >= e.min_idx {
                                e.cap = g.granted_usd;
                            }
                        }
                    }
                    // Time passes (leases expire).
                    90..=95 => now += rng.random_range(0..15_000),
                    // The edge process dies and restarts under the same id.
                    _ => {
                        let e = &mut edges[i];
                        dead += e.committed();
                        for (_, inst, st) in e.to_cp.drain(..) {
                            orphans.push_back((i, inst, st));
                        }
                        next_instance += 1;
                        *e = SimEdge::new(next_instance);
                    }
                }
                let real: f64 = dead + edges.iter().map(SimEdge::committed).sum::<f64>();
                assert!(
                    real <= hard + 1e-9,
                    "seed {seed}: edges committed {real} > hard {hard}"
                );
                assert!(
                    total(&alloc) <= hard + 1e-9,
                    "seed {seed}: accounted {} > hard {hard}",
                    total(&alloc)
                );
                for e in &edges {
                    assert!(e.cap >= 0.0);
                }
            }
        }
    }

    /// With cooperative edges and no losses, nearly the whole budget gets
    /// handed out and spent.
    #[test]
    fn cooperative_edges_use_most_of_the_budget() {
        let p = policy();
        let hard = 1.0;
        let r = rule(hard);
        let mut alloc = BudgetAllocation::default();
        let mut caps = [0.0f64; 3];
        let mut spent = [0.0f64; 3];
        let call = 0.004;
        for round in 0..2000 {
            let i = round % 3;
            if spent[i] + call <= caps[i] + 1e-12 {
                spent[i] += call;
            } else {
                let g = apply(
                    &mut alloc,
                    &format!("e{i}"),
                    1,
                    &state(spent[i], hard, false),
                    &r,
                    T0,
                    &p,
                );
                caps[i] = g.granted_usd;
            }
        }
        let used: f64 = spent.iter().sum();
        assert!(used <= hard + 1e-9);
        assert!(used >= hard - 3.0 * call, "used {used}");
    }
}
