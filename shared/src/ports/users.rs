//! Console users and their sessions (API.md "Users and console sessions").

use std::fmt;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::domain::{Role, TenantId};
use crate::store_error::StoreError;

/// What is stored of a console user. The password is an argon2id PHC string; the TOTP
/// secret is sealed (`service::seed_cipher`: `v2:<wrapped data key>:<nonce>:<ciphertext>`
/// under a KMS data key; `v1:<nonce>:<ciphertext>` or plain base32 if stored before
/// that, until its next use). `Debug` redacts both.
#[derive(Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct UserRecord {
    pub id: String,
    pub tenant_id: TenantId,
    /// Lower-cased; unique across all tenants (login has no tenant context).
    pub email: String,
    pub role: Role,
    /// Empty (absent from the item) once its tenant was closed out: nothing signs in.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub password_hash: String,
    /// The sealed TOTP secret: pending until `totp_confirmed`.
    #[serde(default)]
    pub totp_secret: Option<String>,
    #[serde(default)]
    pub totp_confirmed: bool,
    /// The last accepted TOTP time step (0 = none): a step is never accepted twice.
    #[serde(default)]
    pub last_totp_step: i64,
    pub created_at: DateTime<Utc>,
    /// How many times the user changed their password, or an admin reset their 2FA
    /// ([`UserStore::reset_totp`]). A session carries the version its sign-in checked the
    /// password of; one of an older version no longer authenticates (a change ends every
    /// session, on every device, and a sign-in racing the change with the old password, or
    /// with a code of the reset enrolment, opens a session already ended). No clock is
    /// compared.
    #[serde(default)]
    pub password_version: u32,
}

impl fmt::Debug for UserRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserRecord")
            .field("id", &self.id)
            .field("tenant_id", &self.tenant_id)
            .field("role", &self.role)
            .field("totp_confirmed", &self.totp_confirmed)
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
    /// The user's `password_version` when the sign-in checked the password.
    #[serde(default)]
    pub password_version: u32,
    /// Whether this session proved a second factor: a code at its sign-in, or the 2FA
    /// confirmation made in it. A session opened with a password alone stays confined
    /// to enrolment (where the tenant requires 2FA) even after its user confirmed 2FA in
    /// another session. `None` on sessions stored before it was recorded: they go by
    /// the user's `totp_confirmed`, as then (at most 12 h after a deploy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub second_factor: Option<bool>,
}

/// A counter of failed logins (API.md "Limits on use"): one per (email, source address)
/// and one per source address, the same for emails no user has (no enumeration). The
/// email is only ever stored as its SHA-256; the address as `limits::login_source` counts
/// it (an IPv6 address by its /56).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum LoginCounter {
    EmailAtAddress {
        email_hash: String,
        addr: String,
    },
    Address(String),
    /// Wrong TOTP codes for one user (by the SHA-256 of its email), from any address:
    /// only a caller who gave the right password reaches the code, so one spread over many
    /// addresses still meets one counter (a code is one of a million, three accepted).
    Totp(String),
}

/// How far apart two writers' clocks (or one clock across a step back) may be for a
/// failed-login counter's `blocked_until` or window one wrote to still hold for the other.
/// Lambda's clocks are kept within milliseconds of each other, but a counter taken for
/// lapsed lets an attacker's guesses through as free ones again, so the margin is wide:
/// five minutes, against the hours of a clock stepped wrong that the bound is for (a
/// heavy lease, which only delays a tenant's own call, keeps 5 s:
/// `http::access::HEAVY_LEASE_CLOCK_SKEW`).
pub const LOGIN_CLOCK_SKEW_SECS: i64 = 300;

