//! Report math on known inputs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use switchyard_loadtest::record::{self, Labels, Record};
use switchyard_loadtest::report::{bucket_width, failover, EventWindow, Percentiles, Report};
use switchyard_loadtest::runner::{new_histogram, FaultRecord, RunData, TargetData};
use switchyard_loadtest::scenario::Scenario;
use switchyard_loadtest::schedule::Schedule;

const MS: u64 = 1_000_000;
const S: u64 = 1_000_000_000;

fn scenario(extra: &str) -> Scenario {
    let yaml = format!(
        r#"
name: math
targets:
  - {{name: edge, url: "http://127.0.0.1:1"}}
  - {{name: direct, url: "http://127.0.0.1:2"}}
phases:
  - {{name: warm, duration: 1s, rate: 10, warmup: true}}
  - {{name: main, duration: 10s, rate: 10}}
mix:
  - {{model: gpt-mock, stream: true}}
prices:
  gpt-mock: {{input_per_mtok: 1.0, output_per_mtok: 10.0}}
{extra}
"#
    );
    Scenario::from_yaml_with_env(&yaml, |_| None).unwrap()
}

fn ok(at_ns: u64, latency_ns: u64) -> Record {
    Record {
        intended_ns: at_ns,
        latency_ns,
        ttft_ns: Some(latency_ns / 2),
        send_lag_ns: 10_000,
        outcome: record::OK,
        status: 200,
        phase: 1,
        mix: 0,
        stream: true,
        input_tokens: 100,
        output_tokens: 10,
    }
}

fn failed(at_ns: u64, latency_ns: u64, outcome: u32) -> Record {
    Record {
        outcome,
        status: 503,
        ttft_ns: None,
        input_tokens: 0,
        output_tokens: 0,
        ..ok(at_ns, latency_ns)
    }
}

fn run_data(
    sc: Scenario,
    targets: Vec<(&str, Vec<Record>)>,
    faults: Vec<FaultRecord>,
) -> (RunData, u32) {
    let labels = Labels::new();
    let http503 = labels.intern("http_503:server_error");
    let schedule = Arc::new(Schedule::build(&sc));
    let targets = targets
        .into_iter()
        .map(|(name, records)| TargetData {
            name: name.to_string(),
            url: "http://x".into(),
            records,
            itl: new_histogram(),
            not_sent: 0,
            wall: Duration::from_secs(11),
        })
        .collect();
    (
        RunData {
            scenario: sc,
            schedule,
            targets,
            faults,
            labels: labels.names(),
            started_unix: 0.0,
            wall: Duration::from_secs(11),
            processes: Vec::new(),
            interrupted: false,
        },
        http503,
    )
}

fn close(a: f64, b: f64) -> bool {
    // hdrhistogram with 3 significant digits.
    (a - b).abs() <= b.abs() * 0.002 + 1e-3
}

