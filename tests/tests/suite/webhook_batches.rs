//! A webhook body of many statuses (Meta batches them, up to 3 MB a body): applied
//! concurrently, a wamid's own statuses in the order listed, its inbound messages and
//! preferences after them in Meta's time order, and its summary counted exactly.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use kirim::config::Backend;
use kirim::domain::meta::Callback;
use kirim::domain::{MessageId, MessageRecord, MessageStatus, OptOutKey, PhoneNumber, TenantId};
use kirim::ports::*;
use kirim::service::webhook::{self, WebhookSummary};
use kirim::service::Deps;
use kirim::store_error::StoreError;
use serde_json::{json, Value};

use crate::caches::two_processes;
use crate::contract::{key_for, message_for, tenant};

/// A tenant with `n` messages sent (each with its wamid recorded and indexed), as the
/// dispatcher leaves them before Meta's statuses come: (tenant, [(message, wamid)]).
pub(crate) async fn sent_messages(
    deps: &Deps,
    now: DateTime<Utc>,
    n: usize,
) -> (Tenant, Vec<(MessageRecord, String)>) {
    let t = tenant(10 * n as i64);
    deps.tenants
        .create_tenant(&t, &key_for(&t), None)
        .await
        .unwrap();
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let (m, debit) = message_for(&t.id, now);
        deps.messages.insert_with_debit(&m, &debit).await.unwrap();
        let wamid = format!("wamid.{}", ulid::Ulid::new());
        deps.messages
            .transition(
                &t.id,
                &m.id,
                MessageStatus::Sending,
                &StatusChange::default(),
                now,
            )
            .await
            .unwrap();
        deps.messages
            .index_wamid(&t.id, &m.id, &wamid, m.expires_at)
            .await
            .unwrap();
        let sent = StatusChange {
            wamid: Some(wamid.clone()),
            ..Default::default()
        };
        deps.messages
            .transition(&t.id, &m.id, MessageStatus::Sent, &sent, now)
            .await
            .unwrap();
        out.push((m, wamid));
    }
    (t, out)
}

/// One of Meta's statuses of message `m`, as Kirim's send makes Meta echo its ids.
pub(crate) fn status_of(
    m: &MessageRecord,
    wamid: &str,
    status: &str,
    at: i64,
    priced: bool,
) -> Value {
    let mut s = json!({"id": wamid, "status": status, "timestamp": at.to_string(),
        "recipient_id": "60123456789",
        "biz_opaque_callback_data": Callback::new(m.id.clone(), Some(&m.tenant_id)).text()});
    if priced {
        s["pricing"] = json!({"billable": true, "pricing_model": "PMP", "category": "utility", "type": "regular"});
    }
    s
}

/// A notification of `statuses` and inbound `messages` for `phone_number_id`.
pub(crate) fn body(phone_number_id: &str, statuses: Vec<Value>, messages: Vec<Value>) -> Vec<u8> {
    let mut value = json!({"messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550000000", "phone_number_id": phone_number_id},
        "statuses": statuses});
    if !messages.is_empty() {
        value["contacts"] = json!([{"profile": {"name": "Aminah"}, "wa_id": "60123457201"}]);
        value["messages"] = json!(messages);
    }
    json!({"object": "whatsapp_business_account", "entry": [{"id": "1000001",
        "changes": [{"field": "messages", "value": value}]}]})
    .to_string()
    .into_bytes()
}

/// The lists merged in a shuffled order that keeps each list's own order (a small
/// deterministic generator: the same body on every run).
fn interleaved(mut lists: Vec<Vec<Value>>) -> Vec<Value> {
    for l in &mut lists {
        l.reverse();
    }
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut out = Vec::new();
    while lists.iter().any(|l| !l.is_empty()) {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let live: Vec<usize> = (0..lists.len()).filter(|i| !lists[*i].is_empty()).collect();
        let i = live[(seed % live.len() as u64) as usize];
        if let Some(v) = lists[i].pop() {
            out.push(v);
        }
    }
    out
}

async fn a_body_of_300_statuses_ends_each_message_read_counted_once(b: Backend) {
    let (deps, _, clock) = two_processes(b).await;
    let now = clock.now();
    let (t, messages) = sent_messages(&deps, now, 100).await;
    let at = now.timestamp();
    // Each message: delivered and read (both priced, as Meta prices them), and the read
    // again; the messages' statuses shuffled among each other, each message's in order.
    let per_message: Vec<Vec<Value>> = messages
        .iter()
        .map(|(m, w)| {
            vec![
                status_of(m, w, "delivered", at, true),
                status_of(m, w, "read", at + 1, true),
                status_of(m, w, "read", at + 1, true),
            ]
        })
        .collect();
    let mut statuses = interleaved(per_message);
    // And statuses of 5 messages Kirim does not know (kept, in case).
    for _ in 0..5 {
        statuses.push(
            json!({"id": format!("wamid.{}", ulid::Ulid::new()), "status": "delivered",
            "timestamp": at.to_string(), "recipient_id": "60123456789"}),
        );
    }
    let summary = webhook::apply(&deps, &body(&t.phone_number_id, statuses, vec![]))
        .await
        .unwrap();
    assert_eq!(
        summary,
        WebhookSummary {
            applied: 200,
            ignored: 100,
            unknown: 5,
            skipped: 0,
            errors: 0
        }
    );
    for (m, _) in &messages {
        let stored = deps
            .messages
            .get_message(&t.id, &m.id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stored.status, MessageStatus::Read, "{:?}", stored.events);
        let moves: Vec<MessageStatus> = stored.events.iter().map(|e| e.status).collect();
        assert_eq!(
            moves,
            [
                MessageStatus::Accepted,
                MessageStatus::Sending,
                MessageStatus::Sent,
                MessageStatus::Delivered,
                MessageStatus::Read
            ],
            "each status once, in order"
        );
        assert!(stored.pricing.is_some());
    }
    let day = now.date_naive();
    let usage = deps.usage.usage(&t.id, day, day).await.unwrap();
    assert_eq!(
        usage.iter().map(|u| u.messages).sum::<i64>(),
        100,
        "each message counted once: {usage:?}"
    );
}

