//! Broadcasts end to end on both backends: JSON and CSV uploads, validation, duplicates,
//! opt-outs, all-or-nothing debits, the fan-out, counts, and the list's deletion.

use std::time::Duration;

use kirim::config::Backend;
use kirim_tests::{local_config, TestApp};
use serde_json::{json, Value};

async fn app_with(b: Backend, sandbox_rate: u32) -> TestApp {
    let mut cfg = local_config(b).await;
    cfg.sandbox_rate_limit = sandbox_rate;
    kirim_tests::spawn_with(cfg).await
}

async fn post_json(app: &TestApp, key: &str, body: Value) -> (u16, Value) {
    let res = app
        .http
        .post(app.url("/v1/broadcasts"))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap();
    (
        res.status().as_u16(),
        res.json().await.unwrap_or(Value::Null),
    )
}

async fn post_csv(app: &TestApp, key: &str, query: &str, csv: String) -> (u16, Value) {
    let res = app
        .http
        .post(app.url(&format!("/v1/broadcasts?{query}")))
        .bearer_auth(key)
        .header("content-type", "text/csv")
        .body(csv)
        .send()
        .await
        .unwrap();
    (
        res.status().as_u16(),
        res.json().await.unwrap_or(Value::Null),
    )
}

/// Polls the broadcast until `want` messages are `read` and it is `completed` (a deadline,
/// not a speed check). Both: its messages are queued, so may be sent and read, before its
/// fan-out's last write closes it (`status`, `enqueued`), and a view between the two says
/// `sending`.
async fn wait_read(app: &TestApp, key: &str, id: &str, want: u64) -> Value {
    let mut last = Value::Null;
    for _ in 0..300 {
        last = app
            .http
            .get(app.url(&format!("/v1/broadcasts/{id}")))
            .bearer_auth(key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if last["counts"]["read"].as_u64() == Some(want) && last["status"] == "completed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    last
}

fn template() -> Value {
    json!({"name": "promo_sale", "language": "en_US", "category": "marketing",
           "components": [{"type": "body", "parameters": [{"type": "text", "text": "RAYA-30"}]}]})
}

async fn a_json_broadcast_skips_invalid_duplicate_and_opted_out_numbers_and_pays_for_the_rest(
    b: Backend,
) {
    let app = app_with(b, 80).await;
    let t = app.onboard(10).await;
    let res = app
        .http
        .put(app.url("/v1/opt-outs/+60123453003"))
        .bearer_auth(&t.key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let recipients = json!([
        "+60123453001",
        "+60123453002",
        "+60123453001",
        "0123",
        "+60123453003",
        "not a number",
        "+60123453004",
        // One Mexican user twice: as dialled and as WhatsApp's id writes it.
        "+525512343005",
        "+5215512343005"
    ]);
    let (s, body) = post_json(
        &app,
        &t.key,
        json!({"template": template(), "recipients": recipients}),
    )
    .await;
    assert_eq!(s, 202, "{body}");
    assert_eq!(
        (
            body["accepted"].as_u64(),
            body["duplicates"].as_u64(),
            body["skipped_opted_out"].as_u64(),
            body["invalid_count"].as_u64()
        ),
        (Some(4), Some(2), Some(1), Some(2)),
        "{body}"
    );
    assert_eq!(body["invalid"], json!(["0123", "not a number"]));
    assert_eq!(
        app.credits(&t.key).await,
        6,
        "exactly the accepted ones are paid for"
    );
    let id = body["id"].as_str().unwrap().to_owned();
    let view = wait_read(&app, &t.key, &id, 4).await;
    assert_eq!(
        view["counts"],
        json!({"accepted": 0, "sending": 0, "sent": 0, "delivered": 0, "read": 4,
               "failed": 0, "cancelled": 0}),
        "{view}"
    );
    assert_eq!(view["status"], "completed");
    assert_eq!(view["total"], 4);
    assert_eq!(view["template"]["name"], "promo_sale");
    // Each recipient got one request with the template's parameters; none for the others.
    for digits in ["60123453001", "60123453002", "60123453004"] {
        let reqs = app.sandbox_requests_to(digits);
        assert_eq!(reqs.len(), 1, "{digits}");
        assert_eq!(
            reqs[0].request["template"]["components"][0]["parameters"][0]["text"],
            "RAYA-30"
        );
    }
    assert!(
        app.sandbox_requests_to("60123453003").is_empty(),
        "opted out: never sent"
    );
    let tid = kirim::domain::TenantId::parse(&t.tenant_id).unwrap();
    assert_eq!(
        app.app
            .deps
            .broadcasts
            .broadcast_recipients(&tid, &id)
            .await
            .unwrap(),
        None,
        "the uploaded list is deleted"
    );
    let listed: Value = app
        .http
        .get(app.url("/v1/messages"))
        .bearer_auth(&t.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(listed["messages"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["broadcast_id"] == id.as_str()));
    assert!(
        !listed.to_string().contains("RAYA-30"),
        "no content in the message records"
    );
}

async fn a_broadcast_the_balance_cannot_cover_is_refused_whole(b: Backend) {
    let app = app_with(b, 80).await;
    let t = app.onboard(2).await;
    let (s, body) = post_json(&app, &t.key, json!({"template": template(), "recipients": ["+60123454001", "+60123454002", "+60123454003"]})).await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (402, Some("insufficient_credits"))
    );
    assert_eq!(app.credits(&t.key).await, 2, "nothing debited");
    let listed: Value = app
        .http
        .get(app.url("/v1/messages"))
        .bearer_auth(&t.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["messages"], json!([]));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(app.app.sandbox.received().is_empty(), "nothing sent");
}

async fn bad_broadcast_uploads_answer_400_and_change_nothing(b: Backend) {
    let app = app_with(b, 80).await;
    let t = app.onboard(5).await;
    // A CSV broadcast carries no parameters: the sandbox's parameterless template, approved.
    app.sandbox_template(
        "1000001",
        "pending_notice",
        "en_US",
        json!({"status": "approved"}),
    )
    .await;
    let q = "template_name=pending_notice&template_language=en_US&template_category=utility";
    let cases = vec![
        post_csv(&app, &t.key, q, "name,number\nA,+60123455001\n".into()).await,
        post_csv(
            &app,
            &t.key,
            "template_name=raya_sale",
            "phone\n+60123455001\n".into(),
        )
        .await,
        post_csv(
            &app,
            &t.key,
            &format!("{q}&x=1"),
            "phone\n+60123455001\n".into(),
        )
        .await,
        post_csv(
            &app,
            &t.key,
            "template_name=pending_notice&template_language=en_US&template_category=spam",
            "phone\n+60123455001\n".into(),
        )
        .await,
        post_csv(&app, &t.key, q, "phone\nnope\n0123\n".into()).await,
        post_csv(
            &app,
            &t.key,
            &format!("{q}&template_components=%7Bnot%20a%20list%7D"),
            "phone\n+60123455001\n".into(),
        )
        .await,
        post_csv(
            &app,
            &t.key,
            q,
            format!(
                "phone\n{}",
                (0..10_001)
                    .map(|i| format!("+6012{i:07}\n"))
                    .collect::<String>()
            ),
        )
        .await,
        post_json(
            &app,
            &t.key,
            json!({"template": template(), "recipients": ["+60123455001"], "extra": true}),
        )
        .await,
        post_json(
            &app,
            &t.key,
            json!({"template": template(), "recipients": "+60123455001"}),
        )
        .await,
    ];
    for (i, (s, body)) in cases.into_iter().enumerate() {
        assert_eq!(
            (s, body["error"]["code"].as_str()),
            (400, Some("invalid_request")),
            "case {i}: {body}"
        );
    }
    assert_eq!(app.credits(&t.key).await, 5);
}

/// A CSV upload carries the template's components in the query (`template_components`,
/// a URL-encoded JSON array, as `template.components` in a JSON body): a template whose
/// body takes a parameter is sent with it.
async fn a_csv_broadcast_sends_a_template_with_parameters_from_the_query(b: Backend) {
    let app = app_with(b, 80).await;
    let t = app.onboard(5).await;
    let components = json!([{"type": "body", "parameters": [{"type": "text", "text": "CSV-7"}]}]);
    let q = format!(
        "template_name=promo_sale&template_language=en_US&template_components={}",
        url_encode(&components.to_string())
    );
    let (s, body) = post_csv(
        &app,
        &t.key,
        &q,
        "phone\n+60123455101\n+60123455102\n".into(),
    )
    .await;
    assert_eq!(s, 202, "{body}");
    assert_eq!(body["accepted"], 2);
    let id = body["id"].as_str().unwrap_or_default().to_owned();
    wait_read(&app, &t.key, &id, 2).await;
    for digits in ["60123455101", "60123455102"] {
        let reqs = app.sandbox_requests_to(digits);
        assert_eq!(reqs.len(), 1, "{digits}");
        assert_eq!(
            reqs[0].request["template"]["components"][0]["parameters"][0]["text"],
            "CSV-7"
        );
    }
    // Without them, the template's parameter count is not met: refused, nothing paid.
    let (s, body) = post_csv(
        &app,
        &t.key,
        "template_name=promo_sale&template_language=en_US",
        "phone\n+60123455103\n".into(),
    )
    .await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (422, Some("template_parameters_mismatch")),
        "{body}"
    );
    assert_eq!(app.credits(&t.key).await, 3);
}

/// A CSV upload's numbers may be written as people write them (spaces, dashes, dots,
/// brackets: a spreadsheet's column as it was typed): they are sent; what is still no
/// number is counted invalid, and echoed without those characters.
async fn a_csv_uploads_numbers_may_be_written_as_people_write_them(b: Backend) {
    let app = app_with(b, 80).await;
    let t = app.onboard(5).await;
    app.sandbox_template(
        "1000001",
        "pending_notice",
        "en_US",
        json!({"status": "approved"}),
    )
    .await;
    let q = "template_name=pending_notice&template_language=en_US&template_category=utility";
    // A spreadsheet's decimal is no number with dots: `+60123455204.0` is not read as
    // `+601234552040`, another (valid) number that would be sent and charged.
    let csv =
        "phone,name\n\"+60 12-345 5201\",A\n(+60) 12.345.5202,B\n+60123455203,C\n\"01 23\",D\n\
               +60123455204.0,E\n6.0123455205E+10,F\n";
    let (s, body) = post_csv(&app, &t.key, q, csv.into()).await;
    assert_eq!(s, 202, "{body}");
    assert_eq!(body["accepted"], 3, "{body}");
    assert_eq!(body["invalid_count"], 3, "{body}");
    assert_eq!(
        body["invalid"],
        json!(["0123", "+60123455204.0", "6.0123455205E+10"]),
        "{body}"
    );
    assert_eq!(app.credits(&t.key).await, 2);
}

/// A component nested deeper than a queue job can carry (a CSV upload's query holds it
/// two levels down, its job four) is refused with the request, nothing paid: accepted, its
/// fan-out job could never be read (parked, the campaign charged for a week), nor could
/// the send job of a single message that nested it so.
async fn a_template_component_nested_too_deep_is_refused_before_anything_is_paid(b: Backend) {
    let app = app_with(b, 80).await;
    let t = app.onboard(5).await;
    let pad = format!("{}{}", "[".repeat(124), "]".repeat(124));
    let deep =
        format!(r#"[{{"type":"body","parameters":[{{"type":"text","text":"x"}}],"pad":{pad}}}]"#);
    let q = format!(
        "template_name=promo_sale&template_language=en_US&template_components={}",
        url_encode(&deep)
    );
    let (s, body) = post_csv(&app, &t.key, &q, "phone\n+60123455111\n".into()).await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (400, Some("invalid_request")),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("template.components[0]")),
        "{body}"
    );
    // A JSON send with a component nested past the bound.
    let components: Value = serde_json::from_str(&format!(
        r#"[{{"type":"body","parameters":[{{"type":"text","text":"x"}}],"pad":{}{}}}]"#,
        "[".repeat(20),
        "]".repeat(20)
    ))
    .unwrap();
    let (s, body) = post_json(
        &app,
        &t.key,
        json!({"template": {"name": "promo_sale", "language": "en_US", "components": components},
               "recipients": ["+60123455112"]}),
    )
    .await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (400, Some("invalid_request")),
        "{body}"
    );
    assert_eq!(app.credits(&t.key).await, 5, "nothing paid");
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn a_csv_broadcast_completes_with_every_recipient_read(b: Backend, n: usize) {
    // The rate limiter is not this test's subject: let the sandbox take the burst.
    let app = app_with(b, 100_000).await;
    let t = app.onboard(n as i64 + 5).await;
    // A CSV broadcast carries no parameters: the sandbox's parameterless template, approved.
    app.sandbox_template(
        "1000001",
        "pending_notice",
        "en_US",
        json!({"status": "approved"}),
    )
    .await;
    let csv = format!(
        "name,phone\n{}",
        (0..n)
            .map(|i| format!("Customer {i},+6013{i:06}9\n")) // ends in 9: never a special sandbox number
            .collect::<String>()
    );
    let (s, body) = post_csv(
        &app,
        &t.key,
        "template_name=pending_notice&template_language=en_US",
        csv,
    )
    .await;
    assert_eq!(s, 202, "{body}");
    assert_eq!(body["accepted"].as_u64(), Some(n as u64));
    assert_eq!(app.credits(&t.key).await, 5);
    let id = body["id"].as_str().unwrap().to_owned();
    let view = wait_read(&app, &t.key, &id, n as u64).await;
    assert_eq!(view["counts"]["read"], json!(n), "{view}");
    assert_eq!(view["counts"]["failed"], json!(0), "{view}");
    assert_eq!(view["enqueued"].as_u64(), Some(n as u64));
    assert_eq!(
        app.app.sandbox.received().len(),
        n,
        "one request per recipient, none twice"
    );
}

/// A campaign cancelled while its recipients were being queued: the rest are recorded
/// `cancelled` and refunded by its fan-out, 97 to a write, with no queue job each on the
/// queue every tenant's sends share (10,000 jobs ahead of every other tenant's messages,
/// and as many refund writes on one balance, before). A recipient that a fan-out which did
/// not know of the cancel recorded (whose job may never have been queued: its slice's
/// queue send failed) is cancelled with its own refund, out of that write's. The campaign
/// reads as the dispatcher would have left it: cancelled, every recipient counted and
/// listed in `recipients.csv`.
async fn a_cancelled_campaigns_unqueued_recipients_are_closed_without_a_queue_job_each(b: Backend) {
    use kirim::ports::{BroadcastControl, BroadcastStatus, LedgerEntry, LedgerKind};
    use kirim::service::broadcasts;
    let app = kirim_tests::spawn_app(b).await;
    let t = app.onboard(1000).await;
    let tenant = kirim::domain::TenantId::parse(&t.tenant_id).unwrap();
    let mut deps = app.app.deps.clone();
    let queue = Recording::new(deps.queue.clone());
    deps.queue = queue.clone();
    let now = chrono::Utc::now();
    let n = 150;
    let phones: Vec<kirim::domain::PhoneNumber> = (0..n)
        .map(|i| kirim::domain::PhoneNumber::parse(&format!("+601234{i:04}7")).unwrap())
        .collect();
    let b = kirim::ports::Broadcast {
        accepted: n,
        ..super::contract_broadcasts::running_broadcast(&tenant, now)
    };
    let debit = LedgerEntry {
        id: kirim::domain::new_id(),
        tenant_id: tenant.clone(),
        amount: -(n as i64),
        kind: LedgerKind::Debit,
        reference: Some(format!("broadcast {}", b.id)),
        message_id: None,
        at: now,
        expires_at: None,
    };
    deps.broadcasts
        .create_broadcast(&b, &phones, &debit)
        .await
        .unwrap();
    let before = app.credits(&t.key).await;
    // Recipient 120 was recorded by a fan-out that had not seen the cancel yet, and its
    // job never queued (that fan-out's queue send failed).
    let straggler = broadcasts::message_id(&b, 120);
    let mut rec = kirim::domain::MessageRecord {
        id: straggler.clone(),
        to: phones[120].clone(),
        broadcast_id: Some(b.id.clone()),
        created_at: b.created_at,
        ..super::contract::message_for(&tenant, now).0
    };
    rec.price = 1;
    assert!(deps
        .broadcasts
        .insert_broadcast_message(&rec)
        .await
        .unwrap());
    assert!(deps
        .broadcasts
        .set_broadcast_control(
            &tenant,
            &b.id,
            &[None],
            Some(BroadcastControl::Cancelled),
            now
        )
        .await
        .unwrap());
    let job = kirim::service::jobs::FanoutJob {
        tenant_id: tenant.clone(),
        broadcast_id: b.id.clone(),
        content: kirim::domain::Content::Template {
            template: b.template.clone(),
            components: vec![],
        },
        request_id: None,
        send_at: None,
        paced_from: None,
        token: b.fanout_token.clone(),
        resent: false,
    };
    broadcasts::fan_out_in_slices(&deps, &job, 1000)
        .await
        .unwrap();
    assert!(queue.take().is_empty(), "no queue job for any of them");
    assert_eq!(
        app.credits(&t.key).await,
        before + n as i64,
        "every one refunded, once"
    );
    let closed = deps
        .broadcasts
        .get_broadcast(&tenant, &b.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (closed.status, closed.enqueued),
        (BroadcastStatus::Enqueued, n)
    );
    assert_eq!(
        deps.broadcasts
            .broadcast_recipients(&tenant, &b.id)
            .await
            .unwrap(),
        None,
        "the list deleted, as at any fan-out's end"
    );
    let client = reqwest::Client::new();
    let view: Value = client
        .get(app.url(&format!("/v1/broadcasts/{}", b.id)))
        .bearer_auth(&t.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(view["status"], "cancelled", "{view}");
    assert_eq!(view["counts"]["cancelled"], n, "{view}");
    assert_eq!(view["counts"]["accepted"], 0, "{view}");
    assert_eq!(
        view["enqueued"], 1,
        "only the one a fan-out recorded counts as queued, not those closed unqueued: {view}"
    );
    let csv = client
        .get(app.url(&format!("/v1/broadcasts/{}/recipients.csv", b.id)))
        .bearer_auth(&t.key)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let rows: Vec<&str> = csv.lines().skip(1).collect();
    assert_eq!(rows.len(), n, "one row per recipient");
    assert_eq!(
        rows.iter()
            .filter(|r| r.split(',').nth(1) == Some("cancelled"))
            .count(),
        n
    );
    let m = app.message(&t.key, straggler.as_str()).await;
    assert_eq!(m["status"], "cancelled", "{m}");
    let m = app
        .message(&t.key, broadcasts::message_id(&b, 7).as_str())
        .await;
    assert_eq!(m["status"], "cancelled", "{m}");
    assert_eq!(m["error"]["code"], "cancelled", "{m}");
    // The job again (a duplicate delivery): nothing more.
    broadcasts::fan_out_in_slices(&deps, &job, 1000)
        .await
        .unwrap();
    assert!(queue.take().is_empty());
    assert_eq!(app.credits(&t.key).await, before + n as i64);
}

/// The fan-out jobs and the dispatch jobs among what a queue recorded.
fn recorded_jobs(
    queue: &Recording,
) -> (
    Vec<kirim::service::jobs::FanoutJob>,
    Vec<kirim::service::jobs::DispatchJob>,
) {
    use kirim::service::jobs::QueueJob;
    let (mut fan_outs, mut sends) = (Vec::new(), Vec::new());
    for (body, _) in queue.take() {
        match QueueJob::parse(&body.to_string()) {
            Some(QueueJob::BroadcastFanout(f)) => fan_outs.push(f),
            Some(QueueJob::Send(d)) => sends.push(d),
            other => panic!("{other:?}"),
        }
    }
    (fan_outs, sends)
}

/// A campaign whose number is removed from the account after its first slice was queued:
/// the rest are closed `failed` (`sender_removed`) and refunded by its fan-out, a batch to
/// a write, not queued as one dispatch job each to fail and be refunded one by one; one
/// whose number Meta held before it started closes all of them `sender_held` (a failure a
/// retry may fix).
async fn a_campaign_whose_number_was_removed_mid_fan_out_closes_the_rest_refunded_without_a_job_each(
    b: Backend,
) {
    use kirim::ports::{BroadcastStatus, LedgerKind};
    use kirim::service::{broadcasts, numbers, send::TemplateIn};
    let app = kirim_tests::spawn_app(b).await;
    let mut deps = app.app.deps.clone();
    let queue = Recording::new(std::sync::Arc::new(
        kirim::adapters::memory::MemoryQueue::new(Duration::from_secs(360), 10),
    ));
    deps.queue = queue.clone();
    let first = 300_000 + kirim_tests::rand_u32() % 600_000;
    let (tenant, _) = promo_tenant(&deps, &first.to_string(), 60).await;
    let second = (first + 1).to_string();
    numbers::add(
        &deps,
        &tenant.id,
        serde_json::from_value(json!({"phone_number_id": second, "waba_id": "1"})).unwrap(),
    )
    .await
    .unwrap();
    let template = || -> TemplateIn {
        serde_json::from_value(json!({"name": "promo", "language": "en"})).unwrap()
    };
    let recipients: Vec<String> = (0..30).map(|i| format!("+601235{i:04}3")).collect();
    let accepted = broadcasts::create(
        &deps,
        &tenant.id,
        template(),
        recipients.clone(),
        Some(second.clone()),
    )
    .await
    .unwrap();
    let credits = || async {
        deps.tenants
            .get_tenant(&tenant.id)
            .await
            .unwrap()
            .unwrap()
            .credits
    };
    let (mut fan_outs, _) = recorded_jobs(&queue);
    broadcasts::fan_out_in_slices(&deps, &fan_outs.remove(0), 10)
        .await
        .unwrap();
    let (mut fan_outs, sends) = recorded_jobs(&queue);
    assert_eq!(sends.len(), 10, "the first slice queued");
    numbers::remove(&deps, &tenant.id, &second).await.unwrap();
    let before = credits().await;
    let refunds_before = deps
        .ledger
        .entries(&tenant.id)
        .await
        .unwrap()
        .iter()
        .filter(|e| e.kind == LedgerKind::Refund)
        .count();
    let mut runs = 0;
    while let Some(job) = fan_outs.pop() {
        broadcasts::fan_out_in_slices(&deps, &job, 10)
            .await
            .unwrap();
        let (next, sends) = recorded_jobs(&queue);
        assert!(sends.is_empty(), "no dispatch job for the rest");
        fan_outs.extend(next);
        runs += 1;
        assert!(runs < 10, "the fan-out ends");
    }
    assert_eq!(credits().await, before + 20, "the 20 not queued refunded");
    let refunds = deps
        .ledger
        .entries(&tenant.id)
        .await
        .unwrap()
        .iter()
        .filter(|e| e.kind == LedgerKind::Refund)
        .count()
        - refunds_before;
    assert_eq!(
        refunds, 2,
        "one refund entry a slice (of 10), not one a recipient"
    );
    let b = deps
        .broadcasts
        .get_broadcast(&tenant.id, &accepted.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((b.status, b.enqueued), (BroadcastStatus::Enqueued, 30));
    let view = broadcasts::view(&deps, &tenant.id, &accepted.id)
        .await
        .unwrap();
    assert_eq!(view.counts.get("failed"), Some(&20), "{view:?}");
    assert_eq!(view.counts.get("accepted"), Some(&10), "{view:?}");
    assert_eq!(view.failures[0].code.to_string(), "sender_removed");
    assert_eq!(
        (view.total, view.enqueued),
        (30, 10),
        "`enqueued` counts the recipients queued, not those closed unqueued"
    );

    // The default number held by Meta before a campaign from it started: every recipient
    // closed `sender_held`, refunded, retryable.
    let accepted = broadcasts::create(&deps, &tenant.id, template(), recipients, None)
        .await
        .unwrap();
    let held = deps.tenants.get_tenant(&tenant.id).await.unwrap().unwrap();
    numbers::hold_for_meta(
        &deps,
        &held,
        &held.phone_number_id,
        (131048, "Spam rate limit hit"),
        "dispatcher",
        chrono::Utc::now(),
    )
    .await;
    let before = credits().await;
    let (mut fan_outs, _) = recorded_jobs(&queue);
    let mut runs = 0;
    while let Some(job) = fan_outs.pop() {
        broadcasts::fan_out_in_slices(&deps, &job, 10)
            .await
            .unwrap();
        let (next, sends) = recorded_jobs(&queue);
        assert!(sends.is_empty(), "no dispatch job from a held number");
        fan_outs.extend(next);
        runs += 1;
        assert!(runs < 10, "the fan-out ends");
    }
    assert_eq!(credits().await, before + 30);
    let view = broadcasts::view(&deps, &tenant.id, &accepted.id)
        .await
        .unwrap();
    assert_eq!(view.counts.get("failed"), Some(&30), "{view:?}");
    assert_eq!(view.failures[0].code.to_string(), "sender_held");
    assert_eq!(view.enqueued, 0, "none queued");
    assert!(broadcasts::retryable(&view.failures[0].code));
}

/// A slice is closed failed only on what the store says, not on the warm cache's copy: a
/// number resumed by another process a moment ago, which this one still remembers held,
/// sends the campaign's rest (closing it cannot be undone).
async fn a_campaign_is_not_failed_for_a_hold_a_warm_copy_remembers_after_its_number_was_resumed(
    b: Backend,
) {
    use kirim::service::{broadcasts, numbers, send::TemplateIn};
    // A process with the warm read cache (5 s), and the store itself as another process.
    let (mut deps, _, _clock) = crate::caches::two_processes(b).await;
    let queue = Recording::new(std::sync::Arc::new(
        kirim::adapters::memory::MemoryQueue::new(Duration::from_secs(360), 10),
    ));
    deps.queue = queue.clone();
    let first = 300_000 + kirim_tests::rand_u32() % 600_000;
    let (tenant, _) = promo_tenant(&deps, &first.to_string(), 60).await;
    let second = (first + 1).to_string();
    numbers::add(
        &deps,
        &tenant.id,
        serde_json::from_value(json!({"phone_number_id": second, "waba_id": "1"})).unwrap(),
    )
    .await
    .unwrap();
    let template: TemplateIn =
        serde_json::from_value(json!({"name": "promo", "language": "en"})).unwrap();
    let recipients: Vec<String> = (0..30).map(|i| format!("+601236{i:04}3")).collect();
    let accepted = broadcasts::create(
        &deps,
        &tenant.id,
        template,
        recipients,
        Some(second.clone()),
    )
    .await
    .unwrap();
    let (mut fan_outs, _) = recorded_jobs(&queue);
    broadcasts::fan_out_in_slices(&deps, &fan_outs.remove(0), 10)
        .await
        .unwrap();
    let (mut fan_outs, sends) = recorded_jobs(&queue);
    assert_eq!(sends.len(), 10, "the first slice queued");
    // Meta holds the number; this process reads it held (and keeps that copy).
    let t = deps.tenants.get_tenant(&tenant.id).await.unwrap().unwrap();
    numbers::hold_for_meta(
        &deps,
        &t,
        &second,
        (131048, "Spam rate limit hit"),
        "dispatcher",
        chrono::Utc::now(),
    )
    .await;
    let held = |d: kirim::service::Deps| {
        let (t, second) = (t.clone(), second.clone());
        async move {
            numbers::sender(&d, &t, Some(&second))
                .await
                .map(|n| n.hold.is_some())
        }
    };
    assert!(matches!(held(deps.clone()).await, Ok(true)));
    // Another process (the store itself) resumes it; this one still remembers the hold.
    numbers::resume(&deps.uncached(), &t, &second)
        .await
        .unwrap();
    assert!(matches!(held(deps.clone()).await, Ok(true)), "a warm copy");
    assert!(matches!(held(deps.uncached()).await, Ok(false)));
    let mut sent = 0;
    let mut runs = 0;
    while let Some(job) = fan_outs.pop() {
        broadcasts::fan_out_in_slices(&deps, &job, 10)
            .await
            .unwrap();
        let (next, sends) = recorded_jobs(&queue);
        sent += sends.len();
        fan_outs.extend(next);
        runs += 1;
        assert!(runs < 10, "the fan-out ends");
    }
    assert_eq!(sent, 20, "the rest queued, not closed sender_held");
    let view = broadcasts::view(&deps, &tenant.id, &accepted.id)
        .await
        .unwrap();
    assert_eq!(
        view.counts.get("failed").copied().unwrap_or(0),
        0,
        "{view:?}"
    );
}

/// `retry-failed` decides "every message is settled" on a consistent walk of the
/// campaign's messages: a message that an eventually consistent page would miss (recorded,
/// or given back for another try, a moment before) keeps the campaign "still sending"
/// (`409`), rather than letting its one retry through without it (that message, failing
/// later for a reason a retry may fix, could then never be retried).
async fn a_retry_of_failures_sees_every_unsettled_message_even_when_a_lagging_walk_would_miss_it(
    b: Backend,
) {
    use kirim::service::{broadcasts, errors::ServiceError, send::TemplateIn};
    let app = kirim_tests::spawn_app(b).await;
    let mut deps = app.app.deps.clone();
    deps.queue = std::sync::Arc::new(kirim::adapters::memory::MemoryQueue::new(
        Duration::from_secs(360),
        10,
    ));
    let number = 300_000 + kirim_tests::rand_u32() % 600_000;
    let (tenant, _) = promo_tenant(&deps, &number.to_string(), 10).await;
    let template: TemplateIn =
        serde_json::from_value(json!({"name": "promo", "language": "en"})).unwrap();
    let accepted = broadcasts::create(
        &deps,
        &tenant.id,
        template,
        vec!["+60123570013".into(), "+60123570023".into()],
        None,
    )
    .await
    .unwrap();
    let fan_out = next_fan_out(&deps).await;
    broadcasts::fan_out_in_slices(&deps, &fan_out, 10)
        .await
        .unwrap();
    let bc = deps
        .broadcasts
        .get_broadcast(&tenant.id, &accepted.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(bc.status, kirim::ports::BroadcastStatus::Enqueued);
    // The first failed for a reason a retry may fix; the second is still `accepted` (its
    // job not run yet).
    let failed = deps
        .messages
        .fail_and_refund(
            &tenant.id,
            &broadcasts::message_id(&bc, 0),
            kirim::domain::MessageStatus::Accepted,
            &kirim::ports::StatusChange {
                error: Some(kirim::domain::MessageError {
                    code: "meta_unavailable".into(),
                    title: "Meta did not answer".into(),
                }),
                ..Default::default()
            },
            chrono::Utc::now(),
            None,
        )
        .await
        .unwrap();
    assert!(matches!(failed, kirim::ports::Transition::Applied(_)));
    deps.broadcasts = std::sync::Arc::new(LostClaimAnswer {
        inner: deps.broadcasts.clone(),
        once: std::sync::atomic::AtomicBool::new(false),
        pages_read: Default::default(),
        pages_readable: usize::MAX,
        lost_moves: false,
        keys_missed: Default::default(),
        tallies: Default::default(),
        pause_on_progress: false,
        lagging_walk: true,
    });
    let retried = broadcasts::retry_failed(&deps, &tenant.id, &accepted.id, vec![], None).await;
    assert!(
        matches!(&retried, Err(ServiceError::Conflict(m)) if m.contains("still sending")),
        "{retried:?}"
    );
}

/// A campaign recipient Meta refuses is refunded with a ledger entry naming both its
/// message and its campaign (`broadcast {id}: …`): the 7-year ledger ties each refund to the
/// campaign's one debit after the messages and the campaign (2 years) are gone.
async fn a_campaign_recipients_refund_names_its_campaign_on_the_ledger(b: Backend) {
    let app = app_with(b, 80).await;
    let t = app.onboard(5).await;
    // 0007: Meta answers 132001 (a permanent refusal): failed, refunded.
    let (s, body) = post_json(
        &app,
        &t.key,
        json!({"template": template(), "recipients": ["+60123450007"]}),
    )
    .await;
    assert_eq!(s, 202, "{body}");
    let broadcast = body["id"].as_str().unwrap().to_owned();
    let tenant = kirim::domain::TenantId::from_trusted(t.tenant_id.clone());
    let mut refund = None;
    // Up to a minute: a deadline, not a speed assertion (through the fan-out, the queue
    // pollers and the sandbox).
    for _ in 0..600 {
        let entries = app.app.deps.ledger.entries(&tenant).await.unwrap();
        refund = entries
            .into_iter()
            .find(|e| e.kind == kirim::ports::LedgerKind::Refund);
        if refund.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refund = refund.expect("the refused recipient was refunded");
    assert!(refund.message_id.is_some(), "{refund:?}");
    assert_eq!(
        refund.reference.as_deref(),
        Some(format!("broadcast {broadcast}: message not accepted by meta").as_str()),
        "{refund:?}"
    );
}

/// A broadcast whose valid numbers have all opted out is accepted (`202`, API.md's counts
/// say what happened), debits nothing and completes with nothing sent; one with no valid
/// number at all is a bad request that writes nothing.
async fn a_broadcast_to_numbers_that_all_opted_out_is_accepted_with_none_to_send(b: Backend) {
    let app = app_with(b, 80).await;
    let t = app.onboard(0).await;
    for phone in ["+60123456101", "+60123456102"] {
        let res = app
            .http
            .put(app.url(&format!("/v1/opt-outs/{phone}")))
            .bearer_auth(&t.key)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }
    let (s, body) = post_json(
        &app,
        &t.key,
        json!({"template": template(),
               "recipients": ["+60123456101", "+60123456102", "0123"]}),
    )
    .await;
    assert_eq!(s, 202, "{body}");
    assert_eq!(
        (
            body["accepted"].as_u64(),
            body["skipped_opted_out"].as_u64(),
            body["invalid_count"].as_u64()
        ),
        (Some(0), Some(2), Some(1)),
        "{body}"
    );
    assert_eq!(
        app.credits(&t.key).await,
        0,
        "nothing debited, from an empty balance"
    );
    let id = body["id"].as_str().unwrap().to_owned();
    let mut view = Value::Null;
    for _ in 0..300 {
        view = app
            .http
            .get(app.url(&format!("/v1/broadcasts/{id}")))
            .bearer_auth(&t.key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if view["status"] == "completed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(view["status"], "completed", "{view}");
    assert_eq!(
        (view["total"].as_u64(), view["skipped_opted_out"].as_u64()),
        (Some(0), Some(2))
    );
    assert!(app.sandbox_requests_to("60123456101").is_empty());
    // No valid number at all: 400, nothing written.
    let (s, body) = post_json(
        &app,
        &t.key,
        json!({"template": template(), "recipients": ["0123", "nope"]}),
    )
    .await;
    assert_eq!(s, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_request");
    let listed: Value = app
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
        listed["broadcasts"].as_array().map(Vec::len),
        Some(1),
        "{listed}"
    );
}

mod memory_backend {
    use kirim::config::Backend::Memory;
    #[tokio::test]
    async fn a_broadcast_to_numbers_that_all_opted_out_is_accepted_with_none_to_send() {
        super::a_broadcast_to_numbers_that_all_opted_out_is_accepted_with_none_to_send(Memory).await
    }
    #[tokio::test]
    async fn a_campaign_recipients_refund_names_its_campaign_on_the_ledger() {
        super::a_campaign_recipients_refund_names_its_campaign_on_the_ledger(Memory).await
    }
    #[tokio::test]
    async fn a_json_broadcast_skips_invalid_duplicate_and_opted_out_numbers_and_pays_for_the_rest()
    {
        super::a_json_broadcast_skips_invalid_duplicate_and_opted_out_numbers_and_pays_for_the_rest(
            Memory,
        )
        .await
    }
    #[tokio::test]
    async fn a_broadcast_the_balance_cannot_cover_is_refused_whole() {
        super::a_broadcast_the_balance_cannot_cover_is_refused_whole(Memory).await
    }
    #[tokio::test]
    async fn a_cancelled_campaigns_unqueued_recipients_are_closed_without_a_queue_job_each() {
        super::a_cancelled_campaigns_unqueued_recipients_are_closed_without_a_queue_job_each(Memory)
            .await
    }
    #[tokio::test]
    async fn a_campaign_whose_number_was_removed_mid_fan_out_closes_the_rest_refunded_without_a_job_each(
    ) {
        super::a_campaign_whose_number_was_removed_mid_fan_out_closes_the_rest_refunded_without_a_job_each(Memory)
            .await
    }
    #[tokio::test]
    async fn a_campaign_is_not_failed_for_a_hold_a_warm_copy_remembers_after_its_number_was_resumed(
    ) {
        super::a_campaign_is_not_failed_for_a_hold_a_warm_copy_remembers_after_its_number_was_resumed(Memory)
            .await
    }
    #[tokio::test]
    async fn a_retry_of_failures_sees_every_unsettled_message_even_when_a_lagging_walk_would_miss_it(
    ) {
        super::a_retry_of_failures_sees_every_unsettled_message_even_when_a_lagging_walk_would_miss_it(Memory)
            .await
    }
    #[tokio::test]
    async fn bad_broadcast_uploads_answer_400_and_change_nothing() {
        super::bad_broadcast_uploads_answer_400_and_change_nothing(Memory).await
    }
    #[tokio::test]
    async fn a_csv_uploads_numbers_may_be_written_as_people_write_them() {
        super::a_csv_uploads_numbers_may_be_written_as_people_write_them(Memory).await
    }
    #[tokio::test]
    async fn a_csv_broadcast_sends_a_template_with_parameters_from_the_query() {
        super::a_csv_broadcast_sends_a_template_with_parameters_from_the_query(Memory).await
    }
    #[tokio::test]
    async fn a_template_component_nested_too_deep_is_refused_before_anything_is_paid() {
        super::a_template_component_nested_too_deep_is_refused_before_anything_is_paid(Memory).await
    }
    #[tokio::test]
    async fn a_1000_recipient_csv_broadcast_completes_with_every_recipient_read() {
        super::a_csv_broadcast_completes_with_every_recipient_read(Memory, 1000).await
    }
}

mod aws_backend_on_moto {
    use kirim::config::Backend::Aws;
    #[tokio::test]
    async fn a_broadcast_to_numbers_that_all_opted_out_is_accepted_with_none_to_send() {
        super::a_broadcast_to_numbers_that_all_opted_out_is_accepted_with_none_to_send(Aws).await
    }
    #[tokio::test]
    async fn a_campaign_recipients_refund_names_its_campaign_on_the_ledger() {
        super::a_campaign_recipients_refund_names_its_campaign_on_the_ledger(Aws).await
    }
    #[tokio::test]
    async fn a_json_broadcast_skips_invalid_duplicate_and_opted_out_numbers_and_pays_for_the_rest()
    {
        super::a_json_broadcast_skips_invalid_duplicate_and_opted_out_numbers_and_pays_for_the_rest(
            Aws,
        )
        .await
    }
    #[tokio::test]
    async fn a_broadcast_the_balance_cannot_cover_is_refused_whole() {
        super::a_broadcast_the_balance_cannot_cover_is_refused_whole(Aws).await
    }
    #[tokio::test]
    async fn a_cancelled_campaigns_unqueued_recipients_are_closed_without_a_queue_job_each() {
        super::a_cancelled_campaigns_unqueued_recipients_are_closed_without_a_queue_job_each(Aws)
            .await
    }
    #[tokio::test]
    async fn a_campaign_whose_number_was_removed_mid_fan_out_closes_the_rest_refunded_without_a_job_each(
    ) {
        super::a_campaign_whose_number_was_removed_mid_fan_out_closes_the_rest_refunded_without_a_job_each(Aws)
            .await
    }
    #[tokio::test]
    async fn a_campaign_is_not_failed_for_a_hold_a_warm_copy_remembers_after_its_number_was_resumed(
    ) {
        super::a_campaign_is_not_failed_for_a_hold_a_warm_copy_remembers_after_its_number_was_resumed(Aws)
            .await
    }
    #[tokio::test]
    async fn a_retry_of_failures_sees_every_unsettled_message_even_when_a_lagging_walk_would_miss_it(
    ) {
        super::a_retry_of_failures_sees_every_unsettled_message_even_when_a_lagging_walk_would_miss_it(Aws)
            .await
    }
    #[tokio::test]
    async fn bad_broadcast_uploads_answer_400_and_change_nothing() {
        super::bad_broadcast_uploads_answer_400_and_change_nothing(Aws).await
    }
    #[tokio::test]
    async fn a_csv_uploads_numbers_may_be_written_as_people_write_them() {
        super::a_csv_uploads_numbers_may_be_written_as_people_write_them(Aws).await
    }
    #[tokio::test]
    async fn a_csv_broadcast_sends_a_template_with_parameters_from_the_query() {
        super::a_csv_broadcast_sends_a_template_with_parameters_from_the_query(Aws).await
    }
    #[tokio::test]
    async fn a_template_component_nested_too_deep_is_refused_before_anything_is_paid() {
        super::a_template_component_nested_too_deep_is_refused_before_anything_is_paid(Aws).await
    }
    #[tokio::test]
    async fn a_100_recipient_csv_broadcast_completes_with_every_recipient_read() {
        super::a_csv_broadcast_completes_with_every_recipient_read(Aws, 100).await
    }
}

/// A fan-out longer than one slice continues in a fresh queue message (never burning the
/// first one's receive count), and a redelivered slice makes no second message.
/// A tenant (phone number id `number`, credits for `n`) with an approved utility template
/// `promo` in its catalogue, written as a sync would (no Meta here), and its broadcast of
/// `promo` to `n` recipients, accepted and not yet fanned out.
async fn promo_broadcast(
    deps: &kirim::service::Deps,
    number: &str,
    n: usize,
) -> (kirim::ports::Tenant, kirim::service::broadcasts::Accepted) {
    use kirim::service::{broadcasts, send::TemplateIn};
    let (tenant, _) = promo_tenant(deps, number, n as i64).await;
    let template: TemplateIn =
        serde_json::from_value(json!({"name": "promo", "language": "en", "category": "utility"}))
            .unwrap();
    let recipients: Vec<String> = (0..n).map(|i| format!("+601234{i:04}9")).collect();
    let accepted = broadcasts::create(deps, &tenant.id, template, recipients, None)
        .await
        .unwrap();
    (tenant, accepted)
}

/// Empties the dispatch queue (the jobs a set-up queued).
async fn drain(deps: &kirim::service::Deps) {
    while !deps
        .queue
        .receive(10, Duration::from_millis(50))
        .await
        .unwrap()
        .is_empty()
    {}
}

/// The next job on the dispatch queue, which must be a broadcast's fan-out.
async fn next_fan_out(deps: &kirim::service::Deps) -> kirim::service::jobs::FanoutJob {
    let body = deps
        .queue
        .receive(10, Duration::from_millis(500))
        .await
        .unwrap()
        .remove(0)
        .body;
    match kirim::service::jobs::QueueJob::parse(&body) {
        Some(kirim::service::jobs::QueueJob::BroadcastFanout(job)) => job,
        other => panic!("a fan-out job, not {other:?}"),
    }
}

/// The fan-out job among those on the dispatch queue (the rest, dispatch jobs, dropped):
/// the job a fan-out queued for the rest of its broadcast.
async fn queued_fan_out(deps: &kirim::service::Deps) -> kirim::service::jobs::FanoutJob {
    for _ in 0..20 {
        for r in deps
            .queue
            .receive(10, Duration::from_millis(500))
            .await
            .unwrap()
        {
            if let Some(kirim::service::jobs::QueueJob::BroadcastFanout(job)) =
                kirim::service::jobs::QueueJob::parse(&r.body)
            {
                return job;
            }
        }
    }
    panic!("no fan-out job on the queue")
}

/// A tenant (phone number id `number`, `credits`) with an approved utility template
/// `promo` in its catalogue, written as a sync would (no Meta here); and its admin key.
pub(crate) async fn promo_tenant(
    deps: &kirim::service::Deps,
    number: &str,
    credits: i64,
) -> (kirim::ports::Tenant, kirim::secret::Secret) {
    use kirim::service::accounts;
    let req: accounts::NewTenant = serde_json::from_value(json!({"name": "Kedai", "waba_id": "1",
        "phone_number_id": number, "meta_access_token": "EAAG", "credits": credits}))
    .unwrap();
    let (tenant, key) = accounts::create_tenant(deps, req).await.unwrap();
    deps.templates
        .put_template(&kirim_tests::approved_template(
            "1",
            "promo",
            "en",
            chrono::Utc::now(),
        ))
        .await
        .unwrap();
    (tenant, key)
}

/// A scheduled message's job looks at the message once in `LOOK_EVERY_HOPS` hops: after
/// a cancel it is dropped then (with the content it carries) instead of hopping on to its
/// `send_at`; between looks, and while the message still waits, it hops on.
#[tokio::test]
async fn a_cancelled_scheduled_jobs_are_dropped_at_their_next_look() {
    use kirim::ports::Clock;
    use kirim::service::jobs::Outcome;
    use kirim::service::{dispatch, schedule, send};
    let clock = kirim_tests::ManualClock::new();
    let settings = kirim_tests::test_settings();
    let hop = settings.schedule_hop;
    let deps = kirim::wiring::memory_deps(settings, clock.clone()).unwrap();
    let (tenant, _) = promo_broadcast(&deps, "129", 1).await;
    let top_up: kirim::service::accounts::TopUp =
        serde_json::from_value(json!({"amount": 5, "reference": "test"})).unwrap();
    kirim::service::accounts::top_up(&deps, &tenant.id, top_up, None)
        .await
        .unwrap();
    // Drain the broadcast's own jobs.
    drain(&deps).await;
    let send_at = clock.now() + chrono::Duration::hours(3);
    let req: send::SendRequest = serde_json::from_value(json!({
        "to": "+60123450777",
        "template": {"name": "promo", "language": "en"},
        "send_at": send_at.to_rfc3339(),
    }))
    .unwrap();
    let Ok(send::Accepted::New(m)) = send::send_once(&deps, &tenant.id, req, None).await else {
        panic!("the scheduled send was accepted")
    };
    let job = deps
        .queue
        .receive(10, Duration::from_millis(500))
        .await
        .unwrap()
        .remove(0)
        .body;
    // `hops` hops of the test's hop before send_at.
    let at_hops = |hops: u32| {
        let to = send_at - chrono::Duration::from_std(hop * hops).unwrap();
        clock.advance(to - clock.now());
    };
    let looks = schedule::LOOK_EVERY_HOPS as u32;
    at_hops(looks * 4);
    assert!(
        matches!(
            dispatch::handle_in_batch(&deps, &job).await,
            Outcome::Again(..)
        ),
        "a look at a message still waiting: it hops on"
    );
    send::cancel_scheduled(&deps, &tenant.id, &m.id)
        .await
        .unwrap();
    at_hops(looks * 3 + 1);
    assert!(
        matches!(
            dispatch::handle_in_batch(&deps, &job).await,
            Outcome::Again(..)
        ),
        "no look on this hop"
    );
    at_hops(looks * 3);
    assert_eq!(
        dispatch::handle_in_batch(&deps, &job).await,
        Outcome::Done,
        "dropped at the next look"
    );

    // A scheduled broadcast's fan-out job, the same way.
    let template: kirim::service::send::TemplateIn =
        serde_json::from_value(json!({"name": "promo", "language": "en"})).unwrap();
    let send_at = clock.now() + chrono::Duration::hours(3);
    let campaign = kirim::service::broadcasts::CampaignIn {
        send_at: Some(send_at.to_rfc3339()),
        ..Default::default()
    };
    let b = kirim::service::broadcasts::create_campaign(
        &deps,
        &tenant.id,
        template,
        vec!["+60123450778".into()],
        campaign,
    )
    .await
    .unwrap();
    let fan_out = next_fan_out(&deps).await;
    let at_hops = |hops: u32| {
        let to = send_at - chrono::Duration::from_std(hop * hops).unwrap();
        clock.advance(to - clock.now());
    };
    kirim::service::broadcasts::cancel(&deps, &tenant.id, &b.id)
        .await
        .unwrap();
    at_hops(looks * 3 + 1);
    assert!(matches!(
        kirim::service::broadcasts::fan_out_in_slices(&deps, &fan_out, 10)
            .await
            .unwrap(),
        Outcome::Again(..)
    ));
    at_hops(looks * 3);
    assert_eq!(
        kirim::service::broadcasts::fan_out_in_slices(&deps, &fan_out, 10)
            .await
            .unwrap(),
        Outcome::Done
    );
}

/// A scheduled request refused (`402`) queues no job. A scheduled send's or broadcast's
/// job whose request recorded nothing (a process that died between queueing the job and
/// writing the message, stood in for here by jobs the test queues itself) carries the
/// content: it is dropped at its first hop past the grace for the write, not kept until
/// `send_at`.
#[tokio::test]
async fn an_orphaned_scheduled_job_is_dropped_at_its_first_look_past_the_grace_not_kept_until_send_at(
) {
    use kirim::ports::Clock;
    use kirim::service::jobs::{Outcome, QueueJob};
    use kirim::service::{broadcasts, dispatch, send};
    let clock = kirim_tests::ManualClock::new();
    let deps = kirim::wiring::memory_deps(kirim_tests::test_settings(), clock.clone()).unwrap();
    let (tenant, _) = promo_broadcast(&deps, "130", 1).await;
    drain(&deps).await;
    // The credits are spent: both scheduled requests are refused with 402.
    let send_at = clock.now() + chrono::Duration::days(30);
    let req: send::SendRequest = serde_json::from_value(json!({
        "to": "+60123450779",
        "template": {"name": "promo", "language": "en"},
        "send_at": send_at.to_rfc3339(),
    }))
    .unwrap();
    assert!(matches!(
        send::send_once(&deps, &tenant.id, req, None).await,
        Err(kirim::service::errors::ServiceError::InsufficientCredits)
    ));
    let template: send::TemplateIn =
        serde_json::from_value(json!({"name": "promo", "language": "en"})).unwrap();
    let campaign = broadcasts::CampaignIn {
        send_at: Some(send_at.to_rfc3339()),
        ..Default::default()
    };
    assert!(matches!(
        broadcasts::create_campaign(
            &deps,
            &tenant.id,
            template,
            vec!["+60123450780".into()],
            campaign
        )
        .await,
        Err(kirim::service::errors::ServiceError::InsufficientCredits)
    ));
    assert!(
        deps.queue
            .receive(10, Duration::from_millis(300))
            .await
            .unwrap()
            .is_empty(),
        "refused before any job was queued (a fresh read of the balance)"
    );
    // A request that died between its queued job and its write (or lost its debit to a
    // concurrent one) leaves such jobs: a scheduled send's and a scheduled campaign's.
    let content = kirim::domain::Content::Template {
        template: kirim::domain::TemplateRef {
            name: "promo".into(),
            language: "en".into(),
            category: kirim::domain::TemplateCategory::Utility,
        },
        components: vec![],
    };
    let orphan_send = QueueJob::Send(kirim::service::jobs::DispatchJob {
        tenant_id: tenant.id.clone(),
        message_id: kirim::domain::MessageId::from_trusted(
            kirim::domain::ulid_at(clock.now()).to_string(),
        ),
        content: content.clone(),
        request_id: None,
        send_at: Some(send_at),
        broadcast_id: None,
        facts: None,
        retry_at: None,
        recheck: false,
        refused: None,
        refused_claim: None,
        key_hash: None,
    });
    let orphan_fan_out = QueueJob::BroadcastFanout(kirim::service::jobs::FanoutJob {
        tenant_id: tenant.id.clone(),
        broadcast_id: kirim::domain::ulid_at(clock.now()).to_string(),
        content,
        request_id: None,
        send_at: Some(send_at),
        paced_from: None,
        token: None,
        resent: false,
    });
    for job in [orphan_send, orphan_fan_out] {
        deps.queue.send(&job.to_body().unwrap()).await.unwrap();
    }
    let jobs = deps
        .queue
        .receive(10, Duration::from_millis(500))
        .await
        .unwrap();
    assert_eq!(jobs.len(), 2);
    // Its first hop, within the grace for the write: it hops on.
    for job in &jobs {
        match QueueJob::parse(&job.body) {
            Some(QueueJob::Send(_)) => assert!(matches!(
                dispatch::handle_in_batch(&deps, &job.body).await,
                Outcome::Again(..)
            )),
            Some(QueueJob::BroadcastFanout(f)) => assert!(matches!(
                broadcasts::fan_out_in_slices(&deps, &f, 10).await.unwrap(),
                Outcome::Again(..)
            )),
            other => panic!("{other:?}"),
        }
    }
    // The next, past the grace (120 s): nothing was recorded, so each is dropped.
    clock.advance(chrono::Duration::seconds(120));
    for job in &jobs {
        let outcome = match QueueJob::parse(&job.body) {
            Some(QueueJob::BroadcastFanout(f)) => {
                broadcasts::fan_out_in_slices(&deps, &f, 10).await.unwrap()
            }
            _ => dispatch::handle_in_batch(&deps, &job.body).await,
        };
        assert_eq!(outcome, Outcome::Done, "{}", job.body.len());
    }
}

/// A broadcast of `promo` from number `number` to 5 recipients (`{prefix}0000` to
/// `{prefix}0004`), accepted and not fanned out yet, and a `recipients.csv` request made
/// then (its body not read yet): the deps, the tenant, the broadcast's fan-out job and the
/// response.
async fn csv_requested_before_the_fan_out(
    number: &str,
    prefix: &str,
) -> (
    kirim::service::Deps,
    kirim::ports::Tenant,
    kirim::service::broadcasts::Accepted,
    kirim::service::jobs::FanoutJob,
    axum::response::Response,
) {
    use kirim::service::{broadcasts, send::TemplateIn};
    use tower::ServiceExt;
    let clock = kirim_tests::ManualClock::new();
    let deps = kirim::wiring::memory_deps(kirim_tests::test_settings(), clock.clone()).unwrap();
    let (tenant, key) = promo_tenant(&deps, number, 10).await;
    let template: TemplateIn =
        serde_json::from_value(json!({"name": "promo", "language": "en"})).unwrap();
    let recipients: Vec<String> = (0..5).map(|i| format!("{prefix}{i:04}")).collect();
    let accepted = broadcasts::create(&deps, &tenant.id, template, recipients, None)
        .await
        .unwrap();
    let fan_out = next_fan_out(&deps).await;
    let res = kirim::http::send_api_router(deps.clone())
        .oneshot(
            axum::http::Request::builder()
                .uri(format!("/v1/broadcasts/{}/recipients.csv", accepted.id))
                .header("authorization", format!("Bearer {}", key.expose()))
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    (deps, tenant, accepted, fan_out, res)
}

/// A pause that lands while a fan-out run records its slice stops the run at its next
/// progress write (every 200 recipients): no more of its recipients are recorded and
/// queued, where the run went on to the end of its slice (up to 2,000 jobs that would each
/// come back every 30 s while paused).
#[tokio::test]
async fn a_pause_during_a_fan_out_run_stops_it_at_its_next_progress_write() {
    use kirim::service::{broadcasts, send::TemplateIn};
    let clock = kirim_tests::ManualClock::new();
    let deps = kirim::wiring::memory_deps(kirim_tests::test_settings(), clock.clone()).unwrap();
    let (tenant, _key) = promo_tenant(&deps, "133", 500).await;
    let template: TemplateIn =
        serde_json::from_value(json!({"name": "promo", "language": "en"})).unwrap();
    let recipients: Vec<String> = (0..450).map(|i| format!("+6012347{i:04}")).collect();
    let accepted = broadcasts::create(&deps, &tenant.id, template, recipients, None)
        .await
        .unwrap();
    let fan_out = next_fan_out(&deps).await;
    let mut pausing = deps.clone();
    pausing.broadcasts = std::sync::Arc::new(LostClaimAnswer {
        inner: deps.broadcasts.clone(),
        once: std::sync::atomic::AtomicBool::new(false),
        pages_read: Default::default(),
        pages_readable: usize::MAX,
        lost_moves: false,
        keys_missed: Default::default(),
        tallies: Default::default(),
        pause_on_progress: true,
        lagging_walk: false,
    });
    broadcasts::fan_out_in_slices(&pausing, &fan_out, 1000)
        .await
        .unwrap();
    let b = deps
        .broadcasts
        .get_broadcast(&tenant.id, &accepted.id)
        .await
        .unwrap()
        .unwrap();
    // The first progress write is at the queue batch that passes 200 (batches of at most
    // ten, within one second of the pace).
    assert!(
        (200..210).contains(&b.enqueued),
        "stopped at the first progress write: {}",
        b.enqueued
    );
    assert_eq!(b.status, kirim::ports::BroadcastStatus::FanningOut);
    let tally = deps.broadcasts.broadcast_tally(&b).await.unwrap();
    let recorded: usize = tally.counts.values().sum();
    assert_eq!(recorded, b.enqueued, "{:?}", tally.counts);
}

/// A `recipients.csv` whose messages cannot be read is never a `200` that looks complete:
/// the first page is read before the status (`503`), and a failure after the body began
/// cuts the transfer off (on Lambda the invocation fails) instead of ending it cleanly.
#[tokio::test]
async fn a_recipients_csv_storage_cannot_read_is_a_503_or_a_cut_off_body_never_a_clean_200() {
    use kirim::service::{broadcasts, send::TemplateIn};
    use tower::ServiceExt;
    kirim_tests::capture_logs();
    let clock = kirim_tests::ManualClock::new();
    let deps = kirim::wiring::memory_deps(kirim_tests::test_settings(), clock.clone()).unwrap();
    let (tenant, key) = promo_tenant(&deps, "132", 300).await;
    let template: TemplateIn =
        serde_json::from_value(json!({"name": "promo", "language": "en"})).unwrap();
    let recipients: Vec<String> = (0..250).map(|i| format!("+6012346{i:04}")).collect();
    let accepted = broadcasts::create(&deps, &tenant.id, template, recipients, None)
        .await
        .unwrap();
    let fan_out = next_fan_out(&deps).await;
    broadcasts::fan_out_in_slices(&deps, &fan_out, 250)
        .await
        .unwrap();
    let request = |readable: usize| {
        let mut d = deps.clone();
        d.broadcasts = std::sync::Arc::new(LostClaimAnswer {
            inner: deps.broadcasts.clone(),
            once: std::sync::atomic::AtomicBool::new(false),
            pages_read: Default::default(),
            pages_readable: readable,
            lost_moves: false,
            keys_missed: Default::default(),
            tallies: Default::default(),
            pause_on_progress: false,
            lagging_walk: false,
        });
        let uri = format!("/v1/broadcasts/{}/recipients.csv", accepted.id);
        let auth = format!("Bearer {}", key.expose());
        async move {
            kirim::http::send_api_router(d)
                .oneshot(
                    axum::http::Request::builder()
                        .uri(uri)
                        .header("authorization", auth)
                        .body(axum::body::Body::empty())
                        .unwrap(),
                )
                .await
                .unwrap()
        }
    };
    let whole = request(usize::MAX).await;
    assert_eq!(whole.status(), 200);
    let csv = axum::body::to_bytes(whole.into_body(), 1 << 20)
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&csv).lines().count(),
        251,
        "two pages"
    );
    let none = request(0).await;
    assert_eq!(none.status(), 503, "nothing read: not a header alone");
    let half = request(1).await;
    assert_eq!(half.status(), 200, "the first page was read");
    let request_id = half
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .expect("x-request-id");
    assert!(
        axum::body::to_bytes(half.into_body(), 1 << 20)
            .await
            .is_err(),
        "the second page failed: the body is cut off, not ended"
    );
    // Read after the handler returned, the stream's error line still names its request.
    assert!(
        kirim_tests::captured_logs()
            .lines()
            .any(|l| l.contains("recipients.csv stopped") && l.contains(&request_id)),
        "{}",
        kirim_tests::captured_logs()
    );
}

/// `recipients.csv` lists each recipient once, also while the fan-out goes on: a slice
/// recorded after the request (which had read the first, empty page) is listed from the
/// recipients pending at the request, each once. (A message the walk reaches on a later
/// page: `recipients_csv_lists_a_message_recorded_after_the_request_once_on_a_later_page`.)
#[tokio::test]
async fn recipients_csv_lists_each_recipient_once_while_the_fan_out_goes_on() {
    use kirim::service::broadcasts;
    // The request reads the broadcast (nothing recorded yet)...
    let (deps, _, _, fan_out, res) = csv_requested_before_the_fan_out("131", "+6012345").await;
    // ...then the fan-out records its first slice before the body is read (the list
    // stays: the rest go in the next slice).
    broadcasts::fan_out_in_slices(&deps, &fan_out, 2)
        .await
        .unwrap();
    let bytes = axum::body::to_bytes(res.into_body(), 1 << 20)
        .await
        .unwrap();
    let csv = String::from_utf8(bytes.to_vec()).unwrap();
    for i in 0..5 {
        let phone = format!("+6012345{i:04}");
        assert_eq!(csv.matches(&phone).count(), 1, "{phone}: {csv}");
    }
    assert_eq!(csv.lines().count(), 6, "{csv}");
    assert_eq!(csv.matches(",accepted,").count(), 5, "{csv}");
}

/// A recipient whose message is recorded after the request read the broadcast, and which
/// the walk of the messages then reaches on a later page, is written out once, with its
/// message, and not again among the recipients still pending at the request.
#[tokio::test]
async fn recipients_csv_lists_a_message_recorded_after_the_request_once_on_a_later_page() {
    use kirim::service::{broadcasts, send::TemplateIn};
    use tower::ServiceExt;
    let deps = kirim::wiring::memory_deps(
        kirim_tests::test_settings(),
        kirim_tests::ManualClock::new(),
    )
    .unwrap();
    let (tenant, key) = promo_tenant(&deps, "135", 450).await;
    let template: TemplateIn =
        serde_json::from_value(json!({"name": "promo", "language": "en"})).unwrap();
    let n = 2 * broadcasts::PAGE + 50;
    let recipients: Vec<String> = (0..n).map(|i| format!("+6012347{i:04}")).collect();
    let accepted = broadcasts::create(&deps, &tenant.id, template, recipients, None)
        .await
        .unwrap();
    let fan_out = next_fan_out(&deps).await;
    // A first slice, more than a page, recorded before the request.
    broadcasts::fan_out_in_slices(&deps, &fan_out, broadcasts::PAGE + 50)
        .await
        .unwrap();
    let res = kirim::http::send_api_router(deps.clone())
        .oneshot(
            axum::http::Request::builder()
                .uri(format!("/v1/broadcasts/{}/recipients.csv", accepted.id))
                .header("authorization", format!("Bearer {}", key.expose()))
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    // The rest are recorded after the request (its first page read), before the walk
    // goes on to the next pages.
    broadcasts::fan_out_in_slices(&deps, &fan_out, broadcasts::PAGE + 50)
        .await
        .unwrap();
    let bytes = axum::body::to_bytes(res.into_body(), 1 << 22)
        .await
        .unwrap();
    let csv = String::from_utf8(bytes.to_vec()).unwrap();
    for i in 0..n {
        let phone = format!("+6012347{i:04}");
        assert_eq!(csv.matches(&phone).count(), 1, "{phone}");
    }
    assert_eq!(csv.lines().count(), n + 1);
}

/// A cancelled campaign's recipients its fan-out has not closed yet are listed as what they
/// become (`cancelled`, refunded), never as `accepted` messages on their way.
#[tokio::test]
async fn recipients_csv_lists_a_cancelled_campaigns_unqueued_recipients_as_cancelled() {
    use kirim::service::broadcasts;
    use tower::ServiceExt;
    let deps = kirim::wiring::memory_deps(
        kirim_tests::test_settings(),
        kirim_tests::ManualClock::new(),
    )
    .unwrap();
    let (tenant, key) = promo_tenant(&deps, "136", 10).await;
    let template: kirim::service::send::TemplateIn =
        serde_json::from_value(json!({"name": "promo", "language": "en"})).unwrap();
    let recipients: Vec<String> = (0..3).map(|i| format!("+6012348{i:04}")).collect();
    let accepted = broadcasts::create(&deps, &tenant.id, template, recipients, None)
        .await
        .unwrap();
    let v = broadcasts::cancel(&deps, &tenant.id, &accepted.id)
        .await
        .unwrap();
    assert_eq!(v.status, "cancelled");
    let res = kirim::http::send_api_router(deps.clone())
        .oneshot(
            axum::http::Request::builder()
                .uri(format!("/v1/broadcasts/{}/recipients.csv", accepted.id))
                .header("authorization", format!("Bearer {}", key.expose()))
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let bytes = axum::body::to_bytes(res.into_body(), 1 << 20)
        .await
        .unwrap();
    let csv = String::from_utf8(bytes.to_vec()).unwrap();
    assert_eq!(csv.matches(",cancelled,").count(), 3, "{csv}");
    assert_eq!(csv.matches(",accepted,").count(), 0, "{csv}");
}

/// `recipients.csv` lists every recipient also when the whole fan-out runs, and its list
/// is deleted, while the body is being read: after the walk of the messages has passed
/// (their ids are not in recipient order), before the pending recipients are written.
#[tokio::test]
async fn recipients_csv_lists_every_recipient_when_the_fan_out_finishes_during_the_walk() {
    use futures::StreamExt;
    use kirim::service::broadcasts;
    let (deps, tenant, accepted, fan_out, res) =
        csv_requested_before_the_fan_out("134", "+6012346").await;
    let mut body = res.into_body().into_data_stream();
    // The header, then the walk's one page: no message recorded yet.
    let mut csv = String::new();
    for _ in 0..2 {
        let chunk = body.next().await.expect("a chunk").expect("bytes");
        csv.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    // The whole fan-out runs now, and its list goes.
    broadcasts::fan_out_in_slices(&deps, &fan_out, 10)
        .await
        .unwrap();
    assert_eq!(
        deps.broadcasts
            .broadcast_recipients(&tenant.id, &accepted.id)
            .await
            .unwrap(),
        None,
        "the fan-out is done"
    );
    while let Some(chunk) = body.next().await {
        csv.push_str(std::str::from_utf8(&chunk.expect("bytes")).unwrap());
    }
    for i in 0..5 {
        let phone = format!("+6012346{i:04}");
        assert_eq!(csv.matches(&phone).count(), 1, "{phone}: {csv}");
    }
    assert_eq!(csv.lines().count(), 6, "{csv}");
}

/// Moves the message `id` of `tenant` to `sending`, then `failed` with Meta's 131000 (a
/// failure a later try may fix), as the dispatcher leaves one whose tries ran out.
async fn fail_retryably(
    deps: &kirim::service::Deps,
    tenant: &kirim::domain::TenantId,
    id: impl std::borrow::Borrow<kirim::domain::MessageId>,
) {
    use kirim::domain::{MessageError, MessageStatus};
    use kirim::ports::{StatusChange, Transition};
    let change = StatusChange {
        error: Some(MessageError {
            code: 131000_i64.into(),
            title: "Something went wrong".into(),
        }),
        ..Default::default()
    };
    for to in [MessageStatus::Sending, MessageStatus::Failed] {
        let moved = deps
            .messages
            .transition(tenant, id.borrow(), to, &change, deps.clock.now())
            .await
            .unwrap();
        assert!(matches!(moved, Transition::Applied(_)), "{to:?}");
    }
}

/// Two retries of one broadcast's failures at once, the balance paying for one: the second,
/// past its look at the broadcast (not retried yet) when the first was made, is refused as
/// the retry it is (`409`, as the creating write's retry mark would), not as `402` by the
/// balance the first just spent.
#[tokio::test]
async fn a_concurrent_second_retry_of_failures_is_a_conflict_not_402() {
    use kirim::service::{broadcasts, errors::ServiceError};
    let clock = kirim_tests::ManualClock::new();
    let deps = kirim::wiring::memory_deps(kirim_tests::test_settings(), clock.clone()).unwrap();
    let (tenant, accepted) = promo_broadcast(&deps, "134", 2).await;
    let fan_out = next_fan_out(&deps).await;
    broadcasts::fan_out_in_slices(&deps, &fan_out, 10)
        .await
        .unwrap();
    let b = deps
        .broadcasts
        .get_broadcast(&tenant.id, &accepted.id)
        .await
        .unwrap()
        .unwrap();
    for i in 0..2 {
        fail_retryably(&deps, &tenant.id, &broadcasts::message_id(&b, i)).await;
    }
    let top_up: kirim::service::accounts::TopUp =
        serde_json::from_value(json!({"amount": 2, "reference": "test"})).unwrap();
    kirim::service::accounts::top_up(&deps, &tenant.id, top_up, None)
        .await
        .unwrap();
    broadcasts::retry_failed(&deps, &tenant.id, &accepted.id, Vec::new(), None)
        .await
        .unwrap();
    // The second request, as it goes on from its own look at the broadcast.
    let second = broadcasts::create_campaign(
        &deps,
        &tenant.id,
        serde_json::from_value(json!({"name": "promo", "language": "en"})).unwrap(),
        vec!["+60123400009".into(), "+60123400019".into()],
        broadcasts::CampaignIn {
            retry_of: Some(accepted.id.clone()),
            ..Default::default()
        },
    )
    .await;
    assert!(
        matches!(&second, Err(ServiceError::Conflict(m)) if m == kirim::ports::ALREADY_RETRIED),
        "{second:?}"
    );
}

/// A broadcast is retried once, so only once every message is settled: one still waiting
/// or being sent (a backoff, an ambiguous send until its deadline) may yet fail retryably
/// and would then have no retry. Until then `retry-failed` answers 409 and makes nothing.
#[tokio::test]
async fn a_broadcast_still_sending_is_not_retried_until_every_message_is_settled() {
    use kirim::service::{broadcasts, errors::ServiceError};
    let clock = kirim_tests::ManualClock::new();
    let deps = kirim::wiring::memory_deps(kirim_tests::test_settings(), clock.clone()).unwrap();
    let (tenant, accepted) = promo_broadcast(&deps, "132", 2).await;
    let fan_out = next_fan_out(&deps).await;
    broadcasts::fan_out_in_slices(&deps, &fan_out, 10)
        .await
        .unwrap();
    let b = deps
        .broadcasts
        .get_broadcast(&tenant.id, &accepted.id)
        .await
        .unwrap()
        .unwrap();
    let fail = |i: usize| fail_retryably(&deps, &tenant.id, broadcasts::message_id(&b, i));
    // One failed retryably; the other still `accepted` (its job not yet dispatched).
    fail(0).await;
    let early = broadcasts::retry_failed(&deps, &tenant.id, &accepted.id, Vec::new(), None).await;
    assert!(
        matches!(&early, Err(ServiceError::Conflict(m)) if m.contains("still sending")),
        "{early:?}"
    );
    let stored = deps
        .broadcasts
        .get_broadcast(&tenant.id, &accepted.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.retried_by, None, "nothing was made");
    // Both settled: the retry takes both.
    fail(1).await;
    let top_up: kirim::service::accounts::TopUp =
        serde_json::from_value(json!({"amount": 5, "reference": "test"})).unwrap();
    kirim::service::accounts::top_up(&deps, &tenant.id, top_up, None)
        .await
        .unwrap();
    let retried = broadcasts::retry_failed(&deps, &tenant.id, &accepted.id, Vec::new(), None)
        .await
        .unwrap();
    assert_eq!(retried.accepted, 2);
}

/// A fan-out that finds its recipient list gone (its backstop passed while it was paused
/// for days) closes the broadcast and refunds the recipients never queued.
#[tokio::test]
async fn a_fan_out_whose_list_is_gone_refunds_the_recipients_never_queued() {
    use kirim::service::broadcasts;
    let clock = kirim_tests::ManualClock::new();
    let deps = kirim::wiring::memory_deps(kirim_tests::test_settings(), clock.clone()).unwrap();
    let (tenant, accepted) = promo_broadcast(&deps, "128", 7).await;
    let balance = || async {
        deps.tenants
            .get_tenant(&tenant.id)
            .await
            .unwrap()
            .unwrap()
            .credits
    };
    assert_eq!(balance().await, 0, "seven debited");
    let job = next_fan_out(&deps).await;
    broadcasts::fan_out_in_slices(&deps, &job, 3).await.unwrap();
    // Its next slice comes eight days late.
    let job = queued_fan_out(&deps).await;
    clock.advance(chrono::Duration::days(8));
    broadcasts::fan_out_in_slices(&deps, &job, 3).await.unwrap();
    assert_eq!(balance().await, 4, "the four never queued are refunded");
    let view = broadcasts::view(&deps, &tenant.id, &accepted.id)
        .await
        .unwrap();
    assert_eq!(view.enqueued, 3);
    // Again (a redelivered job): nothing more.
    broadcasts::fan_out_in_slices(&deps, &job, 3).await.unwrap();
    assert_eq!(balance().await, 4);
}

/// A fan-out that finds its list gone just after the list's expiry does not close the
/// broadcast yet: another run that read the list a moment before may still be recording
/// its slice, and those recipients would be refunded and sent. It looks again once no
/// run can be (an hour past the expiry), and then refunds the rest.
#[tokio::test]
async fn a_fan_out_finding_its_list_just_expired_waits_out_any_run_still_recording() {
    use kirim::service::broadcasts;
    use kirim::service::jobs::Outcome;
    let clock = kirim_tests::ManualClock::new();
    let deps = kirim::wiring::memory_deps(kirim_tests::test_settings(), clock.clone()).unwrap();
    let (tenant, accepted) = promo_broadcast(&deps, "129", 7).await;
    let balance = || async {
        deps.tenants
            .get_tenant(&tenant.id)
            .await
            .unwrap()
            .unwrap()
            .credits
    };
    let job = next_fan_out(&deps).await;
    broadcasts::fan_out_in_slices(&deps, &job, 3).await.unwrap();
    let job = queued_fan_out(&deps).await;
    // A minute past the list's seven days.
    clock.advance(chrono::Duration::days(7) + chrono::Duration::minutes(1));
    let outcome = broadcasts::fan_out_in_slices(&deps, &job, 3).await.unwrap();
    let Outcome::Again(_, hop) = outcome else {
        panic!("closed at once: {outcome:?}")
    };
    assert!(hop > Duration::ZERO, "it comes back later");
    assert_eq!(balance().await, 0, "nothing refunded yet");
    let view = broadcasts::view(&deps, &tenant.id, &accepted.id)
        .await
        .unwrap();
    assert_eq!(view.status, "sending");
    // Past the margin: closed, the four never queued refunded.
    clock.advance(chrono::Duration::minutes(60));
    assert_eq!(
        broadcasts::fan_out_in_slices(&deps, &job, 3).await.unwrap(),
        Outcome::Done
    );
    assert_eq!(balance().await, 4);
}

#[tokio::test]
async fn a_long_fan_out_continues_in_fresh_queue_messages_and_never_duplicates() {
    use kirim::service::broadcasts;
    use kirim::service::jobs::QueueJob;
    let deps = kirim::wiring::memory_deps(
        kirim_tests::test_settings(),
        kirim_tests::ManualClock::new(),
    )
    .unwrap();
    let (tenant, accepted) = promo_broadcast(&deps, "126", 7).await;
    assert_eq!(accepted.accepted, 7);
    // Slices after the first are paced after it (a few milliseconds at tier 80).
    let take = || async {
        deps.queue
            .receive(10, Duration::from_millis(500))
            .await
            .unwrap()
    };
    let mut fanouts = 0;
    let mut dispatch_jobs = 0;
    let mut pending = take().await;
    let first = pending[0].body.clone();
    while !pending.is_empty() {
        for m in pending {
            let job: Value = serde_json::from_str(&m.body).unwrap();
            if job["kind"] == broadcasts::FANOUT_KIND {
                fanouts += 1;
                let Some(QueueJob::BroadcastFanout(job)) = QueueJob::parse(&m.body) else {
                    panic!("not a fan-out job")
                };
                let outcome = broadcasts::fan_out_in_slices(&deps, &job, 3).await.unwrap();
                assert_eq!(outcome, kirim::service::jobs::Outcome::Done);
            } else {
                dispatch_jobs += 1;
            }
            deps.queue.delete(&m.receipt).await.unwrap();
        }
        pending = take().await;
    }
    assert_eq!(
        (fanouts, dispatch_jobs),
        (3, 7),
        "three slices of at most 3, one job per recipient"
    );
    // The first delivery again (SQS may redeliver): the broadcast is done, nothing new.
    let Some(QueueJob::BroadcastFanout(job)) = QueueJob::parse(&first) else {
        panic!("not a fan-out job")
    };
    broadcasts::fan_out_in_slices(&deps, &job, 3).await.unwrap();
    assert!(take().await.is_empty());
    let view = broadcasts::view(&deps, &tenant.id, &accepted.id)
        .await
        .unwrap();
    assert_eq!(
        (view.status, view.enqueued),
        ("sending", 7),
        "every recipient queued, none sent yet"
    );
    assert_eq!(
        view.counts.get("accepted"),
        Some(&7),
        "seven messages, no more"
    );
}

/// A queue that notes what is sent to it and with what delay, then passes it on.
struct Recording {
    inner: std::sync::Arc<dyn kirim::ports::DispatchQueue>,
    sent: std::sync::Mutex<Vec<(Value, Duration)>>,
    /// Each send call: the port method and how many bodies it carried.
    calls: std::sync::Mutex<Vec<(&'static str, usize)>>,
}

impl Recording {
    fn new(inner: std::sync::Arc<dyn kirim::ports::DispatchQueue>) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Recording {
            inner,
            sent: Default::default(),
            calls: Default::default(),
        })
    }

    fn note(&self, call: &'static str, bodies: &[String], delay: Duration) {
        self.calls.lock().unwrap().push((call, bodies.len()));
        let mut sent = self.sent.lock().unwrap();
        for b in bodies {
            sent.push((serde_json::from_str(b).unwrap(), delay));
        }
    }

    fn take_calls(&self) -> Vec<(&'static str, usize)> {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }

    fn take(&self) -> Vec<(Value, Duration)> {
        std::mem::take(&mut *self.sent.lock().unwrap())
    }
}

#[async_trait::async_trait]
impl kirim::ports::DispatchQueue for Recording {
    async fn send(&self, body: &str) -> Result<(), kirim::store_error::StoreError> {
        self.note("send", &[body.to_owned()], Duration::ZERO);
        self.inner.send(body).await
    }
    async fn send_delayed(
        &self,
        body: &str,
        delay: Duration,
    ) -> Result<(), kirim::store_error::StoreError> {
        self.note("send_delayed", &[body.to_owned()], delay);
        self.inner.send_delayed(body, delay).await
    }
    async fn send_batch_delayed(
        &self,
        bodies: &[String],
        delay: Duration,
    ) -> Result<(), kirim::store_error::StoreError> {
        self.note("send_batch_delayed", bodies, delay);
        self.inner.send_batch_delayed(bodies, delay).await
    }
    async fn receive(
        &self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<kirim::ports::Received>, kirim::store_error::StoreError> {
        self.inner.receive(max, wait).await
    }
    async fn delete(&self, receipt: &str) -> Result<(), kirim::store_error::StoreError> {
        self.inner.delete(receipt).await
    }
    async fn retry_after(
        &self,
        receipt: &str,
        delay: Duration,
    ) -> Result<(), kirim::store_error::StoreError> {
        self.inner.retry_after(receipt, delay).await
    }
    async fn dead_letters(
        &self,
        max: usize,
    ) -> Result<Vec<kirim::ports::DeadLetter>, kirim::store_error::StoreError> {
        self.inner.dead_letters(max).await
    }
    async fn redrive(
        &self,
        ids: Option<&[String]>,
        max: usize,
    ) -> Result<kirim::ports::Redriven, kirim::store_error::StoreError> {
        self.inner.redrive(ids, max).await
    }
}

#[tokio::test]
async fn a_broadcasts_recipients_are_queued_at_its_numbers_pace_slice_after_slice() {
    use kirim::service::broadcasts;
    use kirim::service::jobs::QueueJob;
    let mut settings = kirim_tests::test_settings();
    // Tier 20: the limiter paces the number at 19 a second.
    settings.meta_throughput = 20;
    // SQS's longest delay, as deployed (the tests' settings shorten it).
    settings.schedule_hop = Duration::from_secs(900);
    let clock = kirim_tests::ManualClock::new();
    let mut deps = kirim::wiring::memory_deps(settings, clock.clone()).unwrap();
    let queue = Recording::new(deps.queue.clone());
    deps.queue = queue.clone();
    let (tenant, accepted) = promo_broadcast(&deps, "127", 1000).await;
    let fan_out_job = |v: &Value| {
        let Some(QueueJob::BroadcastFanout(job)) = QueueJob::parse(&v.to_string()) else {
            panic!("not a fan-out job")
        };
        job
    };
    let (first, _) = queue.take().pop().unwrap();

    // The first slice of 800: recipient i is due floor(i/19) s from now, each second's 19
    // together, no queue batch spanning two seconds.
    broadcasts::fan_out_in_slices(&deps, &fan_out_job(&first), 800)
        .await
        .unwrap();
    let sent = queue.take();
    let (jobs, next): (Vec<_>, Vec<_>) = sent
        .iter()
        .partition(|(v, _)| v["kind"] != broadcasts::FANOUT_KIND);
    assert_eq!(jobs.len(), 800);
    for (i, (_, delay)) in jobs.iter().enumerate() {
        assert_eq!(
            *delay,
            Duration::from_secs((i / 19) as u64),
            "recipient {i}: due at the start of its second of the pace"
        );
    }
    // The rest comes FANOUT_LEAD before the slice's seconds run out (800/19, rounded up:
    // 43 s), due from there.
    assert_eq!(next.len(), 1, "one fan-out job for the rest");
    let (next_job, wait) = next[0];
    assert_eq!(*wait, Duration::from_secs(43 - 30));

    // Delivered on time: its 200 recipients continue the same pace.
    clock.advance(chrono::Duration::seconds(13));
    broadcasts::fan_out_in_slices(&deps, &fan_out_job(next_job), 150)
        .await
        .unwrap();
    let sent = queue.take();
    assert_eq!(sent.len(), 151, "150 and the fan-out job for the last 50");
    let (jobs, next): (Vec<_>, Vec<_>) = sent
        .iter()
        .partition(|(v, _)| v["kind"] != broadcasts::FANOUT_KIND);
    for (i, (_, delay)) in jobs.iter().enumerate() {
        assert_eq!(
            *delay,
            Duration::from_secs(30 + (i / 19) as u64),
            "recipient {i}"
        );
    }
    // Cancelled: its last 50 are closed by the fan-out itself, `cancelled` and refunded,
    // none queued (the number's pace has nothing to hold, and the queue nothing to carry).
    broadcasts::cancel(&deps, &tenant.id, &accepted.id)
        .await
        .unwrap();
    let (next_job, _) = next[0];
    broadcasts::fan_out_in_slices(&deps, &fan_out_job(next_job), 150)
        .await
        .unwrap();
    assert!(queue.take().is_empty(), "nothing queued");
    let view = broadcasts::view(&deps, &tenant.id, &accepted.id)
        .await
        .unwrap();
    assert_eq!(view.counts["cancelled"], 50);
}

/// The queued jobs of `sent` by kind: the dispatch jobs' message ids, and the fan-out jobs
/// with their delays.
fn by_kind(sent: &[(Value, Duration)]) -> (Vec<String>, Vec<(Value, Duration)>) {
    let (fanouts, jobs): (Vec<_>, Vec<_>) = sent
        .iter()
        .cloned()
        .partition(|(v, _)| v["kind"] == kirim::service::broadcasts::FANOUT_KIND);
    let ids = jobs
        .iter()
        .map(|(v, _)| v["message_id"].as_str().unwrap().to_owned())
        .collect();
    (ids, fanouts)
}

fn fan_out_job(v: &Value) -> kirim::service::jobs::FanoutJob {
    match kirim::service::jobs::QueueJob::parse(&v.to_string()) {
        Some(kirim::service::jobs::QueueJob::BroadcastFanout(job)) => job,
        _ => panic!("not a fan-out job: {v}"),
    }
}

/// A tenant's broadcast of `n` recipients from number `number`, accepted in memory deps with
/// a manual clock and deployed settings' 15-minute hops, its queue recorded, the hold memo
/// on with Lambda's TTL when `memo` (the tests' deps have it off), and the first fan-out
/// job as queued.
struct Paced {
    deps: kirim::service::Deps,
    clock: std::sync::Arc<kirim_tests::ManualClock>,
    queue: std::sync::Arc<Recording>,
    tenant: kirim::ports::Tenant,
    accepted: kirim::service::broadcasts::Accepted,
    first: Value,
}

async fn paced(number: &str, n: usize, memo: bool) -> Paced {
    let mut settings = kirim_tests::test_settings();
    settings.schedule_hop = Duration::from_secs(900);
    let clock = kirim_tests::ManualClock::new();
    let mut deps = kirim::wiring::memory_deps(settings, clock.clone()).unwrap();
    if memo {
        deps.broadcast_holds = std::sync::Arc::new(kirim::service::broadcasts::HoldMemo::new(
            kirim::wiring::READ_CACHE_TTL,
        ));
    }
    let queue = Recording::new(deps.queue.clone());
    deps.queue = queue.clone();
    let (tenant, accepted) = promo_broadcast(&deps, number, n).await;
    let (first, _) = queue.take().pop().unwrap();
    Paced {
        deps,
        clock,
        queue,
        tenant,
        accepted,
        first,
    }
}

impl Paced {
    /// Runs the first fan-out job (one slice of 10) and answers the dispatch jobs it queued.
    async fn fan_out(&self) -> Vec<Value> {
        kirim::service::broadcasts::fan_out_in_slices(&self.deps, &fan_out_job(&self.first), 10)
            .await
            .unwrap();
        self.queue.take().into_iter().map(|(v, _)| v).collect()
    }
}

#[tokio::test]
async fn a_paused_broadcasts_fan_out_queues_no_more_recipients_until_it_is_resumed() {
    use kirim::service::broadcasts;
    use kirim::service::jobs::Outcome;
    let Paced {
        deps,
        clock,
        queue,
        tenant,
        accepted,
        first,
    } = paced("129", 25, false).await;
    let enqueued = || async {
        broadcasts::view(&deps, &tenant.id, &accepted.id)
            .await
            .unwrap()
            .enqueued
    };

    // The job's answer while paused: to wait on the queue for another look, as it is.
    let waits = |outcome: Outcome, job: &Value| match outcome {
        Outcome::Again(body, delay) => {
            assert_eq!(delay, broadcasts::PAUSED_RECHECK);
            let again: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(&again, job, "the same job again");
            again
        }
        other => panic!("not a wait on the queue: {other:?}"),
    };

    // Paused before its fan-out ran: nothing recorded or queued; the job asks again later.
    broadcasts::pause(&deps, &tenant.id, &accepted.id)
        .await
        .unwrap();
    let outcome = broadcasts::fan_out_in_slices(&deps, &fan_out_job(&first), 10)
        .await
        .unwrap();
    let again = waits(outcome, &first);
    assert!(queue.take().is_empty(), "no recipient queued while paused");
    assert_eq!(enqueued().await, 0);

    // Resumed: the same job records and queues the first slice, then the next job.
    broadcasts::resume(&deps, &tenant.id, &accepted.id)
        .await
        .unwrap();
    broadcasts::fan_out_in_slices(&deps, &fan_out_job(&again), 10)
        .await
        .unwrap();
    let (jobs, fanouts) = by_kind(&queue.take());
    assert_eq!(jobs.len(), 10);
    assert_eq!(fanouts.len(), 1, "the next slice's job");
    assert_eq!(enqueued().await, 10);

    // Paused between slices: the rest waits, and goes on where it stopped once resumed.
    broadcasts::pause(&deps, &tenant.id, &accepted.id)
        .await
        .unwrap();
    let next = fan_out_job(&fanouts[0].0);
    clock.advance(chrono::Duration::seconds(60));
    let outcome = broadcasts::fan_out_in_slices(&deps, &next, 10)
        .await
        .unwrap();
    let waiting = vec![(waits(outcome, &fanouts[0].0), Duration::ZERO)];
    assert!(queue.take().is_empty(), "no recipient queued while paused");
    assert_eq!(enqueued().await, 10);
    broadcasts::resume(&deps, &tenant.id, &accepted.id)
        .await
        .unwrap();
    let mut all = jobs;
    let mut pending = waiting;
    while let Some((job, _)) = pending.pop() {
        broadcasts::fan_out_in_slices(&deps, &fan_out_job(&job), 10)
            .await
            .unwrap();
        let (more, fanouts) = by_kind(&queue.take());
        all.extend(more);
        pending.extend(fanouts);
    }
    let distinct: std::collections::HashSet<_> = all.iter().collect();
    assert_eq!(
        (all.len(), distinct.len()),
        (25, 25),
        "each recipient queued once"
    );
    let view = broadcasts::view(&deps, &tenant.id, &accepted.id)
        .await
        .unwrap();
    assert_eq!(
        (view.enqueued, view.counts.get("accepted")),
        (25, Some(&25))
    );
}

#[tokio::test]
async fn a_paused_broadcasts_messages_wait_on_the_hold_their_process_found_without_a_claim_each() {
    use kirim::domain::MessageStatus;
    use kirim::ports::{BroadcastControl, Clock};
    use kirim::service::jobs::Outcome;
    use kirim::service::{broadcasts, dispatch};
    // As on Lambda: the memo of holds on, with the read cache's TTL.
    let p = paced("130", 3, true).await;
    let jobs: Vec<String> = p.fan_out().await.iter().map(Value::to_string).collect();
    assert_eq!(jobs.len(), 3);
    let Paced {
        deps,
        clock,
        queue,
        tenant,
        accepted,
        ..
    } = p;
    let message = |i: usize| {
        let v: Value = serde_json::from_str(&jobs[i]).unwrap();
        let id = kirim::domain::MessageId::from_trusted(v["message_id"].as_str().unwrap());
        let deps = &deps;
        let tenant = tenant.id.clone();
        async move {
            let m = deps
                .messages
                .get_message(&tenant, &id)
                .await
                .unwrap()
                .unwrap();
            (m.status, m.attempts, m.events.len())
        }
    };
    let waiting = (MessageStatus::Accepted, 0, 1);

    // The first look claims, finds the pause and gives the claim back; the job waits.
    broadcasts::pause(&deps, &tenant.id, &accepted.id)
        .await
        .unwrap();
    assert_eq!(dispatch::handle(&deps, &jobs[0]).await, Outcome::Done);
    assert_eq!(message(0).await, waiting);
    let requeued = queue.take();
    assert_eq!(requeued.len(), 1);
    assert_eq!(requeued[0].1, broadcasts::PAUSED_RECHECK);

    // Resumed by another process (the store alone: this process's memo is not told). For
    // the memo's TTL this process's looks still wait, without claiming: had the second
    // message been claimed, it would have left `accepted`.
    assert!(deps
        .broadcasts
        .set_broadcast_control(
            &tenant.id,
            &accepted.id,
            &[Some(BroadcastControl::Paused)],
            None,
            clock.now()
        )
        .await
        .unwrap());
    clock.advance(chrono::Duration::seconds(4));
    assert_eq!(dispatch::handle(&deps, &jobs[1]).await, Outcome::Done);
    assert_eq!(
        message(1).await,
        waiting,
        "not claimed: the hold remembered"
    );
    assert_eq!(queue.take()[0].1, broadcasts::PAUSED_RECHECK);

    // Once the TTL is over, the next look claims it.
    clock.advance(chrono::Duration::seconds(1));
    dispatch::handle(&deps, &jobs[1]).await;
    let (status, attempts, _) = message(1).await;
    assert!(
        status != MessageStatus::Accepted || attempts > 0,
        "claimed after the TTL: {status:?}, {attempts}"
    );

    // A pause and a resume in this process: the resume forgets the hold at once.
    broadcasts::pause(&deps, &tenant.id, &accepted.id)
        .await
        .unwrap();
    assert_eq!(dispatch::handle(&deps, &jobs[2]).await, Outcome::Done);
    assert_eq!(message(2).await, waiting);
    broadcasts::resume(&deps, &tenant.id, &accepted.id)
        .await
        .unwrap();
    dispatch::handle(&deps, &jobs[2]).await;
    let (status, attempts, _) = message(2).await;
    assert!(
        status != MessageStatus::Accepted || attempts > 0,
        "claimed at once after this process's resume: {status:?}, {attempts}"
    );
}

#[tokio::test]
async fn a_broadcast_message_claimed_before_its_broadcast_was_held_is_left_to_its_sending_deadline_not_dropped(
) {
    use kirim::domain::MessageStatus;
    use kirim::ports::{BroadcastControl, Clock};
    use kirim::service::jobs::Outcome;
    use kirim::service::{broadcasts, dispatch};
    let p = paced("131", 2, true).await;
    let jobs = p.fan_out().await;
    let deadline = p.deps.settings.sending_deadline;
    let Paced {
        deps,
        clock,
        tenant,
        accepted,
        ..
    } = p;
    let id =
        |i: usize| kirim::domain::MessageId::from_trusted(jobs[i]["message_id"].as_str().unwrap());
    let status = |i: usize| {
        let (deps, tenant, id) = (&deps, tenant.id.clone(), id(i));
        async move {
            deps.messages
                .get_message(&tenant, &id)
                .await
                .unwrap()
                .unwrap()
                .status
        }
    };
    // Both claimed by a dispatcher whose call to Meta then timed out: `sending`, their
    // jobs back for the sending deadline.
    for i in 0..2 {
        let claimed = deps
            .broadcasts
            .claim_broadcast_message(&tenant.id, &id(i), &accepted.id, "c1", clock.now())
            .await
            .unwrap();
        assert!(matches!(claimed, kirim::ports::BroadcastClaim::Claimed(_)));
    }
    // The first broadcast's hold as this process remembers it: paused; then cancelled.
    broadcasts::pause(&deps, &tenant.id, &accepted.id)
        .await
        .unwrap();
    deps.broadcast_holds.note(
        &tenant.id,
        &accepted.id,
        Some(BroadcastControl::Paused),
        clock.now(),
    );
    let outcome = dispatch::handle_in_batch(&deps, &jobs[0].to_string()).await;
    assert!(
        matches!(&outcome, Outcome::Again(body, _) if body.contains(r#""recheck":true"#)),
        "looked at again at its deadline (a recheck job), not waiting on the pause: {outcome:?}"
    );
    // Cancelled as a cancel that raced the claims writes it (`broadcasts::cancel` itself
    // refuses one that finds every message on its way: nothing left to cancel).
    assert!(deps
        .broadcasts
        .set_broadcast_control(
            &tenant.id,
            &accepted.id,
            &[None, Some(BroadcastControl::Paused)],
            Some(BroadcastControl::Cancelled),
            clock.now(),
        )
        .await
        .unwrap());
    deps.broadcast_holds.note(
        &tenant.id,
        &accepted.id,
        Some(BroadcastControl::Cancelled),
        clock.now(),
    );
    let outcome = dispatch::handle_in_batch(&deps, &jobs[1].to_string()).await;
    assert!(
        matches!(&outcome, Outcome::Again(body, _) if body.contains(r#""recheck":true"#)),
        "kept for its deadline (a recheck job), not dropped: {outcome:?}"
    );
    assert_eq!(
        status(1).await,
        MessageStatus::Sending,
        "neither cancelled nor refunded"
    );
    // Past the deadline with no word from Meta: failed, as any message whose send was
    // ambiguous.
    clock.advance(chrono::Duration::from_std(deadline).unwrap() + chrono::Duration::seconds(1));
    deps.broadcast_holds.note(
        &tenant.id,
        &accepted.id,
        Some(BroadcastControl::Cancelled),
        clock.now(),
    );
    for (i, job) in jobs.iter().enumerate() {
        assert_eq!(
            dispatch::handle(&deps, &job.to_string()).await,
            Outcome::Done
        );
        assert_eq!(status(i).await, MessageStatus::Failed);
    }
}

#[tokio::test]
async fn a_batchs_jobs_that_are_not_due_go_back_on_the_queue_in_one_send_on_lambda_and_locally() {
    use kirim::service::broadcasts;
    let p = paced("132", 6, false).await;
    let bodies: Vec<String> = p.fan_out().await.iter().map(Value::to_string).collect();
    assert_eq!(bodies.len(), 6);
    let Paced {
        deps,
        queue,
        tenant,
        accepted,
        ..
    } = p;
    queue.take_calls();
    // Paused: every look is a hop of `PAUSED_RECHECK`.
    broadcasts::pause(&deps, &tenant.id, &accepted.id)
        .await
        .unwrap();

    // On Lambda: a batch of three records, answered with no failure, their hops in one call.
    // (An `SqsEvent`, as Lambda hands the dispatcher, read from its JSON.)
    let event = serde_json::from_value(json!({
        "Records": bodies[..3].iter().enumerate().map(|(i, b)| json!({
            "messageId": format!("m{i}"), "receiptHandle": format!("r{i}"), "body": b,
            "attributes": {"ApproximateReceiveCount": "1"}, "messageAttributes": {},
            "eventSource": "aws:sqs"
        })).collect::<Vec<_>>()
    }))
    .unwrap();
    let response = kirim::queue_handlers::dispatch_batch(&deps, event).await;
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(queue.take_calls(), vec![("send_batch_delayed", 3)]);
    let hops = queue.take();
    assert_eq!(hops.len(), 3);
    assert!(hops
        .iter()
        .all(|(_, delay)| *delay == broadcasts::PAUSED_RECHECK));

    // Locally: the poller's batch likewise (the queue holds the six jobs and the three hops,
    // not yet due).
    kirim::queue_handlers::poll_once(&deps, Duration::ZERO).await;
    let calls = queue.take_calls();
    assert_eq!(calls.len(), 1, "one send for the batch: {calls:?}");
    assert_eq!(calls[0].0, "send_batch_delayed");
    assert!(calls[0].1 >= 3, "{calls:?}");
}

/// A keyed campaign retried while the first request with its key was still running: the
/// retry looked for the key before the first's write landed, and the first then spent the
/// balance. The retry answers with the first's broadcast (as the key's own write would
/// have), not `402`, though the balance is refused before any job is queued.
#[tokio::test]
async fn a_keyed_campaign_retry_racing_its_first_request_answers_it_not_402() {
    use kirim::service::broadcasts;
    let clock = kirim_tests::ManualClock::new();
    let deps = kirim::wiring::memory_deps(kirim_tests::test_settings(), clock).unwrap();
    let (tenant, _) = promo_tenant(&deps, "132", 2).await;
    let body = json!({"template": {"name": "promo", "language": "en"},
        "recipients": ["+60123450790", "+60123450791"]});
    let key = kirim::domain::IdempotencyKey::parse("campaign-once").unwrap();
    let campaign = broadcasts::CampaignIn {
        key: Some(kirim::service::idempotency::Idempotent {
            fingerprint: key.fingerprint(&body),
            key,
        }),
        ..Default::default()
    };
    let create = |deps: kirim::service::Deps| {
        let campaign = campaign.clone();
        let body = body.clone();
        let tenant = tenant.id.clone();
        async move {
            broadcasts::create_campaign(
                &deps,
                &tenant,
                serde_json::from_value(body["template"].clone()).unwrap(),
                serde_json::from_value(body["recipients"].clone()).unwrap(),
                campaign,
            )
            .await
        }
    };
    let first = create(deps.clone()).await.unwrap();
    assert!(!first.replayed);
    let mut racing = deps.clone();
    racing.broadcasts = std::sync::Arc::new(LostClaimAnswer {
        inner: deps.broadcasts.clone(),
        once: std::sync::atomic::AtomicBool::new(false),
        pages_read: Default::default(),
        pages_readable: usize::MAX,
        lost_moves: false,
        keys_missed: std::sync::atomic::AtomicUsize::new(1),
        tallies: Default::default(),
        pause_on_progress: false,
        lagging_walk: false,
    });
    let again = create(racing).await.expect("the first's answer, not 402");
    assert!(again.replayed);
    assert_eq!(again.id, first.id);
}

/// A broadcast store whose next claim lands but whose answer is lost: the store's retry of
/// it is what answers (refused, by the claim itself). And whose reads of a broadcast's
/// messages fail once `pages_read` reach `pages_readable`; and which counts its tallies in
/// flight at once.
struct LostClaimAnswer {
    inner: std::sync::Arc<dyn kirim::ports::BroadcastStore>,
    once: std::sync::atomic::AtomicBool,
    pages_read: std::sync::atomic::AtomicUsize,
    pages_readable: usize,
    /// Every start and control move lands, and its answer is lost: the SDK's retry of it
    /// is what the caller hears (refused by the write that landed).
    lost_moves: bool,
    /// How many of the next reads of an `Idempotency-Key`'s record answer none (a
    /// concurrent request's write not landed yet when it was read).
    keys_missed: std::sync::atomic::AtomicUsize,
    /// Its tallies in flight, and the most seen at once.
    tallies: TalliesAtOnce,
    /// The broadcast is paused (as an operator's pause landing then) just after each
    /// progress write of a fan-out that is not its last.
    pause_on_progress: bool,
    /// Its eventually consistent walk of a broadcast's messages is a moment behind: it
    /// leaves out every `accepted` one (a write not replicated yet); the consistent walk
    /// is exact.
    lagging_walk: bool,
}

/// A store's tallies in flight (each yields before it reads, so the others started with it
/// are polled meanwhile), and the most seen at once.
#[derive(Default)]
struct TalliesAtOnce {
    in_flight: std::sync::atomic::AtomicUsize,
    most: std::sync::atomic::AtomicUsize,
}

kirim_tests::pass_through! {
    impl BroadcastStore for LostClaimAnswer {
        async fn broadcast_key(
            &self,
            tenant: &kirim::domain::TenantId,
            key_hash: &str,
        ) -> Result<Option<kirim::ports::RequestKeyRecord>, kirim::store_error::StoreError> {
            use std::sync::atomic::Ordering::SeqCst;
            let missed = self
                .keys_missed
                .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if missed {
                return Ok(None);
            }
            self.inner.broadcast_key(tenant, key_hash).await
        }
        async fn broadcast_progress(
            &self,
            tenant: &kirim::domain::TenantId,
            id: &str,
            enqueued: usize,
            done: bool,
            hop: kirim::ports::FanoutHop<'_>,
        ) -> Result<bool, kirim::store_error::StoreError> {
            let written = self
                .inner
                .broadcast_progress(tenant, id, enqueued, done, hop)
                .await?;
            if self.pause_on_progress && !done {
                self.inner
                    .set_broadcast_control(
                        tenant,
                        id,
                        &[None],
                        Some(kirim::ports::BroadcastControl::Paused),
                        chrono::Utc::now(),
                    )
                    .await?;
            }
            Ok(written)
        }
        async fn start_broadcast(
            &self,
            tenant: &kirim::domain::TenantId,
            id: &str,
            at: chrono::DateTime<chrono::Utc>,
        ) -> Result<bool, kirim::store_error::StoreError> {
            if self.lost_moves {
                assert!(self.inner.start_broadcast(tenant, id, at).await?);
            }
            self.inner.start_broadcast(tenant, id, at).await
        }
        async fn set_broadcast_control(
            &self,
            tenant: &kirim::domain::TenantId,
            id: &str,
            from: &[Option<kirim::ports::BroadcastControl>],
            to: Option<kirim::ports::BroadcastControl>,
            at: chrono::DateTime<chrono::Utc>,
        ) -> Result<bool, kirim::store_error::StoreError> {
            if self.lost_moves
                && !self
                    .inner
                    .set_broadcast_control(tenant, id, from, to, at)
                    .await?
            {
                return Ok(false);
            }
            self.inner
                .set_broadcast_control(tenant, id, from, to, at)
                .await
        }
        async fn claim_broadcast_message(
            &self,
            tenant: &kirim::domain::TenantId,
            message: &kirim::domain::MessageId,
            broadcast: &str,
            claim: &str,
            at: chrono::DateTime<chrono::Utc>,
        ) -> Result<kirim::ports::BroadcastClaim, kirim::store_error::StoreError> {
            if self.once.swap(false, std::sync::atomic::Ordering::SeqCst) {
                let landed = self
                    .inner
                    .claim_broadcast_message(tenant, message, broadcast, claim, at)
                    .await?;
                assert!(matches!(landed, kirim::ports::BroadcastClaim::Claimed(_)));
            }
            self.inner
                .claim_broadcast_message(tenant, message, broadcast, claim, at)
                .await
        }
        async fn broadcast_messages(
            &self,
            broadcast: &kirim::ports::Broadcast,
            limit: usize,
            after: Option<&kirim::domain::MessageId>,
        ) -> Result<
            (
                Vec<kirim::domain::MessageRecord>,
                Option<kirim::domain::MessageId>,
            ),
            kirim::store_error::StoreError,
        > {
            let read = self
                .pages_read
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if read >= self.pages_readable {
                return Err(kirim::store_error::StoreError::Unavailable(
                    "throttled".into(),
                ));
            }
            let (mut page, next) = self
                .inner
                .broadcast_messages(broadcast, limit, after)
                .await?;
            if self.lagging_walk {
                page.retain(|m| m.status != kirim::domain::MessageStatus::Accepted);
            }
            Ok((page, next))
        }
        async fn broadcast_tally(
            &self,
            broadcast: &kirim::ports::Broadcast,
        ) -> Result<kirim::ports::BroadcastTally, kirim::store_error::StoreError> {
            use std::sync::atomic::Ordering::SeqCst;
            let now = self.tallies.in_flight.fetch_add(1, SeqCst) + 1;
            self.tallies.most.fetch_max(now, SeqCst);
            tokio::task::yield_now().await;
            let tally = self.inner.broadcast_tally(broadcast).await;
            self.tallies.in_flight.fetch_sub(1, SeqCst);
            tally
        }
    }
}

/// `GET /v1/broadcasts` tallied each listed campaign's messages one after another (a full
/// Query each on DynamoDB): a page of 50 large campaigns could near API Gateway's 29 s. They
/// are tallied several at once, and the page still lists them newest first, each with its
/// own counts.
#[tokio::test]
async fn a_broadcast_list_tallies_its_campaigns_at_once_and_answers_them_in_order() {
    use kirim::service::{broadcasts, send::TemplateIn};
    let clock = kirim_tests::ManualClock::new();
    let deps = kirim::wiring::memory_deps(kirim_tests::test_settings(), clock.clone()).unwrap();
    let (tenant, _) = promo_tenant(&deps, "133", 20).await;
    let mut created = Vec::new();
    for n in 1..=4usize {
        let template: TemplateIn = serde_json::from_value(
            json!({"name": "promo", "language": "en", "category": "utility"}),
        )
        .unwrap();
        let recipients: Vec<String> = (0..n).map(|i| format!("+60123{n}{i:04}")).collect();
        let accepted = broadcasts::create(&deps, &tenant.id, template, recipients, None)
            .await
            .unwrap();
        let job = next_fan_out(&deps).await;
        broadcasts::fan_out_in_slices(&deps, &job, 10)
            .await
            .unwrap();
        // Its messages' dispatch jobs: not run, they stay `accepted`.
        drain(&deps).await;
        created.push((accepted.id, n));
        clock.advance(chrono::Duration::seconds(1));
    }
    let mut watched = deps.clone();
    let store = std::sync::Arc::new(LostClaimAnswer {
        inner: deps.broadcasts.clone(),
        once: std::sync::atomic::AtomicBool::new(false),
        pages_read: Default::default(),
        pages_readable: usize::MAX,
        lost_moves: false,
        keys_missed: Default::default(),
        tallies: Default::default(),
        pause_on_progress: false,
        lagging_walk: false,
    });
    watched.broadcasts = store.clone();
    let (page, next) = broadcasts::list(&watched, &tenant.id, None, 50, None)
        .await
        .unwrap();
    assert_eq!(next, None);
    let listed: Vec<(String, usize, usize)> = page
        .iter()
        .map(|v| {
            (
                v.id.clone(),
                v.total,
                v.counts.get("accepted").copied().unwrap_or(0),
            )
        })
        .collect();
    let want: Vec<(String, usize, usize)> = created
        .iter()
        .rev()
        .map(|(id, n)| (id.clone(), *n, *n))
        .collect();
    assert_eq!(listed, want, "newest first, each with its own counts");
    assert!(
        store.tallies.most.load(std::sync::atomic::Ordering::SeqCst) > 1,
        "tallied one after another"
    );
}

/// A broadcast message's claim that landed but whose answer was lost is known for the job's
/// own by its token; since its broadcast's hold was never checked after it, it is given back
/// (not an attempt) and claimed afresh, not left `sending` for its deadline.
#[tokio::test]
async fn a_broadcast_claim_whose_answer_was_lost_is_given_back_and_claimed_afresh() {
    use kirim::domain::MessageStatus;
    use kirim::service::dispatch;
    use kirim::service::jobs::Outcome;
    let p = paced("132", 1, false).await;
    let jobs = p.fan_out().await;
    let mut deps = p.deps.clone();
    deps.broadcasts = std::sync::Arc::new(LostClaimAnswer {
        inner: p.deps.broadcasts.clone(),
        once: std::sync::atomic::AtomicBool::new(true),
        pages_read: Default::default(),
        pages_readable: usize::MAX,
        lost_moves: false,
        keys_missed: Default::default(),
        tallies: Default::default(),
        pause_on_progress: false,
        lagging_walk: false,
    });
    let id = kirim::domain::MessageId::from_trusted(jobs[0]["message_id"].as_str().unwrap());
    let message = || async {
        let m = p
            .deps
            .messages
            .get_message(&p.tenant.id, &id)
            .await
            .unwrap()
            .unwrap();
        (m.status, m.attempts)
    };
    let outcome = dispatch::handle(&deps, &jobs[0].to_string()).await;
    assert!(
        matches!(outcome, Outcome::RetryAfter(_)),
        "tried again soon: {outcome:?}"
    );
    assert_eq!(message().await, (MessageStatus::Accepted, 0), "given back");
    // Claimed afresh (its attempt counted; Meta is not reachable from these deps, so it
    // is then given back for a retry, as any transient failure).
    dispatch::handle(&deps, &jobs[0].to_string()).await;
    let (_, attempts) = message().await;
    assert_eq!(attempts, 1, "claimed afresh");
}

/// A scheduled broadcast's start, and a pause, resume and cancel, are plain conditional
/// writes: one that landed with its answer lost has the SDK's retry refused by it. The
/// start then goes on fanning out (no other job would: the campaign would sit `sending`,
/// paid, with nothing queued, until its settlement a week later), and the moves answer
/// what they did, not `409`.
#[tokio::test]
async fn a_campaigns_start_or_move_whose_answer_was_lost_goes_on_and_answers_what_it_did() {
    use kirim::ports::Clock;
    use kirim::service::broadcasts;
    use kirim::service::jobs::Outcome;
    let clock = kirim_tests::ManualClock::new();
    let real = kirim::wiring::memory_deps(kirim_tests::test_settings(), clock.clone()).unwrap();
    let (tenant, _) = promo_tenant(&real, "134", 20).await;
    let mut deps = real.clone();
    deps.broadcasts = std::sync::Arc::new(LostClaimAnswer {
        inner: real.broadcasts.clone(),
        once: std::sync::atomic::AtomicBool::new(false),
        pages_read: Default::default(),
        pages_readable: usize::MAX,
        lost_moves: true,
        keys_missed: Default::default(),
        tallies: Default::default(),
        pause_on_progress: false,
        lagging_walk: false,
    });
    let template: kirim::service::send::TemplateIn =
        serde_json::from_value(json!({"name": "promo", "language": "en"})).unwrap();
    let campaign = broadcasts::CampaignIn {
        send_at: Some((clock.now() + chrono::Duration::minutes(10)).to_rfc3339()),
        ..Default::default()
    };
    let recipients: Vec<String> = (0..3).map(|i| format!("+6012347{i:04}")).collect();
    let b = broadcasts::create_campaign(&deps, &tenant.id, template, recipients, campaign)
        .await
        .unwrap();
    let fan_out = next_fan_out(&deps).await;
    clock.advance(chrono::Duration::minutes(11));
    assert_eq!(
        broadcasts::fan_out_in_slices(&deps, &fan_out, 10)
            .await
            .unwrap(),
        Outcome::Done
    );
    let started = real
        .broadcasts
        .get_broadcast(&tenant.id, &b.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        started.status,
        kirim::ports::BroadcastStatus::Enqueued,
        "fanned out by the job whose start's answer was lost"
    );
    let paused = broadcasts::pause(&deps, &tenant.id, &b.id).await.unwrap();
    assert_eq!(paused.status, "paused");
    let resumed = broadcasts::resume(&deps, &tenant.id, &b.id).await.unwrap();
    assert_eq!(resumed.status, "sending");
    let cancelled = broadcasts::cancel(&deps, &tenant.id, &b.id).await.unwrap();
    assert_eq!(cancelled.status, "cancelled");
    // A move that truly does not apply is still refused.
    assert!(matches!(
        broadcasts::pause(&deps, &tenant.id, &b.id).await,
        Err(kirim::service::errors::ServiceError::Conflict(_))
    ));
}

/// A broadcast's message waiting out a long retry backoff on the queue (hops of up to 15
/// minutes) is cancelled, refunded, at its next hop once another process cancelled its
/// broadcast, not sent when the backoff ends; while the broadcast goes on, it hops on.
#[tokio::test]
async fn a_broadcast_message_in_a_long_retry_backoff_is_cancelled_refunded_at_its_next_hop() {
    use kirim::domain::MessageStatus;
    use kirim::ports::Clock;
    use kirim::service::jobs::Outcome;
    use kirim::service::{broadcasts, dispatch};
    // The memo of holds off, as in another process than the one that cancels: the hop
    // reads the broadcast.
    let p = paced("133", 2, false).await;
    let jobs = p.fan_out().await;
    assert_eq!(jobs.len(), 2);
    let Paced {
        deps,
        clock,
        queue,
        tenant,
        accepted,
        ..
    } = p;
    let credits = |deps: &kirim::service::Deps| {
        let deps = deps.clone();
        let tenant = tenant.id.clone();
        async move {
            deps.tenants
                .get_tenant(&tenant)
                .await
                .unwrap()
                .unwrap()
                .credits
        }
    };
    let before = credits(&deps).await;
    // The job as a transient failure sends it back: not to be tried for an hour.
    let mut job = jobs[0].clone();
    job["retry_at"] = json!((clock.now() + chrono::Duration::hours(1)).to_rfc3339());
    let body = job.to_string();
    assert!(
        matches!(
            dispatch::handle_in_batch(&deps, &body).await,
            Outcome::Again(..)
        ),
        "a retry of a broadcast that goes on waits out its backoff"
    );
    queue.take();
    broadcasts::cancel(&deps, &tenant.id, &accepted.id)
        .await
        .unwrap();
    assert_eq!(dispatch::handle_in_batch(&deps, &body).await, Outcome::Done);
    assert!(queue.take().is_empty(), "no further hop");
    let id = kirim::domain::MessageId::from_trusted(job["message_id"].as_str().unwrap());
    let m = deps
        .messages
        .get_message(&tenant.id, &id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.status, MessageStatus::Cancelled);
    assert_eq!(m.error.unwrap().code, "cancelled");
    assert_eq!(credits(&deps).await, before + m.price, "refunded");
    // The backoff's end sends nothing and refunds nothing twice.
    clock.advance(chrono::Duration::hours(2));
    assert_eq!(dispatch::handle(&deps, &body).await, Outcome::Done);
    let m = deps
        .messages
        .get_message(&tenant.id, &id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.status, MessageStatus::Cancelled, "never sent");
    assert_eq!(credits(&deps).await, before + m.price);
}

/// A campaign whose every message is already on its way to Meta has nothing left to
/// cancel: `409`, nothing refunded, and it completes as sent (it never reads `cancelled`).
#[tokio::test]
async fn a_campaign_whose_messages_are_all_on_their_way_cannot_be_cancelled_and_completes() {
    use kirim::domain::MessageStatus;
    use kirim::ports::StatusChange;
    use kirim::service::broadcasts;
    use kirim::service::errors::ServiceError;
    use kirim::service::jobs::QueueJob;
    let deps = kirim::wiring::memory_deps(
        kirim_tests::test_settings(),
        kirim_tests::ManualClock::new(),
    )
    .unwrap();
    let (tenant, accepted) = promo_broadcast(&deps, "131", 2).await;
    let job = next_fan_out(&deps).await;
    broadcasts::fan_out_in_slices(&deps, &job, 10)
        .await
        .unwrap();
    let mut ids = Vec::new();
    for r in deps
        .queue
        .receive(10, Duration::from_millis(500))
        .await
        .unwrap()
    {
        if let Some(QueueJob::Send(j)) = QueueJob::parse(&r.body) {
            ids.push(j.message_id);
        }
    }
    assert_eq!(ids.len(), 2, "both recipients queued");
    let credits = || async {
        deps.tenants
            .get_tenant(&tenant.id)
            .await
            .unwrap()
            .unwrap()
            .credits
    };
    let before = credits().await;
    // The dispatcher claims both (as a batch does before calling Meta).
    let move_all = |to: MessageStatus| {
        let (deps, tenant, ids) = (&deps, &tenant, &ids);
        async move {
            for id in ids {
                let moved = deps
                    .messages
                    .transition(
                        &tenant.id,
                        id,
                        to,
                        &StatusChange::default(),
                        chrono::Utc::now(),
                    )
                    .await
                    .unwrap();
                assert!(
                    matches!(moved, kirim::ports::Transition::Applied(_)),
                    "{to:?}"
                );
            }
        }
    };
    move_all(MessageStatus::Sending).await;
    let refused = broadcasts::cancel(&deps, &tenant.id, &accepted.id).await;
    assert!(
        matches!(refused, Err(ServiceError::Conflict(_))),
        "{refused:?}"
    );
    let view = broadcasts::view(&deps, &tenant.id, &accepted.id)
        .await
        .unwrap();
    assert_eq!(view.status, "sending");
    move_all(MessageStatus::Sent).await;
    let view = broadcasts::view(&deps, &tenant.id, &accepted.id)
        .await
        .unwrap();
    assert_eq!(
        (view.status, view.counts.get("sent")),
        ("completed", Some(&2))
    );
    assert_eq!(credits().await, before, "nothing refunded");
}
