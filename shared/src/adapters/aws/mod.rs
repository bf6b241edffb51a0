//! AWS adapters: DynamoDB (one table, see docs/data-model.md), SQS and Secrets Manager.
//! No AWS SDK type leaves this module: errors become `StoreError`.

mod dynamodb;
mod secrets_manager;
mod sqs;
mod users;

pub use dynamodb::{keys, DynamoStore};
pub use secrets_manager::SecretsManagerStore;
pub use sqs::SqsQueue;

use crate::error::StoreError;

/// Maps any SDK error to a retryable `Unavailable`, keeping only its kind for logs
/// (never request data).
pub(crate) fn unavailable<E: std::fmt::Debug>(what: &str, e: E) -> StoreError {
    let text = format!("{e:?}");
    let kind: String = text.chars().take(160).collect();
    StoreError::Unavailable(format!("{what}: {kind}"))
}
