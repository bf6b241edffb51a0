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

/// A stand-in for SQS's `SendMessageBatch` that notes each call's entry ids and answers with
/// `refuse(call, id)`: `Some(sender_fault)` refuses that entry, `None` takes it.
async fn scripted_sqs(
    refuse: fn(usize, &str) -> Option<bool>,
) -> (String, Arc<std::sync::Mutex<Vec<Vec<String>>>>) {
    let calls: Arc<std::sync::Mutex<Vec<Vec<String>>>> = Arc::default();
    let noted = calls.clone();
    let app = axum::Router::new().fallback(move |body: String| {
        let noted = noted.clone();
        async move {
            let request: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let ids: Vec<String> = request["Entries"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|e| e["Id"].as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            let call = {
                let mut calls = noted.lock().unwrap();
                calls.push(ids.clone());
                calls.len()
            };
            let (mut ok, mut failed) = (Vec::new(), Vec::new());
            for id in &ids {
                match refuse(call, id) {
                    Some(sender_fault) => failed.push(serde_json::json!({
                        "Id": id, "SenderFault": sender_fault, "Code": "InternalError",
                        "Message": "scripted"
                    })),
                    None => ok.push(serde_json::json!({
                        "Id": id, "MessageId": format!("m-{call}-{id}"),
                        "MD5OfMessageBody": "00000000000000000000000000000000"
                    })),
                }
            }
            (
                [("content-type", "application/x-amz-json-1.0")],
                serde_json::json!({ "Successful": ok, "Failed": failed }).to_string(),
            )
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let addr = listener.local_addr().expect("its address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), calls)
}

#[tokio::test]
async fn a_batch_entry_sqs_refused_on_its_side_is_sent_again_alone_and_one_refused_as_ours_is_not()
{
    let bodies: Vec<String> = (0..3).map(|i| format!("job-{i}")).collect();
    // SQS's side (an internal error) for entry 1 on the first call: only it goes again.
    let (url, calls) = scripted_sqs(|call, id| (call == 1 && id == "1").then_some(false)).await;
    let sdk = kirim_infra::local::emulator_sdk_config(Some(&url)).await;
    let queue = SqsQueue::new(
        aws_sdk_sqs::Client::new(&sdk),
        format!("{url}/000000000000/DispatchQueue"),
        None,
    );
    queue
        .send_batch_delayed(&bodies, std::time::Duration::from_secs(3))
        .await
        .expect("queued on the second call");
    assert_eq!(
        calls.lock().unwrap().clone(),
        vec![vec!["0", "1", "2"], vec!["1"]],
        "the refused entry alone, the others not twice"
    );

    // Refused as the sender's fault: the same again would be refused, so not tried again.
    let (url, calls) = scripted_sqs(|_, id| (id == "2").then_some(true)).await;
    let sdk = kirim_infra::local::emulator_sdk_config(Some(&url)).await;
    let queue = SqsQueue::new(
        aws_sdk_sqs::Client::new(&sdk),
        format!("{url}/000000000000/DispatchQueue"),
        None,
    );
    let err = queue
        .send_batch_delayed(&bodies, std::time::Duration::from_secs(3))
        .await
        .expect_err("refused");
    assert!(matches!(err, StoreError::Rejected(_)), "{err:?}");
    assert_eq!(calls.lock().unwrap().len(), 1);
}

/// The SDK's HTTP client (reqwest, `adapters/aws/http.rs`) keeps the SDK's error classes:
/// an endpoint nothing listens on, and one that takes the connection and never answers
/// (with the SDK's read timeout set), are failures a retry can get past, not a
/// misconfiguration and not a hang.
#[tokio::test]
async fn an_aws_endpoint_that_refuses_or_never_answers_is_retryable_not_a_hang() {
    let queue_at = |sdk: &aws_config::SdkConfig, url: &str| {
        SqsQueue::new(
            aws_sdk_sqs::Client::new(sdk),
            format!("{url}/000000000000/DispatchQueue"),
            None,
        )
    };
    // Nothing listening: the port was free a moment ago.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
        l.local_addr().expect("its address")
    };
    let url = format!("http://{closed}");
    let sdk = kirim_infra::local::emulator_sdk_config(Some(&url)).await;
    let err = queue_at(&sdk, &url).send("{}").await.expect_err("refused");
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");

    // Silent: connections taken and held, never answered.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let url = format!("http://{}", silent.local_addr().expect("its address"));
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let sdk = kirim_infra::local::emulator_sdk_config(Some(&url))
        .await
        .to_builder()
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .read_timeout(std::time::Duration::from_millis(200))
                .build(),
        )
        .build();
    let err = queue_at(&sdk, &url)
        .send("{}")
        .await
        .expect_err("timed out");
    assert!(err.is_retryable(), "{err:?}");
    assert!(err.to_string().contains("timeout"), "{err}");
}
