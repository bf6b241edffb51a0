//! A process that dies between writing an accepted message and queueing its job (a
//! crash, a Lambda timeout) leaves the message `accepted` and charged with no job. The
//! client's retry with the same `Idempotency-Key` must queue it again, not only answer
//! its id. (Found by the restart drill, `infra/tests/restart.rs`.)

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use kirim::config::Backend;
use kirim::domain::{request_fingerprint, IdempotencyKey, TenantId};
use kirim::ports::{DeadLetter, DispatchQueue, Received, Redriven};
use kirim::service::idempotency::Idempotent;
use kirim::service::send::{send_once, Accepted, SendRequest};
use kirim::store_error::StoreError;
use kirim_tests::spawn_app;
use serde_json::json;

/// A queue that takes every job and loses it: the state a crash right after the
/// acceptance write leaves behind.
struct LostJobs;

#[async_trait]
impl DispatchQueue for LostJobs {
    async fn send(&self, _body: &str) -> Result<(), StoreError> {
        Ok(())
    }
    async fn receive(&self, _max: usize, _wait: Duration) -> Result<Vec<Received>, StoreError> {
        Ok(Vec::new())
    }
    async fn delete(&self, _receipt: &str) -> Result<(), StoreError> {
        Ok(())
    }
    async fn retry_after(&self, _receipt: &str, _delay: Duration) -> Result<(), StoreError> {
        Ok(())
    }
    async fn dead_letters(&self, _max: usize) -> Result<Vec<DeadLetter>, StoreError> {
        Ok(Vec::new())
    }
    async fn redrive(&self, _ids: Option<&[String]>, _max: usize) -> Result<Redriven, StoreError> {
        Ok(Redriven {
            moved: Vec::new(),
            more: false,
        })
    }
}

async fn a_retry_with_the_same_key_queues_a_message_whose_job_died_with_its_process(
    backend: Backend,
) {
    let t = spawn_app(backend).await;
    let o = t.onboard(5).await;
    let body = json!({
        "to": "+60123459901",
        "template": {"name": "order_update", "language": "en_US", "category": "utility",
                     "components": [{"type": "body", "parameters": [{"type": "text", "text": "A-1"}]}]},
    });
    let idem = Idempotent {
        key: IdempotencyKey::parse("order-a-1").expect("a key"),
        fingerprint: request_fingerprint(&body),
    };
    let mut crashed = t.app.deps.clone();
    crashed.queue = Arc::new(LostJobs);
    let req: SendRequest = serde_json::from_value(body.clone()).expect("a send request");
    let tenant = TenantId::from_trusted(o.tenant_id.clone());
    let Ok(Accepted::New(first)) = send_once(&crashed, &tenant, req, Some(&idem)).await else {
        panic!("the first request was accepted");
    };
    assert_eq!(t.credits(&o.key).await, 4, "the first request was charged");

    let res = t
        .http
        .post(t.url("/v1/messages"))
        .bearer_auth(&o.key)
        .header("Idempotency-Key", "order-a-1")
        .json(&body)
        .send()
        .await
        .expect("the retry");
    assert_eq!(res.status(), 202);
    assert_eq!(
        res.headers()
            .get("idempotent-replayed")
            .and_then(|v| v.to_str().ok()),
        Some("true")
    );
    let answer: serde_json::Value = res.json().await.expect("json");
    assert_eq!(
        answer["id"],
        first.id.as_str(),
        "the retry answers the same id"
    );

    let m = t.wait_status(&o.key, first.id.as_str(), "read").await;
    assert_eq!(m["status"], "read", "the message was sent after the retry");
    assert_eq!(t.sandbox_requests_to("60123459901").len(), 1, "sent once");
    assert_eq!(t.credits(&o.key).await, 4, "charged once");

    // Another retry of a message that is under way or done queues nothing more.
    let again = t
        .http
        .post(t.url("/v1/messages"))
        .bearer_auth(&o.key)
        .header("Idempotency-Key", "order-a-1")
        .json(&body)
        .send()
        .await
        .expect("a later retry");
    assert_eq!(again.status(), 202);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(t.sandbox_requests_to("60123459901").len(), 1, "still once");
}

on_both_backends!(a_retry_with_the_same_key_queues_a_message_whose_job_died_with_its_process);
