//! Usage records on their way to the control plane (see `docs/budgets.md`,
//! "Usage reporting").
//!
//! The request path hands every finished call's record to [`Spool::push`]
//! (memory only, never blocks on I/O). The reporter calls [`Spool::flush`]
//! every few tens of milliseconds: records get the next per-edge `seq` and
//! are appended to `<snapshot-dir>/usage-spool.log` (length-delimited
//! `UsageRecord`s) and fsynced as one batch. Only flushed records are sent.
//! When the control plane acknowledges a seq ([`Spool::ack`]) the records up
//! to it are dropped and the file is compacted; the highest seq ever
//! assigned is kept in `usage-spool.seq`, written before the log shrinks, so
//! seqs keep increasing across restarts. At start-up the un-acknowledged
//! records are read back and sent again; the control plane stores a record
//! only if its seq is new for this edge, so nothing is counted twice.
//!
//! Without a snapshot dir the spool is memory only (bounded; a restart
//! loses what was not delivered yet).

use parking_lot::Mutex;
use prost::Message;
use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use switchyard_proto::control::UsageRecord;
use tokio::sync::Notify;

/// The spool file in the snapshot dir.
pub const SPOOL_FILE: &str = "usage-spool.log";
/// The highest assigned seq, kept while the spool file is compacted.
pub const SEQ_FILE: &str = "usage-spool.seq";
/// Un-acknowledged records kept in memory; more wait on disk.
const MEM_CAP: usize = 100_000;
/// Rewrite the file once this many acknowledged records sit in it.
const COMPACT_ACKED: usize = 20_000;
/// Empty a fully acknowledged file at once past this many records, else at
/// most this often (each compaction costs a few fsyncs).
const EMPTY_AFTER_RECORDS: usize = 4096;
const EMPTY_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

struct Inner {
    file: Option<File>,
    /// The next seq to assign.
    next_seq: u64,
    /// Highest seq the control plane has persisted.
    acked: u64,
    /// Durable, un-acknowledged records in seq order (a prefix of them when
    /// `overflow`).
    mem: VecDeque<UsageRecord>,
    /// Some durable un-acknowledged records are only on disk.
    overflow: bool,
    /// Acknowledged records still in the file.
    file_acked: usize,
    last_compaction: std::time::Instant,
    /// Memory-only spool: records dropped at the cap.
    dropped: u64,
}

/// Counters for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpoolStats {
    /// Records not yet acknowledged (flushed or not).
    pub pending: u64,
    pub acked_seq: u64,
    pub next_seq: u64,
    pub dropped: u64,
}

/// The usage spool of one edge.
pub struct Spool {
    dir: Option<PathBuf>,
    incoming: Mutex<Vec<UsageRecord>>,
    inner: Mutex<Inner>,
    notify: Notify,
}

fn read_records(path: &Path) -> io::Result<(Vec<UsageRecord>, u64)> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    let mut buf = bytes.as_slice();
    let mut good = 0u64;
    while !buf.is_empty() {
        match UsageRecord::decode_length_delimited(&mut buf) {
            Ok(r) => {
                out.push(r);
                good = (bytes.len() - buf.len()) as u64;
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), offset = good, error = %e, "usage spool ends with a torn record (crash mid-write); dropping the tail");
                break;
            }
        }
    }
    Ok((out, good))
}

