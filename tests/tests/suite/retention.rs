//! Retention end to end on both backends (issue #6): every stored item carries the TTL of
//! its class; closed tenants are closed out; expired items are invisible, then swept and
//! counted per class; no content anywhere; the tenant export.

use std::time::Duration;

use chrono::{DateTime, Utc};
use kirim::config::Backend;
use kirim::domain::RetentionClass;
use kirim_tests::{captured_logs, moto_sdk, spawn_app, TestApp, OPERATOR_TOKEN};
use serde_json::{json, Value};

/// One stored item: keys, TTL and attributes.
pub(crate) struct Row {
    pub(crate) pk: String,
    pub(crate) sk: String,
    ttl: Option<i64>,
    pub(crate) attrs: Value,
}

fn av_json(v: &aws_sdk_dynamodb::types::AttributeValue) -> Value {
    use aws_sdk_dynamodb::types::AttributeValue as A;
    match v {
        A::S(s) => json!(s),
        A::N(n) => n
            .parse::<i64>()
            .map(Value::from)
            .unwrap_or_else(|_| json!(n)),
        A::Bool(b) => json!(b),
        A::Null(_) => Value::Null,
        A::L(l) => Value::Array(l.iter().map(av_json).collect()),
        A::M(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), av_json(v))).collect()),
        other => json!(format!("{other:?}")),
    }
}

/// Every item of the app's storage: on moto a Scan of `{stack}-Table`; in memory the
/// store's read-only view (the same keys the table would hold).
pub(crate) async fn all_items(app: &TestApp, b: Backend) -> Vec<Row> {
    match b {
        Backend::Aws => {
            let ddb = aws_sdk_dynamodb::Client::new(&moto_sdk().await);
            let mut pages = ddb
                .scan()
                .table_name(format!("{}-Table", app.stack))
                .into_paginator()
                .items()
                .send();
            let mut rows = Vec::new();
            while let Some(item) = pages.next().await {
                let item = item.expect("scan");
                let attrs: serde_json::Map<String, Value> =
                    item.iter().map(|(k, v)| (k.clone(), av_json(v))).collect();
                rows.push(Row {
                    pk: attrs["pk"].as_str().unwrap_or_default().to_owned(),
                    sk: attrs["sk"].as_str().unwrap_or_default().to_owned(),
                    ttl: attrs.get("ttl").and_then(Value::as_i64),
                    attrs: Value::Object(attrs),
                });
            }
            rows
        }
        Backend::Memory => app
            .app
            .deps
            .retention
            .stored_items()
            .await
            .expect("stored items")
            .into_iter()
            .map(|i| Row {
                pk: i.pk,
                sk: i.sk,
                ttl: i.ttl,
                attrs: i.attributes,
            })
            .collect(),
    }
}

/// The item types and their retention classes (docs/data-retention.md). `None`: no TTL
/// while the tenant exists (ActiveConfig).
fn class_of(pk: &str, sk: &str) -> Option<RetentionClass> {
    use RetentionClass::*;
    let table: &[(&str, &str, Option<RetentionClass>)] = &[
        ("TENANT#", "MSG#", Some(Messages)),
        ("WAMID#", "WAMID", Some(Messages)),
        ("TENANT#", "LEDGER#", Some(Billing)),
        ("AUDIT#", "EVENT#", Some(Audit)),
        ("TENANT#", "IDEM#", Some(Idempotency)),
        ("SESSION#", "SESSION", Some(Session)),
        ("TENANT#", "QSTAT#", Some(Stats)),
        ("TENANT#", "BROADCAST#", Some(Messages)),
        ("TENANT#", "BCLIST#", Some(BroadcastList)),
        ("TENANT#", "USAGE#", Some(Billing)),
        ("TENANT#", "NUMBER#", None),
        ("RATE#", "NEXT", Some(SendSlot)),
        ("LEASE#", "HEAVY", Some(SendSlot)),
        ("WAMID#", "PENDING#", Some(PendingStatus)),
        ("LOGINFAIL#", "ADDR#", Some(LoginFailures)),
        ("LOGINFAIL#", "TOTP", Some(LoginFailures)),
        ("TENANT#", "OPTIN#", Some(PendingStatus)),
        ("CALLBACKOWED", "OWED#", Some(PendingStatus)),
        ("CBFAIL#", "CBFAIL#", Some(CallbackFailures)),
        ("AUDITINTENT#", "INTENT#", Some(Audit)),
        ("AUDIT#", "PARKED#", Some(Audit)),
        ("LOGINADDR#", "FAIL", Some(LoginFailures)),
        ("WABA#", "TEMPLATE#", Some(Messages)),
        ("TENANT#", "PAIR#", Some(Messages)),
        ("TENANT#", "WINDOW#", Some(ServiceWindow)),
        ("TENANT#", "TENANT", None),
        ("TENANT#", "APIKEY#", None),
        ("TENANT#", "OPTOUT#", None),
        ("TENANT#", "USER#", None),
        ("TENANT#", "SETTINGS#", None),
        ("APIKEY#", "APIKEY", None),
        ("PHONE#", "PHONE", None),
        ("EMAIL#", "EMAIL", None),
        ("AUDIT#", "HEAD", None),
        ("RETENTION", "CHECKPOINT", None),
    ];
    table
        .iter()
        .find(|(p, s, _)| pk.starts_with(p) && sk.starts_with(s))
        .map(|(_, _, c)| *c)
        .unwrap_or_else(|| panic!("an item type no retention class covers: {pk} / {sk}"))
}

fn time_attr(attrs: &Value) -> Option<i64> {
    ["created_at", "at"]
        .iter()
        .find_map(|k| attrs[*k].as_str())
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.timestamp())
}

async fn call(
    app: &TestApp,
    method: &str,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = app
        .http
        .request(method.parse().expect("method"), app.url(path))
        .bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.expect("request");
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

async fn user_session(app: &TestApp, admin: &str) -> String {
    let email = format!(
        "{}@retention.example",
        ulid::Ulid::new().to_string().to_lowercase()
    );
    let password = "correct horse battery staple 42";
    let (st, _) = call(
        app,
        "POST",
        "/v1/users",
        admin,
        Some(json!({"email": email, "role": "admin", "password": password})),
    )
    .await;
    assert_eq!(st, 201);
    let res = app
        .http
        .post(app.url("/v1/auth/login"))
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .expect("login");
    assert_eq!(res.status(), 200);
    let v: Value = res.json().await.expect("json");
    v["token"].as_str().unwrap_or_default().to_owned()
}

async fn inbound_text(app: &TestApp, phone_number_id: &str, from: &str, text: &str) {
    inbound_text_at(app, phone_number_id, from, text, 1_700_000_000).await
}

/// An inbound text Meta stamped `at` (epoch seconds).
async fn inbound_text_at(app: &TestApp, phone_number_id: &str, from: &str, text: &str, at: i64) {
    let body = json!({"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages","value":{
        "messaging_product":"whatsapp",
        "metadata":{"display_phone_number":"60300000000","phone_number_id":phone_number_id},
        "contacts":[{"profile":{"name":"Aminah"},"wa_id":from}],
        "messages":[{"from":from,"id":format!("wamid.in.{}", ulid::Ulid::new()),"timestamp":at.to_string(),
            "type":"text","text":{"body":text}}]}}]}]});
    assert_eq!(app.post_webhook(&body).await.status(), 200);
}

async fn send_with_key(app: &TestApp, key: &str, idem: &str, body: Value) -> (u16, Value) {
    let res = app
        .http
        .post(app.url("/v1/messages"))
        .bearer_auth(key)
        .header("Idempotency-Key", idem)
        .json(&body)
        .send()
        .await
        .expect("send");
    let st = res.status().as_u16();
    (st, res.json().await.unwrap_or(Value::Null))
}

/// Exercises every write path, so that every item type exists.
async fn exercise(app: &TestApp, marker: &str) -> (kirim_tests::Onboarded, Vec<String>) {
    let t = app.onboard(50).await;
    let mut ids = Vec::new();
    // A template with the marker as a parameter, under an Idempotency-Key.
    let (st, v) = send_with_key(
        app,
        &t.key,
        &format!("k-{}", ulid::Ulid::new()),
        json!({
            "to": "+60123451111",
            "template": {"name": "order_update", "language": "en_US", "category": "utility",
                "components": [{"type": "body", "parameters": [{"type": "text", "text": marker}]}]},
        }),
    )
    .await;
    assert_eq!(st, 202);
    ids.push(v["id"].as_str().unwrap_or_default().to_owned());
    // A text body with the marker (the users wrote first: within the 24-hour window).
    app.user_wrote(&t.phone_number_id, "+60123452222").await;
    // One by phone and Meta's user id: the pairing is kept (no content).
    app.sandbox_inbound(
        json!({"phone_number_id": t.phone_number_id, "from": "+60123453333",
        "user_id": "MY.1234567890", "text": format!("hi {marker}")}),
    )
    .await;
    app.user_wrote(&t.phone_number_id, "+60123450004").await;
    let (st, v) = call(
        app,
        "POST",
        "/v1/messages",
        &t.key,
        Some(json!({"to": "+60123452222", "text": {"body": format!("hello {marker}")}})),
    )
    .await;
    assert_eq!(st, 202);
    ids.push(v["id"].as_str().unwrap_or_default().to_owned());
    // A send that fails for good (transient errors until the attempts are used up).
    let (st, v) = call(
        app,
        "POST",
        "/v1/messages",
        &t.key,
        Some(json!({"to": "+60123450004", "text": {"body": format!("retry {marker}")}})),
    )
    .await;
    assert_eq!(st, 202);
    let failing = v["id"].as_str().unwrap_or_default().to_owned();
    // Inbound text with the marker, and a STOP (an opt-out and a quality counter).
    inbound_text(
        app,
        &t.phone_number_id,
        "60123453333",
        &format!("hi {marker}"),
    )
    .await;
    inbound_text(app, &t.phone_number_id, "60123454444", "STOP").await;
    let (st, _) = call(app, "PUT", "/v1/opt-outs/%2B60123455555", &t.key, None).await;
    assert!(st == 200 || st == 201, "opt-out put: {st}");
    let (st, _) = call(
        app,
        "POST",
        &format!("/v1/platform/tenants/{}/credits", t.tenant_id),
        OPERATOR_TOKEN,
        Some(json!({"amount": 5, "reference": "inv-1"})),
    )
    .await;
    assert_eq!(st, 201);
    user_session(app, &t.key).await;
    for id in &ids {
        assert_eq!(app.wait_status(&t.key, id, "read").await["status"], "read");
    }
    assert_eq!(
        app.wait_status(&t.key, &failing, "failed").await["status"],
        "failed"
    );
    ids.push(failing);
    // Another user sends STOP, then START (later by Meta's time): that opt-out is lifted
    // and the opt-in mark kept against an older STOP redelivered (`OPTIN#`). (Not the
    // first STOP's user: the export counts that opt-out.)
    inbound_text(app, &t.phone_number_id, "60123456666", "STOP").await;
    inbound_text_at(
        app,
        &t.phone_number_id,
        "60123456666",
        "START",
        1_700_000_060,
    )
    .await;
    // A console user with 2FA signs in with a wrong code (`LOGINFAIL#…` / `TOTP`).
    let (email, _) = crate::users::new_user(app, &t.key, "operator").await;
    let session = crate::users::login_ok(app, &email).await;
    let totp = crate::users::enable_2fa(app, &session).await;
    let right = totp.generate(Utc::now().timestamp() as u64);
    let wrong = if right == "123456" {
        "654321"
    } else {
        "123456"
    };
    let (st, body) = crate::access::call(
        app,
        "POST",
        "/v1/auth/login",
        None,
        Some(json!({"email": email, "password": crate::users::PASSWORD, "totp_code": wrong})),
    )
    .await;
    assert_eq!(st, 401, "a wrong code: {body}");
    quiet_tenants_leftovers(app, &t, &ids[0]).await;
    (t, ids)
}

