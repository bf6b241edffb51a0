//! Service-level errors. Each knows its HTTP meaning (mapped once in `http::error`) and
//! whether a retry could help.

use crate::store_error::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{0}")]
    InvalidRequest(String),
    /// A credential the caller gave was wrong where a signed-in user proves it again (the
    /// current password of a password change, a 2FA confirmation code): answered as
    /// [`Self::InvalidRequest`] (`400 invalid_request`, the contract), audited `denied`
    /// with `result` (`wrong_current_password`, `totp_invalid`), so that a stolen
    /// session's guesses show among the denied sign-ins and not among malformed requests.
    #[error("{message}")]
    CredentialRefused {
        message: String,
        result: &'static str,
    },
    #[error("phone numbers must be E.164 with a leading +")]
    InvalidPhoneNumber,
    #[error("missing or invalid credentials")]
    Unauthenticated,
    #[error("your role does not allow this")]
    Forbidden,
    #[error("this tenant requires two-factor authentication; enroll first")]
    TotpEnrollmentRequired,
    #[error("the client address is not on the allow-list")]
    IpNotAllowed,
    #[error("marketing sends are paused while the account's quality is flagged")]
    MarketingPaused,
    #[error("this tenant is suspended")]
    TenantSuspended,
    #[error("not enough credits")]
    InsufficientCredits,
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    Conflict(String),
    #[error("the recipient has opted out")]
    RecipientOptedOut,
    /// A session text to a user who has not written in the last 24 hours.
    #[error("the user has not written to this number in the last 24 hours; send a template")]
    OutsideCustomerServiceWindow,
    #[error("this Idempotency-Key was used with a different request")]
    IdempotencyKeyReused,
    /// Over a limit on use; allowed again in this many whole seconds (at least one).
    #[error("too many requests")]
    RateLimited { retry_after_secs: u64 },
    /// The template's name and language are not in the WABA's catalogue.
    #[error("{0}")]
    TemplateNotFound(String),
    /// The catalogue's template is not `approved` (paused, pending, rejected, disabled).
    #[error("{0}")]
    TemplateNotApproved(String),
    /// The request names another category than the catalogue's.
    #[error("{0}")]
    TemplateCategoryMismatch(String),
    /// The body gives another number of parameters than the template takes.
    #[error("{0}")]
    TemplateParametersMismatch(String),
    /// `from` names no phone number of the tenant.
    #[error("{0}")]
    UnknownSender(String),
    /// The sending number is held (Meta limited it: `numbers::hold_for_meta`).
    #[error("{0}")]
    SenderHeld(String),
    /// Meta could not be read (a template sync): what was done is said.
    #[error("{0}")]
    MetaUnavailable(String),
    #[error("service temporarily unavailable")]
    Unavailable(#[source] StoreError),
    #[error("internal error")]
    Internal(String),
}

impl ServiceError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, ServiceError::Unavailable(_))
    }
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::InsufficientCredits => ServiceError::InsufficientCredits,
            StoreError::NotFound => ServiceError::NotFound,
            StoreError::Conflict(m) => ServiceError::Conflict(m),
            StoreError::InvalidCursor => ServiceError::InvalidRequest("invalid cursor".into()),
            StoreError::Unavailable(_) => ServiceError::Unavailable(e),
            // A refusal that will repeat: logged as an internal error, never echoed to the
            // client (`http::error` answers a bare 500).
            StoreError::Rejected(_) | StoreError::Misconfigured(_) => {
                ServiceError::Internal(e.to_string())
            }
            StoreError::Corrupt(m) => ServiceError::Internal(m),
        }
    }
}

/// A debit's refusal as the request answers it: one refused for the tenant being closed (a
/// warm process's copy of the tenant, up to 5 s old, let the send or campaign through just
/// after the closing; the debit's condition holds the line) answers as the closed tenant's
/// keys answer from then on, `Unauthenticated`; any other as usual.
pub fn debit_refusal(e: StoreError) -> ServiceError {
    match e {
        StoreError::Conflict(m) if m == crate::ports::TENANT_CLOSED => {
            ServiceError::Unauthenticated
        }
        e => e.into(),
    }
}

/// A message's failure code for a refusal (an HTTP 4xx) that came without Meta's error
/// body: retried, then failed refunded (`dispatch`); a later try may fix it
/// (`broadcasts::retryable`).
pub const META_REFUSED_UNREADABLE: &str = "meta_refused_unreadable";

/// A message's failure code once Meta answered a temporary error, known as one only by its
/// HTTP status or Meta's `is_transient` (an unknown code with a 5xx or 429, or marked
/// transient), on every try (`dispatch`): Meta's code
/// and text are kept in its title; a later try may fix it (`broadcasts::retryable`).
pub const META_TRANSIENT_ERROR: &str = "meta_transient_error";

/// Meta's codes that say the tenant's account cannot send at all (an invalid token, the
/// account restricted, locked or unpaid): whether Meta answers a send with one
/// (`dispatch::classify`) or reports it later in a `failed` status (`status`), the tenant
/// is suspended until the operator resumes it.
pub const ACCOUNT_STOP_CODES: &[i64] = &[0, 102, 190, 131031, 131042, 368];

/// Meta's codes that say one phone number cannot send for now (its spam rate limit,
/// 131048: too many of its messages were blocked or reported): answered to a send or
/// reported in a `failed` status, that number is held (`numbers::hold_for_meta`) until an
/// admin resumes it; the tenant's other numbers go on.
pub const NUMBER_STOP_CODES: &[i64] = &[131048];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_debit_refused_for_a_closed_tenant_answers_as_its_revoked_keys_do() {
        assert!(matches!(
            debit_refusal(StoreError::Conflict(crate::ports::TENANT_CLOSED.into())),
            ServiceError::Unauthenticated
        ));
        assert!(matches!(
            debit_refusal(StoreError::InsufficientCredits),
            ServiceError::InsufficientCredits
        ));
        assert!(matches!(
            debit_refusal(StoreError::Conflict("message exists".into())),
            ServiceError::Conflict(_)
        ));
    }
}
