//! The edge's runtime configuration: the validated, compiled form of a
//! [`switchyard_proto::config::Config`] document.
//!
//! A document arrives from a YAML file (`--config`) or from the control
//! plane. It is validated (`switchyard_proto::config::validate`), then
//! compiled here into [`EdgeConfig`]: durations parsed, defaults filled in,
//! provider URLs split, provider credentials read from the environment and
//! references resolved to `Arc`s. The server holds the current
//! `Arc<EdgeConfig>` in an `ArcSwap`; each request loads it once at the start,
//! so a new version is swapped in atomically and in-flight requests finish on
//! the version they started with.
//!
//! Defaults (documented in `docs/config.md` and on the proto fields):
//! max_retries 2, backoff 50ms doubling to 1s with full jitter, retry budget
//! 20 %, connect timeout 2s, first byte 30s, stream idle 30s, total 300s,
//! default max_tokens 4096, body cap 4 MiB, header cap 64 KiB, header
//! deadline 10s, body deadline 30s, health probes every 1s.

use crate::formats::ApiFormat;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use switchyard_proto::config::{self as proto, parse_duration, FieldError};

/// Why a config could not be loaded or compiled.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Load(#[from] proto::LoadError),
    #[error("{0}")]
    Invalid(#[from] proto::ValidationError),
    #[error("{0}")]
    Field(FieldError),
}

impl From<FieldError> for ConfigError {
    fn from(e: FieldError) -> Self {
        ConfigError::Field(e)
    }
}

/// Reads and validates a YAML config file, expanding `${NAME}` from the
/// process environment.
pub fn load_file(path: &std::path::Path) -> Result<proto::Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let cfg = proto::from_yaml_str(&text, |name| std::env::var(name).ok())?;
    proto::validate(&cfg)?;
    Ok(cfg)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    OpenAi,
    Anthropic,
}

impl ProviderKind {
    pub fn format(self) -> ApiFormat {
        match self {
            Self::OpenAi => ApiFormat::OpenAi,
            Self::Anthropic => ApiFormat::Anthropic,
        }
    }
    pub fn as_str(self) -> &'static str {
        self.format().as_str()
    }
}

/// A compiled provider endpoint.
#[derive(Debug)]
pub struct ProviderConfig {
    pub name: String,
    pub kind: ProviderKind,
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Path prefix from the base URL, e.g. `/v1` (no trailing slash).
    pub base_path: String,
    /// The provider credential, read from `api_key_env`.
    pub api_key: Option<String>,
    /// Region; empty means the edge's home region.
    pub region: String,
    pub headers: Vec<(http::HeaderName, String)>,
    pub anthropic_version: String,
    pub health: HealthSettings,
    /// Spike protection per target of this provider.
    pub queue: crate::routing::queue::QueueSettings,
}

#[derive(Debug, Clone)]
pub struct HealthSettings {
    pub enabled: bool,
    pub interval: Duration,
    pub timeout: Duration,
}

/// One concrete model at one provider.
#[derive(Debug)]
pub struct Target {
    /// `provider/model`, unique per edge: the key of health state and metrics.
    pub id: String,
    pub provider: Arc<ProviderConfig>,
    pub model: String,
    pub weight: u32,
}

#[derive(Debug)]
pub struct TargetTier {
    pub name: String,
    pub targets: Vec<Arc<Target>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadBalancing {
    Weighted,
    LeastLatency,
}

#[derive(Debug, Clone)]
pub struct RetrySettings {
    pub max_retries: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub budget_ratio: f64,
}

#[derive(Debug, Clone)]
pub struct Timeouts {
    pub connect: Duration,
    pub first_byte: Duration,
    pub idle: Duration,
    pub total: Duration,
}

#[derive(Debug, Clone)]
pub struct CacheSettings {
    pub ttl: Duration,
    pub max_entry_bytes: u64,
    pub cache_nondeterministic: bool,
}

/// A compiled route: what a public model name resolves to.
#[derive(Debug)]
pub struct Route {
    pub name: String,
    pub tiers: Vec<TargetTier>,
    pub load_balancing: LoadBalancing,
    pub retry: RetrySettings,
    pub timeouts: Timeouts,
    pub log_bodies: bool,
    pub default_max_tokens: u32,
    pub cache: Option<CacheSettings>,
    /// Rate-limit tier override for every caller of this route.
    pub tier: Option<String>,
}

impl Route {
    /// Every target of every tier, in order.
    pub fn targets(&self) -> impl Iterator<Item = &Arc<Target>> {
        self.tiers.iter().flat_map(|t| t.targets.iter())
    }
}

/// USD per one million tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Price {
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
    pub cached_input_per_mtok: f64,
}