/// A status-callback queue that refuses every message (an SQS outage).
struct RefusingQueue;

#[async_trait::async_trait]
impl kirim::ports::DispatchQueue for RefusingQueue {
    async fn send(&self, _body: &str) -> Result<(), kirim::store_error::StoreError> {
        Err(kirim::store_error::StoreError::Unavailable(
            "sqs: service unavailable".into(),
        ))
    }
    async fn receive(
        &self,
        _max: usize,
        _wait: Duration,
    ) -> Result<Vec<kirim::ports::Received>, kirim::store_error::StoreError> {
        Ok(Vec::new())
    }
    async fn delete(&self, _receipt: &str) -> Result<(), kirim::store_error::StoreError> {
        Ok(())
    }
    async fn retry_after(
        &self,
        _receipt: &str,
        _delay: Duration,
    ) -> Result<(), kirim::store_error::StoreError> {
        Ok(())
    }
    async fn dead_letters(
        &self,
        _max: usize,
    ) -> Result<Vec<kirim::ports::DeadLetter>, kirim::store_error::StoreError> {
        Ok(Vec::new())
    }
    async fn redrive(
        &self,
        _ids: Option<&[String]>,
        _max: usize,
    ) -> Result<kirim::ports::Redriven, kirim::store_error::StoreError> {
        Ok(Default::default())
    }
}

/// What only failures leave behind, on a second tenant whose chain nothing appends to
/// afterwards (an append would link its parked event in), and an onboarding that died: a
/// status callback given up at its last attempt (`CBFAIL#`), one the callback queue refused
/// (`CALLBACKOWED` / `OWED#`: kept for the one-minute drain, as `message`'s status change
/// but on this tenant's callback setting), an audit event the chain could not take
/// (`PARKED#`), and the audit intent of an onboarding whose process died (`AUDITINTENT#`;
/// young, so the one-minute sweep leaves it).
async fn quiet_tenants_leftovers(app: &TestApp, t: &kirim_tests::Onboarded, message: &str) {
    use kirim::domain::{MessageId, TenantId};
    let quiet = app.onboard(1).await;
    crate::callback_failures::receiver_answering(
        app,
        &quiet,
        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
    )
    .await;
    crate::callback_failures::give_up_one(app, &quiet).await;
    let mut refused = app.app.deps.clone();
    refused.callback_queue = std::sync::Arc::new(RefusingQueue);
    let mut record = refused
        .messages
        .get_message(
            &TenantId::from_trusted(t.tenant_id.clone()),
            &MessageId::from_trusted(message),
        )
        .await
        .expect("read")
        .expect("the message");
    record.tenant_id = TenantId::from_trusted(quiet.tenant_id.clone());
    kirim::service::callbacks::status_changed(&refused, &record).await;
    let down = crate::audit::failing(
        app,
        1,
        kirim::store_error::StoreError::Unavailable("throttled".into()),
    );
    kirim::service::audit::record_or_park(
        &down,
        crate::stepped_audit::draft_on(&record.tenant_id, "POST /v1/parked"),
    )
    .await;
    let hanging = crate::audit::OnboardingWindow::hanging(app);
    let died = tokio::time::timeout(
        Duration::from_millis(1500),
        crate::audit::onboard_through(&hanging, &crate::audit::new_pnid()),
    )
    .await;
    assert!(died.is_err(), "the onboarding never answers: {died:?}");
}

async fn every_stored_item_carries_the_ttl_of_its_class(b: Backend) {
    let app = spawn_app(b).await;
    let t0 = Utc::now().timestamp();
    let (t, _) = exercise(&app, &format!("M-{}", ulid::Ulid::new())).await;
    // And a broadcast (its record, its messages, its list until the fan-out ends).
    let res = app
        .http
        .post(app.url("/v1/broadcasts"))
        .bearer_auth(&t.key)
        .json(&json!({"template": kirim_tests::template_of("utility"),
            "recipients": ["+60123459019", "+60123459029"]}))
        .send()
        .await
        .expect("broadcast");
    assert_eq!(res.status(), 202);
    // And ended keys: one revoked, one rotated (its grace an hour), which expire 90 days
    // after they ended; the rotation's new key, live, has no TTL.
    for (name, end) in [("revoked", "DELETE"), ("rotated", "POST")] {
        let (st, key) = call(
            &app,
            "POST",
            "/v1/api-keys",
            &t.key,
            Some(json!({"name": name, "role": "operator"})),
        )
        .await;
        assert_eq!(st, 201, "{key}");
        let id = key["id"].as_str().expect("its id");
        let (st, body) = match end {
            "DELETE" => call(&app, "DELETE", &format!("/v1/api-keys/{id}"), &t.key, None).await,
            _ => {
                call(
                    &app,
                    "POST",
                    &format!("/v1/api-keys/{id}/rotate"),
                    &t.key,
                    Some(json!({"grace_period_hours": 1})),
                )
                .await
            }
        };
        assert!(st == 204 || st == 200 || st == 201, "{name}: {st} {body}");
    }
    let t1 = Utc::now().timestamp();
    let retention = &app.app.deps.settings.retention;
    let mut seen = std::collections::BTreeSet::new();
    for row in all_items(&app, b).await {
        let class = class_of(&row.pk, &row.sk);
        // An API key: none while it can work; once it ended, the end + 90 days.
        if row.pk.starts_with("APIKEY#") || row.sk.starts_with("APIKEY#") {
            let at = |k: &str| {
                row.attrs[k]
                    .as_str()
                    .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                    .map(|t| t.timestamp())
            };
            let revoked = (row.attrs["revoked"] == true)
                .then(|| at("revoked_at"))
                .flatten();
            let end = match (revoked, at("expires_at")) {
                (Some(r), Some(e)) => Some(r.min(e)),
                (r, e) => r.or(e),
            };
            let keep = kirim::domain::ENDED_KEY_RETENTION.as_secs() as i64;
            assert_eq!(row.ttl, end.map(|e| e + keep), "{} / {}", row.pk, row.sk);
            seen.insert(format!("APIKEY ended: {}", end.is_some()));
            if row.pk.starts_with("APIKEY#") {
                seen.insert("APIKEY/APIKEY".to_owned());
            } else {
                seen.insert("TENANT/APIKEY".to_owned());
            }
            continue;
        }
        // A number's send slot (renewed by every reservation: an hour after its last use)
        // and an uploaded list not yet deleted (a 7-day backstop) may be written after t1,
        // while the fan-out and the dispatcher go on: only bound them.
        if let Some(c @ (RetentionClass::SendSlot | RetentionClass::BroadcastList)) = class {
            let most = retention.duration(c).expect("a technical ttl").as_secs() as i64;
            let ttl = row.ttl.expect("a technical ttl");
            assert!(
                ttl > t0 && ttl <= Utc::now().timestamp() + most + 5,
                "{} ttl {ttl}",
                row.sk
            );
            continue;
        }
        // A usage row (Meta's pricing of one day) is kept for Billing after its day ends.
        if row.sk.starts_with("USAGE#") {
            let day = chrono::NaiveDate::parse_from_str(
                row.attrs["date"].as_str().unwrap_or_default(),
                "%Y-%m-%d",
            )
            .expect("a usage row's date");
            let end = day
                .succ_opt()
                .unwrap()
                .and_hms_opt(0, 0, 0)
                .unwrap()
                .and_utc();
            assert_eq!(
                row.ttl,
                retention.expiry(RetentionClass::Billing, end),
                "{}",
                row.sk
            );
            seen.insert("TENANT/USAGE".to_owned());
            continue;
        }
        let kind = format!(
            "{}{}",
            row.pk.split('#').next().unwrap_or_default(),
            row.sk
                .split('#')
                .next()
                .map(|s| format!("/{s}"))
                .unwrap_or_default()
        );
        seen.insert(kind.clone());
        let Some(class) = class else {
            assert_eq!(
                row.ttl, None,
                "{kind}: active configuration has no TTL while the tenant exists"
            );
            continue;
        };
        let secs = retention
            .duration(class)
            .expect("a class with an expiry")
            .as_secs() as i64;
        let ttl = row.ttl.unwrap_or_else(|| panic!("{kind} has no ttl"));
        match time_attr(&row.attrs) {
            Some(created) => assert!(
                (ttl - secs - created).abs() <= 1,
                "{kind}: ttl {ttl} is not created {created} + {secs}"
            ),
            None => assert!(
                (t0 - 1..=t1 + 1).contains(&(ttl - secs)),
                "{kind}: ttl {ttl} is not written-at + {secs}"
            ),
        }
        if row
            .attrs
            .get("expires_at")
            .and_then(Value::as_i64)
            .is_some()
            && class != RetentionClass::Session
        {
            assert_eq!(
                row.attrs["expires_at"].as_i64(),
                Some(ttl),
                "{kind}: expires_at equals ttl"
            );
        }
    }
    for kind in [
        "TENANT/MSG",
        "WAMID/WAMID",
        "TENANT/LEDGER",
        "AUDIT/EVENT",
        "TENANT/IDEM",
        "SESSION/SESSION",
        "TENANT/QSTAT",
        "TENANT/BROADCAST",
        "TENANT/TENANT",
        "TENANT/APIKEY",
        "TENANT/OPTOUT",
        "TENANT/USER",
        "APIKEY/APIKEY",
        "APIKEY ended: true",
        "APIKEY ended: false",
        "PHONE/PHONE",
        "EMAIL/EMAIL",
        "AUDIT/HEAD",
        "LOGINADDR/FAIL",
        "TENANT/PAIR",
        "TENANT/WINDOW",
        "TENANT/OPTIN",
        "LOGINFAIL/TOTP",
        "CBFAIL/CBFAIL",
        "CALLBACKOWED/OWED",
        "AUDIT/PARKED",
        "AUDITINTENT/INTENT",
    ] {
        assert!(seen.contains(kind), "no {kind} item was written: {seen:?}");
    }
}

