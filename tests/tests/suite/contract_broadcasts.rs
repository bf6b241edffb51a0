//! The dispatcher's claim of a broadcast's message, on the memory adapter and on DynamoDB
//! (moto): claimed only while its broadcast has no hold; a held one is left `accepted`
//! exactly as it was, however often it is looked at.

use chrono::Duration;
use kirim::domain::{MessageStatus, TemplateCategory, TemplateRef};
use kirim::ports::*;

use super::contract::{aws, aws_and_table, contract, memory, message, onboarded, Ports};
use kirim::domain::MessageId;
use kirim::store_error::StoreError;

/// A running broadcast of `tenant`'s to three recipients at a credit each, none queued.
pub(crate) fn running_broadcast(
    tenant: &kirim::domain::TenantId,
    now: chrono::DateTime<chrono::Utc>,
) -> Broadcast {
    Broadcast {
        id: kirim::domain::new_id(),
        tenant_id: tenant.clone(),
        template: TemplateRef {
            name: "promo".into(),
            language: "en".into(),
            category: TemplateCategory::Utility,
        },
        accepted: 3,
        skipped_opted_out: 0,
        invalid: 0,
        duplicates: 0,
        price_each: 1,
        status: BroadcastStatus::FanningOut,
        enqueued: 0,
        created_at: now,
        expires_at: Some(now.timestamp() + 86_400),
        name: None,
        from: None,
        send_at: None,
        started_at: Some(now),
        ended_at: None,
        control: None,
        retry_of: None,
        retried_by: None,
        refunded_unsent: 0,
        closed_unqueued: 0,
        control_at: None,
        fanout_token: None,
    }
}

/// A tenant's running broadcast with `n` recorded messages, `accepted`.
async fn broadcast_with_messages(p: &Ports, n: usize) -> (Tenant, Broadcast, Vec<MessageId>) {
    let t = onboarded(p, 100).await;
    let now = p.clock.now();
    let b = running_broadcast(&t.id, now);
    let (_, mut debit) = message(p, &t.id, 3600);
    debit.amount = -3;
    debit.message_id = None;
    p.broadcasts
        .create_broadcast(&b, &[], &debit)
        .await
        .unwrap();
    let mut ids = Vec::new();
    for _ in 0..n {
        let (mut rec, _) = message(p, &t.id, 3600);
        rec.broadcast_id = Some(b.id.clone());
        assert!(p.broadcasts.insert_broadcast_message(&rec).await.unwrap());
        ids.push(rec.id);
    }
    (t, b, ids)
}

