//! Quality watch: rolling 7-day opt-out and undeliverable rates, the flag, and the
//! optional pause of marketing sends; the counters' contract on both adapters.

use chrono::Duration;
use kirim::config::Backend;
use kirim::ports::{Clock, QualityCounter, QualityCounts};
use kirim::service::quality;
use kirim_tests::{local_config, TestApp};
use serde_json::{json, Value};

use super::contract::{aws, contract, memory, onboarded, Ports};

async fn quality_app(b: Backend) -> TestApp {
    let mut cfg = local_config(b).await;
    cfg.settings.quality.min_volume = 2;
    cfg.settings.quality.pause_marketing = true;
    kirim_tests::spawn_with(cfg).await
}

async fn account(app: &TestApp, key: &str) -> Value {
    app.http
        .get(app.url("/v1/account"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The tenant's quality once `sent` messages are counted: `sent` is counted when the
/// dispatcher's batch ends (`quality::batched`), which may be just after Meta's webhooks for
/// them were applied.
async fn quality_once_sent(app: &TestApp, key: &str, sent: u64) -> Value {
    let mut q = Value::Null;
    // Up to a minute: a deadline, not a speed assertion.
    for _ in 0..600 {
        q = account(app, key).await["quality"].clone();
        if q["sent_7d"] == sent {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    q
}

async fn send(app: &TestApp, key: &str, to: &str, category: &str) -> reqwest::Response {
    app.http
        .post(app.url("/v1/messages"))
        .bearer_auth(key)
        .json(&json!({"to": to, "template": kirim_tests::template_of(category)}))
        .send()
        .await
        .unwrap()
}

async fn undeliverable_messages_flag_the_tenant_and_pause_its_marketing_only(b: Backend) {
    let app = quality_app(b).await;
    let t = app.onboard(10).await;
    let fresh = account(&app, &t.key).await;
    assert_eq!(
        fresh["quality"],
        json!({"opt_out_rate": 0.0, "undeliverable_rate": 0.0, "sent_7d": 0, "flagged": false})
    );
    for to in ["+60123450001", "+60123460001"] {
        let id = app.send_ok(&t.key, to).await;
        assert_eq!(
            app.wait_status(&t.key, &id, "failed").await["error"]["code"],
            131026
        );
    }
    let q = quality_once_sent(&app, &t.key, 2).await;
    assert_eq!(
        q,
        json!({"opt_out_rate": 0.0, "undeliverable_rate": 1.0, "sent_7d": 2, "flagged": true})
    );
    let before = app.credits(&t.key).await;
    let res = send(&app, &t.key, "+60123451000", "marketing").await;
    assert_eq!(res.status(), 403);
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"]["code"],
        "marketing_paused"
    );
    assert_eq!(app.credits(&t.key).await, before, "nothing debited");
    assert_eq!(
        send(&app, &t.key, "+60123451000", "utility").await.status(),
        202,
        "utility still goes"
    );
}

/// A message whose send Meta answered too late (the dispatcher's timeout: it stays
/// `sending`) and that Meta's statuses then settle was accepted by Meta all the same: it
/// counts in `sent_7d` (the rates' denominator), once, beside one answered in time.
async fn a_message_meta_accepted_after_the_dispatchers_timeout_counts_as_sent(b: Backend) {
    let app = quality_app(b).await;
    let t = app.onboard(10).await;
    let slow = app.send_ok(&t.key, "+60123450005").await;
    app.wait_status(&t.key, &slow, "read").await;
    let quick = app.send_ok(&t.key, "+60123452105").await;
    app.wait_status(&t.key, &quick, "read").await;
    let q = quality_once_sent(&app, &t.key, 2).await;
    assert_eq!(q["sent_7d"], 2, "{q}");
    // Not counted again by its later statuses (delivered, read) or their redeliveries.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(account(&app, &t.key).await["quality"]["sent_7d"], 2);
}

async fn recipients_opting_out_raise_the_opt_out_rate(b: Backend) {
    let app = quality_app(b).await;
    let t = app.onboard(10).await;
    for to in ["+60123452001", "+60123452002"] {
        let id = app.send_ok(&t.key, to).await;
        app.wait_status(&t.key, &id, "read").await;
    }
    assert_eq!(quality_once_sent(&app, &t.key, 2).await["sent_7d"], 2);
    let stop = json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
        "messaging_product": "whatsapp", "metadata": {"display_phone_number": "603", "phone_number_id": t.phone_number_id},
        "messages": [{"from": "60123452001", "id": "wamid.in1", "timestamp": "1700000000", "type": "text", "text": {"body": "STOP"}}]}}]}]});
    assert_eq!(app.post_webhook(&stop).await.status(), 200);
    // The same STOP again (Meta retries) is not a second opt-out.
    assert_eq!(app.post_webhook(&stop).await.status(), 200);
    let q = account(&app, &t.key).await["quality"].clone();
    assert_eq!(q["opt_out_rate"], 0.5, "{q}");
    assert_eq!(q["flagged"], true);
}

