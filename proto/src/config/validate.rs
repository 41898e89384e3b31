use super::{Config, RetryPolicy, Timeouts};
use std::time::Duration;

/// One problem in a config document, with the path of the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every problem found in a config document.
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid config: {}", .errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
pub struct ValidationError {
    pub errors: Vec<FieldError>,
}

/// Parses a humantime duration (`"250ms"`, `"2s"`); empty gives `default`.
pub fn parse_duration(path: &str, value: &str, default: Duration) -> Result<Duration, FieldError> {
    if value.is_empty() {
        return Ok(default);
    }
    humantime::parse_duration(value).map_err(|e| FieldError {
        path: path.to_string(),
        message: format!("invalid duration {value:?}: {e}"),
    })
}

struct Check {
    errors: Vec<FieldError>,
}

impl Check {
    fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
    }
    fn duration(&mut self, path: String, value: &str) {
        if let Err(e) = parse_duration(&path, value, Duration::ZERO) {
            self.errors.push(e);
        }
    }
    fn timeouts(&mut self, path: &str, t: &Option<Timeouts>) {
        if let Some(t) = t {
            self.duration(format!("{path}.connect"), &t.connect);
            self.duration(format!("{path}.first_byte"), &t.first_byte);
            self.duration(format!("{path}.idle"), &t.idle);
            self.duration(format!("{path}.total"), &t.total);
        }
    }
    fn retry(&mut self, path: &str, r: &Option<RetryPolicy>) {
        if let Some(r) = r {
            self.duration(format!("{path}.backoff_base"), &r.backoff_base);
            self.duration(format!("{path}.backoff_max"), &r.backoff_max);
            if let Some(b) = r.budget_ratio {
                if !(0.0..=1.0).contains(&b) {
                    self.err(format!("{path}.budget_ratio"), "must be between 0 and 1");
                }
            }
            if r.max_retries.is_some_and(|m| m > 10) {
                self.err(format!("{path}.max_retries"), "must be at most 10");
            }
        }
    }
    fn usd(&mut self, path: String, v: f64) {
        if !v.is_finite() || v < 0.0 {
            self.err(path, "must be a finite, non-negative amount");
        }
    }
}

