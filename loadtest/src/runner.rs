//! Executes a scenario: open-loop pacing, fault events, collection.
//!
//! Open loop: a pacing task walks the schedule and, at each slot's intended
//! send time (slept for with a sub-millisecond timer, see [`crate::timer`],
//! not tokio's 1 ms wheel), starts one request task per target. It never
//! waits for answers. Every latency is measured from the slot's
//! *intended* send time, so a late pacer, a busy runtime or a slow server
//! all show up in the numbers (no coordinated omission). When a target
//! already has `max_in_flight` requests outstanding, the request is not
//! sent and is recorded as a `generator_overload` error.

use std::collections::BTreeMap;
use std::io::IsTerminal as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use http::Method;
use parking_lot::Mutex;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use crate::client::{self, ControlClient, Label, PreparedMix, Target};
use crate::procwatch::{self, ProcSeries};
use crate::record::{self, Labels, Record};
use crate::scenario::{FaultEvent, Scenario, TargetMode};
use crate::schedule::{Schedule, Slot};
use crate::timer::PreciseTimer;

/// Histogram bounds: 1 µs .. 1 hour, 3 significant digits.
#[allow(clippy::expect_used)]
pub fn new_histogram() -> Histogram<u64> {
    // Constant, valid bounds (low >= 1, high >= 2 * low, sigfig <= 5).
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// How to run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Show a progress bar (only if stdout is a terminal).
    pub progress: bool,
    /// Extra processes to sample (name, pid), e.g. the edge.
    pub watch: Vec<(String, u32)>,
    /// Set to stop scheduling early (Ctrl-C); in-flight requests get a short grace.
    pub stop: Option<Arc<AtomicBool>>,
}

/// A fault event as it happened.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FaultRecord {
    /// Index in the scenario's `faults`.
    pub event: usize,
    /// The target run it belongs to (sequential mode), or `None` (parallel).
    pub target: Option<usize>,
    pub mock: String,
    pub label: String,
    /// Planned time from the start of the run.
    pub planned_ns: u64,
    /// When the control request was sent / answered.
    pub issued_ns: u64,
    pub acked_ns: u64,
    pub ok: bool,
    pub error: Option<String>,
}

/// Everything a target's run produced.
#[derive(Debug, Clone)]
pub struct TargetData {
    pub name: String,
    pub url: String,
    pub records: Vec<Record>,
    /// Inter-token latency samples of successful streams (µs).
    pub itl: Histogram<u64>,
    /// Scheduled slots that were never sent because the run was stopped.
    pub not_sent: u64,
    /// Wall time of this target's run (sequential mode) or the whole run.
    pub wall: Duration,
}

/// The raw result of a run (see [`crate::report::Report::build`]).
#[derive(Debug, Clone)]
pub struct RunData {
    pub scenario: Scenario,
    pub schedule: Arc<Schedule>,
    pub targets: Vec<TargetData>,
    pub faults: Vec<FaultRecord>,
    /// Outcome labels by id.
    pub labels: Vec<String>,
    pub started_unix: f64,
    pub wall: Duration,
    pub processes: Vec<ProcSeries>,
    pub interrupted: bool,
}

struct TargetCtx {
    target: Target,
    sem: Arc<Semaphore>,
    records: Mutex<Vec<Record>>,
    itl: Mutex<Histogram<u64>>,
    ok: AtomicU64,
    errors: AtomicU64,
    dispatched: AtomicU64,
}

struct Shared {
    schedule: Arc<Schedule>,
    mix: Vec<PreparedMix>,
    prompt: Arc<str>,
    labels: Labels,
    timeout: Duration,
    seed: u64,
    abort: watch::Receiver<bool>,
}

