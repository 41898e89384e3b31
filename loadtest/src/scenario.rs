//! Scenario files: the YAML format `switchyard-loadtest run` reads.
//!
//! Loading is strict: unknown fields are rejected, durations are humantime
//! strings (`250ms`, `10s`, `1m`), and every error names the field it is
//! about (`phases[1].duration: invalid duration ...`). Strings may reference
//! environment variables as `${NAME}` or `${NAME:-default}`; a string that is
//! exactly one `${...}` is re-read as a YAML scalar, so `rate: ${RATE}` gives
//! a number. See `docs/loadtest.md` for the whole format.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::RangeInclusive;
use std::path::Path;
use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_yaml::Value;

use crate::cli::parse_token_range;
use crate::mock::parse_fault;

/// Largest schedule a scenario may produce (all phases, per target).
pub const MAX_REQUESTS: u64 = 10_000_000;
/// Largest prompt a mix entry may ask for (tokens; about 4 characters each).
pub const MAX_PROMPT_TOKENS: u32 = 200_000;

/// A scenario-loading error; `Display` starts with the field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScenarioError {
    /// Field path such as `phases[0].duration` (empty for document-level errors).
    pub path: String,
    pub message: String,
}

impl ScenarioError {
    fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() || self.path == "." {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for ScenarioError {}

/// A whole scenario.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name shown in reports (default: the file name without extension).
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Systems under test, each driven with the same schedule and mix.
    pub targets: Vec<TargetSpec>,
    /// Target the others are compared against for overhead (e.g. the mock
    /// called directly). Default: a target named `direct`, if any.
    #[serde(default)]
    pub baseline: Option<String>,
    /// `parallel` (default): every target gets the schedule at the same time,
    /// interleaved. `sequential`: one target after the other (faults replay
    /// for each).
    #[serde(default)]
    pub mode: TargetMode,
    /// `uniform` (default, evenly spaced) or `poisson` (seeded).
    #[serde(default)]
    pub arrival: Arrival,
    /// Seed for arrivals (poisson), the mix draw and size ranges.
    #[serde(default)]
    pub seed: u64,
    /// Cap on in-flight requests per target; a request that would exceed it
    /// is not sent and counts as a `generator_overload` error.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Per-request deadline (from the moment it is sent).
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// TCP connect timeout.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Load phases, run back to back.
    pub phases: Vec<Phase>,
    /// Request mix used by phases that do not set their own.
    pub mix: Vec<MixEntry>,
    /// Mock providers that fault events steer, by name.
    #[serde(default)]
    pub mocks: BTreeMap<String, MockSpec>,
    /// Fault events at given times from the start of the run.
    #[serde(default)]
    pub faults: Vec<FaultEvent>,
    /// SLO assertions by target name; any failure makes the exit code 1.
    #[serde(default)]
    pub slo: BTreeMap<String, Slo>,
    /// USD per million tokens by the model name used in the mix.
    #[serde(default)]
    pub prices: BTreeMap<String, Price>,
}

fn default_max_in_flight() -> usize {
    5000
}
fn default_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(2)
}

/// How several targets share the schedule.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetMode {
    #[default]
    Parallel,
    Sequential,
}

/// Arrival process within the rate schedule.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Arrival {
    #[default]
    Uniform,
    Poisson,
}

/// A system under test.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSpec {
    pub name: String,
    /// Base URL, e.g. `http://127.0.0.1:8080` (a trailing `/v1` is accepted).
    pub url: String,
    /// Model renames for this target: mix model -> model sent.
    #[serde(default)]
    pub models: BTreeMap<String, String>,
    /// Extra headers sent to this target only.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// One load phase.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Phase {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
    /// Requests per second (at the start of the phase for a ramp).
    pub rate: f64,
    /// Linear ramp from `rate` to this rate over the phase.
    #[serde(default)]
    pub ramp_to: Option<f64>,
    /// A burst inside the phase.
    #[serde(default)]
    pub spike: Option<Spike>,
    /// Traffic is sent but left out of the report (connection set-up etc.).
    #[serde(default)]
    pub warmup: bool,
    /// Request mix for this phase only.
    #[serde(default)]
    pub mix: Option<Vec<MixEntry>>,
}

/// `spike: {rate: 2000, at: 5s, duration: 2s}`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Spike {
    pub rate: f64,
    #[serde(with = "humantime_serde")]
    pub at: Duration,
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
}

/// API shape of a request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Api {
    #[default]
    Openai,
    Anthropic,
}

