//! Scenario parsing: strictness and error messages that name the field.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::Duration;

use switchyard_loadtest::scenario::{Api, Arrival, AuthStyle, Scenario, ScenarioError, TargetMode};

const BASE: &str = r#"
name: t
targets:
  - {name: edge, url: "http://127.0.0.1:8080"}
  - {name: direct, url: "http://127.0.0.1:9100/v1"}
phases:
  - {name: warm, duration: 1s, rate: 10, warmup: true}
  - {duration: 2s, rate: 100, ramp_to: 200}
mix:
  - {model: gpt-mock}
"#;

fn parse(yaml: &str) -> Result<Scenario, ScenarioError> {
    Scenario::from_yaml_with_env(yaml, |_| None)
}

fn parse_env(yaml: &str, env: &[(&str, &str)]) -> Result<Scenario, ScenarioError> {
    let m: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Scenario::from_yaml_with_env(yaml, move |k| m.get(k).cloned())
}

/// Replace `from` in BASE (must occur) with `to`.
fn base_with(from: &str, to: &str) -> String {
    assert!(BASE.contains(from), "{from:?} not in BASE");
    BASE.replacen(from, to, 1)
}

fn err(yaml: &str) -> ScenarioError {
    parse(yaml).expect_err("expected an error")
}

#[test]
fn full_example_parses_with_defaults() {
    let yaml = r#"
name: full
description: everything
targets:
  - name: edge
    url: ${EDGE_URL}
    models: {gpt-mock: gpt-4o-mini}
    headers: {x-extra: "1"}
  - {name: direct, url: "${MOCK_URL:-http://127.0.0.1:9100}"}
baseline: direct
mode: sequential
arrival: poisson
seed: 7
max_in_flight: 100
timeout: 5s
connect_timeout: 250ms
phases:
  - {name: base, duration: 10s, rate: "${RATE}"}
  - {name: ramp, duration: 1m, rate: 10, ramp_to: 100}
  - {name: spike, duration: 10s, rate: 10, spike: {rate: 500, at: 2s, duration: 1s}}
  - name: budget
    duration: 5s
    rate: 20
    mix:
      - {model: gpt-mock, key: sk-budget, feature: batch-export}
mix:
  - {model: gpt-mock, weight: 3, stream: true, prompt_tokens: "100..=300", max_tokens: 64, key: sk-a}
  - {api: anthropic, model: claude-mock, prompt_tokens: 50, max_tokens: "10..20", auth: bearer, key: sk-b, headers: {x-a: b}}
mocks:
  region-a: {control_url: "${CTRL_A}"}
faults:
  - {at: 3s, mock: region-a, set: kill}
  - {at: 4s, mock: region-a, set: {kind: status, status: 429, retry_after: "1"}}
  - {at: 5s, mock: region-a, clear: true, label: back}
slo:
  edge:
    p99_ttft: 800ms
    p99_latency: 2s
    error_rate: 0.01
    allowed_errors: [http_429]
    failover_time: 3s
    min_throughput: 10
    p99_overhead: 1ms
prices:
  gpt-mock: {input_per_mtok: 0.15, output_per_mtok: 0.6}
"#;
    let s = parse_env(
        yaml,
        &[
            ("EDGE_URL", "http://127.0.0.1:8080"),
            ("RATE", "50"),
            ("CTRL_A", "http://127.0.0.1:9201"),
        ],
    )
    .unwrap();
    assert_eq!(s.targets[0].url, "http://127.0.0.1:8080");
    assert_eq!(s.targets[1].url, "http://127.0.0.1:9100");
    assert_eq!(s.mode, TargetMode::Sequential);
    assert_eq!(s.arrival, Arrival::Poisson);
    assert_eq!(
        s.phases[0].rate, 50.0,
        "a whole-string ${{RATE}} becomes a number"
    );
    assert_eq!(s.phases[1].duration, Duration::from_secs(60));
    assert_eq!(s.timeout, Duration::from_secs(5));
    assert_eq!(s.connect_timeout, Duration::from_millis(250));
    assert_eq!(s.mix[0].prompt_tokens.0, 100..=300);
    assert_eq!(s.mix[1].max_tokens.0, 10..=19);
    assert_eq!(s.mix[1].api, Api::Anthropic);
    assert_eq!(s.mix[1].auth_style(), AuthStyle::Bearer);
    assert_eq!(s.mix[0].auth_style(), AuthStyle::Bearer);
    assert_eq!(
        s.faults[0].body().as_deref(),
        Some("refuse"),
        "kill = refuse"
    );
    assert!(s.faults[1].body().unwrap().contains("\"status\":429"));
    assert_eq!(s.faults[2].body(), None);
    assert_eq!(s.faults[2].label(), "back");
    assert_eq!(s.slo["edge"].p99_ttft, Some(Duration::from_millis(800)));
    assert_eq!(s.baseline_index(), Some(1));
    assert_eq!(
        s.expected_requests(),
        50.0 * 10.0 + 55.0 * 60.0 + 10.0 * 9.0 + 500.0 + 100.0
    );

    // Defaults.
    let d = parse(BASE).unwrap();
    assert_eq!(d.mode, TargetMode::Parallel);
    assert_eq!(d.max_in_flight, 5000);
    assert_eq!(d.timeout, Duration::from_secs(30));
    assert_eq!(d.mix[0].weight, 1);
    assert_eq!(d.mix[0].api, Api::Openai);
    assert!(!d.mix[0].stream);
    assert_eq!(d.mix[0].max_tokens.0, 64..=64);
    assert_eq!(
        d.baseline_index(),
        Some(1),
        "a target named `direct` is the default baseline"
    );
}