#[derive(Debug, Clone)]
pub struct ServerLimits {
    pub max_body_bytes: usize,
    pub max_header_bytes: usize,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_body_bytes: 4 * 1024 * 1024,
            max_header_bytes: 64 * 1024,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
        }
    }
}

/// The compiled configuration an edge serves.
#[derive(Debug)]
pub struct EdgeConfig {
    /// Config version (0 for a standalone file).
    pub version: u64,
    pub providers: HashMap<String, Arc<ProviderConfig>>,
    pub routes: HashMap<String, Arc<Route>>,
    pub prices: HashMap<String, Price>,
    pub server: ServerLimits,
    /// Keys, tiers and budgets.
    pub limits: crate::limits::LimitsConfig,
    /// The document this was compiled from (snapshots, admin views).
    pub source: proto::Config,
}

impl EdgeConfig {
    /// Validates and compiles a document. `env` looks up provider credentials.
    pub fn compile(
        doc: proto::Config,
        version: u64,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        proto::validate(&doc)?;
        let mut providers = HashMap::new();
        for (name, p) in &doc.providers {
            providers.insert(name.clone(), Arc::new(compile_provider(name, p, env)?));
        }
        let defaults = doc.defaults.clone().unwrap_or_default();
        let mut routes = HashMap::new();
        for (name, r) in &doc.routes {
            routes.insert(
                name.clone(),
                Arc::new(compile_route(name, r, &defaults, &providers)?),
            );
        }
        let prices = doc
            .prices
            .iter()
            .map(|(m, p)| {
                (
                    m.clone(),
                    Price {
                        input_per_mtok: p.input_per_mtok,
                        output_per_mtok: p.output_per_mtok,
                        cached_input_per_mtok: p.cached_input_per_mtok.unwrap_or(p.input_per_mtok),
                    },
                )
            })
            .collect();
        let server = compile_limits(doc.server.as_ref())?;
        Ok(Self {
            version,
            providers,
            routes,
            prices,
            server,
            limits: crate::limits::LimitsConfig::compile(&doc),
            source: doc,
        })
    }
}

fn compile_provider(
    name: &str,
    p: &proto::Provider,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<ProviderConfig, ConfigError> {
    let path = format!("providers.{name}");
    let bad_url = |m: String| FieldError {
        path: format!("{path}.base_url"),
        message: m,
    };
    let uri: http::Uri = p
        .base_url
        .parse()
        .map_err(|e| bad_url(format!("invalid URL {:?}: {e}", p.base_url)))?;
    let tls = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(bad_url("scheme must be http or https".into()).into()),
    };
    let host = uri
        .host()
        .ok_or_else(|| bad_url("missing host".into()))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let base_path = uri.path().trim_end_matches('/').to_string();
    let api_key = if p.api_key_env.is_empty() {
        None
    } else {
        Some(env(&p.api_key_env).ok_or_else(|| FieldError {
            path: format!("{path}.api_key_env"),
            message: format!("environment variable `{}` is not set", p.api_key_env),
        })?)
    };
    let kind = match p.kind.as_str() {
        "anthropic" => ProviderKind::Anthropic,
        _ => ProviderKind::OpenAi,
    };
    let mut headers = Vec::with_capacity(p.headers.len());
    for (k, v) in &p.headers {
        let name = http::HeaderName::try_from(k.as_str()).map_err(|_| FieldError {
            path: format!("{path}.headers.{k}"),
            message: "invalid header name".into(),
        })?;
        if http::HeaderValue::try_from(v.as_str()).is_err() {
            return Err(FieldError {
                path: format!("{path}.headers.{k}"),
                message: "invalid header value".into(),
            }
            .into());
        }
        headers.push((name, v.clone()));
    }
    let hc = p.health_check.clone().unwrap_or_default();
    Ok(ProviderConfig {
        name: name.to_string(),
        kind,
        tls,
        host,
        port,
        base_path,
        api_key,
        region: p.region.clone(),
        headers,
        anthropic_version: if p.anthropic_version.is_empty() {
            "2023-06-01".into()
        } else {
            p.anthropic_version.clone()
        },
        queue: crate::routing::queue::QueueSettings {
            max_in_flight: if p.max_in_flight == 0 {
                1024
            } else {
                p.max_in_flight as usize
            },
            max_queue: p.max_queue.unwrap_or(100) as usize,
            queue_timeout: parse_duration(
                &format!("{path}.queue_timeout"),
                &p.queue_timeout,
                Duration::from_secs(5),
            )?,
        },
        health: HealthSettings {
            enabled: !hc.disabled,
            interval: parse_duration(
                &format!("{path}.health_check.interval"),
                &hc.interval,
                Duration::from_secs(1),
            )?,
            timeout: parse_duration(
                &format!("{path}.health_check.timeout"),
                &hc.timeout,
                Duration::from_millis(800),
            )?,
        },
    })
}

