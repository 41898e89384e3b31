//! Command-line front ends for the subcommands (argument types and runners);
//! `main.rs` only parses and dispatches.

use std::io::Write as _;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use crate::ceiling::{self, CeilingConfig};
use crate::mock::{MockProvider, DEFAULT_RECORD_CAPACITY};
use crate::report::{html, text, Report};
use crate::runner::{self, RunOptions};
use crate::scenario::Scenario;

/// Exit code: every SLO passed (or none were given).
pub const EXIT_OK: u8 = 0;
/// Exit code: at least one SLO failed (or a fault event could not be applied).
pub const EXIT_SLO_FAILED: u8 = 1;
/// Exit code: bad arguments or scenario, or the run could not be performed.
pub const EXIT_ERROR: u8 = 2;

/// `switchyard-loadtest mock`: run the mock LLM provider until SIGINT/SIGTERM.
#[derive(clap::Args, Debug, Clone)]
pub struct MockArgs {
    /// Address of the main listener (model endpoints and `/_mock/*`).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: String,
    /// Optional second listener serving only `/_mock/*` (survives the `refuse` fault).
    #[arg(long)]
    pub control_listen: Option<String>,
    /// Time to first token (humantime: `50ms`, `1s`).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub ttft: Duration,
    /// Streaming pace in tokens per second (0 = as fast as possible).
    #[arg(long, default_value_t = 0.0)]
    pub tokens_per_sec: f64,
    /// Output length: `N`, `A..B` (end exclusive) or `A..=B`, uniform in range.
    #[arg(long, default_value = "16", value_parser = parse_token_range)]
    pub output_tokens: RangeInclusive<u32>,
    /// Seed for the output-length draw.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// How many recent requests to keep for `GET /_mock/requests` (0 = off).
    #[arg(long, default_value_t = DEFAULT_RECORD_CAPACITY)]
    pub record: usize,
}

/// Parse `N`, `A..B` (end exclusive, like Rust) or `A..=B`.
pub fn parse_token_range(s: &str) -> Result<RangeInclusive<u32>, String> {
    let s = s.trim();
    let num = |t: &str| {
        t.trim()
            .parse::<u32>()
            .map_err(|_| format!("invalid token count {t:?}"))
    };
    let range = if let Some((a, b)) = s.split_once("..=") {
        num(a)?..=num(b)?
    } else if let Some((a, b)) = s.split_once("..") {
        let (a, b) = (num(a)?, num(b)?);
        if b <= a {
            return Err(format!("empty range {s:?}"));
        }
        a..=b - 1
    } else {
        let n = num(s)?;
        n..=n
    };
    if range.start() > range.end() {
        return Err(format!("empty range {s:?}"));
    }
    Ok(range)
}

/// Run the mock until SIGINT or SIGTERM. Prints `mock listening on URL`
/// (and `mock control on URL`) to stdout once bound.
pub async fn run_mock(args: MockArgs) -> anyhow::Result<()> {
    let mut builder = MockProvider::builder()
        .ttft(args.ttft)
        .tokens_per_sec(args.tokens_per_sec)
        .output_tokens(args.output_tokens)
        .seed(args.seed)
        .record_capacity(args.record);
    if let Some(c) = &args.control_listen {
        builder = builder.control_listen(c.clone());
    }
    let mock = builder
        .spawn(args.listen.as_str())
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "mock listening on {}", mock.url())?;
        if let Some(url) = mock.control_url() {
            writeln!(out, "mock control on {url}")?;
        }
        out.flush()?;
    }
    wait_for_signal().await?;
    mock.shutdown().await;
    Ok(())
}