impl Api {
    pub fn path(self) -> &'static str {
        match self {
            Api::Openai => "/v1/chat/completions",
            Api::Anthropic => "/v1/messages",
        }
    }
}

/// How the key is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthStyle {
    /// `Authorization: Bearer KEY`
    Bearer,
    /// `x-api-key: KEY`
    XApiKey,
}

/// One kind of request in the mix.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MixEntry {
    /// Label in reports (default: `api/model[/stream]`).
    #[serde(default)]
    pub name: Option<String>,
    /// Relative weight (default 1).
    #[serde(default = "one")]
    pub weight: u32,
    #[serde(default)]
    pub api: Api,
    #[serde(default)]
    pub stream: bool,
    pub model: String,
    /// Prompt size in tokens (about 4 characters each): `N`, `A..B` or `A..=B`.
    #[serde(default = "default_prompt")]
    pub prompt_tokens: TokenRange,
    /// `max_tokens` sent: `N`, `A..B` or `A..=B`.
    #[serde(default = "default_max_tokens")]
    pub max_tokens: TokenRange,
    /// API key (virtual key of the gateway); empty = none.
    #[serde(default)]
    pub key: Option<String>,
    /// How the key is sent; default `bearer` for openai, `x-api-key` for anthropic.
    #[serde(default)]
    pub auth: Option<AuthStyle>,
    /// Feature tag, sent as `x-switchyard-feature`; empty = none.
    #[serde(default)]
    pub feature: Option<String>,
    /// Extra request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

fn one() -> u32 {
    1
}
fn default_prompt() -> TokenRange {
    TokenRange(16..=16)
}
fn default_max_tokens() -> TokenRange {
    TokenRange(64..=64)
}

impl MixEntry {
    /// The label used in reports.
    pub fn label(&self) -> String {
        if let Some(n) = &self.name {
            return n.clone();
        }
        let api = match self.api {
            Api::Openai => "openai",
            Api::Anthropic => "anthropic",
        };
        if self.stream {
            format!("{api}/{}/stream", self.model)
        } else {
            format!("{api}/{}", self.model)
        }
    }

    pub fn auth_style(&self) -> AuthStyle {
        self.auth.unwrap_or(match self.api {
            Api::Openai => AuthStyle::Bearer,
            Api::Anthropic => AuthStyle::XApiKey,
        })
    }
}

/// An inclusive token-count range, written `N`, `A..B` or `A..=B`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRange(pub RangeInclusive<u32>);

impl Serialize for TokenRange {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0.start() == self.0.end() {
            s.serialize_u32(*self.0.start())
        } else {
            s.serialize_str(&format!("{}..={}", self.0.start(), self.0.end()))
        }
    }
}

impl<'de> Deserialize<'de> for TokenRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = TokenRange;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a token count N, or a range A..B / A..=B")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<TokenRange, E> {
                let n = u32::try_from(v).map_err(|_| E::custom("token count too large"))?;
                Ok(TokenRange(n..=n))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<TokenRange, E> {
                let v = u64::try_from(v).map_err(|_| E::custom("token count must be >= 0"))?;
                self.visit_u64(v)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<TokenRange, E> {
                parse_token_range(v).map(TokenRange).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// A mock provider steered by fault events.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MockSpec {
    /// The mock's control URL (`--control-listen`), e.g. `http://127.0.0.1:9200`.
    /// The main URL works too, except that it cannot undo a `refuse`.
    pub control_url: String,
}

/// A fault event.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FaultEvent {
    /// Time from the start of the run (of each target's run in sequential mode).
    #[serde(with = "humantime_serde")]
    pub at: Duration,
    /// Name of a mock in `mocks`.
    pub mock: String,
    /// Fault to set: the short form (`refuse`, `status=503`, `hang`, `kill`
    /// = `refuse`) or a mapping in the mock's JSON form (`{kind: status,
    /// status: 429, retry_after: "1"}`).
    #[serde(default)]
    pub set: Option<serde_json::Value>,
    /// Clear the mock's fault (brings a refused/killed mock back).
    #[serde(default)]
    pub clear: bool,
    /// Label in reports (default: `MOCK: set FAULT` / `MOCK: clear`).
    #[serde(default)]
    pub label: Option<String>,
}

