//! Console users: created by a tenant admin, logging in with email, password and (once
//! enrolled) a TOTP code; sessions are bearer tokens like API keys, stored as a hash.
//!
//! Failed logins slow further attempts per (email, source address) and per source
//! address, with growing delays (`ports::LoginPolicy`), the same for emails no user has:
//! an unknown email answers exactly like a wrong password, after the same work. Each
//! counter lets an attempt through by a conditional update *before* the password is
//! checked, counting it there (`LoginTicket`), so concurrent guesses cannot slip past a
//! delay or the free count. Nobody can lock a user out
//! from another address; an admin can clear a user's counters (`unlock`). A TOTP time
//! step is accepted at most once per user (a conditional write of the last step), and a
//! user's wrong codes are counted per user, from any address (`LoginCounter::Totp`): only
//! a caller who has the password reaches them, so that counter may slow the user.

use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, SaltString};
use argon2::{Argon2, PasswordVerifier};
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use totp_rs::{Algorithm, TOTP};

use crate::domain::{new_id, RetentionClass, Role, TenantId};
use crate::ports::{LoginCounter, LoginGate, LoginPolicy, LoginTicket, SessionRecord, UserRecord};
use crate::secret::{token_hash, Secret};

use super::caller::Caller;
use super::errors::ServiceError;
use super::seed_cipher;
use super::Deps;

/// Prefix of every console session token. API keys start with `kirim_`, which this
/// never does, so a token's kind is known without a lookup.
pub const SESSION_PREFIX: &str = "kirimsess_";
pub const MIN_PASSWORD: usize = 12;
pub const MAX_PASSWORD: usize = 128;
pub const TOTP_ISSUER: &str = "Kirim";
const TOTP_STEP: u64 = 30;
const TOTP_DIGITS: usize = 6;
/// Codes of the previous and next step are accepted too (clock drift).
const TOTP_SKEW: i64 = 1;
/// A session not used for this long ends (API.md "The console": 30 idle minutes). It
/// applies to every use of a session token, console page or API call alike.
pub const SESSION_IDLE: Duration = Duration::minutes(30);
/// A session's last use is written at most this often (not on every request).
const SESSION_TOUCH_EVERY: Duration = Duration::minutes(1);
/// A tenant's users at most.
pub const MAX_USERS: usize = 200;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    pub email: String,
    pub role: Role,
    pub password: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub email: String,
    pub password: String,
    #[serde(default, deserialize_with = "crate::domain::fields::non_null")]
    pub totp_code: Option<String>,
}

/// `POST /v1/auth/password`: the signed-in user's own password, changed.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PasswordChange {
    pub current_password: String,
    pub new_password: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfirmRequest {
    pub totp_code: String,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TwoFactorSetting {
    pub required: bool,
}

/// What is shown of a user: never the password hash or the TOTP secret.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct UserView {
    pub id: String,
    pub email: String,
    pub role: Role,
    pub totp_enabled: bool,
    /// `none`, `pending` (enrolled, not confirmed) or `enabled`.
    pub two_factor: &'static str,
    pub created_at: DateTime<Utc>,
}

impl UserView {
    pub fn of(u: &UserRecord) -> Self {
        let two_factor = match (u.totp_confirmed, u.totp_secret.is_some()) {
            (true, _) => "enabled",
            (false, true) => "pending",
            (false, false) => "none",
        };
        Self {
            id: u.id.clone(),
            email: u.email.clone(),
            role: u.role,
            totp_enabled: u.totp_confirmed,
            two_factor,
            created_at: u.created_at,
        }
    }
}

pub struct LoggedIn {
    pub token: Secret,
    pub expires_at: DateTime<Utc>,
    /// The tenant requires 2FA and this user has not confirmed it: the session may only
    /// enroll, confirm and log out.
    pub totp_enrollment_required: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("invalid credentials")]
    InvalidCredentials,
    /// A code was given for a user with 2FA, and it is wrong or used already: a failure.
    #[error("a valid TOTP code is required")]
    TotpRequired,
    /// A code was given for a user with 2FA, but the stored seed does not open (its data
    /// key refused by KMS: a key policy edit, a key deleted; or the seed tampered with): an
    /// operator's fault, not the caller's, whose code was never checked. Answered as
    /// [`LoginError::TotpRequired`] is (`401 totp_required`, the contract), nothing
    /// counted, and audited as the error it is (outcome `error`, result
    /// `totp_seed_unopened`), not as a wrong code (which would fire the code-guessing
    /// alert for every 2FA user at once).
    #[error("the stored TOTP seed does not open")]
    TotpUnavailable,
    /// The password was right for a user with 2FA and no code came with it: the usual
    /// first step of a 2FA sign-in. Answered as [`LoginError::TotpRequired`] is (`401
    /// totp_required`: the client cannot tell them apart), but no failure: nothing counted,
    /// and audited as a step that went right (outcome `success`, result `totp_challenge`),
    /// not as a denied login.
    #[error("a TOTP code is asked for")]
    TotpChallenge,
    #[error("too many failed attempts")]
    RateLimited {
        retry_after_secs: i64,
        /// The address's own counter is what is locked (every email from it), until this
        /// time (epoch seconds): `None` for an email's counter at the address.
        address_locked_until: Option<i64>,
    },
    /// The password was right, but the user's wrong codes locked the second factor for a
    /// while: audited (unlike an address locked out, which needs no credentials).
    #[error("too many wrong codes")]
    TotpLocked { retry_after_secs: i64 },
    #[error(transparent)]
    Service(#[from] ServiceError),
}

impl From<crate::store_error::StoreError> for LoginError {
    fn from(e: crate::store_error::StoreError) -> Self {
        LoginError::Service(e.into())
    }
}

