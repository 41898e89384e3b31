//! Global budgets and usage reporting across edges (issue #5), black-box:
//! a real `switchyard-control` on the embedded store, real `switchyard-ctl`,
//! two real `switchyard-edge --control-plane` processes, the mock provider.
//!
//! - two edges under concurrent load share one budget: what both spend
//!   together (their call logs) stays under the hard limit, and most of it
//!   is used (the bound stated in docs/budgets.md);
//! - the control plane killed mid-budget: a fail-closed budget spends at
//!   most each edge's allowance and then rejects; a fail-open one goes on
//!   past it (up to the local hard limit) once the lease ran out;
//! - usage spooled while the control plane is down survives an edge
//!   SIGKILL and restart, and is counted exactly once when it returns.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::control::*;
use common::*;
// The shared harness re-exports fault types this file does not need.
#[allow(unused_imports)]
use common::{Fault as _, FaultScope as _};
use prost::Message;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Tokens of this file's control planes, unlike the shared harness's: if
/// another test's control plane ever takes over a port one of ours left
/// (or the other way round), clients are refused instead of silently
/// talking to the wrong one.
const GB_ADMIN: &str = "global-budget-admin-token";
const GB_EDGE: &str = "global-budget-edge-token";

/// `switchyard-ctl` against one of this file's control planes.
async fn gb_ctl(server: &str, args: &[&str]) -> Ctl {
    let mut all = args.to_vec();
    all.extend(["--token", GB_ADMIN]);
    ctl(server, &all).await
}

/// `switchyard-ctl apply` that must commit; the new version.
async fn gb_apply(server: &str, yaml: &str) -> u64 {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = gb_ctl(
        server,
        &["apply", "-f", path.to_str().unwrap(), "-o", "json"],
    )
    .await
    .ok()
    .json();
    assert_eq!(out["changed"], true, "{out}");
    out["version"].as_u64().unwrap()
}

/// Every call: 1 prompt token + 100 output tokens at $100/Mtok = $0.0101,
/// reserved exactly (the mock answers `max_tokens` tokens).
const CALL_USD: f64 = 101.0 * 100.0 / 1e6;

/// `switchyard-control` on the embedded store at a fixed port and data dir,
/// so it can be killed and started again; killed on drop.
struct EmbeddedControlPlane {
    child: Option<Child>,
    port: u16,
    url: String,
    data: tempfile::TempDir,
    logs: tempfile::TempDir,
    starts: u32,
    lease_ttl: &'static str,
}

impl EmbeddedControlPlane {
    async fn start(lease_ttl: &'static str) -> Self {
        let port = free_port();
        let mut cp = Self {
            child: None,
            port,
            url: format!("http://127.0.0.1:{port}"),
            data: tempfile::tempdir().unwrap(),
            logs: tempfile::tempdir().unwrap(),
            starts: 0,
            lease_ttl,
        };
        cp.spawn().await;
        cp
    }