impl FaultEvent {
    /// The body POSTed to `/_mock/fault`, or `None` for `clear`.
    pub fn body(&self) -> Option<String> {
        match &self.set {
            None => None,
            Some(serde_json::Value::String(s)) => {
                let t = s.trim();
                Some(if t.eq_ignore_ascii_case("kill") {
                    "refuse".to_string()
                } else if let Some(rest) =
                    t.strip_prefix("kill=").or_else(|| t.strip_prefix("kill:"))
                {
                    format!("refuse={rest}")
                } else {
                    t.to_string()
                })
            }
            Some(v) => Some(v.to_string()),
        }
    }

    pub fn label(&self) -> String {
        if let Some(l) = &self.label {
            return l.clone();
        }
        match self.body() {
            Some(b) => format!("{}: {}", self.mock, b),
            None => format!("{}: clear", self.mock),
        }
    }
}

/// SLO assertions for one target. Latencies are over successful requests.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Slo {
    #[serde(default, with = "humantime_serde::option")]
    pub p50_latency: Option<Duration>,
    #[serde(default, with = "humantime_serde::option")]
    pub p90_latency: Option<Duration>,
    #[serde(default, with = "humantime_serde::option")]
    pub p99_latency: Option<Duration>,
    #[serde(default, with = "humantime_serde::option")]
    pub p999_latency: Option<Duration>,
    #[serde(default, with = "humantime_serde::option")]
    pub p50_ttft: Option<Duration>,
    #[serde(default, with = "humantime_serde::option")]
    pub p99_ttft: Option<Duration>,
    #[serde(default, with = "humantime_serde::option")]
    pub p99_itl: Option<Duration>,
    /// Largest error rate (fraction, 0.01 = 1%), counting every error type
    /// except those in `allowed_errors`.
    #[serde(default)]
    pub error_rate: Option<f64>,
    /// Error types (`http_429:budget_exceeded`, `http_429`, ...) the error
    /// rate ignores; `http_429` also covers `http_429:<code>`.
    #[serde(default)]
    pub allowed_errors: Vec<String>,
    /// Largest failover time over all fault events (see docs/loadtest.md).
    #[serde(default, with = "humantime_serde::option")]
    pub failover_time: Option<Duration>,
    /// Smallest throughput of successful requests (req/s).
    #[serde(default)]
    pub min_throughput: Option<f64>,
    /// Largest added p99 latency over the baseline target.
    #[serde(default, with = "humantime_serde::option")]
    pub p99_overhead: Option<Duration>,
}

/// USD per million tokens.
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
}