#[test]
fn percentiles_throughput_errors_tokens_cost_and_overhead() {
    let sc = scenario("");
    // Measured phase: slots at 1.0, 1.1, ... 10.9 s. Direct: latencies
    // 1..=100 ms. Edge: 2..=101 ms, plus 10 http 503s and 5 overloads.
    let mut direct = Vec::new();
    let mut edge = Vec::new();
    for i in 0..100u64 {
        let at = S + i * 100 * MS;
        direct.push(ok(at, (i + 1) * MS));
        edge.push(ok(at, (i + 2) * MS));
    }
    // Warmup records are ignored entirely.
    for i in 0..10u64 {
        let mut r = failed(i * 100 * MS, 5 * S, record::TIMEOUT);
        r.phase = 0;
        direct.push(r);
    }
    let (mut data, http503) = run_data(sc, vec![("edge", edge), ("direct", direct)], Vec::new());
    for i in 0..10u64 {
        data.targets[0]
            .records
            .push(failed(S + i * MS, 3 * MS, http503));
    }
    for i in 0..5u64 {
        data.targets[0]
            .records
            .push(failed(S + i * MS, 0, record::GENERATOR_OVERLOAD));
    }
    let rep = Report::build(&data);
    let d = &rep.targets[1];
    assert_eq!(d.name, "direct");
    assert_eq!(d.scheduled, 100);
    assert_eq!(d.ok, 100);
    assert_eq!(d.errors, 0);
    assert_eq!(d.error_rate, 0.0);
    let l = d.latency.unwrap();
    assert_eq!(l.count, 100);
    assert!(close(l.p50_ms, 50.0), "{l:?}");
    assert!(close(l.p90_ms, 90.0), "{l:?}");
    assert!(close(l.p99_ms, 99.0), "{l:?}");
    assert!(close(l.p999_ms, 100.0), "{l:?}");
    assert!(close(l.max_ms, 100.0), "{l:?}");
    assert!(close(l.min_ms, 1.0), "{l:?}");
    assert!(close(l.mean_ms, 50.5), "{l:?}");
    let ttft = d.ttft.unwrap();
    assert!(close(ttft.p50_ms, 25.0), "{ttft:?}");
    // Window: 1 s (start of the measured phase) .. 11 s (end of phase).
    assert!((d.window_s - 10.0).abs() < 1e-9, "{}", d.window_s);
    assert!((d.throughput_rps - 10.0).abs() < 1e-9);
    assert!((d.offered_rps - 10.0).abs() < 1e-9);
    assert_eq!(d.tokens.input, 100 * 100);
    assert_eq!(d.tokens.output, 100 * 10);
    // 10,000 in at $1/M + 1,000 out at $10/M = $0.02.
    assert!((d.cost_usd.unwrap() - 0.02).abs() < 1e-12);
    assert_eq!(d.streams_ok, 100);

    let e = &rep.targets[0];
    assert_eq!(e.ok, 100);
    assert_eq!(e.errors, 15);
    assert_eq!(e.sent, 110, "overloaded requests were never sent");
    assert!((e.error_rate - 15.0 / 115.0).abs() < 1e-12);
    assert_eq!(e.errors_by_type["http_503:server_error"], 10);
    assert_eq!(e.errors_by_type["generator_overload"], 5);
    assert!(rep
        .warnings
        .iter()
        .any(|w| w.contains("generator_overload")));

    assert_eq!(rep.baseline.as_deref(), Some("direct"));
    assert_eq!(rep.overhead.len(), 1);
    let o = &rep.overhead[0];
    assert_eq!((o.target.as_str(), o.baseline.as_str()), ("edge", "direct"));
    assert!((o.latency_p50_ms.unwrap() - 1.0).abs() < 0.15, "{o:?}");
    assert!((o.latency_p99_ms.unwrap() - 1.0).abs() < 0.25, "{o:?}");
    assert!(rep.slo_passed, "no SLOs given");
}

#[test]
fn peak_in_flight_counts_overlaps() {
    use switchyard_loadtest::report::peak_in_flight;
    // [0,10) [5,15) [10,20) [12,13): at most 3 at once (12..13).
    let mut recs = vec![
        ok(0, 10 * MS),
        ok(5 * MS, 10 * MS),
        ok(10 * MS, 10 * MS),
        ok(12 * MS, MS),
    ];
    for r in &mut recs {
        r.send_lag_ns = 0;
    }
    assert_eq!(peak_in_flight(recs.iter()), 3);
    // Not-sent requests never count.
    recs.push(failed(12 * MS, 0, record::GENERATOR_OVERLOAD));
    assert_eq!(peak_in_flight(recs.iter()), 3);
    assert_eq!(peak_in_flight([].iter()), 0);
}

#[test]
fn percentiles_of_known_values() {
    let p = Percentiles::from_ns((1..=1000u64).map(|v| v * MS)).unwrap();
    assert!(close(p.p50_ms, 500.0));
    assert!(close(p.p90_ms, 900.0));
    assert!(close(p.p99_ms, 990.0));
    assert!(close(p.p999_ms, 999.0));
    assert!(Percentiles::from_ns(std::iter::empty()).is_none());
}

