//! Active health probes: every provider with health checks enabled is
//! probed on its interval with a cheap real request (its models endpoint).
//! Any HTTP answer below 500 (even 401/404) proves the endpoint is alive;
//! connect errors, timeouts and 5xx count as failures.

use super::Router;
use crate::config::EdgeConfig;
use crate::providers::adapter;
use crate::telemetry::metrics;
use crate::upstream::{UpstreamClient, UpstreamError};
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

const TICK: Duration = Duration::from_millis(100);

/// Runs until `shutdown` resolves.
pub async fn run(
    router: Arc<Router>,
    client: Arc<UpstreamClient>,
    config: Arc<ArcSwap<EdgeConfig>>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let mut next_due: HashMap<String, Instant> = HashMap::new();
    let mut in_flight = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tokio::time::sleep(TICK) => {}
        }
        while in_flight.try_join_next().is_some() {}
        let cfg = config.load_full();
        let now = Instant::now();
        next_due.retain(|name, _| cfg.providers.contains_key(name));
        for (name, provider) in &cfg.providers {
            if !provider.health.enabled {
                continue;
            }
            let due = next_due.entry(name.clone()).or_insert(now);
            if now < *due {
                continue;
            }
            *due = now + provider.health.interval;
            let provider = provider.clone();
            let client = client.clone();
            let router = router.clone();
            in_flight.spawn(async move {
                let req = adapter(provider.kind).probe_request(&provider);
                let t = provider.health.timeout;
                let result = tokio::time::timeout(t, client.send(&provider, &req, t, t)).await;
                let (ok, err) = match result {
                    Err(_) => (false, Some("probe timed out".to_string())),
                    Ok(Ok(resp)) => {
                        let _ = resp.read_all(&client, t, 1 << 20).await;
                        (true, None)
                    }
                    Ok(Err(UpstreamError::Status { status, .. })) if status < 500 => (true, None),
                    Ok(Err(e)) => (false, Some(e.to_string())),
                };
                if let Some(down) = router.health.record_probe(&provider.name, ok, err) {
                    metrics::provider_probe_state(&provider.name, down);
                }
            });
        }
    }
    in_flight.abort_all();
}
