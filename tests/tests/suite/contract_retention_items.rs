//! The retention sweep, item type by item type, on the memory adapter and on DynamoDB
//! (moto): an expired item of each type is removed and counted under its own class, not a
//! second early, while a live item of the same type stays. Item types and classes:
//! docs/data-retention.md §1. Keys are written out here as the table holds them
//! (docs/data-model.md §2), not taken from the adapter's key module, so the two checks
//! stay independent.
//!
//! Items that carry a TTL from the start expire by it; active configuration gets its TTL
//! only when its tenant is closed out, so those tests close one tenant out and keep another
//! open.

use chrono::{Duration, NaiveDate};
use kirim::domain::{
    OptOut, OptOutScope, OptOutSource, PhoneNumber, Role, TemplateCategory, TemplateRef, TenantId,
};
use kirim::ports::*;

use super::contract::{aws, contract, memory, message, onboarded, sweep, Ports};

/// How long after "now" the expiring item of each test expires.
const TTL: i64 = 10;
/// How long after "now" the live item of each test expires.
const LIVE: i64 = 100_000;

/// Whether storage still holds an item under this key (expired or not).
async fn stored(p: &Ports, pk: &str, sk: &str) -> bool {
    p.retention
        .stored_items()
        .await
        .unwrap()
        .iter()
        .any(|i| i.pk == pk && i.sk == sk)
}

/// Sweeps a second before `secs` have passed (nothing may go), then a second after
/// (exactly `expected` goes: items per class, nothing else).
async fn swept_when_due(p: &Ports, secs: i64, expected: &[(&str, usize)]) {
    p.clock.advance(Duration::seconds(secs - 1));
    let early = sweep(p).await.deleted;
    assert_eq!(
        early.values().sum::<usize>(),
        0,
        "nothing expires early: {early:?}"
    );
    p.clock.advance(Duration::seconds(2));
    let due = sweep(p).await.deleted;
    for (class, n) in expected {
        assert_eq!(due.get(class).copied().unwrap_or(0), *n, "{class}: {due:?}");
    }
    assert_eq!(
        due.values().sum::<usize>(),
        expected.iter().map(|(_, n)| n).sum::<usize>(),
        "nothing else: {due:?}"
    );
}

fn in_secs(p: &Ports, secs: i64) -> Option<i64> {
    Some(p.clock.now().timestamp() + secs)
}

fn tenant_pk(t: &TenantId) -> String {
    format!("TENANT#{t}")
}

fn phone(s: &str) -> PhoneNumber {
    PhoneNumber::parse(s).unwrap()
}

fn top_up(p: &Ports, t: &TenantId, expires_in: i64) -> LedgerEntry {
    LedgerEntry {
        id: kirim::domain::new_id(),
        tenant_id: t.clone(),
        amount: 100,
        kind: LedgerKind::TopUp,
        reference: None,
        message_id: None,
        at: p.clock.now(),
        expires_at: in_secs(p, expires_in),
    }
}

// ---- Item types with a TTL of their own ----------------------------------------------

async fn an_expired_message_is_swept_as_messages_and_a_live_one_stays(p: Ports) {
    let t = onboarded(&p, 10).await;
    let (old, d1) = message(&p, &t.id, TTL);
    let (live, d2) = message(&p, &t.id, LIVE);
    p.messages.insert_with_debit(&old, &d1).await.unwrap();
    p.messages.insert_with_debit(&live, &d2).await.unwrap();
    swept_when_due(&p, TTL, &[("messages", 1)]).await;
    assert!(!stored(&p, &tenant_pk(&t.id), &format!("MSG#{}", old.id)).await);
    assert!(stored(&p, &tenant_pk(&t.id), &format!("MSG#{}", live.id)).await);
}

async fn an_expired_wamid_index_item_is_swept_as_messages_and_a_live_one_stays(p: Ports) {
    let t = onboarded(&p, 10).await;
    let (m, d) = message(&p, &t.id, LIVE);
    p.messages.insert_with_debit(&m, &d).await.unwrap();
    p.messages
        .set_wamid(&t.id, &m.id, "wamid.OLD", in_secs(&p, TTL))
        .await
        .unwrap();
    p.messages
        .set_wamid(&t.id, &m.id, "wamid.LIVE", in_secs(&p, LIVE))
        .await
        .unwrap();
    swept_when_due(&p, TTL, &[("messages", 1)]).await;
    assert!(!stored(&p, "WAMID#wamid.OLD", "WAMID").await);
    assert!(stored(&p, "WAMID#wamid.LIVE", "WAMID").await);
}

fn kept(p: &Ports, wamid: &str, expires_in: i64) -> PendingStatus {
    PendingStatus {
        wamid: wamid.into(),
        status: kirim::domain::meta::MetaStatus::Delivered,
        timestamp: 1_700_000_010,
        biz_opaque_callback_data: None,
        errors: Vec::new(),
        pricing: None,
        received_at: p.clock.now(),
        expires_at: in_secs(p, expires_in),
    }
}

