//! The gRPC services and the state they share: the store, a cache of decoded
//! versions (so edges and reads are served from memory, also while the store
//! is unreachable), the write path and the registry of edges.

pub mod config;
pub mod edge;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use switchyard_proto::config::Config;
use switchyard_proto::control::{EdgeStatus, StoredVersion, WriteOptions, WriteResult};
use tokio::sync::watch;
use tonic::Status;

use crate::store::{Store, StoreError};
use crate::versioning::{self, EnvelopeMeta};

pub use config::ConfigApi;
pub use edge::EdgeApi;

/// Decoded versions kept in memory.
const CACHE_VERSIONS: usize = 64;
/// Attempts of a write that is not pinned to an expected version when other
/// replicas keep committing in between.
const WRITE_ATTEMPTS: usize = 5;

/// A version with its decoded document.
#[derive(Debug)]
pub struct Loaded {
    pub env: StoredVersion,
    pub config: Config,
}

impl Loaded {
    fn empty() -> Arc<Self> {
        Arc::new(Self {
            env: StoredVersion::default(),
            config: Config::default(),
        })
    }
}

#[derive(Debug, Default)]
struct EdgeEntry {
    status: EdgeStatus,
    watchers: usize,
}

/// Serializes one replica's updates of one budget window.
type BudgetLock = Arc<tokio::sync::Mutex<()>>;

/// State shared by both services.
pub struct State {
    store: Arc<dyn Store>,
    cache: parking_lot::Mutex<BTreeMap<u64, Arc<Loaded>>>,
    edges: parking_lot::Mutex<BTreeMap<String, EdgeEntry>>,
    /// Serializes this replica's writes (other replicas are handled by CAS).
    write_lock: tokio::sync::Mutex<()>,
    stop: watch::Receiver<bool>,
    /// Global budget allocation settings.
    budget_policy: crate::budgets::Policy,
    /// One lock per budget window: this replica's updates of an allocation
    /// queue here, so compare-and-swap only races other replicas.
    budget_locks: parking_lot::Mutex<BTreeMap<(String, i64), BudgetLock>>,
}

/// Maps store errors onto gRPC codes.
pub fn store_status(e: StoreError) -> Status {
    match e {
        StoreError::Unavailable(m) => Status::unavailable(m),
        StoreError::Conflict { expected, current } => Status::aborted(format!(
            "version conflict: expected version {expected} but the current version is {current}"
        )),
        StoreError::Corrupt(m) => Status::data_loss(m),
        StoreError::Other(m) => Status::internal(m),
    }
}

/// Builds the next document from the current one.
pub type ChangeFn<'a> = Box<dyn Fn(&Config) -> Result<Config, Status> + Send + Sync + 'a>;

/// What a write does to the current document.
pub struct Mutation<'a> {
    /// "apply", "rollback", ...
    pub operation: &'static str,
    /// Non-zero for rollbacks.
    pub rollback_of: u64,
    /// Builds the next document from the current one.
    pub change: ChangeFn<'a>,
}

impl State {
    /// Creates the state and starts prefetching every new head version into
    /// the cache (until `stop`).
    pub fn new(store: Arc<dyn Store>, stop: watch::Receiver<bool>) -> Arc<Self> {
        Self::with_policy(store, stop, crate::budgets::Policy::default())
    }

