//! DynamoDB transactions (TransactWriteItems) and what a cancelled one means.
//!
//! A cancelled transaction wrote nothing and answers one reason per item, in request
//! order. They are parsed here, once, into [`CancelReason`]s; each call site decides what
//! its items' reasons mean (which item's failed condition is "insufficient credits" and
//! which is "already exists"), and hands every other failure to
//! [`TransactError::into_store_error`].

use std::fmt;

use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder;
use aws_sdk_dynamodb::operation::update_item::{UpdateItemError, UpdateItemOutput};
use aws_sdk_dynamodb::types::TransactWriteItem;

use super::super::classify;
use super::DynamoStore;
use crate::store_error::StoreError;

/// Why DynamoDB cancelled a transaction, for one of its items (`CancellationReason.Code`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum CancelReason {
    /// This item was fine: another one cancelled the transaction.
    None,
    /// This item's condition expression was false.
    ConditionalCheckFailed,
    /// Another transaction in flight touched this item: a retry may succeed.
    TransactionConflict,
    /// Capacity exceeded: a retry later may succeed.
    ProvisionedThroughputExceeded,
    ThrottlingError,
    /// The request for this item is invalid (too large, bad expression, wrong key type).
    ValidationError,
    /// A local secondary index's item collection is full.
    ItemCollectionSizeLimitExceeded,
    /// A code this adapter does not know yet.
    Other(String),
}

impl CancelReason {
    pub(crate) fn parse(code: Option<&str>) -> Self {
        match code {
            None | Some("None") => Self::None,
            Some("ConditionalCheckFailed") => Self::ConditionalCheckFailed,
            Some("TransactionConflict") => Self::TransactionConflict,
            Some("ProvisionedThroughputExceeded") => Self::ProvisionedThroughputExceeded,
            Some("ThrottlingError") => Self::ThrottlingError,
            Some("ValidationError") => Self::ValidationError,
            Some("ItemCollectionSizeLimitExceeded") => Self::ItemCollectionSizeLimitExceeded,
            Some(other) => Self::Other(other.to_owned()),
        }
    }

    /// A request that DynamoDB will refuse again, however often it is sent.
    fn is_rejection(&self) -> bool {
        matches!(
            self,
            Self::ValidationError | Self::ItemCollectionSizeLimitExceeded
        )
    }
}

impl fmt::Display for CancelReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let code = match self {
            Self::None => "None",
            Self::ConditionalCheckFailed => "ConditionalCheckFailed",
            Self::TransactionConflict => "TransactionConflict",
            Self::ProvisionedThroughputExceeded => "ProvisionedThroughputExceeded",
            Self::ThrottlingError => "ThrottlingError",
            Self::ValidationError => "ValidationError",
            Self::ItemCollectionSizeLimitExceeded => "ItemCollectionSizeLimitExceeded",
            Self::Other(code) => code,
        };
        f.write_str(code)
    }
}

/// How a transaction failed.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum TransactError {
    /// DynamoDB judged the items and cancelled: nothing was written. One reason per item,
    /// in request order.
    Cancelled(Vec<CancelReason>),
    /// The request failed before its items were judged (already classified).
    Store(StoreError),
}

impl TransactError {
    /// The reason of the item at `index`, if the transaction was cancelled.
    pub(crate) fn reason(&self, index: usize) -> Option<&CancelReason> {
        match self {
            Self::Cancelled(reasons) => reasons.get(index),
            Self::Store(_) => None,
        }
    }

    /// Whether the transaction was cancelled with `reason` on any item.
    pub(crate) fn any(&self, reason: CancelReason) -> bool {
        matches!(self, Self::Cancelled(reasons) if reasons.contains(&reason))
    }

    /// A failure the call site gives no meaning of its own. A cancellation is rejected when
    /// an item was invalid and retryable otherwise (throttling, conflicts, and reasons no
    /// call site expected, as before typed reasons).
    pub(crate) fn into_store_error(self) -> StoreError {
        match self {
            Self::Store(e) => e,
            Self::Cancelled(reasons) => {
                let detail = format!(
                    "dynamodb transaction cancelled: {}",
                    reasons
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(",")
                );
                if reasons.iter().any(CancelReason::is_rejection) {
                    StoreError::Rejected(detail)
                } else {
                    StoreError::Unavailable(detail)
                }
            }
        }
    }
}

/// How many more times a write cancelled by a transaction in flight on its item goes again.
const CONFLICT_RETRIES: u64 = 6;

/// `write`, tried again (up to [`CONFLICT_RETRIES`] more times, 10–70 ms apart plus jitter)
/// while `conflicted` says a transaction in flight on one of its items (usually a send's
/// debit of the tenant item) cancelled it. Only a conflict is retried: DynamoDB wrote
/// nothing then, so the next try is judged afresh and a conditional write's refusal is its
/// own, not a shadow of an earlier try. Any other answer, a refusal included, is the
/// caller's.
pub(crate) async fn retrying_conflicts<T, E, F, Fut>(
    mut write: F,
    conflicted: impl Fn(&E) -> bool,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut result = write().await;
    for attempt in 0..CONFLICT_RETRIES {
        match &result {
            Err(e) if conflicted(e) => {
                let jitter = rand::random::<u64>() % 20;
                tokio::time::sleep(std::time::Duration::from_millis(
                    10 * (attempt + 1) + jitter,
                ))
                .await;
                result = write().await;
            }
            _ => break,
        }
    }
    result
}

