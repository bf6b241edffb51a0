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
    // Its recipients are queued (and may be sent and read) before its fan-out's last write
    // closes it: the counts may show all three read a moment before it is `completed`.
    let view = view_once(&app, &t.key, &id, |v| {
        v["counts"]["read"] == 3 && v["status"] == "completed"
    })
    .await;
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
    // Its counts add up to its total: every recipient refunded unsent, none recorded.
    assert_eq!(
        (view["total"].clone(), view["counts"]["cancelled"].clone()),
        (json!(4), json!(4)),
        "{view}"
    );
    assert_eq!(app.credits(&t.key).await, 10, "refunded exactly");
    // Its export lists every recipient, each `cancelled` with no message (API.md: one row
    // per recipient; it listed none, its list deleted with the cancel).
    let csv = recipients_csv(&app, &t.key, &id).await;
    let mut rows: Vec<&str> = csv.lines().skip(1).collect();
    rows.sort_unstable();
    let expected: Vec<String> = to.iter().map(|p| format!("{p},cancelled,,,,,,")).collect();
    assert_eq!(rows, expected, "{csv}");

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
    assert_eq!(view["counts"]["cancelled"], 4, "{view}");
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

async fn app_without_pollers(b: Backend) -> TestApp {
    let cfg = kirim_infra::local::LocalConfig {
        pollers: 0,
        ..local_config(b).await
    };
    kirim_tests::spawn_with(cfg).await
}

/// Runs the queue poller (this test's only one) until `done` says so, or a deadline.
async fn poll_until(app: &TestApp, key: &str, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let mut view = Value::Null;
    for _ in 0..300 {
        kirim::queue_handlers::poll_once(&app.app.deps, Duration::from_millis(100)).await;
        view = broadcast_view(app, key, id).await;
        if done(&view) {
            break;
        }
    }
    view
}

async fn a_paused_broadcast_sends_nothing_until_it_is_resumed(b: Backend) {
    let app = app_without_pollers(b).await;
    let t = app.onboard(10).await;
    let other = app.onboard(10).await;
    let to = ["+60123459601", "+60123459602", "+60123459603"];
    let (_, body) = call(
        &app,
        &t.key,
        Method::POST,
        "/v1/broadcasts",
        Some(json!({"template": template_of("utility"), "recipients": to})),
    )
    .await;
    assert_eq!(body["status"], "sending", "{body}");
    let id = body["id"].as_str().unwrap_or_default().to_owned();
    let pause = format!("/v1/broadcasts/{id}/pause");
    let resume = format!("/v1/broadcasts/{id}/resume");

    assert_eq!(
        call(&app, &other.key, Method::POST, &pause, None).await.0,
        404
    );
    let (status, view) = call(&app, &t.key, Method::POST, &pause, None).await;
    assert_eq!(
        (status, view["status"].as_str()),
        (200, Some("paused")),
        "{view}"
    );
    let (status, body) = call(&app, &t.key, Method::POST, &pause, None).await;
    assert_eq!(
        status, 409,
        "a paused broadcast is not paused again: {body}"
    );

    // The fan-out runs and every job comes back several times: all are held.
    let view = poll_until(&app, &t.key, &id, |v| v["counts"]["accepted"] == 3).await;
    for _ in 0..10 {
        kirim::queue_handlers::poll_once(&app.app.deps, Duration::from_millis(100)).await;
    }
    assert_eq!(view["status"], "paused", "{view}");
    assert_eq!(
        sandbox_count(&app, &to),
        0,
        "no request reaches Meta while paused"
    );

    let (status, view) = call(&app, &t.key, Method::POST, &resume, None).await;
    assert_eq!(
        (status, view["status"].as_str()),
        (200, Some("sending")),
        "{view}"
    );
    assert_eq!(call(&app, &t.key, Method::POST, &resume, None).await.0, 409);
    // Completed by its fan-out's last write, which may land after its messages are read.
    let view = poll_until(&app, &t.key, &id, |v| {
        v["counts"]["read"] == 3 && v["status"] == "completed"
    })
    .await;
    assert_eq!(view["status"], "completed", "{view}");
    assert_eq!(
        sandbox_count(&app, &to),
        3,
        "each sent once after the resume"
    );
    assert_eq!(app.credits(&t.key).await, 7);
    let (status, _) = call(&app, &t.key, Method::POST, &pause, None).await;
    assert_eq!(status, 409, "a completed broadcast cannot be paused");
}

