//! Request counters and the bounded request recorder.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::{HeaderMap, Method};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// Distinct paths tracked individually in [`MockStats::by_path`]; further
/// paths are counted under `"(other)"` so random paths cannot grow memory.
const MAX_PATHS: usize = 256;

/// A snapshot of the mock's counters (also served as JSON by `GET /_mock/stats`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MockStats {
    /// Every HTTP request received, on any path (including `/_mock/*`).
    pub total_requests: u64,
    /// Requests to the model endpoints (`/v1/chat/completions`, `/v1/messages`).
    pub model_requests: u64,
    /// TCP connections accepted (main and control listeners).
    pub connections: u64,
    /// Connections open right now (a gauge: not zeroed by `reset`). Lets
    /// tests check that a client hanging up closed its upstream connection.
    pub open_connections: u64,
    /// Requests by URL path (without query).
    pub by_path: BTreeMap<String, u64>,
    /// Requests by fault applied, keyed by [`Fault::label`](super::Fault::label)
    /// (`status:503`, `drop`, …). A run-time `refuse` is counted once each time
    /// the listener is closed.
    pub by_fault: BTreeMap<String, u64>,
}

impl MockStats {
    /// Requests seen on `path` (0 if none).
    pub fn path(&self, path: &str) -> u64 {
        self.by_path.get(path).copied().unwrap_or(0)
    }

    /// Times the fault with this label was applied (0 if none).
    pub fn fault(&self, label: &str) -> u64 {
        self.by_fault.get(label).copied().unwrap_or(0)
    }
}

#[derive(Default)]
pub(crate) struct Stats {
    total: AtomicU64,
    model: AtomicU64,
    connections: AtomicU64,
    by_path: Mutex<HashMap<String, u64>>,
    by_fault: Mutex<HashMap<String, u64>>,
}

impl Stats {
    pub(crate) fn request(&self, path: &str) {
        self.total.fetch_add(1, Ordering::Relaxed);
        let mut map = self.by_path.lock();
        if let Some(n) = map.get_mut(path) {
            *n += 1;
        } else if map.len() < MAX_PATHS {
            map.insert(path.to_string(), 1);
        } else {
            *map.entry("(other)".to_string()).or_insert(0) += 1;
        }
    }

    pub(crate) fn model_request(&self) {
        self.model.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn connection(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn fault(&self, label: String) {
        *self.by_fault.lock().entry(label).or_insert(0) += 1;
    }

    pub(crate) fn snapshot(&self, open_connections: u64) -> MockStats {
        MockStats {
            open_connections,
            total_requests: self.total.load(Ordering::Relaxed),
            model_requests: self.model.load(Ordering::Relaxed),
            connections: self.connections.load(Ordering::Relaxed),
            by_path: self
                .by_path
                .lock()
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
            by_fault: self
                .by_fault
                .lock()
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
        }
    }

    pub(crate) fn reset(&self) {
        self.total.store(0, Ordering::Relaxed);
        self.model.store(0, Ordering::Relaxed);
        self.connections.store(0, Ordering::Relaxed);
        self.by_path.lock().clear();
        self.by_fault.lock().clear();
    }
}

/// One request as received by the mock (control requests under `/_mock/*`
/// are not recorded).
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    /// HTTP method.
    pub method: Method,
    /// Path and query, e.g. `/v1/chat/completions`.
    pub path: String,
    /// All request headers, as received.
    pub headers: HeaderMap,
    /// The full request body.
    pub body: Bytes,
}

impl RecordedRequest {
    /// First value of header `name` (case-insensitive), if present and valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body parsed as JSON, if it is JSON.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// The body as (lossy) UTF-8 text.
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub(crate) fn to_json(&self) -> Value {
        let mut headers = Map::new();
        for (name, value) in &self.headers {
            let v = Value::String(String::from_utf8_lossy(value.as_bytes()).into_owned());
            match headers.get_mut(name.as_str()) {
                Some(Value::Array(items)) => items.push(v),
                Some(existing) => {
                    let first = existing.take();
                    *existing = Value::Array(vec![first, v]);
                }
                None => {
                    headers.insert(name.as_str().to_string(), v);
                }
            }
        }
        json!({
            "method": self.method.as_str(),
            "path": self.path,
            "headers": headers,
            "body": self.json().unwrap_or_else(|| Value::String(self.body_text())),
        })
    }
}

pub(crate) struct Recorder {
    capacity: usize,
    items: Mutex<VecDeque<RecordedRequest>>,
}

impl Recorder {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            items: Mutex::new(VecDeque::with_capacity(capacity.min(1024))),
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.capacity > 0
    }

    pub(crate) fn push(&self, req: RecordedRequest) {
        if self.capacity == 0 {
            return;
        }
        let mut items = self.items.lock();
        while items.len() >= self.capacity {
            items.pop_front();
        }
        items.push_back(req);
    }

    pub(crate) fn all(&self) -> Vec<RecordedRequest> {
        self.items.lock().iter().cloned().collect()
    }

    pub(crate) fn clear(&self) {
        self.items.lock().clear();
    }
}
