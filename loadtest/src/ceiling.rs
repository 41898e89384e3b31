//! `switchyard-loadtest ceiling`: how fast can this generator drive the mock
//! directly, on this machine? Steps the open-loop rate up geometrically
//! (each step a short warmup plus a measured interval) until a step fails:
//! fewer than 95% of the offered requests succeed within the step, more than
//! 0.1% errors (including `generator_overload`), p99 latency above a limit
//! (default 100 ms), or the generator falls behind systematically (send lag
//! p90 above 1 ms: one request in ten started more than 1 ms late; isolated
//! scheduling hiccups do not count). Pointed at a gateway or proxy (`--target`), the same ladder
//! measures that system's saturation throughput. The ceiling is the last passing
//! rate. Generator and mock CPU use are reported per step, so it is visible
//! which side ran out.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde::Serialize;

use crate::report::Report;
use crate::runner::{self, RunOptions};
use crate::scenario::Scenario;

/// Ceiling run settings.
#[derive(Debug, Clone)]
pub struct CeilingConfig {
    /// Mock base URL; `None` starts `switchyard-loadtest mock` as a child.
    pub target: Option<String>,
    pub stream: bool,
    /// Model name sent (a route name when the target is a gateway).
    pub model: String,
    pub output_tokens: u32,
    /// A step fails when its p99 latency exceeds this.
    pub max_p99: Duration,
    /// A step fails when its send lag p90 exceeds this.
    pub max_lag: Duration,
    pub start_rate: f64,
    pub max_rate: f64,
    pub factor: f64,
    pub step: Duration,
    pub max_in_flight: usize,
    /// CPU list for the child mock (`taskset -c LIST`), if any.
    pub mock_cpus: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CeilingStep {
    pub offered_rps: f64,
    pub achieved_rps: f64,
    pub ok: u64,
    pub errors: u64,
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    pub send_lag_p90_ms: Option<f64>,
    pub send_lag_p99_ms: Option<f64>,
    pub generator_cpu_pct: f64,
    pub mock_cpu_pct: Option<f64>,
    /// Generator CPU time per request (µs).
    pub generator_us_per_request: Option<f64>,
    pub passed: bool,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CeilingReport {
    pub target: String,
    pub stream: bool,
    pub steps: Vec<CeilingStep>,
    /// Highest passing offered rate.
    pub ceiling_rps: Option<f64>,
}

struct ChildMock {
    child: Child,
    url: String,
}

impl Drop for ChildMock {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_mock(cfg: &CeilingConfig) -> anyhow::Result<ChildMock> {
    let exe = std::env::current_exe()?;
    let mut cmd = match &cfg.mock_cpus {
        Some(cpus) => {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(cpus).arg(&exe);
            c
        }
        None => Command::new(&exe),
    };
    cmd.args([
        "mock",
        "--listen",
        "127.0.0.1:0",
        "--record",
        "0",
        "--output-tokens",
        &cfg.output_tokens.to_string(),
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    let mut child = cmd.spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("mock: no stdout"))?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let url = line
        .trim()
        .strip_prefix("mock listening on ")
        .ok_or_else(|| anyhow::anyhow!("mock printed {line:?}"))?
        .to_string();
    Ok(ChildMock { child, url })
}

fn step_scenario(url: &str, cfg: &CeilingConfig, rate: f64) -> anyhow::Result<Scenario> {
    let yaml = format!(
        r#"
name: ceiling
targets: [{{name: mock, url: "{url}"}}]
max_in_flight: {mif}
timeout: 10s
phases:
  - {{name: warmup, duration: 500ms, rate: {rate}, warmup: true}}
  - {{name: measure, duration: {step}ms, rate: {rate}}}
mix:
  - {{api: openai, stream: {stream}, model: "{model}", prompt_tokens: 16, max_tokens: {tok}}}
"#,
        model = cfg.model,
        mif = cfg.max_in_flight,
        step = cfg.step.as_millis().max(100),
        stream = cfg.stream,
        tok = cfg.output_tokens.max(1),
    );
    Scenario::from_yaml_with_env(&yaml, |_| None).map_err(|e| anyhow::anyhow!("{e}"))
}

/// Run the rate ladder; `progress` is called after each step.
pub async fn run(
    cfg: CeilingConfig,
    mut progress: impl FnMut(&CeilingStep),
) -> anyhow::Result<CeilingReport> {
    anyhow::ensure!(
        cfg.start_rate > 0.0 && cfg.max_rate >= cfg.start_rate && cfg.factor > 1.0,
        "need 0 < start-rate <= max-rate and factor > 1"
    );
    let child = match &cfg.target {
        Some(_) => None,
        None => Some(spawn_mock(&cfg)?),
    };
    let url = match (&cfg.target, &child) {
        (Some(u), _) => u.clone(),
        (None, Some(c)) => c.url.clone(),
        (None, None) => anyhow::bail!("no target"),
    };
    let mock_pid = child.as_ref().map(|c| c.child.id());
    let mut steps = Vec::new();
    let mut ceiling = None;
    let mut rate = cfg.start_rate;
    for _ in 0..40 {
        if rate > cfg.max_rate * 1.0001 {
            break;
        }
        let scenario = step_scenario(&url, &cfg, rate)?;
        let data = runner::run(
            scenario,
            RunOptions {
                progress: false,
                watch: mock_pid
                    .map(|p| vec![("mock".into(), p)])
                    .unwrap_or_default(),
                stop: None,
            },
        )
        .await?;
        let rep = Report::build(&data);
        let t = &rep.targets[0];
        let gen = rep.processes.iter().find(|p| p.name == "loadtest");
        let mock = rep.processes.iter().find(|p| p.name == "mock");
        let lag = t.send_lag.map(|p| p.p99_ms);
        let lag90 = t.send_lag.map(|p| p.p90_ms);
        let completed = t.ok + t.errors;
        let err_rate = if completed == 0 {
            1.0
        } else {
            t.errors as f64 / completed as f64
        };
        let reason = if err_rate > 0.001 {
            Some(format!(
                "{:.2}% errors ({})",
                err_rate * 100.0,
                t.errors_by_type
                    .iter()
                    .map(|(k, v)| format!("{k}: {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        } else if t.throughput_rps < 0.95 * t.offered_rps {
            Some(format!(
                "throughput {:.0}/s < 95% of offered {:.0}/s",
                t.throughput_rps, t.offered_rps
            ))
        } else if t.latency.map_or(f64::INFINITY, |l| l.p99_ms) > cfg.max_p99.as_secs_f64() * 1000.0
        {
            Some(format!(
                "p99 latency {:.1} ms > {:.1} ms",
                t.latency.map_or(0.0, |l| l.p99_ms),
                cfg.max_p99.as_secs_f64() * 1000.0
            ))
        } else if lag90.unwrap_or(f64::INFINITY) > cfg.max_lag.as_secs_f64() * 1000.0 {
            Some(format!(
                "send lag p90 {:.2} ms > {:.2} ms",
                lag90.unwrap_or(0.0),
                cfg.max_lag.as_secs_f64() * 1000.0
            ))
        } else {
            None
        };
        let total_reqs = data.targets[0].records.len().max(1) as f64;
        let step = CeilingStep {
            offered_rps: t.offered_rps,
            achieved_rps: t.throughput_rps,
            ok: t.ok,
            errors: t.errors,
            latency_p50_ms: t.latency.map(|p| p.p50_ms),
            latency_p99_ms: t.latency.map(|p| p.p99_ms),
            send_lag_p90_ms: lag90,
            send_lag_p99_ms: lag,
            generator_cpu_pct: gen.map_or(0.0, |g| g.avg_cpu_pct),
            mock_cpu_pct: mock.map(|m| m.avg_cpu_pct),
            generator_us_per_request: gen.map(|g| g.cpu_seconds * 1e6 / total_reqs),
            passed: reason.is_none(),
            reason,
        };
        progress(&step);
        let passed = step.passed;
        steps.push(step);
        if !passed {
            break;
        }
        ceiling = Some(rate);
        rate *= cfg.factor;
        // Let the previous step's connections settle.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    drop(child);
    Ok(CeilingReport {
        target: url,
        stream: cfg.stream,
        steps,
        ceiling_rps: ceiling,
    })
}

/// One line per step for the terminal.
pub fn format_step(s: &CeilingStep) -> String {
    let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
    format!(
        "{:>9.0} {:>9.0} {:>8} {:>6} {:>9} {:>9} {:>6}/{:<6} {:>7.0}% {:>7} {:>8} {}",
        s.offered_rps,
        s.achieved_rps,
        s.ok,
        s.errors,
        f(s.latency_p50_ms),
        f(s.latency_p99_ms),
        f(s.send_lag_p90_ms),
        f(s.send_lag_p99_ms),
        s.generator_cpu_pct,
        s.mock_cpu_pct.map_or("-".into(), |v| format!("{v:.0}%")),
        s.generator_us_per_request
            .map_or("-".into(), |v| format!("{v:.1}")),
        if s.passed {
            "ok".to_string()
        } else {
            format!("FAIL: {}", s.reason.as_deref().unwrap_or(""))
        }
    )
}

pub const HEADER: &str = "  offered  achieved       ok errors   p50(ms)   p99(ms) lag p90/p99  gen CPU mock CPU gen µs/req";
