//! Console users end to end on both backends: login, roles, TOTP 2FA, logout, failed logins,
//! tenant isolation and the tenant's 2FA requirement.

use kirim::config::Backend;
use kirim_tests::{spawn_app, TestApp};
use serde_json::{json, Value};
use totp_rs::{Algorithm, TOTP};

use super::access::{call, code};

pub(crate) const PASSWORD: &str = "correct horse battery staple";

fn unique_email() -> String {
    format!("Staff.{}@Kedai.example", ulid::Ulid::new())
}

/// Creates a user of `role` with [`PASSWORD`]; answers (email, id).
pub(crate) async fn new_user(app: &TestApp, admin: &str, role: &str) -> (String, String) {
    let email = unique_email();
    let (s, b) = call(
        app,
        "POST",
        "/v1/users",
        Some(admin),
        Some(json!({"email": email, "role": role, "password": PASSWORD})),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    (email, b["id"].as_str().unwrap().to_owned())
}

async fn login(app: &TestApp, email: &str, password: &str, totp: Option<&str>) -> (u16, Value) {
    let mut body = json!({"email": email, "password": password});
    if let Some(c) = totp {
        body["totp_code"] = json!(c);
    }
    call(app, "POST", "/v1/auth/login", None, Some(body)).await
}

/// Logs in with [`PASSWORD`] (no 2FA) and answers the session token.
pub(crate) async fn login_ok(app: &TestApp, email: &str) -> String {
    let (s, b) = login(app, email, PASSWORD, None).await;
    assert_eq!(s, 200, "{b}");
    b["token"].as_str().unwrap().to_owned()
}

fn totp(secret: &str) -> TOTP {
    let bytes = totp_rs::Secret::Encoded(secret.to_owned())
        .to_bytes()
        .unwrap();
    TOTP::new(Algorithm::SHA1, 6, 1, 30, bytes, None, "test".into()).unwrap()
}

fn now_secs() -> u64 {
    chrono::Utc::now().timestamp() as u64
}

/// Enrolls and confirms 2FA for the session's user; answers the TOTP.
pub(crate) async fn enable_2fa(app: &TestApp, token: &str) -> TOTP {
    let (s, e) = call(app, "POST", "/v1/auth/2fa/enroll", Some(token), None).await;
    assert_eq!(s, 200, "{e}");
    let secret = e["secret"].as_str().unwrap();
    let uri = e["otpauth_uri"].as_str().unwrap();
    assert!(uri.starts_with("otpauth://totp/Kirim:"), "{uri}");
    let from_uri = TOTP::from_url(uri).unwrap();
    assert_eq!(from_uri.digits, 6);
    assert_eq!(from_uri.step, 30);
    assert_eq!(from_uri.algorithm, Algorithm::SHA1);
    let t = totp(secret);
    let (s, b) = call(
        app,
        "POST",
        "/v1/auth/2fa/confirm",
        Some(token),
        Some(json!({"totp_code": "000000x"})),
    )
    .await;
    assert_eq!((s, code(&b)), (400, "invalid_request"));
    let (s, b) = call(
        app,
        "POST",
        "/v1/auth/2fa/confirm",
        Some(token),
        Some(json!({"totp_code": t.generate(now_secs())})),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b, json!({"totp_enabled": true}));
    t
}

async fn a_console_user_logs_in_acts_with_its_role_enables_2fa_and_logs_out(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let (email, _) = new_user(&app, &t.key, "read_only").await;

    // Login is by email, case-insensitively; the session is a tenant credential.
    let (s, body) = login(&app, &email.to_uppercase(), PASSWORD, None).await;
    assert_eq!(s, 200, "{body}");
    let token = body["token"].as_str().unwrap().to_owned();
    let expires = chrono::DateTime::parse_from_rfc3339(body["expires_at"].as_str().unwrap())
        .unwrap()
        .with_timezone(&chrono::Utc);
    let ttl = expires - chrono::Utc::now();
    assert!(
        ttl > chrono::Duration::hours(11) && ttl <= chrono::Duration::hours(12),
        "12h sessions: {ttl}"
    );
    let (s, account) = call(&app, "GET", "/v1/account", Some(&token), None).await;
    assert_eq!(s, 200);
    assert_eq!(account["id"], t.tenant_id.as_str());
    let res = app.send_template(&token, "+60123450001").await;
    assert_eq!(res.status(), 403, "a read_only user cannot send");
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"]["code"],
        "forbidden"
    );
    let (s, _) = call(&app, "GET", "/v1/users", Some(&token), None).await;
    assert_eq!(s, 403, "listing users is for admins");

    // An operator user sends.
    let (op_email, _) = new_user(&app, &t.key, "operator").await;
    let op = login_ok(&app, &op_email).await;
    app.send_ok(&op, "+60123459999").await;

    // 2FA: from confirmation on, a code is required at every login, and once only.
    let totp = enable_2fa(&app, &token).await;
    let (s, again) = call(&app, "POST", "/v1/auth/2fa/enroll", Some(&token), None).await;
    assert_eq!(
        (s, code(&again)),
        (409, "conflict"),
        "enabled 2FA cannot be replaced"
    );
    let (s, b) = login(&app, &email, PASSWORD, None).await;
    assert_eq!((s, code(&b)), (401, "totp_required"));
    let (s, b) = login(&app, &email, PASSWORD, Some("123456x")).await;
    assert_eq!((s, code(&b)), (401, "totp_required"));
    let (s, b) = login(&app, &email, "wrong password!!", Some("123456")).await;
    assert_eq!((s, code(&b)), (401, "invalid_credentials"));
    // The confirmation used the current step; the next step's code is within the skew.
    let next = totp.generate(now_secs() + 30);
    let (s, b) = login(&app, &email, PASSWORD, Some(&next)).await;
    assert_eq!(s, 200, "{b}");
    let second = b["token"].as_str().unwrap().to_owned();
    let (s, b) = login(&app, &email, PASSWORD, Some(&next)).await;
    assert_eq!((s, code(&b)), (401, "totp_required"), "a code is used once");

    // Logout ends that session only.
    let (s, _) = call(&app, "POST", "/v1/auth/logout", Some(&second), None).await;
    assert_eq!(s, 204);
    let (s, b) = call(&app, "GET", "/v1/account", Some(&second), None).await;
    assert_eq!((s, code(&b)), (401, "unauthenticated"));
    let (s, _) = call(&app, "POST", "/v1/auth/logout", Some(&second), None).await;
    assert_eq!(s, 401);
    assert_eq!(
        call(&app, "GET", "/v1/account", Some(&token), None).await.0,
        200
    );
    // Sessions are not API keys and API keys are not sessions.
    let (s, _) = call(&app, "POST", "/v1/auth/logout", Some(&t.key), None).await;
    assert_eq!(s, 403);

    // Lists show no password, hash or TOTP secret.
    let (s, list) = call(&app, "GET", "/v1/users", Some(&t.key), None).await;
    assert_eq!(s, 200);
    let text = list.to_string();
    for secret in [PASSWORD, "argon2", "password", "secret", &token, &second] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
    let users = list["users"].as_array().unwrap();
    assert_eq!(users.len(), 2);
    let me = users
        .iter()
        .find(|u| u["email"] == email.to_lowercase().as_str())
        .unwrap();
    assert_eq!(me["two_factor"], "enabled");
    assert_eq!(me["totp_enabled"], true);
    assert_eq!(me["role"], "read_only");
}

