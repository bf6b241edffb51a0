//! Authentication: a bearer token becomes a [`Caller`] (the platform operator, a
//! tenant's API key, or a console session through `users`); and the caller's tenant.

use crate::domain::TenantId;
use crate::ports::Tenant;
use crate::secret::token_hash;

pub use super::caller::Caller;
use super::errors::ServiceError;
use super::Deps;

/// Resolves a bearer token. Operator tokens are compared in constant time against the
/// current value and, for `rotation_grace` after a rotation, the previous one; API keys
/// are looked up by hash.
pub async fn authenticate(deps: &Deps, token: Option<&str>) -> Result<Caller, ServiceError> {
    let token = token
        .filter(|t| !t.is_empty() && t.len() <= 512)
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
