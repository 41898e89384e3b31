//! `switchyard-edge`: parses flags and starts the edge.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "switchyard-edge",
    version,
    about = "Switchyard LLM gateway edge node",
    group(clap::ArgGroup::new("config_source").required(true).multiple(true).args(["config", "control_plane"]))
)]
struct Args {
    /// YAML config file (same format the control plane serves). Required
    /// without --control-plane; with it, the boot config used when there is
    /// no valid snapshot in --snapshot-dir.
    #[arg(long, env = "SWITCHYARD_CONFIG")]
    config: Option<PathBuf>,
    /// Control plane to take config versions from, e.g. http://127.0.0.1:7400.
    #[arg(long, env = "SWITCHYARD_CONTROL_PLANE")]
    control_plane: Option<String>,
    /// Edge token for the control plane (prefer the environment variable).
    #[arg(
        long,
        env = "SWITCHYARD_EDGE_TOKEN",
        hide_env_values = true,
        default_value = ""
    )]
    edge_token: String,
    /// Directory for the last-known-good config snapshot, served at start-up
    /// when the control plane is unreachable.
    #[arg(long, env = "SWITCHYARD_SNAPSHOT_DIR")]
    snapshot_dir: Option<PathBuf>,
    /// CA certificate (PEM) for an https:// control plane.
    #[arg(long, env = "SWITCHYARD_CONTROL_PLANE_CA")]
    control_plane_ca: Option<PathBuf>,
    /// At start-up, how long readiness waits for the first version from a
    /// reachable control plane before serving the snapshot / --config.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    boot_wait: Duration,
    /// Client-facing listener (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    /// Admin listener: /metrics, /healthz, /readyz, /admin/health, /admin/config.
    #[arg(long, default_value = "127.0.0.1:9901")]
    admin_listen: String,
    /// This edge's home region.
    #[arg(long, env = "SWITCHYARD_REGION", default_value = "")]
    region: String,
    /// Node id shown in logs and to the control plane.
    #[arg(long, env = "SWITCHYARD_NODE_ID")]
    node_id: Option<String>,
    /// Write the per-call JSON log here instead of stdout.
    #[arg(long)]
    call_log: Option<PathBuf>,
    /// Worker threads for the client-facing listener.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Grace period for in-flight requests on SIGTERM (humantime).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    grace_period: Duration,
    /// Take over the listening sockets of a running edge (graceful upgrade).
    #[arg(long)]
    upgrade: bool,
    /// Unix socket used to hand over listeners during upgrades.
    #[arg(long, default_value = "/tmp/switchyard-edge-upgrade.sock")]
    upgrade_sock: PathBuf,
    /// Memory cap of the response cache in MiB.
    #[arg(long, default_value_t = 256)]
    cache_mb: u64,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SWITCHYARD_LOG").unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("warn,pingora_core::connectors=off")
            }),
        )
        .init();
    let a = Args::parse();
    let node_id = a
        .node_id
        .unwrap_or_else(|| format!("edge-{}", std::process::id()));
    let control = a
        .control_plane
        .map(|url| switchyard_edge::control::ControlOptions {
            url,
            token: a.edge_token,
            snapshot_dir: a.snapshot_dir,
            ca_cert: a.control_plane_ca,
            boot_wait: a.boot_wait,
            ..Default::default()
        });
    switchyard_edge::server::run(switchyard_edge::server::EdgeOptions {
        config: a.config,
        control,
        listen: a.listen,
        admin_listen: a.admin_listen,
        region: a.region,
        node_id,
        call_log: a.call_log,
        threads: a.threads,
        grace_period: a.grace_period,
        upgrade: a.upgrade,
        upgrade_sock: a.upgrade_sock,
        cache_max_bytes: a.cache_mb * 1024 * 1024,
    })?;
    Ok(())
}
