//! Turning raw records into a report: percentiles, throughput, errors,
//! overhead against the baseline, failover times, SLO verdicts, and time
//! series. Pure functions of [`RunData`], so the math is testable on known
//! inputs.
//!
//! Definitions (all times from the start of the run; a request's
//! *completion* is its intended send time plus its latency):
//!
//! * **latency**: intended send time -> last byte of the answer, over
//!   successful requests. **TTFT**: intended send time -> first content
//!   delta, over successful streams. **ITL**: gaps between content deltas
//!   (see [`crate::client`]).
//! * **error rate**: errors / (successes + errors); every outcome other than
//!   success is an error, including `generator_overload`.
//! * **throughput**: successes / window, where the window runs from the start
//!   of the first measured (non-warmup) phase to the later of the last
//!   measured phase's end and the last measured completion.
//! * **failover time** of a fault event issued at `T` (when the harness sent
//!   the control request), per target. The event's requests are those sent
//!   (intended) between `T` and the next fault event `T_next` (or the end of
//!   the run), plus those sent since the previous event that finished
//!   between `T` and `T_next` (in flight when the fault hit); "sent" here is
//!   when the request actually went out (intended time + send lag), since
//!   that is what the faulted system saw. With no errors
//!   among them the failover time is 0. Otherwise it is `t_last_error - T`,
//!   where `t_last_error` is when the last failed one finished, provided
//!   success resumed: a request sent at or after `t_last_error` (and before
//!   `T_next`) succeeded. If none did, the target did not recover before the
//!   next event and the failover time is undefined (an SLO on it fails).
//!   `recovery` is when that first success finished, minus `T`. Outcomes
//!   the target's SLO lists in `allowed_errors` (expected errors such as
//!   `http_429:budget_exceeded`) count neither as errors nor as successes.

pub mod html;
pub mod text;

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::procwatch;
use crate::record::{self, Record};
use crate::runner::{new_histogram, RunData};
use crate::scenario::{Slo, TargetMode};