async fn a_broadcasts_message_is_claimed_only_while_its_broadcast_has_no_hold_and_a_held_one_stays_as_it_was(
    p: Ports,
) {
    let (t, b, ids) = broadcast_with_messages(&p, 3).await;
    let now = p.clock.now();
    let claim = |i: usize| {
        let (p, t, b, id) = (&p, &t, &b, ids[i].clone());
        async move {
            p.broadcasts
                .claim_broadcast_message(&t.id, &id, &b.id, "c1", p.clock.now())
                .await
                .unwrap()
        }
    };

    // No hold: claimed, answered as it is now.
    let BroadcastClaim::Claimed(first) = claim(0).await else {
        panic!("a free broadcast's message is claimed")
    };
    assert_eq!((first.status, first.attempts), (MessageStatus::Sending, 1));
    assert_eq!(claim(0).await, BroadcastClaim::Refused, "claimed once only");

    // Paused: held, and the message stays exactly as it was, look after look.
    let before = p
        .messages
        .get_message(&t.id, &ids[1])
        .await
        .unwrap()
        .unwrap();
    assert!(p
        .broadcasts
        .set_broadcast_control(&t.id, &b.id, &[None], Some(BroadcastControl::Paused), now)
        .await
        .unwrap());
    for _ in 0..3 {
        p.clock.advance(Duration::seconds(30));
        assert_eq!(
            claim(1).await,
            BroadcastClaim::Held(BroadcastControl::Paused)
        );
    }
    let after = p
        .messages
        .get_message(&t.id, &ids[1])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after.status, MessageStatus::Accepted);
    assert_eq!(after.attempts, before.attempts, "no attempt counted");
    assert_eq!(after.events, before.events, "its history does not grow");
    assert_eq!(after.updated_at, before.updated_at, "nor its time move");
    assert_eq!(after, before, "exactly as it was");

    // Resumed: claimed.
    assert!(p
        .broadcasts
        .set_broadcast_control(
            &t.id,
            &b.id,
            &[Some(BroadcastControl::Paused)],
            None,
            p.clock.now()
        )
        .await
        .unwrap());
    let BroadcastClaim::Claimed(resumed) = claim(1).await else {
        panic!("a resumed broadcast's message is claimed")
    };
    // Given back for a retry (it keeps that claim's token), then held again: as it was,
    // its earlier claim's token too.
    let err = kirim::domain::MessageError {
        code: "130429".into(),
        title: "rate limited".into(),
    };
    p.clock.advance(Duration::seconds(1));
    p.messages
        .release_for_retry(&t.id, &ids[1], resumed.updated_at, &err, p.clock.now())
        .await
        .unwrap();
    let released = p
        .messages
        .get_message(&t.id, &ids[1])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(released.claim.as_deref(), Some("c1"));
    assert!(p
        .broadcasts
        .set_broadcast_control(&t.id, &b.id, &[None], Some(BroadcastControl::Paused), now)
        .await
        .unwrap());
    p.clock.advance(Duration::seconds(30));
    let again = p
        .broadcasts
        .claim_broadcast_message(&t.id, &ids[1], &b.id, "c2", p.clock.now())
        .await
        .unwrap();
    assert_eq!(again, BroadcastClaim::Held(BroadcastControl::Paused));
    let held = p
        .messages
        .get_message(&t.id, &ids[1])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        held, released,
        "exactly as it was, its earlier claim's token too"
    );
    assert!(p
        .broadcasts
        .set_broadcast_control(
            &t.id,
            &b.id,
            &[Some(BroadcastControl::Paused)],
            None,
            p.clock.now()
        )
        .await
        .unwrap());

    // Cancelled: held as cancelled, left `accepted` for its refund.
    assert!(p
        .broadcasts
        .set_broadcast_control(
            &t.id,
            &b.id,
            &[None],
            Some(BroadcastControl::Cancelled),
            p.clock.now()
        )
        .await
        .unwrap());
    assert_eq!(
        claim(2).await,
        BroadcastClaim::Held(BroadcastControl::Cancelled)
    );
    let third = p
        .messages
        .get_message(&t.id, &ids[2])
        .await
        .unwrap()
        .unwrap();
    assert_eq!((third.status, third.attempts), (MessageStatus::Accepted, 0));
}

/// A scheduled broadcast's recipient list lasts its backstop from its start, not from its
/// creation (a broadcast may be scheduled 35 days ahead); and one whose list is gone closes
/// only from where its fan-out stood, refunding the recipients never queued, once.
async fn a_broadcasts_list_outlives_its_schedule_and_a_lost_one_is_refunded_once(p: Ports) {
    let t = onboarded(&p, 100).await;
    let now = p.clock.now();
    let phones: Vec<kirim::domain::PhoneNumber> = ["+60123450001", "+60123450002", "+60123450003"]
        .iter()
        .map(|s| kirim::domain::PhoneNumber::parse(s).unwrap())
        .collect();
    let b = Broadcast {
        price_each: 2,
        status: BroadcastStatus::Scheduled,
        expires_at: Some(now.timestamp() + 90 * 86_400),
        send_at: Some(now + Duration::days(30)),
        started_at: None,
        ..running_broadcast(&t.id, now)
    };
    let (_, mut debit) = message(&p, &t.id, 3600);
    debit.amount = -6;
    debit.message_id = None;
    p.broadcasts
        .create_broadcast(&b, &phones, &debit)
        .await
        .unwrap();
    let credits = || async { p.tenants.get_tenant(&t.id).await.unwrap().unwrap().credits };
    let after_debit = credits().await;
    // Day 30 and a bit: due, the list is still there.
    p.clock.advance(Duration::days(30) + Duration::minutes(1));
    assert_eq!(
        p.broadcasts
            .broadcast_recipients(&t.id, &b.id)
            .await
            .unwrap()
            .map(|l| l.len()),
        Some(3),
        "the list outlives the schedule"
    );
    assert!(p
        .broadcasts
        .start_broadcast(&t.id, &b.id, p.clock.now())
        .await
        .unwrap());
    p.broadcasts
        .broadcast_progress(&t.id, &b.id, 1, false, FanoutHop::default())
        .await
        .unwrap();
    // Eight days later (a long pause), the list's backstop has passed.
    p.clock.advance(Duration::days(8));
    assert_eq!(
        p.broadcasts
            .broadcast_recipients(&t.id, &b.id)
            .await
            .unwrap(),
        None
    );
    let refund = |amount: i64| {
        let (_, mut r) = message(&p, &t.id, 3600);
        r.kind = LedgerKind::Refund;
        r.amount = amount;
        r.message_id = None;
        r
    };
    assert!(
        !p.broadcasts
            .close_broadcast_unsent(&t.id, &b.id, 0, 3, Some(&refund(6)), p.clock.now())
            .await
            .unwrap(),
        "not from where its fan-out stood"
    );
    assert_eq!(credits().await, after_debit);
    assert!(p
        .broadcasts
        .close_broadcast_unsent(&t.id, &b.id, 1, 2, Some(&refund(4)), p.clock.now())
        .await
        .unwrap());
    assert!(
        !p.broadcasts
            .close_broadcast_unsent(&t.id, &b.id, 1, 2, Some(&refund(4)), p.clock.now())
            .await
            .unwrap(),
        "once"
    );
    assert_eq!(credits().await, after_debit + 4);
    let closed = p
        .broadcasts
        .get_broadcast(&t.id, &b.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (closed.status, closed.enqueued),
        (BroadcastStatus::Enqueued, 1)
    );
    assert_eq!(
        (closed.refunded_unsent, closed.ended_at),
        (2, Some(p.clock.now())),
        "the two never queued are recorded with the close"
    );
}

