//! File-backed store for a single control-plane process (the default when no
//! etcd endpoints are given).
//!
//! Layout of the data directory:
//!
//! | path                               | content                                 |
//! |------------------------------------|-----------------------------------------|
//! | `config/versions/<N:020>.pb`       | protobuf `StoredVersion` (immutable)    |
//! | `config/current`                   | decimal N of the newest version         |
//! | `usage/<edge>.log`                 | length-delimited `UsageReport`s         |
//! | `usage/<edge>.seq`                 | decimal highest persisted usage seq     |
//! | `budgets/<start:020>-<hex name>.pb` | `BudgetAllocation` of one budget window |
//! | `LOCK`                             | pid of the process owning the directory |
//!
//! Every file is replaced atomically (write to a temp file, fsync, rename,
//! fsync the directory); `current` is written last, so a crash mid-commit
//! leaves the previous version current. A version file above `current` is
//! an orphan of such a crash and is overwritten by the next commit.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use prost::Message;
use switchyard_proto::control::{BudgetAllocation, StoredVersion, UsageReport};
use tokio::sync::{watch, Mutex};

use super::{budget_key, new_records, pad, Head, Store, StoreError};

/// The embedded store.
pub struct EmbeddedStore {
    dir: Arc<PathBuf>,
    /// Current version; held across a commit (serializes writers).
    current: Mutex<u64>,
    /// Serializes usage appends.
    usage: Mutex<()>,
    /// Budget allocations by file name (all loaded at open); held across an
    /// update, which serializes them.
    budgets: Mutex<HashMap<String, BudgetAllocation>>,
    head_tx: watch::Sender<Option<u64>>,
    head: Head,
    _lock: LockFile,
}

fn io(what: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Other(format!("{what} {}: {e}", path.display()))
}

/// Writes `data` to `path` atomically and durably.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<(), StoreError> {
    let dir = path
        .parent()
        .ok_or_else(|| StoreError::Other(format!("{} has no parent", path.display())))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    {
        let mut f = File::create(&tmp).map_err(|e| io("create", &tmp, e))?;
        f.write_all(data).map_err(|e| io("write", &tmp, e))?;
        f.sync_all().map_err(|e| io("fsync", &tmp, e))?;
    }
    fs::rename(&tmp, path).map_err(|e| io("rename", path, e))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("fsync dir", dir, e))
}

fn read_number(path: &Path) -> Result<Option<u64>, StoreError> {
    match fs::read_to_string(path) {
        Ok(s) => s.trim().parse().map(Some).map_err(|_| {
            StoreError::Corrupt(format!("{}: not a number: {:?}", path.display(), s.trim()))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io("read", path, e)),
    }
}

fn version_path(dir: &Path, n: u64) -> PathBuf {
    dir.join("config")
        .join("versions")
        .join(format!("{}.pb", pad(n)))
}

fn read_version(dir: &Path, n: u64) -> Result<Option<StoredVersion>, StoreError> {
    let path = version_path(dir, n);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io("read", &path, e)),
    };
    let env = StoredVersion::decode(bytes.as_slice())
        .map_err(|e| StoreError::Corrupt(format!("{}: {e}", path.display())))?;
    if env.version != n {
        return Err(StoreError::Corrupt(format!(
            "{} holds version {}",
            path.display(),
            env.version
        )));
    }
    Ok(Some(env))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Other(format!("store task failed: {e}")))?
}

impl EmbeddedStore {
    /// Opens (creating if needed) the data directory and takes its lock.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let dir: PathBuf = dir.into();
        for sub in ["config/versions", "usage", "budgets"] {
            let p = dir.join(sub);
            fs::create_dir_all(&p).map_err(|e| io("create", &p, e))?;
        }
        let lock = LockFile::acquire(&dir.join("LOCK"))?;
        let current = read_number(&dir.join("config").join("current"))?.unwrap_or(0);
        if current > 0 && read_version(&dir, current)?.is_none() {
            return Err(StoreError::Corrupt(format!(
                "current version {current} has no file in {}",
                dir.display()
            )));
        }
        let budgets = load_budgets(&dir.join("budgets"))?;
        let (head_tx, head) = watch::channel(Some(current));
        Ok(Self {
            dir: Arc::new(dir),
            current: Mutex::new(current),
            usage: Mutex::new(()),
            budgets: Mutex::new(budgets),
            head_tx,
            head,
            _lock: lock,
        })
    }
}