async fn an_expired_pending_status_is_swept_as_a_pending_status_and_a_live_one_stays(p: Ports) {
    p.pending
        .put_pending_status(&kept(&p, "wamid.OLD", TTL))
        .await
        .unwrap();
    p.pending
        .put_pending_status(&kept(&p, "wamid.LIVE", LIVE))
        .await
        .unwrap();
    // The kept status and the mark it left for its wamid (not indexed yet).
    swept_when_due(&p, TTL, &[("pending_status", 2)]).await;
    let sk = "PENDING#delivered#1700000010";
    assert!(!stored(&p, "WAMID#wamid.OLD", sk).await);
    assert!(stored(&p, "WAMID#wamid.LIVE", sk).await);
    assert_eq!(
        p.pending
            .pending_statuses("wamid.LIVE")
            .await
            .unwrap()
            .len(),
        1
    );
}

async fn an_expired_ledger_entry_is_swept_as_billing_and_a_live_one_stays(p: Ports) {
    let t = onboarded(&p, 0).await;
    let (old, live) = (top_up(&p, &t.id, TTL), top_up(&p, &t.id, LIVE));
    p.ledger.top_up(&old).await.unwrap();
    p.ledger.top_up(&live).await.unwrap();
    swept_when_due(&p, TTL, &[("billing", 1)]).await;
    assert!(!stored(&p, &tenant_pk(&t.id), &format!("LEDGER#{}", old.id)).await);
    assert!(stored(&p, &tenant_pk(&t.id), &format!("LEDGER#{}", live.id)).await);
}

async fn an_expired_idempotency_key_is_swept_as_idempotency_and_a_live_one_stays(p: Ports) {
    let t = onboarded(&p, 10).await;
    let mut hashes = Vec::new();
    for expires_in in [TTL, LIVE] {
        let (m, d) = message(&p, &t.id, LIVE);
        let key = IdempotencyRecord {
            tenant_id: t.id.clone(),
            key_hash: kirim::secret::token_hash(&kirim::domain::new_id()),
            fingerprint: "f".into(),
            message_id: m.id.clone(),
            created_at: p.clock.now(),
            expires_at: in_secs(&p, expires_in),
        };
        p.idempotency
            .insert_with_debit_once(&m, &d, &key)
            .await
            .unwrap();
        hashes.push(key.key_hash);
    }
    swept_when_due(&p, TTL, &[("idempotency", 1)]).await;
    assert!(!stored(&p, &tenant_pk(&t.id), &format!("IDEM#{}", hashes[0])).await);
    assert!(stored(&p, &tenant_pk(&t.id), &format!("IDEM#{}", hashes[1])).await);
}

pub(crate) fn audit_event(p: &Ports, chain: &str, seq: u64, expires_in: i64) -> AuditEvent {
    AuditEvent {
        chain: chain.into(),
        seq,
        id: kirim::domain::new_id(),
        at: p.clock.now(),
        actor_type: "system".into(),
        actor_id: "test".into(),
        action: "test.event".into(),
        ip: None,
        outcome: kirim::ports::AuditOutcome::Success,
        details: "{}".into(),
        prev_hash: format!("{:064}", seq - 1),
        hash: format!("{seq:064}"),
        expires_at: in_secs(p, expires_in),
        prev_expires_at: None,
        signature: None,
    }
}

async fn append(p: &Ports, event: &AuditEvent) {
    let head = p.audit.head(&event.chain).await.unwrap();
    p.audit
        .append(&AuditLink::new(event, head.as_ref()))
        .await
        .unwrap();
}

async fn an_expired_parked_audit_event_is_swept_as_audit_and_a_live_one_stays(p: Ports) {
    let chain = TenantId::generate().to_string();
    let parked = |id: &str, expires_in: i64| ParkedAudit {
        chain: chain.clone(),
        id: id.into(),
        at: p.clock.now(),
        actor_type: "api_key".into(),
        actor_id: "k".into(),
        action: "POST /v1/messages".into(),
        ip: None,
        outcome: AuditOutcome::Success,
        details: "{}".into(),
        expires_at: in_secs(&p, expires_in),
        signature: None,
    };
    p.audit.park(&parked("01JA", TTL)).await.unwrap();
    p.audit.park(&parked("01JB", LIVE)).await.unwrap();
    swept_when_due(&p, TTL, &[("audit", 1)]).await;
    let pk = format!("AUDIT#{chain}");
    assert!(!stored(&p, &pk, "PARKED#01JA").await);
    assert!(stored(&p, &pk, "PARKED#01JB").await);
}

