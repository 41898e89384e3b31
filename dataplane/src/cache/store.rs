//! The store (bounded, TTL-checked) and request coalescing.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use moka::notification::RemovalCause;
use moka::policy::EvictionPolicy;
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::time::Instant;

use super::key::{CacheKey, RouteSignature};
use super::policy::{
    decide, Access, BypassReason, CacheControl, CachePolicy, CacheStatus, Decision,
};
use super::stream::{replay_events, StreamAssembler};
use super::{metric, metric_names};
use crate::formats::{ApiFormat, ChatRequest, ChatResponse, StreamEvent, Usage};

/// Default total byte cap of a [`ResponseCache`].
pub const DEFAULT_MAX_BYTES: u64 = 256 * 1024 * 1024;

/// Fixed per-entry overhead added to the serialized size (key, entry and
/// index bookkeeping, allocator slack).
pub const ENTRY_OVERHEAD_BYTES: u64 = 512;

/// Which target produced a stored answer (to price the cost a hit saves).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResponseOrigin {
    /// Provider name (`config::ProviderConfig::name`).
    pub provider: String,
    /// Upstream model (`config::Target::model`): the price-table key.
    pub model: String,
}

/// One stored answer.
#[derive(Debug)]
pub struct CachedResponse {
    /// The answer as the provider gave it (render with
    /// `formats::encode_response` or [`CachedResponse::replay_events`]).
    pub response: ChatResponse,
    pub origin: ResponseOrigin,
    inserted_at: Instant,
    ttl: Duration,
    weight: u64,
}

impl CachedResponse {
    fn new(response: ChatResponse, origin: ResponseOrigin, ttl: Duration) -> Self {
        let weight = estimate_weight(&response, &origin);
        CachedResponse {
            response,
            origin,
            inserted_at: Instant::now(),
            ttl,
            weight,
        }
    }

    /// The usage the original call was billed for (what a hit saves).
    pub fn usage(&self) -> Usage {
        self.response.usage
    }

    /// Time since the answer was produced.
    pub fn age(&self) -> Duration {
        Instant::now().saturating_duration_since(self.inserted_at)
    }

    pub fn inserted_at(&self) -> Instant {
        self.inserted_at
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Size estimate counted against the byte cap.
    pub fn weight_bytes(&self) -> u64 {
        self.weight
    }

    /// Canonical stream events replaying this answer (see
    /// [`super::replay_events`]).
    pub fn replay_events(&self) -> Vec<StreamEvent> {
        replay_events(&self.response)
    }

    /// Usable for a request accepting entries up to `max_age` old: younger
    /// than its own TTL and not older than `max_age`.
    fn is_fresh(&self, now: Instant, max_age: Duration) -> bool {
        let age = now.saturating_duration_since(self.inserted_at);
        age < self.ttl && age <= max_age
    }
}

/// Serialized size of the response plus fixed overhead.
fn estimate_weight(resp: &ChatResponse, origin: &ResponseOrigin) -> u64 {
    struct Count(u64);
    impl io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0 += buf.len() as u64;
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    // Serializing the IR cannot fail; if it did, the count so far is a floor.
    let _ = serde_json::to_writer(&mut c, resp);
    c.0 + (origin.provider.len() + origin.model.len()) as u64 + ENTRY_OVERHEAD_BYTES
}

/// State of an in-flight leader, watched by its followers.
#[derive(Clone, Debug)]
enum FlightState {
    Pending,
    Done(Arc<CachedResponse>),
    Abandoned,
}

struct Flight {
    id: u64,
    rx: watch::Receiver<FlightState>,
}

struct Inner {
    entries: moka::sync::Cache<CacheKey, Arc<CachedResponse>>,
    inflight: Mutex<HashMap<CacheKey, Flight>>,
    next_flight: AtomicU64,
    bytes: Arc<AtomicU64>,
    max_bytes: u64,
}

/// Entry lifetime for moka's own expiry (memory reclamation only; freshness
/// is decided on lookup with `tokio::time::Instant`).
struct EntryExpiry;

impl moka::Expiry<CacheKey, Arc<CachedResponse>> for EntryExpiry {
    fn expire_after_create(
        &self,
        _key: &CacheKey,
        value: &Arc<CachedResponse>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(value.ttl)
    }

