//! This edge's shares of global budgets (see `docs/budgets.md`).
//!
//! With a control plane, every budget with a hard limit (and every tier's
//! per-key daily cap) is shared by all edges. The control plane grants each
//! edge an absolute *allowance* per budget window; [`GrantTable::reserve`]
//! holds this edge's worst-case reservations under it, exactly as
//! [`Ledger::reserve`] holds them under a local hard limit. The usage
//! reporter (`control::usage`) sends [`GrantTable::states`] with every
//! report and applies the answers with [`GrantTable::apply`].
//!
//! The rules that keep the sum over all edges under the hard limit:
//!
//! - a reservation fits under the allowance last applied (never above the
//!   hard limit);
//! - an answer is applied only if it answers a report sent at or after the
//!   last release of that window (acks arrive in order, one per report);
//! - a release lowers the allowance to what is committed *before* the
//!   report that announces it is sent (under the same lock admissions hold).
//!
//! Leases are counted on this edge's monotonic clock from the moment the
//! answered report was sent. A `fail_open` budget falls back to its local
//! hard limit once its lease has run out while the control plane is
//! unreachable; a fail-closed one never spends beyond its allowance.
//! [`Limits`](super::Limits) without a table is the standalone edge: every
//! budget is local.

use super::budgets::{BudgetRule, Exceeded, Ledger, Reservation};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use switchyard_proto::control::{BudgetGrant, BudgetState};
use tokio::sync::{watch, Notify};

/// After the control plane said nothing is left, calls over this edge's
/// share are refused at once (no waiting for a grant) for this long.
const EXHAUSTED_FOR: Duration = Duration::from_secs(1);
/// A share idle this long gives its unused allowance back.
pub const DEFAULT_IDLE_RELEASE: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct Share {
    rule: Arc<BudgetRule>,
    /// Ledger window id.
    window: u64,
    window_start_ms: i64,
    /// Absolute allowance for this edge process in the window.
    allowance: f64,
    /// At least one grant was applied.
    granted: bool,
    lease_until: Option<Instant>,
    /// The last increase of the allowance (refill threshold: half of it).
    last_inc: f64,
    /// More wanted (USD) in the next report; 0 = nothing to ask.
    want: f64,
    /// The report asking for more that is out and not answered yet: calls
    /// wait for its answer instead of asking again.
    asking: Option<u64>,
    /// Answers to reports below this index are ignored (set by a release).
    min_report: u64,
    /// What the control plane said was left for all edges, and when.
    available: Option<(f64, Instant)>,
    /// The control plane does not manage this budget: enforce locally.
    unmanaged: bool,
    last_demand: Instant,
}

impl Share {
    fn lease_live(&self, t: Instant) -> bool {
        self.lease_until.is_some_and(|u| u > t)
    }
}

type SharedShare = Arc<Mutex<Share>>;

/// Why a global budget refused a reservation.
pub enum Refusal {
    /// Over the limit, and nothing more is coming soon.
    Exceeded(Exceeded),
    /// Over this edge's share; more was asked for. Wait for the answer and
    /// try again (bounded).
    Wait(Exceeded, GrantWait),
}

/// Resolves when grants were applied or the control plane connection
/// changed.
#[derive(Debug)]
pub struct GrantWait {
    rx: watch::Receiver<u64>,
}

impl GrantWait {
    /// Waits for the next change, at most `max`.
    pub async fn wait(mut self, max: Duration) {
        let _ = tokio::time::timeout(max, self.rx.changed()).await;
    }
}

/// One share as shown in metrics and tests.
#[derive(Debug, Clone, PartialEq)]
pub struct ShareView {
    pub budget: String,
    pub window_start_ms: i64,
    pub allowance: f64,
    pub committed: f64,
    pub lease_live: bool,
    pub unmanaged: bool,
}

/// This edge's grants, shared by the request path and the usage reporter.
pub struct GrantTable {
    instance_id: u64,
    /// By (budget name, window start).
    shares: Mutex<HashMap<(String, i64), SharedShare>>,
    connected: AtomicBool,
    wake: Notify,
    changed: watch::Sender<u64>,
    idle_release: Duration,
}

impl Default for GrantTable {
    fn default() -> Self {
        Self::new(DEFAULT_IDLE_RELEASE)
    }
}

