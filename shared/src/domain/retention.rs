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
    /// When a user last wrote to one of a tenant's numbers: Meta's 24-hour
    /// customer-service window, gone when it closes.
    ServiceWindow,
    /// A tenant's record of a status callback given up (its message id, status, sequence,
    /// attempts, the last failure's class and the receiver's host): kept as long as the
    /// callback itself is on the dead-letter queue (14 days).
    CallbackFailures,
}

/// How long an uploaded recipient list may outlive an unfinished fan-out (not configurable).
pub const BROADCAST_LIST_RETENTION: Duration = Duration::from_secs(7 * DAY);
/// How long after its list's backstop a campaign still fanning out is taken for one whose
/// fan-out job was lost (`broadcasts::settle_lost`): longer than a fan-out that read the list
/// just before it expired can still be recording it (a Lambda runs 15 minutes at most), so
/// the close never refunds recipients a live fan-out goes on to record.
pub const LOST_FANOUT_MARGIN: Duration = Duration::from_secs(3600);
/// How long a message may stay `accepted` or `sending` without a move before the daily
/// retention run takes its dispatch job for lost and settles it (not configurable): longer
/// than the dispatch queue keeps a job (4 days), so no job that could still come is
/// overtaken; every live job moves its message (a claim, a give-back, a retry) far more
/// often, and a paused broadcast's messages are left to their broadcast.
pub const UNSENT_STALE_AFTER: Duration = Duration::from_secs(5 * DAY);
/// How long a user's opting back in (START, a marketing `resume`) is kept against an older
/// STOP delivered after it (not configurable): as long as Meta retries a webhook.
pub const OPTED_IN_RETENTION: Duration = Duration::from_secs(7 * DAY);
/// How long an API key is kept after it ended (revoked, expired, or its rotation's grace
/// over; not configurable): listed as ended meanwhile, then both copies expire, so a
/// tenant that rotates its keys does not gather every key it ever had.
pub const ENDED_KEY_RETENTION: Duration = Duration::from_secs(90 * DAY);
/// How long a number's send slot outlives its last reservation (not configurable).
pub const SEND_SLOT_RETENTION: Duration = Duration::from_secs(3600);
/// How long a failed-login counter outlives its last failure (not configurable).
pub const LOGIN_FAILURES_RETENTION: Duration = Duration::from_secs(DAY);
/// Meta's customer-service window: how long after a user last wrote a session message
/// may be sent to them, and how long that time is kept (not configurable).
pub const CUSTOMER_SERVICE_WINDOW: Duration = Duration::from_secs(DAY);
/// How long a tenant's record of a given-up status callback is kept (not configurable):
/// the StatusCallbackDeadLetterQueue's retention, so the record lasts as long as the
/// callback it names can still be redriven.
pub const CALLBACK_FAILURE_RETENTION: Duration = Duration::from_secs(14 * DAY);

/// How one of the template's SQS queues keeps its messages: what `template.yaml` declares for
/// it and its dead-letter queue (the kirim-infra test
/// `the_templates_queues_keep_messages_as_the_code_says` holds the two equal), so that local
/// mode's memory queues keep them alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueShape {
    /// `VisibilityTimeout`: how long a received message stays hidden.
    pub visibility: Duration,
    /// The `RedrivePolicy`'s `maxReceiveCount`: a message received this many times moves to
    /// the dead-letter queue at its next receive.
    pub max_receives: u32,
    /// `MessageRetentionPeriod`: a message is gone this long after it was sent.
    pub retention: Duration,
    /// The dead-letter queue's `MessageRetentionPeriod`, counted (a standard queue's) from
    /// the message's first enqueue on the source queue, not from its move.
    pub dead_letter_retention: Duration,
}

/// `DispatchQueue` and `DispatchDeadLetterQueue`: a job (which holds message content) is
/// kept 4 days at most, and parked 1 day from its first enqueue.
pub const DISPATCH_QUEUE: QueueShape = QueueShape {
    visibility: Duration::from_secs(360),
    max_receives: 10,
    retention: Duration::from_secs(4 * DAY),
    dead_letter_retention: Duration::from_secs(DAY),
};

/// `StatusCallbackQueue` and `StatusCallbackDeadLetterQueue` (no content): 7 days, and
/// parked 14 days from the first enqueue.
pub const STATUS_CALLBACK_QUEUE: QueueShape = QueueShape {
    visibility: Duration::from_secs(360),
    max_receives: 10,
    retention: Duration::from_secs(7 * DAY),
    dead_letter_retention: CALLBACK_FAILURE_RETENTION,
};

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
            RetentionClass::ServiceWindow => Some(CUSTOMER_SERVICE_WINDOW),
            RetentionClass::CallbackFailures => Some(CALLBACK_FAILURE_RETENTION),
        }
    }

    /// The TTL (epoch seconds) an item of `class` created at `at` carries. A retention
    /// too long to count (configured, say, as `9223372036854775808s`) is forever.
    pub fn expiry(&self, class: RetentionClass, at: DateTime<Utc>) -> Option<i64> {
        self.duration(class).map(|d| {
            at.timestamp()
                .saturating_add(i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        })
    }
}

