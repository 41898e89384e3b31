//! Fault descriptions and their wire formats (JSON and the short header form).

use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Map, Value};

/// A misbehaviour the mock injects instead of (or into) a normal answer.
///
/// "Chunks" in [`Fault::Stall`] and [`Fault::Drop`] are SSE events (one
/// `data:` line for OpenAI, one `event:`+`data:` pair for Anthropic).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answer immediately with this HTTP status and an error body in the
    /// provider's shape for the path (OpenAI `{"error":{…}}` or Anthropic
    /// `{"type":"error","error":{…}}`), unless `body` overrides it verbatim.
    Status {
        /// HTTP status code (any valid code; 429/500/502/503/529 are typical).
        status: u16,
        /// Optional `Retry-After` header.
        retry_after: Option<RetryAfter>,
        /// Optional verbatim response body (sent as `application/json`).
        body: Option<String>,
    },
    /// Close the main listening socket (new connections get ECONNREFUSED) and
    /// every open connection on it. The same port is bound again when the
    /// fault is cleared/replaced or after `duration`.
    ///
    /// As a per-request fault (`x-mock-fault: refuse`) it closes that one
    /// connection without answering; it does not touch the listener.
    /// [`FaultScope`] is ignored for `Refuse`.
    Refuse {
        /// Re-open automatically after this long (`None`: until cleared).
        duration: Option<Duration>,
    },
    /// Read the request, never answer, keep the connection open.
    Hang,
    /// Streaming: send the first `after_chunks` events, then go silent with
    /// the connection open. Non-streaming: send the status line and headers
    /// (with the real `Content-Length`), then go silent.
    Stall {
        /// Events sent before stalling (capped so the terminating event is never sent).
        after_chunks: usize,
    },
    /// Streaming: send the first `after_chunks` events, then close the
    /// connection abruptly (the chunked body is never terminated).
    /// Non-streaming: close the connection without any response.
    Drop {
        /// Events sent before closing (capped so the terminating event is never sent).
        after_chunks: usize,
    },
    /// Non-streaming: HTTP 200 with a truncated, invalid JSON body.
    /// Streaming: HTTP 200, one SSE event whose data is not JSON, then the
    /// body ends (no `[DONE]` / `message_stop`).
    Malformed,
    /// Add `delay` to the time to first token (headers are delayed too).
    Slow {
        /// Extra delay.
        delay: Duration,
    },
}

/// Value of the `Retry-After` header sent with a [`Fault::Status`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RetryAfter {
    /// `Retry-After: <seconds>`.
    Seconds(u64),
    /// `Retry-After: <HTTP-date>`, computed as "now + after" when the
    /// response is sent (whole seconds).
    Date {
        /// Offset from the time of the response.
        after: Duration,
    },
    /// Sent verbatim (to test how clients cope with odd values).
    Raw(String),
}

/// How long a run-time fault stays active.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultScope {
    /// Until cleared or replaced.
    Always,
    /// For the next `n` model requests (`POST /v1/chat/completions`,
    /// `POST /v1/messages`) only, then cleared automatically. Requests to
    /// `/v1/models`, `/_mock/*`, and requests carrying their own
    /// `x-mock-fault` header neither see nor consume it.
    Next(u64),
}

impl Fault {
    /// Short label used as the key in [`MockStats::by_fault`](super::MockStats::by_fault):
    /// `status:503`, `refuse`, `hang`, `stall`, `drop`, `malformed`, `slow`.
    pub fn label(&self) -> String {
        match self {
            Fault::Status { status, .. } => format!("status:{status}"),
            Fault::Refuse { .. } => "refuse".into(),
            Fault::Hang => "hang".into(),
            Fault::Stall { .. } => "stall".into(),
            Fault::Drop { .. } => "drop".into(),
            Fault::Malformed => "malformed".into(),
            Fault::Slow { .. } => "slow".into(),
        }
    }

    /// JSON form, as accepted by `POST /_mock/fault` (without `count`).
    pub fn to_json(&self) -> Value {
        match self {
            Fault::Status {
                status,
                retry_after,
                body,
            } => {
                let mut m = Map::new();
                m.insert("kind".into(), json!("status"));
                m.insert("status".into(), json!(status));
                match retry_after {
                    Some(RetryAfter::Seconds(s)) => {
                        m.insert("retry_after".into(), json!(s.to_string()));
                    }
                    Some(RetryAfter::Date { after }) => {
                        m.insert("retry_after_date".into(), json!(true));
                        m.insert("retry_after_secs".into(), json!(after.as_secs()));
                    }
                    Some(RetryAfter::Raw(raw)) => {
                        m.insert("retry_after".into(), json!(raw));
                    }
                    None => {}
                }
                if let Some(b) = body {
                    m.insert("body".into(), json!(b));
                }
                Value::Object(m)
            }
            Fault::Refuse { duration } => match duration {
                Some(d) => json!({"kind": "refuse", "for_ms": d.as_millis() as u64}),
                None => json!({"kind": "refuse"}),
            },
            Fault::Hang => json!({"kind": "hang"}),
            Fault::Stall { after_chunks } => json!({"kind": "stall", "after_chunks": after_chunks}),
            Fault::Drop { after_chunks } => json!({"kind": "drop", "after_chunks": after_chunks}),
            Fault::Malformed => json!({"kind": "malformed"}),
            Fault::Slow { delay } => json!({"kind": "slow", "delay_ms": delay.as_millis() as u64}),
        }
    }
}