impl GrantTable {
    /// A table for a new edge process (a fresh random instance id).
    pub fn new(idle_release: Duration) -> Self {
        Self {
            instance_id: rand::random::<u64>().max(1),
            shares: Mutex::new(HashMap::new()),
            connected: AtomicBool::new(false),
            wake: Notify::new(),
            changed: watch::channel(0).0,
            idle_release,
        }
    }

    /// Identifies this edge process to the control plane.
    pub fn instance_id(&self) -> u64 {
        self.instance_id
    }

    /// Whether the usage stream to the control plane is up.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// Set by the reporter; wakes waiting calls when it changes.
    pub fn set_connected(&self, up: bool) {
        if !up {
            // Unanswered asks died with the stream.
            for sh in self.shares.lock().values() {
                sh.lock().asking = None;
            }
        }
        if self.connected.swap(up, Ordering::AcqRel) != up {
            self.changed.send_modify(|v| *v = v.wrapping_add(1));
        }
    }

    /// Resolves when a share wants more (the reporter should send now).
    pub async fn wants(&self) {
        self.wake.notified().await;
    }

    fn share(&self, rule: &Arc<BudgetRule>, window: u64, start: i64, t: Instant) -> SharedShare {
        self.shares
            .lock()
            .entry((rule.name.clone(), start))
            .or_insert_with(|| {
                Arc::new(Mutex::new(Share {
                    rule: rule.clone(),
                    window,
                    window_start_ms: start,
                    allowance: 0.0,
                    granted: false,
                    lease_until: None,
                    last_inc: 0.0,
                    want: 0.0,
                    asking: None,
                    min_report: 0,
                    available: None,
                    unmanaged: false,
                    last_demand: t,
                }))
            })
            .clone()
    }

    fn ask(&self, s: &mut Share, want: f64) {
        if s.asking.is_some() {
            return;
        }
        s.want = s.want.max(want);
        self.wake.notify_one();
    }

    /// Reserves `amount` against `rule`: under this edge's allowance for a
    /// global budget (see the module docs), under its hard limit when the
    /// control plane does not manage it or a `fail_open` budget's lease ran
    /// out while the control plane is unreachable. Budgets without a hard
    /// limit only record spend (soft alerts).
    pub fn reserve(
        &self,
        ledger: &Ledger,
        rule: &Arc<BudgetRule>,
        amount: f64,
        now: SystemTime,
    ) -> Result<Reservation, Refusal> {
        self.reserve_at(ledger, rule, amount, now, Instant::now())
    }

    fn reserve_at(
        &self,
        ledger: &Ledger,
        rule: &Arc<BudgetRule>,
        amount: f64,
        now: SystemTime,
        t: Instant,
    ) -> Result<Reservation, Refusal> {
        let Some(hard) = rule.hard_usd else {
            return ledger
                .reserve(rule, f64::INFINITY, amount, now)
                .map_err(Refusal::Exceeded);
        };
        let (window, _) = rule.window.current(now);
        let start = rule.window.start_unix_ms(now);
        let share = self.share(rule, window, start, t);
        let mut s = share.lock();
        // Subscribed under the share lock: a grant applied after we ask
        // cannot be missed.
        let rx = self.changed.subscribe();
        s.rule = rule.clone();
        s.last_demand = t;
        let connected = self.connected();
        let local = s.unmanaged || (rule.fail_open && !connected && !s.lease_live(t));
        let limit = if local { hard } else { s.allowance.min(hard) };
        match ledger.reserve(rule, limit, amount, now) {
            Ok(r) => {
                if !local {
                    let left = s.allowance - ledger.committed(&rule.name, window);
                    if left < s.last_inc / 2.0 {
                        self.ask(&mut s, hard);
                    }
                }
                Ok(r)
            }
            Err(mut e) => {
                if local {
                    return Err(Refusal::Exceeded(e));
                }
                e.global_limit = Some(hard);
                let exhausted = s
                    .available
                    .is_some_and(|(a, at)| a <= 1e-9 && t.duration_since(at) < EXHAUSTED_FOR);
                if connected && !exhausted {
                    self.ask(&mut s, hard.max(amount));
                    return Err(Refusal::Wait(e, GrantWait { rx }));
                }
                Err(Refusal::Exceeded(e))
            }
        }
    }

