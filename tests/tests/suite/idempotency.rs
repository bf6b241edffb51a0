//! `Idempotency-Key` on `POST /v1/messages` and on a platform top-up, end to end on both
//! backends.

use kirim::config::Backend;
use kirim_tests::{spawn_app, TestApp, OPERATOR_TOKEN};
use serde_json::{json, Value};

async fn post(app: &TestApp, key: &str, idem: Option<&str>, body: &str) -> reqwest::Response {
    let mut req = app
        .http
        .post(app.url("/v1/messages"))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(k) = idem {
        req = req.header("Idempotency-Key", k);
    }
    req.send().await.unwrap()
}

async fn messages(app: &TestApp, key: &str) -> Vec<Value> {
    let list: Value = app
        .http
        .get(app.url("/v1/messages"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    list["messages"].as_array().cloned().unwrap_or_default()
}

const BODY: &str = r#"{"to":"+60123458001","client_reference":"order-42","template":{"name":"order_update","language":"en_US","category":"utility","components":[{"type":"body","parameters":[{"type":"text","text":"A-1"}]}]}}"#;

async fn an_idempotent_retry_answers_the_same_id_and_debits_once(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let first = post(&app, &t.key, Some("order-42-attempt"), BODY).await;
    assert_eq!(first.status(), 202);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: Value = first.json().await.unwrap();
    let id = first["id"].as_str().unwrap().to_owned();
    app.wait_status(&t.key, &id, "read").await;
    // The same body again, and the same body with its keys reordered and spaced.
    let reordered = r#"{ "template": {"components":[{"parameters":[{"text":"A-1","type":"text"}],"type":"body"}],"category":"utility","language":"en_US","name":"order_update"},
        "client_reference":"order-42", "to":"+60123458001" }"#;
    for body in [BODY, reordered] {
        let again = post(&app, &t.key, Some("order-42-attempt"), body).await;
        assert_eq!(again.status(), 202);
        assert_eq!(
            again
                .headers()
                .get("idempotent-replayed")
                .map(|v| v.as_bytes()),
            Some(&b"true"[..])
        );
        let again: Value = again.json().await.unwrap();
        assert_eq!(again, first, "the first response again");
    }
    assert_eq!(app.credits(&t.key).await, 4, "one debit");
    assert_eq!(messages(&app, &t.key).await.len(), 1, "one message");
    assert_eq!(app.sandbox_requests_to("60123458001").len(), 1, "sent once");
    // Without a key, the same body is a new message.
    assert_eq!(post(&app, &t.key, None, BODY).await.status(), 202);
    assert_eq!(app.credits(&t.key).await, 3);
}

async fn the_same_key_with_another_body_is_409_idempotency_key_reused(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    assert_eq!(post(&app, &t.key, Some("k-1"), BODY).await.status(), 202);
    let other = BODY.replace("order-42", "order-43");
    let res = post(&app, &t.key, Some("k-1"), &other).await;
    assert_eq!(res.status(), 409);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "idempotency_key_reused");
    assert_eq!(app.credits(&t.key).await, 4);
    assert_eq!(messages(&app, &t.key).await.len(), 1);
    // Keys belong to their tenant: another tenant may use the same one.
    let other_tenant = app.onboard(1).await;
    assert_eq!(
        post(&app, &other_tenant.key, Some("k-1"), &other)
            .await
            .status(),
        202
    );
}

async fn bad_idempotency_keys_are_400_and_change_nothing(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let long = "k".repeat(256);
    for bad in ["", long.as_str(), "tab\there"] {
        let res = post(&app, &t.key, Some(bad), BODY).await;
        assert_eq!(res.status(), 400, "{bad:?}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_request");
    }
    let res = app
        .http
        .post(app.url("/v1/messages"))
        .bearer_auth(&t.key)
        .header("content-type", "application/json")
        .header(
            "Idempotency-Key",
            reqwest::header::HeaderValue::from_bytes("kunci-é".as_bytes()).unwrap(),
        )
        .body(BODY)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(
        post(&app, &t.key, Some(&"k".repeat(255)), BODY)
            .await
            .status(),
        202
    );
    assert_eq!(app.credits(&t.key).await, 4);
}