/// Run a scenario (must be valid) and collect the raw data.
pub async fn run(scenario: Scenario, opts: RunOptions) -> anyhow::Result<RunData> {
    scenario.validate()?;
    let schedule = Arc::new(Schedule::build(&scenario));
    let mix = schedule
        .mix
        .iter()
        .map(PreparedMix::new)
        .collect::<anyhow::Result<Vec<_>>>()?;
    let prompt = client::prompt_text(&schedule.mix);
    let labels = Labels::new();

    let targets: Vec<Target> = scenario
        .targets
        .iter()
        .map(|t| Target::new(t, scenario.connect_timeout))
        .collect::<anyhow::Result<_>>()?;
    preflight(&scenario, &targets).await?;

    let control = ControlClient::new(Duration::from_secs(3));
    // Start from a clean slate: no fault active on any mock.
    clear_faults(&scenario, &control).await?;

    let stop = opts.stop.clone().unwrap_or_default();
    let started_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let run_start = Instant::now();

    // Sample the generator itself and any watched processes.
    let (watch_stop_tx, watch_stop_rx) = watch::channel(false);
    let mut procs = vec![
        ("loadtest".to_string(), std::process::id()),
        ("machine".to_string(), procwatch::MACHINE),
    ];
    procs.extend(opts.watch.iter().cloned());
    let groups: Vec<Vec<usize>> = match scenario.mode {
        TargetMode::Parallel => vec![(0..targets.len()).collect()],
        TargetMode::Sequential => (0..targets.len()).map(|i| vec![i]).collect(),
    };
    let max_run = (scenario.duration() + scenario.timeout + Duration::from_secs(10))
        * u32::try_from(groups.len()).unwrap_or(1);
    let watcher = tokio::spawn(procwatch::watch(
        procs,
        Duration::from_millis(250),
        max_run,
        watch_stop_rx,
    ));

    let total_slots = schedule.slots.len() as u64 * targets.len() as u64;
    let bar = progress_bar(opts.progress, total_slots);

    let mut target_slots: Vec<Option<Target>> = targets.into_iter().map(Some).collect();
    let mut out: Vec<Option<TargetData>> = (0..target_slots.len()).map(|_| None).collect();
    let mut faults = Vec::new();
    for group in &groups {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let members: Vec<(usize, Target)> = group
            .iter()
            .filter_map(|&i| target_slots[i].take().map(|t| (i, t)))
            .collect();
        let seq_target = (scenario.mode == TargetMode::Sequential).then(|| group[0]);
        if seq_target.is_some_and(|t| t > 0) {
            // The previous target's run may have ended with a fault active.
            clear_faults(&scenario, &control).await?;
        }
        let (data, f) = run_group(
            &scenario,
            &schedule,
            &mix,
            &prompt,
            &labels,
            members.into_iter().map(|(_, t)| t).collect(),
            seq_target,
            &control,
            &stop,
            &bar,
        )
        .await;
        for (&i, d) in group.iter().zip(data) {
            out[i] = Some(d);
        }
        faults.extend(f);
    }
    bar.finish_and_clear();

    // Leave the mocks healthy.
    for m in scenario.mocks.values() {
        let _ = control
            .call(Method::DELETE, &fault_url(&m.control_url), None)
            .await;
    }
    let _ = watch_stop_tx.send(true);
    let processes = watcher.await.unwrap_or_default();

    let interrupted = stop.load(Ordering::Relaxed);
    let targets: Vec<TargetData> = out
        .into_iter()
        .zip(scenario.targets.iter())
        .map(|(d, spec)| {
            d.unwrap_or_else(|| TargetData {
                name: spec.name.clone(),
                url: spec.url.clone(),
                records: Vec::new(),
                itl: new_histogram(),
                not_sent: schedule.slots.len() as u64,
                wall: Duration::ZERO,
            })
        })
        .collect();
    Ok(RunData {
        scenario,
        schedule,
        targets,
        faults,
        labels: labels.names(),
        started_unix,
        wall: run_start.elapsed(),
        processes,
        interrupted,
    })
}

