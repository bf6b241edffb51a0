//! Idempotency keys on `POST /v1/messages`, with Stripe's semantics: the same key and
//! the same body answer the first response again (no second message, no second debit);
//! the same key with another body is `409 idempotency_key_reused`. The key's record is
//! written in the same atomic write as the debit and the message (see
//! `IdempotencyStore`); requests that fail store nothing, so a retry after the cause is
//! fixed (a top-up, say) goes through.

use chrono::{DateTime, Utc};

use crate::domain::{IdempotencyKey, MessageId, RetentionClass, TenantId};
use crate::ports::IdempotencyRecord;

use super::errors::ServiceError;
use super::Deps;

/// A request's key and the fingerprint of its body.
#[derive(Clone, Debug)]
pub struct Idempotent {
    pub key: IdempotencyKey,
    /// HMAC-SHA256 of the canonical request JSON, keyed by the key (`IdempotencyKey::fingerprint`).
    pub fingerprint: String,
}

/// The record this request would leave, for the message `id` accepted at `now`.
pub fn record(
    deps: &Deps,
    tenant: &TenantId,
    idem: &Idempotent,
    id: &MessageId,
    now: DateTime<Utc>,
) -> IdempotencyRecord {
    IdempotencyRecord {
        tenant_id: tenant.clone(),
        key_hash: idem.key.hash(),
        fingerprint: idem.fingerprint.clone(),
        message_id: id.clone(),
        created_at: now,
        expires_at: deps
            .settings
            .retention
            .expiry(RetentionClass::Idempotency, now),
    }
}

/// The first response's message id if the key's record matches this request; 409 if
/// the key was used with another body.
pub fn answer(existing: &IdempotencyRecord, idem: &Idempotent) -> Result<MessageId, ServiceError> {
    if existing.fingerprint == idem.fingerprint {
        Ok(existing.message_id.clone())
    } else {
        Err(ServiceError::IdempotencyKeyReused)
    }
}

/// An earlier request with this key, answered before any other check (so a replay
/// answers the first response even if, say, the credits ran out since).
pub async fn earlier(
    deps: &Deps,
    tenant: &TenantId,
    idem: &Idempotent,
) -> Result<Option<MessageId>, ServiceError> {
    match deps
        .idempotency
        .get_idempotency(tenant, &idem.key.hash())
        .await?
    {
        Some(existing) => answer(&existing, idem).map(Some),
        None => Ok(None),
    }
}
