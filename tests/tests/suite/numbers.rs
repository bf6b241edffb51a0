//! Several phone numbers per tenant, and Meta's pricing, end to end through local mode on
//! both backends (API.md "Phone numbers (senders)", "Pricing as Meta reports it").

use std::sync::Arc;

use kirim::config::Backend;
use kirim_tests::{spawn_app, template_of, TestApp, OPERATOR_TOKEN};
use serde_json::{json, Value};

async fn call(
    app: &TestApp,
    method: reqwest::Method,
    token: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = app.http.request(method, app.url(path)).bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.unwrap();
    (
        res.status().as_u16(),
        res.json().await.unwrap_or(Value::Null),
    )
}

async fn get(app: &TestApp, token: &str, path: &str) -> (u16, Value) {
    call(app, reqwest::Method::GET, token, path, None).await
}

fn fresh_number() -> String {
    format!("{}", 3_000_000 + kirim_tests::rand_u32() % 900_000)
}

/// The operator adds a number to a tenant; answers the status and body.
async fn add_number(app: &TestApp, tenant: &str, body: Value) -> (u16, Value) {
    call(
        app,
        reqwest::Method::POST,
        OPERATOR_TOKEN,
        &format!("/v1/platform/tenants/{tenant}/phone-numbers"),
        Some(body),
    )
    .await
}

async fn numbers(app: &TestApp, key: &str) -> Vec<Value> {
    let (s, body) = get(app, key, "/v1/phone-numbers").await;
    assert_eq!(s, 200, "{body}");
    body["phone_numbers"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

async fn send_from(app: &TestApp, key: &str, to: &str, from: Option<&str>) -> (u16, Value) {
    let mut body = json!({"to": to, "template": template_of("utility")});
    if let Some(f) = from {
        body["from"] = json!(f);
    }
    call(app, reqwest::Method::POST, key, "/v1/messages", Some(body)).await
}

async fn key_with_role(app: &TestApp, admin: &str, role: &str) -> String {
    let (s, body) = call(
        app,
        reqwest::Method::POST,
        admin,
        "/v1/api-keys",
        Some(json!({"name": role, "role": role})),
    )
    .await;
    assert_eq!(s, 201, "{body}");
    body["key"].as_str().unwrap_or_default().to_owned()
}

async fn a_send_from_a_second_number_reaches_the_sandbox_with_that_numbers_id(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(10).await;
    // An onboarded tenant's one number is its default (it has no number item yet).
    let listed = numbers(&app, &t.key).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["phone_number_id"], t.phone_number_id.as_str());
    assert_eq!(listed[0]["default"], true);
    // Read from Meta as it was onboarded.
    assert_eq!(listed[0]["quality"], "green");
    assert_eq!(listed[0]["waba_id"], "1000001");
    assert!(listed[0]["throughput_per_sec"]
        .as_u64()
        .is_some_and(|t| t > 0));

    let second = fresh_number();
    let (s, body) = add_number(
        &app,
        &t.tenant_id,
        json!({"phone_number_id": second, "waba_id": "1000001", "display_phone_number": "+1 555-010-2030"}),
    )
    .await;
    assert_eq!(s, 201, "{body}");
    assert_eq!(body["phone_number_id"], second.as_str());
    let listed = numbers(&app, &t.key).await;
    let ids: Vec<(&str, bool)> = listed
        .iter()
        .map(|n| {
            (
                n["phone_number_id"].as_str().unwrap_or_default(),
                n["default"] == true,
            )
        })
        .collect();
    assert!(ids.contains(&(second.as_str(), false)), "{listed:?}");
    assert!(
        ids.contains(&(t.phone_number_id.as_str(), true)),
        "{listed:?}"
    );

    let (s, body) = send_from(&app, &t.key, "+60123452001", Some(&second)).await;
    assert_eq!(s, 202, "{body}");
    let from_second = body["id"].as_str().unwrap_or_default().to_owned();
    let (s, body) = send_from(&app, &t.key, "+60123452002", None).await;
    assert_eq!(s, 202, "{body}");
    let from_default = body["id"].as_str().unwrap_or_default().to_owned();

    let m = app.wait_status(&t.key, &from_second, "read").await;
    assert_eq!(m["status"], "read", "{m}");
    assert_eq!(m["from"], second.as_str());
    let m = app.wait_status(&t.key, &from_default, "read").await;
    assert_eq!(m["from"], t.phone_number_id.as_str());
    let sent = app.sandbox_requests_to("60123452001");
    assert_eq!(sent.len(), 1, "sent once");
    assert_eq!(sent[0].phone_number_id, second);
    let sent = app.sandbox_requests_to("60123452002");
    assert_eq!(sent[0].phone_number_id, t.phone_number_id);

    // A broadcast from the second number goes from it too.
    let (s, body) = call(
        &app,
        reqwest::Method::POST,
        &t.key,
        "/v1/broadcasts",
        Some(json!({"template": template_of("utility"), "recipients": ["+60123452003"], "from": second})),
    )
    .await;
    assert_eq!(s, 202, "{body}");
    let mut requests = Vec::new();
    // Up to a minute: a deadline, not a speed assertion (a campaign's send goes through
    // its fan-out and the queue pollers).
    for _ in 0..600 {
        requests = app.sandbox_requests_to("60123452003");
        if !requests.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].phone_number_id, second);
}

/// A session text's 24-hour window is the sending number's: a user who wrote to the
/// second number opens it for sends from that number, not from the default, and the
/// other way round.
async fn a_session_text_goes_only_from_the_number_the_user_wrote_to(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(10).await;
    let second = fresh_number();
    let (s, body) = add_number(
        &app,
        &t.tenant_id,
        json!({"phone_number_id": second, "waba_id": "1000001", "display_phone_number": "+1 555-010-2031"}),
    )
    .await;
    assert_eq!(s, 201, "{body}");
    let text = |to: &str, from: Option<&str>| {
        let mut body = json!({"to": to, "text": {"body": "Your parcel is here"}});
        if let Some(f) = from {
            body["from"] = json!(f);
        }
        call(
            &app,
            reqwest::Method::POST,
            &t.key,
            "/v1/messages",
            Some(body),
        )
    };
    // The user wrote to the second number only.
    app.user_wrote(&second, "+60123452201").await;
    let (s, body) = text("+60123452201", None).await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (422, Some("outside_customer_service_window")),
        "not from the default: {body}"
    );
    let (s, body) = text("+60123452201", Some(&second)).await;
    assert_eq!(s, 202, "from the number written to: {body}");
    // And one who wrote to the default only.
    app.user_wrote(&t.phone_number_id, "+60123452202").await;
    let (s, body) = text("+60123452202", Some(&second)).await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (422, Some("outside_customer_service_window")),
        "not from the second: {body}"
    );
    assert_eq!(text("+60123452202", None).await.0, 202);
    // A scheduled text is judged at its send_at: within the window now, not then.
    let scheduled = |send_at: chrono::DateTime<chrono::Utc>| {
        call(
            &app,
            reqwest::Method::POST,
            &t.key,
            "/v1/messages",
            Some(
                json!({"to": "+60123452202", "text": {"body": "Your parcel is here"},
                "send_at": send_at.to_rfc3339()}),
            ),
        )
    };
    let (s, body) = scheduled(chrono::Utc::now() + chrono::Duration::hours(25)).await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (422, Some("outside_customer_service_window")),
        "the window has closed by then: {body}"
    );
    let (s, body) = scheduled(chrono::Utc::now() + chrono::Duration::hours(2)).await;
    assert_eq!(s, 202, "{body}");
    assert_eq!(
        app.credits(&t.key).await,
        7,
        "the refused ones cost nothing"
    );
}

async fn a_send_from_a_number_not_the_tenants_is_refused_as_unknown_sender_with_nothing_debited(
    b: Backend,
) {
    let app = spawn_app(b).await;
    let t = app.onboard(10).await;
    let other = app.onboard(10).await;
    // Also one over DynamoDB's 1 KB key (a 500 there when it was asked).
    let long = "9".repeat(1100);
    for from in [
        other.phone_number_id.as_str(),
        "999",
        "not a number",
        long.as_str(),
    ] {
        let (s, body) = send_from(&app, &t.key, "+60123452101", Some(from)).await;
        assert_eq!(s, 422, "{from}: {body}");
        assert_eq!(body["error"]["code"], "unknown_sender");
    }
    let (s, body) = call(
        &app,
        reqwest::Method::POST,
        &t.key,
        "/v1/broadcasts",
        Some(json!({"template": template_of("utility"), "recipients": ["+60123452102"], "from": other.phone_number_id})),
    )
    .await;
    assert_eq!(s, 422, "{body}");
    assert_eq!(body["error"]["code"], "unknown_sender");
    let (s, body) = call(
        &app,
        reqwest::Method::POST,
        &t.key,
        "/v1/broadcasts",
        Some(json!({"template": template_of("utility"), "recipients": ["+60123452102"], "from": long})),
    )
    .await;
    assert_eq!((s, &body["error"]["code"]), (422, &json!("unknown_sender")));
    assert_eq!(app.credits(&t.key).await, 10, "nothing debited");
    assert!(app.sandbox_requests_to("60123452101").is_empty());
}