/// One `UpdateItem`, tried again as [`retrying_conflicts`] says when it answers
/// `TransactionConflictException` (which the SDK does not retry): for a plain write on the
/// tenant item, which every send's debit transaction holds for a moment.
pub(crate) async fn update_retrying_conflicts(
    req: UpdateItemFluentBuilder,
) -> Result<UpdateItemOutput, SdkError<UpdateItemError, HttpResponse>> {
    retrying_conflicts(
        || req.clone().send(),
        |e: &SdkError<UpdateItemError, HttpResponse>| {
            matches!(e, SdkError::ServiceError(se) if se.err().is_transaction_conflict_exception())
        },
    )
    .await
}

impl DynamoStore {
    /// `transact`, tried again when concurrent transactions on the same item (usually the
    /// tenant's balance) cancelled it with `TransactionConflict`: nothing was written then.
    pub(crate) async fn transact_retrying_conflicts(
        &self,
        items: Vec<TransactWriteItem>,
    ) -> Result<(), TransactError> {
        retrying_conflicts(
            || self.transact(items.clone()),
            |e: &TransactError| e.any(CancelReason::TransactionConflict),
        )
        .await
    }

    /// One TransactWriteItems call. A cancellation answers each item's reason, in request
    /// order, for the caller to give a meaning to; any other failure is classified.
    pub(crate) async fn transact(
        &self,
        items: Vec<TransactWriteItem>,
    ) -> Result<(), TransactError> {
        match self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => match e.as_service_error() {
                Some(TransactWriteItemsError::TransactionCanceledException(c)) => {
                    Err(TransactError::Cancelled(
                        c.cancellation_reasons()
                            .iter()
                            .map(|r| CancelReason::parse(r.code()))
                            .collect(),
                    ))
                }
                _ => Err(TransactError::Store(classify("dynamodb transact", e))),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cancelled(codes: &[&str]) -> TransactError {
        TransactError::Cancelled(codes.iter().map(|c| CancelReason::parse(Some(c))).collect())
    }

    #[test]
    fn each_code_dynamodb_documents_parses_to_its_reason_and_prints_back() {
        for code in [
            "None",
            "ConditionalCheckFailed",
            "TransactionConflict",
            "ProvisionedThroughputExceeded",
            "ThrottlingError",
            "ValidationError",
            "ItemCollectionSizeLimitExceeded",
            "SomethingNew",
        ] {
            let reason = CancelReason::parse(Some(code));
            assert_eq!(reason.to_string(), code);
        }
        assert_eq!(CancelReason::parse(None), CancelReason::None);
        assert_eq!(
            CancelReason::parse(Some("SomethingNew")),
            CancelReason::Other("SomethingNew".into())
        );
    }

    #[test]
    fn a_reason_is_read_by_item_position() {
        let e = cancelled(&["ConditionalCheckFailed", "None"]);
        assert_eq!(e.reason(0), Some(&CancelReason::ConditionalCheckFailed));
        assert_eq!(e.reason(1), Some(&CancelReason::None));
        assert_eq!(e.reason(2), None);
        assert!(e.any(CancelReason::ConditionalCheckFailed));
        assert!(!e.any(CancelReason::TransactionConflict));
        let failed = TransactError::Store(StoreError::Unavailable("timeout".into()));
        assert_eq!(failed.reason(0), None);
        assert!(!failed.any(CancelReason::ConditionalCheckFailed));
    }

    #[test]
    fn a_cancellation_for_an_invalid_item_is_not_retried() {
        let e = cancelled(&["None", "ValidationError"]).into_store_error();
        assert!(matches!(e, StoreError::Rejected(_)), "{e:?}");
        assert!(!e.is_retryable());
        let full = cancelled(&["ItemCollectionSizeLimitExceeded"]).into_store_error();
        assert!(!full.is_retryable());
    }

    #[test]
    fn a_cancellation_by_conflict_or_throttling_is_retried() {
        for codes in [
            &["TransactionConflict", "None"][..],
            &["ThrottlingError"],
            &["ProvisionedThroughputExceeded", "None"],
        ] {
            let e = cancelled(codes).into_store_error();
            assert!(e.is_retryable(), "{codes:?}");
        }
        assert_eq!(
            cancelled(&["None", "TransactionConflict"])
                .into_store_error()
                .to_string(),
            "storage unavailable: dynamodb transaction cancelled: None,TransactionConflict"
        );
    }

    #[test]
    fn a_failed_request_keeps_its_class() {
        let e = TransactError::Store(StoreError::Misconfigured("no table".into()));
        assert_eq!(
            e.into_store_error(),
            StoreError::Misconfigured("no table".into())
        );
    }
}
