//! Cache policy: the route's settings plus the client's `Cache-Control`
//! decide, per request, whether the cache is read, written, or left alone.

use std::time::Duration;

use crate::formats::ChatRequest;

/// Response header telling the client what the cache did.
pub const CACHE_STATUS_HEADER: &str = "x-switchyard-cache";

/// The route's cache settings (mirror of `config::CacheSettings`; a route
/// without a cache has no policy at all).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachePolicy {
    /// How long an entry may be served. Also caps a client's `max-age`.
    pub ttl: Duration,
    /// Largest entry stored (serialized-size estimate, bytes).
    pub max_entry_bytes: u64,
    /// Whether requests sampled at temperature > 0 (or with no temperature:
    /// the providers' default is 1.0) may be cached.
    pub cache_nondeterministic: bool,
}

/// The request's `Cache-Control` directives that the cache honours.
///
/// * `no-store`: the cache is neither read nor written;
/// * `no-cache`: the cache is not read (nor joined: no coalescing), but the
///   fresh answer is stored (a refresh);
/// * `max-age=N`: only an entry at most N seconds old is accepted (never
///   older than the route's TTL); `max-age=0` means `no-cache`.
///
/// Other directives are ignored; a malformed `max-age` is ignored; several
/// `max-age`s → the smallest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheControl {
    pub no_cache: bool,
    pub no_store: bool,
    pub max_age: Option<Duration>,
}

impl CacheControl {
    /// Parses one `Cache-Control` header value (comma-separated directives,
    /// case-insensitive names, optional quoted values, any whitespace).
    pub fn parse(value: &str) -> Self {
        let mut cc = CacheControl::default();
        cc.merge(value);
        cc
    }

    /// Parses every `Cache-Control` line of a request (a header may repeat).
    pub fn parse_all<'a>(values: impl IntoIterator<Item = &'a str>) -> Self {
        let mut cc = CacheControl::default();
        for v in values {
            cc.merge(v);
        }
        cc
    }

    fn merge(&mut self, value: &str) {
        for directive in split_directives(value) {
            let (name, arg) = match directive.split_once('=') {
                Some((n, a)) => (n.trim(), Some(unquote(a.trim()))),
                None => (directive.trim(), None),
            };
            if name.eq_ignore_ascii_case("no-store") {
                self.no_store = true;
            } else if name.eq_ignore_ascii_case("no-cache") {
                self.no_cache = true;
            } else if name.eq_ignore_ascii_case("max-age") {
                if let Some(secs) = arg.and_then(parse_delta_seconds) {
                    let d = Duration::from_secs(secs);
                    self.max_age = Some(self.max_age.map_or(d, |m| m.min(d)));
                }
            }
        }
    }

    /// Whether no directive the cache honours was given.
    pub fn is_empty(&self) -> bool {
        *self == CacheControl::default()
    }
}

/// Splits on commas outside quoted strings.
fn split_directives(value: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, c) in value.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            ',' if !in_quotes => {
                out.push(&value[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&value[start..]);
    out.into_iter().filter(|d| !d.trim().is_empty()).collect()
}

fn unquote(s: &str) -> &str {
    s.strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(s)
}

/// RFC 9111 delta-seconds: digits only; too large saturates (2^31 per the RFC).
fn parse_delta_seconds(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.parse::<u64>().unwrap_or(1 << 31).min(1 << 31))
}

/// Why the cache was not consulted. `as_str` is the `reason` label of
/// `switchyard_cache_bypass_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BypassReason {
    /// `Cache-Control: no-store`.
    NoStore,
    /// Sampling is non-deterministic and the route does not cache such requests.
    Nondeterministic,
    /// `Cache-Control: no-cache` / `max-age=0`: not read, but stored (refresh).
    NoCache,
    /// A coalesced request waited for its leader until its deadline and went
    /// upstream itself.
    CoalesceTimeout,
}

impl BypassReason {
    pub fn as_str(self) -> &'static str {
        match self {
            BypassReason::NoStore => "no_store",
            BypassReason::Nondeterministic => "nondeterministic",
            BypassReason::NoCache => "no_cache",
            BypassReason::CoalesceTimeout => "coalesce_timeout",
        }
    }
}

