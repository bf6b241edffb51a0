//! Privacy carried by a type: `Secret` (tokens, keys, passwords, app secrets) never
//! prints itself, compares in constant time, and is stored only as a hash
//! (`token_hash`) or in the secret store.

use std::fmt;

use subtle::ConstantTimeEq;

/// A secret value (token, key, password). `Debug` and `Display` print `<redacted>`,
/// so a secret cannot reach a log line by accident; `expose` is the one way out.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// Constant-time comparison, for tokens presented by callers.
    pub fn matches(&self, presented: &str) -> bool {
        self.0.as_bytes().ct_eq(presented.as_bytes()).into()
    }
    /// A fresh random token of 32 bytes, URL-safe, with a readable prefix.
    pub fn generate(prefix: &str) -> Self {
        use base64::Engine;
        let bytes: [u8; 32] = rand::random();
        Self(format!(
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
