//! TOTP seeds at rest, on both backends: the user item holds the seed sealed under a
//! data key (`v2:<wrapped data key>:<nonce>:<ciphertext>`; the data key from moto's KMS on
//! the aws backend, from local mode's local key on the memory backend), never the base32
//! seed; a `v1:` seed (the Secrets Manager key) or a plain seed stored before sealing
//! still works and is sealed as `v2` on its next use; a tampered one, one moved to another
//! user, or one whose data key KMS refuses fails closed.

use std::sync::Arc;

use kirim::adapters::aws::{keys, KmsDataKeys};
use kirim::adapters::memory::LocalDataKeys;
use kirim::config::Backend;
use kirim::domain::TenantId;
use kirim::ports::DataKeys;
use kirim::service::{seed_cipher, users};
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
    assert!(
        secret.starts_with("v2:"),
        "not sealed under a data key: {secret}"
    );
    assert_eq!(secret.split(':').count(), 4, "{secret}");
    assert!(!item.contains(seed), "the seed is in the stored item");
}

/// An enrolled, confirmed user: (email, id, seed).
async fn two_factor_user(app: &TestApp, key: &str) -> (String, String, String) {
    let (email, id) = new_user(app, key, "admin").await;
    let token = login_ok(app, &email).await;
    let seed = enroll(app, &token).await;
    confirm(app, &token, &seed).await;
    (email, id, seed)
}