    /// [`State::new`] with global budget settings.
    pub fn with_policy(
        store: Arc<dyn Store>,
        stop: watch::Receiver<bool>,
        budget_policy: crate::budgets::Policy,
    ) -> Arc<Self> {
        let state = Arc::new(Self {
            store,
            cache: parking_lot::Mutex::new(BTreeMap::new()),
            edges: parking_lot::Mutex::new(BTreeMap::new()),
            write_lock: tokio::sync::Mutex::new(()),
            stop,
            budget_policy,
            budget_locks: parking_lot::Mutex::new(BTreeMap::new()),
        });
        tokio::spawn(prefetch(
            Arc::downgrade(&state),
            state.store.head(),
            state.stop.clone(),
        ));
        state
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Newest version this replica knows of (0 if none or not yet known).
    pub fn head_version(&self) -> u64 {
        (*self.store.head().borrow()).unwrap_or(0)
    }

    fn remember(&self, env: StoredVersion) -> Result<Arc<Loaded>, Status> {
        let config =
            versioning::decode_config(&env).map_err(|e| Status::data_loss(e.to_string()))?;
        let loaded = Arc::new(Loaded { env, config });
        let mut cache = self.cache.lock();
        cache.insert(loaded.env.version, loaded.clone());
        while cache.len() > CACHE_VERSIONS {
            cache.pop_first();
        }
        Ok(loaded)
    }

    fn cached(&self, version: u64) -> Option<Arc<Loaded>> {
        self.cache.lock().get(&version).cloned()
    }

    /// Version `version` (> 0), from the cache or the store.
    pub async fn load(&self, version: u64) -> Result<Option<Arc<Loaded>>, Status> {
        if let Some(l) = self.cached(version) {
            return Ok(Some(l));
        }
        match self.store.get(version).await.map_err(store_status)? {
            Some(env) => self.remember(env).map(Some),
            None => Ok(None),
        }
    }

    /// The current version read from the store (authoritative).
    async fn current_fresh(&self) -> Result<Arc<Loaded>, StoreError> {
        match self.store.current().await? {
            None => Ok(Loaded::empty()),
            Some(env) => match self.cached(env.version) {
                Some(l) => Ok(l),
                None => self
                    .remember(env)
                    .map_err(|s| StoreError::Corrupt(s.message().to_string())),
            },
        }
    }

    /// Global budget allocation settings.
    pub fn budget_policy(&self) -> &crate::budgets::Policy {
        &self.budget_policy
    }

    /// The lock serializing this replica's updates of one budget window.
    pub fn budget_lock(&self, budget: &str, window_start: i64) -> BudgetLock {
        let mut locks = self.budget_locks.lock();
        if locks.len() > 4096 {
            // Forget idle locks (windows roll over; budgets get deleted).
            locks.retain(|_, l| Arc::strong_count(l) > 1);
        }
        locks
            .entry((budget.to_string(), window_start))
            .or_default()
            .clone()
    }

    /// The newest version this replica knows of, from memory when it can
    /// (the cache is prefetched on every head change); `None` before any.
    pub async fn head_config(&self) -> Result<Option<Arc<Loaded>>, Status> {
        match self.head_version() {
            0 => Ok(None),
            n => self.load(n).await,
        }
    }

    /// The current version; when the store is unreachable, the newest version
    /// this replica has cached (a stale read rather than none).
    pub async fn current_for_read(&self) -> Result<Arc<Loaded>, Status> {
        match self.current_fresh().await {
            Ok(l) => Ok(l),
            Err(StoreError::Unavailable(m)) => {
                let newest = self.cache.lock().last_key_value().map(|(_, l)| l.clone());
                match newest {
                    Some(l) if l.env.version >= self.head_version() => {
                        tracing::debug!(version = l.env.version, error = %m, "store unavailable; serving cached version");
                        Ok(l)
                    }
                    _ => Err(Status::unavailable(m)),
                }
            }
            Err(e) => Err(store_status(e)),
        }
    }

    /// `version` (0 = current) or NOT_FOUND.
    pub async fn resolve(&self, version: u64) -> Result<Arc<Loaded>, Status> {
        if version == 0 {
            return self.current_for_read().await;
        }
        self.load(version)
            .await?
            .ok_or_else(|| Status::not_found(format!("version {version} does not exist")))
    }

    /// The write path shared by every mutating RPC: read current, check the
    /// expected version, build, normalize and validate the next document,
    /// diff, and commit version N+1 with compare-and-swap.
    pub async fn write(
        &self,
        opts: Option<WriteOptions>,
        m: Mutation<'_>,
    ) -> Result<WriteResult, Status> {
        let opts = opts.unwrap_or_default();
        let _serial = self.write_lock.lock().await;
        for _ in 0..WRITE_ATTEMPTS {
            let cur = self.current_fresh().await.map_err(store_status)?;
            let base = cur.env.version;
            if let Some(expected) = opts.expected_version {
                if expected != base {
                    return Err(Status::aborted(format!(
                        "version conflict: expected version {expected} but the current version is {base}"
                    )));
                }
            }
            let mut next = (m.change)(&cur.config)?;
            if let Err(errors) = versioning::check(&mut next) {
                return Err(Status::invalid_argument(format!(
                    "invalid config: {}",
                    versioning::describe_errors(&errors)
                )));
            }
            let diff = versioning::diff(&cur.config, &next);
            let mut result = WriteResult {
                version: base,
                previous_version: base,
                changed: !diff.is_empty(),
                dry_run: opts.dry_run,
                summary: diff.summary.clone(),
                changes: diff.entries,
            };
            if !result.changed {
                return Ok(result);
            }
            result.version = base + 1;
            if opts.dry_run {
                return Ok(result);
            }
            let summary = if m.rollback_of > 0 {
                format!("rollback to {}: {}", m.rollback_of, diff.summary)
            } else {
                diff.summary
            };
            let env = versioning::envelope(
                base + 1,
                &next,
                EnvelopeMeta {
                    author: if opts.author.is_empty() {
                        "unknown".into()
                    } else {
                        opts.author.clone()
                    },
                    comment: opts.comment.clone(),
                    summary: summary.clone(),
                    rollback_of: m.rollback_of,
                    operation: m.operation.into(),
                },
            );
            match self.store.commit(base, &env).await {
                Ok(()) => {
                    tracing::info!(version = env.version, operation = m.operation, author = %env.author, %summary, "committed");
                    self.cache
                        .lock()
                        .insert(env.version, Arc::new(Loaded { env, config: next }));
                    result.summary = summary;
                    return Ok(result);
                }
                Err(StoreError::Conflict { .. }) if opts.expected_version.is_none() => {
                    tracing::info!(base, "concurrent commit by another replica; retrying");
                    continue;
                }
                Err(e) => return Err(store_status(e)),
            }
        }
        Err(Status::aborted("too many concurrent writers; retry"))
    }

    fn edge_update(&self, node_id: &str, region: &str, f: impl FnOnce(&mut EdgeEntry)) {
        let mut edges = self.edges.lock();
        let e = edges.entry(node_id.to_string()).or_default();
        e.status.node_id = node_id.to_string();
        if !region.is_empty() {
            e.status.region = region.to_string();
        }
        e.status.last_seen_unix_ms = versioning::now_unix_ms();
        f(e);
        e.status.connected = e.watchers > 0;
    }

    /// Edges known to this replica, by node id.
    pub fn edges(&self) -> Vec<EdgeStatus> {
        self.edges
            .lock()
            .values()
            .map(|e| e.status.clone())
            .collect()
    }

    /// Stop signal (true once the server shuts down).
    pub fn stop(&self) -> watch::Receiver<bool> {
        self.stop.clone()
    }
}

/// Loads every new head version into the cache, so the current config can
/// still be served if the store becomes unreachable right after a commit by
/// another replica.
async fn prefetch(
    state: std::sync::Weak<State>,
    mut head: crate::store::Head,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let n = (*head.borrow_and_update()).unwrap_or(0);
        if n > 0 {
            let Some(s) = state.upgrade() else { return };
            // Bounded retries; a later head change tries again.
            for attempt in 0..5u32 {
                match s.load(n).await {
                    Ok(_) => break,
                    Err(e) => {
                        tracing::debug!(version = n, error = %e.message(), "prefetch failed");
                        tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt + 1)))
                            .await;
                    }
                }
            }
        }
        tokio::select! {
            r = head.changed() => if r.is_err() { return },
            r = stop.changed() => if r.is_err() || *stop.borrow() { return },
        }
    }
}
