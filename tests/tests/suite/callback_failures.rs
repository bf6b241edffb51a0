//! A tenant's own record of its status callbacks given up (README "Status callbacks"):
//! written where `CallbacksGivenUp` is counted, once per callback, listed by
//! `GET /v1/settings/status-callback/failures` (admin) and on the console's settings page,
//! on both backends.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::http::StatusCode;
use kirim::config::Backend;
use kirim::domain::{MessageId, MessageStatus, TenantId};
use kirim::service::callbacks;
use kirim::service::jobs::{CallbackJob, Outcome, QueueJob};
use kirim_tests::{spawn_app, Onboarded, TestApp};
use serde_json::{json, Value};

use super::access::{call, code, new_key};
use super::callbacks::{set_callback, CALLBACK_SECRET};

const FAILURES: &str = "/v1/settings/status-callback/failures";

/// A receiver on a loopback port answering every request `answer`, set as `t`'s callback
/// under a URL whose path and query carry tokens (which no record may keep); how many
/// requests it got.
pub(crate) async fn receiver_answering(
    app: &TestApp,
    t: &Onboarded,
    answer: StatusCode,
) -> Arc<AtomicUsize> {
    let requests = Arc::new(AtomicUsize::new(0));
    let seen = requests.clone();
    let receiver = axum::Router::new().fallback(move || {
        seen.fetch_add(1, Ordering::SeqCst);
        async move { answer }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/hook/path-token-7f3a?token=query-token-9c1e",
        listener.local_addr().unwrap()
    );
    tokio::spawn(async move { axum::serve(listener, receiver).await });
    let (status, body) =
        set_callback(app, &t.key, json!({"url": url, "secret": CALLBACK_SECRET})).await;
    assert_eq!(status, 200, "{body}");
    requests
}

/// The app's dependencies with `attempts` delivery attempts per callback.
fn with_attempts(app: &TestApp, attempts: u32) -> kirim::service::Deps {
    let mut deps = app.app.deps.clone();
    let mut settings = (*deps.settings).clone();
    settings.callback_max_attempts = attempts;
    deps.settings = Arc::new(settings);
    deps
}

/// A queued callback job of `t`'s for `message`, as its body.
fn job(t: &Onboarded, message: &MessageId, status: MessageStatus, sequence: u32) -> String {
    QueueJob::StatusCallback(CallbackJob {
        tenant_id: TenantId::from_trusted(t.tenant_id.clone()),
        message_id: message.clone(),
        status,
        at: chrono::Utc::now(),
        sequence,
        error: None,
        client_reference: Some("order-42".into()),
    })
    .to_body()
    .unwrap()
}

async fn failures(app: &TestApp, key: &str, query: &str) -> (u16, Value) {
    call(app, "GET", &format!("{FAILURES}{query}"), Some(key), None).await
}

/// Gives one callback up at its only attempt (`KIRIM_CALLBACK_MAX_ATTEMPTS` 1).
pub(crate) async fn give_up_one(app: &TestApp, t: &Onboarded) -> MessageId {
    let message = MessageId::generate();
    let outcome = callbacks::handle_batch(
        &with_attempts(app, 1),
        &[(job(t, &message, MessageStatus::Sent, 1), 1)],
    )
    .await;
    assert_eq!(outcome, [Outcome::Poison], "given up");
    message
}

/// A receiver that always answers 500: each callback given up leaves exactly one record
/// (not one per copy, nor one per later receive), newest first, with the status, sequence,
/// attempts, the last failure's class — `http_500`, or `breaker_open` for the one the
/// receiver's breaker parked untried — and the URL's host only.
async fn each_callback_given_up_leaves_one_record_newest_first_with_its_host_only(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(1).await;
    let tries = receiver_answering(&app, &t, StatusCode::INTERNAL_SERVER_ERROR).await;
    let deps = with_attempts(&app, 2);
    let sent = MessageId::generate();
    let delivered = MessageId::generate();
    let first = job(&t, &sent, MessageStatus::Sent, 1);
    let second = job(&t, &delivered, MessageStatus::Delivered, 3);

    let outcome = callbacks::handle_batch(&deps, &[(first.clone(), 1)]).await;
    assert!(
        matches!(outcome[..], [Outcome::RetryAfter(_)]),
        "{outcome:?}"
    );
    let (_, none) = failures(&app, &t.key, "").await;
    assert_eq!(none["data"], json!([]), "a retry is no failure yet");
    // Its last attempt fails: given up; the queue's later receives of it add nothing.
    let outcome = callbacks::handle_batch(&deps, &[(first.clone(), 2)]).await;
    assert_eq!(outcome, [Outcome::Poison]);
    let outcome = callbacks::handle_batch(&deps, &[(first, 3)]).await;
    assert_eq!(outcome, [Outcome::Poison]);
    // The third failure in a row opens the receiver's breaker ...
    let outcome = callbacks::handle_batch(&deps, &[(second.clone(), 1)]).await;
    assert!(
        matches!(outcome[..], [Outcome::RetryAfter(_)]),
        "{outcome:?}"
    );
    assert_eq!(tries.load(Ordering::SeqCst), 3);
    // ... so its last attempt is parked untried, two copies of it at once: one record.
    let outcome = callbacks::handle_batch(&deps, &[(second.clone(), 2), (second, 2)]).await;
    assert_eq!(outcome, [Outcome::Poison, Outcome::Poison]);
    assert_eq!(tries.load(Ordering::SeqCst), 3, "not tried");

    let (status, body) = failures(&app, &t.key, "").await;
    assert_eq!(status, 200, "{body}");
    let data = body["data"].as_array().cloned().unwrap_or_default();
    assert_eq!(data.len(), 2, "one per callback given up: {body}");
    assert_eq!(body["next_cursor"], Value::Null);
    let want = [
        (&delivered, "delivered", 3, "breaker_open"),
        (&sent, "sent", 1, "http_500"),
    ];
    for (got, (id, status, sequence, error)) in data.iter().zip(want) {
        assert_eq!(got["message_id"], id.to_string(), "newest first: {body}");
        assert_eq!(got["status"], status);
        assert_eq!(got["sequence"], sequence);
        assert_eq!(got["attempts"], 2);
        assert_eq!(got["last_error"], error);
        assert_eq!(got["host"], "127.0.0.1");
        assert!(got["given_up_at"].as_str().is_some_and(|s| s.contains('T')));
        let mut keys: Vec<&str> = got
            .as_object()
            .map(|o| o.keys().map(String::as_str).collect())
            .unwrap_or_default();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "attempts",
                "given_up_at",
                "host",
                "last_error",
                "message_id",
                "sequence",
                "status"
            ]
        );
    }
    let text = body.to_string();
    for secret in ["path-token", "query-token", "order-42", CALLBACK_SECRET] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
}

