//! AWS adapters: DynamoDB (one table, see docs/data-model.md), SQS, Secrets Manager and
//! KMS (data keys).
//! No AWS SDK type leaves this module: errors become `StoreError`, each in its class,
//! through the one [`classify`] below.

mod dynamodb;
pub mod http;
mod kms;
mod secrets_manager;
mod sqs;
mod users;

pub use dynamodb::{keys, DynamoStore};
pub use kms::KmsDataKeys;
pub use secrets_manager::SecretsManagerStore;
pub use sqs::SqsQueue;

use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};

use crate::store_error::StoreError;

/// What a failed AWS call means for the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Class {
    /// Throttling, timeouts, network failures, 5xx: the same call may succeed later.
    Retryable,
    /// The request itself is wrong (validation, too large, another 4xx): it always will be.
    Rejected,
    /// This process cannot reach the resource (access denied, no such table or queue, bad
    /// credentials): an operator must fix a grant or the configuration.
    Misconfigured,
}

/// Error codes a retry can get past. The SDK's own throttling and transient lists
/// (`aws-runtime`'s `THROTTLING_ERRORS`, `TRANSIENT_ERRORS`: the SDK already retried these
/// a few times before we see them), plus what DynamoDB, SQS and Secrets Manager add.
const RETRYABLE_CODES: &[&str] = &[
    // aws-runtime THROTTLING_ERRORS
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottledException",
    "TooManyRequestsException",
    "ProvisionedThroughputExceededException",
    "TransactionInProgressException",
    "RequestLimitExceeded",
    "BandwidthLimitExceeded",
    "LimitExceededException",
    "RequestThrottled",
    "SlowDown",
    "PriorRequestNotComplete",
    "EC2ThrottledException",
    // aws-runtime TRANSIENT_ERRORS
    "RequestTimeout",
    "RequestTimeoutException",
    // DynamoDB: a write met a transaction in flight on the same item.
    "TransactionConflictException",
    // 5xx codes, in case a proxy rewrote the status.
    "InternalServerError",
    "InternalFailure",
    "InternalServiceError",
    "ServiceUnavailable",
    // SQS: KMS throttled the queue's key; too many messages in flight.
    "KmsThrottled",
    "OverLimit",
    // Temporary credentials expired between refreshes: the next call signs with new ones.
    "ExpiredToken",
    "ExpiredTokenException",
];

/// Error codes that mean this process is not set up to use the resource.
const MISCONFIGURED_CODES: &[&str] = &[
    "AccessDenied",
    "AccessDeniedException",
    // DynamoDB: no such table or index; Secrets Manager call sites handle their own.
    "ResourceNotFoundException",
    // SQS (JSON protocol, then the query protocol's name).
    "QueueDoesNotExist",
    "AWS.SimpleQueueService.NonExistentQueue",
    // Credentials and signatures.
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "MissingAuthenticationToken",
    "IncompleteSignature",
    "InvalidSignatureException",
    "SignatureDoesNotMatch",
    // The KMS key behind an encrypted queue or secret.
    "KmsAccessDenied",
    "KmsDisabled",
    "KmsNotFound",
    "KmsInvalidState",
    "KmsInvalidKeyUsage",
    "DecryptionFailure",
];

/// The class of an error the service answered, from its error code first and its HTTP
/// status second: 429 and 5xx are retryable, 401 and 403 are this process's credentials or
/// grants (an answer whose code the SDK could not read, as an emulator's XML error to a JSON
/// client), every other 4xx is rejected. An answer with neither (a garbled response) is
/// retried.
pub(crate) fn class_of(code: Option<&str>, status: Option<u16>) -> Class {
    if let Some(code) = code {
        if RETRYABLE_CODES.contains(&code) {
            return Class::Retryable;
        }
        if MISCONFIGURED_CODES.contains(&code) {
            return Class::Misconfigured;
        }
    }
    match status {
        Some(429) => Class::Retryable,
        Some(401 | 403) => Class::Misconfigured,
        Some(s) if (400..500).contains(&s) => Class::Rejected,
        _ => Class::Retryable,
    }
}

/// The HTTP status of an SDK error's raw response. A trait so that tests can build
/// `SdkError`s with a response of their own (the SDK's `HttpResponse` needs a body type
/// it does not re-export).
pub(crate) trait HttpStatus {
    fn http_status(&self) -> u16;
}

