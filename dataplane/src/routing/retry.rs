//! Backoff with full jitter, and the retry budget that stops retry storms.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Exponential backoff with full jitter: a uniform draw from
/// `[0, min(max, base * 2^retry)]` (AWS "full jitter").
pub fn backoff(retry: u32, base: Duration, max: Duration, unit: f64) -> Duration {
    let exp = base.saturating_mul(1u32 << retry.min(20));
    let cap = exp.min(max);
    cap.mul_f64(unit.clamp(0.0, 1.0))
}

/// Retries in flight may not exceed `ratio` of requests in flight (with a
/// floor of [`RetryBudget::MIN_RETRIES`]), so a full outage does not multiply
/// the load on providers by the retry count.
#[derive(Debug, Default)]
pub struct RetryBudget {
    requests: AtomicUsize,
    retries: AtomicUsize,
}

/// Marks a request in flight for as long as it lives.
pub struct RequestGuard<'a>(&'a RetryBudget);
impl Drop for RequestGuard<'_> {
    fn drop(&mut self) {
        self.0.requests.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Marks a retry in flight for as long as it lives.
pub struct RetryGuard<'a>(&'a RetryBudget);
impl Drop for RetryGuard<'_> {
    fn drop(&mut self) {
        self.0.retries.fetch_sub(1, Ordering::Relaxed);
    }
}

impl RetryBudget {
    pub const MIN_RETRIES: usize = 3;

    pub fn start_request(&self) -> RequestGuard<'_> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        RequestGuard(self)
    }

    /// Takes a retry slot if the budget allows one.
    pub fn try_retry(&self, ratio: f64) -> Option<RetryGuard<'_>> {
        let requests = self.requests.load(Ordering::Relaxed);
        let allowed = ((requests as f64) * ratio).floor() as usize;
        let allowed = allowed.max(Self::MIN_RETRIES);
        let prev = self.retries.fetch_add(1, Ordering::Relaxed);
        if prev < allowed {
            Some(RetryGuard(self))
        } else {
            self.retries.fetch_sub(1, Ordering::Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let b = Duration::from_millis(50);
        let m = Duration::from_secs(1);
        assert_eq!(backoff(0, b, m, 1.0), Duration::from_millis(50));
        assert_eq!(backoff(1, b, m, 1.0), Duration::from_millis(100));
        assert_eq!(backoff(3, b, m, 1.0), Duration::from_millis(400));
        assert_eq!(backoff(10, b, m, 1.0), m);
        assert_eq!(backoff(2, b, m, 0.5), Duration::from_millis(100));
        assert_eq!(backoff(2, b, m, 0.0), Duration::ZERO);
    }

    #[test]
    fn budget_caps_retries_in_flight() {
        let budget = RetryBudget::default();
        let reqs: Vec<_> = (0..20).map(|_| budget.start_request()).collect();
        // 20 requests * 0.2 = 4 retries allowed.
        let held: Vec<_> = (0..4).map(|_| budget.try_retry(0.2)).collect();
        assert!(held.iter().all(Option::is_some));
        assert!(budget.try_retry(0.2).is_none());
        drop(held);
        assert!(budget.try_retry(0.2).is_some());
        drop(reqs);
        // The floor still allows a few retries when idle.
        let floor: Vec<_> = (0..3).map(|_| budget.try_retry(0.2)).collect();
        assert!(floor.iter().all(Option::is_some));
        assert!(budget.try_retry(0.2).is_none());
    }
}
