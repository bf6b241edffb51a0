//! Reads that go, and what keeps the invariants without them.
//!
//! The webhook reads the message it is about with a read that may be a moment behind
//! (`MessageStore::peek_message`: eventually consistent on DynamoDB, half the read units).
//! Every move it makes is a conditional write on the stored status, so a stale read may
//! cost a refused write but never a lost status, a wrong move or a second count. Here the
//! store answers every peek with the message as it was when accepted (the most stale a
//! read can be) while the message itself moves on.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use kirim::config::Backend;
use kirim::domain::meta::{Callback, MetaStatus, StatusReport, Wamid};
use kirim::domain::{MessageError, MessageId, MessageRecord, MessageStatus, Pricing, TenantId};
use kirim::ports::*;
use kirim::service::status::{self, Applied};
use kirim::store_error::StoreError;

use crate::caches::two_processes;
use crate::contract::{key_for, message_for, tenant};

/// The real message store, except that a peek answers `snapshot` (when given), and, with
/// `lose_claim_answer`, a claim (a move to `sending`) is written but answered with an error
/// (its answer lost, the store's own retries throttled).
struct Behind {
    inner: Arc<dyn MessageStore>,
    snapshot: Option<MessageRecord>,
    lose_claim_answer: bool,
    /// How many of the next `get_message` reads fail (`Unavailable`).
    failed_reads: std::sync::atomic::AtomicUsize,
    /// A claim is written and answered `Refused` (the store's retry of it, refused by that
    /// very write).
    claim_refused_by_itself: bool,
    /// A move to `failed` is written but answered with an error.
    lose_failed_answer: bool,
}

kirim_tests::pass_through! {
    impl MessageStore for Behind {
        async fn get_message(
            &self,
            tenant: &TenantId,
            id: &MessageId,
        ) -> Result<Option<MessageRecord>, StoreError> {
            use std::sync::atomic::Ordering::SeqCst;
            if self
                .failed_reads
                .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err(StoreError::Unavailable("throttled".into()));
            }
            self.inner.get_message(tenant, id).await
        }
        async fn peek_message(
            &self,
            tenant: &TenantId,
            id: &MessageId,
        ) -> Result<Option<std::sync::Arc<MessageRecord>>, StoreError> {
            match &self.snapshot {
                Some(m) => Ok(Some(std::sync::Arc::new(m.clone()))),
                None => self.inner.peek_message(tenant, id).await,
            }
        }
        async fn transition(
            &self,
            tenant: &TenantId,
            id: &MessageId,
            to: MessageStatus,
            change: &StatusChange,
            at: DateTime<Utc>,
        ) -> Result<Transition, StoreError> {
            let moved = self.inner.transition(tenant, id, to, change, at).await;
            if self.lose_claim_answer && to == MessageStatus::Sending {
                moved?;
                return Err(StoreError::Unavailable("the answer was lost".into()));
            }
            if self.claim_refused_by_itself && to == MessageStatus::Sending {
                moved?;
                return Ok(Transition::Refused);
            }
            if self.lose_failed_answer && to == MessageStatus::Failed {
                moved?;
                return Err(StoreError::Unavailable("the answer was lost".into()));
            }
            moved
        }
    }
}

/// A tenant with 10 credits and a message of it claimed (`sending`) with its wamid indexed,
/// as the dispatcher leaves one right before it records `sent`.
async fn claimed_with_wamid(
    deps: &kirim::service::Deps,
    clock: &Arc<kirim_tests::ManualClock>,
) -> (Tenant, MessageRecord, String) {
    let t = tenant(10);
    deps.tenants
        .create_tenant(&t, &key_for(&t), None)
        .await
        .unwrap();
    let (m, debit) = message_for(&t.id, clock.now());
    deps.messages.insert_with_debit(&m, &debit).await.unwrap();
    let wamid = format!("wamid.{}", ulid::Ulid::new());
    deps.messages
        .transition(
            &t.id,
            &m.id,
            MessageStatus::Sending,
            &StatusChange::default(),
            clock.now(),
        )
        .await
        .unwrap();
    deps.messages
        .index_wamid(&t.id, &m.id, &wamid, m.expires_at)
        .await
        .unwrap();
    (t, m, wamid)
}

fn report(m: &MessageRecord, wamid: &str, status: &str, pricing: bool) -> StatusReport {
    StatusReport {
        phone_number_id: None,
        wamid: Wamid::parse(wamid).expect("a wamid"),
        status: MetaStatus::parse(status).expect("a status"),
        timestamp: Some(Utc::now().timestamp()),
        callback: Some(Callback::new(m.id.clone(), Some(&m.tenant_id))),
        recipient: None,
        recipient_user_id: None,
        errors: Vec::new(),
        pricing: pricing
            .then(|| Pricing::parse("PMP", "utility", "regular"))
            .flatten(),
    }
}