impl HttpStatus for HttpResponse {
    fn http_status(&self) -> u16 {
        self.status().as_u16()
    }
}

/// The class of any SDK error, by its variant: timeouts and dispatch failures (except a
/// request the HTTP client refused as invalid) are retryable, a request the SDK could not
/// build is rejected, and an answer is judged by [`class_of`].
pub(crate) fn class_of_sdk<E: ProvideErrorMetadata, R: HttpStatus>(e: &SdkError<E, R>) -> Class {
    match e {
        SdkError::TimeoutError(_) => Class::Retryable,
        SdkError::DispatchFailure(d) if d.is_user() => Class::Rejected,
        SdkError::DispatchFailure(_) => Class::Retryable,
        SdkError::ConstructionFailure(_) => Class::Rejected,
        SdkError::ResponseError(r) => class_of(None, Some(r.raw().http_status())),
        SdkError::ServiceError(s) => class_of(e.code(), Some(s.raw().http_status())),
        _ => Class::Retryable,
    }
}

/// The one way an AWS SDK error becomes a `StoreError`, for every adapter. Call sites
/// match the answers they give a meaning to (a failed condition, a missing secret) first
/// and hand the rest here. The text keeps the operation, the kind or error code, the HTTP
/// status and the service's message (never request data), for logs only: HTTP bodies
/// never carry it.
pub(crate) fn classify<E: ProvideErrorMetadata, R: HttpStatus>(
    what: &str,
    e: SdkError<E, R>,
) -> StoreError {
    let detail = describe(what, &e);
    match class_of_sdk(&e) {
        Class::Retryable => StoreError::Unavailable(detail),
        Class::Rejected => StoreError::Rejected(detail),
        Class::Misconfigured => StoreError::Misconfigured(detail),
    }
}

/// A conditional write's answer: `Ok(true)` written, `Ok(false)` refused by its own
/// condition (`ConditionalCheckFailedException`); any other error as [`classify`] says.
pub(crate) fn written<T, E: ProvideErrorMetadata, R: HttpStatus>(
    what: &str,
    res: Result<T, SdkError<E, R>>,
) -> Result<bool, StoreError> {
    match res {
        Ok(_) => Ok(true),
        Err(SdkError::ServiceError(e))
            if e.err().code() == Some("ConditionalCheckFailedException") =>
        {
            Ok(false)
        }
        Err(e) => Err(classify(what, e)),
    }
}

fn describe<E: ProvideErrorMetadata, R: HttpStatus>(what: &str, e: &SdkError<E, R>) -> String {
    let text = match e {
        SdkError::TimeoutError(_) => "timeout".to_owned(),
        SdkError::DispatchFailure(d) if d.is_io() => "dispatch failure (io)".to_owned(),
        SdkError::DispatchFailure(d) if d.is_timeout() => "dispatch failure (timeout)".to_owned(),
        SdkError::DispatchFailure(d) if d.is_user() => "dispatch failure (invalid request)".into(),
        SdkError::DispatchFailure(_) => "dispatch failure".to_owned(),
        SdkError::ConstructionFailure(_) => "request not built".to_owned(),
        SdkError::ResponseError(r) => {
            format!("unreadable response (http {})", r.raw().http_status())
        }
        SdkError::ServiceError(s) => format!(
            "{} (http {}): {}",
            e.code().unwrap_or("unknown error"),
            s.raw().http_status(),
            e.message().unwrap_or("")
        ),
        _ => "unknown sdk error".to_owned(),
    };
    let text: String = text.chars().take(200).collect();
    format!("{what}: {text}")
}

#[cfg(test)]
mod tests {
    use aws_sdk_dynamodb::error::{ConnectorError, ErrorMetadata};
    use aws_sdk_dynamodb::operation::get_item::GetItemError;

    use super::*;

    struct Status(u16);
    impl HttpStatus for Status {
        fn http_status(&self) -> u16 {
            self.0
        }
    }

    fn answered(code: &str, status: u16) -> SdkError<GetItemError, Status> {
        let meta = ErrorMetadata::builder()
            .code(code)
            .message("the service says why")
            .build();
        SdkError::service_error(GetItemError::generic(meta), Status(status))
    }

