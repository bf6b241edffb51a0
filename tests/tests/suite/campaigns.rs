//! Campaigns and scheduled sends on both backends, with a manual clock: a scheduled
//! broadcast or message waits until its `send_at` and not after, a cancel refunds it
//! exactly, and bad `send_at` values, wrong-state moves and other tenants' ids are
//! refused.

use std::sync::Arc;
use std::time::Duration;

use kirim::config::Backend;
use kirim_infra::local::LocalClock;
use kirim_tests::{local_config, template_of, ManualClock, TestApp};
use reqwest::Method;
use serde_json::{json, Value};

async fn app_with_clock(b: Backend) -> (TestApp, Arc<ManualClock>) {
    let clock = ManualClock::new();
    let mut cfg = local_config(b).await;
    cfg.clock = LocalClock(clock.clone());
    (kirim_tests::spawn_with(cfg).await, clock)
}

async fn call(
    app: &TestApp,
    key: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = app.http.request(method, app.url(path)).bearer_auth(key);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.expect("request");
    (
        res.status().as_u16(),
        res.json().await.unwrap_or(Value::Null),
    )
}

/// `minutes` from the app's (manual) clock, as RFC 3339 with an offset.
fn in_minutes(clock: &ManualClock, minutes: i64) -> String {
    use kirim::ports::Clock;
    (clock.now() + chrono::Duration::minutes(minutes)).to_rfc3339()
}

/// Lets the queue poller run several hops of every waiting job (each hop is 200 ms in
/// tests), so a job that would wrongly start early has had every chance to.
async fn let_hops_pass() {
    tokio::time::sleep(Duration::from_millis(1500)).await;
}

fn sandbox_count(app: &TestApp, recipients: &[&str]) -> usize {
    recipients
        .iter()
        .map(|r| app.sandbox_requests_to(r.trim_start_matches('+')).len())
        .sum()
}

async fn broadcast_view(app: &TestApp, key: &str, id: &str) -> Value {
    call(app, key, Method::GET, &format!("/v1/broadcasts/{id}"), None)
        .await
        .1
}

