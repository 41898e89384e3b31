//! The last-known-good snapshot: the newest config version this edge
//! accepted from the control plane, kept on disk so a restarted edge can
//! serve while the control plane is unreachable.
//!
//! One file, `<dir>/config-snapshot.pb`: a protobuf
//! `switchyard.control.v1.StoredVersion` (the control plane's own storage
//! envelope) whose `config` is the protobuf-encoded document and whose
//! `config_sha256` is checked on load. It is written to a temp file, fsynced,
//! renamed into place and the directory fsynced, so a crash leaves either the
//! old or the new snapshot, never a torn one.

use prost::Message;
use std::io::Write;
use std::path::{Path, PathBuf};
use switchyard_proto::config::{sha256_hex, Config};
use switchyard_proto::control::StoredVersion;

/// File name inside the snapshot directory.
pub const FILE_NAME: &str = "config-snapshot.pb";
const ENVELOPE_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: corrupt snapshot: {message}")]
    Corrupt { path: String, message: String },
}

/// A config version as kept on disk.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub version: u64,
    pub committed_at_unix_ms: i64,
    pub author: String,
    pub comment: String,
    pub config: Config,
}

/// Reads and writes the snapshot file in one directory.
#[derive(Debug, Clone)]
pub struct SnapshotStore {
    dir: PathBuf,
}

impl SnapshotStore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE_NAME)
    }

    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError + '_ {
        move |source| SnapshotError::Io {
            path: path.display().to_string(),
            source,
        }
    }

    /// The snapshot, `None` when there is none yet.
    pub fn load(&self) -> Result<Option<Snapshot>, SnapshotError> {
        let path = self.path();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Self::io(&path)(e)),
        };
        let corrupt = |message: String| SnapshotError::Corrupt {
            path: path.display().to_string(),
            message,
        };
        let env = StoredVersion::decode(bytes.as_slice()).map_err(|e| corrupt(e.to_string()))?;
        if env.envelope_version > ENVELOPE_VERSION {
            return Err(corrupt(format!(
                "envelope format {} is newer than this edge understands",
                env.envelope_version
            )));
        }
        if env.config_sha256 != sha256_hex(&env.config) {
            return Err(corrupt("config checksum mismatch".into()));
        }
        let config = Config::decode(env.config.as_slice()).map_err(|e| corrupt(e.to_string()))?;
        Ok(Some(Snapshot {
            version: env.version,
            committed_at_unix_ms: env.committed_at_unix_ms,
            author: env.author,
            comment: env.comment,
            config,
        }))
    }

    /// Atomically replaces the snapshot (temp file + fsync + rename + fsync
    /// of the directory). Blocking: call from `spawn_blocking`.
    pub fn save(&self, snap: &Snapshot) -> Result<(), SnapshotError> {
        std::fs::create_dir_all(&self.dir).map_err(Self::io(&self.dir))?;
        let config = snap.config.encode_to_vec();
        let env = StoredVersion {
            envelope_version: ENVELOPE_VERSION,
            version: snap.version,
            committed_at_unix_ms: snap.committed_at_unix_ms,
            author: snap.author.clone(),
            comment: snap.comment.clone(),
            schema_version: snap.config.schema_version,
            config_sha256: sha256_hex(&config),
            config,
            summary: String::new(),
            rollback_of: 0,
            operation: "edge_snapshot".into(),
        };
        let path = self.path();
        let tmp = self
            .dir
            .join(format!("{FILE_NAME}.tmp-{}", std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&env.encode_to_vec())?;
            f.sync_all()?;
            drop(f);
            std::fs::rename(&tmp, &path)?;
            // Make the rename itself durable.
            std::fs::File::open(&self.dir)?.sync_all()
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            Self::io(&path)(e)
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn doc() -> Config {
        switchyard_proto::config::from_yaml_str(
            "providers:\n  p: {kind: openai, base_url: 'http://127.0.0.1:9/v1'}\nroutes:\n  m:\n    targets: [{provider: p, model: x}]\n",
            |_| None,
        )
        .unwrap()
    }

    #[test]
    fn round_trips_and_detects_corruption() {
        let dir = std::env::temp_dir().join(format!("sy-snap-{}", uuid::Uuid::new_v4()));
        let store = SnapshotStore::new(&dir);
        assert_eq!(store.load().unwrap(), None);
        let snap = Snapshot {
            version: 7,
            committed_at_unix_ms: 1_700_000_000_000,
            author: "a".into(),
            comment: "c".into(),
            config: doc(),
        };
        store.save(&snap).unwrap();
        assert_eq!(store.load().unwrap(), Some(snap.clone()));
        // Overwrite with a newer version.
        let snap8 = Snapshot { version: 8, ..snap };
        store.save(&snap8).unwrap();
        assert_eq!(store.load().unwrap().unwrap().version, 8);
        // No temp files left behind.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        // A flipped byte inside the document is detected.
        let mut bytes = std::fs::read(store.path()).unwrap();
        let n = bytes.len();
        bytes[n / 2] ^= 0x55;
        std::fs::write(store.path(), &bytes).unwrap();
        assert!(store.load().is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