fn compile_route(
    name: &str,
    r: &proto::Route,
    defaults: &proto::RouteDefaults,
    providers: &HashMap<String, Arc<ProviderConfig>>,
) -> Result<Route, ConfigError> {
    let path = format!("routes.{name}");
    let raw_tiers: Vec<(String, &Vec<proto::Target>)> = if r.tiers.is_empty() {
        vec![("primary".to_string(), &r.targets)]
    } else {
        r.tiers
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let n = if t.name.is_empty() {
                    format!("tier{i}")
                } else {
                    t.name.clone()
                };
                (n, &t.targets)
            })
            .collect()
    };
    let mut tiers = Vec::with_capacity(raw_tiers.len());
    for (tier_name, targets) in raw_tiers {
        let mut compiled = Vec::with_capacity(targets.len());
        for t in targets {
            let provider = providers.get(&t.provider).ok_or_else(|| FieldError {
                path: format!("{path}.targets"),
                message: format!("unknown provider {:?}", t.provider),
            })?;
            compiled.push(Arc::new(Target {
                id: format!("{}/{}", t.provider, t.model),
                provider: provider.clone(),
                model: t.model.clone(),
                weight: t.weight.max(1),
            }));
        }
        tiers.push(TargetTier {
            name: tier_name,
            targets: compiled,
        });
    }
    let retry = merge_retry(&path, r.retry.as_ref(), defaults.retry.as_ref())?;
    let timeouts = merge_timeouts(&path, r.timeouts.as_ref(), defaults.timeouts.as_ref())?;
    let cache = match &r.cache {
        Some(c) if c.enabled => Some(CacheSettings {
            ttl: parse_duration(
                &format!("{path}.cache.ttl"),
                &c.ttl,
                Duration::from_secs(300),
            )?,
            max_entry_bytes: if c.max_entry_bytes == 0 {
                1 << 20
            } else {
                c.max_entry_bytes
            },
            cache_nondeterministic: c.cache_nondeterministic,
        }),
        _ => None,
    };
    let default_max_tokens = [r.default_max_tokens, defaults.default_max_tokens, 4096]
        .into_iter()
        .find(|v| *v > 0)
        .unwrap_or(4096);
    Ok(Route {
        name: name.to_string(),
        tiers,
        load_balancing: if r.load_balancing == "least_latency" {
            LoadBalancing::LeastLatency
        } else {
            LoadBalancing::Weighted
        },
        retry,
        timeouts,
        log_bodies: r.log_bodies,
        default_max_tokens,
        cache,
        tier: (!r.tier.is_empty()).then(|| r.tier.clone()),
    })
}

/// Picks the route's value, else the default's, else `fallback`.
fn pick<'a>(route: Option<&'a str>, default: Option<&'a str>) -> &'a str {
    match route {
        Some(v) if !v.is_empty() => v,
        _ => default.unwrap_or(""),
    }
}

