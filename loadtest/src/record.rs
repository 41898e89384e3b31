//! Per-request records and outcome labels.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

/// Outcome label id 0: success.
pub const OK: u32 = 0;
/// Not sent: the in-flight cap was reached at the intended send time.
pub const GENERATOR_OVERLOAD: u32 = 1;
/// TCP connect failed (refused, unreachable, connect timeout).
pub const CONNECT: u32 = 2;
/// No complete answer within the request timeout.
pub const TIMEOUT: u32 = 3;
/// Sending the request or reading the response head failed.
pub const IO: u32 = 4;
/// A stream's body broke off (connection reset / closed mid-body).
pub const STREAM_BROKEN: u32 = 5;
/// A stream ended cleanly at the HTTP level but without its final event.
pub const STREAM_TRUNCATED: u32 = 6;
/// A stream event was not valid JSON.
pub const STREAM_MALFORMED: u32 = 7;
/// A 2xx non-streaming body that is not the expected JSON (or a stream
/// answered with something other than `text/event-stream`).
pub const BAD_RESPONSE: u32 = 8;
/// Still in flight when the run's hard deadline passed.
pub const ABORTED: u32 = 9;

const FIXED: [&str; 10] = [
    "ok",
    "generator_overload",
    "connect",
    "timeout",
    "io",
    "stream_broken",
    "stream_truncated",
    "stream_malformed",
    "bad_response",
    "aborted",
];

/// Most distinct outcome labels kept; later ones fold into `other`.
const MAX_LABELS: usize = 256;

/// Interns outcome labels (`http_429:budget_exceeded`, `stream_error:overloaded_error`, ...).
#[derive(Debug, Clone)]
pub struct Labels {
    inner: Arc<Mutex<LabelsInner>>,
}

#[derive(Debug)]
struct LabelsInner {
    names: Vec<String>,
    ids: HashMap<String, u32>,
}

impl Default for Labels {
    fn default() -> Self {
        let names: Vec<String> = FIXED.iter().map(|s| s.to_string()).collect();
        let ids = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i as u32))
            .collect();
        Labels {
            inner: Arc::new(Mutex::new(LabelsInner { names, ids })),
        }
    }
}

impl Labels {
    pub fn new() -> Self {
        Self::default()
    }

    /// The id of `label`, adding it if new.
    pub fn intern(&self, label: &str) -> u32 {
        let mut g = self.inner.lock();
        if let Some(&id) = g.ids.get(label) {
            return id;
        }
        if g.names.len() >= MAX_LABELS {
            let other = "other".to_string();
            if let Some(&id) = g.ids.get(&other) {
                return id;
            }
            let id = g.names.len() as u32;
            g.names.push(other.clone());
            g.ids.insert(other, id);
            return id;
        }
        let id = g.names.len() as u32;
        g.names.push(label.to_string());
        g.ids.insert(label.to_string(), id);
        id
    }

    /// All labels, indexed by id.
    pub fn names(&self) -> Vec<String> {
        self.inner.lock().names.clone()
    }
}

/// The label for an HTTP error status, with the error code or type from the
/// body when there is one: `http_429`, `http_429:budget_exceeded`.
pub fn http_label(status: u16, code: Option<&str>) -> String {
    match code {
        Some(c) if !c.is_empty() => {
            let c: String = c
                .chars()
                .take(64)
                .map(|ch| if ch.is_ascii_graphic() { ch } else { '_' })
                .collect();
            format!("http_{status}:{c}")
        }
        _ => format!("http_{status}"),
    }
}

/// What the harness keeps per request (about 64 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Record {
    /// Intended send time from the start of the (target's) run.
    pub intended_ns: u64,
    /// From the intended send time to the outcome (last byte, error, or the
    /// drop decision for `generator_overload`).
    pub latency_ns: u64,
    /// From the intended send time to the first content token (streams).
    pub ttft_ns: Option<u64>,
    /// From the intended send time to when the request task started sending
    /// (pacing and runtime scheduling delay).
    pub send_lag_ns: u64,
    /// Outcome label id ([`OK`] = success).
    pub outcome: u32,
    /// HTTP status (0 if none was received).
    pub status: u16,
    pub phase: u16,
    pub mix: u16,
    pub stream: bool,
    pub input_tokens: u32,
    pub output_tokens: u32,
}

impl Record {
    pub fn ok(&self) -> bool {
        self.outcome == OK
    }

    /// Completion time from the start of the run.
    pub fn done_ns(&self) -> u64 {
        self.intended_ns.saturating_add(self.latency_ns)
    }
}
