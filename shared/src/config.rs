//! Configuration from the environment, read once at start. Missing or malformed values
//! fail fast, naming every variable at once.

use std::time::Duration;

use crate::domain::{parse_duration, RetentionConfig};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Memory,
    Aws,
}

/// Knobs the services read. Secrets are not here: only the names they live under.
#[derive(Clone, Debug)]
pub struct Settings {
    pub retention: RetentionConfig,
    pub dispatch_max_attempts: u32,
    pub dispatch_backoff: Duration,
    pub meta_timeout: Duration,
    pub meta_base_url: String,
    pub meta_version: String,
    /// Credits per message (price table per category comes later; default 1).
    pub price_per_message: i64,
    /// Prefix for per-tenant secrets: `{prefix}tenants/{id}/meta-token`.
    pub secret_prefix: String,
    pub operator_token_secret: String,
    pub meta_app_secret: String,
    pub meta_verify_token_secret: String,
    /// How long a message may stay `sending` after an ambiguous timeout before it is
    /// marked failed (if no webhook settled it).
    pub sending_deadline: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            retention: RetentionConfig::default(),
            dispatch_max_attempts: 8,
            dispatch_backoff: Duration::from_secs(30),
            meta_timeout: Duration::from_secs(10),
            meta_base_url: "https://graph.facebook.com".into(),
            meta_version: "v23.0".into(),
            price_per_message: 1,
            secret_prefix: "kirim/".into(),
            operator_token_secret: "kirim/operator-token".into(),
            meta_app_secret: "kirim/meta-app-secret".into(),
            meta_verify_token_secret: "kirim/meta-verify-token".into(),
            sending_deadline: Duration::from_secs(24 * 3600),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("configuration: {}", .0.join("; "))]
pub struct ConfigError(pub Vec<String>);

/// Reads variables through `get` so tests can pass a map instead of the process env.
pub struct EnvReader<F: Fn(&str) -> Option<String>> {
    get: F,
    problems: Vec<String>,
}

impl<F: Fn(&str) -> Option<String>> EnvReader<F> {
    pub fn new(get: F) -> Self {
        Self {
            get,
            problems: Vec::new(),
        }
    }

    pub fn optional(&self, name: &str) -> Option<String> {
        (self.get)(name).filter(|v| !v.trim().is_empty())
    }

    pub fn required(&mut self, name: &str) -> String {
        self.optional(name).unwrap_or_else(|| {
            self.problems.push(format!("{name} is not set"));
            String::new()
        })
    }

    pub fn or(&self, name: &str, default: &str) -> String {
        self.optional(name).unwrap_or_else(|| default.to_owned())
    }

    pub fn duration(&mut self, name: &str, default: Duration) -> Duration {
        match self.optional(name) {
            None => default,
            Some(v) => parse_duration(&v).unwrap_or_else(|| {
                self.problems.push(format!(
                    "{name}={v} is not a duration like 30s, 12h or 730d"
                ));
                default
            }),
        }
    }

    pub fn number<T: std::str::FromStr>(&mut self, name: &str, default: T) -> T {
        match self.optional(name) {
            None => default,
            Some(v) => v.parse().unwrap_or_else(|_| {
                self.problems.push(format!("{name}={v} is not a number"));
                default
            }),
        }
    }

    pub fn finish(self) -> Result<(), ConfigError> {
        if self.problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError(self.problems))
        }
    }

    /// The settings every function shares (retention, dispatch, Meta).
    pub fn settings(&mut self) -> Settings {
        let d = Settings::default();
        let mut r = RetentionConfig::default();
        r.messages = self.duration("KIRIM_RETENTION_MESSAGES", r.messages);
        r.audit = self.duration("KIRIM_RETENTION_AUDIT", r.audit);
        r.billing = self.duration("KIRIM_RETENTION_BILLING", r.billing);
        r.idempotency = self.duration("KIRIM_RETENTION_IDEMPOTENCY", r.idempotency);
        let prefix = self.or("KIRIM_SECRET_PREFIX", &d.secret_prefix);
        Settings {
            retention: r,
            dispatch_max_attempts: self
                .number("KIRIM_DISPATCH_MAX_ATTEMPTS", d.dispatch_max_attempts)
                .max(1),
            dispatch_backoff: self.duration("KIRIM_DISPATCH_BACKOFF", d.dispatch_backoff),
            meta_timeout: self.duration("KIRIM_META_TIMEOUT", d.meta_timeout),
            meta_base_url: self.or("KIRIM_META_BASE_URL", &d.meta_base_url),
            meta_version: self.or("KIRIM_META_API_VERSION", &d.meta_version),
            price_per_message: self.number("KIRIM_PRICE_PER_MESSAGE", d.price_per_message),
            operator_token_secret: self.or(
                "KIRIM_OPERATOR_TOKEN_SECRET_ID",
                &format!("{prefix}operator-token"),
            ),
            meta_app_secret: self.or(
                "KIRIM_META_APP_SECRET_ID",
                &format!("{prefix}meta-app-secret"),
            ),
            meta_verify_token_secret: self.or(
                "KIRIM_META_VERIFY_TOKEN_SECRET_ID",
                &format!("{prefix}meta-verify-token"),
            ),
            sending_deadline: self.duration("KIRIM_SENDING_DEADLINE", d.sending_deadline),
            secret_prefix: prefix,
        }
    }

    pub fn backend(&mut self) -> Backend {
        match self.or("KIRIM_BACKEND", "memory").as_str() {
            "memory" => Backend::Memory,
            "aws" => Backend::Aws,
            other => {
                self.problems
                    .push(format!("KIRIM_BACKEND={other} must be memory or aws"));
                Backend::Memory
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn every_bad_variable_is_named_in_one_error() {
        let env: HashMap<&str, &str> = HashMap::from([
            ("KIRIM_RETENTION_MESSAGES", "two years"),
            ("KIRIM_DISPATCH_MAX_ATTEMPTS", "many"),
        ]);
        let mut r = EnvReader::new(|k| env.get(k).map(|v| v.to_string()));
        let _ = r.settings();
        let _ = r.required("KIRIM_TABLE");
        let err = r.finish().unwrap_err().to_string();
        assert!(err.contains("KIRIM_RETENTION_MESSAGES"));
        assert!(err.contains("KIRIM_DISPATCH_MAX_ATTEMPTS"));
        assert!(err.contains("KIRIM_TABLE"));
    }

    #[test]
    fn defaults_match_the_published_contract() {
        let mut r = EnvReader::new(|_| None);
        let s = r.settings();
        assert_eq!(s.retention.messages.as_secs(), 730 * 86_400);
        assert_eq!(s.retention.billing.as_secs(), 2557 * 86_400);
        assert_eq!(s.dispatch_max_attempts, 8);
        assert_eq!(s.dispatch_backoff.as_secs(), 30);
        assert_eq!(s.meta_timeout.as_secs(), 10);
        assert!(r.finish().is_ok());
    }
}
