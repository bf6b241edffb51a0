//! A process that dies between writing an accepted message and queueing its job (a
//! crash, a Lambda timeout) leaves the message `accepted` and charged with no job. The
//! client's retry with the same `Idempotency-Key` must queue it again, not only answer
//! its id. (Found by the restart drill, `infra/tests/restart.rs`.)
//!
//! Sends now queue their job before they record the message (a job without a message
//! waits for it, then is dropped: nothing charged, nothing sent), and a message that
//! fails before Meta is refunded in the same atomic write as its `failed` status.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use kirim::config::Backend;
use kirim::domain::{
    ErrorCode, IdempotencyKey, MessageError, MessageId, MessageRecord, MessageStatus, TenantId,
};
use kirim::ports::{
    DeadLetter, DispatchQueue, LedgerEntry, LedgerKind, MessagePage, MessageQuery, MessageStore,
    Received, Redriven, StatusChange, Transition,
};
use kirim::service::idempotency::Idempotent;
use kirim::service::jobs::Outcome;
use kirim::service::send::{send_once, Accepted, SendRequest};
use kirim::service::{dispatch, Deps};
use kirim::store_error::StoreError;
use kirim_tests::{spawn_app, ManualClock, TestApp, OPERATOR_TOKEN};
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
            ..Default::default()
        })
    }
}

/// `POST /v1/messages` of `body` with `key` as its `Idempotency-Key`.
async fn post_keyed(
    t: &TestApp,
    api_key: &str,
    key: &str,
    body: &serde_json::Value,
) -> reqwest::Response {
    t.http
        .post(t.url("/v1/messages"))
        .bearer_auth(api_key)
        .header("Idempotency-Key", key)
        .json(body)
        .send()
        .await
        .expect("the retry")
}

/// The keyed send of `order_update` to `to` (reference `text`), accepted by a process
/// that then died before its job left (its queue loses every job): the message is
/// recorded and charged, and nothing will dispatch it. Answers the body and the message.
async fn accepted_with_its_job_lost(
    t: &TestApp,
    o: &kirim_tests::Onboarded,
    to: &str,
    key: &str,
    text: &str,
) -> (serde_json::Value, kirim::domain::MessageRecord) {
    let body = json!({
        "to": to,
        "template": {"name": "order_update", "language": "en_US", "category": "utility",
                     "components": [{"type": "body", "parameters": [{"type": "text", "text": text}]}]},
    });
    let key = IdempotencyKey::parse(key).expect("a key");
    let idem = Idempotent {
        fingerprint: key.fingerprint(&body),
        key,
    };
    let mut crashed = t.app.deps.clone();
    crashed.queue = Arc::new(LostJobs);
    let req: SendRequest = serde_json::from_value(body.clone()).expect("a send request");
    let tenant = TenantId::from_trusted(o.tenant_id.clone());
    let Ok(Accepted::New(first)) = send_once(&crashed, &tenant, req, Some(&idem)).await else {
        panic!("the first request was accepted");
    };
    (body, *first)
}

/// The app's services as they are once a message accepted now is past
/// `deadline::UNRECORDED_GRACE` (a replay queues its job again only then).
fn past_the_grace(t: &TestApp) -> Deps {
    let clock = ManualClock::new();
    clock.advance(chrono::Duration::seconds(121));
    let mut later = t.app.deps.clone();
    later.clock = clock;
    later
}

async fn replay(
    deps: &Deps,
    o: &kirim_tests::Onboarded,
    body: &serde_json::Value,
    key: &str,
) -> Result<Accepted, kirim::service::errors::ServiceError> {
    let key = IdempotencyKey::parse(key).expect("a key");
    let idem = Idempotent {
        fingerprint: key.fingerprint(body),
        key,
    };
    let req: SendRequest = serde_json::from_value(body.clone()).expect("a send request");
    let tenant = TenantId::from_trusted(o.tenant_id.clone());
    send_once(deps, &tenant, req, Some(&idem)).await
}

/// An idempotent insert that lands and answers an error (a timeout after the commit).
struct LandedUnanswered(Arc<dyn kirim::ports::IdempotencyStore>);

#[async_trait]
impl kirim::ports::IdempotencyStore for LandedUnanswered {
    async fn insert_with_debit_once(
        &self,
        record: &MessageRecord,
        debit: &LedgerEntry,
        key: &kirim::ports::IdempotencyRecord,
    ) -> Result<kirim::ports::IdempotentInsert, StoreError> {
        let landed = self.0.insert_with_debit_once(record, debit, key).await?;
        assert!(matches!(landed, kirim::ports::IdempotentInsert::Inserted));
        Err(StoreError::Unavailable("timed out after the commit".into()))
    }
    async fn get_idempotency(
        &self,
        tenant: &TenantId,
        key_hash: &str,
    ) -> Result<Option<kirim::ports::IdempotencyRecord>, StoreError> {
        self.0.get_idempotency(tenant, key_hash).await
    }
}

/// A keyed send whose write landed but answered an error is this request's own first
/// answer (a new message: no `Idempotent-Replayed`, audited with its details), not a
/// replay of itself; a real replay after it still is one.
async fn a_keyed_send_whose_write_landed_unanswered_is_answered_as_new_not_as_a_replay(
    backend: Backend,
) {
    let t = spawn_app(backend).await;
    let o = t.onboard(5).await;
    let body = json!({
        "to": "+60123459939",
        "template": {"name": "order_update", "language": "en_US", "category": "utility",
                     "components": [{"type": "body", "parameters": [{"type": "text", "text": "A-1"}]}]},
    });
    let key = IdempotencyKey::parse("landed-unanswered-1").expect("a key");
    let idem = Idempotent {
        fingerprint: key.fingerprint(&body),
        key,
    };
    let mut deps = t.app.deps.clone();
    deps.idempotency = Arc::new(LandedUnanswered(t.app.deps.idempotency.clone()));
    let req: SendRequest = serde_json::from_value(body.clone()).expect("a send request");
    let tenant = TenantId::from_trusted(o.tenant_id.clone());
    let first = send_once(&deps, &tenant, req, Some(&idem)).await;
    let Ok(Accepted::New(m)) = first else {
        panic!("answered as new: {first:?}");
    };
    assert_eq!(t.credits(&o.key).await, 4, "charged once");
    let again = replay(&t.app.deps, &o, &body, "landed-unanswered-1").await;
    assert!(
        matches!(&again, Ok(Accepted::Replayed(id, _)) if *id == m.id),
        "{again:?}"
    );
    assert_eq!(t.credits(&o.key).await, 4, "still once");
}

async fn a_retry_with_the_same_key_queues_a_message_whose_job_died_with_its_process(
    backend: Backend,
) {
    let t = spawn_app(backend).await;
    let o = t.onboard(5).await;
    let (body, first) =
        accepted_with_its_job_lost(&t, &o, "+60123459901", "order-a-1", "A-1").await;
    assert_eq!(t.credits(&o.key).await, 4, "the first request was charged");

    // A retry while the message is young answers the first 202 and queues nothing: its
    // first job may still come (it was queued before the message was written).
    let res = post_keyed(&t, &o.key, "order-a-1", &body).await;
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
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(t.sandbox_requests_to("60123459901").is_empty());

    // Past the grace, a retry while the queue is down: 503 (try again), not the first 202
    // with the job still missing, which would leave the message waiting, charged, for good.
    let later = past_the_grace(&t);
    let mut queue_down = later.clone();
    queue_down.queue = Arc::new(Kept::refusing());
    assert!(matches!(
        replay(&queue_down, &o, &body, "order-a-1").await,
        Err(kirim::service::errors::ServiceError::Unavailable(_))
    ));
    assert_eq!(t.credits(&o.key).await, 4, "nothing charged again");

    let Ok(Accepted::Replayed(id, _)) = replay(&later, &o, &body, "order-a-1").await else {
        panic!("the first answer again");
    };
    assert_eq!(id, first.id);
    let m = t.wait_status(&o.key, first.id.as_str(), "read").await;
    assert_eq!(m["status"], "read", "the message was sent after the retry");
    assert_eq!(t.sandbox_requests_to("60123459901").len(), 1, "sent once");
    assert_eq!(t.credits(&o.key).await, 4, "charged once");

    // Another retry of a message that is under way or done queues nothing more.
    assert!(replay(&later, &o, &body, "order-a-1").await.is_ok());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(t.sandbox_requests_to("60123459901").len(), 1, "still once");
}

/// Past the grace, replays of a message whose job waits behind a backlog (or was lost)
/// queue one job again, not one each: the first marks the message, which restarts its idle
/// time; another job would claim the message the moment a failed attempt released it,
/// skipping its backoff.
async fn replays_past_the_grace_queue_its_job_again_once_not_once_each(backend: Backend) {
    let t = spawn_app(backend).await;
    let o = t.onboard(5).await;
    let (body, first) =
        accepted_with_its_job_lost(&t, &o, "+60123459938", "order-a-4", "A-4").await;
    let mut later = past_the_grace(&t);
    let kept = Arc::new(Kept {
        bodies: Mutex::default(),
        refuse: false,
        for_good: false,
    });
    later.queue = kept.clone();
    let replays = (0..4).map(|_| replay(&later, &o, &body, "order-a-4"));
    for r in futures::future::join_all(replays).await {
        assert!(
            matches!(&r, Ok(Accepted::Replayed(id, _)) if *id == first.id),
            "{r:?}"
        );
    }
    assert!(replay(&later, &o, &body, "order-a-4").await.is_ok());
    // (Each replay also queues a job for the new message it would have made — the job goes
    // before the write — which the dispatcher drops as never recorded.)
    let for_it = kept
        .bodies
        .lock()
        .unwrap()
        .iter()
        .filter(|b| b.contains(first.id.as_str()))
        .count();
    assert_eq!(for_it, 1, "one job for it");
}

