//! etcd-backed store (etcd v3 API via `etcd-client`).
//!
//! Layout under the prefix (default `/switchyard/v1`):
//!
//! | key                                   | value                                    |
//! |---------------------------------------|------------------------------------------|
//! | `<prefix>/config/versions/<N:020>`    | protobuf `StoredVersion` (immutable)     |
//! | `<prefix>/config/current`             | decimal N of the newest version          |
//! | `<prefix>/usage/seq/<edge>`           | decimal highest persisted usage seq      |
//! | `<prefix>/usage/batches/<edge>/<S:020>` | protobuf `UsageReport`                 |
//! | `<prefix>/budgets/<start:020>/<hex name>` | protobuf `BudgetAllocation`          |
//!
//! A commit is one transaction: `if mod_revision(current) == R and
//! create_revision(versions/N+1) == 0 then put versions/N+1, put current=N+1`,
//! where R is the mod revision at which `current` read N. Several replicas can
//! therefore write concurrently; exactly one wins each version number.
//!
//! Every replica watches `current` (from the revision it last read) and
//! publishes the newest number as its head. When the watch breaks — etcd
//! restarted, history compacted past our revision, connection lost — it
//! re-lists `current` and watches again from there, with a bounded backoff.

use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, SortOrder, SortTarget, Txn,
    TxnOp, WatchOptions,
};
use prost::Message;
use switchyard_proto::control::{BudgetAllocation, StoredVersion, UsageReport};
use tokio::sync::watch;

use super::{budget_key, new_records, pad, with_timeout, Head, Store, StoreError};

/// Keys per page when scanning a prefix.
const PAGE: i64 = 500;
/// Compare-and-swap attempts of one allocation update.
const CAS_ATTEMPTS: usize = 10;

/// Connection settings.
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    /// `http://host:port` URLs.
    pub endpoints: Vec<String>,
    /// Key prefix without a trailing slash, e.g. `/switchyard/v1`.
    pub prefix: String,
    /// Deadline for every read and write (writes fail with `Unavailable`
    /// after it when etcd is down).
    pub timeout: Duration,
}

/// The etcd store. Dropping it stops its watch task.
pub struct EtcdStore {
    client: Client,
    prefix: String,
    timeout: Duration,
    endpoints: Vec<String>,
    head: Head,
    watcher: tokio::task::JoinHandle<()>,
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

fn unavailable(e: etcd_client::Error) -> StoreError {
    StoreError::Unavailable(format!("etcd: {e}"))
}

fn parse_number(bytes: &[u8], what: &str) -> Result<u64, StoreError> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| {
            StoreError::Corrupt(format!(
                "{what}: not a number: {:?}",
                String::from_utf8_lossy(bytes)
            ))
        })
}

impl EtcdStore {
    /// Creates the client (connections are made lazily, so this succeeds even
    /// while etcd is down) and starts the head watcher.
    pub async fn connect(opts: EtcdOptions) -> Result<Self, StoreError> {
        if opts.endpoints.is_empty() {
            return Err(StoreError::Other("no etcd endpoints".into()));
        }
        let prefix = opts.prefix.trim_end_matches('/').to_string();
        if prefix.is_empty() {
            return Err(StoreError::Other("etcd prefix must not be empty".into()));
        }
        let connect = ConnectOptions::new()
            .with_connect_timeout(opts.timeout)
            .with_keep_alive(Duration::from_secs(10), opts.timeout)
            .with_keep_alive_while_idle(true);
        let client = Client::connect(&opts.endpoints, Some(connect))
            .await
            .map_err(|e| StoreError::Other(format!("etcd client: {e}")))?;
        let (tx, rx) = watch::channel(None);
        let watcher = tokio::spawn(head_watcher(
            client.clone(),
            current_key(&prefix),
            opts.timeout,
            tx,
        ));
        Ok(Self {
            client,
            prefix,
            timeout: opts.timeout,
            endpoints: opts.endpoints,
            head: rx,
            watcher,
        })
    }

    fn current_key(&self) -> String {
        current_key(&self.prefix)
    }

    fn version_key(&self, n: u64) -> String {
        format!("{}/config/versions/{}", self.prefix, pad(n))
    }

    fn versions_prefix(&self) -> String {
        format!("{}/config/versions/", self.prefix)
    }