async fn no_content_reaches_a_table_a_queue_or_a_log_line(b: Backend) {
    let app = spawn_app(b).await;
    let marker = format!("CONTENT-MARK-{}", ulid::Ulid::new());
    exercise(&app, &marker).await;
    for row in all_items(&app, b).await {
        assert!(
            !row.attrs.to_string().contains(&marker),
            "content in {} / {}",
            row.pk,
            row.sk
        );
    }
    // Dispatched jobs are deleted: nothing is left on the dispatch queue, nothing on the DLQ.
    let left = app
        .app
        .deps
        .queue
        .receive(10, Duration::ZERO)
        .await
        .expect("receive");
    assert!(
        left.iter().all(|m| !m.body.contains(&marker)),
        "content left on the dispatch queue"
    );
    assert!(
        left.is_empty(),
        "dispatched jobs are deleted from the queue"
    );
    let dead = app.app.deps.queue.dead_letters(100).await.expect("dlq");
    assert!(
        dead.iter().all(|m| !m.body.contains(&marker)),
        "content on the dead-letter queue"
    );
    let logs = captured_logs();
    assert!(!logs.contains(&marker), "content in a log line");
    for raw in [
        "60123451111",
        "60123452222",
        "60123453333",
        "60123454444",
        "60123455555",
    ] {
        assert!(
            !logs.contains(raw),
            "a full phone number in the logs: {raw}"
        );
    }
}

async fn a_run_out_of_time_inside_a_close_out_stops_there_and_the_next_run_finishes_it(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(10).await;
    let (st, _) = call(&app, "PUT", "/v1/opt-outs/%2B60123456666", &t.key, None).await;
    assert!(st == 200 || st == 201);
    let (st, _) = call(
        &app,
        "DELETE",
        &format!("/v1/platform/tenants/{}", t.tenant_id),
        OPERATOR_TOKEN,
        None,
    )
    .await;
    assert_eq!(st, 200);
    let id = kirim::domain::TenantId::parse(&t.tenant_id).expect("id");
    let deps = &app.app.deps;
    let out_of_time = kirim::service::retention::Limits {
        max_time: Duration::ZERO,
        ..Default::default()
    };
    let first = kirim::service::retention::run_with(deps, out_of_time)
        .await
        .expect("run");
    assert!(!first.complete, "stopped inside the close-out");
    let done = first
        .closed_out
        .iter()
        .find(|c| c.tenant_id == id)
        .expect("its close-out began");
    assert!(done.counts.cut_short, "{:?}", done.counts);
    assert_eq!(deps.retention.closed_out_at(&id).await.expect("read"), None);
    let second = kirim::service::retention::run_with(deps, Default::default())
        .await
        .expect("run");
    let done = second
        .closed_out
        .iter()
        .find(|c| c.tenant_id == id)
        .expect("finished by the next run");
    assert!(!done.counts.cut_short, "{:?}", done.counts);
    assert!(deps
        .retention
        .closed_out_at(&id)
        .await
        .expect("read")
        .is_some());
    // Every configuration item of the tenant has its TTL now, the opt-out included.
    let untimed: Vec<String> = all_items(&app, b)
        .await
        .into_iter()
        .filter(|r| {
            r.pk == format!("TENANT#{}", t.tenant_id)
                && ["APIKEY#", "OPTOUT#", "USER#", "SETTINGS#"]
                    .iter()
                    .any(|p| r.sk.starts_with(p))
                && r.ttl.is_none()
        })
        .map(|r| r.sk)
        .collect();
    assert!(untimed.is_empty(), "{untimed:?}");
}

async fn a_closed_tenant_is_closed_out_once_by_the_retention_run(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(10).await;
    let other = app.onboard(10).await;
    let session = user_session(&app, &t.key).await;
    let (st, _) = call(&app, "PUT", "/v1/opt-outs/%2B60123456666", &t.key, None).await;
    assert!(st == 200 || st == 201);
    let (st, _) = call(
        &app,
        "PUT",
        "/v1/settings/status-callback",
        &t.key,
        Some(
            json!({"url": "https://hooks.example.com/kirim", "secret": "whsec_closing_0123456789"}),
        ),
    )
    .await;
    assert_eq!(st, 200);
    let id = app.send_ok(&t.key, "+60123457777").await;
    app.wait_status(&t.key, &id, "read").await;
    let (st, _) = call(
        &app,
        "DELETE",
        &format!("/v1/platform/tenants/{}", t.tenant_id),
        OPERATOR_TOKEN,
        None,
    )
    .await;
    assert_eq!(st, 200);
    let tenant = app
        .app
        .deps
        .tenants
        .get_tenant(&kirim::domain::TenantId::parse(&t.tenant_id).expect("id"))
        .await
        .expect("get")
        .expect("tenant");
    let closed_at = tenant.status_changed_at.expect("closing time").timestamp();
    // A call refused after the closing, before the close-out: on the tenant's chain, later,
    // and left beyond its head (its head write failed): a closed chain is not repaired.
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    kirim::service::audit::record(
        &crate::audit::head_write_failing(&app),
        crate::stepped_audit::draft_on(&tenant.id, "GET /v1/account"),
    )
    .await
    .expect("recorded");

    let (st, report) = call(
        &app,
        "POST",
        "/v1/platform/retention/run",
        OPERATOR_TOKEN,
        None,
    )
    .await;
    assert_eq!(st, 200, "{report}");
    let done = report["closed_out"].as_array().cloned().unwrap_or_default();
    assert_eq!(done.len(), 1, "one closed tenant: {report}");
    assert_eq!(done[0]["tenant_id"], t.tenant_id.as_str());
    assert_eq!(done[0]["keys_revoked"], 1);
    assert!(
        done[0].get("sessions_deleted").is_none(),
        "sessions are not looked for (no scan of the table): {report}"
    );
    assert_eq!(done[0]["phone_route_removed"], true);
    assert_eq!(report["complete"], true);
    for class in RetentionClass::ALL {
        assert!(
            report["deleted"][class.as_str()].is_u64(),
            "{class:?} counted: {report}"
        );
    }
    // The run's report is in the platform's audit trail.
    let q = kirim::ports::AuditQuery {
        limit: 100,
        action: Some("retention.run".into()),
        ..Default::default()
    };
    let (events, _) = app
        .app
        .deps
        .audit
        .list("platform", &q)
        .await
        .expect("platform chain");
    let recorded: Value =
        serde_json::from_str(&events.first().expect("a retention.run event").details)
            .expect("details");
    assert_eq!(recorded["closed_out"][0]["tenant_id"], t.tenant_id.as_str());
    assert_eq!(recorded["deleted"], report["deleted"]);
    let (_, verify) = call(&app, "GET", "/v1/audit/verify", &other.key, None).await;
    assert_eq!(verify["valid"], true);

    let r = &app.app.deps.settings.retention;
    let messages = r.messages.as_secs() as i64;
    let billing = r.billing.as_secs() as i64;
    let mine = format!("TENANT#{}", t.tenant_id);
    let rows = all_items(&app, b).await;
    for row in &rows {
        if row.pk == mine && row.sk == "TENANT" {
            assert_eq!(
                row.ttl,
                Some(closed_at + billing),
                "the account record: 7 years from closing"
            );
            assert!(row.attrs["closed_out_at"].is_string());
        } else if row.pk == mine && row.sk.starts_with("APIKEY#") {
            // Revoked by the close-out: its own 90 days from then, before the
            // configuration's TTL.
            let revoked_at = row.attrs["revoked_at"]
                .as_str()
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .expect("revoked at the close-out")
                .timestamp();
            let ended = revoked_at + kirim::domain::ENDED_KEY_RETENTION.as_secs() as i64;
            assert_eq!(
                row.ttl,
                Some(ended.min(closed_at + messages)),
                "{}: 90 days after its revocation",
                row.sk
            );
        } else if row.pk == mine && ["OPTOUT#", "USER#"].iter().any(|p| row.sk.starts_with(p)) {
            assert_eq!(
                row.ttl,
                Some(closed_at + messages),
                "{}: configuration expires from closing",
                row.sk
            );
        }
        if row.pk.starts_with("APIKEY#") && row.attrs["tenant_id"] == t.tenant_id.as_str() {
            assert_eq!(row.attrs["revoked"], true, "keys are revoked");
        }
        assert_ne!(
            row.pk,
            format!("PHONE#{}", t.phone_number_id),
            "the phone route is gone"
        );
        if row.pk.starts_with("SESSION#") && row.attrs["tenant_id"] == t.tenant_id.as_str() {
            // Left to their own TTL: 12 hours from their login at most.
            let ttl = row.ttl.expect("a session carries its TTL");
            assert!(
                ttl <= Utc::now().timestamp() + 12 * 3600,
                "a session expires within 12 h"
            );
        }
    }
    assert!(
        rows.iter()
            .any(|r| r.pk == format!("PHONE#{}", other.phone_number_id)),
        "other tenants keep theirs"
    );
    // The chain's head outlives its newest event (the close call's own, written after the
    // closing): a head gone first would have a later append start the chain again at 1.
    let chain = format!("AUDIT#{}", t.tenant_id);
    let newest = rows
        .iter()
        .filter(|r| r.pk == chain && r.sk.starts_with("EVENT#"))
        .filter_map(|r| r.ttl)
        .max()
        .expect("the tenant's audit events");
    assert!(
        newest > closed_at + r.audit.as_secs() as i64 - 60,
        "{newest}"
    );
    let head = rows
        .iter()
        .find(|r| r.pk == chain && r.sk == "HEAD")
        .expect("the chain's head");
    assert!(
        head.ttl.is_some_and(|ttl| ttl >= newest),
        "head {:?} against the newest event {newest}",
        head.ttl
    );
    let (st, _) = call(&app, "GET", "/v1/account", &session, None).await;
    assert_eq!(
        st, 401,
        "the closed tenant's session no longer authenticates"
    );
    let secret = app
        .app
        .deps
        .secrets
        .store()
        .get_secret(&tenant.meta_token_secret)
        .await;
    assert!(
        !matches!(secret, Ok(Some(_))),
        "the Meta token is scheduled for deletion"
    );
    let callback_secret = format!(
        "{}tenants/{}/status-callback-secret",
        app.app.deps.settings.secret_prefix, t.tenant_id
    );
    let secret = app
        .app
        .deps
        .secrets
        .store()
        .get_secret(&callback_secret)
        .await;
    assert!(
        !matches!(secret, Ok(Some(_))),
        "the status callback's secret is scheduled for deletion"
    );
    // The number can be onboarded again.
    let (st, _) = call(
        &app,
        "POST",
        "/v1/platform/tenants",
        OPERATOR_TOKEN,
        Some(json!({
        "name": "Next Owner", "waba_id": "2", "phone_number_id": t.phone_number_id,
        "meta_access_token": "EAAG-next", "credits": 1})),
    )
    .await;
    assert_eq!(st, 201, "the number is free again");
    // A later run skips the tenant.
    let (_, again) = call(
        &app,
        "POST",
        "/v1/platform/retention/run",
        OPERATOR_TOKEN,
        None,
    )
    .await;
    assert_eq!(again["closed_out"], json!([]), "{again}");
}