fn text_from(from: &str, text: &str, at: i64) -> Value {
    json!({"from": from, "id": format!("wamid.in.{}", ulid::Ulid::new()), "timestamp": at.to_string(),
        "type": "text", "text": {"body": text}})
}

async fn a_body_of_statuses_with_a_stop_then_a_start_listed_first_ends_opted_in(b: Backend) {
    let (deps, _, clock) = two_processes(b).await;
    let now = clock.now();
    let (t, messages) = sent_messages(&deps, now, 20).await;
    let at = now.timestamp();
    let statuses = messages
        .iter()
        .flat_map(|(m, w)| {
            [
                status_of(m, w, "delivered", at - 5, false),
                status_of(m, w, "read", at - 4, false),
            ]
        })
        .collect();
    // The START (later) listed before the STOP: applied in Meta's time order, START last.
    let inbound = vec![
        text_from("60123457201", "START", at - 1),
        text_from("60123457201", "STOP", at - 2),
    ];
    let summary = webhook::apply(&deps, &body(&t.phone_number_id, statuses, inbound))
        .await
        .unwrap();
    assert_eq!(summary.errors, 0, "{summary:?}");
    assert_eq!(summary.applied, 40 + 2, "{summary:?}");
    let key = OptOutKey::Phone(PhoneNumber::parse("+60123457201").unwrap());
    assert_eq!(
        deps.opt_outs.get_opt_out(&t.id, &key).await.unwrap(),
        None,
        "the START, newer, stands"
    );
    for (m, _) in &messages {
        let stored = deps
            .messages
            .get_message(&t.id, &m.id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stored.status, MessageStatus::Read);
    }
}