/// What the retention job drains: each chain with live parked events once, in chain
/// order, from an index the park itself writes; a chain leaves it when its last parked
/// event is linked in or expires.
async fn chains_with_parked_audit_events_are_listed_once_each_until_linked_in_or_expired(p: Ports) {
    let mut chains: Vec<String> = (0..3).map(|_| TenantId::generate().to_string()).collect();
    chains.push("platform".into());
    chains.sort();
    let [a, b, c, d] = [0, 1, 2, 3].map(|i| chains[i].clone());
    let parked = |chain: &str, id: String, expires_in: i64| ParkedAudit {
        chain: chain.into(),
        id,
        at: p.clock.now(),
        actor_type: "api_key".into(),
        actor_id: "k".into(),
        action: "POST /v1/messages".into(),
        ip: None,
        outcome: AuditOutcome::Success,
        details: "{}".into(),
        expires_at: in_secs(&p, expires_in),
        signature: None,
    };
    assert_eq!(
        p.audit.parked_chains(None, 10).await.unwrap(),
        Vec::<String>::new()
    );
    // More parked events on one chain than the index is read a page at a time.
    for _ in 0..105 {
        p.audit
            .park(&parked(&a, ulid::Ulid::new().to_string(), LIVE))
            .await
            .unwrap();
    }
    p.audit.park(&parked(&b, "01JB".into(), TTL)).await.unwrap();
    p.audit
        .park(&parked(&c, "01JC".into(), LIVE))
        .await
        .unwrap();
    p.audit
        .park(&parked(&d, "01JD".into(), LIVE))
        .await
        .unwrap();
    let all = vec![a.clone(), b.clone(), c.clone(), d.clone()];
    assert_eq!(p.audit.parked_chains(None, 10).await.unwrap(), all);
    assert_eq!(p.audit.parked_chains(None, 2).await.unwrap(), all[..2]);
    assert_eq!(p.audit.parked_chains(Some(&b), 10).await.unwrap(), all[2..]);

    p.clock.advance(Duration::seconds(TTL + 1));
    assert_eq!(
        p.audit.parked_chains(None, 10).await.unwrap(),
        vec![a.clone(), c.clone(), d.clone()],
        "an expired parked event is not waiting"
    );
    let mut event = audit_event(&p, &c, 1, LIVE);
    event.prev_hash = "0".repeat(64);
    p.audit
        .append(&AuditLink {
            event: &event,
            expected: None,
            signature: None,
            parked: Some("01JC"),
        })
        .await
        .unwrap();
    assert_eq!(
        p.audit.parked_chains(None, 10).await.unwrap(),
        vec![a, d],
        "linked in: gone from the index with its outbox item"
    );
}

async fn an_expired_audit_event_is_swept_as_audit_and_a_live_one_and_the_head_stay(p: Ports) {
    let chain = TenantId::generate().to_string();
    append(&p, &audit_event(&p, &chain, 1, TTL)).await;
    append(&p, &audit_event(&p, &chain, 2, LIVE)).await;
    swept_when_due(&p, TTL, &[("audit", 1)]).await;
    let pk = format!("AUDIT#{chain}");
    assert!(!stored(&p, &pk, "EVENT#0000000000000001").await);
    assert!(stored(&p, &pk, "EVENT#0000000000000002").await);
    assert!(stored(&p, &pk, "HEAD").await, "the chain head has no TTL");
}

async fn an_expired_quality_counter_is_swept_as_stats_and_a_live_one_stays(p: Ports) {
    let t = onboarded(&p, 0).await;
    let (old, live) = (
        NaiveDate::from_ymd_opt(2026, 1, 1).unwrap(),
        NaiveDate::from_ymd_opt(2026, 1, 2).unwrap(),
    );
    for (day, expires_in) in [(old, TTL), (live, LIVE)] {
        p.quality
            .bump(&t.id, day, QualityCounter::Sent, in_secs(&p, expires_in))
            .await
            .unwrap();
    }
    swept_when_due(&p, TTL, &[("stats", 1)]).await;
    assert!(!stored(&p, &tenant_pk(&t.id), "QSTAT#2026-01-01").await);
    assert!(stored(&p, &tenant_pk(&t.id), "QSTAT#2026-01-02").await);
}

/// A broadcast of two recipients, its record expiring in `expires_in`, created
/// `created_ago` seconds ago (its recipient list expires 7 days after creation).
async fn broadcast(p: &Ports, t: &TenantId, expires_in: i64, created_ago: i64) -> String {
    let b = Broadcast {
        id: kirim::domain::new_id(),
        tenant_id: t.clone(),
        template: TemplateRef {
            name: "promo".into(),
            language: "en".into(),
            category: TemplateCategory::Utility,
        },
        accepted: 2,
        skipped_opted_out: 0,
        invalid: 0,
        duplicates: 0,
        price_each: 1,
        status: kirim::ports::BroadcastStatus::FanningOut,
        enqueued: 0,
        created_at: p.clock.now() - Duration::seconds(created_ago),
        expires_at: in_secs(p, expires_in),
        name: None,
        from: None,
        send_at: None,
        started_at: None,
        ended_at: None,
        control: None,
        retry_of: None,
        retried_by: None,
        refunded_unsent: 0,
        closed_unqueued: 0,
        control_at: None,
        fanout_token: None,
    };
    let debit = LedgerEntry {
        amount: -2,
        kind: LedgerKind::Debit,
        ..top_up(p, t, LIVE)
    };
    let to = [phone("+60123450001"), phone("+60123450002")];
    p.broadcasts
        .create_broadcast(&b, &to, &debit)
        .await
        .unwrap();
    b.id
}

