//! The contract of a refunding failure (`MessageStore::fail_and_refund`): the `failed`
//! status, the balance and the refund entry move in one atomic write, only for a message
//! that has not reached Meta, and at most once.

use kirim::domain::{MessageError, MessageStatus};
use kirim::ports::*;
use kirim::store_error::StoreError;

use super::contract::{aws, contract, memory, message, onboarded, Ports};

fn refund_of(p: &Ports, m: &kirim::domain::MessageRecord) -> LedgerEntry {
    let now = p.clock.now();
    LedgerEntry {
        id: kirim::domain::new_id(),
        tenant_id: m.tenant_id.clone(),
        amount: m.price,
        kind: LedgerKind::Refund,
        reference: Some("message not accepted by meta".into()),
        message_id: Some(m.id.clone()),
        at: now,
        expires_at: Some(now.timestamp() + 3600),
    }
}

fn failure() -> StatusChange {
    StatusChange {
        error: Some(MessageError {
            code: "tenant_suspended".into(),
            title: "suspended".into(),
        }),
        ..Default::default()
    }
}

async fn balance_and_refunds(p: &Ports, t: &kirim::domain::TenantId) -> (i64, usize) {
    let credits = p.tenants.get_tenant(t).await.unwrap().unwrap().credits;
    let refunds = p
        .ledger
        .entries(t)
        .await
        .unwrap()
        .iter()
        .filter(|e| e.kind == LedgerKind::Refund)
        .count();
    (credits, refunds)
}

async fn a_failure_and_its_refund_are_written_together_and_never_twice(p: Ports) {
    let t = onboarded(&p, 1).await;
    let (m, d) = message(&p, &t.id, 3600);
    p.messages.insert_with_debit(&m, &d).await.unwrap();
    let claim = StatusChange {
        count_attempt: true,
        ..Default::default()
    };
    p.messages
        .transition(&t.id, &m.id, MessageStatus::Sending, &claim, p.clock.now())
        .await
        .unwrap();
    assert_eq!(balance_and_refunds(&p, &t.id).await, (0, 0));
    // A dispatcher that has not claimed it (it saw it `accepted`) cannot fail a message
    // another one is sending.
    assert_eq!(
        p.messages
            .fail_and_refund(
                &t.id,
                &m.id,
                MessageStatus::Accepted,
                &failure(),
                p.clock.now(),
                Some(&refund_of(&p, &m))
            )
            .await
            .unwrap(),
        Transition::Refused
    );
    assert_eq!(balance_and_refunds(&p, &t.id).await, (0, 0));

    let Transition::Applied(failed) = p
        .messages
        .fail_and_refund(
            &t.id,
            &m.id,
            MessageStatus::Sending,
            &failure(),
            p.clock.now(),
            Some(&refund_of(&p, &m)),
        )
        .await
        .unwrap()
    else {
        panic!("a sending message fails with its refund");
    };
    assert_eq!(failed.status, MessageStatus::Failed);
    assert_eq!(
        failed.error.as_ref().map(|e| e.code.to_string()),
        Some("tenant_suspended".into())
    );
    assert_eq!(failed.attempts, 1);
    assert_eq!(balance_and_refunds(&p, &t.id).await, (1, 1));
    assert_eq!(
        p.messages.get_message(&t.id, &m.id).await.unwrap(),
        Some(*failed)
    );

    // Again (a redelivery, a second dispatcher): refused, nothing written.
    assert_eq!(
        p.messages
            .fail_and_refund(
                &t.id,
                &m.id,
                MessageStatus::Sending,
                &failure(),
                p.clock.now(),
                Some(&refund_of(&p, &m))
            )
            .await
            .unwrap(),
        Transition::Refused
    );
    assert_eq!(balance_and_refunds(&p, &t.id).await, (1, 1));
}

