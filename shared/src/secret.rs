//! Privacy carried by a type: `Secret` (tokens, keys, passwords, app secrets) never
//! prints itself, compares in constant time, and is stored only as a hash
//! (`token_hash`) or in the secret store.

use std::fmt;

use hmac::Hmac;
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// A secret value (token, key, password). `Debug` and `Display` print `<redacted>`,
/// so a secret cannot reach a log line by accident; `expose` is the one way out.
///
/// A clone shares the value (one allocation per version read, not per use), and with it
/// the value's HMAC-SHA256 key once one is made ([`Secret::hmac_sha256`]): a webhook
/// checked under the same app secret does not derive the key again (issue #13).
#[derive(Clone)]
pub struct Secret(std::sync::Arc<Inner>);

struct Inner {
    value: String,
    /// The HMAC-SHA256 state after the key's inner and outer pads (two SHA-256 blocks),
    /// made on first use. As secret as the value: it signs like the key does. (`None`
    /// only if the `hmac` crate refused the key, which it does for no length.)
    hmac: std::sync::OnceLock<Option<Hmac<Sha256>>>,
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.0.value == other.0.value
    }
}

impl Eq for Secret {}

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(std::sync::Arc::new(Inner {
            value: value.into(),
            hmac: std::sync::OnceLock::new(),
        }))
    }
    pub fn expose(&self) -> &str {
        &self.0.value
    }
    /// Constant-time comparison, for tokens presented by callers.
    pub fn matches(&self, presented: &str) -> bool {
        self.0.value.as_bytes().ct_eq(presented.as_bytes()).into()
    }
    /// HMAC-SHA256 keyed with this secret, ready for `update`: derived from the value
    /// once per secret (and its clones), then copied for each use.
    pub fn hmac_sha256(&self) -> Option<Hmac<Sha256>> {
        self.0
            .hmac
            .get_or_init(|| {
                <Hmac<Sha256> as hmac::Mac>::new_from_slice(self.0.value.as_bytes()).ok()
            })
            .clone()
    }
    /// A fresh random token of 32 bytes, URL-safe, with a readable prefix.
    pub fn generate(prefix: &str) -> Self {
        use base64::Engine;
        let bytes: [u8; 32] = rand::random();
        Self::new(format!(
            "{prefix}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
        ))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// SHA-256 hex of a presented key or token: what storage keeps and looks up by.
pub fn token_hash(token: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print_their_value() {
        let s = Secret::new("hunter2-very-secret");
        assert!(!format!("{s:?} {s}").contains("hunter2"));
        assert!(s.matches("hunter2-very-secret"));
        assert!(!s.matches("hunter2"));
    }

    #[test]
    fn generated_tokens_are_distinct_and_prefixed() {
        let a = Secret::generate("kirim_");
        let b = Secret::generate("kirim_");
        assert_ne!(a, b);
        assert!(a.expose().starts_with("kirim_"));
        assert_eq!(token_hash("x").len(), 64);
    }
}