#[async_trait::async_trait]
impl Store for EmbeddedStore {
    async fn current(&self) -> Result<Option<StoredVersion>, StoreError> {
        let n = *self.current.lock().await;
        self.get(n).await
    }

    async fn get(&self, version: u64) -> Result<Option<StoredVersion>, StoreError> {
        if version == 0 || version > (*self.head.borrow()).unwrap_or(0) {
            return Ok(None);
        }
        let dir = self.dir.clone();
        blocking(move || read_version(&dir, version)).await
    }

    async fn commit(&self, expected: u64, next: &StoredVersion) -> Result<(), StoreError> {
        if next.version != expected + 1 {
            return Err(StoreError::Other(format!(
                "version {} cannot follow {expected}",
                next.version
            )));
        }
        let mut current = self.current.lock().await;
        if *current != expected {
            return Err(StoreError::Conflict {
                expected,
                current: *current,
            });
        }
        let dir = self.dir.clone();
        let bytes = next.encode_to_vec();
        let n = next.version;
        blocking(move || {
            write_atomic(&version_path(&dir, n), &bytes)?;
            write_atomic(
                &dir.join("config").join("current"),
                format!("{n}\n").as_bytes(),
            )
        })
        .await?;
        *current = n;
        self.head_tx.send_replace(Some(n));
        Ok(())
    }

    async fn history(&self, before: u64, limit: usize) -> Result<Vec<StoredVersion>, StoreError> {
        let current = *self.current.lock().await;
        let top = if before == 0 {
            current
        } else {
            before.saturating_sub(1).min(current)
        };
        let dir = self.dir.clone();
        blocking(move || {
            let mut out = Vec::new();
            let mut n = top;
            while n > 0 && out.len() < limit {
                if let Some(v) = read_version(&dir, n)? {
                    out.push(v);
                }
                n -= 1;
            }
            Ok(out)
        })
        .await
    }

    fn head(&self) -> Head {
        self.head.clone()
    }

    async fn record_usage(&self, report: &UsageReport) -> Result<u64, StoreError> {
        if !super::valid_node_id(&report.edge_id) {
            return Err(StoreError::Other(format!(
                "invalid edge id {:?}",
                report.edge_id
            )));
        }
        let _guard = self.usage.lock().await;
        let dir = self.dir.join("usage");
        let seq_path = dir.join(format!("{}.seq", report.edge_id));
        let log_path = dir.join(format!("{}.log", report.edge_id));
        let report = report.clone();
        blocking(move || {
            let stored = read_number(&seq_path)?.unwrap_or(0);
            let Some(report) = new_records(&report, stored) else {
                return Ok(stored);
            };
            let seq = report.seq;
            let bytes = report.encode_length_delimited_to_vec();
            let mut f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .map_err(|e| io("open", &log_path, e))?;
            f.write_all(&bytes)
                .map_err(|e| io("append", &log_path, e))?;
            f.sync_data().map_err(|e| io("fsync", &log_path, e))?;
            write_atomic(&seq_path, format!("{seq}\n").as_bytes())?;
            Ok(seq)
        })
        .await
    }

