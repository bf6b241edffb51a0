//! The AWS adapters keep an error's class from the SDK up: what a retry cannot fix
//! (a missing table or queue, an invalid request) is not retryable. AWS only: these are
//! the real SDK's answers from moto.

use std::sync::Arc;

use kirim::adapters::aws::{DynamoStore, SqsQueue};
use kirim::domain::TenantId;
use kirim::ports::{Clock, DispatchQueue, TenantStore};
use kirim::store_error::StoreError;
use kirim_tests::{moto_sdk, unique_stack, ManualClock};

use super::contract::{aws, key_for, onboarded, tenant};

/// A store on an SDK configuration pointed at a scripted server (the table's name is
/// whatever that server answers for).
fn store_on(sdk: &aws_config::SdkConfig) -> DynamoStore {
    DynamoStore::new(
        aws_sdk_dynamodb::Client::new(sdk),
        "Table",
        ManualClock::new(),
    )
}

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

/// The dispatch queue of a scripted SQS at `url`.
async fn scripted_queue(url: &str) -> SqsQueue {
    let sdk = kirim_infra::local::emulator_sdk_config(Some(url)).await;
    SqsQueue::new(
        aws_sdk_sqs::Client::new(&sdk),
        format!("{url}/000000000000/DispatchQueue"),
        None,
    )
}

/// A stand-in for SQS's `SendMessageBatch` that notes each call's entry ids and answers with
/// `refuse(call, id)`: `Some(sender_fault)` refuses that entry, `None` takes it. A refusal
/// of entry `"7"` names entry `"70"` instead (an id the call never sent).
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
                        "Id": if id == "7" { "70" } else { id },
                        "SenderFault": sender_fault, "Code": "InternalError",
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
    (serve(app).await, calls)
}

#[tokio::test]
async fn a_batch_entry_sqs_refused_on_its_side_is_sent_again_alone_and_one_refused_as_ours_is_not()
{
    let bodies: Vec<String> = (0..3).map(|i| format!("job-{i}")).collect();
    // SQS's side (an internal error) for entry 1 on the first call: only it goes again.
    let (url, calls) = scripted_sqs(|call, id| (call == 1 && id == "1").then_some(false)).await;
    let queue = scripted_queue(&url).await;
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
    let queue = scripted_queue(&url).await;
    let err = queue
        .send_batch_delayed(&bodies, std::time::Duration::from_secs(3))
        .await
        .expect_err("refused");
    assert!(matches!(err, StoreError::Rejected(_)), "{err:?}");
    assert_eq!(calls.lock().unwrap().len(), 1);

    // Each body answered: one refused as ours fails alone, one refused on SQS's side is
    // sent again alone and taken, the third was taken at once.
    let (url, calls) = scripted_sqs(|call, id| match (call, id) {
        (_, "1") => Some(true),
        (1, "2") => Some(false),
        _ => None,
    })
    .await;
    let queue = scripted_queue(&url).await;
    let each = queue
        .send_batch_delayed_each(&bodies, std::time::Duration::from_secs(3))
        .await;
    assert_eq!(each.len(), 3);
    assert_eq!(each[0], Ok(()));
    assert!(matches!(each[1], Err(StoreError::Rejected(_))), "{each:?}");
    assert_eq!(each[2], Ok(()));
    assert_eq!(
        calls.lock().unwrap().clone(),
        vec![vec!["0", "1", "2"], vec!["2"]]
    );

    // Refused on SQS's side twice: an error to retry, after the one resend, naming the
    // chunk's size.
    let (url, calls) = scripted_sqs(|_, id| (id == "0").then_some(false)).await;
    let queue = scripted_queue(&url).await;
    let err = queue
        .send_batch_delayed(&bodies, std::time::Duration::from_secs(3))
        .await
        .expect_err("refused twice");
    assert!(err.is_retryable(), "{err:?}");
    assert!(err.to_string().contains("1 of 3 refused"), "{err}");
    assert_eq!(
        calls.lock().unwrap().clone(),
        vec![vec!["0", "1", "2"], vec!["0"]]
    );
}

#[tokio::test]
async fn a_batch_refusal_naming_an_entry_never_sent_fails_the_batch_rather_than_guess() {
    let bodies: Vec<String> = (0..8).map(|i| format!("job-{i}")).collect();
    // Entry 7's refusal names "70": which entry is unqueued is unknown, so none is sent
    // again alone (nor does anything panic); the caller's retry sends the batch again.
    let (url, calls) = scripted_sqs(|call, id| (call == 1 && id == "7").then_some(false)).await;
    let queue = scripted_queue(&url).await;
    let err = queue
        .send_batch_delayed(&bodies, std::time::Duration::ZERO)
        .await
        .expect_err("unknown entry");
    assert!(err.is_retryable(), "{err:?}");
    assert_eq!(calls.lock().unwrap().len(), 1, "no resend of a guess");
}