async fn a_status_read_a_moment_behind_still_moves_the_message_once_and_counts_it_once(b: Backend) {
    let (_, mut deps, clock) = two_processes(b).await;
    let t = tenant(10);
    deps.tenants
        .create_tenant(&t, &key_for(&t), None)
        .await
        .unwrap();
    // Scheduled when it was accepted; the dispatcher has since sent it.
    let (mut m, debit) = message_for(&t.id, clock.now());
    m.status = MessageStatus::Scheduled;
    deps.messages.insert_with_debit(&m, &debit).await.unwrap();
    let wamid = format!("wamid.{}", ulid::Ulid::new());
    for to in [MessageStatus::Accepted, MessageStatus::Sending] {
        let moved = deps
            .messages
            .transition(&t.id, &m.id, to, &StatusChange::default(), clock.now())
            .await
            .unwrap();
        assert!(matches!(moved, Transition::Applied(_)), "{to:?}");
    }
    deps.messages
        .index_wamid(&t.id, &m.id, &wamid, m.expires_at)
        .await
        .unwrap();
    let sent = StatusChange {
        wamid: Some(wamid.clone()),
        ..Default::default()
    };
    deps.messages
        .transition(&t.id, &m.id, MessageStatus::Sent, &sent, clock.now())
        .await
        .unwrap();
    deps.messages = Arc::new(Behind {
        inner: deps.messages.clone(),
        snapshot: Some(m.clone()),
        lose_claim_answer: false,
        failed_reads: Default::default(),
        claim_refused_by_itself: false,
        lose_failed_answer: false,
    });

    let delivered = report(&m, &wamid, "delivered", true);
    assert_eq!(
        status::apply(&deps, Some(&t.id), &delivered).await.unwrap(),
        Applied::Yes,
        "seen scheduled, yet sent by now: delivered is tried, and applies"
    );
    let stored = |deps: &kirim::service::Deps| {
        let (messages, t, id) = (deps.messages.clone(), t.id.clone(), m.id.clone());
        async move { messages.get_message(&t, &id).await.unwrap().unwrap() }
    };
    let now = stored(&deps).await;
    assert_eq!(now.status, MessageStatus::Delivered);
    assert!(now.pricing.is_some(), "priced with the move");

    // Replays and an overtaken status, still seen as scheduled: refused by the store.
    for r in [
        report(&m, &wamid, "delivered", true),
        report(&m, &wamid, "sent", true),
    ] {
        assert_eq!(
            status::apply(&deps, Some(&t.id), &r).await.unwrap(),
            Applied::NoChange
        );
    }
    assert_eq!(
        status::apply(&deps, Some(&t.id), &report(&m, &wamid, "read", false))
            .await
            .unwrap(),
        Applied::Yes
    );
    assert_eq!(stored(&deps).await.status, MessageStatus::Read);
    let day = clock.now().date_naive();
    let usage = deps.usage.usage(&t.id, day, day).await.unwrap();
    assert_eq!(
        usage.iter().map(|u| u.messages).sum::<i64>(),
        1,
        "counted once: {usage:?}"
    );
}

/// Meta prices a message on whichever status it chooses and keeps no order: a `read`
/// without pricing may come first, and the overtaken `delivered` after it carry the price.
/// Seen read already, the `delivered` moves nothing, yet its pricing is counted, once.
async fn an_overtaken_status_that_is_the_first_to_carry_the_pricing_still_counts_it_once(
    b: Backend,
) {
    let (_, deps, clock) = two_processes(b).await;
    let t = tenant(10);
    deps.tenants
        .create_tenant(&t, &key_for(&t), None)
        .await
        .unwrap();
    let (m, debit) = message_for(&t.id, clock.now());
    deps.messages.insert_with_debit(&m, &debit).await.unwrap();
    let wamid = format!("wamid.{}", ulid::Ulid::new());
    deps.messages
        .transition(
            &t.id,
            &m.id,
            MessageStatus::Sending,
            &StatusChange::default(),
            clock.now(),
        )
        .await
        .unwrap();
    let sent = StatusChange {
        wamid: Some(wamid.clone()),
        ..Default::default()
    };
    deps.messages
        .transition(&t.id, &m.id, MessageStatus::Sent, &sent, clock.now())
        .await
        .unwrap();
    assert_eq!(
        status::apply(&deps, Some(&t.id), &report(&m, &wamid, "read", false))
            .await
            .unwrap(),
        Applied::Yes
    );
    // The first records its time (the message had none) with the pricing, in one write;
    // the second changes nothing.
    for applied in [Applied::Yes, Applied::NoChange] {
        assert_eq!(
            status::apply(&deps, Some(&t.id), &report(&m, &wamid, "delivered", true))
                .await
                .unwrap(),
            applied,
            "read stays read"
        );
    }
    let stored = deps
        .messages
        .get_message(&t.id, &m.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.status, MessageStatus::Read);
    assert!(stored.pricing.is_some(), "priced by the overtaken status");
    let day = clock.now().date_naive();
    let usage = deps.usage.usage(&t.id, day, day).await.unwrap();
    assert_eq!(
        usage.iter().map(|u| u.messages).sum::<i64>(),
        1,
        "counted once: {usage:?}"
    );
}

