//! Config propagation benchmark: how long from `ApplyConfig` returning to
//! every edge serving the new version.
//!
//! Each round changes one harmless field of the current config (a price
//! entry for the model `switchyard-propagation-probe`), applies it through
//! the control plane's gRPC API, and polls every edge's `/admin/config`
//! (every `poll` interval, 1 ms by default) until it reports the new
//! version. The measured time per edge is from the apply call returning to
//! the first poll that sees the version, so it over-states the true time by
//! at most one poll interval plus one loopback round trip.

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::time::{Duration, Instant};
use switchyard_proto::config::ModelPrice;
use switchyard_proto::control::config_service_client::ConfigServiceClient;
use switchyard_proto::control::{ApplyConfigRequest, GetConfigRequest, WriteOptions};
use tonic::metadata::MetadataValue;

/// What to measure.
#[derive(Debug, Clone)]
pub struct PropagationOptions {
    pub control_plane: String,
    pub admin_token: String,
    /// Admin base URLs of the edges (`http://127.0.0.1:9901`).
    pub edges: Vec<String>,
    pub applies: usize,
    /// Pause between rounds.
    pub interval: Duration,
    pub poll: Duration,
    /// Give up on a round after this long.
    pub timeout: Duration,
}

/// Results in microseconds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PropagationReport {
    pub applies: usize,
    pub edges: usize,
    /// Time until the LAST edge served each version.
    pub all_edges_p50_ms: f64,
    pub all_edges_p99_ms: f64,
    pub all_edges_max_ms: f64,
    /// Per edge and version.
    pub per_edge_p50_ms: f64,
    pub per_edge_p99_ms: f64,
    pub timeouts: usize,
}

const PROBE_MODEL: &str = "switchyard-propagation-probe";

type Http = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<bytes::Bytes>>;

async fn edge_version(http: &Http, admin: &str) -> Result<u64> {
    let uri: http::Uri = format!("{}/admin/config", admin.trim_end_matches('/')).parse()?;
    let resp = http.get(uri).await?;
    let body = resp.into_body().collect().await?.to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body)?;
    v["version"]
        .as_u64()
        .context("edge /admin/config has no version")
}

/// Runs the benchmark.
pub async fn run(opts: &PropagationOptions) -> Result<PropagationReport> {
    if opts.edges.is_empty() {
        bail!("no edges given");
    }
    let channel = tonic::transport::Endpoint::from_shared(opts.control_plane.clone())?
        .connect()
        .await
        .with_context(|| format!("cannot reach the control plane at {}", opts.control_plane))?;
    let token: MetadataValue<_> = format!("Bearer {}", opts.admin_token).parse()?;
    let mut cp =
        ConfigServiceClient::with_interceptor(channel, move |mut req: tonic::Request<()>| {
            req.metadata_mut()
                .insert(switchyard_proto::control::AUTH_HEADER, token.clone());
            Ok(req)
        });
    let http: Http = Client::builder(TokioExecutor::new()).build_http();
    let mut all = Histogram::<u64>::new(3)?;
    let mut each = Histogram::<u64>::new(3)?;
    let mut timeouts = 0;
    for round in 0..opts.applies {
        let current = cp
            .get_config(GetConfigRequest { version: 0 })
            .await?
            .into_inner();
        let mut doc = current.config.context("control plane has no config yet")?;
        doc.prices.insert(
            PROBE_MODEL.to_string(),
            ModelPrice {
                input_per_mtok: (round % 1000) as f64 + 1.0,
                output_per_mtok: 1.0,
                cached_input_per_mtok: None,
            },
        );
        let written = cp
            .apply_config(ApplyConfigRequest {
                config: Some(doc),
                options: Some(WriteOptions {
                    comment: format!("propagation probe {round}"),
                    ..WriteOptions::default()
                }),
            })
            .await?
            .into_inner();
        let applied_at = Instant::now();
        let want = written.version;
        let mut pending: Vec<&String> = opts.edges.iter().collect();
        let mut last = Duration::ZERO;
        let mut timed_out = false;
        while !pending.is_empty() {
            if applied_at.elapsed() > opts.timeout {
                timeouts += 1;
                timed_out = true;
                break;
            }
            let mut still = Vec::with_capacity(pending.len());
            for e in pending {
                match edge_version(&http, e).await {
                    Ok(v) if v >= want => {
                        let d = applied_at.elapsed();
                        each.record(d.as_micros() as u64)?;
                        last = last.max(d);
                    }
                    _ => still.push(e),
                }
            }
            pending = still;
            if !pending.is_empty() {
                tokio::time::sleep(opts.poll).await;
            }
        }
        if !timed_out {
            all.record(last.as_micros() as u64)?;
        }
        tokio::time::sleep(opts.interval).await;
    }
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    Ok(PropagationReport {
        applies: opts.applies,
        edges: opts.edges.len(),
        all_edges_p50_ms: ms(&all, 0.5),
        all_edges_p99_ms: ms(&all, 0.99),
        all_edges_max_ms: all.max() as f64 / 1000.0,
        per_edge_p50_ms: ms(&each, 0.5),
        per_edge_p99_ms: ms(&each, 0.99),
        timeouts,
    })
}

/// `switchyard-loadtest propagation`: apply → every edge serving, p50/p99.
#[derive(clap::Args, Debug, Clone)]
pub struct PropagationArgs {
    /// Control-plane URL (`http://127.0.0.1:7400`).
    #[arg(long, env = "SWITCHYARD_SERVER")]
    pub control_plane: String,
    /// Admin bearer token of the control plane.
    #[arg(long, env = "SWITCHYARD_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: String,
    /// Admin URL of an edge (repeat for several edges).
    #[arg(long = "edge-admin", required = true)]
    pub edges: Vec<String>,
    /// Number of applies measured.
    #[arg(long, default_value_t = 100)]
    pub applies: usize,
    /// Pause between applies.
    #[arg(long, default_value = "50ms", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Poll interval of the edges' /admin/config.
    #[arg(long, default_value = "1ms", value_parser = humantime::parse_duration)]
    pub poll: Duration,
    /// Give up on one apply after this long.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Fail (exit 1) when the all-edges p99 exceeds this.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub max_p99: Option<Duration>,
}

/// Runs the benchmark from the CLI and prints the report as JSON.
pub async fn run_cli(args: PropagationArgs) -> Result<u8> {
    let report = run(&PropagationOptions {
        control_plane: args.control_plane,
        admin_token: args.admin_token,
        edges: args.edges,
        applies: args.applies,
        interval: args.interval,
        poll: args.poll,
        timeout: args.timeout,
    })
    .await?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    let slo_ok = args
        .max_p99
        .is_none_or(|m| report.all_edges_p99_ms <= m.as_secs_f64() * 1000.0);
    Ok(if report.timeouts == 0 && slo_ok { 0 } else { 1 })
}