/// Serves a stand-in AWS endpoint on loopback; its URL.
async fn serve(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let addr = listener.local_addr().expect("its address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

/// A stand-in KMS answering every call `400` with `code`.
async fn kms_answering(code: &'static str) -> kirim::adapters::aws::KmsDataKeys {
    let app = axum::Router::new().fallback(move || async move {
        (
            axum::http::StatusCode::BAD_REQUEST,
            [("content-type", "application/x-amz-json-1.1")],
            format!(r#"{{"__type":"{code}","message":"refused"}}"#),
        )
    });
    let url = serve(app).await;
    let sdk = kirim_infra::local::emulator_sdk_config(Some(&url)).await;
    kirim::adapters::aws::KmsDataKeys::new(aws_sdk_kms::Client::new(&sdk), "alias/seed")
}

/// A key KMS will not use (disabled, pending deletion) is the operator's matter, as at
/// `GenerateDataKey`: the unwrap fails (a 500), not "the value does not open", which a
/// login answers as a wrong code and counts against the user's address. A ciphertext KMS
/// refuses is a value that does not open.
#[tokio::test]
async fn a_disabled_seed_key_is_a_misconfiguration_and_a_refused_ciphertext_does_not_open() {
    use kirim::ports::{DataKeys, KeyContext};
    let context = KeyContext::totp_seed(&kirim::domain::TenantId::generate(), "u1");
    for code in [
        "DisabledException",
        "KMSInvalidStateException",
        "InvalidKeyUsageException",
    ] {
        let answer = kms_answering(code).await.unwrap(b"wrapped", &context).await;
        assert!(
            matches!(answer, Err(StoreError::Misconfigured(_))),
            "{code}: {answer:?}"
        );
    }
    for code in [
        "InvalidCiphertextException",
        "IncorrectKeyException",
        "AccessDeniedException",
    ] {
        let answer = kms_answering(code).await.unwrap(b"wrapped", &context).await;
        assert!(matches!(answer, Ok(None)), "{code}: {answer:?}");
    }
}

/// A stand-in DynamoDB whose first call of `operation` (of any, without one) is answered
/// `status` with `body`, and every other call `{}`; it counts the calls of `operation`.
async fn dynamodb_refusing_first(
    operation: Option<&'static str>,
    status: axum::http::StatusCode,
    body: &'static str,
) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    dynamodb_refusing_first_then(operation, status, body, "{}".into()).await
}

/// [`dynamodb_refusing_first`], answering `then` to every other call.
async fn dynamodb_refusing_first_then(
    operation: Option<&'static str>,
    status: axum::http::StatusCode,
    body: &'static str,
    then: String,
) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let then: Arc<str> = then.into();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let app = axum::Router::new().fallback(move |headers: axum::http::HeaderMap| {
        let counts = operation.is_none_or(|op| {
            headers
                .get("x-amz-target")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|t| t.strip_suffix(op).is_some_and(|t| t.ends_with('.')))
        });
        let call = if counts {
            counted.fetch_add(1, Ordering::SeqCst) + 1
        } else {
            0
        };
        let then = then.clone();
        async move {
            let (status, body) = if call == 1 {
                (status, body.to_owned())
            } else {
                (axum::http::StatusCode::OK, then.to_string())
            };
            (
                status,
                [("content-type", "application/x-amz-json-1.0")],
                body,
            )
        }
    });
    (serve(app).await, calls)
}

/// A stand-in DynamoDB that answers `500 InternalServerError` to its first call and an
/// empty `GetItem` after, counting calls.
async fn dynamodb_failing_once() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    dynamodb_refusing_first(
        None,
        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
        r#"{"__type":"com.amazonaws.dynamodb.v20120810#InternalServerError","message":"scripted"}"#,
    )
    .await
}

/// The SDK closes a connection after a transient answer only through its own HTTP client;
/// ours cannot, and says so (`http::retry_config`), or every 5xx would also log an ERROR
/// line ("unable to mark the connection for closure") to CloudWatch.
#[tokio::test]
async fn a_transient_aws_answer_is_retried_without_an_error_line_about_its_connection() {
    kirim_tests::capture_logs();
    let (url, calls) = dynamodb_failing_once().await;
    let sdk = kirim_infra::local::emulator_sdk_config(Some(&url)).await;
    let store = store_on(&sdk);
    let found = store
        .get_tenant(&TenantId::generate())
        .await
        .expect("answered on the retry");
    assert_eq!(found, None);
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
    let logs = kirim_tests::captured_logs();
    assert!(
        !logs.contains("unable to mark the connection"),
        "an error line about the connection: {logs}"
    );
}

/// A response whose headers came and whose body stopped: the SDK's stalled-stream
/// protection (on by default) fails the attempt, as with the SDK's own client, instead of
/// the call waiting for the Lambda's timeout. (Its grace period, 5 s by default, is 1 s
/// here, and one attempt.)
#[tokio::test]
async fn a_response_body_that_stops_arriving_fails_its_attempt_instead_of_hanging() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stalled = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let url = format!("http://{}", stalled.local_addr().expect("its address"));
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut socket, _)) = stalled.accept().await {
            let mut buf = vec![0u8; 64 * 1024];
            let _ = socket.read(&mut buf).await;
            let _ = socket
                .write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/x-amz-json-1.0\r\n\
                      content-length: 100\r\n\r\n{",
                )
                .await;
            held.push(socket);
        }
    });
    let sdk = kirim_infra::local::emulator_sdk_config(Some(&url))
        .await
        .to_builder()
        .stalled_stream_protection(
            aws_config::stalled_stream_protection::StalledStreamProtectionConfig::enabled()
                .grace_period(std::time::Duration::from_secs(1))
                .build(),
        )
        .retry_config(kirim::adapters::aws::http::retry_config().with_max_attempts(1))
        .build();
    let store = store_on(&sdk);
    let answer = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        store.get_tenant(&TenantId::generate()),
    )
    .await
    .expect("the attempt failed, it did not hang");
    let err = answer.expect_err("a stalled body");
    assert!(err.is_retryable(), "{err:?}");
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