impl Scenario {
    /// Read and validate a scenario file; `${NAME}` expands from the process
    /// environment. The name defaults to the file stem.
    pub fn load(path: &Path) -> anyhow::Result<Scenario> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        let mut s = Scenario::from_yaml_with_env(&text, |k| std::env::var(k).ok())
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        if s.name.is_empty() {
            s.name = path
                .file_stem()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
        }
        Ok(s)
    }

    /// Parse and validate, expanding `${NAME}` through `env`.
    pub fn from_yaml_with_env(
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Scenario, ScenarioError> {
        let mut value: Value =
            serde_yaml::from_str(text).map_err(|e| ScenarioError::new("", e.to_string()))?;
        expand_value(&mut value, &mut String::new(), &env)?;
        let scenario: Scenario = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            ScenarioError::new(path, e.into_inner().to_string())
        })?;
        scenario.validate()?;
        Ok(scenario)
    }

    /// Parse and validate with the process environment.
    pub fn from_yaml(text: &str) -> Result<Scenario, ScenarioError> {
        Scenario::from_yaml_with_env(text, |k| std::env::var(k).ok())
    }

    /// Replace (or add) a target's URL: `--target NAME=URL`.
    pub fn override_target(&mut self, name: &str, url: &str) -> Result<(), ScenarioError> {
        check_url(&format!("--target {name}"), url)?;
        match self.targets.iter_mut().find(|t| t.name == name) {
            Some(t) => t.url = url.to_string(),
            None => self.targets.push(TargetSpec {
                name: name.to_string(),
                url: url.to_string(),
                models: BTreeMap::new(),
                headers: BTreeMap::new(),
            }),
        }
        Ok(())
    }

    /// Keep only the named targets (`--only`), dropping SLOs for the others.
    pub fn retain_targets(&mut self, names: &[String]) -> Result<(), ScenarioError> {
        for n in names {
            if !self.targets.iter().any(|t| &t.name == n) {
                return Err(ScenarioError::new(
                    "--only",
                    format!("unknown target {n:?} (targets: {})", self.target_names()),
                ));
            }
        }
        self.targets.retain(|t| names.contains(&t.name));
        self.slo.retain(|k, _| names.contains(k));
        if let Some(b) = &self.baseline {
            if !names.contains(b) {
                self.baseline = None;
            }
        }
        Ok(())
    }

    /// Replace a mock's control URL: `--mock NAME=URL`.
    pub fn override_mock(&mut self, name: &str, url: &str) -> Result<(), ScenarioError> {
        check_url(&format!("--mock {name}"), url)?;
        self.mocks.insert(
            name.to_string(),
            MockSpec {
                control_url: url.to_string(),
            },
        );
        Ok(())
    }

    fn target_names(&self) -> String {
        self.targets
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The baseline target's index: `baseline`, or a target named `direct`.
    pub fn baseline_index(&self) -> Option<usize> {
        let name = self.baseline.as_deref().unwrap_or("direct");
        self.targets.iter().position(|t| t.name == name)
    }

    /// Total scheduled duration of all phases.
    pub fn duration(&self) -> Duration {
        self.phases.iter().map(|p| p.duration).sum()
    }

    /// Expected number of requests per target (exact for uniform arrivals
    /// up to rounding).
    pub fn expected_requests(&self) -> f64 {
        self.phases.iter().map(phase_integral).sum()
    }

    /// Check cross-field rules. Called by the loaders; call again after
    /// modifying a scenario in code.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        if self.targets.is_empty() {
            return Err(ScenarioError::new(
                "targets",
                "at least one target is required",
            ));
        }
        let mut names = BTreeSet::new();
        for (i, t) in self.targets.iter().enumerate() {
            if t.name.is_empty()
                || !t
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(ScenarioError::new(
                    format!("targets[{i}].name"),
                    "must be non-empty and use only letters, digits, '-', '_' or '.'",
                ));
            }
            if !names.insert(t.name.as_str()) {
                return Err(ScenarioError::new(
                    format!("targets[{i}].name"),
                    format!("duplicate target {:?}", t.name),
                ));
            }
            check_url(&format!("targets[{i}].url"), &t.url)?;
            for k in t.headers.keys() {
                check_header(&format!("targets[{i}].headers.{k}"), k)?;
            }
        }
        if let Some(b) = &self.baseline {
            if !names.contains(b.as_str()) {
                return Err(ScenarioError::new(
                    "baseline",
                    format!("unknown target {b:?} (targets: {})", self.target_names()),
                ));
            }
        }
        if self.max_in_flight == 0 || self.max_in_flight > 1_000_000 {
            return Err(ScenarioError::new(
                "max_in_flight",
                "must be between 1 and 1000000",
            ));
        }
        if self.timeout.is_zero() {
            return Err(ScenarioError::new("timeout", "must be greater than 0"));
        }
        if self.connect_timeout.is_zero() {
            return Err(ScenarioError::new(
                "connect_timeout",
                "must be greater than 0",
            ));
        }
        if self.phases.is_empty() {
            return Err(ScenarioError::new(
                "phases",
                "at least one phase is required",
            ));
        }
        for (i, p) in self.phases.iter().enumerate() {
            let at = |f: &str| format!("phases[{i}].{f}");
            if p.duration.is_zero() {
                return Err(ScenarioError::new(at("duration"), "must be greater than 0"));
            }
            check_rate(&at("rate"), p.rate)?;
            if let Some(r) = p.ramp_to {
                check_rate(&at("ramp_to"), r)?;
                if p.spike.is_some() {
                    return Err(ScenarioError::new(
                        at("spike"),
                        "a phase is either a ramp (ramp_to) or has a spike, not both",
                    ));
                }
            }
            if let Some(s) = &p.spike {
                check_rate(&at("spike.rate"), s.rate)?;
                if s.duration.is_zero() {
                    return Err(ScenarioError::new(
                        at("spike.duration"),
                        "must be greater than 0",
                    ));
                }
                if s.at + s.duration > p.duration {
                    return Err(ScenarioError::new(
                        at("spike"),
                        format!(
                            "spike ends at {} but the phase lasts {}",
                            humantime::format_duration(s.at + s.duration),
                            humantime::format_duration(p.duration)
                        ),
                    ));
                }
            }
            if let Some(mix) = &p.mix {
                check_mix(&at("mix"), mix)?;
            }
        }
        check_mix("mix", &self.mix)?;
        if self.phases.len() > usize::from(u16::MAX) {
            return Err(ScenarioError::new("phases", "at most 65535 phases"));
        }
        let mix_entries = self.mix.len()
            + self
                .phases
                .iter()
                .filter_map(|p| p.mix.as_ref())
                .map(Vec::len)
                .sum::<usize>();
        if mix_entries > usize::from(u16::MAX) {
            return Err(ScenarioError::new(
                "mix",
                "at most 65535 mix entries in all (scenario and phases)",
            ));
        }
        let expected = self.expected_requests();
        if expected > MAX_REQUESTS as f64 {
            return Err(ScenarioError::new(
                "phases",
                format!("the schedule has about {expected:.0} requests per target; the limit is {MAX_REQUESTS}"),
            ));
        }
        for (name, m) in &self.mocks {
            check_url(&format!("mocks.{name}.control_url"), &m.control_url)?;
        }
        let total = self.duration();
        for (i, f) in self.faults.iter().enumerate() {
            let at = |x: &str| format!("faults[{i}].{x}");
            if !self.mocks.contains_key(&f.mock) {
                let known: Vec<&str> = self.mocks.keys().map(String::as_str).collect();
                return Err(ScenarioError::new(
                    at("mock"),
                    format!("unknown mock {:?} (mocks: {})", f.mock, known.join(", ")),
                ));
            }
            if f.at > total {
                return Err(ScenarioError::new(
                    at("at"),
                    format!(
                        "{} is after the end of the last phase ({})",
                        humantime::format_duration(f.at),
                        humantime::format_duration(total)
                    ),
                ));
            }
            match (&f.set, f.clear) {
                (Some(_), true) | (None, false) => {
                    return Err(ScenarioError::new(
                        format!("faults[{i}]"),
                        "give exactly one of `set: FAULT` or `clear: true`",
                    ))
                }
                (Some(v), false) => {
                    if !(v.is_string() || v.is_object()) {
                        return Err(ScenarioError::new(
                            at("set"),
                            "expected a short form string (`refuse`, `status=503`) or a mapping",
                        ));
                    }
                    let body = f.body().unwrap_or_default();
                    parse_fault(&body).map_err(|e| {
                        ScenarioError::new(at("set"), format!("invalid fault: {}", e.0))
                    })?;
                }
                (None, true) => {}
            }
        }
        for (name, slo) in &self.slo {
            if !names.contains(name.as_str()) {
                return Err(ScenarioError::new(
                    format!("slo.{name}"),
                    format!("unknown target {name:?} (targets: {})", self.target_names()),
                ));
            }
            if let Some(r) = slo.error_rate {
                if !(0.0..=1.0).contains(&r) {
                    return Err(ScenarioError::new(
                        format!("slo.{name}.error_rate"),
                        "must be a fraction between 0 and 1 (0.01 = 1%)",
                    ));
                }
            }
            if slo.p99_overhead.is_some() {
                match self.baseline_index() {
                    None => {
                        return Err(ScenarioError::new(
                            format!("slo.{name}.p99_overhead"),
                            "needs a baseline target (`baseline:` or a target named `direct`)",
                        ))
                    }
                    Some(b) if self.targets[b].name == *name => {
                        return Err(ScenarioError::new(
                            format!("slo.{name}.p99_overhead"),
                            "the baseline cannot have an overhead over itself",
                        ))
                    }
                    Some(_) => {}
                }
            }
        }
        for (model, p) in &self.prices {
            let fine = |v: f64| v.is_finite() && v >= 0.0;
            if !(fine(p.input_per_mtok) && fine(p.output_per_mtok)) {
                return Err(ScenarioError::new(
                    format!("prices.{model}"),
                    "prices must be finite and >= 0",
                ));
            }
        }
        Ok(())
    }
}