async fn clear_faults(scenario: &Scenario, control: &ControlClient) -> anyhow::Result<()> {
    for (name, m) in &scenario.mocks {
        control
            .call(Method::DELETE, &fault_url(&m.control_url), None)
            .await
            .map_err(|e| anyhow::anyhow!("mock {name}: control API unreachable: {e}"))?;
    }
    Ok(())
}

fn fault_url(control_url: &str) -> String {
    format!("{}/_mock/fault", control_url.trim_end_matches('/'))
}

/// Every target must accept TCP connections before the run starts.
async fn preflight(scenario: &Scenario, targets: &[Target]) -> anyhow::Result<()> {
    for t in targets {
        let auth = t.authority();
        let r = tokio::time::timeout(
            scenario.connect_timeout,
            tokio::net::TcpStream::connect(auth.as_str()),
        )
        .await;
        match r {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => anyhow::bail!("target {} ({}): cannot connect: {e}", t.name, t.url),
            Err(_) => anyhow::bail!("target {} ({}): connect timed out", t.name, t.url),
        }
    }
    Ok(())
}

fn progress_bar(enabled: bool, total: u64) -> indicatif::ProgressBar {
    if !enabled || !std::io::stdout().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}",
    ) {
        bar.set_style(style);
    }
    bar
}

#[allow(clippy::too_many_arguments)]
async fn run_group(
    scenario: &Scenario,
    schedule: &Arc<Schedule>,
    mix: &[PreparedMix],
    prompt: &Arc<str>,
    labels: &Labels,
    targets: Vec<Target>,
    seq_target: Option<usize>,
    control: &ControlClient,
    stop: &Arc<AtomicBool>,
    bar: &indicatif::ProgressBar,
) -> (Vec<TargetData>, Vec<FaultRecord>) {
    let (abort_tx, abort_rx) = watch::channel(false);
    let shared = Arc::new(Shared {
        schedule: schedule.clone(),
        mix: mix.to_vec(),
        prompt: prompt.clone(),
        labels: labels.clone(),
        timeout: scenario.timeout,
        seed: scenario.seed,
        abort: abort_rx,
    });
    let n_slots = schedule.slots.len();
    let ctxs: Vec<Arc<TargetCtx>> = targets
        .into_iter()
        .map(|target| {
            Arc::new(TargetCtx {
                target,
                sem: Arc::new(Semaphore::new(scenario.max_in_flight)),
                records: Mutex::new(Vec::with_capacity(n_slots)),
                itl: Mutex::new(new_histogram()),
                ok: AtomicU64::new(0),
                errors: AtomicU64::new(0),
                dispatched: AtomicU64::new(0),
            })
        })
        .collect();

    // A short lead so the pacer thread and the fault task are ready.
    let start = Instant::now() + Duration::from_millis(20);
    let group_started = Instant::now();

    // Fault events.
    let (faults_stop_tx, faults_stop_rx) = watch::channel(false);
    let events: Vec<(usize, FaultEvent)> = scenario.faults.iter().cloned().enumerate().collect();
    let mocks: BTreeMap<String, String> = scenario
        .mocks
        .iter()
        .map(|(k, v)| (k.clone(), v.control_url.clone()))
        .collect();
    let fault_task = tokio::spawn(run_faults(
        events,
        mocks,
        start,
        control.clone(),
        seq_target,
        faults_stop_rx,
    ));

    // Progress.
    let (prog_stop_tx, mut prog_stop_rx) = watch::channel(false);
    let prog_task = {
        let ctxs = ctxs.clone();
        let bar = bar.clone();
        let names: Vec<String> = ctxs.iter().map(|c| c.target.name.clone()).collect();
        let base = bar.position();
        let max = scenario.max_in_flight;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                let mut pos = 0;
                let mut msg = String::new();
                for (c, n) in ctxs.iter().zip(&names) {
                    pos += c.dispatched.load(Ordering::Relaxed);
                    let inflight = max.saturating_sub(c.sem.available_permits());
                    msg.push_str(&format!(
                        "{n}: ok {} err {} in-flight {inflight}  ",
                        c.ok.load(Ordering::Relaxed),
                        c.errors.load(Ordering::Relaxed)
                    ));
                }
                bar.set_position(base + pos);
                bar.set_message(msg);
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = prog_stop_rx.changed() => break,
                }
            }
        })
    };

    // The pacer is a task on the runtime with a sub-millisecond timer.
    let pacer = {
        let ctxs = ctxs.clone();
        let shared = shared.clone();
        let stop = stop.clone();
        tokio::spawn(async move { pace(&shared, &ctxs, start, &stop).await })
    };
    let sent_until = pacer.await.unwrap_or(0);
    let _ = faults_stop_tx.send(true);

    // Drain: wait for in-flight requests, bounded in time.
    let interrupted = stop.load(Ordering::Relaxed);
    let deadline = if interrupted {
        Instant::now() + Duration::from_secs(2)
    } else {
        Instant::now() + scenario.timeout + Duration::from_secs(2)
    };
    for c in &ctxs {
        let max = scenario.max_in_flight as u32;
        let r =
            tokio::time::timeout_at(deadline.into(), c.sem.clone().acquire_many_owned(max)).await;
        if let Ok(Ok(p)) = r {
            drop(p);
        }
    }
    let _ = abort_tx.send(true);
    // Aborted tasks record themselves promptly.
    for c in &ctxs {
        let max = scenario.max_in_flight as u32;
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            c.sem.clone().acquire_many_owned(max),
        )
        .await;
    }
    let fault_records = fault_task.await.unwrap_or_default();
    let _ = prog_stop_tx.send(true);
    let _ = prog_task.await;

    let wall = group_started.elapsed();
    let data = ctxs
        .into_iter()
        .map(|c| {
            let records = std::mem::take(&mut *c.records.lock());
            let itl = std::mem::replace(&mut *c.itl.lock(), new_histogram());
            TargetData {
                name: c.target.name.clone(),
                url: c.target.url.clone(),
                records,
                itl,
                not_sent: (n_slots - sent_until.min(n_slots)) as u64,
                wall,
            }
        })
        .collect();
    (data, fault_records)
}