#[test]
fn unknown_fields_are_rejected_with_their_path() {
    let e = err(&base_with(
        "rate: 100, ramp_to: 200",
        "rate: 100, ramp_too: 200",
    ));
    assert_eq!(e.path, "phases[1].ramp_too", "{e}");
    assert!(e.message.contains("unknown field `ramp_too`"), "{e}");
    let e = err(&base_with(
        "{model: gpt-mock}",
        "{model: gpt-mock, steam: true}",
    ));
    assert_eq!(e.path, "mix[0].steam", "{e}");
    assert!(e.message.contains("unknown field `steam`"), "{e}");
    let e = err(&format!("{BASE}\nrate: 5\n"));
    assert!(e.message.contains("unknown field `rate`"), "{e}");
    let e = err(&format!("{BASE}\nslo:\n  edge: {{p99_ttf: 1s}}\n"));
    assert_eq!(e.path, "slo.edge.p99_ttf", "{e}");
    assert!(e.message.contains("unknown field `p99_ttf`"), "{e}");
}

#[test]
fn bad_values_name_the_field() {
    let e = err(&base_with("duration: 2s", "duration: 2 parsecs"));
    assert_eq!(e.path, "phases[1].duration", "{e}");
    assert!(e.to_string().starts_with("phases[1].duration: "), "{e}");

    let e = err(&base_with("duration: 2s", "duration: 0s"));
    assert_eq!(e.path, "phases[1].duration", "{e}");

    let e = err(&base_with("rate: 100", "rate: fast"));
    assert_eq!(e.path, "phases[1].rate", "{e}");

    let e = err(&base_with("rate: 100", "rate: -1"));
    assert_eq!(e.path, "phases[1].rate", "{e}");

    let e = err(&base_with(
        "{model: gpt-mock}",
        "{model: gpt-mock, api: grpc}",
    ));
    assert_eq!(e.path, "mix[0].api", "{e}");

    let e = err(&base_with(
        "{model: gpt-mock}",
        "{model: gpt-mock, weight: 0}",
    ));
    assert_eq!(e.path, "mix[0].weight", "{e}");

    let e = err(&base_with(
        "{model: gpt-mock}",
        "{model: gpt-mock, prompt_tokens: \"9..3\"}",
    ));
    assert_eq!(e.path, "mix[0].prompt_tokens", "{e}");

    let e = err(&base_with(
        "{model: gpt-mock}",
        "{model: gpt-mock, max_tokens: 0}",
    ));
    assert_eq!(e.path, "mix[0].max_tokens", "{e}");

    let e = err(&base_with(
        "url: \"http://127.0.0.1:8080\"",
        "url: \"https://x\"",
    ));
    assert_eq!(e.path, "targets[0].url", "{e}");

    let e = err(&base_with("{name: direct,", "{name: edge,"));
    assert_eq!(e.path, "targets[1].name", "{e}");
    assert!(e.message.contains("duplicate"), "{e}");

    let e = err(&base_with(
        "ramp_to: 200",
        "ramp_to: 200, spike: {rate: 9, at: 0s, duration: 1s}",
    ));
    assert_eq!(e.path, "phases[1].spike", "{e}");

    let e = err(&base_with(
        "rate: 100, ramp_to: 200",
        "rate: 100, spike: {rate: 9, at: 1500ms, duration: 1s}",
    ));
    assert_eq!(e.path, "phases[1].spike", "{e}");
    assert!(e.message.contains("phase lasts"), "{e}");

    let e = err(&base_with("phases:\n", "phases: []\nx_phases:\n"));
    assert!(e.message.contains("x_phases"), "{e}");

    let e = err(&base_with("name: t\n", "name: t\nbaseline: nope\n"));
    assert_eq!(e.path, "baseline", "{e}");

    let e = err(&base_with("name: t\n", "name: t\nmax_in_flight: 0\n"));
    assert_eq!(e.path, "max_in_flight", "{e}");

    let e = err(&base_with("name: t\n", "name: t\nmode: sideways\n"));
    assert_eq!(e.path, "mode", "{e}");
}

