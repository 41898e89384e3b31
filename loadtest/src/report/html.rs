//! A self-contained HTML report: inline CSS and server-rendered SVG charts,
//! no scripts and no external resources. The JSON report is embedded as
//! `<script type="application/json" id="report">` for tooling.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use super::{fmt_opt_ms, fmt_signed_ms, Percentiles, Pick, Report};

const PALETTE: [&str; 8] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
];

fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            _ => o.push(c),
        }
    }
    o
}

/// A line of a chart; `None` points break the line.
pub struct Line {
    pub name: String,
    pub color: &'static str,
    pub dash: Option<&'static str>,
    pub points: Vec<(f64, Option<f64>)>,
}

/// Chart decorations: vertical event markers and shaded phase bands.
#[derive(Default)]
pub struct Decor {
    pub markers: Vec<(f64, String)>,
    pub bands: Vec<(f64, f64, String)>,
}

fn nice_step(range: f64, ticks: f64) -> f64 {
    if range <= 0.0 || !range.is_finite() {
        return 1.0;
    }
    let raw = range / ticks;
    let mag = 10f64.powf(raw.log10().floor());
    let n = raw / mag;
    let m = if n <= 1.0 {
        1.0
    } else if n <= 2.0 {
        2.0
    } else if n <= 5.0 {
        5.0
    } else {
        10.0
    };
    m * mag
}

fn fmt_tick(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 100.0 || (v.fract() == 0.0 && v.abs() >= 1.0) {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').to_string()
    }
}