/// Growing delays and unlocking are checked at exact instants in `limits.rs`; here, over
/// local mode's real TCP, that a wrong password and an unknown email look alike.
async fn a_wrong_password_and_an_unknown_email_answer_alike_over_http(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(0).await;
    let (email, _) = new_user(&app, &t.key, "admin").await;
    let unknown_email = format!("nobody.{}@kedai.example", ulid::Ulid::new());
    for _ in 0..4 {
        let (s, wrong) = login(&app, &email, "not the password", None).await;
        let (u, unknown) = login(&app, &unknown_email, "not the password", None).await;
        assert_eq!((s, code(&wrong)), (401, "invalid_credentials"));
        assert_eq!(s, u);
        assert_eq!(wrong["error"], unknown["error"], "same code and message");
        assert!(wrong["request_id"].is_string() && unknown["request_id"].is_string());
    }
    assert_eq!(
        login(&app, &email, PASSWORD, None).await.0,
        200,
        "four failures cost nothing"
    );
    let (s, list) = call(&app, "GET", "/v1/users", Some(&t.key), None).await;
    assert_eq!(s, 200);
    assert!(
        list["users"][0].get("locked_until").is_none(),
        "no per-account lock-out"
    );
}

async fn another_tenants_users_answer_404_and_a_deleted_users_sessions_end(b: Backend) {
    let app = spawn_app(b).await;
    let a = app.onboard(0).await;
    let other = app.onboard(0).await;
    let (email, id) = new_user(&app, &a.key, "admin").await;
    let token = login_ok(&app, &email).await;
    let (s, b) = call(
        &app,
        "DELETE",
        &format!("/v1/users/{id}"),
        Some(&other.key),
        None,
    )
    .await;
    assert_eq!((s, code(&b)), (404, "not_found"));
    let (_, list) = call(&app, "GET", "/v1/users", Some(&other.key), None).await;
    assert_eq!(list["users"], json!([]));
    // An email is one login across all tenants.
    let (s, b) = call(
        &app,
        "POST",
        "/v1/users",
        Some(&other.key),
        Some(json!({"email": email.to_lowercase(), "role": "admin", "password": PASSWORD})),
    )
    .await;
    assert_eq!((s, code(&b)), (409, "conflict"));
    // A session acts on its own tenant only.
    let (_, account) = call(&app, "GET", "/v1/account", Some(&token), None).await;
    assert_eq!(account["id"], a.tenant_id.as_str());
    // An admin session manages users too.
    let (s, made) = call(
        &app,
        "POST",
        "/v1/users",
        Some(&token),
        Some(json!({"email": unique_email(), "role": "operator", "password": PASSWORD})),
    )
    .await;
    assert_eq!(s, 201, "{made}");
    for key in ["password", "password_hash", "totp_secret"] {
        assert!(made.get(key).is_none(), "{key} in {made}");
    }

    let (s, _) = call(
        &app,
        "DELETE",
        &format!("/v1/users/{id}"),
        Some(&a.key),
        None,
    )
    .await;
    assert_eq!(s, 204);
    let (s, b) = call(&app, "GET", "/v1/account", Some(&token), None).await;
    assert_eq!((s, code(&b)), (401, "unauthenticated"), "its sessions end");
    let (s, b) = login(&app, &email, PASSWORD, None).await;
    assert_eq!((s, code(&b)), (401, "invalid_credentials"));
    let (s, _) = call(
        &app,
        "DELETE",
        &format!("/v1/users/{id}"),
        Some(&a.key),
        None,
    )
    .await;
    assert_eq!(s, 404);
    assert_eq!(
        call(&app, "GET", "/v1/account", Some(&a.key), None).await.0,
        200,
        "API keys are untouched"
    );

    for bad in [
        json!({"email": unique_email(), "role": "admin", "password": "short"}),
        json!({"email": unique_email(), "role": "admin", "password": "x".repeat(129)}),
        json!({"email": "not-an-email", "role": "admin", "password": PASSWORD}),
        json!({"email": unique_email(), "role": "root", "password": PASSWORD}),
        json!({"email": unique_email(), "role": "admin", "password": PASSWORD, "x": 1}),
    ] {
        let (s, b) = call(&app, "POST", "/v1/users", Some(&a.key), Some(bad.clone())).await;
        assert_eq!((s, code(&b)), (400, "invalid_request"), "{bad}");
    }
    let (s, b) = call(
        &app,
        "POST",
        "/v1/auth/login",
        None,
        Some(json!({"email": email, "password": PASSWORD, "remember": true})),
    )
    .await;
    assert_eq!((s, code(&b)), (400, "invalid_request"));
}

async fn a_tenant_requiring_2fa_confines_users_without_it_to_enrollment(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(0).await;
    let (s, b) = call(&app, "GET", "/v1/settings/2fa", Some(&t.key), None).await;
    assert_eq!((s, b), (200, json!({"required": false})));
    let (s, b) = call(
        &app,
        "PUT",
        "/v1/settings/2fa",
        Some(&t.key),
        Some(json!({"required": true})),
    )
    .await;
    assert_eq!((s, b), (200, json!({"required": true})));
    let (s, b) = call(
        &app,
        "PUT",
        "/v1/settings/2fa",
        Some(&t.key),
        Some(json!({"required": "yes"})),
    )
    .await;
    assert_eq!((s, code(&b)), (400, "invalid_request"));
    let (email, _) = new_user(&app, &t.key, "admin").await;
    let (s, b) = login(&app, &email, PASSWORD, None).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["totp_enrollment_required"], true);
    let token = b["token"].as_str().unwrap().to_owned();
    let (s, b) = call(&app, "GET", "/v1/account", Some(&token), None).await;
    assert_eq!((s, code(&b)), (403, "totp_enrollment_required"));
    assert_eq!(
        call(&app, "GET", "/v1/account", Some(&t.key), None).await.0,
        200,
        "API keys are not console users"
    );
    enable_2fa(&app, &token).await;
    let (s, _) = call(&app, "GET", "/v1/account", Some(&token), None).await;
    assert_eq!(s, 200, "enrolled: the same session is a full one");
}

/// Where the tenant requires 2FA, a session opened with a password alone is confined to
/// enrolment; its user confirming 2FA in another session does not make it a full one (a
/// stolen password's session would otherwise wait for the owner to enrol): it signs in
/// again, with a code.
async fn confirming_2fa_in_one_session_leaves_the_users_password_only_sessions_confined(
    b: Backend,
) {
    let app = spawn_app(b).await;
    let t = app.onboard(0).await;
    let (s, _) = call(
        &app,
        "PUT",
        "/v1/settings/2fa",
        Some(&t.key),
        Some(json!({"required": true})),
    )
    .await;
    assert_eq!(s, 200);
    let (email, _) = new_user(&app, &t.key, "admin").await;
    let owner = login_ok(&app, &email).await;
    let other = login_ok(&app, &email).await;
    let totp = enable_2fa(&app, &owner).await;
    let (s, _) = call(&app, "GET", "/v1/account", Some(&owner), None).await;
    assert_eq!(s, 200, "the session that confirmed is a full one");
    let (s, b) = call(&app, "GET", "/v1/account", Some(&other), None).await;
    assert_eq!(
        (s, code(&b)),
        (403, "totp_enrollment_required"),
        "the other gave no code: {b}"
    );
    let (s, b) = call(&app, "POST", "/v1/auth/2fa/enroll", Some(&other), None).await;
    assert_eq!((s, code(&b)), (409, "conflict"));
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("sign in again with a code"),
        "{b}"
    );
    // Signed in again with a code: a full session.
    let (s, b) = login(
        &app,
        &email,
        PASSWORD,
        Some(&totp.generate(now_secs() + 30)),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let again = b["token"].as_str().unwrap().to_owned();
    assert_eq!(
        call(&app, "GET", "/v1/account", Some(&again), None).await.0,
        200
    );
}