/// The real message store, counting the moves in flight at once (each yields a few times
/// first, as a call to DynamoDB would), and the order each message's moves started and
/// ended in.
struct InFlight {
    inner: Arc<dyn MessageStore>,
    now: AtomicUsize,
    most: AtomicUsize,
    /// Per message: ("start"|"end", status) in the order they happened.
    log: Mutex<HashMap<MessageId, Vec<(&'static str, MessageStatus)>>>,
    /// Each read and move takes this long (a stand-in for DynamoDB's latency).
    latency: Option<std::time::Duration>,
    /// How many more late statuses' writes to refuse (as if the message changed just
    /// before each), and how many were asked for.
    refuse_overtaken: AtomicUsize,
    overtaken_writes: AtomicUsize,
}

impl InFlight {
    fn note(&self, id: &MessageId, what: &'static str, to: MessageStatus) {
        if let Ok(mut log) = self.log.lock() {
            log.entry(id.clone()).or_default().push((what, to));
        }
    }
}

kirim_tests::pass_through! {
    impl MessageStore for InFlight {
        async fn peek_message(
            &self,
            tenant: &TenantId,
            id: &MessageId,
        ) -> Result<Option<Arc<MessageRecord>>, StoreError> {
            if let Some(l) = self.latency {
                tokio::time::sleep(l).await;
            }
            self.inner.peek_message(tenant, id).await
        }
        async fn transition(
            &self,
            tenant: &TenantId,
            id: &MessageId,
            to: MessageStatus,
            change: &StatusChange,
            at: DateTime<Utc>,
        ) -> Result<Transition, StoreError> {
            let in_flight = self.now.fetch_add(1, SeqCst) + 1;
            self.most.fetch_max(in_flight, SeqCst);
            self.note(id, "start", to);
            for _ in 0..3 {
                tokio::task::yield_now().await;
            }
            if let Some(l) = self.latency {
                tokio::time::sleep(l).await;
            }
            let moved = self.inner.transition(tenant, id, to, change, at).await;
            self.note(id, "end", to);
            self.now.fetch_sub(1, SeqCst);
            moved
        }
        async fn record_overtaken(
            &self,
            seen: &MessageRecord,
            event: kirim::domain::StatusEvent,
            priced: Option<&PricedMessage<'_>>,
        ) -> Result<bool, StoreError> {
            self.overtaken_writes.fetch_add(1, SeqCst);
            let refused = self
                .refuse_overtaken
                .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if refused {
                return Ok(false);
            }
            self.inner.record_overtaken(seen, event, priced).await
        }
    }
}

async fn a_body_s_statuses_are_applied_several_at_once_each_message_s_in_order(b: Backend) {
    let (mut deps, _, clock) = two_processes(b).await;
    let now = clock.now();
    let (t, messages) = sent_messages(&deps, now, 40).await;
    let store = Arc::new(InFlight {
        inner: deps.messages.clone(),
        now: AtomicUsize::new(0),
        most: AtomicUsize::new(0),
        log: Mutex::new(HashMap::new()),
        latency: None,
        refuse_overtaken: AtomicUsize::new(0),
        overtaken_writes: AtomicUsize::new(0),
    });
    deps.messages = store.clone();
    let at = now.timestamp();
    let statuses = interleaved(
        messages
            .iter()
            .map(|(m, w)| {
                vec![
                    status_of(m, w, "delivered", at, false),
                    status_of(m, w, "read", at + 1, false),
                ]
            })
            .collect(),
    );
    let summary = webhook::apply(&deps, &body(&t.phone_number_id, statuses, vec![]))
        .await
        .unwrap();
    assert_eq!(summary.applied, 80, "{summary:?}");
    let most = store.most.load(SeqCst);
    assert!(most > 1, "moves in flight at once: at most {most}");
    assert!(
        most <= webhook::STATUSES_IN_FLIGHT,
        "at most {} at once: {most}",
        webhook::STATUSES_IN_FLIGHT
    );
    let log = store.log.lock().unwrap();
    for (m, _) in &messages {
        assert_eq!(
            log.get(&m.id).cloned().unwrap_or_default(),
            [
                ("start", MessageStatus::Delivered),
                ("end", MessageStatus::Delivered),
                ("start", MessageStatus::Read),
                ("end", MessageStatus::Read)
            ],
            "one message's moves one after another, in the order listed"
        );
    }
}

/// Meta's statuses out of order (the sandbox's number 0008 sends them so): a `delivered`
/// after the `read` records its time (the API's `delivered_at`), the status stays `read`; a
/// second one, and a `failed` after the `read`, change nothing.
async fn a_delivered_after_read_keeps_its_time_and_the_message_stays_read(b: Backend) {
    let (deps, _, clock) = two_processes(b).await;
    let now = clock.now();
    let (t, messages) = sent_messages(&deps, now, 1).await;
    let (m, w) = &messages[0];
    let at = now.timestamp();
    let one = |status: Value| body(&t.phone_number_id, vec![status], vec![]);
    let apply = |raw: Vec<u8>| {
        let deps = deps.clone();
        async move { webhook::apply(&deps, &raw).await.unwrap() }
    };
    let stored = || {
        let (deps, t, id) = (deps.clone(), t.id.clone(), m.id.clone());
        async move { deps.messages.get_message(&t, &id).await.unwrap().unwrap() }
    };
    assert_eq!(
        apply(one(status_of(m, w, "read", at - 2, false)))
            .await
            .applied,
        1
    );
    let read = stored().await;
    assert!(read
        .events
        .iter()
        .all(|e| e.status != MessageStatus::Delivered));
    assert_eq!(
        apply(one(status_of(m, w, "delivered", at - 3, false)))
            .await
            .applied,
        1,
        "its time recorded"
    );
    let after = stored().await;
    assert_eq!(after.status, MessageStatus::Read);
    let delivered: Vec<_> = after
        .events
        .iter()
        .filter(|e| e.status == MessageStatus::Delivered)
        .map(|e| e.at.timestamp())
        .collect();
    assert_eq!(delivered, [at - 3], "delivered_at is the status's own time");
    // The API's message view shows `events` as stored: in time order.
    let statuses: Vec<&str> = after.events.iter().map(|e| e.status.as_str()).collect();
    assert_eq!(
        statuses,
        ["accepted", "sending", "sent", "delivered", "read"]
    );
    // Again (Meta repeats it), another `delivered`, a `failed`: nothing changes.
    for status in [
        status_of(m, w, "delivered", at - 3, false),
        status_of(m, w, "delivered", at - 1, true),
        json!({"id": w, "status": "failed", "timestamp": at.to_string(), "recipient_id": "60123456789",
            "biz_opaque_callback_data": Callback::new(m.id.clone(), Some(&m.tenant_id)).text(),
            "errors": [{"code": 131026, "title": "Message undeliverable"}]}),
    ] {
        let summary = apply(one(status)).await;
        assert_eq!((summary.applied, summary.errors), (0, 0), "{summary:?}");
    }
    let last = stored().await;
    assert_eq!(last.status, MessageStatus::Read);
    assert_eq!(last.events, after.events, "unchanged");
    assert_eq!(last.error, None);
    assert!(
        last.pricing.is_some(),
        "the later delivered's pricing, counted once"
    );
}

/// A message whose send's answer was lost (`sending`), settled by Meta's `read` and then
/// its `sent`: the `sent` records its time (`sent_at`), the status stays `read`.
async fn a_sent_after_read_of_a_message_without_one_keeps_its_time(b: Backend) {
    let (deps, _, clock) = two_processes(b).await;
    let now = clock.now();
    let t = tenant(10);
    deps.tenants
        .create_tenant(&t, &key_for(&t), None)
        .await
        .unwrap();
    let (m, debit) = message_for(&t.id, now);
    deps.messages.insert_with_debit(&m, &debit).await.unwrap();
    deps.messages
        .transition(
            &t.id,
            &m.id,
            MessageStatus::Sending,
            &StatusChange::default(),
            now,
        )
        .await
        .unwrap();
    let w = format!("wamid.{}", ulid::Ulid::new());
    let at = now.timestamp();
    for (status, applied) in [("read", 1), ("sent", 1), ("sent", 0)] {
        let summary = webhook::apply(
            &deps,
            &body(
                &t.phone_number_id,
                vec![status_of(&m, &w, status, at - 5, false)],
                vec![],
            ),
        )
        .await
        .unwrap();
        assert_eq!(summary.applied, applied, "{status}: {summary:?}");
    }
    let stored = deps
        .messages
        .get_message(&t.id, &m.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.status, MessageStatus::Read);
    let moves: Vec<_> = stored.events.iter().map(|e| e.status).collect();
    assert_eq!(
        moves,
        [
            MessageStatus::Accepted,
            MessageStatus::Sending,
            MessageStatus::Sent,
            MessageStatus::Read
        ]
    );
}

/// A message the dispatcher failed and refunded while its send's outcome was in doubt
/// (`sending`, no wamid), as `(tenant, message, the wamid Meta gave it)`.
async fn a_refunded_failure(deps: &Deps, now: DateTime<Utc>) -> (Tenant, MessageRecord, String) {
    let t = tenant(10);
    deps.tenants
        .create_tenant(&t, &key_for(&t), None)
        .await
        .unwrap();
    let (m, debit) = message_for(&t.id, now);
    deps.messages.insert_with_debit(&m, &debit).await.unwrap();
    deps.messages
        .transition(
            &t.id,
            &m.id,
            MessageStatus::Sending,
            &StatusChange::default(),
            now,
        )
        .await
        .unwrap();
    let refund = LedgerEntry {
        id: kirim::domain::new_id(),
        tenant_id: t.id.clone(),
        amount: m.price,
        kind: LedgerKind::Refund,
        reference: Some("message not accepted by meta".into()),
        message_id: Some(m.id.clone()),
        at: now,
        expires_at: Some(now.timestamp() + 3600),
    };
    let failure = StatusChange {
        error: Some(kirim::domain::MessageError {
            code: kirim::domain::ErrorCode::Meta(131000),
            title: "Something went wrong".into(),
        }),
        ..Default::default()
    };
    let failed = deps
        .messages
        .fail_and_refund(
            &t.id,
            &m.id,
            MessageStatus::Sending,
            &failure,
            now,
            Some(&refund),
        )
        .await
        .unwrap();
    assert!(matches!(failed, Transition::Applied(_)), "{failed:?}");
    (t, m, format!("wamid.{}", ulid::Ulid::new()))
}

/// `(status, at)` of each event, as stored or shown.
fn times(events: &[kirim::domain::StatusEvent]) -> Vec<(&'static str, i64)> {
    events
        .iter()
        .map(|e| (e.status.as_str(), e.at.timestamp()))
        .collect()
}

/// A message the dispatcher failed and refunded while its send's outcome was in doubt, that
/// Meta then reports `sent` and `delivered` after all: Meta's `sent` (which cannot move a
/// failed message) records its time, so the delivered message shows when it was sent (its
/// `events`, `sent_at` in `recipients.csv`), not a delivered message never sent.
async fn a_refunded_failure_meta_sends_and_delivers_after_all_shows_meta_s_sent_time(b: Backend) {
    let (deps, _, clock) = two_processes(b).await;
    let now = clock.now();
    let (t, m, w) = a_refunded_failure(&deps, now).await;
    let at = now.timestamp();
    for (status, when) in [("sent", at - 1), ("delivered", at + 5)] {
        let summary = webhook::apply(
            &deps,
            &body(
                &t.phone_number_id,
                vec![status_of(&m, &w, status, when, false)],
                vec![],
            ),
        )
        .await
        .unwrap();
        assert_eq!(summary.applied, 1, "{status}: {summary:?}");
    }
    let stored = deps
        .messages
        .get_message(&t.id, &m.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.status, MessageStatus::Delivered);
    assert!(stored.refunded, "still refunded");
    let want = [
        ("accepted", at),
        ("sending", at),
        ("sent", at - 1),
        ("failed", at),
        ("delivered", at + 5),
    ];
    assert_eq!(times(&stored.events), want, "Meta's sent, in its place");
    let view = kirim::http::MessageView::from(&stored);
    assert_eq!(times(&view.events), want, "shown as stored");
    let sent_at = chrono::DateTime::from_timestamp(at - 1, 0)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let row = kirim::service::broadcasts::csv_row(&stored);
    assert!(row.contains(&format!(",{sent_at},")), "{row}");
}

/// A refunded failure (as above) that Meta reports `delivered` with no `sent` before it:
/// shown with a `sent` all the same, where Meta's would go and at its failure's time (it
/// had reached Meta by then; nothing stored), until Meta's own `sent` comes and takes its
/// place with Meta's time.
async fn a_refunded_failure_meta_delivers_without_a_sent_shows_one_until_meta_s_comes(b: Backend) {
    let (deps, _, clock) = two_processes(b).await;
    let now = clock.now();
    let (t, m, w) = a_refunded_failure(&deps, now).await;
    let at = now.timestamp();
    let apply = |status: &'static str, when: i64| {
        let (deps, t, m, w) = (&deps, &t, &m, &w);
        async move {
            webhook::apply(
                deps,
                &body(
                    &t.phone_number_id,
                    vec![status_of(m, w, status, when, false)],
                    vec![],
                ),
            )
            .await
            .unwrap()
        }
    };
    assert_eq!(apply("delivered", at + 5).await.applied, 1);
    let stored = || async {
        deps.messages
            .get_message(&t.id, &m.id)
            .await
            .unwrap()
            .unwrap()
    };
    let delivered = stored().await;
    assert_eq!(delivered.status, MessageStatus::Delivered);
    assert_eq!(
        times(&delivered.events),
        [
            ("accepted", at),
            ("sending", at),
            ("failed", at),
            ("delivered", at + 5)
        ],
        "stored as it happened"
    );
    let shown = [
        ("accepted", at),
        ("sending", at),
        ("sent", at),
        ("failed", at),
        ("delivered", at + 5),
    ];
    let view = kirim::http::MessageView::from(&delivered);
    assert_eq!(times(&view.events), shown, "a sent, at its failure's time");
    let failed_at = delivered
        .events
        .iter()
        .find(|e| e.status == MessageStatus::Failed)
        .map(|e| e.at)
        .unwrap();
    assert_eq!(
        view.events.get(2).map(|e| e.at),
        Some(failed_at),
        "its very time"
    );
    let row = kirim::service::broadcasts::csv_row(&delivered);
    let failed_secs = failed_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    assert!(row.contains(&format!(",{failed_secs},")), "{row}");
    // Meta's own `sent` comes late: recorded, and shown instead.
    assert_eq!(apply("sent", at - 1).await.applied, 1);
    let late = stored().await;
    let with_meta_s = [
        ("accepted", at),
        ("sending", at),
        ("sent", at - 1),
        ("failed", at),
        ("delivered", at + 5),
    ];
    assert_eq!(times(&late.events), with_meta_s);
    assert_eq!(
        times(&kirim::http::MessageView::from(&late).events),
        with_meta_s
    );
}

