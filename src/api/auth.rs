//! API keys and tenants (CONTRACT §1): `X-API-Key` or `Authorization: Bearer`;
//! a tenant id is the first 16 hex of sha256(key). Keys are held only as
//! digests, so a lookup never compares secrets byte by byte.

use std::collections::HashMap;

use hyper::{HeaderMap, StatusCode};

use super::error::ApiError;
use crate::engine::sha256_hex;

/// The tenant of keyless requests when no key is configured (loopback only).
pub const LOCAL_TENANT: &str = "local";

pub struct Tenants {
    /// sha256(key) hex → tenant id. Empty means open (keyless) mode.
    by_digest: HashMap<String, String>,
}

pub fn tenant_id_of(key: &str) -> String {
    sha256_hex(key.as_bytes())[..16].to_string()
}

impl Tenants {
    pub fn new(keys: &[String]) -> Tenants {
        Tenants {
            by_digest: keys
                .iter()
                .map(|k| {
                    let digest = sha256_hex(k.as_bytes());
                    let tenant = digest[..16].to_string();
                    (digest, tenant)
                })
                .collect(),
        }
    }

    pub fn is_open(&self) -> bool {
        self.by_digest.is_empty()
    }

    pub fn authenticate(&self, headers: &HeaderMap) -> Result<String, ApiError> {
        if self.is_open() {
            return Ok(LOCAL_TENANT.to_string());
        }
        let key = presented_key(headers).ok_or_else(|| ApiError::plain(StatusCode::UNAUTHORIZED, "Missing API Key"))?;
        self.by_digest
            .get(&sha256_hex(key.as_bytes()))
            .cloned()
            .ok_or_else(|| ApiError::plain(StatusCode::UNAUTHORIZED, "Invalid API Key"))
    }
}

fn presented_key(headers: &HeaderMap) -> Option<&str> {
    let header = |name| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    header("x-api-key").or_else(|| {
        let auth = header("authorization")?;
        let (scheme, token) = auth.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim())
            .filter(|t| !t.is_empty())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (hyper::header::HeaderName::from_static(k), v.parse().unwrap()))
            .collect()
    }

    #[test]
    fn keys_map_to_tenants_by_digest() {
        let tenants = Tenants::new(&["secret-a".into(), "secret-b".into()]);
        let a = tenants.authenticate(&headers(&[("x-api-key", "secret-a")])).unwrap();
        assert_eq!(a, tenant_id_of("secret-a"));
        assert_eq!(a.len(), 16);
        let b = tenants
            .authenticate(&headers(&[("authorization", "Bearer secret-b")]))
            .unwrap();
        assert_eq!(b, tenant_id_of("secret-b"));
        assert_ne!(a, b);
        let missing = tenants.authenticate(&headers(&[])).unwrap_err();
        assert_eq!(missing.body(), serde_json::json!({"detail": "Missing API Key"}));
        let wrong = tenants.authenticate(&headers(&[("x-api-key", "nope")])).unwrap_err();
        assert_eq!(wrong.body(), serde_json::json!({"detail": "Invalid API Key"}));
    }

    #[test]
    fn without_keys_everyone_is_the_local_tenant() {
        let tenants = Tenants::new(&[]);
        assert_eq!(tenants.authenticate(&headers(&[])).unwrap(), LOCAL_TENANT);
    }
}
