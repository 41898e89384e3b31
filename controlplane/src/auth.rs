//! Bearer-token authentication for both services.
//!
//! Clients send `authorization: Bearer <token>` as gRPC metadata. The admin
//! token guards `ConfigService`, the edge token guards `EdgeService`; a
//! missing or wrong token fails with `UNAUTHENTICATED`.

use sha2::{Digest, Sha256};
use tonic::service::Interceptor;
use tonic::{Request, Status};

pub use switchyard_proto::control::AUTH_HEADER;

/// Checks `authorization: Bearer <token>` against one expected token.
#[derive(Clone)]
pub struct BearerAuth {
    expected: [u8; 32],
    realm: &'static str,
}

impl BearerAuth {
    /// `realm` names the token in error messages ("admin", "edge").
    pub fn new(token: &str, realm: &'static str) -> Self {
        Self {
            expected: Sha256::digest(token.as_bytes()).into(),
            realm,
        }
    }

    /// Whether `header` (the full metadata value) carries the expected token.
    pub fn check(&self, header: Option<&str>) -> Result<(), Status> {
        let Some(value) = header else {
            return Err(Status::unauthenticated(format!(
                "missing {} token (authorization: Bearer <token>)",
                self.realm
            )));
        };
        let token = match value.split_once(' ') {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
            _ => {
                return Err(Status::unauthenticated(
                    "authorization must be `Bearer <token>`",
                ))
            }
        };
        // Compare digests in constant time (lengths are equal by construction).
        let got: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let diff = got
            .iter()
            .zip(self.expected.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff == 0 {
            Ok(())
        } else {
            Err(Status::unauthenticated(format!(
                "invalid {} token",
                self.realm
            )))
        }
    }
}

impl Interceptor for BearerAuth {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let header = req
            .metadata()
            .get(AUTH_HEADER)
            .and_then(|v| v.to_str().ok());
        self.check(header)?;
        Ok(req)
    }
}

/// Adds `authorization: Bearer <token>` to outgoing requests (clients).
#[derive(Clone)]
pub struct AddBearer {
    value: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

impl AddBearer {
    /// No header when `token` is empty; an error if it is not valid ASCII metadata.
    pub fn new(token: &str) -> Result<Self, String> {
        if token.is_empty() {
            return Ok(Self { value: None });
        }
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| "token contains characters not allowed in a header".to_string())?;
        Ok(Self { value: Some(value) })
    }
}

impl Interceptor for AddBearer {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.value {
            req.metadata_mut().insert(AUTH_HEADER, v.clone());
        }
        Ok(req)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn checks_bearer_tokens() {
        let a = BearerAuth::new("s3cret", "admin");
        assert!(a.check(Some("Bearer s3cret")).is_ok());
        assert!(a.check(Some("bearer s3cret")).is_ok());
        let e = a.check(Some("Bearer nope")).unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        assert!(e.message().contains("invalid admin token"));
        assert_eq!(
            a.check(None).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            a.check(Some("Basic x")).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
    }
}
