//! Harness for the edge's control-plane tests: a private etcd, real
//! `switchyard-control` processes on the etcd store, the real
//! `switchyard-ctl`, and edges started with `--control-plane`.
//!
//! The control-plane binaries belong to another crate, so they are not
//! visible through `CARGO_BIN_EXE_*` here; they are taken from the directory
//! of the edge binary (same target dir and profile). `cargo test --workspace`
//! and `cargo nextest run --workspace` (deploy/test.sh) build every binary
//! before running any test; when a binary is missing or older than the
//! control plane's or proto's sources (e.g. `cargo test -p
//! switchyard-dataplane`), the harness runs `cargo build -p
//! switchyard-controlplane --bins` once. Everything listens on 127.0.0.1 and
//! every wait is bounded.

use super::Edge;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

pub const ADMIN_TOKEN: &str = "admin-token-for-edge-tests";
pub const EDGE_TOKEN: &str = "edge-token-for-edge-tests";

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// ---------------------------------------------------------------------------
// Binaries
// ---------------------------------------------------------------------------

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn newest_mtime(path: &Path, newest: &mut SystemTime) {
    let Ok(meta) = std::fs::metadata(path) else {
        return;
    };
    if meta.is_dir() {
        for e in std::fs::read_dir(path).unwrap().flatten() {
            newest_mtime(&e.path(), newest);
        }
    } else if let Ok(m) = meta.modified() {
        *newest = (*newest).max(m);
    }
}

static BUILT: Mutex<bool> = Mutex::new(false);

