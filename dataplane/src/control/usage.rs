//! The usage reporter: one `EdgeService.ReportUsage` stream to the control
//! plane (see `docs/budgets.md`).
//!
//! - Every admitted call's usage record goes to the [`Spool`] (memory, then
//!   the spool file, fsynced in batches by the spool's own thread); flushed
//!   records are sent in batches of up to 500, at most 4 reports in flight;
//!   each `UsageAck.persisted_seq` lets the spool drop and compact.
//! - Every report also carries the [`GrantTable`]'s budget states; the ack
//!   answering it (exactly one per report, in order) carries the grants,
//!   applied with the send time of that report.
//! - A stream starts with a report without records ("hello"): its ack tells
//!   the persisted seq (re-sending starts after it; a spool whose counter is
//!   behind renumbers) and brings grants at once.
//! - A report goes out when records were flushed, when a budget share wants
//!   more, and at least every second while shares are active (lease
//!   renewal). No ack within 10 s, or any stream error: reconnect with
//!   jittered backoff (100 ms doubling to 5 s). Nothing here stops the edge.

use super::backoff::Backoff;
use super::{ControlError, ControlOptions};
use crate::limits::grants::GrantTable;
use crate::limits::Limits;
use crate::telemetry::metrics;
use crate::usage::spool::Spool;
use crate::usage::UsageSink;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use switchyard_proto::control::edge_service_client::EdgeServiceClient;
use switchyard_proto::control::{UsageRecord, UsageReport, AUTH_HEADER};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Endpoint;

/// Records per report.
const BATCH: usize = 500;
/// Reports sent and not yet acknowledged.
const MAX_IN_FLIGHT: usize = 4;
/// Reports renew leases at least this often while shares are active.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// A report not acknowledged within this long breaks the stream.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How often the spool thread makes queued records durable.
const FLUSH_EVERY: Duration = Duration::from_millis(25);

/// Adds `authorization: Bearer <edge token>`.
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

/// What start-up wires in for global budgets and usage reporting.
pub struct UsageSetup {
    /// The edge's limits: with grants when there is a control plane.
    pub limits: Arc<Limits>,
    /// Where the gateway puts usage records (`None` standalone).
    pub sink: Option<Arc<dyn UsageSink>>,
    /// The reporter to run as a background service (`None` standalone).
    pub reporter: Option<UsageReporter>,
}

/// Builds the limits, the spool (in the snapshot dir) and the reporter for
/// an edge with a control plane; plain local limits without one.
pub fn setup(
    control: Option<&ControlOptions>,
    node_id: &str,
    region: &str,
) -> Result<UsageSetup, ControlError> {
    let Some(c) = control else {
        return Ok(UsageSetup {
            limits: Arc::new(Limits::default()),
            sink: None,
            reporter: None,
        });
    };
    let grants = Arc::new(GrantTable::default());
    let limits = Arc::new(Limits::with_grants(grants.clone()));
    if c.snapshot_dir.is_none() {
        tracing::warn!("no --snapshot-dir: usage records wait for the control plane in memory only and a restart loses those not yet delivered");
    }
    let spool = Arc::new(Spool::open(c.snapshot_dir.as_deref()).map_err(|e| {
        ControlError::Options(format!(
            "usage spool in {}: {e}",
            c.snapshot_dir
                .as_deref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        ))
    })?);
    spool
        .start_flusher(FLUSH_EVERY)
        .map_err(|e| ControlError::Options(format!("usage spool thread: {e}")))?;
    let reporter = UsageReporter::new(c, node_id, region, spool.clone(), limits.clone(), grants)?;
    Ok(UsageSetup {
        limits,
        sink: Some(spool),
        reporter: Some(reporter),
    })
}

/// Reports usage and budget states, applies grants.
pub struct UsageReporter {
    url: String,
    node_id: String,
    region: String,
    endpoint: Endpoint,
    bearer: Bearer,
    spool: Arc<Spool>,
    limits: Arc<Limits>,
    grants: Arc<GrantTable>,
}

