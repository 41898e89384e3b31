//! Switchyard's schema crate: the one source of truth shared by the edge
//! (`switchyard-dataplane`) and the control plane (`switchyard-controlplane`).
//!
//! - [`config`]: the configuration document (protobuf messages with serde
//!   derives, so the YAML operators write and the protobuf stored in etcd are
//!   the same types), YAML loading with `${ENV}` expansion and field-path
//!   errors, and [`config::validate`] which checks cross-references.
//! - [`control`]: the control-plane gRPC API (operator `ConfigService`,
//!   edge `EdgeService`) and the envelope versions are stored in.
//!
//! ```
//! let yaml = "providers:\n  mock:\n    kind: openai\n    base_url: http://127.0.0.1:9/v1\nroutes:\n  m:\n    targets: [{provider: mock, model: x}]\n";
//! let cfg = switchyard_proto::config::from_yaml_str(yaml, |_| None).unwrap();
//! switchyard_proto::config::validate(&cfg).unwrap();
//! ```

pub mod config;
pub mod control;
