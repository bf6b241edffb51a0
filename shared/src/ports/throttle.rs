//! Per-number throughput and the dispatcher's own message transitions.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{Tenant, Transition};
use crate::domain::{CarriedSlot, MessageError, MessageId, MessageRecord, MessageStatus, TenantId};
use crate::store_error::StoreError;

/// Meta's messaging throughput tiers, in messages per second per business phone number.
pub const THROUGHPUT_TIERS: [u32; 3] = [20, 80, 1000];

/// Microseconds between two slots at `per_sec` (rounded up: never faster than asked).
pub fn slot_interval_micros(per_sec: u32) -> i64 {
    let per_sec = i64::from(per_sec.max(1));
    (1_000_000 + per_sec - 1) / per_sec
}

pub fn micros_to_time(us: i64) -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp_micros(us).unwrap_or_else(Utc::now)
}

/// One send slot per business phone number and rate, shared by every dispatcher (on AWS:
/// one DynamoDB item per number). A GCRA ("virtual scheduling"): the item holds the
/// theoretical time of the next free slot, and each reservation moves it on by one
/// interval with a conditional write, so slots are evenly spaced, never bunched at the
/// start of a second the way a fixed window allows.
#[async_trait]
pub trait Throughput: Send + Sync {
    /// Reserves the next free send slot of `key` at `per_sec` (slots `1/per_sec` apart,
    /// none earlier than `now`) if it starts within `max_wait` of `now`, and answers its
    /// time; `None` when the next free slot is later. Concurrent callers never share a
    /// slot: in any window of `max_wait`, at most `max_wait × per_sec` + 1 are granted.
    async fn reserve_slot(
        &self,
        key: &str,
        per_sec: u32,
        now: DateTime<Utc>,
        max_wait: Duration,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.reserve_slots(key, per_sec, now, max_wait, 1).await
    }
    /// Reserves the next `count` free send slots of `key` at once (one write), if the last
    /// of them starts within `max_wait` of `now`, and answers the first one's time: the
    /// others follow it `1/per_sec` apart. `None` takes nothing (the run is granted whole
    /// or not at all). Slots reserved together count exactly as many reserved one by one.
    async fn reserve_slots(
        &self,
        key: &str,
        per_sec: u32,
        now: DateTime<Utc>,
        max_wait: Duration,
        count: u32,
    ) -> Result<Option<DateTime<Utc>>, StoreError>;
    /// Sets the tenant's throughput tier; answers the updated tenant. `NotFound` if none.
    async fn set_throughput(&self, tenant: &TenantId, per_sec: u32) -> Result<Tenant, StoreError>;
}

/// Transitions only the dispatcher makes, each a conditional write.
#[async_trait]
pub trait SendingControl: Send + Sync {
    /// `sending` → `accepted` for a claim that never reached Meta because the number's
    /// throughput was taken: the claim's attempt is given back (it was not an attempt).
    /// `slot`: a send slot reserved for the message ahead, kept on it for its next claim
    /// (`MessageRecord::carried_slot`); `None` leaves what it carries. Only under the claim
    /// made at `claimed_at` (its `updated_at`), as [`MessageStore::release_for_retry`].
    /// The `sending` event the claim appended goes too: `events` is how many the claimed
    /// message has (the claim's last), and the release is refused unless it still has as
    /// many (a message turned away every minute for an hour kept 60 of them, each a
    /// larger item to write).
    ///
    /// [`MessageStore::release_for_retry`]: crate::ports::MessageStore::release_for_retry
    async fn release_unattempted(
        &self,
        tenant: &TenantId,
        id: &MessageId,
        claimed_at: DateTime<Utc>,
        events: usize,
        at: DateTime<Utc>,
        slot: Option<CarriedSlot>,
    ) -> Result<Transition, StoreError>;
    /// `sending` → `failed` with `error`, only if the message is still `sending` under
    /// the claim made at `claimed_at` (its `updated_at`): a settling webhook or a newer
    /// claim always wins. The same move again (this `at`, this `error`: a write whose answer
    /// was lost, retried) answers `Applied` with the message as it left it
    /// ([`expired_by`]), so the callback it owes is still queued.
    async fn expire_sending(
        &self,
        tenant: &TenantId,
        id: &MessageId,
        claimed_at: DateTime<Utc>,
        error: &MessageError,
        at: DateTime<Utc>,
    ) -> Result<Transition, StoreError>;
}

/// Whether `m` is as [`SendingControl::expire_sending`] with `error` at `at` left it: its
/// `at` (to the nanosecond) is the move's own token. The error is compared as a record
/// read back holds it, scrubbed (`MessageRecord::scrub_error`): a title with a long number
/// would otherwise never match its own write.
pub fn expired_by(m: &MessageRecord, error: &MessageError, at: DateTime<Utc>) -> bool {
    let mut written = error.clone();
    written.scrub_for(&m.to);
    m.status == MessageStatus::Failed
        && m.updated_at == at
        && m.error
            .as_ref()
            .is_some_and(|e| *e == written || e == error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_expiry_whose_title_holds_a_long_number_is_still_known_as_its_own() {
        let at = chrono::Utc::now();
        let error = MessageError {
            code: crate::domain::ErrorCode::from("outcome_unknown"),
            title: "lost at order 123456789".into(),
        };
        // As the store holds it after the move, read back (scrubbed).
        let m: MessageRecord = serde_json::from_value(serde_json::json!({
            "id": "01J0000000000000000000000A", "tenant_id": "01J0000000000000000000000B",
            "to": "+60123450303", "template": null, "status": "failed",
            "error": {"code": "outcome_unknown", "title": error.title},
            "events": [], "wamid": null, "attempts": 1, "price": 1,
            "client_reference": null, "created_at": at, "updated_at": at, "expires_at": null,
        }))
        .unwrap();
        assert_ne!(m.error.as_ref(), Some(&error), "read back scrubbed");
        assert!(expired_by(&m, &error, at));
        assert!(!expired_by(
            &m,
            &error,
            at + chrono::Duration::nanoseconds(1)
        ));
    }
}
