//! Log lines inherit the ids of what they are about from spans: each HTTP request runs
//! in a span with its request id (and tenant and message ids once known), each queue
//! job in one with its ids and the id of the request that accepted it.

use kirim::config::Backend;
use kirim_tests::{captured_logs, spawn_app};
use serde_json::Value;

/// The request id an answer carries.
fn request_id_of(res: &reqwest::Response) -> String {
    res.headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .expect("x-request-id")
}

/// The captured JSON log lines that mention every one of `needles`.
fn lines_with(needles: &[&str]) -> Vec<Value> {
    captured_logs()
        .lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

async fn a_failed_sends_log_line_carries_the_request_id_that_accepted_it(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    // 0007: Meta answers 132001 (template does not exist), a permanent failure.
    let res = app.send_template(&t.key, "+60123450007").await;
    assert_eq!(res.status(), 202);
    let request_id = request_id_of(&res);
    let body: Value = res.json().await.unwrap();
    let id = body["id"].as_str().unwrap().to_owned();
    app.wait_status(&t.key, &id, "failed").await;

    let refused = lines_with(&["meta refused", &request_id]);
    assert_eq!(
        refused.len(),
        1,
        "the dispatcher's line names the accepting request: {}",
        captured_logs()
            .lines()
            .filter(|l| l.contains("meta refused"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let line = refused[0].to_string();
    assert!(line.contains(&id), "and the message: {line}");
    assert!(line.contains(&t.tenant_id), "and the tenant: {line}");

    // The request's own line carries the same ids, though the code names none of them.
    let accepted = lines_with(&["message accepted", &request_id]);
    assert_eq!(accepted.len(), 1);
    let line = accepted[0].to_string();
    assert!(line.contains(&id) && line.contains(&t.tenant_id), "{line}");
}

async fn a_webhook_request_with_several_statuses_logs_at_most_one_info_line(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let at = (chrono::Utc::now().timestamp() - 5).to_string();
    // Statuses of messages not known yet: each is kept, and each says so at DEBUG.
    let wamid = format!("wamid.spans{}", ulid::Ulid::new());
    let statuses: Vec<Value> = ["sent", "delivered", "read"]
        .iter()
        .map(|s| serde_json::json!({"id": wamid, "status": s, "timestamp": at, "recipient_id": "60123456789"}))
        .collect();
    let body = serde_json::json!({"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages","value":{
        "messaging_product":"whatsapp",
        "metadata":{"display_phone_number":"60300000000","phone_number_id": t.phone_number_id},
        "statuses": statuses
    }}]}]});
    let res = app.post_webhook(&body).await;
    assert_eq!(res.status(), 200);
    let request_id = request_id_of(&res);
    let mine: Vec<Value> = lines_with(&[&request_id]);
    let at_level = |level: &str| {
        mine.iter()
            .filter(|l| l["level"] == level)
            .cloned()
            .collect::<Vec<_>>()
    };
    let info = at_level("INFO");
    assert!(
        info.len() <= 1,
        "INFO lines of one webhook request: {info:?}"
    );
    // The per-status details are at DEBUG, with the request's ids from its span.
    let kept: Vec<Value> = at_level("DEBUG")
        .into_iter()
        .filter(|l| {
            l.to_string().contains("kept")
                && l.to_string().contains(kirim::domain::wamid_tail(&wamid))
        })
        .collect();
    assert_eq!(kept.len(), 3, "one DEBUG line per status: {mine:?}");
}

/// Recipients' STOP and START replies are routine too: a body of several logs their
/// opt-outs at DEBUG, not an INFO line each.
async fn a_webhook_request_with_several_stop_replies_logs_at_most_one_info_line(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let at = (chrono::Utc::now().timestamp() - 5).to_string();
    let messages: Vec<Value> = [
        ("60123457701", "STOP"),
        ("60123457702", "stop"),
        ("60123457703", "START"),
    ]
    .iter()
    .map(|(from, text)| {
        serde_json::json!({"from": from, "id": format!("wamid.in{}", ulid::Ulid::new()),
                "timestamp": at, "type": "text", "text": {"body": text}})
    })
    .collect();
    let body = serde_json::json!({"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages","value":{
        "messaging_product":"whatsapp",
        "metadata":{"display_phone_number":"60300000000","phone_number_id": t.phone_number_id},
        "messages": messages
    }}]}]});
    let res = app.post_webhook(&body).await;
    assert_eq!(res.status(), 200);
    let request_id = request_id_of(&res);
    let summary: Value = res.json().await.unwrap_or_default();
    assert_eq!(summary["summary"]["applied"], 2, "two opt-outs: {summary}");
    let mine: Vec<Value> = lines_with(&[&request_id]);
    let info: Vec<&Value> = mine.iter().filter(|l| l["level"] == "INFO").collect();
    assert!(
        info.len() <= 1,
        "INFO lines of one webhook request: {info:?}"
    );
    let recorded = mine
        .iter()
        .filter(|l| l["level"] == "DEBUG" && l.to_string().contains("opt-out recorded"))
        .count();
    assert_eq!(recorded, 2, "one DEBUG line per opt-out: {mine:?}");
}

async fn a_webhook_of_one_status_carries_its_ids_on_the_request_s_span(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let at = chrono::Utc::now().timestamp().to_string();
    // A status of a message not known yet: kept, with a DEBUG line that names its wamid.
    let wamid = format!("wamid.onespan{}", ulid::Ulid::new());
    let body = serde_json::json!({"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages","value":{
        "messaging_product":"whatsapp",
        "metadata":{"display_phone_number":"60300000000","phone_number_id": t.phone_number_id},
        "statuses": [{"id": wamid, "status": "delivered", "timestamp": at, "recipient_id": "60123456789"}]
    }}]}]});
    let res = app.post_webhook(&body).await;
    assert_eq!(res.status(), 200);
    let request_id = request_id_of(&res);
    // Logs carry a wamid's tail only (Meta's wamid holds the recipient's number).
    let tail = kirim::domain::wamid_tail(&wamid);
    assert!(!tail.is_empty());
    let kept = lines_with(&["kept", &request_id, tail]);
    assert_eq!(kept.len(), 1, "{}", captured_logs());
    // No span of its own: the request's span carries the wamid and the tenant.
    let span = &kept[0]["span"];
    assert_eq!(span["name"], "request", "{span}");
    assert_eq!(span["wamid"], tail, "{span}");
    assert!(!captured_logs().contains(&wamid), "never the whole wamid");
    assert_eq!(span["tenant_id"], t.tenant_id.as_str(), "{span}");
    // Answered before the router (`http::MetaFirst`), yet named as the router names it.
    assert_eq!(span["route"], "/webhooks/meta", "{span}");
    assert_eq!(span["method"], "POST", "{span}");
}

on_both_backends!(
    a_failed_sends_log_line_carries_the_request_id_that_accepted_it,
    a_webhook_request_with_several_statuses_logs_at_most_one_info_line,
    a_webhook_request_with_several_stop_replies_logs_at_most_one_info_line,
    a_webhook_of_one_status_carries_its_ids_on_the_request_s_span,
);