    /// `current`: (N, mod revision), (0, 0) when absent.
    async fn read_current(&self) -> Result<(u64, i64), StoreError> {
        let mut kv = self.client.kv_client();
        let key = self.current_key();
        with_timeout(self.timeout, "etcd get current", async move {
            let resp = kv.get(key, None).await.map_err(unavailable)?;
            match resp.kvs().first() {
                None => Ok((0, 0)),
                Some(kv) => Ok((
                    parse_number(kv.value(), "config/current")?,
                    kv.mod_revision(),
                )),
            }
        })
        .await
    }

    fn decode(&self, bytes: &[u8], n: u64) -> Result<StoredVersion, StoreError> {
        let env = StoredVersion::decode(bytes)
            .map_err(|e| StoreError::Corrupt(format!("version {n}: {e}")))?;
        if env.version != n {
            return Err(StoreError::Corrupt(format!(
                "key of version {n} holds version {}",
                env.version
            )));
        }
        Ok(env)
    }
}

fn current_key(prefix: &str) -> String {
    format!("{prefix}/config/current")
}

#[async_trait::async_trait]
impl Store for EtcdStore {
    async fn current(&self) -> Result<Option<StoredVersion>, StoreError> {
        let (n, _) = self.read_current().await?;
        if n == 0 {
            return Ok(None);
        }
        match self.get(n).await? {
            Some(v) => Ok(Some(v)),
            None => Err(StoreError::Corrupt(format!(
                "current version {n} has no stored document"
            ))),
        }
    }

    async fn get(&self, version: u64) -> Result<Option<StoredVersion>, StoreError> {
        if version == 0 {
            return Ok(None);
        }
        let mut kv = self.client.kv_client();
        let key = self.version_key(version);
        let resp = with_timeout(self.timeout, "etcd get version", async move {
            kv.get(key, None).await.map_err(unavailable)
        })
        .await?;
        resp.kvs()
            .first()
            .map(|kv| self.decode(kv.value(), version))
            .transpose()
    }

    async fn commit(&self, expected: u64, next: &StoredVersion) -> Result<(), StoreError> {
        if next.version != expected + 1 {
            return Err(StoreError::Other(format!(
                "version {} cannot follow {expected}",
                next.version
            )));
        }
        let (current, rev) = self.read_current().await?;
        if current != expected {
            return Err(StoreError::Conflict { expected, current });
        }
        let txn = Txn::new()
            .when([
                Compare::mod_revision(self.current_key(), CompareOp::Equal, rev),
                Compare::create_revision(self.version_key(next.version), CompareOp::Equal, 0),
            ])
            .and_then([
                TxnOp::put(self.version_key(next.version), next.encode_to_vec(), None),
                TxnOp::put(self.current_key(), next.version.to_string(), None),
            ]);
        let mut kv = self.client.kv_client();
        let resp = with_timeout(self.timeout, "etcd commit", async move {
            kv.txn(txn).await.map_err(unavailable)
        })
        .await?;
        if resp.succeeded() {
            return Ok(());
        }
        let current = self
            .read_current()
            .await
            .map(|(n, _)| n)
            .unwrap_or(expected + 1);
        Err(StoreError::Conflict { expected, current })
    }

    async fn history(&self, before: u64, limit: usize) -> Result<Vec<StoredVersion>, StoreError> {
        let start = self.versions_prefix();
        let end = if before == 0 {
            // Prefix end: the byte after '/'.
            format!("{}/config/versions0", self.prefix)
        } else {
            self.version_key(before)
        };
        let opts = GetOptions::new()
            .with_range(end)
            .with_sort(SortTarget::Key, SortOrder::Descend)
            .with_limit(i64::try_from(limit).unwrap_or(i64::MAX));
        let mut kv = self.client.kv_client();
        let resp = with_timeout(self.timeout, "etcd history", async move {
            kv.get(start, Some(opts)).await.map_err(unavailable)
        })
        .await?;
        let mut out = Vec::with_capacity(resp.kvs().len());
        for kv in resp.kvs() {
            let env = StoredVersion::decode(kv.value()).map_err(|e| {
                StoreError::Corrupt(format!("{}: {e}", String::from_utf8_lossy(kv.key())))
            })?;
            out.push(env);
        }
        Ok(out)
    }

    fn head(&self) -> Head {
        self.head.clone()
    }

