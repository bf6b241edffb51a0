//! Log lines inherit the ids of what they are about from spans: each HTTP request runs
//! in a span with its request id (and tenant and message ids once known), each queue
//! job in one with its ids and the id of the request that accepted it.

use kirim::config::Backend;
use kirim_tests::{captured_logs, spawn_app};
use serde_json::Value;

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
    let request_id = res
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .expect("x-request-id");
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

on_both_backends!(a_failed_sends_log_line_carries_the_request_id_that_accepted_it);
