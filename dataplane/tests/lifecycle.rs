//! Process lifecycle of the real `switchyard-edge` binary: graceful shutdown
//! (SIGTERM drains, bounded by `--grace-period`), Pingora's graceful upgrade
//! (`--upgrade` + SIGQUIT hands the listening sockets over with no failed
//! request), and the systemd units in `deploy/systemd/` run for real (their
//! `ExecStart` lines with temp ports and directories, the `ExecReload`
//! upgrade helper, `sd_notify` readiness and `MAINPID=` handover).
//!
//! Every process is killed on drop, every wait and every load loop is
//! bounded, and everything listens on 127.0.0.1.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::control::{apply_ok, control_bin, free_port, ADMIN_TOKEN, EDGE_TOKEN};
use common::{mock_config, MockProvider, KEYS};
// Re-exported by the harness for other test files.
#[allow(unused_imports)]
use common::{Fault as _, FaultScope as _};
use futures::StreamExt;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn edge_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_switchyard-edge"))
}

fn signal(pid: u32, sig: &str) {
    let st = Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success(), "kill -{sig} {pid} failed");
}

/// True while `pid` exists and is not a zombie (orphans re-parented to an
/// init that does not reap stay zombies).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(stat) => stat
            .rsplit_once(") ")
            .map(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X'))
            .unwrap_or(false),
    }
}

/// A child process killed on drop, with stdout lines collected.
struct Proc {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    stderr_log: PathBuf,
}