impl RetentionClass {
    /// Every class, in report order.
    pub const ALL: [RetentionClass; 13] = [
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
        RetentionClass::ServiceWindow,
        RetentionClass::CallbackFailures,
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
            RetentionClass::ServiceWindow => "service_window",
            RetentionClass::CallbackFailures => "callback_failures",
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
        assert_eq!(
            c.duration(RetentionClass::CallbackFailures),
            Some(Duration::from_secs(14 * DAY)),
            "as long as the dead-letter queue keeps the callback"
        );
    }

    #[test]
    fn a_retention_of_more_than_i64_max_seconds_never_expires_rather_than_at_once() {
        // It was cast to i64 and wrapped negative: every item already expired.
        let d = parse_duration("9223372036854775808s").unwrap();
        let c = RetentionConfig {
            messages: d,
            ..RetentionConfig::default()
        };
        let now = Utc::now();
        assert_eq!(c.expiry(RetentionClass::Messages, now), Some(i64::MAX));
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

    // ---- properties (issue 14): durations come from the environment ----

    use proptest::prelude::*;

    const UNITS: [(&str, u64, u64); 5] = [
        ("ms", 1, 1_000),
        ("s", 1, 1),
        ("m", 60, 1),
        ("h", 3_600, 1),
        ("d", DAY, 1),
    ];

    /// What `n` of a unit is, as the test reckons it: seconds times `per`, over `div`.
    fn reckon(n: u64, unit: &str) -> Option<Duration> {
        let (_, per, div) = UNITS.iter().find(|(u, _, _)| *u == unit)?;
        if *div == 1_000 {
            Some(Duration::from_millis(n))
        } else {
            n.checked_mul(*per).map(Duration::from_secs)
        }
    }

    fn magnitude() -> BoxedStrategy<u64> {
        prop_oneof![
            0u64..100_000,
            any::<u64>(),
            (0u32..64).prop_map(|b| 1u64 << b),
            (u64::MAX / DAY - 2..=u64::MAX / DAY + 2),
            Just(i64::MAX as u64),
            Just(i64::MAX as u64 + 1),
            Just(u64::MAX),
        ]
        .boxed()
    }

    proptest! {
        #![proptest_config(crate::props::config(5_000))]

        #[test]
        fn a_number_and_unit_read_back_as_that_duration_or_as_nothing_when_it_overflows(
            n in magnitude(),
            unit in prop::sample::select(vec!["ms", "s", "m", "h", "d", ""]),
            pad in prop::sample::select(vec!["", " ", "\t", " \n"]),
        ) {
            let text = format!("{pad}{n}{unit}{pad}");
            let expected = reckon(n, if unit.is_empty() { "s" } else { unit });
            prop_assert_eq!(parse_duration(&text), expected, "{:?}", text);
        }

        #[test]
        fn any_text_reads_as_a_duration_only_if_it_is_digits_and_a_unit(
            text in prop_oneof![
                crate::props::re("[ ]?[0-9+-]{0,22}(ms|s|m|h|d|y|S|M|µs|)[ ]?"),
                crate::props::re("\\PC{0,12}"),
            ]
        ) {
            if let Some(d) = parse_duration(&text) {
                let t = text.trim();
                let digits = t.trim_end_matches(|c: char| c.is_ascii_alphabetic());
                let unit = &t[digits.len()..];
                prop_assert!(!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()), "{:?}", text);
                let n: u64 = digits.parse().unwrap();
                prop_assert_eq!(Some(d), reckon(n, if unit.is_empty() { "s" } else { unit }), "{:?}", text);
            }
        }

        #[test]
        fn an_item_never_expires_before_it_was_made_whatever_the_configured_retention(
            n in magnitude(),
            unit in prop::sample::select(vec!["ms", "s", "m", "h", "d"]),
            at in -62_000_000_000i64..253_000_000_000,
        ) {
            let Some(d) = parse_duration(&format!("{n}{unit}")) else {
                return Ok(());
            };
            let config = RetentionConfig { messages: d, ..RetentionConfig::default() };
            let at = DateTime::from_timestamp(at, 0).unwrap();
            let expiry = config.expiry(RetentionClass::Messages, at).unwrap();
            prop_assert!(expiry >= at.timestamp(), "{}{} from {} expires at {}", n, unit, at, expiry);
            prop_assert!(expiry as i128 <= at.timestamp() as i128 + d.as_secs() as i128);
        }
    }
}
