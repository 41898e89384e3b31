//! # Switchyard edge
//!
//! An OpenAI- and Anthropic-compatible LLM gateway built on Pingora. Clients
//! point their SDK's base URL at the edge; the edge resolves the public model
//! name to a route, calls providers with retries and fallback, translates
//! between the OpenAI and Anthropic APIs when needed, and accounts tokens and
//! cost for every call.
//!
//! Run it with `switchyard-edge --config edge.yaml` (see the README and
//! `docs/config.md`). Module map (one per concern; see `docs/architecture.md`):
//!
//! - [`server`]: Pingora apps and start-up; [`gateway`]: the request path;
//! - [`formats`]: OpenAI / Anthropic wire formats and translation;
//! - [`providers`]: one adapter per upstream API behind one trait;
//! - [`upstream`]: the pooled HTTP transport to providers;
//! - [`routing`]: health, regions, the attempt loop with retries and fallback;
//! - [`config`]: the compiled runtime config; [`usage`]: cost accounting;
//! - [`limits`]: keys, rate limits and budgets; [`cache`]: exact-match response cache;
//! - [`control`]: the control-plane client (watch, apply, ack, snapshot);
//! - [`telemetry`]: metrics and the per-call log; [`error`]: the API error.

pub mod cache;
pub mod config;
pub mod control;
pub mod error;
pub mod formats;
pub mod gateway;
pub mod limits;
pub mod providers;
pub mod routing;
pub mod server;
pub mod telemetry;
pub mod upstream;
pub mod usage;