impl Proc {
    fn spawn(mut cmd: Command, stderr_log: PathBuf) -> Proc {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_log).unwrap());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Proc {
            child,
            lines,
            stderr_log,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    /// Waits (bounded) for a stdout line starting with `prefix`; returns the rest.
    fn wait_line(&mut self, prefix: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self
                .lines
                .recv_timeout(left.min(Duration::from_millis(100)))
            {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return rest.trim().to_string();
                    }
                }
                Err(_) => {
                    if let Ok(Some(st)) = self.child.try_wait() {
                        panic!(
                            "process exited ({st}) before printing {prefix:?}; log:\n{}",
                            self.log()
                        );
                    }
                    assert!(
                        Instant::now() < deadline,
                        "no {prefix:?} line within {within:?}; log:\n{}",
                        self.log()
                    );
                }
            }
        }
    }

    /// Waits (bounded) for the process to exit.
    fn wait_exit(&mut self, within: Duration) -> (ExitStatus, Duration) {
        let started = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return (st, started.elapsed());
            }
            assert!(
                started.elapsed() < within,
                "process {} still running after {within:?}; log:\n{}",
                self.pid(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Kills a process that is not our child (e.g. started by the upgrade
/// helper) on drop.
struct Orphan(u32);

impl Drop for Orphan {
    fn drop(&mut self) {
        if alive(self.0) {
            let _ = Command::new("kill")
                .args(["-KILL", &self.0.to_string()])
                .status();
        }
    }
}

/// Kills, on drop, every process whose command line contains a marker (a
/// test's unique temp dir): catches what a test started indirectly (the
/// upgrade helper's new edge) even when the test fails half-way.
struct KillByArg(String);

impl Drop for KillByArg {
    fn drop(&mut self) {
        let me = std::process::id();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return;
        };
        for e in entries.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            if pid == me {
                continue;
            }
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&self.0) && alive(pid) {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
    }
}

/// Starts an edge on `--config` (the standard mock config) with fixed or
/// free ports and extra args.
fn edge_cmd(dir: &Path, mock_url: &str, extra_yaml: &str, args: &[&str]) -> Command {
    let cfg = dir.join("edge.yaml");
    std::fs::write(&cfg, mock_config(mock_url, extra_yaml)).unwrap();
    let mut cmd = Command::new(edge_bin());
    cmd.arg("--config")
        .arg(&cfg)
        .arg("--upgrade-sock")
        .arg(dir.join("upgrade.sock"))
        .args(args)
        .env("SWITCHYARD_LOG", "info");
    for (k, v) in KEYS {
        cmd.env(k, v);
    }
    cmd
}

async fn wait_ready(admin_url: &str) {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ok = client
            .get(format!("{admin_url}/readyz"))
            .send()
            .await
            .map(|r| r.status() == 200)
            .unwrap_or(false);
        if ok {
            return;
        }
        assert!(Instant::now() < deadline, "{admin_url} never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn chat_body(model: &str, stream: bool) -> serde_json::Value {
    serde_json::json!({
        "model": model,
        "stream": stream,
        "messages": [{"role": "user", "content": "lifecycle"}],
    })
}

/// Outcome counters of a bounded closed-loop load.
#[derive(Default)]
struct LoadStats {
    ok: AtomicU64,
    failed: AtomicU64,
}

/// `workers` clients (keep-alive pools), each sending requests one after the
/// other (every other one streamed) with a short pause, until `stop` or 60 s.
/// A request fails on a transport error, a status other than 200, or a
/// stream without `[DONE]`.
fn spawn_load(
    url: String,
    workers: usize,
    stop: Arc<AtomicBool>,
    stats: Arc<LoadStats>,
    errors: Arc<parking_lot::Mutex<Vec<String>>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..workers)
        .map(|w| {
            let (url, stop, stats, errors) =
                (url.clone(), stop.clone(), stats.clone(), errors.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .build()
                    .unwrap();
                let hard_stop = Instant::now() + Duration::from_secs(60);
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) && Instant::now() < hard_stop {
                    i += 1;
                    let stream = (i + w as u64).is_multiple_of(2);
                    let res = client
                        .post(format!("{url}/v1/chat/completions"))
                        .json(&chat_body("gpt-mock", stream))
                        .send()
                        .await;
                    let outcome = match res {
                        Err(e) => Err(format!("send: {e:?}")),
                        Ok(r) => {
                            let status = r.status().as_u16();
                            match r.text().await {
                                Err(e) => Err(format!("body: {e:?}")),
                                Ok(_) if status != 200 => Err(format!("status {status}")),
                                Ok(body) if stream && !body.contains("[DONE]") => {
                                    Err(format!("incomplete stream: {body}"))
                                }
                                Ok(_) => Ok(()),
                            }
                        }
                    };
                    match outcome {
                        Ok(()) => {
                            stats.ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            stats.failed.fetch_add(1, Ordering::Relaxed);
                            errors.lock().push(e);
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        })
        .collect()
}

/// A started stream: the response after its first body chunk arrived.
async fn start_stream(url: &str) -> (reqwest::Response, Vec<u8>) {
    let client = reqwest::Client::new();
    let mut resp = client
        .post(format!("{url}/v1/chat/completions"))
        .json(&chat_body("gpt-mock", true))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let first = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
        .await
        .expect("first chunk in time")
        .unwrap()
        .expect("a first chunk");
    (resp, first.to_vec())
}

/// Reads the rest of a stream; returns the whole body and whether it ended
/// cleanly (false when the connection was cut).
async fn finish_stream(resp: reqwest::Response, mut body: Vec<u8>) -> (String, bool) {
    let mut chunks = resp.bytes_stream();
    let mut clean = true;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match tokio::time::timeout_at(deadline, chunks.next()).await {
            Err(_) => panic!("stream did not end within 30 s"),
            Ok(None) => break,
            Ok(Some(Ok(b))) => body.extend_from_slice(&b),
            Ok(Some(Err(_))) => {
                clean = false;
                break;
            }
        }
    }
    (String::from_utf8_lossy(&body).into_owned(), clean)
}

fn connect_refused(addr: &str) -> bool {
    matches!(
        std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_millis(500)),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
    )
}

// ---------------------------------------------------------------------------
// Graceful shutdown
// ---------------------------------------------------------------------------

/// An idle edge does not sit out its grace period: SIGTERM → exit 0 at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_on_an_idle_edge_exits_promptly() {
    let mock = MockProvider::builder().spawn("127.0.0.1:0").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cmd = edge_cmd(
        dir.path(),
        &mock.url(),
        "",
        &[
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--grace-period",
            "30s",
        ],
    );
    let mut edge = Proc::spawn(cmd, dir.path().join("edge.log"));
    let url = edge.wait_line("edge listening on ", Duration::from_secs(20));
    let admin = edge.wait_line("admin listening on ", Duration::from_secs(5));
    wait_ready(&admin).await;
    // One request first, on a connection that is then closed.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let r = client
        .post(format!("{url}/v1/chat/completions"))
        .json(&chat_body("gpt-mock", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    drop(client);

    signal(edge.pid(), "TERM");
    let (status, took) = edge.wait_exit(Duration::from_secs(10));
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        edge.log()
    );
    assert!(
        took < Duration::from_secs(5),
        "idle edge took {took:?} to exit (grace period 30 s)"
    );
    assert!(edge.log().contains("drained; exiting"), "{}", edge.log());
}

/// An idle keep-alive client connection is closed after `header_timeout`
/// of silence, so it delays the exit by at most that (not the grace period).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_an_idle_keepalive_connection_exits_after_the_header_timeout() {
    let mock = MockProvider::builder().spawn("127.0.0.1:0").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cmd = edge_cmd(
        dir.path(),
        &mock.url(),
        "server: {header_timeout: 1s}",
        &[
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--grace-period",
            "30s",
        ],
    );
    let mut edge = Proc::spawn(cmd, dir.path().join("edge.log"));
    let url = edge.wait_line("edge listening on ", Duration::from_secs(20));
    let admin = edge.wait_line("admin listening on ", Duration::from_secs(5));
    wait_ready(&admin).await;

    // A raw keep-alive connection: one request, then silence.
    let mut conn = std::net::TcpStream::connect(url.trim_start_matches("http://")).unwrap();
    conn.write_all(b"GET /v1/models HTTP/1.1\r\nhost: edge\r\n\r\n")
        .unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 4096];
    let n = conn.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));

    signal(edge.pid(), "TERM");
    let (status, took) = edge.wait_exit(Duration::from_secs(15));
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        edge.log()
    );
    assert!(
        took < Duration::from_secs(5),
        "took {took:?} (header_timeout 1 s, grace 30 s)"
    );
    // The server closed the idle connection.
    conn.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    assert!(matches!(conn.read(&mut buf), Ok(0) | Err(_)));
}

