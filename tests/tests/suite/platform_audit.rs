//! The platform operator's view of the platform chain (`GET /v1/platform/audit`, `…/verify`),
//! what goes on it (every suspend, resume and close), a closed tenant's users' emails freed at
//! its close-out, and the sandbox's webhooks naming their number's WABA. On both backends.

use kirim::config::Backend;
use kirim_tests::{spawn_app, TestApp, OPERATOR_TOKEN};
use serde_json::{json, Value};

use super::access::{call, code, new_key};

/// The platform chain's events whose action is `action`, newest first (one page).
async fn platform_events(app: &TestApp, action: &str) -> Vec<Value> {
    let path = format!("/v1/platform/audit?limit=100&action={action}");
    let (s, page) = call(app, "GET", &path, Some(OPERATOR_TOKEN), None).await;
    assert_eq!(s, 200, "{page}");
    page["events"].as_array().cloned().unwrap_or_default()
}

/// Who tried a revoked key, read by the operator: the platform chain, paged and filtered as
/// a tenant's, verified, and closed to every tenant credential.
async fn the_operator_reads_and_verifies_the_platform_chain_and_sees_who_tried_a_revoked_key(
    b: Backend,
) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let (key_id, key) = new_key(&app, &t.key, "operator").await;
    let path = format!("/v1/api-keys/{key_id}");
    assert_eq!(call(&app, "DELETE", &path, Some(&t.key), None).await.0, 204);
    for _ in 0..2 {
        let (s, _) = call(&app, "GET", "/v1/account", Some(&key), None).await;
        assert_eq!(s, 401);
    }
    let tried = platform_events(&app, "GET%20/v1/account").await;
    assert_eq!(tried.len(), 2, "{tried:?}");
    for e in &tried {
        assert_eq!(e["actor"], json!({"type": "anonymous", "id": "-"}), "{e}");
        assert_eq!(e["outcome"], "denied", "{e}");
        assert_eq!(e["details"]["status"], 401, "{e}");
        assert!(e["ip"].is_string(), "the address it came from: {e}");
    }
    // Paged as a tenant's: newest first, `next_cursor` to the next page.
    let (s, first) = call(
        &app,
        "GET",
        "/v1/platform/audit?limit=1&action=GET%20/v1/account",
        Some(OPERATOR_TOKEN),
        None,
    )
    .await;
    assert_eq!(s, 200, "{first}");
    assert_eq!(first["events"][0]["seq"], tried[0]["seq"]);
    let cursor = first["next_cursor"]
        .as_str()
        .expect("a next page")
        .to_owned();
    let next = format!("/v1/platform/audit?limit=1&action=GET%20/v1/account&cursor={cursor}");
    let (s, second) = call(&app, "GET", &next, Some(OPERATOR_TOKEN), None).await;
    assert_eq!(s, 200, "{second}");
    assert_eq!(second["events"][0]["seq"], tried[1]["seq"]);
    let (s, bad) = call(
        &app,
        "GET",
        "/v1/platform/audit?limit=0",
        Some(OPERATOR_TOKEN),
        None,
    )
    .await;
    assert_eq!((s, code(&bad)), (400, "invalid_request"), "{bad}");
    // Verified as a tenant's chain is.
    let (s, report) = call(
        &app,
        "GET",
        "/v1/platform/audit/verify",
        Some(OPERATOR_TOKEN),
        None,
    )
    .await;
    assert_eq!(s, 200, "{report}");
    assert_eq!(report["valid"], true, "{report}");
    assert_eq!(report["complete"], true, "{report}");
    assert!(report["checked"].as_u64().unwrap_or(0) >= 2, "{report}");
    // Reading it is not audited (as `GET /v1/audit` is not on a tenant's chain).
    assert!(platform_events(&app, "GET%20/v1/platform/audit")
        .await
        .is_empty());
    // No tenant credential reads it, an admin's neither.
    for path in ["/v1/platform/audit", "/v1/platform/audit/verify"] {
        let (s, body) = call(&app, "GET", path, Some(&t.key), None).await;
        assert_eq!((s, code(&body)), (403, "forbidden"), "{path}: {body}");
    }
}