/// An answer that takes its time (here 4 s, past the 1 s grace period and 1 s window the
/// test gives the SDK's stalled-stream protection; on Lambda 5 s) is waited for: the
/// request's body was read to its end, so the SDK does not take the wait for a stalled
/// upload and cut the call as a timeout.
#[tokio::test]
async fn a_slow_answer_is_waited_for_not_cut_as_a_stalled_upload() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let app = axum::Router::new().fallback(move || {
        counted.fetch_add(1, Ordering::SeqCst);
        async move {
            tokio::time::sleep(std::time::Duration::from_secs(4)).await;
            ([("content-type", "application/x-amz-json-1.0")], "{}")
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let url = format!("http://{}", listener.local_addr().expect("its address"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    let sdk = kirim_infra::local::emulator_sdk_config(Some(&url))
        .await
        .to_builder()
        .stalled_stream_protection(
            aws_config::stalled_stream_protection::StalledStreamProtectionConfig::enabled()
                .grace_period(std::time::Duration::from_secs(1))
                .build(),
        )
        .build();
    let store = store_on(&sdk);
    let found = store
        .get_tenant(&TenantId::generate())
        .await
        .expect("the slow answer");
    assert_eq!(found, None);
    assert_eq!(calls.load(Ordering::SeqCst), 1, "one attempt, not cut");
}

/// An `https` endpoint is spoken to in TLS: the first bytes on the wire are a TLS
/// handshake record (a ClientHello), not a plain HTTP request, whatever build features
/// decide which TLS stack reqwest links. (Nothing here reaches AWS; the certificate check
/// is rustls's, against the roots compiled in.)
#[tokio::test]
async fn an_https_aws_endpoint_is_spoken_to_in_tls() {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let url = format!("https://{}", listener.local_addr().expect("its address"));
    let first = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.expect("a connection");
        let mut head = [0u8; 6];
        socket.read_exact(&mut head).await.expect("its first bytes");
        head
        // Dropped: the handshake fails and the call with it.
    });
    let sdk = kirim_infra::local::emulator_sdk_config(Some(&url))
        .await
        .to_builder()
        .retry_config(kirim::adapters::aws::http::retry_config().with_max_attempts(1))
        .build();
    let store = store_on(&sdk);
    let err = store
        .get_tenant(&TenantId::generate())
        .await
        .expect_err("no TLS server there");
    assert!(err.is_retryable(), "{err:?}");
    let head = first.await.expect("the listener");
    // A handshake record (22), TLS 1.x (3, _), then a ClientHello (1) after the length.
    assert_eq!((head[0], head[1], head[5]), (0x16, 0x03, 0x01), "{head:?}");
}

/// An `https` endpoint whose certificate no trusted root signed (here one made at test
/// time for `localhost`) is refused in the handshake: the AWS client checks certificates
/// against the roots compiled in, and sends nothing over a connection it does not trust.
#[tokio::test]
async fn an_aws_endpoint_with_a_certificate_no_trusted_root_signed_is_refused() {
    use std::sync::Arc;
    let made =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("a certificate");
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(made.key_pair.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_no_client_auth()
    .with_single_cert(vec![made.cert.der().clone()], key)
    .expect("a server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let port = listener.local_addr().expect("its address").port();
    let handshake = tokio::spawn(async move {
        let (socket, _) = listener.accept().await.expect("a connection");
        acceptor
            .accept(socket)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
    let url = format!("https://localhost:{port}");
    let sdk = kirim_infra::local::emulator_sdk_config(Some(&url))
        .await
        .to_builder()
        .retry_config(kirim::adapters::aws::http::retry_config().with_max_attempts(1))
        .build();
    let store = store_on(&sdk);
    store
        .get_tenant(&TenantId::generate())
        .await
        .expect_err("an untrusted certificate");
    let refused = handshake
        .await
        .expect("the listener")
        .expect_err("the client broke off the handshake");
    eprintln!("REFUSED {refused}");
    assert!(
        refused.to_lowercase().contains("unknown")
            || refused.to_lowercase().contains("certificate"),
        "{refused}"
    );
}

/// A stand-in DynamoDB whose first `TransactWriteItems` is cancelled for a conflict with
/// another transaction on its first item (as a send's debit on the tenant item is), and
/// whose later ones succeed; it counts them.
async fn dynamodb_conflicting_once() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    dynamodb_refusing_first(
        Some("TransactWriteItems"),
        axum::http::StatusCode::BAD_REQUEST,
        CANCELLED_BY_A_CONFLICT,
    )
    .await
}

/// Every send debits the tenant item in a transaction, so a write of the tenant's own
/// that meets one is cancelled with nothing written: removing a number and switching the
/// default go again, as the send's own debit does, instead of answering 503.
#[tokio::test]
async fn a_number_change_cancelled_by_a_sends_debit_goes_again() {
    use kirim::ports::{PhoneNumberRecord, PhoneNumberStore};
    let (url, calls) = dynamodb_conflicting_once().await;
    let sdk = kirim_infra::local::emulator_sdk_config(Some(&url)).await;
    let store = store_on(&sdk);
    let t = TenantId::generate();
    store
        .remove_phone_number(&t, "106540352242922")
        .await
        .expect("removed on the second try");
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);

    let (url, calls) = dynamodb_conflicting_once().await;
    let sdk = kirim_infra::local::emulator_sdk_config(Some(&url)).await;
    let store = store_on(&sdk);
    let number = PhoneNumberRecord {
        tenant_id: t.clone(),
        phone_number_id: "106540352242922".into(),
        waba_id: "1000001".into(),
        display_phone_number: None,
        quality: kirim::domain::TemplateQuality::Unknown,
        throughput_per_sec: None,
        added_at: chrono::Utc::now(),
        quality_meta_at: None,
        throughput_meta_at: None,
        hold: None,
        resumed_at_ms: None,
    };
    store
        .set_default_number(&t, &number)
        .await
        .expect("switched on the second try");
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
}

/// Every write that names the tenant item, as the tenant-open check of a key, a number, a
/// setting or a user does, meets the sends' debits there: cancelled by one (nothing
/// written), it goes again instead of answering 503.
#[tokio::test]
async fn a_write_checking_the_tenant_cancelled_by_a_sends_debit_goes_again() {
    use kirim::ports::{
        ApiKeyStore, PhoneNumberRecord, PhoneNumberStore, StatusCallback, StatusCallbackStore,
        UserRecord, UserStore,
    };
    let t = tenant(0);
    let number = PhoneNumberRecord {
        tenant_id: t.id.clone(),
        phone_number_id: "106540352242922".into(),
        waba_id: "1000001".into(),
        display_phone_number: None,
        quality: kirim::domain::TemplateQuality::Unknown,
        throughput_per_sec: None,
        added_at: chrono::Utc::now(),
        quality_meta_at: None,
        throughput_meta_at: None,
        hold: None,
        resumed_at_ms: None,
    };
    let callback = StatusCallback {
        tenant_id: t.id.clone(),
        url: "https://example.com/status".into(),
        secret_name: "s".into(),
        secret_version: None,
        updated_at: chrono::Utc::now(),
    };
    let user = UserRecord {
        id: kirim::domain::new_id(),
        tenant_id: t.id.clone(),
        email: "u@example.com".into(),
        role: kirim::domain::Role::Operator,
        password_hash: "$argon2id$not-a-real-hash".into(),
        totp_secret: None,
        totp_confirmed: false,
        last_totp_step: 0,
        created_at: chrono::Utc::now(),
        password_version: 0,
    };
    let mut not_again = Vec::new();
    for write in [
        "put_api_key",
        "add_phone_number",
        "put_phone_number_if_absent",
        "put_status_callback",
        "set_status_callback_url",
        "create_user",
        "set_two_factor_required",
    ] {
        let (url, calls) = dynamodb_conflicting_once().await;
        let sdk = kirim_infra::local::emulator_sdk_config(Some(&url)).await;
        let store = store_on(&sdk);
        let done = match write {
            "put_api_key" => store.put_api_key(&key_for(&t)).await,
            "add_phone_number" => store.add_phone_number(&number).await,
            "put_phone_number_if_absent" => {
                store.put_phone_number_if_absent(&number).await.map(|_| ())
            }
            "put_status_callback" => store.put_status_callback(&callback).await,
            "set_status_callback_url" => store
                .set_status_callback_url(&t.id, &callback.url, callback.updated_at)
                .await
                .map(|_| ()),
            "create_user" => store.create_user(&user).await,
            _ => store.set_two_factor_required(&t.id, true).await,
        };
        let calls = calls.load(std::sync::atomic::Ordering::SeqCst);
        if done.is_err() || calls != 2 {
            not_again.push(format!("{write}: {done:?} after {calls} calls"));
        }
    }
    assert!(not_again.is_empty(), "{not_again:#?}");
}

/// `t` as DynamoDB answers its item (`ReturnValues: ALL_NEW`): strings and numbers, the
/// rest (none, an empty list) absent.
fn tenant_attributes(t: &kirim::ports::Tenant) -> String {
    let serde_json::Value::Object(fields) = serde_json::to_value(t).expect("a tenant as JSON")
    else {
        panic!("a tenant is an object");
    };
    let item: serde_json::Map<String, serde_json::Value> = fields
        .into_iter()
        .filter_map(|(k, v)| match v {
            serde_json::Value::String(s) => Some((k, serde_json::json!({ "S": s }))),
            serde_json::Value::Number(n) => Some((k, serde_json::json!({ "N": n.to_string() }))),
            _ => None,
        })
        .collect();
    serde_json::json!({ "Attributes": item }).to_string()
}

/// A plain `UpdateItem` on the tenant item that meets a send's debit transaction there is
/// answered `TransactionConflictException` (nothing written; the SDK does not retry it):
/// the operator's changes of a tenant (status, Meta's suspension, throughput, limits,
/// allow-list) go again instead of answering 503.
#[tokio::test]
async fn a_tenant_update_cancelled_by_a_sends_debit_goes_again() {
    use kirim::ports::{TenantStatus, Throughput};
    let mut t = tenant(0);
    t.status = TenantStatus::Suspended;
    let mut not_again = Vec::new();
    for write in [
        "set_status",
        "suspend_if_unchanged",
        "set_throughput",
        "set_request_limits",
        "set_ip_allowlist",
    ] {
        let (url, calls) = dynamodb_refusing_first_then(
            Some("UpdateItem"),
            axum::http::StatusCode::BAD_REQUEST,
            r#"{"__type":"com.amazonaws.dynamodb.v20120810#TransactionConflictException","message":"Transaction is ongoing for the item"}"#,
            tenant_attributes(&t),
        )
        .await;
        let sdk = kirim_infra::local::emulator_sdk_config(Some(&url)).await;
        let store = store_on(&sdk);
        let now = chrono::Utc::now();
        let done = match write {
            "set_status" => store
                .set_status(&t.id, TenantStatus::Suspended, Some("unpaid"), now)
                .await
                .map(|_| ()),
            "suspend_if_unchanged" => store
                .suspend_if_unchanged(&t.id, "meta says", now, None)
                .await
                .map(|s| assert!(s.is_some(), "suspended")),
            "set_throughput" => store.set_throughput(&t.id, 80).await.map(|_| ()),
            "set_request_limits" => store
                .set_request_limits(&t.id, kirim::domain::RequestLimits::DEFAULT)
                .await
                .map(|_| ()),
            _ => store.set_ip_allowlist(&t.id, &[]).await,
        };
        let calls = calls.load(std::sync::atomic::Ordering::SeqCst);
        if done.is_err() || calls != 2 {
            not_again.push(format!("{write}: {done:?} after {calls} calls"));
        }
    }
    assert!(not_again.is_empty(), "{not_again:#?}");
}

/// A stand-in DynamoDB for one sweep page: its `Scan` finds two expired idempotency
/// records; of their `DeleteItem`s, the one for `rewritten` is refused on its condition
/// (the record was used afresh after the scan read it, so its `ttl` moved on), the other
/// succeeds. It keeps each `DeleteItem` request's body.
async fn dynamodb_with_a_record_rewritten_after_the_scan(
    tenant: &TenantId,
    rewritten: &str,
    expired: &str,
) -> (String, Arc<std::sync::Mutex<Vec<serde_json::Value>>>) {
    let deletes = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = deletes.clone();
    let pk = format!("TENANT#{}", tenant.as_str());
    let (rewritten, expired) = (format!("IDEM#{rewritten}"), format!("IDEM#{expired}"));
    let app = axum::Router::new().fallback(
        move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
            let target = headers
                .get("x-amz-target")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let req: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let item = |sk: &str| {
                serde_json::json!({"pk": {"S": pk}, "sk": {"S": sk}, "ttl": {"N": "1000"}})
            };
            let (status, answer) = if target.ends_with(".Scan") {
                (
                    axum::http::StatusCode::OK,
                    serde_json::json!({"Items": [item(&rewritten), item(&expired)], "Count": 2, "ScannedCount": 2}),
                )
            } else if target.ends_with(".DeleteItem") {
                let refused = req["Key"]["sk"]["S"] == rewritten.as_str();
                seen.lock().unwrap().push(req);
                if refused {
                    (
                        axum::http::StatusCode::BAD_REQUEST,
                        serde_json::json!({"__type": "com.amazonaws.dynamodb.v20120810#ConditionalCheckFailedException", "message": "The conditional request failed"}),
                    )
                } else {
                    (axum::http::StatusCode::OK, serde_json::json!({}))
                }
            } else {
                (
                    axum::http::StatusCode::BAD_REQUEST,
                    serde_json::json!({"__type": "com.amazon.coral.validate#ValidationException", "message": "not scripted"}),
                )
            };
            async move {
                (
                    status,
                    [("content-type", "application/x-amz-json-1.0")],
                    answer.to_string(),
                )
            }
        },
    );
    (serve(app).await, deletes)
}

/// The sweep deletes an expired item only if it is still expired when the delete lands:
/// a record rewritten in place after the scan read it (an idempotency key used afresh) is
/// kept, and is not counted as deleted.
#[tokio::test]
async fn the_sweep_keeps_an_item_rewritten_after_its_scan_read_it_expired() {
    use kirim::ports::RetentionStore;
    let tenant = TenantId::generate();
    let (url, deletes) =
        dynamodb_with_a_record_rewritten_after_the_scan(&tenant, "used-again", "stale").await;
    let sdk = kirim_infra::local::emulator_sdk_config(Some(&url)).await;
    let store = store_on(&sdk);
    let now = chrono::DateTime::from_timestamp(2_000, 0).expect("a time");
    let page = store
        .sweep_page(now, None, 100)
        .await
        .expect("a refused delete is no error");
    assert_eq!(
        page.deleted.values().sum::<usize>(),
        1,
        "only the one still expired: {:?}",
        page.deleted
    );
    let deletes = deletes.lock().unwrap().clone();
    assert_eq!(deletes.len(), 2, "{deletes:?}");
    for d in &deletes {
        assert_eq!(d["ConditionExpression"], "#ttl <= :now", "{d}");
        assert_eq!(d["ExpressionAttributeValues"][":now"]["N"], "2000", "{d}");
    }
}

/// A redrive whose second batch SQS refuses: the first batch's jobs are on the source queue,
/// so they leave the dead-letter queue (moved once); the refused ones stay parked. (It
/// used to put every one back, the sent ones too, so the next redrive sent those again.)
#[tokio::test]
async fn a_redrive_refused_in_part_moves_what_was_sent_once_and_keeps_the_rest_parked() {
    use aws_sdk_sqs::types::QueueAttributeName as Q;
    use std::time::Duration;
    let sdk = moto_sdk().await;
    let stack = kirim_infra::bootstrap::ensure_stack(&sdk, &unique_stack())
        .await
        .expect("stack in moto");
    let url = stack.queue_url("DispatchQueue").expect("queue");
    let dlq = stack.queue_url("DispatchDeadLetterQueue").expect("dlq");
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let queue = SqsQueue::new(sqs.clone(), url.clone(), Some(dlq));
    // Ten small jobs and one of 2 KiB, parked after their receives.
    let big = "x".repeat(2048);
    for i in 0..10 {
        queue.send(&format!("small-{i}")).await.expect("sent");
    }
    queue.send(&big).await.expect("sent");
    let mut parked = 0;
    for _ in 0..40 {
        let got = queue
            .receive(10, Duration::from_millis(200))
            .await
            .expect("received");
        for m in got {
            queue
                .retry_after(&m.receipt, Duration::ZERO)
                .await
                .expect("released");
        }
        parked = queue.dead_letters(20).await.expect("listed").len();
        if parked == 11 {
            break;
        }
    }
    assert_eq!(parked, 11);
    // The source now refuses bodies over 1 KiB: the batch holding the big one is refused.
    sqs.set_queue_attributes()
        .queue_url(&url)
        .attributes(Q::MaximumMessageSize, "1024")
        .send()
        .await
        .expect("attributes");
    let first = queue.redrive(None, 100).await.expect("a part was moved");
    assert!(
        !first.moved.is_empty() && first.moved.len() < 11,
        "{first:?}"
    );
    assert!(first.more, "some are left");
    let mut arrived = Vec::new();
    loop {
        let got = queue
            .receive(10, Duration::from_millis(500))
            .await
            .expect("received");
        if got.is_empty() {
            break;
        }
        for m in got {
            queue.delete(&m.receipt).await.expect("deleted");
            arrived.push(m.body);
        }
    }
    assert_eq!(
        arrived.len(),
        first.moved.len(),
        "each moved one arrived once"
    );
    let parked = queue.dead_letters(20).await.expect("listed");
    assert_eq!(
        parked.len() + first.moved.len(),
        11,
        "none lost, none twice"
    );
    assert!(
        parked.iter().any(|d| d.body == big),
        "the refused one stays parked"
    );
}

/// A stand-in DynamoDB whose first `TransactWriteItems` answers `500` (as a transaction
/// that committed but whose answer was lost looks to the client) and every call after
/// `{}`; it keeps each `TransactWriteItems` body.
async fn dynamodb_losing_the_first_transact_answer(
) -> (String, Arc<std::sync::Mutex<Vec<serde_json::Value>>>) {
    let bodies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = bodies.clone();
    let app = axum::Router::new().fallback(
        move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
            let transact = headers
                .get("x-amz-target")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|t| t.ends_with(".TransactWriteItems"));
            let first = transact && {
                let mut b = seen.lock().unwrap();
                b.push(serde_json::from_slice(&body).unwrap_or_default());
                b.len() == 1
            };
            async move {
                let (status, body) = if first {
                    (
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                        r#"{"__type":"com.amazonaws.dynamodb.v20120810#InternalServerError","message":"scripted"}"#,
                    )
                } else {
                    (axum::http::StatusCode::OK, "{}")
                };
                (
                    status,
                    [("content-type", "application/x-amz-json-1.0")],
                    body,
                )
            }
        },
    );
    (serve(app).await, bodies)
}

/// A send's debit transaction whose answer is lost (a 5xx, a dropped connection) is sent
/// again by the SDK with the same `ClientRequestToken`, so DynamoDB answers the retry of a
/// transaction that committed with success (within 10 minutes) instead of refusing it on
/// its own conditions: a message recorded and charged is never answered as refused
/// (`402`/`409`) and then sent again by the client. (moto ignores the token; this checks
/// what the SDK sends.)
#[tokio::test]
async fn a_transaction_the_sdk_retries_carries_the_same_client_request_token() {
    let (url, bodies) = dynamodb_losing_the_first_transact_answer().await;
    let sdk = kirim_infra::local::emulator_sdk_config(Some(&url)).await;
    let store = store_on(&sdk);
    let t = tenant(5);
    let (m, debit) = super::contract::message_expiring(&t.id, chrono::Utc::now(), 3600);
    kirim::ports::MessageStore::insert_with_debit(&store, &m, &debit)
        .await
        .expect("answered on the retry");
    let bodies = bodies.lock().unwrap().clone();
    assert_eq!(bodies.len(), 2, "sent twice: {bodies:?}");
    let token = |b: &serde_json::Value| b["ClientRequestToken"].as_str().map(str::to_owned);
    assert!(
        token(&bodies[0]).is_some_and(|t| !t.is_empty()),
        "{}",
        bodies[0]
    );
    assert_eq!(token(&bodies[0]), token(&bodies[1]));
}

/// What a stand-in in front of moto ([`dynamodb_before_moto`]) does with the first call it
/// picks.
#[derive(Clone, Copy)]
enum FirstPicked {
    /// Passed to moto, which applies it; its answer is then lost: the client is answered
    /// `500` (as a write that landed but whose answer never came back looks to it), so the
    /// SDK sends it again.
    Landed,
    /// Not passed on: answered `400` with this body.
    Refused(&'static str),
}

/// The body DynamoDB answers a transaction cancelled for a conflict with another one in
/// flight on its first item (as a send's debit holds the tenant item).
const CANCELLED_BY_A_CONFLICT: &str = r#"{"__type":"com.amazonaws.dynamodb.v20120810#TransactionCanceledException","message":"Transaction cancelled, please refer cancellation reasons for specific reasons [TransactionConflict, None, None]","CancellationReasons":[{"Code":"TransactionConflict","Message":"Transaction is ongoing for the item"},{"Code":"None"},{"Code":"None"}]}"#;

/// The body DynamoDB answers a plain write that met a transaction in flight on its item.
const UPDATE_CONFLICT: &str = r#"{"__type":"com.amazonaws.dynamodb.v20120810#TransactionConflictException","message":"Transaction is ongoing for the item"}"#;

/// A stand-in DynamoDB in front of moto: every call is passed to moto and answered as moto
/// answers it, except the first that `picks` (its operation, its body) picks, which
/// `first` decides. It counts the picked calls.
async fn dynamodb_before_moto(
    picks: fn(&str, &serde_json::Value) -> bool,
    first: FirstPicked,
) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let moto = kirim_tests::moto_endpoint().await;
    let http = reqwest::Client::new();
    let picked = Arc::new(AtomicUsize::new(0));
    let counted = picked.clone();
    let app = axum::Router::new().fallback(
        move |uri: axum::http::Uri, headers: axum::http::HeaderMap, body: axum::body::Bytes| {
            let (http, moto, counted) = (http.clone(), moto.clone(), counted.clone());
            async move {
                let operation = headers
                    .get("x-amz-target")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|t| t.rsplit('.').next())
                    .unwrap_or_default()
                    .to_owned();
                let request: serde_json::Value =
                    serde_json::from_slice(&body).unwrap_or_default();
                let fate = picks(&operation, &request)
                    .then(|| counted.fetch_add(1, Ordering::SeqCst) == 0)
                    .and_then(|first_one| first_one.then_some(first));
                let json = |status: u16, body: String| {
                    (
                        axum::http::StatusCode::from_u16(status)
                            .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR),
                        [("content-type", "application/x-amz-json-1.0".to_owned())],
                        body,
                    )
                };
                if let Some(FirstPicked::Refused(answer)) = fate {
                    return json(400, answer.to_owned());
                }
                let path = uri.path_and_query().map_or("/", |p| p.as_str());
                let mut forward = http.post(format!("{moto}{path}")).body(body);
                for (name, value) in &headers {
                    if name != axum::http::header::HOST
                        && name != axum::http::header::CONTENT_LENGTH
                    {
                        forward = forward.header(name, value);
                    }
                }
                let answered = match forward.send().await {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let kind = r
                            .headers()
                            .get("content-type")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("application/x-amz-json-1.0")
                            .to_owned();
                        let text = r.text().await.unwrap_or_default();
                        let (s, _, b) = json(status, text);
                        (s, [("content-type", kind)], b)
                    }
                    Err(e) => json(502, format!(r#"{{"message":"moto: {e}"}}"#)),
                };
                match fate {
                    Some(FirstPicked::Landed) => json(
                        500,
                        r#"{"__type":"com.amazonaws.dynamodb.v20120810#InternalServerError","message":"scripted: the answer was lost"}"#.to_owned(),
                    ),
                    _ => answered,
                }
            }
        },
    );
    (serve(app).await, picked)
}

