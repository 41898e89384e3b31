//! Cache keys: what makes two requests "the same".
//!
//! A key is the SHA-256 of a canonical JSON document
//! `[tenant, route signature, request material]` behind a version prefix:
//! * `tenant`: the team (`x-switchyard-team`) as a JSON string, or `null` for
//!   anonymous callers: a scope of its own that no team can name (JSON `null`
//!   and every string differ), so tenants never read each other's answers;
//! * the [`RouteSignature`]: the route name, its `default_max_tokens` (which
//!   fills a missing `max_tokens` for Anthropic upstreams) and its pinned
//!   target list, tier by tier (`provider/model` ids, sorted inside a tier
//!   since a tier's order does not change which models may answer). Changing
//!   any target of a route therefore retires its old entries;
//! * [`ChatRequest::cache_key_material`]: messages, tools, tool choice,
//!   sampling parameters, stop sequences, `user` and every unmodeled field,
//!   with object keys sorted. The public model name, `stream`,
//!   `include_usage` and the client's API shape are excluded: they change how
//!   an answer is rendered, not the answer.
//!
//! Parsing the body first makes the key independent of JSON key order and
//! whitespace.

use std::fmt;
use std::io;

use sha2::{Digest, Sha256};

use crate::formats::ChatRequest;

/// Bumped whenever the key material changes shape, so that old and new
/// encodings can never collide.
const KEY_VERSION: &[u8] = b"switchyard-response-cache/v1\0";

/// A response-cache key: SHA-256 of the canonical request in its scope.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheKey([u8; 32]);

impl CacheKey {
    /// The key of `req` for `tenant` (`None` = the anonymous scope) on the
    /// route described by `route`.
    pub fn compute(tenant: Option<&str>, route: &RouteSignature, req: &ChatRequest) -> Self {
        let material = req.cache_key_material();
        let mut w = HashWriter(Sha256::new());
        w.0.update(KEY_VERSION);
        // Writing into a hasher cannot fail, and serializing a `Value` or
        // strings cannot either; a failure would only make the key differ.
        let _ = serde_json::to_writer(&mut w, &(tenant, route.canonical.as_str(), &material));
        CacheKey(w.0.finalize().into())
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lowercase hex (64 characters), e.g. for logs.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CacheKey({})", self.to_hex())
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

struct HashWriter(Sha256);

impl io::Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What a route resolves to, as far as the answer is concerned: its name,
/// `default_max_tokens` and pinned targets per tier. Cheap to build per
/// request (a few short strings).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteSignature {
    name: String,
    canonical: String,
}

impl RouteSignature {
    /// `tiers`: for each tier in order, its targets' `provider/model` ids
    /// (`config::Target::id`). Order inside a tier does not matter.
    pub fn new<'a, T, I>(route_name: &str, default_max_tokens: u32, tiers: T) -> Self
    where
        T: IntoIterator<Item = I>,
        I: IntoIterator<Item = &'a str>,
    {
        let tiers: Vec<Vec<&str>> = tiers
            .into_iter()
            .map(|t| {
                let mut ids: Vec<&str> = t.into_iter().collect();
                ids.sort_unstable();
                ids
            })
            .collect();
        let canonical =
            serde_json::to_string(&(route_name, default_max_tokens, &tiers)).unwrap_or_default();
        RouteSignature {
            name: route_name.to_owned(),
            canonical,
        }
    }

    pub fn route_name(&self) -> &str {
        &self.name
    }

    /// The canonical text that enters the key.
    pub fn as_str(&self) -> &str {
        &self.canonical
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::formats::{parse_request, ApiFormat};
    use serde_json::{json, Value};

    fn sig() -> RouteSignature {
        RouteSignature::new(
            "chat",
            4096,
            [vec!["openai/gpt-4o"], vec!["anthropic/claude"]],
        )
    }

    fn req_from(v: &Value) -> ChatRequest {
        parse_request(ApiFormat::OpenAi, v.to_string().as_bytes()).unwrap()
    }

    fn key_of(v: &Value) -> CacheKey {
        CacheKey::compute(Some("team-a"), &sig(), &req_from(v))
    }

    fn base() -> Value {
        json!({
            "model": "chat",
            "temperature": 0,
            "max_tokens": 100,
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "What is 2+2?"}
            ],
            "tools": [{"type": "function", "function": {
                "name": "calc", "description": "math",
                "parameters": {"type": "object", "properties": {"x": {"type": "number"}, "a": {"type": "string"}}}
            }}],
            "response_format": {"type": "json_object", "schema": {"b": 1, "a": 2}}
        })
    }