pub struct Enrollment {
    pub secret: Secret,
    pub otpauth_uri: Secret,
}

fn invalid(msg: impl Into<String>) -> ServiceError {
    ServiceError::InvalidRequest(msg.into())
}

/// Lower-cased, trimmed; a plausible address (the console is not a mail validator).
pub fn normalise_email(email: &str) -> Option<String> {
    let e = email.trim().to_lowercase();
    let (local, domain) = e.split_once('@')?;
    let ok = (3..=254).contains(&e.len())
        && !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains('@')
        && !e
            .chars()
            .any(|c| c.is_whitespace() || crate::domain::text::hidden_in_email(c) || c == ':');
    ok.then_some(e)
}

fn check_password(p: &str) -> Result<(), ServiceError> {
    let len = p.chars().count();
    if (MIN_PASSWORD..=MAX_PASSWORD).contains(&len) {
        Ok(())
    } else {
        Err(invalid(format!(
            "password must be {MIN_PASSWORD} to {MAX_PASSWORD} characters"
        )))
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ServiceError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| ServiceError::Internal("password hashing task failed".into()))
}

/// argon2id (the crate's default parameters), as a PHC string.
pub async fn hash_password(password: Secret) -> Result<String, ServiceError> {
    blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.expose().as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|_| ServiceError::Internal("password hashing failed".into()))
    })
    .await?
}

/// A hash of a random password nobody knows (thrown away when it was made), with the
/// parameters `Argon2::default()` hashes passwords with: unknown emails are verified
/// against it, so the answer takes as long as for a known one. A constant, not made on
/// first use: that cost each cold instance's first unknown email a second argon2 run,
/// a timing difference a burst forcing scale-out could probe. (It is never accepted: an
/// unknown email fails whatever it verifies.)
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$B5XLvOY4aehT7eLZVcVXng$6EiW7s3j2XmWA+LKfWO6TfAmoLv65HG5aGBx3Vnn3R4";

async fn verify_password(password: Secret, hash: Option<String>) -> Result<bool, ServiceError> {
    blocking(move || {
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| DUMMY_HASH.to_owned());
        let ok = PasswordHash::new(&hash)
            .map(|h| {
                Argon2::default()
                    .verify_password(password.expose().as_bytes(), &h)
                    .is_ok()
            })
            .unwrap_or(false);
        known && ok
    })
    .await
}

fn totp_for(secret_b32: &str, email: &str) -> Result<TOTP, ServiceError> {
    let bytes = totp_rs::Secret::Encoded(secret_b32.to_owned())
        .to_bytes()
        .map_err(|_| ServiceError::Internal("stored TOTP secret".into()))?;
    TOTP::new(
        Algorithm::SHA1,
        TOTP_DIGITS,
        0,
        TOTP_STEP,
        bytes,
        Some(TOTP_ISSUER.into()),
        email.to_owned(),
    )
    .map_err(|_| ServiceError::Internal("TOTP parameters".into()))
}

/// The time step whose code `code` is (current step ± skew), if any.
fn matching_step(totp: &TOTP, code: &str, now: DateTime<Utc>) -> Option<i64> {
    if code.len() != TOTP_DIGITS || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let current = now.timestamp() / TOTP_STEP as i64;
    (current - TOTP_SKEW..=current + TOTP_SKEW).find(|step| {
        let at = u64::try_from(*step).unwrap_or(0) * TOTP_STEP;
        bool::from(totp.generate(at).as_bytes().ct_eq(code.as_bytes()))
    })
}

/// Whether `code` is a code of the base32 key `secret_b32` at `now`, as a confirmation
/// or a sign-in would take it (the same step, digits and skew): the console checks a
/// code the API refused against the key its page showed, to tell a typo from a set-up
/// that is no longer the pending one. Checks only: no step is spent, nothing counted.
pub fn code_of_key(secret_b32: &str, code: &str, now: DateTime<Utc>) -> bool {
    totp_for(secret_b32, "-")
        .ok()
        .and_then(|totp| matching_step(&totp, code.trim(), now))
        .is_some()
}

pub async fn create(
    deps: &Deps,
    tenant: &TenantId,
    req: NewUser,
) -> Result<UserView, ServiceError> {
    let email =
        normalise_email(&req.email).ok_or_else(|| invalid("email must be an email address"))?;
    check_password(&req.password)?;
    let now = deps.clock.now();
    if deps.users.list_users(tenant).await?.len() >= MAX_USERS {
        return Err(invalid(format!(
            "a tenant may have at most {MAX_USERS} users"
        )));
    }
    let password_hash = hash_password(Secret::new(req.password)).await?;
    let user = UserRecord {
        id: new_id(),
        tenant_id: tenant.clone(),
        email,
        role: req.role,
        password_hash,
        totp_secret: None,
        totp_confirmed: false,
        last_totp_step: 0,
        created_at: now,
        password_version: 0,
    };
    deps.users.create_user(&user).await.map_err(|e| match e {
        crate::store_error::StoreError::Conflict(m) if m == crate::ports::TENANT_CLOSED => {
            ServiceError::Conflict(m)
        }
        crate::store_error::StoreError::Conflict(_) => {
            ServiceError::Conflict("a user with this email exists".into())
        }
        other => other.into(),
    })?;
    tracing::info!(user_id = %user.id, role = user.role.as_str(), "user created");
    Ok(UserView::of(&user))
}

/// `GET /v1/users`: one page of the tenant's users, oldest first, and the cursor to go on
/// from (`None`: the last page). One read, however many users the tenant has.
pub async fn list(
    deps: &Deps,
    tenant: &TenantId,
    limit: usize,
    cursor: Option<&str>,
) -> Result<(Vec<UserView>, Option<String>), ServiceError> {
    let page = deps.users.list_users_page(tenant, limit, cursor).await?;
    let views = page.users.iter().map(UserView::of).collect();
    Ok((views, page.next_cursor))
}

