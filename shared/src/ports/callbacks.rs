//! Statuses that arrive before their message's wamid is known (kept, then applied), and
//! tenants' status-callback settings (API.md "Settings → status-callback").

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::domain::{MessageId, TenantId};
use crate::store_error::StoreError;

/// A status Meta reported for a wamid no message is known by yet. Only what applying it
/// needs: no content, no recipient number.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PendingStatus {
    pub wamid: String,
    /// Meta's status (stored as its word: `sent`, `delivered`, `read` or `failed`).
    pub status: crate::domain::meta::MetaStatus,
    /// Meta's timestamp (epoch seconds), as reported.
    pub timestamp: i64,
    #[serde(default)]
    pub biz_opaque_callback_data: Option<String>,
    /// Meta's error codes and titles (a `failed` status).
    #[serde(default)]
    pub errors: Vec<PendingError>,
    /// Meta's pricing on the status, if any (applied with it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pricing: Option<crate::domain::Pricing>,
    pub received_at: DateTime<Utc>,
    /// Epoch seconds (the `PendingStatus` retention class).
    pub expires_at: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PendingError {
    pub code: i64,
    /// Scrubbed as it is read back (`error_text::read_back`): one kept before stop 60 holds
    /// Meta's words as they came.
    #[serde(deserialize_with = "crate::domain::error_text::deserialize_title")]
    pub title: String,
}

#[async_trait]
pub trait PendingStatusStore: Send + Sync {
    /// Keeps the status unless the same one (wamid, status, timestamp) is already kept:
    /// a conditional write. `true` if it was new. Either way, once it answers `Ok`, a
    /// later [`MessageStore::index_wamid`] of the wamid answers `true`.
    ///
    /// [`MessageStore::index_wamid`]: crate::ports::MessageStore::index_wamid
    async fn put_pending_status(&self, status: &PendingStatus) -> Result<bool, StoreError>;
    /// The live statuses kept for `wamid`, oldest first.
    async fn pending_statuses(&self, wamid: &str) -> Result<Vec<PendingStatus>, StoreError>;
    /// Forgets one (after it was applied); nothing if it is gone already.
    async fn delete_pending_status(&self, status: &PendingStatus) -> Result<(), StoreError>;
}

/// Where a tenant's status changes are POSTed. The signing secret lives in the secret
/// store under `secret_name`, never here.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StatusCallback {
    pub tenant_id: TenantId,
    pub url: String,
    pub secret_name: String,
    /// The version of that secret which signs (its id in the secret store), read by its
    /// id: a secret stored for a change whose setting was never written signs nothing.
    /// `None` on a setting written before versions were kept: the current version signs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_version: Option<String>,
    pub updated_at: DateTime<Utc>,
}

/// A status callback the queue refused (an SQS outage, throttling past the SDK's retries):
/// kept in the table until the owed-callback drain queues it again (README "Status
/// callbacks"). `body` is the queue message as it would have been sent: the tenant, the
/// message id, the status, its time, Meta's error and the client's reference; no content,
/// no recipient number. One per message and `sequence`: owing the same one twice keeps one.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OwedCallback {
    pub tenant_id: TenantId,
    pub message_id: MessageId,
    pub sequence: u32,
    pub body: String,
    pub owed_at: DateTime<Utc>,
    /// Epoch seconds (the `PendingStatus` retention class: as long as the queue would
    /// have kept it).
    pub expires_at: Option<i64>,
    /// Until when (epoch seconds) a drain holds it (between its lease and its queueing):
    /// another drain running meanwhile passes it by instead of queueing it twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leased_until: Option<i64>,
}

