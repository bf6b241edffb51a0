//! What the AWS SDK signs reaches AWS as it was signed. The SDK's HTTP client is our own
//! (`kirim::adapters::aws::http`, on reqwest): a header it dropped, added to the signed
//! set, re-encoded or re-cased, or a body it changed, would pass every other moto test
//! (moto ignores signatures by default) and fail every call on real AWS with
//! `InvalidSignatureException`. Here a moto server of its own runs with IAM authentication
//! on: it recomputes every request's SigV4 signature from what arrived (botocore's signer)
//! and refuses a mismatch, and refuses keys it never issued.
//!
//! The credentials are an IAM user's, made in the first three requests (moto's
//! unauthenticated window, `/moto-api/reset-auth`), then every call is checked. The SDK
//! configuration is the one a Lambda builds (`wiring::lambda_sdk_config`, from Lambda's
//! variables), so what is checked is what a function sends.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kirim::adapters::aws::KmsDataKeys;
use kirim::config::EnvReader;
use kirim::domain::TenantId;
use kirim::ports::{DataKeys, DispatchQueue, KeyContext, MessageQuery, TenantStore};
use kirim::secret::Secret;
use kirim::store_error::StoreError;
use kirim_tests::moto_auth_endpoint;
use tokio::sync::OnceCell;

use super::contract::{aws_on, message, onboarded};

/// The IAM user every test here signs as, made once per test process: moto's
/// unauthenticated window is the server's, so it is opened once, for these three calls.
static USER: OnceCell<(String, String)> = OnceCell::const_new();

async fn iam_user(moto: &str) -> (String, String) {
    USER.get_or_init(|| async {
        let http = reqwest::Client::new();
        let opened = http
            .post(format!("{moto}/moto-api/reset-auth"))
            .header("content-type", "text/plain")
            .body("3")
            .send()
            .await
            .expect("moto answers");
        assert!(opened.status().is_success(), "reset-auth: {opened:?}");
        // Unsigned IAM query calls: moto routes them by the credential scope's service and
        // checks nothing until the window's three calls are made.
        let iam = |params: Vec<(&'static str, String)>| {
            let http = http.clone();
            async move {
                let response = http
                    .post(format!("{moto}/"))
                    .header(
                        "authorization",
                        "AWS4-HMAC-SHA256 Credential=setup/20260101/us-east-1/iam/aws4_request, \
                         SignedHeaders=host, Signature=0",
                    )
                    .form(&params)
                    .send()
                    .await
                    .expect("moto answers");
                let status = response.status();
                let body = response.text().await.expect("a body");
                assert!(status.is_success(), "IAM {params:?}: {status} {body}");
                body
            }
        };
        let user = format!("kirim-{}", ulid::Ulid::new());
        let v = || ("Version", "2010-05-08".to_owned());
        iam(vec![("Action", "CreateUser".into()), ("UserName", user.clone()), v()]).await;
        iam(vec![
            ("Action", "PutUserPolicy".into()),
            ("UserName", user.clone()),
            ("PolicyName", "everything".into()),
            (
                "PolicyDocument",
                r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}"#
                    .into(),
            ),
            v(),
        ])
        .await;
        let key = iam(vec![("Action", "CreateAccessKey".into()), ("UserName", user), v()]).await;
        let field = |name: &str| {
            let open = format!("<{name}>");
            let start = key.find(&open).expect("the field") + open.len();
            let end = key[start..].find('<').expect("its end") + start;
            key[start..end].to_owned()
        };
        (field("AccessKeyId"), field("SecretAccessKey"))
    })
    .await
    .clone()
}

/// The SDK configuration a Lambda builds from its variables, on moto with `key`.
fn lambda_config(moto: &str, (id, secret): &(String, String)) -> aws_config::SdkConfig {
    let vars: HashMap<&str, String> = HashMap::from([
        ("AWS_REGION", "us-east-1".to_owned()),
        ("AWS_ACCESS_KEY_ID", id.clone()),
        ("AWS_SECRET_ACCESS_KEY", secret.clone()),
        ("AWS_ENDPOINT_URL", moto.to_owned()),
    ]);
    let mut env = EnvReader::new(|k: &str| vars.get(k).cloned());
    let sdk = kirim::wiring::lambda_sdk_config(&mut env);
    env.finish().expect("every variable given");
    sdk
}

