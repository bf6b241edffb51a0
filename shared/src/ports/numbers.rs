//! A tenant's phone numbers (senders) and Meta's pricing of its messages (API.md "Phone
//! numbers (senders)" and "Pricing as Meta reports it").

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};

use crate::domain::{MessageId, MessageStatus, Pricing, TemplateQuality, TenantId};
use crate::ports::StatusChange;
use crate::store_error::StoreError;

/// One of a tenant's business phone numbers. Which one is the default is the tenant's
/// `phone_number_id` (so a tenant onboarded before numbers existed has its one number as
/// the default, with no number item yet: `service::numbers` reads it from the tenant).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PhoneNumberRecord {
    pub tenant_id: TenantId,
    pub phone_number_id: String,
    pub waba_id: String,
    #[serde(default)]
    pub display_phone_number: Option<String>,
    /// Meta's quality rating of the number (`phone_number_quality_update`).
    #[serde(default = "unknown_quality")]
    pub quality: TemplateQuality,
    /// Meta's throughput for the number (messages a second), when Meta said so.
    #[serde(default)]
    pub throughput_per_sec: Option<u32>,
    pub added_at: DateTime<Utc>,
    /// Meta's time (the webhook entry's `time`) of the quality rating last applied: an
    /// older one, delivered again or late, is refused. (On items written before
    /// `throughput_meta_at`, the time of both.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality_meta_at: Option<i64>,
    /// Meta's time of the throughput last applied: each field keeps its own, so that an
    /// update of one never refuses or undoes an older-dated update of the other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throughput_meta_at: Option<i64>,
    /// Meta limited sending from this number (131048): nothing is sent from it until an
    /// admin resumes it (`numbers::resume`). The tenant's other numbers go on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<NumberHold>,
    /// When the number was last resumed (epoch milliseconds): Meta's word about a message
    /// sent before it does not hold the number again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_at_ms: Option<i64>,
}

/// Why, since when and by what a number is held (`PhoneNumberRecord::hold`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NumberHold {
    /// Meta's error code (131048).
    pub code: i64,
    /// Meta's error title (at most 300 characters; never message content). Scrubbed as
    /// it is decoded (`error_text::read_back_reason`): one kept before stop 60 holds Meta's
    /// words as they came.
    #[serde(deserialize_with = "crate::domain::error_text::deserialize_reason")]
    pub reason: String,
    pub since: DateTime<Utc>,
    /// The part of Kirim that saw it: `dispatcher` (Meta's answer to a send) or `webhook`
    /// (a `failed` status).
    pub by: String,
}

impl PhoneNumberRecord {
    /// The number a tenant was onboarded with (or made its default), as the tenant item
    /// knows it: no display number, quality unknown until Meta says.
    pub fn default_of(tenant: &crate::ports::Tenant) -> Self {
        PhoneNumberRecord {
            tenant_id: tenant.id.clone(),
            phone_number_id: tenant.phone_number_id.clone(),
            waba_id: tenant.waba_id.clone(),
            display_phone_number: None,
            quality: TemplateQuality::Unknown,
            throughput_per_sec: None,
            added_at: tenant.created_at,
            quality_meta_at: None,
            throughput_meta_at: None,
            hold: None,
            resumed_at_ms: None,
        }
    }
}

fn unknown_quality() -> TemplateQuality {
    TemplateQuality::Unknown
}

