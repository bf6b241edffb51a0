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

/// How often an undo is tried ([`undo`]).
pub const UNDO_ATTEMPTS: u32 = 3;

/// An undo (a claim given back, nothing having gone to Meta) tried up to [`UNDO_ATTEMPTS`]
/// times while its failure is worth a retry, 50 ms then 250 ms apart. One left undone
/// leaves a message `sending` with nothing sent, for its sending deadline to fail,
/// charged; a moment's throttling must not do that. Each try must be safe to repeat (a
/// conditional write refused once its first try landed). A read whose answer a committed
/// write must not lose (the balance after a top-up) is tried the same way.
pub async fn undo<T, F, Fut>(mut write: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut pause = std::time::Duration::from_millis(50);
    let mut attempt = 1;
    loop {
        match write().await {
            Err(e) if e.is_retryable() && attempt < UNDO_ATTEMPTS => {
                tracing::warn!(error = %e, attempt, "an undo (or a read after a write) failed; trying again");
                tokio::time::sleep(pause).await;
                pause *= 5;
                attempt += 1;
            }
            done => return done,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::StoreError;

    #[tokio::test]
    async fn an_undo_is_tried_again_only_while_its_failure_is_worth_a_retry() {
        let tries = std::cell::Cell::new(0);
        let failing = |e: StoreError| {
            let tries = &tries;
            move || {
                tries.set(tries.get() + 1);
                let e = e.clone();
                async move { Err::<(), _>(e) }
            }
        };
        let unavailable = StoreError::Unavailable("throttled".into());
        assert_eq!(
            super::undo(failing(unavailable.clone())).await,
            Err(unavailable)
        );
        assert_eq!(tries.get(), super::UNDO_ATTEMPTS);
        tries.set(0);
        let rejected = StoreError::Rejected("validation".into());
        assert_eq!(super::undo(failing(rejected.clone())).await, Err(rejected));
        assert_eq!(
            tries.get(),
            1,
            "a refusal that will repeat is not tried again"
        );
        tries.set(0);
        let mut left = 2;
        let flaky = || {
            tries.set(tries.get() + 1);
            left -= 1;
            let ok = left < 0;
            async move {
                if ok {
                    Ok(7)
                } else {
                    Err(StoreError::Unavailable("blip".into()))
                }
            }
        };
        assert_eq!(super::undo(flaky).await, Ok(7));
        assert_eq!(tries.get(), 3, "the third try lands");
    }

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
