//! Test harness: a real etcd, real `switchyard-control` processes on port 0,
//! and the real `switchyard-ctl` binary. Everything listens on 127.0.0.1 and
//! every wait is bounded.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use switchyard_controlplane::auth::AddBearer;
use switchyard_proto::control::config_service_client::ConfigServiceClient;
use switchyard_proto::control::edge_service_client::EdgeServiceClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub const ADMIN: &str = "admin-token-for-tests";
pub const EDGE: &str = "edge-token-for-tests";

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

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
    pub fn start() -> Self {
        let client_port = free_port();
        let peer_port = free_port();
        let mut e = Etcd {
            child: None,
            dir: tempfile::tempdir().unwrap(),
            client_port,
            peer_port,
            url: format!("http://127.0.0.1:{client_port}"),
        };
        e.spawn();
        e
    }

    fn spawn(&mut self) {
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::File::create(self.dir.path().join("etcd.log")).unwrap();
        let child = Command::new(etcd_binary())
            .args(["--name", "default"])
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("default={peer}")])
            .args(["--log-level", "error"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start etcd ({}): {e}", etcd_binary().display()));
        self.child = Some(child);
        self.wait_healthy();
    }

    fn wait_healthy(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    panic!("etcd exited early ({status}); log: {}", self.log());
                }
            }
            if http_get(self.client_port, "/health")
                .is_some_and(|b| b.contains("\"health\":\"true\""))
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "etcd did not become healthy within 20s; log: {}",
            self.log()
        );
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    /// SIGKILL (an outage).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same data dir and ports.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Minimal HTTP/1.0 GET; the body or None.
fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
            .ok()?;
    s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
}

/// A `switchyard-control` process; SIGKILLed on drop.
pub struct ControlPlane {
    child: Option<Child>,
    pub addr: String,
    pub url: String,
    log: PathBuf,
    _logdir: tempfile::TempDir,
}