fn phase_integral(p: &Phase) -> f64 {
    let d = p.duration.as_secs_f64();
    if let Some(r1) = p.ramp_to {
        (p.rate + r1) / 2.0 * d
    } else if let Some(s) = &p.spike {
        let sd = s.duration.as_secs_f64();
        p.rate * (d - sd) + s.rate * sd
    } else {
        p.rate * d
    }
}

fn check_rate(path: &str, r: f64) -> Result<(), ScenarioError> {
    if !r.is_finite() || r < 0.0 {
        return Err(ScenarioError::new(
            path,
            "must be a finite number >= 0 (requests per second)",
        ));
    }
    if r > 1_000_000.0 {
        return Err(ScenarioError::new(
            path,
            "must be at most 1000000 requests per second",
        ));
    }
    Ok(())
}

fn check_url(path: &str, url: &str) -> Result<(), ScenarioError> {
    let parsed: http::Uri = url
        .parse()
        .map_err(|e| ScenarioError::new(path, format!("invalid URL {url:?}: {e}")))?;
    if parsed.scheme_str() != Some("http") {
        return Err(ScenarioError::new(
            path,
            format!("{url:?}: only http:// URLs are supported"),
        ));
    }
    if parsed.authority().is_none() {
        return Err(ScenarioError::new(path, format!("{url:?}: missing host")));
    }
    Ok(())
}

