//! Idempotency keys (`Idempotency-Key` on `POST /v1/messages`) and request fingerprints.

use sha2::{Digest, Sha256};

/// A client's idempotency key: 1 to 255 printable ASCII characters. Only its SHA-256
/// is stored.
#[derive(Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("Idempotency-Key must be 1 to 255 printable ASCII characters")]
pub struct IdempotencyKeyError;

impl IdempotencyKey {
    pub fn parse(raw: &str) -> Result<Self, IdempotencyKeyError> {
        let ok = (1..=255).contains(&raw.len()) && raw.bytes().all(|b| (0x20..=0x7e).contains(&b));
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(IdempotencyKeyError)
        }
    }

    /// SHA-256 hex of the key: what the store keys the record by.
    pub fn hash(&self) -> String {
        hex::encode(Sha256::digest(self.0.as_bytes()))
    }
}

/// Keys are chosen by clients and may carry anything; logs get the hash prefix only.
impl std::fmt::Debug for IdempotencyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IdempotencyKey({}…)", &self.hash()[..12])
    }
}

fn canonical(v: &serde_json::Value, out: &mut String) {
    use serde_json::Value;
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                if let Some(inner) = map.get(k) {
                    canonical(inner, out);
                }
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// SHA-256 hex of the request's canonical JSON (keys sorted, no whitespace): two bodies
/// that differ only in key order or spacing have the same fingerprint.
pub fn request_fingerprint(body: &serde_json::Value) -> String {
    let mut out = String::new();
    canonical(body, &mut out);
    hex::encode(Sha256::digest(out.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_one_to_255_printable_ascii_characters() {
        assert!(IdempotencyKey::parse("order-42/retry 1").is_ok());
        assert!(IdempotencyKey::parse(&"k".repeat(255)).is_ok());
        for bad in [
            String::new(),
            "k".repeat(256),
            "tab\tkey".into(),
            "ключ".into(),
        ] {
            assert!(IdempotencyKey::parse(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_key_is_stored_and_shown_only_as_a_hash() {
        let k = IdempotencyKey::parse("customer-secret-ish").unwrap();
        assert_eq!(k.hash().len(), 64);
        assert!(!format!("{k:?}").contains("customer"));
    }

    #[test]
    fn fingerprints_ignore_key_order_and_spacing_but_not_values() {
        let a: serde_json::Value =
            serde_json::from_str(r#"{"to":"+60123456789","text":{"body":"hi"}}"#).unwrap();
        let b: serde_json::Value =
            serde_json::from_str(r#"{ "text" : {"body":"hi"},  "to":"+60123456789" }"#).unwrap();
        let c: serde_json::Value =
            serde_json::from_str(r#"{"to":"+60123456789","text":{"body":"hi!"}}"#).unwrap();
        assert_eq!(request_fingerprint(&a), request_fingerprint(&b));
        assert_ne!(request_fingerprint(&a), request_fingerprint(&c));
    }
}