/// The time to answer one signed body of 1,000 `delivered` statuses (priced, as Meta
/// sends them) of known messages, through the HTTP route: not a test (BENCHMARKS.md
/// "A body of many statuses"). `cargo test -p kirim-tests --test suite --
/// --ignored --nocapture time_to_answer`.
async fn time_to_answer_a_body_of_1000_statuses(b: Backend) {
    let app = kirim_tests::spawn_app(b).await;
    let t = app.onboard(5000).await;
    let tenant = TenantId::from_trusted(t.tenant_id.clone());
    let deps = app.app.deps.clone();
    let now = deps.clock.now();
    // Made 16 at a time (not measured).
    let mut messages = Vec::new();
    for _ in 0..(1000 / 16 + 1) {
        let made = futures::future::join_all((0..16).map(|_| {
            let (deps, tenant) = (deps.clone(), tenant.clone());
            async move {
                let (m, debit) = message_for(&tenant, now);
                deps.messages.insert_with_debit(&m, &debit).await.unwrap();
                let wamid = format!("wamid.{}", ulid::Ulid::new());
                for to in [MessageStatus::Sending, MessageStatus::Sent] {
                    let change = StatusChange {
                        wamid: (to == MessageStatus::Sent).then(|| wamid.clone()),
                        ..Default::default()
                    };
                    deps.messages
                        .transition(&tenant, &m.id, to, &change, now)
                        .await
                        .unwrap();
                }
                deps.messages
                    .index_wamid(&tenant, &m.id, &wamid, m.expires_at)
                    .await
                    .unwrap();
                (m, wamid)
            }
        }))
        .await;
        messages.extend(made);
    }
    messages.truncate(1000);
    let at = now.timestamp();
    let statuses: Vec<Value> = messages
        .iter()
        .map(|(m, w)| status_of(m, w, "delivered", at, true))
        .collect();
    let raw = String::from_utf8(body(&t.phone_number_id, statuses, vec![])).unwrap();
    let started = std::time::Instant::now();
    let res = app
        .http
        .post(app.url("/webhooks/meta"))
        .header("content-type", "application/json")
        .header(
            "x-hub-signature-256",
            kirim_tests::sign_with(kirim_tests::META_APP_SECRET, raw.as_bytes()),
        )
        .body(raw.clone())
        .send()
        .await
        .unwrap();
    let took = started.elapsed();
    let status = res.status();
    let answer: Value = res.json().await.unwrap();
    println!(
        "{b:?}: a body of 1,000 statuses ({} bytes) answered {status} in {:.2} s, {} in flight: {answer}",
        raw.len(),
        took.as_secs_f64(),
        webhook::STATUSES_IN_FLIGHT
    );
    assert_eq!(answer["summary"]["applied"], 1000, "{answer}");
}

