//! The terminal table.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use super::{fmt_opt_ms, fmt_signed_ms, Percentiles, Pick, Report};
use crate::procwatch::MACHINE;

fn pct(v: f64) -> String {
    format!("{:.2}%", v * 100.0)
}

fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0usize; cols];
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            let pad = widths[i] - c.chars().count();
            if i == 0 {
                line.push_str(c);
                line.push_str(&" ".repeat(pad));
            } else {
                line.push_str("  ");
                line.push_str(&" ".repeat(pad));
                line.push_str(c);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn dist_rows(
    rows: &mut Vec<Vec<String>>,
    title: &str,
    vals: &[Option<Percentiles>],
    ovh: Option<&[Option<f64>; 4]>,
) {
    if vals.iter().all(Option::is_none) {
        return;
    }
    let pick: [Pick; 5] = [
        ("p50", |p| p.p50_ms),
        ("p90", |p| p.p90_ms),
        ("p99", |p| p.p99_ms),
        ("p99.9", |p| p.p999_ms),
        ("max", |p| p.max_ms),
    ];
    for (i, (name, f)) in pick.iter().enumerate() {
        let mut r = vec![format!("{title} {name}")];
        for v in vals {
            r.push(fmt_opt_ms(v.as_ref().map(f)));
        }
        if let Some(o) = ovh {
            r.push(if i < 4 {
                fmt_signed_ms(o[i])
            } else {
                String::new()
            });
        }
        rows.push(r);
    }
}

/// Render the report as plain text (for the terminal).
pub fn render(rep: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "scenario {}: {:.1} s planned, {:.1} s wall, {} target(s), mode {:?}{}",
        rep.scenario,
        rep.planned_duration_s,
        rep.wall_s,
        rep.targets.len(),
        rep.mode,
        if rep.interrupted {
            " (INTERRUPTED)"
        } else {
            ""
        }
    );
    if !rep.description.is_empty() {
        let _ = writeln!(out, "{}", rep.description.trim());
    }
    out.push('\n');

    // With exactly one other target, show its overhead in an extra column.
    let single_ovh = (rep.overhead.len() == 1).then(|| &rep.overhead[0]);
    let mut header = vec![String::new()];
    header.extend(rep.targets.iter().map(|t| t.name.clone()));
    if let Some(o) = single_ovh {
        header.push(format!("{} - {}", o.target, o.baseline));
    }
    let mut rows = vec![header];
    let t = &rep.targets;
    let extra = |r: &mut Vec<String>| {
        if single_ovh.is_some() {
            r.push(String::new());
        }
    };
    let mut row = |name: &str, f: &dyn Fn(&super::TargetReport) -> String| {
        let mut r = vec![name.to_string()];
        r.extend(t.iter().map(f));
        extra(&mut r);
        rows.push(r);
    };
    row("requests scheduled", &|t| t.scheduled.to_string());
    row("sent", &|t| t.sent.to_string());
    row("ok", &|t| t.ok.to_string());
    row("errors", &|t| {
        format!("{} ({})", t.errors, pct(t.error_rate))
    });
    let types: BTreeSet<&String> = t.iter().flat_map(|t| t.errors_by_type.keys()).collect();
    for ty in &types {
        row(&format!("  {ty}"), &|t| {
            t.errors_by_type.get(*ty).copied().unwrap_or(0).to_string()
        });
    }
    if t.iter().any(|t| t.not_sent > 0) {
        row("not sent (interrupted)", &|t| t.not_sent.to_string());
    }
    row("offered rate", &|t| format!("{:.1}/s", t.offered_rps));
    row("throughput (ok)", &|t| format!("{:.1}/s", t.throughput_rps));
    row("peak in flight", &|t| t.peak_in_flight.to_string());
    let lat: Vec<_> = t.iter().map(|t| t.latency).collect();
    let ttft: Vec<_> = t.iter().map(|t| t.ttft).collect();
    let itl: Vec<_> = t.iter().map(|t| t.itl).collect();
    let lag: Vec<_> = t.iter().map(|t| t.send_lag).collect();
    let ovh_lat = single_ovh.map(|o| {
        [
            o.latency_p50_ms,
            o.latency_p90_ms,
            o.latency_p99_ms,
            o.latency_p999_ms,
        ]
    });
    let ovh_ttft =
        single_ovh.map(|o| [o.ttft_p50_ms, o.ttft_p90_ms, o.ttft_p99_ms, o.ttft_p999_ms]);
    dist_rows(&mut rows, "latency", &lat, ovh_lat.as_ref());
    dist_rows(&mut rows, "ttft", &ttft, ovh_ttft.as_ref());
    dist_rows(&mut rows, "itl", &itl, single_ovh.map(|_| &[None; 4]));
    let mut r = vec!["send lag p99".to_string()];
    r.extend(lag.iter().map(|l| fmt_opt_ms(l.map(|p| p.p99_ms))));
    if single_ovh.is_some() {
        r.push(String::new());
    }
    rows.push(r);
    let mut r = vec!["tokens in/out".to_string()];
    r.extend(
        t.iter()
            .map(|t| format!("{}/{}", t.tokens.input, t.tokens.output)),
    );
    if single_ovh.is_some() {
        r.push(String::new());
    }
    rows.push(r);
    if t.iter().any(|t| t.cost_usd.is_some()) {
        let mut r = vec!["cost".to_string()];
        r.extend(
            t.iter()
                .map(|t| t.cost_usd.map_or("-".into(), |c| format!("${c:.4}"))),
        );
        if single_ovh.is_some() {
            r.push(String::new());
        }
        rows.push(r);
    }
    out.push_str(&table(&rows));

    if rep.overhead.len() > 1 {
        out.push_str("\noverhead (difference of percentiles)\n");
        let mut rows = vec![vec![
            String::new(),
            "p50".into(),
            "p90".into(),
            "p99".into(),
            "p99.9".into(),
            "ttft p99".into(),
        ]];
        for o in &rep.overhead {
            rows.push(vec![
                format!("{} - {}", o.target, o.baseline),
                fmt_signed_ms(o.latency_p50_ms),
                fmt_signed_ms(o.latency_p90_ms),
                fmt_signed_ms(o.latency_p99_ms),
                fmt_signed_ms(o.latency_p999_ms),
                fmt_signed_ms(o.ttft_p99_ms),
            ]);
        }
        out.push_str(&table(&rows));
    }

    if rep.phases.len() > 1 {
        out.push_str("\nby phase (ok/s, p99 latency, errors)\n");
        let mut rows = vec![{
            let mut r = vec![String::new()];
            r.extend(rep.targets.iter().map(|t| t.name.clone()));
            r
        }];
        for (pi, p) in rep.phases.iter().enumerate() {
            let mut r = vec![if p.warmup {
                format!("{} (warmup)", p.name)
            } else {
                p.name.clone()
            }];
            for t in &rep.targets {
                r.push(t.by_phase.get(pi).map_or(String::new(), |s| {
                    format!(
                        "{:.0}/s  {}  {} err",
                        s.throughput_rps,
                        fmt_opt_ms(s.latency_p99_ms),
                        s.errors
                    )
                }));
            }
            rows.push(r);
        }
        out.push_str(&table(&rows));
    }

    if !rep.faults.is_empty() {
        out.push_str(
            "\nfault events (failover time = fault -> last client error, once success resumed; see docs/loadtest.md)\n",
        );
        for f in &rep.faults {
            let run = f
                .run
                .as_ref()
                .map(|r| format!(" [{r} run]"))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "  t={:.2}s {}{}{}",
                f.issued_s,
                f.label,
                run,
                if f.ok { "" } else { "  (FAILED to apply)" }
            );
            for fo in &f.failover {
                let what = if fo.errors == 0 {
                    "no errors".to_string()
                } else if let Some(ft) = fo.failover_time_s {
                    format!(
                        "failover {:.3} s, {} errors, first success after {:.3} s",
                        ft,
                        fo.errors,
                        fo.recovery_s.unwrap_or(0.0)
                    )
                } else {
                    format!("NOT RECOVERED before the next event ({} errors)", fo.errors)
                };
                let _ = writeln!(out, "      {:<12} {what}", fo.target);
            }
        }
    }

    if !rep.processes.is_empty() {
        out.push_str("\nprocesses\n");
        for p in rep.processes.iter().filter(|p| p.pid != MACHINE) {
            let _ = writeln!(
                out,
                "  {:<12} pid {:<7} peak RSS {:>8.1} MB  CPU {:>7.2} s ({:.0}% of a core)",
                p.name, p.pid, p.peak_rss_mb, p.cpu_seconds, p.avg_cpu_pct
            );
        }
        if let Some(m) = rep.processes.iter().find(|p| p.pid == MACHINE) {
            let _ = writeln!(
                out,
                "  {:<12} all CPUs busy {:.0}% of a core on average, {:.0}% of it outside the processes above",
                "machine",
                m.avg_cpu_pct,
                rep.unattributed_cpu_pct.unwrap_or(0.0)
            );
        }
    }

    if !rep.warnings.is_empty() {
        out.push_str("\nwarnings\n");
        for w in &rep.warnings {
            let _ = writeln!(out, "  ! {w}");
        }
    }

    if !rep.slo.is_empty() {
        out.push_str("\nSLOs\n");
        for s in &rep.slo {
            let _ = writeln!(
                out,
                "  {} {:<10} {:<15} {:<14} actual {}",
                if s.passed { "PASS" } else { "FAIL" },
                s.target,
                s.check,
                s.limit,
                s.actual
            );
        }
        let _ = writeln!(
            out,
            "\nresult: {}",
            if rep.slo_passed { "PASS" } else { "FAIL" }
        );
    }
    out
}
