//! The bytes a callback carries and the signatures over them: CONTRACT §5's
//! `X-Dedup-Signature` (what the original's receivers verify) and the
//! Standard Webhooks headers (what off-the-shelf verifiers accept).

use base64::Engine as _;
use ring::hmac;
use serde_json::{Map, Value};

/// What a receiver learns of a finished job.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub job_id: String,
    pub tenant_id: String,
    pub status: String,
    pub started_at: Option<f64>,
    pub finished_at: Option<f64>,
    pub result: Option<Value>,
    pub error: Option<String>,
}

impl Event {
    /// Compact JSON with sorted keys, UTF-8 (Python's
    /// `json.dumps(..., sort_keys=True, separators=(",", ":"), ensure_ascii=False)`).
    pub fn body(&self) -> Vec<u8> {
        let number = |v: Option<f64>| v.map_or(Value::Null, Value::from);
        // serde_json's Map is ordered by key, which sorts nested objects too.
        let mut body = Map::new();
        body.insert("error".into(), self.error.clone().map_or(Value::Null, Value::String));
        body.insert("finished_at".into(), number(self.finished_at));
        body.insert("job_id".into(), Value::String(self.job_id.clone()));
        body.insert("result".into(), sorted(self.result.clone().unwrap_or(Value::Null)));
        body.insert("started_at".into(), number(self.started_at));
        body.insert("status".into(), Value::String(self.status.clone()));
        body.insert("tenant_id".into(), Value::String(self.tenant_id.clone()));
        serde_json::to_vec(&Value::Object(body)).expect("a JSON value always serializes")
    }
}

/// Rebuilds objects so their keys are in order whatever map they came from.
fn sorted(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}

/// The signature headers for `body` sent at `timestamp` (unix seconds).
pub fn headers(secret: &str, job_id: &str, timestamp: u64, body: &[u8]) -> Vec<(&'static str, String)> {
    let mut signed = format!("{timestamp}.{job_id}.").into_bytes();
    signed.extend_from_slice(body);
    let dedup = hex(hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()), &signed).as_ref());
    let mut standard = format!("{job_id}.{timestamp}.").into_bytes();
    standard.extend_from_slice(body);
    let key = hmac::Key::new(hmac::HMAC_SHA256, &standard_webhooks_key(secret));
    let b64 = base64::engine::general_purpose::STANDARD.encode(hmac::sign(&key, &standard).as_ref());
    vec![
        ("X-Dedup-Signature", format!("t={timestamp},v1={dedup}")),
        ("X-Dedup-Signature-Version", "v1".to_string()),
        ("webhook-id", job_id.to_string()),
        ("webhook-timestamp", timestamp.to_string()),
        ("webhook-signature", format!("v1,{b64}")),
    ]
}

/// Standard Webhooks secrets are `whsec_<base64 key>`; any other secret is
/// used as it is, so a verifier is given `whsec_` + base64(secret).
fn standard_webhooks_key(secret: &str) -> Vec<u8> {
    secret
        .strip_prefix("whsec_")
        .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
        .unwrap_or_else(|| secret.as_bytes().to_vec())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_is_compact_sorted_utf8_json() {
        let event = Event {
            job_id: "j1".into(),
            tenant_id: "t1".into(),
            status: "completed".into(),
            started_at: Some(1.5),
            finished_at: Some(2.25),
            result: Some(serde_json::json!({"b": 1, "a": {"z": "零件", "y": [true]}})),
            error: None,
        };
        assert_eq!(
            String::from_utf8(event.body()).unwrap(),
            r#"{"error":null,"finished_at":2.25,"job_id":"j1","result":{"a":{"y":[true],"z":"零件"},"b":1},"started_at":1.5,"status":"completed","tenant_id":"t1"}"#
        );
    }

    #[test]
    fn signatures_match_known_vectors() {
        // Computed with Python: hmac.new(b"secret", b"1700000000.j1.{}", sha256).hexdigest()
        // and base64 of hmac.new(b"secret", b"j1.1700000000.{}", sha256).digest().
        let headers = headers("secret", "j1", 1_700_000_000, b"{}");
        let get = |name: &str| headers.iter().find(|(n, _)| *n == name).unwrap().1.clone();
        assert_eq!(
            get("X-Dedup-Signature"),
            "t=1700000000,v1=809a85476c03c5154639cba3e19c2daa37de6898c53b82790f542bfb54808fd0"
        );
        let standard = "v1,MB0NheFZU2o2W7JuUfiAR+u3Jl4tSErwmbp3o6ywFCM=";
        assert_eq!(get("webhook-signature"), standard);
        assert_eq!(get("webhook-id"), "j1");
        // A `whsec_` secret is the base64 of the key ("c2VjcmV0" is "secret").
        let whsec = super::headers("whsec_c2VjcmV0", "j1", 1_700_000_000, b"{}");
        assert_eq!(
            whsec.iter().find(|(n, _)| *n == "webhook-signature").unwrap().1,
            standard
        );
    }
}