/// One user of the tenant, as shown; another tenant's is `NotFound`.
pub async fn get(deps: &Deps, tenant: &TenantId, id: &str) -> Result<UserView, ServiceError> {
    deps.users
        .get_user(tenant, id)
        .await?
        .map(|u| UserView::of(&u))
        .ok_or(ServiceError::NotFound)
}

/// Clears the failed-login counters of the user's email, from every address, so the
/// user can log in again at once from an address not itself held back (an address's own
/// counter, past 20 failures of any emails, is kept: it may be a password sprayer's).
/// Another tenant's user is `NotFound`.
pub async fn unlock(deps: &Deps, tenant: &TenantId, id: &str) -> Result<UserView, ServiceError> {
    let user = deps
        .users
        .get_user(tenant, id)
        .await?
        .ok_or(ServiceError::NotFound)?;
    let cleared = deps
        .users
        .clear_login_counters_of_email(&token_hash(&user.email))
        .await?;
    tracing::info!(user_id = %id, cleared, "user's login counters cleared");
    Ok(UserView::of(&user))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleChange {
    pub role: Role,
}

/// `Conflict` if the caller is the console user `id` itself.
fn refuse_own(caller: &Caller, id: &str, why: &str) -> Result<(), ServiceError> {
    match caller {
        Caller::Session { user_id, .. } if user_id == id => {
            Err(ServiceError::Conflict(why.to_owned()))
        }
        _ => Ok(()),
    }
}

/// A user's new role, and the one it had.
pub struct RoleChanged {
    pub user: UserView,
    pub previous: Role,
}

/// Gives a user of the tenant another role (one conditional write). It bites on the
/// user's next request: a session's role is the user's, read on every request. A
/// console user cannot change their own role (another admin can), so that nobody locks
/// themselves out of the admin pages by a slip. Another tenant's user is `NotFound`.
pub async fn set_role(
    deps: &Deps,
    tenant: &TenantId,
    caller: &Caller,
    id: &str,
    req: RoleChange,
) -> Result<RoleChanged, ServiceError> {
    refuse_own(
        caller,
        id,
        "you cannot change your own role; another admin can",
    )?;
    let previous = deps
        .users
        .set_user_role(tenant, id, req.role)
        .await?
        .ok_or(ServiceError::NotFound)?;
    let user = deps
        .users
        .get_user(tenant, id)
        .await?
        .ok_or(ServiceError::NotFound)?;
    tracing::info!(
        user_id = %id,
        role = req.role.as_str(),
        previous = previous.as_str(),
        "user's role changed"
    );
    Ok(RoleChanged {
        user: UserView::of(&user),
        previous,
    })
}

/// Turns off the 2FA of a user of the tenant (pending or enabled: a user who lost their
/// authenticator signs in with their password again) and ends every session of theirs,
/// in one conditional write (`UserStore::reset_totp`); the password, role and id stay.
/// Where the tenant requires 2FA their next sign-in is confined to enrolling again. A
/// console user cannot reset their own (another admin can, and an admin API key can), so
/// that nobody strips their own second factor by a slip (not a boundary against a stolen
/// admin session, which can mint an admin key or add a user). A user with no 2FA is
/// answered as is, nothing changed. The wrong codes and failed sign-ins counted against
/// the user's email are cleared too, as `unlock` clears them: a user who lost their
/// authenticator has usually tried codes, and the new enrolment's confirmation would meet
/// them. Another tenant's user is `NotFound`. With the view, whether anything was reset
/// (for the audit trail: the enrolment there before and the sessions' version moved on).
pub async fn reset_two_factor(
    deps: &Deps,
    tenant: &TenantId,
    caller: &Caller,
    id: &str,
) -> Result<(UserView, bool), ServiceError> {
    refuse_own(
        caller,
        id,
        "you cannot reset your own two-factor authentication; another admin can",
    )?;
    // Read first for the audit's `changed` only; the reset itself is the conditional write.
    let before = deps
        .users
        .get_user(tenant, id)
        .await?
        .ok_or(ServiceError::NotFound)?;
    let user = deps
        .users
        .reset_totp(tenant, id)
        .await?
        .ok_or(ServiceError::NotFound)?;
    let changed = (before.totp_secret.is_some() || before.totp_confirmed)
        && user.password_version != before.password_version;
    // The reset stands whatever this does: a failure leaves the counters to their expiry
    // (or to the admin's unlock), said in the log.
    match deps
        .users
        .clear_login_counters_of_email(&token_hash(&user.email))
        .await
    {
        Ok(cleared) => {
            tracing::info!(user_id = %id, changed, cleared, "user's 2fa reset; their sessions ended")
        }
        Err(e) => {
            tracing::warn!(user_id = %id, changed, error = %e, "user's 2fa reset; their sessions ended; their failed sign-ins not cleared (unlock clears them)")
        }
    }
    Ok((UserView::of(&user), changed))
}

/// The counters a login from `addr` for `email` goes through (address first: it is the
/// wider one). `email` is whatever was typed, normalised when it can be.
fn counters(email: &str, addr: Option<std::net::IpAddr>) -> [LoginCounter; 2] {
    let addr = addr
        .map(|a| super::limits::login_source(a).to_string())
        .unwrap_or_else(|| "unknown".to_owned());
    let email = normalise_email(email).unwrap_or_else(|| {
        email
            .trim()
            .to_lowercase()
            .chars()
            .take(MAX_EMAIL_KEY)
            .collect()
    });
    [
        LoginCounter::Address(addr.clone()),
        LoginCounter::EmailAtAddress {
            email_hash: token_hash(&email),
            addr,
        },
    ]
}

/// How much of a typed email that is no address keys its counter.
const MAX_EMAIL_KEY: usize = 320;

/// Deletes the user; its sessions stop authenticating (they are checked against the
/// user on every request). Another tenant's user is `NotFound`. A console user cannot
/// remove themselves (another admin can): one click would end their own session and could
/// leave the tenant without a console admin.
pub async fn delete(
    deps: &Deps,
    tenant: &TenantId,
    caller: &Caller,
    id: &str,
) -> Result<(), ServiceError> {
    refuse_own(caller, id, "you cannot remove yourself; another admin can")?;
    if !deps.users.delete_user(tenant, id).await? {
        return Err(ServiceError::NotFound);
    }
    tracing::info!(user_id = %id, "user deleted");
    Ok(())
}

/// One login attempt from `addr` (the client address). Every refusal for bad
/// credentials answers the same `InvalidCredentials` whether the email exists or not;
/// a counter that is not yet ready answers `RateLimited`.
pub async fn login(
    deps: &Deps,
    req: LoginRequest,
    addr: Option<std::net::IpAddr>,
) -> Result<LoggedIn, LoginError> {
    login_as(deps, req, addr).await.0
}

/// [`login`], and whose login it was (the user's tenant and id, when the email is a
/// user's), for the audit trail: no second read of the user for it.
pub async fn login_as(
    deps: &Deps,
    req: LoginRequest,
    addr: Option<std::net::IpAddr>,
) -> (Result<LoggedIn, LoginError>, Option<(TenantId, String)>) {
    let mut who = None;
    let result = login_once(deps, req, addr, &mut who).await;
    (result, who)
}

async fn login_once(
    deps: &Deps,
    req: LoginRequest,
    addr: Option<std::net::IpAddr>,
    who: &mut Option<(TenantId, String)>,
) -> Result<LoggedIn, LoginError> {
    let now = deps.clock.now();
    let counters = counters(&req.email, addr);
    let taken = Taken::default();
    let result = attempt(deps, req, now, &counters, &taken, who).await;
    if let Err(LoginError::Service(e)) = &result {
        // A store, KMS or Secrets Manager failure part-way is not the caller's failure:
        // what the gates took and nothing settled yet is given back (best effort; a
        // count that cannot be given back stays, erring toward slowing).
        tracing::warn!(error = %e, "login stopped part-way; its counts given back");
        for (c, ticket) in taken.drain() {
            let policy = LoginPolicy::of(&c);
            if let Err(e) = deps
                .users
                .login_released(&c, now.timestamp(), &policy, ticket)
                .await
            {
                tracing::warn!(error = %e, "a login count could not be given back");
            }
        }
    }
    result
}

/// What the gates of one login attempt let it through with and nothing has settled yet
/// (a failure counted, a release, a clear).
#[derive(Default)]
struct Taken(std::sync::Mutex<Vec<(LoginCounter, LoginTicket)>>);

impl Taken {
    fn push(&self, counter: &LoginCounter, ticket: LoginTicket) {
        if let Ok(mut t) = self.0.lock() {
            t.push((counter.clone(), ticket));
        }
    }
    /// Takes one counter's ticket out: it is being settled.
    fn settle(&self, counter: &LoginCounter) {
        if let Ok(mut t) = self.0.lock() {
            t.retain(|(c, _)| c != counter);
        }
    }
    /// Takes every ticket out: they are being settled.
    fn drain(&self) -> Vec<(LoginCounter, LoginTicket)> {
        self.0
            .lock()
            .map(|mut t| std::mem::take(&mut *t))
            .unwrap_or_default()
    }
}

/// Counts the attempt's failure on every counter it still holds a ticket of.
async fn count_failure(
    deps: &Deps,
    taken: &Taken,
    now_secs: i64,
    reason: &'static str,
    err: LoginError,
) -> Result<LoggedIn, LoginError> {
    tracing::info!(outcome = "denied", reason, "login refused");
    for (c, ticket) in taken.drain() {
        deps.users
            .login_failed(&c, now_secs, &LoginPolicy::of(&c), ticket)
            .await?;
    }
    Err(err)
}

/// Gives back what the attempt still holds: it ended without failing.
async fn give_back(deps: &Deps, taken: &Taken, now_secs: i64) -> Result<(), LoginError> {
    for (c, ticket) in taken.drain() {
        deps.users
            .login_released(&c, now_secs, &LoginPolicy::of(&c), ticket)
            .await?;
    }
    Ok(())
}

/// [`login`] past its setup: every ticket a gate gives is kept in `taken` until settled.
async fn attempt(
    deps: &Deps,
    req: LoginRequest,
    now: DateTime<Utc>,
    counters: &[LoginCounter; 2],
    taken: &Taken,
    who: &mut Option<(TenantId, String)>,
) -> Result<LoggedIn, LoginError> {
    let password = Secret::new(req.password);
    let now_secs = now.timestamp();
    for c in counters {
        match deps
            .users
            .begin_login(c, now_secs, &LoginPolicy::of(c))
            .await?
        {
            LoginGate::Allowed(ticket) => taken.push(c, ticket),
            LoginGate::Locked { until } => {
                // Give back what the earlier counters took.
                give_back(deps, taken, now_secs).await?;
                crate::metrics::limited("login");
                tracing::info!(outcome = "denied", reason = "rate_limited", "login refused");
                // Never longer than the policy's bound (a counter written by a clock ahead).
                let policy = LoginPolicy::of(c);
                return Err(LoginError::RateLimited {
                    retry_after_secs: policy.retry_after(until, now_secs),
                    address_locked_until: matches!(c, LoginCounter::Address(_))
                        .then(|| until.min(policy.furthest_block(now_secs))),
                });
            }
        }
    }
    let failed =
        |reason: &'static str, err: LoginError| count_failure(deps, taken, now_secs, reason, err);
    let email = normalise_email(&req.email);
    let user = match &email {
        Some(e) if password.expose().chars().count() <= MAX_PASSWORD => {
            deps.users.user_by_email(e).await?
        }
        _ => None,
    };
    let Some(user) = user else {
        // Same work, same answer, same counting as a wrong password.
        verify_password(password, None).await?;
        return failed("invalid_credentials", LoginError::InvalidCredentials).await;
    };
    let (tenant, id) = (&user.tenant_id, user.id.as_str());
    *who = Some((tenant.clone(), id.to_owned()));
    if !verify_password(password, Some(user.password_hash.clone())).await? {
        return failed("invalid_credentials", LoginError::InvalidCredentials).await;
    }
    // A closed tenant's users are no users: answered and counted as an unknown email is.
    if !tenant_open(deps, tenant).await? {
        return failed("tenant_closed", LoginError::InvalidCredentials).await;
    }
    if user.totp_confirmed {
        let Some(code) = req.totp_code.as_deref().map(str::trim) else {
            // The usual first step of a 2FA login: not a failure.
            give_back(deps, taken, now_secs).await?;
            tracing::info!(user_id = %id, outcome = "challenge", "login asks for a code");
            return Err(LoginError::TotpChallenge);
        };
        // The user's own counter of wrong codes, whatever the address: the per-address
        // counters alone let a caller who has the password guess codes from many.
        let totp_counter = LoginCounter::Totp(token_hash(&user.email));
        let totp_policy = LoginPolicy::of(&totp_counter);
        let totp_ticket = match deps
            .users
            .begin_login(&totp_counter, now_secs, &totp_policy)
            .await?
        {
            LoginGate::Allowed(ticket) => ticket,
            LoginGate::Locked { until } => {
                give_back(deps, taken, now_secs).await?;
                crate::metrics::limited("login");
                tracing::info!(
                    outcome = "denied",
                    reason = "totp_rate_limited",
                    "login refused"
                );
                return Err(LoginError::TotpLocked {
                    retry_after_secs: totp_policy.retry_after(until, now_secs),
                });
            }
        };
        taken.push(&totp_counter, totp_ticket);
        let stored = user.totp_secret.as_deref().unwrap_or_default();
        let Some(seed) = seed_cipher::open(deps, tenant, id, stored).await? else {
            // Tampered, another user's, or its data key refused by KMS (a key policy
            // without this role, a key deleted: every 2FA user at once): answered like a
            // wrong code, but no failure of the caller's, who gave the right password and
            // whose code was never checked. Every count taken is given back, as for a stop
            // part-way: counted, each 2FA user's retries ran into `429` and an office's
            // address locked after 20 of them.
            give_back(deps, taken, now_secs).await?;
            crate::metrics::totp_seed_unopened("login");
            tracing::error!(user_id = %id, outcome = "error", reason = "totp_seed_unopened", "the stored TOTP seed does not open; login refused, nothing counted");
            return Err(LoginError::TotpUnavailable);
        };
        let step = matching_step(&totp_for(seed.seed(), &user.email)?, code, now);
        let accepted = match step {
            Some(step) => deps.users.accept_totp_step(tenant, id, step).await?,
            None => false,
        };
        if !accepted {
            // Counted on the user's own counter too (`failed` counts every ticket held).
            return failed("totp", LoginError::TotpRequired).await;
        }
        taken.settle(&totp_counter);
        deps.users.clear_login_counter(&totp_counter).await?;
        reseal_if_legacy(deps, tenant, id, stored, &seed).await;
    }
    // Right from here: this email's counter at this address starts again; the
    // address's own counter keeps its failures (other emails tried from it).
    give_back(deps, taken, now_secs).await?;
    deps.users.clear_login_counter(&counters[1]).await?;
    let token = Secret::generate(SESSION_PREFIX);
    let ttl = deps
        .settings
        .retention
        .duration(RetentionClass::Session)
        .and_then(|d| Duration::from_std(d).ok())
        .unwrap_or_else(|| Duration::hours(12));
    let session = SessionRecord {
        token_hash: token_hash(token.expose()),
        tenant_id: tenant.clone(),
        user_id: id.to_owned(),
        role: user.role,
        created_at: now,
        expires_at: now + ttl,
        revoked: false,
        last_seen_at: None,
        password_version: user.password_version,
        // A code was checked above exactly when the user has 2FA.
        second_factor: Some(user.totp_confirmed),
    };
    deps.users.put_session(&session).await?;
    let totp_enrollment_required =
        !user.totp_confirmed && deps.users.two_factor_required(tenant).await?;
    tracing::info!(user_id = %id, outcome = "success", "login");
    Ok(LoggedIn {
        token,
        expires_at: session.expires_at,
        totp_enrollment_required,
    })
}

/// Resolves a session token (called by `auth::authenticate` for tokens with the session
/// prefix). Expired, revoked or logged-out sessions, sessions idle for
/// [`SESSION_IDLE`], and sessions of deleted users, do not authenticate. A session in
/// use has its last use recorded (at most once a minute).
pub async fn authenticate_session(deps: &Deps, token: &str) -> Result<Caller, ServiceError> {
    session_and_email(deps, token)
        .await
        .map(|(caller, _)| caller)
}

/// [`authenticate_session`], with the signed-in user's email (read by the same check, no
/// other read): the console names whom a page is for.
pub async fn session_and_email(deps: &Deps, token: &str) -> Result<(Caller, String), ServiceError> {
    let hash = token_hash(token);
    let now = deps.clock.now();
    let session = deps
        .users
        .session_by_hash(&hash)
        .await?
        .filter(|s| !s.revoked && s.expires_at > now)
        .ok_or(ServiceError::Unauthenticated)?;
    // The last use recorded; a later one within its minute was not (uses are recorded
    // at most once a minute), so the session is idle for 30 minutes only a minute after
    // that: it ends between 30 and 31 idle minutes, never before 30.
    let last_use = session.last_seen_at.unwrap_or(session.created_at);
    if now - last_use >= SESSION_IDLE + SESSION_TOUCH_EVERY {
        // Ended for good: a later request cannot revive it.
        deps.users.revoke_session(&hash).await?;
        tracing::info!(user_id = %session.user_id, reason = "idle", "session ended");
        return Err(ServiceError::Unauthenticated);
    }
    if now - last_use >= SESSION_TOUCH_EVERY {
        deps.users.touch_session(&hash, now).await?;
    }
    let user = deps
        .users
        .get_user(&session.tenant_id, &session.user_id)
        .await?
        .ok_or(ServiceError::Unauthenticated)?;
    // Opened with a password the user has changed since: ended with it.
    if session.password_version < user.password_version {
        return Err(ServiceError::Unauthenticated);
    }
    // A closed (or removed) tenant's sessions end with it, as its API keys do: the API
    // refuses them anyway, and a console that still took them would send its user from
    // the sign-in page to a page that refuses them, and back, forever.
    if !tenant_open(deps, &session.tenant_id).await? {
        return Err(ServiceError::Unauthenticated);
    }
    // The session's own proof, not the user's: a session opened with a password alone
    // stays confined when its user confirms 2FA in another one (its sign-in gave no code).
    let proven = session.second_factor.unwrap_or(user.totp_confirmed);
    let enrollment_only = !proven && deps.users.two_factor_required(&session.tenant_id).await?;
    // The user's role, not the one the session was opened with: a role change bites on
    // the next request.
    Ok((
        Caller::Session {
            tenant_id: session.tenant_id,
            user_id: session.user_id,
            role: user.role,
            enrollment_only,
            signed_in_at: session.created_at,
        },
        user.email,
    ))
}

/// The signed-in user changes their own password (a session only: an API key is no user,
/// `Forbidden`; a session confined to setting up 2FA, `TotpEnrollmentRequired`). The
/// current password is checked as a login checks it, through the same counters (email at
/// the address, and the address): a stolen session cannot guess it faster than a sign-in
/// could (`RateLimited`), and a wrong one is `400` with nothing changed. The new hash
/// replaces the one checked in one conditional write that also adds one to the user's
/// `password_version`, ending every session of theirs, this one included, on every device:
/// they sign in again with the new password (`Conflict` if it was changed meanwhile).
pub async fn change_password(
    deps: &Deps,
    caller: &Caller,
    req: PasswordChange,
    addr: Option<std::net::IpAddr>,
) -> Result<(), ServiceError> {
    // A session confined to setting up 2FA (the tenant requires it) sets it up first.
    if matches!(
        caller,
        Caller::Session {
            enrollment_only: true,
            ..
        }
    ) {
        return Err(ServiceError::TotpEnrollmentRequired);
    }
    let (tenant, id) = session_user(caller)?;
    check_password(&req.new_password).map_err(|_| {
        invalid(format!(
            "new_password must be {MIN_PASSWORD} to {MAX_PASSWORD} characters"
        ))
    })?;
    if req.new_password == req.current_password {
        return Err(invalid("new_password must differ from current_password"));
    }
    let user = deps
        .users
        .get_user(tenant, id)
        .await?
        .ok_or(ServiceError::Unauthenticated)?;
    let now = deps.clock.now();
    let now_secs = now.timestamp();
    let counters = counters(&user.email, addr);
    let taken = Taken::default();
    let checked = check_current(
        deps,
        &user,
        req.current_password,
        &counters,
        &taken,
        now_secs,
    )
    .await;
    if let Err(e) = &checked {
        if !matches!(
            e,
            ServiceError::InvalidRequest(_) | ServiceError::RateLimited { .. }
        ) {
            // Stopped part-way (a store failure): what the gates took is given back.
            let _ = give_back(deps, &taken, now_secs).await;
        }
    }
    checked?;
    let hash = hash_password(Secret::new(req.new_password)).await?;
    if !deps
        .users
        .set_password(tenant, id, &user.password_hash, &hash)
        .await?
    {
        return Err(ServiceError::Conflict(
            "the password was changed meanwhile; sign in again".into(),
        ));
    }
    tracing::info!(user_id = %id, "password changed; the user's sessions ended");
    Ok(())
}

/// The current password of a change, through the login counters.
async fn check_current(
    deps: &Deps,
    user: &UserRecord,
    current: String,
    counters: &[LoginCounter; 2],
    taken: &Taken,
    now_secs: i64,
) -> Result<(), ServiceError> {
    for c in counters {
        match deps
            .users
            .begin_login(c, now_secs, &LoginPolicy::of(c))
            .await?
        {
            LoginGate::Allowed(ticket) => taken.push(c, ticket),
            LoginGate::Locked { until } => {
                give_back(deps, taken, now_secs).await.map_err(service)?;
                crate::metrics::limited("login");
                return Err(ServiceError::RateLimited {
                    retry_after_secs: u64::try_from(
                        LoginPolicy::of(c).retry_after(until, now_secs),
                    )
                    .unwrap_or(1),
                });
            }
        }
    }
    let right = current.chars().count() <= MAX_PASSWORD
        && verify_password(Secret::new(current), Some(user.password_hash.clone())).await?;
    if !right {
        count_failure(
            deps,
            taken,
            now_secs,
            "wrong_current_password",
            LoginError::InvalidCredentials,
        )
        .await
        .map(|_| ())
        .or_else(|e| match e {
            LoginError::InvalidCredentials => Ok(()),
            other => Err(service(other)),
        })?;
        return Err(ServiceError::CredentialRefused {
            message: "current_password does not match".into(),
            result: "wrong_current_password",
        });
    }
    give_back(deps, taken, now_secs).await.map_err(service)?;
    deps.users.clear_login_counter(&counters[1]).await?;
    Ok(())
}

/// A login step's failure as a service error (only store failures reach here).
fn service(e: LoginError) -> ServiceError {
    match e {
        LoginError::Service(e) => e,
        other => ServiceError::Internal(other.to_string()),
    }
}

/// Whether the tenant exists and is not closed (the warm process's tenant, as every
/// access check reads it).
async fn tenant_open(deps: &Deps, tenant: &TenantId) -> Result<bool, ServiceError> {
    Ok(deps
        .tenants
        .tenant_for_access(tenant)
        .await?
        .is_some_and(|t| t.status != crate::ports::TenantStatus::Closed))
}

fn session_user(caller: &Caller) -> Result<(&TenantId, &str), ServiceError> {
    match caller {
        Caller::Session {
            tenant_id, user_id, ..
        } => Ok((tenant_id, user_id)),
        _ => Err(ServiceError::Forbidden),
    }
}

/// How recently a session must have been opened to start a 2FA enrolment. A stolen
/// session token (a script's, a log's) could otherwise enrol the thief's own second
/// factor, confirm it and lock the owner out of every later sign-in; a password change
/// asks for the current password for the same reason. The owner signs in again.
pub const ENROLL_SIGNED_IN_WITHIN: chrono::Duration = chrono::Duration::minutes(15);

/// A new pending TOTP secret for the calling user (replacing an unconfirmed one).
/// `Conflict` once 2FA is confirmed, and for a session opened more than
/// [`ENROLL_SIGNED_IN_WITHIN`] ago.
pub async fn enroll(deps: &Deps, caller: &Caller) -> Result<Enrollment, ServiceError> {
    let (tenant, id) = session_user(caller)?;
    if let Caller::Session { signed_in_at, .. } = caller {
        if deps.clock.now() - *signed_in_at > ENROLL_SIGNED_IN_WITHIN {
            tracing::info!(user_id = %id, outcome = "denied", reason = "sign_in_not_recent", "2fa enrollment refused");
            return Err(ServiceError::Conflict(
                "sign in again to set up two-factor authentication: it can only be started within 15 minutes of signing in".into(),
            ));
        }
    }
    let user = deps
        .users
        .get_user(tenant, id)
        .await?
        .ok_or(ServiceError::Unauthenticated)?;
    if user.totp_confirmed {
        return Err(ServiceError::Conflict(already_enabled(caller).into()));
    }
    let secret = match totp_rs::Secret::generate_secret().to_encoded() {
        totp_rs::Secret::Encoded(s) => s,
        totp_rs::Secret::Raw(_) => {
            return Err(ServiceError::Internal("TOTP secret encoding".into()))
        }
    };
    let uri = totp_for(&secret, &user.email)?.get_url();
    let sealed = seed_cipher::seal(deps, tenant, id, &secret).await?;
    deps.users.set_pending_totp(tenant, id, &sealed).await?;
    tracing::info!(user_id = %id, "2fa enrollment started");
    Ok(Enrollment {
        secret: Secret::new(secret),
        otpauth_uri: Secret::new(uri),
    })
}

/// Confirms the pending secret with a current code; from then on every login needs one.
/// The session it is made in (`session_token`) has proved a second factor: a full one
/// from its next request. The user's other sessions, opened with a password alone, are
/// not (where the tenant requires 2FA they stay confined until signed in with a code).
pub async fn confirm(
    deps: &Deps,
    caller: &Caller,
    session_token: &str,
    req: ConfirmRequest,
) -> Result<(), ServiceError> {
    let (tenant, id) = session_user(caller)?;
    let user = deps
        .users
        .get_user(tenant, id)
        .await?
        .ok_or(ServiceError::Unauthenticated)?;
    if user.totp_confirmed {
        return Err(ServiceError::Conflict(already_enabled(caller).into()));
    }
    let Some(stored) = user.totp_secret.as_deref() else {
        return Err(ServiceError::Conflict(
            "no enrollment pending: call POST /v1/auth/2fa/enroll first".into(),
        ));
    };
    let now = deps.clock.now();
    let now_secs = now.timestamp();
    // Wrong codes meet the user's own counter, the one a login's codes meet: a session
    // opened with a stolen password alone must not guess its way to a pending secret's
    // code (which would turn 2FA on and make that session a full one).
    let counter = LoginCounter::Totp(token_hash(&user.email));
    let policy = LoginPolicy::of(&counter);
    let ticket = match deps.users.begin_login(&counter, now_secs, &policy).await? {
        LoginGate::Allowed(ticket) => ticket,
        LoginGate::Locked { until } => {
            crate::metrics::limited("login");
            tracing::info!(user_id = %id, outcome = "denied", reason = "totp_rate_limited", "2fa confirmation refused");
            return Err(ServiceError::RateLimited {
                retry_after_secs: u64::try_from(policy.retry_after(until, now_secs)).unwrap_or(1),
            });
        }
    };
    // Opened past the counter's gate (a KMS `Decrypt`): a locked-out guesser costs the
    // account-wide KMS quota, which every 2FA sign-in needs, nothing.
    let opened = seed_cipher::open(deps, tenant, id, stored).await;
    let seed = match opened {
        Ok(Some(seed)) => seed,
        Ok(None) | Err(_) => {
            // Not the caller's failure: the count is given back (a give-back that fails
            // stays counted, erring toward slowing), and the answer is the seed's.
            if let Err(r) = deps
                .users
                .login_released(&counter, now_secs, &policy, ticket)
                .await
            {
                tracing::warn!(user_id = %id, error = %r, "a 2fa confirmation's count could not be given back");
            }
            return match opened {
                Err(e) => Err(e),
                _ => {
                    // KMS refused its data key (a key policy edit, a key deleted) or it was
                    // tampered with: the operator's fault, not a wrong code. `503`, not
                    // `400 totp_code does not match`: the console found the code right for
                    // the key it showed and said the set-up was replaced, and its "start
                    // again" made a new key that failed the same way.
                    crate::metrics::totp_seed_unopened("confirm");
                    tracing::error!(user_id = %id, outcome = "error", reason = "totp_seed_unopened", "the pending TOTP seed does not open; 2fa confirmation refused, nothing counted");
                    Err(ServiceError::Unavailable(
                        crate::store_error::StoreError::Unavailable(
                            "the pending TOTP seed does not open".into(),
                        ),
                    ))
                }
            };
        }
    };
    let step = matching_step(
        &totp_for(seed.seed(), &user.email)?,
        req.totp_code.trim(),
        now,
    );
    let confirmed = match step {
        Some(step) => deps.users.confirm_totp(tenant, id, stored, step).await?,
        None => false,
    };
    if !confirmed {
        // Removed meanwhile: the session's user is gone, as on its next request.
        if step.is_some() && deps.users.get_user(tenant, id).await?.is_none() {
            deps.users
                .login_released(&counter, now_secs, &policy, ticket)
                .await?;
            return Err(ServiceError::Unauthenticated);
        }
        deps.users
            .login_failed(&counter, now_secs, &policy, ticket)
            .await?;
        return Err(ServiceError::CredentialRefused {
            message: if step.is_some() {
                "totp_code does not match (codes are accepted once; wait for the next one)"
            } else {
                "totp_code does not match"
            }
            .into(),
            result: "totp_invalid",
        });
    }
    // A right code clears the counter, as at login.
    if let Err(e) = deps.users.clear_login_counter(&counter).await {
        // 2FA is on: a count not cleared only shortens the user's next wrong codes.
        tracing::warn!(user_id = %id, error = %e, "2fa enabled; its wrong codes not cleared");
    }
    reseal_if_legacy(deps, tenant, id, stored, &seed).await;
    tracing::info!(user_id = %id, "2fa enabled");
    // Tried again while the store's failure is worth it; if it still fails, 2FA is on and
    // this session stays confined: its user signs in again, with a code.
    let session = token_hash(session_token.trim());
    if let Err(e) = crate::store_error::undo(|| deps.users.mark_second_factor(&session)).await {
        tracing::warn!(user_id = %id, error = %e, "2fa enabled; the session not marked");
    }
    Ok(())
}

/// The `409` of an enrolment or confirmation for a user whose 2FA is on: a session still
/// confined to enrolment (opened with a password alone; 2FA was confirmed in another)
/// signs in again with a code.
fn already_enabled(caller: &Caller) -> &'static str {
    match caller {
        Caller::Session {
            enrollment_only: true,
            ..
        } => "two-factor authentication is already enabled (in another session): sign in again with a code",
        _ => "two-factor authentication is already enabled",
    }
}