/// A message a busy number just gave back (unattempted, its job on the queue for its slot)
/// is not queued again by a replay, even past the grace of its acceptance: only a message
/// idle for the grace may have lost its job.
async fn a_replay_queues_nothing_for_a_message_a_busy_number_just_gave_back(backend: Backend) {
    let t = spawn_app(backend).await;
    let o = t.onboard(5).await;
    let tenant = TenantId::from_trusted(o.tenant_id.clone());
    let (body, first) =
        accepted_with_its_job_lost(&t, &o, "+60123459937", "order-a-3", "A-3").await;
    // 100 s after acceptance a dispatcher finds the number booked five minutes ahead and
    // gives it back, its slot carried (about 400 s after acceptance).
    let clock = ManualClock::new();
    clock.advance(chrono::Duration::seconds(100));
    let mut dispatcher = t.app.deps.clone();
    dispatcher.clock = clock.clone();
    let pace = kirim::service::throttle::pace(dispatcher.settings.meta_throughput);
    dispatcher
        .throughput
        .reserve_slots(
            &o.phone_number_id,
            pace,
            dispatcher.clock.now(),
            kirim::service::throttle::HORIZON,
            pace * 300,
        )
        .await
        .expect("the number booked");
    let job = kirim::service::jobs::QueueJob::Send(kirim::service::jobs::DispatchJob {
        tenant_id: tenant.clone(),
        message_id: first.id.clone(),
        content: kirim::domain::Content::Text {
            body: "unused".into(),
        },
        request_id: None,
        send_at: None,
        broadcast_id: None,
        facts: Some(kirim::service::jobs::MessageFacts::of(&first)),
        retry_at: None,
        recheck: false,
        refused: None,
        refused_claim: None,
        key_hash: None,
    })
    .to_body()
    .expect("a job");
    let turned = dispatch::handle_in_batch(&dispatcher, &job).await;
    assert!(matches!(turned, Outcome::RetryAfter(_)), "{turned:?}");
    let back = t
        .app
        .deps
        .messages
        .get_message(&tenant, &first.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((back.status, back.attempts), (MessageStatus::Accepted, 0));
    assert!(back.carried_slot.is_some(), "{back:?}");
    // A replay 250 s after acceptance, 150 s after the give-back, before its slot: nothing
    // queued (its job waits for the slot).
    let kept = Arc::new(Kept::default());
    let later = ManualClock::new();
    later.advance(chrono::Duration::seconds(250));
    let mut replaying = t.app.deps.clone();
    replaying.clock = later;
    replaying.queue = kept.clone();
    let r = replay(&replaying, &o, &body, "order-a-3").await;
    assert!(matches!(r, Ok(Accepted::Replayed(..))), "{r:?}");
    // (The replay's own attempt queued a job for a new id first, as every send does,
    // dropped as unrecorded: not this message's.)
    let bodies = kept.bodies.lock().unwrap().clone();
    assert!(
        !bodies.iter().any(|b| b.contains(first.id.as_str())),
        "no second job for the message: {bodies:?}"
    );
}

/// A retry that queues a lost job again resolves the template against the catalogue of
/// the number the message was accepted from, not the number the request would go from
/// now: the default switched meanwhile to a number on another WABA, where the template
/// is paused, and the message still goes.
async fn a_retry_queues_a_lost_job_with_the_catalogue_of_the_number_it_was_accepted_from(
    backend: Backend,
) {
    let t = spawn_app(backend).await;
    let o = t.onboard(5).await;
    let (body, first) =
        accepted_with_its_job_lost(&t, &o, "+60123459911", "order-a-2", "A-2").await;
    // A second number on another WABA, where Meta paused the template, becomes the
    // default.
    let (second, waba) = (
        format!("{}", 4_000_000 + kirim_tests::rand_u32() % 900_000),
        "7002002",
    );
    let res = t
        .http
        .post(t.url(&format!(
            "/v1/platform/tenants/{}/phone-numbers",
            o.tenant_id
        )))
        .bearer_auth(OPERATOR_TOKEN)
        .json(&json!({"phone_number_id": second, "waba_id": waba}))
        .send()
        .await
        .expect("added");
    assert_eq!(res.status(), 201);
    // (Paused in Kirim's catalogue by Meta's webhook: the sandbox knows a number's WABA
    // by its token only, and this tenant's one token reaches both.)
    let note = json!({"object": "whatsapp_business_account", "entry": [{"id": waba,
        "time": chrono::Utc::now().timestamp() + 60, "changes": [
        {"field": "message_template_status_update", "value": {"event": "PAUSED", "message_template_id": 9,
            "message_template_name": "order_update", "message_template_language": "en_US", "reason": "NONE"}}]}]});
    assert_eq!(t.post_webhook(&note).await.status(), 200);
    let res = t
        .http
        .put(t.url(&format!("/v1/phone-numbers/{second}/default")))
        .bearer_auth(&o.key)
        .send()
        .await
        .expect("the default");
    assert_eq!(res.status(), 200);
    assert!(replay(&past_the_grace(&t), &o, &body, "order-a-2")
        .await
        .is_ok());
    let m = t.wait_status(&o.key, first.id.as_str(), "read").await;
    assert_eq!(m["status"], "read", "sent after the retry: {m}");
    assert_eq!(
        m["from"],
        o.phone_number_id.as_str(),
        "from the number it was accepted from"
    );
}

/// A job the queue refuses for good (SQS's sender fault, as a job larger than the queue
/// takes) is a 500 with nothing charged or recorded, not a 503 telling the client to retry
/// with the same key, which would be refused the same way for ever.
async fn a_send_whose_job_the_queue_refuses_for_good_is_not_answered_as_worth_a_retry(
    backend: Backend,
) {
    let t = spawn_app(backend).await;
    let o = t.onboard(5).await;
    let mut refusing = t.app.deps.clone();
    refusing.queue = Arc::new(Kept::refusing_for_good());
    let body = json!({
        "to": "+60123459961",
        "template": {"name": "order_update", "language": "en_US",
                     "components": [{"type": "body", "parameters": [{"type": "text", "text": "A-61"}]}]}
    });
    let answer = replay(&refusing, &o, &body, "order-a-61").await;
    assert!(
        matches!(
            answer,
            Err(kirim::service::errors::ServiceError::Internal(_))
        ),
        "{:?}",
        answer.as_ref().err()
    );
    assert_eq!(t.credits(&o.key).await, 5, "nothing charged");
    // Nothing kept under the key either: once the queue takes the job, the same request
    // is accepted afresh.
    let Ok(Accepted::New(_)) = replay(&t.app.deps, &o, &body, "order-a-61").await else {
        panic!("accepted once the queue takes it");
    };
    assert_eq!(t.credits(&o.key).await, 4);
}

/// A queue that keeps every job it is given (and may refuse them): what a test then
/// delivers to the dispatcher by hand, in the order it chooses.
#[derive(Default)]
struct Kept {
    bodies: Mutex<Vec<String>>,
    refuse: bool,
    /// Refusals are for good (SQS's sender fault: a job larger than the queue takes), not
    /// a queue down for a moment.
    for_good: bool,
}

impl Kept {
    fn refusing() -> Self {
        Self {
            bodies: Mutex::default(),
            refuse: true,
            for_good: false,
        }
    }
    fn refusing_for_good() -> Self {
        Self {
            for_good: true,
            ..Self::refusing()
        }
    }
    fn only(&self) -> String {
        let bodies = self.bodies.lock().expect("the kept jobs");
        assert_eq!(bodies.len(), 1, "one job was queued");
        bodies[0].clone()
    }
}

#[async_trait]
impl DispatchQueue for Kept {
    async fn send(&self, body: &str) -> Result<(), StoreError> {
        if self.refuse && self.for_good {
            return Err(StoreError::Rejected(
                "Message must be shorter than 262144 bytes".into(),
            ));
        }
        if self.refuse {
            return Err(StoreError::Unavailable("the queue is down".into()));
        }
        self.bodies
            .lock()
            .map_err(|_| StoreError::Unavailable("poisoned".into()))?
            .push(body.to_owned());
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
        Ok(Redriven::default())
    }
}

/// The real message store with failures injected: the refunding failure write fails
/// (as storage down, nothing written) while `fail_refund` is set, and the acceptance
/// write "dies" (nothing written) while `die_on_insert` is set.
struct Flaky {
    inner: Arc<dyn MessageStore>,
    fail_refund: AtomicBool,
    die_on_insert: AtomicBool,
    /// The next this many wamid index writes fail.
    fail_index: AtomicU32,
    /// The next release for a retry fails (then the flag clears).
    fail_release_once: AtomicBool,
    /// Every release for a retry fails while set (storage down, nothing written).
    fail_release: AtomicBool,
    /// The next claim (a move to `sending`) lands, but its answer is lost and the store's
    /// retry of it is what answers: refused, by the claim itself (then the flag clears).
    lose_claim_answer_once: AtomicBool,
    /// The same for the next move to `sent`.
    lose_sent_answer_once: AtomicBool,
    /// The next failure with its refund is written, but answers an error (on DynamoDB, the
    /// transaction committed and the read of what it wrote failed; then the flag clears).
    lose_refund_answer_once: AtomicBool,
    /// The next move to `read` lands, and every try of it answers an error (then the flag
    /// clears).
    lose_read_answer_once: AtomicBool,
    /// The same for the next move to `sent`.
    lose_sent_every_answer_once: AtomicBool,
    /// Every listing fails (storage unavailable).
    fail_list: AtomicBool,
    /// The next release for a retry lands, and answers an error (then the flag clears):
    /// its retry is refused by it.
    lose_release_answer_once: AtomicBool,
    /// Before the next move to `sent` (the dispatcher's, with Meta's wamid), Meta's
    /// `delivered` for the message is applied through these plain ports: Meta's status
    /// overtaking the dispatcher's own move.
    status_first: Mutex<Option<(Deps, TenantId)>>,
}

impl Flaky {
    fn over(deps: &Deps) -> Arc<Self> {
        Arc::new(Self {
            inner: deps.messages.clone(),
            fail_refund: AtomicBool::new(false),
            die_on_insert: AtomicBool::new(false),
            fail_index: AtomicU32::new(0),
            fail_release_once: AtomicBool::new(false),
            fail_release: AtomicBool::new(false),
            lose_claim_answer_once: AtomicBool::new(false),
            lose_sent_answer_once: AtomicBool::new(false),
            lose_refund_answer_once: AtomicBool::new(false),
            lose_read_answer_once: AtomicBool::new(false),
            lose_sent_every_answer_once: AtomicBool::new(false),
            fail_list: AtomicBool::new(false),
            lose_release_answer_once: AtomicBool::new(false),
            status_first: Mutex::new(None),
        })
    }
}

kirim_tests::pass_through! {
    impl MessageStore for Flaky {
        async fn insert_with_debit(
            &self,
            record: &MessageRecord,
            debit: &LedgerEntry,
        ) -> Result<(), StoreError> {
            if self.die_on_insert.load(Ordering::SeqCst) {
                return Err(StoreError::Unavailable("the process died here".into()));
            }
            self.inner.insert_with_debit(record, debit).await
        }
        async fn list_messages(
            &self,
            tenant: &TenantId,
            query: &MessageQuery,
        ) -> Result<MessagePage, StoreError> {
            if self.fail_list.load(Ordering::SeqCst) {
                return Err(StoreError::Unavailable("dynamodb throttled".into()));
            }
            self.inner.list_messages(tenant, query).await
        }
        async fn transition(
            &self,
            tenant: &TenantId,
            id: &MessageId,
            to: MessageStatus,
            change: &StatusChange,
            at: DateTime<Utc>,
        ) -> Result<Transition, StoreError> {
            let lose = match to {
                MessageStatus::Sending => Some(&self.lose_claim_answer_once),
                MessageStatus::Sent => Some(&self.lose_sent_answer_once),
                _ => None,
            };
            let first = (to == MessageStatus::Sent)
                .then(|| self.status_first.lock().ok().and_then(|mut f| f.take()))
                .flatten();
            if let Some((deps, owner)) = first {
                use kirim::domain::meta::{MetaStatus, StatusReport, Wamid};
                let report = StatusReport {
                    phone_number_id: None,
                    wamid: Wamid::parse(change.wamid.as_deref().expect("Meta's wamid"))
                        .expect("a wamid"),
                    status: MetaStatus::Delivered,
                    timestamp: Some(chrono::Utc::now().timestamp()),
                    callback: Some(kirim::domain::meta::Callback::new(id.clone(), Some(&owner))),
                    recipient: None,
                    recipient_user_id: None,
                    errors: Vec::new(),
                    pricing: None,
                };
                let applied = kirim::service::status::apply(&deps, Some(&owner), &report)
                    .await
                    .expect("applied");
                assert_eq!(applied, kirim::service::status::Applied::Yes);
            }
            if lose.is_some_and(|l| l.swap(false, Ordering::SeqCst)) {
                let landed = self.inner.transition(tenant, id, to, change, at).await?;
                assert!(matches!(landed, Transition::Applied(_)), "{landed:?}");
            }
            let every = match to {
                MessageStatus::Read => Some(&self.lose_read_answer_once),
                MessageStatus::Sent => Some(&self.lose_sent_every_answer_once),
                _ => None,
            };
            if every.is_some_and(|l| l.swap(false, Ordering::SeqCst)) {
                let landed = self.inner.transition(tenant, id, to, change, at).await?;
                assert!(matches!(landed, Transition::Applied(_)), "{landed:?}");
                return Err(StoreError::Unavailable("every try timed out".into()));
            }
            self.inner.transition(tenant, id, to, change, at).await
        }
        async fn fail_and_refund(
            &self,
            tenant: &TenantId,
            id: &MessageId,
            from: MessageStatus,
            change: &StatusChange,
            at: DateTime<Utc>,
            refund: Option<&LedgerEntry>,
        ) -> Result<Transition, StoreError> {
            if self.fail_refund.load(Ordering::SeqCst) {
                return Err(StoreError::Unavailable("storage is down".into()));
            }
            let moved = self
                .inner
                .fail_and_refund(tenant, id, from, change, at, refund)
                .await;
            if self.lose_refund_answer_once.swap(false, Ordering::SeqCst) {
                assert!(matches!(moved, Ok(Transition::Applied(_))), "{moved:?}");
                return Err(StoreError::Unavailable("the read after the commit".into()));
            }
            moved
        }
        async fn release_for_retry(
            &self,
            tenant: &TenantId,
            id: &MessageId,
            claimed_at: DateTime<Utc>,
            error: &MessageError,
            at: DateTime<Utc>,
        ) -> Result<Transition, StoreError> {
            if self.fail_release_once.swap(false, Ordering::SeqCst)
                || self.fail_release.load(Ordering::SeqCst)
            {
                return Err(StoreError::Unavailable("storage blinked".into()));
            }
            if self.lose_release_answer_once.swap(false, Ordering::SeqCst) {
                let landed = self
                    .inner
                    .release_for_retry(tenant, id, claimed_at, error, at)
                    .await?;
                assert!(matches!(landed, Transition::Applied(_)), "{landed:?}");
                return Err(StoreError::Unavailable("the answer was lost".into()));
            }
            self.inner
                .release_for_retry(tenant, id, claimed_at, error, at)
                .await
        }
        async fn index_wamid(
            &self,
            tenant: &TenantId,
            id: &MessageId,
            wamid: &str,
            expires_at: Option<i64>,
        ) -> Result<bool, StoreError> {
            let failing = self
                .fail_index
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
            if failing.is_ok() {
                return Err(StoreError::Unavailable("storage blinked".into()));
            }
            self.inner.index_wamid(tenant, id, wamid, expires_at).await
        }
    }
}

fn utility_send(to: &str) -> SendRequest {
    serde_json::from_value(json!({
        "to": to,
        "template": {"name": "order_update", "language": "en_US", "category": "utility",
                     "components": [{"type": "body", "parameters": [{"type": "text", "text": "A-1"}]}]},
    }))
    .expect("a send request")
}

/// A utility send to `to` accepted, its job held aside instead of queued: the message
/// and the job's body.
async fn accepted_with_job(
    t: &TestApp,
    tenant: &TenantId,
    to: &str,
) -> (Box<MessageRecord>, String) {
    let kept = Arc::new(Kept::default());
    let mut queued = t.app.deps.clone();
    queued.queue = kept.clone();
    let Ok(Accepted::New(m)) = send_once(&queued, tenant, utility_send(to), None).await else {
        panic!("the send was accepted");
    };
    (m, kept.only())
}

/// Sets the tenant's status callback to `url` (asserting it was taken).
async fn with_callbacks(t: &TestApp, o: &kirim_tests::Onboarded, url: &str) {
    let body = json!({"url": url, "secret": crate::callbacks::CALLBACK_SECRET});
    let (s, b) = crate::callbacks::set_callback(t, &o.key, body).await;
    assert_eq!(s, 200, "{b}");
}

/// The ledger of a tenant as the store has it: (sum of amounts, refund entries).
async fn ledger_of(t: &TestApp, tenant: &TenantId) -> (i64, Vec<LedgerEntry>) {
    let entries = t.app.deps.ledger.entries(tenant).await.expect("the ledger");
    let sum = entries.iter().map(|e| e.amount).sum();
    let refunds = entries
        .into_iter()
        .filter(|e| e.kind == LedgerKind::Refund)
        .collect();
    (sum, refunds)
}

async fn a_failure_before_meta_is_refunded_in_the_same_write_so_a_storage_failure_loses_no_refund_and_a_redelivery_gives_none_twice(
    backend: Backend,
) {
    let t = spawn_app(backend).await;
    let o = t.onboard(5).await;
    let tenant = TenantId::from_trusted(o.tenant_id.clone());
    let (m, job) = accepted_with_job(&t, &tenant, "+60123459911").await;
    assert_eq!(t.credits(&o.key).await, 4, "charged");
    // Suspended while queued: the dispatcher fails it (tenant_suspended) and refunds it.
    let res = t
        .http
        .post(t.url(&format!("/v1/platform/tenants/{}/suspend", o.tenant_id)))
        .bearer_auth(OPERATOR_TOKEN)
        .json(&json!({"reason": "drill"}))
        .send()
        .await
        .expect("suspend");
    assert_eq!(res.status(), 200);

    // Storage fails exactly where the failure and its refund are written.
    let flaky = Flaky::over(&t.app.deps);
    flaky.fail_refund.store(true, Ordering::SeqCst);
    let mut down = t.app.deps.clone();
    down.messages = flaky.clone();
    let first = dispatch::handle(&down, &job).await;
    assert!(
        matches!(first, Outcome::Backoff(_)),
        "the job is retried: {first:?}"
    );
    let after = t
        .app
        .deps
        .messages
        .get_message(&tenant, &m.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        after.status,
        MessageStatus::Accepted,
        "the claim was given back"
    );
    assert_eq!(
        t.credits(&o.key).await,
        4,
        "still charged: nothing was refunded"
    );
    let (sum, refunds) = ledger_of(&t, &tenant).await;
    assert_eq!(sum, 4, "credits equal the ledger");
    assert!(refunds.is_empty());

    // The retry (storage back) fails and refunds it together.
    let second = dispatch::handle(&t.app.deps, &job).await;
    assert_eq!(second, Outcome::Done);
    let failed = t
        .app
        .deps
        .messages
        .get_message(&tenant, &m.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(failed.status, MessageStatus::Failed);
    assert_eq!(
        failed.error.map(|e| e.code),
        Some(ErrorCode::Kirim("tenant_suspended".into()))
    );
    assert_eq!(t.credits(&o.key).await, 5, "refunded");
    let (sum, refunds) = ledger_of(&t, &tenant).await;
    assert_eq!(sum, 5, "credits equal the ledger");
    assert_eq!(refunds.len(), 1);
    assert_eq!(refunds[0].message_id.as_ref(), Some(&m.id));

    // A redelivery of the same job refunds nothing more.
    assert_eq!(dispatch::handle(&t.app.deps, &job).await, Outcome::Done);
    assert_eq!(t.credits(&o.key).await, 5, "refunded once");
    assert_eq!(ledger_of(&t, &tenant).await.1.len(), 1, "one refund entry");
    assert!(
        t.sandbox_requests_to("60123459911").is_empty(),
        "never sent"
    );
}

/// A failure with its refund that was written but answered an error (on DynamoDB, the
/// transaction committed and the read of what it wrote failed) is read back and carried
/// on: its `failed` callback is queued, once, and the refund is the transaction's one.
/// Taken for not written, the job came back, found the message settled and dropped itself:
/// the tenant never heard of the failure.
async fn a_refunded_failure_whose_answer_was_lost_still_has_its_failed_callback(backend: Backend) {
    let t = spawn_app(backend).await;
    let o = t.onboard(5).await;
    let tenant = TenantId::from_trusted(o.tenant_id.clone());
    with_callbacks(&t, &o, "https://hooks.example.com/kirim").await;
    let (m, job) = accepted_with_job(&t, &tenant, "+60123459912").await;
    let res = t
        .http
        .post(t.url(&format!("/v1/platform/tenants/{}/suspend", o.tenant_id)))
        .bearer_auth(OPERATOR_TOKEN)
        .json(&json!({"reason": "drill"}))
        .send()
        .await
        .expect("suspend");
    assert_eq!(res.status(), 200);
    let flaky = Flaky::over(&t.app.deps);
    flaky.lose_refund_answer_once.store(true, Ordering::SeqCst);
    let callbacks = Arc::new(Kept::default());
    let mut deps = t.app.deps.clone();
    deps.messages = flaky.clone();
    deps.callback_queue = callbacks.clone();
    assert_eq!(dispatch::handle(&deps, &job).await, Outcome::Done);
    let body = callbacks.only();
    assert!(
        body.contains(m.id.as_str()) && body.contains(r#""status":"failed""#),
        "{body}"
    );
    assert_eq!(t.credits(&o.key).await, 5, "refunded");
    assert_eq!(ledger_of(&t, &tenant).await.1.len(), 1, "once");
    // A redelivery of the job changes nothing and queues nothing more.
    assert_eq!(dispatch::handle(&deps, &job).await, Outcome::Done);
    assert_eq!(callbacks.bodies.lock().unwrap().len(), 1);
    assert_eq!(t.credits(&o.key).await, 5);
}

/// A console served on `deps` (a fault in them) on a port of its own: its address and the
/// cookie header of `web`'s session, signed in on the app's own console.
pub(crate) async fn console_on(deps: Deps, web: &crate::console::Browser<'_>) -> (String, String) {
    let console = kirim::console::console_router(
        deps,
        kirim::console::ConsoleOptions {
            secure_cookies: false,
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, console).await });
    let cookie = web
        .cookies
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("; ");
    (base, cookie)
}

/// The console's send form whose outcome is not known (the API answered 5xx: here its job
/// could not be queued) comes back with the same key, saying sending it again is safe, also
/// when the page's list of messages cannot be read just then: an error page in its place
/// would lose the key, and a reload would send a second message.
async fn a_console_send_of_unknown_outcome_keeps_its_key_when_the_list_cannot_be_read(
    backend: Backend,
) {
    let t = spawn_app(backend).await;
    let o = t.onboard(5).await;
    let (email, _) = crate::users::new_user(&t, &o.key, "operator").await;
    let mut web = crate::console::sign_in(&t, &email).await;
    let csrf = web.get("/console/messages").await.csrf();
    let flaky = Flaky::over(&t.app.deps);
    flaky.fail_list.store(true, Ordering::SeqCst);
    let mut down = t.app.deps.clone();
    down.queue = Arc::new(Kept::refusing());
    down.messages = flaky;
    let (base, cookie) = console_on(down, &web).await;
    let key = kirim::domain::new_id();
    let res = reqwest::Client::new()
        .post(format!("{base}/console/messages"))
        .header("cookie", cookie)
        .form(&[
            ("csrf", csrf.as_str()),
            ("idempotency_key", key.as_str()),
            ("to", "+60123459951"),
            ("template", "order_update"),
            ("language", "en_US"),
            ("category", ""),
            ("parameters", "ORDER-1"),
        ])
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let html = res.text().await.unwrap();
    assert!(status >= 500, "{status}: {html}");
    assert!(
        html.contains(&format!("value=\"{key}\"")),
        "the same key: {html}"
    );
    assert!(html.contains("Sending this form again is safe"), "{html}");
    // It may have been done: never "not done".
    assert!(!html.contains("Not done"), "{html}");
    assert!(html.contains("Outcome unknown:"), "{html}");
    assert!(html.contains("could not be read just now"), "{html}");
}

/// The same for a campaign: its form comes back with its key and its template (offered
/// alone: the catalogue could not be read either) when the page's reads fail after the
/// create's 5xx (here the tenant's request limit, one request, spent by the create).
async fn a_console_campaign_of_unknown_outcome_keeps_its_key_and_template_when_the_page_cannot_read(
    backend: Backend,
) {
    let t = spawn_app(backend).await;
    let o = t.onboard(5).await;
    let (email, _) = crate::users::new_user(&t, &o.key, "operator").await;
    let mut web = crate::console::sign_in(&t, &email).await;
    let csrf = web.get("/console/campaigns").await.csrf();
    let mut down = t.app.deps.clone();
    down.queue = Arc::new(Kept::refusing());
    let (base, cookie) = console_on(down, &web).await;
    // A second number, chosen on the form: kept as chosen when the numbers cannot be read.
    let second = format!("{}", 6_000_000 + kirim_tests::rand_u32() % 900_000);
    let res = t
        .http
        .post(t.url(&format!(
            "/v1/platform/tenants/{}/phone-numbers",
            o.tenant_id
        )))
        .bearer_auth(kirim_tests::OPERATOR_TOKEN)
        .json(&serde_json::json!({"phone_number_id": second, "waba_id": "1000001"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let res = t
        .http
        .put(t.url(&format!("/v1/platform/tenants/{}/limits", o.tenant_id)))
        .bearer_auth(kirim_tests::OPERATOR_TOKEN)
        .json(&serde_json::json!({"requests_per_sec": 1, "burst": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let key = kirim::domain::new_id();
    let res = reqwest::Client::new()
        .post(format!("{base}/console/campaigns"))
        .header("cookie", cookie)
        .form(&[
            ("csrf", csrf.as_str()),
            ("idempotency_key", key.as_str()),
            ("from", second.as_str()),
            ("template", "order_update:en_US"),
            ("parameters", "ORDER-2"),
            ("numbers", "+60123459952"),
        ])
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let html = res.text().await.unwrap();
    assert!(status >= 500, "{status}: {html}");
    assert!(
        html.contains(&format!("value=\"{key}\"")),
        "the same key: {html}"
    );
    assert!(html.contains("Sending this form again is safe"), "{html}");
    // It may have been done: never "not done".
    assert!(!html.contains("Not done"), "{html}");
    assert!(html.contains("Outcome unknown:"), "{html}");
    assert!(
        html.contains("value=\"order_update:en_US\""),
        "its template: {html}"
    );
    assert!(
        html.contains(&format!("name=\"from\" value=\"{second}\"")),
        "its sender: {html}"
    );
}

async fn a_send_whose_job_cannot_be_queued_records_and_charges_nothing(backend: Backend) {
    let t = spawn_app(backend).await;
    let o = t.onboard(5).await;
    let tenant = TenantId::from_trusted(o.tenant_id.clone());
    let mut down = t.app.deps.clone();
    down.queue = Arc::new(Kept::refusing());
    let res = send_once(&down, &tenant, utility_send("+60123459912"), None).await;
    assert!(res.is_err(), "the send is refused: {res:?}");
    let page = t
        .app
        .deps
        .messages
        .list_messages(
            &tenant,
            &MessageQuery {
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(page.messages.is_empty(), "no message was recorded");
    assert_eq!(t.credits(&o.key).await, 5, "nothing was charged");
    assert_eq!(
        ledger_of(&t, &tenant).await.0,
        5,
        "credits equal the ledger"
    );
}

async fn a_job_that_arrives_before_its_message_waits_for_it_and_one_whose_send_died_is_dropped_unsent(
    backend: Backend,
) {
    let t = spawn_app(backend).await;
    let o = t.onboard(5).await;
    let tenant = TenantId::from_trusted(o.tenant_id.clone());

    // A send that dies after queueing its job, before recording the message.
    let kept = Arc::new(Kept::default());
    let flaky = Flaky::over(&t.app.deps);
    flaky.die_on_insert.store(true, Ordering::SeqCst);
    let mut dying = t.app.deps.clone();
    dying.queue = kept.clone();
    dying.messages = flaky.clone();
    let res = send_once(&dying, &tenant, utility_send("+60123459913"), None).await;
    assert!(res.is_err(), "the request died: {res:?}");
    let orphan = kept.only();
    assert_eq!(t.credits(&o.key).await, 5, "nothing was charged");
    // Within the grace the job waits (its message may still be on its way) ...
    let young = dispatch::handle(&t.app.deps, &orphan).await;
    assert!(
        matches!(young, Outcome::RetryAfter(_)),
        "it waits: {young:?}"
    );
    // ... and after it, it is dropped: nothing sent, nothing charged.
    let clock = ManualClock::new();
    clock.advance(chrono::Duration::seconds(
        kirim::service::deadline::UNRECORDED_GRACE.as_secs() as i64 + 1,
    ));
    let mut later = t.app.deps.clone();
    later.clock = clock;
    assert_eq!(dispatch::handle(&later, &orphan).await, Outcome::Done);
    assert!(
        t.sandbox_requests_to("60123459913").is_empty(),
        "never sent"
    );
    assert_eq!(t.credits(&o.key).await, 5);

    // A job delivered before its message is written waits, then sends it once.
    let kept = Arc::new(Kept::default());
    let flaky = Flaky::over(&t.app.deps);
    flaky.die_on_insert.store(true, Ordering::SeqCst);
    let mut unwritten = t.app.deps.clone();
    unwritten.queue = kept.clone();
    unwritten.messages = flaky.clone();
    let _ = send_once(&unwritten, &tenant, utility_send("+60123459914"), None).await;
    let early = kept.only();
    assert!(matches!(
        dispatch::handle(&t.app.deps, &early).await,
        Outcome::RetryAfter(_)
    ));
    assert!(t.sandbox_requests_to("60123459914").is_empty());
    // The write lands (here: the same job's message, recorded by a send through a store
    // that works); the redelivered job sends it.
    let job: serde_json::Value = serde_json::from_str(&early).expect("a job");
    let id = job["message_id"]
        .as_str()
        .expect("its message id")
        .to_owned();
    let record = MessageRecord {
        id: MessageId::from_trusted(id.clone()),
        tenant_id: tenant.clone(),
        to: kirim::domain::PhoneNumber::parse("+60123459914").unwrap(),
        template: None,
        status: MessageStatus::Accepted,
        error: None,
        events: vec![kirim::domain::StatusEvent {
            status: MessageStatus::Accepted,
            at: Utc::now(),
        }],
        wamid: None,
        attempts: 0,
        price: 1,
        client_reference: None,
        created_at: Utc::now(),
        updated_at: Utc::now(),
        expires_at: Some(Utc::now().timestamp() + 3600),
        broadcast_id: None,
        send_at: None,
        from: None,
        pricing: None,
        carried_slot: None,
        claim: None,
        quality_counted: false,
        refunded: false,
        settled_at: None,
    };
    let debit = kirim::service::ledger::debit(
        &t.app.deps,
        &tenant,
        &kirim::service::ledger::Charge::Message(record.id.clone()),
        1,
        Utc::now(),
    );
    t.app
        .deps
        .messages
        .insert_with_debit(&record, &debit)
        .await
        .expect("the write lands");
    assert_eq!(dispatch::handle(&t.app.deps, &early).await, Outcome::Done);
    let m = t.wait_status(&o.key, &id, "read").await;
    assert_eq!(m["status"], "read", "sent once its message was there");
    assert_eq!(t.sandbox_requests_to("60123459914").len(), 1, "sent once");
    assert_eq!(dispatch::handle(&t.app.deps, &early).await, Outcome::Done);
    assert_eq!(t.sandbox_requests_to("60123459914").len(), 1, "still once");
    assert_eq!(t.credits(&o.key).await, 4, "charged once");
    assert_eq!(
        ledger_of(&t, &tenant).await.0,
        4,
        "credits equal the ledger"
    );
}

fn broadcast_template() -> kirim::service::send::TemplateIn {
    serde_json::from_value(
        json!({"name": "order_update", "language": "en_US", "category": "utility",
        "components": [{"type": "body", "parameters": [{"type": "text", "text": "A-1"}]}]}),
    )
    .expect("a template")
}

async fn a_broadcast_whose_fan_out_job_cannot_be_queued_records_and_charges_nothing(
    backend: Backend,
) {
    let t = spawn_app(backend).await;
    let o = t.onboard(5).await;
    let tenant = TenantId::from_trusted(o.tenant_id.clone());
    let mut down = t.app.deps.clone();
    down.queue = Arc::new(Kept::refusing());
    let recipients = vec!["+60123459921".to_owned(), "+60123459922".to_owned()];
    let res =
        kirim::service::broadcasts::create(&down, &tenant, broadcast_template(), recipients, None)
            .await;
    assert!(res.is_err(), "the broadcast is refused");
    assert_eq!(t.credits(&o.key).await, 5, "nothing was charged");
    let (sum, _) = ledger_of(&t, &tenant).await;
    assert_eq!(sum, 5, "credits equal the ledger");
    assert_eq!(
        t.app.deps.ledger.entries(&tenant).await.unwrap().len(),
        1,
        "only the opening top-up: no debit, no refund"
    );
}

async fn a_fan_out_job_whose_broadcast_is_not_recorded_waits_then_is_dropped(backend: Backend) {
    let t = spawn_app(backend).await;
    let o = t.onboard(5).await;
    let tenant = TenantId::from_trusted(o.tenant_id.clone());
    let kept = Arc::new(Kept::default());
    let mut queued = t.app.deps.clone();
    queued.queue = kept.clone();
    let recipients = vec!["+60123459923".to_owned()];
    let accepted = kirim::service::broadcasts::create(
        &queued,
        &tenant,
        broadcast_template(),
        recipients,
        None,
    )
    .await
    .expect("the broadcast is accepted");
    let job: serde_json::Value = serde_json::from_str(&kept.only()).expect("the fan-out job");
    assert_eq!(job["broadcast_id"], accepted.id.as_str());
    assert_eq!(t.credits(&o.key).await, 4, "charged");
    // The same job for a broadcast its request never recorded (it died after queueing).
    let orphan = |id: String| {
        let mut j = job.clone();
        j["broadcast_id"] = json!(id);
        j.to_string()
    };
    let young = orphan(ulid::Ulid::new().to_string());
    assert!(matches!(
        dispatch::handle(&t.app.deps, &young).await,
        Outcome::RetryAfter(_)
    ));
    let old_ms = (Utc::now() - chrono::Duration::minutes(5)).timestamp_millis() as u64;
    let old = orphan(ulid::Ulid::from_parts(old_ms, 7).to_string());
    assert_eq!(dispatch::handle(&t.app.deps, &old).await, Outcome::Done);
    assert_eq!(
        t.credits(&o.key).await,
        4,
        "nothing more was charged or refunded"
    );
}

/// Once Meta accepted, the dispatcher writes the wamid's index and the `sent` move
/// together. If the index write fails while the move lands, a retried job would find its
/// claim refused and never index the wamid, so the dispatcher tries the index once more
/// at once: a status Meta sends without callback data still finds the message.
async fn a_wamid_index_write_that_fails_beside_the_sent_move_is_tried_again_at_once(
    backend: Backend,
) {
    let t = spawn_app(backend).await;
    let o = t.onboard(5).await;
    let tenant = TenantId::from_trusted(o.tenant_id.clone());
    let (m, job) = accepted_with_job(&t, &tenant, "+60123459912").await;
    let flaky = Flaky::over(&t.app.deps);
    flaky.fail_index.store(1, Ordering::SeqCst);
    let mut blinking = t.app.deps.clone();
    blinking.messages = flaky.clone();
    assert_eq!(dispatch::handle(&blinking, &job).await, Outcome::Done);
    assert_eq!(
        flaky.fail_index.load(Ordering::SeqCst),
        0,
        "the first index write failed"
    );
    let sent = t
        .app
        .deps
        .messages
        .get_message(&tenant, &m.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(sent.status, MessageStatus::Sent);
    let wamid = sent.wamid.expect("the wamid is on the message");
    assert_eq!(
        t.app.deps.messages.message_by_wamid(&wamid).await.unwrap(),
        Some((tenant.clone(), m.id.clone())),
        "the wamid is indexed"
    );
    assert_eq!(t.sandbox_requests_to("60123459912").len(), 1, "sent once");
}

/// Both index writes beside the `sent` move fail: the job is retried, and its retry (whose
/// claim is refused: the message is `sent`) writes the index, or statuses Meta sends
/// without callback data would never find the message.
async fn a_wamid_index_that_failed_twice_is_written_by_the_jobs_retry(backend: Backend) {
    let t = spawn_app(backend).await;
    let o = t.onboard(5).await;
    let tenant = TenantId::from_trusted(o.tenant_id.clone());
    let (m, job) = accepted_with_job(&t, &tenant, "+60123459913").await;
    let flaky = Flaky::over(&t.app.deps);
    flaky.fail_index.store(2, Ordering::SeqCst);
    let mut blinking = t.app.deps.clone();
    blinking.messages = flaky.clone();
    let first = dispatch::handle(&blinking, &job).await;
    assert!(matches!(first, Outcome::Backoff(_)), "retried: {first:?}");
    assert_eq!(flaky.fail_index.load(Ordering::SeqCst), 0);
    let sent = t
        .app
        .deps
        .messages
        .get_message(&tenant, &m.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(sent.status, MessageStatus::Sent);
    let wamid = sent.wamid.expect("the wamid is on the message");
    assert_eq!(
        t.app.deps.messages.message_by_wamid(&wamid).await.unwrap(),
        None
    );
    assert_eq!(dispatch::handle(&blinking, &job).await, Outcome::Done);
    assert_eq!(
        t.app.deps.messages.message_by_wamid(&wamid).await.unwrap(),
        Some((tenant.clone(), m.id.clone())),
        "the retry indexed the wamid"
    );
    assert_eq!(t.sandbox_requests_to("60123459913").len(), 1, "sent once");
}

/// Both index writes beside the `sent` move fail, and the tenant is suspended before the
/// job comes back: the retry fails nothing (the message is `sent`), and still writes the
/// index before it ends, as every retry that finds its message sent does, whichever check
/// it meets first.
async fn a_wamid_index_the_retry_owes_is_written_though_the_tenant_was_suspended_meanwhile(
    backend: Backend,
) {
    let t = spawn_app(backend).await;
    let o = t.onboard(5).await;
    let tenant = TenantId::from_trusted(o.tenant_id.clone());
    let (m, job) = accepted_with_job(&t, &tenant, "+60123459914").await;
    let flaky = Flaky::over(&t.app.deps);
    flaky.fail_index.store(2, Ordering::SeqCst);
    let mut blinking = t.app.deps.clone();
    blinking.messages = flaky.clone();
    let first = dispatch::handle(&blinking, &job).await;
    assert!(matches!(first, Outcome::Backoff(_)), "retried: {first:?}");
    kirim::service::accounts::set_status(
        &t.app.deps,
        &tenant,
        kirim::ports::TenantStatus::Suspended,
        Some("meta error 190".into()),
    )
    .await
    .unwrap();
    assert_eq!(dispatch::handle(&blinking, &job).await, Outcome::Done);
    let sent = t
        .app
        .deps
        .messages
        .get_message(&tenant, &m.id)
        .await
        .unwrap()
        .unwrap();
    // (The sandbox's own statuses may have moved it on since.)
    assert!(
        matches!(
            sent.status,
            MessageStatus::Sent | MessageStatus::Delivered | MessageStatus::Read
        ),
        "not failed: {:?}",
        sent.status
    );
    let wamid = sent.wamid.expect("the wamid is on the message");
    assert_eq!(
        t.app.deps.messages.message_by_wamid(&wamid).await.unwrap(),
        Some((tenant.clone(), m.id.clone())),
        "the retry indexed the wamid"
    );
    assert_eq!(t.credits(&o.key).await, 4, "charged once, nothing refunded");
}

/// Meta refused for a moment (131000) and the release of the claim for the retry blinked:
/// it is tried again at once, or the message would stay `sending` with nothing sent until
/// its deadline failed it, charged.
async fn a_release_for_a_retry_that_fails_once_is_tried_again_not_left_sending(backend: Backend) {
    let t = spawn_app(backend).await;
    let o = t.onboard(5).await;
    let tenant = TenantId::from_trusted(o.tenant_id.clone());
    let (m, job) = accepted_with_job(&t, &tenant, "+60123450004").await;
    let flaky = Flaky::over(&t.app.deps);
    flaky.fail_release_once.store(true, Ordering::SeqCst);
    let mut blinking = t.app.deps.clone();
    blinking.messages = flaky.clone();
    let outcome = dispatch::handle_in_batch(&blinking, &job).await;
    assert!(
        matches!(outcome, Outcome::Again(..)),
        "the job retried, as a fresh queue message: {outcome:?}"
    );
    assert!(
        !flaky.fail_release_once.load(Ordering::SeqCst),
        "the first release failed"
    );
    let back = t
        .app
        .deps
        .messages
        .get_message(&tenant, &m.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        back.status,
        MessageStatus::Accepted,
        "released for its retry, not left `sending`"
    );
    assert_eq!(back.attempts, 1);
}

/// Meta refused for a moment (130429) and storage refused the claim's release on every try:
/// the retry goes on the queue carrying the claim and gives it back first, then sends.
/// Retried as it was, the job found its claim refused and waited for the sending deadline,
/// which ended the message `outcome_unknown`, charged, though Meta had taken nothing.
async fn a_retry_whose_claim_could_not_be_given_back_gives_it_back_itself_and_sends(
    backend: Backend,
) {
    let t = spawn_app(backend).await;
    let o = t.onboard(5).await;
    let tenant = TenantId::from_trusted(o.tenant_id.clone());
    let (m, job) = accepted_with_job(&t, &tenant, "+60123450003").await;
    let flaky = Flaky::over(&t.app.deps);
    flaky.fail_release.store(true, Ordering::SeqCst);
    let mut deps = t.app.deps.clone();
    deps.messages = flaky.clone();
    let Outcome::Again(retry, _) = dispatch::handle_in_batch(&deps, &job).await else {
        panic!("the retry goes on the queue");
    };
    let stuck = deps
        .messages
        .get_message(&tenant, &m.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        stuck.status,
        MessageStatus::Sending,
        "nothing could be written"
    );
    flaky.fail_release.store(false, Ordering::SeqCst);
    let mut next = retry;
    for _ in 0..5 {
        match dispatch::handle_in_batch(&deps, &next).await {
            Outcome::Again(body, _) => next = body,
            Outcome::Done => break,
            other => panic!("{other:?}"),
        }
    }
    let end = deps
        .messages
        .get_message(&tenant, &m.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(end.status, MessageStatus::Sent, "{:?}", end.error);
    assert_eq!(
        t.sandbox_requests_to("60123450003").len(),
        3,
        "refused twice, then taken once"
    );
    let (sum, refunds) = ledger_of(&t, &tenant).await;
    assert_eq!(
        (sum, refunds.len()),
        (4, 0),
        "charged once, nothing refunded"
    );
}

/// A claim whose write landed but whose answer was lost (the SDK's retry of it is then
/// refused by that very write) is known for this job's own by its token: the message is
/// sent, once, not left `sending` for its deadline to fail it, charged and never sent.
async fn a_claim_whose_answer_was_lost_is_known_for_its_own_and_sent_once(backend: Backend) {
    let t = spawn_app(backend).await;
    let o = t.onboard(5).await;
    let tenant = TenantId::from_trusted(o.tenant_id.clone());
    let (m, job) = accepted_with_job(&t, &tenant, "+60123459932").await;
    let flaky = Flaky::over(&t.app.deps);
    flaky.lose_claim_answer_once.store(true, Ordering::SeqCst);
    let mut lossy = t.app.deps.clone();
    lossy.messages = flaky.clone();
    assert_eq!(dispatch::handle(&lossy, &job).await, Outcome::Done);
    assert!(!flaky.lose_claim_answer_once.load(Ordering::SeqCst));
    let sent = t
        .app
        .deps
        .messages
        .get_message(&tenant, &m.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(sent.status, MessageStatus::Sent);
    assert_eq!(sent.attempts, 1);
    assert_eq!(t.sandbox_requests_to("60123459932").len(), 1, "sent once");
    // A duplicate of the job, with a claim of its own, is still turned away.
    assert_eq!(dispatch::handle(&t.app.deps, &job).await, Outcome::Done);
    assert_eq!(t.sandbox_requests_to("60123459932").len(), 1, "not twice");
}

/// The `sent` move landed but its answer was lost (the store's retry of it refused by that
/// very write): the dispatcher reads the message back and queues its `sent` callback, which
/// Meta's own `sent` webhook (a repeat of the stored status) would not, leaving the tenant a
/// gap in its callbacks.
async fn a_sent_move_whose_answer_was_lost_still_has_its_sent_callback(backend: Backend) {
    let t = spawn_app(backend).await;
    let o = t.onboard(5).await;
    let (url, receiver) = crate::callbacks::receiver(0).await;
    with_callbacks(&t, &o, &url).await;
    let tenant = TenantId::from_trusted(o.tenant_id.clone());
    let (m, job) = accepted_with_job(&t, &tenant, "+60123459942").await;
    let flaky = Flaky::over(&t.app.deps);
    flaky.lose_sent_answer_once.store(true, Ordering::SeqCst);
    let mut lossy = t.app.deps.clone();
    lossy.messages = flaky.clone();
    assert_eq!(dispatch::handle(&lossy, &job).await, Outcome::Done);
    assert!(!flaky.lose_sent_answer_once.load(Ordering::SeqCst));
    let got = receiver.wait_for(&["sent", "read"]).await;
    let statuses: Vec<String> = got
        .iter()
        .filter(|g| g.body.contains(m.id.as_str()))
        .map(crate::callbacks::status_of)
        .collect();
    assert!(statuses.iter().any(|s| s == "sent"), "{statuses:?}");
    assert_eq!(t.sandbox_requests_to("60123459942").len(), 1, "sent once");
    // Counted sent once: by this move, read back as its own.
    assert_eq!(sent_counted(&t, &tenant).await, 1);
}

/// The tenant's quality `sent` count over today and yesterday (the rates' denominator).
async fn sent_counted(t: &TestApp, tenant: &TenantId) -> u64 {
    let today = chrono::Utc::now().date_naive();
    let counts = t
        .app
        .deps
        .quality
        .totals(tenant, today - chrono::Duration::days(1), today)
        .await
        .unwrap();
    counts.sent
}

/// Meta's status for a message overtakes the dispatcher's own `sent` move (Meta answered,
/// its webhook came first): the status's move out of `sending` counts the message as sent
/// for the quality rates, the dispatcher's refused move does not — once, not twice.
async fn a_status_that_overtakes_the_dispatchers_sent_counts_the_message_sent_once(
    backend: Backend,
) {
    let t = spawn_app(backend).await;
    // Only this test's status moves the message.
    t.app
        .sandbox
        .set_webhook_url("http://127.0.0.1:9/nowhere".into());
    let o = t.onboard(5).await;
    let tenant = TenantId::from_trusted(o.tenant_id.clone());
    let (m, job) = accepted_with_job(&t, &tenant, "+60123459944").await;
    let flaky = Flaky::over(&t.app.deps);
    *flaky.status_first.lock().unwrap() = Some((t.app.deps.clone(), tenant.clone()));
    let mut racing = t.app.deps.clone();
    racing.messages = flaky.clone();
    assert_eq!(dispatch::handle(&racing, &job).await, Outcome::Done);
    assert!(
        flaky.status_first.lock().unwrap().is_none(),
        "the status came first"
    );
    let stored = t.app.deps.messages.get_message(&tenant, &m.id).await;
    let stored = stored.unwrap().expect("the message");
    assert_eq!(stored.status, MessageStatus::Delivered);
    assert!(stored.wamid.is_some(), "the wamid goes on the message");
    assert_eq!(sent_counted(&t, &tenant).await, 1);
    assert_eq!(t.sandbox_requests_to("60123459944").len(), 1, "sent once");
}

/// The `sent` move lands and every try of it answers an error (a timeout after its commit):
/// read back, the message holds this very move, so its callback is queued and the job goes
/// on as sent (a retried job would find its claim refused and queue none, and Meta's own
/// `sent` webhook, a repeat, moves nothing).
async fn a_sent_move_that_landed_but_answered_errors_still_has_its_sent_callback(backend: Backend) {
    let t = spawn_app(backend).await;
    let o = t.onboard(5).await;
    let (url, receiver) = crate::callbacks::receiver(0).await;
    with_callbacks(&t, &o, &url).await;
    let tenant = TenantId::from_trusted(o.tenant_id.clone());
    let (m, job) = accepted_with_job(&t, &tenant, "+60123459943").await;
    let flaky = Flaky::over(&t.app.deps);
    flaky
        .lose_sent_every_answer_once
        .store(true, Ordering::SeqCst);
    let mut lossy = t.app.deps.clone();
    lossy.messages = flaky.clone();
    assert_eq!(dispatch::handle(&lossy, &job).await, Outcome::Done);
    assert!(!flaky.lose_sent_every_answer_once.load(Ordering::SeqCst));
    let got = receiver.wait_for(&["sent", "read"]).await;
    let statuses: Vec<String> = got
        .iter()
        .filter(|g| g.body.contains(m.id.as_str()))
        .map(crate::callbacks::status_of)
        .collect();
    assert!(statuses.iter().any(|s| s == "sent"), "{statuses:?}");
    assert_eq!(t.sandbox_requests_to("60123459943").len(), 1, "sent once");
    // Counted sent once: by this move, read back as its own.
    assert_eq!(sent_counted(&t, &tenant).await, 1);
}

/// A priced status's move (one transaction with its usage) that lands and then answers an
/// error after every try.
struct PricedAnswerLost(Arc<dyn kirim::ports::UsageStore>);

#[async_trait]
impl kirim::ports::UsageStore for PricedAnswerLost {
    async fn record_pricing(
        &self,
        priced: &kirim::ports::PricedMessage<'_>,
    ) -> Result<bool, StoreError> {
        self.0.record_pricing(priced).await
    }
    async fn transition_priced(
        &self,
        priced: &kirim::ports::PricedMessage<'_>,
        from: &[MessageStatus],
        to: MessageStatus,
        change: &StatusChange,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        assert!(
            self.0
                .transition_priced(priced, from, to, change, at)
                .await?
        );
        Err(StoreError::Unavailable("every try timed out".into()))
    }
    async fn usage(
        &self,
        tenant: &TenantId,
        from: chrono::NaiveDate,
        to: chrono::NaiveDate,
    ) -> Result<Vec<kirim::ports::UsageRow>, StoreError> {
        self.0.usage(tenant, from, to).await
    }
}

/// A webhook's move (Meta's `read`, a plain conditional update; the first `delivered`, the
/// priced transaction) that landed and then answered an error after every try: the message,
/// read back, holds this very move, so its callback is queued and the webhook answered 200
/// (Meta's redelivery would find the message moved and queue none).
async fn a_webhook_move_whose_answer_was_lost_still_has_its_callback_priced_or_not(
    backend: Backend,
) {
    use kirim::domain::meta::{MetaStatus, StatusReport, Wamid};
    use kirim::service::status;
    // Meta's status for the message, two seconds after now.
    let report = |id: &kirim::domain::MessageId,
                  wamid: &str,
                  status: &str,
                  pricing: Option<kirim::domain::Pricing>| StatusReport {
        phone_number_id: None,
        wamid: Wamid::parse(wamid).expect("a wamid"),
        status: MetaStatus::parse(status).expect("a status"),
        timestamp: Some(chrono::Utc::now().timestamp() + 2),
        // The old form (the message id alone), as a send from before the tenant was added.
        callback: Some(kirim::domain::meta::Callback::new(id.clone(), None)),
        recipient: None,
        recipient_user_id: None,
        errors: Vec::new(),
        pricing,
    };
    let t = spawn_app(backend).await;
    // The sandbox's own statuses go nowhere: only this test's reports move the messages
    // (the sandbox's `delivered` with pricing raced them, and won on a busy machine).
    t.app
        .sandbox
        .set_webhook_url("http://127.0.0.1:9/nowhere".into());
    let o = t.onboard(5).await;
    with_callbacks(&t, &o, "https://hooks.example.com/kirim").await;
    let tenant = TenantId::from_trusted(o.tenant_id.clone());
    // A message accepted and sent (as the app's dispatcher does), and its wamid.
    let sent = |to: &'static str| {
        let (t, tenant) = (&t, &tenant);
        async move {
            let (m, job) = accepted_with_job(t, tenant, to).await;
            assert_eq!(dispatch::handle(&t.app.deps, &job).await, Outcome::Done);
            let stored = t.app.deps.messages.get_message(tenant, &m.id).await;
            let wamid = stored.unwrap().and_then(|s| s.wamid).expect("sent");
            (m, wamid)
        }
    };
    let (m, wamid) = sent("+60123459961").await;
    let flaky = Flaky::over(&t.app.deps);
    flaky.lose_read_answer_once.store(true, Ordering::SeqCst);
    let callbacks = Arc::new(Kept::default());
    let mut deps = t.app.deps.clone();
    deps.messages = flaky.clone();
    deps.callback_queue = callbacks.clone();
    let read = report(&m.id, &wamid, "read", None);
    status::apply(&deps, Some(&tenant), &read)
        .await
        .expect("answered 200");
    assert!(!flaky.lose_read_answer_once.load(Ordering::SeqCst));
    let body = callbacks.only();
    assert!(
        body.contains(m.id.as_str()) && body.contains(r#""status":"read""#),
        "{body}"
    );

    // Meta's first `delivered` carries the pricing: the move, the pricing and the usage
    // row are one transaction; landed, its every try answering an error, the same.
    let (m, wamid) = sent("+60123459969").await;
    let callbacks = Arc::new(Kept::default());
    let mut deps = t.app.deps.clone();
    deps.usage = Arc::new(PricedAnswerLost(t.app.deps.usage.clone()));
    deps.callback_queue = callbacks.clone();
    let delivered = report(
        &m.id,
        &wamid,
        "delivered",
        kirim::domain::Pricing::parse("PMP", "utility", "regular"),
    );
    status::apply(&deps, Some(&tenant), &delivered)
        .await
        .expect("answered 200");
    let body = callbacks.only();
    assert!(
        body.contains(m.id.as_str()) && body.contains(r#""status":"delivered""#),
        "{body}"
    );

    // A `read` carrying the message's first pricing, found by its wamid (no echoed id):
    // the plain move, landed with its answer lost; read back, its pricing is counted too
    // (the webhook answers 200, so Meta never delivers it again).
    let (m, wamid) = sent("+60123459970").await;
    let flaky = Flaky::over(&t.app.deps);
    flaky.lose_read_answer_once.store(true, Ordering::SeqCst);
    let callbacks = Arc::new(Kept::default());
    let mut deps = t.app.deps.clone();
    deps.messages = flaky.clone();
    deps.callback_queue = callbacks.clone();
    let read = StatusReport {
        callback: None,
        ..report(
            &m.id,
            &wamid,
            "read",
            kirim::domain::Pricing::parse("PMP", "utility", "regular"),
        )
    };
    status::apply(&deps, Some(&tenant), &read)
        .await
        .expect("answered 200");
    assert!(!flaky.lose_read_answer_once.load(Ordering::SeqCst));
    assert!(callbacks.only().contains(r#""status":"read""#));
    let priced = t
        .app
        .deps
        .messages
        .get_message(&tenant, &m.id)
        .await
        .unwrap()
        .unwrap();
    assert!(priced.pricing.is_some(), "the pricing counted: {priced:?}");
}

/// The number's send slots booked about two seconds ahead, as by other sends: a message
/// dispatched now is turned away for later.
async fn book_two_seconds_ahead(deps: &Deps, phone_number_id: &str) {
    let pace = kirim::service::throttle::pace(deps.settings.meta_throughput);
    deps.throughput
        .reserve_slots(
            phone_number_id,
            pace,
            deps.clock.now(),
            kirim::service::throttle::HORIZON,
            pace * 2,
        )
        .await
        .expect("the number booked");
}

/// Meta's API behind a proxy that answers an HTTP status without Meta's error body, and
/// counts the sends.
struct BareStatus(u16, std::sync::atomic::AtomicUsize);

#[async_trait]
impl kirim::ports::MetaClient for BareStatus {
    async fn send_message(
        &self,
        _phone_number_id: &str,
        _token: &kirim::secret::Secret,
        _body: &serde_json::Value,
    ) -> Result<kirim::ports::MetaAccepted, kirim::ports::MetaSendError> {
        self.1.fetch_add(1, Ordering::SeqCst);
        Err(kirim::ports::MetaSendError::Protocol(self.0))
    }
    async fn list_templates(
        &self,
        _waba_id: &str,
        _token: &kirim::secret::Secret,
        _after: Option<&str>,
    ) -> Result<kirim::domain::template::MetaTemplatePage, kirim::ports::MetaSendError> {
        Ok(Default::default())
    }
}

/// A recheck job carries no content: whatever the message's state it never claims or
/// sends it (an `accepted` message is another job's to send); it only settles `sending`.
async fn a_recheck_job_never_claims_or_sends_a_message(backend: Backend) {
    let t = spawn_app(backend).await;
    let o = t.onboard(5).await;
    let tenant = TenantId::from_trusted(o.tenant_id.clone());
    let (m, job) = accepted_with_job(&t, &tenant, "+60123459935").await;
    let Some(kirim::service::jobs::QueueJob::Send(mut recheck)) =
        kirim::service::jobs::QueueJob::parse(&job)
    else {
        panic!("a send job");
    };
    recheck.recheck = true;
    recheck.content = kirim::domain::Content::Text {
        body: String::new(),
    };
    let body = kirim::service::jobs::QueueJob::Send(recheck)
        .to_body()
        .expect("a body");
    let meta = Arc::new(BareStatus(502, Default::default()));
    let mut deps = t.app.deps.clone();
    deps.meta = meta.clone();
    let outcome = dispatch::handle_in_batch(&deps, &body).await;
    assert!(matches!(outcome, Outcome::Done), "{outcome:?}");
    let left = deps
        .messages
        .get_message(&tenant, &m.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(left.status, MessageStatus::Accepted);
    assert_eq!(meta.1.load(Ordering::SeqCst), 0, "nothing sent");
}

/// A 502 or 504 (a gateway's: Meta may have taken the message behind it) is ambiguous, as
/// a timeout is: the message is left `sending` for the webhook or its deadline, never sent
/// again. A bare 503 (the service took nothing) is tried again.
async fn a_gateways_5xx_leaves_the_message_sending_and_is_never_resent_but_a_503_is_retried(
    backend: Backend,
) {
    let t = spawn_app(backend).await;
    let o = t.onboard(5).await;
    let tenant = TenantId::from_trusted(o.tenant_id.clone());
    for (status, to) in [(502, "+60123459931"), (504, "+60123459933")] {
        let (m, job) = accepted_with_job(&t, &tenant, to).await;
        let meta = Arc::new(BareStatus(status, Default::default()));
        let mut deps = t.app.deps.clone();
        deps.meta = meta.clone();
        let first = dispatch::handle_in_batch(&deps, &job).await;
        let Outcome::Again(recheck, _) = first else {
            panic!("{status}: a recheck job of its own, not {first:?}");
        };
        let left = deps
            .messages
            .get_message(&tenant, &m.id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(left.status, MessageStatus::Sending, "{status}");
        // Its recheck, and the job again (a duplicate delivery): not sent a second time;
        // the duplicate, which carries the content, leaves the queue for a recheck too.
        assert!(matches!(
            dispatch::handle_in_batch(&deps, &recheck).await,
            Outcome::RetryAfter(_)
        ));
        let again = dispatch::handle_in_batch(&deps, &job).await;
        let Outcome::Again(body, _) = again else {
            panic!("{status}: the duplicate becomes a recheck, not {again:?}");
        };
        assert!(body.contains(r#""recheck":true"#), "{body}");
        assert_eq!(meta.1.load(Ordering::SeqCst), 1, "{status}: sent once");
    }
    let (m, job) = accepted_with_job(&t, &tenant, "+60123459934").await;
    let meta = Arc::new(BareStatus(503, Default::default()));
    let mut deps = t.app.deps.clone();
    deps.meta = meta.clone();
    dispatch::handle_in_batch(&deps, &job).await;
    let back = deps
        .messages
        .get_message(&tenant, &m.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (back.status, back.error.map(|e| e.code.to_string())),
        (MessageStatus::Accepted, Some("meta_unavailable".to_owned())),
        "put back for another try"
    );
}

/// A 4xx without Meta's error body (a proxy's, or Meta's rate limit unreadable) was
/// refused, not taken: it is tried again, and after the tries it fails refunded, instead
/// of waiting out the sending deadline unrefunded as an ambiguous answer would.
async fn a_4xx_without_metas_body_is_retried_then_failed_and_refunded_never_left_sending(
    backend: Backend,
) {
    let t = spawn_app(backend).await;
    let o = t.onboard(5).await;
    let tenant = TenantId::from_trusted(o.tenant_id.clone());
    let attempts = t.app.deps.settings.dispatch_max_attempts;
    for (status, to) in [(400, "+60123459935"), (429, "+60123459936")] {
        let (m, mut job) = accepted_with_job(&t, &tenant, to).await;
        let meta = Arc::new(BareStatus(status, Default::default()));
        let mut deps = t.app.deps.clone();
        deps.meta = meta.clone();
        for _ in 0..20 {
            match dispatch::handle_in_batch(&deps, &job).await {
                Outcome::Again(next, delay) => {
                    tokio::time::sleep(delay).await;
                    job = next;
                }
                Outcome::RetryAfter(delay) | Outcome::Backoff(delay) => {
                    tokio::time::sleep(delay).await
                }
                Outcome::Done => break,
                Outcome::Poison => panic!("{status}: poison"),
            }
        }
        let end = deps
            .messages
            .get_message(&tenant, &m.id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (end.status, end.error.map(|e| e.code.to_string())),
            (
                MessageStatus::Failed,
                Some("meta_refused_unreadable".to_owned())
            ),
            "{status}"
        );
        assert_eq!(
            meta.1.load(Ordering::SeqCst),
            attempts as usize,
            "{status}: every try"
        );
    }
    let (sum, refunds) = ledger_of(&t, &tenant).await;
    assert_eq!((sum, refunds.len()), (5, 2), "both refunded");
}

/// Meta's API answering every send with its error `code`, counting the sends.
struct Refusing(i64, std::sync::atomic::AtomicUsize);

#[async_trait]
impl kirim::ports::MetaClient for Refusing {
    async fn send_message(
        &self,
        _phone_number_id: &str,
        _token: &kirim::secret::Secret,
        _body: &serde_json::Value,
    ) -> Result<kirim::ports::MetaAccepted, kirim::ports::MetaSendError> {
        self.1.fetch_add(1, Ordering::SeqCst);
        Err(kirim::ports::MetaSendError::Api {
            http_status: 400,
            code: self.0,
            title: "refused for the test".into(),
            is_transient: None,
        })
    }
    async fn list_templates(
        &self,
        _waba_id: &str,
        _token: &kirim::secret::Secret,
        _after: Option<&str>,
    ) -> Result<kirim::domain::template::MetaTemplatePage, kirim::ports::MetaSendError> {
        Ok(Default::default())
    }
}

/// Meta's API answering every send with an error of its shape, counting the sends.
struct Answering {
    http_status: u16,
    code: i64,
    is_transient: Option<bool>,
    sends: std::sync::atomic::AtomicUsize,
}

#[async_trait]
impl kirim::ports::MetaClient for Answering {
    async fn send_message(
        &self,
        _phone_number_id: &str,
        _token: &kirim::secret::Secret,
        _body: &serde_json::Value,
    ) -> Result<kirim::ports::MetaAccepted, kirim::ports::MetaSendError> {
        self.sends.fetch_add(1, Ordering::SeqCst);
        Err(kirim::ports::MetaSendError::Api {
            http_status: self.http_status,
            code: self.code,
            title: "a code Kirim does not know".into(),
            is_transient: self.is_transient,
        })
    }
    async fn list_templates(
        &self,
        _waba_id: &str,
        _token: &kirim::secret::Secret,
        _after: Option<&str>,
    ) -> Result<kirim::domain::template::MetaTemplatePage, kirim::ports::MetaSendError> {
        Ok(Default::default())
    }
}

/// A code Kirim's table does not know is retried, or failed and refunded, as Meta's own
/// `is_transient` says, whatever the HTTP status; without it, by the status. Meta's field
/// was not read: a new code Meta said to retry, answered 4xx, failed the message at once,
/// and one it said not to retry, answered 5xx, was sent again and again.
async fn an_unknown_meta_code_is_retried_as_metas_is_transient_says(backend: Backend) {
    let t = spawn_app(backend).await;
    let o = t.onboard(5).await;
    let tenant = TenantId::from_trusted(o.tenant_id.clone());
    for (i, (http_status, is_transient, retried)) in [
        (400, Some(true), true),
        (503, Some(false), false),
        (400, None, false),
        (500, None, true),
    ]
    .into_iter()
    .enumerate()
    {
        let (m, job) = accepted_with_job(&t, &tenant, &format!("+6012345994{i}")).await;
        let meta = Arc::new(Answering {
            http_status,
            code: 139_990 + i as i64,
            is_transient,
            sends: Default::default(),
        });
        let mut deps = t.app.deps.clone();
        deps.meta = meta.clone();
        let outcome = dispatch::handle_in_batch(&deps, &job).await;
        let after = deps
            .messages
            .get_message(&tenant, &m.id)
            .await
            .unwrap()
            .unwrap();
        let case = format!("http {http_status}, is_transient {is_transient:?}");
        assert_eq!(meta.sends.load(Ordering::SeqCst), 1, "{case}");
        if retried {
            assert_eq!(after.status, MessageStatus::Accepted, "{case}: {outcome:?}");
        } else {
            assert_eq!(after.status, MessageStatus::Failed, "{case}");
            assert_eq!(
                after.error.map(|e| e.code.to_string()),
                Some((139_990 + i as i64).to_string()),
                "{case}"
            );
        }
    }
    let (_, refunds) = ledger_of(&t, &tenant).await;
    assert_eq!(refunds.len(), 2, "the two failed ones refunded");
}

/// Meta's final refusal (a permanent code, or a transient one on the last allowed attempt)
/// whose `failed` write fails: the refusal is queued in a fresh job (without the content),
/// the claim given back, and that job fails the message with Meta's code, refunded, without
/// a request more — also when the tenant was suspended meanwhile. Retried as it was, the job
/// claimed the message afresh and sent it again: past `KIRIM_DISPATCH_MAX_ATTEMPTS`, and
/// failed `tenant_suspended` instead of with Meta's reason. A refusal the queue will not
/// take falls back to the retry (one more request, refused again, then failed as usual).
async fn a_final_refusal_whose_failure_cannot_be_written_is_never_sent_again_and_keeps_metas_code(
    backend: Backend,
) {
    let t = spawn_app(backend).await;
    let o = t.onboard(5).await;
    let tenant = TenantId::from_trusted(o.tenant_id.clone());
    let max = t.app.deps.settings.dispatch_max_attempts;
    let suspend = |on: bool| {
        let (t, id) = (&t, o.tenant_id.clone());
        async move {
            let what = if on { "suspend" } else { "resume" };
            let res = t
                .http
                .post(t.url(&format!("/v1/platform/tenants/{id}/{what}")))
                .bearer_auth(OPERATOR_TOKEN)
                .json(&json!({"reason": "drill"}))
                .send()
                .await
                .expect("the operator's call");
            assert_eq!(res.status(), 200, "{what}");
        }
    };
    for (code, to) in [(131026, "+60123459937"), (131000, "+60123459938")] {
        let (m, mut job) = accepted_with_job(&t, &tenant, to).await;
        let first_job = job.clone();
        let meta = Arc::new(Refusing(code, Default::default()));
        let flaky = Flaky::over(&t.app.deps);
        let refusals = Arc::new(Kept::default());
        let mut deps = t.app.deps.clone();
        deps.meta = meta.clone();
        deps.messages = flaky.clone();
        deps.queue = refusals.clone();
        let mut given_back = false;
        for _ in 0..20 {
            let before = deps
                .messages
                .get_message(&tenant, &m.id)
                .await
                .unwrap()
                .unwrap();
            // Storage fails where the last attempt's failure is written, once.
            let last = code == 131026 || before.attempts + 1 == max;
            if last && !given_back {
                flaky.fail_refund.store(true, Ordering::SeqCst);
            }
            let outcome = dispatch::handle_in_batch(&deps, &job).await;
            if flaky.fail_refund.swap(false, Ordering::SeqCst) {
                given_back = true;
                assert_eq!(outcome, Outcome::Done, "{code}");
                let back = deps
                    .messages
                    .get_message(&tenant, &m.id)
                    .await
                    .unwrap()
                    .unwrap();
                assert_eq!(back.status, MessageStatus::Accepted, "{code}: given back");
                assert_eq!(t.credits(&o.key).await, 4, "{code}: still charged");
                job = refusals.only();
                assert!(job.contains(r#""refused""#), "{code}: {job}");
                assert!(!job.contains("A-1"), "{code}: no content: {job}");
                // The tenant is suspended before the refusal's job comes back.
                suspend(true).await;
                continue;
            }
            match outcome {
                Outcome::Again(next, delay) => {
                    tokio::time::sleep(delay).await;
                    job = next;
                }
                Outcome::RetryAfter(delay) | Outcome::Backoff(delay) => {
                    tokio::time::sleep(delay).await
                }
                Outcome::Done => break,
                Outcome::Poison => panic!("{code}: poison"),
            }
        }
        assert!(given_back, "{code}: the failure's write failed once");
        let end = deps
            .messages
            .get_message(&tenant, &m.id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (end.status, end.error.map(|e| e.code)),
            (MessageStatus::Failed, Some(ErrorCode::Meta(code))),
            "{code}: failed with Meta's reason"
        );
        let sends = if code == 131026 { 1 } else { max as usize };
        assert_eq!(
            meta.1.load(Ordering::SeqCst),
            sends,
            "{code}: no request more"
        );
        assert_eq!(t.credits(&o.key).await, 5, "{code}: refunded");
        // The job first received, delivered again, sends nothing and refunds nothing.
        assert_eq!(dispatch::handle(&deps, &first_job).await, Outcome::Done);
        assert_eq!(meta.1.load(Ordering::SeqCst), sends, "{code}: never again");
        assert_eq!(t.credits(&o.key).await, 5, "{code}: refunded once");
        suspend(false).await;
    }
    // The queue refusing the refusal's job: the claim is given back and the job retried, as
    // before (Meta refuses the one request more), never left sending.
    let (m, job) = accepted_with_job(&t, &tenant, "+60123459940").await;
    let meta = Arc::new(Refusing(131026, Default::default()));
    let flaky = Flaky::over(&t.app.deps);
    flaky.fail_refund.store(true, Ordering::SeqCst);
    let mut deps = t.app.deps.clone();
    deps.meta = meta.clone();
    deps.messages = flaky.clone();
    deps.queue = Arc::new(Kept::refusing());
    assert!(matches!(
        dispatch::handle_in_batch(&deps, &job).await,
        Outcome::Backoff(_)
    ));
    flaky.fail_refund.store(false, Ordering::SeqCst);
    assert_eq!(dispatch::handle_in_batch(&deps, &job).await, Outcome::Done);
    let end = deps
        .messages
        .get_message(&tenant, &m.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (end.status, end.error.map(|e| e.code)),
        (MessageStatus::Failed, Some(ErrorCode::Meta(131026)))
    );
    assert_eq!(
        meta.1.load(Ordering::SeqCst),
        2,
        "one request more, refused again"
    );
    // A release that landed with its answer lost (its retry refused by it): the refusal's
    // job, queued first, still fails the message with Meta's code.
    let (m, job) = accepted_with_job(&t, &tenant, "+60123459941").await;
    let flaky = Flaky::over(&t.app.deps);
    flaky.fail_refund.store(true, Ordering::SeqCst);
    flaky.lose_release_answer_once.store(true, Ordering::SeqCst);
    let refusals = Arc::new(Kept::default());
    let mut deps = t.app.deps.clone();
    deps.meta = Arc::new(Refusing(131026, Default::default()));
    deps.messages = flaky.clone();
    deps.queue = refusals.clone();
    assert_eq!(dispatch::handle_in_batch(&deps, &job).await, Outcome::Done);
    flaky.fail_refund.store(false, Ordering::SeqCst);
    assert_eq!(
        dispatch::handle_in_batch(&deps, &refusals.only()).await,
        Outcome::Done
    );
    let end = deps
        .messages
        .get_message(&tenant, &m.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (end.status, end.error.map(|e| e.code)),
        (MessageStatus::Failed, Some(ErrorCode::Meta(131026)))
    );
    // The release failing too (storage down for both writes): the message is left
    // `sending` under the claim, and the refusal's job, carrying the claim's time, gives it
    // back itself and fails it with Meta's code, refunded (the sending deadline would have
    // ended it `outcome_unknown`, charged), without a request more.
    let (m, job) = accepted_with_job(&t, &tenant, "+60123459942").await;
    let flaky = Flaky::over(&t.app.deps);
    flaky.fail_refund.store(true, Ordering::SeqCst);
    flaky.fail_release.store(true, Ordering::SeqCst);
    let refusals = Arc::new(Kept::default());
    let meta = Arc::new(Refusing(131026, Default::default()));
    let mut deps = t.app.deps.clone();
    deps.meta = meta.clone();
    deps.messages = flaky.clone();
    deps.queue = refusals.clone();
    assert_eq!(dispatch::handle_in_batch(&deps, &job).await, Outcome::Done);
    let stuck = deps
        .messages
        .get_message(&tenant, &m.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        stuck.status,
        MessageStatus::Sending,
        "nothing could be written"
    );
    flaky.fail_refund.store(false, Ordering::SeqCst);
    flaky.fail_release.store(false, Ordering::SeqCst);
    let refusal = refusals.only();
    assert_eq!(
        dispatch::handle_in_batch(&deps, &refusal).await,
        Outcome::Done
    );
    let end = deps
        .messages
        .get_message(&tenant, &m.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (end.status, end.error.map(|e| e.code)),
        (MessageStatus::Failed, Some(ErrorCode::Meta(131026)))
    );
    assert_eq!(meta.1.load(Ordering::SeqCst), 1, "no request more");
    let (sum, refunds) = ledger_of(&t, &tenant).await;
    assert_eq!((sum, refunds.len()), (5, 5), "refunded once");
    // Delivered again, the refusal's job refunds nothing more.
    assert_eq!(
        dispatch::handle_in_batch(&deps, &refusal).await,
        Outcome::Done
    );
    let (sum, refunds) = ledger_of(&t, &tenant).await;
    assert_eq!((sum, refunds.len()), (5, 5), "refunded once");
    // The refused claim given back meanwhile and the message claimed afresh (a duplicate
    // job's newer claim, whose send Meta may have taken): the refusal's job leaves that
    // claim alone, failing and refunding nothing.
    let (m, job) = accepted_with_job(&t, &tenant, "+60123459943").await;
    let refusals = Arc::new(Kept::default());
    deps.queue = refusals.clone();
    flaky.fail_refund.store(true, Ordering::SeqCst);
    flaky.fail_release.store(true, Ordering::SeqCst);
    assert_eq!(dispatch::handle_in_batch(&deps, &job).await, Outcome::Done);
    flaky.fail_refund.store(false, Ordering::SeqCst);
    flaky.fail_release.store(false, Ordering::SeqCst);
    let refusal = refusals.only();
    let claimed = deps
        .messages
        .get_message(&tenant, &m.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(claimed.status, MessageStatus::Sending);
    let back = MessageError {
        code: "failure_not_recorded".into(),
        title: "given back for the test".into(),
    };
    let later = claimed.updated_at + chrono::Duration::milliseconds(5);
    assert!(matches!(
        deps.messages
            .release_for_retry(&tenant, &m.id, claimed.updated_at, &back, later)
            .await
            .unwrap(),
        Transition::Applied(_)
    ));
    let again = later + chrono::Duration::milliseconds(5);
    assert!(matches!(
        deps.messages
            .transition(
                &tenant,
                &m.id,
                MessageStatus::Sending,
                &Default::default(),
                again
            )
            .await
            .unwrap(),
        Transition::Applied(_)
    ));
    dispatch::handle_in_batch(&deps, &refusal).await;
    let after = deps
        .messages
        .get_message(&tenant, &m.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (after.status, after.updated_at),
        (MessageStatus::Sending, again),
        "the newer claim stands"
    );
    let (_, refunds) = ledger_of(&t, &tenant).await;
    assert_eq!(refunds.len(), 5, "nothing refunded for it");
}

/// A number booked past the horizon (several campaigns on it) turns a message away
/// without a slot: it goes back on the queue as a fresh message, not the same one made
/// visible again, whose receives count toward the dead-letter queue's limit (a message
/// parked there still `accepted` would stay debited and unsent).
async fn a_message_turned_away_by_a_number_full_past_the_horizon_goes_back_as_a_fresh_queue_message(
    backend: Backend,
) {
    let t = spawn_app(backend).await;
    let o = t.onboard(5).await;
    let tenant = TenantId::from_trusted(o.tenant_id.clone());
    let (m, job) = accepted_with_job(&t, &tenant, "+60123459924").await;
    let deps = &t.app.deps;
    let pace = kirim::service::throttle::pace(deps.settings.meta_throughput);
    let horizon = kirim::service::throttle::HORIZON;
    deps.throughput
        .reserve_slots(
            &o.phone_number_id,
            pace,
            deps.clock.now(),
            horizon * 2,
            pace * (horizon.as_secs() as u32 + 10),
        )
        .await
        .expect("the number booked past the horizon")
        .expect("granted");
    for round in 0..12 {
        let outcome = dispatch::handle_in_batch(deps, &job).await;
        let Outcome::Again(body, delay) = outcome else {
            panic!("round {round}: a fresh queue message, not {outcome:?}")
        };
        assert_eq!(body, job, "the same job");
        assert!(delay <= Duration::from_secs(2), "{delay:?}");
    }
    let held = deps
        .messages
        .get_message(&tenant, &m.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (held.status, held.attempts),
        (MessageStatus::Accepted, 0),
        "twelve turns away, no attempt spent"
    );
}

async fn a_message_turned_away_by_a_busy_number_keeps_its_slot_and_comes_back_once_to_send_at_it(
    backend: Backend,
) {
    let t = spawn_app(backend).await;
    let o = t.onboard(5).await;
    let tenant = TenantId::from_trusted(o.tenant_id.clone());
    let (m, job) = accepted_with_job(&t, &tenant, "+60123459921").await;
    let deps = &t.app.deps;
    book_two_seconds_ahead(deps, &o.phone_number_id).await;

    let first = dispatch::handle(deps, &job).await;
    let Outcome::RetryAfter(away) = first else {
        panic!("turned away for later: {first:?}")
    };
    assert!(
        away <= Duration::from_secs(2) && away.subsec_nanos() == 0,
        "back in the whole seconds before its slot: {away:?}"
    );
    let held = deps
        .messages
        .get_message(&tenant, &m.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((held.status, held.attempts), (MessageStatus::Accepted, 0));
    let slot = held.carried_slot.expect("the slot kept on the message");
    assert_eq!(slot.attempt, 1, "for its next claim, the first attempt");
    let ahead = slot.at - deps.clock.now();
    assert!(
        ahead > chrono::Duration::seconds(1) && ahead <= chrono::Duration::seconds(3),
        "the slot after the booked ones: {ahead:?}"
    );

    // Back when the queue brings it: it sends at that slot, once.
    tokio::time::sleep(away).await;
    assert_eq!(dispatch::handle(deps, &job).await, Outcome::Done);
    assert!(deps.clock.now() >= slot.at, "not before its slot");
    let sent = deps
        .messages
        .get_message(&tenant, &m.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(sent.attempts, 1, "one attempt: the turn-away cost none");
    assert_ne!(sent.status, MessageStatus::Accepted);
    assert_ne!(sent.status, MessageStatus::Failed);
}

/// A message that comes back for its carried slot too late (its batch picked up late, the
/// dispatchers busy) and is turned away again carries the next slot as a fresh queue message,
/// not the same one made visible again: missing slot after slot must not spend one SQS
/// message's receives toward the dead-letter queue, where it would stay `accepted`, unsent.
async fn a_message_that_missed_its_carried_slot_carries_the_next_as_a_fresh_queue_message(
    backend: Backend,
) {
    let t = spawn_app(backend).await;
    let o = t.onboard(5).await;
    let tenant = TenantId::from_trusted(o.tenant_id.clone());
    let (m, job) = accepted_with_job(&t, &tenant, "+60123459931").await;
    let deps = &t.app.deps;
    book_two_seconds_ahead(deps, &o.phone_number_id).await;
    let first = dispatch::handle_in_batch(deps, &job).await;
    let Outcome::RetryAfter(away) = first else {
        panic!("turned away for later: {first:?}")
    };
    // Back a second or more after its slot (it was sent away one to two seconds early),
    // the number booked ahead again meanwhile.
    tokio::time::sleep(away + Duration::from_secs(3)).await;
    book_two_seconds_ahead(deps, &o.phone_number_id).await;
    let second = dispatch::handle_in_batch(deps, &job).await;
    let Outcome::Again(body, delay) = second else {
        panic!("the next slot carried as a fresh queue message, not {second:?}")
    };
    assert_eq!(body, job, "the same job");
    assert!(delay <= Duration::from_secs(3), "{delay:?}");
    let held = deps
        .messages
        .get_message(&tenant, &m.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((held.status, held.attempts), (MessageStatus::Accepted, 0));
    assert!(
        held.carried_slot.is_some(),
        "the new slot kept on the message"
    );
}

/// A tenant onboarded in `deps` with 2 credits on the number `phone_number_id`, whose
/// user +60123456789 has just written to it (so a session text may go).
async fn tenant_a_user_wrote_to(deps: &Deps, phone_number_id: &str) -> kirim::ports::Tenant {
    let req: kirim::service::accounts::NewTenant = serde_json::from_value(json!({
        "name": "Kedai", "waba_id": "1", "phone_number_id": phone_number_id,
        "meta_access_token": "EAAG", "credits": 2}))
    .unwrap();
    let (tenant, _) = kirim::service::accounts::create_tenant(deps, req)
        .await
        .unwrap();
    let wrote = kirim::domain::OptOutKey::parse("+60123456789").unwrap();
    kirim::service::contacts::user_wrote(deps, &tenant.id, &tenant.phone_number_id, &[wrote], None)
        .await
        .unwrap();
    tenant
}

/// A scheduled send whose answer was lost, retried with its key when its `send_at` is
/// less than a minute away: the first answer again (`scheduled`), not a 400 that would
/// have the client send it anew.
#[tokio::test]
async fn a_retried_scheduled_send_answers_as_first_even_once_its_send_at_is_near() {
    let clock = ManualClock::new();
    let deps = kirim::wiring::memory_deps(kirim_tests::test_settings(), clock.clone()).unwrap();
    let tenant = tenant_a_user_wrote_to(&deps, "126").await;
    let send_at = (kirim::ports::Clock::now(&*clock) + chrono::Duration::seconds(90)).to_rfc3339();
    let body = json!({"to": "+60123456789", "text": {"body": "hi"}, "send_at": send_at});
    let key = IdempotencyKey::parse("scheduled-1").expect("a key");
    let idem = Idempotent {
        fingerprint: key.fingerprint(&body),
        key,
    };
    let req = || serde_json::from_value::<SendRequest>(body.clone()).expect("a send request");
    let Ok(Accepted::New(first)) = send_once(&deps, &tenant.id, req(), Some(&idem)).await else {
        panic!("the first is accepted")
    };
    clock.advance(chrono::Duration::seconds(45));
    match send_once(&deps, &tenant.id, req(), Some(&idem)).await {
        Ok(Accepted::Replayed(id, status)) => {
            assert_eq!((id, status), (first.id.clone(), "scheduled"));
        }
        other => panic!("the first answer again, not {other:?}"),
    }
    let balance = deps.tenants.get_tenant(&tenant.id).await.unwrap().unwrap();
    assert_eq!(balance.credits, 1, "one debit");
}

/// A scheduled message is kept its retention from when it is to be sent, not from its
/// acceptance: with a retention shorter than its wait, it would be gone (its job then
/// dropped, charged and never sent) before its `send_at`.
#[tokio::test]
async fn a_scheduled_message_is_kept_its_retention_from_its_send_at() {
    let clock = ManualClock::new();
    let mut settings = kirim_tests::test_settings();
    settings.retention.messages = std::time::Duration::from_secs(7 * 24 * 3600);
    let deps = kirim::wiring::memory_deps(settings, clock.clone()).unwrap();
    let tenant = tenant_a_user_wrote_to(&deps, "127").await;
    let now = kirim::ports::Clock::now(&*clock);
    let send_at = now + chrono::Duration::days(30);
    deps.templates
        .put_template(&kirim_tests::approved_template(
            &tenant.waba_id,
            "promo",
            "en",
            now,
        ))
        .await
        .unwrap();
    let body = json!({"to": "+60123456789", "template": {"name": "promo", "language": "en"},
        "send_at": send_at.to_rfc3339()});
    let req: SendRequest = serde_json::from_value(body).expect("a send request");
    let m = match send_once(&deps, &tenant.id, req, None).await {
        Ok(Accepted::New(m)) => m,
        other => panic!("accepted, not {other:?}"),
    };
    let week = 7 * 24 * 3600;
    assert_eq!(m.expires_at, Some(send_at.timestamp() + week));
    // A scheduled broadcast too (its messages copy its expiry).
    let template: kirim::service::send::TemplateIn =
        serde_json::from_value(json!({"name": "promo", "language": "en"})).unwrap();
    let b = kirim::service::broadcasts::create_campaign(
        &deps,
        &tenant.id,
        template,
        vec!["+60123456780".to_owned()],
        kirim::service::broadcasts::CampaignIn {
            send_at: Some(send_at.to_rfc3339()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let stored = deps
        .broadcasts
        .get_broadcast(&tenant.id, &b.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.expires_at, Some(send_at.timestamp() + week));
    clock.advance(chrono::Duration::days(29));
    assert!(
        deps.messages
            .get_message(&tenant.id, &m.id)
            .await
            .unwrap()
            .is_some(),
        "still there the day before it is sent"
    );
}

/// Meta refusing for a moment on every try, on a number so busy that each attempt is first
/// turned away for a slot ahead: two receives an attempt. Every receive of one queue
/// message counts toward the redrive to the dead-letter queue (10), where a message still
/// `accepted` would stay debited and unsent; a retry goes back as a fresh queue message,
/// so the message ends `failed` and refunded after its attempts instead.
#[tokio::test]
async fn a_message_retried_on_a_busy_number_ends_failed_and_refunded_never_parked_by_the_redrive() {
    use kirim::service::send;
    let clock = ManualClock::new();
    let mut settings = kirim_tests::test_settings();
    settings.dispatch_max_attempts = 8;
    let deps = kirim::wiring::memory_deps(settings, clock.clone()).unwrap();
    // Meta is unreachable in these deps: every attempt is a transient failure.
    let tenant = tenant_a_user_wrote_to(&deps, "125").await;
    let msg: SendRequest =
        serde_json::from_value(json!({"to": "+60123456789", "text": {"body": "hi"}})).unwrap();
    let record = send::send(&deps, &tenant.id, msg).await.unwrap();
    // The queue as SQS keeps it: each queue message with the receives it has had.
    let mut queue: std::collections::VecDeque<(String, u32)> = deps
        .queue
        .receive(10, Duration::ZERO)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.body, 0))
        .collect();
    let mut deliveries = 0;
    while let Some((body, receives)) = queue.pop_front() {
        deliveries += 1;
        assert!(deliveries < 200, "the message never settled");
        let receives = receives + 1;
        assert!(
            receives < 10,
            "a queue message received {receives} times: redriven to the dead-letter queue"
        );
        book_two_seconds_ahead(&deps, &tenant.phone_number_id).await;
        let advance = |d: Duration| clock.advance(chrono::Duration::from_std(d).unwrap());
        match dispatch::handle_in_batch(&deps, &body).await {
            Outcome::Done => {}
            Outcome::RetryAfter(d) | Outcome::Backoff(d) => {
                advance(d);
                queue.push_back((body, receives));
            }
            Outcome::Again(next, d) => {
                advance(d);
                queue.push_back((next, 0));
            }
            Outcome::Poison => panic!("poison"),
        }
    }
    let m = deps
        .messages
        .get_message(&tenant.id, &record.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((m.status, m.attempts), (MessageStatus::Failed, 8));
    let balance = deps.tenants.get_tenant(&tenant.id).await.unwrap().unwrap();
    assert_eq!(balance.credits, 2, "refunded");
}

/// The sending deadline's failure that landed while every try answered an error still
/// queues its `failed` callback (read back, found as this very move left it).
async fn a_deadline_failure_whose_answer_was_lost_still_has_its_failed_callback(backend: Backend) {
    let t = spawn_app(backend).await;
    let o = t.onboard(5).await;
    let tenant = TenantId::from_trusted(o.tenant_id.clone());
    with_callbacks(&t, &o, "https://hooks.example.com/kirim").await;
    let (m, job) = accepted_with_job(&t, &tenant, "+60123459936").await;
    let mut deps = t.app.deps.clone();
    deps.meta = Arc::new(BareStatus(504, Default::default()));
    let Outcome::Again(recheck, _) = dispatch::handle_in_batch(&deps, &job).await else {
        panic!("a recheck job");
    };
    // At the deadline (here: at once), with the write's answer lost.
    let mut settings = (*deps.settings).clone();
    settings.sending_deadline = Duration::ZERO;
    deps.settings = Arc::new(settings);
    deps.sending = Arc::new(SendingFaults {
        inner: deps.sending.clone(),
        release_fails: false,
        expiry_answer_lost: true,
        expiry_fails: false,
    });
    let callbacks = Arc::new(Kept::default());
    deps.callback_queue = callbacks.clone();
    assert_eq!(
        dispatch::handle_in_batch(&deps, &recheck).await,
        Outcome::Done
    );
    let body = callbacks.only();
    assert!(
        body.contains(m.id.as_str()) && body.contains(r#""status":"failed""#),
        "{body}"
    );
    let failed = deps
        .messages
        .get_message(&tenant, &m.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(failed.status, MessageStatus::Failed);
}

/// The deadline's failure cannot be written (storage refusing): the recheck job is replaced
/// by a fresh one after the backoff, not retried as the day-old queue message it is (whose
/// receives toward the dead-letter queue, which keeps a message a day from its first
/// enqueue, would drop it there at once); the fresh one fails the message.
async fn a_deadline_failure_that_cannot_be_written_comes_back_as_a_fresh_recheck(backend: Backend) {
    let t = spawn_app(backend).await;
    let o = t.onboard(5).await;
    let tenant = TenantId::from_trusted(o.tenant_id.clone());
    let (m, job) = accepted_with_job(&t, &tenant, "+60123459937").await;
    let mut deps = t.app.deps.clone();
    deps.meta = Arc::new(BareStatus(504, Default::default()));
    let Outcome::Again(recheck, _) = dispatch::handle_in_batch(&deps, &job).await else {
        panic!("a recheck job");
    };
    let mut settings = (*deps.settings).clone();
    settings.sending_deadline = Duration::ZERO;
    deps.settings = Arc::new(settings);
    let working = deps.sending.clone();
    deps.sending = Arc::new(SendingFaults {
        inner: working.clone(),
        release_fails: false,
        expiry_answer_lost: false,
        expiry_fails: true,
    });
    let Outcome::Again(again, delay) = dispatch::handle_in_batch(&deps, &recheck).await else {
        panic!("a fresh recheck job");
    };
    assert_eq!(delay, deps.settings.dispatch_backoff);
    assert!(
        !again.contains("content") || again.contains(r#""recheck":true"#),
        "{again}"
    );
    let stuck = deps
        .messages
        .get_message(&tenant, &m.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stuck.status, MessageStatus::Sending);
    deps.sending = working;
    assert_eq!(
        dispatch::handle_in_batch(&deps, &again).await,
        Outcome::Done
    );
    let failed = deps
        .messages
        .get_message(&tenant, &m.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (failed.status, failed.error.map(|e| e.code)),
        (
            MessageStatus::Failed,
            Some(ErrorCode::from(kirim::service::deadline::OUTCOME_UNKNOWN))
        )
    );
}

/// Sending control with a failure played: `release_fails`, a release of a claim turned
/// away by a busy number fails (the store unavailable for that write); `expiry_answer_lost`,
/// the deadline failure lands but answers an error after every try (its answer lost, then
/// throttled).
struct SendingFaults {
    inner: Arc<dyn kirim::ports::SendingControl>,
    release_fails: bool,
    expiry_answer_lost: bool,
    /// The deadline failure's write fails (nothing written).
    expiry_fails: bool,
}

#[async_trait]
impl kirim::ports::SendingControl for SendingFaults {
    async fn release_unattempted(
        &self,
        tenant: &TenantId,
        id: &MessageId,
        claimed_at: DateTime<Utc>,
        events: usize,
        at: DateTime<Utc>,
        slot: Option<kirim::domain::CarriedSlot>,
    ) -> Result<kirim::ports::Transition, StoreError> {
        if self.release_fails {
            return Err(StoreError::Unavailable("throttled".into()));
        }
        self.inner
            .release_unattempted(tenant, id, claimed_at, events, at, slot)
            .await
    }
    async fn expire_sending(
        &self,
        tenant: &TenantId,
        id: &MessageId,
        claimed_at: DateTime<Utc>,
        error: &MessageError,
        at: DateTime<Utc>,
    ) -> Result<kirim::ports::Transition, StoreError> {
        if self.expiry_fails {
            return Err(StoreError::Unavailable("throttled".into()));
        }
        let moved = self
            .inner
            .expire_sending(tenant, id, claimed_at, error, at)
            .await?;
        if self.expiry_answer_lost {
            return Err(StoreError::Unavailable("throttled".into()));
        }
        Ok(moved)
    }
}

async fn a_turned_away_message_whose_release_fails_is_given_back_for_a_retry_not_left_sending(
    backend: Backend,
) {
    let t = spawn_app(backend).await;
    let o = t.onboard(5).await;
    let tenant = TenantId::from_trusted(o.tenant_id.clone());
    let (m, job) = accepted_with_job(&t, &tenant, "+60123459922").await;
    let mut deps = t.app.deps.clone();
    deps.sending = Arc::new(SendingFaults {
        inner: deps.sending.clone(),
        release_fails: true,
        expiry_answer_lost: false,
        expiry_fails: false,
    });
    book_two_seconds_ahead(&deps, &o.phone_number_id).await;
    let outcome = dispatch::handle(&deps, &job).await;
    assert!(
        matches!(outcome, Outcome::Backoff(_)),
        "the job retried: {outcome:?}"
    );
    let back = deps
        .messages
        .get_message(&tenant, &m.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        back.status,
        MessageStatus::Accepted,
        "given back for a retry, not left `sending` with nothing sent"
    );
}

/// A queue that notes when each retry delay was set, then passes it on.
struct TimedRetries {
    inner: Arc<dyn DispatchQueue>,
    set: Mutex<Vec<(String, std::time::Instant)>>,
    /// Each retry's receipt and delay.
    delays: Mutex<Vec<(String, Duration)>>,
    /// Each body sent (hops included).
    sent: Mutex<Vec<String>>,
}

#[async_trait]
impl DispatchQueue for TimedRetries {
    async fn send(&self, body: &str) -> Result<(), StoreError> {
        self.sent
            .lock()
            .map_err(|_| StoreError::Unavailable("poisoned".into()))?
            .push(body.to_owned());
        self.inner.send(body).await
    }
    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Received>, StoreError> {
        self.inner.receive(max, wait).await
    }
    async fn delete(&self, receipt: &str) -> Result<(), StoreError> {
        self.inner.delete(receipt).await
    }
    async fn retry_after(&self, receipt: &str, delay: Duration) -> Result<(), StoreError> {
        self.set
            .lock()
            .map_err(|_| StoreError::Unavailable("poisoned".into()))?
            .push((receipt.to_owned(), std::time::Instant::now()));
        self.delays
            .lock()
            .map_err(|_| StoreError::Unavailable("poisoned".into()))?
            .push((receipt.to_owned(), delay));
        self.inner.retry_after(receipt, delay).await
    }
    async fn dead_letters(&self, max: usize) -> Result<Vec<DeadLetter>, StoreError> {
        self.inner.dead_letters(max).await
    }
    async fn redrive(&self, ids: Option<&[String]>, max: usize) -> Result<Redriven, StoreError> {
        self.inner.redrive(ids, max).await
    }
}

/// The retry delay of a message turned away by a busy number counts from when it was
/// turned away (it comes back one to two seconds before its carried slot): it is set as
/// soon as the message is answered, not after its batch's slowest job (here a send that
/// waits for Meta's answer until the timeout), or the message would come back late and miss
/// its slot.
async fn a_turned_away_messages_retry_delay_is_set_at_once_not_after_its_batchs_slowest_job(
    backend: Backend,
) {
    let t = spawn_app(backend).await;
    let busy = t.onboard(5).await;
    let other = t.onboard(5).await;
    let busy_tenant = TenantId::from_trusted(busy.tenant_id.clone());
    let other_tenant = TenantId::from_trusted(other.tenant_id.clone());
    let (_, away_job) = accepted_with_job(&t, &busy_tenant, "+60123459923").await;
    // A recipient ending 0005: the sandbox answers after its slow delay.
    let (slow, slow_job) = accepted_with_job(&t, &other_tenant, "+60123450005").await;
    let mut deps = t.app.deps.clone();
    let timed = Arc::new(TimedRetries {
        inner: deps.queue.clone(),
        set: Mutex::default(),
        delays: Mutex::default(),
        sent: Mutex::default(),
    });
    deps.queue = timed.clone();
    book_two_seconds_ahead(&deps, &busy.phone_number_id).await;

    // One Lambda batch of both jobs, as the event source hands it over.
    let records: Vec<_> = [("away", &away_job), ("slow", &slow_job)]
        .iter()
        .map(|(id, body)| {
            json!({
                "messageId": id, "receiptHandle": format!("receipt-{id}"), "body": body,
                "attributes": {"ApproximateReceiveCount": "1"}, "messageAttributes": {},
                "eventSource": "aws:sqs"
            })
        })
        .collect();
    let event = serde_json::from_value(json!({ "Records": records })).expect("an SQS event");
    let response = kirim::queue_handlers::dispatch_batch(&deps, event).await;
    let answered = std::time::Instant::now();

    // The one turned away comes back for its slot; the slow one, which Meta did not answer
    // within the timeout (700 ms here), is left for its sending deadline: its recheck goes
    // on the queue as a job of its own (its own receives), without the content.
    let failures: Vec<_> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.as_str())
        .collect();
    assert_eq!(failures, vec!["away"]);
    let sent = timed.sent.lock().unwrap().clone();
    let rechecks: Vec<_> = sent
        .iter()
        .filter_map(|b| match kirim::service::jobs::QueueJob::parse(b) {
            Some(kirim::service::jobs::QueueJob::Send(j)) if j.recheck => Some(j),
            _ => None,
        })
        .collect();
    assert_eq!(rechecks.len(), 1, "{sent:?}");
    assert_eq!(rechecks[0].message_id, slow.id);
    assert_eq!(
        rechecks[0].content,
        kirim::domain::Content::Text {
            body: String::new()
        },
        "no content on the queue after the attempt"
    );
    let waited = deps
        .messages
        .get_message(&other_tenant, &slow.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        waited.status,
        MessageStatus::Sending,
        "the slow one went to Meta"
    );
    let set = timed.set.lock().unwrap().clone();
    let at = |receipt: &str| {
        set.iter()
            .find(|(r, _)| r == receipt)
            .map(|(_, at)| *at)
            .unwrap_or_else(|| panic!("a retry delay for {receipt}: {set:?}"))
    };
    let ahead = answered.saturating_duration_since(at("receipt-away"));
    assert!(
        ahead >= Duration::from_millis(400),
        "set while the slow send still waited for Meta, not with it ({ahead:?} before)"
    );
}

/// Every retry of one queue message counts toward the redrive (10 receives), and what
/// brings a job back over and over is storage refusing (a throttled table while its
/// capacity catches up). At a flat 30 s the job was parked on the dead-letter queue after
/// about 5 minutes; from its second receive it is retried no sooner than the backoff
/// doubled per receive (about 2 h in all). A delay of the job's own (here a wait for its
/// message) is kept as it is.
#[tokio::test]
async fn a_job_received_again_and_again_is_retried_further_apart_not_parked_in_minutes() {
    let t = spawn_app(Backend::Memory).await;
    let o = t.onboard(10).await;
    let tenant = TenantId::from_trusted(o.tenant_id.clone());
    let mut jobs = Vec::new();
    for to in ["+60123459924", "+60123459925", "+60123459926"] {
        jobs.push(accepted_with_job(&t, &tenant, to).await);
    }
    // A job whose message is not recorded yet: retried in half a second on its own.
    let (m, job) = &jobs[0];
    let unrecorded = job.replace(
        m.id.as_str(),
        &kirim::domain::MessageId::generate().to_string(),
    );
    let mut deps = t.app.deps.clone();
    let mut settings = (*deps.settings).clone();
    settings.dispatch_backoff = Duration::from_secs(30);
    deps.settings = Arc::new(settings);
    let up = deps.clone();
    // The tenants' Meta tokens cannot be read (Secrets Manager throttled): a storage retry.
    deps.secrets = Arc::new(kirim::service::SecretCache::new(
        Arc::new(kirim_tests::ScriptedSecrets {
            reads: kirim_tests::Refuse::Every,
            ..kirim_tests::ScriptedSecrets::over(deps.secrets.store().clone())
        }),
        Duration::ZERO,
    ));
    let timed = Arc::new(TimedRetries {
        inner: deps.queue.clone(),
        set: Mutex::default(),
        delays: Mutex::default(),
        sent: Mutex::default(),
    });
    deps.queue = timed.clone();
    let event = |records: &[(&str, &str, &String)]| {
        let records: Vec<_> = records
            .iter()
            .map(|(id, receives, body)| {
                json!({
                    "messageId": id, "receiptHandle": format!("receipt-{id}"), "body": body,
                    "attributes": {"ApproximateReceiveCount": receives},
                    "messageAttributes": {}, "eventSource": "aws:sqs"
                })
            })
            .collect();
        serde_json::from_value(json!({ "Records": records })).expect("an SQS event")
    };
    let throttled = event(&[
        ("first", "1", &jobs[0].1),
        ("sixth", "6", &jobs[1].1),
        ("ninth", "9", &jobs[2].1),
    ]);
    let response = kirim::queue_handlers::dispatch_batch(&deps, throttled).await;
    assert_eq!(response.batch_item_failures.len(), 3, "all retried");
    let mut up = up;
    up.queue = timed.clone();
    let waiting = event(&[("waiting", "6", &unrecorded)]);
    let response = kirim::queue_handlers::dispatch_batch(&up, waiting).await;
    assert_eq!(response.batch_item_failures.len(), 1);
    let delays: std::collections::HashMap<String, Duration> =
        timed.delays.lock().unwrap().iter().cloned().collect();
    assert_eq!(
        delays["receipt-first"],
        Duration::from_secs(30),
        "the backoff"
    );
    assert_eq!(
        delays["receipt-waiting"],
        Duration::from_millis(500),
        "its own, however often received"
    );
    // 30 s doubled per receive after the first, ±20 %.
    let sixth = delays["receipt-sixth"];
    assert!((384..=576).contains(&sixth.as_secs()), "{sixth:?}");
    let ninth = delays["receipt-ninth"];
    assert!((3072..=4608).contains(&ninth.as_secs()), "{ninth:?}");
    // A job back for kept statuses storage refused is a storage retry too.
    let kept = kirim::queue_handlers::floored(
        &deps,
        Outcome::Backoff(kirim::service::deadline::KEPT_RETRY),
        6,
    );
    assert!(
        matches!(kept, Outcome::RetryAfter(d) if d.as_secs() >= 384),
        "{kept:?}"
    );
    // A job's own wait is kept, even one as long as the backoff (a wait for its message
    // was taken for a storage retry by its length).
    for own in [
        Duration::from_secs(30),
        kirim::service::deadline::KEPT_RETRY,
    ] {
        assert_eq!(
            kirim::queue_handlers::floored(&deps, Outcome::RetryAfter(own), 6),
            Outcome::RetryAfter(own)
        );
    }
    let total: u64 = (1..10)
        .map(|n| kirim::queue_handlers::retry_floor(&deps, n).as_secs())
        .sum();
    assert!(
        total >= 3600,
        "an hour at least before the redrive: {total} s"
    );
}

/// A tenant with `credits` on `b`'s stores, a manual clock and a process's deps.
pub(crate) async fn tenant_on_a_manual_clock(
    b: Backend,
    credits: i64,
) -> (Deps, std::sync::Arc<ManualClock>, kirim::ports::Tenant) {
    let (_, deps, clock) = crate::caches::two_processes(b).await;
    let t = crate::contract::tenant(credits);
    deps.tenants
        .create_tenant(&t, &crate::contract::key_for(&t), None)
        .await
        .unwrap();
    (deps, clock, t)
}

/// A campaign whose fan-out job is gone for good (parked on the dead-letter queue and
/// expired there) would stay `scheduled` or sending, every recipient charged, forever.
/// Once its recipient list's backstop passes (7 days after the later of its creation and
/// its `send_at`: a live fan-out would have found the list gone and closed it), the daily
/// retention run closes it as the fan-out would: the recipients never recorded are
/// refunded; those recorded past its last progress write are not (their messages go on,
/// or are settled with their own refund).
async fn the_retention_run_closes_a_campaign_its_lost_fan_out_job_left_unfinished(b: Backend) {
    use kirim::ports::{BroadcastStatus, Clock};
    let (deps, clock, t) = tenant_on_a_manual_clock(b, 20).await;
    let now = clock.now();
    let month = 30 * 24 * 3600;
    let list = |n: usize| -> Vec<kirim::domain::PhoneNumber> {
        (0..n)
            .map(|i| kirim::domain::PhoneNumber::parse(&format!("+6012347{i:04}")).unwrap())
            .collect()
    };
    let debit_of = |n: i64| {
        let (_, mut debit) = crate::contract::message_expiring(&t.id, now, month);
        debit.message_id = None;
        debit.amount = -n;
        debit
    };
    // Fanning out, 5 recipients, its job lost after recording two past its progress.
    let mut sending = crate::contract_broadcasts::running_broadcast(&t.id, now);
    sending.accepted = 5;
    sending.expires_at = Some(now.timestamp() + month);
    deps.broadcasts
        .create_broadcast(&sending, &list(5), &debit_of(5))
        .await
        .unwrap();
    for i in 0..2 {
        let (mut m, _) = crate::contract::message_expiring(&t.id, now, month);
        m.id = kirim::service::broadcasts::message_id(&sending, i);
        m.broadcast_id = Some(sending.id.clone());
        assert!(deps.broadcasts.insert_broadcast_message(&m).await.unwrap());
    }
    // Scheduled a day ahead, 3 recipients, its job lost before it was due.
    let mut scheduled = crate::contract_broadcasts::running_broadcast(&t.id, now);
    scheduled.status = BroadcastStatus::Scheduled;
    scheduled.started_at = None;
    scheduled.send_at = Some(now + chrono::Duration::days(1));
    scheduled.expires_at = Some(now.timestamp() + month);
    deps.broadcasts
        .create_broadcast(&scheduled, &list(3), &debit_of(3))
        .await
        .unwrap();
    let credits = || {
        let (tenants, id) = (deps.tenants.clone(), t.id.clone());
        async move { tenants.get_tenant(&id).await.unwrap().unwrap().credits }
    };
    let status = |id: String| {
        let (broadcasts, t) = (deps.broadcasts.clone(), t.id.clone());
        async move {
            broadcasts
                .get_broadcast(&t, &id)
                .await
                .unwrap()
                .unwrap()
                .status
        }
    };
    let before = credits().await;
    // Six days on, the lists are still kept: a fan-out could still come. (The two
    // recorded messages, unmoved for 5 days, are settled on their own: refunded.)
    clock.advance(chrono::Duration::days(6));
    let report = kirim::service::retention::run(&deps).await.unwrap();
    assert_eq!(
        (
            report.unsent_settled.refunded,
            report.unsent_settled.campaigns_closed
        ),
        (2, 0),
        "{report:?}"
    );
    let before = before + 2;
    // Seven days and the hour's margin (a fan-out may still be recording what it read
    // just before): the sending one's list is gone; eight: the scheduled one's.
    clock.advance(chrono::Duration::days(1) + chrono::Duration::minutes(30));
    let report = kirim::service::retention::run(&deps).await.unwrap();
    assert_eq!(
        report.unsent_settled.campaigns_closed, 0,
        "within the margin"
    );
    clock.advance(chrono::Duration::minutes(31));
    let report = kirim::service::retention::run(&deps).await.unwrap();
    assert_eq!(
        (
            report.unsent_settled.campaigns_closed,
            report.unsent_settled.campaign_recipients_refunded
        ),
        (1, 3),
        "{report:?}"
    );
    assert_eq!(credits().await, before + 3, "the three never recorded");
    assert_eq!(status(sending.id.clone()).await, BroadcastStatus::Enqueued);
    assert_eq!(
        status(scheduled.id.clone()).await,
        BroadcastStatus::Scheduled
    );
    clock.advance(chrono::Duration::days(1));
    let report = kirim::service::retention::run(&deps).await.unwrap();
    assert_eq!(
        (
            report.unsent_settled.campaigns_closed,
            report.unsent_settled.campaign_recipients_refunded
        ),
        (1, 3),
        "{report:?}"
    );
    assert_eq!(credits().await, before + 6);
    assert_eq!(
        status(scheduled.id.clone()).await,
        BroadcastStatus::Enqueued
    );
    // Once: a later run finds nothing more, and a fan-out job that comes back after all
    // finds its campaign closed.
    let report = kirim::service::retention::run(&deps).await.unwrap();
    assert_eq!(report.unsent_settled.campaigns_closed, 0, "{report:?}");
    let job = kirim::service::jobs::FanoutJob {
        tenant_id: t.id.clone(),
        broadcast_id: sending.id.clone(),
        content: kirim::domain::Content::Template {
            template: sending.template.clone(),
            components: Vec::new(),
        },
        request_id: None,
        send_at: None,
        paced_from: None,
        token: sending.fanout_token.clone(),
        resent: false,
    };
    kirim::service::broadcasts::fan_out_in_slices(&deps, &job, 10)
        .await
        .unwrap();
    assert_eq!(credits().await, before + 6, "nothing refunded twice");
}

/// Two closers of a lost fan-out's campaign that both read it still fanning out (the
/// retention run and the fan-out job coming back, or two runs) with every recipient
/// recorded: only the one whose write closed it answers it closed. The other answered
/// `Some(0)` too (its refused progress write read as done), and the retention report's
/// `campaigns_closed` counted the campaign twice.
async fn a_campaign_with_every_recipient_recorded_is_answered_closed_by_one_closer_only(
    b: Backend,
) {
    use kirim::ports::{BroadcastStatus, Clock};
    let (deps, clock, t) = tenant_on_a_manual_clock(b, 20).await;
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
    // Both recorded past its last progress write, then the job was lost.
    for i in 0..2 {
        let (mut m, _) = crate::contract::message_expiring(&t.id, now, month);
        m.id = kirim::service::broadcasts::message_id(&campaign, i);
        m.broadcast_id = Some(campaign.id.clone());
        assert!(deps.broadcasts.insert_broadcast_message(&m).await.unwrap());
    }
    // What both closers read before either wrote.
    let read = deps
        .broadcasts
        .get_broadcast(&t.id, &campaign.id)
        .await
        .unwrap()
        .unwrap();
    let first = kirim::service::broadcasts::close_unrecorded(&deps, &read)
        .await
        .unwrap();
    let second = kirim::service::broadcasts::close_unrecorded(&deps, &read)
        .await
        .unwrap();
    assert_eq!((first, second), (Some(0), None), "closed once");
    let now_read = deps
        .broadcasts
        .get_broadcast(&t.id, &campaign.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(now_read.status, BroadcastStatus::Enqueued);
    assert_eq!(now_read.refunded_unsent, 0);
    let credits = deps
        .tenants
        .get_tenant(&t.id)
        .await
        .unwrap()
        .unwrap()
        .credits;
    assert_eq!(
        credits, 18,
        "nothing refunded: both recipients were recorded"
    );
}

/// A campaign paused before its fan-out, whose recipient list then expired, is closed by
/// the retention run with every recipient refunded. They never got a message, and the
/// view showed it `completed` with every count 0 (and its refunded recipients nowhere).
/// It ends `cancelled`, those recipients counted `cancelled`: the counts add up to its
/// total, and it can no longer be resumed.
async fn a_paused_campaign_whose_list_expired_ends_cancelled_with_counts_adding_up_to_its_total(
    b: Backend,
) {
    use kirim::ports::{BroadcastStatus, Clock};
    use kirim::service::broadcasts;
    let (deps, clock, t) = tenant_on_a_manual_clock(b, 20).await;
    let now = clock.now();
    let month = 30 * 24 * 3600;
    let list: Vec<kirim::domain::PhoneNumber> = (0..3)
        .map(|i| kirim::domain::PhoneNumber::parse(&format!("+6012348{i:04}")).unwrap())
        .collect();
    let mut campaign = crate::contract_broadcasts::running_broadcast(&t.id, now);
    campaign.status = BroadcastStatus::Scheduled;
    campaign.started_at = None;
    campaign.send_at = Some(now + chrono::Duration::days(1));
    campaign.expires_at = Some(now.timestamp() + month);
    let (_, mut debit) = crate::contract::message_expiring(&t.id, now, month);
    debit.message_id = None;
    debit.amount = -3;
    deps.broadcasts
        .create_broadcast(&campaign, &list, &debit)
        .await
        .unwrap();
    let paused = broadcasts::pause(&deps, &t.id, &campaign.id).await.unwrap();
    assert_eq!(paused.status, "paused");
    // Past its list's backstop (a day to its send_at, seven after) and the hour's margin.
    clock.advance(chrono::Duration::days(8) + chrono::Duration::minutes(61));
    let report = kirim::service::retention::run(&deps).await.unwrap();
    assert_eq!(
        (
            report.unsent_settled.campaigns_closed,
            report.unsent_settled.campaign_recipients_refunded
        ),
        (1, 3),
        "{report:?}"
    );
    let credits = deps
        .tenants
        .get_tenant(&t.id)
        .await
        .unwrap()
        .unwrap()
        .credits;
    assert_eq!(credits, 20, "every recipient refunded");
    let view = broadcasts::view(&deps, &t.id, &campaign.id).await.unwrap();
    assert_eq!(view.status, "cancelled", "{view:?}");
    assert_eq!(view.total, 3);
    assert_eq!(
        view.counts.values().sum::<usize>(),
        view.total,
        "every recipient is counted: {view:?}"
    );
    assert_eq!(view.counts.get("cancelled"), Some(&3), "{view:?}");
    assert!(view.completed_at.is_some(), "{view:?}");
    let (listed, _) = broadcasts::list(&deps, &t.id, Some("cancelled"), 50, None)
        .await
        .unwrap();
    assert_eq!(
        listed.iter().map(|v| v.id.as_str()).collect::<Vec<_>>(),
        vec![campaign.id.as_str()],
        "listed as cancelled"
    );
    assert!(
        matches!(
            broadcasts::resume(&deps, &t.id, &campaign.id).await,
            Err(kirim::service::errors::ServiceError::Conflict(_))
        ),
        "nothing is left to resume"
    );
}

/// A paused campaign's recorded messages wait as long as it does, but not past their own
/// expiry: with the Messages retention at its 14-day minimum and the campaign paused
/// longer, the sweep deleted them `accepted`, charged and never refunded. The run settles
/// one within the stale time of its expiry (failed, refunded), whatever its campaign does.
async fn a_paused_campaigns_message_about_to_expire_is_settled_and_refunded(b: Backend) {
    use kirim::ports::Clock;
    let (deps, clock, t) = tenant_on_a_manual_clock(b, 10).await;
    let now = clock.now();
    let day = 24 * 3600;
    let mut broadcast = crate::contract_broadcasts::running_broadcast(&t.id, now);
    broadcast.expires_at = Some(now.timestamp() + 30 * day);
    let (_, mut debit) = crate::contract::message_expiring(&t.id, now, 30 * day);
    debit.message_id = None;
    deps.broadcasts
        .create_broadcast(&broadcast, &[], &debit)
        .await
        .unwrap();
    // Its first recipient's message, recorded (the campaign's other two never were).
    let (mut held, _) = crate::contract::message_expiring(&t.id, now, 14 * day);
    held.id = kirim::service::broadcasts::message_id(&broadcast, 0);
    held.broadcast_id = Some(broadcast.id.clone());
    assert!(deps
        .broadcasts
        .insert_broadcast_message(&held)
        .await
        .unwrap());
    assert!(deps
        .broadcasts
        .set_broadcast_control(
            &t.id,
            &broadcast.id,
            &[None],
            Some(kirim::ports::BroadcastControl::Paused),
            now
        )
        .await
        .unwrap());
    let credits = || {
        let (tenants, id) = (deps.tenants.clone(), t.id.clone());
        async move { tenants.get_tenant(&id).await.unwrap().unwrap().credits }
    };
    let status = || {
        let (messages, t, id) = (deps.messages.clone(), t.id.clone(), held.id.clone());
        async move {
            messages
                .get_message(&t, &id)
                .await
                .unwrap()
                .map(|m| m.status)
        }
    };
    let before = credits().await;
    // Paused for six days, eight left before it expires: it waits with its campaign.
    clock.advance(chrono::Duration::days(6));
    let report = kirim::service::retention::run(&deps).await.unwrap();
    assert_eq!(report.unsent_settled, Default::default());
    assert_eq!(status().await, Some(MessageStatus::Accepted));
    // Ten days: four left, within the stale time of its expiry: settled and refunded.
    clock.advance(chrono::Duration::days(4));
    let report = kirim::service::retention::run(&deps).await.unwrap();
    assert_eq!(report.unsent_settled.refunded, 1, "{report:?}");
    assert_eq!(status().await, Some(MessageStatus::Failed));
    // (The campaign itself was closed by then too, its list's backstop past: the two
    // recipients it never recorded refunded apart.) Each of the three once.
    assert_eq!(
        report.unsent_settled.campaign_recipients_refunded, 2,
        "{report:?}"
    );
    assert_eq!(held.price, 1);
    assert_eq!(credits().await, before + 3, "refunded, each once");
    let report = kirim::service::retention::run(&deps).await.unwrap();
    assert_eq!(report.unsent_settled, Default::default(), "once");
    assert_eq!(credits().await, before + 3);
}

/// A message whose dispatch job is gone for good (parked on the dead-letter queue, which
/// keeps a job a day, and expired there) would stay `accepted`, charged, or `sending`
/// forever. The daily retention run settles one that has not moved for five days: an
/// `accepted` one fails `dispatch_lost`, refunded; a `sending` one fails `outcome_unknown`,
/// as at the sending deadline. A message that moved since, or a newer one, is left.
async fn the_retention_run_settles_a_message_its_lost_dispatch_job_left_unsent(b: Backend) {
    use kirim::ports::Clock;
    let (deps, clock, t) = tenant_on_a_manual_clock(b, 10).await;
    let now = clock.now();
    let month = 30 * 24 * 3600;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let (m, debit) = crate::contract::message_expiring(&t.id, now, month);
        deps.messages.insert_with_debit(&m, &debit).await.unwrap();
        ids.push(m.id);
    }
    deps.messages
        .transition(
            &t.id,
            &ids[1],
            MessageStatus::Sending,
            &StatusChange {
                count_attempt: true,
                claim: Some("c".into()),
                ..Default::default()
            },
            now,
        )
        .await
        .unwrap();
    // A paused broadcast's message waits as long as its broadcast does: left alone.
    let mut b = crate::contract_broadcasts::running_broadcast(&t.id, now);
    b.expires_at = Some(now.timestamp() + month);
    let (_, mut debit) = crate::contract::message_expiring(&t.id, now, month);
    debit.message_id = None;
    deps.broadcasts
        .create_broadcast(&b, &[], &debit)
        .await
        .unwrap();
    let (mut held, _) = crate::contract::message_expiring(&t.id, now, month);
    held.broadcast_id = Some(b.id.clone());
    assert!(deps
        .broadcasts
        .insert_broadcast_message(&held)
        .await
        .unwrap());
    assert!(deps
        .broadcasts
        .set_broadcast_control(
            &t.id,
            &b.id,
            &[None],
            Some(kirim::ports::BroadcastControl::Paused),
            now
        )
        .await
        .unwrap());
    let credits = |deps: &Deps| {
        let (tenants, id) = (deps.tenants.clone(), t.id.clone());
        async move { tenants.get_tenant(&id).await.unwrap().unwrap().credits }
    };
    let before = credits(&deps).await;
    // Four days on, a job could still come: nothing is settled.
    clock.advance(chrono::Duration::days(4));
    let report = kirim::service::retention::run(&deps).await.unwrap();
    assert_eq!(report.unsent_settled, Default::default());
    clock.advance(chrono::Duration::days(2));
    let (fresh, debit) = crate::contract::message_expiring(&t.id, clock.now(), month);
    deps.messages
        .insert_with_debit(&fresh, &debit)
        .await
        .unwrap();
    let report = kirim::service::retention::run(&deps).await.unwrap();
    assert_eq!(
        (
            report.unsent_settled.refunded,
            report.unsent_settled.outcome_unknown
        ),
        (1, 1),
        "{report:?}"
    );
    let get = |id: &MessageId| {
        let (messages, t, id) = (deps.messages.clone(), t.id.clone(), id.clone());
        async move { messages.get_message(&t, &id).await.unwrap().unwrap() }
    };
    let lost = get(&ids[0]).await;
    assert_eq!(lost.status, MessageStatus::Failed);
    assert_eq!(
        lost.error.map(|e| e.code),
        Some(ErrorCode::from("dispatch_lost"))
    );
    let sending = get(&ids[1]).await;
    assert_eq!(sending.status, MessageStatus::Failed);
    assert_eq!(
        sending.error.map(|e| e.code),
        Some(ErrorCode::from("outcome_unknown"))
    );
    assert_eq!(
        credits(&deps).await,
        before,
        "the unsent one refunded, once"
    );
    assert_eq!(
        get(&fresh.id).await.status,
        MessageStatus::Accepted,
        "a new one is left"
    );
    assert_eq!(
        get(&held.id).await.status,
        MessageStatus::Accepted,
        "a paused one is left"
    );
    // Run again: nothing more.
    let report = kirim::service::retention::run(&deps).await.unwrap();
    assert_eq!(report.unsent_settled, Default::default());
    assert_eq!(credits(&deps).await, before);
    // Resumed after six days: its job may only now come back for the message, so the
    // run leaves it for the stale time from the resume, then settles it if it never came.
    assert!(deps
        .broadcasts
        .set_broadcast_control(
            &t.id,
            &b.id,
            &[Some(kirim::ports::BroadcastControl::Paused)],
            None,
            clock.now()
        )
        .await
        .unwrap());
    let report = kirim::service::retention::run(&deps).await.unwrap();
    assert_eq!(
        report.unsent_settled,
        Default::default(),
        "just resumed: left"
    );
    assert_eq!(get(&held.id).await.status, MessageStatus::Accepted);
    clock.advance(chrono::Duration::days(6));
    let report = kirim::service::retention::run(&deps).await.unwrap();
    assert_eq!(report.unsent_settled.refunded, 2, "{report:?}");
    assert_eq!(get(&held.id).await.status, MessageStatus::Failed);
}

/// A scheduled message is charged when accepted and waits, unmoved, for its `send_at`: its
/// job lost for good (parked on the dead-letter queue and expired there), it would stay
/// `scheduled`, charged, long past its time. Five days past its `send_at` the daily run
/// cancels it `dispatch_lost` and refunds it, once; one not that far past is left.
async fn the_retention_run_settles_a_scheduled_message_whose_job_was_lost(b: Backend) {
    use kirim::ports::Clock;
    let (deps, clock, t) = tenant_on_a_manual_clock(b, 10).await;
    let now = clock.now();
    let month = 30 * 24 * 3600;
    let mut ids = Vec::new();
    for due_in_days in [1, 3] {
        let (mut m, debit) = crate::contract::message_expiring(&t.id, now, month);
        m.status = MessageStatus::Scheduled;
        m.send_at = Some(now + chrono::Duration::days(due_in_days));
        m.events = vec![kirim::domain::StatusEvent {
            status: MessageStatus::Scheduled,
            at: now,
        }];
        deps.messages.insert_with_debit(&m, &debit).await.unwrap();
        ids.push(m.id);
    }
    let credits = || {
        let (tenants, id) = (deps.tenants.clone(), t.id.clone());
        async move { tenants.get_tenant(&id).await.unwrap().unwrap().credits }
    };
    let charged = credits().await;
    // Six days on: the first is five days past due, the second three; and long unmoved both.
    clock.advance(chrono::Duration::days(6) + chrono::Duration::hours(1));
    let report = kirim::service::retention::run(&deps).await.unwrap();
    assert_eq!(report.unsent_settled.refunded, 1, "{report:?}");
    let get = |id: &MessageId| {
        let (messages, t, id) = (deps.messages.clone(), t.id.clone(), id.clone());
        async move { messages.get_message(&t, &id).await.unwrap().unwrap() }
    };
    let lost = get(&ids[0]).await;
    assert_eq!(lost.status, MessageStatus::Cancelled);
    assert_eq!(
        lost.error.map(|e| e.code),
        Some(ErrorCode::from("dispatch_lost"))
    );
    assert_eq!(credits().await, charged + lost.price, "refunded");
    assert_eq!(
        get(&ids[1]).await.status,
        MessageStatus::Scheduled,
        "not yet"
    );
    let report = kirim::service::retention::run(&deps).await.unwrap();
    assert_eq!(report.unsent_settled, Default::default(), "once");
    assert_eq!(credits().await, charged + lost.price);
}

/// Local mode asked to stop (Ctrl-C or SIGTERM: `LocalApp::stop`) drains as a deployment
/// would: the poller finishes the batch in hand, so a message claimed when the stop came is
/// sent, not left `sending` until its deadline (then charged as `outcome_unknown`), and only
/// then does the server stop taking requests. (Until stop 58 the process ignored the
/// signals: a Ctrl-C was a kill.)
async fn a_stopped_local_mode_sends_the_message_it_claimed_and_then_takes_no_request(
    backend: Backend,
) {
    let mut cfg = kirim_tests::local_config(backend).await;
    // The sandbox's 0005 answers after this, within the Meta timeout: the stop comes while
    // it is being sent.
    cfg.sandbox_slow_delay = Duration::from_secs(2);
    cfg.settings.meta_timeout = Duration::from_secs(10);
    let t = kirim_tests::spawn_with(cfg).await;
    let o = t.onboard(5).await;
    let tenant = TenantId::from_trusted(o.tenant_id.clone());
    let id = t.send_ok(&o.key, "+60123450005").await;
    let id = MessageId::parse(&id).expect("a message id");
    let deps = t.app.deps.clone();
    let mut claimed = false;
    // Up to a minute: a deadline, not a speed assertion (the claim comes through the queue
    // poller; 4 s was tight on a loaded CI machine sharing one moto).
    for _ in 0..3000 {
        let m = deps.messages.get_message(&tenant, &id).await.unwrap();
        if m.is_some_and(|m| m.status == MessageStatus::Sending) {
            claimed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(claimed, "the dispatcher claimed it");
    let base = t.app.base_url.clone();
    let TestApp { app, http, .. } = t;
    app.stop(Duration::from_secs(30)).await;
    let m = deps
        .messages
        .get_message(&tenant, &id)
        .await
        .unwrap()
        .unwrap();
    // Sent (its statuses, which Meta's webhooks may bring while it drains, beyond).
    assert!(
        matches!(
            m.status,
            MessageStatus::Sent | MessageStatus::Delivered | MessageStatus::Read
        ),
        "{:?}",
        m.events
    );
    assert!(m.wamid.is_some());
    assert!(
        http.get(format!("{base}/health")).send().await.is_err(),
        "no request is taken after the stop"
    );
}

/// The stop refuses new requests (`503`) while the pollers drain, so nothing is accepted
/// that no poller will take; and on the memory backend, whose queue dies with the process, a job accepted before the stop
/// and still waiting in the queue is sent, not lost (on SQS it stays for the next start).
async fn a_stopping_local_mode_refuses_sends_while_it_drains_and_loses_no_waiting_job_on_memory(
    backend: Backend,
) {
    let mut cfg = kirim_tests::local_config(backend).await;
    cfg.sandbox_slow_delay = Duration::from_secs(2);
    cfg.settings.meta_timeout = Duration::from_secs(10);
    // One poller: busy with the slow send, it leaves the second job waiting in the queue.
    cfg.pollers = 1;
    let t = kirim_tests::spawn_with(cfg).await;
    let o = t.onboard(5).await;
    let tenant = TenantId::from_trusted(o.tenant_id.clone());
    let slow = MessageId::parse(&t.send_ok(&o.key, "+60123450005").await).expect("an id");
    let deps = t.app.deps.clone();
    let status = |id: MessageId| {
        let (deps, tenant) = (deps.clone(), tenant.clone());
        async move {
            deps.messages
                .get_message(&tenant, &id)
                .await
                .unwrap()
                .map(|m| m.status)
        }
    };
    let mut claimed = false;
    // Up to a minute: a deadline, not a speed assertion.
    for _ in 0..3000 {
        if status(slow.clone()).await == Some(MessageStatus::Sending) {
            claimed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(claimed, "the only poller is busy with the slow send");
    let waiting = MessageId::parse(&t.send_ok(&o.key, "+60123459001").await).expect("an id");
    assert_eq!(status(waiting.clone()).await, Some(MessageStatus::Accepted));
    let base = t.app.base_url.clone();
    let TestApp { app, http, .. } = t;
    let stopping = tokio::spawn(app.stop(Duration::from_secs(30)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!stopping.is_finished(), "the slow send is still in hand");
    let refused = http
        .post(format!("{base}/v1/messages"))
        .bearer_auth(&o.key)
        .json(&serde_json::json!({
            "to": "+60123459002",
            "template": {
                "name": "order_update",
                "language": "en_US",
                "category": "utility",
                "components": [{"type": "body", "parameters": [{"type": "text", "text": "ORDER-43"}]}],
            },
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        refused.status(),
        503,
        "no send is taken while the pollers drain"
    );
    assert_eq!(
        refused
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned()),
        Some("5".to_owned())
    );
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    // Meta's webhooks are still applied while it drains: an inbound STOP the sandbox
    // delivers then is taken.
    let inbound = http
        .post(format!("{base}/_sandbox/inbound"))
        .json(&serde_json::json!({
            "phone_number_id": o.phone_number_id,
            "from": "+60123459003",
            "text": "STOP",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(inbound.status(), 200);
    let inbound: serde_json::Value = inbound.json().await.unwrap();
    assert_eq!(inbound["delivered"], true, "{inbound}");
    stopping.await.unwrap();
    assert!(
        matches!(
            status(slow.clone()).await,
            Some(MessageStatus::Sent | MessageStatus::Delivered | MessageStatus::Read)
        ),
        "the claimed send went"
    );
    let left = status(waiting).await;
    match backend {
        Backend::Memory => assert!(
            matches!(
                left,
                Some(MessageStatus::Sent | MessageStatus::Delivered | MessageStatus::Read)
            ),
            "drained: {left:?}"
        ),
        // SQS keeps the job for the next start.
        Backend::Aws => assert_eq!(left, Some(MessageStatus::Accepted)),
    }
}

on_both_backends!(
    a_stopped_local_mode_sends_the_message_it_claimed_and_then_takes_no_request,
    a_stopping_local_mode_refuses_sends_while_it_drains_and_loses_no_waiting_job_on_memory,
    a_send_whose_job_the_queue_refuses_for_good_is_not_answered_as_worth_a_retry,
    a_replay_queues_nothing_for_a_message_a_busy_number_just_gave_back,
    an_unknown_meta_code_is_retried_as_metas_is_transient_says,
    a_paused_campaigns_message_about_to_expire_is_settled_and_refunded,
    a_paused_campaign_whose_list_expired_ends_cancelled_with_counts_adding_up_to_its_total,
    a_deadline_failure_whose_answer_was_lost_still_has_its_failed_callback,
    a_deadline_failure_that_cannot_be_written_comes_back_as_a_fresh_recheck,
    a_recheck_job_never_claims_or_sends_a_message,
    a_refunded_failure_whose_answer_was_lost_still_has_its_failed_callback,
    the_retention_run_closes_a_campaign_its_lost_fan_out_job_left_unfinished,
    a_campaign_with_every_recipient_recorded_is_answered_closed_by_one_closer_only,
    the_retention_run_settles_a_scheduled_message_whose_job_was_lost,
    a_retry_queues_a_lost_job_with_the_catalogue_of_the_number_it_was_accepted_from,
    a_sent_move_whose_answer_was_lost_still_has_its_sent_callback,
    a_sent_move_that_landed_but_answered_errors_still_has_its_sent_callback,
    a_status_that_overtakes_the_dispatchers_sent_counts_the_message_sent_once,
    a_webhook_move_whose_answer_was_lost_still_has_its_callback_priced_or_not,
    a_message_that_missed_its_carried_slot_carries_the_next_as_a_fresh_queue_message,
    the_retention_run_settles_a_message_its_lost_dispatch_job_left_unsent,
    a_claim_whose_answer_was_lost_is_known_for_its_own_and_sent_once,
    a_release_for_a_retry_that_fails_once_is_tried_again_not_left_sending,
    a_turned_away_messages_retry_delay_is_set_at_once_not_after_its_batchs_slowest_job,
    a_turned_away_message_whose_release_fails_is_given_back_for_a_retry_not_left_sending,
    a_wamid_index_write_that_fails_beside_the_sent_move_is_tried_again_at_once,
    a_wamid_index_that_failed_twice_is_written_by_the_jobs_retry,
    a_wamid_index_the_retry_owes_is_written_though_the_tenant_was_suspended_meanwhile,
    a_retry_whose_claim_could_not_be_given_back_gives_it_back_itself_and_sends,
    a_retry_with_the_same_key_queues_a_message_whose_job_died_with_its_process,
    replays_past_the_grace_queue_its_job_again_once_not_once_each,
    a_failure_before_meta_is_refunded_in_the_same_write_so_a_storage_failure_loses_no_refund_and_a_redelivery_gives_none_twice,
    a_send_whose_job_cannot_be_queued_records_and_charges_nothing,
    a_console_send_of_unknown_outcome_keeps_its_key_when_the_list_cannot_be_read,
    a_console_campaign_of_unknown_outcome_keeps_its_key_and_template_when_the_page_cannot_read,
    a_job_that_arrives_before_its_message_waits_for_it_and_one_whose_send_died_is_dropped_unsent,
    a_broadcast_whose_fan_out_job_cannot_be_queued_records_and_charges_nothing,
    a_fan_out_job_whose_broadcast_is_not_recorded_waits_then_is_dropped,
    a_message_turned_away_by_a_busy_number_keeps_its_slot_and_comes_back_once_to_send_at_it,
    a_message_turned_away_by_a_number_full_past_the_horizon_goes_back_as_a_fresh_queue_message,
    a_gateways_5xx_leaves_the_message_sending_and_is_never_resent_but_a_503_is_retried,
    a_4xx_without_metas_body_is_retried_then_failed_and_refunded_never_left_sending,
    a_final_refusal_whose_failure_cannot_be_written_is_never_sent_again_and_keeps_metas_code,
    a_keyed_send_whose_write_landed_unanswered_is_answered_as_new_not_as_a_replay,
);

/// A queue whose retry delays cannot be set.
struct NoRetryDelays(Arc<dyn DispatchQueue>);

#[async_trait]
impl DispatchQueue for NoRetryDelays {
    async fn send(&self, body: &str) -> Result<(), StoreError> {
        self.0.send(body).await
    }
    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Received>, StoreError> {
        self.0.receive(max, wait).await
    }
    async fn delete(&self, receipt: &str) -> Result<(), StoreError> {
        self.0.delete(receipt).await
    }
    async fn retry_after(&self, _receipt: &str, _delay: Duration) -> Result<(), StoreError> {
        Err(StoreError::Unavailable("the queue blinked".into()))
    }
    async fn dead_letters(&self, max: usize) -> Result<Vec<DeadLetter>, StoreError> {
        self.0.dead_letters(max).await
    }
    async fn redrive(&self, ids: Option<&[String]>, max: usize) -> Result<Redriven, StoreError> {
        self.0.redrive(ids, max).await
    }
}

/// A retry delay that could not be set is logged under its job's span: the line names
/// the message (the queue's own visibility timeout brings the job back later).
#[tokio::test]
async fn a_retry_delay_that_cannot_be_set_is_logged_with_its_jobs_ids() {
    kirim_tests::capture_logs();
    let t = spawn_app(Backend::Memory).await;
    let o = t.onboard(5).await;
    let tenant = TenantId::from_trusted(o.tenant_id.clone());
    // A job whose message is not recorded yet: looked at again in half a second, by the
    // retry delay.
    let (m, job) = accepted_with_job(&t, &tenant, "+60123450001").await;
    let unrecorded = kirim::domain::MessageId::generate();
    let job = job.replace(m.id.as_str(), unrecorded.as_str());
    let m = unrecorded;
    let mut deps = t.app.deps.clone();
    deps.queue = Arc::new(NoRetryDelays(deps.queue.clone()));
    let event = serde_json::from_value(json!({ "Records": [{
        "messageId": "m1", "receiptHandle": "receipt-m1", "body": job,
        "attributes": {"ApproximateReceiveCount": "1"}, "messageAttributes": {},
        "eventSource": "aws:sqs"
    }]}))
    .expect("an SQS event");
    let response = kirim::queue_handlers::dispatch_batch(&deps, event).await;
    assert_eq!(response.batch_item_failures.len(), 1);
    let logs = kirim_tests::captured_logs();
    let line = logs
        .lines()
        .find(|l| l.contains("could not set retry delay") && l.contains(m.as_str()))
        .unwrap_or_else(|| panic!("a line naming {}: {logs}", m.as_str()));
    assert!(line.contains(&o.tenant_id), "{line}");
}