/// SIGTERM during a stream: the listener stops accepting at once, the
/// stream runs to its end (`[DONE]`), then the edge exits 0 well before the
/// grace period is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_in_flight_stream_finish() {
    // 20 tokens at 10 tokens/s: a 2 s stream.
    let mock = MockProvider::builder()
        .output_tokens(20..=20)
        .tokens_per_sec(10.0)
        .spawn("127.0.0.1:0")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cmd = edge_cmd(
        dir.path(),
        &mock.url(),
        "",
        &[
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--grace-period",
            "20s",
            "--call-log",
            dir.path().join("calls.jsonl").to_str().unwrap(),
        ],
    );
    let mut edge = Proc::spawn(cmd, dir.path().join("edge.log"));
    let url = edge.wait_line("edge listening on ", Duration::from_secs(20));
    let admin = edge.wait_line("admin listening on ", Duration::from_secs(5));
    wait_ready(&admin).await;

    let (resp, first) = start_stream(&url).await;
    let term_at = Instant::now();
    signal(edge.pid(), "TERM");

    // New connections are refused while the stream goes on.
    let addr = url.trim_start_matches("http://").to_string();
    let refused = {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            if connect_refused(&addr) {
                break true;
            }
            if Instant::now() > deadline {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    assert!(refused, "the listener still accepts after SIGTERM");
    assert!(
        edge.child.try_wait().unwrap().is_none(),
        "edge exited with a stream in flight; log:\n{}",
        edge.log()
    );

    let (body, clean) = finish_stream(resp, first).await;
    let stream_done = term_at.elapsed();
    assert!(clean, "stream was cut: {body}");
    assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
    let deltas = common::sse_events(&body)
        .iter()
        .filter(|(_, d)| d.contains("\"content\":\"") && !d.contains("\"content\":\"\""))
        .count();
    assert_eq!(deltas, 20, "{body}");

    let (status, took) = edge.wait_exit(Duration::from_secs(25));
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        edge.log()
    );
    assert!(
        took < stream_done + Duration::from_secs(2),
        "exit {took:?} after SIGTERM, stream done after {stream_done:?}"
    );
    // The call was logged (the log is flushed before the early exit).
    let calls = std::fs::read_to_string(dir.path().join("calls.jsonl")).unwrap();
    assert!(calls.contains("\"complete\":true"), "{calls}");
}