/// `switchyard-loadtest run`: run a scenario file and report.
#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Scenario file (YAML); see docs/loadtest.md.
    pub scenario: PathBuf,
    /// Set (or add) a target's base URL: `--target edge=http://127.0.0.1:8080`. Repeatable.
    #[arg(long = "target", value_name = "NAME=URL", value_parser = parse_name_value)]
    pub targets: Vec<(String, String)>,
    /// Set a mock's control URL: `--mock region-a=http://127.0.0.1:9201`. Repeatable.
    #[arg(long = "mock", value_name = "NAME=URL", value_parser = parse_name_value)]
    pub mocks: Vec<(String, String)>,
    /// Run only these targets (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Override the scenario's seed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Write the JSON report here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the self-contained HTML report here.
    #[arg(long)]
    pub html: Option<PathBuf>,
    /// Write every request's record as CSV here (for custom analysis).
    #[arg(long)]
    pub records: Option<PathBuf>,
    /// Also sample a process's memory and CPU: `--watch edge=PID`. Repeatable.
    #[arg(long = "watch", value_name = "NAME=PID", value_parser = parse_watch)]
    pub watch: Vec<(String, u32)>,
    /// No progress bar (it is also hidden when stdout is not a terminal).
    #[arg(long)]
    pub no_progress: bool,
    /// Do not print the table.
    #[arg(long, short)]
    pub quiet: bool,
    /// Check the scenario and print what it would do, without sending anything.
    #[arg(long)]
    pub dry_run: bool,
    /// Generator worker threads (default: one per CPU).
    #[arg(long)]
    pub threads: Option<usize>,
}

/// `switchyard-loadtest ceiling`: measure the generator's own ceiling.
#[derive(clap::Args, Debug, Clone)]
pub struct CeilingArgs {
    /// Base URL of a running mock; default: start `switchyard-loadtest mock` as a child process.
    #[arg(long)]
    pub target: Option<String>,
    /// Streaming requests instead of plain ones.
    #[arg(long)]
    pub stream: bool,
    /// Model name sent (use a route name when the target is a gateway).
    #[arg(long, default_value = "mock-model")]
    pub model: String,
    /// A step fails when its p99 latency exceeds this.
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    pub max_p99: Duration,
    /// A step fails when its send lag p90 exceeds this (the generator falls behind).
    #[arg(long, default_value = "1ms", value_parser = humantime::parse_duration)]
    pub max_lag: Duration,
    /// Output tokens per answer (sent as max_tokens; the child mock uses it too).
    #[arg(long, default_value_t = 16)]
    pub output_tokens: u32,
    /// First rate (req/s).
    #[arg(long, default_value_t = 1000.0)]
    pub start_rate: f64,
    /// Stop after this rate (req/s).
    #[arg(long, default_value_t = 100_000.0)]
    pub max_rate: f64,
    /// Multiply the rate by this much per step.
    #[arg(long, default_value_t = 1.5)]
    pub factor: f64,
    /// Measured duration of each step (plus a 500 ms warmup).
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub step: Duration,
    /// In-flight cap.
    #[arg(long, default_value_t = 4096)]
    pub max_in_flight: usize,
    /// Pin the child mock to these CPUs (`taskset -c LIST`).
    #[arg(long)]
    pub mock_cpus: Option<String>,
    /// Write the JSON result here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Generator worker threads (default: one per CPU).
    #[arg(long)]
    pub threads: Option<usize>,
}

fn parse_name_value(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=VALUE, got {s:?}"))?;
    if k.is_empty() || v.is_empty() {
        return Err(format!("expected NAME=VALUE, got {s:?}"));
    }
    Ok((k.to_string(), v.to_string()))
}

fn parse_watch(s: &str) -> Result<(String, u32), String> {
    let (k, v) = parse_name_value(s)?;
    let pid = v.parse::<u32>().map_err(|_| format!("invalid pid {v:?}"))?;
    Ok((k, pid))
}

/// Load the scenario and apply the command-line overrides.
pub fn load_scenario(args: &RunArgs) -> anyhow::Result<Scenario> {
    let mut sc = Scenario::load(&args.scenario)?;
    for (name, url) in &args.targets {
        sc.override_target(name, url)?;
    }
    for (name, url) in &args.mocks {
        sc.override_mock(name, url)?;
    }
    if !args.only.is_empty() {
        sc.retain_targets(&args.only)?;
    }
    if let Some(seed) = args.seed {
        sc.seed = seed;
    }
    sc.validate()
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.scenario.display()))?;
    Ok(sc)
}