/// A claim written whose answer is lost: the job reads the message back, finds it
/// `sending` under its own claim token, and sends it, once. (Left to a retry, the next job's
/// new token would take the claim for another's and wait for the deadline: failed,
/// unrefunded, never sent.)
async fn a_claim_whose_answer_is_lost_is_found_to_be_this_jobs_and_the_message_is_sent(b: Backend) {
    let (_, mut deps, _) = two_processes(b).await;
    let (t, m, job) = text_queued(&mut deps).await;
    deps.messages = Arc::new(Behind {
        inner: deps.messages.clone(),
        snapshot: None,
        lose_claim_answer: true,
        failed_reads: Default::default(),
        claim_refused_by_itself: false,
        lose_failed_answer: false,
    });
    kirim::service::dispatch::handle(&deps, &job).await;
    let stored = deps
        .messages
        .get_message(&t.id, &m.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.status, MessageStatus::Sent, "{:?}", stored.error);
    assert_eq!(stored.attempts, 1);
}

/// A claim written whose answer is lost, and whose read-back fails too (throttled as the
/// claim was): read again while worth it, the claim is found to be this job's and the
/// message sent; when every read fails, the claim that may be this job's is given back, so
/// the next delivery claims it afresh and sends it — never left `sending` under a token no
/// job holds, for the deadline to fail unsent and unrefunded.
async fn a_lost_claim_answer_whose_read_back_fails_is_still_sent_once(b: Backend) {
    // (reads failing, the claim's answer: lost, or refused by the claim's own write)
    for (failing, refused) in [(1usize, false), (3, false), (3, true)] {
        let (_, mut deps, _) = two_processes(b).await;
        let (t, m, job) = text_queued(&mut deps).await;
        let meta = Arc::new(Accepting::default());
        deps.meta = meta.clone();
        let sends = || meta.sent.load(std::sync::atomic::Ordering::SeqCst);
        let plain = deps.messages.clone();
        deps.messages = Arc::new(Behind {
            inner: plain.clone(),
            snapshot: None,
            lose_claim_answer: !refused,
            failed_reads: std::sync::atomic::AtomicUsize::new(failing),
            claim_refused_by_itself: refused,
            lose_failed_answer: false,
        });
        kirim::service::dispatch::handle(&deps, &job).await;
        let stored = plain.get_message(&t.id, &m.id).await.unwrap().unwrap();
        if failing == 1 {
            assert_eq!(stored.status, MessageStatus::Sent, "{:?}", stored.error);
            assert_eq!(sends(), 1, "sent once");
            continue;
        }
        assert_eq!(
            stored.status,
            MessageStatus::Accepted,
            "given back: {:?}",
            stored.error
        );
        assert_eq!(sends(), 0, "given back unsent");
        // The job's next delivery, the store answering again.
        deps.messages = plain.clone();
        kirim::service::dispatch::handle(&deps, &job).await;
        let stored = plain.get_message(&t.id, &m.id).await.unwrap().unwrap();
        assert_eq!(stored.status, MessageStatus::Sent, "{:?}", stored.error);
        assert_eq!(sends(), 1, "sent once");
        // Delivered once more, the job sends nothing again.
        kirim::service::dispatch::handle(&deps, &job).await;
        assert_eq!(sends(), 1, "never twice");
    }
}

/// Meta accepted a send, then reports it `failed` with an account-level error (131042, a
/// payment problem) in a status webhook: the tenant is suspended, as when Meta answers a
/// send with it (its next sends refused instead of debited and failed one by one), with
/// Meta's code as the reason. A tenant the operator resumed after Meta's time of that
/// status is left as the operator set it.
async fn an_account_error_in_a_failed_status_suspends_the_tenant(b: Backend) {
    // (resumed by the operator after Meta's time, the failed move's answer lost)
    for (resumed_after, answer_lost) in [(false, false), (true, false), (false, true)] {
        let (_, mut deps, clock) = two_processes(b).await;
        let (t, m, wamid) = claimed_with_wamid(&deps, &clock).await;
        let sent = StatusChange {
            wamid: Some(wamid.clone()),
            ..Default::default()
        };
        deps.messages
            .transition(&t.id, &m.id, MessageStatus::Sent, &sent, clock.now())
            .await
            .unwrap();
        let mut failed = report(&m, &wamid, "failed", false);
        failed.errors = vec![kirim::domain::meta::MetaError {
            code: 131042,
            title: "Business eligibility payment issue".into(),
        }];
        if resumed_after {
            for to in [TenantStatus::Suspended, TenantStatus::Active] {
                deps.tenants
                    .set_status(&t.id, to, Some("operator"), clock.now())
                    .await
                    .unwrap();
            }
            failed.timestamp = Some(clock.now().timestamp() - 60);
        }
        if answer_lost {
            deps.messages = Arc::new(Behind {
                inner: deps.messages.clone(),
                snapshot: None,
                lose_claim_answer: false,
                failed_reads: Default::default(),
                claim_refused_by_itself: false,
                lose_failed_answer: true,
            });
        }
        status::apply(&deps, Some(&t.id), &failed).await.unwrap();
        let stored = deps
            .messages
            .get_message(&t.id, &m.id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stored.status, MessageStatus::Failed);
        let after = deps.tenants.get_tenant(&t.id).await.unwrap().unwrap();
        if resumed_after {
            assert_eq!(
                after.status,
                TenantStatus::Active,
                "the operator's resume stands"
            );
            continue;
        }
        assert_eq!(after.status, TenantStatus::Suspended);
        assert!(
            after
                .status_reason
                .as_deref()
                .is_some_and(|r| r.contains("131042")),
            "{:?}",
            after.status_reason
        );
    }
}