#[tokio::test]
#[ignore]
async fn time_to_answer_a_body_of_1000_statuses_on_memory() {
    time_to_answer_a_body_of_1000_statuses(Backend::Memory).await
}

#[tokio::test]
#[ignore]
async fn time_to_answer_a_body_of_1000_statuses_on_moto() {
    time_to_answer_a_body_of_1000_statuses(Backend::Aws).await
}

/// [`time_to_answer_a_body_of_1000_statuses`] on the memory store with 5 ms added to each
/// read and move of a message (2 of a status's calls): what the statuses in flight save
/// where a store's latency, not its CPU, is the cost (DynamoDB's; moto's is its CPU).
#[tokio::test]
#[ignore]
async fn time_to_apply_a_body_of_1000_statuses_with_5_ms_a_call() {
    let (mut deps, _, clock) = two_processes(Backend::Memory).await;
    let now = clock.now();
    let (t, messages) = sent_messages(&deps, now, 1000).await;
    deps.messages = Arc::new(InFlight {
        inner: deps.messages.clone(),
        now: AtomicUsize::new(0),
        most: AtomicUsize::new(0),
        log: Mutex::new(HashMap::new()),
        latency: Some(std::time::Duration::from_millis(5)),
        refuse_overtaken: AtomicUsize::new(0),
        overtaken_writes: AtomicUsize::new(0),
    });
    let statuses = messages
        .iter()
        .map(|(m, w)| status_of(m, w, "delivered", now.timestamp(), false))
        .collect();
    let raw = body(&t.phone_number_id, statuses, vec![]);
    let started = std::time::Instant::now();
    let summary = webhook::apply(&deps, &raw).await.unwrap();
    println!(
        "memory + 5 ms a call: 1,000 statuses applied in {:.2} s, {} in flight: {summary:?}",
        started.elapsed().as_secs_f64(),
        webhook::STATUSES_IN_FLIGHT
    );
    assert_eq!(summary.applied, 1000);
}