/// A right password with wrong codes until the user's second factor locks: each refusal
/// after the lock is audited (the password was right: a sign of a stolen one), unlike a
/// flood from an address locked out, which needs no credentials.
async fn a_locked_second_factor_after_a_right_password_is_audited(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(0).await;
    let (email, id) = new_user(&app, &t.key, "operator").await;
    let token = login_ok(&app, &email).await;
    let _totp = enable_2fa(&app, &token).await;
    let mut locked = None;
    // From a new address each time (as a spread-out attacker would): no address locks.
    for i in 0..12u8 {
        let from = reqwest::Client::builder()
            .local_address(std::net::IpAddr::from([127, 0, 0, 20 + i]))
            .build()
            .unwrap();
        let res = from
            .post(app.url("/v1/auth/login"))
            .json(&json!({"email": email, "password": PASSWORD, "totp_code": "000000"}))
            .send()
            .await
            .unwrap();
        let s = res.status().as_u16();
        let b: Value = res.json().await.unwrap_or(Value::Null);
        if s == 429 {
            locked = Some(b);
            break;
        }
        assert_eq!(s, 401, "{b}");
    }
    let locked = locked.expect("the second factor locks");
    assert!(
        locked["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("wrong codes")),
        "{locked}"
    );
    let (_, page) = call(
        &app,
        "GET",
        "/v1/audit?action=POST%20/v1/auth/login",
        Some(&t.key),
        None,
    )
    .await;
    let first = &page["events"][0];
    assert_eq!(first["details"]["result"], "totp_rate_limited", "{page}");
    assert_eq!(first["outcome"], "denied");
    assert_eq!(first["actor"]["id"], id.as_str());
}

/// The tenant's audit events of sign-ins, newest first.
async fn sign_in_events(app: &TestApp, key: &str) -> Vec<Value> {
    let (s, page) = call(
        app,
        "GET",
        "/v1/audit?action=POST%20/v1/auth/login",
        Some(key),
        None,
    )
    .await;
    assert_eq!(s, 200, "{page}");
    page["events"].as_array().cloned().unwrap_or_default()
}

/// A 2FA sign-in is a password step answered `401 totp_required`, then the same call with
/// the code. The password step is audited as what it is, no refusal (`success`, result
/// `totp_challenge`): a successful 2FA sign-in shows no denied login. A wrong code and a
/// wrong password still are denied ones.
async fn a_two_factor_sign_in_shows_no_denied_login_but_a_wrong_code_or_password_does(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(0).await;
    let (email, id) = new_user(&app, &t.key, "operator").await;
    let token = login_ok(&app, &email).await;
    let totp = enable_2fa(&app, &token).await;
    let before = sign_in_events(&app, &t.key).await.len();

    let (s, body) = login(&app, &email, PASSWORD, None).await;
    assert_eq!(
        (s, code(&body)),
        (401, "totp_required"),
        "the answer is the contract's"
    );
    let used = totp.generate(now_secs() + 30);
    let (s, body) = login(&app, &email, PASSWORD, Some(&used)).await;
    assert_eq!(s, 200, "{body}");
    let events = sign_in_events(&app, &t.key).await;
    let sign_in = &events[..events.len() - before];
    assert_eq!(sign_in.len(), 2, "{events:?}");
    assert!(
        sign_in.iter().all(|e| e["outcome"] == "success"),
        "no denied login in a successful 2FA sign-in: {sign_in:?}"
    );
    assert_eq!(sign_in[1]["details"]["result"], "totp_challenge");
    assert_eq!(sign_in[1]["details"]["status"], 401);
    assert_eq!(sign_in[1]["actor"], json!({"type": "user", "id": id}));
    assert_eq!(sign_in[0]["details"]["result"], "ok");

    // A wrong code after the right password, then a wrong password: both denied.
    let now = now_secs();
    let valid: Vec<String> = (0..=6).map(|k| totp.generate(now + k * 30 - 90)).collect();
    let wrong = (0..1_000_000)
        .map(|n| format!("{n:06}"))
        .find(|c| !valid.contains(c))
        .unwrap_or_default();
    let (s, body) = login(&app, &email, PASSWORD, Some(&wrong)).await;
    assert_eq!((s, code(&body)), (401, "totp_required"), "{body}");
    // The code that signed in, again: used once already.
    let (s, body) = login(&app, &email, PASSWORD, Some(&used)).await;
    assert_eq!((s, code(&body)), (401, "totp_required"), "{body}");
    let (s, body) = login(&app, &email, "wrong password!!", None).await;
    assert_eq!((s, code(&body)), (401, "invalid_credentials"), "{body}");
    let events = sign_in_events(&app, &t.key).await;
    // The answer is `totp_required` for a missing, a wrong and a used code alike; the trail
    // tells a refused code (`totp_invalid`) from the challenge (`totp_challenge`).
    for refused in &events[1..3] {
        assert_eq!(refused["outcome"], "denied", "{events:?}");
        assert_eq!(refused["details"]["result"], "totp_invalid", "{events:?}");
        assert_eq!(refused["actor"], json!({"type": "user", "id": id}));
    }
    assert_eq!(events[0]["outcome"], "denied", "{events:?}");
    assert_eq!(events[0]["details"]["result"], "invalid_credentials");
}

/// The tenant's audit events of `action`, newest first.
async fn events_of(app: &TestApp, key: &str, action: &str) -> Vec<Value> {
    let path = format!("/v1/audit?action={}", action.replace(' ', "%20"));
    let (s, page) = call(app, "GET", &path, Some(key), None).await;
    assert_eq!(s, 200, "{page}");
    page["events"].as_array().cloned().unwrap_or_default()
}

/// A signed-in user proving a credential again (the current password of a password
/// change, a 2FA confirmation code) and getting it wrong is audited as a denied sign-in
/// is, with its result, so that a stolen session's guesses show among the denied ones; a
/// new password too short is still an error, not a refusal. The answers stay `400`.
async fn a_wrong_current_password_or_confirmation_code_is_audited_as_denied(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(0).await;
    let (email, id) = new_user(&app, &t.key, "operator").await;
    let token = login_ok(&app, &email).await;

    let (s, body) = change_password(
        &app,
        &token,
        "not the password!",
        "a brand new passphrase, long enough",
    )
    .await;
    assert_eq!((s, code(&body)), (400, "invalid_request"), "{body}");
    let (s, body) = change_password(&app, &token, PASSWORD, "short").await;
    assert_eq!((s, code(&body)), (400, "invalid_request"), "{body}");
    let events = events_of(&app, &t.key, "POST /v1/auth/password").await;
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[1]["outcome"], "denied", "{events:?}");
    assert_eq!(events[1]["details"]["result"], "wrong_current_password");
    assert_eq!(events[1]["details"]["status"], 400);
    assert_eq!(events[1]["actor"], json!({"type": "user", "id": id}));
    assert_eq!(
        events[0]["outcome"], "error",
        "a short password: {events:?}"
    );
    assert!(events[0]["details"].get("result").is_none(), "{events:?}");

    let (s, e) = call(&app, "POST", "/v1/auth/2fa/enroll", Some(&token), None).await;
    assert_eq!(s, 200, "{e}");
    let key = totp(e["secret"].as_str().unwrap_or_default());
    let now = now_secs();
    let valid: Vec<String> = (0..=6).map(|k| key.generate(now + k * 30 - 90)).collect();
    let wrong = (0..1_000_000)
        .map(|n| format!("{n:06}"))
        .find(|c| !valid.contains(c))
        .unwrap_or_default();
    let (s, body) = call(
        &app,
        "POST",
        "/v1/auth/2fa/confirm",
        Some(&token),
        Some(json!({"totp_code": wrong})),
    )
    .await;
    assert_eq!((s, code(&body)), (400, "invalid_request"), "{body}");
    let events = events_of(&app, &t.key, "POST /v1/auth/2fa/confirm").await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["outcome"], "denied", "{events:?}");
    assert_eq!(events[0]["details"]["result"], "totp_invalid");
    assert_eq!(events[0]["actor"], json!({"type": "user", "id": id}));
}

