//! `EdgeService`: config distribution to edges, acknowledgements and usage.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use switchyard_proto::control::{
    edge_service_server::EdgeService, AckRequest, AckResponse, BudgetGrant, BudgetState,
    ConfigUpdate, UsageAck, UsageReport, WatchRequest,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{Loaded, State};
use crate::store::valid_node_id;

/// Implementation of `switchyard.control.v1.EdgeService`.
#[derive(Clone)]
pub struct EdgeApi {
    state: Arc<State>,
}

impl EdgeApi {
    pub fn new(state: Arc<State>) -> Self {
        Self { state }
    }
}

fn check_node_id(id: &str) -> Result<(), Status> {
    if valid_node_id(id) {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "node id {id:?} must be 1-128 characters of [A-Za-z0-9._:-]"
        )))
    }
}

fn update(l: &Loaded, snapshot: bool) -> ConfigUpdate {
    ConfigUpdate {
        version: l.env.version,
        committed_at_unix_ms: l.env.committed_at_unix_ms,
        config: Some(l.config.clone()),
        snapshot,
        config_sha256: l.env.config_sha256.clone(),
        author: l.env.author.clone(),
        comment: l.env.comment.clone(),
    }
}

/// Marks a watch stream connected while alive.
struct Connected {
    state: Arc<State>,
    node_id: String,
}

