//! Phases -> a deterministic schedule of intended send times.
//!
//! Every phase is a piecewise-linear rate curve (constant, ramp, or constant
//! with a spike). The k-th request is due when the integral of the rate
//! (the expected request count) reaches `k` (uniform arrivals) or the k-th
//! point of a unit-rate Poisson process (poisson arrivals: time rescaling of
//! a non-homogeneous Poisson process). The count carries over phase
//! boundaries, so a schedule has no gaps or doubled requests where phases
//! meet. The same seed gives the same schedule, request mix and sizes.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::scenario::{Arrival, MixEntry, Phase, Scenario};

/// One scheduled request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// Intended send time from the start of the run, in nanoseconds.
    pub at_ns: u64,
    /// Phase index.
    pub phase: u16,
    /// Index into [`Schedule::mix`].
    pub mix: u16,
}

/// Phase boundaries as laid out in the schedule.
#[derive(Debug, Clone)]
pub struct PhaseInfo {
    pub name: String,
    pub start: Duration,
    pub end: Duration,
    pub warmup: bool,
}

/// The whole run, ready to pace.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub slots: Vec<Slot>,
    /// All mix entries (the scenario's mix followed by every phase's own).
    pub mix: Vec<MixEntry>,
    pub phases: Vec<PhaseInfo>,
    pub duration: Duration,
    pub seed: u64,
}

/// A linear piece of the rate curve: from `start` for `len` seconds, rate
/// going from `r0` to `r1`.
#[derive(Debug, Clone, Copy)]
struct Segment {
    start: f64,
    len: f64,
    r0: f64,
    r1: f64,
}

fn segments(p: &Phase, start: f64) -> Vec<Segment> {
    let d = p.duration.as_secs_f64();
    if let Some(r1) = p.ramp_to {
        return vec![Segment {
            start,
            len: d,
            r0: p.rate,
            r1,
        }];
    }
    if let Some(s) = &p.spike {
        let a = s.at.as_secs_f64();
        let l = s.duration.as_secs_f64();
        let mut v = Vec::with_capacity(3);
        let mut push = |st: f64, len: f64, r: f64| {
            if len > 0.0 {
                v.push(Segment {
                    start: st,
                    len,
                    r0: r,
                    r1: r,
                });
            }
        };
        push(start, a, p.rate);
        push(start + a, l, s.rate);
        push(start + a + l, d - a - l, p.rate);
        return v;
    }
    vec![Segment {
        start,
        len: d,
        r0: p.rate,
        r1: p.rate,
    }]
}

/// Time into a segment at which the cumulative count (from the segment
/// start) reaches `x`: solves `r0*t + (r1-r0)/(2*len)*t^2 = x` in a
/// numerically stable form (works for ramps up and down and constants).
fn solve(seg: &Segment, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    let a = (seg.r1 - seg.r0) / (2.0 * seg.len);
    let b = seg.r0;
    let disc = (b * b + 4.0 * a * x).max(0.0);
    let denom = b + disc.sqrt();
    if denom <= 0.0 {
        return seg.len;
    }
    (2.0 * x / denom).clamp(0.0, seg.len)
}

/// SplitMix64: a cheap, good 64-bit mix used for per-request draws.
pub fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Deterministic draw from an inclusive range for request `index`.
pub fn draw(range: &std::ops::RangeInclusive<u32>, seed: u64, index: u64, salt: u64) -> u32 {
    let (lo, hi) = (*range.start(), *range.end());
    if lo >= hi {
        return lo;
    }
    let span = u64::from(hi - lo) + 1;
    let r = splitmix64(seed ^ splitmix64(index.wrapping_mul(31).wrapping_add(salt)));
    lo + (r % span) as u32
}

impl Schedule {
    /// Lay out the scenario's phases. The scenario must be valid.
    pub fn build(scenario: &Scenario) -> Schedule {
        let mut rng = StdRng::seed_from_u64(scenario.seed);
        let mut mix: Vec<MixEntry> = scenario.mix.clone();
        let global_mix = 0..mix.len();
        let expected = scenario.expected_requests().ceil().max(0.0) as usize;
        let mut slots = Vec::with_capacity(expected.saturating_add(16));
        let mut phases = Vec::with_capacity(scenario.phases.len());

        let exp1 = |rng: &mut StdRng| -> f64 {
            let u: f64 = rng.random();
            -(1.0 - u).ln()
        };

        // Cumulative expected count so far, and the level of the next arrival.
        let mut cum = 0.0f64;
        let mut next = match scenario.arrival {
            Arrival::Uniform => 0.0,
            Arrival::Poisson => exp1(&mut rng),
        };
        let mut t0 = 0.0f64;
        for (pi, p) in scenario.phases.iter().enumerate() {
            let range = match &p.mix {
                Some(own) => {
                    let s = mix.len();
                    mix.extend(own.iter().cloned());
                    s..mix.len()
                }
                None => global_mix.clone(),
            };
            let cumw: Vec<u64> = mix[range.clone()]
                .iter()
                .scan(0u64, |acc, m| {
                    *acc += u64::from(m.weight);
                    Some(*acc)
                })
                .collect();
            let total_w = cumw.last().copied().unwrap_or(1).max(1);
            for seg in segments(p, t0) {
                let seg_count = (seg.r0 + seg.r1) / 2.0 * seg.len;
                let end = cum + seg_count;
                while next < end && slots.len() < crate::scenario::MAX_REQUESTS as usize {
                    let t = seg.start + solve(&seg, next - cum);
                    let w = rng.random_range(0..total_w);
                    let k = cumw.partition_point(|&c| c <= w);
                    slots.push(Slot {
                        at_ns: (t * 1e9).round() as u64,
                        phase: pi as u16,
                        mix: (range.start + k) as u16,
                    });
                    next += match scenario.arrival {
                        Arrival::Uniform => 1.0,
                        Arrival::Poisson => exp1(&mut rng),
                    };
                }
                cum = end;
            }
            let start = Duration::from_secs_f64(t0);
            t0 += p.duration.as_secs_f64();
            phases.push(PhaseInfo {
                name: p
                    .name
                    .clone()
                    .unwrap_or_else(|| format!("phase {}", pi + 1)),
                start,
                end: start + p.duration,
                warmup: p.warmup,
            });
        }
        // Rounding can only reorder within a nanosecond; keep it monotone.
        let mut last = 0;
        for s in &mut slots {
            if s.at_ns < last {
                s.at_ns = last;
            }
            last = s.at_ns;
        }
        Schedule {
            slots,
            mix,
            phases,
            duration: scenario.duration(),
            seed: scenario.seed,
        }
    }
}