async fn an_expired_broadcast_is_swept_as_messages_and_a_live_one_stays(p: Ports) {
    let t = onboarded(&p, 10).await;
    let old = broadcast(&p, &t.id, TTL, 0).await;
    let live = broadcast(&p, &t.id, LIVE, 0).await;
    swept_when_due(&p, TTL, &[("messages", 1)]).await;
    let pk = tenant_pk(&t.id);
    assert!(!stored(&p, &pk, &format!("BROADCAST#{old}")).await);
    assert!(stored(&p, &pk, &format!("BROADCAST#{live}")).await);
    assert!(
        stored(&p, &pk, &format!("BCLIST#{old}")).await,
        "its list keeps its own expiry"
    );
}

async fn an_expired_broadcast_list_is_swept_as_a_broadcast_list_and_a_live_one_stays(p: Ports) {
    let t = onboarded(&p, 10).await;
    let week = 7 * 86_400;
    let old = broadcast(&p, &t.id, LIVE, week - TTL).await;
    let live = broadcast(&p, &t.id, LIVE, 0).await;
    swept_when_due(&p, TTL, &[("broadcast_list", 1)]).await;
    let pk = tenant_pk(&t.id);
    assert!(!stored(&p, &pk, &format!("BCLIST#{old}")).await);
    assert!(stored(&p, &pk, &format!("BCLIST#{live}")).await);
    assert_eq!(
        p.broadcasts
            .broadcast_recipients(&t.id, &old)
            .await
            .unwrap(),
        None
    );
    assert!(stored(&p, &pk, &format!("BROADCAST#{old}")).await);
}

async fn an_expired_template_is_swept_as_messages_and_a_live_one_stays(p: Ports) {
    for (name, expires_in) in [("old_one", TTL), ("live_one", LIVE)] {
        p.templates
            .put_template(&CatalogueTemplate {
                waba_id: "1000001".into(),
                name: name.into(),
                language: "en_US".into(),
                category: TemplateCategory::Utility,
                status: kirim::domain::TemplateStatus::Approved,
                quality: kirim::domain::TemplateQuality::Green,
                body_parameters: 1,
                meta_id: None,
                updated_at: p.clock.now(),
                expires_at: in_secs(&p, expires_in),
            })
            .await
            .unwrap();
    }
    swept_when_due(&p, TTL, &[("messages", 1)]).await;
    assert!(!stored(&p, "WABA#1000001", "TEMPLATE#old_one#en_US").await);
    assert!(stored(&p, "WABA#1000001", "TEMPLATE#live_one#en_US").await);
}

async fn an_expired_user_pairing_is_swept_as_messages_and_a_live_one_stays(p: Ports) {
    let t = onboarded(&p, 0).await;
    for (digits, id, expires_in) in [
        ("+60123459801", "MY.9801", TTL),
        ("+60123459802", "MY.9802", LIVE),
    ] {
        p.contacts
            .pair_user(
                &t.id,
                &phone(digits),
                &kirim::domain::UserId::parse(id).unwrap(),
                in_secs(&p, expires_in),
            )
            .await
            .unwrap();
    }
    // Each pairing is two items (one per key).
    swept_when_due(&p, TTL, &[("messages", 2)]).await;
    let pk = tenant_pk(&t.id);
    assert!(!stored(&p, &pk, "PAIR#+60123459801").await);
    assert!(!stored(&p, &pk, "PAIR#MY.9801").await);
    assert!(stored(&p, &pk, "PAIR#+60123459802").await);
    assert!(stored(&p, &pk, "PAIR#MY.9802").await);
}

async fn a_users_last_inbound_is_swept_as_a_service_window_a_day_later_and_a_newer_one_stays(
    p: Ports,
) {
    let t = onboarded(&p, 0).await;
    let now = p.clock.now();
    for (digits, ago) in [("+60123459803", 86_400 - TTL), ("+60123459804", 0)] {
        let at = now - Duration::seconds(ago);
        p.contacts
            .record_inbound(
                &t.id,
                &t.phone_number_id,
                &kirim::domain::OptOutKey::parse(digits).unwrap(),
                at,
                at.timestamp() + 86_400,
            )
            .await
            .unwrap();
    }
    swept_when_due(&p, TTL, &[("service_window", 1)]).await;
    let pk = tenant_pk(&t.id);
    let sk = |d: &str| format!("WINDOW#{}#{d}", t.phone_number_id);
    assert!(!stored(&p, &pk, &sk("+60123459803")).await);
    assert!(stored(&p, &pk, &sk("+60123459804")).await);
}

