//! Spend budgets per feature, team or key over UTC day / month windows.
//!
//! Hard limits hold exactly on one edge: before a call, its worst-case cost
//! (estimated prompt tokens at the input price plus `max_tokens` at the
//! output price, at the most expensive target of the route) is reserved;
//! a call is admitted only if spent + reserved + its reservation fits under
//! the limit. After the call the reservation is replaced by the real cost,
//! which can only be lower. So concurrent requests cannot overshoot.

use dashmap::DashMap;
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    Feature,
    Team,
    Key,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Window {
    Day,
    Month,
}

impl Window {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Day => "day",
            Self::Month => "month",
        }
    }

    /// The window containing `now`: an id and the time until it ends.
    pub fn current(self, now: SystemTime) -> (u64, Duration) {
        let secs = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let day = secs / 86_400;
        match self {
            Self::Day => (day, Duration::from_secs((day + 1) * 86_400 - secs)),
            Self::Month => {
                let (y, m, _) = civil_from_days(day as i64);
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                let next = days_from_civil(ny, nm, 1) as u64 * 86_400;
                (
                    (y as u64) * 12 + m as u64,
                    Duration::from_secs(next.saturating_sub(secs)),
                )
            }
        }
    }
}

impl Window {
    /// Start of the window containing `now` (UTC), in ms since the epoch.
    pub fn start_unix_ms(self, now: SystemTime) -> i64 {
        let secs = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let day = (secs / 86_400) as i64;
        let start_day = match self {
            Self::Day => day,
            Self::Month => {
                let (y, m, _) = civil_from_days(day);
                days_from_civil(y, m, 1)
            }
        };
        start_day * 86_400_000
    }
}

/// Days since 1970-01-01 → (year, month, day). (Howard Hinnant's algorithm.)
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

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A compiled budget.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetRule {
    pub name: String,
    pub scope: Scope,
    pub matches: String,
    pub window: Window,
    pub soft_usd: Option<f64>,
    pub hard_usd: Option<f64>,
    pub downgrade_to: Option<String>,
    pub fail_open: bool,
}

#[derive(Debug, Default)]
struct Entry {
    spent: f64,
    reserved: f64,
    soft_alerted: bool,
}

/// A budget's hard limit would be exceeded.
#[derive(Debug, Clone, PartialEq)]
pub struct Exceeded {
    pub budget: String,
    /// The limit that was checked: the hard limit, or this edge's share of a
    /// global budget.
    pub limit: f64,
    /// Spent on this edge in the window.
    pub spent: f64,
    /// Until the window resets.
    pub reset_in: Duration,
    pub downgrade_to: Option<String>,
    /// For a global budget (shared by every edge): its hard limit.
    pub global_limit: Option<f64>,
}

/// Spend reserved against one budget window.
#[derive(Debug)]
pub struct Reservation {
    rule: Arc<BudgetRule>,
    window: u64,
    amount: f64,
}

impl Reservation {
    /// Whether it counts against a hard limit.
    pub fn is_hard(&self) -> bool {
        self.rule.hard_usd.is_some()
    }
}

/// A soft limit crossed by a settled call (alert once per window).
#[derive(Debug, Clone, PartialEq)]
pub struct SoftAlert {
    pub budget: String,
    pub window: &'static str,
    pub soft_usd: f64,
    pub spent_usd: f64,
}

/// Spend per budget window on this edge.
#[derive(Debug, Default)]
pub struct Ledger {
    entries: DashMap<(String, u64), Arc<Mutex<Entry>>>,
}

impl Ledger {
    fn entry(&self, name: &str, window: u64) -> Arc<Mutex<Entry>> {
        self.entries
            .entry((name.to_string(), window))
            .or_default()
            .clone()
    }

    /// Reserves `amount` against `rule` if it fits under `limit` (the hard
    /// limit, or this edge's granted share of it).
    pub fn reserve(
        &self,
        rule: &Arc<BudgetRule>,
        limit: f64,
        amount: f64,
        now: SystemTime,
    ) -> Result<Reservation, Exceeded> {
        let (window, reset_in) = rule.window.current(now);
        let e = self.entry(&rule.name, window);
        let mut e = e.lock();
        if e.spent + e.reserved + amount > limit + 1e-12 || (amount == 0.0 && e.spent >= limit) {
            return Err(Exceeded {
                budget: rule.name.clone(),
                limit,
                spent: e.spent,
                reset_in,
                downgrade_to: rule.downgrade_to.clone(),
                global_limit: None,
            });
        }
        e.reserved += amount;
        Ok(Reservation {
            rule: rule.clone(),
            window,
            amount,
        })
    }

