//! Meta's pricing as Meta reports it (API.md "Pricing as Meta reports it"): the `pricing`
//! of a status webhook is kept on its message and counted once in the tenant's usage of
//! that UTC day, category and type, with the credits Kirim debited for the message
//! (billing records, the Billing retention class).

use chrono::{DateTime, NaiveDate, Utc};

use crate::domain::{MessageId, MessageRecord, Pricing, RetentionClass, TenantId};
use crate::ports::{usage_shard, PricedMessage, UsageRow};

use super::errors::ServiceError;
use super::Deps;

/// The longest range `GET /v1/usage` answers, in days (both ends included).
pub const MAX_DAYS: i64 = 366;

/// Records Meta's pricing of a message (once: a repeat on a later status changes
/// nothing). `at` is Meta's time of the status: its UTC day is the usage row's.
pub async fn record(
    deps: &Deps,
    tenant: &TenantId,
    message: &MessageId,
    pricing: &Pricing,
    at: DateTime<Utc>,
) -> Result<bool, ServiceError> {
    match deps.messages.get_message(tenant, message).await? {
        Some(m) => record_on(deps, &m, pricing, at).await,
        None => Ok(false),
    }
}

/// [`record`] for a message as just read or moved: nothing is written when it has its
/// pricing already (the store's condition decides in any case).
pub async fn record_on(
    deps: &Deps,
    m: &MessageRecord,
    pricing: &Pricing,
    at: DateTime<Utc>,
) -> Result<bool, ServiceError> {
    if m.pricing.is_some() {
        return Ok(false);
    }
    let counted = deps
        .usage
        .record_pricing(&priced(deps, m, pricing, at))
        .await?;
    if counted {
        tracing::debug!(
            category = %pricing.category,
            pricing_type = %pricing.pricing_type,
            "meta's pricing recorded"
        );
    }
    Ok(counted)
}

/// Meta's `pricing` of message `m` reported at `at` (Meta's time of the status: its UTC
/// day is the usage row's), with the credits Kirim debited for it: 0 for a message whose
/// price was given back (failed and refunded by the dispatcher, then delivered after
/// all), as the ledger has it.
pub fn priced<'a>(
    deps: &Deps,
    m: &'a MessageRecord,
    pricing: &'a Pricing,
    at: DateTime<Utc>,
) -> PricedMessage<'a> {
    let day = at.date_naive();
    PricedMessage {
        tenant: &m.tenant_id,
        message: &m.id,
        pricing,
        day,
        credits: if m.refunded { 0 } else { m.price },
        expires_at: expiry(deps, day),
    }
}

/// Turns on the usage rows' parts a body's statuses price: one pricing write of a part at
/// a time (`webhook::STATUSES_IN_FLIGHT` statuses of a body are applied at once). Every
/// message's first priced status of a day and category adds to its part of one usage row
/// ([`usage_shard`]) in its transaction, and DynamoDB cancels transactions that overlap on
/// an item (`TransactionConflict`, retried by the adapter 7 times in ~0.2–0.3 s); an item
/// takes one transaction at a time however many are sent, so the body's own writes of a
/// part wait their turn here instead of cancelling each other, and writes of the row's
/// other parts go at once. A part's writes from other requests can still conflict with
/// them (retried as before). A body prices a few rows: a list.
#[derive(Default)]
pub(crate) struct UsageTurns(
    std::sync::Mutex<Vec<(UsageRowKey, std::sync::Arc<tokio::sync::Mutex<()>>)>>,
);

/// A usage row's part: tenant, UTC day, category, type and shard.
type UsageRowKey = (TenantId, NaiveDate, String, String, u8);

