//! The ledger's use cases: what a debit or a refund records, for a message or a whole
//! broadcast. The balance itself moves only inside the stores' atomic writes (a debit
//! travels with the message or broadcast it pays for; credits never go below zero).
//!
//! Depends on `errors` only.

use chrono::{DateTime, Utc};

use crate::domain::{new_id, MessageId, RetentionClass, TenantId};
use crate::ports::{LedgerEntry, LedgerKind};

use super::Deps;

/// What a ledger entry pays for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Charge {
    Message(MessageId),
    Broadcast(String),
    /// One recipient of a broadcast (its refund): the message, and the campaign whose one
    /// debit paid for it, so the 7-year ledger ties the refund to that debit after the
    /// message and the campaign (2 years) are gone.
    Recipient {
        message: MessageId,
        broadcast: String,
    },
}

impl Charge {
    /// A message's charge: its campaign's recipient when it has one.
    pub fn of_message(id: &MessageId, broadcast: Option<&str>) -> Charge {
        match broadcast {
            Some(b) => Charge::Recipient {
                message: id.clone(),
                broadcast: b.to_owned(),
            },
            None => Charge::Message(id.clone()),
        }
    }

    fn message_id(&self) -> Option<MessageId> {
        match self {
            Charge::Message(id) | Charge::Recipient { message: id, .. } => Some(id.clone()),
            Charge::Broadcast(_) => None,
        }
    }

    fn reference(&self, reason: Option<&str>) -> Option<String> {
        match (self, reason) {
            (Charge::Message(_), r) => r.map(str::to_owned),
            (Charge::Broadcast(id) | Charge::Recipient { broadcast: id, .. }, None) => {
                Some(format!("broadcast {id}"))
            }
            (Charge::Broadcast(id) | Charge::Recipient { broadcast: id, .. }, Some(r)) => {
                Some(format!("broadcast {id}: {r}"))
            }
        }
    }
}

fn entry(
    deps: &Deps,
    tenant: &TenantId,
    charge: &Charge,
    kind: LedgerKind,
    amount: i64,
    reason: Option<&str>,
    at: DateTime<Utc>,
) -> LedgerEntry {
    LedgerEntry {
        id: new_id(),
        tenant_id: tenant.clone(),
        amount,
        kind,
        reference: charge.reference(reason),
        message_id: charge.message_id(),
        at,
        expires_at: deps.settings.retention.expiry(RetentionClass::Billing, at),
    }
}

/// `InsufficientCredits` when a fresh read of the tenant's balance cannot pay `price`, read
/// only when `tenant` (as the access check read it, possibly a few seconds old) says it
/// cannot: a request its debit would refuse is refused before its queue job is sent. The
/// balance never decides a debit here: the debit's own condition does (credits ≥ 0).
pub async fn refuse_unpayable(
    deps: &Deps,
    tenant: &crate::ports::Tenant,
    price: i64,
) -> Result<(), super::errors::ServiceError> {
    if tenant.credits >= price {
        return Ok(());
    }
    match deps.tenants.get_tenant(&tenant.id).await? {
        // Closed since the access check's copy: as the debit would answer
        // (`errors::debit_refusal`), and the closed account's keys from then on.
        Some(fresh) if fresh.status == crate::ports::TenantStatus::Closed => {
            Err(super::errors::ServiceError::Unauthenticated)
        }
        Some(fresh) if fresh.credits < price => {
            Err(super::errors::ServiceError::InsufficientCredits)
        }
        _ => Ok(()),
    }
}

/// The debit entry of `price` credits for `charge`, to be written atomically with what
/// it pays for.
pub fn debit(
    deps: &Deps,
    tenant: &TenantId,
    charge: &Charge,
    price: i64,
    at: DateTime<Utc>,
) -> LedgerEntry {
    entry(deps, tenant, charge, LedgerKind::Debit, -price, None, at)
}

/// The refund entry of `amount` credits (even none) for `charge`, to be written
/// atomically with the cancel that earns it (`MessageStore::cancel_with_refund`,
/// `BroadcastStore::cancel_scheduled_broadcast`).
pub fn cancel_refund_entry(
    deps: &Deps,
    tenant: &TenantId,
    charge: &Charge,
    amount: i64,
    reason: &str,
    at: DateTime<Utc>,
) -> LedgerEntry {
    entry(
        deps,
        tenant,
        charge,
        LedgerKind::Refund,
        amount,
        Some(reason),
        at,
    )
}

/// The refund entry of `amount` credits for `charge`, to be written atomically with the
/// failure it pays back (`MessageStore::fail_and_refund`); `None` for nothing to give.
pub fn refund_entry(
    deps: &Deps,
    tenant: &TenantId,
    charge: &Charge,
    amount: i64,
    reason: &str,
    at: DateTime<Utc>,
) -> Option<LedgerEntry> {
    (amount > 0).then(|| {
        entry(
            deps,
            tenant,
            charge,
            LedgerKind::Refund,
            amount,
            Some(reason),
            at,
        )
    })
}

/// A move with its refund that answered an error may be written all the same: on
/// DynamoDB the transaction commits, then the read of what it wrote fails. Read back once
/// more, a message at `to` since exactly `at` is that move's (its refund made with it,
/// once), and what follows it (its status callback) is owed; a redelivery would find it
/// settled and drop itself, and the callback would be lost. Otherwise (not written, or
/// the read fails too) the error stands.
pub(super) async fn written_after_all(
    deps: &Deps,
    tenant: &crate::domain::TenantId,
    id: &crate::domain::MessageId,
    to: crate::domain::MessageStatus,
    at: DateTime<Utc>,
    e: crate::store_error::StoreError,
) -> Result<crate::ports::Transition, crate::store_error::StoreError> {
    match deps.messages.get_message(tenant, id).await {
        Ok(Some(m)) if m.status == to && m.updated_at == at => {
            tracing::warn!(error = %e, "a move answered an error but was written; carried on");
            Ok(crate::ports::Transition::Applied(Box::new(m)))
        }
        _ => Err(e),
    }
}