/// The status write on the tenant item (`set_status`'s change, `suspend_if_unchanged`).
fn a_status_change(operation: &str, request: &serde_json::Value) -> bool {
    operation == "UpdateItem"
        && request["Key"]["sk"]["S"] == "TENANT"
        && request["UpdateExpression"]
            .as_str()
            .is_some_and(|e| e.contains("status_changed_at"))
}

/// Meta's suspension whose first try landed and whose answer was lost: the SDK's retry is
/// refused by the very condition the first try met (`status_changed_at` as read). The
/// tenant is suspended, and it is answered so: the suspension is audited on the tenant's
/// chain (it used to be answered "not suspended", and `tenant.suspend` was missing).
/// A later suspension, refused because this one is there, is still not taken for its own.
#[tokio::test]
async fn metas_suspension_whose_answer_was_lost_is_answered_and_audited_as_applied() {
    use kirim::ports::TenantStatus;
    let (url, picked) = dynamodb_before_moto(a_status_change, FirstPicked::Landed).await;
    let sdk = kirim_infra::local::emulator_sdk_config(Some(&url)).await;
    let (p, _, _) = super::contract::aws_on(&sdk).await;
    let t = onboarded(&p, 0).await;
    let suspended = kirim::service::accounts::try_suspend_for_meta(
        &p,
        &t.id,
        "meta error 190",
        "dispatcher",
        None,
    )
    .await
    .expect("answered");
    assert_eq!(
        picked.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "the SDK sent the write again"
    );
    assert!(suspended, "reported not suspended");
    let stored = p.tenants.get_tenant(&t.id).await.unwrap().unwrap();
    assert_eq!(stored.status, TenantStatus::Suspended);
    let q = kirim::ports::AuditQuery {
        limit: 10,
        action: Some("tenant.suspend".into()),
        ..Default::default()
    };
    let (events, _) = p.audit.list(t.id.as_str(), &q).await.unwrap();
    assert_eq!(events.len(), 1, "{events:?}");

    let later = p.clock.now() + chrono::Duration::seconds(1);
    assert_eq!(
        p.tenants
            .suspend_if_unchanged(&t.id, "meta error 190", later, None)
            .await
            .unwrap(),
        None,
        "suspended by another call: not this one's"
    );
}

