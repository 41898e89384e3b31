//! Virtual API keys: who is calling. Keys are stored hashed (sha256); the
//! client presents the secret as `Authorization: Bearer …` (OpenAI SDKs) or
//! `x-api-key: …` (Anthropic SDKs).

use std::collections::HashMap;
use std::sync::Arc;
use switchyard_proto::config::{self as proto, sha256_hex};

/// The principal a key is bound to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyInfo {
    pub id: String,
    pub team: Option<String>,
    pub user: Option<String>,
    pub tier: Option<String>,
    /// Public model names this key may call; empty = all.
    pub allowed_models: Vec<String>,
    pub default_feature: Option<String>,
    pub revoked: bool,
}

impl KeyInfo {
    pub fn may_call(&self, model: &str) -> bool {
        self.allowed_models.is_empty() || self.allowed_models.iter().any(|m| m == model)
    }
}

/// Why a caller was not identified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing API key: send `Authorization: Bearer <key>` or `x-api-key: <key>`")]
    Missing,
    #[error("invalid API key")]
    Unknown,
    #[error("API key `{0}` has been revoked")]
    Revoked(String),
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

/// Keys by hash, compiled from the config.
#[derive(Debug, Default)]
pub struct KeyTable {
    by_hash: HashMap<String, Arc<KeyInfo>>,
    /// Reject calls without a valid key.
    pub require_keys: bool,
}

impl KeyTable {
    pub fn compile(doc: &proto::Config) -> Self {
        let by_hash = doc
            .keys
            .iter()
            .map(|k| {
                let hash = if k.secret_sha256.is_empty() {
                    sha256_hex(k.secret.as_bytes())
                } else {
                    k.secret_sha256.to_ascii_lowercase()
                };
                let info = KeyInfo {
                    id: k.id.clone(),
                    team: non_empty(&k.team),
                    user: non_empty(&k.user),
                    tier: non_empty(&k.tier),
                    allowed_models: k.allowed_models.clone(),
                    default_feature: non_empty(&k.default_feature),
                    revoked: k.revoked,
                };
                (hash, Arc::new(info))
            })
            .collect();
        Self {
            by_hash,
            require_keys: doc.require_keys.unwrap_or(!doc.keys.is_empty()),
        }
    }

    /// Identifies the caller from the presented secret. With keys not
    /// required, an absent secret is anonymous (`Ok(None)`), but a presented
    /// unknown or revoked key is still rejected.
    pub fn authenticate(&self, presented: Option<&str>) -> Result<Option<Arc<KeyInfo>>, AuthError> {
        let Some(secret) = presented.filter(|s| !s.is_empty()) else {
            return if self.require_keys {
                Err(AuthError::Missing)
            } else {
                Ok(None)
            };
        };
        match self.by_hash.get(&sha256_hex(secret.as_bytes())) {
            Some(k) if k.revoked => Err(AuthError::Revoked(k.id.clone())),
            Some(k) => Ok(Some(k.clone())),
            // An open gateway ignores credentials it does not manage (e.g.
            // an SDK's placeholder key) unless keys are required.
            None if !self.require_keys => Ok(None),
            None => Err(AuthError::Unknown),
        }
    }
}

/// The secret from `Authorization: Bearer …` or `x-api-key`.
pub fn presented_secret(authorization: Option<&str>, x_api_key: Option<&str>) -> Option<String> {
    if let Some(a) = authorization {
        let a = a.trim();
        if let Some(rest) = a
            .strip_prefix("Bearer ")
            .or_else(|| a.strip_prefix("bearer "))
        {
            return Some(rest.trim().to_string());
        }
    }
    x_api_key.map(|k| k.trim().to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn table(yaml: &str) -> KeyTable {
        KeyTable::compile(&proto::from_yaml_str(yaml, |_| None).unwrap())
    }

    #[test]
    fn authenticates_by_hash_and_rejects_revoked_and_unknown() {
        let hash = sha256_hex(b"sk-b");
        let t = table(&format!(
            "keys:\n  - {{id: a, secret: sk-a, team: t1, tier: pro}}\n  - {{id: b, secret_sha256: '{hash}'}}\n  - {{id: c, secret: sk-c, revoked: true}}\n"
        ));
        assert!(t.require_keys);
        let a = t.authenticate(Some("sk-a")).unwrap().unwrap();
        assert_eq!(
            (a.id.as_str(), a.team.as_deref(), a.tier.as_deref()),
            ("a", Some("t1"), Some("pro"))
        );
        assert_eq!(t.authenticate(Some("sk-b")).unwrap().unwrap().id, "b");
        assert_eq!(
            t.authenticate(Some("sk-c")),
            Err(AuthError::Revoked("c".into()))
        );
        assert_eq!(t.authenticate(Some("nope")), Err(AuthError::Unknown));
        assert_eq!(t.authenticate(None), Err(AuthError::Missing));
    }

    #[test]
    fn open_gateway_without_keys() {
        let t = table("providers: {}\n");
        assert!(!t.require_keys);
        assert_eq!(t.authenticate(None), Ok(None));
        assert_eq!(t.authenticate(Some("sk-whatever")), Ok(None));
    }

    #[test]
    fn secret_from_either_header() {
        assert_eq!(
            presented_secret(Some("Bearer sk-1"), None).as_deref(),
            Some("sk-1")
        );
        assert_eq!(
            presented_secret(None, Some("sk-2")).as_deref(),
            Some("sk-2")
        );
        assert_eq!(
            presented_secret(Some("Basic xyz"), Some("sk-3")).as_deref(),
            Some("sk-3")
        );
        assert_eq!(presented_secret(None, None), None);
    }
}
