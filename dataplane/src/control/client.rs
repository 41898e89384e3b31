//! The Watch/Ack loop against `switchyard.control.v1.EdgeService`.
//!
//! One long-lived `Watch` stream at a time. Each `ConfigUpdate` goes through
//! [`ConfigState::apply`]; an accepted version is written to the snapshot
//! and acknowledged, a rejected one is NACKed while the previous version
//! keeps serving. Whenever the stream fails or ends the client reconnects
//! with jittered exponential backoff (100 ms doubling to 5 s, reset after a
//! healthy stream); it never gives up and never stops the edge.

use super::backoff::Backoff;
use super::snapshot::{Snapshot, SnapshotStore};
use super::state::{ConfigSource, ConfigState, Decision, Incoming};
use super::{ControlError, ControlOptions};
use std::sync::Arc;
use std::time::Duration;
use switchyard_proto::control::edge_service_client::EdgeServiceClient;
use switchyard_proto::control::{AckRequest, ConfigUpdate, WatchRequest, AUTH_HEADER};
use tokio::time::Instant;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A stream that stayed open this long counts as healthy (resets backoff).
const HEALTHY_STREAM: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// Adds `authorization: Bearer <edge token>` to every call.
#[derive(Clone)]
struct Bearer(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert(AUTH_HEADER, v.clone());
        }
        Ok(req)
    }
}

type Client = EdgeServiceClient<InterceptedService<Channel, Bearer>>;

/// The control-plane client of one edge.
pub struct ControlClient {
    opts: ControlOptions,
    state: Arc<ConfigState>,
    snapshots: Option<SnapshotStore>,
    endpoint: Endpoint,
    bearer: Bearer,
}

/// How one Watch attempt ended.
struct Attempt {
    /// The stream was opened.
    connected: bool,
    /// At least one update arrived.
    received: bool,
    error: String,
}