async fn a_number_owned_by_another_tenant_cannot_be_added_and_bad_input_is_refused(b: Backend) {
    let app = spawn_app(b).await;
    let a = app.onboard(0).await;
    let c = app.onboard(0).await;
    let n = fresh_number();
    let body = json!({"phone_number_id": n, "waba_id": "1000001"});
    assert_eq!(add_number(&app, &a.tenant_id, body.clone()).await.0, 201);
    // Refused saying whose it is, as onboarding does: another tenant's (named), or one of
    // this tenant's own.
    let theirs = format!(
        "this phone_number_id already belongs to tenant {}",
        a.tenant_id
    );
    let own = "this phone_number_id is already one of this tenant's numbers".to_owned();
    for (tenant, body, said) in [
        (&c.tenant_id, body.clone(), &theirs),
        (&a.tenant_id, body.clone(), &own),
        (
            &c.tenant_id,
            json!({"phone_number_id": a.phone_number_id, "waba_id": "1000001"}),
            &theirs,
        ),
    ] {
        let (s, res) = add_number(&app, tenant, body).await;
        assert_eq!(s, 409, "{res}");
        assert_eq!(res["error"]["code"], "conflict");
        assert_eq!(res["error"]["message"], said.as_str(), "{res}");
    }
    assert_eq!(
        numbers(&app, &c.key).await.len(),
        1,
        "nothing was added to c"
    );
    for bad in [
        json!({"phone_number_id": "12a", "waba_id": "1000001"}),
        json!({"phone_number_id": fresh_number()}),
        json!({"phone_number_id": fresh_number(), "waba_id": "1000001", "extra": 1}),
        json!({"phone_number_id": fresh_number(), "waba_id": "1000001", "display_phone_number": "<b>"}),
    ] {
        let (s, res) = add_number(&app, &a.tenant_id, bad.clone()).await;
        assert_eq!(s, 400, "{bad}: {res}");
        assert_eq!(res["error"]["code"], "invalid_request");
    }
    let (s, _) = add_number(
        &app,
        "01JABCDEFGHJKMNPQRSTVWXYZ0",
        json!({"phone_number_id": fresh_number(), "waba_id": "1000001"}),
    )
    .await;
    assert_eq!(s, 404);
    // Only the operator: a tenant's admin key may not add numbers.
    let (s, _) = call(
        &app,
        reqwest::Method::POST,
        &a.key,
        &format!("/v1/platform/tenants/{}/phone-numbers", a.tenant_id),
        Some(json!({"phone_number_id": fresh_number(), "waba_id": "1000001"})),
    )
    .await;
    assert_eq!(s, 403);
}