impl UsageTurns {
    /// `write`, a pricing write of `message`'s `pricing` on its part of `tenant`'s row of
    /// `at`'s day, once no other of this body's writes of that part is in flight. The
    /// list's lock is held only to find the part's turn, never across a write.
    pub(crate) async fn in_turn<T>(
        &self,
        tenant: &TenantId,
        message: &MessageId,
        pricing: &Pricing,
        at: DateTime<Utc>,
        write: impl std::future::Future<Output = T>,
    ) -> T {
        let day = at.date_naive();
        let shard = usage_shard(message);
        let turn = {
            let mut rows = self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let found = rows.iter().find(|((t, d, c, ty, sh), _)| {
                t == tenant
                    && *d == day
                    && *c == pricing.category
                    && *ty == pricing.pricing_type
                    && *sh == shard
            });
            match found {
                Some((_, turn)) => turn.clone(),
                None => {
                    let turn = std::sync::Arc::new(tokio::sync::Mutex::new(()));
                    let key = (
                        tenant.clone(),
                        day,
                        pricing.category.clone(),
                        pricing.pricing_type.clone(),
                        shard,
                    );
                    rows.push((key, turn.clone()));
                    turn
                }
            }
        };
        let _turn = turn.lock().await;
        write.await
    }
}

/// A usage row is kept for the Billing period after its day ends (every message added to
/// it writes the same expiry).
pub fn expiry(deps: &Deps, day: NaiveDate) -> Option<i64> {
    let end = day
        .succ_opt()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())?;
    deps.settings.retention.expiry(RetentionClass::Billing, end)
}

fn day(name: &str, v: Option<&str>) -> Result<NaiveDate, ServiceError> {
    let v = v.ok_or_else(|| ServiceError::InvalidRequest(format!("{name} is required")))?;
    // Four digits of year, unsigned: chrono's `%Y` also reads a signed year (`-002-12-31`
    // is ten characters too), whose keys do not sort as its days do, and DynamoDB refused
    // the reversed range with a 500.
    NaiveDate::parse_from_str(v, "%Y-%m-%d")
        .ok()
        .filter(|_| v.len() == 10 && v.as_bytes()[..4].iter().all(u8::is_ascii_digit))
        .ok_or_else(|| ServiceError::InvalidRequest(format!("{name} must be a date YYYY-MM-DD")))
}

/// Parses `from` and `to` (`YYYY-MM-DD`, `from` ≤ `to`, at most [`MAX_DAYS`] days).
pub fn range(from: Option<&str>, to: Option<&str>) -> Result<(NaiveDate, NaiveDate), ServiceError> {
    let (from, to) = (day("from", from)?, day("to", to)?);
    if from > to {
        return Err(ServiceError::InvalidRequest(
            "from must not be after to".into(),
        ));
    }
    if (to - from).num_days() + 1 > MAX_DAYS {
        return Err(ServiceError::InvalidRequest(format!(
            "the range may cover at most {MAX_DAYS} days"
        )));
    }
    Ok((from, to))
}

/// `GET /v1/usage`: the tenant's rows of the days `from..=to`.
pub async fn usage(
    deps: &Deps,
    tenant: &TenantId,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<Vec<UsageRow>, ServiceError> {
    let mut rows = deps.usage.usage(tenant, from, to).await?;
    rows.sort_by(|a, b| {
        (a.date, &a.category, &a.pricing_type).cmp(&(b.date, &b.category, &b.pricing_type))
    });
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_ranges_are_dates_in_order_and_at_most_366_days() {
        assert!(range(Some("2026-01-01"), Some("2026-12-31")).is_ok());
        assert!(
            range(Some("2024-01-01"), Some("2024-12-31")).is_ok(),
            "a leap year"
        );
        assert!(range(Some("2026-01-01"), Some("2027-01-02")).is_err());
        assert!(range(Some("2026-02-01"), Some("2026-01-31")).is_err());
        for bad in [
            "2026-13-01",
            "2026-1-1",
            "yesterday",
            "2026-01-01T00:00:00Z",
            "",
            "-002-12-31",
            "+002-12-31",
        ] {
            assert!(range(Some(bad), Some("2026-12-31")).is_err(), "{bad}");
        }
        assert!(range(None, Some("2026-12-31")).is_err());
        assert!(
            range(Some("-002-12-31"), Some("-001-01-01")).is_err(),
            "a signed year, its two days in order"
        );
    }
}