/// Error parsing a fault description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultParseError(pub String);

impl std::fmt::Display for FaultParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid fault: {}", self.0)
    }
}

impl std::error::Error for FaultParseError {}

/// The JSON wire form of a fault.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FaultWire {
    kind: String,
    status: Option<u16>,
    retry_after: Option<Value>,
    retry_after_date: Option<bool>,
    retry_after_secs: Option<u64>,
    body: Option<String>,
    after_chunks: Option<usize>,
    #[serde(rename = "for")]
    for_: Option<Value>,
    for_ms: Option<u64>,
    delay: Option<Value>,
    delay_ms: Option<u64>,
    count: Option<u64>,
}

/// Parse a duration given as a humantime string (`"2s"`, `"500ms"`) or a
/// bare number of seconds.
fn duration_value(field: &str, v: &Value) -> Result<Duration, FaultParseError> {
    match v {
        Value::String(s) => {
            if let Ok(secs) = s.trim().parse::<f64>() {
                return secs_to_duration(field, secs);
            }
            humantime::parse_duration(s.trim())
                .map_err(|e| FaultParseError(format!("{field}: {e}")))
        }
        Value::Number(n) => secs_to_duration(field, n.as_f64().unwrap_or(-1.0)),
        _ => Err(FaultParseError(format!(
            "{field}: expected a duration string or number of seconds"
        ))),
    }
}

fn secs_to_duration(field: &str, secs: f64) -> Result<Duration, FaultParseError> {
    Duration::try_from_secs_f64(secs)
        .map_err(|_| FaultParseError(format!("{field}: invalid number of seconds")))
}

impl FaultWire {
    fn into_fault(self) -> Result<(Fault, FaultScope), FaultParseError> {
        let scope = match self.count {
            None => FaultScope::Always,
            Some(0) => return Err(FaultParseError("count must be at least 1".into())),
            Some(n) => FaultScope::Next(n),
        };
        let fault = match self.kind.to_ascii_lowercase().as_str() {
            "status" | "error" => {
                let status = self
                    .status
                    .ok_or_else(|| FaultParseError("status: missing \"status\" code".into()))?;
                if !(100..=999).contains(&status) {
                    return Err(FaultParseError(format!("status {status} out of range")));
                }
                let retry_after = match (self.retry_after, self.retry_after_date, self.retry_after_secs)
                {
                    (Some(_), Some(true), _) => {
                        return Err(FaultParseError(
                            "use either retry_after or retry_after_date+retry_after_secs".into(),
                        ))
                    }
                    (Some(Value::Number(n)), _, _) => Some(RetryAfter::Seconds(
                        n.as_u64()
                            .ok_or_else(|| FaultParseError("retry_after: not a whole number".into()))?,
                    )),
                    (Some(Value::String(s)), _, _) => Some(match s.trim().parse::<u64>() {
                        Ok(n) => RetryAfter::Seconds(n),
                        Err(_) => RetryAfter::Raw(s),
                    }),
                    (Some(_), _, _) => {
                        return Err(FaultParseError(
                            "retry_after: expected a string or number".into(),
                        ))
                    }
                    (None, Some(true), secs) => Some(RetryAfter::Date {
                        after: Duration::from_secs(secs.unwrap_or(1)),
                    }),
                    (None, _, Some(secs)) => Some(RetryAfter::Seconds(secs)),
                    (None, _, None) => None,
                };
                Fault::Status {
                    status,
                    retry_after,
                    body: self.body,
                }
            }
            "refuse" => {
                let duration = match (self.for_, self.for_ms) {
                    (Some(v), _) => Some(duration_value("for", &v)?),
                    (None, Some(ms)) => Some(Duration::from_millis(ms)),
                    (None, None) => None,
                };
                Fault::Refuse { duration }
            }
            "hang" => Fault::Hang,
            "stall" => Fault::Stall {
                after_chunks: self.after_chunks.unwrap_or(0),
            },
            "drop" => Fault::Drop {
                after_chunks: self.after_chunks.unwrap_or(0),
            },
            "malformed" => Fault::Malformed,
            "slow" => {
                let delay = match (self.delay, self.delay_ms) {
                    (Some(v), _) => duration_value("delay", &v)?,
                    (None, Some(ms)) => Duration::from_millis(ms),
                    (None, None) => Duration::from_secs(1),
                };
                Fault::Slow { delay }
            }
            other => {
                return Err(FaultParseError(format!(
                    "unknown kind {other:?} (expected status, refuse, hang, stall, drop, malformed, slow)"
                )))
            }
        };
        Ok((fault, scope))
    }
}