    async fn record_usage(&self, report: &UsageReport) -> Result<u64, StoreError> {
        let seq_key = format!("{}/usage/seq/{}", self.prefix, report.edge_id);
        let batch_key = format!(
            "{}/usage/batches/{}/{}",
            self.prefix,
            report.edge_id,
            pad(report.seq)
        );
        // Bounded: a conflict means another replica stored a batch of the
        // same edge concurrently; re-read and decide again.
        for _ in 0..5 {
            let mut kv = self.client.kv_client();
            let key = seq_key.clone();
            let (stored, rev) = with_timeout(self.timeout, "etcd get usage seq", async move {
                let resp = kv.get(key, None).await.map_err(unavailable)?;
                match resp.kvs().first() {
                    None => Ok((0, 0)),
                    Some(kv) => Ok((parse_number(kv.value(), "usage seq")?, kv.mod_revision())),
                }
            })
            .await?;
            let Some(batch) = new_records(report, stored) else {
                return Ok(stored);
            };
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    seq_key.clone(),
                    CompareOp::Equal,
                    rev,
                )])
                .and_then([
                    TxnOp::put(batch_key.clone(), batch.encode_to_vec(), None),
                    TxnOp::put(seq_key.clone(), report.seq.to_string(), None),
                ]);
            let mut kv = self.client.kv_client();
            let resp = with_timeout(self.timeout, "etcd put usage", async move {
                kv.txn(txn).await.map_err(unavailable)
            })
            .await?;
            if resp.succeeded() {
                return Ok(report.seq);
            }
        }
        Err(StoreError::Unavailable(
            "usage seq kept changing under concurrent writers".into(),
        ))
    }

    async fn scan_usage(
        &self,
        visit: &mut (dyn for<'e> FnMut(&'e str, UsageReport) + Send),
    ) -> Result<(), StoreError> {
        let prefix = format!("{}/usage/batches/", self.prefix);
        let plen = prefix.len();
        self.scan(&prefix, &mut |key, value| {
            let rest = key.get(plen..).unwrap_or_default();
            let edge = rest.split('/').next().unwrap_or_default();
            match UsageReport::decode(value) {
                Ok(r) => visit(edge, r),
                Err(e) => tracing::warn!(key, error = %e, "ignoring an undecodable usage batch"),
            }
        })
        .await
    }

    async fn update_allocation(
        &self,
        budget: &str,
        window_start_unix_ms: i64,
        update: &mut (dyn FnMut(Option<BudgetAllocation>) -> BudgetAllocation + Send),
    ) -> Result<BudgetAllocation, StoreError> {
        let key = format!(
            "{}/budgets/{}/{}",
            self.prefix,
            pad(window_start_unix_ms.max(0).unsigned_abs()),
            budget_key(budget)
        );
        for _ in 0..CAS_ATTEMPTS {
            let mut kv = self.client.kv_client();
            let k = key.clone();
            let (current, rev) = with_timeout(self.timeout, "etcd get budget", async move {
                let resp = kv.get(k, None).await.map_err(unavailable)?;
                match resp.kvs().first() {
                    None => Ok((None, 0)),
                    Some(kv) => Ok((
                        Some(BudgetAllocation::decode(kv.value()).map_err(|e| {
                            StoreError::Corrupt(format!("budget allocation {budget}: {e}"))
                        })?),
                        kv.mod_revision(),
                    )),
                }
            })
            .await?;
            let next = update(current);
            // A key that does not exist has mod revision 0.
            let txn = Txn::new()
                .when([Compare::mod_revision(key.clone(), CompareOp::Equal, rev)])
                .and_then([TxnOp::put(key.clone(), next.encode_to_vec(), None)]);
            let mut kv = self.client.kv_client();
            let resp = with_timeout(self.timeout, "etcd put budget", async move {
                kv.txn(txn).await.map_err(unavailable)
            })
            .await?;
            if resp.succeeded() {
                return Ok(next);
            }
            // Another replica won: back off a little (jittered) and retry.
            let ms = rand::random_range(2..20u64);
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        Err(StoreError::Unavailable(format!(
            "budget {budget}: allocation kept changing under concurrent writers"
        )))
    }

    async fn list_allocations(&self) -> Result<Vec<BudgetAllocation>, StoreError> {
        let mut out = Vec::new();
        self.scan(&format!("{}/budgets/", self.prefix), &mut |key, value| {
            match BudgetAllocation::decode(value) {
                Ok(a) => out.push(a),
                Err(e) => {
                    tracing::warn!(key, error = %e, "ignoring an undecodable budget allocation")
                }
            }
        })
        .await?;
        Ok(out)
    }

    fn describe(&self) -> String {
        format!("etcd {} (prefix {})", self.endpoints.join(","), self.prefix)
    }
}