/// The grace period bounds the drain: a stream longer than it is cut and
/// the edge exits about when the grace period ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grace_period_bounds_the_drain() {
    // 60 tokens at 10 tokens/s: a 6 s stream, grace 1 s.
    let mock = MockProvider::builder()
        .output_tokens(60..=60)
        .tokens_per_sec(10.0)
        .spawn("127.0.0.1:0")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cmd = edge_cmd(
        dir.path(),
        &mock.url(),
        "",
        &[
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--grace-period",
            "1s",
        ],
    );
    let mut edge = Proc::spawn(cmd, dir.path().join("edge.log"));
    let url = edge.wait_line("edge listening on ", Duration::from_secs(20));
    let admin = edge.wait_line("admin listening on ", Duration::from_secs(5));
    wait_ready(&admin).await;

    let (resp, first) = start_stream(&url).await;
    signal(edge.pid(), "TERM");
    let (status, took) = edge.wait_exit(Duration::from_secs(10));
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        edge.log()
    );
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "exit {took:?} after SIGTERM with a 1 s grace period"
    );
    let (body, _) = finish_stream(resp, first).await;
    assert!(
        !body.contains("[DONE]"),
        "stream should have been cut: {body}"
    );
}

// ---------------------------------------------------------------------------
// Graceful upgrade
// ---------------------------------------------------------------------------

fn wait_for_socket(path: &Path, within: Duration) {
    let deadline = Instant::now() + within;
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} not created in {within:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn count_lines(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .count()
}

/// Pingora's graceful upgrade under load: a second edge started with
/// `--upgrade` takes the listening sockets over when the first gets
/// SIGQUIT; the first drains and exits 0; no request fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_upgrade_under_load_fails_no_request() {
    let mock = MockProvider::builder()
        .output_tokens(8..=8)
        .tokens_per_sec(400.0)
        .spawn("127.0.0.1:0")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (port, admin_port) = (free_port(), free_port());
    let listen = format!("127.0.0.1:{port}");
    let admin_listen = format!("127.0.0.1:{admin_port}");
    let args = |log: &str| -> Vec<String> {
        vec![
            "--listen".into(),
            listen.clone(),
            "--admin-listen".into(),
            admin_listen.clone(),
            "--grace-period".into(),
            "10s".into(),
            "--call-log".into(),
            dir.path().join(log).display().to_string(),
        ]
    };
    let old_args = args("old-calls.jsonl");
    let old_args: Vec<&str> = old_args.iter().map(String::as_str).collect();
    let mut old = Proc::spawn(
        edge_cmd(dir.path(), &mock.url(), "", &old_args),
        dir.path().join("old.log"),
    );
    let url = old.wait_line("edge listening on ", Duration::from_secs(20));
    wait_ready(&format!("http://{admin_listen}")).await;

    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(LoadStats::default());
    let errors = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let workers = spawn_load(url.clone(), 4, stop.clone(), stats.clone(), errors.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut new_args = args("new-calls.jsonl");
    new_args.push("--upgrade".into());
    let new_args: Vec<&str> = new_args.iter().map(String::as_str).collect();
    let mut new = Proc::spawn(
        edge_cmd(dir.path(), &mock.url(), "", &new_args),
        dir.path().join("new.log"),
    );
    wait_for_socket(&dir.path().join("upgrade.sock"), Duration::from_secs(20));
    signal(old.pid(), "QUIT");
    // The new process prints its addresses once it holds the sockets.
    new.wait_line("edge listening on ", Duration::from_secs(15));
    let (status, took) = tokio::task::block_in_place(|| old.wait_exit(Duration::from_secs(30)));
    assert!(status.success(), "old edge: {status}; log:\n{}", old.log());
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }

    let (ok, failed) = (
        stats.ok.load(Ordering::Relaxed),
        stats.failed.load(Ordering::Relaxed),
    );
    eprintln!("upgrade: {ok} ok, {failed} failed; old edge exited {took:?} after SIGQUIT");
    assert_eq!(failed, 0, "failed requests: {:?}", errors.lock());
    assert!(ok >= 50, "too little load to mean anything: {ok}");
    let (served_old, served_new) = (
        count_lines(&dir.path().join("old-calls.jsonl")),
        count_lines(&dir.path().join("new-calls.jsonl")),
    );
    assert!(
        served_old > 0 && served_new > 0,
        "old served {served_old}, new served {served_new}"
    );
    wait_ready(&format!("http://{admin_listen}")).await;

    signal(new.pid(), "TERM");
    let (status, _) = new.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "new edge: {status}; log:\n{}", new.log());
}