impl Drop for Connected {
    fn drop(&mut self) {
        self.state.edge_update(&self.node_id, "", |e| {
            e.watchers = e.watchers.saturating_sub(1)
        });
        tracing::info!(node_id = %self.node_id, "edge watch closed");
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Loads version `n`, retrying while the store is unavailable (bounded
/// backoff) until it works, the client leaves or the server stops.
async fn load_retry(
    state: &State,
    n: u64,
    tx: &mpsc::Sender<Result<ConfigUpdate, Status>>,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> Option<Arc<Loaded>> {
    let mut backoff = Duration::from_millis(100);
    loop {
        match state.load(n).await {
            Ok(Some(l)) => return Some(l),
            Ok(None) => {
                let _ = tx
                    .send(Err(Status::internal(format!(
                        "version {n} is missing from the store"
                    ))))
                    .await;
                return None;
            }
            Err(s) if s.code() == tonic::Code::Unavailable => {
                tracing::debug!(version = n, error = %s.message(), "store unavailable; retrying");
            }
            Err(s) => {
                let _ = tx.send(Err(s)).await;
                return None;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = tx.closed() => return None,
            _ = stop.changed() => return None,
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

async fn run_watch(
    state: Arc<State>,
    node_id: String,
    tx: mpsc::Sender<Result<ConfigUpdate, Status>>,
) {
    let _connected = Connected {
        state: state.clone(),
        node_id: node_id.clone(),
    };
    let mut head = state.store().head();
    let mut stop = state.stop();
    let mut last: Option<u64> = None;
    loop {
        if *stop.borrow() {
            let _ = tx
                .send(Err(Status::unavailable("control plane shutting down")))
                .await;
            return;
        }
        let known = (*head.borrow_and_update()).unwrap_or(0);
        if known > last.unwrap_or(0) {
            // First message: the newest version as a snapshot; then each
            // version after the last one sent, in order.
            let n = match last {
                None => known,
                Some(l) => l + 1,
            };
            let Some(l) = load_retry(&state, n, &tx, &mut stop).await else {
                return;
            };
            if tx.send(Ok(update(&l, last.is_none()))).await.is_err() {
                return;
            }
            state.edge_update(&node_id, "", |e| e.status.version_sent = n);
            last = Some(n);
            continue;
        }
        tokio::select! {
            r = head.changed() => if r.is_err() { return },
            r = stop.changed() => if r.is_err() { return },
            _ = tx.closed() => return,
        }
    }
}

async fn run_usage(
    state: Arc<State>,
    mut input: Streaming<UsageReport>,
    tx: mpsc::Sender<Result<UsageAck, Status>>,
) {
    let mut stop = state.stop();
    loop {
        let msg = tokio::select! {
            m = input.message() => m,
            _ = stop.changed() => {
                let _ = tx.send(Err(Status::unavailable("control plane shutting down"))).await;
                return;
            }
        };
        let report = match msg {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(s) => {
                tracing::debug!(error = %s, "usage stream broke");
                return;
            }
        };
        if let Err(s) = check_node_id(&report.edge_id) {
            let _ = tx.send(Err(s)).await;
            return;
        }
        if report.seq == 0 && !report.records.is_empty() {
            let _ = tx
                .send(Err(Status::invalid_argument("seq must start at 1")))
                .await;
            return;
        }
        state.edge_update(&report.edge_id, &report.region, |_| {});
        match state.store().record_usage(&report).await {
            Ok(persisted) => {
                let mut grants = Vec::with_capacity(report.budgets.len());
                for st in &report.budgets {
                    if let Some(g) =
                        budget_grant(&state, &report.edge_id, report.instance_id, st).await
                    {
                        grants.push(g);
                    }
                }
                let ack = UsageAck {
                    persisted_seq: persisted,
                    grants,
                };
                if tx.send(Ok(ack)).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(edge = %report.edge_id, seq = report.seq, error = %e, "usage not persisted");
                let _ = tx.send(Err(super::store_status(e))).await;
                return;
            }
        }
    }
}

/// Answers one edge's state of one global budget window (see
/// [`crate::budgets`]). `None` when the allocation cannot be updated (store
/// unavailable): the edge keeps what it has and its lease is not renewed.
async fn budget_grant(
    state: &State,
    edge_id: &str,
    instance: u64,
    st: &BudgetState,
) -> Option<BudgetGrant> {
    let now = crate::versioning::now_unix_ms();
    let loaded = match state.head_config().await {
        Ok(l) => l,
        Err(s) => {
            tracing::warn!(edge = %edge_id, budget = %st.budget, error = %s.message(), "no config to grant budgets from");
            return None;
        }
    };
    let rule = loaded
        .as_ref()
        .and_then(|l| crate::budgets::rule(&l.config, &st.budget))
        .filter(|r| r.window == st.window);
    let Some(rule) = rule else {
        tracing::warn!(edge = %edge_id, budget = %st.budget, window = %st.window, "edge reported a budget the current config does not share globally");
        return Some(crate::budgets::unmanaged(st));
    };
    if !crate::budgets::window_ok(rule.window, st.window_start_unix_ms, now) {
        tracing::warn!(edge = %edge_id, budget = %st.budget, window_start = st.window_start_unix_ms, "implausible budget window (edge clock?); granting nothing");
        return Some(BudgetGrant {
            budget: st.budget.clone(),
            window: st.window.clone(),
            window_start_unix_ms: st.window_start_unix_ms,
            ..Default::default()
        });
    }
    let policy = *state.budget_policy();
    let lock = state.budget_lock(&st.budget, st.window_start_unix_ms);
    let _serial = lock.lock().await;
    let mut grant = None;
    let result = state
        .store()
        .update_allocation(&st.budget, st.window_start_unix_ms, &mut |current| {
            let mut alloc = current.unwrap_or_default();
            grant = Some(crate::budgets::apply(
                &mut alloc, edge_id, instance, st, &rule, now, &policy,
            ));
            alloc
        })
        .await;
    match result {
        Ok(_) => grant,
        Err(e) => {
            tracing::warn!(edge = %edge_id, budget = %st.budget, error = %e, "budget allocation not updated");
            None
        }
    }
}

#[tonic::async_trait]
impl EdgeService for EdgeApi {
    type WatchStream = BoxStream<ConfigUpdate>;
    type ReportUsageStream = BoxStream<UsageAck>;

    async fn watch(
        &self,
        req: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let req = req.into_inner();
        check_node_id(&req.node_id)?;
        tracing::info!(node_id = %req.node_id, region = %req.region, last_applied = req.last_applied_version, "edge watch opened");
        self.state
            .edge_update(&req.node_id, &req.region, |e| e.watchers += 1);
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(run_watch(self.state.clone(), req.node_id, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn ack(&self, req: Request<AckRequest>) -> Result<Response<AckResponse>, Status> {
        let req = req.into_inner();
        check_node_id(&req.node_id)?;
        if req.accepted {
            tracing::info!(node_id = %req.node_id, version = req.version, "edge accepted version");
        } else {
            tracing::warn!(node_id = %req.node_id, version = req.version, error = %req.error, "edge rejected version");
        }
        self.state.edge_update(&req.node_id, &req.region, |e| {
            let s = &mut e.status;
            s.last_ack_version = req.version;
            s.last_ack_accepted = req.accepted;
            s.last_ack_error = req.error.clone();
            s.last_ack_unix_ms = crate::versioning::now_unix_ms();
            if req.accepted {
                s.version_served = req.version;
            }
        });
        Ok(Response::new(AckResponse {}))
    }

    async fn report_usage(
        &self,
        req: Request<Streaming<UsageReport>>,
    ) -> Result<Response<Self::ReportUsageStream>, Status> {
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(run_usage(self.state.clone(), req.into_inner(), tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