    #[test]
    fn key_order_and_whitespace_do_not_matter() {
        let a = br#"{"model":"chat","temperature":0,"max_tokens":100,"messages":[{"role":"user","content":"hi"}],"metadata":{"x":"1","y":"2"}}"#;
        let b = br#"{
            "metadata" : { "y" : "2", "x" : "1" },
            "messages" : [ { "content" : "hi", "role" : "user" } ],
            "max_tokens" : 100 ,
            "temperature" : 0.0,
            "model" : "chat"
        }"#;
        let ra = parse_request(ApiFormat::OpenAi, a).unwrap();
        let rb = parse_request(ApiFormat::OpenAi, b).unwrap();
        assert_eq!(
            CacheKey::compute(None, &sig(), &ra),
            CacheKey::compute(None, &sig(), &rb)
        );
        // Nested schema key order inside tools / extras.
        let mut c = base();
        c["tools"][0]["function"]["parameters"]["properties"] =
            json!({"a": {"type": "string"}, "x": {"type": "number"}});
        c["response_format"]["schema"] = json!({"a": 2, "b": 1});
        assert_eq!(key_of(&base()), key_of(&c));
    }

    #[test]
    fn stream_and_model_and_shape_do_not_change_the_key() {
        let mut s = base();
        s["stream"] = json!(true);
        s["stream_options"] = json!({"include_usage": true});
        assert_eq!(key_of(&base()), key_of(&s));
        let mut m = base();
        m["model"] = json!("another-public-alias");
        assert_eq!(key_of(&base()), key_of(&m));
        // The same question asked in Anthropic's shape shares the entry.
        let oa = parse_request(
            ApiFormat::OpenAi,
            br#"{"model":"m","temperature":0,"max_tokens":10,"messages":[{"role":"user","content":"hi"}]}"#,
        )
        .unwrap();
        let an = parse_request(
            ApiFormat::Anthropic,
            br#"{"model":"m","temperature":0,"max_tokens":10,"messages":[{"role":"user","content":"hi"}]}"#,
        )
        .unwrap();
        assert_eq!(
            CacheKey::compute(None, &sig(), &oa),
            CacheKey::compute(None, &sig(), &an)
        );
    }

    #[test]
    fn every_answer_changing_field_changes_the_key() {
        let k0 = key_of(&base());
        type Edit = Box<dyn Fn(&mut Value)>;
        let edits: Vec<(&str, Edit)> = vec![
            (
                "message text",
                Box::new(|v| v["messages"][1]["content"] = json!("What is 2+3?")),
            ),
            (
                "system",
                Box::new(|v| v["messages"][0]["content"] = json!("Be verbose.")),
            ),
            (
                "role",
                Box::new(|v| v["messages"][0]["role"] = json!("developer")),
            ),
            (
                "extra message",
                Box::new(|v| {
                    v["messages"]
                        .as_array_mut()
                        .unwrap()
                        .push(json!({"role": "assistant", "content": "4"}))
                }),
            ),
            ("temperature", Box::new(|v| v["temperature"] = json!(0.5))),
            ("top_p", Box::new(|v| v["top_p"] = json!(0.9))),
            ("max_tokens", Box::new(|v| v["max_tokens"] = json!(101))),
            ("stop", Box::new(|v| v["stop"] = json!(["\n"]))),
            ("user", Box::new(|v| v["user"] = json!("u1"))),
            ("seed", Box::new(|v| v["seed"] = json!(7))),
            ("penalty", Box::new(|v| v["presence_penalty"] = json!(0.1))),
            (
                "response_format",
                Box::new(|v| v["response_format"] = json!({"type": "text"})),
            ),
            (
                "tool schema",
                Box::new(|v| {
                    v["tools"][0]["function"]["parameters"]["properties"]["x"]["type"] =
                        json!("integer")
                }),
            ),
            (
                "tool name",
                Box::new(|v| v["tools"][0]["function"]["name"] = json!("calc2")),
            ),
            (
                "no tools",
                Box::new(|v| {
                    v.as_object_mut().unwrap().remove("tools");
                }),
            ),
            (
                "tool_choice",
                Box::new(|v| v["tool_choice"] = json!("required")),
            ),
            (
                "parallel_tool_calls",
                Box::new(|v| v["parallel_tool_calls"] = json!(false)),
            ),
            (
                "image",
                Box::new(|v| {
                    v["messages"][1]["content"] = json!([
                        {"type": "text", "text": "What is 2+2?"},
                        {"type": "image_url", "image_url": {"url": "https://example.invalid/a.png"}}
                    ])
                }),
            ),
        ];
        let mut seen = std::collections::HashSet::new();
        seen.insert(k0);
        for (name, edit) in edits {
            let mut v = base();
            edit(&mut v);
            let k = key_of(&v);
            assert_ne!(k, k0, "{name} must change the key");
            assert!(seen.insert(k), "{name} collided with another edit");
        }
    }

    #[test]
    fn tenants_are_isolated() {
        let r = req_from(&base());
        let a = CacheKey::compute(Some("team-a"), &sig(), &r);
        let b = CacheKey::compute(Some("team-b"), &sig(), &r);
        let anon = CacheKey::compute(None, &sig(), &r);
        let empty = CacheKey::compute(Some(""), &sig(), &r);
        let null_str = CacheKey::compute(Some("null"), &sig(), &r);
        assert_ne!(a, b);
        assert_ne!(a, anon);
        assert_ne!(anon, empty);
        assert_ne!(anon, null_str);
        assert_eq!(a, CacheKey::compute(Some("team-a"), &sig(), &r));
    }

    #[test]
    fn route_signature_scopes_the_key() {
        let r = req_from(&base());
        let k = |s: &RouteSignature| CacheKey::compute(None, s, &r);
        let base_sig = sig();
        let renamed = RouteSignature::new(
            "chat2",
            4096,
            [vec!["openai/gpt-4o"], vec!["anthropic/claude"]],
        );
        let other_model = RouteSignature::new(
            "chat",
            4096,
            [vec!["openai/gpt-4o-mini"], vec!["anthropic/claude"]],
        );
        let other_fallback = RouteSignature::new(
            "chat",
            4096,
            [vec!["openai/gpt-4o"], vec!["anthropic/claude-2"]],
        );
        let swapped_tiers = RouteSignature::new(
            "chat",
            4096,
            [vec!["anthropic/claude"], vec!["openai/gpt-4o"]],
        );
        let other_default = RouteSignature::new(
            "chat",
            1024,
            [vec!["openai/gpt-4o"], vec!["anthropic/claude"]],
        );
        for s in [
            &renamed,
            &other_model,
            &other_fallback,
            &swapped_tiers,
            &other_default,
        ] {
            assert_ne!(k(&base_sig), k(s), "{s:?}");
        }
        // Order inside a tier is irrelevant.
        let a = RouteSignature::new("chat", 1, [vec!["p/a", "q/b"]]);
        let b = RouteSignature::new("chat", 1, [vec!["q/b", "p/a"]]);
        assert_eq!(a, b);
        assert_eq!(k(&a), k(&b));
        assert_eq!(a.route_name(), "chat");
    }

    #[test]
    fn hex_rendering() {
        let k = key_of(&base());
        assert_eq!(k.to_hex().len(), 64);
        assert_eq!(format!("{k}"), k.to_hex());
        assert!(format!("{k:?}").starts_with("CacheKey("));
    }
}