/// A refused key that has ended (revoked, or rotated out with no grace) is still no caller —
/// actor `anonymous`, on the platform chain — but its event names the key and its tenant by
/// their ids, and how it ended, never the key or its hash; an unknown key names nothing.
async fn a_refused_ended_key_names_its_key_and_tenant_and_an_unknown_key_names_nothing(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let (revoked_id, revoked) = new_key(&app, &t.key, "operator").await;
    let path = format!("/v1/api-keys/{revoked_id}");
    assert_eq!(call(&app, "DELETE", &path, Some(&t.key), None).await.0, 204);
    let (rotated_id, rotated) = new_key(&app, &t.key, "read_only").await;
    let (s, body) = call(
        &app,
        "POST",
        &format!("/v1/api-keys/{rotated_id}/rotate"),
        Some(&t.key),
        Some(json!({"grace_period_hours": 0})),
    )
    .await;
    assert_eq!(s, 201, "{body}");
    let unknown = format!("{}x", &revoked[..revoked.len() - 1]);
    // Each presented on a route of its own, so that each event is told apart.
    for (key, route) in [
        (&revoked, "/v1/account"),
        (&rotated, "/v1/api-keys"),
        (&unknown, "/v1/audit"),
    ] {
        let (s, body) = call(&app, "GET", route, Some(key), None).await;
        assert_eq!(
            (s, code(&body)),
            (401, "unauthenticated"),
            "{route}: {body}"
        );
    }
    let one = |events: Vec<Value>| {
        assert_eq!(events.len(), 1, "{events:?}");
        events[0].clone()
    };
    for (action, key_id, how, key) in [
        ("GET%20/v1/account", &revoked_id, "revoked", &revoked),
        ("GET%20/v1/api-keys", &rotated_id, "expired", &rotated),
    ] {
        let e = one(platform_events(&app, action).await);
        assert_eq!(e["actor"], json!({"type": "anonymous", "id": "-"}), "{e}");
        assert_eq!(e["outcome"], "denied", "{e}");
        assert_eq!(e["details"]["status"], 401, "{e}");
        assert_eq!(e["details"]["key_id"], key_id.as_str(), "{e}");
        assert_eq!(e["details"]["tenant_id"], t.tenant_id.as_str(), "{e}");
        assert_eq!(e["details"]["key_ended"], how, "{e}");
        let text = e.to_string();
        assert!(
            !text.contains(key.as_str()) && !text.contains(&kirim::secret::token_hash(key)),
            "neither the key nor its hash: {e}"
        );
    }
    let e = one(platform_events(&app, "GET%20/v1/audit").await);
    assert_eq!(e["actor"], json!({"type": "anonymous", "id": "-"}), "{e}");
    assert_eq!(
        e["details"],
        json!({"reason": "unauthenticated", "status": 401}),
        "an unknown key names nothing: {e}"
    );
    // Not on the tenant's chain: a client still sending an ended key does not write there.
    let (s, page) = call(&app, "GET", "/v1/audit?limit=100", Some(&t.key), None).await;
    assert_eq!(s, 200, "{page}");
    assert!(
        page["events"]
            .as_array()
            .is_some_and(|events| events.iter().all(|e| e["outcome"] != "denied")),
        "{page}"
    );
}

/// A resume and a close without a reason are on the platform chain all the same, naming
/// the tenant, with a `null` reason.
async fn a_resume_or_close_without_a_reason_is_on_the_platform_chain(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let base = format!("/v1/platform/tenants/{}", t.tenant_id);
    let op = Some(OPERATOR_TOKEN);
    let body = Some(json!({"reason": "unpaid invoice"}));
    let (s, _) = call(&app, "POST", &format!("{base}/suspend"), op, body).await;
    assert_eq!(s, 200);
    assert_eq!(
        call(&app, "POST", &format!("{base}/resume"), op, None)
            .await
            .0,
        200
    );
    assert_eq!(call(&app, "DELETE", &base, op, None).await.0, 200);
    for action in ["tenant.suspend", "tenant.resume", "tenant.close"] {
        let events = platform_events(&app, action).await;
        let mine: Vec<&Value> = events
            .iter()
            .filter(|e| e["details"]["tenant_id"] == t.tenant_id.as_str())
            .collect();
        assert_eq!(mine.len(), 1, "{action}: {events:?}");
        assert_eq!(
            mine[0]["actor"],
            json!({"type": "operator", "id": "platform"})
        );
        let want = if action == "tenant.suspend" {
            json!("unpaid invoice")
        } else {
            Value::Null
        };
        assert_eq!(mine[0]["details"]["reason"], want, "{action}");
    }
}