/// Meta reported a message undeliverable, then delivered after all (`failed` may be
/// followed by `delivered`): the undeliverable count is taken back, so a tenant is not
/// flagged (nor its marketing paused) for a failure Meta withdrew. It stayed counted.
async fn a_failure_meta_then_reports_delivered_is_no_longer_counted_undeliverable(b: Backend) {
    let app = quality_app(b).await;
    let t = app.onboard(10).await;
    let mut wamids = Vec::new();
    for to in ["+60123450001", "+60123460001"] {
        let id = app.send_ok(&t.key, to).await;
        let m = app.wait_status(&t.key, &id, "failed").await;
        assert_eq!(m["error"]["code"], 131026);
        wamids.push((id, m["wamid"].as_str().expect("its wamid").to_owned()));
    }
    let q = quality_once_sent(&app, &t.key, 2).await;
    assert_eq!(q["undeliverable_rate"], 1.0, "{q}");
    let (id, wamid) = &wamids[0];
    let now = chrono::Utc::now().timestamp();
    let delivered = json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
        "messaging_product": "whatsapp", "metadata": {"display_phone_number": "603", "phone_number_id": t.phone_number_id},
        "statuses": [{"id": wamid, "status": "delivered", "timestamp": now.to_string(), "recipient_id": "60123450001"}]}}]}]});
    assert_eq!(app.post_webhook(&delivered).await.status(), 200);
    app.wait_status(&t.key, id, "delivered").await;
    // Meta delivers the same webhook again: taken back once only.
    assert_eq!(app.post_webhook(&delivered).await.status(), 200);
    let q = account(&app, &t.key).await["quality"].clone();
    assert_eq!(
        q,
        json!({"opt_out_rate": 0.0, "undeliverable_rate": 0.5, "sent_7d": 2, "flagged": true}),
        "one of two still undeliverable"
    );
    let read = json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
        "messaging_product": "whatsapp", "metadata": {"display_phone_number": "603", "phone_number_id": t.phone_number_id},
        "statuses": [{"id": wamids[1].1, "status": "read", "timestamp": now.to_string(), "recipient_id": "60123460001"}]}}]}]});
    assert_eq!(app.post_webhook(&read).await.status(), 200);
    app.wait_status(&t.key, &wamids[1].0, "read").await;
    let q = account(&app, &t.key).await["quality"].clone();
    assert_eq!(q["undeliverable_rate"], 0.0, "{q}");
    assert_eq!(q["flagged"], false, "{q}");
}

/// A failure whose report names an undeliverable code after another is counted by the
/// error the message keeps (the report's first), which is what a later `delivered` reads to
/// take the count back: counted by any of its errors, it stayed counted for good.
async fn an_undeliverable_count_and_its_take_back_read_the_same_error(b: Backend) {
    let mut cfg = local_config(b).await;
    cfg.pollers = 0;
    let app = kirim_tests::spawn_with(cfg).await;
    let t = app.onboard(3).await;
    let id = app.send_ok(&t.key, "+60123450401").await;
    let wamid = format!("wamid.q.{}", ulid::Ulid::new());
    let deps = app.app.deps.clone();
    let mut with_wamid = deps.clone();
    with_wamid.meta = std::sync::Arc::new(crate::callbacks::FixedWamid(wamid.clone()));
    let jobs = deps
        .queue
        .receive(10, std::time::Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(jobs.len(), 1);
    kirim::service::dispatch::handle(&with_wamid, &jobs[0].body).await;
    deps.queue.delete(&jobs[0].receipt).await.unwrap();
    assert_eq!(app.message(&t.key, &id).await["status"], "sent");
    let tenant = kirim::domain::TenantId::parse(&t.tenant_id).unwrap();
    let undeliverable = || async {
        let today = chrono::Utc::now().date_naive();
        deps.quality
            .totals(&tenant, today, today)
            .await
            .unwrap()
            .undeliverable
    };
    let now = chrono::Utc::now().timestamp();
    let status = |st: &str, at: i64, errors: Value| {
        json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp", "metadata": {"display_phone_number": "603", "phone_number_id": t.phone_number_id},
            "statuses": [{"id": wamid, "status": st, "timestamp": at.to_string(), "recipient_id": "60123450401", "errors": errors}]}}]}]})
    };
    let failed = status(
        "failed",
        now,
        json!([{"code": 131000, "title": "Something went wrong"}, {"code": 131026, "title": "Message undeliverable"}]),
    );
    assert_eq!(app.post_webhook(&failed).await.status(), 200);
    let m = app.wait_status(&t.key, &id, "failed").await;
    assert_eq!(m["error"]["code"], 131000, "{m}");
    assert_eq!(
        undeliverable().await,
        0,
        "counted by the error kept: 131000"
    );
    let delivered = status("delivered", now + 1, json!([]));
    assert_eq!(app.post_webhook(&delivered).await.status(), 200);
    app.wait_status(&t.key, &id, "delivered").await;
    assert_eq!(undeliverable().await, 0, "nothing left behind");
}