/// A broadcast's refund naming a tenant that is gone writes nothing and says `NotFound`, as
/// a message's does: the cancel (or close) with its refund is one write, never the cancel
/// without the refund (a retry then found it cancelled, and the refund was lost).
async fn a_broadcasts_refund_for_a_tenant_that_is_gone_writes_nothing(p: Ports) {
    let t = onboarded(&p, 100).await;
    let now = p.clock.now();
    let phones: Vec<kirim::domain::PhoneNumber> = ["+60123450001", "+60123450002"]
        .iter()
        .map(|s| kirim::domain::PhoneNumber::parse(s).unwrap())
        .collect();
    let scheduled = Broadcast {
        price_each: 2,
        status: BroadcastStatus::Scheduled,
        expires_at: Some(now.timestamp() + 90 * 86_400),
        send_at: Some(now + Duration::days(1)),
        started_at: None,
        ..running_broadcast(&t.id, now)
    };
    let fanning = running_broadcast(&t.id, now);
    for b in [&scheduled, &fanning] {
        let (_, mut debit) = message(&p, &t.id, 3600);
        debit.amount = -4;
        debit.message_id = None;
        p.broadcasts
            .create_broadcast(b, &phones, &debit)
            .await
            .unwrap();
    }
    let credits = p.tenants.get_tenant(&t.id).await.unwrap().unwrap().credits;
    let (_, mut refund) = message(&p, &t.id, 3600);
    refund.kind = LedgerKind::Refund;
    refund.amount = 4;
    refund.message_id = None;
    refund.tenant_id = kirim::domain::TenantId::generate();
    assert_eq!(
        p.broadcasts
            .cancel_scheduled_broadcast(&t.id, &scheduled.id, &refund, now)
            .await
            .unwrap_err(),
        StoreError::NotFound
    );
    assert_eq!(
        p.broadcasts
            .close_broadcast_unsent(&t.id, &fanning.id, 0, 2, Some(&refund), now)
            .await
            .unwrap_err(),
        StoreError::NotFound
    );
    let status = |id: String| {
        let p = &p;
        let t = &t;
        async move {
            p.broadcasts
                .get_broadcast(&t.id, &id)
                .await
                .unwrap()
                .unwrap()
                .status
        }
    };
    assert_eq!(
        status(scheduled.id.clone()).await,
        BroadcastStatus::Scheduled
    );
    assert_eq!(
        status(fanning.id.clone()).await,
        BroadcastStatus::FanningOut
    );
    assert_eq!(
        p.broadcasts
            .broadcast_recipients(&t.id, &scheduled.id)
            .await
            .unwrap()
            .map(|l| l.len()),
        Some(2),
        "the list kept"
    );
    assert_eq!(
        p.tenants.get_tenant(&t.id).await.unwrap().unwrap().credits,
        credits
    );
}