    fn expire_after_update(
        &self,
        _key: &CacheKey,
        value: &Arc<CachedResponse>,
        _updated_at: std::time::Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// The exact-match response cache: a byte-bounded TinyLFU store (moka) of
/// answers keyed by [`CacheKey`], plus coalescing of identical in-flight
/// requests. Cheap to clone (shared).
#[derive(Clone)]
pub struct ResponseCache {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ResponseCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseCache")
            .field("max_bytes", &self.inner.max_bytes)
            .field("bytes", &self.bytes())
            .field("entries", &self.inner.entries.entry_count())
            .finish()
    }
}

impl Default for ResponseCache {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_BYTES)
    }
}

impl ResponseCache {
    /// A cache holding at most `max_bytes` (sum of entry weights).
    pub fn new(max_bytes: u64) -> Self {
        let bytes = Arc::new(AtomicU64::new(0));
        let listener_bytes = bytes.clone();
        let entries = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .eviction_policy(EvictionPolicy::tiny_lfu())
            .weigher(|_k: &CacheKey, v: &Arc<CachedResponse>| {
                u32::try_from(v.weight).unwrap_or(u32::MAX)
            })
            .expire_after(EntryExpiry)
            .eviction_listener(
                move |_k: Arc<CacheKey>, v: Arc<CachedResponse>, cause: RemovalCause| {
                    let w = u64::from(u32::try_from(v.weight).unwrap_or(u32::MAX));
                    let now = sub_saturating(&listener_bytes, w);
                    metrics::gauge!(metric_names::BYTES).set(now as f64);
                    let label = match cause {
                        RemovalCause::Size => "size",
                        RemovalCause::Expired => "expired",
                        RemovalCause::Explicit | RemovalCause::Replaced => return,
                    };
                    metrics::counter!(metric_names::EVICTIONS, "cause" => label).increment(1);
                },
            )
            .build();
        ResponseCache {
            inner: Arc::new(Inner {
                entries,
                inflight: Mutex::new(HashMap::new()),
                next_flight: AtomicU64::new(1),
                bytes,
                max_bytes,
            }),
        }
    }

    /// The total byte cap.
    pub fn max_bytes(&self) -> u64 {
        self.inner.max_bytes
    }

    /// Bytes held (sum of the weights of stored entries).
    pub fn bytes(&self) -> u64 {
        self.inner.bytes.load(Ordering::Relaxed)
    }

    /// Number of stored entries (approximate until pending maintenance ran).
    pub fn entry_count(&self) -> u64 {
        self.inner.entries.entry_count()
    }

    /// Number of keys with a leader in flight.
    pub fn in_flight(&self) -> usize {
        self.inner.inflight.lock().len()
    }

    /// Runs the store's pending maintenance (evictions, expiry) now.
    pub fn run_pending_tasks(&self) {
        self.inner.entries.run_pending_tasks();
    }

    /// Drops every stored entry (in-flight leaders are unaffected).
    pub fn clear(&self) {
        self.inner.entries.invalidate_all();
        self.inner.entries.run_pending_tasks();
    }

    /// The whole per-request entry point: decides with [`decide`] (a
    /// bypass is counted in `switchyard_cache_bypass_total`), computes the
    /// key (tenant-scoped) and, if the cache is to be used, runs
    /// [`ResponseCache::lookup_or_lead`].
    pub fn begin(
        &self,
        req: &ChatRequest,
        tenant: Option<&str>,
        route: &RouteSignature,
        policy: Option<&CachePolicy>,
        cc: &CacheControl,
    ) -> Lookup {
        match decide(policy, req, cc) {
            Decision::Disabled => Lookup::Disabled,
            Decision::Bypass(reason) => {
                metric::bypass(reason);
                Lookup::Bypass(reason)
            }
            Decision::Use(access) => {
                let key = CacheKey::compute(tenant, route, req);
                self.lookup_or_lead(key, &access)
            }
        }
    }

