//! Reconnect backoff: exponential with "equal jitter" (a random delay in
//! `[d/2, d]`), doubling from `base` up to `max`.

use rand::Rng;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max: max.max(base),
            current: base,
        }
    }

    /// The next delay (jittered); doubles the one after.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.current;
        self.current = (self.current * 2).min(self.max);
        let half = d / 2;
        let extra_ms = u64::try_from(half.as_millis()).unwrap_or(u64::MAX);
        half + Duration::from_millis(rand::rng().random_range(0..=extra_ms))
    }

    /// Back to `base` (after a healthy connection).
    pub fn reset(&mut self) {
        self.current = self.base;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_with_jitter_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut nominal = 100u64;
        for _ in 0..12 {
            let d = b.next_delay().as_millis() as u64;
            assert!(d >= nominal / 2 && d <= nominal, "{d} vs {nominal}");
            nominal = (nominal * 2).min(5000);
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
