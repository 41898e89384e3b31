//! Process start-up: builds the gateway, the Pingora server with the edge
//! and admin services and the background tasks, and runs it.
//!
//! The boot config (see [`crate::control::boot`]): with `--control-plane`,
//! the last-known-good snapshot if there is a valid one, else `--config`,
//! else none (up but not ready until the first version arrives); without
//! it, `--config`.
//!
//! Shutdown and upgrade (Pingora's signals): SIGTERM stops accepting, clears
//! readiness and lets open client connections finish; the process exits as
//! soon as none is left, or when `--grace-period` runs out (Pingora then stops
//! the runtimes, cutting what is still open). SIGQUIT hands the listening
//! sockets to a process started with `--upgrade` first, then drains the same
//! way. SIGINT exits at once. Under systemd (`NOTIFY_SOCKET`), the edge sends
//! `READY=1` and `MAINPID=` once ready, so an upgraded process becomes the
//! unit's main process, and `STOPPING=1` when it starts draining.

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
use pingora_core::apps::ServerApp;
use pingora_core::protocols::Stream;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::{ExecutionPhase, Server, ShutdownWatch};
use pingora_core::services::background::{background_service, BackgroundService};
use pingora_core::services::listening::Service;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    config_state: Arc<ConfigState>,
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
        // Tell systemd (Type=notify) once /readyz would answer 200, or after
        // 5 s at most: an edge still waiting for its first config is started
        // (up, not ready) and must not be killed as a failed start.
        let config_state = self.config_state.clone();
        let notify_ready = async move {
            let wait = async {
                while !config_state.is_ready() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            };
            let status = match tokio::time::timeout(Duration::from_secs(5), wait).await {
                Ok(()) => "serving",
                Err(_) => "started; not ready (see /readyz)",
            };
            sd_notify(&format!(
                "READY=1\nMAINPID={}\nSTATUS={status}",
                std::process::id()
            ));
            std::future::pending::<()>().await
        };
        tokio::select! {
            _ = probes => {}
            _ = upkeep => {}
            _ = notify_ready => {}
            _ = shutdown.changed() => {}
        }
        self.ready.store(false, Ordering::Relaxed);
    }
}

