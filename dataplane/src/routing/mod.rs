//! Routing: which target serves a request, and what happens when it fails.
//!
//! - [`health`]: active probe results and passive outlier detection.
//! - [`retry`]: backoff with jitter and the retry budget.
//! - [`regions`]: home-region preference and candidate ordering.
//! - [`attempts`]: the attempt loop — per-attempt timeouts, retries on the
//!   same target, then the next target and tier — run entirely before the
//!   first byte goes to the client.

pub mod attempts;
pub mod health;
pub mod probes;
pub mod queue;
pub mod regions;
pub mod retry;

pub use attempts::{AttemptRecord, OpenStream, Routed, Success};
pub use health::{HealthRegistry, OutlierSettings};
pub use retry::RetryBudget;

/// Routing state shared by all requests on an edge.
#[derive(Debug)]
pub struct Router {
    pub health: HealthRegistry,
    pub budget: RetryBudget,
    pub queues: queue::Queues,
    /// This edge's home region; targets there are preferred.
    pub home_region: String,
}

impl Router {
    pub fn new(home_region: impl Into<String>, outlier: OutlierSettings) -> Self {
        Self {
            health: HealthRegistry::new(outlier),
            budget: RetryBudget::default(),
            queues: queue::Queues::default(),
            home_region: home_region.into(),
        }
    }
}