/// The close-out gives a closed tenant's chain head a TTL from the events it has then; an
/// event appended later (an operator's refused call about the tenant) expires later, so the
/// head must follow it, or about two years on the head would expire before the chain's
/// newest events and the chain would read as cut.
async fn a_closed_out_tenants_chain_head_outlives_events_appended_after_the_close_out(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(10).await;
    let path = format!("/v1/platform/tenants/{}", t.tenant_id);
    let (st, _) = call(&app, "DELETE", &path, OPERATOR_TOKEN, None).await;
    assert_eq!(st, 200);
    let run = "/v1/platform/retention/run";
    let (st, report) = call(&app, "POST", run, OPERATOR_TOKEN, None).await;
    assert_eq!(st, 200, "{report}");
    assert_eq!(report["closed_out"][0]["tenant_id"], t.tenant_id.as_str());
    let chain = format!("AUDIT#{}", t.tenant_id);
    let head_ttl = |rows: &[Row]| {
        rows.iter()
            .find(|r| r.pk == chain && r.sk == "HEAD")
            .and_then(|r| r.ttl)
    };
    let closed_out = head_ttl(&all_items(&app, b).await).expect("the close-out's head TTL");

    // Later (expiries are in whole seconds), two events on the closed tenant's chain.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let id = kirim::domain::TenantId::parse(&t.tenant_id).expect("id");
    for action in [
        "GET /v1/platform/tenants/{id}",
        "POST /v1/platform/tenants/{id}/credits",
    ] {
        kirim::service::audit::record(&app.app.deps, crate::stepped_audit::draft_on(&id, action))
            .await
            .expect("recorded");
    }
    let rows = all_items(&app, b).await;
    let newest = rows
        .iter()
        .filter(|r| r.pk == chain && r.sk.starts_with("EVENT#"))
        .filter_map(|r| r.ttl)
        .max()
        .expect("the chain's events");
    assert!(newest > closed_out, "{newest} after {closed_out}");
    assert_eq!(
        head_ttl(&rows),
        Some(newest),
        "the head expires with its newest event"
    );
}

/// With the audit retention shorter than the messages', a closed tenant's users (kept as
/// config, for the messages' retention) outlive the audit class: the chain's head must
/// outlive them, or a sign-in attempt after it expired would start the chain again with a
/// head of no TTL, which no close-out comes back for.
async fn a_closed_out_tenants_chain_head_outlives_its_users_when_audit_is_kept_shorter(b: Backend) {
    let mut cfg = kirim_tests::local_config(b).await;
    cfg.settings.retention.audit = Duration::from_secs(24 * 3600);
    let messages = cfg.settings.retention.messages.as_secs() as i64;
    let app = kirim_tests::spawn_with(cfg).await;
    let t = app.onboard(10).await;
    user_session(&app, &t.key).await;
    let path = format!("/v1/platform/tenants/{}", t.tenant_id);
    let (st, _) = call(&app, "DELETE", &path, OPERATOR_TOKEN, None).await;
    assert_eq!(st, 200);
    let run = "/v1/platform/retention/run";
    let (st, report) = call(&app, "POST", run, OPERATOR_TOKEN, None).await;
    assert_eq!(st, 200, "{report}");
    assert_eq!(report["closed_out"][0]["tenant_id"], t.tenant_id.as_str());
    let rows = all_items(&app, b).await;
    let chain = format!("AUDIT#{}", t.tenant_id);
    let head = rows
        .iter()
        .find(|r| r.pk == chain && r.sk == "HEAD")
        .and_then(|r| r.ttl)
        .expect("the close-out's head TTL");
    let users: Vec<i64> = rows
        .iter()
        .filter(|r| r.pk == format!("TENANT#{}", t.tenant_id) && r.sk.starts_with("USER#"))
        .map(|r| r.ttl.expect("a closed tenant's user expires"))
        .collect();
    assert!(!users.is_empty(), "the tenant's user");
    for user in users {
        assert!(user >= Utc::now().timestamp() + messages - 60, "{user}");
        assert!(head >= user, "the head {head} outlives the user {user}");
    }
}

async fn the_export_streams_the_tenants_metadata_as_json_lines(b: Backend) {
    let app = spawn_app(b).await;
    let marker = format!("EXPORT-MARK-{}", ulid::Ulid::new());
    let (t, ids) = exercise(&app, &marker).await;
    let other = app.onboard(5).await;
    let other_msg = app.send_ok(&other.key, "+60123458888").await;
    let res = app
        .http
        .get(app.url("/v1/account/export"))
        .bearer_auth(&t.key)
        .send()
        .await
        .expect("export");
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/x-ndjson");
    let text = res.text().await.expect("body");
    assert!(!text.contains(&marker), "no content in the export");
    assert!(
        !text.contains(&t.key) && !text.contains("EAAG-test-meta-token"),
        "no secrets"
    );
    assert!(!text.contains(&other_msg), "no other tenant's data");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object a line"))
        .collect();
    let count = |kind: &str| lines.iter().filter(|l| l["type"] == kind).count();
    assert_eq!(
        lines.first().map(|l| l["type"].clone()),
        Some(json!("export"))
    );
    assert_eq!(lines.last().map(|l| l["type"].clone()), Some(json!("end")));
    assert_eq!(count("message"), ids.len());
    for id in &ids {
        assert!(lines
            .iter()
            .any(|l| l["type"] == "message" && l["id"] == id.as_str()));
    }
    assert!(count("opt_out") >= 2, "the STOP and the API opt-out");
    assert!(count("audit_event") >= 3);
    assert!(
        count("ledger_entry") >= 5,
        "opening top-up, three debits, the refund, a top-up"
    );
    assert_eq!(count("phone_number"), 1, "the tenant's one number");
    let today = chrono::Utc::now().date_naive().to_string();
    let (st, usage) = call(
        &app,
        "GET",
        &format!("/v1/usage?from={today}&to={today}"),
        &t.key,
        None,
    )
    .await;
    assert_eq!(st, 200, "{usage}");
    let rows = usage["usage"].as_array().cloned().unwrap_or_default();
    assert!(!rows.is_empty(), "Meta priced the read messages: {usage}");
    let exported: Vec<Value> = lines
        .iter()
        .filter(|l| l["type"] == "usage_row")
        .map(|l| {
            let mut l = l.clone();
            if let Some(m) = l.as_object_mut() {
                m.remove("type");
            }
            l
        })
        .collect();
    assert_eq!(
        exported, rows,
        "the usage rows, as GET /v1/usage shows them"
    );
    let read_only: Value = app
        .http
        .post(app.url("/v1/api-keys"))
        .bearer_auth(&t.key)
        .json(&json!({"name": "ro", "role": "read_only"}))
        .send()
        .await
        .expect("key")
        .json()
        .await
        .expect("json");
    let ro = read_only["key"].as_str().unwrap_or_default();
    let res = app
        .http
        .get(app.url("/v1/account/export"))
        .bearer_auth(ro)
        .send()
        .await
        .expect("export");
    assert_eq!(res.status(), 403, "admins only");
}

/// Local mode with every expiring class shortened to `secs` seconds.
async fn spawn_short(b: Backend, secs: u64) -> TestApp {
    let mut cfg = kirim_tests::local_config(b).await;
    let d = Duration::from_secs(secs);
    cfg.settings.retention.messages = d;
    cfg.settings.retention.audit = d;
    cfg.settings.retention.billing = d;
    cfg.settings.retention.idempotency = d;
    cfg.settings.retention.stats = d;
    kirim_tests::spawn_with(cfg).await
}

fn template_body(to: &str) -> Value {
    json!({"to": to, "template": kirim_tests::template_of("utility")})
}

