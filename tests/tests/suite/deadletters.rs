//! Operators see and redrive parked messages: ids, kinds and counts, never content; a
//! redriven send job whose message was already sent sends nothing again.

use std::time::Duration;

use kirim::config::Backend;
use kirim::ports::{AuditQuery, DispatchQueue};
use kirim::service::jobs::Outcome;
use kirim::service::{audit, dispatch};
use kirim_tests::{local_config, spawn_with, TestApp, OPERATOR_TOKEN};
use serde_json::{json, Value};

use crate::access::call;

/// Local mode without pollers: the test plays the dispatcher.
async fn app_without_pollers(backend: Backend) -> TestApp {
    let mut cfg = local_config(backend).await;
    cfg.pollers = 0;
    spawn_with(cfg).await
}

/// Receives every visible message, making each visible again at once, until the queue's
/// receive limit parks them all on its dead-letter queue.
async fn park_everything(q: &dyn DispatchQueue) {
    for _ in 0..15 {
        let got = q.receive(10, Duration::from_millis(200)).await.unwrap();
        if got.is_empty() {
            return;
        }
        for m in got {
            q.retry_after(&m.receipt, Duration::ZERO).await.unwrap();
        }
    }
    panic!("messages still on the queue after 15 rounds");
}

async fn operator(app: &TestApp, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    call(app, method, path, Some(OPERATOR_TOKEN), body).await
}

