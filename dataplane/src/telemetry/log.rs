//! The structured per-call log: one JSON object per line, per call.
//!
//! Lines are written by a dedicated thread so the request path never blocks
//! on I/O; the channel is unbounded so no line is dropped (memory is bounded
//! in practice by the writer keeping up; a stuck sink is an operator problem
//! that shows as growing RSS, never as lost records).

use crate::routing::AttemptRecord;
use serde::Serialize;
use std::io::Write;
use std::sync::mpsc;

/// Attribution tags taken from request headers.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Tags {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub feature: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// One call, as logged.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CallLog {
    pub ts: String,
    pub trace_id: String,
    pub node_id: String,
    pub region: String,
    pub config_version: u64,
    /// `openai` or `anthropic`: the API shape the client spoke.
    pub api: &'static str,
    pub path: String,
    pub route: Option<String>,
    pub model_requested: Option<String>,
    pub model_served: Option<String>,
    pub provider: Option<String>,
    pub stream: bool,
    pub attempts: Vec<AttemptRecord>,
    pub status: u16,
    pub error_type: Option<&'static str>,
    pub error_message: Option<String>,
    /// For streams: whether the client received a complete answer.
    pub complete: bool,
    pub latency_ms: f64,
    pub ttft_ms: Option<f64>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_tokens: u64,
    pub cost_usd: f64,
    /// What a cache hit saved (the original call's cost).
    pub cost_saved_usd: f64,
    /// `HIT`, `MISS` or `BYPASS` when the route caches.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<&'static str>,
    /// False when the served model has no entry in the price table.
    pub priced: bool,
    /// True when some token counts are estimates (a cut stream whose
    /// provider never reported prompt tokens).
    pub usage_estimated: bool,
    pub temperature: Option<f64>,
    pub max_tokens: Option<u32>,
    pub tool_calls: Vec<String>,
    /// Virtual key id (never the secret).
    pub key_id: Option<String>,
    pub tags: Tags,
    /// Set when a hard budget moved the call to its downgrade route.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub downgraded_from: Option<String>,
    pub prompt_sha256: Option<String>,
    /// Full prompt and response: only when the route has `log_bodies: true`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response: Option<String>,
}

/// Where call log lines go.
#[derive(Clone)]
pub struct CallLogger {
    tx: mpsc::Sender<Msg>,
}

enum Msg {
    Line(Vec<u8>),
    /// Flush the sink, then acknowledge (used before a fast exit).
    Flush(mpsc::SyncSender<()>),
}

impl CallLogger {
    /// Starts the writer thread over `sink` (stdout or a file).
    pub fn spawn(mut sink: Box<dyn Write + Send>) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Msg>();
        std::thread::Builder::new()
            .name("switchyard-call-log".into())
            .spawn(move || {
                while let Ok(msg) = rx.recv() {
                    let mut acks = Vec::new();
                    let mut handle = |msg: Msg| match msg {
                        Msg::Line(line) => {
                            let _ = sink.write_all(&line);
                        }
                        Msg::Flush(ack) => acks.push(ack),
                    };
                    handle(msg);
                    // Batch whatever is queued, then flush once.
                    while let Ok(more) = rx.try_recv() {
                        handle(more);
                    }
                    let _ = sink.flush();
                    for ack in acks {
                        let _ = ack.send(());
                    }
                }
            })?;
        Ok(Self { tx })
    }

    /// Waits (at most `timeout`) until every line emitted so far is written
    /// and the sink flushed. Returns false on timeout.
    pub fn flush(&self, timeout: std::time::Duration) -> bool {
        let (ack, done) = mpsc::sync_channel(1);
        if self.tx.send(Msg::Flush(ack)).is_err() {
            return false;
        }
        done.recv_timeout(timeout).is_ok()
    }

    /// Emits a non-call event line (e.g. a budget alert).
    pub fn emit_event(&self, event: &serde_json::Value) {
        if let Ok(mut line) = serde_json::to_vec(event) {
            line.push(b'\n');
            let _ = self.tx.send(Msg::Line(line));
        }
    }

    pub fn emit(&self, log: &CallLog) {
        if let Ok(mut line) = serde_json::to_vec(log) {
            line.push(b'\n');
            let _ = self.tx.send(Msg::Line(line));
        }
    }
}