async fn a_message_meta_accepted_or_an_unknown_one_is_never_refunded(p: Ports) {
    let t = onboarded(&p, 1).await;
    let (m, d) = message(&p, &t.id, 3600);
    p.messages.insert_with_debit(&m, &d).await.unwrap();
    p.messages
        .transition(
            &t.id,
            &m.id,
            MessageStatus::Sent,
            &StatusChange::default(),
            p.clock.now(),
        )
        .await
        .unwrap();
    assert_eq!(
        p.messages
            .fail_and_refund(
                &t.id,
                &m.id,
                MessageStatus::Sending,
                &failure(),
                p.clock.now(),
                Some(&refund_of(&p, &m))
            )
            .await
            .unwrap(),
        Transition::Refused,
        "a sent message is not refunded"
    );
    // Nor when a caller names the status Meta's acceptance gave it: the guard of the
    // statuses a refund may come from, not the status condition, refuses these.
    for from in [
        MessageStatus::Sent,
        MessageStatus::Delivered,
        MessageStatus::Read,
    ] {
        if from != MessageStatus::Sent {
            p.messages
                .transition(&t.id, &m.id, from, &StatusChange::default(), p.clock.now())
                .await
                .unwrap();
        }
        assert_eq!(
            p.messages
                .fail_and_refund(
                    &t.id,
                    &m.id,
                    from,
                    &failure(),
                    p.clock.now(),
                    Some(&refund_of(&p, &m))
                )
                .await
                .unwrap(),
            Transition::Refused,
            "a {from:?} message is not refunded"
        );
    }
    let unknown = {
        let (mut u, _) = message(&p, &t.id, 3600);
        u.id = kirim::domain::MessageId::from_trusted(kirim::domain::new_id());
        u
    };
    assert_eq!(
        p.messages
            .fail_and_refund(
                &t.id,
                &unknown.id,
                MessageStatus::Accepted,
                &failure(),
                p.clock.now(),
                Some(&refund_of(&p, &unknown))
            )
            .await
            .unwrap(),
        Transition::Refused,
        "no message, no refund"
    );
    assert_eq!(balance_and_refunds(&p, &t.id).await, (0, 0));
    assert_eq!(
        p.messages
            .get_message(&t.id, &m.id)
            .await
            .unwrap()
            .unwrap()
            .status,
        MessageStatus::Read
    );
}

async fn a_refunding_failure_for_a_tenant_that_is_gone_writes_nothing(p: Ports) {
    let t = onboarded(&p, 1).await;
    let (m, d) = message(&p, &t.id, 3600);
    p.messages.insert_with_debit(&m, &d).await.unwrap();
    let mut refund = refund_of(&p, &m);
    refund.tenant_id = kirim::domain::TenantId::generate();
    assert_eq!(
        p.messages
            .fail_and_refund(
                &t.id,
                &m.id,
                MessageStatus::Accepted,
                &failure(),
                p.clock.now(),
                Some(&refund)
            )
            .await
            .unwrap_err(),
        StoreError::NotFound
    );
    assert_eq!(
        p.messages
            .get_message(&t.id, &m.id)
            .await
            .unwrap()
            .unwrap()
            .status,
        MessageStatus::Accepted,
        "the status did not move without its refund"
    );
    assert_eq!(balance_and_refunds(&p, &t.id).await, (0, 0));
}

/// A cancel whose refund's tenant is gone writes nothing either: not the cancel without
/// its refund.
async fn a_refunding_cancel_for_a_tenant_that_is_gone_writes_nothing(p: Ports) {
    let t = onboarded(&p, 1).await;
    let (m, d) = message(&p, &t.id, 3600);
    p.messages.insert_with_debit(&m, &d).await.unwrap();
    let mut refund = refund_of(&p, &m);
    refund.tenant_id = kirim::domain::TenantId::generate();
    assert_eq!(
        p.messages
            .cancel_with_refund(
                &t.id,
                &m.id,
                &[MessageStatus::Accepted],
                &MessageError {
                    code: "cancelled".into(),
                    title: "cancelled".into(),
                },
                &refund,
                p.clock.now(),
            )
            .await
            .unwrap_err(),
        StoreError::NotFound
    );
    assert_eq!(
        p.messages
            .get_message(&t.id, &m.id)
            .await
            .unwrap()
            .unwrap()
            .status,
        MessageStatus::Accepted,
        "not cancelled without its refund"
    );
    assert_eq!(balance_and_refunds(&p, &t.id).await, (0, 0));
}