async fn a_job_parked_after_its_message_was_sent_is_redriven_and_nothing_is_sent_again(
    backend: Backend,
) {
    let app = app_without_pollers(backend).await;
    let t = app.onboard(5).await;
    let digits = format!("6012{}", 1_000_000 + kirim_tests::rand_u32() % 8_000_000);
    let id = app.send_ok(&t.key, &format!("+{digits}")).await;
    let deps = &app.app.deps;

    // The dispatcher sends it, then dies before the job is deleted: the job comes back
    // until the queue parks it.
    let jobs = deps
        .queue
        .receive(10, Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(jobs.len(), 1);
    let job = jobs[0].body.clone();
    assert_eq!(dispatch::handle(deps, &job).await, Outcome::Done);
    assert_eq!(app.sandbox_requests_to(&digits).len(), 1);
    deps.queue
        .retry_after(&jobs[0].receipt, Duration::ZERO)
        .await
        .unwrap();
    park_everything(deps.queue.as_ref()).await;

    // Listed: what it is, whose, and how often it was tried; never what it says.
    let (status, listed) = operator(
        &app,
        "GET",
        "/v1/platform/dead-letters?queue=dispatch",
        None,
    )
    .await;
    assert_eq!(status, 200, "{listed}");
    let parked = listed["dead_letters"].as_array().expect("a list").clone();
    assert_eq!(parked.len(), 1, "{listed}");
    let d = &parked[0];
    assert_eq!(d["queue"], "dispatch");
    assert_eq!(d["kind"], "send");
    assert_eq!(d["tenant_id"], t.tenant_id.as_str());
    assert_eq!(d["message_id"], id.as_str());
    assert!(d["receive_count"].as_u64().unwrap_or(0) >= 1, "{d}");
    assert!(d["sent_at"].is_string(), "{d}");
    let mut keys: Vec<&String> = d.as_object().expect("an object").keys().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "id",
            "kind",
            "message_id",
            "queue",
            "receive_count",
            "sent_at",
            "tenant_id"
        ]
    );
    let text = listed.to_string();
    for content in ["ORDER-42", "order_update", "components", &digits] {
        assert!(!text.contains(content), "{content} in {text}");
    }
    // Both queues by default; the status-callback one has nothing parked.
    let (_, both) = operator(&app, "GET", "/v1/platform/dead-letters", None).await;
    assert_eq!(both["dead_letters"].as_array().map(Vec::len), Some(1));
    let (_, callbacks) = operator(
        &app,
        "GET",
        "/v1/platform/dead-letters?queue=status_callback",
        None,
    )
    .await;
    assert_eq!(callbacks, json!({"dead_letters": []}));

    // Redriven by id, back on the dispatch queue.
    let dl = d["id"].as_str().expect("an id").to_owned();
    let (status, report) = operator(
        &app,
        "POST",
        "/v1/platform/dead-letters/redrive",
        Some(json!({"queue": "dispatch", "ids": [dl]})),
    )
    .await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(
        report,
        json!({"queue": "dispatch", "redriven": 1, "ids": [dl], "not_found": [], "still_parked": [], "more": false})
    );
    let (_, empty) = operator(&app, "GET", "/v1/platform/dead-letters", None).await;
    assert_eq!(empty, json!({"dead_letters": []}));

    // The dispatcher's claim: the message is no longer `accepted`, so the job is a
    // duplicate, deleted, and Meta hears nothing more.
    let again = deps
        .queue
        .receive(10, Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].body, job);
    assert_eq!(dispatch::handle(deps, &again[0].body).await, Outcome::Done);
    assert_eq!(app.sandbox_requests_to(&digits).len(), 1, "sent once only");

    // Audited as the operator's, with counts and no content.
    let (events, _) = deps
        .audit
        .list(
            audit::PLATFORM_CHAIN,
            &AuditQuery {
                limit: 50,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let e = events
        .iter()
        .find(|e| e.action == "POST /v1/platform/dead-letters/redrive")
        .expect("the redrive is audited");
    assert_eq!(e.actor_type, "operator");
    let details: Value = serde_json::from_str(&e.details).unwrap();
    assert_eq!(details["redriven"], 1);
    assert_eq!(details["requested"], 1);
    assert_eq!(details["queue"], "dispatch");
    assert!(!e.details.contains("ORDER-42") && !e.details.contains(&digits));
}

async fn bad_dead_letter_requests_get_a_precise_400_and_move_nothing(backend: Backend) {
    let app = app_without_pollers(backend).await;
    let deps = &app.app.deps;
    deps.queue.send("not a job").await.unwrap();
    park_everything(deps.queue.as_ref()).await;

    for query in [
        "queue=parked",
        "limit=0",
        "limit=101",
        "limit=x",
        "colour=red",
    ] {
        let (status, body) = operator(
            &app,
            "GET",
            &format!("/v1/platform/dead-letters?{query}"),
            None,
        )
        .await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"]["code"], "invalid_request", "{query}");
    }
    for bad in [
        json!({}),
        json!({"queue": "parked"}),
        json!({"queue": "dispatch", "ids": []}),
        json!({"queue": "dispatch", "ids": [""]}),
        json!({"queue": "dispatch", "ids": ["a b"]}),
        json!({"queue": "dispatch", "ids": (0..101).map(|i| i.to_string()).collect::<Vec<_>>()}),
        json!({"queue": "dispatch", "all": true}),
    ] {
        let (status, body) = operator(
            &app,
            "POST",
            "/v1/platform/dead-letters/redrive",
            Some(bad.clone()),
        )
        .await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    // Still parked, and shown as unreadable.
    let (_, listed) = operator(&app, "GET", "/v1/platform/dead-letters", None).await;
    let parked = listed["dead_letters"].as_array().expect("a list");
    assert_eq!(parked.len(), 1, "{listed}");
    assert_eq!(parked[0]["kind"], "unreadable");
    assert_eq!(parked[0]["tenant_id"], Value::Null);
    assert!(!listed.to_string().contains("not a job"));

    // Everything, when no ids are named.
    let (status, report) = operator(
        &app,
        "POST",
        "/v1/platform/dead-letters/redrive",
        Some(json!({"queue": "dispatch"})),
    )
    .await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["redriven"], 1);
    assert_eq!(report["more"], false);
}

/// A queue whose redrive moved one asked-for dead letter and had another refused by the
/// source queue's send (it stays parked).
struct PartlyRefused(std::sync::Arc<dyn DispatchQueue>);

#[async_trait::async_trait]
impl DispatchQueue for PartlyRefused {
    async fn send(&self, body: &str) -> Result<(), kirim::store_error::StoreError> {
        self.0.send(body).await
    }
    async fn receive(
        &self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<kirim::ports::Received>, kirim::store_error::StoreError> {
        self.0.receive(max, wait).await
    }
    async fn delete(&self, receipt: &str) -> Result<(), kirim::store_error::StoreError> {
        self.0.delete(receipt).await
    }
    async fn retry_after(
        &self,
        receipt: &str,
        delay: Duration,
    ) -> Result<(), kirim::store_error::StoreError> {
        self.0.retry_after(receipt, delay).await
    }
    async fn dead_letters(
        &self,
        max: usize,
    ) -> Result<Vec<kirim::ports::DeadLetter>, kirim::store_error::StoreError> {
        self.0.dead_letters(max).await
    }
    async fn redrive(
        &self,
        _: Option<&[String]>,
        _: usize,
    ) -> Result<kirim::ports::Redriven, kirim::store_error::StoreError> {
        Ok(kirim::ports::Redriven {
            moved: vec!["moved-1".into()],
            more: false,
            unsent: vec!["refused-1".into()],
        })
    }
}

/// A dead letter the source queue refused to take back is still parked: reported as
/// such, not as `not_found` (which says it is gone).
#[tokio::test]
async fn a_dead_letter_the_queue_refused_to_take_back_is_reported_still_parked_not_missing() {
    let app = app_without_pollers(Backend::Memory).await;
    let mut deps = app.app.deps.clone();
    deps.queue = std::sync::Arc::new(PartlyRefused(deps.queue.clone()));
    let report = kirim::service::deadletters::redrive(
        &deps,
        kirim::service::deadletters::RedriveRequest {
            queue: kirim::service::deadletters::QueueName::Dispatch,
            ids: Some(vec!["moved-1".into(), "refused-1".into(), "gone-1".into()]),
        },
    )
    .await
    .expect("a report");
    assert_eq!(report.ids, vec!["moved-1".to_owned()]);
    assert_eq!(report.still_parked, vec!["refused-1".to_owned()]);
    assert_eq!(report.not_found, vec!["gone-1".to_owned()]);
}

on_both_backends!(
    a_job_parked_after_its_message_was_sent_is_redriven_and_nothing_is_sent_again,
    bad_dead_letter_requests_get_a_precise_400_and_move_nothing,
);

/// The dispatch queue is a fair queue by tenant on SQS: every job goes in the message
/// group of the tenant it names (`MessageGroupId`), whichever way it is sent — alone,
/// delayed (a hop), in a batch (a campaign's slice) — so one tenant's backlog does not
/// hold back the other tenants' messages. A body that names no tenant goes without one.
#[tokio::test]
async fn on_sqs_every_dispatch_job_is_sent_in_its_tenants_message_group() {
    use super::callbacks::group_of_next;
    let sdk = kirim_tests::moto_sdk().await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let stack = kirim_infra::bootstrap::ensure_stack(&sdk, &kirim_tests::unique_stack())
        .await
        .expect("stack");
    let url = stack.queue_url("DispatchQueue").expect("queue");
    let queue =
        kirim::adapters::aws::SqsQueue::new(sqs.clone(), url.clone(), None).fair_by_tenant();
    let job = |tenant: &str| format!(r#"{{"kind":"send","tenant_id":"{tenant}","n":1}}"#);
    queue.send(&job("01M8TENANTA")).await.expect("sent");
    assert_eq!(
        group_of_next(&sqs, &url).await.as_deref(),
        Some("01M8TENANTA")
    );
    queue
        .send_delayed(&job("01M8TENANTB"), Duration::ZERO)
        .await
        .expect("sent");
    assert_eq!(
        group_of_next(&sqs, &url).await.as_deref(),
        Some("01M8TENANTB")
    );
    queue
        .send_batch_delayed(&[job("01M8TENANTC")], Duration::ZERO)
        .await
        .expect("sent");
    assert_eq!(
        group_of_next(&sqs, &url).await.as_deref(),
        Some("01M8TENANTC"),
        "a batch's entries too"
    );
    queue.send(r#"{"kind":"x"}"#).await.expect("sent");
    assert_eq!(group_of_next(&sqs, &url).await, None);
}
