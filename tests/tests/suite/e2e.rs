//! End to end through local mode: HTTP → store → queue → dispatcher → sandbox → signed
//! webhooks → store, on the memory backend and on the AWS SDK against moto.

use kirim::config::Backend;
use kirim_infra::meta_schema::MetaSchema;
use kirim_tests::{spawn_app, TestApp};
use serde_json::Value;

fn statuses(view: &Value) -> Vec<String> {
    view["events"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["status"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

async fn a_message_goes_accepted_sent_delivered_read_and_costs_one_credit(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(3).await;
    let id = app.send_ok(&t.key, "+60123450100").await;
    let view = app.wait_status(&t.key, &id, "read").await;
    assert_eq!(view["status"], "read", "{view}");
    assert_eq!(
        statuses(&view),
        vec!["accepted", "sending", "sent", "delivered", "read"]
    );
    assert_eq!(view["to"], "+60123450100");
    assert_eq!(view["template"]["name"], "order_update");
    assert_eq!(view["client_reference"], "order-42");
    assert!(view["wamid"]
        .as_str()
        .is_some_and(|w| w.starts_with("wamid.")));
    assert_eq!(app.credits(&t.key).await, 2);

    let sent = app.sandbox_requests_to("60123450100");
    assert_eq!(sent.len(), 1, "exactly one request to Meta");
    let req = &sent[0].request;
    MetaSchema::shared()
        .validate_message(req)
        .unwrap_or_else(|e| panic!("request matches Meta's Message schema: {e:?}"));
    assert_eq!(
        req["biz_opaque_callback_data"],
        format!("{id}.{}", t.tenant_id),
        "the message's id and its tenant's"
    );
    assert_eq!(
        req["template"]["components"][0]["parameters"][0]["text"],
        "ORDER-42"
    );
    assert_eq!(sent[0].phone_number_id, t.phone_number_id);

    // The outbox is also served over HTTP, as the README's walk-through uses it.
    let outbox: Value = app
        .http
        .get(app.url("/_sandbox/messages"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(outbox.to_string().contains(&id));
}

async fn a_text_message_is_sent_as_metas_text_type(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(1).await;
    app.user_wrote(&t.phone_number_id, "+60123459999").await;
    let res = app
        .http
        .post(app.url("/v1/messages"))
        .bearer_auth(&t.key)
        .json(&serde_json::json!({"to": "+60123459999", "text": {"body": "Your parcel is here"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let id = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let view = app.wait_status(&t.key, &id, "read").await;
    assert_eq!(view["status"], "read");
    assert_eq!(view["template"], Value::Null);
    let sent = app.sandbox_requests_to("60123459999");
    assert_eq!(sent[0].request["type"], "text");
    MetaSchema::shared()
        .validate_message(&sent[0].request)
        .unwrap();
}

async fn number_0001_ends_failed_with_131026_undeliverable(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let id = app.send_ok(&t.key, "+60123450001").await;
    let view = app.wait_status(&t.key, &id, "failed").await;
    assert_eq!(view["status"], "failed", "{view}");
    assert_eq!(view["error"]["code"], 131026);
    let hint = view["error"]["hint"].as_str().unwrap_or_default();
    assert!(
        hint.contains("may not use WhatsApp") && hint.contains("Meta's latest terms"),
        "a person learns what 131026 means: {view}"
    );
    assert_eq!(app.sandbox_requests_to("60123450001").len(), 1);
    assert_eq!(app.credits(&t.key).await, 4, "Meta accepted it: no refund");
}

async fn number_0002_ends_failed_with_131050_stopped_marketing(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let id = app.send_ok(&t.key, "+60123450002").await;
    let view = app.wait_status(&t.key, &id, "failed").await;
    assert_eq!(view["error"]["code"], 131050, "{view}");
    assert_eq!(app.sandbox_requests_to("60123450002").len(), 1);
}

async fn number_0003_is_throttled_twice_then_delivered_on_the_third_request(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let id = app.send_ok(&t.key, "+60123450003").await;
    let view = app.wait_status(&t.key, &id, "read").await;
    assert_eq!(view["status"], "read", "{view}");
    let reqs = app.sandbox_requests_to("60123450003");
    let codes: Vec<u16> = reqs.iter().map(|r| r.response.status).collect();
    assert_eq!(codes, vec![429, 429, 200]);
    // The throttled tries' error no longer describes a message Meta accepted.
    assert_eq!(view["error"], serde_json::Value::Null, "{view}");
    assert_eq!(app.credits(&t.key).await, 4);
}

async fn number_0004_is_retried_a_bounded_number_of_times_then_failed_and_refunded(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let id = app.send_ok(&t.key, "+60123450004").await;
    let view = app.wait_status(&t.key, &id, "failed").await;
    assert_eq!(view["status"], "failed", "{view}");
    assert_eq!(view["error"]["code"], 131000);
    // KIRIM_DISPATCH_MAX_ATTEMPTS is 3 in tests.
    assert_eq!(app.sandbox_requests_to("60123450004").len(), 3);
    assert_eq!(
        app.credits_settled(&t.key, 5).await,
        5,
        "never accepted by Meta: refunded"
    );
}

async fn number_0005_times_out_is_never_sent_twice_and_is_settled_by_the_webhook(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let id = app.send_ok(&t.key, "+60123450005").await;
    // The client timeout (700 ms) is shorter than the sandbox's delay (1.5 s): the
    // outcome is ambiguous, so the message stays `sending`...
    let view = app.wait_status(&t.key, &id, "sending").await;
    assert_eq!(view["status"], "sending", "{view}");
    // ...until Meta's statuses, matched by biz_opaque_callback_data, settle it.
    let view = app.wait_status(&t.key, &id, "read").await;
    assert_eq!(view["status"], "read", "{view}");
    assert_eq!(app.sandbox_requests_to("60123450005").len(), 1, "never two");
}

async fn number_0006_fails_at_once_with_190_is_refunded_and_suspends_the_tenant(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let id = app.send_ok(&t.key, "+60123450006").await;
    let view = app.wait_status(&t.key, &id, "failed").await;
    assert_eq!(view["error"]["code"], 190, "{view}");
    assert_eq!(app.sandbox_requests_to("60123450006").len(), 1);
    assert_eq!(app.credits_settled(&t.key, 5).await, 5);
    // Meta says the account cannot send: the tenant is paused until the operator resumes.
    let account: Value = app
        .http
        .get(app.url("/v1/account"))
        .bearer_auth(&t.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(account["status"], "suspended", "{account}");
    let res = app.send_template(&t.key, "+60123451234").await;
    assert_eq!(res.status(), 403);
    let audit: Value = app
        .http
        .get(app.url("/v1/audit?action=tenant.suspend"))
        .bearer_auth(&t.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(audit["events"][0]["actor"]["id"], "dispatcher", "{audit}");
    let res = app
        .http
        .post(app.url(&format!("/v1/platform/tenants/{}/resume", t.tenant_id)))
        .bearer_auth(kirim_tests::OPERATOR_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    app.send_ok(&t.key, "+60123451234").await;
}

async fn number_0007_fails_at_once_with_132001_template_missing(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let id = app.send_ok(&t.key, "+60123450007").await;
    let view = app.wait_status(&t.key, &id, "failed").await;
    assert_eq!(view["error"]["code"], 132001, "{view}");
    let hint = view["error"]["hint"].as_str().unwrap_or_default();
    assert!(
        hint.contains("name and language"),
        "a person learns what 132001 means: {view}"
    );
    assert_eq!(app.sandbox_requests_to("60123450007").len(), 1);
    assert_eq!(app.credits_settled(&t.key, 5).await, 5);
}

async fn number_0008_out_of_order_duplicated_statuses_still_end_read(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let id = app.send_ok(&t.key, "+60123450008").await;
    let view = app.wait_status(&t.key, &id, "read").await;
    assert_eq!(view["status"], "read");
    // Let the late delivered/sent duplicates arrive; they must change nothing.
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    let view = app.message(&t.key, &id).await;
    assert_eq!(view["status"], "read");
    let trail = statuses(&view);
    assert_eq!(
        trail.iter().filter(|s| *s == "read").count(),
        1,
        "{trail:?}"
    );
    assert!(
        !trail.contains(&"delivered".to_owned())
            || trail.iter().position(|s| s == "delivered") < trail.iter().position(|s| s == "read")
    );
    assert_eq!(app.sandbox_requests_to("60123450008").len(), 1);
}

async fn listing_filters_by_status_and_pages_with_a_cursor(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(10).await;
    let ok = app.send_ok(&t.key, "+60123451111").await;
    let bad = app.send_ok(&t.key, "+60123450007").await;
    let third = app.send_ok(&t.key, "+60123452222").await;
    app.wait_status(&t.key, &bad, "failed").await;
    app.wait_status(&t.key, &ok, "read").await;
    app.wait_status(&t.key, &third, "read").await;
    let failed: Value = app
        .http
        .get(app.url("/v1/messages?status=failed"))
        .bearer_auth(&t.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = failed["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(ids, vec![bad.as_str()]);
    let page1: Value = app
        .http
        .get(app.url("/v1/messages?limit=2"))
        .bearer_auth(&t.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page1["messages"].as_array().unwrap().len(), 2);
    let cursor = page1["next_cursor"]
        .as_str()
        .expect("a next page")
        .to_owned();
    let page2: Value = app
        .http
        .get(app.url("/v1/messages"))
        .query(&[("limit", "2"), ("cursor", cursor.as_str())])
        .bearer_auth(&t.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let all: Vec<String> = page1["messages"]
        .as_array()
        .unwrap()
        .iter()
        .chain(page2["messages"].as_array().unwrap())
        .filter_map(|m| m["id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(all, vec![third, bad, ok], "newest first, each once");
    // A full last page ends the list on both backends (DynamoDB's answered a cursor to an
    // empty page after it).
    assert_eq!(page2["next_cursor"], Value::Null, "{page2}");
    let whole: Value = app
        .http
        .get(app.url("/v1/messages?limit=3"))
        .bearer_auth(&t.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        whole["messages"].as_array().map(Vec::len),
        Some(3),
        "{whole}"
    );
    assert_eq!(whole["next_cursor"], Value::Null, "{whole}");
    // So does one filtered by a status read by filter (the two `read` among three).
    let read: Value = app
        .http
        .get(app.url("/v1/messages?status=read&limit=2"))
        .bearer_auth(&t.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(read["messages"].as_array().map(Vec::len), Some(2), "{read}");
    assert_eq!(read["next_cursor"], Value::Null, "{read}");
    // Another tenant's cursor is refused, not read as a position in this tenant's list.
    let other = app.onboard(5).await;
    let res = app
        .http
        .get(app.url("/v1/messages"))
        .query(&[("limit", "2"), ("cursor", cursor.as_str())])
        .bearer_auth(&other.key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"]["code"],
        "invalid_request"
    );
}

async fn the_retention_run_answers_a_report_to_the_operator(b: Backend) {
    let app: TestApp = spawn_app(b).await;
    let res = app
        .http
        .post(app.url("/v1/platform/retention/run"))
        .bearer_auth(kirim_tests::OPERATOR_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert!(body["deleted_expired"].is_u64());
}

async fn each_template_category_debits_its_price_from_the_table(b: Backend) {
    let mut cfg = kirim_tests::local_config(b).await;
    cfg.settings.prices = kirim::config::Prices {
        marketing: 3,
        utility: 1,
        authentication: 1,
        session: 2,
    };
    let app = kirim_tests::spawn_with(cfg).await;
    let t = app.onboard(6).await;
    let send = |category: &'static str, to: &'static str| {
        app.http
            .post(app.url("/v1/messages"))
            .bearer_auth(&t.key)
            .json(&serde_json::json!({"to": to, "template": kirim_tests::template_of(category)}))
            .send()
    };
    assert_eq!(
        send("marketing", "+60123459001").await.unwrap().status(),
        202
    );
    assert_eq!(app.credits(&t.key).await, 3);
    assert_eq!(send("utility", "+60123459002").await.unwrap().status(), 202);
    assert_eq!(app.credits(&t.key).await, 2);
    app.user_wrote(&t.phone_number_id, "+60123459003").await;
    let text = app
        .http
        .post(app.url("/v1/messages"))
        .bearer_auth(&t.key)
        .json(&serde_json::json!({"to": "+60123459003", "text": {"body": "hi"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(text.status(), 202);
    assert_eq!(app.credits(&t.key).await, 0);
    let res = send("authentication", "+60123459004").await.unwrap();
    assert_eq!(res.status(), 402);
    let ledger = app
        .app
        .deps
        .ledger
        .entries(&kirim::domain::TenantId::parse(&t.tenant_id).unwrap())
        .await
        .unwrap();
    let debits: Vec<i64> = ledger
        .iter()
        .filter(|e| e.kind == kirim::ports::LedgerKind::Debit)
        .map(|e| e.amount)
        .collect();
    assert_eq!(debits.iter().sum::<i64>(), -6, "{debits:?}");
}

on_both_backends!(
    a_message_goes_accepted_sent_delivered_read_and_costs_one_credit,
    a_text_message_is_sent_as_metas_text_type,
    number_0001_ends_failed_with_131026_undeliverable,
    number_0002_ends_failed_with_131050_stopped_marketing,
    number_0003_is_throttled_twice_then_delivered_on_the_third_request,
    number_0004_is_retried_a_bounded_number_of_times_then_failed_and_refunded,
    number_0005_times_out_is_never_sent_twice_and_is_settled_by_the_webhook,
    number_0006_fails_at_once_with_190_is_refunded_and_suspends_the_tenant,
    number_0007_fails_at_once_with_132001_template_missing,
    number_0008_out_of_order_duplicated_statuses_still_end_read,
    listing_filters_by_status_and_pages_with_a_cursor,
    the_retention_run_answers_a_report_to_the_operator,
    each_template_category_debits_its_price_from_the_table,
);