/// A free message (nothing to refund) fails on the same condition as a paid one: only
/// from the status the caller names, never one claimed by another dispatcher or sent.
async fn a_free_message_fails_only_from_the_status_named_and_refunds_nothing(p: Ports) {
    let t = onboarded(&p, 2).await;
    let (m, d) = message(&p, &t.id, 3600);
    p.messages.insert_with_debit(&m, &d).await.unwrap();
    let fail_from = |from: MessageStatus| {
        let (p, t, id) = (&p, &t, m.id.clone());
        async move {
            p.messages
                .fail_and_refund(&t.id, &id, from, &failure(), p.clock.now(), None)
                .await
                .unwrap()
        }
    };
    let status = || async {
        p.messages
            .get_message(&t.id, &m.id)
            .await
            .unwrap()
            .unwrap()
            .status
    };
    let before = balance_and_refunds(&p, &t.id).await;
    for (to, refused_from) in [
        (MessageStatus::Sending, MessageStatus::Accepted),
        (MessageStatus::Sent, MessageStatus::Sending),
    ] {
        p.messages
            .transition(&t.id, &m.id, to, &StatusChange::default(), p.clock.now())
            .await
            .unwrap();
        assert_eq!(fail_from(refused_from).await, Transition::Refused, "{to:?}");
        assert_eq!(status().await, to);
    }
    assert_eq!(balance_and_refunds(&p, &t.id).await, before);

    let (free, d) = message(&p, &t.id, 3600);
    p.messages.insert_with_debit(&free, &d).await.unwrap();
    let before = balance_and_refunds(&p, &t.id).await;
    let Transition::Applied(failed) = p
        .messages
        .fail_and_refund(
            &t.id,
            &free.id,
            MessageStatus::Accepted,
            &failure(),
            p.clock.now(),
            None,
        )
        .await
        .unwrap()
    else {
        panic!("an accepted message fails from accepted");
    };
    assert_eq!(failed.status, MessageStatus::Failed);
    assert_eq!(
        balance_and_refunds(&p, &t.id).await,
        before,
        "nothing given back, no refund entry"
    );
}

/// A message past its expiry, not yet deleted (DynamoDB deletes expired items days later):
/// whatever a store does with its refund, its answer says what it wrote. `Refused` after a
/// committed refund had a cancel answer `409` for the refund it had just made.
async fn a_refunding_failure_answers_what_it_wrote_for_a_message_past_its_expiry(p: Ports) {
    let t = onboarded(&p, 1).await;
    let (m, d) = message(&p, &t.id, 1);
    p.messages.insert_with_debit(&m, &d).await.unwrap();
    p.clock.advance(chrono::Duration::seconds(2));
    let answer = p
        .messages
        .fail_and_refund(
            &t.id,
            &m.id,
            MessageStatus::Accepted,
            &failure(),
            p.clock.now(),
            Some(&refund_of(&p, &m)),
        )
        .await
        .unwrap();
    let written = balance_and_refunds(&p, &t.id).await;
    match answer {
        Transition::Applied(r) => {
            assert_eq!(r.status, MessageStatus::Failed);
            assert_eq!(written, (1, 1), "applied: refunded");
        }
        Transition::Refused => assert_eq!(written, (0, 0), "refused: nothing written"),
    }
}

contract!(
    a_refunding_failure_answers_what_it_wrote_for_a_message_past_its_expiry,
    a_free_message_fails_only_from_the_status_named_and_refunds_nothing,
    a_failure_and_its_refund_are_written_together_and_never_twice,
    a_message_meta_accepted_or_an_unknown_one_is_never_refunded,
    a_refunding_failure_for_a_tenant_that_is_gone_writes_nothing,
    a_refunding_cancel_for_a_tenant_that_is_gone_writes_nothing,
);