    /// Replaces a reservation with the real cost. Returns a soft-limit alert
    /// the first time the window's spend crosses it.
    pub fn settle(&self, r: Reservation, actual: f64) -> Option<SoftAlert> {
        let e = self.entry(&r.rule.name, r.window);
        let mut e = e.lock();
        e.reserved = (e.reserved - r.amount).max(0.0);
        e.spent += actual;
        match r.rule.soft_usd {
            Some(soft) if e.spent >= soft && !e.soft_alerted => {
                e.soft_alerted = true;
                Some(SoftAlert {
                    budget: r.rule.name.clone(),
                    window: r.rule.window.as_str(),
                    soft_usd: soft,
                    spent_usd: e.spent,
                })
            }
            _ => None,
        }
    }

    /// Spend plus reservations of window `window` (an id from
    /// [`Window::current`]) of budget `name`.
    pub fn committed(&self, name: &str, window: u64) -> f64 {
        self.entries
            .get(&(name.to_string(), window))
            .map_or(0.0, |e| {
                let e = e.lock();
                e.spent + e.reserved
            })
    }

    /// Spend recorded in the current window.
    pub fn spent(&self, rule: &BudgetRule, now: SystemTime) -> f64 {
        let (window, _) = rule.window.current(now);
        self.entries
            .get(&(rule.name.clone(), window))
            .map_or(0.0, |e| e.lock().spent)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn rule(hard: f64, soft: Option<f64>) -> Arc<BudgetRule> {
        Arc::new(BudgetRule {
            name: "b".into(),
            scope: Scope::Feature,
            matches: "f".into(),
            window: Window::Day,
            soft_usd: soft,
            hard_usd: Some(hard),
            downgrade_to: None,
            fail_open: false,
        })
    }

    #[test]
    fn windows() {
        // 2026-11-23T10:00:00Z
        let t = UNIX_EPOCH + Duration::from_secs(1_795_428_000);
        let (d, left) = Window::Day.current(t);
        assert_eq!(d, 1_795_428_000 / 86_400);
        assert_eq!(left, Duration::from_secs(14 * 3600));
        let (m, left) = Window::Month.current(t);
        assert_eq!(m, 2026 * 12 + 11);
        // Until 2026-12-01T00:00:00Z: 7 days 14 hours.
        assert_eq!(left, Duration::from_secs(7 * 86_400 + 14 * 3600));
        assert_eq!(Window::Day.start_unix_ms(t), 1_795_392_000_000);
        // 2026-11-01T00:00:00Z
        assert_eq!(Window::Month.start_unix_ms(t), 1_793_491_200_000);
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(civil_from_days(days_from_civil(2024, 2, 29)), (2024, 2, 29));
    }

    #[test]
    fn reservations_hold_the_hard_limit_under_concurrency() {
        let l = Ledger::default();
        let r = rule(1.0, Some(0.5));
        let now = SystemTime::now();
        // Worst case 0.3 each: only 3 fit at once.
        let held: Vec<_> = (0..5)
            .filter_map(|_| l.reserve(&r, 1.0, 0.3, now).ok())
            .collect();
        assert_eq!(held.len(), 3);
        // Actual costs are lower; settling frees room.
        let mut alerts = Vec::new();
        for res in held {
            alerts.extend(l.settle(res, 0.2));
        }
        assert!((l.spent(&r, now) - 0.6).abs() < 1e-9);
        assert_eq!(alerts.len(), 1, "soft alert fires once");
        assert_eq!(alerts[0].budget, "b");
        assert!(l.reserve(&r, 1.0, 0.4, now).is_ok());
        let e = l.reserve(&r, 1.0, 0.1, now).unwrap_err();
        assert_eq!(e.budget, "b");
    }

    #[test]
    fn exhausted_budget_rejects_even_unpriced_calls() {
        let l = Ledger::default();
        let r = rule(0.5, None);
        let now = SystemTime::now();
        let res = l.reserve(&r, 0.5, 0.0, now).unwrap();
        l.settle(res, 0.5);
        assert!(l.reserve(&r, 0.5, 0.0, now).is_err());
    }
}
