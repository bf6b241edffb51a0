use std::time::Duration;

use chrono::{DateTime, Utc};

/// Every stored item belongs to one retention class; the class decides its TTL. This file
/// owns the classes and their durations; which item type (which DynamoDB key) belongs to
/// which class is owned by the key schema, `adapters::aws::keys`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RetentionClass {
    /// Tenants, API keys, opt-outs, phone-number routes: kept while the tenant exists.
    ActiveConfig,
    /// Message delivery metadata (recipient, times, status, template name).
    Messages,
    /// Audit events.
    Audit,
    /// Credit top-ups and debits.
    Billing,
    /// Idempotency keys.
    Idempotency,
    /// Statuses that arrived before their message's wamid was known.
    PendingStatus,
    /// Console session tokens.
    Session,
    /// Daily quality counters (sends, opt-outs, undeliverables): the rolling window's days.
    Stats,
    /// A broadcast's uploaded recipient list: deleted when its fan-out is done; this class's
    /// expiry is the backstop should a fan-out never finish.
    BroadcastList,
    /// A business number's next free send slot (throughput state, not a record): an idle
    /// number's slot expires.
    SendSlot,
    /// Failed-login counters (per email and address, per address): a day after the last
    /// failure they are gone.
    LoginFailures,
}

/// How long an uploaded recipient list may outlive an unfinished fan-out (not configurable).
pub const BROADCAST_LIST_RETENTION: Duration = Duration::from_secs(7 * DAY);
/// How long a number's send slot outlives its last reservation (not configurable).
pub const SEND_SLOT_RETENTION: Duration = Duration::from_secs(3600);
/// How long a failed-login counter outlives its last failure (not configurable).
pub const LOGIN_FAILURES_RETENTION: Duration = Duration::from_secs(DAY);

#[derive(Clone, Debug)]
pub struct RetentionConfig {
    pub messages: Duration,
    pub audit: Duration,
    pub billing: Duration,
    pub idempotency: Duration,
    pub pending_status: Duration,
    pub session: Duration,
    pub stats: Duration,
}

const DAY: u64 = 86_400;

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            messages: Duration::from_secs(730 * DAY),
            audit: Duration::from_secs(730 * DAY),
            billing: Duration::from_secs(2557 * DAY),
            idempotency: Duration::from_secs(DAY),
            pending_status: Duration::from_secs(7 * DAY),
            session: Duration::from_secs(12 * 3600),
            stats: Duration::from_secs(35 * DAY),
        }
    }
}

impl RetentionConfig {
    pub fn duration(&self, class: RetentionClass) -> Option<Duration> {
        match class {
            RetentionClass::ActiveConfig => None,
            RetentionClass::Messages => Some(self.messages),
            RetentionClass::Audit => Some(self.audit),
            RetentionClass::Billing => Some(self.billing),
            RetentionClass::Idempotency => Some(self.idempotency),
            RetentionClass::PendingStatus => Some(self.pending_status),
            RetentionClass::Session => Some(self.session),
            RetentionClass::Stats => Some(self.stats),
            RetentionClass::BroadcastList => Some(BROADCAST_LIST_RETENTION),
            RetentionClass::SendSlot => Some(SEND_SLOT_RETENTION),
            RetentionClass::LoginFailures => Some(LOGIN_FAILURES_RETENTION),
        }
    }

    /// The TTL (epoch seconds) an item of `class` created at `at` carries.
    pub fn expiry(&self, class: RetentionClass, at: DateTime<Utc>) -> Option<i64> {
        self.duration(class)
            .map(|d| at.timestamp().saturating_add(d.as_secs() as i64))
    }
}

impl RetentionClass {
    /// Every class, in report order.
    pub const ALL: [RetentionClass; 11] = [
        RetentionClass::Messages,
        RetentionClass::Billing,
        RetentionClass::Audit,
        RetentionClass::Idempotency,
        RetentionClass::PendingStatus,
        RetentionClass::Session,
        RetentionClass::Stats,
        RetentionClass::BroadcastList,
        RetentionClass::SendSlot,
        RetentionClass::LoginFailures,
        RetentionClass::ActiveConfig,
    ];

    /// The name used in retention reports and the docs.
    pub fn as_str(self) -> &'static str {
        match self {
            RetentionClass::ActiveConfig => "active_config",
            RetentionClass::Messages => "messages",
            RetentionClass::Audit => "audit",
            RetentionClass::Billing => "billing",
            RetentionClass::Idempotency => "idempotency",
            RetentionClass::PendingStatus => "pending_status",
            RetentionClass::Session => "session",
            RetentionClass::Stats => "stats",
            RetentionClass::BroadcastList => "broadcast_list",
            RetentionClass::SendSlot => "send_slot",
            RetentionClass::LoginFailures => "login_failures",
        }
    }
}

/// Parses `730d`, `12h`, `30m`, `45s`, `250ms`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map(|i| s.split_at(i))
        .unwrap_or((s, "s"));
    let n: u64 = num.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => Some(Duration::from_secs(n.checked_mul(60)?)),
        "h" => Some(Duration::from_secs(n.checked_mul(3600)?)),
        "d" => Some(Duration::from_secs(n.checked_mul(DAY)?)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_in_the_units_the_configuration_uses() {
        assert_eq!(parse_duration("730d"), Some(Duration::from_secs(730 * DAY)));
        assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("12"), Some(Duration::from_secs(12)));
        assert_eq!(parse_duration("5y"), None);
        assert_eq!(parse_duration("d"), None);
    }

    #[test]
    fn every_class_is_reported_once_under_its_own_name() {
        let names: std::collections::BTreeSet<&str> =
            RetentionClass::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(names.len(), RetentionClass::ALL.len());
    }

    #[test]
    fn technical_classes_expire_after_their_fixed_durations() {
        let c = RetentionConfig::default();
        assert_eq!(
            c.duration(RetentionClass::BroadcastList),
            Some(Duration::from_secs(7 * DAY))
        );
        assert_eq!(
            c.duration(RetentionClass::SendSlot),
            Some(Duration::from_secs(3600))
        );
    }

    #[test]
    fn active_configuration_never_expires_and_billing_outlives_messages() {
        let c = RetentionConfig::default();
        let now = Utc::now();
        assert_eq!(c.expiry(RetentionClass::ActiveConfig, now), None);
        assert!(
            c.expiry(RetentionClass::Billing, now).unwrap()
                > c.expiry(RetentionClass::Messages, now).unwrap()
        );
    }
}