/// Growing delays: the first `free` failures cost nothing; failure `free + k` makes the
/// next attempt wait `base_delay_secs × 2^k`, at most `max_delay_secs`. Past the free
/// failures one attempt at a time is in flight (`hold_secs` while it is checked). A
/// counter ends `window_secs` after its last failure. A `blocked_until` later than
/// [`LoginPolicy::furthest_block`], or a window ending later than
/// [`LoginPolicy::furthest_window_end`], was written by a clock ahead (or before this one
/// stepped back): no writer in step puts it there, and the gate takes it as lapsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoginPolicy {
    pub free: i64,
    /// Whether an attempt within the free failures is counted as it begins (so that a
    /// burst of parallel attempts meets the count; a success gives it back). Every
    /// counter of Kirim's does: per address too, or a burst over many emails from one
    /// address would all be checked. A store keeps the other way (`LoginTicket::Free`)
    /// for a counter that only counts failures.
    pub count_at_gate: bool,
    pub base_delay_secs: i64,
    pub max_delay_secs: i64,
    pub hold_secs: i64,
    pub window_secs: i64,
}

impl LoginPolicy {
    /// Per (email, source address): five tries, then 1 s, 2 s, 4 s ... up to 15 minutes.
    pub const EMAIL_AT_ADDRESS: LoginPolicy = LoginPolicy {
        free: 5,
        count_at_gate: true,
        base_delay_secs: 1,
        max_delay_secs: 15 * 60,
        hold_secs: 10,
        window_secs: crate::domain::LOGIN_FAILURES_RETENTION.as_secs() as i64,
    };
    /// Per source address (every email tried from it): twenty, then the same growth.
    pub const ADDRESS: LoginPolicy = LoginPolicy {
        free: 20,
        count_at_gate: true,
        base_delay_secs: 1,
        max_delay_secs: 15 * 60,
        hold_secs: 10,
        window_secs: crate::domain::LOGIN_FAILURES_RETENTION.as_secs() as i64,
    };

    /// Per user, wrong TOTP codes from anywhere: five, then the same growth (about a
    /// hundred guesses a day at most, where the per-address counters allowed that per
    /// address).
    pub const TOTP: LoginPolicy = Self::EMAIL_AT_ADDRESS;

    pub fn of(counter: &LoginCounter) -> LoginPolicy {
        match counter {
            LoginCounter::EmailAtAddress { .. } => Self::EMAIL_AT_ADDRESS,
            LoginCounter::Address(_) => Self::ADDRESS,
            LoginCounter::Totp(_) => Self::TOTP,
        }
    }

    /// The latest `blocked_until` a writer whose clock is in step with `now` can have set:
    /// the longest delay this policy writes, a hold on top, and [`LOGIN_CLOCK_SKEW_SECS`].
    /// A counter blocked past it was written by a clock ahead of `now` (another instance's,
    /// or this one's before it stepped back): the gate takes it as lapsed, so an address or
    /// a user is never held for the length of a clock's step, and no `Retry-After` answered
    /// from a counter is longer than `furthest_block(now) - now`.
    pub fn furthest_block(&self, now: i64) -> i64 {
        now.saturating_add(self.max_delay_secs.max(0))
            .saturating_add(self.hold_secs.max(0))
            .saturating_add(LOGIN_CLOCK_SKEW_SECS)
    }

    /// The latest end of a counter's window (its `ttl`) a writer whose clock is in step with
    /// `now` can have set: [`Self::window_secs`] after a failure now, and
    /// [`LOGIN_CLOCK_SKEW_SECS`]. A window ending later was written by a clock ahead (or
    /// before this one stepped back): the counter has lapsed and the next attempt starts it
    /// again, as one past its window does. Kept, its failures would stay counted for the
    /// clock's step and a day, and each single later failure would lock again.
    pub fn furthest_window_end(&self, now: i64) -> i64 {
        now.saturating_add(self.window_secs.max(0))
            .saturating_add(LOGIN_CLOCK_SKEW_SECS)
    }

    /// Whether a counter whose window ends at `ends` still counts at `now`: not past its
    /// window, and not one a clock ahead wrote ([`Self::furthest_window_end`]).
    pub fn window_live(&self, ends: i64, now: i64) -> bool {
        ends > now && ends <= self.furthest_window_end(now)
    }

    /// The `Retry-After` (seconds, at least 1) of a counter locked until `until` at `now`:
    /// never longer than the policy's bound ([`Self::furthest_block`]).
    pub fn retry_after(&self, until: i64, now: i64) -> i64 {
        until
            .min(self.furthest_block(now))
            .saturating_sub(now)
            .max(1)
    }

