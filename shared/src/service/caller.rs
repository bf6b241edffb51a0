//! Who is calling: the platform operator, a tenant's API key with a role, or a console
//! user's session with the user's role; and what each may act on. A leaf: `auth` and
//! `users` produce callers, routes and services consume them.

use crate::domain::{Role, TenantId};

use super::errors::ServiceError;

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
        /// When the session was opened (its sign-in): a 2FA enrolment needs a recent one
        /// (`users::ENROLL_SIGNED_IN_WITHIN`).
        signed_in_at: chrono::DateTime<chrono::Utc>,
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
