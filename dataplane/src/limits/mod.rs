//! Who may call, how often, and how much they may spend.
//!
//! - [`keys`]: virtual API keys (hashed) → principal (team, user, tier,
//!   allowed models, default feature);
//! - [`buckets`]: requests/min (governor), tokens/min (reserve + reconcile)
//!   and concurrency per key;
//! - [`budgets`]: spend per feature / team / key per day or month, with
//!   soft alerts and hard limits held by worst-case reservations;
//! - [`grants`]: with a control plane, this edge's shares of the global
//!   budgets (allowances granted by the control plane).
//!
//! The request path calls [`Limits::admit`] after resolving the route and
//! [`Limits::settle`] with the real usage once the call ends, however it
//! ends (streams cut mid-way included).

pub mod buckets;
pub mod budgets;
pub mod grants;
pub mod keys;

use crate::error::{ApiError, ErrorKind};
use buckets::{Concurrency, ConcurrencySlot, RateState, RequestLimiter, TokenBuckets};
use budgets::{BudgetRule, Exceeded, Ledger, Reservation, Scope, SoftAlert, Window};
use grants::{GrantTable, GrantWait, Refusal};
use http::HeaderName;
use keys::{KeyInfo, KeyTable};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use switchyard_proto::config as proto;

/// Rate limits of a tier; `None` = unlimited.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TierLimits {
    pub requests_per_minute: Option<u32>,
    pub tokens_per_minute: Option<u64>,
    pub daily_cost_usd: Option<f64>,
    pub max_concurrency: Option<u32>,
}

/// The compiled limits part of a config.
#[derive(Debug, Default)]
pub struct LimitsConfig {
    pub keys: KeyTable,
    pub tiers: HashMap<String, TierLimits>,
    pub budgets: Vec<Arc<BudgetRule>>,
    /// Teams and features the config names (keys, budgets): the only values
    /// used as metric labels (anything else is `other`).
    pub known_teams: HashSet<String>,
    pub known_features: HashSet<String>,
}

impl LimitsConfig {
    /// `team` as a metric label: `none`, a team the config names, or `other`.
    pub fn team_label<'a>(&'a self, team: Option<&'a str>) -> &'a str {
        label(&self.known_teams, team)
    }

    /// `feature` as a metric label (like [`LimitsConfig::team_label`]).
    pub fn feature_label<'a>(&'a self, feature: Option<&'a str>) -> &'a str {
        label(&self.known_features, feature)
    }
}

fn label<'a>(known: &HashSet<String>, v: Option<&'a str>) -> &'a str {
    match v {
        None | Some("") => "none",
        Some(v) if known.contains(v) => v,
        Some(_) => "other",
    }
}

fn positive<T: PartialOrd + Default + Copy>(v: T) -> Option<T> {
    (v > T::default()).then_some(v)
}

