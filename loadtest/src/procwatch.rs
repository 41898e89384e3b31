//! Samples processes' memory (RSS) and CPU time from `/proc` during a run
//! (Linux only; elsewhere the samples are empty).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::Serialize;

/// One sample.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ProcSample {
    /// Seconds from the start of sampling.
    pub t: f64,
    pub rss_bytes: u64,
    /// User + system CPU seconds since the process started.
    pub cpu_seconds: f64,
}

/// The samples of one watched process.
#[derive(Debug, Clone, Serialize)]
pub struct ProcSeries {
    pub name: String,
    pub pid: u32,
    pub samples: Vec<ProcSample>,
}

impl ProcSeries {
    pub fn peak_rss(&self) -> u64 {
        self.samples.iter().map(|s| s.rss_bytes).max().unwrap_or(0)
    }

    /// CPU seconds used between the first and last sample.
    pub fn cpu_used(&self) -> f64 {
        match (self.samples.first(), self.samples.last()) {
            (Some(a), Some(b)) => (b.cpu_seconds - a.cpu_seconds).max(0.0),
            _ => 0.0,
        }
    }

    /// Seconds between the first and last sample.
    pub fn span(&self) -> f64 {
        match (self.samples.first(), self.samples.last()) {
            (Some(a), Some(b)) => b.t - a.t,
            _ => 0.0,
        }
    }
}

/// Clock ticks per second used by `/proc/PID/stat` (USER_HZ; 100 on Linux).
const USER_HZ: f64 = 100.0;

/// The pseudo-pid that samples the whole machine: the CPU time of every
/// process (summed from `/proc/PID/stat`, which is precise per task; the
/// tick-sampled totals in `/proc/stat` miss short bursts on tickless kernels)
/// and used memory (MemTotal - MemAvailable). Comparing it with the watched
/// processes shows interference from anything else.
pub const MACHINE: u32 = 0;

/// CPU seconds (user + system) of one process from `/proc/PID/stat`.
fn process_cpu(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) in parens.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace();
    // rest[0] is field 3 (state); utime = field 14, stime = field 15.
    let utime: f64 = f.nth(11)?.parse().ok()?;
    let stime: f64 = f.next()?.parse().ok()?;
    Some((utime + stime) / USER_HZ)
}

/// Running total of all processes' CPU time: per process deltas between
/// samples (a process seen for the first time adds its whole CPU time, so
/// one that starts and finishes between samples is missed).
#[derive(Debug, Default)]
struct MachineCpu {
    last: HashMap<u32, f64>,
    total: f64,
    primed: bool,
}

impl MachineCpu {
    fn sample(&mut self) -> Option<(u64, f64)> {
        let mut now = HashMap::with_capacity(self.last.len() + 16);
        for e in std::fs::read_dir("/proc").ok()?.flatten() {
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            let Ok(pid) = name.parse::<u32>() else {
                continue;
            };
            if let Some(cpu) = process_cpu(name) {
                if self.primed {
                    self.total += (cpu - self.last.get(&pid).copied().unwrap_or(0.0)).max(0.0);
                }
                now.insert(pid, cpu);
            }
        }
        self.last = now;
        self.primed = true;
        let mem = std::fs::read_to_string("/proc/meminfo").ok()?;
        let kb = |key: &str| -> Option<u64> {
            mem.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|x| x.split_whitespace().next())
                .and_then(|x| x.parse().ok())
        };
        let used = kb("MemTotal:")?.saturating_sub(kb("MemAvailable:")?);
        Some((used * 1024, self.total))
    }
}

/// Read one sample of `pid` (None if it is gone or `/proc` is missing).
pub fn sample(pid: u32) -> Option<(u64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())?;
    Some((rss_kb * 1024, process_cpu(&pid.to_string())?))
}

/// Sample `procs` every `every` until `stop` fires (bounded by `max`).
pub async fn watch(
    procs: Vec<(String, u32)>,
    every: Duration,
    max: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<ProcSeries> {
    let start = Instant::now();
    let mut series: Vec<ProcSeries> = procs
        .into_iter()
        .map(|(name, pid)| ProcSeries {
            name,
            pid,
            samples: Vec::new(),
        })
        .collect();
    let mut machine = MachineCpu::default();
    let mut take = |series: &mut Vec<ProcSeries>| {
        let t = start.elapsed().as_secs_f64();
        for s in series.iter_mut() {
            let v = if s.pid == MACHINE {
                machine.sample()
            } else {
                sample(s.pid)
            };
            if let Some((rss, cpu)) = v {
                s.samples.push(ProcSample {
                    t,
                    rss_bytes: rss,
                    cpu_seconds: cpu,
                });
            }
        }
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        take(&mut series);
        if *stop.borrow() || start.elapsed() > max {
            break;
        }
        tokio::select! {
            _ = tick.tick() => {}
            r = stop.changed() => {
                if r.is_err() {
                    break;
                }
            }
        }
    }
    // One last sample so the CPU totals cover the whole run.
    take(&mut series);
    series
}