/// A broadcast cancelled before it started leaves its recipient list to its backstop (a
/// week after its `send_at`): until then its export lists each recipient `cancelled` (they
/// have no message), and then it goes as any list does. A second cancel writes nothing.
async fn a_scheduled_broadcast_cancelled_keeps_its_recipients_until_its_lists_backstop(p: Ports) {
    let t = onboarded(&p, 100).await;
    let now = p.clock.now();
    let phones: Vec<kirim::domain::PhoneNumber> = ["+60123450001", "+60123450002"]
        .iter()
        .map(|s| kirim::domain::PhoneNumber::parse(s).unwrap())
        .collect();
    let b = Broadcast {
        price_each: 2,
        accepted: 2,
        status: BroadcastStatus::Scheduled,
        expires_at: Some(now.timestamp() + 90 * 86_400),
        send_at: Some(now + Duration::days(1)),
        started_at: None,
        ..running_broadcast(&t.id, now)
    };
    let (_, mut debit) = message(&p, &t.id, 3600);
    debit.amount = -4;
    debit.message_id = None;
    p.broadcasts
        .create_broadcast(&b, &phones, &debit)
        .await
        .unwrap();
    let (_, mut refund) = message(&p, &t.id, 3600);
    refund.kind = LedgerKind::Refund;
    refund.amount = 4;
    refund.message_id = None;
    assert!(p
        .broadcasts
        .cancel_scheduled_broadcast(&t.id, &b.id, &refund, now)
        .await
        .unwrap());
    assert!(!p
        .broadcasts
        .cancel_scheduled_broadcast(&t.id, &b.id, &refund, now)
        .await
        .unwrap());
    let listed = || async {
        p.broadcasts
            .broadcast_recipients(&t.id, &b.id)
            .await
            .unwrap()
    };
    assert_eq!(listed().await, Some(phones.clone()));
    // Until its backstop (its send_at + 7 days), then gone.
    p.clock
        .advance(Duration::seconds(b.list_expires_at() - now.timestamp() - 1));
    assert_eq!(listed().await, Some(phones.clone()));
    p.clock.advance(Duration::seconds(2));
    assert_eq!(listed().await, None);
}

async fn concurrent_broadcasts_with_one_key_make_one_broadcast_and_one_debit(p: Ports) {
    let t = onboarded(&p, 100).await;
    let now = p.clock.now();
    let phones: Vec<kirim::domain::PhoneNumber> = ["+60123450001", "+60123450002", "+60123450003"]
        .iter()
        .map(|s| kirim::domain::PhoneNumber::parse(s).unwrap())
        .collect();
    let key_hash = kirim::secret::token_hash("campaign-form-1");
    let attempts: Vec<_> = (0..6)
        .map(|_| {
            let b = running_broadcast(&t.id, now);
            let (_, mut debit) = message(&p, &t.id, 3600);
            debit.amount = -3;
            debit.message_id = None;
            let key = RequestKeyRecord {
                tenant_id: t.id.clone(),
                key_hash: key_hash.clone(),
                fingerprint: "the-form".into(),
                first_id: b.id.clone(),
                created_at: now,
                expires_at: Some(now.timestamp() + 86_400),
            };
            let (store, phones) = (p.broadcasts.clone(), phones.clone());
            tokio::spawn(async move {
                let r = store.create_broadcast_once(&b, &phones, &debit, &key).await;
                (r, b.id)
            })
        })
        .collect();
    let (mut created, mut earlier) = (Vec::new(), Vec::new());
    for a in attempts {
        match a.await.unwrap() {
            (Ok(BroadcastOnce::Created), id) => created.push(id),
            (Ok(BroadcastOnce::Earlier(r)), _) => earlier.push(r.first_id),
            (Err(e), _) => panic!("{e:?}"),
        }
    }
    assert_eq!(created.len(), 1, "one broadcast");
    assert!(earlier.iter().all(|id| *id == created[0]), "{earlier:?}");
    assert_eq!(
        p.tenants.get_tenant(&t.id).await.unwrap().unwrap().credits,
        97,
        "one debit"
    );
    assert_eq!(
        p.broadcasts
            .broadcast_key(&t.id, &key_hash)
            .await
            .unwrap()
            .map(|r| r.first_id),
        Some(created[0].clone())
    );
    // A day on, the key is forgotten and may be used afresh.
    p.clock.advance(Duration::days(1) + Duration::seconds(1));
    assert_eq!(
        p.broadcasts.broadcast_key(&t.id, &key_hash).await.unwrap(),
        None
    );
}

