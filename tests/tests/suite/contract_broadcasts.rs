//! The dispatcher's claim of a broadcast's message, on the memory adapter and on DynamoDB
//! (moto): claimed only while its broadcast has no hold; a held one is left `accepted`
//! exactly as it was, however often it is looked at.

use chrono::Duration;
use kirim::domain::{MessageStatus, TemplateCategory, TemplateRef};
use kirim::ports::*;

use super::contract::{aws, contract, memory, message, onboarded, Ports};

async fn a_broadcasts_message_is_claimed_only_while_its_broadcast_has_no_hold_and_a_held_one_stays_as_it_was(
    p: Ports,
) {
    let t = onboarded(&p, 100).await;
    let now = p.clock.now();
    let b = Broadcast {
        id: kirim::domain::new_id(),
        tenant_id: t.id.clone(),
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
    };
    let (_, mut debit) = message(&p, &t.id, 3600);
    debit.amount = -3;
    debit.message_id = None;
    p.broadcasts
        .create_broadcast(&b, &[], &debit)
        .await
        .unwrap();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (mut rec, _) = message(&p, &t.id, 3600);
        rec.broadcast_id = Some(b.id.clone());
        assert!(p.broadcasts.insert_broadcast_message(&rec).await.unwrap());
        ids.push(rec.id);
    }
    let claim = |i: usize| {
        let (p, t, b, id) = (&p, &t, &b, ids[i].clone());
        async move {
            p.broadcasts
                .claim_broadcast_message(&t.id, &id, &b.id, p.clock.now())
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
    assert!(matches!(claim(1).await, BroadcastClaim::Claimed(_)));

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

contract!(
    a_broadcasts_message_is_claimed_only_while_its_broadcast_has_no_hold_and_a_held_one_stays_as_it_was,
);