fn check_header(path: &str, name: &str) -> Result<(), ScenarioError> {
    http::HeaderName::from_bytes(name.as_bytes())
        .map(|_| ())
        .map_err(|_| ScenarioError::new(path, format!("invalid header name {name:?}")))
}

fn check_mix(path: &str, mix: &[MixEntry]) -> Result<(), ScenarioError> {
    if mix.is_empty() {
        return Err(ScenarioError::new(path, "at least one entry is required"));
    }
    if mix.len() > 1000 {
        return Err(ScenarioError::new(path, "at most 1000 entries"));
    }
    let mut total: u64 = 0;
    for (i, m) in mix.iter().enumerate() {
        let at = |f: &str| format!("{path}[{i}].{f}");
        if m.weight == 0 {
            return Err(ScenarioError::new(at("weight"), "must be at least 1"));
        }
        total += u64::from(m.weight);
        if m.model.is_empty() {
            return Err(ScenarioError::new(at("model"), "must not be empty"));
        }
        if *m.prompt_tokens.0.end() > MAX_PROMPT_TOKENS {
            return Err(ScenarioError::new(
                at("prompt_tokens"),
                format!("at most {MAX_PROMPT_TOKENS}"),
            ));
        }
        if *m.max_tokens.0.start() == 0 {
            return Err(ScenarioError::new(at("max_tokens"), "must be at least 1"));
        }
        for k in m.headers.keys() {
            check_header(&at(&format!("headers.{k}")), k)?;
        }
        for (what, v) in [("key", &m.key), ("feature", &m.feature)] {
            if let Some(v) = v {
                if http::HeaderValue::from_str(v).is_err() {
                    return Err(ScenarioError::new(at(what), "not a valid header value"));
                }
            }
        }
        for (k, v) in &m.headers {
            if http::HeaderValue::from_str(v).is_err() {
                return Err(ScenarioError::new(
                    at(&format!("headers.{k}")),
                    "not a valid header value",
                ));
            }
        }
    }
    if total > u64::from(u32::MAX) {
        return Err(ScenarioError::new(path, "total weight is too large"));
    }
    Ok(())
}

/// Expand `${NAME}` / `${NAME:-default}` in every string of the document.
fn expand_value(
    v: &mut Value,
    path: &mut String,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<(), ScenarioError> {
    match v {
        Value::String(s) => {
            if !s.contains('$') {
                return Ok(());
            }
            let whole = {
                let t = s.trim();
                t.starts_with("${") && t.ends_with('}') && t[2..].find('}') == Some(t.len() - 3)
            };
            let expanded = expand_str(s, env).map_err(|m| ScenarioError::new(path.clone(), m))?;
            if whole {
                // Re-read as a YAML scalar so `${RATE}` can be a number.
                match serde_yaml::from_str::<Value>(&expanded) {
                    Ok(x @ (Value::Number(_) | Value::Bool(_))) => *v = x,
                    _ => *v = Value::String(expanded),
                }
            } else {
                *v = Value::String(expanded);
            }
        }
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                expand_value(item, path, env)?;
                path.truncate(len);
            }
        }
        Value::Mapping(m) => {
            for (k, item) in m.iter_mut() {
                let len = path.len();
                let key = match k {
                    Value::String(s) => s.clone(),
                    other => serde_yaml::to_string(other)
                        .unwrap_or_default()
                        .trim()
                        .to_string(),
                };
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(&key);
                expand_value(item, path, env)?;
                path.truncate(len);
            }
        }
        Value::Tagged(t) => expand_value(&mut t.value, path, env)?,
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
    Ok(())
}

/// Expand `${NAME}` and `${NAME:-default}`; `$$` is a literal `$`.
pub fn expand_str(s: &str, env: &impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or_else(|| format!("unterminated ${{...}} in {s:?}"))?;
            let expr = &body[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (expr, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("invalid variable name {name:?} in {s:?}"));
            }
            match (env(name).filter(|v| !v.is_empty()), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err(format!("environment variable {name} is not set"));
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}