/// A failure with an undeliverable code that was never counted (written without the
/// webhook's count: the dispatcher's, or a move whose answer was lost and whose retry it
/// refused) is not taken back when Meta then reports the message delivered: the take-back
/// lowered another message's count instead.
async fn a_failure_never_counted_is_not_taken_back_from_another_messages_count(b: Backend) {
    use kirim::domain::{MessageError, MessageId, MessageStatus};
    let mut cfg = local_config(b).await;
    cfg.pollers = 0;
    let app = kirim_tests::spawn_with(cfg).await;
    let t = app.onboard(3).await;
    let id = app.send_ok(&t.key, "+60123450402").await;
    let wamid = format!("wamid.q.{}", ulid::Ulid::new());
    let deps = app.app.deps.clone();
    let mut with_wamid = deps.clone();
    with_wamid.meta = std::sync::Arc::new(crate::callbacks::FixedWamid(wamid.clone()));
    let jobs = deps
        .queue
        .receive(10, std::time::Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(jobs.len(), 1);
    kirim::service::dispatch::handle(&with_wamid, &jobs[0].body).await;
    deps.queue.delete(&jobs[0].receipt).await.unwrap();
    assert_eq!(app.message(&t.key, &id).await["status"], "sent");
    let tenant = kirim::domain::TenantId::parse(&t.tenant_id).unwrap();
    let today = chrono::Utc::now().date_naive();
    let undeliverable = || async {
        deps.quality
            .totals(&tenant, today, today)
            .await
            .unwrap()
            .undeliverable
    };
    // Another message's failure, counted.
    deps.quality
        .bump(&tenant, today, QualityCounter::Undeliverable, None)
        .await
        .unwrap();
    // This one failed 131026 by a write no count followed.
    let uncounted = kirim::ports::StatusChange {
        error: Some(MessageError {
            code: 131026i64.into(),
            title: "Message undeliverable".into(),
        }),
        ..Default::default()
    };
    let message_id = MessageId::parse(&id).unwrap();
    let moved = deps
        .messages
        .transition(
            &tenant,
            &message_id,
            MessageStatus::Failed,
            &uncounted,
            chrono::Utc::now(),
        )
        .await
        .unwrap();
    assert!(matches!(moved, kirim::ports::Transition::Applied(_)));
    assert_eq!(undeliverable().await, 1);
    let at = chrono::Utc::now().timestamp() + 1;
    let delivered = json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
        "messaging_product": "whatsapp", "metadata": {"display_phone_number": "603", "phone_number_id": t.phone_number_id},
        "statuses": [{"id": wamid, "status": "delivered", "timestamp": at.to_string(), "recipient_id": "60123450402"}]}}]}]});
    assert_eq!(app.post_webhook(&delivered).await.status(), 200);
    app.wait_status(&t.key, &id, "delivered").await;
    assert_eq!(
        undeliverable().await,
        1,
        "the other message's failure stays counted"
    );
}

on_both_backends!(
    a_failure_never_counted_is_not_taken_back_from_another_messages_count,
    an_undeliverable_count_and_its_take_back_read_the_same_error,
    undeliverable_messages_flag_the_tenant_and_pause_its_marketing_only,
    a_failure_meta_then_reports_delivered_is_no_longer_counted_undeliverable,
    recipients_opting_out_raise_the_opt_out_rate,
    a_message_meta_accepted_after_the_dispatchers_timeout_counts_as_sent,
);