// ---------------------------------------------------------------------------
// systemd units (deploy/systemd), run for real without systemd
// ---------------------------------------------------------------------------

/// A parsed unit file: `[Service]` key → values (in order; continuation
/// lines joined).
fn parse_unit(path: &Path) -> BTreeMap<String, Vec<String>> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut section = String::new();
    let mut pending = String::new();
    for raw in text.lines() {
        let line = raw.trim_end();
        if !pending.is_empty() {
            pending.push(' ');
            pending.push_str(line.trim_start().trim_end_matches('\\').trim_end());
            if !line.ends_with('\\') {
                let (k, v) = pending.split_once('=').unwrap();
                out.entry(format!("{section}.{k}"))
                    .or_default()
                    .push(v.trim().to_string());
                pending.clear();
            }
            continue;
        }
        let t = line.trim_start();
        if t.is_empty() || t.starts_with('#') || t.starts_with(';') {
            continue;
        }
        if t.starts_with('[') {
            section = t.trim_matches(|c| c == '[' || c == ']').to_string();
            continue;
        }
        if t.ends_with('\\') {
            pending = t.trim_end_matches('\\').trim_end().to_string();
            continue;
        }
        let (k, v) = t.split_once('=').unwrap();
        out.entry(format!("{section}.{k}"))
            .or_default()
            .push(v.trim().to_string());
    }
    out
}

fn unit_value(unit: &BTreeMap<String, Vec<String>>, key: &str) -> String {
    unit.get(key)
        .and_then(|v| v.last())
        .cloned()
        .unwrap_or_else(|| panic!("unit has no {key}"))
}

/// KEY=VALUE lines of an env file.
fn parse_env_file(path: &Path) -> BTreeMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap();
            (k.to_string(), v.to_string())
        })
        .collect()
}

/// Expands `${VAR}` / `$VAR` from `env` and the specifiers `%t %S %L` (and
/// `%%`) like systemd, then splits on whitespace (the units quote nothing).
fn expand_command(
    cmd: &str,
    env: &BTreeMap<String, String>,
    spec: &[(char, &Path)],
) -> Vec<String> {
    let mut out = String::new();
    let mut chars = cmd.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '%' => {
                let s = chars.next().unwrap();
                if s == '%' {
                    out.push('%');
                } else {
                    let (_, p) = spec
                        .iter()
                        .find(|(k, _)| *k == s)
                        .unwrap_or_else(|| panic!("unsupported specifier %{s} in {cmd}"));
                    out.push_str(&p.display().to_string());
                }
            }
            '$' => {
                let mut name = String::new();
                if chars.peek() == Some(&'{') {
                    chars.next();
                    for c in chars.by_ref() {
                        if c == '}' {
                            break;
                        }
                        name.push(c);
                    }
                } else {
                    while let Some(&c) = chars.peek() {
                        if c.is_ascii_alphanumeric() || c == '_' {
                            name.push(c);
                            chars.next();
                        } else {
                            break;
                        }
                    }
                }
                let v = env
                    .get(&name)
                    .unwrap_or_else(|| panic!("{cmd}: ${name} is not set by the env file"));
                out.push_str(v);
            }
            c => out.push(c),
        }
    }
    out.split_whitespace().map(String::from).collect()
}