    /// The budget states for report number `idx` (indices increase by one
    /// per report, across reconnects): every share of a current window that
    /// saw demand lately, wants more, or is released now. A share idle for
    /// the release period gives back what it has not committed: its
    /// allowance drops to its committed spend here, before the report goes
    /// out, and answers to earlier reports are ignored from now on.
    pub fn states(&self, ledger: &Ledger, idx: u64, now: SystemTime) -> Vec<BudgetState> {
        self.states_at(ledger, idx, now, Instant::now())
    }

    fn states_at(
        &self,
        ledger: &Ledger,
        idx: u64,
        now: SystemTime,
        t: Instant,
    ) -> Vec<BudgetState> {
        let mut shares = self.shares.lock();
        shares.retain(|_, sh| {
            let s = sh.lock();
            s.rule.window.current(now).0 == s.window
        });
        let mut out = Vec::new();
        for sh in shares.values() {
            let mut s = sh.lock();
            let committed = ledger.committed(&s.rule.name, s.window);
            let idle = t.saturating_duration_since(s.last_demand) >= self.idle_release;
            let release = idle
                && s.granted
                && !s.unmanaged
                && s.want <= 0.0
                && s.allowance > committed + 1e-12;
            if release {
                s.allowance = committed;
                s.min_report = idx;
            }
            if idle && s.want <= 0.0 && !release {
                continue;
            }
            out.push(BudgetState {
                budget: s.rule.name.clone(),
                window: s.rule.window.as_str().to_string(),
                window_start_unix_ms: s.window_start_ms,
                committed_usd: committed,
                want_usd: s.want,
                release,
            });
            if s.want > 0.0 {
                s.asking = Some(idx);
            }
            s.want = 0.0;
        }
        out.sort_by(|a, b| a.budget.cmp(&b.budget));
        out
    }

    /// Whether some share wants more now.
    pub fn wants_more(&self) -> bool {
        self.shares.lock().values().any(|s| s.lock().want > 0.0)
    }

    /// Applies the grants answering report `idx`, which was sent at `sent`.
    pub fn apply(&self, idx: u64, sent: Instant, grants: &[BudgetGrant]) {
        self.apply_at(idx, sent, grants, Instant::now());
    }

