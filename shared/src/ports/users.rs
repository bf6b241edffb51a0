//! Console users and their sessions (API.md "Users and console sessions").

use std::fmt;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::domain::{Role, TenantId};
use crate::store_error::StoreError;

/// What is stored of a console user. The password is an argon2id PHC string; the TOTP
/// secret is base32. `Debug` redacts both.
#[derive(Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct UserRecord {
    pub id: String,
    pub tenant_id: TenantId,
    /// Lower-cased; unique across all tenants (login has no tenant context).
    pub email: String,
    pub role: Role,
    pub password_hash: String,
    /// Base32 TOTP secret: pending until `totp_confirmed`.
    #[serde(default)]
    pub totp_secret: Option<String>,
    #[serde(default)]
    pub totp_confirmed: bool,
    /// The last accepted TOTP time step (0 = none): a step is never accepted twice.
    #[serde(default)]
    pub last_totp_step: i64,
    /// Login attempts counted in the current window (epoch seconds; 0 = none).
    #[serde(default)]
    pub failed_attempts: i64,
    #[serde(default)]
    pub window_start: i64,
    /// Epoch seconds until which logins are refused (0 = not locked).
    #[serde(default)]
    pub locked_until: i64,
    pub created_at: DateTime<Utc>,
}

impl fmt::Debug for UserRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserRecord")
            .field("id", &self.id)
            .field("tenant_id", &self.tenant_id)
            .field("role", &self.role)
            .field("totp_confirmed", &self.totp_confirmed)
            .field("failed_attempts", &self.failed_attempts)
            .field("locked_until", &self.locked_until)
            .finish_non_exhaustive()
    }
}

/// A console session: only the token's SHA-256 is stored. The item's TTL is `expires_at`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SessionRecord {
    pub token_hash: String,
    pub tenant_id: TenantId,
    pub user_id: String,
    pub role: Role,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    #[serde(default)]
    pub revoked: bool,
    /// When the session was last used (recorded at most once a minute); `None` until its
    /// first use after login. Idle sessions end (`service::users::SESSION_IDLE`).
    #[serde(default)]
    pub last_seen_at: Option<DateTime<Utc>>,
}

/// The lock-out rule: at most `max_attempts` unsuccessful attempts in `window_secs`,
/// then no attempt at all for `lockout_secs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoginPolicy {
    pub max_attempts: i64,
    pub window_secs: i64,
    pub lockout_secs: i64,
}

impl Default for LoginPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            window_secs: 15 * 60,
            lockout_secs: 15 * 60,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoginGate {
    /// The attempt is counted; verify the credentials now.
    Allowed,
    /// No attempt until this time (epoch seconds).
    Locked { until: i64 },
}

#[async_trait]
pub trait UserStore: Send + Sync {
    /// Stores the user and its global email claim in one atomic write; `Conflict` if the
    /// email (in any tenant) or the id exists.
    async fn create_user(&self, user: &UserRecord) -> Result<(), StoreError>;
    async fn get_user(&self, tenant: &TenantId, id: &str)
        -> Result<Option<UserRecord>, StoreError>;
    /// `email` lower-cased.
    async fn user_by_email(&self, email: &str) -> Result<Option<UserRecord>, StoreError>;
    /// Oldest first.
    async fn list_users(&self, tenant: &TenantId) -> Result<Vec<UserRecord>, StoreError>;
    /// Deletes the user and its email claim; `false` if the tenant has no such user.
    async fn delete_user(&self, tenant: &TenantId, id: &str) -> Result<bool, StoreError>;

    /// Counts a login attempt before the credentials are checked, atomically: at most
    /// `policy.max_attempts` attempts pass in a window, however many run concurrently.
    /// `NotFound` if no such user.
    async fn begin_login_attempt(
        &self,
        tenant: &TenantId,
        id: &str,
        now: i64,
        policy: &LoginPolicy,
    ) -> Result<LoginGate, StoreError>;
    /// A failed attempt: when the window's attempts are used up, locks until
    /// `now + policy.lockout_secs` (and starts a fresh window after it).
    async fn login_failed(
        &self,
        tenant: &TenantId,
        id: &str,
        now: i64,
        policy: &LoginPolicy,
    ) -> Result<(), StoreError>;
    /// A successful login: the counter starts again.
    async fn login_succeeded(&self, tenant: &TenantId, id: &str) -> Result<(), StoreError>;

    /// Sets a new pending TOTP secret. `Conflict` if 2FA is already confirmed,
    /// `NotFound` if no such user.
    async fn set_pending_totp(
        &self,
        tenant: &TenantId,
        id: &str,
        secret: &str,
    ) -> Result<(), StoreError>;
    /// Confirms the pending secret `secret` with a code of time step `step`: only if that
    /// secret is still the pending one and `step` is later than the last accepted step.
    /// `false` if those conditions fail.
    async fn confirm_totp(
        &self,
        tenant: &TenantId,
        id: &str,
        secret: &str,
        step: i64,
    ) -> Result<bool, StoreError>;
    /// Records `step` as used if it is later than the last accepted step; `false` if not
    /// (a replayed or older code).
    async fn accept_totp_step(
        &self,
        tenant: &TenantId,
        id: &str,
        step: i64,
    ) -> Result<bool, StoreError>;

    /// `Conflict` if the hash exists.
    async fn put_session(&self, session: &SessionRecord) -> Result<(), StoreError>;
    /// The session with this token hash, `None` once expired (revoked ones are answered
    /// with `revoked` set).
    async fn session_by_hash(&self, token_hash: &str) -> Result<Option<SessionRecord>, StoreError>;
    async fn revoke_session(&self, token_hash: &str) -> Result<(), StoreError>;
    /// Records that the session was used at `at` (its idle clock restarts). A missing
    /// session is not an error.
    async fn touch_session(&self, token_hash: &str, at: DateTime<Utc>) -> Result<(), StoreError>;

    /// Whether the tenant requires every console user to use 2FA (default `false`).
    async fn two_factor_required(&self, tenant: &TenantId) -> Result<bool, StoreError>;
    async fn set_two_factor_required(
        &self,
        tenant: &TenantId,
        required: bool,
    ) -> Result<(), StoreError>;
}
