//! What the edge serves and how it got there: the shared
//! `ArcSwap<EdgeConfig>` plus the metadata of the served version, the
//! versions applied and rejected so far, and the control-plane connection
//! state. [`ConfigState::apply`] is the one place a control-plane version is
//! validated, compiled and swapped in.

use crate::config::EdgeConfig;
use crate::telemetry::metrics;
use arc_swap::ArcSwap;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use switchyard_proto::config::Config;

/// How many applied / rejected versions `/admin/config` lists.
const HISTORY: usize = 64;

/// Where the served config came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConfigSource {
    /// Nothing yet: not ready.
    None,
    /// `--config FILE` (version 0).
    File,
    /// The last-known-good snapshot on disk.
    Snapshot,
    /// A version streamed by the control plane.
    ControlPlane,
}

/// Metadata of the served version.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Served {
    pub version: u64,
    pub source: ConfigSource,
    /// Commit time at the control plane (0 for a file).
    pub committed_at_unix_ms: i64,
    /// When this edge swapped it in.
    pub applied_at_unix_ms: i64,
}

/// One accepted version (`/admin/config` → `applied`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct AppliedVersion {
    pub version: u64,
    pub source: ConfigSource,
    pub committed_at_unix_ms: i64,
    pub applied_at_unix_ms: i64,
}

/// One rejected version (`/admin/config` → `rejected`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct RejectedVersion {
    pub version: u64,
    pub error: String,
    pub at_unix_ms: i64,
}

/// A version as received from the control plane (or read from a snapshot).
#[derive(Debug, Clone)]
pub struct Incoming {
    pub version: u64,
    pub committed_at_unix_ms: i64,
    pub config: Option<Config>,
}

/// What [`ConfigState::apply`] did with a version.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// The version is not newer than the served one: nothing changed.
    Skipped { served: u64 },
    /// The version was rejected before (same process): nothing changed.
    AlreadyRejected { error: String },
    /// Validated, compiled and swapped in.
    Accepted,
    /// Invalid: the previous version is still served.
    Rejected { error: String },
}

struct Inner {
    served: Served,
    applied: VecDeque<AppliedVersion>,
    rejected: VecDeque<RejectedVersion>,
    last_error: Option<String>,
}

/// Shared by the admin listener and the control-plane client.
pub struct ConfigState {
    config: Arc<ArcSwap<EdgeConfig>>,
    inner: Mutex<Inner>,
    control_plane: Option<String>,
    connected: AtomicBool,
    /// Watch streams opened so far.
    connects: AtomicU64,
    /// False while start-up still waits for the control plane's first
    /// answer (see `--boot-wait`).
    settled: AtomicBool,
}

pub fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn push_bounded<T>(q: &mut VecDeque<T>, v: T) {
    if q.len() == HISTORY {
        q.pop_front();
    }
    q.push_back(v);
}

impl ConfigState {
    /// `config` holds the boot config (an empty one when `served.source` is
    /// `None`); `control_plane` is the URL when one is configured.
    pub fn new(
        config: Arc<ArcSwap<EdgeConfig>>,
        served: Served,
        control_plane: Option<String>,
    ) -> Self {
        let mut applied = VecDeque::new();
        if served.source != ConfigSource::None {
            applied.push_back(AppliedVersion {
                version: served.version,
                source: served.source,
                committed_at_unix_ms: served.committed_at_unix_ms,
                applied_at_unix_ms: served.applied_at_unix_ms,
            });
        }
        metrics::config_version(served.version);
        let settled = control_plane.is_none();
        Self {
            config,
            inner: Mutex::new(Inner {
                served,
                applied,
                rejected: VecDeque::new(),
                last_error: None,
            }),
            control_plane,
            connected: AtomicBool::new(false),
            connects: AtomicU64::new(0),
            settled: AtomicBool::new(settled),
        }
    }

    /// The config requests load.
    pub fn config(&self) -> &Arc<ArcSwap<EdgeConfig>> {
        &self.config
    }

    pub fn served(&self) -> Served {
        self.inner.lock().served.clone()
    }

    /// A config is being served.
    pub fn is_serving(&self) -> bool {
        self.inner.lock().served.source != ConfigSource::None
    }

    /// Serving a config and done waiting for the control plane at boot.
    pub fn is_ready(&self) -> bool {
        self.settled.load(Ordering::Relaxed) && self.is_serving()
    }

    /// Start-up is done waiting for the control plane.
    pub fn settle(&self) {
        if !self.settled.swap(true, Ordering::Relaxed) {
            tracing::debug!("boot wait over");
        }
    }

