//! The configuration document: generated types, YAML loading, validation.

#[allow(clippy::all, missing_docs)]
pub(crate) mod v1 {
    tonic::include_proto!("switchyard.config.v1");
}
mod load;
mod validate;

pub use load::{expand_env, from_yaml_str, LoadError};
pub use v1::*;
pub use validate::{parse_duration, validate, FieldError, ValidationError};

/// Lower-case hex sha256 of `data` (used for API-key hashes).
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}