    fn apply_at(&self, idx: u64, sent: Instant, grants: &[BudgetGrant], t: Instant) {
        // The ask is answered even if its share got no grant (the control
        // plane could not update it): the next refusal may ask again.
        for sh in self.shares.lock().values() {
            let mut s = sh.lock();
            if s.asking.is_some_and(|a| idx >= a) {
                s.asking = None;
            }
        }
        for g in grants {
            let share = self
                .shares
                .lock()
                .get(&(g.budget.clone(), g.window_start_unix_ms))
                .cloned();
            let Some(share) = share else { continue };
            let mut s = share.lock();
            if idx < s.min_report {
                continue;
            }
            if g.unmanaged {
                if !s.unmanaged {
                    tracing::warn!(budget = %g.budget, "the control plane does not share this budget (config skew?); enforcing its hard limit on this edge alone");
                }
                s.unmanaged = true;
                continue;
            }
            s.unmanaged = false;
            let granted = if g.granted_usd.is_finite() {
                g.granted_usd.max(0.0)
            } else {
                0.0
            };
            if granted > s.allowance + 1e-12 {
                s.last_inc = granted - s.allowance;
            }
            s.allowance = granted;
            s.granted = true;
            s.lease_until = (g.ttl_ms > 0).then(|| sent + Duration::from_millis(g.ttl_ms));
            s.available = Some((g.available_usd, t));
        }
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Every share, for metrics.
    pub fn view(&self, ledger: &Ledger) -> Vec<ShareView> {
        let t = Instant::now();
        let mut out: Vec<ShareView> = self
            .shares
            .lock()
            .values()
            .map(|sh| {
                let s = sh.lock();
                ShareView {
                    budget: s.rule.name.clone(),
                    window_start_ms: s.window_start_ms,
                    allowance: s.allowance,
                    committed: ledger.committed(&s.rule.name, s.window),
                    lease_live: s.lease_live(t),
                    unmanaged: s.unmanaged,
                }
            })
            .collect();
        out.sort_by(|a, b| a.budget.cmp(&b.budget));
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::budgets::{Scope, Window};
    use super::*;

    fn rule(fail_open: bool) -> Arc<BudgetRule> {
        Arc::new(BudgetRule {
            name: "g".into(),
            scope: Scope::Team,
            matches: "t".into(),
            window: Window::Day,
            soft_usd: None,
            hard_usd: Some(10.0),
            downgrade_to: None,
            fail_open,
        })
    }

    fn grant(now: SystemTime, granted: f64, ttl_ms: u64, available: f64) -> BudgetGrant {
        BudgetGrant {
            budget: "g".into(),
            window: "day".into(),
            window_start_unix_ms: Window::Day.start_unix_ms(now),
            granted_usd: granted,
            ttl_ms,
            available_usd: available,
            ..Default::default()
        }
    }

    fn waits(r: Result<Reservation, Refusal>) -> bool {
        matches!(r, Err(Refusal::Wait(..)))
    }

    fn refused(r: Result<Reservation, Refusal>) -> Option<Exceeded> {
        match r {
            Err(Refusal::Exceeded(e)) => Some(e),
            _ => None,
        }
    }

    #[test]
    fn spends_within_the_allowance_and_asks_for_more() {
        let g = GrantTable::new(Duration::from_secs(10));
        let l = Ledger::default();
        let r = rule(false);
        let now = SystemTime::now();
        let t = Instant::now();
        // Disconnected, nothing granted: fail closed.
        let e = refused(g.reserve_at(&l, &r, 1.0, now, t)).unwrap();
        assert_eq!(e.global_limit, Some(10.0));
        // Connected: wait for a grant; the want is the hard limit.
        g.set_connected(true);
        assert!(waits(g.reserve_at(&l, &r, 1.0, now, t)));
        assert!(g.wants_more());
        let states = g.states_at(&l, 0, now, t);
        assert_eq!(states.len(), 1);
        assert_eq!(
            (
                states[0].want_usd,
                states[0].committed_usd,
                states[0].release
            ),
            (10.0, 0.0, false)
        );
        assert!(!g.wants_more(), "sent");
        g.apply_at(0, t, &[grant(now, 2.5, 5000, 7.5)], t);
        let a = g.reserve_at(&l, &r, 1.0, now, t).ok().unwrap();
        let b = g.reserve_at(&l, &r, 1.0, now, t).ok().unwrap();
        // 0.5 left < half of the last increase: a refill is asked for.
        assert!(g.wants_more());
        assert!(waits(g.reserve_at(&l, &r, 1.0, now, t)));
        l.settle(a, 0.2);
        l.settle(b, 0.3);
        assert!(g.reserve_at(&l, &r, 1.0, now, t).is_ok());
        // The control plane says nothing is left: refuse without waiting.
        g.apply_at(1, t, &[grant(now, 2.5, 5000, 0.0)], t);
        assert!(refused(g.reserve_at(&l, &r, 2.0, now, t)).is_some());
        // A second later it is worth asking again.
        assert!(waits(g.reserve_at(
            &l,
            &r,
            2.0,
            now,
            t + Duration::from_secs(2)
        )));
        let v = g.view(&l);
        assert_eq!(v[0].allowance, 2.5);
        assert!((v[0].committed - 1.5).abs() < 1e-9);
    }

    #[test]
    fn fail_open_falls_back_to_the_hard_limit_only_after_the_lease() {
        let g = GrantTable::new(Duration::from_secs(10));
        let l = Ledger::default();
        let r = rule(true);
        let now = SystemTime::now();
        let t = Instant::now();
        g.set_connected(true);
        assert!(waits(g.reserve_at(&l, &r, 1.0, now, t)));
        g.apply_at(0, t, &[grant(now, 1.0, 5000, 9.0)], t);
        assert!(g.reserve_at(&l, &r, 1.0, now, t).is_ok());
        g.set_connected(false);
        // Lease live: the allowance still holds.
        assert!(refused(g.reserve_at(&l, &r, 1.0, now, t + Duration::from_secs(1))).is_some());
        // Lease over and unreachable: the local hard limit (10).
        let later = t + Duration::from_secs(6);
        for _ in 0..9 {
            assert!(g.reserve_at(&l, &r, 1.0, now, later).is_ok());
        }
        let e = refused(g.reserve_at(&l, &r, 1.0, now, later)).unwrap();
        assert_eq!((e.limit, e.global_limit), (10.0, None));
        // Fail closed never goes past the allowance.
        let g = GrantTable::new(Duration::from_secs(10));
        let r = rule(false);
        let l = Ledger::default();
        g.set_connected(true);
        assert!(waits(g.reserve_at(&l, &r, 1.0, now, t)));
        g.apply_at(0, t, &[grant(now, 1.0, 5000, 9.0)], t);
        g.set_connected(false);
        assert!(g.reserve_at(&l, &r, 1.0, now, later).is_ok());
        assert!(refused(g.reserve_at(&l, &r, 0.01, now, later)).is_some());
    }

    #[test]
    fn idle_shares_release_and_earlier_answers_are_ignored() {
        let g = GrantTable::new(Duration::from_secs(10));
        let l = Ledger::default();
        let r = rule(false);
        let now = SystemTime::now();
        let t = Instant::now();
        g.set_connected(true);
        assert!(waits(g.reserve_at(&l, &r, 1.0, now, t)));
        g.states_at(&l, 0, now, t);
        g.apply_at(0, t, &[grant(now, 4.0, 60_000, 6.0)], t);
        let a = g.reserve_at(&l, &r, 1.0, now, t).ok().unwrap();
        l.settle(a, 0.5);
        // Report 1 (still active) is in flight when the share goes idle.
        assert_eq!(g.states_at(&l, 1, now, t).len(), 1);
        let idle = t + Duration::from_secs(11);
        let s = g.states_at(&l, 2, now, idle);
        assert_eq!(s.len(), 1);
        assert!(s[0].release);
        assert!((s[0].committed_usd - 0.5).abs() < 1e-9);
        // The allowance is down before the report leaves.
        assert!((g.view(&l)[0].allowance - 0.5).abs() < 1e-9);
        // The answer to report 1 (granted before the release) is ignored...
        g.apply_at(1, t, &[grant(now, 4.0, 60_000, 6.0)], idle);
        assert!((g.view(&l)[0].allowance - 0.5).abs() < 1e-9);
        // ...the answer to report 2 applies.
        g.apply_at(2, idle, &[grant(now, 0.5, 0, 9.5)], idle);
        let v = g.view(&l);
        assert!((v[0].allowance - 0.5).abs() < 1e-9);
        assert!(!v[0].lease_live);
        // Released and idle: not reported any more.
        assert!(g.states_at(&l, 3, now, idle).is_empty());
    }

    #[test]
    fn leases_count_from_the_send_time_and_unmanaged_budgets_are_local() {
        let g = GrantTable::new(Duration::from_secs(10));
        let l = Ledger::default();
        let r = rule(true);
        let now = SystemTime::now();
        let t = Instant::now();
        g.set_connected(true);
        let _ = g.reserve_at(&l, &r, 1.0, now, t);
        // Sent at t, answered 3 s later with a 5 s lease: live until t + 5 s.
        g.apply_at(
            0,
            t,
            &[grant(now, 1.0, 5000, 9.0)],
            t + Duration::from_secs(3),
        );
        g.set_connected(false);
        assert!(refused(g.reserve_at(&l, &r, 1.0, now, t + Duration::from_millis(4900))).is_none());
        assert!(refused(g.reserve_at(&l, &r, 1.0, now, t + Duration::from_millis(4950))).is_some());
        assert!(g
            .reserve_at(&l, &r, 1.0, now, t + Duration::from_millis(5001))
            .is_ok());
        // Unmanaged: the local hard limit even while connected.
        let g = GrantTable::new(Duration::from_secs(10));
        let l = Ledger::default();
        let r = rule(false);
        g.set_connected(true);
        let _ = g.reserve_at(&l, &r, 1.0, now, t);
        g.apply_at(
            0,
            t,
            &[BudgetGrant {
                unmanaged: true,
                ..grant(now, 0.0, 0, 0.0)
            }],
            t,
        );
        for _ in 0..10 {
            assert!(g.reserve_at(&l, &r, 1.0, now, t).is_ok());
        }
        assert!(refused(g.reserve_at(&l, &r, 1.0, now, t)).is_some());
    }
}
