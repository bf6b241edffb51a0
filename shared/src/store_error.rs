//! `StoreError`: how every port (storage, queues, secrets) fails, as the services see it.
//!
//! This file owns the error *classes* and the one question callers ask of them,
//! [`StoreError::is_retryable`]. It knows nothing of AWS: the adapters decide which class a
//! backend's answer belongs to (for the AWS SDK, `adapters::aws::classify`), so no SDK type
//! leaks out and a refusal keeps its class from the SDK up to the HTTP answer or the queue.

#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum StoreError {
    /// A uniqueness rule held (e.g. a phone number already onboarded).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The balance would have gone below zero; nothing was written.
    #[error("insufficient credits")]
    InsufficientCredits,
    #[error("not found")]
    NotFound,
    /// A pagination cursor we did not issue.
    #[error("invalid cursor")]
    InvalidCursor,
    /// The backend failed in a way worth retrying (throttling, timeouts, network, 5xx).
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The backend refused this request and will refuse it again: a validation error, an
    /// item too large, any other 4xx. A bug or bad data; retrying cannot help.
    #[error("backend rejected the request: {0}")]
    Rejected(String),
    /// The process is not set up to reach the backend: access denied, a table or queue
    /// that does not exist, bad credentials, a port this process was not wired with.
    /// An operator must fix a grant or the configuration; retrying cannot help.
    #[error("backend misconfigured: {0}")]
    Misconfigured(String),
    /// The backend held something we cannot read: a bug or tampering, not retryable.
    #[error("corrupt item: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// Whether trying the same call again later could succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

#[cfg(test)]
mod tests {
    use super::StoreError;

    #[test]
    fn only_an_unavailable_backend_is_worth_a_retry() {
        assert!(StoreError::Unavailable("throttled".into()).is_retryable());
        for e in [
            StoreError::Rejected("validation".into()),
            StoreError::Misconfigured("access denied".into()),
            StoreError::Corrupt("bad item".into()),
            StoreError::Conflict("exists".into()),
            StoreError::NotFound,
            StoreError::InsufficientCredits,
            StoreError::InvalidCursor,
        ] {
            assert!(!e.is_retryable(), "{e:?}");
        }
    }
}