async fn expired_items_are_invisible_then_swept_and_counted_per_class(b: Backend) {
    let app = spawn_short(b, 3).await;
    let t = app.onboard(10).await;
    let (k1, k2) = (
        format!("k1-{}", ulid::Ulid::new()),
        format!("k2-{}", ulid::Ulid::new()),
    );
    let (st, first) = send_with_key(&app, &t.key, &k1, template_body("+60123451010")).await;
    assert_eq!(st, 202);
    let first = first["id"].as_str().unwrap_or_default().to_owned();
    let (st, second) = send_with_key(&app, &t.key, &k2, template_body("+60123452020")).await;
    assert_eq!(st, 202);
    let second = second["id"].as_str().unwrap_or_default().to_owned();
    assert_eq!(
        app.wait_status(&t.key, &first, "read").await["status"],
        "read"
    );
    assert_eq!(
        app.wait_status(&t.key, &second, "read").await["status"],
        "read"
    );
    let (st, _) = call(&app, "PUT", "/v1/opt-outs/%2B60123453030", &t.key, None).await;
    assert!(st == 200 || st == 201);
    let (st, _) = send_with_key(&app, &t.key, &k1, template_body("+60123459999")).await;
    assert_eq!(st, 409, "a live key with another body");
    let (_, audit) = call(&app, "GET", "/v1/audit", &t.key, None).await;
    assert!(!audit["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .is_empty());

    tokio::time::sleep(Duration::from_millis(4_200)).await;
    // Every read path ignores what has expired (moto never deletes it).
    let (st, _) = call(&app, "GET", &format!("/v1/messages/{first}"), &t.key, None).await;
    assert_eq!(st, 404, "an expired message is not found");
    let (_, list) = call(&app, "GET", "/v1/messages", &t.key, None).await;
    assert_eq!(
        list["messages"],
        json!([]),
        "expired messages are not listed"
    );
    let (_, audit) = call(&app, "GET", "/v1/audit", &t.key, None).await;
    assert_eq!(
        audit["events"],
        json!([]),
        "expired audit events are not listed"
    );
    let (_, verify) = call(&app, "GET", "/v1/audit/verify", &t.key, None).await;
    assert_eq!(verify["valid"], true, "expiry is not tampering");
    let tid = kirim::domain::TenantId::parse(&t.tenant_id).expect("id");
    assert!(
        app.app
            .deps
            .ledger
            .entries(&tid)
            .await
            .expect("ledger")
            .is_empty(),
        "expired ledger entries are not read"
    );
    let mid = kirim::domain::MessageId::parse(&first).expect("message id");
    let wamid = all_items(&app, b)
        .await
        .into_iter()
        .find_map(|r| {
            (r.pk.starts_with("WAMID#") && r.attrs["message_id"] == first.as_str())
                .then(|| r.pk[6..].to_owned())
        })
        .expect("the wamid index item is still stored");
    assert_eq!(
        app.app
            .deps
            .messages
            .message_by_wamid(&wamid)
            .await
            .expect("wamid"),
        None,
        "expired wamid index"
    );
    assert!(app
        .app
        .deps
        .messages
        .get_message(&tid, &mid)
        .await
        .expect("get")
        .is_none());
    let export = app
        .http
        .get(app.url("/v1/account/export"))
        .bearer_auth(&t.key)
        .send()
        .await
        .expect("export")
        .text()
        .await
        .expect("body");
    assert!(
        !export.contains("\"type\":\"message\"")
            && !export.contains("\"type\":\"ledger_entry\"")
            && !export.contains("\"type\":\"audit_event\""),
        "the export holds nothing expired: {export}"
    );
    assert!(
        export.contains("\"type\":\"opt_out\""),
        "opt-outs are kept while the tenant exists"
    );
    // The template catalogue expired with the messages (the Messages class): read it again.
    let (st, _) = call(&app, "POST", "/v1/templates/sync", &t.key, None).await;
    assert_eq!(st, 200);
    let (st, again) = send_with_key(&app, &t.key, &k1, template_body("+60123459999")).await;
    assert_eq!(st, 202, "an expired Idempotency-Key is free again");
    assert_ne!(again["id"], first.as_str());

    let (st, report) = call(
        &app,
        "POST",
        "/v1/platform/retention/run",
        OPERATOR_TOKEN,
        None,
    )
    .await;
    assert_eq!(st, 200);
    let n = |class: &str| report["deleted"][class].as_u64().unwrap_or(0);
    assert!(
        n("messages") >= 4,
        "two messages and their wamid index items: {report}"
    );
    assert!(
        n("billing") >= 3,
        "the opening top-up and two debits: {report}"
    );
    assert!(n("audit") >= 3, "{report}");
    assert!(n("idempotency") >= 1, "the second key: {report}");
    // (The day's quality counter is not among them: the send after expiry bumped it again,
    // and every bump renews its TTL.)
    let total: u64 = RetentionClass::ALL.iter().map(|c| n(c.as_str())).sum();
    assert_eq!(report["deleted_expired"].as_u64(), Some(total));
    let ran_at = report["ran_at"]
        .as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.timestamp())
        .expect("ran_at");
    for row in all_items(&app, b).await {
        assert!(
            row.ttl.is_none_or(|t| t > ran_at),
            "{} / {} expired but still stored",
            row.pk,
            row.sk
        );
    }
    let (_, audit) = call(&app, "GET", "/v1/audit", &t.key, None).await;
    assert!(
        audit["events"].as_array().is_some_and(|e| !e.is_empty()),
        "the new send is audited"
    );
}

async fn a_sweep_cut_short_resumes_from_its_checkpoint(b: Backend) {
    let app = spawn_short(b, 1).await;
    let t = app.onboard(10).await;
    // Its template catalogue would live 1 s too (the Messages class), and may be gone
    // already on a loaded machine: write the template the sends use, kept for an hour, as
    // a sync an hour long would (not read back, which could find it expired).
    let kept = kirim::ports::CatalogueTemplate {
        waba_id: "1000001".into(),
        name: "order_update".into(),
        language: "en_US".into(),
        category: kirim::domain::TemplateCategory::Utility,
        status: kirim::domain::TemplateStatus::Approved,
        quality: kirim::domain::TemplateQuality::Green,
        body_parameters: 1,
        meta_id: None,
        updated_at: chrono::Utc::now(),
        expires_at: Some(chrono::Utc::now().timestamp() + 3600),
    };
    app.app
        .deps
        .templates
        .put_template(&kept)
        .await
        .expect("put");
    for i in 0..3 {
        app.send_ok(&t.key, &format!("+6012345{:04}", 6100 + i))
            .await;
    }
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let limits = kirim::service::retention::Limits {
        page_size: 3,
        pause: Duration::from_millis(1),
        max_pages: 1,
        ..Default::default()
    };
    let deps = &app.app.deps;
    let mut deleted = 0;
    let mut runs = 0;
    loop {
        let r = kirim::service::retention::run_with(deps, limits)
            .await
            .expect("run");
        runs += 1;
        assert_eq!(
            r.resumed,
            runs > 1,
            "each run after the first continues the pass"
        );
        deleted += r.deleted_expired;
        if r.complete {
            break;
        }
        assert!(runs < 200, "the pass ends");
    }
    if b == Backend::Aws {
        assert!(
            runs > 2,
            "a page of 3 items per run: the pass took {runs} runs"
        );
    }
    assert!(
        deleted >= 3 * 2 + 4,
        "messages, wamids, debits, top-up: {deleted}"
    );
    let now = Utc::now().timestamp();
    let stale: Vec<String> = all_items(&app, b)
        .await
        .into_iter()
        .filter(|r| r.ttl.is_some_and(|t| t + 1 < now) && !r.sk.starts_with("EVENT#"))
        .map(|r| format!("{} / {}", r.pk, r.sk))
        .collect();
    assert!(stale.is_empty(), "left after a full pass: {stale:?}");
    let again = kirim::service::retention::run_with(deps, limits)
        .await
        .expect("run");
    assert!(!again.resumed, "a finished pass starts over");
}

async fn a_closed_tenant_takes_no_opt_out_or_template_change_from_metas_webhooks(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(10).await;
    let id = app.send_ok(&t.key, "+60123458888").await;
    app.wait_status(&t.key, &id, "read").await;
    let wamid = app.message(&t.key, &id).await["wamid"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(!wamid.is_empty());
    let (st, _) = call(
        &app,
        "DELETE",
        &format!("/v1/platform/tenants/{}", t.tenant_id),
        OPERATOR_TOKEN,
        None,
    )
    .await;
    assert_eq!(st, 200);
    // Until the close-out removes its route, Meta's webhooks still reach the closed
    // tenant's number: a STOP, a 131050 and a user preference change nothing (a whole-item
    // opt-out written after the close-out gave its items their TTL would keep one for good).
    let now = Utc::now().timestamp();
    let value = json!({"messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "60300000000", "phone_number_id": t.phone_number_id},
        "messages": [{"from": "60123458888", "id": format!("wamid.in.{}", ulid::Ulid::new()),
            "timestamp": now.to_string(), "type": "text", "text": {"body": "STOP"}}],
        "statuses": [{"id": wamid, "status": "failed", "timestamp": now.to_string(),
            "recipient_id": "60123458889", "recipient_user_id": "MY.1349120865530274",
            "errors": [{"code": 131050, "title": "stopped"}]}]});
    let body = json!({"object": "whatsapp_business_account", "entry": [{"id": "1000001", "changes": [
        {"field": "messages", "value": value},
        {"field": "user_preferences", "value": {"messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "60300000000", "phone_number_id": t.phone_number_id},
            "user_preferences": [{"wa_id": "60123458887", "detail": "User requested to stop marketing messages",
                "category": "marketing_messages", "value": "stop", "timestamp": now}]}},
        {"field": "message_template_status_update", "value": {"event": "DISABLED",
            "message_template_id": 9, "message_template_name": "order_update",
            "message_template_language": "en_US", "reason": "NONE"}}]}]});
    let res = app.post_webhook(&body).await;
    assert_eq!(res.status(), 200);
    let answer: Value = res.json().await.unwrap_or_default();
    assert_eq!(answer["summary"]["errors"], 0, "{answer}");
    let tenant = kirim::domain::TenantId::parse(&t.tenant_id).expect("id");
    for phone in ["+60123458888", "+60123458889", "+60123458887"] {
        let key = kirim::domain::OptOutKey::parse(phone).expect("key");
        assert_eq!(
            app.app
                .deps
                .opt_outs
                .get_opt_out(&tenant, &key)
                .await
                .expect("read"),
            None,
            "{phone}: no opt-out for a closed tenant"
        );
    }
    // Nor a pairing from the status's phone and user id (it would outlive the close-out).
    let phone = kirim::domain::OptOutKey::parse("+60123458889").expect("key");
    assert_eq!(
        app.app
            .deps
            .contacts
            .paired_key(&tenant, &phone)
            .await
            .expect("read"),
        None
    );
    // Its WABA has no open tenant: the catalogue keeps what it had (and its TTL).
    let template = app
        .app
        .deps
        .templates
        .get_template("1000001", "order_update", "en_US")
        .await
        .expect("read")
        .expect("still in the catalogue");
    assert_eq!(template.status, kirim::domain::TemplateStatus::Approved);
}

/// On Lambda a response is buffered whole (6 MB at most) and must end within 30 s: an
/// export larger than one response's share ends with a `next` cursor, and following the
/// cursors gives every line once, the header first and `end` last.
async fn an_export_larger_than_one_response_continues_by_its_cursor(b: Backend) {
    let mut cfg = kirim_tests::local_config(b).await;
    cfg.settings.export_page_bytes = 1500;
    let app = kirim_tests::spawn_with(cfg).await;
    let (t, ids) = exercise(&app, "EXPORT-PAGED").await;
    let get = |path: String| {
        let (http, url, key) = (app.http.clone(), app.url(&path), t.key.clone());
        async move {
            let res = http.get(url).bearer_auth(key).send().await.expect("export");
            let status = res.status().as_u16();
            (status, res.text().await.unwrap_or_default())
        }
    };
    let mut lines: Vec<Value> = Vec::new();
    let mut path = "/v1/account/export".to_owned();
    let mut responses = 0;
    loop {
        let (status, text) = get(path.clone()).await;
        assert_eq!(status, 200, "{text}");
        responses += 1;
        assert!(responses < 50, "the cursors lead to the end");
        let mut page: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("one JSON object a line"))
            .collect();
        let last = page.pop().expect("a line");
        lines.extend(page);
        match last["type"].as_str() {
            Some("next") => {
                let cursor = last["cursor"].as_str().expect("a cursor");
                path = format!("/v1/account/export?cursor={cursor}");
            }
            Some("end") => break,
            other => panic!("a response ends with next or end, not {other:?}"),
        }
    }
    assert!(responses >= 3, "{responses} responses");
    let count = |kind: &str| lines.iter().filter(|l| l["type"] == kind).count();
    assert_eq!(lines[0]["type"], "export");
    assert_eq!(count("export"), 1);
    assert_eq!(count("message"), ids.len(), "each message once");
    assert!(count("ledger_entry") >= 5);
    assert_eq!(count("phone_number"), 1);
    // A cursor the export did not give, or another parameter: 400, nothing read.
    for bad in [
        "?cursor=not-a-cursor",
        "?cursor=eyJzIjoiaGVhZGVyIn0",
        // A messages cursor the store never made; an opt-outs one; a usage day
        // far out of range.
        "?cursor=eyJzIjoibWVzc2FnZXMiLCJjIjoibm90LWEtY3Vyc29yIn0",
        "?cursor=eyJzIjoib3B0X291dHMiLCJjIjoibm9ib2R5In0",
        "?cursor=eyJzIjoidXNhZ2UiLCJjIjoiKzI2MjE0Mi0wNi0wMSJ9",
        "?from=2020-01-01",
    ] {
        let (status, text) = get(format!("/v1/account/export{bad}")).await;
        assert_eq!(status, 400, "{bad}: {text}");
    }
}

/// One closed tenant whose close-out fails must not stop the run for every other one (nor
/// the settling, the sweep's checkpoint and the template sync after it), day after day:
/// it is counted, logged, and tried again when the sweep next comes across it.
async fn a_close_out_that_fails_for_one_tenant_leaves_the_others_closed_out_and_the_run_complete(
    b: Backend,
) {
    let app = spawn_app(b).await;
    let failing = app.onboard(10).await;
    let other = app.onboard(10).await;
    for t in [&failing, &other] {
        let (st, _) = call(
            &app,
            "DELETE",
            &format!("/v1/platform/tenants/{}", t.tenant_id),
            OPERATOR_TOKEN,
            None,
        )
        .await;
        assert_eq!(st, 200);
    }
    let mut deps = app.app.deps.clone();
    let store = deps.secrets.store().clone();
    deps.secrets = std::sync::Arc::new(kirim::service::SecretCache::new(
        std::sync::Arc::new(kirim_tests::ScriptedSecrets {
            deletes: kirim_tests::Refuse::Containing(failing.tenant_id.clone()),
            ..kirim_tests::ScriptedSecrets::over(store)
        }),
        Duration::ZERO,
    ));
    let report = kirim::service::retention::run(&deps)
        .await
        .expect("the run");
    assert!(report.complete, "{report:?}");
    assert_eq!(report.closed_out_failed, 1, "{report:?}");
    let closed: Vec<String> = report
        .closed_out
        .iter()
        .map(|c| c.tenant_id.to_string())
        .collect();
    assert_eq!(closed, vec![other.tenant_id.clone()]);
    // Tried again by the next pass, which succeeds once the secret can be deleted.
    let report = kirim::service::retention::run(&app.app.deps)
        .await
        .expect("the run");
    assert_eq!(report.closed_out_failed, 0, "{report:?}");
    let closed: Vec<String> = report
        .closed_out
        .iter()
        .map(|c| c.tenant_id.to_string())
        .collect();
    assert_eq!(closed, vec![failing.tenant_id.clone()]);
}

/// Local mode with messages kept for seconds (a test watching data expire): a message is
/// gone after it, removed by the run, while the catalogue (configuration, not a message's
/// metadata) stays, so sends still go.
async fn with_messages_kept_seconds_a_message_expires_and_sends_still_go(b: Backend) {
    let mut cfg = kirim_tests::local_config(b).await;
    cfg.settings.retention.messages = Duration::from_secs(3);
    cfg.settings.retention.idempotency = Duration::from_secs(3);
    let app = kirim_tests::spawn_with(cfg).await;
    let t = app.onboard(5).await;
    let id = app.send_ok(&t.key, "+60123450981").await;
    let m = app.wait_status(&t.key, &id, "read").await;
    assert_eq!(m["status"], "read", "{m}");
    tokio::time::sleep(Duration::from_millis(4100)).await;
    let res = app
        .http
        .post(app.url("/v1/platform/retention/run"))
        .bearer_auth(OPERATOR_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let gone = app
        .http
        .get(app.url(&format!("/v1/messages/{id}")))
        .bearer_auth(&t.key)
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 404, "expired");
    // Removed by the run, not only hidden by reads: neither the message nor its wamid's
    // index item is left in storage.
    let msg_sk = format!("MSG#{id}");
    let wamid_pk = format!("WAMID#{}", m["wamid"].as_str().expect("sent: a wamid"));
    let left: Vec<String> = all_items(&app, b)
        .await
        .into_iter()
        .filter(|r| r.sk == msg_sk || r.pk == wamid_pk)
        .map(|r| format!("{} / {}", r.pk, r.sk))
        .collect();
    assert!(left.is_empty(), "swept: {left:?}");
    let again = app.send_template(&t.key, "+60123450982").await;
    assert_eq!(again.status(), 202, "the catalogue is still there");
}

/// Where [`FailingPart`] makes the sweep fail: its second page's read (the first page told
/// of a next one, whichever the backend), or the saving of its first page's position.
#[derive(Clone, Copy, PartialEq)]
enum FailAt {
    SecondPage,
    FirstSave,
}

/// The app's retention store, failing once at `at` with a backend's message naming its
/// internals (which the run's audit event must not repeat).
struct FailingPart {
    inner: std::sync::Arc<dyn kirim::ports::RetentionStore>,
    at: FailAt,
    pages: std::sync::atomic::AtomicUsize,
    saves: std::sync::atomic::AtomicUsize,
}

const INTERNALS: &str = "dynamodb scan: table kirim-secret-table throttled (aws-sdk)";

#[async_trait::async_trait]
impl kirim::ports::RetentionStore for FailingPart {
    async fn sweep_page(
        &self,
        now: DateTime<Utc>,
        start: Option<&str>,
        page_size: usize,
    ) -> Result<kirim::ports::SweepPage, kirim::store_error::StoreError> {
        use std::sync::atomic::Ordering;
        let n = self.pages.fetch_add(1, Ordering::SeqCst);
        if n == 1 && self.at == FailAt::SecondPage {
            return Err(kirim::store_error::StoreError::Unavailable(
                INTERNALS.into(),
            ));
        }
        let mut page = self.inner.sweep_page(now, start, page_size).await?;
        if n == 0 && page.next.is_none() {
            // The memory store reads its whole table as one page: a second one to fail.
            page.next = Some("-".into());
        }
        Ok(page)
    }
    async fn checkpoint(&self) -> Result<Option<String>, kirim::store_error::StoreError> {
        self.inner.checkpoint().await
    }
    async fn save_checkpoint(
        &self,
        next: Option<&str>,
        at: DateTime<Utc>,
    ) -> Result<(), kirim::store_error::StoreError> {
        use std::sync::atomic::Ordering;
        if self.saves.fetch_add(1, Ordering::SeqCst) == 0 && self.at == FailAt::FirstSave {
            return Err(kirim::store_error::StoreError::Unavailable(
                INTERNALS.into(),
            ));
        }
        self.inner.save_checkpoint(next, at).await
    }
    async fn close_out(
        &self,
        tenant: &kirim::domain::TenantId,
        ttls: kirim::ports::CloseOutTtls,
        now: DateTime<Utc>,
        deadline: std::time::Instant,
    ) -> Result<kirim::ports::CloseOutCounts, kirim::store_error::StoreError> {
        self.inner.close_out(tenant, ttls, now, deadline).await
    }
    async fn closed_out_at(
        &self,
        tenant: &kirim::domain::TenantId,
    ) -> Result<Option<DateTime<Utc>>, kirim::store_error::StoreError> {
        self.inner.closed_out_at(tenant).await
    }
    async fn stored_items(
        &self,
    ) -> Result<Vec<kirim::ports::StoredItem>, kirim::store_error::StoreError> {
        self.inner.stored_items().await
    }
}

/// A run that fails part-way (a page it cannot read, a position it cannot save) fails, and
/// still records what its pages did before the failure — items deleted, per class — in a
/// `retention.run` event with outcome `error` and a plain description of the failure: the
/// next run resumes after the last saved position and would never report that work.
async fn a_run_that_fails_part_way_still_records_what_its_pages_removed(b: Backend) {
    for at in [FailAt::SecondPage, FailAt::FirstSave] {
        // Every class kept a second but the audit: the run's own `retention.run` event,
        // read below, must outlive the second (under load it did not, and the event read
        // after it was found expired).
        let mut cfg = kirim_tests::local_config(b).await;
        let second = Duration::from_secs(1);
        cfg.settings.retention.messages = second;
        cfg.settings.retention.billing = second;
        cfg.settings.retention.idempotency = second;
        cfg.settings.retention.stats = second;
        cfg.settings.retention.audit = Duration::from_secs(3600);
        let app = kirim_tests::spawn_with(cfg).await;
        let t = app.onboard(10).await;
        for i in 0..3 {
            app.send_ok(&t.key, &format!("+6012345{:04}", 6200 + i))
                .await;
        }
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        let mut deps = app.app.deps.clone();
        deps.retention = std::sync::Arc::new(FailingPart {
            inner: app.app.deps.retention.clone(),
            at,
            pages: Default::default(),
            saves: Default::default(),
        });
        // One page holds the whole (small) table on both backends.
        let limits = kirim::service::retention::Limits {
            pause: Duration::from_millis(1),
            ..Default::default()
        };
        let failed = kirim::service::retention::run_with(&deps, limits).await;
        assert!(
            matches!(
                failed,
                Err(kirim::service::errors::ServiceError::Unavailable(_))
            ),
            "{failed:?}"
        );
        let q = kirim::ports::AuditQuery {
            limit: 100,
            action: Some("retention.run".into()),
            ..Default::default()
        };
        let (events, _) = app
            .app
            .deps
            .audit
            .list("platform", &q)
            .await
            .expect("platform chain");
        assert_eq!(events.len(), 1, "one retention.run event");
        let event = &events[0];
        assert_eq!(event.outcome, kirim::ports::AuditOutcome::Error);
        let recorded: Value = serde_json::from_str(&event.details).expect("details");
        assert_eq!(recorded["pages"], 1, "{recorded}");
        assert_eq!(recorded["complete"], false, "{recorded}");
        let deleted = recorded["deleted_expired"].as_u64().unwrap_or_default();
        assert!(
            deleted >= 3 * 2 + 4,
            "messages, wamids, debits, top-up removed by the first page: {recorded}"
        );
        let per_class: u64 = recorded["deleted"]
            .as_object()
            .map(|d| d.values().filter_map(Value::as_u64).sum())
            .unwrap_or_default();
        assert_eq!(per_class, deleted, "counted per class: {recorded}");
        let step = if at == FailAt::SecondPage {
            "reading a page of the table"
        } else {
            "saving the sweep's position"
        };
        assert_eq!(
            recorded["error"],
            format!("{step}: the store was unavailable (a later run continues)"),
            "{recorded}"
        );
        assert!(
            !event.details.contains("kirim-secret-table") && !event.details.contains("aws"),
            "no backend internals: {}",
            event.details
        );
    }
}

/// Local mode on a manual clock, for the runs that look for orphan secrets by age (the
/// secrets' dates are the store's, the run's `now` the clock's).
async fn spawn_on_clock(b: Backend) -> (TestApp, std::sync::Arc<kirim_tests::ManualClock>) {
    let clock = kirim_tests::ManualClock::new();
    let mut cfg = kirim_tests::local_config(b).await;
    cfg.clock = kirim_infra::local::LocalClock(clock.clone());
    (kirim_tests::spawn_with(cfg).await, clock)
}

/// A Meta-token secret as an onboarding that stopped after it (its tenant never written)
/// leaves it: named for a tenant id nobody has.
async fn orphan_secret(app: &TestApp) -> String {
    let deps = &app.app.deps;
    let name = kirim::service::accounts::meta_token_secret_name(
        &deps.settings.secret_prefix,
        &kirim::domain::TenantId::generate(),
    );
    deps.secrets
        .store()
        .put_secret(&name, &kirim::secret::Secret::new("EAAG-orphaned-token"))
        .await
        .expect("put");
    name
}

async fn secret_exists(app: &TestApp, name: &str) -> bool {
    app.app
        .deps
        .secrets
        .store()
        .get_secret(name)
        .await
        .expect("read")
        .is_some()
}

fn meta_token_of(app: &TestApp, t: &kirim_tests::Onboarded) -> String {
    kirim::service::accounts::meta_token_secret_name(
        &app.app.deps.settings.secret_prefix,
        &kirim::domain::TenantId::parse(&t.tenant_id).expect("id"),
    )
}

/// An onboarding that failed (or died) between its secret and its tenant leaves a Meta
/// token nobody can see or rotate: the daily run deletes it once it is an hour old (an
/// onboarding in flight keeps its own), counts it, and never names the token or its
/// value; the on-demand run does not look (its role may not list secrets).
async fn the_daily_run_deletes_a_meta_token_secret_of_no_tenant_once_it_is_an_hour_old(b: Backend) {
    let (app, clock) = spawn_on_clock(b).await;
    let t = app.onboard(1).await;
    let orphan = orphan_secret(&app).await;
    let deps = &app.app.deps;
    // 59 minutes on (the clock started before the secret was written): still young.
    clock.advance(chrono::Duration::minutes(59));
    let young = kirim::service::retention::run(deps).await.expect("run");
    assert_eq!(young.orphan_secrets_deleted, 0, "{young:?}");
    assert!(young.orphan_secrets_checked, "{young:?}");
    assert!(secret_exists(&app, &orphan).await, "a young orphan is kept");

    clock.advance(chrono::Duration::minutes(2));
    let (st, on_demand) = call(
        &app,
        "POST",
        "/v1/platform/retention/run",
        OPERATOR_TOKEN,
        None,
    )
    .await;
    assert_eq!(st, 200, "{on_demand}");
    assert_eq!(on_demand["orphan_secrets_deleted"], 0, "{on_demand}");
    assert_eq!(on_demand["orphan_secrets_checked"], false, "{on_demand}");
    assert!(
        secret_exists(&app, &orphan).await,
        "the on-demand run does not look"
    );

    let old = kirim::service::retention::run(deps).await.expect("run");
    assert_eq!(old.orphan_secrets_deleted, 1, "{old:?}");
    assert_eq!(old.orphan_secrets_failed, 0, "{old:?}");
    assert!(old.orphan_secrets_checked, "{old:?}");
    assert!(old.complete, "the rest of the run done too: {old:?}");
    assert!(!secret_exists(&app, &orphan).await, "the orphan is deleted");
    assert!(
        secret_exists(&app, &meta_token_of(&app, &t)).await,
        "the tenant keeps its own"
    );
    let logs = captured_logs();
    assert!(
        !logs.contains("EAAG-orphaned-token") && !logs.contains(&orphan),
        "neither the token nor the secret's name is logged"
    );
    // The report is the run's audit event's details.
    let q = kirim::ports::AuditQuery {
        limit: 100,
        action: Some("retention.run".into()),
        ..Default::default()
    };
    let (events, _) = deps
        .audit
        .list("platform", &q)
        .await
        .expect("platform chain");
    let recorded: Value =
        serde_json::from_str(&events.first().expect("an event").details).expect("details");
    assert_eq!(recorded["orphan_secrets_deleted"], 1, "{recorded}");
    // Once only: it is gone (scheduled for deletion: not listed).
    let again = kirim::service::retention::run(deps).await.expect("run");
    assert_eq!(again.orphan_secrets_deleted, 0, "{again:?}");
}

/// The secret of a tenant is never an orphan, whatever the tenant's status: active,
/// suspended, or closed and not yet closed out (its close-out deletes it, by its own
/// rules).
async fn no_tenants_meta_token_secret_is_taken_for_an_orphan_whatever_its_status(b: Backend) {
    let (app, clock) = spawn_on_clock(b).await;
    let active = app.onboard(1).await;
    let suspended = app.onboard(1).await;
    let closed = app.onboard(1).await;
    let (st, body) = call(
        &app,
        "POST",
        &format!("/v1/platform/tenants/{}/suspend", suspended.tenant_id),
        OPERATOR_TOKEN,
        Some(json!({"reason": "invoice unpaid"})),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    let (st, body) = call(
        &app,
        "DELETE",
        &format!("/v1/platform/tenants/{}", closed.tenant_id),
        OPERATOR_TOKEN,
        None,
    )
    .await;
    assert_eq!(st, 200, "{body}");
    let orphan = orphan_secret(&app).await;
    clock.advance(chrono::Duration::hours(3));
    let found = kirim::service::retention::delete_orphan_secrets(
        &app.app.deps,
        std::time::Instant::now() + Duration::from_secs(60),
    )
    .await;
    assert_eq!(
        found,
        kirim::service::retention::OrphanSecrets {
            deleted: 1,
            failed: 0,
            checked: true
        }
    );
    assert!(!secret_exists(&app, &orphan).await);
    for t in [&active, &suspended, &closed] {
        assert!(
            secret_exists(&app, &meta_token_of(&app, t)).await,
            "{} keeps its secret",
            t.tenant_id
        );
    }
}

/// Secrets Manager refusing the listing (throttled, or a role without ListSecrets) fails
/// only that part: the run still sweeps, closes out closed tenants and reports, and says
/// the secrets were not checked.
async fn a_run_whose_secret_listing_fails_still_does_the_rest(b: Backend) {
    let (app, clock) = spawn_on_clock(b).await;
    let closed = app.onboard(1).await;
    let (st, _) = call(
        &app,
        "DELETE",
        &format!("/v1/platform/tenants/{}", closed.tenant_id),
        OPERATOR_TOKEN,
        None,
    )
    .await;
    assert_eq!(st, 200);
    let orphan = orphan_secret(&app).await;
    clock.advance(chrono::Duration::hours(2));
    let mut deps = app.app.deps.clone();
    let store = deps.secrets.store().clone();
    deps.secrets = std::sync::Arc::new(kirim::service::SecretCache::new(
        std::sync::Arc::new(kirim_tests::ScriptedSecrets {
            lists: kirim_tests::Refuse::Every,
            ..kirim_tests::ScriptedSecrets::over(store)
        }),
        Duration::ZERO,
    ));
    let report = kirim::service::retention::run(&deps)
        .await
        .expect("the run");
    assert!(!report.orphan_secrets_checked, "{report:?}");
    assert_eq!(report.orphan_secrets_deleted, 0, "{report:?}");
    assert!(report.complete, "{report:?}");
    let done: Vec<String> = report
        .closed_out
        .iter()
        .map(|c| c.tenant_id.to_string())
        .collect();
    assert_eq!(done, vec![closed.tenant_id.clone()], "{report:?}");
    assert!(secret_exists(&app, &orphan).await, "left for the next run");
}

/// A token replacement that read the tenant before its close and died between restoring
/// its secret and deleting it again leaves a closed-out tenant's secret live: nothing will
/// read it again, so the daily run deletes it as an orphan once it is an hour old.
async fn a_closed_out_tenants_meta_token_secret_brought_back_is_deleted_by_the_daily_run(
    b: Backend,
) {
    let (app, clock) = spawn_on_clock(b).await;
    let closed = app.onboard(1).await;
    let (st, body) = call(
        &app,
        "DELETE",
        &format!("/v1/platform/tenants/{}", closed.tenant_id),
        OPERATOR_TOKEN,
        None,
    )
    .await;
    assert_eq!(st, 200, "{body}");
    let deps = &app.app.deps;
    let report = kirim::service::retention::run(deps).await.expect("run");
    assert_eq!(report.closed_out.len(), 1, "{report:?}");
    let name = meta_token_of(&app, &closed);
    assert!(
        !secret_exists(&app, &name).await,
        "the close-out deleted it"
    );
    // The dead replacement's restore.
    deps.secrets
        .replace(&name, &kirim::secret::Secret::new("EAAG-brought-back"))
        .await
        .expect("restore");
    assert!(secret_exists(&app, &name).await);
    clock.advance(chrono::Duration::hours(2));
    let found = kirim::service::retention::delete_orphan_secrets(
        deps,
        std::time::Instant::now() + Duration::from_secs(60),
    )
    .await;
    assert_eq!(
        found,
        kirim::service::retention::OrphanSecrets {
            deleted: 1,
            failed: 0,
            checked: true
        }
    );
    assert!(!secret_exists(&app, &name).await, "deleted again");
    assert!(
        !captured_logs().contains("EAAG-brought-back"),
        "the token is never logged"
    );
}

on_both_backends!(
    the_daily_run_deletes_a_meta_token_secret_of_no_tenant_once_it_is_an_hour_old,
    no_tenants_meta_token_secret_is_taken_for_an_orphan_whatever_its_status,
    a_closed_out_tenants_meta_token_secret_brought_back_is_deleted_by_the_daily_run,
    a_run_whose_secret_listing_fails_still_does_the_rest,
    a_run_that_fails_part_way_still_records_what_its_pages_removed,
    with_messages_kept_seconds_a_message_expires_and_sends_still_go,
    every_stored_item_carries_the_ttl_of_its_class,
    a_close_out_that_fails_for_one_tenant_leaves_the_others_closed_out_and_the_run_complete,
    an_export_larger_than_one_response_continues_by_its_cursor,
    a_closed_tenant_takes_no_opt_out_or_template_change_from_metas_webhooks,
    no_content_reaches_a_table_a_queue_or_a_log_line,
    a_closed_tenant_is_closed_out_once_by_the_retention_run,
    a_closed_out_tenants_chain_head_outlives_events_appended_after_the_close_out,
    a_closed_out_tenants_chain_head_outlives_its_users_when_audit_is_kept_shorter,
    a_run_out_of_time_inside_a_close_out_stops_there_and_the_next_run_finishes_it,
    the_export_streams_the_tenants_metadata_as_json_lines,
    expired_items_are_invisible_then_swept_and_counted_per_class,
    a_sweep_cut_short_resumes_from_its_checkpoint,
);

/// A job that can never be processed reaches the dead-letter queue with its content: the
/// one place content may rest after dispatch, encrypted, for at most a day (template.yaml).
#[tokio::test]
async fn a_poison_job_is_parked_on_the_encrypted_one_day_dlq_and_nowhere_else() {
    use aws_sdk_sqs::types::QueueAttributeName as Q;
    let mut cfg = kirim_tests::local_config(Backend::Aws).await;
    cfg.pollers = 0; // this test plays the dispatcher's receives itself
    let app = kirim_tests::spawn_with(cfg).await;
    let sdk = moto_sdk().await;
    let stack = kirim_infra::bootstrap::ensure_stack(&sdk, &app.stack)
        .await
        .expect("stack");
    let url = stack.queue_url("DispatchQueue").expect("queue");
    let dlq = stack.queue_url("DispatchDeadLetterQueue").expect("dlq");
    let marker = format!("POISON-{}", ulid::Ulid::new());
    let body = json!({"tenant_id": "01M8A4QYT0RBRC6R7KYPH4H27B", "message_id": "x", "content": {"kind": "unknown", "body": marker}}).to_string();
    app.app.deps.queue.send(&body).await.expect("send");
    // The dispatcher leaves an unreadable job alone; SQS redrives it after 10 receives.
    assert_eq!(
        kirim::service::dispatch::handle(&app.app.deps, &body).await,
        kirim::service::jobs::Outcome::Poison
    );
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    for _ in 0..12 {
        sqs.receive_message()
            .queue_url(&url)
            .visibility_timeout(0)
            .send()
            .await
            .expect("receive");
    }
    let parked = app.app.deps.queue.dead_letters(100).await.expect("dlq");
    assert!(
        parked.iter().any(|d| d.body.contains(&marker)),
        "parked on the DLQ: {parked:?}"
    );
    let attrs = sqs
        .get_queue_attributes()
        .queue_url(&dlq)
        .attribute_names(Q::All)
        .send()
        .await
        .expect("attributes");
    let attrs = attrs.attributes().cloned().unwrap_or_default();
    assert_eq!(
        attrs.get(&Q::MessageRetentionPeriod).map(String::as_str),
        Some("86400"),
        "kept one day at most"
    );
    assert_eq!(
        attrs.get(&Q::SqsManagedSseEnabled).map(String::as_str),
        Some("true"),
        "encrypted"
    );
    for row in all_items(&app, Backend::Aws).await {
        assert!(
            !row.attrs.to_string().contains(&marker),
            "content in a table item"
        );
    }
    assert!(
        !kirim_tests::captured_logs().contains(&marker),
        "content in a log line"
    );
}

/// Keys that ended before ended keys were given a TTL (stored then without one) get theirs
/// from the next run: the end + 90 days on both copies, a key revoked before revocations
/// recorded their time from the run; a live key keeps none. Only the table can hold such a
/// key (the memory store derives the TTL from the record), so this one is on moto.
#[tokio::test]
async fn keys_that_ended_without_a_ttl_get_theirs_from_the_next_retention_run() {
    use aws_sdk_dynamodb::types::AttributeValue as Av;
    let app = spawn_app(Backend::Aws).await;
    let t = app.onboard(5).await;
    let mut ids = std::collections::BTreeMap::new();
    for name in ["revoked", "rotated", "revoked-untimed", "live"] {
        let (st, key) = call(
            &app,
            "POST",
            "/v1/api-keys",
            &t.key,
            Some(json!({"name": name, "role": "operator"})),
        )
        .await;
        assert_eq!(st, 201, "{key}");
        let id = key["id"].as_str().expect("its id").to_owned();
        let (st, body) = match name {
            "rotated" => {
                call(
                    &app,
                    "POST",
                    &format!("/v1/api-keys/{id}/rotate"),
                    &t.key,
                    Some(json!({"grace_period_hours": 1})),
                )
                .await
            }
            "live" => (204, Value::Null),
            _ => call(&app, "DELETE", &format!("/v1/api-keys/{id}"), &t.key, None).await,
        };
        assert!(st == 204 || st == 200 || st == 201, "{name}: {st} {body}");
        ids.insert(name, id);
    }
    // As an earlier release stored them: no TTL on either copy (and, for one, no
    // revocation time).
    let ddb = aws_sdk_dynamodb::Client::new(&moto_sdk().await);
    let table = format!("{}-Table", app.stack);
    let mine = format!("TENANT#{}", t.tenant_id);
    let copies = |rows: &[Row], id: &str| -> Vec<(String, String, Option<i64>, Value)> {
        let hash = rows
            .iter()
            .find(|r| r.pk == mine && r.sk == format!("APIKEY#{id}"))
            .map(|r| r.attrs["key_hash"].as_str().unwrap_or_default().to_owned())
            .expect("the tenant copy");
        rows.iter()
            .filter(|r| {
                (r.pk == mine && r.sk == format!("APIKEY#{id}")) || r.pk == format!("APIKEY#{hash}")
            })
            .map(|r| (r.pk.clone(), r.sk.clone(), r.ttl, r.attrs.clone()))
            .collect()
    };
    let rows = all_items(&app, Backend::Aws).await;
    let mut ends = std::collections::BTreeMap::new();
    for name in ["revoked", "rotated", "revoked-untimed"] {
        let found = copies(&rows, &ids[name]);
        assert_eq!(found.len(), 2, "{name}: both copies");
        for (pk, sk, ttl, attrs) in found {
            assert!(
                ttl.is_some(),
                "{name}: an ended key is written with its TTL"
            );
            let at = |k: &str| {
                attrs[k]
                    .as_str()
                    .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                    .map(|t| t.timestamp())
            };
            ends.insert(name, at("revoked_at").or(at("expires_at")));
            let expr = if name == "revoked-untimed" {
                "REMOVE #ttl, revoked_at"
            } else {
                "REMOVE #ttl"
            };
            ddb.update_item()
                .table_name(&table)
                .key("pk", Av::S(pk))
                .key("sk", Av::S(sk))
                .update_expression(expr)
                .expression_attribute_names("#ttl", "ttl")
                .send()
                .await
                .expect("the TTL removed");
        }
    }
    let before = Utc::now().timestamp();
    let report = kirim::service::retention::run(&app.app.deps)
        .await
        .expect("the run");
    let after = Utc::now().timestamp();
    assert!(report.complete, "{report:?}");
    assert_eq!(report.ended_keys_given_ttl, 3, "{report:?}");
    let keep = kirim::domain::ENDED_KEY_RETENTION.as_secs() as i64;
    let rows = all_items(&app, Backend::Aws).await;
    for name in ["revoked", "rotated"] {
        let end = ends[name].expect("an end") + keep;
        for (pk, sk, ttl, _) in copies(&rows, &ids[name]) {
            assert_eq!(ttl, Some(end), "{name}: {pk} / {sk}");
        }
    }
    for (pk, sk, ttl, _) in copies(&rows, &ids["revoked-untimed"]) {
        let ttl = ttl.expect("given one");
        assert!(
            (before + keep..=after + keep).contains(&ttl),
            "revoked at an unknown time: 90 days from the run ({pk} / {sk}: {ttl})"
        );
    }
    for (pk, sk, ttl, _) in copies(&rows, &ids["live"]) {
        assert_eq!(ttl, None, "a live key keeps none: {pk} / {sk}");
    }
    // Found once: the next run has none left to give.
    let again = kirim::service::retention::run(&app.app.deps)
        .await
        .expect("the run");
    assert_eq!(again.ended_keys_given_ttl, 0, "{again:?}");
}
