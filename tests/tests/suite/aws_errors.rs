//! The AWS adapters keep an error's class from the SDK up: what a retry cannot fix
//! (a missing table or queue, an invalid request) is not retryable. AWS only: these are
//! the real SDK's answers from moto.

use std::sync::Arc;

use kirim::adapters::aws::{DynamoStore, SqsQueue};
use kirim::domain::TenantId;
use kirim::ports::{DispatchQueue, TenantStore};
use kirim::store_error::StoreError;
use kirim_tests::{moto_sdk, unique_stack, ManualClock};

use super::contract::{aws, key_for, onboarded, tenant};

#[tokio::test]
async fn a_table_that_does_not_exist_is_a_misconfiguration_not_retried() {
    let sdk = moto_sdk().await;
    let store = DynamoStore::new(
        aws_sdk_dynamodb::Client::new(&sdk),
        format!("{}-NoSuchTable", unique_stack()),
        ManualClock::new(),
    );
    let err = store
        .get_tenant(&TenantId::generate())
        .await
        .expect_err("no such table");
    assert!(matches!(err, StoreError::Misconfigured(_)), "{err:?}");
    assert!(!err.is_retryable());
    // A transaction against it too, with no cancellation reasons to read.
    let t = tenant(0);
    let err = store
        .create_tenant(&t, &key_for(&t), None)
        .await
        .expect_err("no such table");
    assert!(!err.is_retryable(), "{err:?}");
}

#[tokio::test]
async fn a_validation_error_is_not_retried() {
    let p = aws().await;
    let t = onboarded(&p, 0).await;
    // An item over DynamoDB's 400 KB limit.
    let huge: Vec<String> = (0..30_000).map(|i| format!("10.{i}.0.0/16")).collect();
    let err = p
        .tenants
        .set_ip_allowlist(&t.id, &huge)
        .await
        .expect_err("over 400 KB");
    assert!(matches!(err, StoreError::Rejected(_)), "{err:?}");
    assert!(!err.is_retryable());
    // Inside a transaction as well (whether DynamoDB answers a ValidationException or a
    // cancellation with a ValidationError reason).
    let mut big = tenant(0);
    big.ip_allowlist = huge;
    let err = p
        .tenants
        .create_tenant(&big, &key_for(&big), None)
        .await
        .expect_err("over 400 KB");
    assert!(matches!(err, StoreError::Rejected(_)), "{err:?}");
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn a_queue_that_does_not_exist_is_a_misconfiguration_not_retried() {
    let sdk = moto_sdk().await;
    let stack = kirim_infra::bootstrap::ensure_stack(&sdk, &unique_stack())
        .await
        .expect("stack in moto");
    let real = stack.queue_url("DispatchQueue").expect("queue");
    let gone = real.replace("DispatchQueue", "NoSuchQueue");
    let queue: Arc<dyn DispatchQueue> =
        Arc::new(SqsQueue::new(aws_sdk_sqs::Client::new(&sdk), gone, None));
    let err = queue.send("{}").await.expect_err("no such queue");
    assert!(matches!(err, StoreError::Misconfigured(_)), "{err:?}");
    assert!(!err.is_retryable());
}
