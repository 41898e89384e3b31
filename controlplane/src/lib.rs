//! Switchyard control plane.
//!
//! Operators push providers, routes, prices, tiers, keys and budgets through
//! the `ConfigService` gRPC API (or `switchyard-ctl`); every accepted write
//! becomes a new immutable, numbered version of the whole configuration
//! document, stored in etcd (or a local data directory) and streamed to every
//! edge through `EdgeService.Watch`.
//!
//! - [`store`] holds the [`store::Store`] trait with the etcd and embedded
//!   implementations.
//! - [`versioning`] has the stored envelope, diffs, summaries, resource merges.
//! - [`budgets`] has the global budget allocation math (grants, leases).
//! - [`usage`] aggregates persisted usage records into cost views.
//! - [`service`] has the gRPC services and the shared write path.
//! - [`auth`] has the bearer-token interceptors.
//! - [`server`] has the `switchyard-control` flags and lifecycle.
//! - [`cli`] is `switchyard-ctl`.

pub mod auth;
pub mod budgets;
pub mod cli;
pub mod server;
pub mod service;
pub mod store;
pub mod usage;
pub mod versioning;