/// Meta accepted a send, then reports it `failed` with its spam limit on the number
/// (131048): the number the message went from is held — a second number named by the
/// message, or, for a message from before senders were kept, the one Meta's status names
/// (a default number without an item gets one) — never the tenant. A number an admin
/// resumed after Meta's time of that status stays resumed.
async fn a_number_limit_in_a_failed_status_holds_that_number_not_the_tenant(b: Backend) {
    // (the message names its sender, resumed by an admin after Meta's time)
    for (named, resumed_after) in [(true, false), (false, false), (false, true)] {
        let (_, deps, clock) = two_processes(b).await;
        let t = tenant(10);
        deps.tenants
            .create_tenant(&t, &key_for(&t), None)
            .await
            .unwrap();
        let second = format!("{}", 4_000_000 + kirim_tests::rand_u32() % 900_000);
        deps.numbers
            .add_phone_number(&PhoneNumberRecord {
                phone_number_id: second.clone(),
                ..PhoneNumberRecord::default_of(&t)
            })
            .await
            .unwrap();
        let (mut m, debit) = message_for(&t.id, clock.now());
        if named {
            m.from = Some(second.clone());
        }
        let sender = second.clone();
        deps.messages.insert_with_debit(&m, &debit).await.unwrap();
        let wamid = format!("wamid.{}", ulid::Ulid::new());
        let sent = StatusChange {
            wamid: Some(wamid.clone()),
            ..Default::default()
        };
        for to in [MessageStatus::Sending, MessageStatus::Sent] {
            deps.messages
                .transition(&t.id, &m.id, to, &sent, clock.now())
                .await
                .unwrap();
        }
        let mut failed = report(&m, &wamid, "failed", false);
        // The message's own sender wins over what the status names; without one, the
        // status's number (not the default).
        failed.phone_number_id = Some(if named {
            t.phone_number_id.clone()
        } else {
            second.clone()
        });
        failed.errors = vec![kirim::domain::meta::MetaError {
            code: 131048,
            title: "Spam rate limit hit".into(),
        }];
        if resumed_after {
            kirim::service::numbers::hold_for_meta(
                &deps,
                &t,
                &sender,
                (131048, "an earlier one"),
                "dispatcher",
                clock.now(),
            )
            .await;
            let (_, resumed) = kirim::service::numbers::resume(&deps, &t, &sender)
                .await
                .unwrap();
            assert!(resumed);
            failed.timestamp = Some(clock.now().timestamp() - 60);
        }
        status::apply(&deps, Some(&t.id), &failed).await.unwrap();
        let stored = deps
            .messages
            .get_message(&t.id, &m.id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stored.status, MessageStatus::Failed);
        let after = deps.tenants.get_tenant(&t.id).await.unwrap().unwrap();
        assert_eq!(after.status, TenantStatus::Active, "not the whole tenant");
        let hold_of = |pnid: String| {
            let deps = &deps;
            let t = &t;
            async move {
                deps.numbers
                    .get_phone_number(&t.id, &pnid)
                    .await
                    .unwrap()
                    .and_then(|n| n.hold)
            }
        };
        if resumed_after {
            assert_eq!(hold_of(sender).await, None, "the admin's resume stands");
            continue;
        }
        let hold = hold_of(sender.clone()).await.expect("held");
        assert_eq!((hold.code, hold.by.as_str()), (131048, "webhook"));
        assert_eq!(
            hold_of(t.phone_number_id.clone()).await,
            None,
            "only the number it went from"
        );
    }
}

/// A send served from a warm copy of the tenant that still names a default number the
/// operator has just removed does not write that number's item back (which would list it
/// again, accept it as `from` and send from it).
async fn a_send_from_a_stale_copy_never_brings_back_a_removed_default_number(b: Backend) {
    let (_, deps, _clock) = two_processes(b).await;
    let t = tenant(10);
    deps.tenants
        .create_tenant(&t, &key_for(&t), None)
        .await
        .unwrap();
    let second = format!("{}", 4_000_000 + kirim_tests::rand_u32() % 900_000);
    deps.numbers
        .add_phone_number(&PhoneNumberRecord {
            phone_number_id: second.clone(),
            ..PhoneNumberRecord::default_of(&t)
        })
        .await
        .unwrap();
    let stale = deps.tenants.get_tenant(&t.id).await.unwrap().unwrap();
    kirim::service::numbers::remove(&deps, &t.id, &t.phone_number_id)
        .await
        .unwrap();
    let _ = kirim::service::numbers::open_sender(&deps, &stale, None).await;
    assert_eq!(
        deps.numbers
            .get_phone_number(&t.id, &t.phone_number_id)
            .await
            .unwrap(),
        None,
        "the removed number stays removed"
    );
    let now = deps.tenants.get_tenant(&t.id).await.unwrap().unwrap();
    assert_eq!(now.phone_number_id, second, "the default moved on");
}

