//! Exact-match response cache (see `docs/cache.md`).
//!
//! Repeated identical calls are answered from memory, in the caller's API
//! shape, as JSON or as a replayed SSE stream; identical calls in flight at
//! the same time share one upstream call.
//!
//! * `key` — [`CacheKey`] = SHA-256 of `[tenant, route signature, canonical
//!   request]`: insensitive to JSON key order and whitespace, sensitive to
//!   everything that changes the answer, isolated per team;
//! * `policy` — route [`CachePolicy`] × request sampling × client
//!   [`CacheControl`] → [`Decision`];
//! * `store` — [`ResponseCache`]: byte-bounded TinyLFU store with TTLs
//!   checked on `tokio::time::Instant`, and leader/follower coalescing
//!   ([`Lookup`], [`LeaderGuard`], [`FollowerWait`]);
//! * `stream` — [`replay_events`] (stored answer → canonical stream events)
//!   and [`StreamAssembler`] (streamed answer → storable response).
//!
//! The module depends on nothing of the edge but [`crate::formats`]; the
//! gateway maps `config::CacheSettings` to [`CachePolicy`] and a route to a
//! [`RouteSignature`].

pub mod key;
pub mod policy;
pub mod store;
pub mod stream;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;

pub use key::{CacheKey, RouteSignature};
pub use policy::{
    decide, is_nondeterministic, Access, BypassReason, CacheControl, CachePolicy, CacheStatus,
    Decision, CACHE_STATUS_HEADER,
};
pub use store::{
    CachedResponse, FollowOutcome, FollowerWait, LeaderGuard, Lookup, ResponseCache,
    ResponseOrigin, DEFAULT_MAX_BYTES, ENTRY_OVERHEAD_BYTES,
};
pub use stream::{replay_events, AssembleRefusal, StreamAssembler, REPLAY_CHUNK_BYTES};

/// Metric names (Prometheus).
pub mod metric_names {
    /// Requests served from a stored entry.
    pub const HITS: &str = "switchyard_cache_hits_total";
    /// Requests that looked up and found no fresh entry (leaders and
    /// followers alike).
    pub const MISSES: &str = "switchyard_cache_misses_total";
    /// Requests that did not read the cache, by `reason` (`no_store`,
    /// `nondeterministic`, `no_cache`, `coalesce_timeout`).
    pub const BYPASS: &str = "switchyard_cache_bypass_total";
    /// Followers served by a leader's in-flight answer.
    pub const COALESCED: &str = "switchyard_cache_coalesced_total";
    /// Entries removed by the store, by `cause` (`size`: byte-cap eviction
    /// or admission refused; `expired`: TTL).
    pub const EVICTIONS: &str = "switchyard_cache_evictions_total";
    /// Bytes held (sum of entry weights).
    pub const BYTES: &str = "switchyard_cache_bytes";
    /// Answers written to the store.
    pub const STORES: &str = "switchyard_cache_stores_total";
    /// Answers not stored, by `reason` (`too_large`; the gateway may count
    /// assembler refusals here too via [`super::record_not_stored`]).
    pub const NOT_STORED: &str = "switchyard_cache_not_stored_total";
}

/// Registers the cache metrics' help texts (call once after the recorder is
/// installed, e.g. from `telemetry::metrics::install`).
pub fn describe_metrics() {
    use metric_names as n;
    use metrics::{describe_counter, describe_gauge, Unit};
    describe_counter!(n::HITS, "Requests served from a stored cache entry.");
    describe_counter!(
        n::MISSES,
        "Cache lookups that found no fresh entry (leaders and coalesced followers)."
    );
    describe_counter!(
        n::BYPASS,
        "Requests that did not read the cache, by reason (no_store, nondeterministic, no_cache, coalesce_timeout)."
    );
    describe_counter!(
        n::COALESCED,
        "Requests served by an identical request's in-flight upstream call."
    );
    describe_counter!(
        n::EVICTIONS,
        "Cache entries removed by the store, by cause (size, expired)."
    );
    describe_gauge!(n::BYTES, Unit::Bytes, "Bytes held by the response cache.");
    describe_counter!(n::STORES, "Answers written to the response cache.");
    describe_counter!(
        n::NOT_STORED,
        "Complete answers not written to the response cache, by reason."
    );
}

/// Counts an answer that was not stored (e.g. a streamed miss the
/// [`StreamAssembler`] refused: `AssembleRefusal::as_str()`).
pub fn record_not_stored(reason: &'static str) {
    metric::not_stored(reason);
}

mod metric {
    use super::metric_names as n;
    use super::BypassReason;

    pub(super) fn hit() {
        metrics::counter!(n::HITS).increment(1);
    }

    pub(super) fn miss() {
        metrics::counter!(n::MISSES).increment(1);
    }

    pub(super) fn bypass(reason: BypassReason) {
        metrics::counter!(n::BYPASS, "reason" => reason.as_str()).increment(1);
    }

    pub(super) fn coalesced() {
        metrics::counter!(n::COALESCED).increment(1);
    }

    pub(super) fn stored() {
        metrics::counter!(n::STORES).increment(1);
    }

    pub(super) fn not_stored(reason: &'static str) {
        metrics::counter!(n::NOT_STORED, "reason" => reason).increment(1);
    }
}