    async fn scan_usage(
        &self,
        visit: &mut (dyn for<'e> FnMut(&'e str, UsageReport) + Send),
    ) -> Result<(), StoreError> {
        let dir = self.dir.join("usage");
        let batches = blocking(move || {
            let mut out = Vec::new();
            let entries = fs::read_dir(&dir).map_err(|e| io("list", &dir, e))?;
            for entry in entries.flatten() {
                let path = entry.path();
                if path.extension().is_none_or(|e| e != "log") {
                    continue;
                }
                let edge = path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let bytes = fs::read(&path).map_err(|e| io("read", &path, e))?;
                let mut buf = bytes.as_slice();
                while !buf.is_empty() {
                    match UsageReport::decode_length_delimited(&mut buf) {
                        Ok(r) => out.push((edge.clone(), r)),
                        Err(e) => {
                            // A torn tail (crash mid-append): the batch was
                            // never acknowledged, so the edge re-sends it.
                            tracing::warn!(path = %path.display(), error = %e, "ignoring the undecodable end of a usage log");
                            break;
                        }
                    }
                }
            }
            Ok(out)
        })
        .await?;
        for (edge, r) in batches {
            visit(&edge, r);
        }
        Ok(())
    }

    async fn update_allocation(
        &self,
        budget: &str,
        window_start_unix_ms: i64,
        update: &mut (dyn FnMut(Option<BudgetAllocation>) -> BudgetAllocation + Send),
    ) -> Result<BudgetAllocation, StoreError> {
        let name = format!(
            "{}-{}.pb",
            pad(window_start_unix_ms.max(0).unsigned_abs()),
            budget_key(budget)
        );
        let mut all = self.budgets.lock().await;
        let next = update(all.get(&name).cloned());
        let path = self.dir.join("budgets").join(&name);
        let bytes = next.encode_to_vec();
        blocking(move || write_atomic(&path, &bytes)).await?;
        all.insert(name, next.clone());
        Ok(next)
    }

    async fn list_allocations(&self) -> Result<Vec<BudgetAllocation>, StoreError> {
        Ok(self.budgets.lock().await.values().cloned().collect())
    }

    fn describe(&self) -> String {
        format!("embedded store in {}", self.dir.display())
    }
}

/// Reads every budget allocation file (the directory is small: one file per
/// budget window).
fn load_budgets(dir: &Path) -> Result<HashMap<String, BudgetAllocation>, StoreError> {
    let mut out = HashMap::new();
    for entry in fs::read_dir(dir).map_err(|e| io("list", dir, e))?.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".pb") || name.starts_with('.') {
            continue;
        }
        let bytes = fs::read(&path).map_err(|e| io("read", &path, e))?;
        let a = BudgetAllocation::decode(bytes.as_slice())
            .map_err(|e| StoreError::Corrupt(format!("{}: {e}", path.display())))?;
        out.insert(name, a);
    }
    Ok(out)
}

/// `LOCK` file holding the owner's pid; refuses a directory whose owner is
/// still alive (checked via /proc on Linux), removed on drop.
struct LockFile {
    path: PathBuf,
}

