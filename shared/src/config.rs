//! Configuration from the environment, read once at start. Missing or malformed values
//! fail fast, naming every variable at once.

use std::time::Duration;

use crate::domain::{
    parse_duration, LimitSettings, RequestLimits, RetentionConfig, TemplateCategory,
};

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
    /// Credits per accepted message, by template category (and for session text).
    pub prices: Prices,
    pub quality: QualitySettings,
    /// Prefix for per-tenant secrets: `{prefix}tenants/{id}/meta-token`.
    pub secret_prefix: String,
    pub operator_token_secret: String,
    pub meta_app_secret: String,
    pub meta_verify_token_secret: String,
    /// The key that signs each audit chain's head (its checkpoint).
    pub audit_key_secret: String,
    /// How long after a rotation the previous operator token and Meta app secret are still
    /// accepted.
    pub rotation_grace: Duration,
    /// How long a message may stay `sending` after an ambiguous timeout before it is
    /// marked failed (if no webhook settled it).
    pub sending_deadline: Duration,
    /// Status callbacks may go to http and to private, loopback and link-local addresses
    /// (local mode only; outside it only https to public addresses).
    pub callbacks_allow_private: bool,
    /// A status callback's first retry delay (doubling per attempt, with jitter).
    pub callback_backoff: Duration,
    /// Delivery attempts per status callback before it is given up.
    pub callback_max_attempts: u32,
    /// How long a receiver has to answer one callback.
    pub callback_timeout: Duration,
    /// Messages per second per business phone number for tenants without their own tier
    /// (Meta's tiers: 20, 80, 1000).
    pub meta_throughput: u32,
    /// Limits on use: requests per key and tenant, bad webhook signatures per address.
    pub limits: LimitSettings,
    /// The longest wait of one hop of a scheduled job on the queue (SQS delays are at
    /// most 15 minutes; a job due later goes back on the queue hop by hop).
    pub schedule_hop: Duration,
    /// About how many bytes one response of `GET /v1/account/export` carries before it
    /// ends with a `next` cursor (a Lambda response is buffered whole, at most 6 MB).
    pub export_page_bytes: usize,
}

/// The longest `KIRIM_CALLBACK_TIMEOUT`: the default, so that the five callbacks of one
/// message's life, tried one after another, fit the callback function's 60 s.
pub const MAX_CALLBACK_TIMEOUT: Duration = Duration::from_secs(10);

/// The shortest `KIRIM_RETENTION_MESSAGES`: two weeks, longer than a campaign's recipient
/// list, the margin before its lost fan-out is closed and the wait before its lost messages
/// are settled together (`domain::BROADCAST_LIST_RETENTION` + `LOST_FANOUT_MARGIN` +
/// `UNSENT_STALE_AFTER`), so that a campaign or message whose job was lost is still there
/// to be settled and refunded.
pub const MIN_MESSAGES_RETENTION: Duration = Duration::from_secs(14 * 24 * 3600);
/// The shortest `KIRIM_RETENTION_AUDIT` and `KIRIM_RETENTION_BILLING`: a day.
pub const MIN_RECORDS_RETENTION: Duration = Duration::from_secs(24 * 3600);
/// The shortest `KIRIM_RETENTION_IDEMPOTENCY`: an hour (a client's retries outlast less).
pub const MIN_IDEMPOTENCY_RETENTION: Duration = Duration::from_secs(3600);

/// The longest `KIRIM_META_TIMEOUT`: a call to Meta must end well inside the dispatcher's
/// 60 s Lambda timeout (with its slot wait and its writes).
pub const MAX_META_TIMEOUT: Duration = Duration::from_secs(30);

/// [`Settings::export_page_bytes`] by default: 3 MiB, under Lambda's 6 MB response once
/// base64-encoded by API Gateway's payload.
pub const EXPORT_PAGE_BYTES: usize = 3 << 20;

impl Default for Settings {
    fn default() -> Self {
        Self {
            retention: RetentionConfig::default(),
            dispatch_max_attempts: 8,
            dispatch_backoff: Duration::from_secs(30),
            meta_timeout: Duration::from_secs(10),
            meta_base_url: "https://graph.facebook.com".into(),
            meta_version: "v23.0".into(),
            prices: Prices::flat(1),
            quality: QualitySettings::default(),
            secret_prefix: "kirim/".into(),
            operator_token_secret: "kirim/operator-token".into(),
            meta_app_secret: "kirim/meta-app-secret".into(),
            meta_verify_token_secret: "kirim/meta-verify-token".into(),
            audit_key_secret: "kirim/audit-key".into(),
            rotation_grace: Duration::from_secs(24 * 3600),
            sending_deadline: Duration::from_secs(24 * 3600),
            callbacks_allow_private: false,
            callback_backoff: Duration::from_secs(30),
            callback_max_attempts: 8,
            callback_timeout: Duration::from_secs(10),
            meta_throughput: 80,
            limits: LimitSettings::default(),
            schedule_hop: Duration::from_secs(900),
            export_page_bytes: EXPORT_PAGE_BYTES,
        }
    }
}

