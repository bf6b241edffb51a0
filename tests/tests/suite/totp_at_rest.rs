//! TOTP seeds at rest, on both backends: the user item holds the seed sealed
//! (`v1:<nonce>:<ciphertext>`, AES-256-GCM under the TOTP key), never the base32 seed;
//! a plain seed stored before sealing still works and is sealed on its next use; a
//! tampered one fails closed.

use kirim::adapters::aws::keys;
use kirim::config::Backend;
use kirim::domain::TenantId;
use kirim_tests::{spawn_app, TestApp};
use serde_json::{json, Value};
use totp_rs::{Algorithm, TOTP};

use super::access::{call, code};
use super::users::{login_ok, new_user, PASSWORD};

fn totp(secret: &str) -> TOTP {
    let bytes = totp_rs::Secret::Encoded(secret.to_owned())
        .to_bytes()
        .unwrap();
    TOTP::new(Algorithm::SHA1, 6, 1, 30, bytes, None, "test".into()).unwrap()
}

fn now_secs() -> u64 {
    chrono::Utc::now().timestamp() as u64
}

/// The user's stored `totp_secret` and the whole stored item as text: on the aws backend
/// read with the AWS SDK straight from the table, on the memory backend from the store.
async fn stored(app: &TestApp, b: Backend, tenant: &str, id: &str) -> (String, String) {
    let tenant = TenantId::from_trusted(tenant);
    match b {
        Backend::Aws => {
            let sdk = kirim_tests::moto_sdk().await;
            let item = aws_sdk_dynamodb::Client::new(&sdk)
                .get_item()
                .table_name(format!("{}-Table", app.stack))
                .set_key(Some(keys::user(&tenant, id).attrs()))
                .consistent_read(true)
                .send()
                .await
                .unwrap()
                .item
                .unwrap();
            let secret = item["totp_secret"].as_s().unwrap().clone();
            (secret, format!("{item:?}"))
        }
        Backend::Memory => {
            let user = app
                .app
                .deps
                .users
                .get_user(&tenant, id)
                .await
                .unwrap()
                .unwrap();
            let all = serde_json::to_string(&user).unwrap();
            (user.totp_secret.unwrap(), all)
        }
    }
}

/// Writes `new` as the stored secret in place of `old`, as an older release (plain) or an
/// attacker with table access (tampered) would have left it.
async fn overwrite(app: &TestApp, tenant: &str, id: &str, old: &str, new: &str) {
    let tenant = TenantId::from_trusted(tenant);
    assert!(app
        .app
        .deps
        .users
        .reseal_totp(&tenant, id, old, new)
        .await
        .unwrap());
}

async fn login(app: &TestApp, email: &str, totp_code: &str) -> (u16, Value) {
    let body = json!({"email": email, "password": PASSWORD, "totp_code": totp_code});
    call(app, "POST", "/v1/auth/login", None, Some(body)).await
}

async fn enroll(app: &TestApp, token: &str) -> String {
    let (s, e) = call(app, "POST", "/v1/auth/2fa/enroll", Some(token), None).await;
    assert_eq!(s, 200, "{e}");
    e["secret"].as_str().unwrap().to_owned()
}

async fn confirm(app: &TestApp, token: &str, seed: &str) {
    let body = json!({"totp_code": totp(seed).generate(now_secs())});
    let (s, b) = call(app, "POST", "/v1/auth/2fa/confirm", Some(token), Some(body)).await;
    assert_eq!(s, 200, "{b}");
}

fn assert_sealed(secret: &str, item: &str, seed: &str) {
    assert!(secret.starts_with("v1:"), "not sealed: {secret}");
    assert!(!item.contains(seed), "the seed is in the stored item");
}

async fn an_enrolled_seed_is_stored_sealed_and_a_login_with_its_code_still_works(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let (email, id) = new_user(&app, &t.key, "admin").await;
    let token = login_ok(&app, &email).await;
    let seed = enroll(&app, &token).await;

    let (pending, item) = stored(&app, b, &t.tenant_id, &id).await;
    assert_sealed(&pending, &item, &seed);
    confirm(&app, &token, &seed).await;
    let (confirmed, item) = stored(&app, b, &t.tenant_id, &id).await;
    assert_sealed(&confirmed, &item, &seed);
    assert_eq!(confirmed, pending, "confirming keeps the sealed seed");

    let (s, body) = login(&app, &email, &totp(&seed).generate(now_secs() + 30)).await;
    assert_eq!(s, 200, "{body}");
    assert!(!body.to_string().contains(&seed));
}

async fn a_plain_seed_stored_before_sealing_still_confirms_and_logs_in_and_is_sealed_again(
    b: Backend,
) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let (email, id) = new_user(&app, &t.key, "admin").await;
    let token = login_ok(&app, &email).await;
    let seed = enroll(&app, &token).await;

    // A pending seed from before sealing: confirmation works and seals it.
    let (sealed, _) = stored(&app, b, &t.tenant_id, &id).await;
    overwrite(&app, &t.tenant_id, &id, &sealed, &seed).await;
    confirm(&app, &token, &seed).await;
    let (after_confirm, item) = stored(&app, b, &t.tenant_id, &id).await;
    assert_sealed(&after_confirm, &item, &seed);

    // A confirmed seed from before sealing: login works and seals it.
    overwrite(&app, &t.tenant_id, &id, &after_confirm, &seed).await;
    let (s, body) = login(&app, &email, &totp(&seed).generate(now_secs() + 30)).await;
    assert_eq!(s, 200, "{body}");
    let (after_login, item) = stored(&app, b, &t.tenant_id, &id).await;
    assert_sealed(&after_login, &item, &seed);
}

async fn a_tampered_sealed_seed_refuses_the_login_with_the_usual_401_and_no_seed(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let (email, id) = new_user(&app, &t.key, "admin").await;
    let token = login_ok(&app, &email).await;
    let seed = enroll(&app, &token).await;
    confirm(&app, &token, &seed).await;

    let (sealed, _) = stored(&app, b, &t.tenant_id, &id).await;
    // One bit of the ciphertext flipped (its first base64 character: 6 whole bits).
    let (head, ciphertext) = sealed.rsplit_once(':').unwrap();
    let flipped = if ciphertext.starts_with('A') {
        "B"
    } else {
        "A"
    };
    let tampered = format!("{head}:{flipped}{}", &ciphertext[1..]);
    overwrite(&app, &t.tenant_id, &id, &sealed, &tampered).await;

    let (wrong_s, wrong) = login(&app, &email, "000000").await;
    let (s, body) = login(&app, &email, &totp(&seed).generate(now_secs() + 30)).await;
    assert_eq!((s, code(&body)), (401, "totp_required"), "{body}");
    assert_eq!((wrong_s, code(&wrong)), (401, "totp_required"), "{wrong}");
    assert!(!body.to_string().contains(&seed));
    // A refusal rewrites nothing.
    let (still, _) = stored(&app, b, &t.tenant_id, &id).await;
    assert_eq!(still, tampered);
}

on_both_backends!(
    an_enrolled_seed_is_stored_sealed_and_a_login_with_its_code_still_works,
    a_plain_seed_stored_before_sealing_still_confirms_and_logs_in_and_is_sealed_again,
    a_tampered_sealed_seed_refuses_the_login_with_the_usual_401_and_no_seed,
);