async fn a_refused_request_stores_nothing_so_the_retry_after_a_top_up_goes_through(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(0).await;
    let res = post(&app, &t.key, Some("after-top-up"), BODY).await;
    assert_eq!(res.status(), 402);
    let res = app
        .http
        .post(app.url(&format!("/v1/platform/tenants/{}/credits", t.tenant_id)))
        .bearer_auth(OPERATOR_TOKEN)
        .json(&json!({"amount": 2, "reference": "INV-7"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let first = post(&app, &t.key, Some("after-top-up"), BODY).await;
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();
    let again: Value = post(&app, &t.key, Some("after-top-up"), BODY)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(again["id"], first["id"]);
    assert_eq!(app.credits(&t.key).await, 1);
}

async fn a_replay_answers_the_first_response_after_the_credits_ran_out(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(1).await;
    let first = post(&app, &t.key, Some("last-credit"), BODY).await;
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();
    assert_eq!(app.credits(&t.key).await, 0);
    // The send's write is refused for the credits now; the key still answers first.
    let again = post(&app, &t.key, Some("last-credit"), BODY).await;
    assert_eq!(again.status(), 202);
    assert_eq!(
        again
            .headers()
            .get("idempotent-replayed")
            .map(|v| v.as_bytes()),
        Some(&b"true"[..])
    );
    let again: Value = again.json().await.unwrap();
    assert_eq!(again, first, "the first response again");
    // Another body with that key: 409, not the 402 the write would have answered.
    let other = BODY.replace("A-1", "A-2");
    let res = post(&app, &t.key, Some("last-credit"), &other).await;
    assert_eq!(res.status(), 409);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "idempotency_key_reused", "{body}");
    // Without a key: refused for the credits, nothing written.
    assert_eq!(post(&app, &t.key, None, BODY).await.status(), 402);
    assert_eq!(app.credits(&t.key).await, 0);
    assert_eq!(messages(&app, &t.key).await.len(), 1, "one message");
}

/// A send accepted, its answer lost, the tenant suspended meanwhile (by the operator, or
/// by Meta's 190 on that very message): the retry answers the first `202`, as after every
/// other refusal; a new request is refused `403 tenant_suspended`, nothing written.
async fn a_replay_answers_the_first_response_after_the_tenant_was_suspended(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(3).await;
    let first = post(&app, &t.key, Some("before-suspension"), BODY).await;
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();
    let res = app
        .http
        .post(app.url(&format!("/v1/platform/tenants/{}/suspend", t.tenant_id)))
        .bearer_auth(OPERATOR_TOKEN)
        .json(&json!({"reason": "drill"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let again = post(&app, &t.key, Some("before-suspension"), BODY).await;
    assert_eq!(again.status(), 202);
    assert_eq!(
        again
            .headers()
            .get("idempotent-replayed")
            .map(|v| v.as_bytes()),
        Some(&b"true"[..])
    );
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["id"], first["id"]);
    let other = BODY.replace("A-1", "A-2");
    assert_eq!(
        post(&app, &t.key, Some("before-suspension"), &other)
            .await
            .status(),
        409
    );
    let fresh = post(&app, &t.key, Some("after-suspension"), BODY).await;
    assert_eq!(fresh.status(), 403);
    let body: Value = fresh.json().await.unwrap();
    assert_eq!(body["error"]["code"], "tenant_suspended", "{body}");
}

async fn a_replay_answers_the_first_response_after_its_template_was_paused(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let send_at = (chrono::Utc::now() + chrono::Duration::minutes(30))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let body = format!(
        r#"{{"to":"+60123458002","send_at":"{send_at}","template":{{"name":"promo_sale","language":"en_US","components":[{{"type":"body","parameters":[{{"type":"text","text":"RAYA"}}]}}]}}}}"#
    );
    let first = post(&app, &t.key, Some("promo-later"), &body).await;
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();
    assert_eq!(first["status"], "scheduled", "{first}");
    app.sandbox_template(
        "1000001",
        "promo_sale",
        "en_US",
        json!({"status": "paused"}),
    )
    .await;
    // Without the key the template is refused now; with it, the first answer stands.
    assert_eq!(post(&app, &t.key, None, &body).await.status(), 422);
    let again = post(&app, &t.key, Some("promo-later"), &body).await;
    assert_eq!(again.status(), 202);
    let again: Value = again.json().await.unwrap();
    assert_eq!(again, first, "the first response again");
    assert_eq!(app.credits(&t.key).await, 4, "debited once");
}

async fn twenty_concurrent_posts_with_one_key_make_one_message_and_one_debit(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(50).await;
    let posts = (0..20).map(|_| post(&app, &t.key, Some("burst-1"), BODY));
    let responses = futures::future::join_all(posts).await;
    let mut ids = Vec::new();
    for res in responses {
        assert_eq!(res.status(), 202);
        let body: Value = res.json().await.unwrap();
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "every answer names the one message: {ids:?}");
    assert_eq!(app.credits(&t.key).await, 49, "one debit");
    assert_eq!(messages(&app, &t.key).await.len(), 1, "one message");
}

/// Replays while the first job is still on its way queue nothing more: a second job would
/// claim the message as soon as a failed attempt released it for its backoff, sending again
/// at once (burning the attempts against a number Meta asked to wait).
async fn concurrent_replays_queue_no_second_job_that_would_skip_the_backoff(b: Backend) {
    let mut cfg = kirim_tests::local_config(b).await;
    cfg.settings.dispatch_backoff = std::time::Duration::from_secs(60);
    let app = kirim_tests::spawn_with(cfg).await;
    let t = app.onboard(50).await;
    // 0004: Meta's 131000 (transient) on every try.
    let body = BODY.replace("+60123458001", "+60123450004");
    let posts = (0..10).map(|_| post(&app, &t.key, Some("burst-transient"), &body));
    for res in futures::future::join_all(posts).await {
        assert_eq!(res.status(), 202);
    }
    // A deadline, not a speed assertion: the first try goes through the queue pollers.
    let deadline = std::time::Instant::now() + kirim_tests::SETTLE_DEADLINE;
    while app.sandbox_requests_to("60123450004").is_empty() && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // The sandbox records the try before it answers; the dispatcher gives the message back
    // (`accepted`, for its backoff) only after the answer: waited for, not assumed.
    while messages(&app, &t.key)
        .await
        .first()
        .map(|m| m["status"].clone())
        != Some(json!("accepted"))
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // Time for any second job to be picked up and claim the released message.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(
        app.sandbox_requests_to("60123450004").len(),
        1,
        "one attempt, then the 60 s backoff"
    );
    let list = messages(&app, &t.key).await;
    assert_eq!(list.len(), 1);
    assert_eq!(
        list[0]["status"], "accepted",
        "waiting for its retry: {}",
        list[0]
    );
}

async fn top_up(app: &TestApp, tenant: &str, idem: Option<&str>, body: Value) -> reqwest::Response {
    let mut req = app
        .http
        .post(app.url(&format!("/v1/platform/tenants/{tenant}/credits")))
        .bearer_auth(OPERATOR_TOKEN)
        .json(&body);
    if let Some(k) = idem {
        req = req.header("Idempotency-Key", k);
    }
    req.send().await.unwrap()
}

async fn a_retried_top_up_with_its_key_credits_once(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(3).await;
    let body = json!({"amount": 500, "reference": "INV-2026-0042"});
    let first = top_up(&app, &t.tenant_id, Some("INV-2026-0042"), body.clone()).await;
    assert_eq!(first.status(), 201);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: Value = first.json().await.unwrap();
    assert_eq!(first["balance"], 503);
    // The retry after a timeout, with the body's keys in another order: no second credit.
    let again = top_up(
        &app,
        &t.tenant_id,
        Some("INV-2026-0042"),
        json!({"reference": "INV-2026-0042", "amount": 500}),
    )
    .await;
    assert_eq!(again.status(), 201);
    assert_eq!(
        again
            .headers()
            .get("idempotent-replayed")
            .map(|v| v.as_bytes()),
        Some(&b"true"[..])
    );
    let again: Value = again.json().await.unwrap();
    assert_eq!(again, first);
    assert_eq!(app.credits(&t.key).await, 503);
    // The same key with another amount: 409, nothing credited.
    let res = top_up(
        &app,
        &t.tenant_id,
        Some("INV-2026-0042"),
        json!({"amount": 5000, "reference": "INV-2026-0042"}),
    )
    .await;
    assert_eq!(res.status(), 409);
    let err: Value = res.json().await.unwrap();
    assert_eq!(err["error"]["code"], "idempotency_key_reused");
    assert_eq!(app.credits(&t.key).await, 503);
    // A replay answers the balance as it is now (a send debited one meanwhile).
    assert_eq!(post(&app, &t.key, None, BODY).await.status(), 202);
    let later: Value = top_up(&app, &t.tenant_id, Some("INV-2026-0042"), body.clone())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(later["balance"], 502);
    // Another tenant's top-up may use the same key; without a key each request credits.
    let other = app.onboard(0).await;
    let res = top_up(&app, &other.tenant_id, Some("INV-2026-0042"), body.clone()).await;
    assert_eq!(res.status(), 201);
    for _ in 0..2 {
        assert_eq!(
            top_up(&app, &t.tenant_id, None, body.clone())
                .await
                .status(),
            201
        );
    }
    assert_eq!(app.credits(&t.key).await, 1502);
}

async fn a_refused_top_up_keeps_no_key(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(0).await;
    for bad in ["", "tab\there"] {
        let res = top_up(
            &app,
            &t.tenant_id,
            Some(bad),
            json!({"amount": 5, "reference": "x"}),
        )
        .await;
        assert_eq!(res.status(), 400, "{bad:?}");
    }
    // A bad amount with a key: 400, and the key stays free for the corrected request.
    let res = top_up(
        &app,
        &t.tenant_id,
        Some("INV-9"),
        json!({"amount": 0, "reference": "INV-9"}),
    )
    .await;
    assert_eq!(res.status(), 400);
    let res = top_up(
        &app,
        &t.tenant_id,
        Some("INV-9"),
        json!({"amount": 9, "reference": "INV-9"}),
    )
    .await;
    assert_eq!(res.status(), 201);
    assert!(res.headers().get("idempotent-replayed").is_none());
    assert_eq!(app.credits(&t.key).await, 9);
    // An unknown tenant with a key: 404, and nothing kept. A kept key would answer its
    // replay once a tenant of that id existed, so one is made (through the store: the API
    // mints its own ids), and the same top-up then credits it, not replayed.
    let nobody = kirim::domain::TenantId::generate();
    for _ in 0..2 {
        let res = top_up(
            &app,
            nobody.as_str(),
            Some("INV-10"),
            json!({"amount": 9, "reference": "INV-10"}),
        )
        .await;
        assert_eq!(res.status(), 404);
    }
    let mut made = crate::contract::tenant(0);
    made.id = nobody.clone();
    app.app
        .deps
        .tenants
        .create_tenant(&made, &crate::contract::key_for(&made), None)
        .await
        .unwrap();
    let res = top_up(
        &app,
        nobody.as_str(),
        Some("INV-10"),
        json!({"amount": 9, "reference": "INV-10"}),
    )
    .await;
    assert_eq!(res.status(), 201);
    assert!(
        res.headers().get("idempotent-replayed").is_none(),
        "a key was kept"
    );
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["balance"], 9, "{body}");
}

async fn post_broadcast(
    app: &TestApp,
    key: &str,
    idem: Option<&str>,
    body: Value,
) -> reqwest::Response {
    let mut req = app
        .http
        .post(app.url("/v1/broadcasts"))
        .bearer_auth(key)
        .json(&body);
    if let Some(k) = idem {
        req = req.header("Idempotency-Key", k);
    }
    req.send().await.unwrap()
}

fn campaign(recipients: &[&str]) -> Value {
    json!({"name": "Raya", "recipients": recipients, "template": {"name": "promo_sale",
        "language": "en_US", "category": "marketing",
        "components": [{"type": "body", "parameters": [{"type": "text", "text": "RAYA-30"}]}]}})
}

async fn a_double_submitted_broadcast_with_its_key_is_one_broadcast_and_one_debit(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(50).await;
    let body = campaign(&["+60123456101", "+60123456102", "not-a-number"]);
    // A double click: both at once.
    let (first, second) = tokio::join!(
        post_broadcast(&app, &t.key, Some("form-7"), body.clone()),
        post_broadcast(&app, &t.key, Some("form-7"), body.clone()),
    );
    assert_eq!(
        (first.status().as_u16(), second.status().as_u16()),
        (202, 202)
    );
    let replays = [&first, &second]
        .iter()
        .filter(|r| r.headers().get("idempotent-replayed").is_some())
        .count();
    assert_eq!(replays, 1, "one of them is the replay");
    let (first, second): (Value, Value) =
        (first.json().await.unwrap(), second.json().await.unwrap());
    assert_eq!(first["id"], second["id"], "one broadcast");
    assert_eq!(first["accepted"], 2);
    assert_eq!(second["invalid_count"], 1);
    let after_one = app.credits(&t.key).await;
    // Later, the same key and body: the same answer, no debit.
    let again = post_broadcast(&app, &t.key, Some("form-7"), body.clone()).await;
    assert_eq!(again.status(), 202);
    assert!(again.headers().get("idempotent-replayed").is_some());
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["id"], first["id"]);
    assert_eq!(app.credits(&t.key).await, after_one);
    // The same key with other recipients: 409; without a key: a second broadcast.
    let other = post_broadcast(&app, &t.key, Some("form-7"), campaign(&["+60123456103"])).await;
    assert_eq!(other.status(), 409);
    let err: Value = other.json().await.unwrap();
    assert_eq!(err["error"]["code"], "idempotency_key_reused");
    let unkeyed: Value = post_broadcast(&app, &t.key, None, body.clone())
        .await
        .json()
        .await
        .unwrap();
    assert_ne!(unkeyed["id"], first["id"]);
    let list: Value = app
        .http
        .get(app.url("/v1/broadcasts"))
        .bearer_auth(&t.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        list["broadcasts"].as_array().map(Vec::len),
        Some(2),
        "{list}"
    );
}

/// A keyed request that lost its key to an earlier one (a replay, a concurrent retry)
/// queued its job before its write was refused: that job finds no message while the key
/// names another, and is dropped at its first look instead of coming back about ten times
/// over two minutes on the queue every tenant shares. A keyed job whose message is simply
/// not written yet still waits for it.
#[tokio::test]
async fn a_replays_own_job_is_dropped_at_its_first_look() {
    use kirim::service::jobs::{Outcome, QueueJob};
    use kirim::service::{dispatch, idempotency::Idempotent, send};
    let clock = kirim_tests::ManualClock::new();
    let deps = kirim::wiring::memory_deps(kirim_tests::test_settings(), clock.clone()).unwrap();
    let (tenant, _) = super::broadcasts::promo_tenant(&deps, "131", 10).await;
    let body = json!({"to": "+60123450781", "template": {"name": "promo", "language": "en"}});
    let req = || serde_json::from_value::<send::SendRequest>(body.clone()).unwrap();
    let key = kirim::domain::IdempotencyKey::parse("replayed-once").unwrap();
    let idem = Idempotent {
        fingerprint: key.fingerprint(&body),
        key,
    };
    let Ok(send::Accepted::New(first)) =
        send::send_once(&deps, &tenant.id, req(), Some(&idem)).await
    else {
        panic!("accepted")
    };
    let Ok(send::Accepted::Replayed(again, _)) =
        send::send_once(&deps, &tenant.id, req(), Some(&idem)).await
    else {
        panic!("replayed")
    };
    assert_eq!(again, first.id);
    let mut theirs = Vec::new();
    loop {
        let got = deps
            .queue
            .receive(10, std::time::Duration::from_millis(200))
            .await
            .unwrap();
        if got.is_empty() {
            break;
        }
        for m in got {
            if let Some(QueueJob::Send(job)) = QueueJob::parse(&m.body) {
                if job.message_id != first.id {
                    theirs.push((job, m.body));
                }
            }
        }
    }
    assert_eq!(
        theirs.len(),
        1,
        "the replay queued its own job before its write"
    );
    let (job, body) = &theirs[0];
    assert_eq!(job.key_hash.as_deref(), Some(idem.key.hash().as_str()));
    assert_eq!(dispatch::handle_in_batch(&deps, body).await, Outcome::Done);
    // Its key naming nothing yet (the write not landed): it waits, as any job.
    let mut waiting = job.clone();
    waiting.key_hash = Some(
        kirim::domain::IdempotencyKey::parse("not-written-yet")
            .unwrap()
            .hash(),
    );
    let waiting = QueueJob::Send(waiting).to_body().unwrap();
    assert_ne!(
        dispatch::handle_in_batch(&deps, &waiting).await,
        Outcome::Done
    );
}

on_both_backends!(
    concurrent_replays_queue_no_second_job_that_would_skip_the_backoff,
    a_replay_answers_the_first_response_after_the_tenant_was_suspended,
    a_replay_answers_the_first_response_after_its_template_was_paused,
    an_idempotent_retry_answers_the_same_id_and_debits_once,
    the_same_key_with_another_body_is_409_idempotency_key_reused,
    bad_idempotency_keys_are_400_and_change_nothing,
    a_refused_request_stores_nothing_so_the_retry_after_a_top_up_goes_through,
    twenty_concurrent_posts_with_one_key_make_one_message_and_one_debit,
    a_replay_answers_the_first_response_after_the_credits_ran_out,
    a_retried_top_up_with_its_key_credits_once,
    a_refused_top_up_keeps_no_key,
    a_double_submitted_broadcast_with_its_key_is_one_broadcast_and_one_debit,
);
