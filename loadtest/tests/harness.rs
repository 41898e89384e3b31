//! The load generator end to end, over real HTTP on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use switchyard_loadtest::mock::{MockHandle, MockProvider};
use switchyard_loadtest::record::{self, Record};
use switchyard_loadtest::report::Report;
use switchyard_loadtest::runner::{self, RunData, RunOptions};
use switchyard_loadtest::scenario::Scenario;
use tokio::net::TcpListener;

fn scenario(yaml: &str) -> Scenario {
    Scenario::from_yaml_with_env(yaml, |_| None).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
}

async fn run(yaml: &str) -> RunData {
    tokio::time::timeout(
        Duration::from_secs(60),
        runner::run(scenario(yaml), RunOptions::default()),
    )
    .await
    .expect("run finished in time")
    .expect("run ok")
}

/// A server that holds every response until `release`, then answers each
/// at once with a small OpenAI-style body.
async fn stalling_server(release: Instant) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let svc = service_fn(move |_req: Request<Incoming>| async move {
                    tokio::time::sleep_until(release.into()).await;
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                        br#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}"#,
                    ))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

fn measured(data: &RunData, target: usize) -> Vec<Record> {
    let mut v = data.targets[target].records.clone();
    v.sort_by_key(|r| r.intended_ns);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_latency_counts_from_the_intended_send_time() {
    // The server answers nothing until `release`, then everything at once. A
    // closed-loop client would send one request and measure one slow
    // response; the open-loop generator keeps sending on schedule and every
    // request caught by the stall is charged the time it waited.
    let release = Instant::now() + Duration::from_millis(1000);
    let addr = stalling_server(release).await;
    let data = run(&format!(
        r#"
targets: [{{name: direct, url: "http://{addr}"}}]
phases: [{{duration: 1500ms, rate: 100}}]
mix: [{{model: m}}]
"#
    ))
    .await;
    let recs = measured(&data, 0);
    assert_eq!(recs.len(), 150, "every scheduled request is accounted for");
    assert!(recs.iter().all(Record::ok), "all succeed eventually");
    const MS: u64 = 1_000_000;
    // The release in run time: the first request's completion.
    let r0 = recs[0].done_ns();
    assert!(
        r0 >= 300 * MS,
        "the stall covers the start of the run ({} ms)",
        r0 / MS
    );
    let stalled: Vec<&Record> = recs
        .iter()
        .filter(|r| r.intended_ns + 20 * MS < r0)
        .collect();
    assert!(stalled.len() >= 25, "{} stalled requests", stalled.len());
    for r in &stalled {
        // Sent on time even though nothing had been answered yet...
        assert!(
            r.send_lag_ns < 250 * MS,
            "request at {} ms started {} ms late",
            r.intended_ns / MS,
            r.send_lag_ns / MS
        );
        // ...and charged from its intended send time to the release: the
        // earlier it was due, the longer its latency.
        let expect = r0 - r.intended_ns;
        assert!(
            r.latency_ns + 60 * MS >= expect,
            "request at {} ms: latency {} ms, expected about {} ms",
            r.intended_ns / MS,
            r.latency_ns / MS,
            expect / MS
        );
    }
    // Latencies fall off linearly with the intended time during the stall.
    let first = stalled[0].latency_ns;
    let last = stalled[stalled.len() - 1].latency_ns;
    let span = stalled[stalled.len() - 1].intended_ns - stalled[0].intended_ns;
    assert!(
        first >= last + span - 60 * MS,
        "first {} ms, last {} ms, span {} ms",
        first / MS,
        last / MS,
        span / MS
    );
    // Well after the stall, latency is small again.
    for r in recs.iter().filter(|r| r.intended_ns > r0 + 200 * MS) {
        assert!(r.latency_ns < 150 * MS, "{r:?}");
    }
    let rep = Report::build(&data);
    let l = rep.targets[0].latency.unwrap();
    assert!(
        l.p99_ms >= (r0 / MS) as f64 * 0.8,
        "p99 reflects the stall: {l:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_cap_is_counted_as_generator_overload() {
    let release = Instant::now() + Duration::from_millis(900);
    let addr = stalling_server(release).await;
    let data = run(&format!(
        r#"
targets: [{{name: direct, url: "http://{addr}"}}]
max_in_flight: 10
phases: [{{duration: 500ms, rate: 100}}]
mix: [{{model: m}}]
"#
    ))
    .await;
    let recs = measured(&data, 0);
    assert_eq!(recs.len(), 50, "nothing silently dropped");
    let over = recs
        .iter()
        .filter(|r| r.outcome == record::GENERATOR_OVERLOAD)
        .count();
    assert_eq!(over, 40);
    assert_eq!(recs.iter().filter(|r| r.ok()).count(), 10);
    let rep = Report::build(&data);
    assert_eq!(rep.targets[0].errors_by_type["generator_overload"], 40);
    assert_eq!(rep.targets[0].sent, 10);
    assert!((rep.targets[0].error_rate - 0.8).abs() < 1e-9);
}

async fn mock(ttft_ms: u64, tps: f64, tokens: u32) -> MockHandle {
    MockProvider::builder()
        .ttft(Duration::from_millis(ttft_ms))
        .tokens_per_sec(tps)
        .output_tokens(tokens..=tokens)
        .control_listen("127.0.0.1:0")
        .record_capacity(0)
        .spawn("127.0.0.1:0")
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_measure_ttft_inter_token_latency_and_usage() {
    let m = mock(50, 100.0, 10).await;
    let data = run(&format!(
        r#"
targets: [{{name: direct, url: "{}/v1"}}]
phases: [{{duration: 1s, rate: 20}}]
mix:
  - {{api: openai, stream: true, model: gpt-mock, prompt_tokens: 25, max_tokens: 100}}
  - {{api: anthropic, stream: true, model: claude-mock, prompt_tokens: 25, max_tokens: 100}}
  - {{api: openai, model: gpt-mock, prompt_tokens: 25, max_tokens: 100}}
  - {{api: anthropic, model: claude-mock, prompt_tokens: 25, max_tokens: 7}}
"#,
        m.url()
    ))
    .await;
    let rep = Report::build(&data);
    let t = &rep.targets[0];
    assert_eq!(t.ok, 20, "{:?}", t.errors_by_type);
    let ttft = t.ttft.unwrap();
    assert!(ttft.p50_ms >= 50.0 && ttft.p50_ms < 250.0, "{ttft:?}");
    let itl = t.itl.unwrap();
    assert!(itl.p50_ms >= 5.0 && itl.p50_ms < 40.0, "{itl:?}");
    // 10 tokens per stream at 100/s: ~90 ms after the first token.
    let lat = t.latency.unwrap();
    assert!(lat.min_ms >= 50.0, "{lat:?}");
    for r in &data.targets[0].records {
        let mix = &data.schedule.mix[r.mix as usize];
        assert_eq!(r.input_tokens, 25, "usage read back for {}", mix.label());
        let want = if mix.max_tokens.0 == (7..=7) { 7 } else { 10 };
        assert_eq!(r.output_tokens, want, "{}", mix.label());
        assert_eq!(r.ttft_ns.is_some(), mix.stream, "{}", mix.label());
    }
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_events_hit_the_control_api_on_time() {
    let m = mock(0, 0.0, 4).await;
    let control = m.control_url().unwrap();
    let data = run(&format!(
        r#"
targets: [{{name: direct, url: "{url}"}}]
phases: [{{duration: 2s, rate: 100}}]
mix: [{{model: m, stream: true}}]
mocks: {{a: {{control_url: "{control}"}}}}
faults:
  - {{at: 400ms, mock: a, set: "status=503"}}
  - {{at: 800ms, mock: a, clear: true}}
  - {{at: 1200ms, mock: a, set: kill}}
  - {{at: 1600ms, mock: a, clear: true}}
"#,
        url = m.url()
    ))
    .await;
    assert_eq!(data.faults.len(), 4);
    const MS: u64 = 1_000_000;
    for (f, planned_ms) in data.faults.iter().zip([400u64, 800, 1200, 1600]) {
        assert!(f.ok, "{f:?}");
        let issued_ms = f.issued_ns / MS;
        assert!(
            issued_ms >= planned_ms && issued_ms < planned_ms + 100,
            "event planned at {planned_ms} ms issued at {issued_ms} ms"
        );
        assert!(f.acked_ns >= f.issued_ns);
    }
    // Every request sent while a fault was surely active (after the
    // control call was answered, before the next one was sent) saw it; every
    // request that finished before a fault was set, or was sent after it was
    // cleared, did not.
    let (set503, clear1, kill, clear2) = (
        &data.faults[0],
        &data.faults[1],
        &data.faults[2],
        &data.faults[3],
    );
    let labels = &data.labels;
    let recs = measured(&data, 0);
    let label = |r: &Record| labels[r.outcome as usize].clone();
    // "Sent" = when the request actually went out (intended + send lag).
    let sent_within = |r: &Record, a: u64, b: u64| {
        let sent = r.intended_ns + r.send_lag_ns;
        sent > a + 5 * MS && sent + 5 * MS < b
    };
    let mut seen = [0usize; 3];
    for r in &recs {
        let t = r.intended_ns / MS;
        let l = label(r);
        if r.done_ns() + 5 * MS < set503.issued_ns
            || sent_within(r, clear1.acked_ns, kill.issued_ns)
            || r.intended_ns + r.send_lag_ns > clear2.acked_ns + 50 * MS
        {
            assert_eq!(l, "ok", "at {t} ms");
            seen[0] += 1;
        } else if sent_within(r, set503.acked_ns, clear1.issued_ns) {
            assert_eq!(l, "http_503:server_error", "at {t} ms");
            seen[1] += 1;
        } else if sent_within(r, kill.acked_ns, clear2.issued_ns) {
            assert_eq!(l, "connect", "at {t} ms (mock killed)");
            seen[2] += 1;
        }
    }
    assert!(seen.iter().all(|&n| n >= 20), "{seen:?}");
    let rep = Report::build(&data);
    assert_eq!(rep.faults.len(), 4);
    let f0 = &rep.faults[0].failover[0];
    assert!(!f0.recovered, "errors last until the next event: {f0:?}");
    // After clearing, at most a request or two in flight can fail.
    assert!(rep.faults[1].failover[0].recovered);
    // The harness leaves the mock healthy.
    assert!(m.fault().is_none());
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_targets_share_the_schedule_and_sequential_runs_one_by_one() {
    let a = mock(0, 0.0, 4).await;
    let b = mock(20, 0.0, 4).await;
    for mode in ["parallel", "sequential"] {
        let data = run(&format!(
            r#"
mode: {mode}
targets:
  - {{name: slow, url: "{}"}}
  - {{name: direct, url: "{}"}}
phases: [{{duration: 500ms, rate: 40}}]
mix: [{{model: m}}]
"#,
            b.url(),
            a.url()
        ))
        .await;
        let rep = Report::build(&data);
        assert_eq!(rep.targets[0].ok, 20);
        assert_eq!(rep.targets[1].ok, 20);
        let o = &rep.overhead[0];
        assert_eq!(o.target, "slow");
        assert!(o.latency_p50_ms.unwrap() >= 18.0, "{o:?}");
        let mut i0: Vec<u64> = data.targets[0]
            .records
            .iter()
            .map(|r| r.intended_ns)
            .collect();
        let mut i1: Vec<u64> = data.targets[1]
            .records
            .iter()
            .map(|r| r.intended_ns)
            .collect();
        i0.sort_unstable();
        i1.sort_unstable();
        assert_eq!(i0, i1, "same intended times for both targets");
        let (w0, w1) = (data.targets[0].wall, data.targets[1].wall);
        if mode == "sequential" {
            // Two separate runs, one after the other.
            assert!(
                data.wall >= w0 + w1,
                "{mode}: {:?} vs {w0:?} + {w1:?}",
                data.wall
            );
        } else {
            assert_eq!(w0, w1, "{mode}: one run for both");
            assert!(data.wall < w0 + w1, "{mode}: {:?}", data.wall);
        }
    }
    a.shutdown().await;
    b.shutdown().await;
}

/// Start `switchyard-loadtest mock` and return (child, URL).
fn spawn_mock_process() -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard-loadtest"))
        .args([
            "mock",
            "--listen",
            "127.0.0.1:0",
            "--output-tokens",
            "5",
            "--record",
            "0",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("mock listening on ")
        .unwrap()
        .to_string();
    (child, url)
}

fn run_cli(
    dir: &std::path::Path,
    scenario: &str,
    url: &str,
    extra: &[&str],
) -> std::process::Output {
    let path = dir.join("s.yaml");
    std::fs::write(&path, scenario).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchyard-loadtest"));
    cmd.arg("run").arg(&path).args(extra).env("MOCK_URL", url);
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("run did not finish");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn cli_run_writes_reports_and_sets_the_exit_code() {
    let (mut mock, url) = spawn_mock_process();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("r.json");
    let html = dir.path().join("r.html");
    let csv = dir.path().join("r.csv");
    let ok_scenario = r#"
name: tiny
targets: [{name: direct, url: "${MOCK_URL}"}]
phases: [{duration: 1s, rate: 50}]
mix:
  - {model: gpt-mock, stream: true}
  - {api: anthropic, model: claude-mock}
slo:
  direct: {p99_latency: 5s, error_rate: 0.0}
"#;
    let out = run_cli(
        dir.path(),
        ok_scenario,
        &url,
        &[
            "--json",
            json.to_str().unwrap(),
            "--html",
            html.to_str().unwrap(),
            "--records",
            csv.to_str().unwrap(),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("latency p99"), "{stdout}");
    assert!(stdout.contains("result: PASS"), "{stdout}");
    assert!(
        !stdout.contains('\u{1b}'),
        "no progress bar when stdout is not a terminal"
    );

    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(v["scenario"], "tiny");
    assert_eq!(v["targets"][0]["ok"], 50);
    assert_eq!(v["targets"][0]["scheduled"], 50);
    assert!(v["targets"][0]["latency"]["p99_ms"].as_f64().unwrap() > 0.0);
    assert!(v["targets"][0]["ttft"]["p50_ms"].as_f64().is_some());
    assert_eq!(v["slo_passed"], true);

    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.starts_with("<!doctype html>"));
    assert!(page.contains("<svg"), "has inline charts");
    assert!(page.contains("Latency by intended send time"));
    for external in ["src=\"http", "href=\"http", "<link", "<script src"] {
        assert!(!page.contains(external), "self-contained: found {external}");
    }
    let rows = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(rows.lines().count(), 51);

    // An SLO that cannot hold: exit code 1.
    let failing = ok_scenario.replace("p99_latency: 5s", "p99_latency: 1us");
    let out = run_cli(dir.path(), &failing, &url, &["--no-progress"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("FAIL direct"), "{stdout}");
    assert!(stdout.contains("result: FAIL"), "{stdout}");

    // A broken scenario: exit code 2 and the field in the message.
    let broken = ok_scenario.replace("duration: 1s", "duration: 1 fortnight");
    let out = run_cli(dir.path(), &broken, &url, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("phases[0].duration"), "{stderr}");

    // An unreachable target: exit code 2 before any load is sent.
    let out = run_cli(
        dir.path(),
        ok_scenario,
        &url,
        &["--target", "direct=http://127.0.0.1:9"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("direct"), "{stderr}");

    let _ = mock.kill();
    let _ = mock.wait();
}