impl ControlClient {
    /// Checks the options (URL, node id, token, CA file); no I/O to the
    /// control plane yet.
    pub fn new(opts: ControlOptions, state: Arc<ConfigState>) -> Result<Self, ControlError> {
        if !super::valid_node_id(&opts.node_id) {
            return Err(ControlError::Options(format!(
                "node id {:?} must be 1-128 characters of [A-Za-z0-9._:-]",
                opts.node_id
            )));
        }
        let mut endpoint = Endpoint::from_shared(opts.url.clone())
            .map_err(|e| ControlError::Options(format!("control plane URL {:?}: {e}", opts.url)))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .tcp_keepalive(Some(Duration::from_secs(30)))
            // Detects a control plane that vanished without closing the
            // connection (the Watch stream would otherwise wait forever).
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true);
        if opts.url.starts_with("https://") {
            let mut tls = tonic::transport::ClientTlsConfig::new();
            if let Some(ca) = &opts.ca_cert {
                let pem = std::fs::read(ca)
                    .map_err(|e| ControlError::Options(format!("{}: {e}", ca.display())))?;
                tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(pem));
            }
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| ControlError::Options(format!("TLS configuration: {e}")))?;
        } else if !opts.url.starts_with("http://") {
            return Err(ControlError::Options(format!(
                "control plane URL {:?} must start with http:// or https://",
                opts.url
            )));
        }
        let bearer = if opts.token.is_empty() {
            tracing::warn!("no edge token (--edge-token / SWITCHYARD_EDGE_TOKEN): the control plane will refuse the edge");
            Bearer(None)
        } else {
            Bearer(Some(format!("Bearer {}", opts.token).parse().map_err(
                |_| {
                    ControlError::Options(
                        "edge token contains characters not allowed in a header".into(),
                    )
                },
            )?))
        };
        let snapshots = opts.snapshot_dir.as_ref().map(SnapshotStore::new);
        Ok(Self {
            opts,
            state,
            snapshots,
            endpoint,
            bearer,
        })
    }

    /// Runs until `shutdown` resolves.
    pub async fn run(&self, shutdown: impl std::future::Future<Output = ()>) {
        let state = self.state.clone();
        let boot_wait = self.opts.boot_wait;
        let settle = async {
            tokio::time::sleep(boot_wait).await;
            state.settle();
            std::future::pending::<()>().await
        };
        tokio::select! {
            _ = shutdown => {}
            _ = settle => {}
            _ = self.watch_forever() => {}
        }
        self.state.set_connected(false);
    }

    async fn watch_forever(&self) {
        let mut backoff = Backoff::new(BACKOFF_BASE, BACKOFF_MAX);
        let mut failures: u32 = 0;
        loop {
            let started = Instant::now();
            let attempt = self.watch_once().await;
            self.state.set_connected(false);
            if !attempt.connected {
                // The control plane is unreachable: serve what we have now.
                self.state.settle();
            }
            let healthy = attempt.received || started.elapsed() >= HEALTHY_STREAM;
            if healthy {
                backoff.reset();
                failures = 0;
            }
            failures = failures.saturating_add(1);
            let delay = backoff.next_delay();
            if failures == 1 || attempt.connected {
                tracing::warn!(url = %self.opts.url, error = %attempt.error, retry_in = ?delay, "control plane watch ended; serving the current config and reconnecting");
            } else {
                tracing::debug!(url = %self.opts.url, error = %attempt.error, failures, retry_in = ?delay, "control plane still unreachable");
            }
            self.state.set_error(Some(attempt.error));
            tokio::time::sleep(delay).await;
        }
    }

    async fn watch_once(&self) -> Attempt {
        let mut attempt = Attempt {
            connected: false,
            received: false,
            error: String::new(),
        };
        let channel = match self.endpoint.connect().await {
            Ok(c) => c,
            Err(e) => {
                attempt.error = format!("connect {}: {}", self.opts.url, error_chain(&e));
                return attempt;
            }
        };
        let mut client = EdgeServiceClient::with_interceptor(channel, self.bearer.clone());
        let served = self.state.served();
        let last_applied_version = match served.source {
            ConfigSource::Snapshot | ConfigSource::ControlPlane => served.version,
            ConfigSource::File | ConfigSource::None => 0,
        };
        let req = WatchRequest {
            node_id: self.opts.node_id.clone(),
            region: self.opts.region.clone(),
            last_applied_version,
        };
        let mut stream = match client.watch(req).await {
            Ok(r) => r.into_inner(),
            Err(s) => {
                attempt.error = status_text(&s);
                if matches!(
                    s.code(),
                    tonic::Code::Unauthenticated | tonic::Code::InvalidArgument
                ) {
                    tracing::error!(error = %attempt.error, "control plane refused this edge");
                }
                return attempt;
            }
        };
        attempt.connected = true;
        self.state.set_connected(true);
        self.state.set_error(None);
        tracing::info!(url = %self.opts.url, last_applied_version, "watching the control plane");
        let mut first = true;
        loop {
            match stream.message().await {
                Ok(Some(update)) => {
                    attempt.received = true;
                    self.handle(&mut client, update, first).await;
                    first = false;
                    self.state.settle();
                }
                Ok(None) => {
                    attempt.error = "stream ended".into();
                    return attempt;
                }
                Err(s) => {
                    attempt.error = status_text(&s);
                    return attempt;
                }
            }
        }
    }

    async fn handle(&self, client: &mut Client, update: ConfigUpdate, first: bool) {
        let version = update.version;
        let doc = update.config.clone();
        let decision = self.state.apply(
            Incoming {
                version,
                committed_at_unix_ms: update.committed_at_unix_ms,
                config: update.config,
            },
            ConfigSource::ControlPlane,
        );
        match decision {
            Decision::Accepted => {
                let lag_ms = super::state::now_unix_ms() - update.committed_at_unix_ms;
                tracing::info!(
                    version,
                    snapshot = update.snapshot,
                    author = %update.author,
                    comment = %update.comment,
                    lag_ms,
                    "applied config version"
                );
                if let (Some(store), Some(config)) = (&self.snapshots, doc) {
                    self.save_snapshot(
                        store.clone(),
                        Snapshot {
                            version,
                            committed_at_unix_ms: update.committed_at_unix_ms,
                            author: update.author,
                            comment: update.comment,
                            config,
                        },
                    )
                    .await;
                }
                self.ack(client, version, true, String::new()).await;
            }
            Decision::Rejected { error } => {
                tracing::warn!(version, error = %error, "rejected config version; still serving the previous one");
                self.ack(client, version, false, error).await;
            }
            Decision::AlreadyRejected { error } => {
                // Re-sent after a reconnect: tell this control plane again.
                if first {
                    self.ack(client, version, false, error).await;
                }
            }
            Decision::Skipped { served } => {
                if version < served {
                    tracing::warn!(
                        version,
                        served,
                        "control plane sent an older version than this edge serves (store reset or lagging replica); keeping the served one"
                    );
                } else {
                    tracing::debug!(version, "already serving this version");
                }
                // After a reconnect: report what we serve.
                if first {
                    self.ack(client, served, true, String::new()).await;
                }
            }
        }
    }

    async fn save_snapshot(&self, store: SnapshotStore, snap: Snapshot) {
        let version = snap.version;
        match tokio::task::spawn_blocking(move || store.save(&snap)).await {
            Ok(Ok(())) => tracing::debug!(version, "snapshot written"),
            Ok(Err(e)) => tracing::error!(version, error = %e, "cannot write the config snapshot"),
            Err(e) => tracing::error!(version, error = %e, "snapshot writer failed"),
        }
    }

    async fn ack(&self, client: &mut Client, version: u64, accepted: bool, error: String) {
        let mut req = tonic::Request::new(AckRequest {
            node_id: self.opts.node_id.clone(),
            region: self.opts.region.clone(),
            version,
            accepted,
            error,
        });
        req.set_timeout(ACK_TIMEOUT);
        if let Err(s) = client.ack(req).await {
            tracing::warn!(version, accepted, error = %status_text(&s), "ack failed");
        }
    }
}

fn status_text(s: &tonic::Status) -> String {
    format!("{} ({:?})", s.message(), s.code())
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    let mut depth = 0;
    while let Some(s) = cur {
        if depth >= 8 {
            break;
        }
        let t = s.to_string();
        if !out.contains(&t) {
            out.push_str(": ");
            out.push_str(&t);
        }
        cur = s.source();
        depth += 1;
    }
    out
}