/// A message accepted before its number was held is not sent from it: failed
/// `sender_held`, refunded, nothing reaching Meta.
async fn a_queued_message_whose_number_was_held_meanwhile_fails_refunded_unsent(b: Backend) {
    use kirim::service::dispatch;
    let (_, mut deps, clock) = two_processes(b).await;
    let (t, m, job) = text_queued(&mut deps).await;
    let meta = Arc::new(Accepting::default());
    deps.meta = meta.clone();
    let before = deps
        .tenants
        .get_tenant(&t.id)
        .await
        .unwrap()
        .unwrap()
        .credits;
    kirim::service::numbers::hold_for_meta(
        &deps,
        &t,
        &t.phone_number_id,
        (131048, "Spam rate limit hit"),
        "dispatcher",
        clock.now(),
    )
    .await;
    dispatch::handle(&deps, &job).await;
    let stored = deps
        .messages
        .get_message(&t.id, &m.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.status, MessageStatus::Failed);
    assert_eq!(
        stored.error.map(|e| e.code),
        Some(kirim::domain::ErrorCode::Kirim("sender_held".into()))
    );
    assert_eq!(meta.sent.load(std::sync::atomic::Ordering::SeqCst), 0);
    let after = deps
        .tenants
        .get_tenant(&t.id)
        .await
        .unwrap()
        .unwrap()
        .credits;
    assert_eq!(after, before + m.price, "refunded");
}

/// A tenant (Meta accepting everything, a memory queue) whose user wrote in, and a session
/// text to them accepted: the tenant, the message and its job as queued.
async fn text_queued(deps: &mut kirim::service::Deps) -> (Tenant, MessageRecord, String) {
    deps.meta = Arc::new(Accepting::default());
    deps.queue = Arc::new(kirim::adapters::memory::MemoryQueue::new(
        std::time::Duration::from_secs(360),
        10,
    ));
    let pnid = format!("{}", 300_000 + kirim_tests::rand_u32() % 600_000);
    let req: kirim::service::accounts::NewTenant = serde_json::from_value(serde_json::json!({
        "name": "Kedai", "waba_id": "1", "phone_number_id": pnid,
        "meta_access_token": "EAAG", "credits": 2}))
    .unwrap();
    let (t, _) = kirim::service::accounts::create_tenant(&*deps, req)
        .await
        .unwrap();
    let to = kirim::domain::OptOutKey::parse("+60123456789").unwrap();
    kirim::service::contacts::user_wrote(&*deps, &t.id, &pnid, std::slice::from_ref(&to), None)
        .await
        .unwrap();
    let msg: kirim::service::send::SendRequest =
        serde_json::from_value(serde_json::json!({"to": "+60123456789", "text": {"body": "hi"}}))
            .unwrap();
    let m = kirim::service::send::send(&*deps, &t.id, msg)
        .await
        .unwrap();
    let job = deps
        .queue
        .receive(10, std::time::Duration::from_millis(500))
        .await
        .unwrap()
        .remove(0)
        .body;
    (t, m, job)
}

/// Meta, accepting every message, counting them.
#[derive(Default)]
struct Accepting {
    sent: std::sync::atomic::AtomicUsize,
}

#[async_trait]
impl MetaClient for Accepting {
    async fn send_message(
        &self,
        _: &str,
        _: &kirim::secret::Secret,
        _: &serde_json::Value,
    ) -> Result<MetaAccepted, MetaSendError> {
        self.sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(MetaAccepted {
            wamid: format!("wamid.{}", ulid::Ulid::new()),
        })
    }
    async fn list_templates(
        &self,
        _: &str,
        _: &kirim::secret::Secret,
        _: Option<&str>,
    ) -> Result<kirim::domain::template::MetaTemplatePage, MetaSendError> {
        Ok(Default::default())
    }
}

