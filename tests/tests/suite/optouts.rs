//! Opt-outs end to end, on both backends: STOP/START replies and 131050 through signed
//! webhooks, the check at send and again before dispatch, and the `/v1/opt-outs` routes
//! with their roles.

use std::time::Duration;

use kirim::config::Backend;
use kirim_tests::{local_config, spawn_app, TestApp};
use serde_json::{json, Value};

fn sign(body: &[u8]) -> String {
    kirim_tests::sign_with(kirim_tests::META_APP_SECRET, body)
}

/// Posts a correctly signed notification carrying these inbound `messages`.
async fn inbound(app: &TestApp, phone_number_id: &str, messages: Vec<Value>) -> Value {
    let body = json!({"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages","value":{
        "messaging_product":"whatsapp",
        "metadata":{"display_phone_number":"60300000000","phone_number_id":phone_number_id},
        "contacts":[{"profile":{"name":"Aminah"},"wa_id":"60123457000"}],
        "messages":messages}}]}]})
    .to_string();
    let res = app
        .http
        .post(app.url("/webhooks/meta"))
        .header("content-type", "application/json")
        .header("x-hub-signature-256", sign(body.as_bytes()))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}

fn text_from(from: &str, body: &str) -> Value {
    json!({"from":from,"id":format!("wamid.in.{}", ulid::Ulid::new()),"timestamp":"1700000000",
        "type":"text","text":{"body":body}})
}

async fn opt_out_of(app: &TestApp, key: &str, phone: &str) -> (u16, Value) {
    let res = app
        .http
        .get(app.url(&format!("/v1/opt-outs/{}", phone.replace('+', "%2B"))))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    (
        res.status().as_u16(),
        res.json().await.unwrap_or(Value::Null),
    )
}

async fn send(app: &TestApp, key: &str, body: Value) -> (u16, Value) {
    let res = app
        .http
        .post(app.url("/v1/messages"))
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

fn template(to: &str, category: &str) -> Value {
    json!({"to":to,"template":kirim_tests::template_of(category)})
}

async fn an_inbound_stop_blocks_the_next_send_with_422_and_no_debit_until_start(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    inbound(
        &app,
        &t.phone_number_id,
        vec![text_from("60123457001", "  Stop\n")],
    )
    .await;
    let (s, body) = send(&app, &t.key, template("+60123457001", "utility")).await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (422, Some("recipient_opted_out")),
        "{body}"
    );
    let (s, body) = send(
        &app,
        &t.key,
        json!({"to":"+60123457001","text":{"body":"hi"}}),
    )
    .await;
    assert_eq!(s, 422, "{body}");
    assert_eq!(app.credits(&t.key).await, 5, "nothing debited");
    let (s, view) = opt_out_of(&app, &t.key, "+60123457001").await;
    assert_eq!(s, 200);
    assert_eq!(view["scope"], "all");
    assert_eq!(view["source"], "keyword");
    assert_eq!(view["created_by"], "meta");
    assert!(
        !view.to_string().to_lowercase().contains("stop"),
        "no inbound text: {view}"
    );
    // Only the tenant owning the number is affected.
    let other = app.onboard(1).await;
    app.send_ok(&other.key, "+60123457001").await;

    inbound(
        &app,
        &t.phone_number_id,
        vec![text_from("60123457001", "MULA")],
    )
    .await;
    assert_eq!(opt_out_of(&app, &t.key, "+60123457001").await.0, 404);
    app.send_ok(&t.key, "+60123457001").await;
    assert_eq!(app.credits(&t.key).await, 4);
    // START works the same way.
    inbound(
        &app,
        &t.phone_number_id,
        vec![text_from("60123457001", "berhenti")],
    )
    .await;
    assert_eq!(opt_out_of(&app, &t.key, "+60123457001").await.0, 200);
    inbound(
        &app,
        &t.phone_number_id,
        vec![text_from("60123457001", "start")],
    )
    .await;
    assert_eq!(opt_out_of(&app, &t.key, "+60123457001").await.0, 404);
}

async fn a_sentence_that_merely_contains_stop_changes_nothing(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let summary = inbound(
        &app,
        &t.phone_number_id,
        vec![
            text_from("60123457002", "Please don't stop my deliveries"),
            text_from("60123457002", "stop it"),
        ],
    )
    .await;
    assert_eq!(summary["summary"]["applied"], 0, "{summary}");
    assert_eq!(opt_out_of(&app, &t.key, "+60123457002").await.0, 404);
    app.send_ok(&t.key, "+60123457002").await;
}

async fn a_quick_reply_stop_opts_out_and_one_bad_item_never_drops_the_others(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    inbound(
        &app,
        &t.phone_number_id,
        vec![
            json!({"weird": true}),
            json!({"from":"not-a-number","type":"text","text":{"body":"STOP"}}),
            json!({"from":"60123457003","id":"wamid.b1","timestamp":"1700000000","type":"button",
                "button":{"payload":"STOP","text":"Stop promotions"}}),
            json!({"from":"60123457004","id":"wamid.b2","timestamp":"1700000000","type":"interactive",
                "interactive":{"type":"button_reply","button_reply":{"id":"unsubscribe","title":"No more"}}}),
        ],
    )
    .await;
    for phone in ["+60123457003", "+60123457004"] {
        let (s, view) = opt_out_of(&app, &t.key, phone).await;
        assert_eq!(s, 200, "{phone}");
        assert_eq!(view["source"], "button");
        assert_eq!(view["scope"], "all");
        let (s, _) = send(&app, &t.key, template(phone, "utility")).await;
        assert_eq!(s, 422);
    }
    assert_eq!(app.credits(&t.key).await, 5);
}