    #[test]
    fn throttling_and_server_errors_are_retried() {
        for (code, status) in [
            ("ProvisionedThroughputExceededException", 400),
            ("ThrottlingException", 400),
            ("RequestLimitExceeded", 400),
            ("TransactionInProgressException", 400),
            ("TransactionConflictException", 400),
            ("RequestThrottled", 403),
            ("KmsThrottled", 400),
            ("InternalServerError", 500),
            ("ServiceUnavailable", 503),
            ("SomethingNew", 502),
            ("SomethingNew", 429),
        ] {
            assert_eq!(
                class_of(Some(code), Some(status)),
                Class::Retryable,
                "{code}"
            );
        }
        assert_eq!(class_of(None, Some(500)), Class::Retryable);
        assert_eq!(class_of(None, None), Class::Retryable);
    }

    #[test]
    fn a_validation_error_is_not_retried() {
        let e = classify("dynamodb put", answered("ValidationException", 400));
        assert!(matches!(e, StoreError::Rejected(_)), "{e:?}");
        assert!(!e.is_retryable());
    }

    #[test]
    fn other_client_errors_are_rejected_not_retried() {
        for code in [
            "ValidationException",
            "SerializationException",
            "ItemCollectionSizeLimitExceededException",
            "ConditionalCheckFailedException",
            "ReceiptHandleIsInvalid",
            "InvalidRequestException",
            "SomethingNew",
        ] {
            assert_eq!(class_of(Some(code), Some(400)), Class::Rejected, "{code}");
        }
        assert_eq!(class_of(None, Some(413)), Class::Rejected);
    }

    #[test]
    fn access_denied_and_missing_resources_are_misconfiguration_not_retried() {
        for code in [
            "AccessDeniedException",
            "AccessDenied",
            "ResourceNotFoundException",
            "QueueDoesNotExist",
            "AWS.SimpleQueueService.NonExistentQueue",
            "UnrecognizedClientException",
            "KmsAccessDenied",
        ] {
            let e = classify("op", answered(code, 400));
            assert!(matches!(e, StoreError::Misconfigured(_)), "{code}: {e:?}");
            assert!(!e.is_retryable());
        }
        // Forbidden or unauthorised with no code the SDK could read.
        for status in [401, 403] {
            assert_eq!(
                class_of(None, Some(status)),
                Class::Misconfigured,
                "{status}"
            );
            assert_eq!(
                class_of(Some("SomethingNew"), Some(status)),
                Class::Misconfigured
            );
        }
    }

    #[test]
    fn timeouts_and_network_failures_are_retried() {
        let timeout = SdkError::<GetItemError, Status>::timeout_error("slow");
        assert_eq!(class_of_sdk(&timeout), Class::Retryable);
        let io = SdkError::<GetItemError, Status>::dispatch_failure(ConnectorError::io(
            "connection reset".into(),
        ));
        assert_eq!(class_of_sdk(&io), Class::Retryable);
        let connect_timeout = SdkError::<GetItemError, Status>::dispatch_failure(
            ConnectorError::timeout("connect".into()),
        );
        assert_eq!(class_of_sdk(&connect_timeout), Class::Retryable);
        let garbled = SdkError::<GetItemError, Status>::response_error("truncated", Status(200));
        assert_eq!(class_of_sdk(&garbled), Class::Retryable);
        assert!(classify("op", io).is_retryable());
    }

    #[test]
    fn a_request_that_cannot_be_built_or_sent_as_is_is_rejected() {
        let unbuilt = SdkError::<GetItemError, Status>::construction_failure("missing field");
        assert_eq!(class_of_sdk(&unbuilt), Class::Rejected);
        let invalid = SdkError::<GetItemError, Status>::dispatch_failure(ConnectorError::user(
            "bad uri".into(),
        ));
        assert_eq!(class_of_sdk(&invalid), Class::Rejected);
        let refused = SdkError::<GetItemError, Status>::response_error("html", Status(400));
        assert_eq!(class_of_sdk(&refused), Class::Rejected);
        // Forbidden, in a body the SDK could not read: this process's grants.
        let forbidden = SdkError::<GetItemError, Status>::response_error("html", Status(403));
        assert_eq!(class_of_sdk(&forbidden), Class::Misconfigured);
    }

    #[test]
    fn the_detail_names_the_operation_code_and_status() {
        let e = classify("dynamodb get", answered("ValidationException", 400));
        assert_eq!(
            e.to_string(),
            "backend rejected the request: dynamodb get: ValidationException (http 400): \
             the service says why"
        );
    }
}