    /// How long the next attempt waits after `failures` failures.
    pub fn delay_after(&self, failures: i64) -> i64 {
        if failures < self.free {
            return 0;
        }
        let doublings = u32::try_from(failures - self.free)
            .unwrap_or(u32::MAX)
            .min(30);
        self.base_delay_secs
            .saturating_mul(1i64 << doublings)
            .min(self.max_delay_secs)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoginGate {
    /// The attempt may go on: check the credentials now, then end the attempt with
    /// `login_failed` or `login_released`, handing back the ticket.
    Allowed(LoginTicket),
    /// No attempt until this time (epoch seconds).
    Locked { until: i64 },
}

/// How an attempt was let through a counter, and so how it ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoginTicket {
    /// Within the free failures: the attempt was counted as a failure as it began, so
    /// that parallel attempts meet the count at once (no more than `free` of them, then
    /// one held one, get through). A failure keeps the count; any other end gives it
    /// back. An attempt that never ends (a crash) stays counted: it errs toward slowing.
    Counted,
    /// Past the free failures: the attempt holds the counter (`hold_secs`) so that no
    /// other goes through. A failure counts and sets the next delay; any other end gives
    /// the hold back.
    Holding,
    /// Within the free failures of a counter that does not count at the gate
    /// (`LoginPolicy::count_at_gate`): nothing taken. A failure counts; any other end
    /// has nothing to give back.
    Free,
}

/// A page of users (oldest first) and the cursor for the next one (`None`: the last).
#[derive(Clone, Debug, Default)]
pub struct UserPage {
    pub users: Vec<UserRecord>,
    pub next_cursor: Option<String>,
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
    /// One page of the tenant's users: at most `limit`, oldest first by id (ULIDs: the
    /// order they were created in), after `cursor` (a `next_cursor` this adapter handed out
    /// for the tenant); one read. `InvalidCursor` for a cursor that is none of this
    /// adapter's for the tenant's users (another tenant's never shows that tenant's users).
    async fn list_users_page(
        &self,
        tenant: &TenantId,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<UserPage, StoreError>;
    /// Deletes the user and its email claim; `false` if the tenant has no such user.
    async fn delete_user(&self, tenant: &TenantId, id: &str) -> Result<bool, StoreError>;
    /// Gives the user `role`, atomically, and answers the role it had; `None` if the tenant
    /// has no such user (nothing written). The role it had is the one this call replaced,
    /// also when the store's first try landed and its answer was lost (not the role the
    /// try set); a second call giving the same role answers that role.
    async fn set_user_role(
        &self,
        tenant: &TenantId,
        id: &str,
        role: Role,
    ) -> Result<Option<Role>, StoreError>;
    /// Replaces the user's password hash `old` with `new` and adds one to their
    /// `password_version` (ending every session of theirs), in one conditional write;
    /// `false` if the user is gone or their hash is no longer `old` (changed meanwhile):
    /// nothing written. A hash that is `new` already is this change made already (`new` is
    /// salted, unique to its request: the SDK's retry of a try whose answer was lost):
    /// `true`, `password_version` moved on once.
    async fn set_password(
        &self,
        tenant: &TenantId,
        id: &str,
        old: &str,
        new: &str,
    ) -> Result<bool, StoreError>;

    /// Lets a login attempt through `counter` if it allows one at `now`, atomically:
    /// while the failures counted (attempts in flight among them) are fewer than
    /// `policy.free`, counting this one (`LoginTicket::Counted`; with
    /// `policy.count_at_gate` off, taking nothing: `LoginTicket::Free`); past them only when the
    /// last delay has passed and no other attempt holds the counter (this one then holds
    /// it for `policy.hold_secs`, `LoginTicket::Holding`). Otherwise `Locked` with the
    /// time the next may come, never later than `policy.furthest_block(now)`. A delay or a
    /// hold that ends after `policy.furthest_block(now)` (written by a clock ahead, or
    /// before this one stepped back) has lapsed.
    async fn begin_login(
        &self,
        counter: &LoginCounter,
        now: i64,
        policy: &LoginPolicy,
    ) -> Result<LoginGate, StoreError>;
    /// The attempt failed: counted (an atomic increment unless the gate counted it
    /// already; a counter past its window, or cleared meanwhile, starts again at one),
    /// and the next attempt's time set (over one that has lapsed as `begin_login` says,
    /// too). Answers the failures counted.
    async fn login_failed(
        &self,
        counter: &LoginCounter,
        now: i64,
        policy: &LoginPolicy,
        ticket: LoginTicket,
    ) -> Result<i64, StoreError>;
    /// An attempt that was not a failure ends: the count or the hold it took is given
    /// back.
    async fn login_released(
        &self,
        counter: &LoginCounter,
        now: i64,
        policy: &LoginPolicy,
        ticket: LoginTicket,
    ) -> Result<(), StoreError>;
    /// Deletes the counter (a successful login from that address for that email).
    async fn clear_login_counter(&self, counter: &LoginCounter) -> Result<(), StoreError>;
    /// Deletes every (email, address) counter of the email (an admin's unlock); answers
    /// how many there were.
    async fn clear_login_counters_of_email(&self, email_hash: &str) -> Result<usize, StoreError>;

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
    /// `false` if those conditions fail (or the user is gone). `secret` already confirmed
    /// at `step` is this confirmation made already (the SDK's retry of a try whose answer
    /// was lost): `true`, nothing changed.
    async fn confirm_totp(
        &self,
        tenant: &TenantId,
        id: &str,
        secret: &str,
        step: i64,
    ) -> Result<bool, StoreError>;
    /// Replaces the stored TOTP secret `old` with `new` (the same seed, sealed again);
    /// `false` if `old` is no longer the stored one (someone else changed it first).
    async fn reseal_totp(
        &self,
        tenant: &TenantId,
        id: &str,
        old: &str,
        new: &str,
    ) -> Result<bool, StoreError>;
    /// Turns the user's 2FA off (an admin's reset for a user who lost their authenticator):
    /// the sealed secret and `totp_confirmed` cleared, pending or confirmed, and one added
    /// to `password_version` (every session of theirs ends, as at a password change), in
    /// one conditional write on the user, which must exist (one removed meanwhile is not
    /// written back). Answers the user as it then is; `None` if the tenant has no such
    /// user. A user with no enrolment is answered as it is, nothing written: so is the
    /// SDK's retry of a try that landed and whose answer was lost (`password_version` moved
    /// on once). `last_totp_step` is kept: no step is accepted twice, whatever is enrolled
    /// next.
    async fn reset_totp(
        &self,
        tenant: &TenantId,
        id: &str,
    ) -> Result<Option<UserRecord>, StoreError>;
    /// Records `step` as used if it is later than the last accepted step; `false` if not
    /// (a replayed or older code, or the user is gone).
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
    /// Records that the session proved a second factor (`second_factor`): the 2FA
    /// confirmation made in it. A missing session is not an error.
    async fn mark_second_factor(&self, token_hash: &str) -> Result<(), StoreError>;

    /// Whether the tenant requires every console user to use 2FA (default `false`).
    async fn two_factor_required(&self, tenant: &TenantId) -> Result<bool, StoreError>;
    async fn set_two_factor_required(
        &self,
        tenant: &TenantId,
        required: bool,
    ) -> Result<(), StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retry_after_is_never_longer_than_the_policys_bound() {
        let p = LoginPolicy::EMAIL_AT_ADDRESS;
        let now = 1_800_000_000;
        assert_eq!(
            p.furthest_block(now),
            now + 15 * 60 + 10 + LOGIN_CLOCK_SKEW_SECS
        );
        assert_eq!(
            p.retry_after(now + 900, now),
            900,
            "the longest delay in full"
        );
        assert_eq!(p.retry_after(now, now), 1, "at least a second");
        assert_eq!(
            p.retry_after(now + 6 * 3600, now),
            p.furthest_block(now) - now,
            "a time a clock ahead wrote: the bound, not six hours"
        );
    }
}
