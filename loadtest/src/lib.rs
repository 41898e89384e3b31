//! Switchyard's load-test harness and mock LLM provider.
//!
//! The load generator (`switchyard-loadtest run SCENARIO.yaml`) is built
//! from [`scenario`] (the YAML format), [`schedule`] (phases -> intended
//! send times), [`runner`] (open-loop pacing, fault events), [`client`] and
//! [`sse`] (one request, TTFT and inter-token timing) and [`report`]
//! (percentiles, overhead, failover, SLOs; terminal, JSON and HTML).
//! [`ceiling`] measures the generator's own limit. See `docs/loadtest.md`.
//!
//! The other piece is [`mock`]: a fast mock of the OpenAI Chat
//! Completions and Anthropic Messages HTTP APIs (streaming and not, tool
//! calls, exact token usage) with run-time and per-request fault injection
//! (error statuses with `Retry-After`, refused connections, hangs, stalled
//! and dropped streams, malformed bodies, slow first tokens). It is used
//!
//! * in-process by the edge's black-box tests (as a dev-dependency):
//!
//!   ```no_run
//!   # async fn demo() -> std::io::Result<()> {
//!   use switchyard_loadtest::mock::{Fault, FaultScope, MockProvider};
//!   let mock = MockProvider::builder().output_tokens(8..=8).spawn("127.0.0.1:0").await?;
//!   let upstream_base_url = format!("{}/v1", mock.url());
//!   mock.set_fault(Fault::Drop { after_chunks: 3 }, FaultScope::Next(1));
//!   // … drive the gateway, then inspect what it sent upstream:
//!   for req in mock.requests() {
//!       println!("{} {} auth={:?}", req.method, req.path, req.header("authorization"));
//!   }
//!   mock.shutdown().await;
//!   # Ok(()) }
//!   ```
//!
//! * as a process, `switchyard-loadtest mock --listen 127.0.0.1:0`, which
//!   prints `mock listening on http://127.0.0.1:PORT` and is steered over
//!   HTTP under `/_mock/*` (see [`cli::MockArgs`] and
//!   `docs/mock-provider.md`).

pub mod ceiling;
pub mod cli;
pub mod client;
pub mod mock;
pub mod procwatch;
pub mod propagation;
pub mod record;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod schedule;
pub mod sse;
pub mod timer;