fn parse_secs(v: &str) -> f64 {
    humantime::parse_duration(v)
        .map(|d| d.as_secs_f64())
        .unwrap_or_else(|_| v.parse::<f64>().unwrap())
}

/// A fake systemd notification socket.
struct NotifySocket {
    sock: UnixDatagram,
    path: PathBuf,
}

impl NotifySocket {
    fn new(dir: &Path) -> Self {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        NotifySocket { sock, path }
    }

    /// Waits (bounded) for a message with `READY=1`; returns its fields.
    fn wait_ready(&self, within: Duration) -> BTreeMap<String, String> {
        let deadline = Instant::now() + within;
        let mut buf = [0u8; 4096];
        loop {
            assert!(Instant::now() < deadline, "no READY=1 within {within:?}");
            if let Ok(n) = self.sock.recv(&mut buf) {
                let fields: BTreeMap<String, String> = String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .filter_map(|l| l.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                if fields.get("READY").map(String::as_str) == Some("1") {
                    return fields;
                }
            }
        }
    }
}

/// Both units: static rules, then ExecStart run for real (control plane on
/// its embedded store, edge on it), `READY=1`/`MAINPID=` via the notify
/// socket, config applied with switchyard-ctl and served, ExecReload (the
/// upgrade helper) under load with no failed request, and SIGTERM
/// (`KillSignal=`) ending both within `TimeoutStopSec=`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_units_start_reload_and_stop_cleanly() {
    let root = workspace_root();
    let sysd = root.join("deploy/systemd");
    let edge_unit = parse_unit(&sysd.join("switchyard-edge.service"));
    let control_unit = parse_unit(&sysd.join("switchyard-control.service"));

    // Static rules.
    for (name, unit) in [("edge", &edge_unit), ("control", &control_unit)] {
        assert_eq!(unit_value(unit, "Service.Restart"), "on-failure", "{name}");
        assert_eq!(unit_value(unit, "Service.KillSignal"), "SIGTERM", "{name}");
        assert_eq!(unit_value(unit, "Service.NoNewPrivileges"), "yes", "{name}");
        assert_eq!(
            unit_value(unit, "Service.ProtectSystem"),
            "strict",
            "{name}"
        );
        assert_eq!(unit_value(unit, "Service.User"), "switchyard", "{name}");
    }
    assert_eq!(unit_value(&edge_unit, "Service.Type"), "notify");
    assert_eq!(unit_value(&edge_unit, "Service.NotifyAccess"), "all");
    let mut edge_env = parse_env_file(&sysd.join("edge.env"));
    let mut control_env = parse_env_file(&sysd.join("control.env"));
    let grace = parse_secs(&edge_env["SWITCHYARD_EDGE_GRACE_PERIOD"]);
    let stop_timeout = parse_secs(&unit_value(&edge_unit, "Service.TimeoutStopSec"));
    assert!(
        stop_timeout >= grace + 5.0,
        "TimeoutStopSec {stop_timeout}s must exceed the grace period {grace}s (+1 s runtime stop, + margin)"
    );
    let control_stop = parse_secs(&unit_value(&control_unit, "Service.TimeoutStopSec"));
    assert!(control_stop > 5.0, "control plane needs > 5 s to stop");

    // Temp stand-ins for /run, /var/lib, /var/log and the units' directories.
    let dir = tempfile::tempdir().unwrap();
    let _cleanup = KillByArg(dir.path().display().to_string());
    let (run, state, logs) = (
        dir.path().join("run"),
        dir.path().join("lib"),
        dir.path().join("log"),
    );
    for (base, key) in [
        (&run, "Service.RuntimeDirectory"),
        (&state, "Service.StateDirectory"),
        (&logs, "Service.LogsDirectory"),
    ] {
        for unit in [&edge_unit, &control_unit] {
            if let Some(v) = unit.get(key) {
                for d in v.iter().flat_map(|s| s.split_whitespace()) {
                    std::fs::create_dir_all(base.join(d)).unwrap();
                }
            }
        }
    }
    let spec: [(char, &Path); 3] = [('t', &run), ('S', &state), ('L', &logs)];
    // Map the installed binaries onto the ones under test.
    let bin_for = |installed: &str| -> PathBuf {
        match Path::new(installed).file_name().unwrap().to_str().unwrap() {
            "switchyard-edge" => edge_bin(),
            "switchyard-control" => control_bin("switchyard-control"),
            "switchyard-edge-upgrade" => sysd.join("switchyard-edge-upgrade"),
            other => panic!("unexpected command {other}"),
        }
    };

