//! A fast, in-process mock of the OpenAI and Anthropic HTTP APIs with fault
//! injection.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use std::time::Duration;
//! use switchyard_loadtest::mock::{Fault, FaultScope, MockProvider};
//!
//! let mock = MockProvider::builder()
//!     .ttft(Duration::from_millis(0))
//!     .tokens_per_sec(1000.0)
//!     .output_tokens(8..=8)
//!     .seed(1)
//!     .spawn("127.0.0.1:0")
//!     .await?;
//! let base_url = format!("{}/v1", mock.url());
//! mock.set_fault(
//!     Fault::Status { status: 503, retry_after: None, body: None },
//!     FaultScope::Next(1),
//! );
//! // … point the gateway at `base_url`, send traffic …
//! assert_eq!(mock.stats().model_requests, 0);
//! mock.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! Endpoints: `POST /v1/chat/completions`, `POST /v1/messages`,
//! `GET /v1/models`, and the control API under `/_mock/*`. See
//! `docs/mock-provider.md` for the wire details, the fault JSON and the
//! `x-mock-*` request headers.

mod body;
mod fault;
mod provider;
mod server;
mod stats;

use std::io;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use serde_json::json;
use tokio::net::ToSocketAddrs;
use tokio::task::JoinHandle;

pub use fault::{parse_fault, parse_fault_json, Fault, FaultParseError, FaultScope, RetryAfter};
pub use server::{FAULT_HEADER, OUTPUT_TOKENS_HEADER, TOKENS_PER_SEC_HEADER, TTFT_HEADER};
pub use stats::{MockStats, RecordedRequest};

use server::{Config, Shared, Slot};

/// Requests kept by [`MockHandle::requests`] unless configured otherwise.
pub const DEFAULT_RECORD_CAPACITY: usize = 1000;

/// Entry point: `MockProvider::builder()…spawn(addr)`.
#[derive(Debug, Clone, Copy, Default)]
pub struct MockProvider;

impl MockProvider {
    /// A builder with the defaults: TTFT 0, unpaced streaming, 16 output
    /// tokens, seed 0, recording the last 1000 requests, no control listener.
    pub fn builder() -> MockProviderBuilder {
        MockProviderBuilder::default()
    }
}

/// Configures and starts a mock provider.
#[derive(Debug, Clone)]
pub struct MockProviderBuilder {
    ttft: Duration,
    tokens_per_sec: f64,
    output_tokens: RangeInclusive<u32>,
    seed: u64,
    models: Vec<String>,
    record_capacity: usize,
    control_listen: Option<String>,
}

impl Default for MockProviderBuilder {
    fn default() -> Self {
        Self {
            ttft: Duration::ZERO,
            tokens_per_sec: 0.0,
            output_tokens: 16..=16,
            seed: 0,
            models: [
                "mock-model",
                "gpt-4o-mini",
                "gpt-4o",
                "claude-3-5-haiku-latest",
                "claude-sonnet-4-0",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            record_capacity: DEFAULT_RECORD_CAPACITY,
            control_listen: None,
        }
    }
}

impl MockProviderBuilder {
    /// Time to first token: delay before the response headers (streaming and
    /// not). Default 0.
    pub fn ttft(mut self, ttft: Duration) -> Self {
        self.ttft = ttft;
        self
    }

    /// Streaming pace in tokens per second; `0`, negative or infinite means
    /// as fast as possible. Non-streaming responses are delayed by the time
    /// the same stream would take. Default 0.
    pub fn tokens_per_sec(mut self, tokens_per_sec: f64) -> Self {
        self.tokens_per_sec = tokens_per_sec;
        self
    }

    /// Output length, uniform in the range (seeded), capped by the request's
    /// `max_tokens` / `max_completion_tokens`. Default `16..=16`.
    pub fn output_tokens(mut self, range: RangeInclusive<u32>) -> Self {
        self.output_tokens = range;
        self
    }

    /// Seed for the output-length draw. Default 0.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Model ids listed by `GET /v1/models` (any model id is accepted by the
    /// model endpoints regardless).
    pub fn models<I, S>(mut self, models: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.models = models.into_iter().map(Into::into).collect();
        self
    }

    /// How many recent requests [`MockHandle::requests`] keeps (0 disables
    /// recording). Default 1000.
    pub fn record_capacity(mut self, capacity: usize) -> Self {
        self.record_capacity = capacity;
        self
    }

    /// Also serve the `/_mock/*` control API on a second listener, which is
    /// unaffected by the `refuse` fault.
    pub fn control_listen(mut self, addr: impl Into<String>) -> Self {
        self.control_listen = Some(addr.into());
        self
    }