    pub fn set_connected(&self, connected: bool) {
        if connected {
            self.connects.fetch_add(1, Ordering::Relaxed);
        }
        self.connected.store(connected, Ordering::Relaxed);
        metrics::control_plane_connected(connected);
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Records the last control-plane error (shown by `/admin/config`).
    pub fn set_error(&self, error: Option<String>) {
        self.inner.lock().last_error = error;
    }

    /// Validates and compiles `update` and swaps it in if it is newer than
    /// the served version. Versions at or below the served one are skipped,
    /// so no version is ever applied twice and the edge never goes back.
    pub fn apply(&self, update: Incoming, source: ConfigSource) -> Decision {
        let mut inner = self.inner.lock();
        let served = &inner.served;
        if served.source != ConfigSource::None && update.version <= served.version {
            return Decision::Skipped {
                served: served.version,
            };
        }
        if let Some(r) = inner.rejected.iter().find(|r| r.version == update.version) {
            return Decision::AlreadyRejected {
                error: r.error.clone(),
            };
        }
        let compiled = match update.config {
            None => Err(format!("version {} carries no config", update.version)),
            Some(doc) => EdgeConfig::compile(doc, update.version, &|n| std::env::var(n).ok())
                .map_err(|e| e.to_string()),
        };
        let now = now_unix_ms();
        match compiled {
            Ok(cfg) => {
                self.config.store(Arc::new(cfg));
                inner.served = Served {
                    version: update.version,
                    source,
                    committed_at_unix_ms: update.committed_at_unix_ms,
                    applied_at_unix_ms: now,
                };
                push_bounded(
                    &mut inner.applied,
                    AppliedVersion {
                        version: update.version,
                        source,
                        committed_at_unix_ms: update.committed_at_unix_ms,
                        applied_at_unix_ms: now,
                    },
                );
                drop(inner);
                metrics::config_version(update.version);
                metrics::config_apply("accepted");
                self.refresh_metrics();
                Decision::Accepted
            }
            Err(error) => {
                push_bounded(
                    &mut inner.rejected,
                    RejectedVersion {
                        version: update.version,
                        error: error.clone(),
                        at_unix_ms: now,
                    },
                );
                drop(inner);
                metrics::config_apply("rejected");
                Decision::Rejected { error }
            }
        }
    }

    /// Updates `switchyard_config_age_seconds` (called before each scrape).
    pub fn refresh_metrics(&self) {
        let served = self.served();
        if served.source == ConfigSource::None {
            return;
        }
        let since = if served.committed_at_unix_ms > 0 {
            served.committed_at_unix_ms
        } else {
            served.applied_at_unix_ms
        };
        metrics::config_age((now_unix_ms() - since) as f64 / 1000.0);
    }

    /// The `/admin/config` document.
    pub fn view(&self) -> serde_json::Value {
        let cfg = self.config.load();
        let mut routes: Vec<&String> = cfg.routes.keys().collect();
        routes.sort();
        let mut providers: Vec<&String> = cfg.providers.keys().collect();
        providers.sort();
        let inner = self.inner.lock();
        serde_json::json!({
            "version": inner.served.version,
            "source": inner.served.source,
            "serving": inner.served.source != ConfigSource::None,
            "ready": self.settled.load(Ordering::Relaxed) && inner.served.source != ConfigSource::None,
            "committed_at_unix_ms": inner.served.committed_at_unix_ms,
            "applied_at_unix_ms": inner.served.applied_at_unix_ms,
            "routes": routes,
            "providers": providers,
            "applied": inner.applied,
            "rejected": inner.rejected,
            "control_plane": self.control_plane.as_ref().map(|url| serde_json::json!({
                "url": url,
                "connected": self.connected.load(Ordering::Relaxed),
                "connects": self.connects.load(Ordering::Relaxed),
                "last_error": inner.last_error,
            })),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn doc(model: &str) -> Config {
        switchyard_proto::config::from_yaml_str(
            &format!("providers:\n  p: {{kind: openai, base_url: 'http://127.0.0.1:9/v1'}}\nroutes:\n  {model}:\n    targets: [{{provider: p, model: x}}]\n"),
            |_| None,
        )
        .unwrap()
    }

    fn incoming(version: u64, config: Option<Config>) -> Incoming {
        Incoming {
            version,
            committed_at_unix_ms: 1,
            config,
        }
    }

    fn empty_state() -> ConfigState {
        let empty = EdgeConfig::compile(Config::default(), 0, &|_| None).unwrap();
        ConfigState::new(
            Arc::new(ArcSwap::from_pointee(empty)),
            Served {
                version: 0,
                source: ConfigSource::None,
                committed_at_unix_ms: 0,
                applied_at_unix_ms: 0,
            },
            Some("http://127.0.0.1:1".into()),
        )
    }

    #[test]
    fn applies_in_order_never_twice_and_keeps_serving_on_reject() {
        let s = empty_state();
        assert!(!s.is_serving());
        assert_eq!(
            s.apply(incoming(1, Some(doc("a"))), ConfigSource::ControlPlane),
            Decision::Accepted
        );
        assert!(s.is_serving());
        assert!(!s.is_ready(), "not settled yet");
        s.settle();
        assert!(s.is_ready());
        assert_eq!(
            s.apply(incoming(1, Some(doc("a"))), ConfigSource::ControlPlane),
            Decision::Skipped { served: 1 }
        );
        // Invalid: unknown provider.
        let mut bad = doc("b");
        bad.routes.get_mut("b").unwrap().targets[0].provider = "nope".into();
        let d = s.apply(incoming(2, Some(bad.clone())), ConfigSource::ControlPlane);
        let Decision::Rejected { error } = d else {
            panic!("{d:?}")
        };
        assert!(error.contains("routes.b"), "{error}");
        assert_eq!(s.config().load().version, 1);
        assert!(s.config().load().routes.contains_key("a"));
        assert!(matches!(
            s.apply(incoming(2, Some(bad)), ConfigSource::ControlPlane),
            Decision::AlreadyRejected { .. }
        ));
        assert!(matches!(
            s.apply(incoming(3, None), ConfigSource::ControlPlane),
            Decision::Rejected { .. }
        ));
        assert_eq!(
            s.apply(incoming(4, Some(doc("c"))), ConfigSource::ControlPlane),
            Decision::Accepted
        );
        // Older versions never go back in.
        assert_eq!(
            s.apply(incoming(1, Some(doc("a"))), ConfigSource::ControlPlane),
            Decision::Skipped { served: 4 }
        );
        let v = s.view();
        let applied: Vec<u64> = v["applied"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["version"].as_u64().unwrap())
            .collect();
        assert_eq!(applied, vec![1, 4]);
        assert_eq!(v["rejected"].as_array().unwrap().len(), 2);
        assert_eq!(v["routes"], serde_json::json!(["c"]));
        assert_eq!(v["source"], "control_plane");
    }
}