#[test]
fn faults_and_slos_are_checked() {
    let mocks = "mocks: {a: {control_url: \"http://127.0.0.1:9201\"}}\n";
    let e = err(&format!(
        "{BASE}{mocks}faults: [{{at: 1s, mock: b, set: refuse}}]\n"
    ));
    assert_eq!(e.path, "faults[0].mock", "{e}");
    let e = err(&format!(
        "{BASE}{mocks}faults: [{{at: 1s, mock: a, set: explode}}]\n"
    ));
    assert_eq!(e.path, "faults[0].set", "{e}");
    assert!(e.message.contains("invalid fault"), "{e}");
    let e = err(&format!("{BASE}{mocks}faults: [{{at: 1s, mock: a}}]\n"));
    assert_eq!(e.path, "faults[0]", "{e}");
    let e = err(&format!(
        "{BASE}{mocks}faults: [{{at: 1s, mock: a, set: hang, clear: true}}]\n"
    ));
    assert_eq!(e.path, "faults[0]", "{e}");
    let e = err(&format!(
        "{BASE}{mocks}faults: [{{at: 10s, mock: a, clear: true}}]\n"
    ));
    assert_eq!(e.path, "faults[0].at", "{e}");
    let e = err(&format!(
        "{BASE}{mocks}faults: [{{at: soon, mock: a, clear: true}}]\n"
    ));
    assert_eq!(e.path, "faults[0].at", "{e}");
    let e = err(&format!(
        "{BASE}{mocks}faults: [{{at: 1s, mock: a, set: {{kind: status}}}}]\n"
    ));
    assert_eq!(e.path, "faults[0].set", "{e}");
    assert!(parse(&format!(
        "{BASE}{mocks}faults: [{{at: 1s, mock: a, set: \"status=503\"}}]\n"
    ))
    .is_ok());

    let e = err(&format!("{BASE}slo: {{nobody: {{p99_ttft: 1s}}}}\n"));
    assert_eq!(e.path, "slo.nobody", "{e}");
    let e = err(&format!("{BASE}slo: {{edge: {{error_rate: 5}}}}\n"));
    assert_eq!(e.path, "slo.edge.error_rate", "{e}");
    let e = err(&format!("{BASE}slo: {{edge: {{p99_ttft: quick}}}}\n"));
    assert_eq!(e.path, "slo.edge.p99_ttft", "{e}");
    let e = err(&format!("{BASE}slo: {{direct: {{p99_overhead: 1ms}}}}\n"));
    assert_eq!(e.path, "slo.direct.p99_overhead", "{e}");
}

#[test]
fn environment_expansion() {
    let yaml = BASE.replace("\"http://127.0.0.1:8080\"", "\"${EDGE_URL}\"");
    let e = parse(&yaml).unwrap_err();
    assert_eq!(e.path, "targets[0].url", "{e}");
    assert!(e.message.contains("EDGE_URL is not set"), "{e}");
    let s = parse_env(&yaml, &[("EDGE_URL", "http://127.0.0.1:1234")]).unwrap();
    assert_eq!(s.targets[0].url, "http://127.0.0.1:1234");
    // Defaults, literal `$$`, and text around a variable.
    let yaml = BASE.replace(
        "\"http://127.0.0.1:8080\"",
        "\"http://${HOST:-127.0.0.1}:${PORT}\"",
    );
    let s = parse_env(&yaml, &[("PORT", "81")]).unwrap();
    assert_eq!(s.targets[0].url, "http://127.0.0.1:81");
    let yaml = BASE.replace("{model: gpt-mock}", "{model: \"a$$b\"}");
    assert_eq!(parse(&yaml).unwrap().mix[0].model, "a$b");
}

#[test]
fn overrides() {
    let mut s = parse(BASE).unwrap();
    s.override_target("edge", "http://127.0.0.1:1").unwrap();
    s.override_target("other", "http://127.0.0.1:2").unwrap();
    assert_eq!(s.targets[0].url, "http://127.0.0.1:1");
    assert_eq!(s.targets[2].name, "other");
    assert!(s.override_target("x", "ftp://nope").is_err());
    s.retain_targets(&["edge".to_string()]).unwrap();
    assert_eq!(s.targets.len(), 1);
    assert!(s.retain_targets(&["ghost".to_string()]).is_err());
}

#[test]
fn shipped_scenarios_parse() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let env = |k: &str| -> Option<String> {
        Some(match k {
            k if k.ends_with("_URL") || k.ends_with("_CONTROL") => "http://127.0.0.1:1".to_string(),
            _ => return None,
        })
    };
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        Scenario::from_yaml_with_env(&text, env)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        n += 1;
    }
    assert!(n >= 5, "expected the five shipped scenarios, found {n}");
}