async fn an_expired_opting_back_in_is_swept_as_a_pending_status_and_a_live_one_stays(p: Ports) {
    let t = onboarded(&p, 0).await;
    let keep = kirim::domain::OPTED_IN_RETENTION.as_secs() as i64;
    let start = |digits: &'static str| {
        let p = &p;
        let t = &t;
        async move {
            p.opt_outs
                .delete_opt_out_not_newer_than(
                    &t.id,
                    &kirim::domain::OptOutKey::parse(digits).unwrap(),
                    p.clock.now().timestamp(),
                )
                .await
                .unwrap();
        }
    };
    // A START's time is kept 7 days; the second one's a little later.
    start("+60123459811").await;
    p.clock.advance(Duration::seconds(keep - TTL));
    start("+60123459812").await;
    swept_when_due(&p, TTL, &[("pending_status", 1)]).await;
    let pk = tenant_pk(&t.id);
    assert!(!stored(&p, &pk, "OPTIN#+60123459811").await);
    assert!(stored(&p, &pk, "OPTIN#+60123459812").await);
}

async fn an_expired_usage_row_is_swept_as_billing_and_a_live_one_stays(p: Ports) {
    // From a whole second: the rows' expiries are whole seconds of the clock as each is
    // written, 2 ms apart, so a clock started in a second's last 4 ms put the first row's
    // expiry a second earlier than `swept_when_due`'s "early" look (which it then swept).
    let into = p.clock.now().timestamp_subsec_nanos();
    p.clock
        .advance(Duration::nanoseconds(1_000_000_000 - i64::from(into)));
    let t = onboarded(&p, 10).await;
    let pricing = kirim::domain::Pricing::parse("PMP", "utility", "regular").unwrap();
    let mut shards = Vec::new();
    for (day, expires_in) in [("2026-01-01", TTL), ("2026-01-02", LIVE)] {
        let (m, debit) = message(&p, &t.id, LIVE);
        p.messages.insert_with_debit(&m, &debit).await.unwrap();
        // The row's part the message adds to (A79).
        shards.push(kirim::ports::usage_shard(&m.id));
        assert!(p
            .usage
            .record_pricing(&PricedMessage {
                tenant: &t.id,
                message: &m.id,
                pricing: &pricing,
                day: day.parse().unwrap(),
                credits: 1,
                expires_at: in_secs(&p, expires_in),
            })
            .await
            .unwrap());
        p.clock.advance(Duration::milliseconds(2));
    }
    swept_when_due(&p, TTL, &[("billing", 1)]).await;
    let pk = tenant_pk(&t.id);
    let [gone, live] = [&shards[0], &shards[1]];
    assert!(!stored(&p, &pk, &format!("USAGE#2026-01-01#utility#regular#{gone}")).await);
    assert!(stored(&p, &pk, &format!("USAGE#2026-01-02#utility#regular#{live}")).await);
}

async fn an_idle_send_slot_is_swept_as_a_send_slot_and_a_used_one_stays(p: Ports) {
    let wait = std::time::Duration::from_secs(1);
    let now = p.clock.now();
    assert!(p
        .throughput
        .reserve_slot("1001", 80, now, wait)
        .await
        .unwrap()
        .is_some());
    p.clock.advance(Duration::seconds(1800));
    let now = p.clock.now();
    assert!(p
        .throughput
        .reserve_slot("1002", 80, now, wait)
        .await
        .unwrap()
        .is_some());
    // An hour after its last reservation.
    swept_when_due(&p, 1800, &[("send_slot", 1)]).await;
    assert!(!stored(&p, "RATE#1001", "NEXT").await);
    assert!(stored(&p, "RATE#1002", "NEXT").await);
}

async fn failed_login_counters_are_swept_a_day_after_their_last_failure(p: Ports) {
    let hash = kirim::secret::token_hash("aminah@example.com");
    let at = |addr: &str| LoginCounter::EmailAtAddress {
        email_hash: hash.clone(),
        addr: addr.into(),
    };
    let address = LoginCounter::Address("198.51.100.7".into());
    for c in [at("198.51.100.7"), address.clone()] {
        let now = p.clock.now().timestamp();
        p.users
            .login_failed(&c, now, &LoginPolicy::of(&c), LoginTicket::Holding)
            .await
            .unwrap();
    }
    p.clock.advance(Duration::seconds(3600));
    let later = at("203.0.113.9");
    let now = p.clock.now().timestamp();
    p.users
        .login_failed(&later, now, &LoginPolicy::of(&later), LoginTicket::Holding)
        .await
        .unwrap();
    // A day after the first two failures, those two go; the later one stays.
    swept_when_due(&p, 86_400 - 3600, &[("login_failures", 2)]).await;
    let pk = format!("LOGINFAIL#{hash}");
    assert!(!stored(&p, &pk, "ADDR#198.51.100.7").await);
    assert!(!stored(&p, "LOGINADDR#198.51.100.7", "FAIL").await);
    assert!(stored(&p, &pk, "ADDR#203.0.113.9").await);
}