/// The number hold's write, or its resume's (`UpdateItem` on a `NUMBER#` item).
fn a_number_hold_change(operation: &str, request: &serde_json::Value) -> bool {
    operation == "UpdateItem"
        && request["Key"]["sk"]["S"]
            .as_str()
            .is_some_and(|k| k.starts_with("NUMBER#"))
        && request["UpdateExpression"]
            .as_str()
            .is_some_and(|e| e.contains("#hold"))
}

/// A number hold, and then its resume, whose first try landed and whose answer was lost:
/// the SDK's retry is refused by the very write that landed, and each is answered as
/// applied (the hold audited by its caller, the resume answered with the number sending),
/// not as "held already" / "not held".
#[tokio::test]
async fn a_number_hold_and_a_resume_whose_answers_were_lost_are_answered_as_applied() {
    for resume in [false, true] {
        let picks: fn(&str, &serde_json::Value) -> bool = if resume {
            |op, req| {
                a_number_hold_change(op, req)
                    && req["UpdateExpression"]
                        .as_str()
                        .is_some_and(|e| e.starts_with("REMOVE"))
            }
        } else {
            |op, req| {
                a_number_hold_change(op, req)
                    && req["UpdateExpression"]
                        .as_str()
                        .is_some_and(|e| e.starts_with("SET"))
            }
        };
        let (url, picked) = dynamodb_before_moto(picks, FirstPicked::Landed).await;
        let sdk = kirim_infra::local::emulator_sdk_config(Some(&url)).await;
        let (p, _, _) = super::contract::aws_on(&sdk).await;
        let t = onboarded(&p, 0).await;
        let hold = kirim::ports::NumberHold {
            code: 131048,
            reason: "Spam rate limit hit".into(),
            since: p.clock.now(),
            by: "dispatcher".into(),
        };
        let held = p
            .numbers
            .hold_phone_number(&t.id, &t.phone_number_id, &hold, p.clock.now())
            .await
            .expect("answered");
        assert!(held, "reported held already");
        if !resume {
            assert_eq!(picked.load(std::sync::atomic::Ordering::SeqCst), 2);
            // Another hold, refused because this one is there, is not taken for its own.
            let other = kirim::ports::NumberHold {
                reason: "another".into(),
                ..hold.clone()
            };
            assert!(!p
                .numbers
                .hold_phone_number(&t.id, &t.phone_number_id, &other, p.clock.now())
                .await
                .unwrap());
            continue;
        }
        let at = p.clock.now() + chrono::Duration::seconds(1);
        let resumed = p
            .numbers
            .resume_phone_number(&t.id, &t.phone_number_id, at)
            .await
            .expect("answered");
        assert_eq!(picked.load(std::sync::atomic::Ordering::SeqCst), 2);
        let n = resumed.expect("reported not held");
        assert_eq!(
            (n.hold, n.resumed_at_ms),
            (None, Some(at.timestamp_millis()))
        );
        // A later resume, of a number no longer held, is not taken for this one.
        assert_eq!(
            p.numbers
                .resume_phone_number(&t.id, &t.phone_number_id, at + chrono::Duration::seconds(1))
                .await
                .unwrap(),
            None
        );
    }
}

