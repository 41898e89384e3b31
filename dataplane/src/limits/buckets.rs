//! Per-key rate limiting:
//!
//! - requests per minute: governor's keyed GCRA limiter (burst = the limit,
//!   so exactly N of N + k back-to-back requests are admitted);
//! - tokens per minute: a token bucket per key (dashmap) that supports what
//!   GCRA cannot: reserving an estimate before the call and reconciling it
//!   with the provider's reported usage afterwards (refund or debt);
//! - concurrency: in-flight requests per key, released by a guard.

use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};
use parking_lot::Mutex;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

type KeyedLimiter<C> =
    RateLimiter<String, DashMapStateStore<String>, C, StateInformationMiddleware>;

/// Outcome of a request-rate check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateState {
    pub limit: u32,
    pub remaining: u32,
    /// Time until the bucket is full again.
    pub reset: Duration,
}

/// Requests-per-minute limiters, one per distinct limit value.
pub struct RequestLimiter<C: Clock = DefaultClock> {
    clock: C,
    by_limit: DashMap<u32, Arc<KeyedLimiter<C>>>,
}

impl Default for RequestLimiter<DefaultClock> {
    fn default() -> Self {
        Self::with_clock(DefaultClock::default())
    }
}

impl<C: Clock + Clone> RequestLimiter<C> {
    pub fn with_clock(clock: C) -> Self {
        Self {
            clock,
            by_limit: DashMap::new(),
        }
    }

