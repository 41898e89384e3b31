#!/usr/bin/env python3
"""Summarize repeated runs: PREFIX-1.json .. PREFIX-N.json (switchyard-loadtest
JSON reports). Prints one line per run and the median of each column.

    loadtest/bench/summarize.py loadtest/bench/out/overhead 5
"""
import json
import statistics
import sys


def pick(rep, target, *path):
    t = next((t for t in rep["targets"] if t["name"] == target), None)
    v = t
    for p in path:
        if v is None:
            return None
        v = v.get(p)
    return v


def main():
    prefix, n = sys.argv[1], int(sys.argv[2])
    cols = [
        ("edge p50", lambda r: pick(r, "edge", "latency", "p50_ms")),
        ("edge p99", lambda r: pick(r, "edge", "latency", "p99_ms")),
        ("direct p50", lambda r: pick(r, "direct", "latency", "p50_ms")),
        ("direct p99", lambda r: pick(r, "direct", "latency", "p99_ms")),
        ("+p50", lambda r: (r["overhead"] or [{}])[0].get("latency_p50_ms")),
        ("+p99", lambda r: (r["overhead"] or [{}])[0].get("latency_p99_ms")),
        ("+p99.9", lambda r: (r["overhead"] or [{}])[0].get("latency_p999_ms")),
        ("+ttft p99", lambda r: (r["overhead"] or [{}])[0].get("ttft_p99_ms")),
        ("edge err%", lambda r: 100 * pick(r, "edge", "error_rate")),
        ("edge peak RSS MB", lambda r: next((p["peak_rss_mb"] for p in r["processes"] if p["name"] == "edge"), None)),
        ("lag p99", lambda r: pick(r, "edge", "send_lag", "p99_ms")),
        ("other CPU%", lambda r: r.get("unattributed_cpu_pct")),
    ]
    rows = []
    for i in range(1, n + 1):
        try:
            with open(f"{prefix}-{i}.json") as f:
                rep = json.load(f)
        except (OSError, ValueError) as e:
            print(f"run {i}: {e}")
            continue
        rows.append([c[1](rep) for c in cols])
    fmt = lambda v: "-" if v is None else f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
    print()
    print("run  " + "  ".join(f"{c[0]:>10}" for c in cols))
    for i, r in enumerate(rows, 1):
        print(f"{i:<4} " + "  ".join(f"{fmt(v):>10}" for v in r))
    med = []
    for j in range(len(cols)):
        vals = [r[j] for r in rows if r[j] is not None]
        med.append(statistics.median(vals) if vals else None)
    print("med  " + "  ".join(f"{fmt(v):>10}" for v in med))


if __name__ == "__main__":
    main()