    /// Looks `key` up and coordinates identical requests:
    /// * a fresh entry (younger than its TTL and `access.max_age`) → `Hit`;
    /// * another request is already fetching this key → `Follow`: wait for
    ///   its answer with [`FollowerWait::wait`];
    /// * otherwise → `Lead`: this request calls upstream and finishes with
    ///   [`LeaderGuard::complete`] (stores the answer, wakes followers) or
    ///   drops the guard (failure: followers wake and go upstream).
    ///
    /// `access.lookup == false` (refresh) → `Lead` with a guard that only
    /// stores (no lookup, no coalescing). Never returns `Disabled`/`Bypass`.
    pub fn lookup_or_lead(&self, key: CacheKey, access: &Access) -> Lookup {
        if !access.lookup {
            metric::bypass(BypassReason::NoCache);
            return Lookup::Lead(LeaderGuard::detached(
                self.inner.clone(),
                key,
                access,
                CacheStatus::Bypass,
            ));
        }
        if let Some(entry) = self.inner.fresh(&key, access.max_age) {
            metric::hit();
            return Lookup::Hit(entry);
        }
        let mut map = self.inner.inflight.lock();
        if let Some(f) = map.get(&key) {
            metric::miss();
            return Lookup::Follow(FollowerWait {
                inner: self.inner.clone(),
                key,
                rx: f.rx.clone(),
                access: access.clone(),
            });
        }
        // A leader stores before it leaves the map: re-check under the lock
        // so a request arriving just after it finished does not call
        // upstream again.
        if let Some(entry) = self.inner.fresh(&key, access.max_age) {
            metric::hit();
            return Lookup::Hit(entry);
        }
        metric::miss();
        Lookup::Lead(self.inner.register(&mut map, key, access))
    }

    /// A fresh entry without coalescing or metrics (e.g. for admin/debug).
    pub fn peek(&self, key: &CacheKey, max_age: Duration) -> Option<Arc<CachedResponse>> {
        self.inner.fresh(key, max_age)
    }

    /// Stores `response` directly (no coalescing), e.g. for warming; same
    /// size rules as [`LeaderGuard::complete`]. Returns whether it was stored.
    pub fn insert(
        &self,
        key: CacheKey,
        response: ChatResponse,
        origin: ResponseOrigin,
        access: &Access,
    ) -> bool {
        let entry = Arc::new(CachedResponse::new(response, origin, access.ttl));
        self.inner.store(key, entry, access.max_entry_bytes)
    }
}

fn sub_saturating(a: &AtomicU64, v: u64) -> u64 {
    let mut cur = a.load(Ordering::Relaxed);
    loop {
        let next = cur.saturating_sub(v);
        match a.compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(actual) => cur = actual,
        }
    }
}

impl Inner {
    /// A stored entry that is fresh for `max_age`. Expired entries are misses
    /// whatever moka's own timer says (moka reclaims them later).
    fn fresh(&self, key: &CacheKey, max_age: Duration) -> Option<Arc<CachedResponse>> {
        let entry = self.entries.get(key)?;
        entry.is_fresh(Instant::now(), max_age).then_some(entry)
    }

    fn register(
        self: &Arc<Self>,
        map: &mut HashMap<CacheKey, Flight>,
        key: CacheKey,
        access: &Access,
    ) -> LeaderGuard {
        let id = self.next_flight.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = watch::channel(FlightState::Pending);
        map.insert(key, Flight { id, rx });
        LeaderGuard {
            inner: self.clone(),
            key,
            flight: Some((id, tx)),
            store: true,
            ttl: access.ttl,
            max_entry_bytes: access.max_entry_bytes,
            status: CacheStatus::Miss,
        }
    }