/// A suspension on Meta's word (the sandbox's 0006 answers 190, token expired) is on the
/// platform chain too, naming the tenant, beside the tenant's own chain: the operator, who
/// resumes it, reads every suspension in one place.
async fn a_suspension_on_metas_word_is_on_the_platform_chain(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let id = app.send_ok(&t.key, "+60123450006").await;
    app.wait_status(&t.key, &id, "failed").await;
    let mut mine = Vec::new();
    for _ in 0..100 {
        mine = platform_events(&app, "tenant.suspend")
            .await
            .into_iter()
            .filter(|e| e["details"]["tenant_id"] == t.tenant_id.as_str())
            .collect();
        if !mine.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(mine.len(), 1, "{mine:?}");
    assert_eq!(mine[0]["actor"]["type"], "system", "{mine:?}");
    assert!(
        mine[0]["details"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("190")),
        "{mine:?}"
    );
}

/// A closed tenant's close-out frees its users' emails (another tenant adds one at once)
/// and leaves its users' items nothing that signs in; a second run changes nothing more.
async fn a_closed_out_tenants_user_emails_are_free_and_its_users_keep_no_password_or_seed(
    b: Backend,
) {
    let app = spawn_app(b).await;
    let (closing, next) = (app.onboard(5).await, app.onboard(5).await);
    let (email, user_id) = super::users::new_user(&app, &closing.key, "admin").await;
    let session = super::users::login_ok(&app, &email).await;
    super::users::enable_2fa(&app, &session).await;
    let add = |key: String| {
        let app = &app;
        let email = email.clone();
        async move {
            let body = json!({"email": email, "role": "admin", "password": super::users::PASSWORD});
            call(app, "POST", "/v1/users", Some(&key), Some(body)).await
        }
    };
    let (s, body) = add(next.key.clone()).await;
    assert_eq!((s, code(&body)), (409, "conflict"), "taken while open");
    let path = format!("/v1/platform/tenants/{}", closing.tenant_id);
    assert_eq!(
        call(&app, "DELETE", &path, Some(OPERATOR_TOKEN), None)
            .await
            .0,
        200
    );
    let run = || {
        call(
            &app,
            "POST",
            "/v1/platform/retention/run",
            Some(OPERATOR_TOKEN),
            None,
        )
    };
    let (s, report) = run().await;
    assert_eq!(s, 200, "{report}");
    let done = report["closed_out"].as_array().cloned().unwrap_or_default();
    assert_eq!(done.len(), 1, "{report}");
    assert_eq!(done[0]["emails_freed"], 1, "{report}");
    let stored = || async {
        let key = format!("USER#{user_id}");
        app.app
            .deps
            .retention
            .stored_items()
            .await
            .unwrap()
            .into_iter()
            .filter(|i| i.sk == key || i.pk == format!("EMAIL#{}", email.to_lowercase()))
            .collect::<Vec<_>>()
    };
    let items = stored().await;
    let user = items
        .iter()
        .find(|i| i.sk.starts_with("USER#"))
        .expect("the user's item stays, with its TTL");
    assert!(user.ttl.is_some(), "{user:?}");
    for gone in [
        "password_hash",
        "totp_secret",
        "totp_confirmed",
        "last_totp_step",
    ] {
        let v = &user.attributes[gone];
        assert!(
            v.is_null() || v == false || v == 0,
            "{gone} left on a closed-out user: {v}"
        );
    }
    assert_eq!(user.attributes["email"], email.to_lowercase());
    assert_eq!(user.attributes["id"], user_id.as_str());
    assert!(
        !items.iter().any(|i| i.pk.starts_with("EMAIL#")),
        "the claim is gone: {items:?}"
    );
    // A second run finds nothing more to do.
    let (s, again) = run().await;
    assert_eq!(s, 200, "{again}");
    assert!(
        again["closed_out"].as_array().is_none_or(|a| a.is_empty()),
        "{again}"
    );
    // The address is free: another tenant adds it, and its sign-in is the new user's.
    let (s, body) = add(next.key.clone()).await;
    assert_eq!(s, 201, "{body}");
    let items = stored().await;
    let claim = items
        .iter()
        .find(|i| i.pk.starts_with("EMAIL#"))
        .expect("claimed again");
    assert_eq!(claim.attributes["tenant_id"], next.tenant_id.as_str());
    super::users::login_ok(&app, &email).await;
}

/// The tenant a number on a second WABA is onboarded for: its id, key and number.
async fn onboarded_on(app: &TestApp, waba: &str) -> (String, String, String) {
    let pnid = format!("{}", 100_000 + kirim_tests::rand_u32() % 900_000);
    let body = json!({
        "name": "Kedai Dua Sdn Bhd",
        "waba_id": waba,
        "phone_number_id": pnid,
        "meta_access_token": "EAAG-second-waba-token",
        "credits": 5,
    });
    let (s, made) = call(
        app,
        "POST",
        "/v1/platform/tenants",
        Some(OPERATOR_TOKEN),
        Some(body),
    )
    .await;
    assert_eq!(s, 201, "{made}");
    (
        made["tenant"]["id"].as_str().unwrap().to_owned(),
        made["admin_api_key"].as_str().unwrap().to_owned(),
        pnid,
    )
}

/// Meta's webhooks name the WABA of the number they are about (`entry[].id`): so do the
/// sandbox's, an inbound STOP's and a status's, for a number on another WABA than its own.
async fn the_sandboxs_webhooks_for_a_number_on_a_second_waba_name_that_waba(b: Backend) {
    let app = spawn_app(b).await;
    const WABA: &str = "200000000000002";
    let (_, key, pnid) = onboarded_on(&app, WABA).await;
    let put = app
        .http
        .put(app.url(&format!("/_sandbox/phone-numbers/{pnid}")))
        .json(&json!({"waba_id": WABA}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    let res = app
        .http
        .post(app.url("/_sandbox/inbound"))
        .json(&json!({"phone_number_id": pnid, "from": "+60123450111", "text": "STOP"}))
        .send()
        .await
        .unwrap();
    let inbound: Value = res.json().await.unwrap();
    assert_eq!(inbound["delivered"], true, "{inbound}");
    assert_eq!(inbound["webhook"]["entry"][0]["id"], WABA, "{inbound}");
    // The platform took it: the user is opted out.
    let (s, o) = call(&app, "GET", "/v1/opt-outs/%2B60123450111", Some(&key), None).await;
    assert_eq!(s, 200, "{o}");
    // A send's statuses, caught on their way.
    let (url, caught) = super::callbacks::receiver(0).await;
    app.app.sandbox.set_webhook_url(url);
    let res = app.send_template(&key, "+60123450112").await;
    assert_eq!(res.status(), 202);
    let mut statuses = Vec::new();
    for _ in 0..100 {
        statuses = caught.bodies();
        if !statuses.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(!statuses.is_empty(), "a status webhook was sent");
    for hook in statuses {
        let hook: Value = serde_json::from_str(&hook).unwrap();
        assert!(
            hook["entry"][0]["changes"][0]["value"]["statuses"].is_array(),
            "{hook}"
        );
        assert_eq!(hook["entry"][0]["id"], WABA, "{hook}");
    }
}

on_both_backends!(
    the_operator_reads_and_verifies_the_platform_chain_and_sees_who_tried_a_revoked_key,
    a_refused_ended_key_names_its_key_and_tenant_and_an_unknown_key_names_nothing,
    a_suspension_on_metas_word_is_on_the_platform_chain,
    a_resume_or_close_without_a_reason_is_on_the_platform_chain,
    a_closed_out_tenants_user_emails_are_free_and_its_users_keep_no_password_or_seed,
    the_sandboxs_webhooks_for_a_number_on_a_second_waba_name_that_waba,
);