async fn an_expired_session_is_swept_as_a_session_and_a_live_one_stays(p: Ports) {
    let t = onboarded(&p, 0).await;
    let mut hashes = Vec::new();
    for expires_in in [TTL, LIVE] {
        let now = p.clock.now();
        let session = SessionRecord {
            token_hash: kirim::secret::token_hash(&kirim::domain::new_id()),
            tenant_id: t.id.clone(),
            user_id: "u1".into(),
            role: Role::Admin,
            created_at: now,
            expires_at: now + Duration::seconds(expires_in),
            revoked: false,
            last_seen_at: None,
            password_version: 0,
            second_factor: None,
        };
        p.users.put_session(&session).await.unwrap();
        hashes.push(session.token_hash);
    }
    swept_when_due(&p, TTL, &[("session", 1)]).await;
    assert!(!stored(&p, &format!("SESSION#{}", hashes[0]), "SESSION").await);
    assert!(stored(&p, &format!("SESSION#{}", hashes[1]), "SESSION").await);
}

// ---- Active configuration: a TTL only once its tenant is closed out --------------------

/// Two onboarded tenants (each with one API key, both copies); `setup` gives each the item
/// under test. The first is then closed and closed out (its configuration and chain head
/// expire in `TTL`, its account record in `tenant_ttl`); the second stays open.
async fn closed_and_open<F, Fut>(p: &Ports, tenant_ttl: i64, setup: F) -> (Tenant, Tenant)
where
    F: Fn(Tenant) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let closed = onboarded(p, 0).await;
    let open = onboarded(p, 0).await;
    setup(closed.clone()).await;
    setup(open.clone()).await;
    let now = p.clock.now();
    p.tenants
        .set_status(&closed.id, TenantStatus::Closed, Some("bye"), now)
        .await
        .unwrap();
    let ttls = CloseOutTtls {
        tenant: now.timestamp() + tenant_ttl,
        config: now.timestamp() + TTL,
        audit_head: now.timestamp() + TTL,
    };
    p.retention
        .close_out(
            &closed.id,
            ttls,
            now,
            std::time::Instant::now() + std::time::Duration::from_secs(3600),
        )
        .await
        .unwrap();
    (closed, open)
}

/// An open tenant's configuration survives any number of years of sweeps.
async fn still_there_years_later(p: &Ports, pk: &str, sk: &str) {
    p.clock.advance(Duration::days(3650));
    sweep(p).await;
    assert!(stored(p, pk, sk).await, "{pk} / {sk} never expires");
}

/// The sort key of a tenant's one API key (its tenant copy).
async fn key_sk(p: &Ports, t: &Tenant) -> String {
    let keys = p.api_keys.list_api_keys(&t.id).await.unwrap();
    assert_eq!(keys.len(), 1);
    format!("APIKEY#{}", keys[0].id)
}

/// The closed tenant's two key copies and its onboarding number's item (which carries
/// its WABA index entry) go with any of its configuration.
const KEYS: usize = 3;

async fn a_closed_out_tenants_api_keys_are_swept_as_active_config_and_an_open_tenants_stay(
    p: Ports,
) {
    let (closed, open) = closed_and_open(&p, LIVE, |_| async {}).await;
    let (closed_sk, open_sk) = (key_sk(&p, &closed).await, key_sk(&p, &open).await);
    swept_when_due(&p, TTL, &[("active_config", KEYS)]).await;
    assert!(!stored(&p, &tenant_pk(&closed.id), &closed_sk).await);
    still_there_years_later(&p, &tenant_pk(&open.id), &open_sk).await;
}

async fn a_closed_out_tenants_key_hash_copies_are_swept_as_active_config_and_an_open_tenants_stay(
    p: Ports,
) {
    let (closed, open) = closed_and_open(&p, LIVE, |_| async {}).await;
    let hash_of = |items: &[StoredItem], t: &Tenant| {
        items
            .iter()
            .find(|i| i.pk.starts_with("APIKEY#") && i.attributes["tenant_id"] == t.id.as_str())
            .map(|i| i.pk.clone())
    };
    let before = p.retention.stored_items().await.unwrap();
    let closed_hash = hash_of(&before, &closed).expect("the closed tenant's hash copy");
    let open_hash = hash_of(&before, &open).expect("the open tenant's hash copy");
    swept_when_due(&p, TTL, &[("active_config", KEYS)]).await;
    assert!(!stored(&p, &closed_hash, "APIKEY").await);
    still_there_years_later(&p, &open_hash, "APIKEY").await;
}