    /// Stores an entry if it fits the per-entry and total caps and has a
    /// lifetime. Returns whether it was stored.
    fn store(&self, key: CacheKey, entry: Arc<CachedResponse>, max_entry_bytes: u64) -> bool {
        if entry.ttl.is_zero() {
            return false;
        }
        if entry.weight > max_entry_bytes
            || entry.weight > self.max_bytes
            || entry.weight > u64::from(u32::MAX)
        {
            metric::not_stored("too_large");
            return false;
        }
        let w = entry.weight;
        self.bytes.fetch_add(w, Ordering::Relaxed);
        self.entries.insert(key, entry);
        // Apply evictions now so the byte cap holds at every moment that
        // matters (an insert follows an upstream call: this is off the hot
        // path) and the gauge is exact.
        self.entries.run_pending_tasks();
        metrics::gauge!(metric_names::BYTES).set(self.bytes.load(Ordering::Relaxed) as f64);
        metric::stored();
        true
    }

    /// Removes flight `id` of `key` (if still the registered one) and
    /// publishes its outcome.
    fn finish_flight(
        &self,
        key: &CacheKey,
        id: u64,
        tx: &watch::Sender<FlightState>,
        state: FlightState,
    ) {
        {
            let mut map = self.inflight.lock();
            if map.get(key).is_some_and(|f| f.id == id) {
                map.remove(key);
            }
        }
        tx.send_replace(state);
    }
}

/// Result of a lookup.
#[derive(Debug)]
#[must_use = "a Lead must be completed or dropped, a Follow waited on"]
pub enum Lookup {
    /// The route has no cache: proceed as usual, no `x-switchyard-cache`.
    Disabled,
    /// The cache is not used for this request: proceed, header `BYPASS`.
    Bypass(BypassReason),
    /// Serve this stored answer; header `HIT`.
    Hit(Arc<CachedResponse>),
    /// Call upstream; finish with [`LeaderGuard::complete`] on success.
    /// Header: [`LeaderGuard::status`].
    Lead(LeaderGuard),
    /// An identical request is in flight: wait for it.
    Follow(FollowerWait),
}

impl Lookup {
    /// The `x-switchyard-cache` value this outcome implies (`None` =
    /// no header). A `Follow` is provisional: use the outcome of the wait.
    pub fn status(&self) -> Option<CacheStatus> {
        match self {
            Lookup::Disabled => None,
            Lookup::Bypass(_) => Some(CacheStatus::Bypass),
            Lookup::Hit(_) => Some(CacheStatus::Hit),
            Lookup::Lead(g) => Some(g.status()),
            Lookup::Follow(_) => Some(CacheStatus::Miss),
        }
    }
}

/// The right (and duty) to fetch an answer for a key. Followers wait on it.
///
/// Call [`LeaderGuard::complete`] with the successful answer; dropping the
/// guard instead (error, timeout, client gone, panic, task cancelled) wakes
/// every follower at once, and they fall back to upstream themselves.
#[must_use = "complete the guard with the answer, or drop it on failure"]
pub struct LeaderGuard {
    inner: Arc<Inner>,
    key: CacheKey,
    /// `None` for a detached guard (no followers can wait on it).
    flight: Option<(u64, watch::Sender<FlightState>)>,
    store: bool,
    ttl: Duration,
    max_entry_bytes: u64,
    status: CacheStatus,
}

impl std::fmt::Debug for LeaderGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderGuard")
            .field("key", &self.key)
            .field("coalescing", &self.flight.is_some())
            .field("status", &self.status)
            .finish()
    }
}

impl LeaderGuard {
    /// A guard nobody follows: stores on completion (refresh, a follower
    /// that gave up waiting, or one that lost a takeover race).
    fn detached(inner: Arc<Inner>, key: CacheKey, access: &Access, status: CacheStatus) -> Self {
        LeaderGuard {
            inner,
            key,
            flight: None,
            store: true,
            ttl: access.ttl,
            max_entry_bytes: access.max_entry_bytes,
            status,
        }
    }

    /// The `x-switchyard-cache` value for this request: `MISS`, or `BYPASS`
    /// for a refresh (`no-cache`).
    pub fn status(&self) -> CacheStatus {
        self.status
    }

    pub fn key(&self) -> CacheKey {
        self.key
    }

    /// Whether other requests may be waiting on this one.
    pub fn is_coalescing(&self) -> bool {
        self.flight.is_some()
    }

