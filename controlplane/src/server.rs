//! `switchyard-control`: flags and the server lifecycle.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use switchyard_proto::control::{
    config_service_server::ConfigServiceServer, edge_service_server::EdgeServiceServer,
};
use tokio::sync::watch;
use tonic::service::interceptor::InterceptedService;

use crate::auth::BearerAuth;
use crate::service::{ConfigApi, EdgeApi, State};
use crate::store::embedded::EmbeddedStore;
use crate::store::etcd::{EtcdOptions, EtcdStore};
use crate::store::Store;

/// Largest gRPC message either way (a whole config document).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// How long in-flight calls get to finish after SIGTERM/SIGINT.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Switchyard control plane: versioned config API for operators, config
/// distribution and usage collection for edges.
#[derive(Debug, Parser)]
#[command(name = "switchyard-control", version)]
pub struct ServerArgs {
    /// Address to listen on (port 0 picks a free port; the chosen address is
    /// printed as `control plane listening on ADDR`).
    #[arg(
        long,
        env = "SWITCHYARD_CONTROL_LISTEN",
        default_value = "127.0.0.1:7400"
    )]
    pub listen: SocketAddr,

    /// Data directory of the embedded store (used when no etcd endpoints are given).
    #[arg(long, env = "SWITCHYARD_DATA_DIR", default_value = "switchyard-data")]
    pub data_dir: PathBuf,

    /// etcd endpoints, comma separated (e.g. http://127.0.0.1:2379). Selects the etcd store.
    #[arg(long, env = "SWITCHYARD_ETCD_ENDPOINTS", value_delimiter = ',')]
    pub etcd_endpoints: Vec<String>,

    /// Key prefix in etcd.
    #[arg(long, env = "SWITCHYARD_ETCD_PREFIX", default_value = "/switchyard/v1")]
    pub etcd_prefix: String,

    /// Deadline for each store operation; writes fail with UNAVAILABLE after it.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub store_timeout: Duration,

    /// Lease given with every global budget grant: a `fail_open` budget falls
    /// back to the edge's local hard limit once its lease has run out while
    /// the control plane is unreachable; edges that stopped asking for this
    /// long no longer count when slices are sized. See docs/budgets.md.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub budget_lease_ttl: Duration,

    /// Bearer token required on ConfigService (operators, switchyard-ctl).
    #[arg(long, env = "SWITCHYARD_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: String,

    /// Bearer token required on EdgeService (edges).
    #[arg(long, env = "SWITCHYARD_EDGE_TOKEN", hide_env_values = true)]
    pub edge_token: String,

    /// PEM certificate chain; serve gRPC over TLS (with --tls-key).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Log filter (tracing env-filter syntax); logs go to stderr.
    #[arg(long, env = "SWITCHYARD_LOG", default_value = "info")]
    pub log: String,

    /// Log format: text or json.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

fn init_logging(filter: &str, format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = if format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

async fn open_store(args: &ServerArgs) -> anyhow::Result<Arc<dyn Store>> {
    let store: Arc<dyn Store> = if args.etcd_endpoints.iter().any(|e| !e.trim().is_empty()) {
        let endpoints = args
            .etcd_endpoints
            .iter()
            .map(|e| e.trim().to_string())
            .filter(|e| !e.is_empty())
            .collect();
        Arc::new(
            EtcdStore::connect(EtcdOptions {
                endpoints,
                prefix: args.etcd_prefix.clone(),
                timeout: args.store_timeout,
            })
            .await?,
        )
    } else {
        Arc::new(EmbeddedStore::open(&args.data_dir)?)
    };
    Ok(store)
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot install SIGTERM handler");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Runs the control plane until SIGTERM/SIGINT.
pub async fn run(args: ServerArgs) -> anyhow::Result<()> {
    init_logging(&args.log, &args.log_format);
    if args.admin_token.is_empty() || args.edge_token.is_empty() {
        anyhow::bail!("--admin-token and --edge-token (or SWITCHYARD_ADMIN_TOKEN / SWITCHYARD_EDGE_TOKEN) must be non-empty");
    }
    if args.admin_token == args.edge_token {
        tracing::warn!("admin and edge tokens are identical: edges can change configuration");
    }
    let store = open_store(&args).await?;
    tracing::info!(store = %store.describe(), "store opened");

    let (stop_tx, stop_rx) = watch::channel(false);
    if args.budget_lease_ttl < Duration::from_millis(100) {
        anyhow::bail!("--budget-lease-ttl must be at least 100ms");
    }
    let state = State::with_policy(
        store,
        stop_rx.clone(),
        crate::budgets::Policy {
            lease_ttl: args.budget_lease_ttl,
            ..Default::default()
        },
    );

    let config_svc = ConfigServiceServer::new(ConfigApi::new(state.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let edge_svc = EdgeServiceServer::new(EdgeApi::new(state.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);

    #[allow(unused_mut)]
    let mut builder = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(15)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .tcp_nodelay(true);
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some((
            std::fs::read(cert).with_context(|| format!("reading {}", cert.display()))?,
            std::fs::read(key).with_context(|| format!("reading {}", key.display()))?,
        )),
        _ => None,
    };
    if let Some((_cert, _key)) = tls {
        #[cfg(feature = "tls")]
        {
            let identity = tonic::transport::Identity::from_pem(_cert, _key);
            builder = builder
                .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
                .context("TLS configuration")?;
        }
        #[cfg(not(feature = "tls"))]
        anyhow::bail!("this build has no TLS support (cargo feature `tls`)");
    }
    let router = builder
        .add_service(InterceptedService::new(
            config_svc,
            BearerAuth::new(&args.admin_token, "admin"),
        ))
        .add_service(InterceptedService::new(
            edge_svc,
            BearerAuth::new(&args.edge_token, "edge"),
        ));

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        writeln!(out, "control plane listening on {addr}")?;
        out.flush()?;
    }
    tracing::info!(%addr, tls = args.tls_cert.is_some(), "serving");

    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let signalled = async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        // Ends edge streams so the graceful shutdown can complete.
        let _ = stop_tx.send(true);
    };
    let serve = router.serve_with_incoming_shutdown(incoming, signalled);
    tokio::pin!(serve);
    let mut stopped = stop_rx;
    let deadline = async move {
        let _ = stopped.wait_for(|s| *s).await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        r = &mut serve => r.context("gRPC server")?,
        _ = deadline => tracing::warn!("connections still open after {SHUTDOWN_GRACE:?}; exiting anyway"),
    }
    drop(state);
    tracing::info!("stopped");
    Ok(())
}