/// Run a scenario; returns the exit code.
pub async fn run_run(args: RunArgs) -> anyhow::Result<u8> {
    let sc = load_scenario(&args)?;
    if args.dry_run {
        let sched = crate::schedule::Schedule::build(&sc);
        println!(
            "scenario {}: {} requests per target over {:.1} s, {} target(s): {}",
            sc.name,
            sched.slots.len(),
            sched.duration.as_secs_f64(),
            sc.targets.len(),
            sc.targets
                .iter()
                .map(|t| format!("{}={}", t.name, t.url))
                .collect::<Vec<_>>()
                .join(", ")
        );
        for p in &sched.phases {
            let n = sched
                .slots
                .iter()
                .filter(|s| {
                    sched
                        .phases
                        .get(s.phase as usize)
                        .is_some_and(|q| q.name == p.name)
                })
                .count();
            println!(
                "  {:>7.2}s..{:>7.2}s  {:<20} {n} requests{}",
                p.start.as_secs_f64(),
                p.end.as_secs_f64(),
                p.name,
                if p.warmup { " (warmup)" } else { "" }
            );
        }
        for f in &sc.faults {
            println!(
                "  fault at {}: {}",
                humantime::format_duration(f.at),
                f.label()
            );
        }
        return Ok(EXIT_OK);
    }
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("interrupted: stopping the schedule, finishing in-flight requests (Ctrl-C again to quit now)");
                stop.store(true, Ordering::Relaxed);
                if tokio::signal::ctrl_c().await.is_ok() {
                    std::process::exit(130);
                }
            }
        });
    }
    let data = runner::run(
        sc,
        RunOptions {
            progress: !args.no_progress,
            watch: args.watch.clone(),
            stop: Some(stop),
        },
    )
    .await?;
    let report = Report::build(&data);
    if let Some(p) = &args.json {
        let json = serde_json::to_vec_pretty(&report)?;
        std::fs::write(p, json).with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(p) = &args.html {
        std::fs::write(p, html::render(&report))
            .with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(p) = &args.records {
        let f = std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?;
        let mut w = std::io::BufWriter::new(f);
        crate::report::write_records_csv(&data, &mut w)
            .and_then(|()| w.flush())
            .with_context(|| format!("writing {}", p.display()))?;
    }
    if !args.quiet {
        let mut out = std::io::stdout().lock();
        out.write_all(text::render(&report).as_bytes())?;
        out.flush()?;
    }
    Ok(if report.slo_passed {
        EXIT_OK
    } else {
        EXIT_SLO_FAILED
    })
}

/// Measure the generator's ceiling against the mock.
pub async fn run_ceiling(args: CeilingArgs) -> anyhow::Result<u8> {
    if let Some(t) = &args.target {
        let _: http::Uri = t.parse().with_context(|| format!("--target {t:?}"))?;
    }
    let cfg = CeilingConfig {
        target: args.target.clone(),
        stream: args.stream,
        model: args.model.clone(),
        output_tokens: args.output_tokens,
        max_p99: args.max_p99,
        max_lag: args.max_lag,
        start_rate: args.start_rate,
        max_rate: args.max_rate,
        factor: args.factor,
        step: args.step,
        max_in_flight: args.max_in_flight,
        mock_cpus: args.mock_cpus.clone(),
    };
    println!("{}", ceiling::HEADER);
    let rep = ceiling::run(cfg, |s| {
        println!("{}", ceiling::format_step(s));
    })
    .await?;
    match rep.ceiling_rps {
        Some(c) => println!(
            "\ngenerator ceiling against {} ({}): {c:.0} req/s (last passing step)",
            rep.target,
            if rep.stream {
                "streaming"
            } else {
                "non-streaming"
            }
        ),
        None => println!("\nno step passed (the first rate is already too high)"),
    }
    if let Some(p) = &args.json {
        std::fs::write(p, serde_json::to_vec_pretty(&rep)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(EXIT_OK)
}

#[cfg(unix)]
async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for SIGINT")?,
        _ = term.recv() => {}
    }
    Ok(())
}

#[cfg(not(unix))]
async fn wait_for_signal() -> anyhow::Result<()> {
    tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::parse_token_range;

    #[test]
    fn token_ranges() {
        assert_eq!(parse_token_range("20..200").unwrap(), 20..=199);
        assert_eq!(parse_token_range("20..=200").unwrap(), 20..=200);
        assert_eq!(parse_token_range("7").unwrap(), 7..=7);
        assert!(parse_token_range("5..5").is_err());
        assert!(parse_token_range("9..=3").is_err());
        assert!(parse_token_range("x").is_err());
    }
}
