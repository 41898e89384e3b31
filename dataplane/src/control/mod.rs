//! The edge side of the control plane (see `docs/control-plane.md`, "Edge
//! side").
//!
//! - [`boot`]: picks the config to serve at start-up — the last-known-good
//!   snapshot, else `--config`, else nothing (not ready);
//! - [`state::ConfigState`]: the served config and its history; the one
//!   place a version is validated, compiled and swapped in (never twice,
//!   never backwards);
//! - [`client::ControlClient`]: the `Watch`/`Ack` loop with reconnect
//!   backoff;
//! - [`snapshot::SnapshotStore`]: the snapshot file (atomic writes);
//! - [`backoff::Backoff`]: jittered exponential backoff;
//! - [`usage`]: the usage reporter (`ReportUsage`: spooled usage records,
//!   global budget states and grants).
//!
//! Static stability: nothing here can stop the edge. While the control
//! plane (or its store) is down the edge keeps serving the version it has,
//! and a restarted edge serves its snapshot.

pub mod backoff;
pub mod client;
pub mod snapshot;
pub mod state;
pub mod usage;

pub use client::ControlClient;
pub use snapshot::{Snapshot, SnapshotStore};
pub use state::{ConfigSource, ConfigState, Decision, Served};

use crate::config::{self, ConfigError, EdgeConfig};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How to reach the control plane (the `--control-plane` flags).
#[derive(Debug, Clone)]
pub struct ControlOptions {
    /// `http://host:port` or `https://host:port`.
    pub url: String,
    /// Edge token (`authorization: Bearer <token>`).
    pub token: String,
    pub node_id: String,
    pub region: String,
    /// Where the last-known-good snapshot lives; `None` = no snapshot.
    pub snapshot_dir: Option<PathBuf>,
    /// CA certificate (PEM) for `https://` control planes.
    pub ca_cert: Option<PathBuf>,
    /// How long readiness waits at start-up for the control plane's first
    /// version while it is reachable, before serving the boot config.
    pub boot_wait: Duration,
}

impl Default for ControlOptions {
    fn default() -> Self {
        Self {
            url: String::new(),
            token: String::new(),
            node_id: String::new(),
            region: String::new(),
            snapshot_dir: None,
            ca_cert: None,
            boot_wait: Duration::from_secs(2),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control plane options: {0}")]
    Options(String),
}

/// 1–128 characters of `[A-Za-z0-9._:-]` (what the control plane accepts).
pub fn valid_node_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// The config an edge starts with.
pub struct Boot {
    pub config: EdgeConfig,
    pub served: Served,
}

/// Picks the boot config: a valid snapshot from `snapshots` first (it is the
/// newest version the control plane gave this edge), else the `file`
/// (version 0; a broken file is an error), else an empty config with source
/// `None` (the edge is up but not ready until a version arrives).
pub fn boot(file: Option<&Path>, snapshots: Option<&SnapshotStore>) -> Result<Boot, ConfigError> {
    let now = state::now_unix_ms();
    if let Some(store) = snapshots {
        match store.load() {
            Ok(Some(snap)) => {
                let version = snap.version;
                match EdgeConfig::compile(snap.config, version, &|n| std::env::var(n).ok()) {
                    Ok(config) => {
                        tracing::info!(version, path = %store.path().display(), "booting from the config snapshot");
                        return Ok(Boot {
                            config,
                            served: Served {
                                version,
                                source: ConfigSource::Snapshot,
                                committed_at_unix_ms: snap.committed_at_unix_ms,
                                applied_at_unix_ms: now,
                            },
                        });
                    }
                    Err(e) => {
                        tracing::error!(version, error = %e, "ignoring the config snapshot: it does not compile")
                    }
                }
            }
            Ok(None) => tracing::info!(path = %store.path().display(), "no config snapshot yet"),
            Err(e) => tracing::error!(error = %e, "ignoring the config snapshot"),
        }
    }
    if let Some(path) = file {
        let doc = config::load_file(path)?;
        let config = EdgeConfig::compile(doc, 0, &|n| std::env::var(n).ok())?;
        return Ok(Boot {
            config,
            served: Served {
                version: 0,
                source: ConfigSource::File,
                committed_at_unix_ms: 0,
                applied_at_unix_ms: now,
            },
        });
    }
    let config = EdgeConfig::compile(Default::default(), 0, &|_| None)?;
    Ok(Boot {
        config,
        served: Served {
            version: 0,
            source: ConfigSource::None,
            committed_at_unix_ms: 0,
            applied_at_unix_ms: 0,
        },
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn node_ids() {
        assert!(valid_node_id("edge-eu-1.a:b_c"));
        assert!(!valid_node_id(""));
        assert!(!valid_node_id("has space"));
        assert!(!valid_node_id(&"x".repeat(129)));
    }

    #[test]
    fn boot_prefers_the_snapshot_then_the_file_then_nothing() {
        let dir = std::env::temp_dir().join(format!("sy-boot-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let yaml = "providers:\n  p: {kind: openai, base_url: 'http://127.0.0.1:9/v1'}\nroutes:\n  from-file:\n    targets: [{provider: p, model: x}]\n";
        let file = dir.join("edge.yaml");
        std::fs::write(&file, yaml).unwrap();
        let store = SnapshotStore::new(dir.join("snap"));

        let b = boot(None, Some(&store)).unwrap();
        assert_eq!(b.served.source, ConfigSource::None);
        let b = boot(Some(&file), Some(&store)).unwrap();
        assert_eq!(b.served.source, ConfigSource::File);
        assert!(b.config.routes.contains_key("from-file"));

        let doc = switchyard_proto::config::from_yaml_str(
            &yaml.replace("from-file", "from-snapshot"),
            |_| None,
        )
        .unwrap();
        store
            .save(&Snapshot {
                version: 5,
                committed_at_unix_ms: 9,
                author: String::new(),
                comment: String::new(),
                config: doc,
            })
            .unwrap();
        let b = boot(Some(&file), Some(&store)).unwrap();
        assert_eq!(
            (b.served.source, b.served.version, b.config.version),
            (ConfigSource::Snapshot, 5, 5)
        );
        assert!(b.config.routes.contains_key("from-snapshot"));
        // A corrupt snapshot falls back to the file.
        std::fs::write(store.path(), b"garbage").unwrap();
        let b = boot(Some(&file), Some(&store)).unwrap();
        assert_eq!(b.served.source, ConfigSource::File);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