async fn the_last_number_is_never_removed_and_removals_are_audited(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(10).await;
    let path = |n: &str| format!("/v1/platform/tenants/{}/phone-numbers/{n}", t.tenant_id);
    let del = |n: String| {
        let p = path(&n);
        let app = &app;
        async move { call(app, reqwest::Method::DELETE, OPERATOR_TOKEN, &p, None).await }
    };
    // The last number: never removed.
    let (s, body) = del(t.phone_number_id.clone()).await;
    assert_eq!(s, 409, "{body}");
    assert_eq!(body["error"]["code"], "conflict");
    let second = fresh_number();
    assert_eq!(
        add_number(
            &app,
            &t.tenant_id,
            json!({"phone_number_id": second, "waba_id": "1000001"})
        )
        .await
        .0,
        201
    );
    // The default, with another left (API.md: "never the last one"): removed, and the
    // other becomes the default.
    let first = t.phone_number_id.clone();
    assert_eq!(del(first.clone()).await.0, 204);
    assert_eq!(del(first.clone()).await.0, 404);
    let left = numbers(&app, &t.key).await;
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(
        (
            left[0]["phone_number_id"].as_str(),
            left[0]["default"].as_bool()
        ),
        (Some(second.as_str()), Some(true))
    );
    assert_eq!(del(second.clone()).await.0, 409, "now the last one");
    let (s, body) = send_from(&app, &t.key, "+60123452201", Some(&first)).await;
    assert_eq!(
        (s, body["error"]["code"].clone()),
        (422, json!("unknown_sender"))
    );
    // Sends without `from` go from the new default.
    let (s, body) = send_from(&app, &t.key, "+60123452202", None).await;
    assert_eq!(s, 202, "{body}");
    let id = body["id"].as_str().unwrap_or_default();
    assert_eq!(app.message(&t.key, id).await["from"], second.as_str());
    // The removed number is free for another tenant.
    let other = app.onboard(0).await;
    assert_eq!(
        add_number(
            &app,
            &other.tenant_id,
            json!({"phone_number_id": first, "waba_id": "1000001"})
        )
        .await
        .0,
        201
    );
    // The operator's moves are in the tenant's audit trail.
    let (s, audit) = get(&app, &t.key, "/v1/audit").await;
    assert_eq!(s, 200, "{audit}");
    let actions: Vec<(String, String)> = audit["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap_or_default().to_owned(),
                e["details"]["phone_number_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect();
    for action in [
        "POST /v1/platform/tenants/{id}/phone-numbers",
        "DELETE /v1/platform/tenants/{id}/phone-numbers/{phone_number_id}",
    ] {
        assert!(
            actions.contains(&(
                action.to_owned(),
                if action.starts_with("POST") {
                    second.clone()
                } else {
                    first.clone()
                }
            )),
            "{action} in {actions:?}"
        );
    }
}

async fn an_admin_switches_the_default_number_and_sends_without_from_go_from_it(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(10).await;
    let second = fresh_number();
    assert_eq!(
        add_number(
            &app,
            &t.tenant_id,
            json!({"phone_number_id": second, "waba_id": "1000001"})
        )
        .await
        .0,
        201
    );
    let put_default = |key: String, n: String| {
        let app = &app;
        async move {
            call(
                app,
                reqwest::Method::PUT,
                &key,
                &format!("/v1/phone-numbers/{n}/default"),
                None,
            )
            .await
        }
    };
    let operator = key_with_role(&app, &t.key, "operator").await;
    assert_eq!(
        put_default(operator, second.clone()).await.0,
        403,
        "admin only"
    );
    assert_eq!(put_default(t.key.clone(), "4242".into()).await.0, 404);
    let (s, body) = put_default(t.key.clone(), second.clone()).await;
    assert_eq!(s, 200, "{body}");
    let listed = numbers(&app, &t.key).await;
    let default: Vec<&Value> = listed.iter().filter(|n| n["default"] == true).collect();
    assert_eq!(default.len(), 1, "{listed:?}");
    assert_eq!(default[0]["phone_number_id"], second.as_str());
    let (s, body) = get(&app, &t.key, "/v1/account").await;
    assert_eq!((s, body["phone_number_id"].clone()), (200, json!(second)));
    let (s, body) = send_from(&app, &t.key, "+60123452301", None).await;
    assert_eq!(s, 202, "{body}");
    let id = body["id"].as_str().unwrap_or_default().to_owned();
    let m = app.wait_status(&t.key, &id, "read").await;
    assert_eq!(m["from"], second.as_str());
    assert_eq!(
        app.sandbox_requests_to("60123452301")[0].phone_number_id,
        second
    );
    // The first number is no longer the default: it may be removed now.
    let (s, _) = call(
        &app,
        reqwest::Method::DELETE,
        OPERATOR_TOKEN,
        &format!(
            "/v1/platform/tenants/{}/phone-numbers/{}",
            t.tenant_id, t.phone_number_id
        ),
        None,
    )
    .await;
    assert_eq!(s, 204);
    assert_eq!(numbers(&app, &t.key).await.len(), 1);
}

async fn a_quality_webhook_updates_that_numbers_quality_and_throughput(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(0).await;
    let second = fresh_number();
    // Not described when added (its read would be newer than these webhooks' times).
    meta_says(&app, &second, json!({"error": 131000})).await;
    assert_eq!(
        add_number(
            &app,
            &t.tenant_id,
            json!({"phone_number_id": second, "waba_id": "1000001", "display_phone_number": "+1 555-010-2030"}),
        )
        .await
        .0,
        201
    );
    // Timed now: the numbers were read from Meta when onboarded or added, and a webhook
    // Meta timed before that read is older news than it.
    let now = chrono::Utc::now().timestamp();
    let quality = |value: Value| {
        json!({"object": "whatsapp_business_account", "entry": [{"id": "1000001", "time": now,
            "changes": [{"field": "phone_number_quality_update", "value": value}]}]})
    };
    // Meta names the number as it displays it.
    let res = app
        .post_webhook(&quality(json!({"display_phone_number": "15550102030", "event": "FLAGGED", "current_limit": "TIER_1K"})))
        .await;
    assert_eq!(res.status(), 200);
    let of = |list: Vec<Value>, id: &str| {
        list.into_iter()
            .find(|n| n["phone_number_id"] == id)
            .unwrap_or(Value::Null)
    };
    let n = of(numbers(&app, &t.key).await, &second);
    assert_eq!(n["quality"], "red", "{n}");
    // By id, with a throughput upgrade: the limiter paces the number at Meta's new rate.
    let res = app
        .post_webhook(&quality(json!({"phone_number_id": second, "event": "THROUGHPUT_UPGRADE", "quality_rating": "GREEN"})))
        .await;
    assert_eq!(res.status(), 200);
    let n = of(numbers(&app, &t.key).await, &second);
    assert_eq!(
        (n["quality"].clone(), n["throughput_per_sec"].clone()),
        (json!("green"), json!(1000)),
        "{n}"
    );
    // The default number (no number item before): updated as well.
    let res = app
        .post_webhook(&quality(
            json!({"phone_number_id": t.phone_number_id, "event": "FLAGGED"}),
        ))
        .await;
    assert_eq!(res.status(), 200);
    let n = of(numbers(&app, &t.key).await, &t.phone_number_id);
    assert_eq!(
        (n["quality"].clone(), n["default"].clone()),
        (json!("red"), json!(true))
    );
    // A number no tenant owns: ignored, 200.
    let res = app
        .post_webhook(&quality(
            json!({"phone_number_id": "987654321", "event": "FLAGGED"}),
        ))
        .await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["summary"]["ignored"], 1, "{body}");
}

/// Meta's `phone_number_quality_update` names a number only as it is shown: a tenant
/// onboarded with its number's display has that number found by it.
async fn an_onboarded_numbers_display_lets_metas_quality_webhook_find_it(b: Backend) {
    let app = spawn_app(b).await;
    let pnid = fresh_number();
    let waba = "7001001";
    let onboard = |display: Value| {
        let app = &app;
        let pnid = pnid.clone();
        async move {
            call(
                app,
                reqwest::Method::POST,
                OPERATOR_TOKEN,
                "/v1/platform/tenants",
                Some(
                    json!({"name": "Kedai Shown", "waba_id": waba, "phone_number_id": pnid,
                    "meta_access_token": "EAAG", "display_phone_number": display}),
                ),
            )
            .await
        }
    };
    let (s, body) = onboard(json!("call me")).await;
    assert_eq!(
        (s, &body["error"]["code"]),
        (400, &json!("invalid_request"))
    );
    let (s, body) = onboard(json!("+60 3-7000 1234")).await;
    assert_eq!(s, 201, "{body}");
    let key = body["admin_api_key"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let old = body["tenant"]["id"].as_str().unwrap_or_default().to_owned();
    let shown = numbers(&app, &key).await;
    assert_eq!(shown[0]["display_phone_number"], "+60 3-7000 1234");
    // Timed after the onboarding's read of the number from Meta.
    let note = json!({"object": "whatsapp_business_account", "entry": [{"id": waba, "time": chrono::Utc::now().timestamp(),
        "changes": [{"field": "phone_number_quality_update", "value":
            {"display_phone_number": "60370001234", "event": "THROUGHPUT_UPGRADE", "quality_rating": "GREEN"}}]}]});
    assert_eq!(app.post_webhook(&note).await.status(), 200);
    let n = numbers(&app, &key).await;
    assert_eq!(
        (n[0]["quality"].clone(), n[0]["throughput_per_sec"].clone()),
        (json!("green"), json!(1000)),
        "{n:?}"
    );

    // The tenant is closed and closed out, and the number, with its display, onboarded
    // again for another tenant on the WABA: Meta's next update by display is the new
    // owner's, not dropped at the closed tenant's leftover record.
    let (s, _) = call(
        &app,
        reqwest::Method::DELETE,
        OPERATOR_TOKEN,
        &format!("/v1/platform/tenants/{old}"),
        None,
    )
    .await;
    assert_eq!(s, 200);
    let (s, _) = call(
        &app,
        reqwest::Method::POST,
        OPERATOR_TOKEN,
        "/v1/platform/retention/run",
        None,
    )
    .await;
    assert_eq!(s, 200);
    let (s, body) = onboard(json!("+60 3-7000 1234")).await;
    assert_eq!(s, 201, "the number is free again: {body}");
    let key = body["admin_api_key"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let note = json!({"object": "whatsapp_business_account", "entry": [{"id": waba, "time": chrono::Utc::now().timestamp() + 1,
        "changes": [{"field": "phone_number_quality_update", "value":
            {"display_phone_number": "60370001234", "event": "FLAGGED", "current_limit": "TIER_1K"}}]}]});
    assert_eq!(app.post_webhook(&note).await.status(), 200);
    let n = numbers(&app, &key).await;
    assert_eq!(n[0]["quality"], json!("red"), "{n:?}");
}

/// A number onboarded without its display learns it from the first inbound message's
/// `metadata` (Meta's quality updates name a number only as it is shown), once: a later
/// body naming it otherwise changes nothing.
async fn a_number_onboarded_without_its_display_learns_it_from_an_inbound_message(b: Backend) {
    let app = spawn_app(b).await;
    let pnid = fresh_number();
    let waba = "7001002";
    // Meta cannot be asked about it just now: the onboarding's read of the number learns
    // nothing, so its display is unknown.
    meta_says(&app, &pnid, json!({"error": 131000})).await;
    let (s, body) = call(
        &app,
        reqwest::Method::POST,
        OPERATOR_TOKEN,
        "/v1/platform/tenants",
        Some(
            json!({"name": "Kedai Unshown", "waba_id": waba, "phone_number_id": pnid,
            "meta_access_token": "EAAG"}),
        ),
    )
    .await;
    assert_eq!(s, 201, "{body}");
    let key = body["admin_api_key"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(
        numbers(&app, &key).await[0]["display_phone_number"],
        Value::Null
    );
    let quality = |time: i64| {
        json!({"object": "whatsapp_business_account", "entry": [{"id": waba, "time": time,
        "changes": [{"field": "phone_number_quality_update", "value":
            {"display_phone_number": "60370005678", "event": "THROUGHPUT_UPGRADE", "quality_rating": "GREEN"}}]}]})
    };
    // Not found by its display yet: ignored.
    assert_eq!(
        app.post_webhook(&quality(1_764_460_000)).await.status(),
        200
    );
    assert_eq!(numbers(&app, &key).await[0]["quality"], json!("unknown"));
    let hello = |display: &str| {
        json!({"object": "whatsapp_business_account", "entry": [{"id": waba, "changes": [{
            "field": "messages", "value": {"messaging_product": "whatsapp",
            "metadata": {"display_phone_number": display, "phone_number_id": pnid},
            "messages": [{"from": "60123450555", "id": format!("wamid.in.{}", ulid::Ulid::new()),
                "timestamp": chrono::Utc::now().timestamp().to_string(), "type": "text",
                "text": {"body": "hello"}}]}}]}]})
    };
    assert_eq!(app.post_webhook(&hello("60370005678")).await.status(), 200);
    assert_eq!(
        numbers(&app, &key).await[0]["display_phone_number"],
        "60370005678"
    );
    assert_eq!(app.post_webhook(&hello("60370009999")).await.status(), 200);
    assert_eq!(
        numbers(&app, &key).await[0]["display_phone_number"],
        "60370005678",
        "learnt once"
    );
    assert_eq!(
        app.post_webhook(&quality(1_764_460_100)).await.status(),
        200
    );
    let n = numbers(&app, &key).await;
    assert_eq!(
        (n[0]["quality"].clone(), n[0]["throughput_per_sec"].clone()),
        (json!("green"), json!(1000)),
        "{n:?}"
    );
}

async fn pricing_is_kept_on_a_read_message_and_counted_once_in_usage(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(10).await;
    let before = app.credits(&t.key).await;
    let (s, body) = call(
        &app,
        reqwest::Method::POST,
        &t.key,
        "/v1/messages",
        Some(json!({"to": "+60123452401", "template": template_of("marketing")})),
    )
    .await;
    assert_eq!(s, 202, "{body}");
    let id = body["id"].as_str().unwrap_or_default().to_owned();
    let debited = before - app.credits(&t.key).await;
    let m = app.wait_status(&t.key, &id, "read").await;
    assert_eq!(m["status"], "read", "{m}");
    assert_eq!(
        m["pricing"],
        json!({"pricing_model": "PMP", "category": "marketing", "type": "regular"})
    );
    // Meta repeats the pricing on a status it sends again: still counted once.
    let wamid = m["wamid"].as_str().unwrap_or_default().to_owned();
    let again = json!({"object": "whatsapp_business_account", "entry": [{"id": "1000001", "changes": [{
        "field": "messages", "value": {"messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550000000", "phone_number_id": t.phone_number_id},
            "statuses": [{"id": wamid, "status": "read", "timestamp": chrono::Utc::now().timestamp().to_string(),
                "recipient_id": "60123452401",
                "pricing": {"billable": true, "pricing_model": "PMP", "category": "marketing", "type": "regular"}}]}}]}]});
    assert_eq!(app.post_webhook(&again).await.status(), 200);
    // A message without pricing yet shows null.
    let (s, body) = send_from(&app, &t.key, "+60123450004", None).await;
    assert_eq!(s, 202, "{body}");
    let unpriced = app
        .message(&t.key, body["id"].as_str().unwrap_or_default())
        .await;
    assert_eq!(unpriced["pricing"], Value::Null);

    let today = chrono::Utc::now().date_naive();
    let (from, to) = (today.pred_opt().unwrap(), today.succ_opt().unwrap());
    let read_only = key_with_role(&app, &t.key, "read_only").await;
    let (s, body) = get(&app, &read_only, &format!("/v1/usage?from={from}&to={to}")).await;
    assert_eq!(s, 200, "{body}");
    let rows = body["usage"].as_array().cloned().unwrap_or_default();
    assert_eq!(rows.len(), 1, "{body}");
    let row = &rows[0];
    assert!(
        [from, today, to]
            .iter()
            .any(|d| row["date"] == d.to_string()),
        "{row}"
    );
    assert_eq!(row["category"], "marketing");
    assert_eq!(row["pricing_type"], "regular");
    assert_eq!(row["messages"], 1, "counted once: {row}");
    assert_eq!(row["credits"], debited, "the credits Kirim debited: {row}");
}

async fn a_replayed_delivered_with_its_pricing_leaves_the_message_counted_once(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(10).await;
    let (s, body) = send_from(&app, &t.key, "+60123452411", None).await;
    assert_eq!(s, 202, "{body}");
    let id = body["id"].as_str().unwrap_or_default().to_owned();
    // sent, delivered and read each carried the pricing: the first one counted it.
    let m = app.wait_status(&t.key, &id, "read").await;
    assert_eq!(m["status"], "read", "{m}");
    let wamid = m["wamid"].as_str().unwrap_or_default().to_owned();
    let delivered = |callback: Option<&str>| {
        let mut status = json!({"id": wamid, "status": "delivered",
            "timestamp": chrono::Utc::now().timestamp().to_string(), "recipient_id": "60123452411",
            "pricing": {"billable": true, "pricing_model": "PMP", "category": "utility", "type": "regular"}});
        if let Some(c) = callback {
            status["biz_opaque_callback_data"] = json!(c);
        }
        json!({"object": "whatsapp_business_account", "entry": [{"id": "1000001", "changes": [{
            "field": "messages", "value": {"messaging_product": "whatsapp",
                "metadata": {"display_phone_number": "15550000000", "phone_number_id": t.phone_number_id},
                "statuses": [status]}}]}]})
    };
    // Meta delivers it again, with our id echoed and without (found by its wamid).
    for callback in [Some(id.as_str()), None, Some(id.as_str())] {
        let res = app.post_webhook(&delivered(callback)).await;
        assert_eq!(res.status(), 200);
    }
    let m = app.message(&t.key, &id).await;
    assert_eq!(m["status"], "read", "never moved back: {m}");
    assert_eq!(m["pricing"]["category"], "utility", "{m}");
    let today = chrono::Utc::now().date_naive();
    let (from, to) = (today.pred_opt().unwrap(), today.succ_opt().unwrap());
    let (s, body) = get(&app, &t.key, &format!("/v1/usage?from={from}&to={to}")).await;
    assert_eq!(s, 200, "{body}");
    let counted: i64 = body["usage"]
        .as_array()
        .map(|rows| rows.iter().filter_map(|r| r["messages"].as_i64()).sum())
        .unwrap_or_default();
    assert_eq!(counted, 1, "counted once: {body}");
}

async fn usage_refuses_bad_dates_and_ranges(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(0).await;
    for query in [
        "",
        "?from=2026-01-01",
        "?to=2026-01-01",
        "?from=2026-1-1&to=2026-01-02",
        "?from=2026-02-30&to=2026-03-01",
        "?from=yesterday&to=2026-01-01",
        "?from=2026-02-01&to=2026-01-31",
        "?from=2026-01-01&to=2027-01-02",
        "?from=2026-01-01&to=2026-01-02&category=marketing",
    ] {
        let (s, body) = get(&app, &t.key, &format!("/v1/usage{query}")).await;
        assert_eq!(s, 400, "{query}: {body}");
        assert_eq!(body["error"]["code"], "invalid_request", "{query}");
    }
    let (s, body) = get(&app, &t.key, "/v1/usage?from=2024-01-01&to=2024-12-31").await;
    assert_eq!(s, 200, "366 days: {body}");
    assert_eq!(body["usage"], json!([]));
}

async fn a_number_on_another_waba_brings_its_catalogue_which_decides_its_sends(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(10).await;
    let waba = format!("{}", 5_000_000 + kirim_tests::rand_u32() % 900_000);
    let second = fresh_number();
    assert_eq!(
        add_number(
            &app,
            &t.tenant_id,
            json!({"phone_number_id": second, "waba_id": waba})
        )
        .await
        .0,
        201
    );
    // Adding the number synced its WABA's catalogue.
    let (s, body) = get(&app, &t.key, &format!("/v1/templates?waba_id={waba}")).await;
    assert_eq!(s, 200, "{body}");
    let listed = body["templates"].as_array().cloned().unwrap_or_default();
    assert!(
        !listed.is_empty() && listed.iter().all(|t| t["waba_id"] == waba.as_str()),
        "{body}"
    );
    let (s, _) = get(&app, &t.key, "/v1/templates?waba_id=4242").await;
    assert_eq!(s, 400, "not one of the account's WABAs");
    // Meta pauses promo_sale on that WABA only (its webhook reaches the tenant through
    // the number): a send from the second number is refused, from the default it goes.
    app.sandbox_template(&waba, "promo_sale", "en_US", json!({"status": "paused"}))
        .await;
    let promo = |from: Option<&str>| {
        let mut body = json!({"to": "+60123452501", "template": template_of("marketing")});
        if let Some(f) = from {
            body["from"] = json!(f);
        }
        body
    };
    let (s, body) = call(
        &app,
        reqwest::Method::POST,
        &t.key,
        "/v1/messages",
        Some(promo(Some(&second))),
    )
    .await;
    assert_eq!(
        (s, body["error"]["code"].clone()),
        (422, json!("template_not_approved")),
        "{body}"
    );
    let (s, body) = call(
        &app,
        reqwest::Method::POST,
        &t.key,
        "/v1/messages",
        Some(promo(None)),
    )
    .await;
    assert_eq!(s, 202, "{body}");
    // `POST /v1/templates/sync` reads every WABA of the account's numbers.
    let (s, body) = call(
        &app,
        reqwest::Method::POST,
        &t.key,
        "/v1/templates/sync",
        None,
    )
    .await;
    assert_eq!(s, 200, "{body}");
    // Two WABAs of five templates, less promo_sale on the second: Meta paused it by webhook
    // a moment ago, and a list read within 5 minutes of a change (Meta's list lags its
    // webhooks) does not write over it.
    assert_eq!(body["synced"], 9, "{body}");
}

/// Changes what the sandbox's Meta says of a number (no webhook is sent).
async fn meta_says(app: &TestApp, pnid: &str, change: Value) {
    let res = app
        .http
        .put(app.url(&format!("/_sandbox/phone-numbers/{pnid}")))
        .json(&change)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "the sandbox took {change}");
}

/// The daily run's read of Meta, for one tenant; answers what it did.
async fn daily_sync(app: &TestApp, tenant: &str) -> kirim::service::daily_sync::ScheduledSync {
    let id = kirim::domain::TenantId::parse(tenant).unwrap();
    let until = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    kirim::service::daily_sync::sync_scheduled(&app.app.deps, &[id], until).await
}

/// A phone_number_quality_update webhook about one number, as Meta timed it.
fn quality_note(pnid: &str, time: i64, value: Value) -> Value {
    let mut value = value;
    value["phone_number_id"] = json!(pnid);
    json!({"object": "whatsapp_business_account", "entry": [{"id": "1000001", "time": time,
        "changes": [{"field": "phone_number_quality_update", "value": value}]}]})
}

fn number_of(list: &[Value], pnid: &str) -> Value {
    list.iter()
        .find(|n| n["phone_number_id"] == pnid)
        .cloned()
        .unwrap_or(Value::Null)
}

/// A number already at Meta's high throughput when it was added (no webhook ever said
/// so) is paced at Meta's rate once the daily sync has read it, and shows Meta's quality
/// and display; the default number is read as well.
async fn a_number_meta_reports_at_high_throughput_is_paced_at_metas_rate_after_the_daily_sync(
    b: Backend,
) {
    let app = spawn_app(b).await;
    let t = app.onboard(0).await;
    let second = fresh_number();
    let (s, body) = add_number(
        &app,
        &t.tenant_id,
        json!({"phone_number_id": second, "waba_id": "1000001"}),
    )
    .await;
    assert_eq!(s, 201, "{body}");
    meta_says(
        &app,
        &second,
        json!({"throughput": "HIGH", "quality_rating": "YELLOW", "display_phone_number": "+1 555-010-7777"}),
    )
    .await;
    // Read from Meta when it was added (then green, at the standard tier); Meta's change
    // since is not known until the next read.
    let before = number_of(&numbers(&app, &t.key).await, &second);
    assert_eq!(
        (&before["quality"], &before["throughput_per_sec"]),
        (&json!("green"), &json!(80)),
        "{before}"
    );
    let done = daily_sync(&app, &t.tenant_id).await;
    assert_eq!((done.numbers_read, done.numbers_failed), (2, 0), "{done:?}");
    let listed = numbers(&app, &t.key).await;
    let n = number_of(&listed, &second);
    assert_eq!(
        (
            &n["quality"],
            &n["throughput_per_sec"],
            &n["display_phone_number"]
        ),
        (
            &json!("yellow"),
            &json!(1000),
            &before["display_phone_number"]
        ),
        "{n}: the display learnt when it was added is kept"
    );
    // What the dispatcher paces its sends by.
    let deps = &app.app.deps;
    let tenant = deps
        .tenants
        .get_tenant(&kirim::domain::TenantId::parse(&t.tenant_id).unwrap())
        .await
        .unwrap()
        .unwrap();
    let record = kirim::service::numbers::sender(deps, &tenant, Some(&second))
        .await
        .unwrap();
    assert_eq!(kirim::service::numbers::tier(deps, &tenant, &record), 1000);
    // The default number, at the sandbox's green and standard throughput.
    let d = number_of(&listed, &t.phone_number_id);
    assert_eq!(
        (&d["quality"], &d["throughput_per_sec"], &d["default"]),
        (&json!("green"), &json!(80), &json!(true)),
        "{d}"
    );
    assert!(
        d["display_phone_number"]
            .as_str()
            .is_some_and(|s| s.starts_with("1555")),
        "{d}"
    );
}

/// Meta's webhook newer than the daily read keeps its quality (the read is stamped with
/// its own time, less the margin Meta's reads may lag by); one older than the read is
/// replaced by what Meta said, and redelivered late after it, never undoes it.
async fn an_older_read_of_meta_never_undoes_a_newer_quality_webhook(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(0).await;
    let second = fresh_number();
    let (s, body) = add_number(
        &app,
        &t.tenant_id,
        json!({"phone_number_id": second, "waba_id": "1000001"}),
    )
    .await;
    assert_eq!(s, 201, "{body}");
    for pnid in [&t.phone_number_id, &second] {
        meta_says(
            &app,
            pnid,
            json!({"quality_rating": "GREEN", "throughput": "HIGH"}),
        )
        .await;
    }
    let now = chrono::Utc::now().timestamp();
    // Flagged just now, as the read is on its way: the read may not show it yet.
    let res = app
        .post_webhook(&quality_note(
            &t.phone_number_id,
            now,
            json!({"event": "FLAGGED"}),
        ))
        .await;
    assert_eq!(res.status(), 200);
    // Flagged an hour ago: the read says what Meta thinks since.
    let res = app
        .post_webhook(&quality_note(
            &second,
            now - 3600,
            json!({"event": "FLAGGED"}),
        ))
        .await;
    assert_eq!(res.status(), 200);
    let done = daily_sync(&app, &t.tenant_id).await;
    assert_eq!(done.numbers_read, 2, "{done:?}");
    let listed = numbers(&app, &t.key).await;
    let d = number_of(&listed, &t.phone_number_id);
    assert_eq!(
        (&d["quality"], &d["throughput_per_sec"]),
        (&json!("red"), &json!(1000)),
        "the newer webhook's quality kept, the throughput it did not speak of read: {d}"
    );
    let n = number_of(&listed, &second);
    assert_eq!(n["quality"], "green", "{n}");
    // The hour-old flag delivered again: older than the read, refused.
    let res = app
        .post_webhook(&quality_note(
            &second,
            now - 3000,
            json!({"event": "FLAGGED"}),
        ))
        .await;
    assert_eq!(res.status(), 200);
    let n = number_of(&numbers(&app, &t.key).await, &second);
    assert_eq!(n["quality"], "green", "{n}");
}

/// Meta refusing to describe one number leaves what is known of it (quality, throughput,
/// display) and the tenant's other numbers are read all the same.
async fn a_meta_error_reading_one_number_leaves_its_stored_values_and_the_others_are_read(
    b: Backend,
) {
    let app = spawn_app(b).await;
    let t = app.onboard(0).await;
    let (failing, other) = (fresh_number(), fresh_number());
    // Meta refuses to describe the first from the start (its read when added too).
    meta_says(&app, &failing, json!({"error": 131000})).await;
    for (pnid, display) in [(&failing, "+1 555-010-1111"), (&other, "+1 555-010-2222")] {
        let (s, body) = add_number(
            &app,
            &t.tenant_id,
            json!({"phone_number_id": pnid, "waba_id": "1000001", "display_phone_number": display}),
        )
        .await;
        assert_eq!(s, 201, "{body}");
    }
    let an_hour_ago = chrono::Utc::now().timestamp() - 3600;
    let res = app
        .post_webhook(&quality_note(
            &failing,
            an_hour_ago,
            json!({"event": "THROUGHPUT_UPGRADE", "quality_rating": "RED"}),
        ))
        .await;
    assert_eq!(res.status(), 200);
    meta_says(
        &app,
        &failing,
        json!({"error": 131000, "quality_rating": "GREEN", "throughput": "STANDARD"}),
    )
    .await;
    meta_says(&app, &other, json!({"throughput": "HIGH"})).await;
    let done = daily_sync(&app, &t.tenant_id).await;
    assert_eq!((done.numbers_read, done.numbers_failed), (2, 1), "{done:?}");
    let listed = numbers(&app, &t.key).await;
    let f = number_of(&listed, &failing);
    assert_eq!(
        (
            &f["quality"],
            &f["throughput_per_sec"],
            &f["display_phone_number"]
        ),
        (&json!("red"), &json!(1000), &json!("+1 555-010-1111")),
        "{f}"
    );
    let o = number_of(&listed, &other);
    assert_eq!(
        (&o["quality"], &o["throughput_per_sec"]),
        (&json!("green"), &json!(1000)),
        "{o}"
    );
    let d = number_of(&listed, &t.phone_number_id);
    assert_eq!(d["quality"], "green", "{d}");
}

/// A number Meta already has at its high throughput tier when the operator adds it is
/// paced at Meta's rate from the start: adding it reads Meta's description of it (it
/// waited for the next daily run or a webhook, at the default tier meanwhile). A number
/// Meta will not describe is added all the same.
async fn a_number_added_is_read_from_meta_at_once(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(0).await;
    let second = fresh_number();
    meta_says(
        &app,
        &second,
        json!({"throughput": "HIGH", "quality_rating": "YELLOW"}),
    )
    .await;
    let (s, body) = add_number(
        &app,
        &t.tenant_id,
        json!({"phone_number_id": second, "waba_id": "1000001"}),
    )
    .await;
    assert_eq!(s, 201, "{body}");
    let n = number_of(&numbers(&app, &t.key).await, &second);
    assert_eq!(
        (&n["quality"], &n["throughput_per_sec"]),
        (&json!("yellow"), &json!(1000)),
        "{n}"
    );
}

/// The same for a tenant's first number, as it is onboarded: one Meta has at its high
/// tier is paced at Meta's rate from the start, its quality and display known.
async fn an_onboarded_number_is_read_from_meta_at_once(b: Backend) {
    let app = spawn_app(b).await;
    let pnid = fresh_number();
    meta_says(
        &app,
        &pnid,
        json!({"throughput": "HIGH", "quality_rating": "YELLOW", "display_phone_number": "+60 3-7000 5678"}),
    )
    .await;
    let (s, body) = call(
        &app,
        reqwest::Method::POST,
        OPERATOR_TOKEN,
        "/v1/platform/tenants",
        Some(
            json!({"name": "Kedai Laju", "waba_id": "7001004", "phone_number_id": pnid,
            "meta_access_token": "EAAG"}),
        ),
    )
    .await;
    assert_eq!(s, 201, "{body}");
    let key = body["admin_api_key"].as_str().unwrap_or_default();
    let n = number_of(&numbers(&app, key).await, &pnid);
    assert_eq!(
        (
            &n["quality"],
            &n["throughput_per_sec"],
            &n["display_phone_number"]
        ),
        (&json!("yellow"), &json!(1000), &json!("+60 3-7000 5678")),
        "{n}"
    );
}

/// Meta limits one number for spam (131048): that number is held — the message failed and
/// refunded, its next sends refused `sender_held` with nothing debited, the hold shown and
/// audited — while the tenant stays active and its other number sends. An admin (not a
/// read-only key) resumes it and it sends again.
async fn metas_spam_limit_holds_that_number_only_until_an_admin_resumes_it(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(10).await;
    let limited = t.phone_number_id.clone();
    let other = fresh_number();
    let (s, body) = add_number(
        &app,
        &t.tenant_id,
        json!({"phone_number_id": other, "waba_id": "1000001"}),
    )
    .await;
    assert_eq!(s, 201, "{body}");
    meta_says(&app, &limited, json!({"send_error": 131048})).await;

    let (s, body) = send_from(&app, &t.key, "+60123453001", None).await;
    assert_eq!(s, 202, "{body}");
    let id = body["id"].as_str().unwrap_or_default().to_owned();
    let view = app.wait_status(&t.key, &id, "failed").await;
    assert_eq!(view["error"]["code"], 131048, "{view}");
    assert_eq!(app.credits_settled(&t.key, 10).await, 10, "refunded");
    let listed = numbers(&app, &t.key).await;
    let held = number_of(&listed, &limited);
    assert_eq!(held["hold"]["code"], 131048, "{held}");
    assert!(held["hold"]["since"].is_string(), "{held}");
    assert_eq!(number_of(&listed, &other)["hold"], Value::Null);
    let (_, account) = get(&app, &t.key, "/v1/account").await;
    assert_eq!(account["status"], "active", "the tenant is not suspended");
    let (s, audit) = get(&app, &t.key, "/v1/audit?action=phone_number.hold").await;
    assert_eq!(s, 200, "{audit}");
    assert_eq!(audit["events"][0]["actor"]["id"], "dispatcher", "{audit}");

    // The held number's sends are refused before anything is debited; the other sends.
    for from in [None, Some(limited.as_str())] {
        let (s, body) = send_from(&app, &t.key, "+60123453002", from).await;
        assert_eq!(
            (s, &body["error"]["code"]),
            (403, &json!("sender_held")),
            "{body}"
        );
    }
    let (s, body) = call(
        &app,
        reqwest::Method::POST,
        &t.key,
        "/v1/broadcasts",
        Some(json!({"template": template_of("utility"), "recipients": ["+60123453003"]})),
    )
    .await;
    assert_eq!(
        (s, &body["error"]["code"]),
        (403, &json!("sender_held")),
        "{body}"
    );
    assert_eq!(app.credits(&t.key).await, 10, "nothing debited");
    let (s, body) = send_from(&app, &t.key, "+60123453004", Some(&other)).await;
    assert_eq!(s, 202, "{body}");
    let id = body["id"].as_str().unwrap_or_default().to_owned();
    let view = app.wait_status(&t.key, &id, "read").await;
    assert_eq!(view["status"], "read", "{view}");

    // Resumed by an admin only; a number not the tenant's is not found.
    let path = format!("/v1/phone-numbers/{limited}/resume");
    let reader = key_with_role(&app, &t.key, "read_only").await;
    let operator = key_with_role(&app, &t.key, "operator").await;
    for k in [&reader, &operator] {
        let (s, body) = call(&app, reqwest::Method::POST, k, &path, None).await;
        assert_eq!(s, 403, "{body}");
    }
    let (s, _) = call(
        &app,
        reqwest::Method::POST,
        &t.key,
        &format!("/v1/phone-numbers/{}/resume", fresh_number()),
        None,
    )
    .await;
    assert_eq!(s, 404);
    meta_says(&app, &limited, json!({"send_error": null})).await;
    let (s, body) = call(&app, reqwest::Method::POST, &t.key, &path, None).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        (&body["phone_number_id"], &body["hold"]),
        (&json!(limited), &Value::Null),
        "{body}"
    );
    // Again: nothing to resume, answered as it is.
    let (s, body) = call(&app, reqwest::Method::POST, &t.key, &path, None).await;
    assert_eq!((s, &body["hold"]), (200, &Value::Null), "{body}");
    let (s, body) = send_from(&app, &t.key, "+60123453005", None).await;
    assert_eq!(s, 202, "{body}");
    let id = body["id"].as_str().unwrap_or_default().to_owned();
    let view = app.wait_status(&t.key, &id, "read").await;
    assert_eq!(view["status"], "read", "{view}");
}

/// Onboards a tenant with `phone_number_id` on WABA 1000001; answers the status and body.
async fn onboard_with(app: &TestApp, phone_number_id: &str) -> (u16, Value) {
    call(
        app,
        reqwest::Method::POST,
        OPERATOR_TOKEN,
        "/v1/platform/tenants",
        Some(json!({
            "name": "Kedai Baharu",
            "waba_id": "1000001",
            "phone_number_id": phone_number_id,
            "meta_access_token": "EAAG-test-meta-token",
            "credits": 10,
        })),
    )
    .await
}

/// An inbound STOP from `from` (digits) to the number, as Meta delivers it.
async fn stop_from(app: &TestApp, phone_number_id: &str, from: &str) -> Value {
    let note = json!({"object":"whatsapp_business_account","entry":[{"id":"1000001","changes":[{"field":"messages","value":{
        "messaging_product":"whatsapp",
        "metadata":{"display_phone_number":"60300000000","phone_number_id":phone_number_id},
        "contacts":[{"profile":{"name":"Aminah"},"wa_id":from}],
        "messages":[{"from":from,"id":format!("wamid.in.{}", ulid::Ulid::new()),
            "timestamp":chrono::Utc::now().timestamp().to_string(),"type":"text","text":{"body":"STOP"}}]}}]}]});
    let res = app.post_webhook(&note).await;
    assert_eq!(res.status(), 200);
    res.json().await.unwrap_or(Value::Null)
}

/// The operator closes a tenant whose onboarding went wrong and onboards its number again
/// at once: the number's route names a closed tenant, so it is taken over in the
/// onboarding's one write (not left until the retention run's scan reaches the closed
/// tenant). The new tenant sends from it, Meta's webhooks for it reach the new tenant, the
/// take-over is in its audit trail, and the closed tenant's close-out, when it comes,
/// leaves the route with the new tenant. A number of an active or a suspended tenant is
/// still refused.
async fn a_closed_tenants_number_is_onboarded_again_at_once_and_its_close_out_leaves_it_so(
    b: Backend,
) {
    let app = spawn_app(b).await;
    let a = app.onboard(10).await;
    let suspended = app.onboard(0).await;
    let (s, body) = call(
        &app,
        reqwest::Method::POST,
        OPERATOR_TOKEN,
        &format!("/v1/platform/tenants/{}/suspend", suspended.tenant_id),
        Some(json!({"reason": "invoice unpaid"})),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    // An open tenant's number, active or suspended: 409 naming it.
    for t in [&a, &suspended] {
        let (s, body) = onboard_with(&app, &t.phone_number_id).await;
        assert_eq!(s, 409, "{body}");
        assert_eq!(body["error"]["code"], "conflict");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains(&t.tenant_id),
            "{body}"
        );
    }
    let (s, body) = call(
        &app,
        reqwest::Method::DELETE,
        OPERATOR_TOKEN,
        &format!("/v1/platform/tenants/{}", a.tenant_id),
        None,
    )
    .await;
    assert_eq!(s, 200, "{body}");
    // Closed (not closed out): its number is the new tenant's at once.
    let (s, body) = onboard_with(&app, &a.phone_number_id).await;
    assert_eq!(s, 201, "{body}");
    let new_id = body["tenant"]["id"].as_str().unwrap_or_default().to_owned();
    let key = body["admin_api_key"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let listed = numbers(&app, &key).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["phone_number_id"], json!(a.phone_number_id));
    assert_eq!(listed[0]["default"], json!(true));
    // Sends from it, and its statuses reach the new tenant's message.
    let sent = app.send_ok(&key, "+60123458001").await;
    let view = app.wait_status(&key, &sent, "read").await;
    assert_eq!(view["status"], "read", "{view}");
    let reached = app.sandbox_requests_to("60123458001");
    assert_eq!(reached.len(), 1);
    assert_eq!(reached[0].phone_number_id, a.phone_number_id);
    // An inbound STOP to the number is the new tenant's opt-out.
    let summary = stop_from(&app, &a.phone_number_id, "60123458002").await;
    assert_eq!(summary["summary"]["applied"], 1, "{summary}");
    let (s, _) = get(&app, &key, "/v1/opt-outs/%2B60123458002").await;
    assert_eq!(s, 200, "the new tenant's opt-out");
    // Meta's quality update by the number's id is the new tenant's number's.
    let note = json!({"object": "whatsapp_business_account", "entry": [{"id": "1000001",
        "time": chrono::Utc::now().timestamp() + 1,
        "changes": [{"field": "phone_number_quality_update", "value":
            {"phone_number_id": a.phone_number_id, "event": "FLAGGED"}}]}]});
    let res = app.post_webhook(&note).await;
    assert_eq!(res.status(), 200);
    assert_eq!(numbers(&app, &key).await[0]["quality"], json!("red"));
    // The take-over is in the new tenant's audit trail, naming the closed tenant (ids only).
    let (s, audit) = get(&app, &key, "/v1/audit?action=POST%20/v1/platform/tenants").await;
    assert_eq!(s, 200, "{audit}");
    assert_eq!(
        audit["events"][0]["details"]["phone_number_taken_from"],
        json!(a.tenant_id),
        "{audit}"
    );
    // Taken once: a further onboarding of it names the new owner.
    let (s, body) = onboard_with(&app, &a.phone_number_id).await;
    assert_eq!(s, 409, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains(&new_id),
        "{body}"
    );

    // The retention run reaches the closed tenant and closes it out: the route, which
    // names the new tenant now, stays.
    let (s, report) = call(
        &app,
        reqwest::Method::POST,
        OPERATOR_TOKEN,
        "/v1/platform/retention/run",
        None,
    )
    .await;
    assert_eq!(s, 200, "{report}");
    let closed_out = report["closed_out"].as_array().cloned().unwrap_or_default();
    let of_a = closed_out
        .iter()
        .find(|c| c["tenant_id"] == json!(a.tenant_id))
        .unwrap_or_else(|| panic!("A closed out: {report}"));
    assert_eq!(of_a["phone_route_removed"], json!(false), "{report}");
    let again = app.send_ok(&key, "+60123458003").await;
    assert_eq!(
        app.wait_status(&key, &again, "read").await["status"],
        "read"
    );
    let summary = stop_from(&app, &a.phone_number_id, "60123458004").await;
    assert_eq!(summary["summary"]["applied"], 1, "{summary}");
    let (s, _) = get(&app, &key, "/v1/opt-outs/%2B60123458004").await;
    assert_eq!(s, 200, "still the new tenant's number after the close-out");
    let (s, body) = onboard_with(&app, &a.phone_number_id).await;
    assert_eq!(s, 409, "{body}");
}

/// The operator's number add takes a closed tenant's number the same way (a second number
/// of the closed tenant's here), audited with the closed tenant's id; an open tenant's
/// number is still refused.
async fn a_closed_tenants_number_is_added_to_another_tenant_at_once(b: Backend) {
    let app = spawn_app(b).await;
    let a = app.onboard(0).await;
    let c = app.onboard(10).await;
    let second = fresh_number();
    let body = json!({"phone_number_id": second, "waba_id": "1000001"});
    assert_eq!(add_number(&app, &a.tenant_id, body.clone()).await.0, 201);
    let (s, res) = add_number(&app, &c.tenant_id, body.clone()).await;
    assert_eq!(
        (s, &res["error"]["code"]),
        (409, &json!("conflict")),
        "{res}"
    );
    let (s, _) = call(
        &app,
        reqwest::Method::DELETE,
        OPERATOR_TOKEN,
        &format!("/v1/platform/tenants/{}", a.tenant_id),
        None,
    )
    .await;
    assert_eq!(s, 200);
    let (s, res) = add_number(&app, &c.tenant_id, body.clone()).await;
    assert_eq!(s, 201, "{res}");
    let (s, res) = send_from(&app, &c.key, "+60123458101", Some(&second)).await;
    assert_eq!(s, 202, "{res}");
    let sent = res["id"].as_str().unwrap_or_default();
    assert_eq!(
        app.wait_status(&c.key, sent, "read").await["status"],
        "read"
    );
    let reached = app.sandbox_requests_to("60123458101");
    assert_eq!(reached.len(), 1);
    assert_eq!(reached[0].phone_number_id, second);
    let (s, audit) = get(
        &app,
        &c.key,
        "/v1/audit?action=POST%20/v1/platform/tenants/%7Bid%7D/phone-numbers",
    )
    .await;
    assert_eq!(s, 200, "{audit}");
    let event = &audit["events"][0];
    assert_eq!(
        event["details"]["phone_number_id"],
        json!(second),
        "{audit}"
    );
    assert_eq!(
        event["details"]["phone_number_taken_from"],
        json!(a.tenant_id),
        "{audit}"
    );
    // The closed tenant's close-out leaves it with C.
    let (s, _) = call(
        &app,
        reqwest::Method::POST,
        OPERATOR_TOKEN,
        "/v1/platform/retention/run",
        None,
    )
    .await;
    assert_eq!(s, 200);
    let summary = stop_from(&app, &second, "60123458102").await;
    assert_eq!(summary["summary"]["applied"], 1, "{summary}");
    let (s, _) = get(&app, &c.key, "/v1/opt-outs/%2B60123458102").await;
    assert_eq!(s, 200);
}

/// A send from a second number to the sandbox's slow recipient (0005): Kirim's call to
/// Meta times out before the answer (700 ms, the sandbox answering after 1.5 s), then Meta
/// accepts the message and its statuses follow. Answers the tenant and the message's id
/// once it is `sending` (the number was read and the call made), and the number.
async fn a_slow_send_from_a_second_number(
    app: &TestApp,
) -> (kirim_tests::Onboarded, String, String) {
    let t = app.onboard(10).await;
    let second = fresh_number();
    let (s, body) = add_number(
        app,
        &t.tenant_id,
        json!({"phone_number_id": second, "waba_id": "1000001"}),
    )
    .await;
    assert_eq!(s, 201, "{body}");
    let (s, body) = send_from(app, &t.key, "+60123450005", Some(&second)).await;
    assert_eq!(s, 202, "{body}");
    let id = body["id"].as_str().unwrap_or_default().to_owned();
    let m = app.wait_status(&t.key, &id, "sending").await;
    assert_eq!(m["status"], "sending", "{m}");
    (t, id, second)
}

/// The operator removes `number` from `tenant`.
async fn remove_number(app: &TestApp, tenant: &str, number: &str) {
    let (s, body) = call(
        app,
        reqwest::Method::DELETE,
        OPERATOR_TOKEN,
        &format!("/v1/platform/tenants/{tenant}/phone-numbers/{number}"),
        None,
    )
    .await;
    assert_eq!(s, 204, "{body}");
}

/// The slow send's message settled by Meta's statuses: read, with Meta's wamid and pricing,
/// sent once, and counted in the tenant's usage.
async fn settled_by_metas_statuses(
    app: &TestApp,
    t: &kirim_tests::Onboarded,
    id: &str,
    from: &str,
) {
    let m = app.wait_status(&t.key, id, "read").await;
    assert_eq!(m["status"], "read", "settled by Meta's statuses: {m}");
    assert!(
        m["wamid"].as_str().is_some_and(|w| w.starts_with("wamid.")),
        "{m}"
    );
    assert_eq!(m["pricing"]["category"], "utility", "{m}");
    let sent = app.sandbox_requests_to("60123450005");
    assert_eq!(sent.len(), 1, "never sent twice");
    assert_eq!(sent[0].phone_number_id, from);
    let today = chrono::Utc::now().date_naive();
    let (from, to) = (today.pred_opt().unwrap(), today.succ_opt().unwrap());
    let (s, body) = get(app, &t.key, &format!("/v1/usage?from={from}&to={to}")).await;
    assert_eq!(s, 200, "{body}");
    let counted: i64 = body["usage"]
        .as_array()
        .map(|rows| rows.iter().filter_map(|r| r["messages"].as_i64()).sum())
        .unwrap_or_default();
    assert_eq!(counted, 1, "counted in the tenant's usage: {body}");
}

async fn a_timed_out_send_from_a_number_removed_since_is_settled_by_metas_statuses(b: Backend) {
    let app = spawn_app(b).await;
    let (t, id, second) = a_slow_send_from_a_second_number(&app).await;
    // Removed while the call to Meta waits: Meta's statuses then come for a number no
    // tenant has, and no wamid was recorded (the call timed out).
    remove_number(&app, &t.tenant_id, &second).await;
    settled_by_metas_statuses(&app, &t, &id, &second).await;
}

async fn a_timed_out_send_from_a_number_taken_over_since_is_settled_by_metas_statuses(b: Backend) {
    let app = spawn_app(b).await;
    let other = app.onboard(0).await;
    let (t, id, second) = a_slow_send_from_a_second_number(&app).await;
    // Removed and added to another tenant while the call to Meta waits: Meta's statuses
    // then come for a number that tenant has, which has no such message.
    remove_number(&app, &t.tenant_id, &second).await;
    let (s, body) = add_number(
        &app,
        &other.tenant_id,
        json!({"phone_number_id": second, "waba_id": "1000001"}),
    )
    .await;
    assert_eq!(s, 201, "{body}");
    settled_by_metas_statuses(&app, &t, &id, &second).await;
    // The new owner sees neither the message nor its charge.
    let (s, _) = get(&app, &other.key, &format!("/v1/messages/{id}")).await;
    assert_eq!(s, 404);
    let today = chrono::Utc::now().date_naive();
    let (from, to) = (today.pred_opt().unwrap(), today.succ_opt().unwrap());
    let (s, body) = get(&app, &other.key, &format!("/v1/usage?from={from}&to={to}")).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["usage"], json!([]), "{body}");
}

