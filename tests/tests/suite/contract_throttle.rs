//! The contract of `Throughput` and `SendingControl`, on the memory adapter and on
//! DynamoDB (moto): the same assertions for both.

use std::time::Duration;

use chrono::Utc;
use kirim::domain::{
    MessageError, MessageId, MessageRecord, MessageStatus, PhoneNumber, StatusEvent, TenantId,
};
use kirim::ports::*;
use kirim::store_error::StoreError;

use crate::contract::{key_for, tenant};

use super::contract::{aws, memory, Ports as Stores};

async fn onboarded(p: &Stores) -> Tenant {
    let t = tenant(10);
    p.tenants
        .create_tenant(&t, &key_for(&t), None)
        .await
        .expect("tenant");
    t
}

/// A message of `t`, accepted, then claimed (`sending`, one attempt).
async fn claimed(p: &Stores, t: &TenantId) -> MessageRecord {
    let now = p.clock.now();
    let id = MessageId::from_trusted(ulid::Ulid::from_datetime(now.into()).to_string());
    let rec = MessageRecord {
        id: id.clone(),
        tenant_id: t.clone(),
        to: PhoneNumber::parse("+60123456789").expect("phone"),
        template: None,
        status: MessageStatus::Accepted,
        error: None,
        events: vec![StatusEvent {
            status: MessageStatus::Accepted,
            at: now,
        }],
        wamid: None,
        attempts: 0,
        price: 1,
        client_reference: None,
        created_at: now,
        updated_at: now,
        expires_at: Some(now.timestamp() + 3600),
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
    let debit = LedgerEntry {
        id: kirim::domain::new_id(),
        tenant_id: t.clone(),
        amount: -1,
        kind: LedgerKind::Debit,
        reference: None,
        message_id: Some(id.clone()),
        at: now,
        expires_at: Some(now.timestamp() + 3600),
    };
    p.messages
        .insert_with_debit(&rec, &debit)
        .await
        .expect("insert");
    let claim = StatusChange {
        count_attempt: true,
        ..Default::default()
    };
    match p
        .messages
        .transition(t, &id, MessageStatus::Sending, &claim, now)
        .await
        .expect("claim")
    {
        Transition::Applied(r) => *r,
        Transition::Refused => panic!("claim refused"),
    }
}

async fn two_hundred_concurrent_reservations_in_one_second_admit_exactly_the_limit(p: Stores) {
    let key = format!("pn{}", kirim_tests::rand_u32());
    let now = p.clock.now();
    let wait = Duration::from_millis(999);
    let tries = (0..200).map(|_| p.throughput.reserve_slot(&key, 80, now, wait));
    let results = futures::future::join_all(tries).await;
    let mut slots: Vec<i64> = results
        .into_iter()
        .filter_map(|r| r.expect("reserve"))
        .map(|t| t.timestamp_micros())
        .collect();
    assert_eq!(slots.len(), 80, "exactly the limit in one second");
    slots.sort();
    slots.dedup();
    assert_eq!(slots.len(), 80, "no slot is given twice");
    assert_eq!(slots[0], now.timestamp_micros(), "the first slot is now");
    for pair in slots.windows(2) {
        assert_eq!(pair[1] - pair[0], 12_500, "evenly spaced, 1/80 s apart");
    }
    assert!(slots[79] - slots[0] < 1_000_000);
}

async fn a_full_number_gets_slots_again_as_time_passes(p: Stores) {
    let key = format!("pn{}", kirim_tests::rand_u32());
    let now = p.clock.now();
    for _ in 0..20 {
        assert!(p
            .throughput
            .reserve_slot(&key, 20, now, Duration::from_millis(999))
            .await
            .expect("reserve")
            .is_some());
    }
    let full = p
        .throughput
        .reserve_slot(&key, 20, now, Duration::from_millis(999))
        .await
        .expect("reserve");
    assert_eq!(
        full, None,
        "the 21st in the same second waits longer than allowed"
    );
    // Without any wait allowed, only a slot that is due now is granted.
    assert_eq!(
        p.throughput
            .reserve_slot(&key, 20, now, Duration::ZERO)
            .await
            .expect("reserve"),
        None
    );
    p.clock.advance(chrono::Duration::seconds(1));
    let later = p.clock.now();
    assert_eq!(
        p.throughput
            .reserve_slot(&key, 20, later, Duration::ZERO)
            .await
            .expect("reserve")
            .map(|t| t.timestamp_micros()),
        Some(later.timestamp_micros()),
        "a second later the number is free again"
    );
    // Another number is never held up by this one.
    let other = format!("pn{}", kirim_tests::rand_u32());
    assert_eq!(
        p.throughput
            .reserve_slot(&other, 20, now, Duration::ZERO)
            .await
            .expect("reserve")
            .map(|t| t.timestamp_micros()),
        Some(now.timestamp_micros())
    );
}

async fn a_run_of_slots_reserved_at_once_counts_as_that_many_single_slots(p: Stores) {
    let key = format!("pn{}", kirim_tests::rand_u32());
    let now = p.clock.now();
    let us = now.timestamp_micros();
    let wait = Duration::from_millis(999);
    // An idle number: the run starts now and the next single slot follows its last one.
    let run = p
        .throughput
        .reserve_slots(&key, 20, now, wait, 10)
        .await
        .expect("reserve");
    assert_eq!(run.map(|t| t.timestamp_micros()), Some(us));
    let after = p
        .throughput
        .reserve_slot(&key, 20, now, wait)
        .await
        .expect("reserve");
    assert_eq!(
        after.map(|t| t.timestamp_micros()),
        Some(us + 10 * 50_000),
        "ten slots 1/20 s apart were taken"
    );
    // A run behind pending slots starts at the next free one: slots 11..=18 of 20.
    let second = p
        .throughput
        .reserve_slots(&key, 20, now, wait, 8)
        .await
        .expect("reserve");
    assert_eq!(second.map(|t| t.timestamp_micros()), Some(us + 11 * 50_000));
    // One slot is left in the second (its start, 20 × 50 ms, is past the wait): a run of
    // two does not fit and takes nothing; the single slot is still there.
    assert_eq!(
        p.throughput
            .reserve_slots(&key, 20, now, wait, 2)
            .await
            .expect("reserve"),
        None,
        "a run is granted whole or not at all"
    );
    assert_eq!(
        p.throughput
            .reserve_slot(&key, 20, now, wait)
            .await
            .expect("reserve")
            .map(|t| t.timestamp_micros()),
        Some(us + 19 * 50_000),
        "the refused run took nothing"
    );
    assert_eq!(
        p.throughput
            .reserve_slot(&key, 20, now, wait)
            .await
            .expect("reserve"),
        None,
        "and the number is full for the second: 20 in all"
    );
    // A run whose last slot starts exactly within the wait is granted: one slot, then a
    // run of 19 ending at 950 ms of the 999 ms allowed.
    let edge = format!("pn{}", kirim_tests::rand_u32());
    p.throughput
        .reserve_slot(&edge, 20, now, wait)
        .await
        .expect("reserve");
    assert_eq!(
        p.throughput
            .reserve_slots(&edge, 20, now, wait, 19)
            .await
            .expect("reserve")
            .map(|t| t.timestamp_micros()),
        Some(us + 50_000),
        "the run's last slot is the 20th of the second"
    );
    // A run longer than the wait allows is refused even on an idle number.
    let idle = format!("pn{}", kirim_tests::rand_u32());
    assert_eq!(
        p.throughput
            .reserve_slots(&idle, 20, now, wait, 21)
            .await
            .expect("reserve"),
        None
    );
    assert_eq!(
        p.throughput
            .reserve_slots(&idle, 20, now, wait, 20)
            .await
            .expect("reserve")
            .map(|t| t.timestamp_micros()),
        Some(us),
        "the refused run left the idle number idle"
    );
}

async fn concurrent_runs_and_single_slots_never_share_a_slot(p: Stores) {
    let key = format!("pn{}", kirim_tests::rand_u32());
    let now = p.clock.now();
    let wait = Duration::from_millis(999);
    // 80 a second: runs of 1..=5 and single slots racing for the same second.
    let tries = (0..40u32).map(|i| {
        let count = if i % 2 == 0 { 1 } else { 1 + i % 5 };
        let p = &p;
        let key = key.as_str();
        async move {
            p.throughput
                .reserve_slots(key, 80, now, wait, count)
                .await
                .expect("reserve")
                .map(|t| (t.timestamp_micros(), count))
        }
    });
    let mut slots: Vec<i64> = futures::future::join_all(tries)
        .await
        .into_iter()
        .flatten()
        .flat_map(|(first, count)| (0..i64::from(count)).map(move |i| first + i * 12_500))
        .collect();
    let granted = slots.len();
    slots.sort();
    slots.dedup();
    assert_eq!(slots.len(), granted, "no slot is given twice");
    assert!(granted <= 80, "never more than the second holds: {granted}");
    assert!(
        slots
            .iter()
            .all(|t| *t - now.timestamp_micros() < 1_000_000),
        "every slot within the wait"
    );
}

async fn a_tenants_throughput_tier_is_stored_and_an_unknown_tenant_is_not_found(p: Stores) {
    let t = onboarded(&p).await;
    assert_eq!(t.throughput_per_sec, None);
    let updated = p.throughput.set_throughput(&t.id, 20).await.expect("set");
    assert_eq!(updated.throughput_per_sec, Some(20));
    let read = p
        .tenants
        .get_tenant(&t.id)
        .await
        .expect("get")
        .expect("tenant");
    assert_eq!(read.throughput_per_sec, Some(20));
    assert_eq!(read.name, t.name);
    assert!(matches!(
        p.throughput.set_throughput(&TenantId::generate(), 80).await,
        Err(StoreError::NotFound)
    ));
}

async fn a_throttled_claim_goes_back_to_accepted_without_costing_an_attempt(p: Stores) {
    let t = onboarded(&p).await;
    let m = claimed(&p, &t.id).await;
    assert_eq!(m.attempts, 1);
    assert_eq!(
        m.events.last().map(|e| e.status),
        Some(MessageStatus::Sending)
    );
    let at = p.clock.now();
    // Told of another count of events than the message has: not the claim's state, refused.
    assert_eq!(
        p.sending
            .release_unattempted(&t.id, &m.id, m.updated_at, m.events.len() + 1, at, None)
            .await
            .expect("release"),
        Transition::Refused
    );
    let Transition::Applied(r) = p
        .sending
        .release_unattempted(&t.id, &m.id, m.updated_at, m.events.len(), at, None)
        .await
        .expect("release")
    else {
        panic!("release refused");
    };
    assert_eq!(r.status, MessageStatus::Accepted);
    assert_eq!(r.attempts, 0, "the claim is given back");
    assert_eq!(
        r.events,
        m.events[..m.events.len() - 1],
        "and its `sending` event: a turn-away leaves no trace in the history"
    );
    assert_eq!(
        p.sending
            .release_unattempted(&t.id, &m.id, m.updated_at, m.events.len(), at, None)
            .await
            .expect("release"),
        Transition::Refused,
        "only a sending message is released"
    );
}

/// A release names the claim it gives back (its `updated_at`): one repeated after its first
/// write landed (an SDK retry, the turn-away's fallback), or one that comes late, finds
/// another dispatcher's claim and leaves it, or a third could claim and send it again.
async fn a_release_gives_back_only_the_claim_it_was_made_for(p: Stores) {
    let t = onboarded(&p).await;
    let first = claimed(&p, &t.id).await;
    assert!(matches!(
        p.sending
            .release_unattempted(
                &t.id,
                &first.id,
                first.updated_at,
                first.events.len(),
                p.clock.now(),
                None,
            )
            .await
            .expect("release"),
        Transition::Applied(_)
    ));
    // Another dispatcher claims it (a duplicate job), a moment later.
    p.clock.advance(chrono::Duration::milliseconds(5));
    let claim = StatusChange {
        count_attempt: true,
        ..Default::default()
    };
    let Transition::Applied(second) = p
        .messages
        .transition(
            &t.id,
            &first.id,
            MessageStatus::Sending,
            &claim,
            p.clock.now(),
        )
        .await
        .expect("claim")
    else {
        panic!("the second claim refused");
    };
    let err = MessageError {
        code: "rate_limiter_unavailable".into(),
        title: "try again".into(),
    };
    assert_eq!(
        p.sending
            .release_unattempted(
                &t.id,
                &first.id,
                first.updated_at,
                first.events.len(),
                p.clock.now(),
                None,
            )
            .await
            .expect("release"),
        Transition::Refused,
        "the first claim's release repeated"
    );
    assert_eq!(
        p.messages
            .release_for_retry(&t.id, &first.id, first.updated_at, &err, p.clock.now())
            .await
            .expect("release"),
        Transition::Refused,
        "the first claim's fallback"
    );
    let held = p
        .messages
        .get_message(&t.id, &first.id)
        .await
        .expect("read")
        .expect("message");
    assert_eq!(
        (held.status, held.updated_at),
        (MessageStatus::Sending, second.updated_at),
        "still the second claim's"
    );
    assert!(matches!(
        p.messages
            .release_for_retry(&t.id, &first.id, second.updated_at, &err, p.clock.now())
            .await
            .expect("release"),
        Transition::Applied(_)
    ));
}

async fn a_released_claim_carries_the_slot_reserved_for_it_to_its_next_claim(p: Stores) {
    let t = onboarded(&p).await;
    let m = claimed(&p, &t.id).await;
    let slot = kirim::domain::CarriedSlot {
        at: p.clock.now() + chrono::Duration::seconds(7),
        attempt: m.attempts,
    };
    let Transition::Applied(r) = p
        .sending
        .release_unattempted(
            &t.id,
            &m.id,
            m.updated_at,
            m.events.len(),
            p.clock.now(),
            Some(slot),
        )
        .await
        .expect("release")
    else {
        panic!("release refused");
    };
    assert_eq!(
        (r.status, r.carried_slot),
        (MessageStatus::Accepted, Some(slot))
    );
    let claim = StatusChange {
        count_attempt: true,
        ..Default::default()
    };
    let again = |p: &Stores| {
        let (t, id, now) = (t.id.clone(), m.id.clone(), p.clock.now());
        let messages = p.messages.clone();
        let claim = claim.clone();
        async move {
            match messages
                .transition(&t, &id, MessageStatus::Sending, &claim, now)
                .await
                .expect("claim")
            {
                Transition::Applied(r) => *r,
                Transition::Refused => panic!("claim refused"),
            }
        }
    };
    let next = again(&p).await;
    assert_eq!(
        (next.carried_slot, next.attempts),
        (Some(slot), slot.attempt),
        "the next claim finds the slot, under the same attempt count"
    );
    // Released again without a slot (the number full beyond the horizon): it keeps it.
    p.sending
        .release_unattempted(
            &t.id,
            &m.id,
            next.updated_at,
            next.events.len(),
            p.clock.now(),
            None,
        )
        .await
        .expect("release");
    assert_eq!(again(&p).await.carried_slot, Some(slot));
}

async fn a_sending_message_expires_only_under_the_claim_that_was_seen(p: Stores) {
    let t = onboarded(&p).await;
    let m = claimed(&p, &t.id).await;
    let error = MessageError {
        code: "outcome_unknown".into(),
        title: "deadline".into(),
    };
    p.clock.advance(chrono::Duration::seconds(5));
    let at = p.clock.now();
    let other_claim = m.updated_at - chrono::Duration::seconds(1);
    assert_eq!(
        p.sending
            .expire_sending(&t.id, &m.id, other_claim, &error, at)
            .await
            .expect("expire"),
        Transition::Refused,
        "another claim's view changes nothing"
    );
    let Transition::Applied(r) = p
        .sending
        .expire_sending(&t.id, &m.id, m.updated_at, &error, at)
        .await
        .expect("expire")
    else {
        panic!("expire refused");
    };
    assert_eq!(r.status, MessageStatus::Failed);
    assert_eq!(r.error, Some(error.clone()));
    // The same move again (an SDK retry of a write whose answer was lost) is answered as
    // applied, so the callback it owes is queued; another deadline run's move is not.
    assert_eq!(
        p.sending
            .expire_sending(&t.id, &m.id, m.updated_at, &error, at)
            .await
            .expect("expire"),
        Transition::Applied(r.clone()),
        "this very move, repeated"
    );
    let later = at + chrono::Duration::milliseconds(3);
    assert_eq!(
        p.sending
            .expire_sending(&t.id, &m.id, m.updated_at, &error, later)
            .await
            .expect("expire"),
        Transition::Refused,
        "another move's"
    );
    let stored = p
        .messages
        .get_message(&t.id, &m.id)
        .await
        .expect("get")
        .expect("message");
    assert_eq!(stored.status, MessageStatus::Failed);
    // A message a webhook settled is never expired.
    let settled = claimed(&p, &t.id).await;
    p.messages
        .transition(
            &t.id,
            &settled.id,
            MessageStatus::Sent,
            &StatusChange::default(),
            Utc::now(),
        )
        .await
        .expect("sent");
    assert_eq!(
        p.sending
            .expire_sending(&t.id, &settled.id, settled.updated_at, &error, at)
            .await
            .expect("expire"),
        Transition::Refused
    );
}

crate::contract::contract!(
    two_hundred_concurrent_reservations_in_one_second_admit_exactly_the_limit,
    a_full_number_gets_slots_again_as_time_passes,
    a_run_of_slots_reserved_at_once_counts_as_that_many_single_slots,
    concurrent_runs_and_single_slots_never_share_a_slot,
    a_tenants_throughput_tier_is_stored_and_an_unknown_tenant_is_not_found,
    a_throttled_claim_goes_back_to_accepted_without_costing_an_attempt,
    a_release_gives_back_only_the_claim_it_was_made_for,
    a_released_claim_carries_the_slot_reserved_for_it_to_its_next_claim,
    a_sending_message_expires_only_under_the_claim_that_was_seen,
);