/// The `x-switchyard-cache` response header value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CacheStatus {
    /// Served from the cache (a stored entry, or a coalesced leader's answer).
    Hit,
    /// Looked up, not found: answered upstream (and stored if it succeeds).
    Miss,
    /// The cache was not read (no-store, no-cache, non-deterministic, ...).
    Bypass,
}

impl CacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "HIT",
            CacheStatus::Miss => "MISS",
            CacheStatus::Bypass => "BYPASS",
        }
    }
}

impl std::fmt::Display for CacheStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How one request may use the cache (from [`decide`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Access {
    /// Read the cache (and coalesce). `false` = refresh (`no-cache`).
    pub lookup: bool,
    /// Oldest acceptable entry: `min(max-age, ttl)`.
    pub max_age: Duration,
    /// Lifetime of a stored entry.
    pub ttl: Duration,
    /// Largest entry stored.
    pub max_entry_bytes: u64,
}

/// The cache decision for one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The route has no cache: no lookup, no store, no header.
    Disabled,
    /// Neither read nor write; header `BYPASS`.
    Bypass(BypassReason),
    /// Use the cache as described.
    Use(Access),
}

/// Whether sampling makes the answer non-deterministic: any temperature
/// above 0, and a missing temperature too (OpenAI's and Anthropic's default
/// is 1.0). `top_p`, `seed` and the like do not make sampling greedy.
pub fn is_nondeterministic(req: &ChatRequest) -> bool {
    match req.temperature {
        Some(t) => t > 0.0 || t.is_nan(),
        None => true,
    }
}

/// Pure policy decision: route settings (`None` = caching disabled) × request
/// sampling × client `Cache-Control`.
pub fn decide(policy: Option<&CachePolicy>, req: &ChatRequest, cc: &CacheControl) -> Decision {
    let Some(p) = policy else {
        return Decision::Disabled;
    };
    if cc.no_store {
        return Decision::Bypass(BypassReason::NoStore);
    }
    if !p.cache_nondeterministic && is_nondeterministic(req) {
        return Decision::Bypass(BypassReason::Nondeterministic);
    }
    let refresh = cc.no_cache || cc.max_age == Some(Duration::ZERO);
    Decision::Use(Access {
        lookup: !refresh,
        max_age: cc.max_age.map_or(p.ttl, |m| m.min(p.ttl)),
        ttl: p.ttl,
        max_entry_bytes: p.max_entry_bytes,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::formats::{parse_request, ApiFormat};

    fn req(temperature: Option<&str>) -> ChatRequest {
        let t = temperature.map_or(String::new(), |t| format!(r#","temperature":{t}"#));
        let body = format!(r#"{{"model":"m","messages":[{{"role":"user","content":"hi"}}]{t}}}"#);
        parse_request(ApiFormat::OpenAi, body.as_bytes()).unwrap()
    }

    fn policy(nondet: bool) -> CachePolicy {
        CachePolicy {
            ttl: Duration::from_secs(300),
            max_entry_bytes: 1 << 20,
            cache_nondeterministic: nondet,
        }
    }

    #[test]
    fn parses_cache_control() {
        assert_eq!(CacheControl::parse(""), CacheControl::default());
        assert!(CacheControl::parse("").is_empty());
        let cc = CacheControl::parse("No-Cache");
        assert!(cc.no_cache && !cc.no_store && cc.max_age.is_none());
        let cc = CacheControl::parse(" no-store ,max-age=60");
        assert!(cc.no_store && !cc.no_cache);
        assert_eq!(cc.max_age, Some(Duration::from_secs(60)));
        let cc = CacheControl::parse(r#"MAX-AGE="30", private, x-ext="a,b", no-cache"#);
        assert_eq!(cc.max_age, Some(Duration::from_secs(30)));
        assert!(cc.no_cache);
        // Malformed max-age values are ignored.
        for bad in [
            "max-age",
            "max-age=",
            "max-age=-1",
            "max-age=1.5",
            "max-age=abc",
            "max-age= 5x",
        ] {
            assert_eq!(CacheControl::parse(bad).max_age, None, "{bad}");
        }
        // Huge values saturate instead of failing.
        assert_eq!(
            CacheControl::parse("max-age=99999999999999999999999").max_age,
            Some(Duration::from_secs(1 << 31))
        );
        // Several directives / lines: the strictest max-age wins.
        let cc = CacheControl::parse_all(["max-age=100", "max-age=10, max-age=50"]);
        assert_eq!(cc.max_age, Some(Duration::from_secs(10)));
        // A quoted comma does not split.
        let cc = CacheControl::parse(r#"community="no-store,x""#);
        assert!(!cc.no_store);
    }

    #[test]
    fn temperature_rules() {
        assert!(
            is_nondeterministic(&req(None)),
            "absent → provider default 1.0"
        );
        assert!(is_nondeterministic(&req(Some("1"))));
        assert!(is_nondeterministic(&req(Some("0.01"))));
        assert!(!is_nondeterministic(&req(Some("0"))));
        assert!(!is_nondeterministic(&req(Some("0.0"))));

        let none = CacheControl::default();
        assert_eq!(
            decide(Some(&policy(false)), &req(None), &none),
            Decision::Bypass(BypassReason::Nondeterministic)
        );
        assert_eq!(
            decide(Some(&policy(false)), &req(Some("0.7")), &none),
            Decision::Bypass(BypassReason::Nondeterministic)
        );
        assert!(matches!(
            decide(Some(&policy(false)), &req(Some("0")), &none),
            Decision::Use(Access { lookup: true, .. })
        ));
        assert!(matches!(
            decide(Some(&policy(true)), &req(None), &none),
            Decision::Use(Access { lookup: true, .. })
        ));
        assert!(matches!(
            decide(Some(&policy(true)), &req(Some("1.5")), &none),
            Decision::Use(_)
        ));
    }

    #[test]
    fn disabled_route() {
        assert_eq!(
            decide(None, &req(Some("0")), &CacheControl::default()),
            Decision::Disabled
        );
        assert_eq!(
            decide(None, &req(Some("0")), &CacheControl::parse("no-store")),
            Decision::Disabled
        );
    }

    #[test]
    fn cache_control_effects() {
        let p = policy(false);
        let r = req(Some("0"));
        // no-store: neither read nor write, even combined with no-cache.
        assert_eq!(
            decide(Some(&p), &r, &CacheControl::parse("no-cache, no-store")),
            Decision::Bypass(BypassReason::NoStore)
        );
        // no-store wins over the temperature check too.
        assert_eq!(
            decide(Some(&p), &req(None), &CacheControl::parse("no-store")),
            Decision::Bypass(BypassReason::NoStore)
        );
        // no-cache: no lookup, but stored with the route's ttl.
        assert_eq!(
            decide(Some(&p), &r, &CacheControl::parse("no-cache")),
            Decision::Use(Access {
                lookup: false,
                max_age: p.ttl,
                ttl: p.ttl,
                max_entry_bytes: p.max_entry_bytes,
            })
        );
        // max-age=0 is a refresh.
        assert!(matches!(
            decide(Some(&p), &r, &CacheControl::parse("max-age=0")),
            Decision::Use(Access { lookup: false, .. })
        ));
        // max-age below the ttl narrows what is accepted, not what is stored.
        assert_eq!(
            decide(Some(&p), &r, &CacheControl::parse("max-age=10")),
            Decision::Use(Access {
                lookup: true,
                max_age: Duration::from_secs(10),
                ttl: p.ttl,
                max_entry_bytes: p.max_entry_bytes,
            })
        );
        // max-age above the ttl is capped by it.
        assert!(matches!(
            decide(Some(&p), &r, &CacheControl::parse("max-age=86400")),
            Decision::Use(Access { max_age, .. }) if max_age == p.ttl
        ));
    }

    #[test]
    fn status_strings() {
        assert_eq!(CacheStatus::Hit.as_str(), "HIT");
        assert_eq!(CacheStatus::Miss.as_str(), "MISS");
        assert_eq!(CacheStatus::Bypass.to_string(), "BYPASS");
        assert_eq!(BypassReason::NoStore.as_str(), "no_store");
        assert_eq!(BypassReason::Nondeterministic.as_str(), "nondeterministic");
        assert_eq!(BypassReason::NoCache.as_str(), "no_cache");
        assert_eq!(BypassReason::CoalesceTimeout.as_str(), "coalesce_timeout");
    }
}
