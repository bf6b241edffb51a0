//! A tenant's Meta access token: the check every token passes (onboarding, replacement),
//! and its replacement by the platform operator (`PUT /v1/platform/tenants/{id}/meta-token`).
//! The token is carried as a [`Secret`] from the body on, and never answered or logged.

use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::domain::TenantId;
use crate::ports::TenantStatus;
use crate::secret::Secret;
use crate::store_error::StoreError;

use super::errors::ServiceError;
use super::Deps;

/// The longest token taken, in characters (Meta's are a few hundred).
pub const MAX_TOKEN_CHARS: usize = 4096;

/// The body of `PUT /v1/platform/tenants/{id}/meta-token`. Its `Debug` hides the token.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewMetaToken {
    pub meta_access_token: String,
}

impl std::fmt::Debug for NewMetaToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NewMetaToken(<redacted>)")
    }
}

/// A token as Meta gives it: 1 to [`MAX_TOKEN_CHARS`] characters, not blank, and nothing
/// a header cannot carry. Meta's tokens are letters and digits: one with a space or a line
/// break (a pasted file) could never be sent in a header, so it is refused here rather
/// than at every send.
pub fn check_token(token: &str) -> Result<(), ServiceError> {
    if token.trim().is_empty() || token.chars().count() > MAX_TOKEN_CHARS {
        return Err(ServiceError::InvalidRequest(format!(
            "meta_access_token must be 1 to {MAX_TOKEN_CHARS} characters"
        )));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ServiceError::InvalidRequest(
            "meta_access_token must be the token as Meta gives it: no spaces, line breaks or \
             other characters a header cannot carry"
                .into(),
        ));
    }
    Ok(())
}

/// Replaces the tenant's Meta access token and answers when it was replaced.
///
/// The tenant is read first: an unknown one is `NotFound` and a closed one `Conflict`
/// (the close-out deletes its secret) before any secret is written, so no secret is made
/// for an id that is no tenant's, nor one being deleted brought back. The new value is
/// written into the tenant's own secret (the name on its item): created if it is missing,
/// restored first if it is scheduled for deletion (an onboarding's rare race can leave a
/// tenant so). Then the tenant item's `meta_token_changed_at` is set, conditional on the
/// tenant existing and not being closed: for a cache TTL after it, dispatchers read the
/// token afresh instead of their cached copy. A tenant closed between the read and that
/// write answers `Conflict`, and its secret is scheduled for deletion again.
///
/// Suspended tenants are allowed: replacing an expired token is how a tenant suspended on
/// Meta's 190 is fixed before its resume.
pub async fn replace(
    deps: &Deps,
    id: &TenantId,
    body: NewMetaToken,
) -> Result<DateTime<Utc>, ServiceError> {
    let token = Secret::new(body.meta_access_token);
    check_token(token.expose())?;
    let tenant = deps
        .tenants
        .get_tenant(id)
        .await?
        .ok_or(ServiceError::NotFound)?;
    if tenant.status == TenantStatus::Closed {
        return Err(closed());
    }
    deps.secrets
        .replace(&tenant.meta_token_secret, &token)
        .await?;
    // After the secret's write: a copy any process reads after this time is the new token.
    let at = deps.clock.now();
    match deps.tenants.set_meta_token_changed_at(id, at).await {
        Ok(_) => {
            tracing::info!(tenant_id = %id, "tenant's meta access token replaced");
            Ok(at)
        }
        Err(StoreError::Conflict(_)) => {
            // Closed since it was read: its close-out may have scheduled the secret's
            // deletion already, which the replacement cancelled. Scheduled again (the
            // close-out takes a deletion already scheduled as done).
            tracing::warn!(tenant_id = %id, "tenant closed while its meta access token was replaced; its secret is deleted again");
            if let Err(e) = deps
                .secrets
                .store()
                .delete_secret(&tenant.meta_token_secret)
                .await
            {
                tracing::error!(tenant_id = %id, error = %e, "a closed tenant's meta token secret was not deleted again; its close-out, or the daily run after it, deletes it");
            }
            Err(closed())
        }
        Err(e) => {
            // The secret holds the new token; warm dispatchers may use their cached copy
            // of the old one for up to the cache's TTL. The same request again sets it.
            tracing::warn!(tenant_id = %id, error = %e, "meta access token written, but the time of its replacement was not");
            Err(e.into())
        }
    }
}

fn closed() -> ServiceError {
    ServiceError::Conflict("the account is closed: its Meta token is being deleted".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_a_header_cannot_carry_or_of_no_length_is_refused() {
        for bad in [
            "",
            "   ",
            "EAAG with space",
            "EAAG\nline",
            "EAAG\ttab",
            "EAAGé",
        ] {
            assert!(check_token(bad).is_err(), "{bad:?}");
        }
        assert!(check_token(&"a".repeat(MAX_TOKEN_CHARS + 1)).is_err());
        assert!(check_token(&"a".repeat(MAX_TOKEN_CHARS)).is_ok());
        assert!(check_token("EAAG-test_token.123").is_ok());
    }

    #[test]
    fn the_bodys_debug_never_shows_the_token() {
        let body = NewMetaToken {
            meta_access_token: "EAAG-very-secret".into(),
        };
        assert!(!format!("{body:?}").contains("very-secret"));
    }
}