on_both_backends!(
    a_body_of_300_statuses_ends_each_message_read_counted_once,
    a_body_of_statuses_with_a_stop_then_a_start_listed_first_ends_opted_in,
    a_body_s_statuses_are_applied_several_at_once_each_message_s_in_order,
    a_delivered_after_read_keeps_its_time_and_the_message_stays_read,
    a_sent_after_read_of_a_message_without_one_keeps_its_time,
    a_refunded_failure_meta_sends_and_delivers_after_all_shows_meta_s_sent_time,
    a_refunded_failure_meta_delivers_without_a_sent_shows_one_until_meta_s_comes,
    a_pairing_repeated_through_a_body_is_written_once_and_a_failed_one_again,
    a_failing_owner_lookup_is_made_once_per_body_and_fails_each_of_its_items,
    a_late_delivered_refused_three_times_lands_and_one_refused_every_time_is_dropped_with_200,
    a_body_s_first_priced_statuses_of_one_category_never_conflict_on_their_usage_row,
);

/// The real contact store, counting the pairings written and failing the first one.
struct PairingFailsOnce {
    inner: Arc<dyn ContactStore>,
    written: AtomicUsize,
}

#[async_trait]
impl ContactStore for PairingFailsOnce {
    async fn pair_user(
        &self,
        tenant: &TenantId,
        phone: &PhoneNumber,
        user_id: &kirim::domain::UserId,
        expires_at: Option<i64>,
    ) -> Result<(), StoreError> {
        if self.written.fetch_add(1, SeqCst) == 0 {
            return Err(StoreError::Unavailable("throttled".into()));
        }
        self.inner
            .pair_user(tenant, phone, user_id, expires_at)
            .await
    }
    async fn paired_key(
        &self,
        tenant: &TenantId,
        key: &OptOutKey,
    ) -> Result<Option<OptOutKey>, StoreError> {
        self.inner.paired_key(tenant, key).await
    }
    async fn pairing(
        &self,
        tenant: &TenantId,
        key: &OptOutKey,
    ) -> Result<Option<(OptOutKey, Option<i64>)>, StoreError> {
        self.inner.pairing(tenant, key).await
    }
    async fn unpair(
        &self,
        tenant: &TenantId,
        key: &OptOutKey,
        other: &OptOutKey,
        newer: i64,
    ) -> Result<bool, StoreError> {
        self.inner.unpair(tenant, key, other, newer).await
    }
    async fn peek_paired_key(
        &self,
        tenant: &TenantId,
        key: &OptOutKey,
    ) -> Result<Option<OptOutKey>, StoreError> {
        self.inner.peek_paired_key(tenant, key).await
    }
    async fn found_among(
        &self,
        tenant: &TenantId,
        keys: &[OptOutKey],
    ) -> Result<HashMap<OptOutKey, Found>, StoreError> {
        self.inner.found_among(tenant, keys).await
    }
    async fn opted_out_among(
        &self,
        tenant: &TenantId,
        keys: &[OptOutKey],
    ) -> Result<std::collections::HashSet<OptOutKey>, StoreError> {
        self.inner.opted_out_among(tenant, keys).await
    }
    async fn record_inbound(
        &self,
        tenant: &TenantId,
        phone_number_id: &str,
        key: &OptOutKey,
        at: DateTime<Utc>,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        self.inner
            .record_inbound(tenant, phone_number_id, key, at, expires_at)
            .await
    }
    async fn last_inbound(
        &self,
        tenant: &TenantId,
        phone_number_id: &str,
        key: &OptOutKey,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.inner.last_inbound(tenant, phone_number_id, key).await
    }
}

/// Meta repeats a user's pairing on every status of a message (and on the user's own
/// messages): a body's statuses in flight and its inbound message write it once, and one
/// whose write failed (that status an error, so Meta sends the body again) is written by
/// the next status naming it, not taken as written.
async fn a_pairing_repeated_through_a_body_is_written_once_and_a_failed_one_again(b: Backend) {
    let (mut deps, _, clock) = two_processes(b).await;
    let now = clock.now();
    let (t, messages) = sent_messages(&deps, now, 6).await;
    let store = Arc::new(PairingFailsOnce {
        inner: deps.contacts.clone(),
        written: AtomicUsize::new(0),
    });
    deps.contacts = store.clone();
    let at = now.timestamp();
    let statuses = messages
        .iter()
        .flat_map(|(m, w)| {
            ["delivered", "read"].map(|s| {
                let mut v = status_of(m, w, s, at, false);
                v["recipient_user_id"] = json!("MY.7000000301");
                v
            })
        })
        .collect();
    let mut hello = text_from("60123456789", "hello", at);
    hello["from_user_id"] = json!("MY.7000000301");
    let summary = webhook::apply(&deps, &body(&t.phone_number_id, statuses, vec![hello]))
        .await
        .unwrap();
    assert_eq!(
        (summary.applied, summary.errors),
        (12 - 1, 1),
        "the status whose pairing failed is an error: {summary:?}"
    );
    assert_eq!(
        store.written.load(SeqCst),
        2,
        "the failed write, then one more, by the next status naming it"
    );
    let phone = OptOutKey::Phone(PhoneNumber::parse("+60123456789").unwrap());
    assert!(deps
        .contacts
        .paired_key(&t.id, &phone)
        .await
        .unwrap()
        .is_some());
}