/// Retries of one broadcast written at once (two people, two forms, two keys): one is
/// written and marks the broadcast; the others are refused whole, nothing debited.
async fn concurrent_retries_of_one_broadcast_write_one_and_debit_once(p: Ports) {
    let t = onboarded(&p, 100).await;
    let now = p.clock.now();
    let original = running_broadcast(&t.id, now);
    let (_, mut debit) = message(&p, &t.id, 3600);
    debit.amount = -3;
    debit.message_id = None;
    p.broadcasts
        .create_broadcast(&original, &[], &debit)
        .await
        .unwrap();
    let phone = kirim::domain::PhoneNumber::parse("+60123450004").unwrap();
    let attempts: Vec<_> = (0..5)
        .map(|_| {
            let mut b = running_broadcast(&t.id, now);
            b.accepted = 1;
            b.retry_of = Some(original.id.clone());
            let (_, mut debit) = message(&p, &t.id, 3600);
            debit.amount = -1;
            debit.message_id = None;
            let (store, phone) = (p.broadcasts.clone(), phone.clone());
            tokio::spawn(async move {
                let r = store.create_broadcast(&b, &[phone], &debit).await;
                (r, b.id)
            })
        })
        .collect();
    let mut written = Vec::new();
    for a in attempts {
        match a.await.unwrap() {
            (Ok(()), id) => written.push(id),
            (Err(kirim::store_error::StoreError::Conflict(m)), _) => {
                assert_eq!(m, ALREADY_RETRIED)
            }
            (Err(e), _) => panic!("{e:?}"),
        }
    }
    assert_eq!(written.len(), 1, "one retry");
    let marked = p
        .broadcasts
        .get_broadcast(&t.id, &original.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(marked.retried_by.as_deref(), Some(written[0].as_str()));
    assert_eq!(
        p.tenants.get_tenant(&t.id).await.unwrap().unwrap().credits,
        96,
        "the broadcast and one retry debited"
    );
    // A retry of a broadcast that is not there is refused the same way.
    let mut b = running_broadcast(&t.id, now);
    b.retry_of = Some(kirim::domain::new_id());
    let (_, mut debit) = message(&p, &t.id, 3600);
    debit.amount = -1;
    debit.message_id = None;
    assert!(matches!(
        p.broadcasts.create_broadcast(&b, &[phone], &debit).await,
        Err(kirim::store_error::StoreError::Conflict(_))
    ));
}

/// A cancelled broadcast's unqueued recipients closed in one write: only while it is
/// fanning out, cancelled, from the progress given; a message already recorded refuses the
/// whole write and is named; a gone refund tenant writes nothing; the write itself stores
/// the messages, refunds them and moves the progress, once.
async fn a_cancelled_broadcasts_unqueued_recipients_are_recorded_and_refunded_in_one_write_or_not_at_all(
    p: Ports,
) {
    let (t, b, _) = broadcast_with_messages(&p, 0).await;
    let credits = || async { p.tenants.get_tenant(&t.id).await.unwrap().unwrap().credits };
    let before = credits().await;
    let now = p.clock.now();
    let cancelled = |i: usize| {
        let (mut m, _) = message(&p, &t.id, 3600);
        m.id = MessageId::from_trusted(
            ulid::Ulid::from_parts(b.created_at.timestamp_millis() as u64, i as u128 + 1)
                .to_string(),
        );
        m.broadcast_id = Some(b.id.clone());
        m.status = MessageStatus::Cancelled;
        m
    };
    let ms: Vec<_> = (0..3).map(cancelled).collect();
    let refund = |amount: i64, tenant: &kirim::domain::TenantId| {
        let (_, mut r) = message(&p, tenant, 3600);
        r.kind = LedgerKind::Refund;
        r.amount = amount;
        r.message_id = None;
        r
    };
    let write = |from: usize, ms: Vec<kirim::domain::MessageRecord>, r: LedgerEntry| {
        let p = &p;
        let (t, b) = (&t, &b);
        async move {
            p.broadcasts
                .record_unqueued(
                    &t.id,
                    &b.id,
                    from,
                    from + 3,
                    &ms,
                    Some(&r),
                    UnqueuedClose::Cancelled,
                )
                .await
        }
    };
    // Not cancelled: nothing.
    assert_eq!(
        write(0, ms.clone(), refund(3, &t.id)).await.unwrap(),
        CancelledRecipients::Moved
    );
    assert!(p
        .broadcasts
        .set_broadcast_control(
            &t.id,
            &b.id,
            &[None],
            Some(BroadcastControl::Cancelled),
            now
        )
        .await
        .unwrap());
    // Not from where its progress stands: nothing.
    assert_eq!(
        write(1, ms.clone(), refund(3, &t.id)).await.unwrap(),
        CancelledRecipients::Moved
    );
    // The refund's tenant gone: nothing.
    assert_eq!(
        write(
            0,
            ms.clone(),
            refund(3, &kirim::domain::TenantId::generate())
        )
        .await
        .unwrap_err(),
        StoreError::NotFound
    );
    // The second one recorded meanwhile (as `accepted`, by a fan-out that did not know):
    // named, and nothing written.
    let mut straggler = ms[1].clone();
    straggler.status = MessageStatus::Accepted;
    assert!(p
        .broadcasts
        .insert_broadcast_message(&straggler)
        .await
        .unwrap());
    assert_eq!(
        write(0, ms.clone(), refund(3, &t.id)).await.unwrap(),
        CancelledRecipients::Recorded(vec![1])
    );
    for m in [&ms[0], &ms[2]] {
        assert!(p
            .messages
            .get_message(&t.id, &m.id)
            .await
            .unwrap()
            .is_none());
    }
    assert_eq!(credits().await, before, "nothing refunded yet");
    let read = || async {
        p.broadcasts
            .get_broadcast(&t.id, &b.id)
            .await
            .unwrap()
            .unwrap()
    };
    assert_eq!(read().await.enqueued, 0);
    // Without it: written, refunded, the progress moved past all three.
    let rest = vec![ms[0].clone(), ms[2].clone()];
    assert_eq!(
        write(0, rest.clone(), refund(2, &t.id)).await.unwrap(),
        CancelledRecipients::Written
    );
    assert_eq!(credits().await, before + 2);
    assert_eq!(read().await.enqueued, 3);
    for (m, want) in [
        (&ms[0], MessageStatus::Cancelled),
        (&ms[1], MessageStatus::Accepted),
        (&ms[2], MessageStatus::Cancelled),
    ] {
        let got = p.messages.get_message(&t.id, &m.id).await.unwrap().unwrap();
        assert_eq!(got.status, want);
    }
    let tally = p.broadcasts.broadcast_tally(&read().await).await.unwrap();
    assert_eq!(tally.counts.get("cancelled"), Some(&2));
    // The consistent count (a cancel's) counts the same.
    let consistent = p
        .broadcasts
        .broadcast_tally_consistent(&read().await)
        .await
        .unwrap();
    assert_eq!(consistent.counts, tally.counts);
    // Again (an answer lost, a duplicate job): the progress moved, nothing twice.
    assert_eq!(
        write(0, rest, refund(2, &t.id)).await.unwrap(),
        CancelledRecipients::Moved
    );
    assert_eq!(credits().await, before + 2);
}

/// A broadcast's unqueued recipients closed `failed` (it can no longer go as accepted) in
/// one write: only while it runs (a pause or a cancel refuses it, nothing written), from the
/// progress given; written, it stores them, refunds them and moves the progress, once.
async fn a_failed_close_of_unqueued_recipients_is_written_only_while_the_broadcast_runs(p: Ports) {
    let (t, b, _) = broadcast_with_messages(&p, 0).await;
    let credits = || async { p.tenants.get_tenant(&t.id).await.unwrap().unwrap().credits };
    let before = credits().await;
    let now = p.clock.now();
    let ms: Vec<_> = (0..3)
        .map(|i: usize| {
            let (mut m, _) = message(&p, &t.id, 3600);
            m.id = MessageId::from_trusted(
                ulid::Ulid::from_parts(b.created_at.timestamp_millis() as u64, i as u128 + 1)
                    .to_string(),
            );
            m.broadcast_id = Some(b.id.clone());
            m.status = MessageStatus::Failed;
            m
        })
        .collect();
    let refund = || {
        let (_, mut r) = message(&p, &t.id, 3600);
        r.kind = LedgerKind::Refund;
        r.amount = 3;
        r.message_id = None;
        r
    };
    let write = |from: usize| {
        let (p, t, b, ms, r) = (&p, &t, &b, ms.clone(), refund());
        async move {
            p.broadcasts
                .record_unqueued(
                    &t.id,
                    &b.id,
                    from,
                    from + 3,
                    &ms,
                    Some(&r),
                    UnqueuedClose::Failed,
                )
                .await
                .unwrap()
        }
    };
    let control = |from: Option<BroadcastControl>, to: Option<BroadcastControl>| {
        let (p, t, b) = (&p, &t, &b);
        async move {
            assert!(p
                .broadcasts
                .set_broadcast_control(&t.id, &b.id, &[from], to, now)
                .await
                .unwrap());
        }
    };
    control(None, Some(BroadcastControl::Paused)).await;
    assert_eq!(write(0).await, CancelledRecipients::Moved, "paused");
    control(Some(BroadcastControl::Paused), None).await;
    assert_eq!(
        write(1).await,
        CancelledRecipients::Moved,
        "not its progress"
    );
    assert_eq!(write(0).await, CancelledRecipients::Written);
    assert_eq!(credits().await, before + 3);
    let read = p
        .broadcasts
        .get_broadcast(&t.id, &b.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read.enqueued, 3);
    for m in &ms {
        let got = p.messages.get_message(&t.id, &m.id).await.unwrap().unwrap();
        assert_eq!(got.status, MessageStatus::Failed);
    }
    assert_eq!(write(0).await, CancelledRecipients::Moved, "once");
    control(None, Some(BroadcastControl::Cancelled)).await;
    assert_eq!(write(3).await, CancelledRecipients::Moved, "cancelled");
    assert_eq!(credits().await, before + 3);
}

/// A fan-out's progress write is conditional on the broadcast's fan-out token (`FanoutHop`):
/// written only while the broadcast carries the token the run's job carries (none: it has
/// none), never backwards; a run's last write moves the token on, and only once from a
/// given token (the second delivery of a job is refused, so it queues no second chain),
/// except for the very same write again (its answer lost, the SDK's retry); `done` deletes
/// the list only when the write is made.
async fn a_fan_out_progress_write_moves_its_chain_on_only_from_the_token_its_job_carries(p: Ports) {
    let t = onboarded(&p, 100).await;
    let now = p.clock.now();
    let phones: Vec<kirim::domain::PhoneNumber> = ["+60123450011", "+60123450012", "+60123450013"]
        .iter()
        .map(|s| kirim::domain::PhoneNumber::parse(s).unwrap())
        .collect();
    let b = running_broadcast(&t.id, now);
    let (_, mut debit) = message(&p, &t.id, 3600);
    debit.amount = -3;
    debit.message_id = None;
    p.broadcasts
        .create_broadcast(&b, &phones, &debit)
        .await
        .unwrap();
    let hop =
        |expected: Option<&'static str>, next: Option<&'static str>| FanoutHop { expected, next };
    let write = |n: usize, done: bool, h: FanoutHop<'static>| {
        let (p, t, id) = (&p, &t, b.id.clone());
        async move {
            p.broadcasts
                .broadcast_progress(&t.id, &id, n, done, h)
                .await
                .unwrap()
        }
    };
    let stored = || async {
        let b = p
            .broadcasts
            .get_broadcast(&t.id, &b.id)
            .await
            .unwrap()
            .unwrap();
        (b.enqueued, b.fanout_token, b.status)
    };
    let running = BroadcastStatus::FanningOut;

    assert!(
        !write(1, false, hop(Some("t0"), None)).await,
        "a token it does not carry"
    );
    assert_eq!(stored().await, (0, None, running));
    assert!(
        write(1, false, hop(None, None)).await,
        "none, as its job carries"
    );
    assert_eq!(
        stored().await,
        (1, None, running),
        "a write within a run keeps the token"
    );
    assert!(
        write(2, false, hop(None, Some("t1"))).await,
        "a run's last write"
    );
    assert_eq!(stored().await, (2, Some("t1".into()), running));
    assert!(
        write(2, false, hop(None, Some("t1"))).await,
        "the same write again (its answer lost): written, the same"
    );
    assert_eq!(stored().await, (2, Some("t1".into()), running));
    assert!(
        !write(2, false, hop(None, Some("t1b"))).await,
        "the other delivery of the same job: refused"
    );
    assert!(
        !write(3, false, hop(None, None)).await,
        "nor within its run"
    );
    assert_eq!(stored().await, (2, Some("t1".into()), running));
    assert!(
        !write(1, false, hop(Some("t1"), Some("t2"))).await,
        "never backwards"
    );
    // A token moved on and put back (its next job could not be queued).
    assert!(write(2, false, hop(Some("t1"), Some("t2"))).await);
    assert!(write(2, false, hop(Some("t2"), Some("t1"))).await);
    assert_eq!(stored().await, (2, Some("t1".into()), running));
    // The end: refused, the list stays (another run of the chain needs it).
    assert!(!write(3, true, hop(Some("t2"), Some("t3"))).await);
    assert_eq!(stored().await, (2, Some("t1".into()), running));
    assert!(p
        .broadcasts
        .broadcast_recipients(&t.id, &b.id)
        .await
        .unwrap()
        .is_some());
    assert!(write(3, true, hop(Some("t1"), Some("t3"))).await);
    assert_eq!(
        stored().await,
        (3, Some("t3".into()), BroadcastStatus::Enqueued)
    );
    assert_eq!(
        p.broadcasts
            .broadcast_recipients(&t.id, &b.id)
            .await
            .unwrap(),
        None,
        "deleted with the last write"
    );
    // A broadcast that is gone records nothing, and is not an error.
    assert!(!p
        .broadcasts
        .broadcast_progress(
            &t.id,
            &kirim::domain::new_id(),
            1,
            false,
            FanoutHop::default()
        )
        .await
        .unwrap());
}