impl EtcdStore {
    /// Calls `f(key, value)` for every key under `prefix`, in key order, a
    /// page at a time.
    async fn scan(
        &self,
        prefix: &str,
        f: &mut (dyn FnMut(&str, &[u8]) + Send),
    ) -> Result<(), StoreError> {
        // Prefix end: the prefix with its last byte incremented ('/' + 1).
        let end = {
            let mut e = prefix.as_bytes().to_vec();
            if let Some(last) = e.last_mut() {
                *last += 1;
            }
            e
        };
        let mut start = prefix.as_bytes().to_vec();
        loop {
            let opts = GetOptions::new()
                .with_range(end.clone())
                .with_sort(SortTarget::Key, SortOrder::Ascend)
                .with_limit(PAGE);
            let mut kv = self.client.kv_client();
            let from = start.clone();
            let resp = with_timeout(self.timeout, "etcd scan", async move {
                kv.get(from, Some(opts)).await.map_err(unavailable)
            })
            .await?;
            let kvs = resp.kvs();
            for kv in kvs {
                f(&String::from_utf8_lossy(kv.key()), kv.value());
            }
            match kvs.last() {
                Some(last) if resp.more() => {
                    start = last.key().to_vec();
                    start.push(0);
                }
                _ => return Ok(()),
            }
        }
    }
}

/// Keeps `tx` at the newest committed version: list, then watch from the
/// listed revision; on any break re-list. Runs until aborted.
async fn head_watcher(
    client: Client,
    key: String,
    timeout: Duration,
    tx: watch::Sender<Option<u64>>,
) {
    let publish = |n: u64| {
        tx.send_if_modified(|h| {
            if h.is_none_or(|h| n > h) {
                *h = Some(n);
                true
            } else {
                false
            }
        });
    };
    let mut backoff = Duration::from_millis(100);
    loop {
        // 1. List.
        let mut kv = client.kv_client();
        let listed = tokio::time::timeout(timeout, kv.get(key.clone(), None)).await;
        let revision = match listed {
            Ok(Ok(resp)) => {
                let n = match resp.kvs().first() {
                    None => 0,
                    Some(kv) => parse_number(kv.value(), "config/current").unwrap_or_else(|e| {
                        tracing::error!(error = %e, "ignoring unreadable current version");
                        0
                    }),
                };
                publish(n);
                resp.header().map(|h| h.revision()).unwrap_or(0)
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "etcd list failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
            Err(_) => {
                tracing::debug!("etcd list timed out");
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        // 2. Watch from the next revision.
        let mut wc = client.watch_client();
        let opts = WatchOptions::new().with_start_revision(revision + 1);
        let stream = match tokio::time::timeout(timeout, wc.watch(key.clone(), Some(opts))).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "etcd watch failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
            Err(_) => {
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        let mut stream = stream;
        loop {
            match stream.message().await {
                Ok(Some(resp)) => {
                    if resp.compact_revision() > 0 {
                        tracing::info!(
                            compact_revision = resp.compact_revision(),
                            "etcd history compacted; re-listing"
                        );
                        break;
                    }
                    if resp.canceled() {
                        tracing::info!(
                            reason = resp.cancel_reason(),
                            "etcd watch canceled; re-listing"
                        );
                        break;
                    }
                    for ev in resp.events() {
                        if ev.event_type() != EventType::Put {
                            continue;
                        }
                        if let Some(kv) = ev.kv() {
                            match parse_number(kv.value(), "config/current") {
                                Ok(n) => publish(n),
                                Err(e) => {
                                    tracing::error!(error = %e, "ignoring unreadable current version")
                                }
                            }
                        }
                    }
                }
                Ok(None) => {
                    tracing::info!("etcd watch ended; re-listing");
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "etcd watch broke; re-listing");
                    break;
                }
            }
        }
        tokio::time::sleep(backoff).await;
    }
}
