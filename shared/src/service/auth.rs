//! Authentication: a bearer token becomes a [`Caller`] (the platform operator, a
//! tenant's API key, or a console session through `users`); and the caller's tenant.

use crate::domain::TenantId;
use crate::ports::Tenant;
use crate::secret::token_hash;

pub use super::caller::Caller;
use super::errors::ServiceError;
use super::Deps;

/// The longest token looked up; a longer one is refused unread.
const MAX_TOKEN: usize = 512;

/// A console session token (only: nothing else is looked up) as [`authenticate`] resolves
/// it, with the signed-in user's email, which the same reads give.
pub async fn authenticate_console_session(
    deps: &Deps,
    token: &str,
) -> Result<(Caller, String), ServiceError> {
    if token.len() > MAX_TOKEN || !token.starts_with(super::users::SESSION_PREFIX) {
        return Err(ServiceError::Unauthenticated);
    }
    super::users::session_and_email(deps, token).await
}

/// An API key found by its hash that no longer authenticates: revoked, or past the expiry
/// a rotation (or its creation) gave it. Its refusal's audit event names it by its ids, so
/// the operator can tell which ended key is still in use; never the key or its hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndedKey {
    pub tenant_id: TenantId,
    pub key_id: String,
    /// `revoked`, or `expired` (a rotated-out key's grace over, an expiring key's time up).
    pub how: &'static str,
}

/// A refused credential: the error answered, and the ended key it was, when the lookup
/// found one (an unknown token names nothing).
#[derive(Debug)]
pub struct Refused {
    pub error: ServiceError,
    /// Boxed: a refusal's rare extra, kept off the size of every `Err` that carries it.
    pub ended: Option<Box<EndedKey>>,
}

impl From<ServiceError> for Refused {
    fn from(error: ServiceError) -> Self {
        Refused { error, ended: None }
    }
}

impl From<crate::store_error::StoreError> for Refused {
    fn from(e: crate::store_error::StoreError) -> Self {
        ServiceError::from(e).into()
    }
}

/// Resolves a bearer token. Operator tokens are compared in constant time against the
/// current value (read afresh when the cached copy refuses one) and, for `rotation_grace`
/// after a rotation, the previous one; API keys are looked up by hash.
pub async fn authenticate(deps: &Deps, token: Option<&str>) -> Result<Caller, ServiceError> {
    authenticate_naming_ended(deps, token)
        .await
        .map_err(|r| r.error)
}

/// [`authenticate`], whose refusal of an ended API key names it ([`EndedKey`], from the
/// item the lookup by hash already read: no read more).
pub async fn authenticate_naming_ended(
    deps: &Deps,
    token: Option<&str>,
) -> Result<Caller, Refused> {
    let token = token
        .filter(|t| !t.is_empty() && t.len() <= MAX_TOKEN)
        .ok_or(ServiceError::Unauthenticated)?;
    if token.starts_with(super::users::SESSION_PREFIX) {
        return Ok(super::users::authenticate_session(deps, token).await?);
    }
    // An API key (every one carries the prefix) is looked up first: its requests do not
    // depend on the operator token's secret being readable (Secrets Manager throttled or
    // down answered `503` to every tenant's send once a warm copy lapsed). A prefixed
    // token no key has is still compared with the operator token below.
    let key_shaped = token.starts_with(super::apikeys::KEY_PREFIX);
    if key_shaped {
        if let Some(key) = deps.tenants.api_key_by_hash(&token_hash(token)).await? {
            return api_key_caller(deps, key);
        }
    }
    // A key-shaped token no key has is the operator's only if its secret says so: one
    // that cannot be read then is not (`401`, never the `503` a key's caller would get).
    let readable =
        |r: Result<Option<crate::secret::Secret>, crate::store_error::StoreError>| match r {
            Err(_) if key_shaped => Ok(None),
            r => r,
        };
    let name = &deps.settings.operator_token_secret;
    if readable(deps.secrets.current(name).await)?.is_some_and(|s| s.matches(token)) {
        return Ok(Caller::Operator);
    }
    let previous = deps
        .secrets
        .previous_within(name, deps.settings.rotation_grace, deps.clock.now())
        .await;
    if readable(previous)?.is_some_and(|s| s.matches(token)) {
        return Ok(Caller::Operator);
    }
    // A key-shaped token was looked up above; none is the operator's fresh token either.
    if key_shaped {
        return Err(ServiceError::Unauthenticated.into());
    }
    // Not an API key: the operator token may have been rotated since this process cached
    // it, so it is read afresh, at most every `SECRET_REFRESH_EVERY` (as the webhook's app
    // secret): a new token works on every warm instance within that interval, and a flood
    // of wrong ones costs one read per interval.
    let fresh = deps
        .secrets
        .refresh_current(name, super::webhook::SECRET_REFRESH_EVERY)
        .await?
        .flatten();
    if fresh.is_some_and(|s| s.matches(token)) {
        return Ok(Caller::Operator);
    }
    let key = deps
        .tenants
        .api_key_by_hash(&token_hash(token))
        .await?
        .ok_or(ServiceError::Unauthenticated)?;
    api_key_caller(deps, key)
}

/// The caller a found API key makes: none once it is revoked or expired (refused naming it).
fn api_key_caller(deps: &Deps, key: crate::ports::ApiKeyRecord) -> Result<Caller, Refused> {
    let now = deps.clock.now();
    let how = if key.revoked {
        Some("revoked")
    } else if key.expires_at.is_some_and(|e| e <= now) {
        Some("expired")
    } else {
        None
    };
    if let Some(how) = how {
        return Err(Refused {
            error: ServiceError::Unauthenticated,
            ended: Some(Box::new(EndedKey {
                tenant_id: key.tenant_id,
                key_id: key.id,
                how,
            })),
        });
    }
    Ok(Caller::ApiKey {
        tenant_id: key.tenant_id,
        key_id: key.id,
        role: key.role,
    })
}

/// Loads the caller's tenant for an access decision (possibly from the warm-process cache:
/// never for its credits); closed tenants' keys no longer authenticate.
pub async fn load_tenant(deps: &Deps, id: &TenantId) -> Result<Tenant, ServiceError> {
    match deps.tenants.tenant_for_access(id).await? {
        Some(t) if t.status != crate::ports::TenantStatus::Closed => Ok(t),
        _ => Err(ServiceError::Unauthenticated),
    }
}