contract!(
    a_fan_out_progress_write_moves_its_chain_on_only_from_the_token_its_job_carries,
    a_cancelled_broadcasts_unqueued_recipients_are_recorded_and_refunded_in_one_write_or_not_at_all,
    a_failed_close_of_unqueued_recipients_is_written_only_while_the_broadcast_runs,
    a_broadcasts_message_is_claimed_only_while_its_broadcast_has_no_hold_and_a_held_one_stays_as_it_was,
    concurrent_retries_of_one_broadcast_write_one_and_debit_once,
    a_broadcasts_list_outlives_its_schedule_and_a_lost_one_is_refunded_once,
    concurrent_broadcasts_with_one_key_make_one_broadcast_and_one_debit,
    a_broadcasts_refund_for_a_tenant_that_is_gone_writes_nothing,
    a_scheduled_broadcast_cancelled_keeps_its_recipients_until_its_lists_backstop,
);

/// On DynamoDB the claim and the read of its broadcast's hold are two calls: a claim whose
/// hold cannot be read is given back, so the message is not left `sending` with nothing
/// sent (its retried job then finds it `accepted` again).
#[tokio::test]
async fn on_dynamodb_a_claim_whose_hold_cannot_be_read_is_given_back_untouched() {
    use aws_sdk_dynamodb::types::AttributeValue;
    let (p, table, name) = aws_and_table().await;
    let (t, b, ids) = broadcast_with_messages(&p, 1).await;
    let before = p
        .messages
        .get_message(&t.id, &ids[0])
        .await
        .unwrap()
        .unwrap();
    // The broadcast's item unreadable (a count stored as text).
    table
        .update_item()
        .table_name(&name)
        .key("pk", AttributeValue::S(format!("TENANT#{}", t.id)))
        .key("sk", AttributeValue::S(format!("BROADCAST#{}", b.id)))
        .update_expression("SET accepted = :bad")
        .expression_attribute_values(":bad", AttributeValue::S("many".into()))
        .send()
        .await
        .unwrap();
    let err = p
        .broadcasts
        .claim_broadcast_message(&t.id, &ids[0], &b.id, "c1", p.clock.now())
        .await
        .expect_err("the hold cannot be read");
    assert!(
        matches!(err, kirim::store_error::StoreError::Corrupt(_)),
        "{err:?}"
    );
    let after = p
        .messages
        .get_message(&t.id, &ids[0])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (after.status, after.attempts, &after.events),
        (MessageStatus::Accepted, before.attempts, &before.events),
        "given back exactly as it was"
    );
}