/// Distribution summary in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub min_ms: f64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    /// From a histogram of microseconds; `None` when empty.
    pub fn from_histogram(h: &Histogram<u64>) -> Option<Percentiles> {
        if h.is_empty() {
            return None;
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Some(Percentiles {
            count: h.len(),
            min_ms: ms(h.min()),
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        })
    }

    /// From nanosecond values.
    pub fn from_ns(values: impl IntoIterator<Item = u64>) -> Option<Percentiles> {
        let mut h = new_histogram();
        for v in values {
            let us = (v / 1000).clamp(1, h.high());
            let _ = h.record(us);
        }
        Percentiles::from_histogram(&h)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Tokens {
    pub input: u64,
    pub output: u64,
}

/// Per mix entry.
#[derive(Debug, Clone, Serialize)]
pub struct MixReport {
    pub label: String,
    pub requests: u64,
    pub ok: u64,
    pub errors: u64,
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    pub ttft_p99_ms: Option<f64>,
}

/// Per phase (warmup phases included, marked).
#[derive(Debug, Clone, Serialize)]
pub struct PhaseStats {
    pub name: String,
    pub warmup: bool,
    pub requests: u64,
    pub ok: u64,
    pub errors: u64,
    /// Successes per second of the phase's duration.
    pub throughput_rps: f64,
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    pub ttft_p99_ms: Option<f64>,
    pub errors_by_type: BTreeMap<String, u64>,
}

/// One target's numbers (warmup phases excluded).
#[derive(Debug, Clone, Serialize)]
pub struct TargetReport {
    pub name: String,
    pub url: String,
    /// Slots in measured phases.
    pub scheduled: u64,
    /// Requests actually sent (scheduled minus generator_overload and not sent).
    pub sent: u64,
    pub ok: u64,
    pub errors: u64,
    pub error_rate: f64,
    pub errors_by_type: BTreeMap<String, u64>,
    /// Slots never sent because the run was interrupted.
    pub not_sent: u64,
    pub offered_rps: f64,
    pub throughput_rps: f64,
    pub window_s: f64,
    pub latency: Option<Percentiles>,
    pub ttft: Option<Percentiles>,
    pub itl: Option<Percentiles>,
    /// Delay between intended send time and the request task starting.
    pub send_lag: Option<Percentiles>,
    pub streams_ok: u64,
    /// Most requests outstanding at once (from send to completion).
    pub peak_in_flight: u64,
    pub tokens: Tokens,
    pub cost_usd: Option<f64>,
    pub by_mix: Vec<MixReport>,
    pub by_phase: Vec<PhaseStats>,
}

/// Added latency of a target over the baseline (difference of percentiles).
#[derive(Debug, Clone, Serialize)]
pub struct Overhead {
    pub target: String,
    pub baseline: String,
    pub latency_p50_ms: Option<f64>,
    pub latency_p90_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    pub latency_p999_ms: Option<f64>,
    pub ttft_p50_ms: Option<f64>,
    pub ttft_p90_ms: Option<f64>,
    pub ttft_p99_ms: Option<f64>,
    pub ttft_p999_ms: Option<f64>,
}

/// Failover analysis of one fault event for one target.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Failover {
    pub target: String,
    /// End of the analysis window (the next event; `None`: end of run), seconds.
    pub window_end_s: Option<f64>,
    pub errors: u64,
    pub first_error_s: Option<f64>,
    pub last_error_s: Option<f64>,
    pub recovered: bool,
    /// Fault -> last error (0 if no errors); `None` if not recovered.
    pub failover_time_s: Option<f64>,
    /// Fault -> first success sent after the last error.
    pub recovery_s: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FaultReport {
    pub event: usize,
    pub label: String,
    pub mock: String,
    /// The target run it belongs to (sequential mode).
    pub run: Option<String>,
    pub planned_s: f64,
    pub issued_s: f64,
    pub acked_s: f64,
    pub ok: bool,
    pub error: Option<String>,
    pub failover: Vec<Failover>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SloResult {
    pub target: String,
    pub check: String,
    pub limit: String,
    pub actual: String,
    pub passed: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProcReport {
    pub name: String,
    pub pid: u32,
    pub peak_rss_mb: f64,
    pub cpu_seconds: f64,
    /// Average CPU use in percent of one core over the sampled span.
    pub avg_cpu_pct: f64,
    /// (seconds, RSS MB) samples.
    pub rss_mb: Vec<(f64, f64)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SeriesPoint {
    pub t_s: f64,
    pub requests: u64,
    pub ok: u64,
    pub errors: u64,
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    pub ttft_p99_ms: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TargetSeries {
    pub name: String,
    pub points: Vec<SeriesPoint>,
}

/// Per-bucket numbers by intended send time (all phases).
#[derive(Debug, Clone, Serialize)]
pub struct Series {
    pub bucket_s: f64,
    pub targets: Vec<TargetSeries>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PhaseReport {
    pub name: String,
    pub start_s: f64,
    pub end_s: f64,
    pub warmup: bool,
}

/// The whole report (also the `--json` document).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub description: String,
    pub started_unix: f64,
    pub mode: TargetMode,
    pub planned_duration_s: f64,
    pub wall_s: f64,
    pub interrupted: bool,
    pub max_in_flight: usize,
    pub phases: Vec<PhaseReport>,
    pub baseline: Option<String>,
    pub targets: Vec<TargetReport>,
    pub overhead: Vec<Overhead>,
    pub faults: Vec<FaultReport>,
    pub slo: Vec<SloResult>,
    pub slo_passed: bool,
    pub processes: Vec<ProcReport>,
    /// Machine CPU use (percent of one core) not accounted for by the
    /// watched processes: interference from anything else on the box.
    pub unattributed_cpu_pct: Option<f64>,
    pub warnings: Vec<String>,
    pub series: Series,
}

const NS: f64 = 1e9;

fn secs(ns: u64) -> f64 {
    ns as f64 / NS
}

impl Report {
    /// Build the report from a run's raw data.
    pub fn build(data: &RunData) -> Report {
        let sc = &data.scenario;
        let sched = &data.schedule;
        let warm: Vec<bool> = sched.phases.iter().map(|p| p.warmup).collect();
        let is_measured = |r: &Record| !warm.get(r.phase as usize).copied().unwrap_or(false);
        let measured_phases: Vec<_> = sched.phases.iter().filter(|p| !p.warmup).collect();
        let measured_start = measured_phases
            .first()
            .map_or(0.0, |p| p.start.as_secs_f64());
        let measured_end = measured_phases.last().map_or(0.0, |p| p.end.as_secs_f64());
        let measured_len: f64 = measured_phases
            .iter()
            .map(|p| (p.end - p.start).as_secs_f64())
            .sum();
        let scheduled_measured = sched
            .slots
            .iter()
            .filter(|s| !warm.get(s.phase as usize).copied().unwrap_or(false))
            .count() as u64;

        let mut targets = Vec::with_capacity(data.targets.len());
        for t in &data.targets {
            let recs: Vec<&Record> = t.records.iter().filter(|r| is_measured(r)).collect();
            let ok: Vec<&&Record> = recs.iter().filter(|r| r.ok()).collect();
            let errors = recs.len() as u64 - ok.len() as u64;
            let mut by_type: BTreeMap<String, u64> = BTreeMap::new();
            for r in recs.iter().filter(|r| !r.ok()) {
                *by_type
                    .entry(label_name(&data.labels, r.outcome))
                    .or_default() += 1;
            }
            let overload = recs
                .iter()
                .filter(|r| r.outcome == record::GENERATOR_OVERLOAD)
                .count() as u64;
            let last_done = recs.iter().map(|r| secs(r.done_ns())).fold(0.0, f64::max);
            let window = (measured_end.max(last_done) - measured_start).max(1e-9);
            let mut tokens = Tokens::default();
            let mut cost = 0.0;
            for r in &recs {
                tokens.input += u64::from(r.input_tokens);
                tokens.output += u64::from(r.output_tokens);
                if let Some(m) = sched.mix.get(r.mix as usize) {
                    if let Some(p) = sc.prices.get(&m.model) {
                        cost += f64::from(r.input_tokens) * p.input_per_mtok / 1e6
                            + f64::from(r.output_tokens) * p.output_per_mtok / 1e6;
                    }
                }
            }
            let completed = ok.len() as u64 + errors;
            let mut by_mix = Vec::new();
            for (mi, m) in sched.mix.iter().enumerate() {
                let rs: Vec<&&Record> = recs.iter().filter(|r| r.mix as usize == mi).collect();
                if rs.is_empty() {
                    continue;
                }
                let okr: Vec<&&&Record> = rs.iter().filter(|r| r.ok()).collect();
                let lat = Percentiles::from_ns(okr.iter().map(|r| r.latency_ns));
                let ttft = Percentiles::from_ns(okr.iter().filter_map(|r| r.ttft_ns));
                by_mix.push(MixReport {
                    label: m.label(),
                    requests: rs.len() as u64,
                    ok: okr.len() as u64,
                    errors: (rs.len() - okr.len()) as u64,
                    latency_p50_ms: lat.map(|p| p.p50_ms),
                    latency_p99_ms: lat.map(|p| p.p99_ms),
                    ttft_p99_ms: ttft.map(|p| p.p99_ms),
                });
            }
            let mut by_phase = Vec::new();
            for (pi, p) in sched.phases.iter().enumerate() {
                let rs: Vec<&Record> = t
                    .records
                    .iter()
                    .filter(|r| r.phase as usize == pi)
                    .collect();
                let okr: Vec<&&Record> = rs.iter().filter(|r| r.ok()).collect();
                let lat = Percentiles::from_ns(okr.iter().map(|r| r.latency_ns));
                let ttft = Percentiles::from_ns(okr.iter().filter_map(|r| r.ttft_ns));
                let mut types: BTreeMap<String, u64> = BTreeMap::new();
                for r in rs.iter().filter(|r| !r.ok()) {
                    *types
                        .entry(label_name(&data.labels, r.outcome))
                        .or_default() += 1;
                }
                let len = (p.end - p.start).as_secs_f64();
                by_phase.push(PhaseStats {
                    name: p.name.clone(),
                    warmup: p.warmup,
                    requests: rs.len() as u64,
                    ok: okr.len() as u64,
                    errors: (rs.len() - okr.len()) as u64,
                    throughput_rps: if len > 0.0 {
                        okr.len() as f64 / len
                    } else {
                        0.0
                    },
                    latency_p50_ms: lat.map(|p| p.p50_ms),
                    latency_p99_ms: lat.map(|p| p.p99_ms),
                    ttft_p99_ms: ttft.map(|p| p.p99_ms),
                    errors_by_type: types,
                });
            }
            targets.push(TargetReport {
                name: t.name.clone(),
                url: t.url.clone(),
                scheduled: scheduled_measured,
                sent: (recs.len() as u64).saturating_sub(overload),
                ok: ok.len() as u64,
                errors,
                error_rate: if completed == 0 {
                    0.0
                } else {
                    errors as f64 / completed as f64
                },
                errors_by_type: by_type,
                not_sent: t.not_sent,
                offered_rps: if measured_len > 0.0 {
                    scheduled_measured as f64 / measured_len
                } else {
                    0.0
                },
                throughput_rps: ok.len() as f64 / window,
                window_s: window,
                latency: Percentiles::from_ns(ok.iter().map(|r| r.latency_ns)),
                ttft: Percentiles::from_ns(ok.iter().filter_map(|r| r.ttft_ns)),
                itl: Percentiles::from_histogram(&t.itl),
                send_lag: Percentiles::from_ns(
                    recs.iter()
                        .filter(|r| r.outcome != record::GENERATOR_OVERLOAD)
                        .map(|r| r.send_lag_ns),
                ),
                streams_ok: ok.iter().filter(|r| r.stream).count() as u64,
                peak_in_flight: peak_in_flight(t.records.iter()),
                tokens,
                cost_usd: (!sc.prices.is_empty()).then_some(cost),
                by_mix,
                by_phase,
            });
        }

        let baseline = sc.baseline_index();
        let mut overhead = Vec::new();
        if let Some(b) = baseline {
            let base = &targets[b];
            for (i, t) in targets.iter().enumerate() {
                if i == b {
                    continue;
                }
                let d =
                    |a: Option<Percentiles>, b: Option<Percentiles>, f: fn(&Percentiles) -> f64| {
                        Some(f(&a?) - f(&b?))
                    };
                overhead.push(Overhead {
                    target: t.name.clone(),
                    baseline: base.name.clone(),
                    latency_p50_ms: d(t.latency, base.latency, |p| p.p50_ms),
                    latency_p90_ms: d(t.latency, base.latency, |p| p.p90_ms),
                    latency_p99_ms: d(t.latency, base.latency, |p| p.p99_ms),
                    latency_p999_ms: d(t.latency, base.latency, |p| p.p999_ms),
                    ttft_p50_ms: d(t.ttft, base.ttft, |p| p.p50_ms),
                    ttft_p90_ms: d(t.ttft, base.ttft, |p| p.p90_ms),
                    ttft_p99_ms: d(t.ttft, base.ttft, |p| p.p99_ms),
                    ttft_p999_ms: d(t.ttft, base.ttft, |p| p.p999_ms),
                });
            }
        }

        let faults = fault_reports(data);

        let mut warnings = Vec::new();
        if data.interrupted {
            warnings.push(
                "the run was interrupted; the numbers cover only part of the schedule".into(),
            );
        }
        for t in &targets {
            let overload = t
                .errors_by_type
                .get("generator_overload")
                .copied()
                .unwrap_or(0);
            if overload > 0 {
                warnings.push(format!(
                    "{}: {overload} requests were not sent because {} were already in flight (counted as generator_overload errors)",
                    t.name, sc.max_in_flight
                ));
            }
            if let Some(l) = t.send_lag {
                if l.p99_ms > 5.0 {
                    warnings.push(format!(
                        "{}: the generator started requests late (send lag p99 {:.2} ms, max {:.1} ms); it may be the bottleneck — check `switchyard-loadtest ceiling`",
                        t.name, l.p99_ms, l.max_ms
                    ));
                }
            }
        }
        for f in &faults {
            if !f.ok {
                warnings.push(format!(
                    "fault event {} ({}) failed: {}",
                    f.event,
                    f.label,
                    f.error.as_deref().unwrap_or("unknown error")
                ));
            }
        }

        let slo = evaluate_slos(sc, &targets, &overhead, &faults);
        let slo_passed = slo.iter().all(|s| s.passed);

        let processes: Vec<ProcReport> = data
            .processes
            .iter()
            .map(|p| {
                let span = p.span();
                ProcReport {
                    name: p.name.clone(),
                    pid: p.pid,
                    peak_rss_mb: p.peak_rss() as f64 / 1048576.0,
                    cpu_seconds: p.cpu_used(),
                    avg_cpu_pct: if span > 0.0 {
                        p.cpu_used() / span * 100.0
                    } else {
                        0.0
                    },
                    rss_mb: p
                        .samples
                        .iter()
                        .map(|s| (s.t, s.rss_bytes as f64 / 1048576.0))
                        .collect(),
                }
            })
            .collect();

        let unattributed_cpu_pct =
            processes
                .iter()
                .find(|p| p.pid == procwatch::MACHINE)
                .map(|m| {
                    let known: f64 = processes
                        .iter()
                        .filter(|p| p.pid != procwatch::MACHINE)
                        .map(|p| p.avg_cpu_pct)
                        .sum();
                    (m.avg_cpu_pct - known).max(0.0)
                });
        if let Some(u) = unattributed_cpu_pct {
            if u > 20.0 {
                warnings.push(format!(
                    "other processes kept the machine {u:.0}% of a core busy during the run; latency numbers may be disturbed"
                ));
            }
        }

        Report {
            scenario: sc.name.clone(),
            description: sc.description.clone(),
            started_unix: data.started_unix,
            mode: sc.mode,
            planned_duration_s: sched.duration.as_secs_f64(),
            wall_s: data.wall.as_secs_f64(),
            interrupted: data.interrupted,
            max_in_flight: sc.max_in_flight,
            phases: sched
                .phases
                .iter()
                .map(|p| PhaseReport {
                    name: p.name.clone(),
                    start_s: p.start.as_secs_f64(),
                    end_s: p.end.as_secs_f64(),
                    warmup: p.warmup,
                })
                .collect(),
            baseline: baseline.map(|b| sc.targets[b].name.clone()),
            targets,
            overhead,
            faults,
            slo,
            slo_passed,
            processes,
            unattributed_cpu_pct,
            warnings,
            series: series(data),
        }
    }
}

/// Largest number of requests outstanding at once: each sent request is
/// outstanding from its actual send (intended time + send lag) to its
/// completion.
pub fn peak_in_flight<'a>(records: impl Iterator<Item = &'a Record>) -> u64 {
    let mut ev: Vec<(u64, i8)> = Vec::new();
    for r in records.filter(|r| r.outcome != record::GENERATOR_OVERLOAD) {
        let start = r.intended_ns.saturating_add(r.send_lag_ns);
        ev.push((start, 1));
        ev.push((r.done_ns().max(start), -1));
    }
    // Ends sort before starts at the same instant.
    ev.sort_unstable();
    let (mut cur, mut peak) = (0i64, 0i64);
    for (_, d) in ev {
        cur += i64::from(d);
        peak = peak.max(cur);
    }
    peak as u64
}

fn label_name(labels: &[String], id: u32) -> String {
    labels
        .get(id as usize)
        .cloned()
        .unwrap_or_else(|| format!("outcome_{id}"))
}

/// The time window a fault event is judged in: from the event (`at`) to the
/// next event of the same run (`until`); `since` is the previous event (or
/// 0). All in ns from the start of the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventWindow {
    pub since: u64,
    pub at: u64,
    pub until: u64,
}

/// Failover analysis of one event for one target's records (see the
/// module docs for the definition).
/// Outcomes in `ignore` (a target's `allowed_errors`) count neither as
/// errors nor as successes.
pub fn failover(records: &[Record], target: &str, w: EventWindow, ignore: &[u32]) -> Failover {
    // The event's requests: sent in [at, until), or sent since the previous
    // event and finished in [at, until) (in flight when the event hit).
    // "Sent" is when the request actually went out (intended time + send
    // lag): that is what the faulted system saw.
    let sent = |r: &Record| r.intended_ns.saturating_add(r.send_lag_ns);
    let belongs = |r: &&Record| {
        let s = sent(r);
        !ignore.contains(&r.outcome)
            && ((s >= w.at && s < w.until)
                || (s >= w.since && s < w.at && r.done_ns() >= w.at && r.done_ns() < w.until))
    };
    let mut errors = 0u64;
    let mut first_err: Option<u64> = None;
    let mut last_err: Option<u64> = None;
    for r in records.iter().filter(belongs).filter(|r| !r.ok()) {
        errors += 1;
        let d = r.done_ns();
        first_err = Some(first_err.map_or(d, |f| f.min(d)));
        last_err = Some(last_err.map_or(d, |l| l.max(d)));
    }
    let rel = |ns: u64| secs(ns.saturating_sub(w.at));
    let end_s = (w.until != u64::MAX).then(|| secs(w.until));
    match last_err {
        None => Failover {
            target: target.to_string(),
            window_end_s: end_s,
            errors: 0,
            first_error_s: None,
            last_error_s: None,
            recovered: true,
            failover_time_s: Some(0.0),
            recovery_s: None,
        },
        Some(last) => {
            // Success resumed: a request sent after the last error, still
            // within the window, succeeded.
            let first_ok_after = records
                .iter()
                .filter(|r| r.ok() && sent(r) >= last && sent(r) < w.until)
                .map(|r| r.done_ns())
                .min();
            Failover {
                target: target.to_string(),
                window_end_s: end_s,
                errors,
                first_error_s: first_err.map(rel),
                last_error_s: Some(rel(last)),
                recovered: first_ok_after.is_some(),
                failover_time_s: first_ok_after.map(|_| rel(last)),
                recovery_s: first_ok_after.map(rel),
            }
        }
    }
}

/// Whether outcome label `ty` is covered by an `allowed_errors` entry
/// (`http_429` also covers `http_429:<code>`).
pub fn is_allowed(allowed: &[String], ty: &str) -> bool {
    allowed
        .iter()
        .any(|a| ty == a || (ty.starts_with(a.as_str()) && ty[a.len()..].starts_with(':')))
}

/// Outcome ids of the target's SLO `allowed_errors`.
fn allowed_ids(data: &RunData, target: &str) -> Vec<u32> {
    let Some(slo) = data.scenario.slo.get(target) else {
        return Vec::new();
    };
    data.labels
        .iter()
        .enumerate()
        .filter(|(id, l)| *id as u32 != record::OK && is_allowed(&slo.allowed_errors, l))
        .map(|(id, _)| id as u32)
        .collect()
}

fn fault_reports(data: &RunData) -> Vec<FaultReport> {
    let mut out = Vec::new();
    for (k, f) in data.faults.iter().enumerate() {
        // Neighbouring events of the same run.
        let next = data.faults[k + 1..]
            .iter()
            .filter(|g| g.target == f.target)
            .map(|g| g.issued_ns)
            .min()
            .unwrap_or(u64::MAX);
        let prev = data.faults[..k]
            .iter()
            .filter(|g| g.target == f.target)
            .map(|g| g.issued_ns)
            .max()
            .unwrap_or(0);
        let window = EventWindow {
            since: prev,
            at: f.issued_ns,
            until: next,
        };
        let failover_list = data
            .targets
            .iter()
            .enumerate()
            .filter(|(i, _)| f.target.is_none_or(|t| t == *i))
            .map(|(_, t)| {
                let ignore = allowed_ids(data, &t.name);
                failover(&t.records, &t.name, window, &ignore)
            })
            .collect();
        out.push(FaultReport {
            event: f.event,
            label: f.label.clone(),
            mock: f.mock.clone(),
            run: f
                .target
                .and_then(|t| data.targets.get(t))
                .map(|t| t.name.clone()),
            planned_s: secs(f.planned_ns),
            issued_s: secs(f.issued_ns),
            acked_s: secs(f.acked_ns),
            ok: f.ok,
            error: f.error.clone(),
            failover: failover_list,
        });
    }
    out
}

fn fmt_ms(ms: f64) -> String {
    if ms.abs() >= 1000.0 {
        format!("{:.2} s", ms / 1000.0)
    } else if ms.abs() >= 10.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.3} ms")
    }
}

fn dur_ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn evaluate_slos(
    sc: &crate::scenario::Scenario,
    targets: &[TargetReport],
    overhead: &[Overhead],
    faults: &[FaultReport],
) -> Vec<SloResult> {
    let mut out = Vec::new();
    for (name, slo) in &sc.slo {
        let Some(t) = targets.iter().find(|t| &t.name == name) else {
            continue;
        };
        check_target(&mut out, name, slo, t, overhead, faults);
    }
    if faults.iter().any(|f| !f.ok) {
        out.push(SloResult {
            target: "-".into(),
            check: "fault_events".into(),
            limit: "all applied".into(),
            actual: format!("{} failed", faults.iter().filter(|f| !f.ok).count()),
            passed: false,
        });
    }
    out
}

fn check_target(
    out: &mut Vec<SloResult>,
    name: &str,
    slo: &Slo,
    t: &TargetReport,
    overhead: &[Overhead],
    faults: &[FaultReport],
) {
    let mut push_max = |check: &str, limit: f64, actual: Option<f64>| {
        out.push(SloResult {
            target: name.to_string(),
            check: check.to_string(),
            limit: format!("<= {}", fmt_ms(limit)),
            actual: actual.map_or("no data".into(), fmt_ms),
            passed: actual.is_some_and(|a| a <= limit),
        });
    };
    let lat = t.latency;
    let ttft = t.ttft;
    let checks: [(&str, Option<std::time::Duration>, Option<f64>); 8] = [
        ("p50_latency", slo.p50_latency, lat.map(|p| p.p50_ms)),
        ("p90_latency", slo.p90_latency, lat.map(|p| p.p90_ms)),
        ("p99_latency", slo.p99_latency, lat.map(|p| p.p99_ms)),
        ("p999_latency", slo.p999_latency, lat.map(|p| p.p999_ms)),
        ("p50_ttft", slo.p50_ttft, ttft.map(|p| p.p50_ms)),
        ("p99_ttft", slo.p99_ttft, ttft.map(|p| p.p99_ms)),
        ("p99_itl", slo.p99_itl, t.itl.map(|p| p.p99_ms)),
        (
            "p99_overhead",
            slo.p99_overhead,
            overhead
                .iter()
                .find(|o| o.target == name)
                .and_then(|o| o.latency_p99_ms),
        ),
    ];
    for (check, limit, actual) in checks {
        if let Some(l) = limit {
            push_max(check, dur_ms(l), actual);
        }
    }
    if let Some(max) = slo.error_rate {
        let allowed = |ty: &str| is_allowed(&slo.allowed_errors, ty);
        let counted: u64 = t
            .errors_by_type
            .iter()
            .filter(|(ty, _)| !allowed(ty))
            .map(|(_, n)| n)
            .sum();
        let completed = t.ok + t.errors;
        let rate = if completed == 0 {
            0.0
        } else {
            counted as f64 / completed as f64
        };
        out.push(SloResult {
            target: name.to_string(),
            check: "error_rate".into(),
            limit: format!("<= {:.3}%", max * 100.0),
            actual: format!("{:.3}% ({counted} of {completed})", rate * 100.0),
            passed: completed > 0 && rate <= max,
        });
    }
    if let Some(min) = slo.min_throughput {
        out.push(SloResult {
            target: name.to_string(),
            check: "min_throughput".into(),
            limit: format!(">= {min:.1} req/s"),
            actual: format!("{:.1} req/s", t.throughput_rps),
            passed: t.throughput_rps >= min,
        });
    }
    if let Some(limit) = slo.failover_time {
        let mine: Vec<&Failover> = faults
            .iter()
            .filter(|f| f.ok)
            .flat_map(|f| f.failover.iter())
            .filter(|f| f.target == name)
            .collect();
        let not_recovered = mine.iter().filter(|f| !f.recovered).count();
        let worst = mine
            .iter()
            .filter_map(|f| f.failover_time_s)
            .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
        let (actual, passed) = if mine.is_empty() {
            ("no fault events".to_string(), false)
        } else if not_recovered > 0 {
            (format!("{not_recovered} event(s) not recovered"), false)
        } else {
            let w = worst.unwrap_or(0.0) * 1000.0;
            (fmt_ms(w), w <= dur_ms(limit))
        };
        out.push(SloResult {
            target: name.to_string(),
            check: "failover_time".into(),
            limit: format!("<= {}", fmt_ms(dur_ms(limit))),
            actual,
            passed,
        });
    }
}

/// Bucket width: the smallest "nice" width giving at most 80 buckets.
pub fn bucket_width(total_s: f64) -> f64 {
    const NICE: [f64; 12] = [
        0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0,
    ];
    NICE.iter()
        .copied()
        .find(|w| total_s / w <= 80.0)
        .unwrap_or(600.0)
}

fn exact_quantile(sorted: &[u64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let idx = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    Some(sorted[idx] as f64 / 1e6)
}

fn series(data: &RunData) -> Series {
    let total_ns = data.schedule.duration.as_nanos() as u64;
    let w = bucket_width(secs(total_ns));
    let w_ns = ((w * NS).round() as u64).max(1);
    let n = (total_ns.div_ceil(w_ns) as usize).max(1);
    let targets = data
        .targets
        .iter()
        .map(|t| {
            let mut buckets: Vec<Vec<&Record>> = vec![Vec::new(); n];
            for r in &t.records {
                let b = ((r.intended_ns / w_ns) as usize).min(n - 1);
                buckets[b].push(r);
            }
            let points = buckets
                .iter()
                .enumerate()
                .map(|(i, rs)| {
                    let mut lat: Vec<u64> =
                        rs.iter().filter(|r| r.ok()).map(|r| r.latency_ns).collect();
                    lat.sort_unstable();
                    let mut ttft: Vec<u64> = rs
                        .iter()
                        .filter(|r| r.ok())
                        .filter_map(|r| r.ttft_ns)
                        .collect();
                    ttft.sort_unstable();
                    SeriesPoint {
                        t_s: i as f64 * w,
                        requests: rs.len() as u64,
                        ok: lat.len() as u64,
                        errors: (rs.len() - lat.len()) as u64,
                        latency_p50_ms: exact_quantile(&lat, 0.5),
                        latency_p99_ms: exact_quantile(&lat, 0.99),
                        ttft_p99_ms: exact_quantile(&ttft, 0.99),
                    }
                })
                .collect();
            TargetSeries {
                name: t.name.clone(),
                points,
            }
        })
        .collect();
    Series {
        bucket_s: w,
        targets,
    }
}

/// Every record as CSV: `target,intended_ms,latency_ms,ttft_ms,send_lag_ms,outcome,status,phase,mix,stream,input_tokens,output_tokens`.
pub fn write_records_csv(data: &RunData, w: &mut impl std::io::Write) -> std::io::Result<()> {
    writeln!(
        w,
        "target,intended_ms,latency_ms,ttft_ms,send_lag_ms,outcome,status,phase,mix,stream,input_tokens,output_tokens"
    )?;
    for t in &data.targets {
        for r in &t.records {
            let ms = |ns: u64| ns as f64 / 1e6;
            writeln!(
                w,
                "{},{:.3},{:.3},{},{:.3},{},{},{},{},{},{},{}",
                t.name,
                ms(r.intended_ns),
                ms(r.latency_ns),
                r.ttft_ns
                    .map(|v| format!("{:.3}", ms(v)))
                    .unwrap_or_default(),
                ms(r.send_lag_ns),
                label_name(&data.labels, r.outcome),
                r.status,
                r.phase,
                r.mix,
                r.stream,
                r.input_tokens,
                r.output_tokens
            )?;
        }
    }
    Ok(())
}

/// A named percentile accessor (for table rows).
pub(crate) type Pick = (&'static str, fn(&Percentiles) -> f64);

/// `p99_overhead` etc. helper for the text and HTML renderers.
pub(crate) fn fmt_opt_ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), fmt_ms)
}

pub(crate) fn fmt_signed_ms(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(x) if x >= 0.0 => format!("+{}", fmt_ms(x)),
        Some(x) => format!("-{}", fmt_ms(-x)),
    }
}