async fn a_closed_out_tenants_opt_outs_are_swept_as_active_config_and_an_open_tenants_stay(
    p: Ports,
) {
    let now = p.clock.now();
    let opt_outs = p.opt_outs.clone();
    let (closed, open) = closed_and_open(&p, LIVE, |t| {
        let opt_outs = opt_outs.clone();
        async move {
            let o = OptOut {
                tenant_id: t.id.clone(),
                phone: Some(phone("+60123459999")),
                user_id: None,
                scope: OptOutScope::All,
                source: OptOutSource::Api,
                created_by: "key_1".into(),
                created_at: now,
                meta_timestamp: None,
            };
            opt_outs.put_opt_out(&o).await.unwrap();
        }
    })
    .await;
    swept_when_due(&p, TTL, &[("active_config", KEYS + 1)]).await;
    let sk = "OPTOUT#+60123459999";
    assert!(!stored(&p, &tenant_pk(&closed.id), sk).await);
    still_there_years_later(&p, &tenant_pk(&open.id), sk).await;
}

/// Gives each tenant one console user (the user item and its email claim).
async fn with_users(p: &Ports) -> (Tenant, Tenant) {
    let users = p.users.clone();
    let now = p.clock.now();
    closed_and_open(p, LIVE, |t| {
        let users = users.clone();
        async move {
            let user = UserRecord {
                id: format!("u-{}", t.id),
                tenant_id: t.id.clone(),
                email: format!("{}@example.com", t.id.as_str().to_lowercase()),
                role: Role::Operator,
                password_hash: "$argon2id$not-a-real-hash".into(),
                totp_secret: None,
                totp_confirmed: false,
                last_totp_step: 0,
                created_at: now,
                password_version: 0,
            };
            users.create_user(&user).await.unwrap();
        }
    })
    .await
}

async fn a_closed_out_tenants_users_are_swept_as_active_config_and_an_open_tenants_stay(p: Ports) {
    let (closed, open) = with_users(&p).await;
    // The user (its email claim went at the close-out).
    swept_when_due(&p, TTL, &[("active_config", KEYS + 1)]).await;
    assert!(!stored(&p, &tenant_pk(&closed.id), &format!("USER#u-{}", closed.id)).await);
    still_there_years_later(&p, &tenant_pk(&open.id), &format!("USER#u-{}", open.id)).await;
}

async fn a_closed_out_tenants_email_claims_are_deleted_at_its_close_out_and_an_open_tenants_stay(
    p: Ports,
) {
    let (closed, open) = with_users(&p).await;
    let claim = |t: &Tenant| format!("EMAIL#{}@example.com", t.id.as_str().to_lowercase());
    // Gone at the close-out, before any sweep: nothing of it is left to sweep.
    assert!(!stored(&p, &claim(&closed), "EMAIL").await);
    swept_when_due(&p, TTL, &[("active_config", KEYS + 1)]).await;
    assert_eq!(
        p.users
            .user_by_email(&format!(
                "{}@example.com",
                closed.id.as_str().to_lowercase()
            ))
            .await
            .unwrap(),
        None
    );
    still_there_years_later(&p, &claim(&open), "EMAIL").await;
}

async fn a_closed_out_tenants_2fa_setting_is_swept_as_active_config_and_an_open_tenants_stays(
    p: Ports,
) {
    let users = p.users.clone();
    let (closed, open) = closed_and_open(&p, LIVE, |t| {
        let users = users.clone();
        async move { users.set_two_factor_required(&t.id, true).await.unwrap() }
    })
    .await;
    swept_when_due(&p, TTL, &[("active_config", KEYS + 1)]).await;
    assert!(!stored(&p, &tenant_pk(&closed.id), "SETTINGS#2FA").await);
    still_there_years_later(&p, &tenant_pk(&open.id), "SETTINGS#2FA").await;
}

async fn a_closed_out_tenants_status_callback_is_swept_as_active_config_and_an_open_tenants_stays(
    p: Ports,
) {
    let callbacks = p.status_callbacks.clone();
    let now = p.clock.now();
    let (closed, open) = closed_and_open(&p, LIVE, |t| {
        let callbacks = callbacks.clone();
        async move {
            let setting = StatusCallback {
                tenant_id: t.id.clone(),
                url: "https://hooks.example.com/kirim".into(),
                secret_name: format!("kirim/tenants/{}/status-callback-secret", t.id),
                secret_version: None,
                updated_at: now,
            };
            callbacks.put_status_callback(&setting).await.unwrap();
        }
    })
    .await;
    swept_when_due(&p, TTL, &[("active_config", KEYS + 1)]).await;
    let sk = "SETTINGS#STATUS_CALLBACK";
    assert!(!stored(&p, &tenant_pk(&closed.id), sk).await);
    assert_eq!(
        p.status_callbacks
            .get_status_callback(&closed.id)
            .await
            .unwrap(),
        None
    );
    still_there_years_later(&p, &tenant_pk(&open.id), sk).await;
}