impl LimitsConfig {
    pub fn compile(doc: &proto::Config) -> Self {
        let tiers = doc
            .tiers
            .iter()
            .map(|(name, t)| {
                (
                    name.clone(),
                    TierLimits {
                        requests_per_minute: positive(
                            u32::try_from(t.requests_per_minute).unwrap_or(u32::MAX),
                        ),
                        tokens_per_minute: positive(t.tokens_per_minute),
                        daily_cost_usd: positive(t.daily_cost_usd),
                        max_concurrency: positive(t.max_concurrency),
                    },
                )
            })
            .collect();
        let budgets = doc
            .budgets
            .iter()
            .map(|b| {
                Arc::new(BudgetRule {
                    name: b.name.clone(),
                    scope: match b.scope.as_str() {
                        "team" => Scope::Team,
                        "key" => Scope::Key,
                        _ => Scope::Feature,
                    },
                    matches: b.r#match.clone(),
                    window: if b.window == "month" {
                        Window::Month
                    } else {
                        Window::Day
                    },
                    soft_usd: positive(b.soft_limit_usd),
                    hard_usd: positive(b.hard_limit_usd),
                    downgrade_to: (!b.downgrade_to.is_empty()).then(|| b.downgrade_to.clone()),
                    fail_open: b.fail_open,
                })
            })
            .collect();
        let mut known_teams: HashSet<String> = doc
            .keys
            .iter()
            .filter(|k| !k.team.is_empty())
            .map(|k| k.team.clone())
            .collect();
        let mut known_features: HashSet<String> = doc
            .keys
            .iter()
            .filter(|k| !k.default_feature.is_empty())
            .map(|k| k.default_feature.clone())
            .collect();
        for b in &doc.budgets {
            match b.scope.as_str() {
                "team" => known_teams.insert(b.r#match.clone()),
                "feature" => known_features.insert(b.r#match.clone()),
                _ => false,
            };
        }
        Self {
            keys: KeyTable::compile(doc),
            tiers,
            budgets,
            known_teams,
            known_features,
        }
    }
}

/// The identified caller and its attribution.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    pub key: Option<Arc<KeyInfo>>,
    pub feature: Option<String>,
    pub team: Option<String>,
    pub user: Option<String>,
}

impl Caller {
    fn matches(&self, rule: &BudgetRule) -> bool {
        let v = match rule.scope {
            Scope::Feature => self.feature.as_deref(),
            Scope::Team => self.team.as_deref(),
            Scope::Key => self.key.as_ref().map(|k| k.id.as_str()),
        };
        v == Some(rule.matches.as_str())
    }
}

/// What a call is expected to cost at most, for reservations.
#[derive(Debug, Clone, Copy, Default)]
pub struct Estimate {
    pub tokens: u64,
    pub cost_usd: f64,
}

/// A call's admission: held slots and reservations, released by
/// [`Limits::settle`] (or on drop, which releases the concurrency slot).
#[derive(Debug, Default)]
pub struct Admission {
    _slot: Option<ConcurrencySlot>,
    tokens: Option<(String, u64, u64)>,
    budgets: Vec<Reservation>,
    /// `x-ratelimit-*` headers for the response.
    pub headers: Vec<(HeaderName, String)>,
}

impl Admission {
    /// Whether the call counts against a hard budget (its output must then
    /// stay within what was reserved: see `docs/budgets.md`).
    pub fn hard_budget(&self) -> bool {
        self.budgets.iter().any(Reservation::is_hard)
    }
}

/// Formats a reset duration like OpenAI does (`1s`, `6m0s`, `250ms`).
pub fn format_reset(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = d.as_secs_f64();
    if secs < 60.0 {
        let s = format!("{secs:.3}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        return format!("{s}s");
    }
    let total = d.as_secs();
    format!("{}m{}s", total / 60, total % 60)
}

fn rate_headers(kind: &str, s: &RateState, out: &mut Vec<(HeaderName, String)>) {
    let name = |n: &str| HeaderName::try_from(format!("x-ratelimit-{n}-{kind}")).ok();
    if let Some(h) = name("limit") {
        out.push((h, s.limit.to_string()));
    }
    if let Some(h) = name("remaining") {
        out.push((h, s.remaining.to_string()));
    }
    if let Some(h) = name("reset") {
        out.push((h, format_reset(s.reset)));
    }
}

/// Limit state shared by all requests on an edge (survives config swaps).
#[derive(Default)]
pub struct Limits {
    requests: RequestLimiter,
    tokens: TokenBuckets,
    concurrency: Concurrency,
    pub ledger: Ledger,
    /// With a control plane: this edge's shares of global budgets. `None`
    /// (standalone): every hard limit is held on this edge alone.
    pub grants: Option<Arc<GrantTable>>,
}

fn too_many(
    message: String,
    retry_after: Duration,
    code: &'static str,
    headers: &[(HeaderName, String)],
) -> (ApiError, Vec<(HeaderName, String)>) {
    let kind = if code == "budget_exceeded" {
        ErrorKind::BudgetExceeded
    } else {
        ErrorKind::RateLimited
    };
    (
        ApiError::new(kind, message)
            .with_code(code)
            .with_retry_after(retry_after.max(Duration::from_secs(1))),
        headers.to_vec(),
    )
}

/// Why a call was not admitted.
pub enum Rejection {
    /// 429 (rate limit or budget) with the headers to send.
    Limited(ApiError, Vec<(HeaderName, String)>),
    /// A budget's hard limit is reached and it downgrades to this route.
    Downgrade(Exceeded),
    /// This edge's share of a global budget is used up and more was asked
    /// for: wait (bounded) and call [`Limits::admit_with`] again.
    AwaitGrant(GrantWait),
}

impl Limits {
    /// Limits whose hard budgets are shares granted by a control plane.
    pub fn with_grants(grants: Arc<GrantTable>) -> Self {
        Self {
            grants: Some(grants),
            ..Self::default()
        }
    }

    /// The answer to an exceeded hard budget: a downgrade if the budget has
    /// one and it is allowed, else 429 `budget_exceeded`.
    pub fn budget_rejection(&self, e: Exceeded, allow_downgrade: bool) -> Rejection {
        if allow_downgrade && e.downgrade_to.is_some() {
            return Rejection::Downgrade(e);
        }
        let message = match e.global_limit {
            Some(global) => format!(
                "budget `{}` exceeded: its global limit of ${global:.4} across all edges is used up (this edge's share ${:.4}, ${:.4} spent here this window)",
                e.budget, e.limit, e.spent
            ),
            None => format!(
                "budget `{}` exceeded: ${:.4} of ${:.4} spent this window",
                e.budget, e.spent, e.limit
            ),
        };
        let (err, h) = too_many(message, e.reset_in, "budget_exceeded", &[]);
        crate::telemetry::metrics::budget_exceeded(&e.budget);
        Rejection::Limited(err, h)
    }

    /// Admits a call of `caller` on a route with effective `tier`, or says
    /// why not (never [`Rejection::AwaitGrant`]).
    pub fn admit(
        &self,
        cfg: &LimitsConfig,
        caller: &Caller,
        tier: Option<&str>,
        est: Estimate,
        allow_downgrade: bool,
    ) -> Result<Admission, Rejection> {
        self.admit_with(cfg, caller, tier, est, allow_downgrade, false)
    }

    /// [`Limits::admit`]; with `may_wait`, a global budget whose share on
    /// this edge is used up answers [`Rejection::AwaitGrant`] while more is
    /// on its way. Checks run cheapest-to-undo first: concurrency, budgets,
    /// tokens, then requests (which cannot be refunded).
    pub fn admit_with(
        &self,
        cfg: &LimitsConfig,
        caller: &Caller,
        tier: Option<&str>,
        est: Estimate,
        allow_downgrade: bool,
        may_wait: bool,
    ) -> Result<Admission, Rejection> {
        let mut adm = Admission::default();
        let tier_limits = tier.and_then(|t| cfg.tiers.get(t));
        let key_id = caller.key.as_ref().map(|k| k.id.as_str());
        if let (Some(t), Some(id)) = (tier_limits, key_id) {
            if let Some(max) = t.max_concurrency {
                adm._slot = Some(self.concurrency.acquire(id, max).ok_or_else(|| {
                    Rejection::Limited(
                        ApiError::new(
                            ErrorKind::RateLimited,
                            format!("concurrency limit reached: at most {max} requests in flight for this key"),
                        )
                        .with_code("concurrency_limit_exceeded")
                        .with_retry_after(Duration::from_secs(1)),
                        vec![],
                    )
                })?);
            }
        }
        let now = SystemTime::now();
        // Budgets that apply: configured ones matching the caller, plus the
        // tier's daily cost cap per key.
        let tier_daily = match (tier_limits.and_then(|t| t.daily_cost_usd), key_id, tier) {
            (Some(usd), Some(id), Some(tier)) => Some(Arc::new(BudgetRule {
                name: format!("tier:{tier}:key:{id}:daily"),
                scope: Scope::Key,
                matches: id.to_string(),
                window: Window::Day,
                soft_usd: None,
                hard_usd: Some(usd),
                downgrade_to: None,
                fail_open: false,
            })),
            _ => None,
        };
        for rule in cfg
            .budgets
            .iter()
            .filter(|r| caller.matches(r))
            .chain(tier_daily.iter())
        {
            let reserved = match &self.grants {
                Some(g) => g.reserve(&self.ledger, rule, est.cost_usd, now),
                None => self
                    .ledger
                    .reserve(
                        rule,
                        rule.hard_usd.unwrap_or(f64::INFINITY),
                        est.cost_usd,
                        now,
                    )
                    .map_err(Refusal::Exceeded),
            };
            match reserved {
                Ok(r) => adm.budgets.push(r),
                Err(refusal) => {
                    self.release_budgets(&mut adm);
                    return Err(match refusal {
                        Refusal::Wait(_, w) if may_wait => Rejection::AwaitGrant(w),
                        Refusal::Wait(e, _) | Refusal::Exceeded(e) => {
                            self.budget_rejection(e, allow_downgrade)
                        }
                    });
                }
            }
        }
        if let (Some(t), Some(id)) = (tier_limits, key_id) {
            if let Some(tpm) = t.tokens_per_minute {
                match self.tokens.reserve(id, tpm, est.tokens) {
                    Ok(s) => {
                        rate_headers("tokens", &s, &mut adm.headers);
                        adm.tokens = Some((id.to_string(), tpm, est.tokens));
                    }
                    Err(wait) => {
                        self.release_budgets(&mut adm);
                        let (err, h) = too_many(
                            format!(
                                "rate limit exceeded: tokens per minute (limit {tpm}, this request needs about {})",
                                est.tokens
                            ),
                            wait,
                            "rate_limit_exceeded",
                            &adm.headers,
                        );
                        return Err(Rejection::Limited(err, h));
                    }
                }
            }
            if let Some(rpm) = t.requests_per_minute {
                match self.requests.check(id, rpm) {
                    Ok(s) => rate_headers("requests", &s, &mut adm.headers),
                    Err(wait) => {
                        self.release_budgets(&mut adm);
                        if let Some((id, tpm, n)) = adm.tokens.take() {
                            self.tokens.reconcile(&id, tpm, n, 0);
                        }
                        let mut h = adm.headers.clone();
                        rate_headers(
                            "requests",
                            &RateState {
                                limit: rpm,
                                remaining: 0,
                                reset: wait,
                            },
                            &mut h,
                        );
                        let (err, h) = too_many(
                            format!("rate limit exceeded: requests per minute (limit {rpm})"),
                            wait,
                            "rate_limit_exceeded",
                            &h,
                        );
                        return Err(Rejection::Limited(err, h));
                    }
                }
            }
        }
        Ok(adm)
    }

    fn release_budgets(&self, adm: &mut Admission) {
        for r in adm.budgets.drain(..) {
            self.ledger.settle(r, 0.0);
        }
    }

    /// Settles a finished call with its real tokens and cost.
    pub fn settle(&self, mut adm: Admission, tokens: u64, cost_usd: f64) -> Vec<SoftAlert> {
        if let Some((id, tpm, reserved)) = adm.tokens.take() {
            self.tokens.reconcile(&id, tpm, reserved, tokens);
        }
        adm.budgets
            .drain(..)
            .filter_map(|r| self.ledger.settle(r, cost_usd))
            .collect()
    }
}

/// Maps an authentication failure to the 401 answer.
pub fn auth_error(e: &keys::AuthError) -> ApiError {
    ApiError::new(ErrorKind::Authentication, e.to_string()).with_code(match e {
        keys::AuthError::Missing => "missing_api_key",
        keys::AuthError::Unknown => "invalid_api_key",
        keys::AuthError::Revoked(_) => "revoked_api_key",
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn reset_format() {
        assert_eq!(format_reset(Duration::from_millis(250)), "250ms");
        assert_eq!(format_reset(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_reset(Duration::from_secs(1)), "1s");
        assert_eq!(format_reset(Duration::from_secs(360)), "6m0s");
    }

    fn cfg(yaml: &str) -> LimitsConfig {
        LimitsConfig::compile(&proto::from_yaml_str(yaml, |_| None).unwrap())
    }

    fn caller(c: &LimitsConfig, secret: &str, feature: Option<&str>) -> Caller {
        let key = c.keys.authenticate(Some(secret)).unwrap();
        Caller {
            team: key.as_ref().and_then(|k| k.team.clone()),
            feature: feature.map(str::to_string),
            key,
            user: None,
        }
    }

    #[test]
    fn tier_requests_tokens_and_headers() {
        let c = cfg("tiers:\n  free: {requests_per_minute: 3, tokens_per_minute: 1000}\nkeys:\n  - {id: k1, secret: s1, tier: free}\n");
        let l = Limits::default();
        let who = caller(&c, "s1", None);
        let est = Estimate {
            tokens: 100,
            cost_usd: 0.0,
        };
        let a = l.admit(&c, &who, Some("free"), est, false).ok().unwrap();
        let h: HashMap<String, String> = a
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        assert_eq!(h["x-ratelimit-limit-requests"], "3");
        assert_eq!(h["x-ratelimit-remaining-requests"], "2");
        assert_eq!(h["x-ratelimit-limit-tokens"], "1000");
        assert_eq!(h["x-ratelimit-remaining-tokens"], "900");
        l.settle(a, 40, 0.0);
        assert!(l.admit(&c, &who, Some("free"), est, false).is_ok());
        assert!(l.admit(&c, &who, Some("free"), est, false).is_ok());
        match l.admit(&c, &who, Some("free"), est, false) {
            Err(Rejection::Limited(e, h)) => {
                assert_eq!(e.status(), 429);
                assert!(e.retry_after.is_some());
                assert!(e.message.contains("requests per minute"), "{}", e.message);
                assert!(h
                    .iter()
                    .any(|(k, v)| k == "x-ratelimit-remaining-requests" && v == "0"));
            }
            _ => panic!("4th request must be limited"),
        }
    }

    #[test]
    fn budget_rejects_or_downgrades() {
        let c = cfg("budgets:\n  - {name: b, scope: feature, match: chat, window: day, hard_limit_usd: 1.0, downgrade_to: cheap}\n");
        let l = Limits::default();
        let who = caller(&c, "", Some("chat"));
        let est = Estimate {
            tokens: 10,
            cost_usd: 0.6,
        };
        let a = l.admit(&c, &who, None, est, true).ok().unwrap();
        match l.admit(&c, &who, None, est, true) {
            Err(Rejection::Downgrade(e)) => assert_eq!(e.downgrade_to.as_deref(), Some("cheap")),
            _ => panic!("expected a downgrade"),
        }
        match l.admit(&c, &who, None, est, false) {
            Err(Rejection::Limited(e, _)) => assert_eq!(e.code, Some("budget_exceeded")),
            _ => panic!("expected budget_exceeded"),
        }
        // Another feature is unaffected.
        assert!(l
            .admit(&c, &caller(&c, "", Some("other")), None, est, false)
            .is_ok());
        l.settle(a, 10, 0.1);
        assert!(l.admit(&c, &who, None, est, false).is_ok());
    }
}