fn read_seq(path: &Path) -> io::Result<u64> {
    match fs::read_to_string(path) {
        Ok(s) => s.trim().parse().map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: not a number", path.display()),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e),
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `data` to `path` atomically (temp file, fsync, rename, fsync dir).
fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    {
        let mut f = File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    sync_dir(dir)
}

fn encode(records: &[UsageRecord]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(records.len() * 160);
    for r in records {
        // Writing into a Vec cannot fail.
        let _ = r.encode_length_delimited(&mut buf);
    }
    buf
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

impl Spool {
    /// Opens the spool in `dir` (created if needed), reading back what was
    /// not acknowledged; `None` = memory only.
    pub fn open(dir: Option<&Path>) -> io::Result<Self> {
        let mut inner = Inner {
            file: None,
            next_seq: 1,
            acked: 0,
            mem: VecDeque::new(),
            overflow: false,
            file_acked: 0,
            last_compaction: std::time::Instant::now(),
            dropped: 0,
        };
        if let Some(dir) = dir {
            fs::create_dir_all(dir)?;
            let path = dir.join(SPOOL_FILE);
            let acked = read_seq(&dir.join(SEQ_FILE))?;
            let (records, good) = read_records(&path)?;
            let file = open_append(&path)?;
            if file.metadata()?.len() > good {
                file.set_len(good)?;
                file.sync_all()?;
            }
            let max = records.iter().map(|r| r.seq).max().unwrap_or(0);
            inner.acked = acked;
            inner.next_seq = acked.max(max) + 1;
            inner.file_acked = records.iter().filter(|r| r.seq <= acked).count();
            let unacked: Vec<UsageRecord> = records.into_iter().filter(|r| r.seq > acked).collect();
            inner.overflow = unacked.len() > MEM_CAP;
            inner.mem = unacked.into_iter().take(MEM_CAP).collect();
            inner.file = Some(file);
            if !inner.mem.is_empty() {
                tracing::info!(records = inner.mem.len(), path = %path.display(), "usage records from before the restart will be re-sent");
            }
        }
        Ok(Self {
            dir: dir.map(Path::to_path_buf),
            incoming: Mutex::new(Vec::new()),
            inner: Mutex::new(inner),
            notify: Notify::new(),
        })
    }

    /// Queues a finished call's record (memory only; cheap).
    pub fn push(&self, rec: UsageRecord) {
        self.incoming.lock().push(rec);
    }

    /// Resolves after a flush made records durable (ready to send).
    pub async fn flushed(&self) {
        self.notify.notified().await;
    }

    /// Flushes every `interval` on a dedicated thread, independent of the
    /// async runtimes: records of calls that finish while the edge drains
    /// for shutdown still reach the disk (the drain ends 200 ms after the
    /// last connection closed). Stops when the spool is dropped.
    pub fn start_flusher(
        self: &std::sync::Arc<Self>,
        interval: std::time::Duration,
    ) -> io::Result<()> {
        let weak = std::sync::Arc::downgrade(self);
        std::thread::Builder::new()
            .name("switchyard-usage-spool".into())
            .spawn(move || loop {
                std::thread::sleep(interval);
                let Some(spool) = weak.upgrade() else { return };
                // Errors are logged by flush; the records stay in memory.
                if let Ok(0) = spool.flush() {
                    continue;
                }
                spool.notify.notify_one();
            })?;
        Ok(())
    }

    /// Numbers the queued records and appends them to the file with one
    /// fsync (blocking I/O: call off the async threads). Returns how many.
    /// On a write error the records stay in memory (they are still sent)
    /// and the file is cut back to its last complete record.
    pub fn flush(&self) -> io::Result<usize> {
        let mut batch = std::mem::take(&mut *self.incoming.lock());
        if batch.is_empty() {
            return Ok(0);
        }
        let mut inner = self.inner.lock();
        let inner = &mut *inner;
        for r in &mut batch {
            r.seq = inner.next_seq;
            inner.next_seq += 1;
        }
        let n = batch.len();
        let mut result = Ok(n);
        if let Some(f) = inner.file.as_mut() {
            let before = f.metadata().map(|m| m.len());
            let written = f.write_all(&encode(&batch)).and_then(|()| f.sync_data());
            if let Err(e) = written {
                tracing::error!(error = %e, "cannot write the usage spool; records kept in memory only");
                if let Ok(len) = before {
                    let _ = f.set_len(len);
                }
                result = Err(e);
            }
        }
        let on_disk = inner.file.is_some() && result.is_ok();
        for r in batch {
            if inner.mem.len() < MEM_CAP && !inner.overflow {
                inner.mem.push_back(r);
            } else if on_disk {
                inner.overflow = true;
            } else {
                // Memory only and full: the oldest goes.
                inner.mem.pop_front();
                inner.mem.push_back(r);
                inner.dropped += 1;
            }
        }
        result
    }

    /// Up to `max` flushed, un-acknowledged records with seq above `after`.
    pub fn pending_after(&self, after: u64, max: usize) -> Vec<UsageRecord> {
        let inner = self.inner.lock();
        let start = inner.mem.partition_point(|r| r.seq <= after);
        inner.mem.iter().skip(start).take(max).cloned().collect()
    }

    /// The control plane persisted everything up to `persisted`: drop it
    /// and compact the file (blocking I/O).
    pub fn ack(&self, persisted: u64) -> io::Result<()> {
        let mut inner = self.inner.lock();
        let inner = &mut *inner;
        if persisted <= inner.acked {
            return Ok(());
        }
        inner.acked = persisted.min(inner.next_seq.saturating_sub(1));
        while inner.mem.front().is_some_and(|r| r.seq <= inner.acked) {
            inner.mem.pop_front();
            inner.file_acked += 1;
        }
        self.compact(inner)
    }

    /// Compacts the file if it is due (called by [`Spool::ack`], and now
    /// and then by the reporter so a quiet edge's file empties too).
    pub fn maintain(&self) -> io::Result<()> {
        let mut inner = self.inner.lock();
        self.compact(&mut inner)
    }

    fn compact(&self, inner: &mut Inner) -> io::Result<()> {
        let Some(dir) = self.dir.clone() else {
            return Ok(());
        };
        if inner.file_acked == 0 {
            return Ok(());
        }
        if inner.overflow && inner.mem.is_empty() {
            let (records, _) = read_records(&dir.join(SPOOL_FILE))?;
            let unacked: Vec<UsageRecord> = records
                .into_iter()
                .filter(|r| r.seq > inner.acked)
                .collect();
            inner.overflow = unacked.len() > MEM_CAP;
            inner.mem = unacked.into_iter().take(MEM_CAP).collect();
        }
        let due = inner.file_acked >= EMPTY_AFTER_RECORDS
            || inner.last_compaction.elapsed() >= EMPTY_EVERY;
        if inner.mem.is_empty() && !inner.overflow && due {
            // Everything is acknowledged: keep the seq, empty the file.
            inner.last_compaction = std::time::Instant::now();
            write_atomic(&dir.join(SEQ_FILE), format!("{}\n", inner.acked).as_bytes())?;
            if let Some(f) = inner.file.as_mut() {
                f.set_len(0)?;
                f.sync_all()?;
            }
            inner.file_acked = 0;
        } else if inner.file_acked >= COMPACT_ACKED {
            inner.last_compaction = std::time::Instant::now();
            write_atomic(&dir.join(SEQ_FILE), format!("{}\n", inner.acked).as_bytes())?;
            let path = dir.join(SPOOL_FILE);
            let (records, _) = read_records(&path)?;
            let keep: Vec<UsageRecord> = records
                .into_iter()
                .filter(|r| r.seq > inner.acked)
                .collect();
            write_atomic(&path, &encode(&keep))?;
            inner.file = Some(open_append(&path)?);
            inner.file_acked = 0;
        }
        Ok(())
    }

    /// The control plane's persisted seq for this edge, learned when a
    /// stream opens. At or above our next seq means our counter was lost
    /// (no or a wiped snapshot dir): every un-acknowledged record is
    /// renumbered after it, or the control plane would take them for
    /// duplicates. Otherwise it is an acknowledgement. Returns whether
    /// records were renumbered (blocking I/O).
    pub fn sync_with(&self, persisted: u64) -> io::Result<bool> {
        {
            let mut inner = self.inner.lock();
            let inner = &mut *inner;
            if persisted >= inner.next_seq {
                let mut records: Vec<UsageRecord> = match (&self.dir, inner.overflow) {
                    (Some(dir), true) => read_records(&dir.join(SPOOL_FILE))?
                        .0
                        .into_iter()
                        .filter(|r| r.seq > inner.acked)
                        .collect(),
                    _ => inner.mem.drain(..).collect(),
                };
                for (i, r) in records.iter_mut().enumerate() {
                    r.seq = persisted + 1 + i as u64;
                }
                if let Some(dir) = &self.dir {
                    let path = dir.join(SPOOL_FILE);
                    write_atomic(&path, &encode(&records))?;
                    inner.file = Some(open_append(&path)?);
                    write_atomic(&dir.join(SEQ_FILE), format!("{persisted}\n").as_bytes())?;
                }
                tracing::warn!(
                    persisted,
                    renumbered = records.len(),
                    "the control plane knows later usage seqs than this edge (lost spool?); renumbering unsent records"
                );
                inner.next_seq = persisted + 1 + records.len() as u64;
                inner.acked = persisted;
                inner.file_acked = 0;
                inner.overflow = records.len() > MEM_CAP;
                inner.mem = records.into_iter().take(MEM_CAP).collect();
                return Ok(true);
            }
        }
        self.ack(persisted)?;
        Ok(false)
    }

    pub fn stats(&self) -> SpoolStats {
        let queued = self.incoming.lock().len() as u64;
        let inner = self.inner.lock();
        SpoolStats {
            pending: inner.next_seq.saturating_sub(1).saturating_sub(inner.acked) + queued,
            acked_seq: inner.acked,
            next_seq: inner.next_seq,
            dropped: inner.dropped,
        }
    }
}

impl super::UsageSink for Spool {
    fn record(&self, rec: UsageRecord) {
        self.push(rec);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn rec(id: &str) -> UsageRecord {
        UsageRecord {
            request_id: id.into(),
            cost_usd: 0.5,
            ..Default::default()
        }
    }

    fn ids(v: &[UsageRecord]) -> Vec<(u64, String)> {
        v.iter().map(|r| (r.seq, r.request_id.clone())).collect()
    }

    #[test]
    fn records_survive_a_restart_until_acknowledged_and_seqs_keep_increasing() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Spool::open(Some(dir.path())).unwrap();
            s.push(rec("a"));
            s.push(rec("b"));
            assert!(s.pending_after(0, 10).is_empty(), "not durable yet");
            assert_eq!(s.flush().unwrap(), 2);
            s.push(rec("c"));
            s.flush().unwrap();
            assert_eq!(
                ids(&s.pending_after(1, 10)),
                vec![(2, "b".into()), (3, "c".into())]
            );
            s.ack(1).unwrap();
            assert_eq!(s.stats().pending, 2);
        }
        // A torn record at the end (crash mid-append) is dropped.
        let path = dir.path().join(SPOOL_FILE);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[0x40, 1, 2]).unwrap();
        drop(f);
        {
            let s = Spool::open(Some(dir.path())).unwrap();
            // `a` was acked but not compacted: it comes back too; the
            // control plane drops it by seq.
            assert_eq!(
                ids(&s.pending_after(0, 10)),
                vec![(1, "a".into()), (2, "b".into()), (3, "c".into())]
            );
            s.push(rec("d"));
            s.flush().unwrap();
            assert_eq!(s.pending_after(3, 10)[0].seq, 4);
            // Everything acked: the file empties (at most once a second),
            // the seq is kept.
            s.inner.lock().last_compaction -= std::time::Duration::from_secs(2);
            s.sync_with(4).unwrap();
            assert_eq!(fs::metadata(&path).unwrap().len(), 0);
            assert_eq!(read_seq(&dir.path().join(SEQ_FILE)).unwrap(), 4);
        }
        let s = Spool::open(Some(dir.path())).unwrap();
        assert!(s.pending_after(0, 10).is_empty());
        s.push(rec("e"));
        s.flush().unwrap();
        assert_eq!(ids(&s.pending_after(0, 10)), vec![(5, "e".into())]);
    }

    #[test]
    fn a_lost_counter_is_renumbered_after_the_control_planes_seq() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open(Some(dir.path())).unwrap();
        s.push(rec("a"));
        s.push(rec("b"));
        s.flush().unwrap();
        // The control plane has seqs up to 40 from this edge's past.
        assert!(s.sync_with(40).unwrap());
        assert_eq!(
            ids(&s.pending_after(40, 10)),
            vec![(41, "a".into()), (42, "b".into())]
        );
        s.push(rec("c"));
        s.flush().unwrap();
        assert_eq!(s.pending_after(42, 10)[0].seq, 43);
        drop(s);
        let s = Spool::open(Some(dir.path())).unwrap();
        assert_eq!(s.pending_after(0, 10).len(), 3);
        assert_eq!(s.stats().next_seq, 44);
        // Memory only: the same, without files.
        let m = Spool::open(None).unwrap();
        m.push(rec("x"));
        m.flush().unwrap();
        assert!(m.sync_with(7).unwrap());
        assert_eq!(ids(&m.pending_after(0, 10)), vec![(8, "x".into())]);
        m.ack(8).unwrap();
        assert_eq!(m.stats().pending, 0);
    }
}