/// `POST path` with a JSON body through the API's router on `deps` (the app's store, its own
/// keys): the status and body.
async fn through_api(
    deps: &kirim::service::Deps,
    path: &str,
    token: Option<&str>,
    body: Value,
) -> (u16, Value) {
    use tower::ServiceExt;
    let mut req = axum::http::Request::post(path).header("content-type", "application/json");
    if let Some(token) = token {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    let res = kirim::http::admin_api_router(deps.clone())
        .oneshot(req.body(axum::body::Body::from(body.to_string())).unwrap())
        .await
        .unwrap();
    let status = res.status().as_u16();
    let bytes = axum::body::to_bytes(res.into_body(), 1 << 16)
        .await
        .unwrap_or_default();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// Another wrapping key than the app's: a second key in moto's KMS, or another local key.
pub(crate) async fn another_key(b: Backend) -> Arc<dyn DataKeys> {
    match b {
        Backend::Aws => {
            let kms = aws_sdk_kms::Client::new(&kirim_tests::moto_sdk().await);
            let key = kms.create_key().send().await.unwrap().key_metadata.unwrap();
            Arc::new(KmsDataKeys::new(kms, key.arn().unwrap()))
        }
        Backend::Memory => Arc::new(LocalDataKeys::generate()),
    }
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

    // On the aws backend the data key is KMS's: moto decrypts it, with the user's
    // encryption context only.
    if b == Backend::Aws {
        use base64::Engine;
        let wrapped = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(confirmed.split(':').nth(1).unwrap())
            .unwrap();
        let kms = aws_sdk_kms::Client::new(&kirim_tests::moto_sdk().await);
        let decrypt = |user: &str| {
            kms.decrypt()
                .ciphertext_blob(aws_sdk_kms::primitives::Blob::new(wrapped.clone()))
                .encryption_context("purpose", "kirim-totp-seed")
                .encryption_context("tenant_id", &t.tenant_id)
                .encryption_context("user_id", user)
                .send()
        };
        let plain = decrypt(&id).await.unwrap();
        assert_eq!(plain.plaintext().unwrap().as_ref().len(), 32);
        assert!(decrypt("someone_else").await.is_err());
    }
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

async fn a_v1_seed_sealed_with_the_secrets_manager_key_logs_in_and_is_resealed_as_v2(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let (email, id, seed) = two_factor_user(&app, &t.key).await;
    let tenant = TenantId::from_trusted(&t.tenant_id);

    // As a release before KMS stored it: v1, under the TOTP key secret.
    let deps = &app.app.deps;
    let key = deps
        .secrets
        .current(&seed_cipher::key_name(&deps.settings))
        .await
        .unwrap()
        .unwrap();
    let v1 = seed_cipher::seal_v1(&key, &tenant, &id, &seed).unwrap();
    let (v2, _) = stored(&app, b, &t.tenant_id, &id).await;
    overwrite(&app, &t.tenant_id, &id, &v2, &v1).await;

    let (s, body) = login(&app, &email, &totp(&seed).generate(now_secs() + 30)).await;
    assert_eq!(s, 200, "{body}");
    let (after, item) = stored(&app, b, &t.tenant_id, &id).await;
    assert_sealed(&after, &item, &seed);
    assert_ne!(after, v2, "sealed again under a new data key");
    // What was resealed opens as v2, to the same seed.
    let opened = seed_cipher::open(deps, &tenant, &id, &after)
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(opened, seed_cipher::Opened::Current(_)));
    assert_eq!(opened.seed(), seed);
}

async fn a_v2_seed_moved_to_another_users_item_does_not_open_for_them(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let (_, alice_id, alice_seed) = two_factor_user(&app, &t.key).await;
    let (bob_email, bob_id, bob_seed) = two_factor_user(&app, &t.key).await;

    let (alices, _) = stored(&app, b, &t.tenant_id, &alice_id).await;
    let (bobs, _) = stored(&app, b, &t.tenant_id, &bob_id).await;
    overwrite(&app, &t.tenant_id, &bob_id, &bobs, &alices).await;

    for seed in [&alice_seed, &bob_seed] {
        let (s, body) = login(&app, &bob_email, &totp(seed).generate(now_secs() + 30)).await;
        assert_eq!((s, code(&body)), (401, "totp_required"), "{body}");
    }
    let (still, _) = stored(&app, b, &t.tenant_id, &bob_id).await;
    assert_eq!(still, alices, "a refusal rewrites nothing");
}

async fn a_login_whose_data_key_kms_refuses_fails_closed_and_changes_nothing(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let (email, id, seed) = two_factor_user(&app, &t.key).await;
    let (before, _) = stored(&app, b, &t.tenant_id, &id).await;

    // The same store, but a process whose key is not the one that wrapped the data key
    // (KMS answers AccessDenied for a key id that is not the ciphertext's).
    let mut deps = app.app.deps.clone();
    deps.data_keys = another_key(b).await;
    let req = |code: String| users::LoginRequest {
        email: email.clone(),
        password: PASSWORD.into(),
        totp_code: Some(code),
    };
    let refused = users::login(&deps, req(totp(&seed).generate(now_secs() + 30)), None).await;
    assert!(
        matches!(refused, Err(users::LoginError::TotpUnavailable)),
        "{:?}",
        refused.err()
    );
    // Through the API: the contract's `401 totp_required`, audited as the operator's fault it
    // is (`error`, `totp_seed_unopened`), not as a wrong code (`denied`, `totp_invalid`: an
    // alert on code guessing would fire for every 2FA user at once).
    let body = json!({"email": email, "password": PASSWORD,
        "totp_code": totp(&seed).generate(now_secs() + 30)});
    let (s, answer) = through_api(&deps, "/v1/auth/login", None, body).await;
    assert_eq!((s, code(&answer)), (401, "totp_required"), "{answer}");
    let (_, page) = call(
        &app,
        "GET",
        "/v1/audit?action=POST%20/v1/auth/login",
        Some(&t.key),
        None,
    )
    .await;
    let newest = &page["events"][0];
    assert_eq!(newest["actor"]["id"], id.as_str(), "{page}");
    assert_eq!(newest["details"]["result"], "totp_seed_unopened", "{page}");
    assert_eq!(newest["outcome"], "error", "{page}");
    assert_eq!(newest["details"]["status"], 401, "{page}");
    let (after, _) = stored(&app, b, &t.tenant_id, &id).await;
    assert_eq!(after, before, "nothing rewritten");
    // The app's own key still opens it (the refused code was not spent either).
    let (s, body) = login(&app, &email, &totp(&seed).generate(now_secs() + 30)).await;
    assert_eq!(s, 200, "{body}");
}

/// A seed whose data key KMS refuses (a key policy edited, a key deleted: every 2FA user at
/// once) is no failure of the caller's, who gave the right password: seven such logins from
/// one address are each `totp_required`, never rate-limited, leave no failure counted on
/// the email's, the address's or the user's wrong-code counter, and the right key then
/// signs in from that address at once.
async fn logins_whose_seed_kms_refuses_count_no_failure_and_never_lock_the_address(b: Backend) {
    use kirim::adapters::aws::keys;
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let (email, _, seed) = two_factor_user(&app, &t.key).await;
    // A clock that stands still: a failure counted would lock the sixth attempt.
    let mut frozen = app.app.deps.clone();
    frozen.clock = kirim_tests::ManualClock::new();
    let frozen_at = u64::try_from(frozen.clock.now().timestamp()).unwrap_or_default();
    let mut refused_key = frozen.clone();
    refused_key.data_keys = another_key(b).await;
    let req = |code: String| users::LoginRequest {
        email: email.clone(),
        password: PASSWORD.into(),
        totp_code: Some(code),
    };
    let addr = "203.0.113.61";
    let from = Some(addr.parse::<std::net::IpAddr>().unwrap());
    for i in 0..7 {
        let code = totp(&seed).generate(frozen_at + 30);
        let answer = users::login(&refused_key, req(code), from).await;
        assert!(
            matches!(answer, Err(users::LoginError::TotpUnavailable)),
            "login {i}: {:?}",
            answer.err()
        );
    }
    let hash = kirim::secret::token_hash(&email);
    let counters = [
        keys::login_failures_of_email(&hash, addr),
        keys::login_failures_of_address(addr),
        keys::login_totp_failures(&hash),
    ];
    let items = frozen.retention.stored_items().await.unwrap();
    for key in &counters {
        let failures = items
            .iter()
            .find(|i| i.pk == key.pk && i.sk == key.sk)
            .and_then(|i| {
                i.attributes["failures"].as_i64().or_else(|| {
                    i.attributes["failures"]
                        .as_str()
                        .and_then(|f| f.parse().ok())
                })
            })
            .unwrap_or(0);
        assert_eq!(failures, 0, "{} / {}", key.pk, key.sk);
    }
    let signed_in = users::login(&frozen, req(totp(&seed).generate(frozen_at + 30)), from).await;
    assert!(signed_in.is_ok(), "{:?}", signed_in.err());
}

/// A pending seed whose data key KMS refuses (a key policy edited, a key deleted) is the
/// operator's fault, not a wrong code: `POST /v1/auth/2fa/confirm` answers `503`, not the
/// `400 totp_code does not match` that had the console say the set-up was replaced (and its
/// new set-up fail the same way); no wrong code is counted, the secret stays pending, and
/// the app's own key then confirms it.
async fn a_confirmation_whose_pending_seed_kms_refuses_answers_503_and_counts_nothing(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let (email, id) = new_user(&app, &t.key, "admin").await;
    let token = login_ok(&app, &email).await;
    let seed = enroll(&app, &token).await;
    let (pending, _) = stored(&app, b, &t.tenant_id, &id).await;
    let mut refused_key = app.app.deps.clone();
    refused_key.data_keys = another_key(b).await;
    for _ in 0..6 {
        let body = json!({"totp_code": totp(&seed).generate(now_secs())});
        let (s, answer) =
            through_api(&refused_key, "/v1/auth/2fa/confirm", Some(&token), body).await;
        assert_eq!((s, code(&answer)), (503, "unavailable"), "{answer}");
    }
    let key = kirim::adapters::aws::keys::login_totp_failures(&kirim::secret::token_hash(
        &email.to_lowercase(),
    ));
    let items = app.app.deps.retention.stored_items().await.unwrap();
    let failures = items
        .iter()
        .find(|i| i.pk == key.pk && i.sk == key.sk)
        .and_then(|i| {
            i.attributes["failures"].as_i64().or_else(|| {
                i.attributes["failures"]
                    .as_str()
                    .and_then(|f| f.parse().ok())
            })
        })
        .unwrap_or(0);
    assert_eq!(failures, 0, "no wrong code counted");
    let (still, _) = stored(&app, b, &t.tenant_id, &id).await;
    assert_eq!(still, pending, "nothing rewritten");
    // Six refusals counted would have locked it (5 free): the right key confirms at once.
    confirm(&app, &token, &seed).await;
}

/// Wrong codes for one user from many addresses meet one counter (only a caller with the
/// password reaches the code): five, then even the right code waits, from a fresh address
/// too; an admin's unlock clears it.
async fn wrong_totp_codes_from_many_addresses_slow_that_user_and_an_unlock_clears_it(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let (email, id, seed) = two_factor_user(&app, &t.key).await;
    // One second for every attempt: each failure's delay is from its attempt's start, and
    // an attempt (argon2) may take a second on a loaded machine.
    let mut frozen = app.app.deps.clone();
    frozen.clock = kirim_tests::ManualClock::new();
    let deps = &frozen;
    // Codes as of the frozen clock's time (real time moves on under load; a code of
    // "now + 30 s" could fall outside the window of the frozen time).
    let frozen_at = u64::try_from(deps.clock.now().timestamp()).unwrap_or_default();
    let valid: Vec<String> = [0, 30, 60]
        .iter()
        .map(|d| totp(&seed).generate(frozen_at + d - 30))
        .collect();
    let wrong = (0..1_000_000)
        .map(|n| format!("{n:06}"))
        .find(|c| !valid.contains(c))
        .unwrap_or_default();
    let req = |code: &str| users::LoginRequest {
        email: email.clone(),
        password: PASSWORD.into(),
        totp_code: Some(code.to_owned()),
    };
    let from = |i: u8| Some(std::net::IpAddr::from([203, 0, 113, i]));
    for i in 1..=5 {
        let answer = users::login(deps, req(&wrong), from(i)).await;
        assert!(
            matches!(answer, Err(users::LoginError::TotpRequired)),
            "guess {i}: {:?}",
            answer.err()
        );
    }
    // The next step's code: within the window of the frozen time whatever the real clock
    // does, and not the step the enrolment's confirmation used (a code is good once).
    let right = totp(&seed).generate(frozen_at + 30);
    let slowed = users::login(deps, req(&right), from(6)).await;
    assert!(
        matches!(slowed, Err(users::LoginError::TotpLocked { .. })),
        "a sixth address meets the user's counter: {:?}",
        slowed.err()
    );
    let tenant = TenantId::from_trusted(t.tenant_id.clone());
    users::unlock(deps, &tenant, &id).await.unwrap();
    assert!(
        users::login(deps, req(&right), from(7)).await.is_ok(),
        "unlocked: the right code signs in"
    );
}

/// Data keys that cannot be had right now (KMS throttled or unreachable).
struct Unreachable;

#[async_trait::async_trait]
impl DataKeys for Unreachable {
    async fn generate(
        &self,
        _: &kirim::ports::KeyContext,
    ) -> Result<kirim::ports::DataKey, kirim::store_error::StoreError> {
        Err(kirim::store_error::StoreError::Unavailable("kms".into()))
    }
    async fn unwrap(
        &self,
        _: &[u8],
        _: &kirim::ports::KeyContext,
    ) -> Result<Option<kirim::ports::PlainKey>, kirim::store_error::StoreError> {
        Err(kirim::store_error::StoreError::Unavailable("kms".into()))
    }
}

/// Past the wrong-code limit, a 2FA confirmation is refused before its seed is opened:
/// a locked-out guesser's requests cost the account-wide KMS quota, which every 2FA
/// sign-in needs, nothing (here KMS is unreachable, and the answer is still the 429).
async fn a_confirmation_past_the_wrong_code_limit_is_refused_before_kms_is_asked(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let (email, _) = new_user(&app, &t.key, "operator").await;
    let token = login_ok(&app, &email).await;
    let (s, e) = call(&app, "POST", "/v1/auth/2fa/enroll", Some(&token), None).await;
    assert_eq!(s, 200, "{e}");
    let pending = totp(e["secret"].as_str().unwrap());
    let caller = kirim::service::auth::authenticate(&app.app.deps, Some(&token))
        .await
        .unwrap();
    // On a clock that stands still: the first lock lasts a second, which a loaded machine
    // could let pass before the last call (then allowed, and KMS asked).
    let mut frozen = app.app.deps.clone();
    frozen.clock = kirim_tests::ManualClock::new();
    let deps = &frozen;
    let confirm = |deps: kirim::service::Deps, code: String| {
        let (caller, token) = (caller.clone(), token.clone());
        async move {
            let req: users::ConfirmRequest =
                serde_json::from_value(json!({"totp_code": code})).unwrap();
            users::confirm(&deps, &caller, &token, req).await
        }
    };
    let mut locked = false;
    for n in 0..10u32 {
        let wrong = format!(
            "{:06}",
            (pending.generate(now_secs()).parse::<u32>().unwrap() + 1 + n) % 1_000_000
        );
        if let Err(kirim::service::errors::ServiceError::RateLimited { .. }) =
            confirm(deps.clone(), wrong).await
        {
            locked = true;
            break;
        }
    }
    assert!(locked, "the wrong codes' limit");
    let mut unreachable = deps.clone();
    unreachable.data_keys = Arc::new(Unreachable);
    let answer = confirm(unreachable, pending.generate(now_secs())).await;
    assert!(
        matches!(
            answer,
            Err(kirim::service::errors::ServiceError::RateLimited { .. })
        ),
        "{:?}",
        answer.err()
    );
}

async fn a_login_while_kms_cannot_be_reached_is_a_retryable_error_not_a_refusal(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let (email, id, seed) = two_factor_user(&app, &t.key).await;
    let (before, _) = stored(&app, b, &t.tenant_id, &id).await;

    let mut deps = app.app.deps.clone();
    deps.data_keys = match b {
        // The real adapter, its endpoint refusing connections.
        Backend::Aws => {
            let sdk = kirim_infra::local::emulator_sdk_config(Some("http://127.0.0.1:9")).await;
            Arc::new(KmsDataKeys::new(
                aws_sdk_kms::Client::new(&sdk),
                "alias/nowhere",
            ))
        }
        Backend::Memory => Arc::new(Unreachable),
    };
    let req = users::LoginRequest {
        email: email.clone(),
        password: PASSWORD.into(),
        totp_code: Some(totp(&seed).generate(now_secs() + 30)),
    };
    let answer = users::login(&deps, req, None).await;
    assert!(
        matches!(
            answer,
            Err(users::LoginError::Service(ref e)) if e.is_retryable()
        ),
        "{:?}",
        answer.err()
    );
    let (after, _) = stored(&app, b, &t.tenant_id, &id).await;
    assert_eq!(after, before);
    // The code was not spent: with KMS back, it logs in.
    let (s, body) = login(&app, &email, &totp(&seed).generate(now_secs() + 30)).await;
    assert_eq!(s, 200, "{body}");
}

async fn an_enrolment_without_a_usable_key_stores_nothing(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let (email, id) = new_user(&app, &t.key, "admin").await;
    let token = login_ok(&app, &email).await;
    let mut deps = app.app.deps.clone();
    deps.data_keys = match b {
        // A key id moto's KMS does not know.
        Backend::Aws => Arc::new(KmsDataKeys::new(
            aws_sdk_kms::Client::new(&kirim_tests::moto_sdk().await),
            "arn:aws:kms:us-east-1:123456789012:key/00000000-0000-0000-0000-000000000000",
        )),
        Backend::Memory => Arc::new(kirim::wiring::NotWired::new(
            "the test",
            kirim::wiring::Port::DataKeys,
        )),
    };
    let caller = kirim::service::auth::authenticate(&deps, Some(&token))
        .await
        .unwrap();
    assert!(users::enroll(&deps, &caller).await.is_err());
    let user = deps
        .users
        .get_user(&TenantId::from_trusted(&t.tenant_id), &id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(user.totp_secret, None);
}

on_both_backends!(
    wrong_totp_codes_from_many_addresses_slow_that_user_and_an_unlock_clears_it,
    an_enrolled_seed_is_stored_sealed_and_a_login_with_its_code_still_works,
    a_plain_seed_stored_before_sealing_still_confirms_and_logs_in_and_is_sealed_again,
    a_tampered_sealed_seed_refuses_the_login_with_the_usual_401_and_no_seed,
    a_v1_seed_sealed_with_the_secrets_manager_key_logs_in_and_is_resealed_as_v2,
    a_v2_seed_moved_to_another_users_item_does_not_open_for_them,
    a_login_whose_data_key_kms_refuses_fails_closed_and_changes_nothing,
    logins_whose_seed_kms_refuses_count_no_failure_and_never_lock_the_address,
    a_confirmation_whose_pending_seed_kms_refuses_answers_503_and_counts_nothing,
    an_enrolment_without_a_usable_key_stores_nothing,
    a_login_while_kms_cannot_be_reached_is_a_retryable_error_not_a_refusal,
    a_confirmation_past_the_wrong_code_limit_is_refused_before_kms_is_asked,
);