/// Render an SVG line chart.
pub fn chart(
    title: &str,
    y_label: &str,
    x_max: f64,
    log_y: bool,
    lines: &[Line],
    decor: &Decor,
) -> String {
    const W: f64 = 960.0;
    const H: f64 = 314.0;
    const L: f64 = 70.0;
    const R: f64 = 20.0;
    const T: f64 = 48.0;
    const B: f64 = 44.0;
    let pw = W - L - R;
    let ph = H - T - B;
    let vals: Vec<f64> = lines
        .iter()
        .flat_map(|l| l.points.iter().filter_map(|p| p.1))
        .filter(|v| v.is_finite() && (!log_y || *v > 0.0))
        .collect();
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" class="chart" role="img"><title>{}</title>"#,
        esc(title)
    );
    let _ = write!(
        s,
        r#"<text x="{L}" y="20" class="ct">{}</text>"#,
        esc(title)
    );
    let x_max = if x_max > 0.0 { x_max } else { 1.0 };
    let (y_lo, y_hi) = if vals.is_empty() {
        (if log_y { 0.1 } else { 0.0 }, 1.0)
    } else if log_y {
        let mn = vals.iter().copied().fold(f64::INFINITY, f64::min);
        let mx = vals.iter().copied().fold(0.0, f64::max);
        let lo = 10f64.powf(mn.log10().floor());
        let mut hi = 10f64.powf(mx.log10().ceil());
        if hi <= lo {
            hi = lo * 10.0;
        }
        (lo, hi)
    } else {
        let mx = vals.iter().copied().fold(0.0, f64::max);
        let step = nice_step(mx.max(1e-9), 5.0);
        (0.0, (mx / step).ceil().max(1.0) * step)
    };
    let xpos = |x: f64| L + (x / x_max).clamp(0.0, 1.0) * pw;
    let ypos = |y: f64| {
        let f = if log_y {
            (y.max(y_lo).log10() - y_lo.log10()) / (y_hi.log10() - y_lo.log10())
        } else {
            (y - y_lo) / (y_hi - y_lo)
        };
        T + ph - f.clamp(0.0, 1.0) * ph
    };
    // Phase bands.
    for (i, (a, b, name)) in decor.bands.iter().enumerate() {
        let (xa, xb) = (xpos(*a), xpos(*b));
        if i % 2 == 1 {
            let _ = write!(
                s,
                r#"<rect x="{xa:.1}" y="{T}" width="{:.1}" height="{ph}" class="band"/>"#,
                (xb - xa).max(0.0)
            );
        }
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{:.1}" class="bl">{}</text>"#,
            xa + 3.0,
            T + 11.0,
            esc(name)
        );
    }
    // Grid and y ticks.
    if log_y {
        // Decades, plus 2x and 5x ticks when the range is narrow.
        let decades = (y_hi / y_lo).log10().round() as i32;
        let mults: &[f64] = if decades <= 2 {
            &[1.0, 2.0, 5.0]
        } else {
            &[1.0]
        };
        let mut ticks = Vec::new();
        let mut d = y_lo;
        while d <= y_hi * 1.0001 {
            for m in mults {
                if d * m <= y_hi * 1.0001 {
                    ticks.push(d * m);
                }
            }
            d *= 10.0;
        }
        for v in ticks {
            let y = ypos(v);
            let _ = write!(
                s,
                r#"<line x1="{L}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}" class="grid"/><text x="{:.1}" y="{:.1}" class="yt">{}</text>"#,
                L + pw,
                L - 6.0,
                y + 4.0,
                fmt_tick(v)
            );
        }
    } else {
        let step = nice_step(y_hi - y_lo, 5.0);
        let mut v = y_lo;
        while v <= y_hi + step * 0.001 {
            let y = ypos(v);
            let _ = write!(
                s,
                r#"<line x1="{L}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}" class="grid"/><text x="{:.1}" y="{:.1}" class="yt">{}</text>"#,
                L + pw,
                L - 6.0,
                y + 4.0,
                fmt_tick(v)
            );
            v += step;
        }
    }
    // X ticks.
    let xstep = nice_step(x_max, 10.0);
    let mut x = 0.0;
    while x <= x_max + xstep * 0.001 {
        let px = xpos(x);
        let _ = write!(
            s,
            r#"<line x1="{px:.1}" x2="{px:.1}" y1="{:.1}" y2="{:.1}" class="axis"/><text x="{px:.1}" y="{:.1}" class="xt">{}</text>"#,
            T + ph,
            T + ph + 4.0,
            T + ph + 16.0,
            fmt_tick(x)
        );
        x += xstep;
    }
    let _ = write!(
        s,
        r#"<rect x="{L}" y="{T}" width="{pw}" height="{ph}" class="frame"/><text x="{:.1}" y="{:.1}" class="xl">time since start (s)</text><text transform="translate(14 {:.1}) rotate(-90)" class="yl">{}</text>"#,
        L + pw / 2.0,
        H - 8.0,
        T + ph / 2.0,
        esc(y_label)
    );
    // Fault markers.
    for (i, (t, label)) in decor.markers.iter().enumerate() {
        let px = xpos(*t);
        let ty = T + 24.0 + (i % 4) as f64 * 12.0;
        let _ = write!(
            s,
            r#"<line x1="{px:.1}" x2="{px:.1}" y1="{T}" y2="{:.1}" class="mark"/><text x="{:.1}" y="{ty:.1}" class="ml">{}</text>"#,
            T + ph,
            px + 3.0,
            esc(label)
        );
    }
    // Lines.
    for l in lines {
        let mut segs: Vec<Vec<(f64, f64)>> = vec![Vec::new()];
        for &(x, y) in &l.points {
            match y.filter(|v| v.is_finite() && (!log_y || *v > 0.0)) {
                Some(y) => {
                    if let Some(seg) = segs.last_mut() {
                        seg.push((xpos(x), ypos(y)));
                    }
                }
                None => segs.push(Vec::new()),
            }
        }
        for seg in segs.iter().filter(|s| !s.is_empty()) {
            let pts: Vec<String> = seg.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
            let dash = l
                .dash
                .map(|d| format!(r#" stroke-dasharray="{d}""#))
                .unwrap_or_default();
            if seg.len() == 1 {
                let _ = write!(
                    s,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="2" fill="{}"/>"#,
                    seg[0].0, seg[0].1, l.color
                );
            } else {
                let _ = write!(
                    s,
                    r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="1.6"{dash}/>"#,
                    pts.join(" "),
                    l.color
                );
            }
        }
    }
    // Legend (second line, under the title).
    let mut lx = L;
    for l in lines {
        let dash = l
            .dash
            .map(|d| format!(r#" stroke-dasharray="{d}""#))
            .unwrap_or_default();
        let _ = write!(
            s,
            r#"<line x1="{lx:.1}" x2="{:.1}" y1="34" y2="34" stroke="{}" stroke-width="2"{dash}/><text x="{:.1}" y="38" class="lg">{}</text>"#,
            lx + 18.0,
            l.color,
            lx + 22.0,
            esc(&l.name)
        );
        lx += 30.0 + l.name.chars().count() as f64 * 6.5;
    }
    s.push_str("</svg>");
    s
}

fn table(rows: &[Vec<String>]) -> String {
    let mut s = String::from("<table>");
    for (i, r) in rows.iter().enumerate() {
        s.push_str("<tr>");
        for (j, c) in r.iter().enumerate() {
            let tag = if i == 0 || j == 0 { "th" } else { "td" };
            let _ = write!(s, "<{tag}>{}</{tag}>", esc(c));
        }
        s.push_str("</tr>");
    }
    s.push_str("</table>");
    s
}

fn dist(rows: &mut Vec<Vec<String>>, title: &str, v: &[Option<Percentiles>]) {
    if v.iter().all(Option::is_none) {
        return;
    }
    let pick: [Pick; 6] = [
        ("mean", |p| p.mean_ms),
        ("p50", |p| p.p50_ms),
        ("p90", |p| p.p90_ms),
        ("p99", |p| p.p99_ms),
        ("p99.9", |p| p.p999_ms),
        ("max", |p| p.max_ms),
    ];
    for (n, f) in pick {
        let mut r = vec![format!("{title} {n}")];
        r.extend(v.iter().map(|p| fmt_opt_ms(p.as_ref().map(f))));
        rows.push(r);
    }
}

const CSS: &str = r#"
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1040px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;margin:6px 0}th,td{padding:3px 10px;border-bottom:1px solid #eee;text-align:right;font-variant-numeric:tabular-nums}
th:first-child{text-align:left}tr:first-child th{border-bottom:2px solid #ccc}
.pass{color:#1a7f37;font-weight:600}.fail{color:#cf222e;font-weight:600}.warn{color:#9a6700}
.chart{width:100%;height:auto;margin:8px 0 16px}
.chart .ct{font-size:14px;font-weight:600}.chart .grid{stroke:#eee}.chart .axis{stroke:#999}.chart .frame{fill:none;stroke:#bbb}
.chart .yt{font-size:11px;text-anchor:end;fill:#555}.chart .xt{font-size:11px;text-anchor:middle;fill:#555}
.chart .xl,.chart .yl{font-size:12px;text-anchor:middle;fill:#444}.chart .lg{font-size:12px;fill:#333}
.chart .mark{stroke:#cf222e;stroke-dasharray:4 3}.chart .ml{font-size:11px;fill:#cf222e}
.chart .band{fill:#f4f6f8}.chart .bl{font-size:10px;fill:#888}
.muted{color:#666}code{background:#f4f4f4;padding:1px 4px;border-radius:3px}
"#;

/// Render the report as a self-contained HTML page.
pub fn render(rep: &Report) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>switchyard load test: {}</title><style>{CSS}</style></head><body>",
        esc(&rep.scenario)
    );
    let verdict = if rep.slo.is_empty() {
        String::new()
    } else if rep.slo_passed {
        " — <span class=\"pass\">SLOs PASS</span>".into()
    } else {
        " — <span class=\"fail\">SLOs FAIL</span>".into()
    };
    let _ = write!(
        h,
        "<h1>Load test: {}{verdict}</h1><p class=\"muted\">{:.1} s planned, {:.1} s wall, mode {:?}, max in flight {} per target, started at unix time {:.0}{}</p>",
        esc(&rep.scenario),
        rep.planned_duration_s,
        rep.wall_s,
        rep.mode,
        rep.max_in_flight,
        rep.started_unix,
        if rep.interrupted { " — <b>interrupted</b>" } else { "" }
    );
    if !rep.description.is_empty() {
        let _ = write!(h, "<p>{}</p>", esc(rep.description.trim()));
    }

    // Summary table.
    h.push_str("<h2>Summary</h2>");
    let t = &rep.targets;
    let mut rows = vec![{
        let mut r = vec![String::new()];
        r.extend(t.iter().map(|t| format!("{} ({})", t.name, t.url)));
        r
    }];
    let mut row = |n: &str, f: &dyn Fn(&super::TargetReport) -> String| {
        let mut r = vec![n.to_string()];
        r.extend(t.iter().map(f));
        rows.push(r);
    };
    row("requests scheduled", &|t| t.scheduled.to_string());
    row("sent", &|t| t.sent.to_string());
    row("ok", &|t| t.ok.to_string());
    row("errors", &|t| {
        format!("{} ({:.2}%)", t.errors, t.error_rate * 100.0)
    });
    let types: BTreeSet<&String> = t.iter().flat_map(|t| t.errors_by_type.keys()).collect();
    for ty in &types {
        row(&format!("  {ty}"), &|t| {
            t.errors_by_type.get(*ty).copied().unwrap_or(0).to_string()
        });
    }
    row("offered rate", &|t| format!("{:.1} req/s", t.offered_rps));
    row("throughput (ok)", &|t| {
        format!("{:.1} req/s", t.throughput_rps)
    });
    row("peak in flight", &|t| t.peak_in_flight.to_string());
    row("tokens in / out", &|t| {
        format!("{} / {}", t.tokens.input, t.tokens.output)
    });
    row("cost", &|t| {
        t.cost_usd.map_or("-".into(), |c| format!("${c:.4}"))
    });
    let lat: Vec<_> = t.iter().map(|t| t.latency).collect();
    let ttft: Vec<_> = t.iter().map(|t| t.ttft).collect();
    let itl: Vec<_> = t.iter().map(|t| t.itl).collect();
    let lag: Vec<_> = t.iter().map(|t| t.send_lag).collect();
    dist(&mut rows, "latency", &lat);
    dist(&mut rows, "TTFT", &ttft);
    dist(&mut rows, "inter-token", &itl);
    dist(&mut rows, "send lag", &lag);
    h.push_str(&table(&rows));
    h.push_str("<p class=\"muted\">Latency is measured from each request's <em>intended</em> send time (open loop; no coordinated omission), over successful requests. Error rate = errors / (ok + errors).</p>");

    if !rep.overhead.is_empty() {
        h.push_str("<h2>Overhead over the baseline</h2>");
        let mut rows = vec![vec![
            String::new(),
            "p50".into(),
            "p90".into(),
            "p99".into(),
            "p99.9".into(),
            "TTFT p50".into(),
            "TTFT p99".into(),
        ]];
        for o in &rep.overhead {
            rows.push(vec![
                format!("{} − {}", o.target, o.baseline),
                fmt_signed_ms(o.latency_p50_ms),
                fmt_signed_ms(o.latency_p90_ms),
                fmt_signed_ms(o.latency_p99_ms),
                fmt_signed_ms(o.latency_p999_ms),
                fmt_signed_ms(o.ttft_p50_ms),
                fmt_signed_ms(o.ttft_p99_ms),
            ]);
        }
        h.push_str(&table(&rows));
    }

    if !rep.slo.is_empty() {
        h.push_str("<h2>SLOs</h2><table><tr><th>result</th><th>target</th><th>check</th><th>limit</th><th>actual</th></tr>");
        for s in &rep.slo {
            let _ = write!(
                h,
                "<tr><td class=\"{}\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                if s.passed { "pass" } else { "fail" },
                if s.passed { "PASS" } else { "FAIL" },
                esc(&s.target),
                esc(&s.check),
                esc(&s.limit),
                esc(&s.actual)
            );
        }
        h.push_str("</table>");
    }

    // Charts.
    h.push_str("<h2>Over time</h2>");
    let decor = Decor {
        // In sequential mode every run replays the events; mark the first run's.
        markers: rep
            .faults
            .iter()
            .filter(|f| f.run.is_none() || f.run == rep.targets.first().map(|t| t.name.clone()))
            .map(|f| (f.issued_s, f.label.clone()))
            .collect(),
        bands: rep
            .phases
            .iter()
            .map(|p| {
                (
                    p.start_s,
                    p.end_s,
                    if p.warmup && !p.name.contains("warmup") {
                        format!("{} (warmup)", p.name)
                    } else {
                        p.name.clone()
                    },
                )
            })
            .collect(),
    };
    let x_max = rep.planned_duration_s;
    let w = rep.series.bucket_s;
    let mut lat_lines = Vec::new();
    let mut ttft_lines = Vec::new();
    let mut tp_lines = Vec::new();
    for (i, ts) in rep.series.targets.iter().enumerate() {
        let c = PALETTE[i % PALETTE.len()];
        let mid = |p: &super::SeriesPoint| p.t_s + w / 2.0;
        lat_lines.push(Line {
            name: format!("{} p99", ts.name),
            color: c,
            dash: None,
            points: ts
                .points
                .iter()
                .map(|p| (mid(p), p.latency_p99_ms))
                .collect(),
        });
        lat_lines.push(Line {
            name: format!("{} p50", ts.name),
            color: c,
            dash: Some("5 3"),
            points: ts
                .points
                .iter()
                .map(|p| (mid(p), p.latency_p50_ms))
                .collect(),
        });
        if ts.points.iter().any(|p| p.ttft_p99_ms.is_some()) {
            ttft_lines.push(Line {
                name: format!("{} TTFT p99", ts.name),
                color: c,
                dash: None,
                points: ts.points.iter().map(|p| (mid(p), p.ttft_p99_ms)).collect(),
            });
        }
        tp_lines.push(Line {
            name: format!("{} ok/s", ts.name),
            color: c,
            dash: None,
            points: ts
                .points
                .iter()
                .map(|p| (mid(p), Some(p.ok as f64 / w)))
                .collect(),
        });
        if ts.points.iter().any(|p| p.errors > 0) {
            tp_lines.push(Line {
                name: format!("{} errors/s", ts.name),
                color: c,
                dash: Some("2 2"),
                points: ts
                    .points
                    .iter()
                    .map(|p| (mid(p), Some(p.errors as f64 / w)))
                    .collect(),
            });
        }
    }
    h.push_str(&chart(
        "Latency by intended send time (successful requests)",
        "latency (ms, log)",
        x_max,
        true,
        &lat_lines,
        &decor,
    ));
    if !ttft_lines.is_empty() {
        h.push_str(&chart(
            "Time to first token, p99",
            "TTFT (ms, log)",
            x_max,
            true,
            &ttft_lines,
            &decor,
        ));
    }
    h.push_str(&chart(
        "Throughput and errors (by intended send time)",
        "requests/s",
        x_max,
        false,
        &tp_lines,
        &decor,
    ));
    let rss_lines: Vec<Line> = rep
        .processes
        .iter()
        .filter(|p| p.pid != crate::procwatch::MACHINE)
        .enumerate()
        .map(|(i, p)| Line {
            name: p.name.clone(),
            color: PALETTE[(i + 3) % PALETTE.len()],
            dash: None,
            points: p.rss_mb.iter().map(|&(t, m)| (t, Some(m))).collect(),
        })
        .collect();
    if rss_lines.iter().any(|l| l.points.len() > 1) {
        let xm = rep
            .processes
            .iter()
            .flat_map(|p| p.rss_mb.last().map(|s| s.0))
            .fold(0.0, f64::max);
        h.push_str(&chart(
            "Resident memory (wall clock from the first sample)",
            "RSS (MB)",
            xm,
            false,
            &rss_lines,
            &Decor::default(),
        ));
    }
    h.push_str(&format!(
        "<p class=\"muted\">Buckets of {w} s by intended send time. Dashed red lines: fault events.</p>"
    ));

    if !rep.faults.is_empty() {
        h.push_str("<h2>Fault events and failover</h2><p class=\"muted\">Failover time: from the fault event to the end of the last failed request among those sent before the next event (and those in flight when it hit), provided a request sent after that error succeeded before the next event (otherwise: not recovered). Recovery: to the end of that first success.</p><table><tr><th>t (s)</th><th>event</th><th>target</th><th>errors</th><th>failover</th><th>recovery</th></tr>");
        for f in &rep.faults {
            for (k, fo) in f.failover.iter().enumerate() {
                let ev = if k == 0 {
                    format!(
                        "{}{}{}",
                        f.label,
                        f.run
                            .as_ref()
                            .map(|r| format!(" [{r} run]"))
                            .unwrap_or_default(),
                        if f.ok { "" } else { " (FAILED to apply)" }
                    )
                } else {
                    String::new()
                };
                let ft = match fo.failover_time_s {
                    Some(v) => format!("{v:.3} s"),
                    None => "not recovered".into(),
                };
                let _ =
                    write!(
                    h,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    if k == 0 { format!("{:.2}", f.issued_s) } else { String::new() },
                    esc(&ev),
                    esc(&fo.target),
                    fo.errors,
                    esc(&ft),
                    fo.recovery_s.map_or("-".into(), |v| format!("{v:.3} s"))
                );
            }
        }
        h.push_str("</table>");
    }

    // Per phase.
    if rep.phases.len() > 1 {
        h.push_str("<h2>By phase</h2>");
        for t in &rep.targets {
            let _ = write!(h, "<h3>{}</h3>", esc(&t.name));
            let mut rows = vec![vec![
                "phase".to_string(),
                "requests".into(),
                "ok".into(),
                "errors".into(),
                "ok/s".into(),
                "p50".into(),
                "p99".into(),
                "TTFT p99".into(),
                "error types".into(),
            ]];
            for p in &t.by_phase {
                rows.push(vec![
                    if p.warmup {
                        format!("{} (warmup)", p.name)
                    } else {
                        p.name.clone()
                    },
                    p.requests.to_string(),
                    p.ok.to_string(),
                    p.errors.to_string(),
                    format!("{:.1}", p.throughput_rps),
                    fmt_opt_ms(p.latency_p50_ms),
                    fmt_opt_ms(p.latency_p99_ms),
                    fmt_opt_ms(p.ttft_p99_ms),
                    p.errors_by_type
                        .iter()
                        .map(|(k, v)| format!("{k}: {v}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                ]);
            }
            h.push_str(&table(&rows));
        }
    }

    // Per mix entry.
    h.push_str("<h2>By request kind</h2>");
    for t in &rep.targets {
        let _ = write!(h, "<h3>{}</h3>", esc(&t.name));
        let mut rows = vec![vec![
            "kind".to_string(),
            "requests".into(),
            "ok".into(),
            "errors".into(),
            "p50".into(),
            "p99".into(),
            "TTFT p99".into(),
        ]];
        for m in &t.by_mix {
            rows.push(vec![
                m.label.clone(),
                m.requests.to_string(),
                m.ok.to_string(),
                m.errors.to_string(),
                fmt_opt_ms(m.latency_p50_ms),
                fmt_opt_ms(m.latency_p99_ms),
                fmt_opt_ms(m.ttft_p99_ms),
            ]);
        }
        h.push_str(&table(&rows));
    }

    if !rep.processes.is_empty() {
        h.push_str("<h2>Processes</h2>");
        let mut rows = vec![vec![
            "process".to_string(),
            "pid".into(),
            "peak RSS".into(),
            "CPU".into(),
            "avg CPU".into(),
        ]];
        for p in &rep.processes {
            if p.pid == crate::procwatch::MACHINE {
                rows.push(vec![
                    "machine (all CPUs)".into(),
                    "-".into(),
                    format!("{:.1} MB used", p.peak_rss_mb),
                    format!("{:.2} s", p.cpu_seconds),
                    format!(
                        "{:.0}% of a core ({:.0}% outside the processes listed)",
                        p.avg_cpu_pct,
                        rep.unattributed_cpu_pct.unwrap_or(0.0)
                    ),
                ]);
                continue;
            }
            rows.push(vec![
                p.name.clone(),
                p.pid.to_string(),
                format!("{:.1} MB", p.peak_rss_mb),
                format!("{:.2} s", p.cpu_seconds),
                format!("{:.0}% of a core", p.avg_cpu_pct),
            ]);
        }
        h.push_str(&table(&rows));
    }

    if !rep.warnings.is_empty() {
        h.push_str("<h2>Warnings</h2><ul>");
        for w in &rep.warnings {
            let _ = write!(h, "<li class=\"warn\">{}</li>", esc(w));
        }
        h.push_str("</ul>");
    }

    let json = serde_json::to_string(rep)
        .unwrap_or_else(|_| "{}".into())
        .replace("</", "<\\/");
    let _ = writeln!(
        h,
        "<script type=\"application/json\" id=\"report\">{json}</script></body></html>"
    );
    h
}