/// An operator's close whose first try landed and whose answer was lost: the SDK's retry
/// is refused (the tenant is closed), and the close is answered as this request's own,
/// not as a repeat of an earlier one (`tenant.close`, not `tenant.close_repeated`). A
/// later close is a repeat.
#[tokio::test]
async fn a_close_whose_answer_was_lost_is_answered_as_the_closing_not_as_a_repeat() {
    use kirim::ports::TenantStatus;
    let (url, picked) = dynamodb_before_moto(a_status_change, FirstPicked::Landed).await;
    let sdk = kirim_infra::local::emulator_sdk_config(Some(&url)).await;
    let (p, _, _) = super::contract::aws_on(&sdk).await;
    let t = onboarded(&p, 0).await;
    let (closed, already) = kirim::service::accounts::close(&p, &t.id, Some("bye".into()))
        .await
        .expect("answered");
    assert_eq!(
        picked.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "the SDK sent the write again"
    );
    assert!(!already, "answered as a repeat of an earlier close");
    assert_eq!(
        (
            closed.status,
            closed.status_reason.as_deref(),
            closed.status_changed_at
        ),
        (TenantStatus::Closed, Some("bye"), Some(p.clock.now()))
    );
    let (_, again) = kirim::service::accounts::close(&p, &t.id, Some("bye".into()))
        .await
        .expect("answered");
    assert!(again, "a later close is a repeat");
}