async fn a_scheduled_broadcast_starts_after_its_send_at_and_not_before(b: Backend) {
    let (app, clock) = app_with_clock(b).await;
    let t = app.onboard(10).await;
    let to = ["+60123459101", "+60123459102", "+60123459103"];
    let (status, body) = call(
        &app,
        &t.key,
        Method::POST,
        "/v1/broadcasts",
        Some(
            json!({"name": "Year-end sale", "template": template_of("marketing"),
                    "recipients": to, "send_at": in_minutes(&clock, 2)}),
        ),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "scheduled");
    assert_eq!(body["accepted"], 3);
    assert_eq!(app.credits(&t.key).await, 7, "debited when accepted");
    let id = body["id"].as_str().unwrap_or_default().to_owned();

    let_hops_pass().await;
    let view = broadcast_view(&app, &t.key, &id).await;
    assert_eq!(view["status"], "scheduled", "{view}");
    assert_eq!(view["name"], "Year-end sale");
    assert_eq!(view["from"], t.phone_number_id.as_str());
    assert_eq!(view["total"], 3);
    assert!(view["started_at"].is_null(), "{view}");
    assert_eq!(
        sandbox_count(&app, &to),
        0,
        "nothing reaches Meta before send_at"
    );

    clock.advance(chrono::Duration::minutes(2));
    let mut view = Value::Null;
    for _ in 0..150 {
        view = broadcast_view(&app, &t.key, &id).await;
        if view["counts"]["read"] == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(view["counts"]["read"], 3, "{view}");
    assert_eq!(view["status"], "completed", "{view}");
    assert!(view["started_at"].is_string(), "{view}");
    assert_eq!(
        view["counts"]["cancelled"], 0,
        "every status is counted: {view}"
    );
    assert_eq!(
        sandbox_count(&app, &to),
        3,
        "each recipient sent exactly once"
    );
    assert_eq!(app.credits(&t.key).await, 7);
}

async fn cancelling_a_scheduled_broadcast_refunds_it_exactly_and_sends_nothing(b: Backend) {
    let (app, clock) = app_with_clock(b).await;
    let t = app.onboard(10).await;
    let other = app.onboard(10).await;
    let to = [
        "+60123459201",
        "+60123459202",
        "+60123459203",
        "+60123459204",
    ];
    let (status, body) = call(
        &app,
        &t.key,
        Method::POST,
        "/v1/broadcasts",
        Some(json!({"template": template_of("utility"), "recipients": to,
                    "send_at": in_minutes(&clock, 10)})),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(app.credits(&t.key).await, 6);
    let id = body["id"].as_str().unwrap_or_default().to_owned();
    let path = format!("/v1/broadcasts/{id}/cancel");

    let (status, _) = call(&app, &other.key, Method::POST, &path, None).await;
    assert_eq!(status, 404, "another tenant's broadcast is not found");

    let (status, view) = call(&app, &t.key, Method::POST, &path, None).await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["status"], "cancelled", "{view}");
    assert!(view["completed_at"].is_string(), "{view}");
    assert_eq!(app.credits(&t.key).await, 10, "refunded exactly");

    let (status, body) = call(&app, &t.key, Method::POST, &path, None).await;
    assert_eq!(status, 409, "a second cancel does not apply: {body}");
    assert_eq!(body["error"]["code"], "conflict");
    assert_eq!(app.credits(&t.key).await, 10, "never refunded twice");

    clock.advance(chrono::Duration::minutes(11));
    let_hops_pass().await;
    assert_eq!(
        sandbox_count(&app, &to),
        0,
        "a cancelled broadcast never starts"
    );
    let view = broadcast_view(&app, &t.key, &id).await;
    assert_eq!(view["status"], "cancelled", "{view}");
    assert_eq!(view["counts"]["accepted"], 0, "{view}");
}

async fn a_scheduled_message_waits_then_is_sent_once(b: Backend) {
    let (app, clock) = app_with_clock(b).await;
    let t = app.onboard(5).await;
    let (status, body) = call(
        &app,
        &t.key,
        Method::POST,
        "/v1/messages",
        Some(
            json!({"to": "+60123459301", "template": template_of("utility"),
                    "send_at": in_minutes(&clock, 5)}),
        ),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "scheduled");
    assert_eq!(app.credits(&t.key).await, 4);
    let id = body["id"].as_str().unwrap_or_default().to_owned();
    let_hops_pass().await;
    assert_eq!(app.message(&t.key, &id).await["status"], "scheduled");
    assert_eq!(app.sandbox_requests_to("60123459301").len(), 0);

    clock.advance(chrono::Duration::minutes(5));
    let m = app.wait_status(&t.key, &id, "read").await;
    assert_eq!(m["status"], "read", "{m}");
    let events: Vec<&str> = m["events"]
        .as_array()
        .map(|e| e.iter().filter_map(|e| e["status"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(&events[..3], ["scheduled", "accepted", "sending"], "{m}");
    assert_eq!(app.sandbox_requests_to("60123459301").len(), 1);
    assert_eq!(app.credits(&t.key).await, 4);
}

async fn a_scheduled_message_is_cancelled_and_refunded_once(b: Backend) {
    let (app, clock) = app_with_clock(b).await;
    let t = app.onboard(5).await;
    let other = app.onboard(5).await;
    let (_, body) = call(
        &app,
        &t.key,
        Method::POST,
        "/v1/messages",
        Some(
            json!({"to": "+60123459401", "template": template_of("utility"),
                    "send_at": in_minutes(&clock, 3)}),
        ),
    )
    .await;
    let id = body["id"].as_str().unwrap_or_default().to_owned();
    let path = format!("/v1/messages/{id}");
    assert_eq!(app.credits(&t.key).await, 4);

    let (status, _) = call(&app, &other.key, Method::DELETE, &path, None).await;
    assert_eq!(status, 404, "another tenant's message is not found");

    let (status, m) = call(&app, &t.key, Method::DELETE, &path, None).await;
    assert_eq!(status, 200, "{m}");
    assert_eq!(m["status"], "cancelled");
    assert_eq!(m["error"]["code"], "cancelled");
    assert!(
        m["error"]["hint"]
            .as_str()
            .is_some_and(|h| h.contains("refunded")),
        "{m}"
    );
    assert_eq!(app.credits(&t.key).await, 5, "refunded exactly");

    let (status, body) = call(&app, &t.key, Method::DELETE, &path, None).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(app.credits(&t.key).await, 5, "never refunded twice");

    clock.advance(chrono::Duration::minutes(4));
    let_hops_pass().await;
    assert_eq!(app.message(&t.key, &id).await["status"], "cancelled");
    assert_eq!(
        app.sandbox_requests_to("60123459401").len(),
        0,
        "never sent"
    );
}

async fn bad_send_at_values_and_moves_that_do_not_apply_are_refused(b: Backend) {
    let (app, clock) = app_with_clock(b).await;
    let t = app.onboard(5).await;
    let past = in_minutes(&clock, -5);
    let soon = in_minutes(&clock, 0);
    let too_far = in_minutes(&clock, 36 * 24 * 60);
    let no_offset = in_minutes(&clock, 10)[..19].to_owned();
    for send_at in [past, soon, too_far, no_offset, "next tuesday".to_owned()] {
        let (status, body) = call(
            &app,
            &t.key,
            Method::POST,
            "/v1/messages",
            Some(
                json!({"to": "+60123459501", "template": template_of("utility"),
                        "send_at": send_at}),
            ),
        )
        .await;
        assert_eq!(status, 400, "{send_at}: {body}");
        assert_eq!(body["error"]["code"], "invalid_request");
        let (status, body) = call(
            &app,
            &t.key,
            Method::POST,
            "/v1/broadcasts",
            Some(
                json!({"template": template_of("utility"), "recipients": ["+60123459501"],
                        "send_at": send_at}),
            ),
        )
        .await;
        assert_eq!(status, 400, "{send_at}: {body}");
        assert_eq!(body["error"]["code"], "invalid_request");
    }
    assert_eq!(
        app.credits(&t.key).await,
        5,
        "nothing debited for a refused request"
    );

    // A message sent at once is not scheduled: it cannot be cancelled.
    let id = app.send_ok(&t.key, "+60123459502").await;
    let (status, body) = call(
        &app,
        &t.key,
        Method::DELETE,
        &format!("/v1/messages/{id}"),
        None,
    )
    .await;
    assert_eq!(status, 409, "{body}");
}

on_both_backends!(
    a_scheduled_broadcast_starts_after_its_send_at_and_not_before,
    cancelling_a_scheduled_broadcast_refunds_it_exactly_and_sends_nothing,
    a_scheduled_message_waits_then_is_sent_once,
    a_scheduled_message_is_cancelled_and_refunded_once,
    bad_send_at_values_and_moves_that_do_not_apply_are_refused,
);
