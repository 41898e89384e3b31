//! Where versions live: a [`Store`] keeps the dense, immutable sequence of
//! [`StoredVersion`] envelopes, commits new ones with compare-and-swap, and
//! publishes the newest committed version number (its "head") to watchers —
//! including versions committed by other control-plane replicas.
//!
//! Two implementations: [`etcd::EtcdStore`] (production, several replicas)
//! and [`embedded::EmbeddedStore`] (a data directory, single replica).

pub mod embedded;
pub mod etcd;

use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use switchyard_proto::control::{BudgetAllocation, StoredVersion, UsageReport};
use tokio::sync::watch;

/// Store failures, mapped onto gRPC codes by the service.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The backend cannot be reached (or did not answer within the timeout).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Compare-and-swap failed: the current version is no longer the expected one.
    #[error("version conflict: expected current version {expected}, found {current}")]
    Conflict { expected: u64, current: u64 },
    /// Stored data could not be decoded or is inconsistent.
    #[error("store data corrupt: {0}")]
    Corrupt(String),
    /// Anything else (local I/O errors, bad arguments).
    #[error("store error: {0}")]
    Other(String),
}

/// The newest committed version number this replica knows of. `None` until the
/// store has been read once; `Some(0)` when no version exists yet.
pub type Head = watch::Receiver<Option<u64>>;

/// Storage of config versions and usage reports.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// The current (newest) version read from the backend, `None` if none
    /// was ever committed.
    async fn current(&self) -> Result<Option<StoredVersion>, StoreError>;

    /// Version `version`, `None` if it does not exist.
    async fn get(&self, version: u64) -> Result<Option<StoredVersion>, StoreError>;

    /// Commits `next` (whose `version` must be `expected + 1`) if and only
    /// if the current version is still `expected` (0: the store is empty).
    async fn commit(&self, expected: u64, next: &StoredVersion) -> Result<(), StoreError>;

    /// Up to `limit` versions strictly below `before` (0: no bound), newest
    /// first.
    async fn history(&self, before: u64, limit: usize) -> Result<Vec<StoredVersion>, StoreError>;

    /// Newest committed version, updated as this or any other replica commits.
    fn head(&self) -> Head;

    /// Persists a usage batch unless its seq is not above the edge's highest
    /// persisted seq (numbered records at or below it are left out, see
    /// [`new_records`]); returns the edge's highest persisted seq afterwards.
    /// A report without records is never stored (it only reads the seq).
    async fn record_usage(&self, report: &UsageReport) -> Result<u64, StoreError>;

    /// Calls `visit(edge id, batch)` for every persisted usage batch.
    async fn scan_usage(
        &self,
        visit: &mut (dyn for<'e> FnMut(&'e str, UsageReport) + Send),
    ) -> Result<(), StoreError>;

    /// Read-modify-write of one global budget window's allocation with
    /// compare-and-swap: `update` gets the stored allocation (`None` if there
    /// is none yet) and returns the next one; when another replica changed
    /// it in between, `update` runs again on the new value (bounded).
    /// Returns what was committed.
    async fn update_allocation(
        &self,
        budget: &str,
        window_start_unix_ms: i64,
        update: &mut (dyn FnMut(Option<BudgetAllocation>) -> BudgetAllocation + Send),
    ) -> Result<BudgetAllocation, StoreError>;

    /// Every stored budget allocation.
    async fn list_allocations(&self) -> Result<Vec<BudgetAllocation>, StoreError>;

    /// Human-readable description for logs.
    fn describe(&self) -> String;
}

/// Every version after `after`, in order, none skipped or repeated, as they
/// are committed (by any replica). Transient store errors are retried with a
/// bounded backoff; the stream ends when `stop` becomes true.
pub fn watch_versions(
    store: Arc<dyn Store>,
    after: u64,
    stop: watch::Receiver<bool>,
) -> impl Stream<Item = StoredVersion> + Send {
    let head = store.head();
    futures::stream::unfold(
        (store, after, head, stop),
        |(store, mut last, mut head, mut stop)| async move {
            loop {
                if *stop.borrow() {
                    return None;
                }
                let known = (*head.borrow_and_update()).unwrap_or(0);
                if known > last {
                    let v = fetch_with_retry(&*store, last + 1, &mut stop).await?;
                    last += 1;
                    return Some((v, (store, last, head, stop)));
                }
                tokio::select! {
                    r = head.changed() => if r.is_err() { return None },
                    r = stop.changed() => if r.is_err() { return None },
                }
            }
        },
    )
}

/// Reads version `n`, retrying transient failures (100 ms .. 2 s backoff)
/// until it succeeds or `stop` is set. `None` on stop or if the version is
/// missing/corrupt.
pub async fn fetch_with_retry(
    store: &dyn Store,
    n: u64,
    stop: &mut watch::Receiver<bool>,
) -> Option<StoredVersion> {
    let mut backoff = Duration::from_millis(100);
    loop {
        match store.get(n).await {
            Ok(Some(v)) => return Some(v),
            Ok(None) => {
                tracing::error!(version = n, "committed version is missing from the store");
                return None;
            }
            Err(StoreError::Unavailable(e)) => {
                tracing::debug!(version = n, error = %e, "store unavailable; retrying");
            }
            Err(e) => {
                tracing::error!(version = n, error = %e, "cannot read version");
                return None;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => return None,
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// The part of `report` to store given the edge's highest persisted seq:
/// `None` for a duplicate batch (grants-only reports carry seq 0); otherwise the
/// report without the numbered records at or below `stored` (re-sent after a
/// lost ack or an edge restart), so every record is stored once.
pub fn new_records(report: &UsageReport, stored: u64) -> Option<UsageReport> {
    if report.seq <= stored {
        return None;
    }
    let mut out = report.clone();
    out.budgets.clear();
    out.records.retain(|r| r.seq == 0 || r.seq > stored);
    Some(out)
}

/// Name of a budget as a file name / etcd key segment (hex of its bytes).
pub fn budget_key(budget: &str) -> String {
    hex::encode(budget.as_bytes())
}

/// Zero-padded decimal so lexical order is numeric order (20 digits fit u64).
pub fn pad(n: u64) -> String {
    format!("{n:020}")
}

/// Edge ids become file names and etcd key segments: keep them tame.
pub fn valid_node_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'))
        && id != "."
        && id != ".."
}

/// Runs `fut` with a deadline, mapping expiry to `Unavailable`.
pub async fn with_timeout<T>(
    timeout: Duration,
    what: &str,
    fut: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(StoreError::Unavailable(format!(
            "{what} timed out after {timeout:?}"
        ))),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[tokio::test]
    async fn watch_versions_yields_each_version_once_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(embedded::EmbeddedStore::open(dir.path()).unwrap());
        let v = |n| StoredVersion {
            version: n,
            ..Default::default()
        };
        store.commit(0, &v(1)).await.unwrap();
        let (stop_tx, stop) = watch::channel(false);
        let stream = watch_versions(store.clone(), 0, stop);
        tokio::pin!(stream);
        for n in 2..=4 {
            store.commit(n - 1, &v(n)).await.unwrap();
        }
        for want in 1..=4 {
            let got = tokio::time::timeout(Duration::from_secs(5), stream.next())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(got.version, want);
        }
        stop_tx.send(true).unwrap();
        assert!(tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .unwrap()
            .is_none());
    }
}
