//! Process start-up: builds the gateway, the Pingora server with the edge
//! and admin services and the background tasks, and runs it.
//!
//! The boot config (see [`crate::control::boot`]): with `--control-plane`,
//! the last-known-good snapshot if there is a valid one, else `--config`,
//! else none (up but not ready until the first version arrives); without
//! it, `--config`.

use super::admin::AdminApp;
use super::EdgeApp;
use crate::config::{self, EdgeConfig};
use crate::control::{self, ConfigState, ControlClient, ControlOptions, SnapshotStore};
use crate::gateway::Gateway;
use crate::routing::{OutlierSettings, Router};
use crate::telemetry::{self, log::CallLogger};
use crate::upstream::UpstreamClient;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::{Server, ShutdownWatch};
use pingora_core::services::background::{background_service, BackgroundService};
use pingora_core::services::listening::Service;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Start-up options (the binary's flags).
#[derive(Debug, Clone)]
pub struct EdgeOptions {
    /// YAML config file. Required without `control`; with it, the boot
    /// config used when there is no valid snapshot.
    pub config: Option<PathBuf>,
    /// Take config versions from the control plane.
    pub control: Option<ControlOptions>,
    pub listen: String,
    pub admin_listen: String,
    pub region: String,
    pub node_id: String,
    /// Call log destination; `None` = stdout.
    pub call_log: Option<PathBuf>,
    pub threads: usize,
    /// How long in-flight requests may take to finish after SIGTERM.
    pub grace_period: Duration,
    /// Take over the listening sockets of a running edge (Pingora upgrade).
    pub upgrade: bool,
    pub upgrade_sock: PathBuf,
    /// Memory cap of the response cache, in bytes.
    pub cache_max_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("config: {0}")]
    Config(#[from] config::ConfigError),
    #[error("{0}")]
    Control(#[from] control::ControlError),
    #[error("either --config or --control-plane is required")]
    NoConfigSource,
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("metrics: {0}")]
    Metrics(String),
    #[error("call log: {0}")]
    CallLog(std::io::Error),
    #[error("server: {0}")]
    Server(String),
}

/// Resolves port 0 to a concrete free port so it can be printed and used.
fn concrete_addr(addr: &str) -> Result<String, StartupError> {
    let parsed: SocketAddr = addr.parse().map_err(|e| StartupError::Bind {
        addr: addr.to_string(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{e}")),
    })?;
    if parsed.port() != 0 {
        return Ok(addr.to_string());
    }
    let l = TcpListener::bind(parsed).map_err(|source| StartupError::Bind {
        addr: addr.to_string(),
        source,
    })?;
    let local = l.local_addr().map_err(|source| StartupError::Bind {
        addr: addr.to_string(),
        source,
    })?;
    Ok(local.to_string())
}

struct Background {
    router: Arc<Router>,
    client: Arc<UpstreamClient>,
    config: Arc<ArcSwap<EdgeConfig>>,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
    ready: Arc<AtomicBool>,
}

#[async_trait]
impl BackgroundService for Background {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut stop = shutdown.clone();
        let probes = crate::routing::probes::run(
            self.router.clone(),
            self.client.clone(),
            self.config.clone(),
            async move {
                let _ = stop.changed().await;
            },
        );
        let metrics = self.metrics.clone();
        let upkeep = async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                metrics.run_upkeep();
            }
        };
        self.ready.store(true, Ordering::Relaxed);
        tokio::select! {
            _ = probes => {}
            _ = upkeep => {}
            _ = shutdown.changed() => {}
        }
        self.ready.store(false, Ordering::Relaxed);
    }
}

/// Runs the control-plane client until shutdown.
struct ControlService {
    client: ControlClient,
}

#[async_trait]
impl BackgroundService for ControlService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        self.client
            .run(async move {
                let _ = shutdown.changed().await;
            })
            .await;
    }
}

/// Loads the config, starts every service and blocks until shutdown.
pub fn run(opts: EdgeOptions) -> Result<(), StartupError> {
    if opts.config.is_none() && opts.control.is_none() {
        return Err(StartupError::NoConfigSource);
    }
    let snapshots = opts
        .control
        .as_ref()
        .and_then(|c| c.snapshot_dir.as_ref())
        .map(SnapshotStore::new);
    if opts.control.is_some() && snapshots.is_none() {
        tracing::warn!("no --snapshot-dir: a restarted edge cannot serve while the control plane is unreachable");
    }
    let boot = control::boot(opts.config.as_deref(), snapshots.as_ref())?;
    let metrics =
        telemetry::metrics::install().map_err(|e| StartupError::Metrics(e.to_string()))?;
    let sink: Box<dyn std::io::Write + Send> = match &opts.call_log {
        None => Box::new(std::io::stdout()),
        Some(p) => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(StartupError::CallLog)?,
        ),
    };
    let logger = CallLogger::spawn(sink).map_err(StartupError::CallLog)?;
    let config: Arc<ArcSwap<EdgeConfig>> = Arc::new(ArcSwap::from_pointee(boot.config));
    let config_state = Arc::new(ConfigState::new(
        config.clone(),
        boot.served,
        opts.control.as_ref().map(|c| c.url.clone()),
    ));
    let control_client = match &opts.control {
        Some(c) => {
            telemetry::metrics::control_plane_init();
            Some(ControlClient::new(
                ControlOptions {
                    node_id: opts.node_id.clone(),
                    region: opts.region.clone(),
                    ..c.clone()
                },
                config_state.clone(),
            )?)
        }
        None => None,
    };
    let router = Arc::new(Router::new(opts.region.clone(), OutlierSettings::default()));
    let client = Arc::new(UpstreamClient::new());
    let gateway = Arc::new(Gateway {
        config: config.clone(),
        client: client.clone(),
        router: router.clone(),
        logger,
        limits: Arc::new(crate::limits::Limits::default()),
        cache: crate::cache::ResponseCache::new(opts.cache_max_bytes),
        node_id: opts.node_id.clone(),
    });
    let ready = Arc::new(AtomicBool::new(false));

    let listen = concrete_addr(&opts.listen)?;
    let admin_listen = concrete_addr(&opts.admin_listen)?;

    let conf = ServerConf {
        threads: opts.threads.max(1),
        grace_period_seconds: Some(opts.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(opts.grace_period.as_secs().max(1)),
        upgrade_sock: opts.upgrade_sock.display().to_string(),
        pid_file: std::env::temp_dir()
            .join(format!("switchyard-edge-{}.pid", std::process::id()))
            .display()
            .to_string(),
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade: opts.upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let mut edge = Service::new("switchyard edge".to_string(), EdgeApp::new(gateway.clone()));
    edge.add_tcp(&listen);
    let admin_app = pingora_core::apps::http_app::HttpServer::new_app(AdminApp {
        gateway: gateway.clone(),
        metrics: metrics.clone(),
        ready: ready.clone(),
        config_state,
    });
    let mut admin = Service::new("switchyard admin".to_string(), admin_app);
    admin.add_tcp(&admin_listen);
    admin.threads = Some(1);
    let bg = background_service(
        "switchyard background",
        Background {
            router,
            client,
            config,
            metrics,
            ready,
        },
    );
    server.add_service(edge);
    server.add_service(admin);
    server.add_service(bg);
    if let Some(client) = control_client {
        server.add_service(background_service(
            "switchyard control plane client",
            ControlService { client },
        ));
    }
    println!("edge listening on http://{listen}");
    println!("admin listening on http://{admin_listen}");
    use std::io::Write;
    let _ = std::io::stdout().flush();
    server.run(pingora_core::server::RunArgs::default());
    Ok(())
}
