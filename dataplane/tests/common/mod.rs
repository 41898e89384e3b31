//! Black-box test harness: spawns the real `switchyard-edge` binary on
//! loopback (port 0) against in-process mock providers (real HTTP servers).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

/// Control-plane harness (etcd, `switchyard-control`, `switchyard-ctl`).
pub mod control;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
pub use switchyard_loadtest::mock::{Fault, FaultScope, MockHandle, MockProvider};

pub async fn mock() -> MockHandle {
    MockProvider::builder()
        .output_tokens(8..=8)
        .seed(7)
        .spawn("127.0.0.1:0")
        .await
        .expect("mock provider starts")
}

/// A running edge process; killed on drop.
pub struct Edge {
    child: Child,
    pub url: String,
    pub admin_url: String,
    pub call_log: PathBuf,
    dir: tempfile::TempDir,
}

impl Edge {
    /// Starts an edge with `yaml` as its config. `env` is added to the
    /// process environment (for `${NAME}` expansion and provider keys).
    pub async fn start(yaml: &str, env: &[(&str, &str)], extra_args: &[&str]) -> Edge {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("edge.yaml");
        std::fs::write(&cfg, yaml).unwrap();
        let call_log = dir.path().join("calls.jsonl");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchyard-edge"));
        cmd.arg("--config")
            .arg(&cfg)
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .arg("--call-log")
            .arg(&call_log)
            .arg("--upgrade-sock")
            .arg(dir.path().join("upgrade.sock"))
            .args(["--grace-period", "1s"])
            .args(extra_args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn switchyard-edge");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut url = None;
        let mut admin_url = None;
        let deadline = Instant::now() + Duration::from_secs(20);
        while url.is_none() || admin_url.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx.recv_timeout(left).unwrap_or_else(|_| {
                panic!("edge did not print its addresses: {:?}", child.try_wait())
            });
            if let Some(u) = line.strip_prefix("edge listening on ") {
                url = Some(u.to_string());
            } else if let Some(u) = line.strip_prefix("admin listening on ") {
                admin_url = Some(u.to_string());
            }
        }
        let edge = Edge {
            child,
            url: url.unwrap(),
            admin_url: admin_url.unwrap(),
            call_log,
            dir,
        };
        edge.wait_ready().await;
        edge
    }

    async fn wait_ready(&self) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ok = client
                .get(format!("{}/readyz", self.admin_url))
                .send()
                .await
                .map(|r| r.status() == 200)
                .unwrap_or(false);
            // The client listener may start a moment after the admin one.
            let ok = ok
                && tokio::net::TcpStream::connect(self.url.trim_start_matches("http://"))
                    .await
                    .is_ok();
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "edge never became ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn addr(&self) -> String {
        self.url.trim_start_matches("http://").to_string()
    }

    /// Parsed call log lines so far (event lines such as budget alerts are
    /// left out; see [`Edge::events`]).
    pub fn calls(&self) -> Vec<serde_json::Value> {
        self.log_lines()
            .into_iter()
            .filter(|v| v.get("event").is_none())
            .collect()
    }

    /// Event lines (`{"event": ...}`) of the call log.
    pub fn events(&self) -> Vec<serde_json::Value> {
        self.log_lines()
            .into_iter()
            .filter(|v| v.get("event").is_some())
            .collect()
    }

    fn log_lines(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(&self.call_log).unwrap_or_default();
        // The writer may be mid-line: only complete lines count.
        let complete = text.rfind('\n').map_or("", |i| &text[..=i]);
        complete
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).expect("call log line is JSON"))
            .collect()
    }

    /// Waits (bounded) until at least `n` call log lines exist.
    pub async fn wait_calls(&self, n: usize) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let c = self.calls();
            if c.len() >= n {
                return c;
            }
            assert!(
                Instant::now() < deadline,
                "expected {n} call log lines, have {}",
                c.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.admin_url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sum of a Prometheus metric's samples whose labels contain every `want`
/// fragment (e.g. `route="gpt-mock"`).
pub fn metric_sum(text: &str, name: &str, want: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| want.iter().all(|w| l.contains(w)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Parses an SSE body into (event name, data) pairs.
pub fn sse_events(body: &str) -> Vec<(Option<String>, String)> {
    let mut out = Vec::new();
    for block in body.split("\n\n") {
        let mut event = None;
        let mut data = Vec::new();
        for line in block.lines() {
            if let Some(e) = line.strip_prefix("event:") {
                event = Some(e.trim().to_string());
            } else if let Some(d) = line.strip_prefix("data:") {
                data.push(d.trim_start().to_string());
            }
        }
        if event.is_some() || !data.is_empty() {
            out.push((event, data.join("\n")));
        }
    }
    out
}

/// The standard test config: the example file's models against `mock`.
pub fn mock_config(mock_url: &str, extra: &str) -> String {
    format!(
        r#"
providers:
  mock-openai:
    kind: openai
    base_url: {mock_url}/v1
    api_key_env: OPENAI_KEY
    health_check: {{disabled: true}}
  mock-anthropic:
    kind: anthropic
    base_url: {mock_url}/v1
    api_key_env: ANTHROPIC_KEY
    health_check: {{disabled: true}}
routes:
  gpt-mock:
    targets: [{{provider: mock-openai, model: gpt-4o-mini-2024-07-18}}]
  claude-mock:
    targets: [{{provider: mock-anthropic, model: claude-3-5-haiku-20241022}}]
prices:
  gpt-4o-mini-2024-07-18: {{input_per_mtok: 0.15, output_per_mtok: 0.60}}
  claude-3-5-haiku-20241022: {{input_per_mtok: 0.80, output_per_mtok: 4.00}}
defaults:
  retry: {{backoff_base: 1ms, backoff_max: 5ms}}
  timeouts: {{connect: 500ms, first_byte: 2s, idle: 2s, total: 10s}}
{extra}
"#
    )
}

pub const KEYS: &[(&str, &str)] = &[
    ("OPENAI_KEY", "sk-provider-openai"),
    ("ANTHROPIC_KEY", "sk-provider-anthropic"),
];