    /// Bind (immediately; port 0 picks a free port) and start serving on the
    /// current Tokio runtime.
    pub async fn spawn(self, addr: impl ToSocketAddrs) -> io::Result<MockHandle> {
        let main = bind_first(addr).await?;
        let control = match &self.control_listen {
            Some(a) => Some(bind_first(a.as_str()).await?),
            None => None,
        };
        let models_body = Bytes::from(
            json!({
                "object": "list",
                "data": self.models.iter().map(|id| json!({
                    "id": id,
                    "object": "model",
                    "created": 0,
                    "owned_by": "switchyard-mock",
                })).collect::<Vec<_>>(),
            })
            .to_string(),
        );
        let cfg = Config {
            ttft: self.ttft,
            tokens_per_sec: self.tokens_per_sec,
            output_tokens: self.output_tokens,
            seed: self.seed,
            models_body,
        };
        let shared = Arc::new(Shared::new(
            cfg,
            self.record_capacity,
            Slot::new(main, false)?,
            control.map(|l| Slot::new(l, true)).transpose()?,
            tokio::runtime::Handle::current(),
        ));
        let mut tasks = vec![tokio::spawn(server::accept_loop(shared.clone(), false))];
        if shared.control.is_some() {
            tasks.push(tokio::spawn(server::accept_loop(shared.clone(), true)));
        }
        Ok(MockHandle {
            shared,
            tasks: Mutex::new(tasks),
        })
    }
}

async fn bind_first(addr: impl ToSocketAddrs) -> io::Result<tokio::net::TcpListener> {
    let mut last_err = None;
    for a in tokio::net::lookup_host(addr).await? {
        match server::bind(a) {
            Ok(l) => return Ok(l),
            Err(e) => last_err = Some(e),
        }
    }
    Err(last_err.unwrap_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, "address resolved to nothing")
    }))
}

/// A running mock. Dropping it closes the listeners and connections (like
/// [`MockHandle::shutdown`], without waiting).
pub struct MockHandle {
    shared: Arc<Shared>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for MockHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockHandle")
            .field("addr", &self.addr())
            .field("control_addr", &self.control_addr())
            .finish_non_exhaustive()
    }
}

impl MockHandle {
    /// The bound main address (stays the same across `refuse` faults).
    pub fn addr(&self) -> SocketAddr {
        self.shared.main.addr
    }

    /// `http://IP:PORT` (no `/v1`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// The control listener's address, if one was configured.
    pub fn control_addr(&self) -> Option<SocketAddr> {
        self.shared.control.as_ref().map(|s| s.addr)
    }

    /// `http://IP:PORT` of the control listener, if one was configured.
    pub fn control_url(&self) -> Option<String> {
        self.control_addr().map(|a| format!("http://{a}"))
    }

    /// Install a run-time fault, replacing any previous one. A
    /// [`Fault::Refuse`] takes effect before this returns (new connections
    /// are refused; open ones are being closed); replacing or clearing it
    /// re-binds the same port before returning.
    pub fn set_fault(&self, fault: Fault, scope: FaultScope) {
        self.shared.set_fault(fault, scope);
    }

    /// Remove the run-time fault (re-opening the listener after `refuse`).
    pub fn clear_fault(&self) {
        self.shared.clear_fault();
    }

    /// The active run-time fault; for `Next` the count is what remains.
    pub fn fault(&self) -> Option<(Fault, FaultScope)> {
        self.shared.current_fault()
    }

    /// Snapshot of the counters.
    pub fn stats(&self) -> MockStats {
        self.shared.stats_snapshot()
    }

    /// The most recent requests (oldest first), excluding `/_mock/*`.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.recorder.all()
    }

    /// Zero the counters and forget recorded requests (the fault stays).
    pub fn reset(&self) {
        self.shared.reset();
    }

    /// Stop: close the listeners (connections are refused from then on) and
    /// every open connection, then wait (bounded) for connection tasks to end.
    pub async fn shutdown(&self) {
        self.shared.begin_shutdown();
        let tasks: Vec<_> = std::mem::take(&mut *self.tasks.lock());
        for t in tasks {
            let _ = t.await;
        }
        for _ in 0..400 {
            if self.shared.active_connections() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for MockHandle {
    fn drop(&mut self) {
        self.shared.begin_shutdown();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn handle_and_builder_are_shareable() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<super::MockHandle>();
        assert_send_sync::<super::MockProviderBuilder>();
        assert_send_sync::<super::MockStats>();
        assert_send_sync::<super::RecordedRequest>();
    }
}