    // Control plane.
    let control_port = free_port();
    control_env.insert(
        "SWITCHYARD_CONTROL_LISTEN".into(),
        format!("127.0.0.1:{control_port}"),
    );
    control_env.insert("SWITCHYARD_ADMIN_TOKEN".into(), ADMIN_TOKEN.into());
    control_env.insert("SWITCHYARD_EDGE_TOKEN".into(), EDGE_TOKEN.into());
    let argv = expand_command(
        &unit_value(&control_unit, "Service.ExecStart"),
        &control_env,
        &spec,
    );
    let mut cmd = Command::new(bin_for(&argv[0]));
    cmd.args(&argv[1..])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    cmd.envs(&control_env);
    let mut control = Proc::spawn(cmd, dir.path().join("control.log"));
    control.wait_line("control plane listening on ", Duration::from_secs(20));
    let control_url = format!("http://127.0.0.1:{control_port}");
    assert!(
        state.join("switchyard-control/config").exists()
            || std::fs::read_dir(state.join("switchyard-control"))
                .unwrap()
                .next()
                .is_some(),
        "the embedded store is not in the StateDirectory"
    );

    // A config version first, so the edge boots on it.
    let mock = MockProvider::builder()
        .output_tokens(8..=8)
        .tokens_per_sec(400.0)
        .spawn("127.0.0.1:0")
        .await
        .unwrap();
    let version = apply_ok(&control_url, &mock_config(&mock.url(), "")).await;

    // Edge.
    let (port, admin_port) = (free_port(), free_port());
    edge_env.insert("SWITCHYARD_EDGE_LISTEN".into(), format!("127.0.0.1:{port}"));
    edge_env.insert(
        "SWITCHYARD_EDGE_ADMIN_LISTEN".into(),
        format!("127.0.0.1:{admin_port}"),
    );
    edge_env.insert("SWITCHYARD_CONTROL_PLANE".into(), control_url.clone());
    edge_env.insert("SWITCHYARD_EDGE_TOKEN".into(), EDGE_TOKEN.into());
    for (k, v) in KEYS {
        edge_env.insert(k.to_string(), v.to_string());
    }
    let notify = NotifySocket::new(dir.path());
    edge_env.insert("NOTIFY_SOCKET".into(), notify.path.display().to_string());
    let argv = expand_command(
        &unit_value(&edge_unit, "Service.ExecStart"),
        &edge_env,
        &spec,
    );
    let mut cmd = Command::new(bin_for(&argv[0]));
    cmd.args(&argv[1..])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    cmd.envs(&edge_env);
    let mut edge = Proc::spawn(cmd, dir.path().join("edge.log"));
    let ready = tokio::task::block_in_place(|| notify.wait_ready(Duration::from_secs(20)));
    assert_eq!(ready["MAINPID"], edge.pid().to_string());
    let url = format!("http://127.0.0.1:{port}");
    let admin_url = format!("http://127.0.0.1:{admin_port}");

