//! `PUT /v1/platform/tenants/{id}/meta-token`: the operator replaces a tenant's Meta
//! access token, end to end in local mode on both backends (the sandbox keeps a hash of
//! the token each send came with, never the token).

use kirim::config::Backend;
use kirim::domain::TenantId;
use kirim::ports::TenantStatus;
use kirim_tests::{spawn_with, ManualClock, TestApp, OPERATOR_TOKEN};
use serde_json::{json, Value};
use sha2::Digest;

const ONBOARDED: &str = "EAAG-test-meta-token";
const REPLACED: &str = "EAAG-the-replacement-token-7";

fn sha(token: &str) -> String {
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

async fn app_with_clock(b: Backend) -> (TestApp, std::sync::Arc<ManualClock>) {
    let clock = ManualClock::new();
    let mut cfg = kirim_tests::local_config(b).await;
    cfg.clock = kirim_infra::local::LocalClock(clock.clone());
    (spawn_with(cfg).await, clock)
}

async fn put_token(app: &TestApp, tenant: &str, bearer: Option<&str>, body: &str) -> (u16, Value) {
    let mut req = app
        .http
        .put(app.url(&format!("/v1/platform/tenants/{tenant}/meta-token")))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(b) = bearer {
        req = req.bearer_auth(b);
    }
    let res = req.send().await.expect("meta-token request");
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// The token secret's current value, as the store holds it.
async fn stored_token(app: &TestApp, tenant: &str) -> Option<String> {
    let id = TenantId::parse(tenant).expect("a tenant id");
    let t = app
        .app
        .deps
        .tenants
        .get_tenant(&id)
        .await
        .unwrap()
        .expect("the tenant");
    app.app
        .deps
        .secrets
        .store()
        .get_secret(&t.meta_token_secret)
        .await
        .unwrap()
        .map(|s| s.expose().to_owned())
}

/// Sends to `to` and answers the hash of the token the sandbox received it with.
async fn token_of_next_send(app: &TestApp, key: &str, to: &str) -> Option<String> {
    let digits = to.trim_start_matches('+');
    let before = app.sandbox_requests_to(digits).len();
    app.send_ok(key, to).await;
    // Up to a minute: a deadline, not a speed assertion (the send goes through the queue
    // pollers; 5 s was tight on a loaded CI machine sharing one moto).
    for _ in 0..1200 {
        let seen = app.sandbox_requests_to(digits);
        if seen.len() > before {
            return seen.last().and_then(|r| r.token_sha256.clone());
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the send did not reach the sandbox");
}

/// The operator replaces the token: `200` naming the tenant and the time, never the token;
/// the secret holds the new one, the tenant item the time, and the next sends go with it
/// (also once the 5 minutes of fresh reads have passed); the call is audited on the
/// tenant's chain as the operator's, naming no secret, and no log line holds the token.
async fn the_operator_replaces_a_tenants_meta_token_and_its_next_sends_go_with_it(b: Backend) {
    let (app, clock) = app_with_clock(b).await;
    let t = app.onboard(10).await;
    let to = "+60123450001";
    assert_eq!(
        token_of_next_send(&app, &t.key, to).await,
        Some(sha(ONBOARDED))
    );
    let (status, body) = put_token(
        &app,
        &t.tenant_id,
        Some(OPERATOR_TOKEN),
        &json!({ "meta_access_token": REPLACED }).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["tenant_id"], t.tenant_id.as_str());
    let at = body["meta_token_updated_at"]
        .as_str()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .expect("a time")
        .with_timezone(&chrono::Utc);
    assert_eq!(
        body.as_object().map(|o| o.len()),
        Some(2),
        "nothing else: {body}"
    );
    assert!(!body.to_string().contains(REPLACED));
    assert_eq!(
        stored_token(&app, &t.tenant_id).await.as_deref(),
        Some(REPLACED)
    );
    let id = TenantId::parse(&t.tenant_id).unwrap();
    let tenant = app.app.deps.tenants.get_tenant(&id).await.unwrap().unwrap();
    assert_eq!(tenant.meta_token_changed_at, Some(at));
    assert_eq!(
        token_of_next_send(&app, &t.key, to).await,
        Some(sha(REPLACED))
    );
    clock.advance(chrono::Duration::minutes(6));
    assert_eq!(
        token_of_next_send(&app, &t.key, "+60123450002").await,
        Some(sha(REPLACED)),
        "after the fresh-read window too"
    );
    let (events, _) = app
        .app
        .deps
        .audit
        .list(
            &t.tenant_id,
            &kirim::ports::AuditQuery {
                limit: 100,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let event = events
        .iter()
        .find(|e| e.action == "PUT /v1/platform/tenants/{id}/meta-token")
        .expect("the replacement audited on the tenant's chain");
    assert_eq!(
        (event.actor_type.as_str(), event.actor_id.as_str()),
        ("operator", "platform")
    );
    assert_eq!(event.outcome, kirim::ports::AuditOutcome::Success);
    assert!(!event.details.contains(REPLACED) && !event.details.contains("EAAG"));
    assert!(
        event.details.contains("meta_token_updated_at"),
        "{}",
        event.details
    );
    assert!(!kirim_tests::captured_logs().contains(REPLACED));
}

/// Bodies onboarding would refuse for its token are refused here too (`400
/// invalid_request`), and write nothing: the secret keeps its token, the tenant no time.
async fn a_token_onboarding_would_refuse_is_refused_and_nothing_is_written(b: Backend) {
    let (app, _clock) = app_with_clock(b).await;
    let t = app.onboard(0).await;
    let long = "a".repeat(4097);
    for body in [
        json!({}).to_string(),
        json!({"meta_access_token": ""}).to_string(),
        json!({"meta_access_token": "   "}).to_string(),
        json!({"meta_access_token": "EAAG with a space"}).to_string(),
        json!({"meta_access_token": "EAAG\nline"}).to_string(),
        json!({"meta_access_token": long}).to_string(),
        json!({"meta_access_token": null}).to_string(),
        json!({"meta_access_token": 7}).to_string(),
        json!({"meta_access_token": REPLACED, "waba_id": "1"}).to_string(),
        "not json".to_owned(),
    ] {
        let (status, answer) = put_token(&app, &t.tenant_id, Some(OPERATOR_TOKEN), &body).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["error"]["code"], "invalid_request", "{body}");
        assert!(!answer.to_string().contains("EAAG"), "{answer}");
    }
    assert_eq!(
        stored_token(&app, &t.tenant_id).await.as_deref(),
        Some(ONBOARDED)
    );
    let id = TenantId::parse(&t.tenant_id).unwrap();
    let tenant = app.app.deps.tenants.get_tenant(&id).await.unwrap().unwrap();
    assert_eq!(tenant.meta_token_changed_at, None);
}

/// Only the operator token opens the route (a tenant's admin key is `403`, none `401`); an
/// id that is no tenant's is `404` and makes no secret; a closed tenant is `409` (its secret
/// is being deleted) and keeps its token; a suspended one is replaced (how a tenant
/// suspended on Meta's 190 is fixed before its resume).
async fn only_the_operator_replaces_the_token_of_an_open_tenant(b: Backend) {
    let (app, _clock) = app_with_clock(b).await;
    let t = app.onboard(0).await;
    let body = json!({ "meta_access_token": REPLACED }).to_string();
    let (status, _) = put_token(&app, &t.tenant_id, Some(&t.key), &body).await;
    assert_eq!(status, 403, "a tenant's admin key");
    let (status, _) = put_token(&app, &t.tenant_id, None, &body).await;
    assert_eq!(status, 401, "no credential");
    assert_eq!(
        stored_token(&app, &t.tenant_id).await.as_deref(),
        Some(ONBOARDED)
    );

    let other = TenantId::generate();
    let (status, answer) = put_token(&app, other.as_str(), Some(OPERATOR_TOKEN), &body).await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let name = format!(
        "{}tenants/{other}/meta-token",
        app.app.deps.settings.secret_prefix
    );
    assert_eq!(
        app.app
            .deps
            .secrets
            .store()
            .get_secret(&name)
            .await
            .unwrap(),
        None,
        "no secret made for an id that is no tenant's"
    );
    let (status, _) = put_token(&app, "not-a-tenant", Some(OPERATOR_TOKEN), &body).await;
    assert_eq!(status, 404);

    let id = TenantId::parse(&t.tenant_id).unwrap();
    kirim::service::accounts::set_status(
        &app.app.deps,
        &id,
        TenantStatus::Suspended,
        Some("meta error 190".into()),
    )
    .await
    .unwrap();
    let (status, answer) = put_token(&app, &t.tenant_id, Some(OPERATOR_TOKEN), &body).await;
    assert_eq!(status, 200, "a suspended tenant: {answer}");
    assert_eq!(
        stored_token(&app, &t.tenant_id).await.as_deref(),
        Some(REPLACED)
    );

    kirim::service::accounts::close(&app.app.deps, &id, None)
        .await
        .unwrap();
    let (status, answer) = put_token(
        &app,
        &t.tenant_id,
        Some(OPERATOR_TOKEN),
        &json!({"meta_access_token": "EAAG-after-closing"}).to_string(),
    )
    .await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (409, Some("conflict"))
    );
    assert_eq!(
        stored_token(&app, &t.tenant_id).await.as_deref(),
        Some(REPLACED),
        "a closed tenant's secret is not written"
    );
}

on_both_backends!(
    the_operator_replaces_a_tenants_meta_token_and_its_next_sends_go_with_it,
    a_token_onboarding_would_refuse_is_refused_and_nothing_is_written,
    only_the_operator_replaces_the_token_of_an_open_tenant,
);

/// An onboarding's rare race can leave a tenant whose token secret is scheduled for
/// deletion (Secrets Manager's recovery window: it reads as absent, and a new version put
/// into it is refused). The route restores it and puts the new token, and the tenant sends.
#[tokio::test]
async fn a_tenants_token_secret_scheduled_for_deletion_is_restored_with_the_new_token() {
    let (app, _clock) = app_with_clock(Backend::Aws).await;
    let t = app.onboard(10).await;
    let id = TenantId::parse(&t.tenant_id).unwrap();
    let tenant = app.app.deps.tenants.get_tenant(&id).await.unwrap().unwrap();
    // As the onboarding's clean-up does it: `DeleteSecret` with a 7-day recovery window.
    app.app
        .deps
        .secrets
        .store()
        .delete_secret(&tenant.meta_token_secret)
        .await
        .unwrap();
    assert_eq!(
        stored_token(&app, &t.tenant_id).await,
        None,
        "being deleted"
    );
    let (status, answer) = put_token(
        &app,
        &t.tenant_id,
        Some(OPERATOR_TOKEN),
        &json!({ "meta_access_token": REPLACED }).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        stored_token(&app, &t.tenant_id).await.as_deref(),
        Some(REPLACED)
    );
    assert_eq!(
        token_of_next_send(&app, &t.key, "+60123450003").await,
        Some(sha(REPLACED))
    );
}
