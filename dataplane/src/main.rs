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
    about = "Switchyard LLM gateway edge node"
)]
struct Args {
    /// YAML config file (same format the control plane serves).
    #[arg(long, env = "SWITCHYARD_CONFIG")]
    config: PathBuf,
    /// Client-facing listener (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    /// Admin listener: /metrics, /healthz, /readyz, /admin/health.
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
    switchyard_edge::server::run(switchyard_edge::server::EdgeOptions {
        config: a.config,
        listen: a.listen,
        admin_listen: a.admin_listen,
        region: a.region,
        node_id,
        call_log: a.call_log,
        threads: a.threads,
        grace_period: a.grace_period,
        upgrade: a.upgrade,
        upgrade_sock: a.upgrade_sock,
    })?;
    Ok(())
}