    // Config through the control plane, served by the edge.
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v: serde_json::Value = client
            .get(format!("{admin_url}/admin/config"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if v["version"].as_u64() == Some(version) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "edge never served version {version}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_ready(&admin_url).await;
    assert!(run.join("switchyard-edge").is_dir());
    assert!(
        state.join("switchyard-edge/config-snapshot.pb").is_file(),
        "no snapshot in the StateDirectory"
    );

    // ExecReload under load.
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(LoadStats::default());
    let errors = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let workers = spawn_load(url.clone(), 3, stop.clone(), stats.clone(), errors.clone());
    tokio::time::sleep(Duration::from_millis(700)).await;
    let mut reload_env = edge_env.clone();
    reload_env.insert("MAINPID".into(), edge.pid().to_string());
    let argv = expand_command(
        &unit_value(&edge_unit, "Service.ExecReload"),
        &reload_env,
        &spec,
    );
    // Like systemd: wait for the ExecReload process itself (not for its
    // output, which the new edge it leaves running inherits).
    let reload_log = dir.path().join("reload.log");
    let mut cmd = Command::new(bin_for(&argv[0]));
    cmd.args(&argv[1..])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(&edge_env);
    let mut reload = Proc::spawn(cmd, reload_log.clone());
    let (status, _) = tokio::task::block_in_place(|| reload.wait_exit(Duration::from_secs(30)));
    let reload_out = format!(
        "{}\n{}",
        std::fs::read_to_string(&reload_log).unwrap_or_default(),
        reload.lines.try_iter().collect::<Vec<_>>().join("\n")
    );
    assert!(status.success(), "ExecReload failed: {reload_out}");
    let ready = tokio::task::block_in_place(|| notify.wait_ready(Duration::from_secs(20)));
    let new_pid: u32 = ready["MAINPID"].parse().unwrap();
    let _new_guard = Orphan(new_pid);
    assert_ne!(
        new_pid,
        edge.pid(),
        "MAINPID did not move to the new process"
    );
    assert!(alive(new_pid));
    let (status, _) =
        tokio::task::block_in_place(|| edge.wait_exit(Duration::from_secs(stop_timeout as u64)));
    assert!(status.success(), "old edge: {status}; log:\n{}", edge.log());
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let (ok, failed) = (
        stats.ok.load(Ordering::Relaxed),
        stats.failed.load(Ordering::Relaxed),
    );
    eprintln!("systemd reload: {ok} ok, {failed} failed");
    assert_eq!(failed, 0, "failed requests: {:?}", errors.lock());
    assert!(ok >= 30, "too little load: {ok}");
    wait_ready(&admin_url).await;
    let v: serde_json::Value = client
        .get(format!("{admin_url}/admin/config"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["version"].as_u64(), Some(version), "{v}");

    // Stop both the way systemd does (KillSignal=SIGTERM), within TimeoutStopSec.
    signal(new_pid, "TERM");
    let started = Instant::now();
    while alive(new_pid) {
        assert!(
            started.elapsed() < Duration::from_secs_f64(stop_timeout),
            "upgraded edge did not stop within TimeoutStopSec"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    signal(control.pid(), "TERM");
    let (status, _) =
        tokio::task::block_in_place(|| control.wait_exit(Duration::from_secs_f64(control_stop)));
    assert!(
        status.success(),
        "control plane: {status}; log:\n{}",
        control.log()
    );
}

// ---------------------------------------------------------------------------
// Config files shipped in deploy/
// ---------------------------------------------------------------------------

/// The config documents under deploy/ (the local topology, the Kubernetes
/// ConfigMap, the examples) pass `switchyard-ctl validate --offline`
/// (no network: the Kubernetes one names real provider URLs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_config_files_validate() {
    let root = workspace_root();
    let env = [
        ("MOCK_US_OPENAI_URL", "http://127.0.0.1:1"),
        ("MOCK_US_ANTHROPIC_URL", "http://127.0.0.1:2"),
        ("MOCK_EU_OPENAI_URL", "http://127.0.0.1:3"),
        ("MOCK_EU_ANTHROPIC_URL", "http://127.0.0.1:4"),
        ("SY_KEY_PRO", "sy-test-pro"),
        ("SY_KEY_FREE", "sy-test-free"),
        ("MOCK_URL", "http://127.0.0.1:5"),
        ("REGION_A_URL", "http://127.0.0.1:6"),
        ("REGION_B_URL", "http://127.0.0.1:7"),
    ];
    let files = [
        "deploy/local/topology.yaml",
        "deploy/k8s/base/gateway.yaml",
        "deploy/examples/edge-mock.yaml",
        "deploy/examples/edge-failover.yaml",
    ];
    let ctl = control_bin("switchyard-ctl");
    for f in files {
        let out = Command::new(&ctl)
            .args(["validate", "--offline", "-f"])
            .arg(root.join(f))
            .env_remove("SWITCHYARD_SERVER")
            .envs(env)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{f}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
