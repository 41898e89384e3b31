//! Spike protection: a bounded queue per target. At most `max_in_flight`
//! requests are in flight to a target; up to `max_queue` more may wait for a
//! slot for at most `queue_timeout`. Beyond that the target is skipped (the
//! next target is tried), and when every target is full the client gets 429
//! with `Retry-After` — never unbounded latency or memory.

use dashmap::DashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Queue limits of one target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueSettings {
    pub max_in_flight: usize,
    pub max_queue: usize,
    pub queue_timeout: Duration,
}

impl Default for QueueSettings {
    fn default() -> Self {
        Self {
            max_in_flight: 1024,
            max_queue: 100,
            queue_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug)]
struct TargetQueue {
    settings: QueueSettings,
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
}

/// Why no slot was granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueFull {
    /// `max_queue` requests are already waiting.
    QueueFull,
    /// Waited `queue_timeout` without getting a slot.
    Timeout,
}

impl QueueFull {
    pub fn label(self) -> &'static str {
        match self {
            Self::QueueFull => "queue_full",
            Self::Timeout => "queue_timeout",
        }
    }
}

/// A held in-flight slot; released on drop.
pub type Slot = OwnedSemaphorePermit;

/// Queues of every target on this edge.
#[derive(Debug, Default)]
pub struct Queues {
    targets: DashMap<String, Arc<TargetQueue>>,
}

impl Queues {
    fn queue(&self, target: &str, settings: QueueSettings) -> Arc<TargetQueue> {
        if let Some(q) = self.targets.get(target) {
            if q.settings == settings {
                return q.clone();
            }
        }
        // New target or changed limits (config update): a fresh queue; slots
        // held on the old one drain naturally.
        let q = Arc::new(TargetQueue {
            settings,
            slots: Arc::new(Semaphore::new(settings.max_in_flight.max(1))),
            waiting: AtomicUsize::new(0),
        });
        self.targets.insert(target.to_string(), q.clone());
        q
    }

    /// Takes an in-flight slot for `target`, waiting (bounded) if needed.
    pub async fn acquire(&self, target: &str, settings: QueueSettings) -> Result<Slot, QueueFull> {
        let q = self.queue(target, settings);
        if let Ok(p) = q.slots.clone().try_acquire_owned() {
            return Ok(p);
        }
        if q.waiting.fetch_add(1, Ordering::AcqRel) >= settings.max_queue {
            q.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(QueueFull::QueueFull);
        }
        let r = tokio::time::timeout(settings.queue_timeout, q.slots.clone().acquire_owned()).await;
        q.waiting.fetch_sub(1, Ordering::AcqRel);
        match r {
            Ok(Ok(p)) => Ok(p),
            _ => Err(QueueFull::Timeout),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn bounded_in_flight_queue_and_wait() {
        let qs = Arc::new(Queues::default());
        let s = QueueSettings {
            max_in_flight: 2,
            max_queue: 1,
            queue_timeout: Duration::from_secs(5),
        };
        let a = qs.acquire("t", s).await.unwrap();
        let _b = qs.acquire("t", s).await.unwrap();
        // Third waits in the queue; a fourth finds the queue full.
        let qs2 = qs.clone();
        let waiter = tokio::spawn(async move { qs2.acquire("t", s).await.map(|_| ()) });
        tokio::task::yield_now().await;
        assert_eq!(qs.acquire("t", s).await.unwrap_err(), QueueFull::QueueFull);
        // A slot frees up: the waiter gets it.
        drop(a);
        assert_eq!(waiter.await.unwrap(), Ok(()));
        // With all slots held, a waiter times out after queue_timeout.
        let _c = qs.acquire("t", s).await.unwrap();
        let started = tokio::time::Instant::now();
        assert_eq!(qs.acquire("t", s).await.unwrap_err(), QueueFull::Timeout);
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        // Other targets are independent.
        assert!(qs.acquire("u", s).await.is_ok());
    }
}