impl ControlPlane {
    /// Starts with `--listen 127.0.0.1:0`, the test tokens and `extra` flags.
    pub fn start(extra: &[&str]) -> Self {
        let logdir = tempfile::tempdir().unwrap();
        let log = logdir.path().join("control.log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard-control"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--admin-token",
                ADMIN,
                "--edge-token",
                EDGE,
            ])
            .args(["--log", "info,switchyard_controlplane=debug"])
            .args(extra)
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
            // Drain anything else so the child never blocks on stdout.
            let _ = std::io::copy(&mut r, &mut std::io::sink());
        });
        let line = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "control plane printed no address; log: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
        };
        let addr = line
            .trim()
            .strip_prefix("control plane listening on ")
            .unwrap_or_else(|| {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "unexpected first line {line:?}; log: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            })
            .to_string();
        let url = format!("http://{addr}");
        ControlPlane {
            child: Some(child),
            addr,
            url,
            log,
            _logdir: logdir,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM and wait (bounded) for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("already stopped");
        let pid = child.id().to_string();
        let ok = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -TERM {pid} failed");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "control plane did not exit within 15s of SIGTERM; log: {}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Output of one `switchyard-ctl` run.
#[derive(Debug)]
pub struct Ctl {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
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

    #[track_caller]
    pub fn fails_with(self, needles: &[&str]) -> Self {
        assert_ne!(self.code, 0, "ctl unexpectedly succeeded: {}", self.stdout);
        for n in needles {
            assert!(
                self.stderr.contains(n),
                "stderr lacks {n:?}: {}",
                self.stderr
            );
        }
        self
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }
}

/// Runs `switchyard-ctl` against `server` (None: no server configured) with
/// the admin token and a fixed author.
pub fn ctl_env(server: Option<&str>, envs: &[(&str, &str)], args: &[&str]) -> Ctl {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchyard-ctl"));
    cmd.args(args)
        .env_remove("SWITCHYARD_SERVER")
        .env("SWITCHYARD_ADMIN_TOKEN", ADMIN)
        .env("SWITCHYARD_AUTHOR", "tester")
        .stdin(Stdio::null());
    if let Some(s) = server {
        cmd.env("SWITCHYARD_SERVER", s);
    }
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out: Output = cmd.output().unwrap();
    Ctl {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub fn ctl(server: &str, args: &[&str]) -> Ctl {
    ctl_env(Some(server), &[], args)
}

pub fn write_file(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

pub const BASE_YAML: &str = "\
providers:
  mock: {kind: openai, base_url: 'http://127.0.0.1:9/v1'}
routes:
  chat:
    targets: [{provider: mock, model: gpt-x}]
    retry: {max_retries: 0}
tiers:
  free: {requests_per_minute: 60}
keys:
  - {id: k1, secret: \"${TEST_KEY_SECRET}\", tier: free, team: a}
";

pub type EdgeClient = EdgeServiceClient<InterceptedService<Channel, AddBearer>>;
pub type AdminClient = ConfigServiceClient<InterceptedService<Channel, AddBearer>>;

pub async fn channel(url: &str) -> Channel {
    Channel::from_shared(url.to_string())
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap()
}

pub async fn edge_client(url: &str, token: &str) -> EdgeClient {
    EdgeServiceClient::with_interceptor(channel(url).await, AddBearer::new(token).unwrap())
}

pub async fn admin_client(url: &str) -> AdminClient {
    ConfigServiceClient::with_interceptor(channel(url).await, AddBearer::new(ADMIN).unwrap())
}

/// Polls `f` every 50 ms for up to `secs` seconds.
pub async fn eventually<F: FnMut() -> bool>(secs: u64, mut f: F) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// The operator workflow through `switchyard-ctl`, identical for both stores.
pub fn core_flow(url: &str) {
    use switchyard_proto::config::{from_yaml_str, sha256_hex};
    let dir = tempfile::tempdir().unwrap();
    let secret_env = [("TEST_KEY_SECRET", "s3cret-value")];
    let base = write_file(dir.path(), "base.yaml", BASE_YAML);
    let bad = write_file(
        dir.path(),
        "bad.yaml",
        &BASE_YAML.replace("provider: mock", "provider: nope"),
    );

    // Offline validation (no server configured) and server-side validation.
    let out = ctl_env(None, &secret_env, &["validate", "-f", &base]).ok();
    assert!(out.stdout.contains("valid"), "{}", out.stdout);
    ctl_env(None, &secret_env, &["validate", "-f", &bad])
        .fails_with(&["routes.chat.targets[0].provider"]);
    ctl_env(Some(url), &secret_env, &["validate", "-f", &bad])
        .fails_with(&["routes.chat.targets[0].provider", "unknown provider"]);
    // Missing env var in the file: a load error, nothing sent.
    ctl(url, &["apply", "-f", &base]).fails_with(&["TEST_KEY_SECRET"]);

    // Apply version 1.
    let out = ctl_env(
        Some(url),
        &secret_env,
        &["apply", "-f", &base, "-m", "first"],
    )
    .ok();
    assert!(out.stdout.contains("committed version 1"), "{}", out.stdout);
    // Re-applying the same document is a no-op.
    let out = ctl_env(Some(url), &secret_env, &["apply", "-f", &base]).ok();
    assert!(
        out.stdout.contains("no changes; current version is 1"),
        "{}",
        out.stdout
    );

    // get returns YAML that round-trips to the applied document, with the
    // secret hashed.
    let got = ctl(url, &["get"]).ok().stdout;
    assert!(!got.contains("s3cret-value"), "{got}");
    let mut want = from_yaml_str(BASE_YAML, |_| Some("s3cret-value".into())).unwrap();
    switchyard_controlplane::versioning::normalize(&mut want).unwrap();
    assert_eq!(from_yaml_str(&got, |_| None).unwrap(), want, "{got}");
    assert_eq!(want.keys[0].secret_sha256, sha256_hex(b"s3cret-value"));
    let route = ctl(url, &["get", "routes", "chat"]).ok().stdout;
    assert!(
        route.contains("model: gpt-x") && route.contains("max_retries: 0"),
        "{route}"
    );
    ctl(url, &["get", "routes", "nope"]).fails_with(&["NOT_FOUND"]);

    // Diff, then apply version 2.
    let v2 = write_file(dir.path(), "v2.yaml", &BASE_YAML.replace("gpt-x", "gpt-y"));
    let d = ctl_env(Some(url), &secret_env, &["diff", "-f", &v2])
        .ok()
        .stdout;
    assert!(
        d.contains("~ routes.chat.targets[0].model: \"gpt-x\" -> \"gpt-y\""),
        "{d}"
    );
    let dj = ctl_env(Some(url), &secret_env, &["diff", "-f", &v2, "-o", "json"])
        .ok()
        .json();
    assert_eq!(dj["changes"].as_array().unwrap().len(), 1, "{dj}");
    assert_eq!(dj["changes"][0]["path"], "routes.chat.targets[0].model");
    // --dry-run commits nothing.
    let out = ctl_env(Some(url), &secret_env, &["apply", "-f", &v2, "--dry-run"]).ok();
    assert!(
        out.stdout.contains("dry run: would commit version 2"),
        "{}",
        out.stdout
    );
    let out = ctl_env(
        Some(url),
        &secret_env,
        &[
            "apply",
            "-f",
            &v2,
            "--expected-version",
            "1",
            "-m",
            "model y",
        ],
    )
    .ok();
    assert!(out.stdout.contains("committed version 2"), "{}", out.stdout);

    // Optimistic concurrency: the expected version is stale now.
    ctl_env(
        Some(url),
        &secret_env,
        &["apply", "-f", &base, "--expected-version", "1"],
    )
    .fails_with(&["ABORTED", "current version is 2"]);

    // Invalid config: INVALID_ARGUMENT naming the field.
    ctl_env(Some(url), &secret_env, &["apply", "-f", &bad])
        .fails_with(&["INVALID_ARGUMENT", "routes.chat.targets[0].provider"]);

    // Rollback creates version 3 equal to version 1.
    let out = ctl(url, &["rollback", "1", "-o", "json"]).ok().json();
    assert_eq!(
        (out["version"].as_u64(), out["changed"].as_bool()),
        (Some(3), Some(true)),
        "{out}"
    );
    let v3 = ctl(url, &["get", "-o", "json"]).ok().json();
    assert_eq!(v3["version"], 3);
    assert_eq!(
        v3["value"]["routes"]["chat"]["targets"][0]["model"],
        "gpt-x"
    );
    let v2 = ctl(url, &["get", "--version", "2", "-o", "json"])
        .ok()
        .json();
    assert_eq!(
        v2["value"]["routes"]["chat"]["targets"][0]["model"],
        "gpt-y"
    );
    ctl(url, &["get", "--version", "99"]).fails_with(&["NOT_FOUND"]);

    let h = ctl(url, &["history", "-o", "json"]).ok().json();
    let versions: Vec<u64> = h["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, vec![3, 2, 1], "{h}");
    assert_eq!(h["versions"][0]["rollback_of"], 1);
    assert_eq!(h["versions"][0]["operation"], "rollback");
    assert_eq!(h["versions"][1]["comment"], "model y");
    assert_eq!(h["versions"][2]["comment"], "first");
    assert_eq!(h["versions"][2]["author"], "tester");
    let human = ctl(url, &["history"]).ok().stdout;
    assert!(
        human.contains("VERSION") && human.contains("rollback to 1"),
        "{human}"
    );

    // Auth failures.
    ctl_env(Some(url), &[("SWITCHYARD_ADMIN_TOKEN", "wrong")], &["get"])
        .fails_with(&["UNAUTHENTICATED"]);
    ctl_env(Some(url), &[("SWITCHYARD_ADMIN_TOKEN", "")], &["history"])
        .fails_with(&["UNAUTHENTICATED"]);
    ctl_env(Some(url), &[("SWITCHYARD_ADMIN_TOKEN", EDGE)], &["get"])
        .fails_with(&["UNAUTHENTICATED"]);

    // Keys: the secret is shown once, only its hash is stored.
    let k = ctl(
        url,
        &[
            "keys", "create", "--id", "k2", "--team", "b", "--tier", "free", "--models", "chat",
            "-o", "json",
        ],
    )
    .ok()
    .json();
    let secret = k["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("sy-") && secret.len() > 40, "{k}");
    assert_eq!(k["secret_sha256"], sha256_hex(secret.as_bytes()));
    ctl(
        url,
        &[
            "keys", "create", "--id", "k2", "--team", "b", "--tier", "free",
        ],
    )
    .fails_with(&["ALREADY_EXISTS"]);
    ctl(
        url,
        &[
            "keys", "create", "--id", "k3", "--team", "b", "--tier", "gold",
        ],
    )
    .fails_with(&["INVALID_ARGUMENT", "tier", "gold"]);
    let list = ctl(url, &["keys", "list"]).ok().stdout;
    assert!(list.contains("k2") && !list.contains(&secret), "{list}");
    let all = ctl(url, &["get"]).ok().stdout;
    assert!(
        !all.contains(&secret) && all.contains(&sha256_hex(secret.as_bytes())),
        "{all}"
    );
    ctl(url, &["keys", "revoke", "k2"]).ok();
    let lj = ctl(url, &["keys", "list", "-o", "json"]).ok().json();
    let k2 = lj["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == "k2")
        .cloned()
        .unwrap();
    assert_eq!(k2["revoked"], true, "{lj}");
    ctl(url, &["keys", "revoke", "nope"]).fails_with(&["NOT_FOUND"]);

    // Budgets.
    ctl(
        url,
        &[
            "budgets", "set", "--name", "team-a", "--scope", "team", "--match", "a", "--window",
            "day", "--hard", "5",
        ],
    )
    .ok();
    ctl(
        url,
        &[
            "budgets", "set", "--name", "bad", "--scope", "galaxy", "--match", "a", "--window",
            "day",
        ],
    )
    .fails_with(&["INVALID_ARGUMENT", "scope"]);
    let b = ctl(url, &["budgets", "list", "-o", "json"]).ok().json();
    assert_eq!(b["budgets"][0]["name"], "team-a", "{b}");
    assert_eq!(b["budgets"][0]["hard_limit_usd"], 5.0, "{b}");

    // Single resources.
    let tier = write_file(
        dir.path(),
        "tier.yaml",
        "requests_per_minute: 600\ntokens_per_minute: 100000\n",
    );
    let out = ctl(url, &["put", "tiers", "pro", "-f", &tier]).ok();
    assert!(out.stdout.contains("tiers: +1"), "{}", out.stdout);
    let t = ctl(url, &["get", "tiers", "pro"]).ok().stdout;
    assert!(t.contains("requests_per_minute: 600"), "{t}");
    ctl(url, &["delete", "providers", "mock"])
        .fails_with(&["INVALID_ARGUMENT", "unknown provider"]);
    ctl(url, &["delete", "tiers", "pro"]).ok();
    ctl(url, &["delete", "tiers", "pro"]).fails_with(&["NOT_FOUND"]);
}