async fn quality_counters_add_up_concurrently_per_day_and_expire(p: Ports) {
    let t = onboarded(&p, 0).await;
    let today = p.clock.now().date_naive();
    let exp = Some(p.clock.now().timestamp() + 3600);
    let bumps = (0..20).map(|_| p.quality.bump(&t.id, today, QualityCounter::Sent, exp));
    for r in futures::future::join_all(bumps).await {
        r.unwrap();
    }
    p.quality
        .bump(&t.id, today, QualityCounter::OptOut, exp)
        .await
        .unwrap();
    let old_day = today - Duration::days(8);
    p.quality
        .bump(&t.id, old_day, QualityCounter::Undeliverable, exp)
        .await
        .unwrap();
    let week = p
        .quality
        .totals(&t.id, today - Duration::days(6), today)
        .await
        .unwrap();
    assert_eq!(
        week,
        QualityCounts {
            sent: 20,
            opt_outs: 1,
            undeliverable: 0
        },
        "the 8-day-old count is outside the window"
    );
    let other = onboarded(&p, 0).await;
    assert_eq!(
        p.quality.totals(&other.id, old_day, today).await.unwrap(),
        QualityCounts::default()
    );
    p.clock.advance(Duration::hours(2));
    assert_eq!(
        p.quality.totals(&t.id, old_day, today).await.unwrap(),
        QualityCounts::default(),
        "expired counters are invisible"
    );
}

async fn a_dispatcher_batch_counts_its_sent_messages_with_one_write_per_tenant(p: Ports) {
    let t = onboarded(&p, 0).await;
    let u = onboarded(&p, 0).await;
    let today = p.clock.now().date_naive();
    let sent = |id: kirim::domain::TenantId| {
        let p = &p;
        async move { p.quality.totals(&id, today, today).await.unwrap().sent }
    };
    quality::batched(&p, async {
        let counts = (0..5).map(|_| quality::count_sent(&p, &t.id));
        futures::future::join_all(counts).await;
        quality::count_sent(&p, &u.id).await;
        // Held until the batch ends: nothing is written per message.
        assert_eq!((sent(t.id.clone()).await, sent(u.id.clone()).await), (0, 0));
    })
    .await;
    assert_eq!((sent(t.id.clone()).await, sent(u.id.clone()).await), (5, 1));
    // Outside a batch (a broadcast's fan-out, a test): counted at once.
    quality::count_sent(&p, &t.id).await;
    assert_eq!(sent(t.id.clone()).await, 6);
}

/// A count taken back goes down by one, never below zero, only on its own day and counter,
/// and a day never counted is not made.
async fn a_count_taken_back_goes_down_by_one_and_never_below_zero(p: Ports) {
    let t = onboarded(&p, 0).await;
    let today = p.clock.now().date_naive();
    let yesterday = today - Duration::days(1);
    let exp = Some(p.clock.now().timestamp() + 3600);
    let u = QualityCounter::Undeliverable;
    for _ in 0..2 {
        p.quality.bump(&t.id, today, u, exp).await.unwrap();
    }
    p.quality
        .bump(&t.id, today, QualityCounter::Sent, exp)
        .await
        .unwrap();
    p.quality.take_back(&t.id, today, u).await.unwrap();
    let day = |d| {
        let p = &p;
        let t = &t;
        async move { p.quality.totals(&t.id, d, d).await.unwrap() }
    };
    assert_eq!(
        day(today).await,
        QualityCounts {
            sent: 1,
            opt_outs: 0,
            undeliverable: 1
        }
    );
    for _ in 0..3 {
        p.quality.take_back(&t.id, today, u).await.unwrap();
    }
    assert_eq!(day(today).await.undeliverable, 0, "never below zero");
    assert_eq!(day(today).await.sent, 1, "another counter untouched");
    p.quality.take_back(&t.id, yesterday, u).await.unwrap();
    assert_eq!(day(yesterday).await, QualityCounts::default());
    p.quality.bump(&t.id, yesterday, u, exp).await.unwrap();
    assert_eq!(
        day(yesterday).await.undeliverable,
        1,
        "a day never counted was not made negative"
    );
}

contract!(
    a_count_taken_back_goes_down_by_one_and_never_below_zero,
    quality_counters_add_up_concurrently_per_day_and_expire,
    a_dispatcher_batch_counts_its_sent_messages_with_one_write_per_tenant,
);