async fn error_131050_blocks_later_marketing_templates_but_not_utility_or_text(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let id = app.send_ok(&t.key, "+60123450002").await;
    let view = app.wait_status(&t.key, &id, "failed").await;
    assert_eq!(view["error"]["code"], 131050, "{view}");
    let (s, opt) = opt_out_of(&app, &t.key, "+60123450002").await;
    assert_eq!(s, 200);
    assert_eq!(opt["scope"], "marketing");
    assert_eq!(opt["source"], "meta_131050");
    assert_eq!(opt["created_by"], "meta");
    let (s, body) = send(&app, &t.key, template("+60123450002", "marketing")).await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (422, Some("recipient_opted_out"))
    );
    assert_eq!(
        app.credits(&t.key).await,
        4,
        "the refused marketing template cost nothing"
    );
    let (s, _) = send(&app, &t.key, template("+60123450002", "utility")).await;
    assert_eq!(s, 202);
    app.user_wrote(&t.phone_number_id, "+60123450002").await;
    let (s, _) = send(
        &app,
        &t.key,
        json!({"to":"+60123450002","text":{"body":"Your order"}}),
    )
    .await;
    assert_eq!(s, 202);
}

async fn a_stop_that_arrives_while_the_message_is_queued_is_honoured_before_meta(b: Backend) {
    // No pollers: the message waits in the queue until this test dispatches it.
    let cfg = kirim_infra::local::LocalConfig {
        pollers: 0,
        ..local_config(b).await
    };
    let app = kirim_tests::spawn_with(cfg).await;
    let t = app.onboard(5).await;
    let id = app.send_ok(&t.key, "+60123457005").await;
    assert_eq!(app.credits(&t.key).await, 4);
    inbound(
        &app,
        &t.phone_number_id,
        vec![text_from("60123457005", "STOP")],
    )
    .await;
    let mut handled = 0;
    for _ in 0..20 {
        handled +=
            kirim::queue_handlers::poll_once(&app.app.deps, Duration::from_millis(200)).await;
        if handled > 0 {
            break;
        }
    }
    assert_eq!(handled, 1);
    let view = app.message(&t.key, &id).await;
    assert_eq!(view["status"], "failed", "{view}");
    assert_eq!(view["error"]["code"], "recipient_opted_out");
    assert_eq!(app.credits_settled(&t.key, 5).await, 5, "refunded");
    assert!(
        app.sandbox_requests_to("60123457005").is_empty(),
        "no request to Meta"
    );
}