/// A tenant's record of one status callback given up: every attempt failed
/// (`KIRIM_CALLBACK_MAX_ATTEMPTS`), or it was parked untried by the receiver's breaker at its
/// last attempt. Written once per given-up callback, where `CallbacksGivenUp` is counted
/// (README "Status callbacks"); listed newest first by `GET
/// /v1/settings/status-callback/failures`. What the callback body already holds, less:
/// no content, no recipient number, no client reference, no error of Meta's; no secret, no
/// receiver body, and of the URL only its host (a path or query may carry a token).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CallbackFailure {
    pub tenant_id: TenantId,
    /// A ULID of when it was given up: its place in the tenant's list (key order is time
    /// order) and what a cursor names.
    pub id: String,
    pub message_id: MessageId,
    pub status: crate::domain::MessageStatus,
    pub sequence: u32,
    pub given_up_at: DateTime<Utc>,
    /// Attempts made, the last included (a try the breaker skipped counts as one).
    pub attempts: u32,
    /// The last failure as a short class: `http_{status}`, `timeout`, `connect`,
    /// `unresolvable`, `private_address`, `breaker_open`, `client`, `setting_unreadable`,
    /// `secret_unreadable`.
    pub last_error: String,
    /// The callback URL's host, when the setting was read.
    pub host: Option<String>,
    /// Epoch seconds (the `CallbackFailures` retention class: 14 days, the dead-letter
    /// queue's retention).
    pub expires_at: Option<i64>,
}

/// A page of a tenant's given-up callbacks, newest first.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CallbackFailurePage {
    pub failures: Vec<CallbackFailure>,
    /// `None` on the last page.
    pub next_cursor: Option<String>,
}

/// Tenants' status-callback settings: active configuration, kept while the tenant exists.
/// And the callbacks owed to them: kept a week at most. And their records of callbacks
/// given up: kept 14 days.
#[async_trait]
pub trait StatusCallbackStore: Send + Sync {
    async fn put_status_callback(&self, setting: &StatusCallback) -> Result<(), StoreError>;
    async fn get_status_callback(
        &self,
        tenant: &TenantId,
    ) -> Result<Option<StatusCallback>, StoreError>;
    /// The setting as last written (a consistent read, past any cache): what a callback
    /// job, queued because another process found the setting, confirms an absence with.
    async fn get_status_callback_fresh(
        &self,
        tenant: &TenantId,
    ) -> Result<Option<StatusCallback>, StoreError> {
        self.get_status_callback(tenant).await
    }
    /// Changes a setting's URL (and `updated_at`) only, keeping its secret: a conditional
    /// write, `false` if there is no setting (turned off meanwhile). Never for a closed
    /// tenant: `Conflict(`[`TENANT_CLOSED`]`)`, nothing written (as
    /// [`Self::put_status_callback`]).
    ///
    /// [`TENANT_CLOSED`]: crate::ports::TENANT_CLOSED
    async fn set_status_callback_url(
        &self,
        tenant: &TenantId,
        url: &str,
        updated_at: DateTime<Utc>,
    ) -> Result<bool, StoreError>;
    /// `false` if there was none.
    async fn delete_status_callback(&self, tenant: &TenantId) -> Result<bool, StoreError>;
    /// Keeps a callback the queue refused (an unconditional, idempotent write).
    async fn owe_callback(&self, owed: &OwedCallback) -> Result<(), StoreError>;
    /// Live owed callbacks no drain holds (unleased, or their lease passed), at most
    /// `limit`, in key order, read consistently (all tenants: what the owed-callback drain
    /// queues again).
    async fn owed_callbacks(&self, limit: usize) -> Result<Vec<OwedCallback>, StoreError>;
    /// Holds one for a drain until `until` (epoch seconds), only if it is still owed and
    /// no other drain holds it (a conditional write): `false` otherwise.
    async fn lease_owed_callback(
        &self,
        owed: &OwedCallback,
        until: i64,
    ) -> Result<bool, StoreError>;
    /// Forgets one (after it was queued); nothing if it is gone already.
    async fn forget_owed_callback(&self, owed: &OwedCallback) -> Result<(), StoreError>;
    /// Keeps a tenant's record of a callback given up (an unconditional write: one per
    /// given-up callback, under its own id).
    async fn put_callback_failure(&self, failure: &CallbackFailure) -> Result<(), StoreError>;
    /// A page of `tenant`'s live records, newest first: at most `limit` (1 to
    /// [`MAX_PAGE`](crate::ports::MAX_PAGE)), after the one `cursor` names (a cursor of
    /// another tenant's, another list's or a made-up one: `InvalidCursor`).
    async fn callback_failures_page(
        &self,
        tenant: &TenantId,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<CallbackFailurePage, StoreError>;
}
