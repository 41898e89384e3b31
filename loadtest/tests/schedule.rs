//! Phases -> intended send times.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use switchyard_loadtest::scenario::Scenario;
use switchyard_loadtest::schedule::Schedule;

fn sched(phases: &str, extra: &str) -> Schedule {
    let yaml = format!(
        "targets: [{{name: direct, url: \"http://127.0.0.1:1\"}}]\nphases:\n{phases}\nmix:\n  - {{model: a, weight: 3}}\n  - {{model: b, weight: 1}}\n{extra}"
    );
    Schedule::build(&Scenario::from_yaml_with_env(&yaml, |_| None).unwrap())
}

fn times_s(s: &Schedule) -> Vec<f64> {
    s.slots.iter().map(|x| x.at_ns as f64 / 1e9).collect()
}

#[test]
fn constant_rate_is_evenly_spaced() {
    let s = sched("  - {duration: 2s, rate: 100}", "");
    let t = times_s(&s);
    assert_eq!(t.len(), 200);
    for (i, v) in t.iter().enumerate() {
        assert!((v - i as f64 * 0.01).abs() < 1e-6, "slot {i} at {v}");
    }
    assert_eq!(s.duration.as_secs(), 2);
}

#[test]
fn phases_join_without_gaps_or_doubles() {
    let s = sched(
        "  - {duration: 1s, rate: 10}\n  - {duration: 1s, rate: 20}\n  - {duration: 500ms, rate: 0}\n  - {duration: 1s, rate: 4}",
        "",
    );
    let t = times_s(&s);
    assert_eq!(t.len(), 10 + 20 + 4, "nothing in the idle phase");
    assert!(t.windows(2).all(|w| w[1] > w[0]), "strictly increasing");
    let phase1: Vec<_> = s.slots.iter().filter(|x| x.phase == 1).collect();
    assert_eq!(phase1.len(), 20);
    assert!((phase1[0].at_ns as f64 / 1e9 - 1.0).abs() < 1e-6);
    let last: Vec<_> = s.slots.iter().filter(|x| x.phase == 3).collect();
    assert!(
        (last[0].at_ns as f64 / 1e9 - 2.5).abs() < 1e-6,
        "nothing during the idle phase"
    );
    assert!((s.phases[3].start.as_secs_f64() - 2.5).abs() < 1e-9);
}

#[test]
fn ramp_follows_the_integral() {
    // 0 -> 200 req/s over 10 s: 1000 requests; count by time t is 10 t^2.
    let s = sched("  - {duration: 10s, rate: 0, ramp_to: 200}", "");
    let t = times_s(&s);
    assert_eq!(t.len(), 1000);
    for (k, v) in t.iter().enumerate() {
        let expect = (k as f64 / 10.0).sqrt();
        assert!((v - expect).abs() < 1e-6, "slot {k}: {v} vs {expect}");
    }
    // Down-ramp 200 -> 0: same count, denser at the start.
    let s = sched("  - {duration: 10s, rate: 200, ramp_to: 0}", "");
    let t = times_s(&s);
    assert_eq!(t.len(), 1000);
    let first_half = t.iter().filter(|&&v| v < 5.0).count();
    assert_eq!(first_half, 750);
}

#[test]
fn spike_inside_a_phase() {
    let s = sched(
        "  - {duration: 10s, rate: 10, spike: {rate: 1000, at: 4s, duration: 1s}}",
        "",
    );
    let t = times_s(&s);
    assert_eq!(t.len(), 90 + 1000);
    let in_spike = t.iter().filter(|&&v| (4.0..5.0).contains(&v)).count();
    assert_eq!(in_spike, 1000);
    let before = t.iter().filter(|&&v| v < 4.0).count();
    assert_eq!(before, 40);
}

#[test]
fn poisson_is_seeded_and_has_the_right_mean() {
    let a = sched(
        "  - {duration: 100s, rate: 100}",
        "arrival: poisson\nseed: 42\n",
    );
    let b = sched(
        "  - {duration: 100s, rate: 100}",
        "arrival: poisson\nseed: 42\n",
    );
    let c = sched(
        "  - {duration: 100s, rate: 100}",
        "arrival: poisson\nseed: 43\n",
    );
    assert_eq!(a.slots, b.slots, "same seed, same schedule");
    assert_ne!(a.slots, c.slots);
    let n = a.slots.len() as f64;
    assert!((n - 10_000.0).abs() < 400.0, "about rate x duration: {n}");
    // Exponential gaps: coefficient of variation close to 1.
    let t = times_s(&a);
    let gaps: Vec<f64> = t.windows(2).map(|w| w[1] - w[0]).collect();
    let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
    let var = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / gaps.len() as f64;
    let cv = var.sqrt() / mean;
    assert!((cv - 1.0).abs() < 0.05, "cv {cv}");
}

#[test]
fn mix_follows_weights_and_phase_mixes() {
    let s = sched(
        "  - {duration: 100s, rate: 100}\n  - {duration: 1s, rate: 10, mix: [{model: c}]}",
        "seed: 1\n",
    );
    let phase0: Vec<_> = s.slots.iter().filter(|x| x.phase == 0).collect();
    let a = phase0
        .iter()
        .filter(|x| s.mix[x.mix as usize].model == "a")
        .count() as f64;
    let frac = a / phase0.len() as f64;
    assert!((frac - 0.75).abs() < 0.02, "weight 3:1 -> {frac}");
    assert!(s
        .slots
        .iter()
        .filter(|x| x.phase == 1)
        .all(|x| s.mix[x.mix as usize].model == "c"));
}