/// A new key of the tenant with `role`: (token, key id).
async fn key_with_role(app: &TestApp, admin_key: &str, role: &str) -> (String, String) {
    let res = app
        .http
        .post(app.url("/v1/api-keys"))
        .bearer_auth(admin_key)
        .json(&json!({"name": role, "role": role}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let body: Value = res.json().await.unwrap();
    (
        body["key"].as_str().unwrap().to_owned(),
        body["id"].as_str().unwrap().to_owned(),
    )
}

async fn the_opt_out_routes_add_read_list_and_remove_within_each_role(b: Backend) {
    let app = spawn_app(b).await;
    let admin = app.onboard(0).await;
    let url = |p: &str| app.url(&format!("/v1/opt-outs/{p}"));
    // PUT with a literal `+` and percent-encoded; no body means scope all.
    let res = app
        .http
        .put(url("+60123457101"))
        .bearer_auth(&admin.key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let v: Value = res.json().await.unwrap();
    assert_eq!(
        (
            v["phone"].as_str(),
            v["scope"].as_str(),
            v["source"].as_str()
        ),
        (Some("+60123457101"), Some("all"), Some("api"))
    );
    let res = app
        .http
        .put(url("%2B60123457102"))
        .bearer_auth(&admin.key)
        .json(&json!({"scope":"marketing"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap()["scope"], "marketing");
    // A marketing PUT never narrows an existing `all`.
    let res = app
        .http
        .put(url("%2B60123457101"))
        .bearer_auth(&admin.key)
        .json(&json!({"scope":"marketing"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.json::<Value>().await.unwrap()["scope"], "all");
    app.http
        .put(url("+60123457103"))
        .bearer_auth(&admin.key)
        .send()
        .await
        .unwrap();

    // Listing pages with a cursor.
    let page: Value = app
        .http
        .get(app.url("/v1/opt-outs?limit=2"))
        .bearer_auth(&admin.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["opt_outs"].as_array().unwrap().len(), 2);
    let cursor = page["next_cursor"]
        .as_str()
        .expect("a next page")
        .to_owned();
    // Passed back as it was answered, unencoded, as a plain client does (a cursor that was
    // the last phone itself, `+…`, read back as a space).
    let rest: Value = app
        .http
        .get(app.url(&format!("/v1/opt-outs?limit=2&cursor={cursor}")))
        .bearer_auth(&admin.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let phones: Vec<&str> = page["opt_outs"]
        .as_array()
        .unwrap()
        .iter()
        .chain(rest["opt_outs"].as_array().unwrap())
        .filter_map(|o| o["phone"].as_str())
        .collect();
    assert_eq!(phones, vec!["+60123457101", "+60123457102", "+60123457103"]);
    assert_eq!(rest["next_cursor"], Value::Null);
    for bad in [
        "/v1/opt-outs?limit=0",
        "/v1/opt-outs?limit=101",
        "/v1/opt-outs?sort=phone",
        "/v1/opt-outs?cursor=zzz",
    ] {
        let res = app
            .http
            .get(app.url(bad))
            .bearer_auth(&admin.key)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 400, "{bad}");
    }

    // Bad phone numbers and bodies.
    for bad in [
        "60123457101",
        "%2B60%20123",
        "+6012345abc",
        "+0123456789",
        "%252B60123457101",
    ] {
        let res = app
            .http
            .put(url(bad))
            .bearer_auth(&admin.key)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 400, "{bad}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_phone_number", "{bad}");
        let res = app
            .http
            .get(url(bad))
            .bearer_auth(&admin.key)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 400, "{bad}");
    }
    for bad in [
        json!({"scope":"everything"}),
        json!({"scope":"all","reason":"x"}),
    ] {
        let res = app
            .http
            .put(url("+60123457104"))
            .bearer_auth(&admin.key)
            .json(&bad)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 400, "{bad}");
    }

    // Another tenant sees none of them.
    let other = app.onboard(0).await;
    assert_eq!(opt_out_of(&app, &other.key, "+60123457101").await.0, 404);
    let list: Value = app
        .http
        .get(app.url("/v1/opt-outs"))
        .bearer_auth(&other.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["opt_outs"].as_array().map(Vec::len), Some(0));

    // DELETE (admin): 204, then 404.
    let res = app
        .http
        .delete(url("%2B60123457102"))
        .bearer_auth(&admin.key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let res = app
        .http
        .delete(url("+60123457102"))
        .bearer_auth(&admin.key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(opt_out_of(&app, &admin.key, "+60123457102").await.0, 404);

    // read_only reads but cannot add; operator adds but cannot remove.
    let (ro, _) = key_with_role(&app, &admin.key, "read_only").await;
    let res = app
        .http
        .get(app.url("/v1/opt-outs"))
        .bearer_auth(&ro)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = app
        .http
        .put(url("+60123457105"))
        .bearer_auth(&ro)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"]["code"],
        "forbidden"
    );
    let (op, op_key_id) = key_with_role(&app, &admin.key, "operator").await;
    let res = app
        .http
        .put(url("+60123457105"))
        .bearer_auth(&op)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.json::<Value>().await.unwrap()["created_by"],
        op_key_id.as_str()
    );
    let res = app
        .http
        .delete(url("+60123457105"))
        .bearer_auth(&op)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    assert_eq!(
        opt_out_of(&app, &op, "+60123457105").await.0,
        200,
        "still there"
    );
    let res = app.http.get(app.url("/v1/opt-outs")).send().await.unwrap();
    assert_eq!(res.status(), 401);
}

/// A text reply at Meta's time `at` (epoch seconds).
fn text_at(from: &str, body: &str, at: i64) -> Value {
    let mut m = text_from(from, body);
    m["timestamp"] = json!(at.to_string());
    m
}

/// A START whose Meta time is ahead of Kirim's clock (skew, a bad timestamp) is ordered as
/// of now: an opt-out the tenant records a moment later is stored (it answered 200 and
/// stored nothing, the START "newer" for as long as its mark lasts), and so is the user's
/// own STOP after it.
async fn a_start_stamped_in_the_future_does_not_outrank_the_opt_outs_after_it(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(1).await;
    let pn = t.phone_number_id.as_str();
    let (from, phone) = ("60123457021", "+60123457021");
    let ahead = chrono::Utc::now().timestamp() + 3600;
    inbound(&app, pn, vec![text_at(from, "START", ahead)]).await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let res = app
        .http
        .put(app.url(&format!("/v1/opt-outs/{phone}")))
        .bearer_auth(&t.key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(opt_out_of(&app, &t.key, phone).await.0, 200, "stored");
    // The user's own STOP after such a START, in Meta's time then.
    let (from2, phone2) = ("60123457022", "+60123457022");
    inbound(&app, pn, vec![text_at(from2, "START", ahead)]).await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let now = chrono::Utc::now().timestamp();
    inbound(&app, pn, vec![text_at(from2, "STOP", now)]).await;
    assert_eq!(
        opt_out_of(&app, &t.key, phone2).await.0,
        200,
        "the STOP stored"
    );
    // A START stamped 0 (no time Meta still delivers) counts as now: it lifts that STOP.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    inbound(&app, pn, vec![text_at(from2, "START", 0)]).await;
    assert_eq!(
        opt_out_of(&app, &t.key, phone2).await.0,
        404,
        "opted in again"
    );
}

async fn stop_and_start_apply_in_metas_timestamp_order_whatever_order_they_arrive(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(1).await;
    let pn = t.phone_number_id.as_str();
    let (from, phone) = ("60123457011", "+60123457011");
    // Meta's times an hour back: within the window Meta still delivers (older counts as now).
    let base = chrono::Utc::now().timestamp() - 3600;
    inbound(&app, pn, vec![text_at(from, "STOP", base + 200)]).await;
    // A START Meta stamped before that STOP arrives late: it undoes nothing.
    let summary = inbound(&app, pn, vec![text_at(from, "START", base + 100)]).await;
    assert_eq!(summary["summary"]["applied"], 0, "{summary}");
    assert_eq!(
        opt_out_of(&app, &t.key, phone).await.0,
        200,
        "still opted out"
    );
    // A later START does.
    inbound(&app, pn, vec![text_at(from, "START", base + 300)]).await;
    assert_eq!(opt_out_of(&app, &t.key, phone).await.0, 404);
    // One body listing a newer START before an older STOP: Meta's order wins, so the
    // user ends opted in...
    inbound(
        &app,
        pn,
        vec![
            text_at(from, "MULA", base + 500),
            text_at(from, "STOP", base + 400),
        ],
    )
    .await;
    assert_eq!(opt_out_of(&app, &t.key, phone).await.0, 404);
    // ...and a newer STOP listed before an older START leaves them out.
    inbound(
        &app,
        pn,
        vec![
            text_at(from, "BERHENTI", base + 700),
            text_at(from, "START", base + 600),
        ],
    )
    .await;
    let (status, o) = opt_out_of(&app, &t.key, phone).await;
    assert_eq!(status, 200, "{o}");
}

/// An older STOP that arrives after a newer START (Meta delivering the STOP's body again
/// after a 500, or two bodies out of order) does not opt the user out again: the START is
/// remembered for as long as Meta retries. A STOP newer than the START still does.
async fn an_older_stop_arriving_after_a_newer_start_leaves_the_user_opted_in(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(1).await;
    let pn = t.phone_number_id.as_str();
    let (from, phone) = ("60123457012", "+60123457012");
    let base = chrono::Utc::now().timestamp() - 3600;
    inbound(&app, pn, vec![text_at(from, "STOP", base + 100)]).await;
    assert_eq!(opt_out_of(&app, &t.key, phone).await.0, 200);
    inbound(&app, pn, vec![text_at(from, "START", base + 200)]).await;
    assert_eq!(opt_out_of(&app, &t.key, phone).await.0, 404);
    // The first body again: the user's latest word was START.
    inbound(&app, pn, vec![text_at(from, "STOP", base + 100)]).await;
    assert_eq!(
        opt_out_of(&app, &t.key, phone).await.0,
        404,
        "still opted in"
    );
    // Never seen before, yet older than the START: the same.
    inbound(&app, pn, vec![text_at(from, "BERHENTI", base + 150)]).await;
    assert_eq!(opt_out_of(&app, &t.key, phone).await.0, 404);
    // A newer STOP opts them out.
    inbound(&app, pn, vec![text_at(from, "STOP", base + 300)]).await;
    assert_eq!(opt_out_of(&app, &t.key, phone).await.0, 200);
}

/// An opt-out made through the API records the time it was made: a START Meta stamped
/// before it (redelivered late, or delayed) leaves it in place; a START after it removes
/// it, as it would a STOP's.
async fn an_api_opt_out_outlives_an_older_start_that_arrives_after_it(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(1).await;
    let pn = t.phone_number_id.as_str();
    let (from, phone) = ("60123457031", "+60123457031");
    let res = app
        .http
        .put(app.url(&format!("/v1/opt-outs/{phone}")))
        .bearer_auth(&t.key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let now = chrono::Utc::now().timestamp();
    let summary = inbound(&app, pn, vec![text_at(from, "START", now - 3600)]).await;
    assert_eq!(summary["summary"]["applied"], 0, "{summary}");
    assert_eq!(
        opt_out_of(&app, &t.key, phone).await.0,
        200,
        "still opted out"
    );
    inbound(&app, pn, vec![text_at(from, "START", now + 5)]).await;
    assert_eq!(opt_out_of(&app, &t.key, phone).await.0, 404);
}

async fn a_body_whose_first_change_is_malformed_still_applies_its_second_a_stop(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(1).await;
    let body = json!({"object":"whatsapp_business_account","entry":[{"id":"1","changes":[
        {"field":"messages","value":[{"unexpected":"a list where an object belongs"}]},
        {"field":"messages","value":{"metadata":{"phone_number_id":t.phone_number_id},
            "statuses":{"not":"a list"},
            "messages":[text_from("60123457012","STOP")]}}]}]})
    .to_string();
    let res = app
        .http
        .post(app.url("/webhooks/meta"))
        .header("x-hub-signature-256", sign(body.as_bytes()))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let summary: Value = res.json().await.unwrap();
    assert_eq!(summary["summary"]["applied"], 1, "{summary}");
    assert_eq!(summary["summary"]["skipped"], 2, "{summary}");
    assert_eq!(opt_out_of(&app, &t.key, "+60123457012").await.0, 200);
}

async fn a_stop_from_a_whatsapp_id_blocks_sends_to_the_number_as_dialled_until_start(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    // Meta's webhooks name a Mexican mobile `521…` (its wa_id) and an older Brazilian
    // account without the ninth digit; a business dials `+52…` and `+55…9…`.
    inbound(
        &app,
        &t.phone_number_id,
        vec![
            text_from("5215512345678", "STOP"),
            text_from("551187654321", "STOP"),
        ],
    )
    .await;
    for dialled in ["+525512345678", "+5511987654321"] {
        let (s, body) = send(&app, &t.key, template(dialled, "utility")).await;
        assert_eq!(
            (s, body["error"]["code"].as_str()),
            (422, Some("recipient_opted_out")),
            "{dialled}: {body}"
        );
        let (s, view) = opt_out_of(&app, &t.key, dialled).await;
        assert_eq!(
            (s, view["source"].as_str()),
            (200, Some("keyword")),
            "{view}"
        );
    }
    assert_eq!(app.credits(&t.key).await, 5, "nothing debited");
    // An opt-out made through the API under the dialled form holds for the other too.
    let res = app
        .http
        .put(app.url("/v1/opt-outs/%2B5491112345678"))
        .bearer_auth(&t.key)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    assert_eq!(
        send(&app, &t.key, template("+541112345678", "utility"))
            .await
            .0,
        422
    );
    // START from the WhatsApp form lifts it for the dialled one.
    inbound(
        &app,
        &t.phone_number_id,
        vec![
            json!({"from":"5215512345678","id":format!("wamid.in.{}", ulid::Ulid::new()),
            "timestamp":"1700000100","type":"text","text":{"body":"START"}}),
        ],
    )
    .await;
    app.send_ok(&t.key, "+525512345678").await;
    assert_eq!(opt_out_of(&app, &t.key, "+525512345678").await.0, 404);
    // Numbers of one form only are untouched by the other country's rule.
    app.send_ok(&t.key, "+601187654321").await;
}

/// A user id's opt-out is copied under its paired phone (at the STOP, and on a send it
/// refuses) only while it is stored: a tenant's `DELETE` of it landing between the
/// service's read and the copy is never undone under the phone, on either path.
async fn an_opt_out_removed_while_it_is_copied_under_the_phone_stays_removed(b: Backend) {
    use kirim::domain::{OptOutKey, OptOutScope, OptOutSource, PhoneNumber, TenantId, UserId};
    use kirim::service::optouts;
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let tenant = TenantId::from_trusted(t.tenant_id.clone());
    let mut deps = app.app.deps.clone();
    deps.opt_outs = std::sync::Arc::new(FailingWrites {
        inner: deps.opt_outs.clone(),
        failing: std::sync::atomic::AtomicBool::new(false),
        delete_source_first: true,
        race_copy: None,
    });
    let pair = |phone: &str, id: &str| {
        let deps = deps.clone();
        let tenant = tenant.clone();
        let (phone, id) = (
            PhoneNumber::parse(phone).unwrap(),
            UserId::parse(id).unwrap(),
        );
        async move {
            deps.contacts
                .pair_user(&tenant, &phone, &id, None)
                .await
                .unwrap()
        }
    };
    let by_id = |id: &str| optouts::Recipient {
        phone: None,
        user_id: UserId::parse(id),
    };
    let stored = |key: &str| {
        let deps = deps.clone();
        let tenant = tenant.clone();
        let key = OptOutKey::parse(key).unwrap();
        async move { deps.opt_outs.get_opt_out(&tenant, &key).await.unwrap() }
    };
    // The STOP's path: paired first, then the opt-out by id, removed before its copy.
    pair("+60123457101", "MY.7000000101").await;
    optouts::add(
        &deps,
        &tenant,
        by_id("MY.7000000101"),
        OptOutScope::All,
        OptOutSource::Api,
        "key_1",
        None,
    )
    .await
    .unwrap();
    assert_eq!(stored("MY.7000000101").await, None, "removed meanwhile");
    assert_eq!(
        stored("+60123457101").await,
        None,
        "not revived under the phone"
    );
    // The refused send's path: the opt-out by id first, paired later; the send is
    // refused, and the copy finds the id's opt-out removed meanwhile.
    optouts::add(
        &app.app.deps,
        &tenant,
        by_id("MY.7000000102"),
        OptOutScope::All,
        OptOutSource::Api,
        "key_1",
        None,
    )
    .await
    .unwrap();
    pair("+60123457102", "MY.7000000102").await;
    let phone = PhoneNumber::parse("+60123457102").unwrap();
    assert!(optouts::check(&deps, &tenant, &phone, None).await.is_err());
    assert_eq!(stored("MY.7000000102").await, None, "removed meanwhile");
    assert_eq!(
        stored("+60123457102").await,
        None,
        "not revived under the phone"
    );
    let res = app.send_template(&t.key, "+60123457102").await;
    assert_eq!(res.status().as_u16(), 202, "reachable again");
    // The tenant's `DELETE` by the phone, with a refused send's copy landing just before
    // the id's delete: the id goes first, so the phone's delete after it takes the copy.
    pair("+60123457103", "MY.7000000103").await;
    let o = optouts::add(
        &app.app.deps,
        &tenant,
        by_id("MY.7000000103"),
        OptOutScope::All,
        OptOutSource::Api,
        "key_1",
        None,
    )
    .await
    .unwrap();
    let copy = kirim::domain::OptOut {
        phone: PhoneNumber::parse("+60123457103").ok(),
        ..o
    };
    let mut racing = app.app.deps.clone();
    racing.opt_outs = std::sync::Arc::new(FailingWrites {
        inner: racing.opt_outs.clone(),
        failing: std::sync::atomic::AtomicBool::new(false),
        delete_source_first: false,
        race_copy: Some((copy, OptOutKey::parse("MY.7000000103").unwrap())),
    });
    let by_phone = OptOutKey::parse("+60123457103").unwrap();
    optouts::remove(&racing, &tenant, &by_phone).await.unwrap();
    assert_eq!(stored("MY.7000000103").await, None);
    assert_eq!(
        stored("+60123457103").await,
        None,
        "the racing copy removed too"
    );
    // A STOP from a phone naming its user id, paired: stored under the phone and copied
    // under the id. The tenant's `DELETE` by the phone removes both.
    pair("+60123457104", "MY.7000000104").await;
    let both = optouts::Recipient {
        phone: PhoneNumber::parse("+60123457104").ok(),
        user_id: UserId::parse("MY.7000000104"),
    };
    optouts::add(
        &app.app.deps,
        &tenant,
        both,
        OptOutScope::All,
        OptOutSource::Keyword,
        kirim::domain::BY_META,
        None,
    )
    .await
    .unwrap();
    assert!(
        stored("MY.7000000104").await.is_some(),
        "copied under the id"
    );
    let by_phone = OptOutKey::parse("+60123457104").unwrap();
    optouts::remove(&app.app.deps, &tenant, &by_phone)
        .await
        .unwrap();
    assert_eq!(stored("+60123457104").await, None);
    assert_eq!(stored("MY.7000000104").await, None, "its id's copy too");
    // The same STOP's copy from the phone to the id landing while the `DELETE` runs
    // (deleted one by one, id first: a copy landing between the two survived, and came
    // back under the phone at the next send or message).
    pair("+60123457105", "MY.7000000105").await;
    let o = kirim::domain::OptOut {
        tenant_id: tenant.clone(),
        phone: PhoneNumber::parse("+60123457105").ok(),
        user_id: UserId::parse("MY.7000000105"),
        scope: OptOutScope::All,
        source: OptOutSource::Keyword,
        created_by: kirim::domain::BY_META.into(),
        created_at: chrono::Utc::now(),
        meta_timestamp: Some(chrono::Utc::now().timestamp()),
    };
    app.app.deps.opt_outs.put_opt_out(&o).await.unwrap();
    let phone_key = OptOutKey::parse("+60123457105").unwrap();
    let mut racing = app.app.deps.clone();
    racing.opt_outs = std::sync::Arc::new(FailingWrites {
        inner: racing.opt_outs.clone(),
        failing: std::sync::atomic::AtomicBool::new(false),
        delete_source_first: false,
        race_copy: Some((o, phone_key.clone())),
    });
    optouts::remove(&racing, &tenant, &phone_key).await.unwrap();
    assert_eq!(stored("+60123457105").await, None);
    assert_eq!(
        stored("MY.7000000105").await,
        None,
        "the STOP's racing copy under the id removed with it"
    );
    // A number recycled: its former owner's STOP named their user id, no longer paired
    // with it. The new owner's opt-out lifted by phone leaves the former owner's id
    // blocked (the safe side).
    let both = optouts::Recipient {
        phone: PhoneNumber::parse("+60123457106").ok(),
        user_id: UserId::parse("MY.7000000106"),
    };
    optouts::add(
        &app.app.deps,
        &tenant,
        both,
        OptOutScope::All,
        OptOutSource::Keyword,
        kirim::domain::BY_META,
        None,
    )
    .await
    .unwrap();
    let by_phone = OptOutKey::parse("+60123457106").unwrap();
    optouts::remove(&app.app.deps, &tenant, &by_phone)
        .await
        .unwrap();
    assert_eq!(stored("+60123457106").await, None);
    assert!(
        stored("MY.7000000106").await.is_some(),
        "the unpaired id keeps its own"
    );
}

/// An opt-out added before `+600…` was refused (stop 52) is listed, read and removed
/// through the API; adding one is refused as any bad number is.
async fn an_opt_out_kept_from_before_the_trunk_zero_rule_is_listed_read_and_removed(b: Backend) {
    use kirim::domain::{OptOut, OptOutScope, OptOutSource, PhoneNumber, TenantId};
    let app = spawn_app(b).await;
    let t = app.onboard(0).await;
    let old = OptOut {
        tenant_id: TenantId::from_trusted(t.tenant_id.clone()),
        phone: PhoneNumber::parse_stored("+600123456789").ok(),
        user_id: None,
        scope: OptOutScope::All,
        source: OptOutSource::Api,
        created_by: "key_1".into(),
        created_at: chrono::Utc::now(),
        meta_timestamp: None,
    };
    app.app.deps.opt_outs.put_opt_out(&old).await.unwrap();
    let res = app
        .http
        .get(app.url("/v1/opt-outs"))
        .bearer_auth(&t.key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["opt_outs"][0]["phone"], "+600123456789", "{v}");
    assert_eq!(opt_out_of(&app, &t.key, "+600123456789").await.0, 200);
    let url = app.url("/v1/opt-outs/%2B600123456789");
    let res = app.http.put(&url).bearer_auth(&t.key).send().await.unwrap();
    assert_eq!(res.status(), 400, "not added afresh");
    let res = app
        .http
        .delete(&url)
        .bearer_auth(&t.key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    assert_eq!(opt_out_of(&app, &t.key, "+600123456789").await.0, 404);
}

/// An opt-out read by another form of its number (Mexico's `+52…` for one kept under
/// `+521…`) names the key it is kept under, the one that removes it.
async fn an_opt_out_read_by_the_numbers_other_form_names_the_key_it_is_kept_under(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(0).await;
    let res = app
        .http
        .put(app.url("/v1/opt-outs/%2B5215512345678"))
        .bearer_auth(&t.key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let (s, v) = opt_out_of(&app, &t.key, "+525512345678").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["key"], "+5215512345678", "{v}");
}

on_both_backends!(
    an_opt_out_read_by_the_numbers_other_form_names_the_key_it_is_kept_under,
    an_opt_out_kept_from_before_the_trunk_zero_rule_is_listed_read_and_removed,
    a_start_stamped_in_the_future_does_not_outrank_the_opt_outs_after_it,
    an_opt_out_removed_while_it_is_copied_under_the_phone_stays_removed,
    an_older_stop_arriving_after_a_newer_start_leaves_the_user_opted_in,
    stop_and_start_apply_in_metas_timestamp_order_whatever_order_they_arrive,
    an_api_opt_out_outlives_an_older_start_that_arrives_after_it,
    a_stop_from_a_whatsapp_id_blocks_sends_to_the_number_as_dialled_until_start,
    a_body_whose_first_change_is_malformed_still_applies_its_second_a_stop,
    an_inbound_stop_blocks_the_next_send_with_422_and_no_debit_until_start,
    a_sentence_that_merely_contains_stop_changes_nothing,
    a_quick_reply_stop_opts_out_and_one_bad_item_never_drops_the_others,
    error_131050_blocks_later_marketing_templates_but_not_utility_or_text,
    a_stop_that_arrives_while_the_message_is_queued_is_honoured_before_meta,
    the_opt_out_routes_add_read_list_and_remove_within_each_role,
);

/// An opt-out store whose writes fail (storage unavailable) until told otherwise; with
/// `delete_source_first`, a copy's source is deleted just before the copy is written (the
/// tenant's `DELETE` landing between the service's read and its copy); with `race_copy`,
/// a delete of the copy's source first writes the copy (a refused send's copy landing
/// just before it).
struct FailingWrites {
    inner: std::sync::Arc<dyn kirim::ports::OptOutStore>,
    failing: std::sync::atomic::AtomicBool,
    delete_source_first: bool,
    race_copy: Option<(kirim::domain::OptOut, kirim::domain::OptOutKey)>,
}

impl FailingWrites {
    fn check(&self) -> Result<(), kirim::store_error::StoreError> {
        if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(kirim::store_error::StoreError::Unavailable(
                "dynamodb throttled".into(),
            ));
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl kirim::ports::OptOutStore for FailingWrites {
    async fn opted_in(
        &self,
        t: &kirim::domain::TenantId,
        k: &kirim::domain::OptOutKey,
    ) -> Result<Option<kirim::domain::OptedIn>, kirim::store_error::StoreError> {
        self.inner.opted_in(t, k).await
    }
    async fn put_opt_out_paired(
        &self,
        o: &kirim::domain::OptOut,
        paired: Option<&kirim::domain::OptOutKey>,
    ) -> Result<(kirim::domain::OptOut, bool), kirim::store_error::StoreError> {
        self.check()?;
        self.inner.put_opt_out_paired(o, paired).await
    }
    async fn put_opt_out_copy(
        &self,
        o: &kirim::domain::OptOut,
        of: &kirim::domain::OptOutKey,
    ) -> Result<bool, kirim::store_error::StoreError> {
        self.check()?;
        if self.delete_source_first {
            self.inner.delete_opt_out(&o.tenant_id, of).await?;
        }
        self.inner.put_opt_out_copy(o, of).await
    }
    async fn get_opt_out(
        &self,
        t: &kirim::domain::TenantId,
        p: &kirim::domain::OptOutKey,
    ) -> Result<Option<kirim::domain::OptOut>, kirim::store_error::StoreError> {
        self.inner.get_opt_out(t, p).await
    }
    async fn delete_opt_out_not_newer_than(
        &self,
        t: &kirim::domain::TenantId,
        p: &kirim::domain::OptOutKey,
        at: i64,
    ) -> Result<bool, kirim::store_error::StoreError> {
        self.check()?;
        self.inner.delete_opt_out_not_newer_than(t, p, at).await
    }
    async fn delete_opt_out_of_scope(
        &self,
        t: &kirim::domain::TenantId,
        p: &kirim::domain::OptOutKey,
        scope: kirim::domain::OptOutScope,
        at: i64,
    ) -> Result<bool, kirim::store_error::StoreError> {
        self.check()?;
        self.inner.delete_opt_out_of_scope(t, p, scope, at).await
    }
    async fn delete_opt_out(
        &self,
        t: &kirim::domain::TenantId,
        p: &kirim::domain::OptOutKey,
    ) -> Result<bool, kirim::store_error::StoreError> {
        self.check()?;
        if let Some((copy, of)) = self.race_copy.as_ref().filter(|(_, of)| of == p) {
            self.inner.put_opt_out_copy(copy, of).await?;
        }
        self.inner.delete_opt_out(t, p).await
    }
    async fn delete_opt_outs(
        &self,
        t: &kirim::domain::TenantId,
        keys: &[kirim::domain::OptOutKey],
    ) -> Result<(), kirim::store_error::StoreError> {
        self.check()?;
        if let Some((copy, of)) = self.race_copy.as_ref().filter(|(_, of)| keys.contains(of)) {
            self.inner.put_opt_out_copy(copy, of).await?;
        }
        self.inner.delete_opt_outs(t, keys).await
    }
    async fn list_opt_outs(
        &self,
        t: &kirim::domain::TenantId,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<kirim::ports::OptOutPage, kirim::store_error::StoreError> {
        self.inner.list_opt_outs(t, limit, cursor).await
    }
}

/// Meta delivers a webhook again until it gets a 2xx: a STOP that could not be stored
/// must not be acknowledged, and the redelivery applies it.
#[tokio::test]
async fn a_webhook_whose_stop_cannot_be_stored_answers_500_and_its_redelivery_applies_it() {
    use kirim::service::accounts;
    use tower::ServiceExt;
    let clock = kirim_tests::ManualClock::new();
    let mut deps = kirim::wiring::memory_deps(kirim_tests::test_settings(), clock).unwrap();
    deps.secrets
        .put(
            &deps.settings.meta_app_secret,
            &kirim::secret::Secret::new(kirim_tests::META_APP_SECRET),
        )
        .await
        .unwrap();
    let req: accounts::NewTenant = serde_json::from_value(json!({"name": "Kedai", "waba_id": "1",
        "phone_number_id": "5000500", "meta_access_token": "EAAG"}))
    .unwrap();
    let (tenant, _) = accounts::create_tenant(&deps, req).await.unwrap();
    let failing = std::sync::Arc::new(FailingWrites {
        inner: deps.opt_outs.clone(),
        failing: std::sync::atomic::AtomicBool::new(true),
        delete_source_first: false,
        race_copy: None,
    });
    deps.opt_outs = failing.clone();
    let body = json!({"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages",
        "value":{"metadata":{"phone_number_id":"5000500"},"messages":[text_from("60123457013","STOP")]}}]}]})
    .to_string();
    let router = kirim::http::webhook_router(deps.clone());
    let post = || {
        axum::http::Request::post("/webhooks/meta")
            .header("x-hub-signature-256", sign(body.as_bytes()))
            .body(axum::body::Body::from(body.clone()))
            .unwrap()
    };
    let res = router.clone().oneshot(post()).await.unwrap();
    assert_eq!(
        res.status(),
        500,
        "not acknowledged: Meta will deliver again"
    );
    let phone = kirim::domain::OptOutKey::parse("+60123457013").unwrap();
    assert_eq!(
        deps.opt_outs.get_opt_out(&tenant.id, &phone).await.unwrap(),
        None
    );
    failing
        .failing
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let res = router.oneshot(post()).await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(deps
        .opt_outs
        .get_opt_out(&tenant.id, &phone)
        .await
        .unwrap()
        .is_some());
}

/// Meta, answering every send with 131050 (the user stopped marketing messages) at once.
struct StoppedMarketing;

#[async_trait::async_trait]
impl kirim::ports::MetaClient for StoppedMarketing {
    async fn send_message(
        &self,
        _: &str,
        _: &kirim::secret::Secret,
        _: &Value,
    ) -> Result<kirim::ports::MetaAccepted, kirim::ports::MetaSendError> {
        Err(kirim::ports::MetaSendError::Api {
            http_status: 400,
            code: 131050,
            title: "Unable to deliver message. User has stopped marketing messages".into(),
            is_transient: None,
        })
    }
    async fn list_templates(
        &self,
        _: &str,
        _: &kirim::secret::Secret,
        _: Option<&str>,
    ) -> Result<kirim::domain::template::MetaTemplatePage, kirim::ports::MetaSendError> {
        Ok(Default::default())
    }
}

/// 131050 in Meta's answer to a send (not only in a status webhook): the message fails,
/// refunded, and the recipient is opted out of marketing, as the hint promises.
#[tokio::test]
async fn a_131050_in_metas_answer_opts_the_recipient_out_of_marketing() {
    let clock = kirim_tests::ManualClock::new();
    let mut deps = kirim::wiring::memory_deps(kirim_tests::test_settings(), clock).unwrap();
    deps.meta = std::sync::Arc::new(StoppedMarketing);
    let req: kirim::service::accounts::NewTenant = serde_json::from_value(json!({"name": "Kedai",
        "waba_id": "1", "phone_number_id": "133", "meta_access_token": "EAAG", "credits": 2}))
    .unwrap();
    let (tenant, _) = kirim::service::accounts::create_tenant(&deps, req)
        .await
        .unwrap();
    let to = kirim::domain::OptOutKey::parse("+60123456789").unwrap();
    kirim::service::contacts::user_wrote(&deps, &tenant.id, "133", std::slice::from_ref(&to), None)
        .await
        .unwrap();
    let msg: kirim::service::send::SendRequest =
        serde_json::from_value(json!({"to": "+60123456789", "text": {"body": "hi"}})).unwrap();
    let record = kirim::service::send::send(&deps, &tenant.id, msg)
        .await
        .unwrap();
    let job = deps
        .queue
        .receive(10, Duration::from_millis(500))
        .await
        .unwrap()
        .remove(0)
        .body;
    kirim::service::dispatch::handle(&deps, &job).await;
    let m = deps
        .messages
        .get_message(&tenant.id, &record.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.status, kirim::domain::MessageStatus::Failed);
    let opt = deps
        .opt_outs
        .get_opt_out(&tenant.id, &to)
        .await
        .unwrap()
        .expect("an opt-out");
    assert_eq!(opt.scope, kirim::domain::OptOutScope::Marketing);
    assert_eq!(opt.source, kirim::domain::OptOutSource::Meta131050);
}

/// The tenant store as a warm instance sees it within 5 s of a closing: every read says
/// the tenant is still active (the store itself has it closed).
struct SeesOpen(std::sync::Arc<dyn kirim::ports::TenantStore>);

kirim_tests::pass_through! {
    impl TenantStore for SeesOpen via 0 {
        async fn get_tenant(
            &self,
            id: &kirim::domain::TenantId,
        ) -> Result<Option<kirim::ports::Tenant>, kirim::store_error::StoreError> {
            Ok(self.0.get_tenant(id).await?.map(|t| kirim::ports::Tenant {
                status: kirim::ports::TenantStatus::Active,
                ..t
            }))
        }
    }
}

/// Within the 5 s a closing takes to reach a warm instance, an opt-out is refused by its
/// own write (nothing stored): the API's says so (`409 conflict`, "the account is
/// closed"), and a 131050 on a status is no opt-out and no error, so the status (one the
/// dispatcher kept, or the webhook's) still applies.
#[tokio::test]
async fn an_opt_out_inside_a_closings_cache_window_is_refused_and_a_131050_still_lets_its_status_apply(
) {
    use kirim::domain::{OptOutKey, OptOutScope, OptOutSource, PhoneNumber};
    use kirim::service::{accounts, errors::ServiceError, optouts};
    let mut deps = kirim::wiring::memory_deps(
        kirim_tests::test_settings(),
        kirim_tests::ManualClock::new(),
    )
    .unwrap();
    let req: accounts::NewTenant = serde_json::from_value(json!({"name": "Kedai",
        "waba_id": "7021", "phone_number_id": "7021001", "meta_access_token": "EAAG"}))
    .unwrap();
    let (created, _) = accounts::create_tenant(&deps, req).await.unwrap();
    let tenant = created.id.clone();
    deps.tenants
        .set_status(
            &tenant,
            kirim::ports::TenantStatus::Closed,
            Some("bye"),
            deps.clock.now(),
        )
        .await
        .unwrap();
    deps.tenants = std::sync::Arc::new(SeesOpen(deps.tenants.clone()));
    assert!(deps.tenant_is_open(&tenant).await.unwrap(), "a stale view");
    let phone = PhoneNumber::parse("+60123450999").unwrap();
    let key = OptOutKey::Phone(phone.clone());
    let refused = optouts::add(
        &deps,
        &tenant,
        optouts::Recipient::of(key.clone()),
        OptOutScope::All,
        OptOutSource::Api,
        "key_1",
        None,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&refused, ServiceError::Conflict(m) if m == kirim::ports::TENANT_CLOSED),
        "{refused:?}"
    );
    let api = kirim::http::error::ApiError::from(refused);
    assert_eq!((api.status.as_u16(), api.code), (409, "conflict"));
    optouts::marketing_stopped_for(
        &deps,
        &tenant,
        &kirim::domain::MessageId::generate(),
        Some(&phone),
        Some(deps.clock.now().timestamp()),
    )
    .await
    .expect("no error: the status it came with still applies");
    assert_eq!(
        deps.opt_outs.get_opt_out(&tenant, &key).await.unwrap(),
        None,
        "nothing stored"
    );
}