fn merge_retry(
    path: &str,
    r: Option<&proto::RetryPolicy>,
    d: Option<&proto::RetryPolicy>,
) -> Result<RetrySettings, FieldError> {
    let base = pick(
        r.map(|r| r.backoff_base.as_str()),
        d.map(|d| d.backoff_base.as_str()),
    );
    let max = pick(
        r.map(|r| r.backoff_max.as_str()),
        d.map(|d| d.backoff_max.as_str()),
    );
    Ok(RetrySettings {
        max_retries: r
            .and_then(|r| r.max_retries)
            .or(d.and_then(|d| d.max_retries))
            .unwrap_or(2),
        backoff_base: parse_duration(
            &format!("{path}.retry.backoff_base"),
            base,
            Duration::from_millis(50),
        )?,
        backoff_max: parse_duration(
            &format!("{path}.retry.backoff_max"),
            max,
            Duration::from_secs(1),
        )?,
        budget_ratio: r
            .and_then(|r| r.budget_ratio)
            .or(d.and_then(|d| d.budget_ratio))
            .unwrap_or(0.2),
    })
}

fn merge_timeouts(
    path: &str,
    r: Option<&proto::Timeouts>,
    d: Option<&proto::Timeouts>,
) -> Result<Timeouts, FieldError> {
    let get = |f: fn(&proto::Timeouts) -> &str, field: &str, default: Duration| {
        parse_duration(
            &format!("{path}.timeouts.{field}"),
            pick(r.map(f), d.map(f)),
            default,
        )
    };
    Ok(Timeouts {
        connect: get(|t| &t.connect, "connect", Duration::from_secs(2))?,
        first_byte: get(|t| &t.first_byte, "first_byte", Duration::from_secs(30))?,
        idle: get(|t| &t.idle, "idle", Duration::from_secs(30))?,
        total: get(|t| &t.total, "total", Duration::from_secs(300))?,
    })
}

fn compile_limits(s: Option<&proto::ServerLimits>) -> Result<ServerLimits, FieldError> {
    let d = ServerLimits::default();
    let Some(s) = s else { return Ok(d) };
    Ok(ServerLimits {
        max_body_bytes: if s.max_body_bytes == 0 {
            d.max_body_bytes
        } else {
            usize::try_from(s.max_body_bytes).unwrap_or(usize::MAX)
        },
        max_header_bytes: if s.max_header_bytes == 0 {
            d.max_header_bytes
        } else {
            usize::try_from(s.max_header_bytes).unwrap_or(usize::MAX)
        },
        header_timeout: parse_duration(
            "server.header_timeout",
            &s.header_timeout,
            d.header_timeout,
        )?,
        body_timeout: parse_duration("server.body_timeout", &s.body_timeout, d.body_timeout)?,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn doc(yaml: &str) -> proto::Config {
        proto::from_yaml_str(yaml, |_| None).unwrap()
    }

    const BASE: &str = "providers:\n  p: {kind: anthropic, base_url: 'https://api.example.com/v1/', api_key_env: KEY}\nroutes:\n  m:\n    tiers:\n      - {name: primary, targets: [{provider: p, model: x, weight: 3}]}\n      - targets: [{provider: p, model: y}]\n    timeouts: {connect: 250ms}\ndefaults:\n  timeouts: {connect: 1s, idle: 5s}\n  retry: {max_retries: 0}\n";

    #[test]
    fn compiles_with_defaults_and_overrides() {
        let env = |n: &str| (n == "KEY").then(|| "sk-test".to_string());
        let cfg = EdgeConfig::compile(doc(BASE), 7, &env).unwrap();
        let p = &cfg.providers["p"];
        assert!(p.tls);
        assert_eq!(
            (p.host.as_str(), p.port, p.base_path.as_str()),
            ("api.example.com", 443, "/v1")
        );
        assert_eq!(p.api_key.as_deref(), Some("sk-test"));
        let r = &cfg.routes["m"];
        assert_eq!(r.tiers.len(), 2);
        assert_eq!(r.tiers[1].name, "tier1");
        assert_eq!(r.tiers[0].targets[0].weight, 3);
        assert_eq!(r.tiers[1].targets[0].id, "p/y");
        assert_eq!(r.timeouts.connect, Duration::from_millis(250));
        assert_eq!(r.timeouts.idle, Duration::from_secs(5));
        assert_eq!(r.timeouts.first_byte, Duration::from_secs(30));
        assert_eq!(r.retry.max_retries, 0);
        assert_eq!(r.default_max_tokens, 4096);
        assert_eq!(cfg.server.max_body_bytes, 4 * 1024 * 1024);
    }

    #[test]
    fn missing_credential_names_the_field() {
        let err = EdgeConfig::compile(doc(BASE), 1, &|_| None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "providers.p.api_key_env: environment variable `KEY` is not set"
        );
    }
}