on_both_backends!(
    a_closed_tenants_number_is_onboarded_again_at_once_and_its_close_out_leaves_it_so,
    a_timed_out_send_from_a_number_removed_since_is_settled_by_metas_statuses,
    a_timed_out_send_from_a_number_taken_over_since_is_settled_by_metas_statuses,
    a_closed_tenants_number_is_added_to_another_tenant_at_once,
    metas_spam_limit_holds_that_number_only_until_an_admin_resumes_it,
    an_onboarded_number_is_read_from_meta_at_once,
    a_number_added_is_read_from_meta_at_once,
    a_session_text_goes_only_from_the_number_the_user_wrote_to,
    a_number_on_another_waba_brings_its_catalogue_which_decides_its_sends,
    a_send_from_a_second_number_reaches_the_sandbox_with_that_numbers_id,
    a_send_from_a_number_not_the_tenants_is_refused_as_unknown_sender_with_nothing_debited,
    a_number_owned_by_another_tenant_cannot_be_added_and_bad_input_is_refused,
    the_last_number_is_never_removed_and_removals_are_audited,
    an_admin_switches_the_default_number_and_sends_without_from_go_from_it,
    a_quality_webhook_updates_that_numbers_quality_and_throughput,
    an_onboarded_numbers_display_lets_metas_quality_webhook_find_it,
    a_number_onboarded_without_its_display_learns_it_from_an_inbound_message,
    pricing_is_kept_on_a_read_message_and_counted_once_in_usage,
    a_replayed_delivered_with_its_pricing_leaves_the_message_counted_once,
    usage_refuses_bad_dates_and_ranges,
    a_number_meta_reports_at_high_throughput_is_paced_at_metas_rate_after_the_daily_sync,
    an_older_read_of_meta_never_undoes_a_newer_quality_webhook,
    a_meta_error_reading_one_number_leaves_its_stored_values_and_the_others_are_read,
);