/// When a tenant's rolling 7-day quality is flagged, and what follows.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QualitySettings {
    /// Opt-outs per message accepted by Meta above which the tenant is flagged.
    pub opt_out_threshold: f64,
    /// Undeliverable or blocked messages per message accepted, likewise.
    pub undeliverable_threshold: f64,
    /// No flag below this many messages in the window (rates of tiny samples mislead).
    pub min_volume: u64,
    /// Refuse marketing templates while flagged (utility and authentication still go).
    pub pause_marketing: bool,
}

impl Default for QualitySettings {
    fn default() -> Self {
        Self {
            opt_out_threshold: 0.02,
            undeliverable_threshold: 0.10,
            min_volume: 50,
            pause_marketing: false,
        }
    }
}

/// The price table, in credits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prices {
    pub marketing: i64,
    pub utility: i64,
    pub authentication: i64,
    /// Free-form text inside the 24-hour customer service window.
    pub session: i64,
}

impl Prices {
    pub fn flat(price: i64) -> Self {
        Self {
            marketing: price,
            utility: price,
            authentication: price,
            session: price,
        }
    }

    /// The price of a template of `category`, or of a session message (`None`).
    pub fn price_for(&self, category: Option<TemplateCategory>) -> i64 {
        match category {
            Some(TemplateCategory::Marketing) => self.marketing,
            Some(TemplateCategory::Utility) => self.utility,
            Some(TemplateCategory::Authentication) => self.authentication,
            None => self.session,
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
    /// Retention periods below the floors a deployment keeps are taken (local mode, where
    /// a test shortens them to watch data expire: API.md "Local mode and the sandbox").
    short_retention: bool,
}

impl<F: Fn(&str) -> Option<String>> EnvReader<F> {
    pub fn new(get: F) -> Self {
        Self {
            get,
            problems: Vec::new(),
            short_retention: false,
        }
    }

    /// Takes retention periods below [`MIN_MESSAGES_RETENTION`], [`MIN_RECORDS_RETENTION`]
    /// and [`MIN_IDEMPOTENCY_RETENTION`] (any positive duration), and an
    /// `Idempotency-Key`'s default memory shortened to the messages' retention when that is
    /// shorter: local mode's, for tests that watch data expire. Lambda keeps the floors.
    pub fn allowing_short_retention(mut self) -> Self {
        self.short_retention = true;
        self
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

    /// [`Self::duration`], no shorter than `min` (else named, and the default kept).
    pub fn duration_at_least(&mut self, name: &str, default: Duration, min: Duration) -> Duration {
        let d = self.duration(name, default);
        if d < min {
            self.problems.push(format!(
                "{name}={} must be at least {}s (a bare number is seconds: 730d is two years)",
                self.optional(name).unwrap_or_default(),
                min.as_secs()
            ));
            return default;
        }
        d
    }

    /// [`Self::duration`], from `min` to `max` (else named, and the default kept).
    pub fn duration_within(
        &mut self,
        name: &str,
        default: Duration,
        min: Duration,
        max: Duration,
    ) -> Duration {
        let d = self.duration_at_least(name, default, min);
        if d > max {
            self.problems.push(format!(
                "{name}={} must be at most {}s",
                self.optional(name).unwrap_or_default(),
                max.as_secs()
            ));
            return default;
        }
        d
    }

    /// [`Self::duration`], no longer than `max` (else named, and the default kept): a cache
    /// time beyond any use would overflow the clock arithmetic of the first cached read.
    pub fn duration_at_most(&mut self, name: &str, default: Duration, max: Duration) -> Duration {
        let d = self.duration(name, default);
        if d > max {
            self.problems.push(format!(
                "{name}={} must be at most {}s",
                self.optional(name).unwrap_or_default(),
                max.as_secs()
            ));
            return default;
        }
        d
    }

    /// An `http` or `https` URL with a host (no trailing `/`), else named and the default
    /// kept: a base URL the client cannot even build a request on would fail every send
    /// before it leaves, which is not Meta's answer about any tenant.
    pub fn base_url(&mut self, name: &str, default: &str) -> String {
        let Some(v) = self.optional(name) else {
            return default.to_owned();
        };
        match reqwest::Url::parse(&v) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {
                v.trim().trim_end_matches('/').to_owned()
            }
            _ => {
                self.problems.push(format!(
                    "{name}={v} is not an http(s) URL with a host, like https://graph.facebook.com"
                ));
                default.to_owned()
            }
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

    /// [`Self::number`] within `lo..=hi` (else named, and the default kept): a value past
    /// them is a slip the platform would otherwise act on silently (a threshold of `NaN`
    /// flags nobody, a negative one everyone).
    pub fn number_within<T>(&mut self, name: &str, default: T, lo: T, hi: T) -> T
    where
        T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
    {
        let v = self.number(name, default);
        if (lo..=hi).contains(&v) {
            return v;
        }
        self.problems
            .push(format!("{name}={v} must be from {lo} to {hi}"));
        default
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
        let raw = self.optional("KIRIM_RETENTION_MESSAGES");
        let messages = self.duration("KIRIM_RETENTION_MESSAGES", r.messages);
        let short = self.short_retention;
        let floor = |min: Duration| if short { Duration::from_secs(1) } else { min };
        if messages < floor(MIN_MESSAGES_RETENTION) {
            self.problems.push(if short {
                format!(
                    "KIRIM_RETENTION_MESSAGES={} must be at least 1s",
                    raw.unwrap_or_default()
                )
            } else {
                format!(
                    "KIRIM_RETENTION_MESSAGES={} must be at least 14d (a campaign and its \
                     messages must outlive the days after which one whose job was lost is \
                     settled and refunded)",
                    raw.unwrap_or_default()
                )
            });
        } else {
            r.messages = messages;
        }
        // A bare number is seconds: `KIRIM_RETENTION_BILLING=2557` would keep the 7-year
        // records 42 minutes. Below these floors a value is a slip, not a policy.
        r.audit = self.duration_at_least(
            "KIRIM_RETENTION_AUDIT",
            r.audit,
            floor(MIN_RECORDS_RETENTION),
        );
        r.billing = self.duration_at_least(
            "KIRIM_RETENTION_BILLING",
            r.billing,
            floor(MIN_RECORDS_RETENTION),
        );
        let idempotency = self.duration_at_least(
            "KIRIM_RETENTION_IDEMPOTENCY",
            r.idempotency,
            floor(MIN_IDEMPOTENCY_RETENTION),
        );
        // Local mode with the messages kept shorter than a key's default day: the key is
        // remembered as long as its message, not refused at start.
        let idempotency = if short
            && idempotency > r.messages
            && self.optional("KIRIM_RETENTION_IDEMPOTENCY").is_none()
        {
            r.messages
        } else {
            idempotency
        };
        // A key must not outlive the message or campaign it answers with: a replay would
        // answer an id that is gone (or 404), and the client send again without its key.
        if idempotency > r.messages {
            self.problems.push(format!(
                "KIRIM_RETENTION_IDEMPOTENCY={} must not be longer than the messages' \
                 retention (KIRIM_RETENTION_MESSAGES, {}s): a replay would answer a message \
                 that is gone",
                self.optional("KIRIM_RETENTION_IDEMPOTENCY")
                    .unwrap_or_default(),
                r.messages.as_secs()
            ));
        } else {
            r.idempotency = idempotency;
        }
        let prefix = self.or("KIRIM_SECRET_PREFIX", &d.secret_prefix);
        let (meta_timeout, sending_deadline) = self.send_timing(&d);
        Settings {
            retention: r,
            // Below the dispatch queue's maxReceiveCount (10), as the template allows: the
            // dispatcher fails a message itself before SQS parks it.
            dispatch_max_attempts: self.number_within(
                "KIRIM_DISPATCH_MAX_ATTEMPTS",
                d.dispatch_max_attempts,
                1,
                9,
            ),
            dispatch_backoff: self.duration("KIRIM_DISPATCH_BACKOFF", d.dispatch_backoff),
            meta_timeout,
            meta_base_url: self.base_url("KIRIM_META_BASE_URL", &d.meta_base_url),
            meta_version: self.or("KIRIM_META_API_VERSION", &d.meta_version),
            prices: self.prices(),
            quality: QualitySettings {
                opt_out_threshold: self.number_within(
                    "KIRIM_QUALITY_OPT_OUT_THRESHOLD",
                    d.quality.opt_out_threshold,
                    0.0,
                    1.0,
                ),
                undeliverable_threshold: self.number_within(
                    "KIRIM_QUALITY_UNDELIVERABLE_THRESHOLD",
                    d.quality.undeliverable_threshold,
                    0.0,
                    1.0,
                ),
                min_volume: self.number("KIRIM_QUALITY_MIN_VOLUME", d.quality.min_volume),
                pause_marketing: self
                    .number("KIRIM_QUALITY_PAUSE_MARKETING", d.quality.pause_marketing),
            },
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
            audit_key_secret: self.or("KIRIM_AUDIT_KEY_SECRET_ID", &format!("{prefix}audit-key")),
            rotation_grace: self.duration("KIRIM_ROTATION_GRACE", d.rotation_grace),
            sending_deadline,
            schedule_hop: self
                .duration("KIRIM_SCHEDULE_HOP", d.schedule_hop)
                .clamp(Duration::from_secs(1), d.schedule_hop),
            export_page_bytes: self
                .number("KIRIM_EXPORT_PAGE_BYTES", d.export_page_bytes)
                .clamp(4096, EXPORT_PAGE_BYTES),
            callbacks_allow_private: self
                .number("KIRIM_CALLBACKS_ALLOW_PRIVATE", d.callbacks_allow_private),
            callback_backoff: self.duration("KIRIM_CALLBACK_BACKOFF", d.callback_backoff),
            callback_max_attempts: self
                .number("KIRIM_CALLBACK_MAX_ATTEMPTS", d.callback_max_attempts)
                .clamp(1, 9),
            callback_timeout: self.callback_timeout(&d),
            meta_throughput: self.throughput(d.meta_throughput),
            limits: self.limits(d.limits),
            secret_prefix: prefix,
        }
    }

    /// `KIRIM_PRICE_PER_MESSAGE` [1] for every kind, overridden per category by
    /// `KIRIM_PRICE_MARKETING`, `_UTILITY`, `_AUTHENTICATION` and `_SESSION` (text).
    fn prices(&mut self) -> Prices {
        let base = self.number("KIRIM_PRICE_PER_MESSAGE", 1);
        let base = self.credits("KIRIM_PRICE_PER_MESSAGE", base);
        let mut one = |name: &str| {
            let v = self.number(name, base);
            self.credits(name, v)
        };
        Prices {
            marketing: one("KIRIM_PRICE_MARKETING"),
            utility: one("KIRIM_PRICE_UTILITY"),
            authentication: one("KIRIM_PRICE_AUTHENTICATION"),
            session: one("KIRIM_PRICE_SESSION"),
        }
    }

    /// `KIRIM_META_TIMEOUT` [10s] (more than 0, at most [`MAX_META_TIMEOUT`]: the
    /// dispatcher's Lambda runs 60 s, and a call must end inside it) and
    /// `KIRIM_SENDING_DEADLINE` [24h] (at least the Meta timeout plus 5 s: a deadline any
    /// shorter could fail a claimed message as `outcome_unknown` while Meta is still
    /// answering it). Out of range: named, and the default kept.
    /// `KIRIM_CALLBACK_TIMEOUT` [10s], more than 0 and at most [`MAX_CALLBACK_TIMEOUT`]:
    /// a batch's callbacks of one message are tried one after another in the callback
    /// function's 60 s, and a slow receiver that still answers trips no breaker.
    fn callback_timeout(&mut self, d: &Settings) -> Duration {
        let raw = self.optional("KIRIM_CALLBACK_TIMEOUT");
        let t = self.duration("KIRIM_CALLBACK_TIMEOUT", d.callback_timeout);
        if t.is_zero() || t > MAX_CALLBACK_TIMEOUT {
            self.problems.push(format!(
                "KIRIM_CALLBACK_TIMEOUT={} must be more than 0 and at most 10s (a message's \
                 callbacks are tried one after another in the callback function's 60 s)",
                raw.unwrap_or_default()
            ));
            return d.callback_timeout;
        }
        t
    }

    fn send_timing(&mut self, d: &Settings) -> (Duration, Duration) {
        let raw = self.optional("KIRIM_META_TIMEOUT");
        let mut meta = self.duration("KIRIM_META_TIMEOUT", d.meta_timeout);
        if meta.is_zero() || meta > MAX_META_TIMEOUT {
            self.problems.push(format!(
                "KIRIM_META_TIMEOUT={} must be more than 0 and at most 30s (the dispatcher's \
                 Lambda runs 60 s)",
                raw.unwrap_or_default()
            ));
            meta = d.meta_timeout;
        }
        let raw = self.optional("KIRIM_SENDING_DEADLINE");
        let mut deadline = self.duration("KIRIM_SENDING_DEADLINE", d.sending_deadline);
        if deadline < meta + Duration::from_secs(5) {
            self.problems.push(format!(
                "KIRIM_SENDING_DEADLINE={} must be at least the Meta timeout plus 5s",
                raw.unwrap_or_default()
            ));
            deadline = d.sending_deadline;
        }
        (meta, deadline)
    }

    /// A price `name` was set (or defaulted) to, kept within 0 to 1000000 credits.
    fn credits(&mut self, name: &str, v: i64) -> i64 {
        if !(0..=1_000_000).contains(&v) {
            self.problems
                .push(format!("{name}={v} must be 0 to 1000000 credits"));
        }
        v.clamp(0, 1_000_000)
    }

    /// `KIRIM_META_THROUGHPUT` [80]: one of Meta's tiers.
    fn throughput(&mut self, default: u32) -> u32 {
        let v: u32 = self.number("KIRIM_META_THROUGHPUT", default);
        if crate::ports::THROUGHPUT_TIERS.contains(&v) {
            v
        } else {
            self.problems
                .push(format!("KIRIM_META_THROUGHPUT={v} must be 20, 80 or 1000"));
            default
        }
    }

    /// `KIRIM_LIMIT_KEY_PER_SEC` [50], `KIRIM_LIMIT_KEY_BURST` [100] (the tenant's limit
    /// is four times these), `KIRIM_LIMIT_INSTANCES` [1], `KIRIM_LIMIT_WEBHOOK_BAD_SIGNATURES`
    /// [10] and `KIRIM_LIMIT_WEBHOOK_REFILL_SECS` [6].
    fn limits(&mut self, d: LimitSettings) -> LimitSettings {
        let key = RequestLimits {
            requests_per_sec: self.number("KIRIM_LIMIT_KEY_PER_SEC", d.key.requests_per_sec),
            burst: self.number("KIRIM_LIMIT_KEY_BURST", d.key.burst),
        };
        let key = key.validated().unwrap_or_else(|e| {
            self.problems.push(format!(
                "KIRIM_LIMIT_KEY_PER_SEC / KIRIM_LIMIT_KEY_BURST: {e}"
            ));
            d.key
        });
        let mut positive = |name: &str, default: u32, max: u32| {
            let v: u32 = self.number(name, default);
            if (1..=max).contains(&v) {
                v
            } else {
                self.problems.push(format!("{name}={v} must be 1 to {max}"));
                default
            }
        };
        LimitSettings {
            key,
            instances: positive("KIRIM_LIMIT_INSTANCES", d.instances, 10_000),
            webhook_bad_signatures: positive(
                "KIRIM_LIMIT_WEBHOOK_BAD_SIGNATURES",
                d.webhook_bad_signatures,
                10_000,
            ),
            webhook_refill_secs: positive(
                "KIRIM_LIMIT_WEBHOOK_REFILL_SECS",
                d.webhook_refill_secs,
                3_600,
            ),
            bad_credentials: positive("KIRIM_LIMIT_BAD_CREDENTIALS", d.bad_credentials, 10_000),
            bad_credentials_refill_secs: positive(
                "KIRIM_LIMIT_BAD_CREDENTIALS_REFILL_SECS",
                d.bad_credentials_refill_secs,
                3_600,
            ),
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
    fn a_meta_timeout_past_the_dispatchers_lambda_or_a_deadline_inside_one_call_is_refused() {
        let read = |vars: &[(&str, &str)]| {
            let env: HashMap<String, String> = vars
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            let mut r = EnvReader::new(move |k| env.get(k).cloned());
            let s = r.settings();
            (s.meta_timeout, s.sending_deadline, r.finish())
        };
        let (meta, deadline, ok) = read(&[
            ("KIRIM_META_TIMEOUT", "5s"),
            ("KIRIM_SENDING_DEADLINE", "12s"),
        ]);
        assert_eq!(
            (meta, deadline),
            (Duration::from_secs(5), Duration::from_secs(12))
        );
        assert!(ok.is_ok());
        for (vars, blamed) in [
            (vec![("KIRIM_META_TIMEOUT", "90s")], "KIRIM_META_TIMEOUT"),
            (vec![("KIRIM_META_TIMEOUT", "0s")], "KIRIM_META_TIMEOUT"),
            (
                vec![("KIRIM_SENDING_DEADLINE", "12s")],
                "KIRIM_SENDING_DEADLINE",
            ),
            (
                vec![
                    ("KIRIM_META_TIMEOUT", "25s"),
                    ("KIRIM_SENDING_DEADLINE", "20s"),
                ],
                "KIRIM_SENDING_DEADLINE",
            ),
        ] {
            let (meta, deadline, res) = read(&vars);
            let err = res.expect_err("refused").to_string();
            assert!(err.contains(blamed), "{vars:?}: {err}");
            assert!(meta <= MAX_META_TIMEOUT && !meta.is_zero());
            assert!(deadline >= meta + Duration::from_secs(5));
        }
    }

    #[test]
    fn the_message_retention_floor_outlasts_every_settling_of_a_lost_job() {
        use crate::domain::{BROADCAST_LIST_RETENTION, LOST_FANOUT_MARGIN, UNSENT_STALE_AFTER};
        assert!(
            MIN_MESSAGES_RETENTION
                > BROADCAST_LIST_RETENTION + LOST_FANOUT_MARGIN + UNSENT_STALE_AFTER
        );
    }

    #[test]
    fn an_idempotency_retention_longer_than_the_messages_refuses_to_start() {
        for (messages, idempotency, refused) in [
            ("14d", "30d", true),
            ("14d", "14d", false),
            ("730d", "30d", false),
        ] {
            let mut r = EnvReader::new(move |k| match k {
                "KIRIM_RETENTION_MESSAGES" => Some(messages.to_owned()),
                "KIRIM_RETENTION_IDEMPOTENCY" => Some(idempotency.to_owned()),
                _ => None,
            });
            let s = r.settings();
            let res = r.finish();
            assert_eq!(res.is_err(), refused, "{messages} {idempotency}");
            if refused {
                let e = res.unwrap_err().to_string();
                assert!(e.contains("KIRIM_RETENTION_IDEMPOTENCY=30d"), "{e}");
                assert_eq!(
                    s.retention.idempotency.as_secs(),
                    86_400,
                    "the default kept"
                );
            }
        }
    }

    #[test]
    fn a_message_retention_shorter_than_two_weeks_refuses_to_start() {
        for (value, refused) in [("13d", true), ("0s", true), ("14d", false), ("30d", false)] {
            let mut r = EnvReader::new(move |k| {
                (k == "KIRIM_RETENTION_MESSAGES").then(|| value.to_owned())
            });
            let s = r.settings();
            let res = r.finish();
            assert_eq!(res.is_err(), refused, "{value}");
            if refused {
                assert!(res
                    .unwrap_err()
                    .to_string()
                    .contains("KIRIM_RETENTION_MESSAGES"));
                assert_eq!(s.retention.messages.as_secs(), 730 * 86_400);
            }
        }
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

    #[test]
    fn the_price_table_defaults_to_one_credit_and_is_set_per_category() {
        let s = EnvReader::new(|_| None).settings();
        assert_eq!(s.prices, Prices::flat(1));
        let env: HashMap<&str, &str> = HashMap::from([
            ("KIRIM_PRICE_PER_MESSAGE", "2"),
            ("KIRIM_PRICE_MARKETING", "5"),
        ]);
        let mut r = EnvReader::new(|k| env.get(k).map(|v| v.to_string()));
        let p = r.settings().prices;
        assert!(r.finish().is_ok());
        assert_eq!(p.price_for(Some(TemplateCategory::Marketing)), 5);
        assert_eq!(p.price_for(Some(TemplateCategory::Utility)), 2);
        assert_eq!(p.price_for(None), 2);
        let mut bad = EnvReader::new(|k| (k == "KIRIM_PRICE_UTILITY").then(|| "-1".to_owned()));
        let _ = bad.settings();
        assert!(bad
            .finish()
            .unwrap_err()
            .to_string()
            .contains("KIRIM_PRICE_UTILITY"));
    }

    #[test]
    fn a_base_price_out_of_range_is_blamed_on_its_own_variable() {
        // It was blamed on the four category variables, which were not set.
        let mut r = EnvReader::new(|k| (k == "KIRIM_PRICE_PER_MESSAGE").then(|| "-1".to_owned()));
        let p = r.settings().prices;
        let err = r.finish().unwrap_err().to_string();
        assert!(err.contains("KIRIM_PRICE_PER_MESSAGE=-1"), "{err}");
        assert!(!err.contains("KIRIM_PRICE_MARKETING"), "{err}");
        assert_eq!(p, Prices::flat(0));
    }

    #[test]
    fn a_meta_base_url_without_a_scheme_or_host_is_refused_at_start() {
        for bad in [
            "127.0.0.1:3001",
            "localhost:3001",
            "ftp://graph.facebook.com",
            "https://",
        ] {
            let mut r = EnvReader::new(|k| (k == "KIRIM_META_BASE_URL").then(|| bad.to_owned()));
            let s = r.settings();
            let err = r.finish().unwrap_err().to_string();
            assert!(
                err.contains(&format!("KIRIM_META_BASE_URL={bad} ")),
                "{err}"
            );
            assert_eq!(s.meta_base_url, Settings::default().meta_base_url);
        }
        let mut r = EnvReader::new(|k| {
            (k == "KIRIM_META_BASE_URL").then(|| "http://127.0.0.1:3001/".to_owned())
        });
        assert_eq!(r.settings().meta_base_url, "http://127.0.0.1:3001");
        r.finish().expect("taken");
    }

    #[test]
    fn a_billing_or_audit_retention_of_seconds_is_refused_not_kept_for_minutes() {
        for (name, v) in [
            ("KIRIM_RETENTION_BILLING", "2557"),
            ("KIRIM_RETENTION_AUDIT", "0d"),
            ("KIRIM_RETENTION_IDEMPOTENCY", "60s"),
        ] {
            let mut r = EnvReader::new(|k| (k == name).then(|| v.to_owned()));
            let s = r.settings();
            let err = r.finish().unwrap_err().to_string();
            assert!(
                err.contains(&format!("{name}={v} must be at least")),
                "{err}"
            );
            let d = RetentionConfig::default();
            assert_eq!(
                (
                    s.retention.billing,
                    s.retention.audit,
                    s.retention.idempotency
                ),
                (d.billing, d.audit, d.idempotency),
                "the defaults kept"
            );
        }
    }

    // ---- properties (issue 14): the environment is outside input too ----

    use proptest::prelude::*;

    const DURATIONS: [&str; 9] = [
        "KIRIM_RETENTION_MESSAGES",
        "KIRIM_RETENTION_AUDIT",
        "KIRIM_RETENTION_BILLING",
        "KIRIM_RETENTION_IDEMPOTENCY",
        "KIRIM_DISPATCH_BACKOFF",
        "KIRIM_META_TIMEOUT",
        "KIRIM_SENDING_DEADLINE",
        "KIRIM_CALLBACK_BACKOFF",
        "KIRIM_CALLBACK_TIMEOUT",
    ];

    const OTHERS: [&str; 17] = [
        "KIRIM_SECRET_PREFIX",
        "KIRIM_DISPATCH_MAX_ATTEMPTS",
        "KIRIM_META_BASE_URL",
        "KIRIM_META_API_VERSION",
        "KIRIM_PRICE_PER_MESSAGE",
        "KIRIM_PRICE_MARKETING",
        "KIRIM_PRICE_UTILITY",
        "KIRIM_PRICE_AUTHENTICATION",
        "KIRIM_PRICE_SESSION",
        "KIRIM_QUALITY_OPT_OUT_THRESHOLD",
        "KIRIM_QUALITY_UNDELIVERABLE_THRESHOLD",
        "KIRIM_QUALITY_MIN_VOLUME",
        "KIRIM_QUALITY_PAUSE_MARKETING",
        "KIRIM_CALLBACKS_ALLOW_PRIVATE",
        "KIRIM_CALLBACK_MAX_ATTEMPTS",
        "KIRIM_META_THROUGHPUT",
        "KIRIM_BACKEND",
    ];

    /// What an operator might set a variable to: numbers of every size, durations,
    /// words, blanks, anything.
    fn value() -> BoxedStrategy<Option<String>> {
        prop_oneof![
            3 => Just(None),
            1 => prop::sample::select(vec!["", " ", "\t"]).prop_map(|s| Some(s.to_owned())),
            2 => (any::<u64>(), prop::sample::select(vec!["", "ms", "s", "m", "h", "d"]))
                .prop_map(|(n, u)| Some(format!("{}{u}", n >> (n % 64)))),
            2 => any::<i64>().prop_map(|n| Some((n >> (n.unsigned_abs() % 64)).to_string())),
            1 => prop::sample::select(vec![
                "20", "80", "1000", "0", "1", "9", "10", "-1", "1000001", "0.5", "NaN", "inf",
                "true", "false", "aws", "memory", "two years", "12 h", "730D",
            ])
            .prop_map(|s| Some(s.to_owned())),
            1 => crate::props::re("\\PC{0,12}").prop_map(Some),
        ]
        .boxed()
    }

    fn environment() -> BoxedStrategy<HashMap<&'static str, String>> {
        prop::collection::vec(value(), DURATIONS.len() + OTHERS.len())
            .prop_map(|values| {
                DURATIONS
                    .iter()
                    .chain(OTHERS.iter())
                    .zip(values)
                    .filter_map(|(k, v)| v.map(|v| (*k, v)))
                    .collect()
            })
            .boxed()
    }

    proptest! {
        #![proptest_config(crate::props::config(2_000))]

        #[test]
        fn any_environment_is_read_without_panicking_and_only_the_bad_variables_are_named(
            env in environment()
        ) {
            let mut r = EnvReader::new(|k| env.get(k).cloned());
            let s = r.settings();
            let _ = r.backend();
            let problems = match r.finish() {
                Ok(()) => String::new(),
                Err(e) => e.to_string(),
            };
            // Only variables that were set are blamed.
            for name in DURATIONS.iter().chain(OTHERS.iter()) {
                if problems.contains(&format!("{name}=")) {
                    let set = env.get(name).is_some_and(|v| !v.trim().is_empty());
                    prop_assert!(set, "{} named but not set: {}", name, problems);
                }
            }
            let defaults = Settings::default();
            // At least `MIN_MESSAGES_RETENTION`, else named and the default kept.
            let messages = env.get(DURATIONS[0]).filter(|v| !v.trim().is_empty());
            match messages.map(|v| parse_duration(v)) {
                None => prop_assert_eq!(s.retention.messages, defaults.retention.messages),
                Some(Some(d)) if d >= MIN_MESSAGES_RETENTION => {
                    prop_assert_eq!(s.retention.messages, d);
                    prop_assert!(!problems.contains("KIRIM_RETENTION_MESSAGES="), "{}", problems);
                }
                Some(_) => {
                    prop_assert_eq!(s.retention.messages, defaults.retention.messages);
                    prop_assert!(problems.contains("KIRIM_RETENTION_MESSAGES="), "{}", problems);
                }
            }
            // More than 0 and at most `MAX_CALLBACK_TIMEOUT`, else named and the default kept.
            let timeout = env.get(DURATIONS[8]).filter(|v| !v.trim().is_empty());
            match timeout.map(|v| parse_duration(v)) {
                None => prop_assert_eq!(s.callback_timeout, defaults.callback_timeout),
                Some(Some(d)) if !d.is_zero() && d <= MAX_CALLBACK_TIMEOUT => {
                    prop_assert_eq!(s.callback_timeout, d);
                    prop_assert!(!problems.contains("KIRIM_CALLBACK_TIMEOUT="), "{}", problems);
                }
                Some(_) => {
                    prop_assert_eq!(s.callback_timeout, defaults.callback_timeout);
                    prop_assert!(problems.contains("KIRIM_CALLBACK_TIMEOUT="), "{}", problems);
                }
            }
            let read = [
                (DURATIONS[1], s.retention.audit, defaults.retention.audit, MIN_RECORDS_RETENTION),
                (DURATIONS[2], s.retention.billing, defaults.retention.billing, MIN_RECORDS_RETENTION),
                (
                    DURATIONS[3],
                    s.retention.idempotency,
                    defaults.retention.idempotency,
                    MIN_IDEMPOTENCY_RETENTION,
                ),
                (DURATIONS[4], s.dispatch_backoff, defaults.dispatch_backoff, Duration::ZERO),
                (DURATIONS[7], s.callback_backoff, defaults.callback_backoff, Duration::ZERO),
            ];
            for (name, got, default, min) in read {
                let set = env.get(name).filter(|v| !v.trim().is_empty());
                match set.map(|v| (v, parse_duration(v))) {
                    None => prop_assert_eq!(got, default, "{} unset", name),
                    Some((_, Some(d))) if d < min => {
                        prop_assert_eq!(got, default, "{}", name);
                        prop_assert!(problems.contains(&format!("{name}=")), "{} not named: {}", name, problems);
                    }
                    // An idempotency key may not outlive the messages it answers with.
                    Some((_, Some(d))) if name == DURATIONS[3] && d > s.retention.messages => {
                        prop_assert_eq!(got, default, "{}", name);
                        prop_assert!(problems.contains(&format!("{name}=")), "{} not named: {}", name, problems);
                    }
                    Some((_, Some(d))) => {
                        prop_assert_eq!(got, d, "{}", name);
                        prop_assert!(!problems.contains(&format!("{name}=")), "{}", problems);
                    }
                    Some((v, None)) => {
                        prop_assert_eq!(got, default, "{}", name);
                        prop_assert!(problems.contains(&format!("{name}={v} ")), "{} not named: {}", name, problems);
                    }
                }
            }
            // The Meta timeout and the sending deadline: taken in their ranges, else
            // named (when set and read) and the default kept.
            let parsed = |name: &str| {
                env.get(name)
                    .filter(|v| !v.trim().is_empty())
                    .and_then(|v| parse_duration(v))
            };
            let meta = parsed(DURATIONS[5])
                .filter(|m| !m.is_zero() && *m <= MAX_META_TIMEOUT)
                .unwrap_or(defaults.meta_timeout);
            prop_assert_eq!(s.meta_timeout, meta);
            if parsed(DURATIONS[5]).is_some_and(|m| m != meta) {
                prop_assert!(problems.contains("KIRIM_META_TIMEOUT="), "{}", problems);
            }
            let deadline = parsed(DURATIONS[6])
                .filter(|d| *d >= meta + Duration::from_secs(5))
                .unwrap_or(defaults.sending_deadline);
            prop_assert_eq!(s.sending_deadline, deadline);
            if parsed(DURATIONS[6]).is_some_and(|d| d != deadline) {
                prop_assert!(problems.contains("KIRIM_SENDING_DEADLINE="), "{}", problems);
            }
            // An http(s) URL with a host, else named and the default kept.
            match env.get("KIRIM_META_BASE_URL").filter(|v| !v.trim().is_empty()) {
                None => prop_assert_eq!(&s.meta_base_url, &defaults.meta_base_url),
                Some(v) => {
                    let ok = reqwest::Url::parse(v)
                        .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some());
                    prop_assert_eq!(ok, !problems.contains("KIRIM_META_BASE_URL="), "{}", problems);
                    if !ok {
                        prop_assert_eq!(&s.meta_base_url, &defaults.meta_base_url);
                    }
                }
            }
            prop_assert!((1..=9).contains(&s.dispatch_max_attempts));
            prop_assert!((1..=9).contains(&s.callback_max_attempts));
            // Thresholds are fractions: anything else (NaN, negative, above 1) is named.
            for (name, got) in [
                ("KIRIM_QUALITY_OPT_OUT_THRESHOLD", s.quality.opt_out_threshold),
                ("KIRIM_QUALITY_UNDELIVERABLE_THRESHOLD", s.quality.undeliverable_threshold),
            ] {
                prop_assert!((0.0..=1.0).contains(&got), "{} = {}", name, got);
                let set = env.get(name).and_then(|v| v.trim().parse::<f64>().ok());
                if set.is_some_and(|v| !(0.0..=1.0).contains(&v)) {
                    prop_assert!(problems.contains(&format!("{name}=")), "{} not named: {}", name, problems);
                }
            }
            if env
                .get("KIRIM_DISPATCH_MAX_ATTEMPTS")
                .and_then(|v| v.trim().parse::<u32>().ok())
                .is_some_and(|v| !(1..=9).contains(&v))
            {
                prop_assert!(problems.contains("KIRIM_DISPATCH_MAX_ATTEMPTS="), "{}", problems);
            }
            prop_assert!(crate::ports::THROUGHPUT_TIERS.contains(&s.meta_throughput));
            for p in [s.prices.marketing, s.prices.utility, s.prices.authentication, s.prices.session] {
                prop_assert!((0..=1_000_000).contains(&p));
            }
        }
    }
}