#[tokio::test]
async fn every_kind_of_aws_call_a_function_makes_arrives_with_its_signature_intact() {
    let moto = moto_auth_endpoint().await;
    let user = iam_user(&moto).await;
    let sdk = lambda_config(&moto, &user);

    // The stack's tables, queues and secrets made by signed calls, then the adapters'.
    let (p, _, _) = aws_on(&sdk).await;

    // DynamoDB: a transaction, a conditional update, gets and a query; names and bodies
    // beyond ASCII, whose bytes and characters differ in number (a Content-Length or a
    // body hash taken over the wrong one fails the signature).
    let t = onboarded(&p, 5).await;
    let (mut m, d) = message(&p, &t.id, 3600);
    m.client_reference = Some("pesanan-ñ-✓".into());
    p.messages
        .insert_with_debit(&m, &d)
        .await
        .expect("signed transaction");
    assert_eq!(
        p.messages
            .get_message(&t.id, &m.id)
            .await
            .expect("signed get"),
        Some(m.clone())
    );
    let page = p
        .messages
        .list_messages(
            &t.id,
            &MessageQuery {
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .expect("signed query");
    assert_eq!(page.messages.len(), 1);
    assert_eq!(
        p.tenants
            .get_tenant(&t.id)
            .await
            .expect("signed get")
            .map(|t| t.credits),
        Some(4)
    );

    // SQS: a batch with a delay, a long poll, a batch delete.
    let bodies: Vec<String> = (0..3)
        .map(|i| format!(r#"{{"n":{i},"s":"é ✓"}}"#))
        .collect();
    p.queue
        .send_batch_delayed(&bodies, Duration::ZERO)
        .await
        .expect("signed batch");
    let mut got = Vec::new();
    for _ in 0..10 {
        got.extend(
            p.queue
                .receive(10, Duration::from_millis(200))
                .await
                .expect("signed receive"),
        );
        if got.len() >= bodies.len() {
            break;
        }
    }
    let mut seen: Vec<String> = got.iter().map(|r| r.body.clone()).collect();
    seen.sort();
    assert_eq!(seen, bodies);
    let receipts: Vec<String> = got.into_iter().map(|r| r.receipt).collect();
    p.queue
        .delete_batch(&receipts)
        .await
        .expect("signed delete");

    // Secrets Manager: a new secret, read back; a path with slashes in its name.
    let name = format!("kirim-signed/{}/tenants/x/meta-token", ulid::Ulid::new());
    let value = Secret::new("EAAG-ñ-token".to_owned());
    p.secrets
        .store()
        .put_secret(&name, &value)
        .await
        .expect("signed put");
    let back = p
        .secrets
        .store()
        .get_secret(&name)
        .await
        .expect("signed get");
    assert_eq!(
        back.map(|s| s.expose().to_owned()),
        Some("EAAG-ñ-token".to_owned())
    );

    // KMS: a key, a data key under an encryption context, unwrapped again.
    let kms = aws_sdk_kms::Client::new(&sdk);
    let meta = kms
        .create_key()
        .send()
        .await
        .expect("signed create key")
        .key_metadata
        .expect("its metadata");
    let keys = KmsDataKeys::new(kms, meta.arn().expect("its arn"));
    let context = KeyContext::totp_seed(&TenantId::from_trusted("t_signed"), "u_1");
    let dk = keys.generate(&context).await.expect("signed generate");
    let plain = keys
        .unwrap(&dk.wrapped, &context)
        .await
        .expect("signed decrypt")
        .expect("its own context");
    assert_eq!(plain.expose(), dk.plain.expose());
}

#[tokio::test]
async fn a_call_signed_with_the_wrong_secret_is_refused_as_a_misconfiguration_not_retried() {
    let moto = moto_auth_endpoint().await;
    let (id, secret) = iam_user(&moto).await;
    // The right key id with another secret: the signature cannot match.
    let forged = lambda_config(&moto, &(id, format!("{secret}x")));
    let store = kirim::adapters::aws::DynamoStore::new(
        aws_sdk_dynamodb::Client::new(&forged),
        "any-table",
        Arc::new(kirim::ports::SystemClock),
    );
    let err = store
        .get_tenant(&TenantId::generate())
        .await
        .expect_err("a forged signature");
    assert!(matches!(err, StoreError::Misconfigured(_)), "{err:?}");
    assert!(!err.is_retryable());
    // A key id moto never issued.
    let unknown = lambda_config(&moto, &("AKIAUNKNOWN000000000".into(), "x".into()));
    let queue = kirim::adapters::aws::SqsQueue::new(
        aws_sdk_sqs::Client::new(&unknown),
        format!("{moto}/123456789012/any-queue"),
        None,
    );
    let err = queue.send("{}").await.expect_err("an unknown key");
    assert!(matches!(err, StoreError::Misconfigured(_)), "{err:?}");
}