/// Walk the schedule; returns how many slots were dispatched.
async fn pace(
    shared: &Arc<Shared>,
    ctxs: &[Arc<TargetCtx>],
    start: Instant,
    stop: &AtomicBool,
) -> usize {
    let n = ctxs.len();
    let slots = &shared.schedule.slots;
    let mut timer = PreciseTimer::new();
    for (i, slot) in slots.iter().enumerate() {
        let due = start + Duration::from_nanos(slot.at_ns);
        // Wake at least every 50 ms to notice `stop`.
        loop {
            if stop.load(Ordering::Relaxed) {
                return i;
            }
            let now = Instant::now();
            if now >= due {
                break;
            }
            let until = due.min(now + Duration::from_millis(50));
            if timer.sleep_until(until).await.is_err() {
                tokio::time::sleep_until(until.into()).await;
            }
        }
        // Alternate which target goes first so neither is favoured.
        for j in 0..n {
            let c = &ctxs[(i + j) % n];
            c.dispatched.fetch_add(1, Ordering::Relaxed);
            match c.sem.clone().try_acquire_owned() {
                Ok(permit) => {
                    tokio::spawn(request_task(
                        c.clone(),
                        shared.clone(),
                        i as u64,
                        *slot,
                        due,
                        permit,
                    ));
                }
                Err(_) => {
                    let now = Instant::now();
                    let lag = now.saturating_duration_since(due).as_nanos() as u64;
                    c.errors.fetch_add(1, Ordering::Relaxed);
                    c.records.lock().push(Record {
                        intended_ns: slot.at_ns,
                        latency_ns: lag,
                        ttft_ns: None,
                        send_lag_ns: lag,
                        outcome: record::GENERATOR_OVERLOAD,
                        status: 0,
                        phase: slot.phase,
                        mix: slot.mix,
                        stream: shared.mix[slot.mix as usize].stream,
                        input_tokens: 0,
                        output_tokens: 0,
                    });
                }
            }
        }
    }
    slots.len()
}