/// A tenant's phone numbers. A number's route (`phone_number_id` → tenant, also what
/// Meta's webhooks are routed by) is claimed in the same atomic write that adds it, so a
/// number belongs to one tenant at most.
#[async_trait]
pub trait PhoneNumberStore: Send + Sync {
    /// Claims the number's route and stores the number, atomically. `Conflict` if any
    /// tenant (this one included) has the number already, `Conflict(`[`TENANT_CLOSED`]`)`
    /// if the tenant is closed (the check travels with the write); nothing is written then.
    ///
    /// [`TENANT_CLOSED`]: crate::ports::TENANT_CLOSED
    async fn add_phone_number(&self, number: &PhoneNumberRecord) -> Result<(), StoreError>;
    /// [`add_phone_number`](Self::add_phone_number) of a number whose route names `closed`,
    /// a closed tenant: the route is taken over in the same atomic write, only while it
    /// still names `closed` and `closed`'s item is `closed` (as
    /// [`TenantStore::onboard_over_closed`]). `Conflict` otherwise, and
    /// `Conflict(`[`TENANT_CLOSED`]`)` if the tenant it is added to is closed; nothing is
    /// written then. A tenant never takes a number over from itself (`Conflict`).
    ///
    /// [`TENANT_CLOSED`]: crate::ports::TENANT_CLOSED
    /// [`TenantStore::onboard_over_closed`]: crate::ports::TenantStore::onboard_over_closed
    async fn add_phone_number_over_closed(
        &self,
        number: &PhoneNumberRecord,
        closed: &TenantId,
    ) -> Result<(), StoreError>;
    /// Stores the number item of a number whose route the tenant already holds (the
    /// number it was onboarded with), only if it has none yet; `false` if it had one.
    /// `Conflict(`[`TENANT_CLOSED`]`)` if the tenant is closed (the check travels with the
    /// write).
    async fn put_phone_number_if_absent(
        &self,
        number: &PhoneNumberRecord,
    ) -> Result<bool, StoreError>;
    async fn get_phone_number(
        &self,
        tenant: &TenantId,
        phone_number_id: &str,
    ) -> Result<Option<PhoneNumberRecord>, StoreError>;
    /// Ordered by phone number id.
    async fn list_phone_numbers(
        &self,
        tenant: &TenantId,
    ) -> Result<Vec<PhoneNumberRecord>, StoreError>;
    /// Removes the number and its route, only if the number exists and is not the
    /// tenant's default (a condition on the tenant item, in the same atomic write).
    /// `Conflict` otherwise; nothing is removed then.
    async fn remove_phone_number(
        &self,
        tenant: &TenantId,
        phone_number_id: &str,
    ) -> Result<(), StoreError>;
    /// Makes the number the tenant's default (its `phone_number_id` and `waba_id`), only
    /// if the number item exists and the tenant is not closed. `Conflict` otherwise.
    async fn set_default_number(
        &self,
        tenant: &TenantId,
        number: &PhoneNumberRecord,
    ) -> Result<(), StoreError>;
    /// Records the number's display number (as Meta shows it), only if the number item
    /// exists and has none; `false` otherwise.
    async fn learn_display_number(
        &self,
        tenant: &TenantId,
        phone_number_id: &str,
        display: &str,
    ) -> Result<bool, StoreError>;
    /// Sets what a quality update of Meta's carries of the number, its quality and/or its
    /// throughput, each only if the number item exists and, given Meta's time of the change
    /// (`meta_time`), no later change of that field was applied (each field its own
    /// conditional write and its own time: webhooks arrive in any order, and again). A
    /// field not given is left as it is. The number after the last write that applied;
    /// `None` if none did.
    async fn set_number_quality(
        &self,
        tenant: &TenantId,
        phone_number_id: &str,
        quality: Option<TemplateQuality>,
        throughput_per_sec: Option<u32>,
        meta_time: Option<i64>,
    ) -> Result<Option<PhoneNumberRecord>, StoreError>;
    /// Holds the number, only if its item exists, it is not held already (the first hold
    /// is kept) and it was not resumed after `signal_at` (Meta's word about a message sent
    /// before an admin's resume does not undo it). `true` when this call held it.
    async fn hold_phone_number(
        &self,
        tenant: &TenantId,
        phone_number_id: &str,
        hold: &NumberHold,
        signal_at: DateTime<Utc>,
    ) -> Result<bool, StoreError>;
    /// Lifts the number's hold and records when (`resumed_at_ms`), only if it is held.
    /// The number after; `None` if it is not held (or not there).
    async fn resume_phone_number(
        &self,
        tenant: &TenantId,
        phone_number_id: &str,
        at: DateTime<Utc>,
    ) -> Result<Option<PhoneNumberRecord>, StoreError>;
}

/// One row of `GET /v1/usage`: a tenant's messages Meta priced one way on one UTC day.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UsageRow {
    pub date: NaiveDate,
    pub category: String,
    pub pricing_type: String,
    pub messages: i64,
    pub credits: i64,
}

/// How many items one usage row (tenant, day, category, type) is spread over (data model
/// A79). Every message's first priced status adds to its row in a transaction, and DynamoDB
/// cancels transactions that overlap on an item (`TransactionConflict`): one item commits
/// one at a time, ~40–60 a second, however many webhooks a busy tenant's campaign brings.
/// Spread over this many items by message, a row takes that many at once; a read sums them.
/// 16: in `scripts/model-usage-conflicts`, none of 200 priced statuses a second ran out of
/// the adapter's tries (8 parts: 0.8%; one item: 73%), 0.7% of 400 (DynamoDB's 1,000 write
/// units a second on the tenant's partition come next, at ~4 units a priced status).
pub const USAGE_SHARDS: u8 = 16;