impl UsageReporter {
    pub fn new(
        c: &ControlOptions,
        node_id: &str,
        region: &str,
        spool: Arc<Spool>,
        limits: Arc<Limits>,
        grants: Arc<GrantTable>,
    ) -> Result<Self, ControlError> {
        let mut endpoint = Endpoint::from_shared(c.url.clone())
            .map_err(|e| ControlError::Options(format!("control plane URL {:?}: {e}", c.url)))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true);
        if c.url.starts_with("https://") {
            let mut tls = tonic::transport::ClientTlsConfig::new();
            if let Some(ca) = &c.ca_cert {
                let pem = std::fs::read(ca)
                    .map_err(|e| ControlError::Options(format!("{}: {e}", ca.display())))?;
                tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(pem));
            }
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| ControlError::Options(format!("TLS configuration: {e}")))?;
        }
        let bearer = if c.token.is_empty() {
            Bearer(None)
        } else {
            Bearer(Some(format!("Bearer {}", c.token).parse().map_err(
                |_| {
                    ControlError::Options(
                        "edge token contains characters not allowed in a header".into(),
                    )
                },
            )?))
        };
        Ok(Self {
            url: c.url.clone(),
            node_id: node_id.to_string(),
            region: region.to_string(),
            endpoint,
            bearer,
            spool,
            limits,
            grants,
        })
    }

    /// Runs until `shutdown` resolves. (The spool's own thread keeps
    /// flushing until the process exits.)
    pub async fn run(&self, shutdown: impl std::future::Future<Output = ()>) {
        metrics::usage_connected(false);
        for result in ["acked", "failed"] {
            metrics::usage_report_init(result);
        }
        self.publish();
        tokio::select! {
            _ = shutdown => {}
            _ = self.forever() => {}
        }
        self.grants.set_connected(false);
        metrics::usage_connected(false);
    }

    async fn forever(&self) {
        let mut backoff = Backoff::new(BACKOFF_BASE, BACKOFF_MAX);
        let mut next_idx: u64 = 0;
        let mut failures: u32 = 0;
        loop {
            let started = Instant::now();
            let mut acked_any = false;
            let err = self.stream_once(&mut next_idx, &mut acked_any).await;
            self.grants.set_connected(false);
            metrics::usage_connected(false);
            metrics::usage_report("failed");
            self.publish();
            if acked_any || started.elapsed() >= Duration::from_secs(5) {
                backoff.reset();
                failures = 0;
            }
            failures = failures.saturating_add(1);
            let delay = backoff.next_delay();
            if failures == 1 {
                tracing::warn!(url = %self.url, error = %err, retry_in = ?delay, "usage stream to the control plane ended; usage is spooled and budgets use what was granted");
            } else {
                tracing::debug!(url = %self.url, error = %err, failures, retry_in = ?delay, "usage stream still down");
            }
            tokio::time::sleep(delay).await;
        }
    }

    fn report(&self, idx: u64, records: Vec<UsageRecord>) -> UsageReport {
        UsageReport {
            edge_id: self.node_id.clone(),
            seq: records.last().map_or(0, |r| r.seq),
            records,
            region: self.region.clone(),
            budgets: self
                .grants
                .states(&self.limits.ledger, idx, SystemTime::now()),
            instance_id: self.grants.instance_id(),
        }
    }

    /// Refreshes the budget and spool gauges.
    fn publish(&self) {
        for s in self.grants.view(&self.limits.ledger) {
            metrics::budget_share(&s.budget, s.allowance, s.committed, s.lease_live);
        }
        let st = self.spool.stats();
        metrics::usage_spool(st.pending, st.acked_seq);
    }

    async fn spool_io<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Spool) -> std::io::Result<T> + Send + 'static,
    ) -> Result<T, String> {
        let spool = self.spool.clone();
        match tokio::task::spawn_blocking(move || f(&spool)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(format!("usage spool: {e}")),
            Err(e) => Err(format!("usage spool task: {e}")),
        }
    }

    /// One stream, until it fails. Returns why.
    async fn stream_once(&self, next_idx: &mut u64, acked_any: &mut bool) -> String {
        let channel = match self.endpoint.connect().await {
            Ok(c) => c,
            Err(e) => return format!("connect {}: {e}", self.url),
        };
        let mut client = EdgeServiceClient::with_interceptor(channel, self.bearer.clone());
        let (tx, rx) = tokio::sync::mpsc::channel::<UsageReport>(MAX_IN_FLIGHT + 1);
        let mut outstanding: VecDeque<(u64, Instant)> = VecDeque::new();
        // Hello: no records, just states; its ack tells the persisted seq.
        let hello_idx = *next_idx;
        *next_idx += 1;
        let hello = self.report(hello_idx, Vec::new());
        outstanding.push_back((hello_idx, Instant::now()));
        if tx.send(hello).await.is_err() {
            return "usage stream closed".into();
        }
        let mut acks = match client
            .report_usage(futures::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|r| (r, rx))
            }))
            .await
        {
            Ok(r) => r.into_inner(),
            Err(s) => return format!("{} ({:?})", s.message(), s.code()),
        };
        let mut cursor: Option<u64> = None;
        let mut last_report = Instant::now();
        let mut last_maintain = Instant::now();
        loop {
            if last_maintain.elapsed() >= Duration::from_secs(1) {
                last_maintain = Instant::now();
                if let Err(e) = self.spool_io(|s| s.maintain()).await {
                    tracing::error!(error = %e, "cannot compact the usage spool");
                }
            }
            // Send what is due, up to the in-flight cap (records only once
            // the hello told where to start).
            while let Some(from) = cursor {
                if outstanding.len() >= MAX_IN_FLIGHT {
                    break;
                }
                let records = self.spool.pending_after(from, BATCH);
                let due = !records.is_empty()
                    || self.grants.wants_more()
                    || last_report.elapsed() >= HEARTBEAT;
                if !due {
                    break;
                }
                let idx = *next_idx;
                let report = self.report(idx, records);
                last_report = Instant::now();
                if report.records.is_empty() && report.budgets.is_empty() {
                    break;
                }
                *next_idx += 1;
                if report.seq > 0 {
                    cursor = Some(report.seq);
                }
                outstanding.push_back((idx, Instant::now()));
                if tx.send(report).await.is_err() {
                    return "usage stream closed".into();
                }
            }
            let ack_deadline = outstanding
                .front()
                .map(|(_, sent)| tokio::time::Instant::from_std(*sent + ACK_TIMEOUT));
            tokio::select! {
                m = acks.message() => {
                    let ack = match m {
                        Ok(Some(a)) => a,
                        Ok(None) => return "stream ended".into(),
                        Err(s) => return format!("{} ({:?})", s.message(), s.code()),
                    };
                    let Some((idx, sent)) = outstanding.pop_front() else {
                        return "an ack without a report".into();
                    };
                    self.grants.apply(idx, sent, &ack.grants);
                    let persisted = ack.persisted_seq;
                    if cursor.is_none() {
                        // The hello's answer: start after what is persisted
                        // (renumbering if our counter is behind).
                        if let Err(e) = self.spool_io(move |s| s.sync_with(persisted)).await {
                            return e;
                        }
                        cursor = Some(self.spool.stats().acked_seq);
                        self.grants.set_connected(true);
                        metrics::usage_connected(true);
                        tracing::info!(url = %self.url, persisted_seq = persisted, "usage stream to the control plane open");
                    } else if let Err(e) = self.spool_io(move |s| s.ack(persisted)).await {
                        tracing::error!(error = %e, "cannot compact the usage spool");
                    }
                    *acked_any = true;
                    metrics::usage_report("acked");
                    self.publish();
                }
                _ = self.spool.flushed() => {}
                _ = self.grants.wants() => {}
                _ = tokio::time::sleep(HEARTBEAT / 4) => {}
                _ = async {
                    match ack_deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                } => return format!("no ack within {ACK_TIMEOUT:?}"),
            }
        }
    }
}

/// Runs the reporter as a Pingora background service.
pub struct UsageService(pub UsageReporter);

#[async_trait::async_trait]
impl pingora_core::services::background::BackgroundService for UsageService {
    async fn start(&self, mut shutdown: pingora_core::server::ShutdownWatch) {
        self.0
            .run(async move {
                let _ = shutdown.changed().await;
            })
            .await;
    }
}