#[test]
fn failover_time_definition() {
    let fault = 5 * S;
    let end = 20 * S;
    // Requests every 100 ms taking 10 ms; errors from 5.0 s to 6.0 s.
    let mut recs = Vec::new();
    for i in 0..200u64 {
        let at = i * 100 * MS;
        let r = if (50..=60).contains(&i) {
            failed(at, 10 * MS, record::CONNECT)
        } else {
            ok(at, 10 * MS)
        };
        recs.push(r);
    }
    let w = |since: u64, at: u64, until: u64| EventWindow { since, at, until };
    let f = failover(&recs, "edge", w(0, fault, end), &[]);
    assert_eq!(f.errors, 11);
    assert!(f.recovered);
    // Last error: sent at 6.0 s, completed at 6.01 s.
    assert!((f.failover_time_s.unwrap() - 1.01).abs() < 1e-9, "{f:?}");
    assert!((f.first_error_s.unwrap() - 0.01).abs() < 1e-9);
    // First success sent after 6.01 s: sent 6.1 s, done 6.11 s.
    assert!((f.recovery_s.unwrap() - 1.11).abs() < 1e-9, "{f:?}");

    // Errors until the window ends: not recovered.
    let f = failover(&recs, "edge", w(0, fault, 6 * S + 50 * MS), &[]);
    assert!(!f.recovered);
    assert_eq!(f.failover_time_s, None);

    // No errors in the window: 0.
    let f = failover(&recs, "edge", w(fault, 10 * S, end), &[]);
    assert_eq!(f.errors, 0);
    assert_eq!(f.failover_time_s, Some(0.0));

    // A slow request started before the fault that succeeds after it does
    // not count as recovery: only requests sent after the last error do.
    let recs = vec![
        failed(5 * S, 100 * MS, record::CONNECT), // done 5.1
        ok(4 * S, 2 * S),                         // sent 4.0, done 6.0
    ];
    let f = failover(&recs, "edge", w(0, fault, end), &[]);
    assert!(!f.recovered, "{f:?}");

    // Requests in flight when the fault hits count (sent since the previous
    // event); failures of requests sent before the previous event, or that
    // finish after the next one, belong elsewhere.
    let recs = vec![
        failed(4900 * MS, 200 * MS, record::STREAM_BROKEN), // in flight at 5 s, cut at 5.1
        failed(1000 * MS, 4500 * MS, record::TIMEOUT),      // sent before the previous event (2 s)
        failed(5200 * MS, 20 * S, record::TIMEOUT),         // sent in window, fails after it
        ok(5500 * MS, 10 * MS),
    ];
    let f = failover(&recs, "edge", w(2 * S, fault, 10 * S), &[]);
    assert_eq!(f.errors, 2, "{f:?}");
    assert!(
        !f.recovered,
        "the last error (25.2 s) is after the window: {f:?}"
    );
    let f = failover(&recs[..1], "edge", w(2 * S, fault, 10 * S), &[]);
    assert_eq!(f.errors, 1);
    assert_eq!(f.failover_time_s, None, "no success at all");
    let mut with_ok = recs[..1].to_vec();
    with_ok.push(ok(5500 * MS, 10 * MS));
    let f = failover(&with_ok, "edge", w(2 * S, fault, 10 * S), &[]);
    assert!((f.failover_time_s.unwrap() - 0.1).abs() < 1e-9, "{f:?}");
    // Ignored (allowed) outcomes count neither way.
    let f = failover(&recs, "edge", w(2 * S, fault, 10 * S), &[record::TIMEOUT]);
    assert_eq!(f.errors, 1);
    assert!(f.recovered);
}