/// The part of its usage row a message's pricing is added to: from its id (FNV-1a), so a
/// message always adds to the same one and messages spread evenly over all of them.
pub fn usage_shard(message: &MessageId) -> u8 {
    let hash = message
        .as_str()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
    // Lossless: the remainder is below `USAGE_SHARDS`.
    (hash % u64::from(USAGE_SHARDS)) as u8
}

/// Adds `row` into `rows`: one row per day, category and type (a row's parts summed). A
/// row's parts are read one after another (their keys share the row's prefix), so the last
/// row is looked at first.
pub fn add_usage_row(rows: &mut Vec<UsageRow>, row: UsageRow) {
    match rows.iter_mut().rev().find(|r| {
        r.date == row.date && r.category == row.category && r.pricing_type == row.pricing_type
    }) {
        Some(r) => {
            r.messages += row.messages;
            r.credits += row.credits;
        }
        None => rows.push(row),
    }
}

/// Meta's pricing of one message, as it is counted once.
#[derive(Clone, Debug, PartialEq)]
pub struct PricedMessage<'a> {
    pub tenant: &'a TenantId,
    pub message: &'a MessageId,
    pub pricing: &'a Pricing,
    /// The UTC day Meta first reported the pricing.
    pub day: NaiveDate,
    /// The credits Kirim debited for the message.
    pub credits: i64,
    /// The usage row's expiry (epoch seconds, the Billing class).
    pub expires_at: Option<i64>,
}

/// Per tenant, day, category and type: how many messages Meta priced so and the credits
/// debited for them (billing records).
#[async_trait]
pub trait UsageStore: Send + Sync {
    /// Records the pricing on the message and adds it to its day's usage row, in one
    /// atomic write conditioned on the message existing and having no pricing yet: a
    /// message is counted once however often Meta repeats its pricing. `false` when it
    /// was counted before (or there is no such message); nothing is written then.
    async fn record_pricing(&self, priced: &PricedMessage<'_>) -> Result<bool, StoreError>;
    /// [`record_pricing`](Self::record_pricing) folded into the status change that first
    /// carries the pricing: moves the message to `to` (only from one of `from` that
    /// `to.allowed_predecessors()` has: the caller's read of the message, so that what it
    /// builds from that read is what was moved; not expired, applying `change`), sets its pricing and
    /// adds it to its day's usage row, in ONE atomic write conditioned on the move being
    /// allowed AND the message having no pricing yet. `false`: nothing was written (the
    /// status did not allow the move, the message is priced already, or it is gone); the
    /// caller then moves it plainly or records the pricing alone, whichever still applies.
    async fn transition_priced(
        &self,
        priced: &PricedMessage<'_>,
        from: &[MessageStatus],
        to: MessageStatus,
        change: &StatusChange,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError>;
    /// The live rows of the days `from..=to`, by date, category and type.
    async fn usage(
        &self,
        tenant: &TenantId,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<UsageRow>, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_spread_over_every_part_of_a_usage_row_each_always_to_the_same() {
        let mut parts = [0_u32; USAGE_SHARDS as usize];
        for _ in 0..16_000 {
            let m = MessageId::from_trusted(ulid::Ulid::new().to_string());
            let shard = usage_shard(&m);
            assert_eq!(usage_shard(&m), shard);
            parts[usize::from(shard)] += 1;
        }
        // 1,000 expected in each; 800 is over six standard deviations below.
        assert!(parts.iter().all(|n| *n > 800), "{parts:?}");
    }

    #[test]
    fn a_rows_parts_are_summed_into_one_row_per_day_category_and_type() {
        let day = NaiveDate::from_ymd_opt(2026, 11, 30).unwrap();
        let row = |category: &str, messages: i64| UsageRow {
            date: day,
            category: category.into(),
            pricing_type: "regular".into(),
            messages,
            credits: 2 * messages,
        };
        let mut rows = Vec::new();
        for r in [row("utility", 2), row("marketing", 1), row("utility", 3)] {
            add_usage_row(&mut rows, r);
        }
        assert_eq!(rows, vec![row("utility", 5), row("marketing", 1)]);
    }
}