/// Parse the JSON form: `{"kind":"status","status":429,"retry_after":"2","count":3}`.
pub fn parse_fault_json(text: &[u8]) -> Result<(Fault, FaultScope), FaultParseError> {
    let wire: FaultWire =
        serde_json::from_slice(text).map_err(|e| FaultParseError(e.to_string()))?;
    wire.into_fault()
}

/// Parse either the JSON form or the short form used in the `x-mock-fault`
/// header: `KIND[=ARG|:ARG][,KEY=VALUE…]`, e.g. `status=503`, `drop:3`,
/// `hang`, `slow=500ms`, `status=429,retry_after=2`,
/// `status=429,retry_after_date=true,retry_after_secs=2`.
///
/// The positional `ARG` is `status` for `status`, `after_chunks` for
/// `stall`/`drop`, `delay` for `slow` and `for` for `refuse`.
pub fn parse_fault(text: &str) -> Result<(Fault, FaultScope), FaultParseError> {
    let text = text.trim();
    if text.starts_with('{') {
        return parse_fault_json(text.as_bytes());
    }
    if text.is_empty() {
        return Err(FaultParseError("empty fault".into()));
    }
    let mut parts = text.split(',').map(str::trim);
    let first = parts.next().unwrap_or_default();
    let (kind, arg) = match first.find(['=', ':']) {
        Some(i) => (&first[..i], Some(first[i + 1..].trim())),
        None => (first, None),
    };
    let kind = kind.trim().to_ascii_lowercase();
    let mut m = Map::new();
    m.insert("kind".into(), Value::String(kind.clone()));
    if let Some(arg) = arg {
        let key = match kind.as_str() {
            "status" | "error" => "status",
            "stall" | "drop" => "after_chunks",
            "slow" => "delay",
            "refuse" => "for",
            _ => {
                return Err(FaultParseError(format!(
                    "fault kind {kind:?} takes no argument"
                )))
            }
        };
        m.insert(key.into(), short_value(arg));
    }
    for kv in parts.filter(|p| !p.is_empty()) {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| FaultParseError(format!("expected KEY=VALUE, got {kv:?}")))?;
        m.insert(k.trim().into(), short_value(v.trim()));
    }
    let wire: FaultWire =
        serde_json::from_value(Value::Object(m)).map_err(|e| FaultParseError(e.to_string()))?;
    wire.into_fault()
}

fn short_value(v: &str) -> Value {
    if let Ok(n) = v.parse::<u64>() {
        return json!(n);
    }
    match v {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        _ => Value::String(v.to_string()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn short_forms() {
        assert_eq!(
            parse_fault("status=503").unwrap(),
            (
                Fault::Status {
                    status: 503,
                    retry_after: None,
                    body: None
                },
                FaultScope::Always
            )
        );
        assert_eq!(
            parse_fault("drop:3").unwrap().0,
            Fault::Drop { after_chunks: 3 }
        );
        assert_eq!(parse_fault("hang").unwrap().0, Fault::Hang);
        assert_eq!(
            parse_fault("slow=250ms").unwrap().0,
            Fault::Slow {
                delay: Duration::from_millis(250)
            }
        );
        assert_eq!(
            parse_fault("status=429,retry_after=2,count=2").unwrap(),
            (
                Fault::Status {
                    status: 429,
                    retry_after: Some(RetryAfter::Seconds(2)),
                    body: None
                },
                FaultScope::Next(2)
            )
        );
        assert!(parse_fault("explode").is_err());
        assert!(parse_fault("hang=3").is_err());
        assert!(parse_fault("").is_err());
    }

    #[test]
    fn json_forms_round_trip() {
        let (f, s) = parse_fault(
            r#"{"kind":"status","status":429,"retry_after_date":true,"retry_after_secs":2,"count":1}"#,
        )
        .unwrap();
        assert_eq!(
            f,
            Fault::Status {
                status: 429,
                retry_after: Some(RetryAfter::Date {
                    after: Duration::from_secs(2)
                }),
                body: None
            }
        );
        assert_eq!(s, FaultScope::Next(1));
        let (r, _) = parse_fault(r#"{"kind":"refuse","for":"2s"}"#).unwrap();
        assert_eq!(
            r,
            Fault::Refuse {
                duration: Some(Duration::from_secs(2))
            }
        );
        for f in [
            f,
            r,
            Fault::Hang,
            Fault::Malformed,
            Fault::Stall { after_chunks: 4 },
            Fault::Drop { after_chunks: 1 },
            Fault::Slow {
                delay: Duration::from_millis(30),
            },
            Fault::Status {
                status: 503,
                retry_after: Some(RetryAfter::Raw("soon".into())),
                body: Some("{}".into()),
            },
        ] {
            let text = f.to_json().to_string();
            assert_eq!(parse_fault(&text).unwrap().0, f, "{text}");
        }
        assert!(parse_fault(r#"{"kind":"status"}"#).is_err());
        assert!(parse_fault(r#"{"kind":"hang","bogus":1}"#).is_err());
        assert!(parse_fault(r#"{"kind":"hang","count":0}"#).is_err());
    }
}