#[test]
fn slo_verdicts() {
    let slo = r#"
mocks: {a: {control_url: "http://127.0.0.1:3"}}
faults: [{at: 5s, mock: a, set: refuse}]
slo:
  edge:
    p99_latency: 50ms
    p99_ttft: 1s
    error_rate: 0.05
    allowed_errors: [http_503]
    failover_time: 2s
    p99_overhead: 15ms
    min_throughput: 9
  direct:
    error_rate: 0.001
    failover_time: 2s
"#;
    let sc = scenario(slo);
    let mut edge = Vec::new();
    let mut direct = Vec::new();
    for i in 0..100u64 {
        let at = S + i * 100 * MS;
        // Edge: 20 ms, 12 errors between 5 s and 6 s (http 503, allowed).
        direct.push(if (40..60).contains(&i) {
            failed(at, MS, record::CONNECT)
        } else {
            ok(at, 10 * MS)
        });
        edge.push(ok(at, 20 * MS));
    }
    let (mut data, http503) = run_data(sc, vec![("edge", edge), ("direct", direct)], Vec::new());
    // Edge: 4 connect errors from 5.0 s to 5.15 s, then 8 allowed 503s up
    // to 5.55 s (ignored by both the error rate and the failover time).
    for i in 0..12u64 {
        let outcome = if i < 4 { record::CONNECT } else { http503 };
        data.targets[0]
            .records
            .push(failed(5 * S + i * 50 * MS, MS, outcome));
    }
    data.faults.push(FaultRecord {
        event: 0,
        target: None,
        mock: "a".into(),
        label: "a: refuse".into(),
        planned_ns: 5 * S,
        issued_ns: 5 * S,
        acked_ns: 5 * S + MS,
        ok: true,
        error: None,
    });
    let rep = Report::build(&data);
    let get = |t: &str, c: &str| {
        rep.slo
            .iter()
            .find(|s| s.target == t && s.check == c)
            .unwrap_or_else(|| panic!("no {t}/{c} in {:?}", rep.slo))
    };
    assert!(get("edge", "p99_latency").passed);
    assert!(get("edge", "p99_ttft").passed);
    assert!(
        get("edge", "error_rate").passed,
        "{:?}",
        get("edge", "error_rate")
    );
    // Last counted error done at 5.151 s; the next edge request (5.2 s) is ok.
    assert!(get("edge", "failover_time").passed, "{:?}", rep.faults);
    let fo = rep.faults[0]
        .failover
        .iter()
        .find(|f| f.target == "edge")
        .unwrap();
    assert_eq!(fo.errors, 4, "{fo:?}");
    assert!((fo.failover_time_s.unwrap() - 0.151).abs() < 1e-9, "{fo:?}");
    let er = get("edge", "error_rate");
    assert!(er.actual.starts_with("3.571% (4 of 112)"), "{er:?}");
    assert!(
        get("edge", "p99_overhead").passed,
        "+10 ms vs 15 ms: {:?}",
        rep.overhead
    );
    assert!(get("edge", "min_throughput").passed);
    // Direct: 20% connect errors from 5.0 s to 6.9 s, then successes.
    assert!(!get("direct", "error_rate").passed);
    let fo = rep.faults[0]
        .failover
        .iter()
        .find(|f| f.target == "direct")
        .unwrap();
    assert!(fo.recovered);
    assert!(fo.failover_time_s.unwrap() < 2.0, "{fo:?}");
    assert!(!rep.slo_passed);

    // The overhead check fails once the limit is below the +10 ms gap.
    let mut sc2 = data.scenario.clone();
    sc2.slo.get_mut("edge").unwrap().p99_overhead = Some(Duration::from_millis(5));
    let mut data2 = data.clone();
    data2.scenario = sc2;
    for r in &mut data2.targets[0].records {
        if r.ok() {
            r.latency_ns = 30 * MS;
        }
    }
    let rep2 = Report::build(&data2);
    assert!(
        !rep2
            .slo
            .iter()
            .find(|s| s.target == "edge" && s.check == "p99_overhead")
            .unwrap()
            .passed
    );

    // A fault event that could not be applied fails the run.
    let mut data3 = data.clone();
    data3.faults[0].ok = false;
    data3.faults[0].error = Some("connection refused".into());
    let rep3 = Report::build(&data3);
    assert!(rep3
        .slo
        .iter()
        .any(|s| s.check == "fault_events" && !s.passed));
}

#[test]
fn series_buckets() {
    assert_eq!(bucket_width(8.0), 0.1);
    assert_eq!(bucket_width(11.0), 0.25);
    assert_eq!(bucket_width(20.0), 0.25);
    assert_eq!(bucket_width(60.0), 1.0);
    assert_eq!(bucket_width(600.0), 10.0);
    let sc = scenario("");
    let recs: Vec<Record> = (0..110u64)
        .map(|i| ok(i * 100 * MS, (i % 10 + 1) * MS))
        .collect();
    let (data, _) = run_data(
        sc,
        vec![("edge", recs.clone()), ("direct", recs)],
        Vec::new(),
    );
    let rep = Report::build(&data);
    assert_eq!(rep.series.bucket_s, 0.25);
    let pts = &rep.series.targets[0].points;
    assert_eq!(pts.len(), 44);
    assert_eq!(pts.iter().map(|p| p.requests).sum::<u64>(), 110);
    // Bucket 1 = [250 ms, 500 ms): requests 3 and 4 (latency 4 and 5 ms).
    assert_eq!(pts[1].requests, 2);
    assert_eq!(pts[1].latency_p50_ms, Some(4.0));
    assert_eq!(pts[1].latency_p99_ms, Some(5.0));
}