/// Sends a state line to systemd's notification socket when the process
/// runs under systemd with `NotifyAccess=` (`$NOTIFY_SOCKET` set); a no-op
/// otherwise. Best effort: errors are logged, never fatal.
fn sd_notify(state: &str) {
    use std::os::unix::net::UnixDatagram;
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = UnixDatagram::unbound().and_then(|sock| {
        let bytes = path.as_encoded_bytes();
        if let Some(name) = bytes.strip_prefix(b"@") {
            // Abstract socket (Linux).
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(state.as_bytes(), &addr)
        } else {
            sock.send_to(state.as_bytes(), &path)
        }
    });
    if let Err(e) = sent {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// Wraps the client-facing app to count open client connections, so a
/// draining edge can exit as soon as the last one is closed.
struct CountConnections<A> {
    app: Arc<A>,
    open: Arc<AtomicUsize>,
}

struct OpenGuard(Arc<AtomicUsize>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for CountConnections<A> {
    async fn process_new(
        self: &Arc<Self>,
        session: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        self.open.fetch_add(1, Ordering::SeqCst);
        let _guard = OpenGuard(self.open.clone());
        self.app.process_new(session, shutdown).await
    }

    async fn cleanup(&self) {
        self.app.cleanup().await
    }
}

/// Watches the server's phases from a plain thread. During a graceful
/// shutdown Pingora sleeps the whole grace period even when nothing is left
/// to finish; this ends the process as soon as every client connection is
/// closed (and stayed closed for a moment, so a connection accepted just
/// before the listener stopped is not cut). If connections are still open
/// when the grace period ends, Pingora's own shutdown takes over.
fn spawn_drain_watch(
    mut phases: tokio::sync::broadcast::Receiver<ExecutionPhase>,
    open: Arc<AtomicUsize>,
    grace: Duration,
    logger: CallLogger,
) {
    let watch = move || {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            match phases.blocking_recv() {
                Ok(ExecutionPhase::GracefulTerminate)
                | Ok(ExecutionPhase::GracefulUpgradeTransferringFds) => {
                    sd_notify("STOPPING=1");
                }
                Ok(ExecutionPhase::ShutdownGracePeriod) => break,
                Ok(ExecutionPhase::ShutdownRuntimes) | Ok(ExecutionPhase::Terminated) => return,
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return,
            }
        }
        let started = Instant::now();
        tracing::info!(
            open_connections = open.load(Ordering::SeqCst),
            grace_ms = grace.as_millis() as u64,
            "draining client connections"
        );
        let settle = Duration::from_millis(200);
        let mut idle_since: Option<Instant> = None;
        while started.elapsed() < grace {
            if open.load(Ordering::SeqCst) == 0 {
                let since = *idle_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= settle {
                    logger.flush(Duration::from_secs(2));
                    tracing::info!(
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "drained; exiting"
                    );
                    std::process::exit(0);
                }
            } else {
                idle_since = None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        tracing::warn!(
            open_connections = open.load(Ordering::SeqCst),
            "grace period over; closing the remaining connections"
        );
        // Pingora stops the runtimes now (at most 1 s). Safety net in case
        // something keeps the process from exiting.
        std::thread::sleep(Duration::from_secs(5));
        logger.flush(Duration::from_secs(1));
        tracing::error!("shutdown did not finish after the grace period; exiting");
        std::process::exit(1);
    };
    if let Err(e) = std::thread::Builder::new()
        .name("switchyard-drain".into())
        .spawn(watch)
    {
        tracing::warn!(error = %e, "cannot start the drain watcher; shutdown waits the whole grace period");
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
    // Global budgets and usage reporting (with a control plane).
    let usage = crate::control::usage::setup(opts.control.as_ref(), &opts.node_id, &opts.region)?;
    let router = Arc::new(Router::new(opts.region.clone(), OutlierSettings::default()));
    let client = Arc::new(UpstreamClient::new());
    let gateway = Arc::new(Gateway {
        config: config.clone(),
        client: client.clone(),
        router: router.clone(),
        logger,
        limits: usage.limits.clone(),
        cache: crate::cache::ResponseCache::new(opts.cache_max_bytes),
        node_id: opts.node_id.clone(),
        usage: usage.sink.clone(),
    });
    let ready = Arc::new(AtomicBool::new(false));

    let listen = concrete_addr(&opts.listen)?;
    let admin_listen = concrete_addr(&opts.admin_listen)?;

    // Pingora counts whole seconds: round the grace period up (the drain
    // watcher below ends the process earlier once nothing is left to finish).
    // After the grace period the runtimes get 1 s to stop.
    let grace_secs = opts.grace_period.as_secs() + u64::from(opts.grace_period.subsec_nanos() > 0);
    let conf = ServerConf {
        threads: opts.threads.max(1),
        grace_period_seconds: Some(grace_secs),
        graceful_shutdown_timeout_seconds: Some(1),
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

    let open_connections = Arc::new(AtomicUsize::new(0));
    let mut edge = Service::new(
        "switchyard edge".to_string(),
        CountConnections {
            app: Arc::new(EdgeApp::new(gateway.clone())),
            open: open_connections.clone(),
        },
    );
    edge.add_tcp(&listen);
    let admin_app = pingora_core::apps::http_app::HttpServer::new_app(AdminApp {
        gateway: gateway.clone(),
        metrics: metrics.clone(),
        ready: ready.clone(),
        config_state: config_state.clone(),
        listen: listen.parse().map_err(|e| StartupError::Bind {
            addr: listen.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{e}")),
        })?,
        listening: std::sync::atomic::AtomicBool::new(false),
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
            config_state,
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
    if let Some(reporter) = usage.reporter {
        server.add_service(background_service(
            "switchyard usage reporter",
            crate::control::usage::UsageService(reporter),
        ));
    }
    println!("edge listening on http://{listen}");
    println!("admin listening on http://{admin_listen}");
    use std::io::Write;
    let _ = std::io::stdout().flush();
    spawn_drain_watch(
        server.watch_execution_phase(),
        open_connections,
        opts.grace_period,
        gateway.logger.clone(),
    );
    server.run(pingora_core::server::RunArgs::default());
    gateway.logger.flush(Duration::from_secs(1));
    Ok(())
}