/// The dispatcher runs its checks before the claim on the facts its job carries, without
/// reading the message; for a message an earlier delivery of the job claimed (an
/// ambiguous send waiting for Meta or the sending deadline), a failing check is refused
/// by the message's status and the job stays for the deadline, never dropped.
async fn a_redelivered_job_whose_check_fails_leaves_a_claimed_message_to_the_sending_deadline(
    b: Backend,
) {
    use kirim::domain::{Content, OptOutKey, OptOutScope, OptOutSource};
    use kirim::service::jobs::{DispatchJob, MessageFacts, Outcome, QueueJob};
    use kirim::service::{dispatch, optouts};

    for with_facts in [true, false] {
        let (_, deps, clock) = two_processes(b).await;
        let t = tenant(10);
        deps.tenants
            .create_tenant(&t, &key_for(&t), None)
            .await
            .unwrap();
        let (m, debit) = message_for(&t.id, clock.now());
        deps.messages.insert_with_debit(&m, &debit).await.unwrap();
        // An earlier delivery claimed it and timed out at Meta.
        let claimed = deps
            .messages
            .transition(
                &t.id,
                &m.id,
                MessageStatus::Sending,
                &StatusChange {
                    count_attempt: true,
                    ..Default::default()
                },
                clock.now(),
            )
            .await
            .unwrap();
        assert!(matches!(claimed, Transition::Applied(_)));
        // The recipient opted out meanwhile: the check before the claim fails.
        optouts::add(
            &deps,
            &t.id,
            optouts::Recipient::of(OptOutKey::Phone(m.to.clone())),
            OptOutScope::All,
            OptOutSource::Api,
            "test",
            None,
        )
        .await
        .unwrap();
        let job = QueueJob::Send(DispatchJob {
            tenant_id: t.id.clone(),
            message_id: m.id.clone(),
            content: Content::Text { body: "hi".into() },
            request_id: None,
            send_at: None,
            broadcast_id: None,
            facts: with_facts.then(|| MessageFacts::of(&m)),
            retry_at: None,
            recheck: false,
            refused: None,
            refused_claim: None,
            key_hash: None,
        });
        // Left for its deadline: a recheck job of its own (this process has no queue to
        // send it on, so `handle` alone would fall back to a retry of the job received).
        let outcome = dispatch::handle_in_batch(&deps, &job.to_body().unwrap()).await;
        assert!(
            matches!(&outcome, Outcome::Again(body, _) if body.contains(r#""recheck":true"#)),
            "facts in the job: {with_facts}; {outcome:?}"
        );
        let stored = deps
            .messages
            .get_message(&t.id, &m.id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            stored.status,
            MessageStatus::Sending,
            "neither failed nor refunded"
        );
        let ledger = deps.ledger.entries(&t.id).await.unwrap();
        assert_eq!(ledger.len(), 1, "the debit only: {ledger:?}");
    }
}

/// Meta charges a message when it is delivered: a `sent` status's pricing is counted on no
/// path (Meta's `sent` before the dispatcher's, found by our id or by its wamid), and the
/// `delivered` one is, once, whichever way it finds the message.
async fn only_a_delivered_or_read_status_counts_metas_pricing_on_every_path(b: Backend) {
    let (_, deps, clock) = two_processes(b).await;
    let (t, m, wamid) = claimed_with_wamid(&deps, &clock).await;
    let by_wamid = |status: &str| {
        let mut r = report(&m, &wamid, status, true);
        r.callback = None;
        r
    };
    let counted = || {
        let (usage, t) = (deps.usage.clone(), t.id.clone());
        let day = clock.now().date_naive();
        async move {
            usage
                .usage(&t, day, day)
                .await
                .unwrap()
                .iter()
                .map(|u| u.messages)
                .sum::<i64>()
        }
    };
    // Meta's `sent` comes before the dispatcher recorded it: it moves the message, and its
    // pricing is not a charge yet.
    assert_eq!(
        status::apply(&deps, Some(&t.id), &report(&m, &wamid, "sent", true))
            .await
            .unwrap(),
        Applied::Yes
    );
    // Again, found by its wamid (no id echoed): refused, and not counted either.
    assert_eq!(
        status::apply(&deps, Some(&t.id), &by_wamid("sent"))
            .await
            .unwrap(),
        Applied::NoChange
    );
    let stored = deps
        .messages
        .get_message(&t.id, &m.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.status, MessageStatus::Sent);
    assert_eq!(stored.pricing, None, "not priced by a sent status");
    assert_eq!(counted().await, 0);
    // Delivered, found by its wamid: priced and counted, once.
    for r in [by_wamid("delivered"), report(&m, &wamid, "delivered", true)] {
        status::apply(&deps, Some(&t.id), &r).await.unwrap();
    }
    let stored = deps
        .messages
        .get_message(&t.id, &m.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.status, MessageStatus::Delivered);
    assert!(stored.pricing.is_some());
    assert_eq!(counted().await, 1);
}

/// A message the dispatcher failed and refunded (its transient errors exhausted) that Meta
/// then reports delivered after all (found by our id, or by its wamid) is counted in the
/// usage with 0 credits, as the ledger has it: it was counted at its price, which the
/// ledger had given back.
async fn a_refunded_failure_meta_then_delivers_is_counted_in_usage_with_no_credits(b: Backend) {
    let (_, deps, clock) = two_processes(b).await;
    for by_id in [true, false] {
        let (t, m, wamid) = claimed_with_wamid(&deps, &clock).await;
        assert!(m.price > 0);
        let refund = kirim::service::ledger::refund_entry(
            &deps,
            &t.id,
            &kirim::service::ledger::Charge::Message(m.id.clone()),
            m.price,
            "meta_transient_error",
            clock.now(),
        );
        let change = StatusChange {
            error: Some(MessageError {
                code: "meta_transient_error".into(),
                title: "temporary".into(),
            }),
            ..Default::default()
        };
        let failed = deps
            .messages
            .fail_and_refund(
                &t.id,
                &m.id,
                MessageStatus::Sending,
                &change,
                clock.now(),
                refund.as_ref(),
            )
            .await
            .unwrap();
        assert!(matches!(failed, Transition::Applied(_)));
        let mut delivered = report(&m, &wamid, "delivered", true);
        if !by_id {
            delivered.callback = None;
        }
        assert_eq!(
            status::apply(&deps, Some(&t.id), &delivered).await.unwrap(),
            Applied::Yes
        );
        let day = clock.now().date_naive();
        let rows = deps.usage.usage(&t.id, day, day).await.unwrap();
        let counted: (i64, i64) = rows
            .iter()
            .fold((0, 0), |(n, c), u| (n + u.messages, c + u.credits));
        let ledger: i64 = deps
            .ledger
            .entries(&t.id)
            .await
            .unwrap()
            .iter()
            .map(|e| e.amount)
            .sum();
        assert_eq!(ledger, 0, "debited, then refunded");
        assert_eq!(counted, (1, 0), "by id: {by_id}; {rows:?}");
    }
}

/// Meta's undeliverable `failed` whose move was written but answered with an error (read
/// back: this very move) is counted, as its write marked it: a later `delivered` takes the
/// count back by that mark, and took back another message's count where this one was
/// never counted.
async fn an_undeliverable_failure_whose_answer_was_lost_is_counted_as_its_mark_says(b: Backend) {
    let (_, mut deps, clock) = two_processes(b).await;
    let (t, m, wamid) = claimed_with_wamid(&deps, &clock).await;
    let sent = StatusChange {
        wamid: Some(wamid.clone()),
        ..Default::default()
    };
    deps.messages
        .transition(&t.id, &m.id, MessageStatus::Sent, &sent, clock.now())
        .await
        .unwrap();
    let store = deps.messages.clone();
    deps.messages = Arc::new(Behind {
        inner: store.clone(),
        snapshot: None,
        lose_claim_answer: false,
        failed_reads: Default::default(),
        claim_refused_by_itself: false,
        lose_failed_answer: true,
    });
    let mut failed = report(&m, &wamid, "failed", false);
    failed.errors = vec![kirim::domain::meta::MetaError {
        code: 131026,
        title: "Message undeliverable".into(),
    }];
    let day = failed.at(clock.now()).date_naive();
    assert_eq!(
        status::apply(&deps, Some(&t.id), &failed).await.unwrap(),
        Applied::Yes
    );
    let stored = store.get_message(&t.id, &m.id).await.unwrap().unwrap();
    assert!(stored.quality_counted, "{stored:?}");
    let undeliverable = || {
        let (quality, t) = (deps.quality.clone(), t.id.clone());
        async move { quality.totals(&t, day, day).await.unwrap().undeliverable }
    };
    assert_eq!(undeliverable().await, 1, "counted as marked");
    let mut delivered = report(&m, &wamid, "delivered", false);
    delivered.timestamp = Some(failed.at(clock.now()).timestamp() + 1);
    status::apply(&deps, Some(&t.id), &delivered).await.unwrap();
    assert_eq!(undeliverable().await, 0, "taken back");
}

/// Meta refusing one token (190, as for a token revoked at Meta) and taking any other.
struct RefusesToken {
    refused: String,
    taken: std::sync::atomic::AtomicUsize,
}

#[async_trait]
impl MetaClient for RefusesToken {
    async fn send_message(
        &self,
        _: &str,
        token: &kirim::secret::Secret,
        _: &serde_json::Value,
    ) -> Result<MetaAccepted, MetaSendError> {
        if token.expose() == self.refused {
            return Err(MetaSendError::Api {
                http_status: 401,
                code: 190,
                title: "Error validating access token: the session was invalidated".into(),
                is_transient: None,
            });
        }
        self.taken.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(MetaAccepted {
            wamid: format!("wamid.{}", ulid::Ulid::new()),
        })
    }
    async fn list_templates(
        &self,
        _: &str,
        _: &kirim::secret::Secret,
        _: Option<&str>,
    ) -> Result<kirim::domain::template::MetaTemplatePage, MetaSendError> {
        Ok(Default::default())
    }
}

/// The operator replaced a tenant's Meta token and revoked the old one at Meta while a warm
/// dispatcher still held the old copy (cached up to 5 minutes): Meta's 190 for it is checked
/// against the secret read afresh, and the message goes again with the new token, the
/// tenant not suspended (it was, and the message failed, before).
async fn a_token_replaced_while_a_warm_copy_held_the_old_one_is_sent_with_not_suspending(
    b: Backend,
) {
    use kirim::service::dispatch;
    use kirim::service::jobs::Outcome;
    let (_, mut deps, clock) = two_processes(b).await;
    let (t, m, job) = text_queued(&mut deps).await;
    let store = deps.secrets.store().clone();
    deps.secrets = Arc::new(kirim::service::SecretCache::new(
        store.clone(),
        std::time::Duration::from_secs(300),
    ));
    // Past the 5 minutes after onboarding in which the dispatcher reads the token afresh.
    clock.advance(chrono::Duration::minutes(6));
    let old = deps
        .secrets
        .current(&t.meta_token_secret)
        .await
        .unwrap()
        .expect("the token, now cached");
    store
        .put_secret(
            &t.meta_token_secret,
            &kirim::secret::Secret::new("EAAG-the-new-token"),
        )
        .await
        .unwrap();
    let meta = Arc::new(RefusesToken {
        refused: old.expose().to_owned(),
        taken: Default::default(),
    });
    deps.meta = meta.clone();
    // Tried again as a fresh queue message (its receives not spent).
    let first = dispatch::handle_in_batch(&deps, &job).await;
    assert!(matches!(first, Outcome::Again(..)), "{first:?}");
    let held = deps
        .messages
        .get_message(&t.id, &m.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        held.status,
        MessageStatus::Accepted,
        "given back: {:?}",
        held.error
    );
    let tenant = deps.tenants.get_tenant(&t.id).await.unwrap().unwrap();
    assert_eq!(tenant.status, TenantStatus::Active, "not suspended");
    assert_eq!(dispatch::handle(&deps, &job).await, Outcome::Done);
    let sent = deps
        .messages
        .get_message(&t.id, &m.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(sent.status, MessageStatus::Sent);
    assert_eq!(
        meta.taken.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "sent once, with the new token"
    );
    // A token Meta refuses that is still the account's suspends as before.
    let (t2, _, job2) = text_queued(&mut deps).await;
    let current = deps
        .secrets
        .current(&t2.meta_token_secret)
        .await
        .unwrap()
        .unwrap();
    deps.meta = Arc::new(RefusesToken {
        refused: current.expose().to_owned(),
        taken: Default::default(),
    });
    clock.advance(chrono::Duration::minutes(6));
    assert_eq!(dispatch::handle(&deps, &job2).await, Outcome::Done);
    let tenant = deps.tenants.get_tenant(&t2.id).await.unwrap().unwrap();
    assert_eq!(tenant.status, TenantStatus::Suspended);
}

/// The operator replaced a tenant's Meta token through its route
/// (`meta_token::replace`, in another process) while a warm dispatcher held the old copy
/// (cached up to 5 minutes, the tenant's status unchanged for longer): the replacement's
/// time on the tenant item has the dispatcher read the token afresh, so its next send goes
/// with the new token at once — not with the old one, refused by Meta once revoked.
async fn a_token_the_operator_replaced_is_sent_with_at_once_by_a_warm_dispatcher(b: Backend) {
    use kirim::service::dispatch;
    use kirim::service::jobs::Outcome;
    let (operator, mut deps, clock) = two_processes(b).await;
    let (t, m, job) = text_queued(&mut deps).await;
    let store = deps.secrets.store().clone();
    deps.secrets = Arc::new(kirim::service::SecretCache::new(
        store,
        std::time::Duration::from_secs(300),
    ));
    // Past the 5 minutes after onboarding in which the dispatcher reads the token afresh.
    clock.advance(chrono::Duration::minutes(6));
    let old = deps
        .secrets
        .current(&t.meta_token_secret)
        .await
        .unwrap()
        .expect("the token, now cached");
    let body: kirim::service::meta_token::NewMetaToken =
        serde_json::from_value(serde_json::json!({"meta_access_token": "EAAG-the-new-token"}))
            .unwrap();
    let at = kirim::service::meta_token::replace(&operator, &t.id, body)
        .await
        .unwrap();
    assert_eq!(at, clock.now());
    // Meta refuses the old token (revoked at once by the operator).
    let meta = Arc::new(RefusesToken {
        refused: old.expose().to_owned(),
        taken: Default::default(),
    });
    deps.meta = meta.clone();
    // (The clock is not moved on: the cache dates its copy by the real time since it was
    // read, counted back from the test clock's now.)
    assert_eq!(
        dispatch::handle_in_batch(&deps, &job).await,
        Outcome::Done,
        "sent at the first try"
    );
    let sent = deps
        .messages
        .get_message(&t.id, &m.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(sent.status, MessageStatus::Sent, "{:?}", sent.error);
    assert_eq!(meta.taken.load(std::sync::atomic::Ordering::SeqCst), 1);
    let tenant = deps.tenants.get_tenant(&t.id).await.unwrap().unwrap();
    assert_eq!(tenant.status, TenantStatus::Active);
    assert_eq!(tenant.meta_token_changed_at, Some(at));
}

on_both_backends!(
    a_token_the_operator_replaced_is_sent_with_at_once_by_a_warm_dispatcher,
    an_undeliverable_failure_whose_answer_was_lost_is_counted_as_its_mark_says,
    a_refunded_failure_meta_then_delivers_is_counted_in_usage_with_no_credits,
    a_token_replaced_while_a_warm_copy_held_the_old_one_is_sent_with_not_suspending,
    only_a_delivered_or_read_status_counts_metas_pricing_on_every_path,
    a_claim_whose_answer_is_lost_is_found_to_be_this_jobs_and_the_message_is_sent,
    a_lost_claim_answer_whose_read_back_fails_is_still_sent_once,
    an_account_error_in_a_failed_status_suspends_the_tenant,
    a_number_limit_in_a_failed_status_holds_that_number_not_the_tenant,
    a_queued_message_whose_number_was_held_meanwhile_fails_refunded_unsent,
    a_send_from_a_stale_copy_never_brings_back_a_removed_default_number,
    an_overtaken_status_that_is_the_first_to_carry_the_pricing_still_counts_it_once,
    a_status_read_a_moment_behind_still_moves_the_message_once_and_counts_it_once,
    a_redelivered_job_whose_check_fails_leaves_a_claimed_message_to_the_sending_deadline,
);
