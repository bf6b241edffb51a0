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

/// Resolves a bearer token. Operator tokens are compared in constant time against the
/// current value (read afresh when the cached copy refuses one) and, for `rotation_grace`
/// after a rotation, the previous one; API keys are looked up by hash.
pub async fn authenticate(deps: &Deps, token: Option<&str>) -> Result<Caller, ServiceError> {
    let token = token
        .filter(|t| !t.is_empty() && t.len() <= MAX_TOKEN)
        .ok_or(ServiceError::Unauthenticated)?;
    if token.starts_with(super::users::SESSION_PREFIX) {
        return super::users::authenticate_session(deps, token).await;
    }
    let name = &deps.settings.operator_token_secret;
    for s in [
        deps.secrets.current(name).await?,
        deps.secrets
            .previous_within(name, deps.settings.rotation_grace, deps.clock.now())
            .await?,
    ]
    .into_iter()
    .flatten()
    {
        if s.matches(token) {
            return Ok(Caller::Operator);
        }
    }
    // Not an API key (they all carry the prefix): the operator token may have been rotated
    // since this process cached it, so it is read afresh, at most every
    // `SECRET_REFRESH_EVERY` (as the webhook's app secret): a new token works at once on
    // every warm instance, and a flood of wrong ones costs one read per interval.
    if !token.starts_with(super::apikeys::KEY_PREFIX) {
        let fresh = deps
            .secrets
            .refresh_current(name, super::webhook::SECRET_REFRESH_EVERY)
            .await?
            .flatten();
        if fresh.is_some_and(|s| s.matches(token)) {
            return Ok(Caller::Operator);
        }
    }
    let key = deps
        .tenants
        .api_key_by_hash(&token_hash(token))
        .await?
        .ok_or(ServiceError::Unauthenticated)?;
    let now = deps.clock.now();
    if key.revoked || key.expires_at.is_some_and(|e| e <= now) {
        return Err(ServiceError::Unauthenticated);
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
