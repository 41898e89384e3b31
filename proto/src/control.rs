//! The control-plane API (`switchyard.control.v1`): the operator-facing
//! `ConfigService`, the edge-facing `EdgeService` and the storage envelope
//! [`StoredVersion`]. Messages embed [`crate::config`] types directly.
//!
//! Clients: [`config_service_client::ConfigServiceClient`],
//! [`edge_service_client::EdgeServiceClient`]. Servers:
//! [`config_service_server`], [`edge_service_server`].

#[allow(clippy::all, missing_docs)]
mod v1 {
    tonic::include_proto!("switchyard.control.v1");
}

pub use v1::*;

/// Metadata header carrying `Bearer <token>` on both services.
pub const AUTH_HEADER: &str = "authorization";