/// The real tenant store, counting the lookups of a number's owner and failing those of
/// `failing`.
struct OwnerLookupFails {
    inner: Arc<dyn TenantStore>,
    failing: String,
    lookups: AtomicUsize,
}

kirim_tests::pass_through! {
    impl TenantStore for OwnerLookupFails {
        async fn tenant_by_phone_number_id(
            &self,
            phone_number_id: &str,
        ) -> Result<Option<TenantId>, StoreError> {
            self.lookups.fetch_add(1, SeqCst);
            if phone_number_id == self.failing {
                return Err(StoreError::Unavailable("throttled".into()));
            }
            self.inner.tenant_by_phone_number_id(phone_number_id).await
        }
    }
}

/// A body of many statuses (and an inbound message) on one number whose owner's lookup
/// fails: looked up once for the whole body, not once per status; each of its items is an
/// error all the same (the body answered 500, for Meta to send it again), none applied.
async fn a_failing_owner_lookup_is_made_once_per_body_and_fails_each_of_its_items(b: Backend) {
    let (mut deps, _, clock) = two_processes(b).await;
    let now = clock.now();
    let (t, messages) = sent_messages(&deps, now, 6).await;
    let store = Arc::new(OwnerLookupFails {
        inner: deps.tenants.clone(),
        failing: t.phone_number_id.clone(),
        lookups: AtomicUsize::new(0),
    });
    deps.tenants = store.clone();
    let at = now.timestamp();
    let statuses = messages
        .iter()
        .flat_map(|(m, w)| {
            [
                status_of(m, w, "delivered", at, false),
                status_of(m, w, "read", at + 1, false),
            ]
        })
        .collect();
    let summary = webhook::apply(
        &deps,
        &body(
            &t.phone_number_id,
            statuses,
            vec![text_from("60123457201", "STOP", at)],
        ),
    )
    .await
    .unwrap();
    assert_eq!(
        summary,
        WebhookSummary {
            errors: 12 + 1,
            ..Default::default()
        }
    );
    assert_eq!(store.lookups.load(SeqCst), 1, "one lookup for the body");
    for (m, _) in &messages {
        let stored = deps
            .messages
            .get_message(&t.id, &m.id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stored.status, MessageStatus::Sent, "not applied");
    }
}

/// A late `delivered` (after the `read`) whose write is refused because the message changed
/// since it was read is written again on the message read afresh: refused 3 times, it lands
/// on the 4th; refused every time, it is dropped after 4 writes (a WARN, a metric) and the
/// body answered as applied nothing, not an error (200: not sent again for it).
async fn a_late_delivered_refused_three_times_lands_and_one_refused_every_time_is_dropped_with_200(
    b: Backend,
) {
    let (mut deps, _, clock) = two_processes(b).await;
    let now = clock.now();
    let (t, messages) = sent_messages(&deps, now, 2).await;
    let store = Arc::new(InFlight {
        inner: deps.messages.clone(),
        now: AtomicUsize::new(0),
        most: AtomicUsize::new(0),
        log: Mutex::new(HashMap::new()),
        latency: None,
        refuse_overtaken: AtomicUsize::new(0),
        overtaken_writes: AtomicUsize::new(0),
    });
    deps.messages = store.clone();
    let at = now.timestamp();
    for (refusals, (m, w)) in [(3, &messages[0]), (usize::MAX, &messages[1])] {
        let one = |status: Value| body(&t.phone_number_id, vec![status], vec![]);
        let read = webhook::apply(&deps, &one(status_of(m, w, "read", at - 2, false)))
            .await
            .unwrap();
        assert_eq!(read.applied, 1);
        store.refuse_overtaken.store(refusals, SeqCst);
        store.overtaken_writes.store(0, SeqCst);
        let late = webhook::apply(&deps, &one(status_of(m, w, "delivered", at - 3, false)))
            .await
            .unwrap();
        let stored = deps
            .messages
            .get_message(&t.id, &m.id)
            .await
            .unwrap()
            .unwrap();
        let delivered: Vec<i64> = stored
            .events
            .iter()
            .filter(|e| e.status == MessageStatus::Delivered)
            .map(|e| e.at.timestamp())
            .collect();
        assert_eq!(stored.status, MessageStatus::Read);
        assert_eq!(
            store.overtaken_writes.load(SeqCst),
            4,
            "{refusals}: 4 writes"
        );
        if refusals == 3 {
            assert_eq!((late.applied, late.errors), (1, 0), "{late:?}");
            assert_eq!(delivered, [at - 3], "recorded on the 4th write");
        } else {
            assert_eq!(
                late,
                WebhookSummary {
                    ignored: 1,
                    ..Default::default()
                },
                "dropped, not an error"
            );
            assert_eq!(delivered, Vec::<i64>::new());
        }
    }
}