/// Path of a `switchyard-controlplane` binary, built first if missing or
/// stale.
pub fn control_bin(name: &str) -> PathBuf {
    let edge = PathBuf::from(env!("CARGO_BIN_EXE_switchyard-edge"));
    let dir = edge.parent().unwrap().to_path_buf();
    let bins = ["switchyard-control", "switchyard-ctl"].map(|b| dir.join(b));
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if !*built {
        let root = workspace_root();
        let mut sources = SystemTime::UNIX_EPOCH;
        for p in [
            "controlplane/src",
            "controlplane/Cargo.toml",
            "proto/src",
            "proto/proto",
            "proto/build.rs",
            "proto/Cargo.toml",
        ] {
            newest_mtime(&root.join(p), &mut sources);
        }
        let fresh = bins.iter().all(|b| {
            std::fs::metadata(b)
                .and_then(|m| m.modified())
                .is_ok_and(|m| m >= sources)
        });
        if !fresh {
            // <target>/<profile>/switchyard-edge
            let profile = dir.file_name().unwrap().to_str().unwrap().to_string();
            let target = dir.parent().unwrap();
            let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
            cmd.current_dir(&root)
                .args(["build", "-q", "-p", "switchyard-controlplane", "--bins"])
                .arg("--target-dir")
                .arg(target);
            if profile != "debug" {
                cmd.args(["--profile", &profile]);
            }
            eprintln!("building the control-plane binaries: {cmd:?}");
            let out = cmd.output().expect("run cargo build");
            assert!(
                out.status.success(),
                "cargo build -p switchyard-controlplane failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        *built = true;
    }
    let p = dir.join(name);
    assert!(p.is_file(), "{} is missing", p.display());
    p
}

// ---------------------------------------------------------------------------
// etcd
// ---------------------------------------------------------------------------

/// `etcd` from $ETCD_BIN, $PATH or /usr/bin; a clear failure otherwise.
pub fn etcd_binary() -> PathBuf {
    if let Ok(p) = std::env::var("ETCD_BIN") {
        return PathBuf::from(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/local/bin")])
    {
        let cand = dir.join("etcd");
        if cand.is_file() {
            return cand;
        }
    }
    panic!(
        "etcd binary not found: these tests need a real etcd (Debian/Ubuntu: `apt-get install etcd-server`; \
         or set ETCD_BIN=/path/to/etcd)"
    );
}

/// A single-member etcd in a temp dir; killed on drop.
pub struct Etcd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    pub url: String,
}

impl Etcd {
    pub async fn start() -> Self {
        let client_port = free_port();
        let peer_port = free_port();
        let mut e = Etcd {
            child: None,
            dir: tempfile::tempdir().unwrap(),
            client_port,
            peer_port,
            url: format!("http://127.0.0.1:{client_port}"),
        };
        e.spawn().await;
        e
    }

    async fn spawn(&mut self) {
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))
            .unwrap();
        let child = Command::new(etcd_binary())
            .args(["--name", "default"])
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("default={peer}")])
            .args(["--log-level", "error"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start etcd ({}): {e}", etcd_binary().display()));
        self.child = Some(child);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(500))
            .build()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("etcd exited early ({status}); log: {}", self.log());
            }
            if let Ok(r) = http.get(format!("{}/health", self.url)).send().await {
                if r.text()
                    .await
                    .unwrap_or_default()
                    .contains("\"health\":\"true\"")
                {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("etcd not healthy within 20s; log: {}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    /// SIGKILL (an outage).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same data dir and ports.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// Writes raw bytes under `key` through etcd's v3 JSON gateway.
    pub async fn put(&self, key: &str, value: &[u8]) {
        let body = serde_json::json!({"key": base64(key.as_bytes()), "value": base64(value)});
        let r = reqwest::Client::new()
            .post(format!("{}/v3/kv/put", self.url))
            .json(&body)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .unwrap();
        assert!(
            r.status().is_success(),
            "etcd put {key}: {:?}",
            r.text().await
        );
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------
// switchyard-control / switchyard-ctl
// ---------------------------------------------------------------------------

/// A `switchyard-control` process on the etcd store at a fixed loopback
/// port (so it can be restarted where edges expect it); killed on drop.
pub struct ControlPlane {
    child: Option<Child>,
    etcd_url: String,
    extra: Vec<String>,
    pub port: u16,
    pub url: String,
    logdir: tempfile::TempDir,
    starts: u32,
}

impl ControlPlane {
    pub async fn start(etcd_url: &str, extra: &[&str]) -> Self {
        let port = free_port();
        let mut cp = ControlPlane {
            child: None,
            etcd_url: etcd_url.to_string(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            port,
            url: format!("http://127.0.0.1:{port}"),
            logdir: tempfile::tempdir().unwrap(),
            starts: 0,
        };
        cp.spawn().await;
        cp
    }

    async fn spawn(&mut self) {
        self.starts += 1;
        let log = self
            .logdir
            .path()
            .join(format!("control-{}.log", self.starts));
        let mut child = Command::new(control_bin("switchyard-control"))
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .args(["--etcd-endpoints", &self.etcd_url])
            .args(["--admin-token", ADMIN_TOKEN, "--edge-token", EDGE_TOKEN])
            .args(["--log", "info"])
            .args(&self.extra)
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
                    if !line.starts_with("control plane listening on ") {
                        let _ = child.kill();
                        let _ = child.wait();
                        panic!(
                            "control plane: unexpected first line {line:?}; log: {}",
                            read(&log)
                        );
                    }
                    break;
                }
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("control plane exited at start; log: {}", read(&log));
                }
                Err(std::sync::mpsc::TryRecvError::Empty) => {}
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("control plane printed no address; log: {}", read(&log));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.child = Some(child);
    }

    /// SIGKILL: cuts every Watch stream at once.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same port.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// Every log file of this control plane (one per start).
    pub fn log(&self) -> String {
        (1..=self.starts)
            .map(|i| read(&self.logdir.path().join(format!("control-{i}.log"))))
            .collect::<Vec<_>>()
            .join("\n--- restart ---\n")
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.kill();
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// Output of one `switchyard-ctl` run.
#[derive(Debug)]
pub struct Ctl {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Ctl {
    #[track_caller]
    pub fn ok(self) -> Self {
        assert_eq!(
            self.code, 0,
            "ctl failed: stdout={} stderr={}",
            self.stdout, self.stderr
        );
        self
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }
}

/// Runs `switchyard-ctl` against `server` with the admin token (off the
/// async runtime's threads).
pub async fn ctl(server: &str, args: &[&str]) -> Ctl {
    let mut cmd = Command::new(control_bin("switchyard-ctl"));
    cmd.args(args)
        .args(["--timeout", "10s"])
        .env("SWITCHYARD_SERVER", server)
        .env("SWITCHYARD_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("SWITCHYARD_AUTHOR", "edge-tests")
        .stdin(Stdio::null());
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let out = cmd.output().unwrap();
        Ctl {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            elapsed: started.elapsed(),
        }
    })
    .await
    .unwrap()
}

/// `switchyard-ctl apply -f <yaml>`; returns the ctl outcome.
pub async fn apply(server: &str, yaml: &str) -> Ctl {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, yaml).unwrap();
    ctl(
        server,
        &["apply", "-f", path.to_str().unwrap(), "-o", "json"],
    )
    .await
}

/// `apply` that must commit; returns the new version.
pub async fn apply_ok(server: &str, yaml: &str) -> u64 {
    let out = apply(server, yaml).await.ok().json();
    assert_eq!(out["changed"], true, "{out}");
    out["version"].as_u64().unwrap()
}

/// The control plane's view of one edge (`switchyard-ctl edges`).
pub async fn edge_status(server: &str, node_id: &str) -> Option<serde_json::Value> {
    let out = ctl(server, &["edges", "-o", "json"]).await.ok().json();
    out["edges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["node_id"] == node_id)
        .cloned()
}

/// Waits (bounded) until the control plane's view of `node_id` satisfies
/// `pred` (acks are sent just after a version is applied).
pub async fn wait_edge_status(
    server: &str,
    node_id: &str,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = edge_status(server, node_id).await;
        if let Some(s) = &seen {
            if pred(s) {
                return s.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "control plane: {node_id} {what} not reached within 10s; last: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------
// Edges on the control plane
// ---------------------------------------------------------------------------

/// How to start an edge against a control plane.
pub struct ControlledEdge<'a> {
    pub control_plane: &'a str,
    pub node_id: &'a str,
    pub snapshot_dir: Option<&'a Path>,
    /// Boot config file contents (`--config`).
    pub config: Option<&'a str>,
    pub token: &'a str,
    pub extra: &'a [&'a str],
    /// Wait for `/readyz` (else only for the listeners).
    pub wait_ready: bool,
}

impl<'a> ControlledEdge<'a> {
    pub fn new(control_plane: &'a str, node_id: &'a str) -> Self {
        Self {
            control_plane,
            node_id,
            snapshot_dir: None,
            config: None,
            token: EDGE_TOKEN,
            extra: &[],
            wait_ready: true,
        }
    }

    pub async fn start(self) -> Edge {
        let dir = tempfile::tempdir().unwrap();
        let call_log = dir.path().join("calls.jsonl");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchyard-edge"));
        cmd.args(["--control-plane", self.control_plane])
            .args(["--node-id", self.node_id, "--region", "test-region"])
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .arg("--call-log")
            .arg(&call_log)
            .arg("--upgrade-sock")
            .arg(dir.path().join("upgrade.sock"))
            .args(["--grace-period", "1s"])
            .args(self.extra)
            .env("SWITCHYARD_EDGE_TOKEN", self.token)
            .env_remove("SWITCHYARD_CONFIG")
            .env_remove("SWITCHYARD_SNAPSHOT_DIR")
            .env("SWITCHYARD_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.path().join("edge.log")).unwrap());
        for (k, v) in super::KEYS {
            cmd.env(k, v);
        }
        if let Some(s) = self.snapshot_dir {
            cmd.arg("--snapshot-dir").arg(s);
        }
        if let Some(yaml) = self.config {
            let cfg = dir.path().join("edge.yaml");
            std::fs::write(&cfg, yaml).unwrap();
            cmd.arg("--config").arg(cfg);
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
            match rx.try_recv() {
                Ok(line) => {
                    if let Some(u) = line.strip_prefix("edge listening on ") {
                        url = Some(u.to_string());
                    } else if let Some(u) = line.strip_prefix("admin listening on ") {
                        admin_url = Some(u.to_string());
                    }
                    continue;
                }
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    let status = child.wait();
                    panic!(
                        "edge exited at start ({status:?}); log: {}",
                        read(&dir.path().join("edge.log"))
                    );
                }
                Err(std::sync::mpsc::TryRecvError::Empty) => {}
            }
            assert!(
                Instant::now() < deadline,
                "edge did not print its addresses"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let edge = Edge {
            child,
            url: url.unwrap(),
            admin_url: admin_url.unwrap(),
            call_log,
            dir,
        };
        if self.wait_ready {
            edge.wait_ready().await;
        } else {
            wait_listening(&edge).await;
        }
        edge
    }
}

async fn wait_listening(edge: &Edge) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if reqwest::get(format!("{}/healthz", edge.admin_url))
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            return;
        }
        assert!(Instant::now() < deadline, "edge admin never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Edge {
    /// `GET /admin/config`.
    pub async fn admin_config(&self) -> serde_json::Value {
        reqwest::get(format!("{}/admin/config", self.admin_url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// `GET /readyz` status.
    pub async fn readyz(&self) -> u16 {
        reqwest::get(format!("{}/readyz", self.admin_url))
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// The edge's stderr log so far (controlled edges only).
    pub fn log(&self) -> String {
        read(&self.dir().join("edge.log"))
    }

    /// Versions applied so far, in order (`/admin/config` → `applied`).
    pub async fn applied_versions(&self) -> Vec<u64> {
        self.admin_config().await["applied"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["version"].as_u64().unwrap())
            .collect()
    }

    /// Waits (bounded) until `/admin/config` satisfies `pred`.
    pub async fn wait_config(
        &self,
        secs: u64,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let c = self.admin_config().await;
            if pred(&c) {
                return c;
            }
            if Instant::now() > deadline {
                panic!(
                    "edge: {what} not reached within {secs}s; /admin/config: {c:#}\nedge log:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits (bounded) until the edge serves `version`.
    pub async fn wait_version(&self, version: u64) -> serde_json::Value {
        self.wait_config(15, &format!("version {version}"), |c| {
            c["version"] == version
        })
        .await
    }

    /// Kills the edge process now (SIGKILL).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `f` (async) every 50 ms for up to `secs` seconds.
pub async fn eventually<F, Fut>(secs: u64, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// One chat call through the edge; the HTTP status (0 for a transport error).
pub async fn chat(client: &reqwest::Client, edge_url: &str, model: &str) -> u16 {
    let body = serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": "ping"}],
        "max_tokens": 16,
    });
    match client
        .post(format!("{edge_url}/v1/chat/completions"))
        .json(&body)
        .send()
        .await
    {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}
