//! Who is calling: the platform operator, a tenant's API key with a role, or a console
//! user's session with the user's role.

use crate::domain::{Role, TenantId};
use crate::ports::Tenant;
use crate::secret::token_hash;

use super::errors::ServiceError;
use super::Deps;

#[derive(Clone, Debug, PartialEq)]
pub enum Caller {
    /// The provider's own staff: manages tenants, never acts as one.
    Operator,
    ApiKey {
        tenant_id: TenantId,
        key_id: String,
        role: Role,
    },
    /// A console user's session: a tenant credential with the user's role. IP
    /// allow-lists do not apply (API.md: they are for API keys).
    Session {
        tenant_id: TenantId,
        user_id: String,
        role: Role,
        /// The tenant requires 2FA and the user has not confirmed it yet: only the
        /// session routes (enroll, confirm, logout) are open.
        enrollment_only: bool,
    },
}

impl Caller {
    /// The tenant a tenant-scoped route acts on, if the caller's role allows it.
    pub fn tenant(&self, required: Role) -> Result<&TenantId, ServiceError> {
        match self {
            Caller::ApiKey {
                tenant_id, role, ..
            } if role.includes(required) => Ok(tenant_id),
            Caller::Session {
                enrollment_only: true,
                ..
            } => Err(ServiceError::TotpEnrollmentRequired),
            Caller::Session {
                tenant_id, role, ..
            } if role.includes(required) => Ok(tenant_id),
            Caller::ApiKey { .. } | Caller::Session { .. } => Err(ServiceError::Forbidden),
            // The operator token is not a tenant credential.
            Caller::Operator => Err(ServiceError::Forbidden),
        }
    }

    pub fn require_operator(&self) -> Result<(), ServiceError> {
        match self {
            Caller::Operator => Ok(()),
            Caller::ApiKey { .. } | Caller::Session { .. } => Err(ServiceError::Forbidden),
        }
    }

    /// `(type, id)` for logs and audit.
    pub fn actor(&self) -> (&'static str, String) {
        match self {
            Caller::Operator => ("operator", "platform".into()),
            Caller::ApiKey { key_id, .. } => ("api_key", key_id.clone()),
            Caller::Session { user_id, .. } => ("user", user_id.clone()),
        }
    }
}

/// Resolves a bearer token. Operator tokens are compared in constant time against the
/// current and (during rotation) previous value; API keys are looked up by hash.
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
        deps.secrets.previous(name).await?,
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

/// Loads the caller's tenant; closed tenants' keys no longer authenticate.
pub async fn load_tenant(deps: &Deps, id: &TenantId) -> Result<Tenant, ServiceError> {
    match deps.tenants.get_tenant(id).await? {
        Some(t) if t.status != crate::ports::TenantStatus::Closed => Ok(t),
        _ => Err(ServiceError::Unauthenticated),
    }
}