async fn patch_role(app: &TestApp, token: &str, id: &str, body: Value) -> (u16, Value) {
    call(
        app,
        "PATCH",
        &format!("/v1/users/{id}"),
        Some(token),
        Some(body),
    )
    .await
}

async fn an_admin_changes_a_users_role_and_it_bites_on_their_open_session(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let other = app.onboard(5).await;
    let (email, id) = new_user(&app, &t.key, "operator").await;
    let session = login_ok(&app, &email).await;
    let (s, _) = call(&app, "GET", "/v1/users", Some(&session), None).await;
    assert_eq!(s, 403, "an operator lists no users");

    // Refused changes change nothing: a role that is none, another field, another
    // tenant's admin, a role too low, an id that is none.
    for bad in [
        json!({"role": "owner"}),
        json!({"role": "admin", "email": "x@example.com"}),
        json!({"role": null}),
        json!({}),
    ] {
        let (s, body) = patch_role(&app, &t.key, &id, bad.clone()).await;
        assert_eq!((s, code(&body)), (400, "invalid_request"), "{bad}: {body}");
    }
    let (s, body) = patch_role(&app, &other.key, &id, json!({"role": "admin"})).await;
    assert_eq!(
        (s, code(&body)),
        (404, "not_found"),
        "another tenant's user"
    );
    let (s, body) = patch_role(&app, &session, &id, json!({"role": "admin"})).await;
    assert_eq!(
        (s, code(&body)),
        (403, "forbidden"),
        "an operator changes no role"
    );
    let (s, _) = patch_role(&app, &t.key, "not-an-id", json!({"role": "admin"})).await;
    assert_eq!(s, 404);
    let (s, _) = patch_role(
        &app,
        &t.key,
        &kirim::domain::new_id(),
        json!({"role": "admin"}),
    )
    .await;
    assert_eq!(s, 404, "no such user");
    let (_, list) = call(&app, "GET", "/v1/users", Some(&t.key), None).await;
    assert_eq!(list["users"][0]["role"], "operator", "{list}");

    // Made an admin: the session open since before lists users at once.
    let (s, body) = patch_role(&app, &t.key, &id, json!({"role": "admin"})).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        (body["id"].as_str(), body["role"].as_str()),
        (Some(id.as_str()), Some("admin"))
    );
    assert!(!body.to_string().contains("argon2"), "{body}");
    let (s, _) = call(&app, "GET", "/v1/users", Some(&session), None).await;
    assert_eq!(s, 200, "the new role applies to the open session");
    // Nobody changes their own role (another admin can).
    let (s, body) = patch_role(&app, &session, &id, json!({"role": "read_only"})).await;
    assert_eq!((s, code(&body)), (409, "conflict"), "{body}");
    // Made read-only: the same session sends nothing from its next request.
    let (s, _) = patch_role(&app, &t.key, &id, json!({"role": "read_only"})).await;
    assert_eq!(s, 200);
    let res = app.send_template(&session, "+60123450001").await;
    assert_eq!(res.status(), 403, "a read_only user cannot send");
    let (s, _) = call(&app, "GET", "/v1/account", Some(&session), None).await;
    assert_eq!(s, 200, "still signed in");

    // The audit trail keeps the role before and after.
    let (_, page) = call(
        &app,
        "GET",
        "/v1/audit?action=PATCH%20/v1/users/%7Bid%7D",
        Some(&t.key),
        None,
    )
    .await;
    let events = page["events"].as_array().unwrap();
    let changed: Vec<_> = events
        .iter()
        .filter(|e| e["outcome"] == "success")
        .map(|e| {
            let d = &e["details"];
            (
                d["user_id"].as_str().unwrap_or_default().to_owned(),
                d["previous_role"].as_str().unwrap_or_default().to_owned(),
                d["role"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert!(
        changed.contains(&(id.clone(), "operator".into(), "admin".into()))
            && changed.contains(&(id.clone(), "admin".into(), "read_only".into())),
        "{page}"
    );
    assert!(
        !page.to_string().contains(&email.to_lowercase()),
        "never the email"
    );
}

async fn change_password(app: &TestApp, token: &str, current: &str, new: &str) -> (u16, Value) {
    call(
        app,
        "POST",
        "/v1/auth/password",
        Some(token),
        Some(json!({"current_password": current, "new_password": new})),
    )
    .await
}

async fn a_user_changes_their_password_and_every_session_of_theirs_ends(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(0).await;
    let (email, _) = new_user(&app, &t.key, "read_only").await;
    let here = login_ok(&app, &email).await;
    let elsewhere = login_ok(&app, &email).await;
    let works = |token: String| {
        let app = &app;
        async move { call(app, "GET", "/v1/messages", Some(&token), None).await.0 }
    };
    const NEW: &str = "a brand new passphrase, long enough";
    // Refused, nothing changed: an API key (no user), bad bodies, a short or unchanged new
    // password, a wrong current one.
    assert_eq!(change_password(&app, &t.key, PASSWORD, NEW).await.0, 403);
    for body in [
        json!({"current_password": PASSWORD}),
        json!({"current_password": PASSWORD, "new_password": NEW, "extra": 1}),
        json!({"current_password": PASSWORD, "new_password": 42}),
    ] {
        let (s, b) = call(&app, "POST", "/v1/auth/password", Some(&here), Some(body)).await;
        assert_eq!(s, 400, "{b}");
    }
    let (s, b) = change_password(&app, &here, PASSWORD, "too short").await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (400, Some("invalid_request")),
        "{b}"
    );
    assert_eq!(
        change_password(&app, &here, PASSWORD, PASSWORD).await.0,
        400
    );
    let (s, b) = change_password(&app, &here, "not my password at all", NEW).await;
    assert_eq!(s, 400, "{b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("current_password")),
        "{b}"
    );
    assert!(!b.to_string().contains("not my password"), "never echoed");
    assert_eq!(works(here.clone()).await, 200, "a refusal ends nothing");
    assert_eq!(login(&app, &email, PASSWORD, None).await.0, 200);

    // Changed: this session and the other one end; the old password no longer signs in.
    let (s, b) = change_password(&app, &here, PASSWORD, NEW).await;
    assert_eq!(s, 204, "{b}");
    assert_eq!(works(here).await, 401);
    assert_eq!(works(elsewhere).await, 401);
    assert_eq!(login(&app, &email, PASSWORD, None).await.0, 401);
    let (s, b) = login(&app, &email, NEW, None).await;
    assert_eq!(s, 200, "{b}");
    let fresh = b["token"].as_str().unwrap_or_default().to_owned();
    assert_eq!(works(fresh.clone()).await, 200);

    // A session guessing the current password meets the sign-in's own limits.
    let mut limited = false;
    for _ in 0..12 {
        let (s, res) = change_password(&app, &fresh, "a guess that is wrong", PASSWORD).await;
        if s == 429 {
            limited = true;
            break;
        }
        assert_eq!(s, 400, "{res}");
    }
    assert!(limited, "guesses are rate-limited as sign-ins are");
    assert_eq!(works(fresh).await, 200, "guessing changed nothing");
}

/// A sign-in with the old password that checked it just before a change landed (two argon2
/// runs take a while) opens a session of the old password's version: ended already, whatever
/// the clocks say.
async fn a_sign_in_racing_a_password_change_with_the_old_password_opens_no_lasting_session(
    b: Backend,
) {
    use kirim::ports::SessionRecord;
    let app = spawn_app(b).await;
    let t = app.onboard(0).await;
    let (email, id) = new_user(&app, &t.key, "read_only").await;
    let here = login_ok(&app, &email).await;
    let deps = &app.app.deps;
    let tenant = kirim::domain::TenantId::parse(&t.tenant_id).unwrap();
    // What the racing sign-in read: the user before the change.
    let before = deps.users.get_user(&tenant, &id).await.unwrap().unwrap();
    let (s, b) =
        change_password(&app, &here, PASSWORD, "a brand new passphrase, long enough").await;
    assert_eq!(s, 204, "{b}");
    // Its session is written after the change, with the version it checked.
    let token = kirim::secret::Secret::generate(kirim::service::users::SESSION_PREFIX);
    let now = kirim::ports::Clock::now(deps.clock.as_ref());
    deps.users
        .put_session(&SessionRecord {
            token_hash: kirim::secret::token_hash(token.expose()),
            tenant_id: tenant.clone(),
            user_id: id.clone(),
            role: before.role,
            created_at: now + chrono::Duration::seconds(1),
            expires_at: now + chrono::Duration::hours(12),
            revoked: false,
            last_seen_at: None,
            password_version: before.password_version,
            second_factor: None,
        })
        .await
        .unwrap();
    let (s, _) = call(&app, "GET", "/v1/messages", Some(token.expose()), None).await;
    assert_eq!(
        s, 401,
        "a session of the old password does not authenticate"
    );
}

/// A tenant that requires 2FA confines a user without it to setting it up: the password
/// change waits too (as every route but enrol, confirm and sign-out).
async fn a_session_confined_to_setting_up_2fa_cannot_change_the_password(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(0).await;
    let (email, _) = new_user(&app, &t.key, "operator").await;
    let (s, _) = call(
        &app,
        "PUT",
        "/v1/settings/2fa",
        Some(&t.key),
        Some(json!({"required": true})),
    )
    .await;
    assert_eq!(s, 200);
    let token = login_ok(&app, &email).await;
    let (s, b) = change_password(
        &app,
        &token,
        PASSWORD,
        "a brand new passphrase, long enough",
    )
    .await;
    assert_eq!(s, 403, "{b}");
    assert_eq!(b["error"]["code"], "totp_enrollment_required", "{b}");
    assert_eq!(
        login(&app, &email, PASSWORD, None).await.0,
        200,
        "unchanged"
    );
}

/// Wrong codes at the 2FA confirmation meet the user's own counter of wrong codes, as a
/// login's do: a session opened with a stolen password alone cannot guess its way to a
/// pending secret's code (which would turn 2FA on and make that session a full one).
async fn wrong_codes_at_the_2fa_confirmation_are_limited_as_a_logins_are(b: Backend) {
    use kirim::ports::Clock;
    // A clock that stands still: the wait a 429 names has not passed at the next request,
    // however slow the machine.
    let clock = kirim_tests::ManualClock::new();
    let mut cfg = kirim_tests::local_config(b).await;
    cfg.clock = kirim_infra::local::LocalClock(clock.clone());
    let app = kirim_tests::spawn_with(cfg).await;
    let now_secs = || clock.now().timestamp() as u64;
    let t = app.onboard(5).await;
    let (email, _) = new_user(&app, &t.key, "operator").await;
    let owner = login_ok(&app, &email).await;
    let (s, e) = call(&app, "POST", "/v1/auth/2fa/enroll", Some(&owner), None).await;
    assert_eq!(s, 200, "{e}");
    let pending = totp(e["secret"].as_str().unwrap());
    let thief = login_ok(&app, &email).await;
    let mut answers = Vec::new();
    for n in 0..10 {
        let wrong = format!(
            "{:06}",
            (pending.generate(now_secs()).parse::<u32>().unwrap() + 1 + n) % 1_000_000
        );
        let (s, b) = call(
            &app,
            "POST",
            "/v1/auth/2fa/confirm",
            Some(&thief),
            Some(json!({"totp_code": wrong})),
        )
        .await;
        answers.push((s, code(&b).to_owned()));
        if s == 429 {
            break;
        }
    }
    assert_eq!(
        answers[..5],
        vec![(400, "invalid_request".to_owned()); 5],
        "five wrong codes free: {answers:?}"
    );
    assert_eq!(
        answers.last(),
        Some(&(429, "rate_limited".to_owned())),
        "then the user's wrong codes wait: {answers:?}"
    );
    // While it waits, the right code is refused too: guessing gains nothing.
    let (s, _) = call(
        &app,
        "POST",
        "/v1/auth/2fa/confirm",
        Some(&thief),
        Some(json!({"totp_code": pending.generate(now_secs())})),
    )
    .await;
    assert_eq!(s, 429);
    let (s, list) = call(&app, "GET", "/v1/users", Some(&t.key), None).await;
    assert_eq!(s, 200, "{list}");
    let me = list["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["email"] == email.to_lowercase().as_str())
        .cloned()
        .unwrap();
    assert_eq!(me["totp_enabled"], false, "{me}");
}

/// A tenant has at most 200 console users (a bound on clutter, counted at creation): the
/// 201st answers `400 invalid_request` and is not stored.
async fn the_two_hundred_and_first_user_of_a_tenant_is_refused(b: Backend) {
    use kirim::ports::UserRecord;
    use kirim::service::users;
    let app = spawn_app(b).await;
    let t = app.onboard(1).await;
    let deps = &app.app.deps;
    let tenant = kirim::domain::TenantId::from_trusted(t.tenant_id.clone());
    // Stored directly (hashing 200 passwords would only slow the test).
    let stamp = kirim::domain::new_id().to_lowercase();
    for n in 0..users::MAX_USERS {
        deps.users
            .create_user(&UserRecord {
                id: kirim::domain::new_id(),
                tenant_id: tenant.clone(),
                email: format!("u{n}.{stamp}@example.com"),
                role: kirim::domain::Role::ReadOnly,
                password_hash: "x".into(),
                totp_secret: None,
                totp_confirmed: false,
                last_totp_step: 0,
                created_at: chrono::Utc::now(),
                password_version: 0,
            })
            .await
            .unwrap();
    }
    let (s, body) = call(
        &app,
        "POST",
        "/v1/users",
        Some(&t.key),
        Some(json!({"email": format!("one.more.{stamp}@example.com"), "role": "operator", "password": PASSWORD})),
    )
    .await;
    assert_eq!((s, code(&body)), (400, "invalid_request"), "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at most 200 users"),
        "{body}"
    );
    assert_eq!(
        deps.users.list_users(&tenant).await.unwrap().len(),
        users::MAX_USERS
    );
}

/// `GET /v1/users` pages as the other lists do (`limit`, `cursor` → `next_cursor`), its
/// default page holding a normal tenant's every user.
async fn the_users_list_pages_with_limit_and_cursor_and_refuses_a_bad_one(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(1).await;
    for role in ["admin", "operator", "read_only"] {
        new_user(&app, &t.key, role).await;
    }
    super::access::assert_pages(&app, &t.key, "/v1/users", "users", 3).await;
}

/// An admin resets the 2FA of a user who lost their authenticator: the user signs in with
/// the password alone (no code asked), every session of theirs ended; the user's own
/// admins cannot reset their own, another tenant's, an operator or a read-only key cannot;
/// done again it changes nothing; each reset is audited naming the user, never the seed.
async fn an_admin_resets_a_users_lost_2fa_and_every_session_of_theirs_ends(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(0).await;
    let other = app.onboard(0).await;
    let (admin_email, admin_id) = new_user(&app, &t.key, "admin").await;
    let (email, id) = new_user(&app, &t.key, "operator").await;
    let session = login_ok(&app, &email).await;
    let totp = enable_2fa(&app, &session).await;
    let seed = totp.get_secret_base32();
    let path = format!("/v1/users/{id}/2fa");
    let admin = login_ok(&app, &admin_email).await;
    let (_, operator_key) = super::access::new_key(&app, &t.key, "operator").await;
    let (_, read_only_key) = super::access::new_key(&app, &t.key, "read_only").await;

    // Refused, nothing changed: another tenant's admin, an operator's or a read-only key,
    // the operator user themself, an admin resetting their own.
    let (s, b) = call(&app, "DELETE", &path, Some(&other.key), None).await;
    assert_eq!((s, code(&b)), (404, "not_found"), "{b}");
    for key in [&operator_key, &read_only_key, &session] {
        let (s, b) = call(&app, "DELETE", &path, Some(key), None).await;
        assert_eq!((s, code(&b)), (403, "forbidden"), "{b}");
    }
    let own = format!("/v1/users/{admin_id}/2fa");
    let (s, b) = call(&app, "DELETE", &own, Some(&admin), None).await;
    assert_eq!((s, code(&b)), (409, "conflict"), "{b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("another admin can")),
        "{b}"
    );
    let (s, b) = call(
        &app,
        "DELETE",
        &format!("/v1/users/{}/2fa", kirim::domain::new_id()),
        Some(&t.key),
        None,
    )
    .await;
    assert_eq!((s, code(&b)), (404, "not_found"), "no such user: {b}");
    assert_eq!(
        call(&app, "GET", "/v1/account", Some(&session), None)
            .await
            .0,
        200
    );
    let (s, b) = login(&app, &email, PASSWORD, None).await;
    assert_eq!(
        (s, code(&b)),
        (401, "totp_required"),
        "still asked for a code"
    );
    // The user tries codes of their lost authenticator first: wrong codes counted.
    for _ in 0..6 {
        login(&app, &email, PASSWORD, Some("000000")).await;
    }

    // Reset by another admin's session: answered with the user as listed.
    let (s, view) = call(&app, "DELETE", &path, Some(&admin), None).await;
    assert_eq!(s, 200, "{view}");
    let (_, list) = call(&app, "GET", "/v1/users", Some(&t.key), None).await;
    let listed = list["users"]
        .as_array()
        .and_then(|l| l.iter().find(|u| u["id"] == id.as_str()).cloned());
    assert_eq!(Some(&view), listed.as_ref(), "{list}");
    assert_eq!(
        (&view["two_factor"], &view["totp_enabled"], &view["role"]),
        (&json!("none"), &json!(false), &json!("operator"))
    );
    let (s, b) = call(&app, "GET", "/v1/account", Some(&session), None).await;
    assert_eq!(
        (s, code(&b)),
        (401, "unauthenticated"),
        "their session ended"
    );
    let (s, b) = login(&app, &email, PASSWORD, None).await;
    assert_eq!(s, 200, "the password alone signs in: {b}");
    assert!(b.get("totp_enrollment_required").is_none(), "{b}");
    let fresh = b["token"].as_str().unwrap_or_default().to_owned();
    assert_eq!(
        call(&app, "GET", "/v1/account", Some(&fresh), None).await.0,
        200
    );
    assert_eq!(
        call(&app, "GET", "/v1/account", Some(&admin), None).await.0,
        200,
        "the admin's session is untouched"
    );

    // Again, by an admin key: nothing to clear, nothing changes (their new session stays).
    let (s, again) = call(&app, "DELETE", &path, Some(&t.key), None).await;
    assert_eq!((s, &again), (200, &view));
    assert_eq!(
        call(&app, "GET", "/v1/account", Some(&fresh), None).await.0,
        200
    );

    // Both resets audited with the user's id and who did it; never the seed or the email.
    let (s, page) = call(
        &app,
        "GET",
        "/v1/audit?action=DELETE%20/v1/users/%7Bid%7D/2fa",
        Some(&t.key),
        None,
    )
    .await;
    assert_eq!(s, 200, "{page}");
    let done: Vec<_> = page["events"]
        .as_array()
        .map(|l| l.iter().filter(|e| e["outcome"] == "success").collect())
        .unwrap_or_default();
    assert_eq!(done.len(), 2, "{page}");
    assert!(
        done.iter().all(|e| e["details"]["user_id"] == id.as_str()),
        "{page}"
    );
    assert_eq!(
        done[1]["actor"],
        json!({"type": "user", "id": admin_id}),
        "{page}"
    );
    assert_eq!(done[0]["actor"]["type"], "api_key", "{page}");
    assert_eq!(
        (
            &done[1]["details"]["changed"],
            &done[0]["details"]["changed"]
        ),
        (&json!(true), &json!(false)),
        "the second had nothing to reset: {page}"
    );
    let text = page.to_string();
    assert!(
        !text.contains(&seed) && !text.contains(&email.to_lowercase()),
        "{page}"
    );
    // The wrong codes counted before the reset were cleared with it: the new enrolment
    // confirms at once (it met them: 429 for up to 15 minutes). With the next step's code:
    // this test's first enrolment took the current step a moment ago, and no step at or
    // before the last accepted is taken again.
    let (s, e) = call(&app, "POST", "/v1/auth/2fa/enroll", Some(&fresh), None).await;
    assert_eq!(s, 200, "{e}");
    let next = self::totp(e["secret"].as_str().unwrap_or_default()).generate(now_secs() + 30);
    let (s, b) = call(
        &app,
        "POST",
        "/v1/auth/2fa/confirm",
        Some(&fresh),
        Some(json!({"totp_code": next})),
    )
    .await;
    assert_eq!(
        s, 200,
        "not held back by the codes counted before the reset: {b}"
    );
}

/// Where the tenant requires 2FA, a user whose 2FA an admin reset signs in with their
/// password confined to enrolling again, as a new user is; enrolled, a code is asked again.
async fn after_a_2fa_reset_a_tenant_requiring_2fa_confines_the_user_to_enrolling_again(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(0).await;
    let (s, _) = call(
        &app,
        "PUT",
        "/v1/settings/2fa",
        Some(&t.key),
        Some(json!({"required": true})),
    )
    .await;
    assert_eq!(s, 200);
    let (email, id) = new_user(&app, &t.key, "admin").await;
    let first = login_ok(&app, &email).await;
    enable_2fa(&app, &first).await;
    assert_eq!(
        call(&app, "GET", "/v1/account", Some(&first), None).await.0,
        200
    );

    let (s, b) = call(
        &app,
        "DELETE",
        &format!("/v1/users/{id}/2fa"),
        Some(&t.key),
        None,
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        call(&app, "GET", "/v1/account", Some(&first), None).await.0,
        401
    );
    let (s, b) = login(&app, &email, PASSWORD, None).await;
    assert_eq!(s, 200, "no code asked: {b}");
    assert_eq!(b["totp_enrollment_required"], true, "{b}");
    let token = b["token"].as_str().unwrap_or_default().to_owned();
    let (s, b) = call(&app, "GET", "/v1/account", Some(&token), None).await;
    assert_eq!((s, code(&b)), (403, "totp_enrollment_required"), "{b}");

    // Enrolled again with a new key: a full session, and a code at the next sign-in.
    let (s, e) = call(&app, "POST", "/v1/auth/2fa/enroll", Some(&token), None).await;
    assert_eq!(s, 200, "{e}");
    let next = self::totp(e["secret"].as_str().unwrap_or_default()).generate(now_secs() + 30);
    let (s, b) = call(
        &app,
        "POST",
        "/v1/auth/2fa/confirm",
        Some(&token),
        Some(json!({"totp_code": next})),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        call(&app, "GET", "/v1/account", Some(&token), None).await.0,
        200
    );
    let (s, b) = login(&app, &email, PASSWORD, None).await;
    assert_eq!((s, code(&b)), (401, "totp_required"), "{b}");
}

/// Every key records who made it, as the audit names its caller: the onboarding's key the
/// operator, a key made with a key that key, a console user's the user, a rotation's the
/// rotating caller. A removed user's keys keep working (they are the tenant's), and the
/// list is how the remaining admins find them.
async fn every_key_shows_who_made_it_and_a_removed_users_keys_are_found_by_it(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(0).await;
    let (email, user_id) = new_user(&app, &t.key, "admin").await;
    let token = login_ok(&app, &email).await;
    let make = |credential: String, name: &'static str| {
        let app = &app;
        async move {
            let (s, b) = call(
                app,
                "POST",
                "/v1/api-keys",
                Some(&credential),
                Some(json!({"name": name, "role": "admin"})),
            )
            .await;
            assert_eq!(s, 201, "{b}");
            (
                b["id"].as_str().unwrap().to_owned(),
                b["key"].as_str().unwrap().to_owned(),
            )
        }
    };
    let (by_user, users_key) = make(token.clone(), "made by a user").await;
    let (by_key, _) = make(t.key.clone(), "made by a key").await;
    let (s, rotated) = call(
        &app,
        "POST",
        &format!("/v1/api-keys/{by_key}/rotate"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(s, 201, "{rotated}");
    let (_, list) = call(&app, "GET", "/v1/api-keys", Some(&t.key), None).await;
    let maker = |id: &str| {
        list["api_keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["id"] == id)
            .map(|k| k["created_by"].clone())
            .unwrap()
    };
    let onboarding_key = list["api_keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "initial admin key")
        .map(|k| k["id"].as_str().unwrap().to_owned())
        .unwrap();
    // A user named by its email too, as it was: the id alone names no one once the user
    // is removed.
    let email_then = email.to_lowercase();
    assert_eq!(
        maker(&by_user),
        json!({"type": "user", "id": user_id, "email": email_then})
    );
    assert_eq!(
        maker(&by_key),
        json!({"type": "api_key", "id": onboarding_key})
    );
    assert_eq!(
        maker(rotated["id"].as_str().unwrap()),
        json!({"type": "user", "id": user_id, "email": email_then}),
        "a rotation's key is its rotating caller's"
    );
    assert_eq!(
        maker(&onboarding_key),
        json!({"type": "operator", "id": "platform"})
    );
    // Removed, the user's sessions end; the key it made is the tenant's and works on.
    let (s, _) = call(
        &app,
        "DELETE",
        &format!("/v1/users/{user_id}"),
        Some(&t.key),
        None,
    )
    .await;
    assert_eq!(s, 204);
    assert_eq!(
        call(&app, "GET", "/v1/account", Some(&token), None).await.0,
        401
    );
    assert_eq!(
        call(&app, "GET", "/v1/account", Some(&users_key), None)
            .await
            .0,
        200
    );
    // And the list still says whose it was.
    let (_, list) = call(&app, "GET", "/v1/api-keys", Some(&t.key), None).await;
    assert!(
        list["api_keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["id"] == by_user.as_str() && k["created_by"]["email"] == email_then.as_str()),
        "{list}"
    );
}

on_both_backends!(
    every_key_shows_who_made_it_and_a_removed_users_keys_are_found_by_it,
    an_admin_resets_a_users_lost_2fa_and_every_session_of_theirs_ends,
    after_a_2fa_reset_a_tenant_requiring_2fa_confines_the_user_to_enrolling_again,
    the_users_list_pages_with_limit_and_cursor_and_refuses_a_bad_one,
    the_two_hundred_and_first_user_of_a_tenant_is_refused,
    wrong_codes_at_the_2fa_confirmation_are_limited_as_a_logins_are,
    a_sign_in_racing_a_password_change_with_the_old_password_opens_no_lasting_session,
    a_session_confined_to_setting_up_2fa_cannot_change_the_password,
    a_user_changes_their_password_and_every_session_of_theirs_ends,
    a_locked_second_factor_after_a_right_password_is_audited,
    a_two_factor_sign_in_shows_no_denied_login_but_a_wrong_code_or_password_does,
    a_wrong_current_password_or_confirmation_code_is_audited_as_denied,
    an_admin_changes_a_users_role_and_it_bites_on_their_open_session,
    a_console_user_logs_in_acts_with_its_role_enables_2fa_and_logs_out,
    a_wrong_password_and_an_unknown_email_answer_alike_over_http,
    another_tenants_users_answer_404_and_a_deleted_users_sessions_end,
    a_tenant_requiring_2fa_confines_users_without_it_to_enrollment,
    confirming_2fa_in_one_session_leaves_the_users_password_only_sessions_confined,
    an_ip_allow_list_applies_to_api_keys_but_not_to_console_sessions,
);

async fn an_ip_allow_list_applies_to_api_keys_but_not_to_console_sessions(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(0).await;
    let (email, _) = new_user(&app, &t.key, "admin").await;
    let token = login_ok(&app, &email).await;
    let (s, _) = call(
        &app,
        "PUT",
        "/v1/settings/ip-allowlist",
        Some(&token),
        Some(json!({"cidrs": ["203.0.113.0/24"]})),
    )
    .await;
    assert_eq!(s, 200);
    let (s, b) = call(&app, "GET", "/v1/account", Some(&t.key), None).await;
    assert_eq!((s, code(&b)), (403, "ip_not_allowed"));
    let (s, _) = call(&app, "GET", "/v1/account", Some(&token), None).await;
    assert_eq!(s, 200, "API.md: allow-lists apply to API-key requests");
    // The console user can undo the lock-out.
    let (s, _) = call(
        &app,
        "PUT",
        "/v1/settings/ip-allowlist",
        Some(&token),
        Some(json!({"cidrs": []})),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(
        call(&app, "GET", "/v1/account", Some(&t.key), None).await.0,
        200
    );
}

/// A session token someone stole (from a script, a log) must not enrol the thief's own
/// second factor and lock its owner out: a 2FA enrolment needs a sign-in of the last 15
/// minutes; the owner, signing in again, enrols at once.
#[tokio::test]
async fn a_session_opened_over_fifteen_minutes_ago_cannot_start_a_2fa_enrolment() {
    use kirim::service::{auth, users};
    let clock = kirim_tests::ManualClock::new();
    let deps = kirim::wiring::memory_deps(kirim_tests::test_settings(), clock.clone()).unwrap();
    let (tenant, email, view) = operator_in_open_tenant(&deps).await;
    let login = || async {
        let req: users::LoginRequest =
            serde_json::from_value(json!({"email": email, "password": PASSWORD})).unwrap();
        users::login(&deps, req, None).await.unwrap()
    };
    let old = login().await;
    // Used now and then, never idle.
    for _ in 0..2 {
        clock.advance(chrono::Duration::minutes(8));
        auth::authenticate(&deps, Some(old.token.expose()))
            .await
            .unwrap();
    }
    let caller = auth::authenticate(&deps, Some(old.token.expose()))
        .await
        .unwrap();
    let refused = users::enroll(&deps, &caller).await;
    assert!(
        matches!(&refused, Err(kirim::service::errors::ServiceError::Conflict(m)) if m.contains("sign in again")),
        "{:?}",
        refused.map(|_| ())
    );
    let user = deps
        .users
        .get_user(&tenant, &view.id)
        .await
        .unwrap()
        .unwrap();
    assert!(user.totp_secret.is_none(), "nothing pending");
    let fresh = login().await;
    let caller = auth::authenticate(&deps, Some(fresh.token.expose()))
        .await
        .unwrap();
    users::enroll(&deps, &caller)
        .await
        .expect("a fresh sign-in enrols");
}

#[tokio::test]
async fn a_session_stops_authenticating_when_its_twelve_hours_pass() {
    use kirim::service::{auth, users};
    let clock = kirim_tests::ManualClock::new();
    let deps = kirim::wiring::memory_deps(kirim_tests::test_settings(), clock.clone()).unwrap();
    let (tenant, email, view) = operator_in_open_tenant(&deps).await;
    let req: users::LoginRequest =
        serde_json::from_value(json!({"email": email, "password": PASSWORD})).unwrap();
    let session = users::login(&deps, req, None).await.unwrap();
    let caller = auth::authenticate(&deps, Some(session.token.expose()))
        .await
        .unwrap();
    assert_eq!(
        caller,
        auth::Caller::Session {
            tenant_id: tenant.clone(),
            user_id: view.id.clone(),
            role: kirim::domain::Role::Operator,
            enrollment_only: false,
            signed_in_at: deps.clock.now(),
        }
    );
    assert!(!format!("{:?}", session.token).contains(session.token.expose()));
    // Used every 20 minutes (never idle for 30), it lasts its twelve hours and no more:
    // at 11 h 40 min it still works, at 12 h (idle 20 minutes only) it is over.
    for _ in 0..(12 * 3 - 1) {
        clock.advance(chrono::Duration::minutes(20));
        assert!(auth::authenticate(&deps, Some(session.token.expose()))
            .await
            .is_ok());
    }
    clock.advance(chrono::Duration::minutes(20));
    assert!(auth::authenticate(&deps, Some(session.token.expose()))
        .await
        .is_err());
}

/// A login that storage stops part-way (here: reading the user's tenant) is not the
/// caller's failure: what its gates counted is given back, so it costs nothing.
#[tokio::test]
async fn a_login_stopped_part_way_by_storage_gives_back_what_its_gates_counted() {
    use kirim::service::users::{self, LoginError};
    let clock = kirim_tests::ManualClock::new();
    let deps = kirim::wiring::memory_deps(kirim_tests::test_settings(), clock.clone()).unwrap();
    let (_, email, _) = operator_in_open_tenant(&deps).await;
    let login = |deps: &kirim::service::Deps, password: &str| {
        let req: users::LoginRequest =
            serde_json::from_value(json!({"email": email, "password": password})).unwrap();
        let deps = deps.clone();
        async move { users::login(&deps, req, "198.51.100.20".parse().ok()).await }
    };
    let mut broken = deps.clone();
    broken.tenants =
        std::sync::Arc::new(super::access::StatusChangesFail(deps.tenants.clone(), true));
    for _ in 0..8 {
        assert!(matches!(
            login(&broken, PASSWORD).await,
            Err(LoginError::Service(_))
        ));
    }
    // Nothing was counted: five wrong passwords are still free, the right one works.
    for _ in 0..5 {
        assert!(matches!(
            login(&deps, "not the password").await,
            Err(LoginError::InvalidCredentials)
        ));
    }
    clock.advance(chrono::Duration::seconds(1));
    assert!(login(&deps, PASSWORD).await.is_ok());
}

/// A tenant onboarded in `deps` (its users may log in only while it is open).
async fn open_tenant(deps: &kirim::service::Deps) -> kirim::domain::TenantId {
    let phone_number_id = (100_000_000 + ulid::Ulid::new().random() % 900_000_000).to_string();
    let req: kirim::service::accounts::NewTenant = serde_json::from_value(json!({
        "name": "Kedai", "waba_id": "1", "phone_number_id": phone_number_id,
        "meta_access_token": "EAAG", "credits": 0}))
    .unwrap();
    kirim::service::accounts::create_tenant(deps, req)
        .await
        .unwrap()
        .0
        .id
}

/// An operator of a tenant onboarded in `deps`: (tenant, email, the user).
async fn operator_in_open_tenant(
    deps: &kirim::service::Deps,
) -> (
    kirim::domain::TenantId,
    String,
    kirim::service::users::UserView,
) {
    use kirim::service::users;
    let tenant = open_tenant(deps).await;
    let email = unique_email();
    let req: users::NewUser =
        serde_json::from_value(json!({"email": email, "role": "operator", "password": PASSWORD}))
            .unwrap();
    let view = users::create(deps, &tenant, req).await.unwrap();
    (tenant, email, view)
}

async fn logged_in_operator(deps: &kirim::service::Deps) -> kirim::secret::Secret {
    use kirim::service::users;
    let (_, email, _) = operator_in_open_tenant(deps).await;
    let req: users::LoginRequest =
        serde_json::from_value(json!({"email": email, "password": PASSWORD})).unwrap();
    users::login(deps, req, None).await.unwrap().token
}

/// Uses are recorded at most once a minute; one not recorded still counts: a session used
/// 59 s after its sign-in is not ended 29 min 1 s after that use.
#[tokio::test]
async fn a_session_is_never_ended_before_thirty_minutes_after_its_last_use() {
    use kirim::service::auth;
    let clock = kirim_tests::ManualClock::new();
    let deps = kirim::wiring::memory_deps(kirim_tests::test_settings(), clock.clone()).unwrap();
    let token = logged_in_operator(&deps).await;
    clock.advance(chrono::Duration::seconds(59));
    assert!(auth::authenticate(&deps, Some(token.expose()))
        .await
        .is_ok());
    clock.advance(chrono::Duration::minutes(29) + chrono::Duration::seconds(30));
    assert!(
        auth::authenticate(&deps, Some(token.expose()))
            .await
            .is_ok(),
        "29 min 30 s after its last use: still signed in"
    );
    clock.advance(chrono::Duration::minutes(31));
    assert!(auth::authenticate(&deps, Some(token.expose()))
        .await
        .is_err());
}

#[tokio::test]
async fn a_session_left_idle_for_thirty_minutes_ends_and_stays_ended() {
    use kirim::service::auth;
    let clock = kirim_tests::ManualClock::new();
    let deps = kirim::wiring::memory_deps(kirim_tests::test_settings(), clock.clone()).unwrap();
    let token = logged_in_operator(&deps).await;
    clock.advance(chrono::Duration::minutes(29));
    assert!(
        auth::authenticate(&deps, Some(token.expose()))
            .await
            .is_ok(),
        "29 idle minutes: still signed in"
    );
    clock.advance(chrono::Duration::minutes(29));
    assert!(
        auth::authenticate(&deps, Some(token.expose()))
            .await
            .is_ok(),
        "each use restarts the idle clock"
    );
    clock.advance(chrono::Duration::minutes(31));
    assert!(
        auth::authenticate(&deps, Some(token.expose()))
            .await
            .is_err(),
        "30 idle minutes end the session (within the minute uses are recorded in)"
    );
    clock.advance(chrono::Duration::minutes(-31));
    assert!(
        auth::authenticate(&deps, Some(token.expose()))
            .await
            .is_err(),
        "an ended session does not come back"
    );
}