/// A callback the receiver accepts on a retry was never given up: no record.
async fn a_callback_delivered_on_a_retry_leaves_no_record(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(1).await;
    let (url, r) = super::callbacks::receiver(1).await;
    let (status, body) =
        set_callback(&app, &t.key, json!({"url": url, "secret": CALLBACK_SECRET})).await;
    assert_eq!(status, 200, "{body}");
    let deps = with_attempts(&app, 2);
    let message = MessageId::generate();
    let body = job(&t, &message, MessageStatus::Read, 4);
    let outcome = callbacks::handle_batch(&deps, &[(body.clone(), 1)]).await;
    assert!(
        matches!(outcome[..], [Outcome::RetryAfter(_)]),
        "{outcome:?}"
    );
    let outcome = callbacks::handle_batch(&deps, &[(body, 2)]).await;
    assert_eq!(outcome, [Outcome::Done], "delivered at its last attempt");
    assert_eq!(r.wait_for(&["read"]).await.len(), 1);
    let (status, body) = failures(&app, &t.key, "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"data": [], "next_cursor": null}));
}

/// One tenant's callbacks given up are its own: another tenant lists none of them, and a
/// cursor of the one is refused to the other.
async fn a_tenant_never_sees_another_tenants_callbacks_given_up(b: Backend) {
    let app = spawn_app(b).await;
    let a = app.onboard(1).await;
    let other = app.onboard(1).await;
    receiver_answering(&app, &a, StatusCode::SERVICE_UNAVAILABLE).await;
    receiver_answering(&app, &other, StatusCode::OK).await;
    let mine = give_up_one(&app, &a).await;
    give_up_one(&app, &a).await;
    let (_, body) = failures(&app, &a.key, "?limit=1").await;
    assert_eq!(body["data"].as_array().map(Vec::len), Some(1), "{body}");
    let cursor = body["next_cursor"].as_str().unwrap_or_default().to_owned();
    assert!(!cursor.is_empty(), "{body}");
    let (status, theirs) = failures(&app, &other.key, "").await;
    assert_eq!(status, 200, "{theirs}");
    assert_eq!(theirs["data"], json!([]), "none of the other tenant's");
    assert!(!theirs.to_string().contains(&mine.to_string()));
    let (status, refused) = failures(&app, &other.key, &format!("?cursor={cursor}")).await;
    assert_eq!(status, 400, "{refused}");
}

/// The list is an admin's, as the other status-callback settings: operator and read-only
/// keys are refused `403`; it pages with `limit` and `cursor` as the API keys do, and
/// refuses a bad limit, a made-up cursor or another parameter `400`.
async fn the_failures_list_is_an_admins_and_pages_with_limit_and_cursor(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(1).await;
    receiver_answering(&app, &t, StatusCode::BAD_GATEWAY).await;
    let older = give_up_one(&app, &t).await;
    let newer = give_up_one(&app, &t).await;
    for role in ["operator", "read_only"] {
        let (_, key) = new_key(&app, &t.key, role).await;
        let (status, body) = failures(&app, &key, "").await;
        assert_eq!(status, 403, "{role}: {body}");
        assert_eq!(code(&body), "forbidden", "{role}: {body}");
    }
    let (status, first) = failures(&app, &t.key, "?limit=1").await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["data"][0]["message_id"], newer.to_string());
    assert_eq!(first["data"][0]["last_error"], "http_502");
    let cursor = first["next_cursor"].as_str().unwrap_or_default();
    assert!(!cursor.is_empty(), "{first}");
    let (status, second) = failures(&app, &t.key, &format!("?limit=1&cursor={cursor}")).await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(second["data"].as_array().map(Vec::len), Some(1));
    assert_eq!(second["data"][0]["message_id"], older.to_string());
    assert_eq!(second["next_cursor"], Value::Null, "the last page");
    for bad in ["?limit=0", "?limit=101", "?cursor=not-a-cursor", "?since=x"] {
        let (status, body) = failures(&app, &t.key, bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(code(&body), "invalid_request", "{bad}: {body}");
    }
}

/// The console's settings page shows an admin the latest callbacks given up: the message,
/// its status, the last error and the host, never the URL's path or query.
async fn the_console_settings_page_shows_the_callbacks_given_up(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(1).await;
    receiver_answering(&app, &t, StatusCode::INTERNAL_SERVER_ERROR).await;
    let (email, _) = super::users::new_user(&app, &t.key, "admin").await;
    let mut web = super::console::sign_in(&app, &email).await;
    let page = web.get("/console/settings").await;
    assert_eq!(page.status, 200, "{}", page.html);
    assert!(
        page.html.contains("None in the last 14 days."),
        "{}",
        page.html
    );
    let message = give_up_one(&app, &t).await;
    let page = web.get("/console/settings").await;
    assert_eq!(page.status, 200, "{}", page.html);
    let list = page
        .html
        .split(r#"id="callback-failures-list""#)
        .nth(1)
        .and_then(|rest| rest.split("</table>").next())
        .unwrap_or_else(|| panic!("no list of callbacks given up: {}", page.html));
    assert!(list.contains(&message.to_string()), "{list}");
    assert!(list.contains("http_500"), "{list}");
    assert!(list.contains("127.0.0.1"), "{list}");
    assert!(list.contains(r#"data-label="Status">sent<"#), "{list}");
    assert!(!list.contains("None in the last 14 days."), "{list}");
    assert!(!list.contains("path-token") && !list.contains("query-token"));
}

on_both_backends!(
    each_callback_given_up_leaves_one_record_newest_first_with_its_host_only,
    a_callback_delivered_on_a_retry_leaves_no_record,
    a_tenant_never_sees_another_tenants_callbacks_given_up,
    the_failures_list_is_an_admins_and_pages_with_limit_and_cursor,
    the_console_settings_page_shows_the_callbacks_given_up,
);