/// Checks a config for dangling references and bad values. The edge and the
/// control plane both run this before accepting a version.
pub fn validate(cfg: &Config) -> Result<(), ValidationError> {
    let mut c = Check { errors: Vec::new() };
    if cfg.schema_version > 1 {
        c.err(
            "schema_version",
            format!(
                "unsupported schema version {} (this build knows 1)",
                cfg.schema_version
            ),
        );
    }
    for (name, p) in &cfg.providers {
        let path = format!("providers.{name}");
        if !matches!(p.kind.as_str(), "openai" | "anthropic") {
            c.err(
                format!("{path}.kind"),
                format!(
                    "unknown provider kind {:?} (expected \"openai\" or \"anthropic\")",
                    p.kind
                ),
            );
        }
        let url = p.base_url.as_str();
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"));
        match rest {
            Some(r) if !r.is_empty() && !r.starts_with('/') => {}
            _ => c.err(
                format!("{path}.base_url"),
                format!("must be an http:// or https:// URL with a host, got {url:?}"),
            ),
        }
        c.duration(format!("{path}.queue_timeout"), &p.queue_timeout);
        if let Some(h) = &p.health_check {
            c.duration(format!("{path}.health_check.interval"), &h.interval);
            c.duration(format!("{path}.health_check.timeout"), &h.timeout);
        }
    }
    if let Some(d) = &cfg.defaults {
        c.timeouts("defaults.timeouts", &d.timeouts);
        c.retry("defaults.retry", &d.retry);
    }
    if cfg.routes.is_empty() && !cfg.providers.is_empty() {
        c.err("routes", "no routes: clients could not call any model");
    }
    for (name, r) in &cfg.routes {
        let path = format!("routes.{name}");
        if name.is_empty() {
            c.err("routes", "route name must not be empty");
        }
        match (r.tiers.is_empty(), r.targets.is_empty()) {
            (true, true) => c.err(&path, "route has no targets (set `targets` or `tiers`)"),
            (false, false) => c.err(&path, "set either `targets` or `tiers`, not both"),
            _ => {}
        }
        let tiers: Vec<(String, &Vec<super::Target>)> = if r.tiers.is_empty() {
            vec![(format!("{path}.targets"), &r.targets)]
        } else {
            r.tiers
                .iter()
                .enumerate()
                .map(|(i, t)| (format!("{path}.tiers[{i}].targets"), &t.targets))
                .collect()
        };
        for (tpath, targets) in tiers {
            if targets.is_empty() && !r.tiers.is_empty() {
                c.err(&tpath, "tier has no targets");
            }
            for (i, t) in targets.iter().enumerate() {
                if !cfg.providers.contains_key(&t.provider) {
                    c.err(
                        format!("{tpath}[{i}].provider"),
                        format!("unknown provider {:?}", t.provider),
                    );
                }
                if t.model.is_empty() {
                    c.err(format!("{tpath}[{i}].model"), "model must not be empty");
                }
            }
        }
        if !matches!(r.load_balancing.as_str(), "" | "weighted" | "least_latency") {
            c.err(
                format!("{path}.load_balancing"),
                format!(
                    "unknown strategy {:?} (expected \"weighted\" or \"least_latency\")",
                    r.load_balancing
                ),
            );
        }
        c.timeouts(&format!("{path}.timeouts"), &r.timeouts);
        c.retry(&format!("{path}.retry"), &r.retry);
        if let Some(cache) = &r.cache {
            c.duration(format!("{path}.cache.ttl"), &cache.ttl);
        }
        if !r.tier.is_empty() && !cfg.tiers.contains_key(&r.tier) {
            c.err(format!("{path}.tier"), format!("unknown tier {:?}", r.tier));
        }
    }
    for (model, p) in &cfg.prices {
        let path = format!("prices.{model}");
        c.usd(format!("{path}.input_per_mtok"), p.input_per_mtok);
        c.usd(format!("{path}.output_per_mtok"), p.output_per_mtok);
        if let Some(v) = p.cached_input_per_mtok {
            c.usd(format!("{path}.cached_input_per_mtok"), v);
        }
    }
    for (name, t) in &cfg.tiers {
        c.usd(format!("tiers.{name}.daily_cost_usd"), t.daily_cost_usd);
    }
    let mut ids = std::collections::BTreeSet::new();
    for (i, k) in cfg.keys.iter().enumerate() {
        let path = format!("keys[{i}]");
        if k.id.is_empty() {
            c.err(format!("{path}.id"), "key id must not be empty");
        } else if !ids.insert(k.id.as_str()) {
            c.err(format!("{path}.id"), format!("duplicate key id {:?}", k.id));
        }
        let hash_ok =
            k.secret_sha256.len() == 64 && k.secret_sha256.chars().all(|c| c.is_ascii_hexdigit());
        match (k.secret.is_empty(), k.secret_sha256.is_empty()) {
            (true, true) => c.err(&path, "set `secret` or `secret_sha256`"),
            (_, false) if !hash_ok => {
                c.err(format!("{path}.secret_sha256"), "must be 64 hex characters")
            }
            _ => {}
        }
        if !k.tier.is_empty() && !cfg.tiers.contains_key(&k.tier) {
            c.err(format!("{path}.tier"), format!("unknown tier {:?}", k.tier));
        }
        for (j, m) in k.allowed_models.iter().enumerate() {
            if !cfg.routes.contains_key(m) {
                c.err(
                    format!("{path}.allowed_models[{j}]"),
                    format!("unknown model {m:?}"),
                );
            }
        }
    }
    for (i, b) in cfg.budgets.iter().enumerate() {
        let path = format!("budgets[{i}]");
        if b.name.is_empty() {
            c.err(format!("{path}.name"), "budget name must not be empty");
        }
        if !matches!(b.scope.as_str(), "feature" | "team" | "key") {
            c.err(
                format!("{path}.scope"),
                format!(
                    "unknown scope {:?} (expected feature, team or key)",
                    b.scope
                ),
            );
        }
        if !matches!(b.window.as_str(), "day" | "month") {
            c.err(
                format!("{path}.window"),
                format!("unknown window {:?} (expected day or month)", b.window),
            );
        }
        c.usd(format!("{path}.soft_limit_usd"), b.soft_limit_usd);
        c.usd(format!("{path}.hard_limit_usd"), b.hard_limit_usd);
        if !b.downgrade_to.is_empty() && !cfg.routes.contains_key(&b.downgrade_to) {
            c.err(
                format!("{path}.downgrade_to"),
                format!("unknown model {:?}", b.downgrade_to),
            );
        }
    }
    if let Some(s) = &cfg.server {
        c.duration("server.header_timeout".into(), &s.header_timeout);
        c.duration("server.body_timeout".into(), &s.body_timeout);
    }
    if c.errors.is_empty() {
        Ok(())
    } else {
        Err(ValidationError { errors: c.errors })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::super::from_yaml_str;
    use super::*;

    fn check(yaml: &str) -> Vec<String> {
        let cfg = from_yaml_str(yaml, |_| None).unwrap();
        match validate(&cfg) {
            Ok(()) => vec![],
            Err(e) => e.errors.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn accepts_a_good_config() {
        let errs = check(
            "providers:\n  p: {kind: openai, base_url: 'http://127.0.0.1:1/v1'}\nroutes:\n  m:\n    tiers:\n      - targets: [{provider: p, model: x}]\n    timeouts: {connect: 1s}\n",
        );
        assert!(errs.is_empty(), "{errs:?}");
    }

    #[test]
    fn names_dangling_references_and_bad_values() {
        let errs = check(
            "providers:\n  p: {kind: grok, base_url: 'ftp://x'}\nroutes:\n  m:\n    targets: [{provider: q, model: ''}]\n    timeouts: {idle: soon}\nkeys:\n  - {id: k, secret: s, tier: gold}\nbudgets:\n  - {name: b, scope: feature, window: week, hard_limit_usd: -1}\n",
        );
        let want = [
            "providers.p.kind",
            "providers.p.base_url",
            "routes.m.targets[0].provider: unknown provider \"q\"",
            "routes.m.targets[0].model",
            "routes.m.timeouts.idle: invalid duration",
            "keys[0].tier: unknown tier \"gold\"",
            "budgets[0].window",
            "budgets[0].hard_limit_usd",
        ];
        for w in want {
            assert!(
                errs.iter().any(|e| e.starts_with(w)),
                "missing {w:?} in {errs:#?}"
            );
        }
        assert_eq!(errs.len(), want.len(), "{errs:#?}");
    }

    #[test]
    fn rejects_empty_routes() {
        let errs =
            check("providers:\n  p: {kind: openai, base_url: 'http://h/v1'}\nroutes:\n  m: {}\n");
        assert_eq!(
            errs,
            vec!["routes.m: route has no targets (set `targets` or `tiers`)".to_string()]
        );
    }
}