/// A tenant from before numbers had items has no item for its default number: its first
/// send writes it (so the number's hold is read from the warm cache, not looked for in the
/// table twice on every send), and Meta's spam limit holds it all the same (the item
/// written with the hold). On DynamoDB, where such tenants are.
#[tokio::test]
async fn a_legacy_default_number_gets_its_item_at_its_first_send_and_can_be_held() {
    let app = spawn_app(Backend::Aws).await;
    let pnid = fresh_number();
    let (s, body) = call(
        &app,
        reqwest::Method::POST,
        OPERATOR_TOKEN,
        "/v1/platform/tenants",
        Some(
            json!({"name": "Kedai Lama", "waba_id": "1000001", "phone_number_id": pnid,
            "meta_access_token": "EAAG", "credits": 5}),
        ),
    )
    .await;
    assert_eq!(s, 201, "{body}");
    let key = body["admin_api_key"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let tenant_id = body["tenant"]["id"].as_str().unwrap_or_default().to_owned();
    let sdk = kirim_tests::moto_sdk().await;
    let ddb = aws_sdk_dynamodb::Client::new(&sdk);
    use aws_sdk_dynamodb::types::AttributeValue as Av;
    let item_key: std::collections::HashMap<_, _> = [
        ("pk".to_owned(), Av::S(format!("TENANT#{tenant_id}"))),
        ("sk".to_owned(), Av::S(format!("NUMBER#{pnid}"))),
    ]
    .into_iter()
    .collect();
    let table = format!("{}-Table", app.stack);
    let forget = || async {
        ddb.delete_item()
            .table_name(&table)
            .set_key(Some(item_key.clone()))
            .send()
            .await
            .unwrap();
    };
    let stored = || async {
        ddb.get_item()
            .table_name(&table)
            .set_key(Some(item_key.clone()))
            .consistent_read(true)
            .send()
            .await
            .unwrap()
            .item
    };
    forget().await;
    let (s, body) = send_from(&app, &key, "+60123455001", None).await;
    assert_eq!(s, 202, "{body}");
    assert!(stored().await.is_some(), "written at the first send");

    forget().await;
    let id = kirim::domain::TenantId::parse(&tenant_id).unwrap();
    let tenant = app.app.deps.tenants.get_tenant(&id).await.unwrap().unwrap();
    kirim::service::numbers::hold_for_meta(
        &app.app.deps,
        &tenant,
        &pnid,
        (131048, "Spam rate limit hit"),
        "webhook",
        chrono::Utc::now(),
    )
    .await;
    let item = stored().await.expect("written with its hold");
    assert!(item.contains_key("hold"), "{item:?}");
    assert_eq!(numbers(&app, &key).await[0]["hold"]["code"], 131048);
    let (s, body) = send_from(&app, &key, "+60123455002", None).await;
    assert_eq!(
        (s, &body["error"]["code"]),
        (403, &json!("sender_held")),
        "{body}"
    );
}

/// A tenant from before numbers had items has none for its default number: the first
/// inbound message naming the number's display writes its item, with that display, so
/// Meta's quality updates (which name a number only by its display) find it. On DynamoDB,
/// where such tenants are (the test deletes the item onboarding wrote).
#[tokio::test]
async fn a_legacy_default_number_without_an_item_learns_its_display_from_an_inbound_message() {
    let app = spawn_app(Backend::Aws).await;
    let pnid = fresh_number();
    let waba = "7001003";
    let (s, body) = call(
        &app,
        reqwest::Method::POST,
        OPERATOR_TOKEN,
        "/v1/platform/tenants",
        Some(
            json!({"name": "Kedai Lama", "waba_id": waba, "phone_number_id": pnid,
            "meta_access_token": "EAAG"}),
        ),
    )
    .await;
    assert_eq!(s, 201, "{body}");
    let key = body["admin_api_key"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let tenant_id = body["tenant"]["id"].as_str().unwrap_or_default().to_owned();
    let sdk = kirim_tests::moto_sdk().await;
    let ddb = aws_sdk_dynamodb::Client::new(&sdk);
    use aws_sdk_dynamodb::types::AttributeValue as Av;
    let item_key = |sk: String| {
        [
            ("pk".to_owned(), Av::S(format!("TENANT#{tenant_id}"))),
            ("sk".to_owned(), Av::S(sk)),
        ]
        .into_iter()
        .collect::<std::collections::HashMap<_, _>>()
    };
    let table = format!("{}-Table", app.stack);
    ddb.delete_item()
        .table_name(&table)
        .set_key(Some(item_key(format!("NUMBER#{pnid}"))))
        .send()
        .await
        .unwrap();
    let listed = numbers(&app, &key).await;
    assert_eq!(
        listed.len(),
        1,
        "the default, from the tenant item: {listed:?}"
    );
    assert_eq!(listed[0]["display_phone_number"], Value::Null);
    let hello = json!({"object": "whatsapp_business_account", "entry": [{"id": waba, "changes": [{
        "field": "messages", "value": {"messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "60370004321", "phone_number_id": pnid},
        "messages": [{"from": "60123450556", "id": format!("wamid.in.{}", ulid::Ulid::new()),
            "timestamp": chrono::Utc::now().timestamp().to_string(), "type": "text",
            "text": {"body": "hello"}}]}}]}]});
    assert_eq!(app.post_webhook(&hello).await.status(), 200);
    let item = ddb
        .get_item()
        .table_name(&table)
        .set_key(Some(item_key(format!("NUMBER#{pnid}"))))
        .consistent_read(true)
        .send()
        .await
        .unwrap();
    assert!(item.item.is_some(), "the default number's item is written");
    assert_eq!(
        numbers(&app, &key).await[0]["display_phone_number"],
        "60370004321"
    );
    let quality = json!({"object": "whatsapp_business_account", "entry": [{"id": waba, "time": 1_764_460_000,
        "changes": [{"field": "phone_number_quality_update", "value":
            {"display_phone_number": "60370004321", "event": "FLAGGED", "quality_rating": "RED"}}]}]});
    assert_eq!(app.post_webhook(&quality).await.status(), 200);
    let n = numbers(&app, &key).await;
    assert_eq!(
        (n[0]["quality"].clone(), n[0]["default"].clone()),
        (json!("red"), json!(true)),
        "{n:?}"
    );
}

/// Phone numbers, except that reading one fails (DynamoDB throttled).
struct NumberReadsFail(std::sync::Arc<dyn kirim::ports::PhoneNumberStore>);

kirim_tests::pass_through! {
    impl PhoneNumberStore for NumberReadsFail via 0 {
        async fn get_phone_number(
            &self,
            _: &kirim::domain::TenantId,
            _: &str,
        ) -> Result<Option<kirim::ports::PhoneNumberRecord>, kirim::store_error::StoreError> {
            Err(kirim::store_error::StoreError::Unavailable(
                "dynamodb throttled".into(),
            ))
        }
    }
}

/// A quality update whose number cannot be read for want of storage is an error (the
/// webhook answers 500: Meta delivers it again), not "a number no tenant has" (200: lost).
#[tokio::test]
async fn a_quality_update_whose_number_storage_cannot_read_is_an_error_not_ignored() {
    let clock = kirim_tests::ManualClock::new();
    let mut deps = kirim::wiring::memory_deps(kirim_tests::test_settings(), clock).unwrap();
    let req: kirim::service::accounts::NewTenant = serde_json::from_value(json!({"name": "Kedai",
        "waba_id": "1000001", "phone_number_id": "2000009", "meta_access_token": "EAAG", "credits": 1}))
    .unwrap();
    kirim::service::accounts::create_tenant(&deps, req)
        .await
        .unwrap();
    deps.numbers = std::sync::Arc::new(NumberReadsFail(deps.numbers.clone()));
    let body = json!({"object": "whatsapp_business_account", "entry": [{"id": "1000001", "time": 1_764_460_000,
        "changes": [{"field": "phone_number_quality_update",
            "value": {"phone_number_id": "2000009", "event": "FLAGGED"}}]}]});
    let summary = kirim::service::webhook::apply(&deps, body.to_string().as_bytes())
        .await
        .unwrap();
    assert_eq!((summary.errors, summary.ignored), (1, 0), "{summary:?}");
}

/// Meta describing every number at high throughput after `delay`, noting which it was
/// asked for; its template lists are empty.
#[derive(Default)]
struct DescribingMeta {
    delay: std::time::Duration,
    asked: std::sync::Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl kirim::ports::MetaClient for DescribingMeta {
    async fn send_message(
        &self,
        _: &str,
        _: &kirim::secret::Secret,
        _: &Value,
    ) -> Result<kirim::ports::MetaAccepted, kirim::ports::MetaSendError> {
        Err(kirim::ports::MetaSendError::Timeout)
    }
    async fn list_templates(
        &self,
        _: &str,
        _: &kirim::secret::Secret,
        _: Option<&str>,
    ) -> Result<kirim::domain::template::MetaTemplatePage, kirim::ports::MetaSendError> {
        Ok(Default::default())
    }
    async fn get_phone_number(
        &self,
        pnid: &str,
        _: &kirim::secret::Secret,
    ) -> Result<kirim::domain::number::MetaPhoneNumber, kirim::ports::MetaSendError> {
        self.asked.lock().unwrap().push(pnid.to_owned());
        tokio::time::sleep(self.delay).await;
        Ok(kirim::domain::number::MetaPhoneNumber {
            throughput_per_sec: Some(1000),
            ..Default::default()
        })
    }
}

/// The daily read of numbers is bounded: no more numbers a run than its cap (the rest wait
/// for another day's order), none begun after the run's deadline, and one still being read
/// then given up (counted as failed, nothing written).
#[tokio::test(start_paused = true)]
async fn the_daily_number_reads_stop_at_the_runs_cap_and_deadline() {
    let clock = kirim_tests::ManualClock::new();
    let mut deps = kirim::wiring::memory_deps(kirim_tests::test_settings(), clock).unwrap();
    let mut tenants = Vec::new();
    for i in 0..3 {
        let req: kirim::service::accounts::NewTenant = serde_json::from_value(json!({
            "name": "Kedai", "waba_id": format!("{}", 7_600_000 + i),
            "phone_number_id": format!("{}", 8_600_000 + i), "meta_access_token": "EAAG", "credits": 1}))
        .unwrap();
        let (t, _) = kirim::service::accounts::create_tenant(&deps, req)
            .await
            .unwrap();
        tenants.push(t.id);
    }
    let meta = Arc::new(DescribingMeta::default());
    deps.meta = meta.clone();
    let far = || tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    let done =
        kirim::service::daily_sync::sync_scheduled_capped(&deps, &tenants, far(), 500, 2).await;
    assert_eq!((done.numbers_read, done.numbers_failed), (2, 0), "{done:?}");
    assert_eq!(done.wabas, 3, "the WABAs are synced all the same: {done:?}");
    assert_eq!(meta.asked.lock().unwrap().len(), 2);

    // Each read takes 400 ms; the run has 600: one read, one cut short, one never begun.
    let meta = Arc::new(DescribingMeta {
        delay: std::time::Duration::from_millis(400),
        ..Default::default()
    });
    deps.meta = meta.clone();
    let started = tokio::time::Instant::now();
    let until = started + std::time::Duration::from_millis(600);
    let done = kirim::service::daily_sync::sync_scheduled(&deps, &tenants, until).await;
    assert_eq!((done.numbers_read, done.numbers_failed), (1, 1), "{done:?}");
    assert!(done.out_of_time);
    assert_eq!(
        tokio::time::Instant::now() - started,
        std::time::Duration::from_millis(600)
    );
    let paced_high = {
        let mut n = 0;
        for id in &tenants {
            let t = deps.tenants.get_tenant(id).await.unwrap().unwrap();
            let number = kirim::service::numbers::sender(&deps, &t, None)
                .await
                .unwrap();
            if number.throughput_per_sec == Some(1000) {
                n += 1;
            }
        }
        n
    };
    // Two from the first run (each read number's), none more from the cut-short one.
    assert_eq!(paced_high, 2);
}
