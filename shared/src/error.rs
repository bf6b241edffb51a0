/// Storage and queue errors, as the services see them. No AWS type leaks out.
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
    /// The backend failed in a way worth retrying (throttling, network, 5xx).
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The backend held something we cannot read: a bug or tampering, not retryable.
    #[error("corrupt item: {0}")]
    Corrupt(String),
}

impl StoreError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}