async fn a_cancel_racing_the_dispatcher_never_leaves_a_message_both_sent_and_refunded(b: Backend) {
    let app = app_without_pollers(b).await;
    let t = app.onboard(100).await;
    // Meta's lowest tier, so the cancel lands while messages are still going out.
    let res = app
        .http
        .put(app.url(&format!("/v1/platform/tenants/{}/throughput", t.tenant_id)))
        .bearer_auth(kirim_tests::OPERATOR_TOKEN)
        .json(&json!({"per_sec": 20}))
        .send()
        .await
        .expect("throughput");
    assert_eq!(res.status(), 200);
    let to: Vec<String> = (0..40)
        .map(|i| format!("+6012346{:04}", 1100 + i))
        .collect();
    let (_, body) = call(
        &app,
        &t.key,
        Method::POST,
        "/v1/broadcasts",
        Some(json!({"template": template_of("utility"), "recipients": to})),
    )
    .await;
    let id = body["id"].as_str().unwrap_or_default().to_owned();
    assert_eq!(app.credits(&t.key).await, 60);

    // Two dispatchers run while the cancel comes in.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut pollers = Vec::new();
    for _ in 0..2 {
        let (deps, stop) = (app.app.deps.clone(), stop.clone());
        pollers.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                kirim::queue_handlers::poll_once(&deps, Duration::from_millis(50)).await;
            }
        }));
    }
    for _ in 0..300 {
        if !app.app.sandbox.received().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, view) = call(
        &app,
        &t.key,
        Method::POST,
        &format!("/v1/broadcasts/{id}/cancel"),
        None,
    )
    .await;
    assert_eq!(
        (status, view["status"].as_str()),
        (200, Some("cancelled")),
        "{view}"
    );
    // Every job is handled: each message is claimed or cancelled.
    let view = poll_until(&app, &t.key, &id, |v| {
        v["counts"]["accepted"] == 0 && v["counts"]["sending"] == 0 && v["enqueued"] == 40
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for p in pollers {
        let _ = p.await;
    }
    let cancelled = view["counts"]["cancelled"].as_i64().unwrap_or(-1);
    assert!(
        cancelled > 0 && cancelled < 40,
        "the cancel raced the dispatch: {view}"
    );

    let (_, page) = call(&app, &t.key, Method::GET, "/v1/messages?limit=100", None).await;
    let messages = page["messages"].as_array().cloned().unwrap_or_default();
    assert_eq!(messages.len(), 40);
    for m in &messages {
        let digits = m["to"].as_str().unwrap_or_default().trim_start_matches('+');
        let requests = app.sandbox_requests_to(digits).len();
        if m["status"] == "cancelled" {
            assert_eq!(requests, 0, "a cancelled message never reached Meta: {m}");
        } else {
            assert_eq!(
                requests, 1,
                "a message handed over is sent exactly once: {m}"
            );
        }
    }
    // The ledger: one refund per cancelled message and the balance equals its entries.
    let tenant = kirim::domain::TenantId::parse(&t.tenant_id).expect("tenant id");
    let entries = app.app.deps.ledger.entries(&tenant).await.expect("ledger");
    let refunds = entries
        .iter()
        .filter(|e| e.kind == kirim::ports::LedgerKind::Refund)
        .count() as i64;
    assert_eq!(
        refunds, cancelled,
        "exactly one refund per cancelled message"
    );
    let sum: i64 = entries.iter().map(|e| e.amount).sum();
    let balance = app.credits(&t.key).await;
    assert_eq!(balance, sum, "the balance is the sum of the ledger");
    assert_eq!(
        balance,
        60 + cancelled,
        "refunded exactly the cancelled ones"
    );
}

async fn recipients_csv(app: &TestApp, key: &str, id: &str) -> String {
    let res = app
        .http
        .get(app.url(&format!("/v1/broadcasts/{id}/recipients.csv")))
        .bearer_auth(key)
        .send()
        .await
        .expect("csv");
    assert_eq!(res.status(), 200);
    assert!(res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/csv")));
    res.text().await.expect("csv body")
}

async fn results_show_failures_with_hints_the_csv_and_a_retry_of_only_retryable_failures(
    b: Backend,
) {
    let app = kirim_tests::spawn_app(b).await;
    let t = app.onboard(20).await;
    let other = app.onboard(5).await;
    // 0004: transient 131000 on every try; 0001: undeliverable (131026); 0007: no such
    // template (132001); the last one is delivered and read.
    let to = [
        "+60123450004",
        "+60123450001",
        "+60123450007",
        "+60123459789",
    ];
    let (status, body) = call(
        &app,
        &t.key,
        Method::POST,
        "/v1/broadcasts",
        Some(json!({"name": "Raya promo", "template": template_of("utility"), "recipients": to})),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let id = body["id"].as_str().unwrap_or_default().to_owned();
    // Completed by its fan-out's last write, which may land after its messages settled
    // (and only a completed campaign may be retried, below).
    let view = view_once(&app, &t.key, &id, |v| {
        v["counts"]["failed"] == 3 && v["counts"]["read"] == 1 && v["status"] == "completed"
    })
    .await;
    assert_eq!(view["status"], "completed", "{view}");
    let failures = view["failures"].as_array().cloned().unwrap_or_default();
    let mut codes: Vec<i64> = failures.iter().filter_map(|f| f["code"].as_i64()).collect();
    codes.sort();
    assert_eq!(codes, [131000, 131026, 132001], "{view}");
    // The list's item is the same view, failures and all (counted in the same one pass
    // over the campaign's messages).
    let res = app
        .http
        .get(app.url("/v1/broadcasts"))
        .bearer_auth(&t.key)
        .send()
        .await
        .unwrap();
    let list: Value = res.json().await.unwrap();
    let listed = list["broadcasts"]
        .as_array()
        .and_then(|l| l.iter().find(|b| b["id"] == id.as_str()).cloned())
        .unwrap_or(Value::Null);
    assert_eq!(listed["failures"], view["failures"], "{list}");
    assert_eq!(listed["counts"], view["counts"], "{list}");
    for f in &failures {
        assert_eq!(f["count"], 1, "{f}");
        assert!(f["title"].is_string(), "{f}");
        assert!(
            f["hint"].as_str().is_some_and(|h| h.len() > 20),
            "a hint for a person: {f}"
        );
    }
    let undeliverable = failures
        .iter()
        .find(|f| f["code"] == 131026)
        .cloned()
        .unwrap_or_default();
    assert!(
        undeliverable["hint"]
            .as_str()
            .is_some_and(|h| h.contains("WhatsApp")),
        "{undeliverable}"
    );

    // The CSV: the exact header, one row per recipient, metadata only.
    let csv = recipients_csv(&app, &t.key, &id).await;
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("phone,status,error_code,error_title,message_id,sent_at,delivered_at,read_at")
    );
    let rows: Vec<Vec<String>> = lines
        .map(|l| l.split(',').map(str::to_owned).collect())
        .collect();
    assert_eq!(rows.len(), 4, "{csv}");
    let mut phones: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    phones.sort();
    let mut want = to.to_vec();
    want.sort();
    assert_eq!(phones, want);
    let read = rows
        .iter()
        .find(|r| r[0] == "+60123459789")
        .cloned()
        .unwrap_or_default();
    assert_eq!(read[1], "read", "{csv}");
    assert!(
        !read[5].is_empty() && !read[6].is_empty() && !read[7].is_empty(),
        "{csv}"
    );
    let undeliverable = rows
        .iter()
        .find(|r| r[0] == "+60123450001")
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        (undeliverable[1].as_str(), undeliverable[2].as_str()),
        ("failed", "131026")
    );
    assert!(!csv.contains("P-1"), "no template parameter in the export");

    // Retry: only the transient failure is sent again, with the components given again.
    let retry = format!("/v1/broadcasts/{id}/retry-failed");
    assert_eq!(
        call(&app, &other.key, Method::POST, &retry, None).await.0,
        404
    );
    // Meta recategorised the template meanwhile: the retry goes as the catalogue has it
    // now (naming the first broadcast's category would refuse it).
    app.sandbox_template(
        "1000001",
        "order_update",
        "en_US",
        json!({"category": "marketing"}),
    )
    .await;
    let before = app.credits(&t.key).await;
    // Sent twice with one Idempotency-Key (the console's form carries one): one retry.
    let keyed_retry = || async {
        let res = app
            .http
            .post(app.url(&retry))
            .bearer_auth(&t.key)
            .header("Idempotency-Key", "retry-form-1")
            .json(&json!({"components": template_of("utility")["components"]}))
            .send()
            .await
            .unwrap();
        let replayed = res.headers().get("idempotent-replayed").is_some();
        (
            res.status().as_u16(),
            replayed,
            res.json::<Value>().await.unwrap(),
        )
    };
    let (status, replayed, retried) = keyed_retry().await;
    assert_eq!((status, replayed), (202, false), "{retried}");
    assert_eq!(retried["accepted"], 1, "{retried}");
    let (status, replayed, again) = keyed_retry().await;
    assert_eq!((status, replayed), (202, true), "{again}");
    assert_eq!(again["id"], retried["id"]);
    assert_eq!(again["retry_of"], id.as_str());
    assert_eq!(app.credits(&t.key).await, before - 1);
    let new_id = retried["id"].as_str().unwrap_or_default().to_owned();
    let csv = recipients_csv(&app, &t.key, &new_id).await;
    assert_eq!(csv.lines().count(), 2, "{csv}");
    assert!(csv.contains("+60123450004"), "{csv}");
    let new_view = broadcast_view(&app, &t.key, &new_id).await;
    assert_eq!(new_view["name"], "Raya promo (retry)");
    assert_eq!(new_view["retry_of"], id.as_str());
    // Retried once: another retry (another form, another key) would message the same
    // recipients again. It is refused, naming the retry, and charges nothing.
    let (status, body) = call(
        &app,
        &t.key,
        Method::POST,
        &retry,
        Some(json!({"components": template_of("utility")["components"]})),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(&new_id)),
        "{body}"
    );
    assert_eq!(app.credits(&t.key).await, before - 1);
    assert_eq!(
        broadcast_view(&app, &t.key, &id).await["retried_by"],
        new_id.as_str()
    );

    // The list: newest first, filtered by status, paged; another tenant sees none.
    let (_, list) = call(&app, &t.key, Method::GET, "/v1/broadcasts", None).await;
    let ids: Vec<&str> = list["broadcasts"]
        .as_array()
        .map(|l| l.iter().filter_map(|b| b["id"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(ids, [new_id.as_str(), id.as_str()], "{list}");
    let (_, page) = call(&app, &t.key, Method::GET, "/v1/broadcasts?limit=1", None).await;
    let cursor = page["next_cursor"].as_str().unwrap_or_default().to_owned();
    let (_, page2) = call(
        &app,
        &t.key,
        Method::GET,
        &format!("/v1/broadcasts?limit=1&cursor={cursor}"),
        None,
    )
    .await;
    assert_eq!(page2["broadcasts"][0]["id"], id.as_str(), "{page2}");
    // The last page, full, ends the list on both backends (DynamoDB's answered a cursor
    // to an empty page after it).
    assert!(page2["next_cursor"].is_null(), "{page2}");
    let (_, completed) = call(
        &app,
        &t.key,
        Method::GET,
        "/v1/broadcasts?status=completed",
        None,
    )
    .await;
    assert!(completed["broadcasts"]
        .as_array()
        .is_some_and(|l| l.iter().all(|b| b["status"] == "completed")));
    assert_eq!(
        call(
            &app,
            &t.key,
            Method::GET,
            "/v1/broadcasts?status=done",
            None
        )
        .await
        .0,
        400
    );
    let (_, theirs) = call(&app, &other.key, Method::GET, "/v1/broadcasts", None).await;
    assert_eq!(theirs["broadcasts"], json!([]), "{theirs}");
    assert_eq!(
        call(
            &app,
            &other.key,
            Method::GET,
            &format!("/v1/broadcasts/{id}/recipients.csv"),
            None
        )
        .await
        .0,
        404
    );
}

async fn a_broadcast_without_a_retryable_failure_has_nothing_to_retry(b: Backend) {
    let app = kirim_tests::spawn_app(b).await;
    let t = app.onboard(5).await;
    let (_, body) = call(
        &app,
        &t.key,
        Method::POST,
        "/v1/broadcasts",
        Some(json!({"template": template_of("utility"), "recipients": ["+60123450001"]})),
    )
    .await;
    let id = body["id"].as_str().unwrap_or_default().to_owned();
    // Completed, not only failed: until its fan-out's last write closes it, a retry is
    // refused as still sending (also a 409), which is not what this test is about.
    let view = view_once(&app, &t.key, &id, |v| {
        v["counts"]["failed"] == 1 && v["status"] == "completed"
    })
    .await;
    assert_eq!(view["status"], "completed", "{view}");
    assert_eq!(view["failures"][0]["code"], 131026, "{view}");
    let (status, body) = call(
        &app,
        &t.key,
        Method::POST,
        &format!("/v1/broadcasts/{id}/retry-failed"),
        None,
    )
    .await;
    assert_eq!(
        status, 409,
        "an undeliverable number is not retried: {body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("for a reason a later try may fix")),
        "{body}"
    );
}

/// 1,000 recipients of one scheduled broadcast on the aws backend against moto: every
/// message reaches a final state, the sandbox got exactly one request per recipient, and
/// the balance equals the ledger. Slow through moto (about 13 messages a second), so
/// ignored by default: `cargo test -p kirim-tests --test suite
/// a_thousand_scheduled_recipients_all_finish_once_and_the_credits_reconcile -- --ignored`
/// (results in BENCHMARKS.md).
#[tokio::test]
#[ignore]
async fn a_thousand_scheduled_recipients_all_finish_once_and_the_credits_reconcile() {
    let started = std::time::Instant::now();
    let (app, clock) = app_with_clock(Backend::Aws).await;
    let t = app.onboard(1_100).await;
    let to: Vec<String> = (0..1000).map(|i| format!("+6013{i:06}9")).collect();
    let (status, body) = call(
        &app,
        &t.key,
        Method::POST,
        "/v1/broadcasts",
        Some(
            json!({"name": "Load", "template": template_of("utility"), "recipients": to,
                    "send_at": in_minutes(&clock, 2)}),
        ),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["accepted"], 1000);
    let id = body["id"].as_str().unwrap_or_default().to_owned();
    let_hops_pass().await;
    assert!(
        app.app.sandbox.received().is_empty(),
        "nothing before send_at"
    );
    clock.advance(chrono::Duration::minutes(2));
    let mut view = Value::Null;
    // Every look counts 1,000 messages through moto: look rarely, so as not to slow the run.
    for _ in 0..900 {
        view = broadcast_view(&app, &t.key, &id).await;
        let c = &view["counts"];
        let done = ["read", "failed", "cancelled"]
            .iter()
            .map(|k| c[*k].as_u64().unwrap_or(0))
            .sum::<u64>();
        // Completed too: its fan-out's last write may land after its last message settled.
        if done == 1000 && view["status"] == "completed" {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        // The test clock moves with the real one from here on: the per-number throughput
        // limiter measures its seconds on it (a frozen clock lets one second's worth out).
        clock.advance(chrono::Duration::seconds(2));
    }
    assert_eq!(view["status"], "completed", "{view}");
    assert_eq!(view["counts"]["read"], 1000, "{view}");
    let received = app.app.sandbox.received();
    let mut seen = std::collections::HashSet::new();
    for r in &received {
        assert!(
            seen.insert(r.request["to"].to_string()),
            "a duplicate request to {}",
            r.request["to"]
        );
    }
    assert_eq!(received.len(), 1000, "one request per recipient");
    let tenant = kirim::domain::TenantId::parse(&t.tenant_id).expect("tenant id");
    let entries = app.app.deps.ledger.entries(&tenant).await.expect("ledger");
    let sum: i64 = entries.iter().map(|e| e.amount).sum();
    let balance = app.credits(&t.key).await;
    assert_eq!(
        (balance, sum),
        (100, 100),
        "the balance is the ledger's sum"
    );
    eprintln!(
        "1,000 scheduled recipients on moto: all read in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// Closing is final: a closed tenant's scheduled message and scheduled campaign end at
/// their job's next look, refunded (the message `failed` with `tenant_closed`, the campaign
/// `cancelled`), instead of waiting for their `send_at` with their content on the queue and
/// being started into a closed account.
async fn a_closed_tenants_scheduled_message_and_campaign_end_refunded_before_their_time(
    b: Backend,
) {
    use kirim::domain::{MessageId, MessageStatus, TenantId};
    let (app, clock) = app_with_clock(b).await;
    let t = app.onboard(10).await;
    let (status, body) = call(
        &app,
        &t.key,
        Method::POST,
        "/v1/messages",
        Some(
            json!({"to": "+60123459311", "template": template_of("utility"),
                    "send_at": in_minutes(&clock, 600)}),
        ),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let id = MessageId::parse(body["id"].as_str().unwrap_or_default()).unwrap();
    let to = ["+60123459312", "+60123459313", "+60123459314"];
    let (status, body) = call(
        &app,
        &t.key,
        Method::POST,
        "/v1/broadcasts",
        Some(json!({"template": template_of("utility"), "recipients": to,
                    "send_at": in_minutes(&clock, 600)})),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let bid = body["id"].as_str().unwrap_or_default().to_owned();
    assert_eq!(app.credits(&t.key).await, 6);
    let res = app
        .http
        .delete(app.url(&format!("/v1/platform/tenants/{}", t.tenant_id)))
        .bearer_auth(kirim_tests::OPERATOR_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let deps = &app.app.deps;
    let tenant = TenantId::from_trusted(t.tenant_id.clone());
    let mut ended = (None, None, 0);
    // Up to a minute: a deadline, not a speed assertion (each ends at its job's next look,
    // through the queue pollers).
    for _ in 0..600 {
        let m = deps
            .messages
            .get_message(&tenant, &id)
            .await
            .unwrap()
            .unwrap();
        let b = deps
            .broadcasts
            .get_broadcast(&tenant, &bid)
            .await
            .unwrap()
            .unwrap();
        let credits = deps
            .tenants
            .get_tenant(&tenant)
            .await
            .unwrap()
            .unwrap()
            .credits;
        ended = (
            Some((m.status, m.error.map(|e| e.code.to_string()))),
            Some(b.status.as_str()),
            credits,
        );
        if m.status == MessageStatus::Failed && ended.1 == Some("cancelled") && credits == 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        ended,
        (
            Some((MessageStatus::Failed, Some("tenant_closed".to_owned()))),
            Some("cancelled"),
            10
        ),
        "both ended, refunded, long before their send_at"
    );
    assert_eq!(app.sandbox_requests_to("60123459311").len(), 0);
    assert_eq!(sandbox_count(&app, &to), 0);
}

/// `since`/`until` select messages by their acceptance (the time in their id): a
/// campaign's recipients by the campaign's, however much later they are recorded at its
/// `send_at`; the same on both backends.
async fn a_campaigns_messages_are_listed_by_the_campaigns_acceptance_not_their_fan_out(b: Backend) {
    use kirim::ports::Clock;
    let (app, clock) = app_with_clock(b).await;
    let t = app.onboard(10).await;
    let accepted = clock.now();
    let to = ["+60123459321", "+60123459322"];
    let (status, body) = call(
        &app,
        &t.key,
        Method::POST,
        "/v1/broadcasts",
        Some(json!({"template": template_of("utility"), "recipients": to,
                    "send_at": in_minutes(&clock, 30)})),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let id = body["id"].as_str().unwrap_or_default().to_owned();
    clock.advance(chrono::Duration::minutes(30));
    for _ in 0..150 {
        if broadcast_view(&app, &t.key, &id).await["counts"]["read"] == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let listed = |since: chrono::DateTime<chrono::Utc>, until: chrono::DateTime<chrono::Utc>| {
        let app = &app;
        let key = t.key.clone();
        let q = format!(
            "/v1/messages?since={}&until={}",
            since.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
            until.format("%Y-%m-%dT%H:%M:%S%.3fZ")
        );
        async move {
            let (s, page) = call(app, &key, Method::GET, &q, None).await;
            assert_eq!(s, 200, "{page}");
            page["messages"].as_array().map_or(0, Vec::len)
        }
    };
    let minute = chrono::Duration::minutes(1);
    assert_eq!(
        listed(accepted - minute, accepted + minute).await,
        2,
        "listed by the campaign's acceptance"
    );
    assert_eq!(
        listed(
            accepted + chrono::Duration::minutes(29),
            clock.now() + minute
        )
        .await,
        0,
        "not by their fan-out"
    );
    // Each shows the campaign's acceptance as its `created_at`, inside the range it is
    // listed by; its `accepted` event is the fan-out's.
    let (_, page) = call(&app, &t.key, Method::GET, "/v1/messages", None).await;
    for m in page["messages"].as_array().unwrap() {
        let created = chrono::DateTime::parse_from_rfc3339(m["created_at"].as_str().unwrap())
            .unwrap()
            .with_timezone(&chrono::Utc);
        assert!(
            (created - accepted).num_seconds().abs() < 2,
            "{m}: created with the campaign"
        );
    }
}

/// A completed campaign's `completed_at` was always null (no write marks the moment). It
/// is when its last message was handed to Meta or ended, from its messages' events, and
/// a later delivery or read of one does not move it.
async fn a_completed_campaign_shows_when_its_last_message_was_handed_to_meta(b: Backend) {
    use kirim::domain::{MessageError, MessageStatus};
    use kirim::ports::{Clock, StatusChange};
    use kirim::service::broadcasts;
    let (deps, clock, t) = crate::crash_recovery::tenant_on_a_manual_clock(b, 20).await;
    let now = clock.now();
    let month = 30 * 24 * 3600;
    let mut campaign = crate::contract_broadcasts::running_broadcast(&t.id, now);
    campaign.accepted = 2;
    campaign.expires_at = Some(now.timestamp() + month);
    let list: Vec<kirim::domain::PhoneNumber> = (0..2)
        .map(|i| kirim::domain::PhoneNumber::parse(&format!("+6012349{i:04}")).unwrap())
        .collect();
    let (_, mut debit) = crate::contract::message_expiring(&t.id, now, month);
    debit.message_id = None;
    debit.amount = -2;
    deps.broadcasts
        .create_broadcast(&campaign, &list, &debit)
        .await
        .unwrap();
    let mut ids = Vec::new();
    for i in 0..2 {
        let (mut m, _) = crate::contract::message_expiring(&t.id, now, month);
        m.id = broadcasts::message_id(&campaign, i);
        m.broadcast_id = Some(campaign.id.clone());
        assert!(deps.broadcasts.insert_broadcast_message(&m).await.unwrap());
        ids.push(m.id);
    }
    deps.broadcasts
        .broadcast_progress(
            &t.id,
            &campaign.id,
            2,
            true,
            kirim::ports::FanoutHop::default(),
        )
        .await
        .unwrap();
    let at = |minutes: i64| now + chrono::Duration::minutes(minutes);
    let moves = [
        (0, MessageStatus::Sending, 1),
        (1, MessageStatus::Sending, 1),
        (0, MessageStatus::Sent, 2),
        (1, MessageStatus::Failed, 3),
    ];
    let view = || broadcasts::view(&deps, &t.id, &campaign.id);
    for (i, to, minute) in moves {
        let v = view().await.unwrap();
        assert_eq!(
            (v.status, v.completed_at),
            ("sending", None),
            "a message still open"
        );
        let change = StatusChange {
            error: (to == MessageStatus::Failed).then(|| MessageError {
                code: kirim::domain::ErrorCode::Meta(131026),
                title: "Message undeliverable".into(),
            }),
            ..Default::default()
        };
        let moved = deps
            .messages
            .transition(&t.id, &ids[i], to, &change, at(minute))
            .await
            .unwrap();
        assert!(
            matches!(moved, kirim::ports::Transition::Applied(_)),
            "{moved:?}"
        );
    }
    let v = view().await.unwrap();
    assert_eq!(v.status, "completed");
    assert_eq!(
        v.completed_at,
        Some(at(3)),
        "the failure, the last to settle"
    );
    // Its sent message is delivered and read an hour on: completed when it was.
    for (to, minute) in [(MessageStatus::Delivered, 60), (MessageStatus::Read, 90)] {
        deps.messages
            .transition(&t.id, &ids[0], to, &StatusChange::default(), at(minute))
            .await
            .unwrap();
    }
    let v = view().await.unwrap();
    assert_eq!((v.status, v.completed_at), ("completed", Some(at(3))));
    let (listed, _) = broadcasts::list(&deps, &t.id, None, 50, None)
        .await
        .unwrap();
    assert_eq!(listed[0].completed_at, Some(at(3)), "listed the same");
}

/// A running campaign of `n` recipients of tenant `t`, their messages recorded
/// (`accepted`) and queued: the campaign and its messages.
async fn a_campaign_with_messages(
    deps: &kirim::service::Deps,
    t: &kirim::ports::Tenant,
    now: chrono::DateTime<chrono::Utc>,
    n: usize,
) -> (kirim::ports::Broadcast, Vec<kirim::domain::MessageRecord>) {
    use kirim::service::broadcasts;
    let month = 30 * 24 * 3600;
    let mut campaign = crate::contract_broadcasts::running_broadcast(&t.id, now);
    campaign.accepted = n;
    campaign.expires_at = Some(now.timestamp() + month);
    let list: Vec<kirim::domain::PhoneNumber> = (0..n)
        .map(|i| kirim::domain::PhoneNumber::parse(&format!("+6012348{i:04}")).unwrap())
        .collect();
    let (_, mut debit) = crate::contract::message_expiring(&t.id, now, month);
    debit.message_id = None;
    debit.amount = -(n as i64);
    deps.broadcasts
        .create_broadcast(&campaign, &list, &debit)
        .await
        .unwrap();
    let mut messages = Vec::new();
    for i in 0..n {
        let (mut m, _) = crate::contract::message_expiring(&t.id, now, month);
        m.id = broadcasts::message_id(&campaign, i);
        m.broadcast_id = Some(campaign.id.clone());
        assert!(deps.broadcasts.insert_broadcast_message(&m).await.unwrap());
        messages.push(m);
    }
    deps.broadcasts
        .broadcast_progress(
            &t.id,
            &campaign.id,
            n,
            true,
            kirim::ports::FanoutHop::default(),
        )
        .await
        .unwrap();
    (campaign, messages)
}

/// `m` handed to the dispatcher (`accepted → sending`) at `at`.
async fn sending(
    deps: &kirim::service::Deps,
    m: &kirim::domain::MessageRecord,
    at: chrono::DateTime<chrono::Utc>,
) {
    use kirim::ports::{StatusChange, Transition};
    let moved = deps
        .messages
        .transition(
            &m.tenant_id,
            &m.id,
            kirim::domain::MessageStatus::Sending,
            &StatusChange::default(),
            at,
        )
        .await
        .unwrap();
    assert!(matches!(moved, Transition::Applied(_)), "{moved:?}");
}

/// `m` handed to the dispatcher at `sending_at`, then failed by it with `failure` at
/// `failed_at` and its credit refunded, as the dispatcher fails a send whose outcome is in
/// doubt (Meta may have it all the same).
async fn failed_in_doubt(
    deps: &kirim::service::Deps,
    m: &kirim::domain::MessageRecord,
    failure: &kirim::ports::StatusChange,
    sending_at: chrono::DateTime<chrono::Utc>,
    failed_at: chrono::DateTime<chrono::Utc>,
) {
    sending(deps, m, sending_at).await;
    let failed = deps
        .messages
        .fail_and_refund(
            &m.tenant_id,
            &m.id,
            kirim::domain::MessageStatus::Sending,
            failure,
            failed_at,
            None,
        )
        .await
        .unwrap();
    assert!(
        matches!(failed, kirim::ports::Transition::Applied(_)),
        "{failed:?}"
    );
}

/// A completed campaign's `completed_at` (when its last message was handed to Meta or
/// ended) never moves back when Meta reports a message's `sent` late, with a time before
/// the status that settled it: after its `delivered` (the send's answer lost), or after the
/// dispatcher failed it while its outcome was in doubt. The late `sent` is recorded in the
/// message's events; the campaign stays completed when it was.
async fn a_late_sent_never_takes_a_completed_campaign_s_time_back(b: Backend) {
    use kirim::domain::MessageStatus;
    use kirim::ports::{Clock, StatusChange};
    use kirim::service::{broadcasts, webhook};
    let (deps, clock, t) = crate::crash_recovery::tenant_on_a_manual_clock(b, 20).await;
    let now = clock.now();
    let secs = |s: i64| now.timestamp() + s;
    let meta = |m: &kirim::domain::MessageRecord, status: &str, at: i64| {
        crate::webhook_batches::body(
            &t.phone_number_id,
            vec![crate::webhook_batches::status_of(
                m,
                &format!("wamid.{}", m.id),
                status,
                at,
                false,
            )],
            vec![],
        )
    };
    let completed_at = |id: String| {
        let deps = deps.clone();
        let t = t.id.clone();
        async move {
            let v = broadcasts::view(&deps, &t, &id).await.unwrap();
            (v.status, v.completed_at.map(|at| at.timestamp()))
        }
    };

    // Its send's answer lost: Meta's `delivered` settles it, then its `sent` comes.
    let (campaign, ms) = a_campaign_with_messages(&deps, &t, now, 1).await;
    let m = &ms[0];
    sending(&deps, m, now).await;
    let summary = webhook::apply(&deps, &meta(m, "delivered", secs(40)))
        .await
        .unwrap();
    assert_eq!(summary.applied, 1, "{summary:?}");
    assert_eq!(
        completed_at(campaign.id.clone()).await,
        ("completed", Some(secs(40)))
    );
    let summary = webhook::apply(&deps, &meta(m, "sent", secs(30)))
        .await
        .unwrap();
    assert_eq!(summary.applied, 1, "the late sent recorded: {summary:?}");
    assert_eq!(
        completed_at(campaign.id.clone()).await,
        ("completed", Some(secs(40))),
        "not taken back to the late sent's time"
    );

    // Failed by the dispatcher, its outcome in doubt; then Meta's `sent` of it.
    let (campaign, ms) = a_campaign_with_messages(&deps, &t, now, 1).await;
    let m = &ms[0];
    let failure = StatusChange {
        error: Some(kirim::domain::MessageError {
            code: kirim::domain::ErrorCode::Meta(131000),
            title: "Something went wrong".into(),
        }),
        ..Default::default()
    };
    let failed_at = chrono::DateTime::from_timestamp(secs(60), 0).unwrap();
    failed_in_doubt(&deps, m, &failure, now, failed_at).await;
    assert_eq!(
        completed_at(campaign.id.clone()).await,
        ("completed", Some(secs(60)))
    );
    let summary = webhook::apply(&deps, &meta(m, "sent", secs(50)))
        .await
        .unwrap();
    assert_eq!(summary.applied, 1, "the late sent recorded: {summary:?}");
    let stored = deps
        .messages
        .get_message(&t.id, &m.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.status, MessageStatus::Failed);
    assert!(
        stored
            .events
            .iter()
            .any(|e| e.status == MessageStatus::Sent && e.at.timestamp() == secs(50)),
        "{:?}",
        stored.events
    );
    assert_eq!(
        completed_at(campaign.id.clone()).await,
        ("completed", Some(secs(60))),
        "not taken back to the late sent's time"
    );

    // Failed by the dispatcher at 60; Meta's `delivered` of it, timed 55, is a move
    // (`failed → delivered`), appended: the campaign's time stays the failure's.
    let (campaign, ms) = a_campaign_with_messages(&deps, &t, now, 1).await;
    let m = &ms[0];
    failed_in_doubt(&deps, m, &failure, now, failed_at).await;
    let summary = webhook::apply(&deps, &meta(m, "delivered", secs(55)))
        .await
        .unwrap();
    assert_eq!(summary.applied, 1, "{summary:?}");
    assert_eq!(
        completed_at(campaign.id.clone()).await,
        ("completed", Some(secs(60))),
        "not taken back to the delivery's earlier time"
    );
    // Shown with a `sent` (Meta's never came) no later than the delivery.
    let stored = deps
        .messages
        .get_message(&t.id, &m.id)
        .await
        .unwrap()
        .unwrap();
    let shown = stored.shown_events();
    let at = |st: MessageStatus| {
        shown
            .iter()
            .find(|e| e.status == st)
            .map(|e| e.at.timestamp())
    };
    assert_eq!(
        (at(MessageStatus::Sent), at(MessageStatus::Delivered)),
        (Some(secs(55)), Some(secs(55))),
        "{shown:?}"
    );
}

/// A message the dispatcher failed with its outcome in doubt, whose `sent` Meta then
/// reported (recorded late: Meta has it and may yet deliver it), is not retried by
/// `retry-failed`: the recipient would get the template twice. Without Meta's `sent`, the
/// same failure is retried.
async fn a_doubtful_failure_meta_reported_sent_after_all_is_not_retried(b: Backend) {
    use kirim::ports::{Clock, StatusChange};
    use kirim::service::{broadcasts, webhook};
    let (deps, clock, t) = crate::crash_recovery::tenant_on_a_manual_clock(b, 20).await;
    let now = clock.now();
    let doubt = StatusChange {
        error: Some(kirim::domain::MessageError {
            code: kirim::domain::ErrorCode::from("outcome_unknown"),
            title: "The send's outcome is unknown".into(),
        }),
        ..Default::default()
    };
    for meta_sent in [true, false] {
        let (campaign, ms) = a_campaign_with_messages(&deps, &t, now, 1).await;
        let m = &ms[0];
        failed_in_doubt(&deps, m, &doubt, now, now).await;
        if meta_sent {
            let raw = crate::webhook_batches::body(
                &t.phone_number_id,
                vec![crate::webhook_batches::status_of(
                    m,
                    &format!("wamid.{}", m.id),
                    "sent",
                    now.timestamp(),
                    false,
                )],
                vec![],
            );
            let summary = webhook::apply(&deps, &raw).await.unwrap();
            assert_eq!(summary.applied, 1, "the late sent recorded: {summary:?}");
        }
        let retried = broadcasts::retry_failed(&deps, &t.id, &campaign.id, vec![], None).await;
        let nothing = matches!(
            &retried,
            Err(kirim::service::errors::ServiceError::Conflict(why)) if why.contains("no message")
        );
        assert_eq!(
            nothing,
            meta_sent,
            "Meta's sent {meta_sent}: {:?}",
            retried.err()
        );
    }
}

/// The view once `done(view)` holds (at most a minute).
async fn view_once(app: &TestApp, key: &str, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let mut view = Value::Null;
    // Up to a minute: a deadline, not a speed assertion (on a CI machine whose every test
    // shares one moto, 15 s was once not enough for a scheduled campaign's start and close).
    for _ in 0..600 {
        view = broadcast_view(app, key, id).await;
        if done(&view) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    view
}

/// A scheduled campaign whose template Meta paused after it was accepted: at `send_at` its
/// recipients are closed `failed` (`template_not_approved`) and refunded by its fan-out,
/// none of them queued, claimed or sent for Meta to refuse each (132015).
async fn a_scheduled_campaign_whose_template_meta_paused_meanwhile_sends_nothing_and_is_refunded(
    b: Backend,
) {
    let (app, clock) = app_with_clock(b).await;
    let t = app.onboard(10).await;
    let to = ["+60123459401", "+60123459402", "+60123459403"];
    let (status, body) = call(
        &app,
        &t.key,
        Method::POST,
        "/v1/broadcasts",
        Some(json!({"template": template_of("utility"), "recipients": to,
                    "send_at": in_minutes(&clock, 2)})),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(app.credits(&t.key).await, 7);
    let id = body["id"].as_str().unwrap_or_default().to_owned();
    app.sandbox_template(
        "1000001",
        "order_update",
        "en_US",
        json!({"status": "paused"}),
    )
    .await;
    clock.advance(chrono::Duration::minutes(2));
    // Its recipients are closed before the campaign is (its fan-out's last write): the
    // counts may show all three failed a moment before the status is `completed`.
    let view = view_once(&app, &t.key, &id, |v| {
        v["counts"]["failed"] == 3 && v["status"] == "completed"
    })
    .await;
    assert_eq!(view["counts"]["failed"], 3, "{view}");
    assert_eq!(view["status"], "completed", "{view}");
    assert_eq!(
        view["failures"][0]["code"], "template_not_approved",
        "{view}"
    );
    assert_eq!(view["failures"][0]["count"], 3, "{view}");
    assert_eq!(view["enqueued"], 0, "none queued: {view}");
    let_hops_pass().await;
    assert_eq!(
        sandbox_count(&app, &to),
        0,
        "nothing sent for Meta to refuse"
    );
    assert_eq!(app.credits(&t.key).await, 10, "refunded whole");
    // Not a failure a retry may fix (the template is what failed).
    let (status, _) = call(
        &app,
        &t.key,
        Method::POST,
        &format!("/v1/broadcasts/{id}/retry-failed"),
        Some(json!({"components": template_of("utility")["components"]})),
    )
    .await;
    assert_eq!(status, 409);
}

/// A utility campaign scheduled to someone who opted out of marketing only, whose template
/// Meta moved to marketing before `send_at`: it goes out as the catalogue has it then, so
/// the marketing opt-out applies (that recipient fails `recipient_opted_out`, refunded, and
/// is not sent); the other recipient is sent.
async fn a_scheduled_utility_campaign_recategorised_as_marketing_skips_marketing_opt_outs(
    b: Backend,
) {
    let (app, clock) = app_with_clock(b).await;
    let t = app.onboard(10).await;
    let (opted, other) = ("+60123459501", "+60123459502");
    let res = app
        .http
        .put(app.url(&format!("/v1/opt-outs/{}", opted.replace('+', "%2B"))))
        .bearer_auth(&t.key)
        .json(&json!({"scope": "marketing"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let (status, body) = call(
        &app,
        &t.key,
        Method::POST,
        "/v1/broadcasts",
        Some(
            json!({"template": template_of("utility"), "recipients": [opted, other],
                    "send_at": in_minutes(&clock, 2)}),
        ),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        body["accepted"], 2,
        "a utility template ignores a marketing opt-out"
    );
    let id = body["id"].as_str().unwrap_or_default().to_owned();
    app.sandbox_template(
        "1000001",
        "order_update",
        "en_US",
        json!({"category": "marketing"}),
    )
    .await;
    clock.advance(chrono::Duration::minutes(2));
    let view = view_once(&app, &t.key, &id, |v| {
        v["counts"]["failed"] == 1 && v["counts"]["read"] == 1
    })
    .await;
    assert_eq!(
        (&view["counts"]["failed"], &view["counts"]["read"]),
        (&json!(1), &json!(1)),
        "{view}"
    );
    assert_eq!(view["failures"][0]["code"], "recipient_opted_out", "{view}");
    assert_eq!(
        sandbox_count(&app, &[opted]),
        0,
        "not sent to the opted-out"
    );
    assert_eq!(sandbox_count(&app, &[other]), 1);
    assert_eq!(app.credits(&t.key).await, 9, "the opted-out one refunded");
}

/// A marketing campaign scheduled before the tenant's quality was flagged, with the
/// marketing pause on: at `send_at` its recipients fail `marketing_paused`, refunded,
/// none sent (the pause acts before Meta restricts the number).
async fn a_scheduled_marketing_campaign_of_a_tenant_flagged_meanwhile_fails_marketing_paused(
    b: Backend,
) {
    let clock = ManualClock::new();
    let mut cfg = local_config(b).await;
    cfg.clock = LocalClock(clock.clone());
    cfg.settings.quality.min_volume = 2;
    cfg.settings.quality.pause_marketing = true;
    let app = kirim_tests::spawn_with(cfg).await;
    let t = app.onboard(10).await;
    let to = ["+60123459601", "+60123459602"];
    let (status, body) = call(
        &app,
        &t.key,
        Method::POST,
        "/v1/broadcasts",
        Some(
            json!({"template": template_of("marketing"), "recipients": to,
                    "send_at": in_minutes(&clock, 2)}),
        ),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let id = body["id"].as_str().unwrap_or_default().to_owned();
    // Two undeliverable sends flag it.
    for to in ["+60123450001", "+60123460001"] {
        let m = app.send_ok(&t.key, to).await;
        assert_eq!(
            app.wait_status(&t.key, &m, "failed").await["error"]["code"],
            131026
        );
    }
    let mut flagged = false;
    // Up to a minute: a deadline, not a speed assertion.
    for _ in 0..600 {
        let (_, account) = call(&app, &t.key, Method::GET, "/v1/account", None).await;
        flagged = account["quality"]["flagged"] == true;
        if flagged {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(flagged, "the tenant is flagged");
    let before = app.credits(&t.key).await;
    clock.advance(chrono::Duration::minutes(2));
    let view = view_once(&app, &t.key, &id, |v| v["counts"]["failed"] == 2).await;
    assert_eq!(view["counts"]["failed"], 2, "{view}");
    assert_eq!(view["failures"][0]["code"], "marketing_paused", "{view}");
    let_hops_pass().await;
    assert_eq!(sandbox_count(&app, &to), 0, "none sent");
    assert_eq!(app.credits(&t.key).await, before + 2, "refunded");
}

/// Posts a campaign of `to` (utility template) and answers its id.
async fn campaign_of(app: &TestApp, key: &str, to: &[String]) -> String {
    let body = json!({"template": template_of("utility"), "recipients": to});
    let (status, body) = call(app, key, Method::POST, "/v1/broadcasts", Some(body)).await;
    assert_eq!(status, 202, "{body}");
    body["id"].as_str().unwrap_or_default().to_owned()
}

/// Every page of `GET {path}` (with `limit`), following `next_cursor` to the end: the
/// items of each page.
async fn pages_of(app: &TestApp, key: &str, path: &str, limit: usize) -> Vec<Vec<Value>> {
    let mut pages = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut uri = format!("{path}&limit={limit}");
        if let Some(c) = &cursor {
            uri.push_str(&format!("&cursor={c}"));
        }
        let (status, page) = call(app, key, Method::GET, &uri, None).await;
        assert_eq!(status, 200, "{uri}: {page}");
        pages.push(page["messages"].as_array().cloned().unwrap_or_default());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return pages,
        }
        assert!(pages.len() <= 200, "{path} never ends");
    }
}

/// `GET /v1/messages?broadcast_id=` lists one campaign's messages, as the list shows
/// messages, in message-id order (`recipients.csv`'s): a read-only key walks a campaign of
/// 120 in pages of 50 to the end, each message once and no other message of the tenant; a
/// status filter keeps the campaign's messages of that status (pages may be short); `since`
/// and `until` take all of them or none (they carry the campaign's acceptance time).
async fn a_campaigns_messages_are_listed_page_by_page_in_id_order_to_a_read_only_key(b: Backend) {
    let app = kirim_tests::spawn_app(b).await;
    let t = app.onboard(200).await;
    let (_, reader) = crate::access::new_key(&app, &t.key, "read_only").await;
    // 5 undeliverable (ending 0001: `failed`, 131026), the others read.
    let to: Vec<String> = (0..120)
        .map(|i| match i % 24 {
            0 => format!("+6014{:03}0001", i),
            _ => format!("+6013{i:06}9"),
        })
        .collect();
    let id = campaign_of(&app, &t.key, &to).await;
    let other = campaign_of(&app, &t.key, &["+60135550009".to_owned()]).await;
    let single = app.send_ok(&t.key, "+60135550019").await;
    let mut view = Value::Null;
    for _ in 0..600 {
        view = broadcast_view(&app, &t.key, &id).await;
        if view["counts"]["failed"] == 5 && view["counts"]["read"] == 115 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(view["counts"]["failed"], 5, "{view}");
    assert_eq!(view["counts"]["read"], 115, "{view}");

    let pages = pages_of(
        &app,
        &reader,
        &format!("/v1/messages?broadcast_id={id}"),
        50,
    )
    .await;
    let sizes: Vec<usize> = pages.iter().map(Vec::len).collect();
    assert_eq!(sizes, [50, 50, 20], "pages of 50, and no empty last page");
    let listed: Vec<Value> = pages.concat();
    let ids: Vec<String> = listed
        .iter()
        .map(|m| m["id"].as_str().unwrap_or_default().to_owned())
        .collect();
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(ids, sorted, "each once, in message-id order");
    for m in &listed {
        assert_eq!(m["broadcast_id"], id.as_str(), "{m}");
        assert_ne!(m["broadcast_id"], other.as_str(), "{m}");
    }
    assert!(!ids.contains(&single));
    // The same messages in the same order as the campaign's export.
    let csv = recipients_csv(&app, &t.key, &id).await;
    let exported: Vec<&str> = csv
        .lines()
        .skip(1)
        .filter_map(|l| l.split(',').nth(4))
        .collect();
    assert_eq!(ids, exported, "recipients.csv's order");
    // Each as the message list (and `GET /v1/messages/{id}`) shows it: the same fields, the
    // number and all.
    let last = &ids[119];
    let (_, plain) = call(&app, &t.key, Method::GET, "/v1/messages?limit=3", None).await;
    let shown = plain["messages"]
        .as_array()
        .and_then(|a| a.iter().find(|m| m["id"] == last.as_str()).cloned())
        .unwrap_or(Value::Null);
    assert_eq!(listed[119], shown, "{plain}");
    assert_eq!(listed[0], app.message(&t.key, &ids[0]).await);

    let failed: Vec<Value> = pages_of(
        &app,
        &reader,
        &format!("/v1/messages?broadcast_id={id}&status=failed"),
        2,
    )
    .await
    .concat();
    assert_eq!(failed.len(), 5, "{failed:?}");
    for m in &failed {
        assert_eq!(m["status"], "failed", "{m}");
        assert_eq!(m["broadcast_id"], id.as_str(), "{m}");
        assert!(
            m["to"].as_str().is_some_and(|to| to.ends_with("0001")),
            "{m}"
        );
    }
    let failed_ids: Vec<&str> = failed.iter().filter_map(|m| m["id"].as_str()).collect();
    let mut in_order = failed_ids.clone();
    in_order.sort();
    assert_eq!(failed_ids, in_order);
    // A rare status a page at a time: each request looks among up to ~900 messages, not
    // `limit` + 1 a read, so each page holds one (no empty page between).
    let one_by_one = pages_of(
        &app,
        &reader,
        &format!("/v1/messages?broadcast_id={id}&status=failed"),
        1,
    )
    .await;
    let sizes: Vec<usize> = one_by_one.iter().map(Vec::len).collect();
    // (A last page may be empty: the fifth's read may end before the campaign does.)
    assert!(
        sizes == [1, 1, 1, 1, 1] || sizes == [1, 1, 1, 1, 1, 0],
        "{sizes:?}"
    );
    assert_eq!(one_by_one.concat(), failed, "the same five, in order");

    let created = chrono::DateTime::parse_from_rfc3339(view["created_at"].as_str().unwrap())
        .unwrap()
        .with_timezone(&chrono::Utc);
    let at = |t: chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
    let minute = chrono::Duration::minutes(1);
    for (since, until, want) in [
        (created - minute, created + minute, 50),
        (created + minute, created + minute * 2, 0),
        (created - minute * 2, created - minute, 0),
    ] {
        let uri = format!(
            "/v1/messages?broadcast_id={id}&since={}&until={}",
            at(since),
            at(until)
        );
        let (status, page) = call(&app, &reader, Method::GET, &uri, None).await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(
            page["messages"].as_array().map(Vec::len),
            Some(want),
            "{uri}"
        );
        assert_eq!(page["next_cursor"].is_null(), want == 0, "{uri}: {page}");
    }
}

/// Another tenant's campaign, an unknown one or no campaign id at all is `404`, as `GET
/// /v1/broadcasts/{id}` answers, with nothing of the campaign; a cursor of another list
/// (the messages list's, another campaign's, another tenant's, or one naming a position
/// outside the campaign) is `400 invalid_request`, never another list's page nor a 5xx.
async fn a_campaigns_message_list_refuses_other_tenants_campaigns_and_other_lists_cursors(
    b: Backend,
) {
    let app = kirim_tests::spawn_app(b).await;
    let t = app.onboard(20).await;
    let other_tenant = app.onboard(20).await;
    let to: Vec<String> = (0..3).map(|i| format!("+6013{i:06}8")).collect();
    let id = campaign_of(&app, &t.key, &to).await;
    let second = campaign_of(&app, &t.key, &to).await;
    let theirs = campaign_of(&app, &other_tenant.key, &to).await;
    app.send_ok(&t.key, "+60135550029").await;
    app.send_ok(&t.key, "+60135550039").await;
    let get = |key: &str, uri: String| {
        let (app, key) = (&app, key.to_owned());
        async move { call(app, &key, Method::GET, &uri, None).await }
    };
    let cursor_of = |page: &Value| page["next_cursor"].as_str().unwrap_or_default().to_owned();
    // The campaign's messages are recorded by its fan-out, a moment after the `202`.
    let mut campaign_page = Value::Null;
    for _ in 0..100 {
        campaign_page = get(&t.key, format!("/v1/messages?broadcast_id={id}&limit=1"))
            .await
            .1;
        if campaign_page["next_cursor"].is_string() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let campaign_cursor = cursor_of(&campaign_page);
    assert!(!campaign_cursor.is_empty(), "{campaign_page}");

    for (key, uri) in [
        (&other_tenant.key, format!("/v1/messages?broadcast_id={id}")),
        (&t.key, format!("/v1/messages?broadcast_id={theirs}")),
        (
            &t.key,
            format!("/v1/messages?broadcast_id={}", kirim::domain::new_id()),
        ),
        (
            &t.key,
            "/v1/messages?broadcast_id=not-a-campaign".to_owned(),
        ),
        (&t.key, "/v1/messages?broadcast_id=".to_owned()),
    ] {
        let (status, body) = get(key, uri.clone()).await;
        assert_eq!(status, 404, "{uri}: {body}");
        assert_eq!(body["error"]["code"], "not_found", "{uri}: {body}");
        assert!(body.get("messages").is_none(), "{uri}: {body}");
    }

    let (_, plain) = get(&t.key, "/v1/messages?limit=1".to_owned()).await;
    let plain_cursor = cursor_of(&plain);
    assert!(!plain_cursor.is_empty(), "{plain}");
    let (_, theirs_page) = get(
        &other_tenant.key,
        format!("/v1/messages?broadcast_id={theirs}&limit=1"),
    )
    .await;
    let their_cursor = cursor_of(&theirs_page);
    // A position of the tenant's own, on the campaign's own list, outside the campaign's
    // millisecond (DynamoDB would refuse it as a start key outside the query's range).
    let tenant = kirim::domain::TenantId::parse(&t.tenant_id).unwrap();
    let outside = kirim::ports::page_cursor(
        &tenant,
        &format!("BROADCAST#{id}"),
        &ulid::Ulid::from_parts(1, 1).to_string(),
    );
    for (key, uri) in [
        (
            &t.key,
            format!("/v1/messages?broadcast_id={id}&cursor={plain_cursor}"),
        ),
        (&t.key, format!("/v1/messages?cursor={campaign_cursor}")),
        (
            &t.key,
            format!("/v1/messages?status=accepted&cursor={campaign_cursor}"),
        ),
        (
            &t.key,
            format!("/v1/messages?broadcast_id={second}&cursor={campaign_cursor}"),
        ),
        (
            &t.key,
            format!("/v1/messages?broadcast_id={id}&cursor={their_cursor}"),
        ),
        (
            &other_tenant.key,
            format!("/v1/messages?broadcast_id={theirs}&cursor={campaign_cursor}"),
        ),
        (
            &t.key,
            format!("/v1/messages?broadcast_id={id}&cursor={outside}"),
        ),
        (&t.key, format!("/v1/messages?broadcast_id={id}&cursor=x")),
    ] {
        let (status, body) = get(key, uri.clone()).await;
        assert_eq!(status, 400, "{uri}: {body}");
        assert_eq!(body["error"]["code"], "invalid_request", "{uri}: {body}");
    }
    // Its own cursor goes on.
    let (status, next) = get(
        &t.key,
        format!("/v1/messages?broadcast_id={id}&limit=1&cursor={campaign_cursor}"),
    )
    .await;
    assert_eq!(status, 200, "{next}");
    assert_ne!(
        next["messages"][0]["id"],
        campaign_page["messages"][0]["id"]
    );
    assert_eq!(next["messages"][0]["broadcast_id"], id.as_str());
}

on_both_backends!(
    a_campaigns_messages_are_listed_page_by_page_in_id_order_to_a_read_only_key,
    a_campaigns_message_list_refuses_other_tenants_campaigns_and_other_lists_cursors,
    a_scheduled_campaign_whose_template_meta_paused_meanwhile_sends_nothing_and_is_refunded,
    a_scheduled_utility_campaign_recategorised_as_marketing_skips_marketing_opt_outs,
    a_scheduled_marketing_campaign_of_a_tenant_flagged_meanwhile_fails_marketing_paused,
    a_campaigns_messages_are_listed_by_the_campaigns_acceptance_not_their_fan_out,
    a_closed_tenants_scheduled_message_and_campaign_end_refunded_before_their_time,
    a_scheduled_broadcast_starts_after_its_send_at_and_not_before,
    cancelling_a_scheduled_broadcast_refunds_it_exactly_and_sends_nothing,
    a_scheduled_message_waits_then_is_sent_once,
    a_scheduled_message_is_cancelled_and_refunded_once,
    bad_send_at_values_and_moves_that_do_not_apply_are_refused,
    a_paused_broadcast_sends_nothing_until_it_is_resumed,
    a_cancel_racing_the_dispatcher_never_leaves_a_message_both_sent_and_refunded,
    results_show_failures_with_hints_the_csv_and_a_retry_of_only_retryable_failures,
    a_broadcast_without_a_retryable_failure_has_nothing_to_retry,
    a_completed_campaign_shows_when_its_last_message_was_handed_to_meta,
    a_late_sent_never_takes_a_completed_campaign_s_time_back,
    a_doubtful_failure_meta_reported_sent_after_all_is_not_retried,
);