    /// Takes one request from `key`'s budget of `per_minute`.
    /// `Err(wait)` says how long until one is available.
    pub fn check(&self, key: &str, per_minute: u32) -> Result<RateState, Duration> {
        let Some(n) = NonZeroU32::new(per_minute) else {
            return Err(Duration::from_secs(60));
        };
        let limiter = self
            .by_limit
            .entry(per_minute)
            .or_insert_with(|| {
                Arc::new(
                    RateLimiter::dashmap_with_clock(Quota::per_minute(n), self.clock.clone())
                        .with_middleware::<StateInformationMiddleware>(),
                )
            })
            .clone();
        let per_cell = Duration::from_secs(60) / per_minute;
        match limiter.check_key(&key.to_string()) {
            Ok(snap) => {
                let remaining = snap.remaining_burst_capacity();
                Ok(RateState {
                    limit: per_minute,
                    remaining,
                    reset: per_cell * (per_minute - remaining),
                })
            }
            Err(not_until) => Err(not_until.wait_time_from(self.clock.now())),
        }
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Tokens-per-minute buckets with reservation and reconciliation.
#[derive(Debug, Default)]
pub struct TokenBuckets {
    buckets: DashMap<String, Arc<Mutex<Bucket>>>,
}

impl TokenBuckets {
    fn refill(b: &mut Bucket, capacity: f64, now: Instant) {
        let rate = capacity / 60.0;
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate).min(capacity);
        b.last = now;
    }

    fn bucket(&self, key: &str, capacity: f64) -> Arc<Mutex<Bucket>> {
        if let Some(b) = self.buckets.get(key) {
            return b.clone();
        }
        self.buckets
            .entry(key.to_string())
            .or_insert_with(|| {
                Arc::new(Mutex::new(Bucket {
                    tokens: capacity,
                    last: Instant::now(),
                }))
            })
            .clone()
    }

    /// Reserves `n` tokens of `key`'s `per_minute`. `Err(wait)` when they are
    /// not available (a request larger than the whole minute's budget waits
    /// a full minute and is rejected).
    pub fn reserve(&self, key: &str, per_minute: u64, n: u64) -> Result<RateState, Duration> {
        let capacity = per_minute as f64;
        let b = self.bucket(key, capacity);
        let mut b = b.lock();
        Self::refill(&mut b, capacity, Instant::now());
        let need = n as f64;
        if need > capacity {
            return Err(Duration::from_secs(60));
        }
        if b.tokens < need {
            let rate = capacity / 60.0;
            return Err(Duration::from_secs_f64((need - b.tokens) / rate));
        }
        b.tokens -= need;
        Ok(Self::state(&b, capacity))
    }

    /// Settles a reservation with the real count: refunds the difference or
    /// charges the excess (the bucket may go into debt).
    pub fn reconcile(&self, key: &str, per_minute: u64, reserved: u64, actual: u64) {
        let capacity = per_minute as f64;
        let b = self.bucket(key, capacity);
        let mut b = b.lock();
        Self::refill(&mut b, capacity, Instant::now());
        b.tokens = (b.tokens + reserved as f64 - actual as f64).min(capacity);
    }

    fn state(b: &Bucket, capacity: f64) -> RateState {
        let rate = capacity / 60.0;
        let remaining = b.tokens.max(0.0);
        RateState {
            limit: capacity as u32,
            remaining: remaining as u32,
            reset: Duration::from_secs_f64(((capacity - remaining) / rate).max(0.0)),
        }
    }
}

/// In-flight requests per key.
#[derive(Debug, Default)]
pub struct Concurrency {
    counts: DashMap<String, Arc<AtomicU32>>,
}

/// Holds one concurrency slot; released on drop.
#[derive(Debug)]
pub struct ConcurrencySlot(Arc<AtomicU32>);

impl Drop for ConcurrencySlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Concurrency {
    pub fn acquire(&self, key: &str, max: u32) -> Option<ConcurrencySlot> {
        let c = self
            .counts
            .entry(key.to_string())
            .or_insert_with(|| Arc::new(AtomicU32::new(0)))
            .clone();
        let prev = c.fetch_add(1, Ordering::AcqRel);
        if prev >= max {
            c.fetch_sub(1, Ordering::AcqRel);
            None
        } else {
            Some(ConcurrencySlot(c))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    #[test]
    fn exactly_n_requests_of_n_plus_k_then_refill() {
        let clock = FakeRelativeClock::default();
        let l = RequestLimiter::with_clock(clock.clone());
        let admitted = (0..13).filter(|_| l.check("k", 10).is_ok()).count();
        assert_eq!(admitted, 10);
        // Another key is independent.
        assert!(l.check("other", 10).is_ok());
        // One request replenishes every 6 s.
        let wait = l.check("k", 10).unwrap_err();
        assert!(
            wait <= Duration::from_secs(6) && wait > Duration::from_secs(5),
            "{wait:?}"
        );
        clock.advance(Duration::from_secs(6));
        let s = l.check("k", 10).unwrap();
        assert_eq!(s.remaining, 0);
        assert!(l.check("k", 10).is_err());
    }

    #[test]
    fn remaining_and_reset_reported() {
        let l = RequestLimiter::with_clock(FakeRelativeClock::default());
        let s = l.check("k", 100).unwrap();
        assert_eq!((s.limit, s.remaining), (100, 99));
        assert_eq!(s.reset, Duration::from_millis(600));
    }

    #[tokio::test(start_paused = true)]
    async fn token_bucket_reserves_refunds_and_refills() {
        let b = TokenBuckets::default();
        let s = b.reserve("k", 1000, 600).unwrap();
        assert_eq!(s.remaining, 400);
        assert!(b.reserve("k", 1000, 500).is_err());
        // The call used only 100 of its 600: 500 refunded.
        b.reconcile("k", 1000, 600, 100);
        assert_eq!(b.reserve("k", 1000, 900).unwrap().remaining, 0);
        // Refill: 1000/min = 16.67/s.
        let wait = b.reserve("k", 1000, 100).unwrap_err();
        assert!((wait.as_secs_f64() - 6.0).abs() < 0.01, "{wait:?}");
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(b.reserve("k", 1000, 100).is_ok());
        // Excess usage becomes debt.
        b.reconcile("k", 1000, 0, 500);
        assert!(b.reserve("k", 1000, 1).is_err());
        // A request larger than a whole minute can never fit.
        assert_eq!(
            b.reserve("x", 1000, 1001).unwrap_err(),
            Duration::from_secs(60)
        );
    }

    #[test]
    fn concurrency_cap() {
        let c = Concurrency::default();
        let a = c.acquire("k", 2).unwrap();
        let _b = c.acquire("k", 2).unwrap();
        assert!(c.acquire("k", 2).is_none());
        drop(a);
        assert!(c.acquire("k", 2).is_some());
    }
}