async fn a_closed_out_tenants_audit_head_is_swept_as_active_config_and_an_open_tenants_stays(
    p: Ports,
) {
    let audit = p.audit.clone();
    // One event in each chain, expiring with the closed tenant's head (events are older
    // than the closing): both events go, only the closed tenant's head goes with them.
    let event = audit_event(&p, "", 1, TTL);
    let (closed, open) = closed_and_open(&p, LIVE, |t| {
        let (audit, mut event) = (audit.clone(), event.clone());
        async move {
            event.chain = t.id.to_string();
            audit.append(&AuditLink::new(&event, None)).await.unwrap();
        }
    })
    .await;
    swept_when_due(&p, TTL, &[("active_config", KEYS + 1), ("audit", 2)]).await;
    assert!(!stored(&p, &format!("AUDIT#{}", closed.id), "HEAD").await);
    still_there_years_later(&p, &format!("AUDIT#{}", open.id), "HEAD").await;
}

async fn a_closed_out_tenant_is_swept_as_billing_and_an_open_tenant_stays(p: Ports) {
    let (closed, open) = closed_and_open(&p, TTL, |_| async {}).await;
    swept_when_due(&p, TTL, &[("billing", 1), ("active_config", KEYS)]).await;
    assert!(!stored(&p, &tenant_pk(&closed.id), "TENANT").await);
    assert_eq!(p.tenants.get_tenant(&closed.id).await.unwrap(), None);
    still_there_years_later(&p, &tenant_pk(&open.id), "TENANT").await;
}

async fn a_phone_route_is_never_swept_the_close_out_removes_a_closed_tenants(p: Ports) {
    let (closed, open) = closed_and_open(&p, LIVE, |_| async {}).await;
    assert!(
        !stored(&p, &format!("PHONE#{}", closed.phone_number_id), "PHONE").await,
        "removed by the close-out itself"
    );
    swept_when_due(&p, TTL, &[("active_config", KEYS)]).await;
    still_there_years_later(&p, &format!("PHONE#{}", open.phone_number_id), "PHONE").await;
}

async fn the_sweeps_checkpoint_is_never_swept(p: Ports) {
    let at = p.clock.now();
    p.retention
        .save_checkpoint(Some("{\"pk\":\"A\",\"sk\":\"B\"}"), at)
        .await
        .unwrap();
    still_there_years_later(&p, "RETENTION", "CHECKPOINT").await;
    assert!(p.retention.checkpoint().await.unwrap().is_some());
}

contract!(
    an_expired_opting_back_in_is_swept_as_a_pending_status_and_a_live_one_stays,
    an_expired_usage_row_is_swept_as_billing_and_a_live_one_stays,
    an_expired_user_pairing_is_swept_as_messages_and_a_live_one_stays,
    a_users_last_inbound_is_swept_as_a_service_window_a_day_later_and_a_newer_one_stays,
    an_expired_template_is_swept_as_messages_and_a_live_one_stays,
    an_expired_message_is_swept_as_messages_and_a_live_one_stays,
    an_expired_wamid_index_item_is_swept_as_messages_and_a_live_one_stays,
    an_expired_pending_status_is_swept_as_a_pending_status_and_a_live_one_stays,
    an_expired_ledger_entry_is_swept_as_billing_and_a_live_one_stays,
    an_expired_idempotency_key_is_swept_as_idempotency_and_a_live_one_stays,
    an_expired_audit_event_is_swept_as_audit_and_a_live_one_and_the_head_stay,
    an_expired_parked_audit_event_is_swept_as_audit_and_a_live_one_stays,
    chains_with_parked_audit_events_are_listed_once_each_until_linked_in_or_expired,
    an_expired_quality_counter_is_swept_as_stats_and_a_live_one_stays,
    an_expired_broadcast_is_swept_as_messages_and_a_live_one_stays,
    an_expired_broadcast_list_is_swept_as_a_broadcast_list_and_a_live_one_stays,
    an_idle_send_slot_is_swept_as_a_send_slot_and_a_used_one_stays,
    an_expired_session_is_swept_as_a_session_and_a_live_one_stays,
    failed_login_counters_are_swept_a_day_after_their_last_failure,
    a_closed_out_tenants_api_keys_are_swept_as_active_config_and_an_open_tenants_stay,
    a_closed_out_tenants_key_hash_copies_are_swept_as_active_config_and_an_open_tenants_stay,
    a_closed_out_tenants_opt_outs_are_swept_as_active_config_and_an_open_tenants_stay,
    a_closed_out_tenants_users_are_swept_as_active_config_and_an_open_tenants_stay,
    a_closed_out_tenants_email_claims_are_deleted_at_its_close_out_and_an_open_tenants_stay,
    a_closed_out_tenants_2fa_setting_is_swept_as_active_config_and_an_open_tenants_stays,
    a_closed_out_tenants_status_callback_is_swept_as_active_config_and_an_open_tenants_stays,
    a_closed_out_tenants_audit_head_is_swept_as_active_config_and_an_open_tenants_stays,
    a_closed_out_tenant_is_swept_as_billing_and_an_open_tenant_stays,
    a_phone_route_is_never_swept_the_close_out_removes_a_closed_tenants,
    the_sweeps_checkpoint_is_never_swept,
);