    async fn spawn(&mut self) {
        self.starts += 1;
        let log = self
            .logs
            .path()
            .join(format!("control-{}.log", self.starts));
        let mut child = Command::new(control_bin("switchyard-control"))
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .arg("--data-dir")
            .arg(self.data.path())
            .args(["--admin-token", GB_ADMIN, "--edge-token", GB_EDGE])
            .args(["--budget-lease-ttl", self.lease_ttl])
            .args(["--log", "info"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut line = String::new();
            let _ = r.read_line(&mut line);
            let _ = tx.send(line);
            let _ = std::io::copy(&mut r, &mut std::io::sink());
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match rx.try_recv() {
                Ok(line) => {
                    assert!(
                        line.starts_with("control plane listening on "),
                        "control plane: {line:?}; log: {}",
                        self.log()
                    );
                    break;
                }
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    let _ = child.wait();
                    panic!("control plane exited at start; log: {}", self.log());
                }
                Err(std::sync::mpsc::TryRecvError::Empty) => {}
            }
            assert!(
                Instant::now() < deadline,
                "control plane printed no address"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.child = Some(child);
    }

    /// SIGKILL.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log(&self) -> String {
        (1..=self.starts)
            .map(|i| {
                std::fs::read_to_string(self.logs.path().join(format!("control-{i}.log")))
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n--- restart ---\n")
    }
}

impl Drop for EmbeddedControlPlane {
    fn drop(&mut self) {
        self.kill();
        let _ = self.data.path();
    }
}

async fn mock_100() -> MockHandle {
    MockProvider::builder()
        .output_tokens(100..=100)
        .ttft(Duration::from_millis(40))
        .seed(5)
        .spawn("127.0.0.1:0")
        .await
        .unwrap()
}

fn config(mock_url: &str, budgets: &str) -> String {
    format!(
        r#"
providers:
  mock: {{kind: openai, base_url: '{mock_url}/v1', health_check: {{disabled: true}}}}
routes:
  chat: {{targets: [{{provider: mock, model: m-100}}]}}
prices:
  m-100: {{input_per_mtok: 100, output_per_mtok: 100}}
keys:
  - {{id: app, secret: sk-app, team: t1}}
budgets:
{budgets}
defaults:
  retry: {{max_retries: 0}}
  timeouts: {{connect: 500ms, first_byte: 5s, idle: 5s, total: 10s}}
"#
    )
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .pool_max_idle_per_host(64)
        .build()
        .unwrap()
}

/// One call with `feature`; the status and the error code (if any).
async fn call(client: &reqwest::Client, edge_url: &str, feature: &str) -> (u16, String) {
    let r = client
        .post(format!("{edge_url}/v1/chat/completions"))
        .header("authorization", "Bearer sk-app")
        .header("x-switchyard-feature", feature)
        .json(&json!({
            "model": "chat",
            "max_tokens": 100,
            "messages": [{"role": "user", "content": "ping"}],
        }))
        .send()
        .await;
    match r {
        Ok(r) => {
            let status = r.status().as_u16();
            let v: Value = r.json().await.unwrap_or(Value::Null);
            (
                status,
                v["error"]["code"].as_str().unwrap_or("").to_string(),
            )
        }
        Err(_) => (0, "transport".into()),
    }
}

/// `n` concurrent calls; every outcome.
async fn burst(edge_url: &str, feature: &'static str, n: usize) -> Vec<(u16, String)> {
    let client = http();
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (c, u) = (client.clone(), edge_url.to_string());
            tokio::spawn(async move { call(&c, &u, feature).await })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// Cost and count of the successful calls of `feature` in the call log.
fn spent(edge: &Edge, feature: &str) -> (f64, usize) {
    let calls: Vec<Value> = edge
        .calls()
        .into_iter()
        .filter(|c| c["tags"]["feature"] == feature && c["status"] == 200)
        .collect();
    (
        calls.iter().map(|c| c["cost_usd"].as_f64().unwrap()).sum(),
        calls.len(),
    )
}

/// A gauge/counter value from `/metrics` (`budget` label optional).
async fn metric(edge: &Edge, name: &str, budget: Option<&str>) -> f64 {
    let text = edge.metrics().await;
    let label = budget.map(|b| format!("budget=\"{b}\""));
    let want: Vec<&str> = label.iter().map(String::as_str).collect();
    metric_sum(&text, name, &want)
}

async fn wait_metric(
    edge: &Edge,
    name: &str,
    budget: Option<&str>,
    what: &str,
    pred: impl Fn(f64) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = metric(edge, name, budget).await;
        if pred(v) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {name} = {v} after 15s; edge log:\n{}",
            edge.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn start_edge(cp: &str, node: &str, snapshot: &Path) -> Edge {
    let mut e = ControlledEdge::new(cp, node);
    e.token = GB_EDGE;
    e.snapshot_dir = Some(snapshot);
    e.start().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_edges_under_concurrent_load_share_one_global_budget() {
    const HARD: f64 = 0.5;
    let mock = mock_100().await;
    let mut cp = EmbeddedControlPlane::start("10s").await;
    let yaml = config(
        &mock.url(),
        "  - {name: shared, scope: feature, match: shared, window: day, hard_limit_usd: 0.5}",
    );
    let v = gb_apply(&cp.url, &yaml).await;
    let snaps = tempfile::tempdir().unwrap();
    let a = start_edge(&cp.url, "edge-a", &snaps.path().join("a")).await;
    let b = start_edge(&cp.url, "edge-b", &snaps.path().join("b")).await;
    for e in [&a, &b] {
        e.wait_version(v).await;
        wait_metric(
            e,
            "switchyard_usage_stream_connected",
            None,
            "usage stream",
            |v| v == 1.0,
        )
        .await;
    }

    // 120 concurrent calls, 60 per edge, for a budget of ~49 calls: both
    // edges want more than they can get.
    let (ra, rb) = tokio::join!(burst(&a.url, "shared", 60), burst(&b.url, "shared", 60));
    let outcomes: Vec<&(u16, String)> = ra.iter().chain(rb.iter()).collect();
    for (status, code) in &outcomes {
        assert!(
            *status == 200 || (*status == 429 && code == "budget_exceeded"),
            "unexpected outcome {status} {code}"
        );
    }
    let ok = outcomes.iter().filter(|(s, _)| *s == 200).count();
    a.wait_calls(60).await;
    b.wait_calls(60).await;
    let (cost_a, n_a) = spent(&a, "shared");
    let (cost_b, n_b) = spent(&b, "shared");
    let total = cost_a + cost_b;
    assert_eq!(n_a + n_b, ok);
    eprintln!("edge-a {n_a} calls ${cost_a:.4}, edge-b {n_b} calls ${cost_b:.4}, total ${total:.4} of ${HARD}");
    // The stated bound: fail-closed global budgets never exceed the hard
    // limit (beyond float rounding).
    assert!(total <= HARD + 1e-9, "both edges spent ${total} > ${HARD}");
    // And the budget was actually used: with both edges wanting more, at
    // most one call's worth is left unusable per edge (docs/budgets.md).
    assert!(
        total >= HARD - 2.0 * CALL_USD - 1e-9,
        "only ${total} of ${HARD} used ({ok} calls)"
    );
    assert!(n_a > 0 && n_b > 0, "both edges served: {n_a} / {n_b}");

    // The control plane's view agrees: accounted ≤ hard, two edges.
    let status = gb_ctl(&cp.url, &["budgets", "status", "-o", "json"])
        .await
        .ok()
        .json();
    let alloc = &status["allocations"][0];
    assert_eq!(alloc["budget"], "shared");
    assert!(
        alloc["accounted_usd"].as_f64().unwrap() <= HARD + 1e-9,
        "{alloc}"
    );
    assert_eq!(alloc["edges"].as_array().unwrap().len(), 2, "{alloc}");

    // Cost views: every successful call reported, once.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let u = gb_ctl(&cp.url, &["usage", "--by", "edge", "-o", "json"])
            .await
            .ok()
            .json();
        let reported = u["total"]["cost_usd"].as_f64().unwrap();
        let n = u["total"]["requests"].as_u64().unwrap();
        // Rejected calls are not admitted, so not reported.
        if n as usize == ok {
            assert!((reported - total).abs() < 1e-9, "{u}");
            let rows = u["rows"].as_array().unwrap();
            assert_eq!(rows.len(), 2, "{u}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "usage never reached {ok} calls: {u}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Edge metrics attribute the cost by feature and team.
    let text = a.metrics().await;
    let by_feature = metric_sum(
        &text,
        "switchyard_cost_by_feature_usd_total",
        &["feature=\"shared\""],
    );
    assert!(
        (by_feature - cost_a).abs() < 1e-9,
        "{by_feature} vs {cost_a}"
    );
    let by_team = metric_sum(&text, "switchyard_cost_by_team_usd_total", &["team=\"t1\""]);
    assert!((by_team - cost_a).abs() < 1e-9);
    cp.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_down_mid_budget_fail_closed_stops_at_the_allowance_fail_open_goes_on() {
    const OPEN_HARD: f64 = 0.3;
    let mock = mock_100().await;
    let mut cp = EmbeddedControlPlane::start("2s").await;
    let yaml = config(
        &mock.url(),
        "  - {name: closed, scope: feature, match: closed, window: day, hard_limit_usd: 1.0}\n  - {name: open, scope: feature, match: open, window: day, hard_limit_usd: 0.3, fail_open: true}",
    );
    let v = gb_apply(&cp.url, &yaml).await;
    let snaps = tempfile::tempdir().unwrap();
    let a = start_edge(&cp.url, "edge-a", &snaps.path().join("a")).await;
    let b = start_edge(&cp.url, "edge-b", &snaps.path().join("b")).await;
    for e in [&a, &b] {
        e.wait_version(v).await;
        wait_metric(
            e,
            "switchyard_usage_stream_connected",
            None,
            "usage stream",
            |v| v == 1.0,
        )
        .await;
    }
    // Some spend on both budgets through both edges: grants are made.
    // (Calls per edge so far, to wait for their call-log lines.)
    let mut sent = [0usize; 2];
    for (i, e) in [&a, &b].into_iter().enumerate() {
        for f in ["closed", "open"] {
            let r = burst(&e.url, f, 4).await;
            assert!(r.iter().all(|(s, _)| *s == 200), "{r:?}");
            sent[i] += 4;
        }
    }

    // The control plane dies.
    cp.kill();
    let killed = Instant::now();
    for e in [&a, &b] {
        wait_metric(
            e,
            "switchyard_usage_stream_connected",
            None,
            "stream down",
            |v| v == 0.0,
        )
        .await;
    }

    // Fail closed: each edge spends what it was granted, then rejects.
    for (i, e) in [&a, &b].into_iter().enumerate() {
        let allowance = metric(e, "switchyard_budget_allowance_usd", Some("closed")).await;
        assert!(allowance > 0.0);
        let mut rejected = false;
        for _ in 0..30 {
            let r = burst(&e.url, "closed", 8).await;
            sent[i] += 8;
            assert!(
                r.iter()
                    .all(|(s, c)| *s == 200 || (*s == 429 && c == "budget_exceeded")),
                "{r:?}"
            );
            if r.iter().any(|(s, _)| *s == 429) {
                rejected = true;
                break;
            }
        }
        assert!(rejected, "the edge never stopped");
        e.wait_calls(sent[i]).await;
        let (cost, n) = spent(e, "closed");
        eprintln!("closed: {n} calls ${cost:.4}, allowance ${allowance:.4}");
        assert!(
            cost <= allowance + 1e-9,
            "spent ${cost} beyond the allowance ${allowance} with the control plane down"
        );
        assert!(
            cost >= allowance - CALL_USD - 1e-9,
            "stopped early: ${cost} of ${allowance}"
        );
        // Still refusing (no lease magic for fail-closed budgets).
        assert_eq!(call(&http(), &e.url, "closed").await.0, 429);
        sent[i] += 1;
    }

    // Fail open: once the lease (2 s) has run out with the control plane
    // unreachable, the edge goes on past its allowance, up to the local
    // hard limit.
    let lease_over = killed + Duration::from_millis(2500);
    tokio::time::sleep(lease_over.saturating_duration_since(Instant::now())).await;
    for (i, e) in [&a, &b].into_iter().enumerate() {
        let allowance = metric(e, "switchyard_budget_allowance_usd", Some("open")).await;
        assert!(allowance > 0.0 && allowance < OPEN_HARD, "{allowance}");
        let mut rejected = false;
        for _ in 0..30 {
            let r = burst(&e.url, "open", 8).await;
            sent[i] += 8;
            if r.iter().any(|(s, _)| *s == 429) {
                rejected = true;
                break;
            }
        }
        assert!(rejected, "the local hard limit never applied");
        e.wait_calls(sent[i]).await;
        let (cost, n) = spent(e, "open");
        eprintln!("open: {n} calls ${cost:.4}, allowance ${allowance:.4}");
        assert!(
            cost > allowance + CALL_USD,
            "fail-open edge stopped at its allowance: ${cost} vs ${allowance}"
        );
        assert!(
            cost <= OPEN_HARD + 1e-9,
            "beyond the local hard limit: ${cost}"
        );
    }

    // Back up: the edges report what they spent; the fail-open overshoot
    // shows in the control plane's accounting.
    cp.spawn().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = gb_ctl(
            &cp.url,
            &["budgets", "status", "--name", "open", "-o", "json"],
        )
        .await
        .ok()
        .json();
        let accounted = status["allocations"][0]["accounted_usd"]
            .as_f64()
            .unwrap_or(0.0);
        let (ca, _) = spent(&a, "open");
        let (cb, _) = spent(&b, "open");
        if accounted >= ca + cb - 1e-9 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "control plane never saw the fail-open spend: {status}; log: {}",
            cp.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Request ids in a spool file (length-delimited `UsageRecord`s).
fn spooled(path: &Path) -> Vec<switchyard_proto::control::UsageRecord> {
    let bytes = std::fs::read(path).unwrap_or_default();
    let mut buf = bytes.as_slice();
    let mut out = Vec::new();
    while !buf.is_empty() {
        match switchyard_proto::control::UsageRecord::decode_length_delimited(&mut buf) {
            Ok(r) => out.push(r),
            Err(_) => break,
        }
    }
    out
}

async fn usage_total(cp: &str) -> (u64, f64) {
    let u = gb_ctl(cp, &["usage", "--by", "key", "-o", "json"])
        .await
        .ok()
        .json();
    (
        u["total"]["requests"].as_u64().unwrap(),
        u["total"]["cost_usd"].as_f64().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_spooled_while_the_control_plane_is_down_survives_an_edge_restart_exactly_once() {
    let mock = mock_100().await;
    let mut cp = EmbeddedControlPlane::start("10s").await;
    // No budget on this feature: the edge serves while the control plane
    // is down.
    let yaml = config(
        &mock.url(),
        "  - {name: other, scope: feature, match: other, window: day, hard_limit_usd: 1}",
    );
    let v = gb_apply(&cp.url, &yaml).await;
    let snaps = tempfile::tempdir().unwrap();
    let snap = snaps.path().join("edge");
    let spool = snap.join("usage-spool.log");
    let mut first = start_edge(&cp.url, "edge-r", &snap).await;
    first.wait_version(v).await;
    wait_metric(
        &first,
        "switchyard_usage_stream_connected",
        None,
        "usage stream",
        |v| v == 1.0,
    )
    .await;

    // Delivered while the control plane is up.
    let r = burst(&first.url, "free", 5).await;
    assert!(r.iter().all(|(s, _)| *s == 200), "{r:?}");
    let deadline = Instant::now() + Duration::from_secs(15);
    while usage_total(&cp.url).await.0 < 5 {
        assert!(Instant::now() < deadline, "5 records never arrived");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The control plane goes away; calls go on and are spooled.
    cp.kill();
    wait_metric(
        &first,
        "switchyard_usage_stream_connected",
        None,
        "stream down",
        |v| v == 0.0,
    )
    .await;
    let r = burst(&first.url, "free", 7).await;
    assert!(r.iter().all(|(s, _)| *s == 200), "{r:?}");
    // Records 6..=12 on disk (the file may still hold some of 1..=5 if the
    // last ack was not processed before the control plane died).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seqs: Vec<u64> = spooled(&spool).iter().map(|r| r.seq).collect();
        if seqs.iter().filter(|s| **s > 5).count() == 7 {
            assert_eq!(seqs.iter().max(), Some(&12), "{seqs:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "7 records never reached the spool: {seqs:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // SIGKILL: no chance to send anything.
    first.wait_calls(12).await;
    first.kill();
    let first_calls = first.calls();

    // Restarted (same node id and snapshot dir) while the control plane is
    // still down: boots from its snapshot, serves, spools more.
    let second = start_edge(&cp.url, "edge-r", &snap).await;
    second.wait_version(v).await;
    let r = burst(&second.url, "free", 3).await;
    assert!(r.iter().all(|(s, _)| *s == 200), "{r:?}");
    second.wait_calls(3).await;

    // The control plane returns: everything arrives, once.
    cp.spawn().await;
    let expected_cost: f64 = first_calls
        .iter()
        .chain(second.calls().iter())
        .map(|c| c["cost_usd"].as_f64().unwrap())
        .sum();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (n, cost) = usage_total(&cp.url).await;
        assert!(n <= 15, "duplicates: {n} records");
        if n == 15 {
            assert!(
                (cost - expected_cost).abs() < 1e-9,
                "{cost} vs {expected_cost}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {n} of 15 records arrived; edge log:\n{}\ncontrol plane log:\n{}",
            second.log(),
            cp.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Acknowledged: the spool empties; nothing is counted twice later.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !spooled(&spool).is_empty() {
        assert!(Instant::now() < deadline, "spool never emptied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(usage_total(&cp.url).await.0, 15);
    let by_edge = gb_ctl(&cp.url, &["usage", "--by", "edge", "-o", "json"])
        .await
        .ok()
        .json();
    assert_eq!(by_edge["rows"].as_array().unwrap().len(), 1, "{by_edge}");
    assert_eq!(by_edge["rows"][0]["key"], "edge-r");
    let by_day = gb_ctl(&cp.url, &["usage", "--by", "day"]).await.ok().stdout;
    assert!(
        by_day.contains("TOTAL") && by_day.contains("15"),
        "{by_day}"
    );
}