async fn request_task(
    ctx: Arc<TargetCtx>,
    shared: Arc<Shared>,
    index: u64,
    slot: Slot,
    due: Instant,
    permit: OwnedSemaphorePermit,
) {
    let began = Instant::now();
    let send_lag = began.saturating_duration_since(due);
    let mix = &shared.mix[slot.mix as usize];
    let mut abort = shared.abort.clone();
    let outcome = tokio::select! {
        o = client::execute(&ctx.target, mix, &shared.prompt, shared.seed, index, shared.timeout) => Some(o),
        _ = abort.wait_for(|v| *v) => None,
    };
    let (outcome_id, o) = match outcome {
        Some(o) => {
            let id = match &o.label {
                Label::Fixed(id) => *id,
                Label::Named(s) => shared.labels.intern(s),
            };
            (id, Some(o))
        }
        None => (record::ABORTED, None),
    };
    let end = o.as_ref().map_or_else(Instant::now, |o| o.end);
    let since = |t: Instant| t.saturating_duration_since(due).as_nanos() as u64;
    let rec = Record {
        intended_ns: slot.at_ns,
        latency_ns: since(end),
        ttft_ns: o.as_ref().and_then(|o| o.first_token).map(since),
        send_lag_ns: send_lag.as_nanos() as u64,
        outcome: outcome_id,
        status: o.as_ref().map_or(0, |o| o.status),
        phase: slot.phase,
        mix: slot.mix,
        stream: mix.stream,
        input_tokens: o.as_ref().map_or(0, |o| o.input_tokens),
        output_tokens: o.as_ref().map_or(0, |o| o.output_tokens),
    };
    if outcome_id == record::OK {
        ctx.ok.fetch_add(1, Ordering::Relaxed);
        let warmup = shared
            .schedule
            .phases
            .get(slot.phase as usize)
            .is_some_and(|p| p.warmup);
        if let Some(o) = o.as_ref().filter(|_| !warmup) {
            if !o.itl.is_empty() {
                let mut h = ctx.itl.lock();
                let hi = h.high();
                for &(v, n) in &o.itl {
                    let _ = h.record_n(v.clamp(1, hi), n);
                }
            }
        }
    } else {
        ctx.errors.fetch_add(1, Ordering::Relaxed);
    }
    ctx.records.lock().push(rec);
    drop(permit);
}

async fn run_faults(
    events: Vec<(usize, FaultEvent)>,
    mocks: BTreeMap<String, String>,
    start: Instant,
    control: ControlClient,
    seq_target: Option<usize>,
    mut stop: watch::Receiver<bool>,
) -> Vec<FaultRecord> {
    let mut events = events;
    events.sort_by_key(|(i, e)| (e.at, *i));
    let mut out = Vec::with_capacity(events.len());
    for (i, ev) in events {
        let due = start + ev.at;
        tokio::select! {
            _ = tokio::time::sleep_until(due.into()) => {}
            _ = stop.wait_for(|v| *v) => {
                // The pacer finished: only events due by now still fire.
                if Instant::now() < due {
                    break;
                }
            }
        }
        let Some(url) = mocks.get(&ev.mock) else {
            continue;
        };
        let url = fault_url(url);
        let issued = Instant::now();
        let r = match ev.body() {
            Some(body) => control.call(Method::POST, &url, Some(body)).await,
            None => control.call(Method::DELETE, &url, None).await,
        };
        let acked = Instant::now();
        let ns = |t: Instant| t.saturating_duration_since(start).as_nanos() as u64;
        out.push(FaultRecord {
            event: i,
            target: seq_target,
            mock: ev.mock.clone(),
            label: ev.label(),
            planned_ns: ev.at.as_nanos() as u64,
            issued_ns: ns(issued),
            acked_ns: ns(acked),
            ok: r.is_ok(),
            error: r.err(),
        });
    }
    out
}