/// An API key's rotation cancelled by a send's debit on the tenant item (its tenant-open
/// check names it) wrote nothing, and goes again: the new key works and the old one is
/// marked replaced.
#[tokio::test]
async fn a_key_rotation_cancelled_by_a_sends_debit_goes_again() {
    use kirim::ports::ApiKeyStore;
    let (url, picked) = dynamodb_before_moto(
        |operation, _| operation == "TransactWriteItems",
        FirstPicked::Refused(CANCELLED_BY_A_CONFLICT),
    )
    .await;
    let (p, _, table) = super::contract::aws_and_table().await;
    let t = tenant(0);
    let old = key_for(&t);
    p.tenants.create_tenant(&t, &old, None).await.unwrap();
    let sdk = kirim_infra::local::emulator_sdk_config(Some(&url)).await;
    let store = DynamoStore::new(
        aws_sdk_dynamodb::Client::new(&sdk),
        table,
        ManualClock::new(),
    );
    let new = key_for(&t);
    let grace_end = chrono::Utc::now() + chrono::Duration::hours(1);
    store
        .rotate_api_key(&t.id, &old.id, &new, grace_end)
        .await
        .expect("rotated on the second try");
    assert_eq!(picked.load(std::sync::atomic::Ordering::SeqCst), 2);
    let replaced = p
        .api_keys
        .get_api_key(&t.id, &old.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(replaced.replaced_by.as_deref(), Some(new.id.as_str()));
    assert!(p
        .tenants
        .api_key_by_hash(&new.key_hash)
        .await
        .unwrap()
        .is_some());
}

/// The close-out's last write, the tenant item's TTL and `closed_out_at`, cancelled by a
/// refund's transaction in flight on the tenant item, wrote nothing, and goes again: the
/// tenant is marked closed out.
#[tokio::test]
async fn the_close_outs_last_write_cancelled_by_a_transaction_on_the_tenant_goes_again() {
    use kirim::ports::{CloseOutTtls, RetentionStore, TenantStatus};
    let (url, picked) = dynamodb_before_moto(
        |operation, request| {
            operation == "UpdateItem"
                && request["UpdateExpression"]
                    .as_str()
                    .is_some_and(|e| e.contains("closed_out_at"))
        },
        FirstPicked::Refused(UPDATE_CONFLICT),
    )
    .await;
    let (p, _, table) = super::contract::aws_and_table().await;
    let t = onboarded(&p, 0).await;
    let now = p.clock.now();
    p.tenants
        .set_status(&t.id, TenantStatus::Closed, Some("bye"), now)
        .await
        .unwrap();
    let sdk = kirim_infra::local::emulator_sdk_config(Some(&url)).await;
    let store = DynamoStore::new(
        aws_sdk_dynamodb::Client::new(&sdk),
        table,
        ManualClock::new(),
    );
    let ttls = CloseOutTtls {
        tenant: now.timestamp() + 100,
        config: now.timestamp() + 10,
        audit_head: now.timestamp() + 10,
    };
    let far = std::time::Instant::now() + std::time::Duration::from_secs(60);
    store
        .close_out(&t.id, ttls, now, far)
        .await
        .expect("closed out on the second try");
    assert_eq!(picked.load(std::sync::atomic::Ordering::SeqCst), 2);
    assert!(
        p.retention.closed_out_at(&t.id).await.unwrap().is_some(),
        "marked closed out"
    );
}

/// A write of a user item (`UpdateItem` on a `USER#` item) whose update sets `attribute`.
fn a_user_update_setting(request: &serde_json::Value, attribute: &str) -> bool {
    request["Key"]["sk"]["S"]
        .as_str()
        .is_some_and(|k| k.starts_with("USER#"))
        && request["UpdateExpression"]
            .as_str()
            .is_some_and(|e| e.contains(attribute))
}

/// A user's password change whose first try landed and whose answer was lost: the SDK's
/// retry is refused by the very write that landed (the hash is no longer the old one), and
/// the change is answered as applied — not as "changed meanwhile" (`409`) with the new
/// password in effect — with `password_version` moved on once.
#[tokio::test]
async fn a_password_change_whose_answer_was_lost_is_answered_as_applied() {
    let (url, picked) = dynamodb_before_moto(
        |op, req| op == "UpdateItem" && a_user_update_setting(req, "password_hash"),
        FirstPicked::Landed,
    )
    .await;
    let sdk = kirim_infra::local::emulator_sdk_config(Some(&url)).await;
    let (p, _, _) = super::contract::aws_on(&sdk).await;
    let t = onboarded(&p, 0).await;
    let u = super::contract_users::user(&p, &t, &super::contract_users::email());
    p.users.create_user(&u).await.expect("created");
    let changed = p
        .users
        .set_password(&t.id, &u.id, &u.password_hash, "$argon2id$new-salted")
        .await
        .expect("answered");
    assert_eq!(picked.load(std::sync::atomic::Ordering::SeqCst), 2);
    assert!(changed, "reported changed meanwhile");
    let stored = p.users.get_user(&t.id, &u.id).await.unwrap().unwrap();
    assert_eq!(stored.password_version, 1);
    // Another change over the old hash, refused because this one is there, is not taken
    // for its own.
    assert!(!p
        .users
        .set_password(&t.id, &u.id, &u.password_hash, "$argon2id$another")
        .await
        .unwrap());
}

/// A 2FA confirmation whose first try landed and whose answer was lost: the SDK's retry is
/// refused by the very write that landed (2FA is on), and it is answered as confirmed — not
/// as a wrong code (`400`, counted against the user) with 2FA on.
#[tokio::test]
async fn a_totp_confirmation_whose_answer_was_lost_is_answered_as_confirmed() {
    let (url, picked) = dynamodb_before_moto(
        |op, req| op == "UpdateItem" && a_user_update_setting(req, "totp_confirmed"),
        FirstPicked::Landed,
    )
    .await;
    let sdk = kirim_infra::local::emulator_sdk_config(Some(&url)).await;
    let (p, _, _) = super::contract::aws_on(&sdk).await;
    let t = onboarded(&p, 0).await;
    let u = super::contract_users::user(&p, &t, &super::contract_users::email());
    p.users.create_user(&u).await.expect("created");
    p.users
        .set_pending_totp(&t.id, &u.id, "SECRETONE")
        .await
        .expect("pending");
    let confirmed = p
        .users
        .confirm_totp(&t.id, &u.id, "SECRETONE", 100)
        .await
        .expect("answered");
    assert_eq!(picked.load(std::sync::atomic::Ordering::SeqCst), 2);
    assert!(confirmed, "reported a wrong code");
    let stored = p.users.get_user(&t.id, &u.id).await.unwrap().unwrap();
    assert!(stored.totp_confirmed);
    assert_eq!(stored.last_totp_step, 100);
}

/// A role change whose first try landed and whose answer was lost: the SDK's retry finds
/// the new role there already, and the change still answers the role it replaced (the
/// audit's `previous_role`), not the role it set; a later change answers the role before
/// it as usual.
#[tokio::test]
async fn a_role_change_whose_answer_was_lost_answers_the_role_it_replaced() {
    let (url, picked) = dynamodb_before_moto(
        |op, req| op == "UpdateItem" && a_user_update_setting(req, "#role"),
        FirstPicked::Landed,
    )
    .await;
    let sdk = kirim_infra::local::emulator_sdk_config(Some(&url)).await;
    let (p, _, _) = super::contract::aws_on(&sdk).await;
    let t = onboarded(&p, 0).await;
    let u = super::contract_users::user(&p, &t, &super::contract_users::email());
    p.users.create_user(&u).await.expect("created");
    let previous = p
        .users
        .set_user_role(&t.id, &u.id, kirim::domain::Role::Admin)
        .await
        .expect("answered");
    assert_eq!(picked.load(std::sync::atomic::Ordering::SeqCst), 2);
    assert_eq!(previous, Some(kirim::domain::Role::Operator));
    assert_eq!(
        p.users.get_user(&t.id, &u.id).await.unwrap().unwrap().role,
        kirim::domain::Role::Admin
    );
    assert_eq!(
        p.users
            .set_user_role(&t.id, &u.id, kirim::domain::Role::ReadOnly)
            .await
            .unwrap(),
        Some(kirim::domain::Role::Admin)
    );
    assert_eq!(
        p.users
            .set_user_role(&t.id, "ghost", kirim::domain::Role::ReadOnly)
            .await
            .unwrap(),
        None
    );
}