impl LockFile {
    fn acquire(path: &Path) -> Result<Self, StoreError> {
        let me = std::process::id();
        for _ in 0..3 {
            match OpenOptions::new().write(true).create_new(true).open(path) {
                Ok(mut f) => {
                    f.write_all(format!("{me}\n").as_bytes())
                        .map_err(|e| io("write", path, e))?;
                    f.sync_all().map_err(|e| io("fsync", path, e))?;
                    HELD.lock().insert(path.to_path_buf());
                    return Ok(Self {
                        path: path.to_path_buf(),
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let owner = read_number(path).ok().flatten();
                    // Our own pid: held by this process only if we recorded it
                    // (a stale file can carry our pid, e.g. pid 1 in containers).
                    let alive = owner.is_some_and(|pid| {
                        if pid == u64::from(me) {
                            HELD.lock().contains(path)
                        } else {
                            Path::new(&format!("/proc/{pid}")).exists()
                        }
                    });
                    if alive {
                        return Err(StoreError::Other(format!(
                            "data directory is in use by process {} ({})",
                            owner.unwrap_or(0),
                            path.display()
                        )));
                    }
                    // Stale lock of a dead process: take it over.
                    let _ = fs::remove_file(path);
                }
                Err(e) => return Err(io("create", path, e)),
            }
        }
        Err(StoreError::Other(format!(
            "cannot take lock {}",
            path.display()
        )))
    }
}

static HELD: parking_lot::Mutex<std::collections::BTreeSet<PathBuf>> =
    parking_lot::Mutex::new(std::collections::BTreeSet::new());

impl Drop for LockFile {
    fn drop(&mut self) {
        HELD.lock().remove(&self.path);
        let _ = fs::remove_file(&self.path);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn env(n: u64) -> StoredVersion {
        StoredVersion {
            version: n,
            comment: format!("v{n}"),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn commits_with_cas_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = EmbeddedStore::open(dir.path()).unwrap();
            assert!(s.current().await.unwrap().is_none());
            s.commit(0, &env(1)).await.unwrap();
            s.commit(1, &env(2)).await.unwrap();
            assert!(matches!(
                s.commit(1, &env(2)).await,
                Err(StoreError::Conflict { current: 2, .. })
            ));
            assert!(
                EmbeddedStore::open(dir.path()).is_err(),
                "second opener must be refused"
            );
            assert_eq!(*s.head().borrow(), Some(2));
        }
        let s = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(s.current().await.unwrap().unwrap().comment, "v2");
        let h: Vec<u64> = s
            .history(0, 10)
            .await
            .unwrap()
            .iter()
            .map(|v| v.version)
            .collect();
        assert_eq!(h, vec![2, 1]);
        let h: Vec<u64> = s
            .history(2, 10)
            .await
            .unwrap()
            .iter()
            .map(|v| v.version)
            .collect();
        assert_eq!(h, vec![1]);
    }

    #[tokio::test]
    async fn usage_is_idempotent_by_seq() {
        let dir = tempfile::tempdir().unwrap();
        let s = EmbeddedStore::open(dir.path()).unwrap();
        let r = |seq| UsageReport {
            edge_id: "e1".into(),
            seq,
            ..Default::default()
        };
        assert_eq!(s.record_usage(&r(1)).await.unwrap(), 1);
        assert_eq!(s.record_usage(&r(2)).await.unwrap(), 2);
        assert_eq!(s.record_usage(&r(1)).await.unwrap(), 2);
        let log = fs::read(dir.path().join("usage/e1.log")).unwrap();
        assert_eq!(log.len(), r(1).encode_length_delimited_to_vec().len() * 2);
    }

    #[tokio::test]
    async fn numbered_records_are_stored_once_and_allocations_survive_reopen() {
        use switchyard_proto::control::{BudgetAllocation, EdgeAllocation, UsageRecord};
        let dir = tempfile::tempdir().unwrap();
        let rec = |seq| UsageRecord {
            seq,
            cost_usd: 1.0,
            ..Default::default()
        };
        let batch = |seqs: &[u64]| UsageReport {
            edge_id: "e1".into(),
            seq: *seqs.iter().max().unwrap_or(&0),
            records: seqs.iter().map(|s| rec(*s)).collect(),
            ..Default::default()
        };
        {
            let s = EmbeddedStore::open(dir.path()).unwrap();
            assert_eq!(s.record_usage(&batch(&[1, 2, 3])).await.unwrap(), 3);
            // Re-sent with more after a lost ack: only 4 and 5 are new.
            assert_eq!(s.record_usage(&batch(&[2, 3, 4, 5])).await.unwrap(), 5);
            assert_eq!(s.record_usage(&batch(&[4, 5])).await.unwrap(), 5);
            // A grants-only report stores nothing.
            assert_eq!(s.record_usage(&batch(&[])).await.unwrap(), 5);
            let mut seen = Vec::new();
            s.scan_usage(&mut |edge, r| {
                seen.extend(r.records.iter().map(|x| (edge.to_string(), x.seq)))
            })
            .await
            .unwrap();
            let want: Vec<(String, u64)> = (1..=5).map(|n| ("e1".to_string(), n)).collect();
            assert_eq!(seen, want);

            let a = s
                .update_allocation("tier:a:key:b:daily", 86_400_000, &mut |cur| {
                    assert!(cur.is_none());
                    BudgetAllocation {
                        budget: "tier:a:key:b:daily".into(),
                        edges: vec![EdgeAllocation {
                            edge_id: "e1".into(),
                            allowance_usd: 2.0,
                            ..Default::default()
                        }],
                        ..Default::default()
                    }
                })
                .await
                .unwrap();
            assert_eq!(a.edges.len(), 1);
        }
        let s = EmbeddedStore::open(dir.path()).unwrap();
        let all = s.list_allocations().await.unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].edges[0].allowance_usd, 2.0);
        s.update_allocation("tier:a:key:b:daily", 86_400_000, &mut |cur| {
            let mut a = cur.unwrap();
            a.edges[0].allowance_usd += 1.0;
            a
        })
        .await
        .unwrap();
        assert_eq!(
            s.list_allocations().await.unwrap()[0].edges[0].allowance_usd,
            3.0
        );
    }
}