/// A usage row's part: tenant, day, category, type and shard (A79).
type UsageRowPart = (TenantId, chrono::NaiveDate, String, String, u8);

/// The real usage store as DynamoDB treats transactions on one item: a pricing write (each
/// is a transaction with its message's part of the day's usage row, A79) that overlaps
/// another on the same part is cancelled, answered as the DynamoDB adapter answers a
/// `TransactionConflict` once its tries are spent; each write takes a few milliseconds (a
/// transaction's round trip). Counts the most writes of one row (all its parts) at once.
struct UsageRowConflicts {
    inner: Arc<dyn UsageStore>,
    in_flight: Mutex<HashMap<UsageRowPart, usize>>,
    writes: AtomicUsize,
    conflicts: AtomicUsize,
    of_row_now: AtomicUsize,
    of_row_at_most: AtomicUsize,
}

impl UsageRowConflicts {
    async fn write<F: std::future::Future<Output = Result<bool, StoreError>>>(
        &self,
        priced: &PricedMessage<'_>,
        write: F,
    ) -> Result<bool, StoreError> {
        self.writes.fetch_add(1, SeqCst);
        let now = self.of_row_now.fetch_add(1, SeqCst) + 1;
        self.of_row_at_most.fetch_max(now, SeqCst);
        let row = (
            priced.tenant.clone(),
            priced.day,
            priced.pricing.category.clone(),
            priced.pricing.pricing_type.clone(),
            kirim::ports::usage_shard(priced.message),
        );
        let overlaps = {
            let mut rows = self.in_flight.lock().unwrap();
            let n = rows.entry(row.clone()).or_default();
            *n += 1;
            *n > 1
        };
        let written = if overlaps {
            self.conflicts.fetch_add(1, SeqCst);
            Err(StoreError::Unavailable(
                "dynamodb transaction cancelled: None,TransactionConflict".into(),
            ))
        } else {
            tokio::time::sleep(std::time::Duration::from_millis(3)).await;
            write.await
        };
        if let Some(n) = self.in_flight.lock().unwrap().get_mut(&row) {
            *n -= 1;
        }
        self.of_row_now.fetch_sub(1, SeqCst);
        written
    }
}

#[async_trait]
impl UsageStore for UsageRowConflicts {
    async fn record_pricing(&self, priced: &PricedMessage<'_>) -> Result<bool, StoreError> {
        self.write(priced, self.inner.record_pricing(priced)).await
    }
    async fn transition_priced(
        &self,
        priced: &PricedMessage<'_>,
        from: &[MessageStatus],
        to: MessageStatus,
        change: &StatusChange,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        self.write(
            priced,
            self.inner.transition_priced(priced, from, to, change, at),
        )
        .await
    }
    async fn usage(
        &self,
        tenant: &TenantId,
        from: chrono::NaiveDate,
        to: chrono::NaiveDate,
    ) -> Result<Vec<UsageRow>, StoreError> {
        self.inner.usage(tenant, from, to).await
    }
}

/// A body of 24 `delivered` statuses, each its message's first priced one, all of one
/// category and day (one usage row), applied 8 at a time: the body's pricing writes of each
/// of the row's parts take turns, so none is cancelled by another, while writes of its
/// different parts go at once; each message ends delivered and is counted once, and the
/// body sent again counts nothing more.
async fn a_body_s_first_priced_statuses_of_one_category_never_conflict_on_their_usage_row(
    b: Backend,
) {
    let (mut deps, _, clock) = two_processes(b).await;
    let now = clock.now();
    let (t, messages) = sent_messages(&deps, now, 24).await;
    let store = Arc::new(UsageRowConflicts {
        inner: deps.usage.clone(),
        in_flight: Mutex::new(HashMap::new()),
        writes: AtomicUsize::new(0),
        conflicts: AtomicUsize::new(0),
        of_row_now: AtomicUsize::new(0),
        of_row_at_most: AtomicUsize::new(0),
    });
    deps.usage = store.clone();
    let at = now.timestamp();
    let statuses: Vec<Value> = messages
        .iter()
        .map(|(m, w)| status_of(m, w, "delivered", at, true))
        .collect();
    let raw = body(&t.phone_number_id, statuses, vec![]);
    let summary = webhook::apply(&deps, &raw).await.unwrap();
    assert_eq!(
        (
            summary.applied,
            summary.errors,
            store.conflicts.load(SeqCst)
        ),
        (24, 0, 0),
        "{summary:?}"
    );
    // One row, yet not one write at a time: its parts are written at once.
    assert!(
        store.of_row_at_most.load(SeqCst) >= 2,
        "the row's parts taken one at a time"
    );
    for (m, _) in &messages {
        let stored = deps
            .messages
            .get_message(&t.id, &m.id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stored.status, MessageStatus::Delivered);
        assert!(stored.pricing.is_some());
    }
    let day = now.date_naive();
    let count = |deps: Deps| {
        let t = t.id.clone();
        async move {
            deps.usage
                .usage(&t, day, day)
                .await
                .unwrap()
                .iter()
                .map(|u| u.messages)
                .sum::<i64>()
        }
    };
    assert_eq!(count(deps.clone()).await, 24, "each message counted once");
    let again = webhook::apply(&deps, &raw).await.unwrap();
    assert_eq!((again.ignored, again.errors), (24, 0), "{again:?}");
    assert_eq!(count(deps.clone()).await, 24, "and not again");
}
