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

    /// The fingerprint of a request sent with this key: HMAC-SHA256, keyed by the key
    /// itself, of the request's canonical JSON (keys sorted, no whitespace), so that two
    /// bodies that differ only in key order or spacing match. Keyed, not a bare hash: a
    /// body whose unknown part is small (a 6-digit code) could be found again from a bare
    /// SHA-256 in the table by trying every value; the key is never stored (only its
    /// SHA-256).
    pub fn fingerprint(&self, body: &serde_json::Value) -> String {
        use hmac::{Hmac, Mac};
        let mut out = String::new();
        canonical(body, &mut out);
        match Hmac::<Sha256>::new_from_slice(self.0.as_bytes()) {
            Ok(mut mac) => {
                mac.update(out.as_bytes());
                hex::encode(mac.finalize().into_bytes())
            }
            // HMAC takes a key of any length; not reached.
            Err(_) => hex::encode(Sha256::digest(format!("{}\n{out}", self.0).as_bytes())),
        }
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
        // A whole number written as a float (`500.0`) is the number the API reads it as
        // (`fields::integer` takes both): the same body, so the same fingerprint.
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0 => {
                out.push_str(itoa::Buffer::new().format(f as i64));
            }
            _ => out.push_str(&n.to_string()),
        },
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_key() -> IdempotencyKey {
        IdempotencyKey::parse("order-42").expect("a key")
    }

    #[test]
    fn a_whole_number_written_as_a_float_is_the_same_body() {
        let k = test_key();
        let int = serde_json::json!({"amount": 500, "reference": "INV-7"});
        let float: serde_json::Value =
            serde_json::from_str(r#"{"reference":"INV-7","amount":500.0}"#).unwrap();
        assert_eq!(k.fingerprint(&int), k.fingerprint(&float));
        let other: serde_json::Value =
            serde_json::from_str(r#"{"reference":"INV-7","amount":500.5}"#).unwrap();
        assert_ne!(k.fingerprint(&int), k.fingerprint(&other));
    }

    #[test]
    fn a_fingerprint_needs_the_key_so_a_stored_one_does_not_give_a_short_body_away() {
        // An authentication template's code: a bare SHA-256 of the body in the table
        // would be found again by trying the million codes.
        let body = |code: &str| {
            serde_json::json!({"to": "+60123456789", "template": {"name": "login_code",
                "components": [{"type": "body", "parameters": [{"type": "text", "text": code}]}]}})
        };
        let fp = test_key().fingerprint(&body("123456"));
        let mut canonical_body = String::new();
        canonical(&body("123456"), &mut canonical_body);
        assert_ne!(fp, hex::encode(Sha256::digest(canonical_body.as_bytes())));
        let other = IdempotencyKey::parse("order-43").expect("a key");
        assert_ne!(
            fp,
            other.fingerprint(&body("123456")),
            "another key, another fingerprint"
        );
        assert_eq!(fp, test_key().fingerprint(&body("123456")));
        assert_ne!(fp, test_key().fingerprint(&body("123457")));
    }

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
        assert_eq!(test_key().fingerprint(&a), test_key().fingerprint(&b));
        assert_ne!(test_key().fingerprint(&a), test_key().fingerprint(&c));
    }

    // ---- properties (issue 14): keys and bodies are the client's ----

    use proptest::prelude::*;
    use serde_json::Value;

    /// The rule, written out a second way.
    fn is_key(s: &str) -> bool {
        let n = s.chars().count();
        (1..=255).contains(&n) && s.chars().all(|c| (' '..='~').contains(&c))
    }

    /// JSON text of `v` with every object's keys in reverse order and spaces about.
    fn reordered(v: &Value) -> String {
        match v {
            Value::Object(m) => {
                let fields: Vec<String> = m
                    .iter()
                    .rev()
                    .map(|(k, v)| format!("{} : {}", Value::String(k.clone()), reordered(v)))
                    .collect();
                format!("{{ {} }}", fields.join(" ,\n"))
            }
            Value::Array(a) => {
                format!(
                    "[ {} ]",
                    a.iter().map(reordered).collect::<Vec<_>>().join(" , ")
                )
            }
            other => other.to_string(),
        }
    }

    /// Changes the `n`-th leaf (depth first) of `v`, if it has one; whether it did.
    fn change_leaf(v: &mut Value, n: &mut usize) -> bool {
        match v {
            Value::Object(m) => m.values_mut().any(|v| change_leaf(v, n)),
            Value::Array(a) => a.iter_mut().any(|v| change_leaf(v, n)),
            leaf if *n == 0 => {
                *leaf = match leaf.take() {
                    Value::Null => Value::Bool(false),
                    Value::Bool(b) => Value::Bool(!b),
                    Value::String(s) => Value::String(format!("{s}x")),
                    // Another number, also by value (`0.0` is `0`: the same amount).
                    Value::Number(x) if x.as_f64() == Some(0.0) => Value::from(1),
                    Value::Number(_) => Value::from(0),
                    _ => Value::Null,
                };
                true
            }
            _ => {
                *n -= 1;
                false
            }
        }
    }

    /// JSON whose numbers serde_json reads back exactly (its float parsing is off by one
    /// unit in the last place now and then without the `float_roundtrip` feature).
    fn exact_json() -> BoxedStrategy<Value> {
        crate::props::any_json()
            .prop_filter("numbers that read back exactly", |v| {
                serde_json::from_str::<Value>(&v.to_string()).ok().as_ref() == Some(v)
            })
            .boxed()
    }

    proptest! {
        #![proptest_config(crate::props::config(3_000))]

        #[test]
        fn a_key_parses_exactly_when_it_is_1_to_255_printable_ascii_characters(
            s in prop_oneof![
                crate::props::re("[ -~]{0,300}"),
                crate::props::re("[ -~]{250,260}"),
                crate::props::re("[ -~]{0,20}[\\x00-\\x1f\\x7f-\\u{10FFFF}][ -~]{0,20}"),
                crate::props::re("\\PC{0,30}"),
            ]
        ) {
            match IdempotencyKey::parse(&s) {
                Ok(k) => {
                    prop_assert!(is_key(&s), "{:?} accepted", s);
                    prop_assert_eq!(&k.0, &s);
                    let hash = k.hash();
                    prop_assert_eq!(hash.len(), 64);
                    prop_assert!(hash.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
                    prop_assert_eq!(IdempotencyKey::parse(&s).unwrap().hash(), hash);
                }
                Err(IdempotencyKeyError) => prop_assert!(!is_key(&s), "{:?} refused", s),
            }
        }

        #[test]
        fn a_key_is_never_shown_and_different_keys_hash_differently(
            a in crate::props::re("[ -~]{16,255}"), b in crate::props::re("[ -~]{16,255}")
        ) {
            let (ka, kb) = (IdempotencyKey::parse(&a).unwrap(), IdempotencyKey::parse(&b).unwrap());
            let shown = format!("{ka:?}");
            prop_assert!(!shown.contains(a.as_str()), "{}", shown);
            prop_assert_eq!(a == b, ka.hash() == kb.hash());
        }

        #[test]
        fn a_fingerprint_ignores_key_order_and_spacing_and_sees_every_value(
            v in exact_json(), leaf in any::<usize>()
        ) {
            let fp = test_key().fingerprint(&v);
            let again: Value = serde_json::from_str(&reordered(&v)).unwrap();
            prop_assert_eq!(test_key().fingerprint(&again), fp.clone());
            let pretty: Value = serde_json::from_str(&serde_json::to_string_pretty(&v).unwrap()).unwrap();
            prop_assert_eq!(test_key().fingerprint(&pretty), fp.clone());
            let mut changed = v.clone();
            let mut n = leaf % 64;
            if change_leaf(&mut changed, &mut n) {
                prop_assert_ne!(test_key().fingerprint(&changed), fp, "{} and {}", v, changed);
            }
        }
    }
}