    /// The route's per-entry cap.
    pub fn max_entry_bytes(&self) -> u64 {
        self.max_entry_bytes
    }

    /// An assembler for a streamed answer from a provider speaking `source`,
    /// bounded by the entry cap.
    pub fn stream_assembler(&self, source: ApiFormat) -> StreamAssembler {
        StreamAssembler::new(source, self.max_entry_bytes)
    }

    /// Publishes a complete, successful answer: stores it (if it fits the
    /// entry cap) and hands it to every follower. Returns the shared entry
    /// (render the leader's own response from `entry.response`).
    pub fn complete(
        mut self,
        response: ChatResponse,
        origin: ResponseOrigin,
    ) -> Arc<CachedResponse> {
        let entry = Arc::new(CachedResponse::new(response, origin, self.ttl));
        if self.store {
            self.inner
                .store(self.key, entry.clone(), self.max_entry_bytes);
        }
        if let Some((id, tx)) = self.flight.take() {
            self.inner
                .finish_flight(&self.key, id, &tx, FlightState::Done(entry.clone()));
        }
        entry
    }

    /// Gives up (same as dropping the guard): followers go upstream.
    pub fn abandon(self) {}
}

impl Drop for LeaderGuard {
    fn drop(&mut self) {
        if let Some((id, tx)) = self.flight.take() {
            self.inner
                .finish_flight(&self.key, id, &tx, FlightState::Abandoned);
        }
    }
}

/// A request waiting for an identical in-flight one.
#[must_use = "wait for the leader"]
pub struct FollowerWait {
    inner: Arc<Inner>,
    key: CacheKey,
    rx: watch::Receiver<FlightState>,
    access: Access,
}

impl std::fmt::Debug for FollowerWait {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FollowerWait")
            .field("key", &self.key)
            .finish()
    }
}

/// How a follower's wait ended.
#[derive(Debug)]
pub enum FollowOutcome {
    /// The leader's answer (counted in `switchyard_cache_coalesced_total`);
    /// serve it like a hit.
    Hit(Arc<CachedResponse>),
    /// Go upstream yourself and `complete` the guard on success. Either the
    /// leader failed and this request took over (followers arriving later
    /// wait on it), or the wait timed out / another follower took over
    /// first (a detached guard: nobody waits on it, it only stores).
    /// Header: `MISS`.
    Lead(LeaderGuard),
}

impl FollowerWait {
    /// Waits at most `timeout` for the leader. Returns at once when the
    /// leader completes (its answer) or gives up (this request leads).
    pub async fn wait(self, timeout: Duration) -> FollowOutcome {
        let mut rx = self.rx.clone();
        let waited =
            tokio::time::timeout(timeout, rx.wait_for(|s| !matches!(s, FlightState::Pending)))
                .await;
        match waited {
            Ok(Ok(state)) => {
                if let FlightState::Done(entry) = &*state {
                    metric::coalesced();
                    return FollowOutcome::Hit(entry.clone());
                }
            }
            // The sender is gone: the leader was dropped.
            Ok(Err(_)) => {}
            Err(_elapsed) => {
                metric::bypass(BypassReason::CoalesceTimeout);
                return FollowOutcome::Lead(LeaderGuard::detached(
                    self.inner.clone(),
                    self.key,
                    &self.access,
                    CacheStatus::Miss,
                ));
            }
        }
        self.take_over()
    }

    /// The leader gave up. The first follower to get here leads a new
    /// flight; the others go upstream on their own rather than queueing
    /// behind another attempt that may fail the same way.
    fn take_over(self) -> FollowOutcome {
        let inner = &self.inner;
        let mut map = inner.inflight.lock();
        if let Some(entry) = inner.fresh(&self.key, self.access.max_age) {
            metric::coalesced();
            return FollowOutcome::Hit(entry);
        }
        if map.contains_key(&self.key) {
            return FollowOutcome::Lead(LeaderGuard::detached(
                inner.clone(),
                self.key,
                &self.access,
                CacheStatus::Miss,
            ));
        }
        FollowOutcome::Lead(inner.register(&mut map, self.key, &self.access))
    }
}