/// Seals a seed that opened as plain (stored before sealing) or `v1` (the Secrets
/// Manager key) as `v2`, under a KMS data key, if it is still the stored one (a
/// conditional write). Best effort: the login or confirmation it follows has succeeded; a
/// failure is logged and retried next time.
async fn reseal_if_legacy(
    deps: &Deps,
    tenant: &TenantId,
    id: &str,
    stored: &str,
    seed: &seed_cipher::Opened,
) {
    let seed_cipher::Opened::Legacy(plain) = seed else {
        return;
    };
    let resealed = match seed_cipher::seal(deps, tenant, id, plain.expose()).await {
        Ok(sealed) => deps.users.reseal_totp(tenant, id, stored, &sealed).await,
        Err(e) => {
            tracing::warn!(user_id = %id, error = %e, "TOTP seed not sealed again");
            return;
        }
    };
    match resealed {
        Ok(true) => tracing::info!(user_id = %id, "TOTP seed sealed again under a KMS data key"),
        Ok(false) => {}
        Err(e) => tracing::warn!(user_id = %id, error = %e, "TOTP seed not sealed again"),
    }
}

/// Ends the session whose token is presented.
pub async fn logout(deps: &Deps, token: &str) -> Result<(), ServiceError> {
    deps.users.revoke_session(&token_hash(token)).await?;
    Ok(())
}

pub async fn two_factor_setting(
    deps: &Deps,
    tenant: &TenantId,
) -> Result<TwoFactorSetting, ServiceError> {
    Ok(TwoFactorSetting {
        required: deps.users.two_factor_required(tenant).await?,
    })
}

pub async fn set_two_factor_setting(
    deps: &Deps,
    tenant: &TenantId,
    s: TwoFactorSetting,
) -> Result<TwoFactorSetting, ServiceError> {
    deps.users
        .set_two_factor_required(tenant, s.required)
        .await?;
    tracing::info!(required = s.required, "2fa requirement changed");
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dummy_hash_costs_what_a_real_password_hash_costs() {
        let dummy = PasswordHash::new(DUMMY_HASH).expect("a PHC string");
        let salt = SaltString::generate(&mut OsRng);
        let real = Argon2::default()
            .hash_password(b"a password of someone's", &salt)
            .expect("hashed");
        assert_eq!(dummy.algorithm, real.algorithm);
        assert_eq!(dummy.version, real.version);
        assert_eq!(dummy.params, real.params);
        assert!(Argon2::default().verify_password(b"guess", &dummy).is_err());
    }
}
