//! A tenant's credits spread over lanes (docs/data-model.md A80): on DynamoDB a single
//! send is debited from one of the tenant's lane items instead of the tenant item, so
//! that a tenant's concurrent sends do not all meet on one item. What a caller sees is
//! the same on both stores: the balance is the whole of it on every read, it is spent to
//! the last credit and never below zero, by single sends and campaigns alike, and a closed
//! tenant spends nothing more.

use kirim::domain::{MessageRecord, TenantId};
use kirim::ports::*;
use kirim::store_error::StoreError;

use super::contract::{aws, aws_and_table, contract, memory, message, onboarded, Ports};
use super::contract_broadcasts::running_broadcast;

/// A single send of `price` credits, as the send API records one.
async fn send(p: &Ports, t: &TenantId, price: i64) -> Result<MessageRecord, StoreError> {
    let (mut m, mut debit) = message(p, t, 3600);
    m.price = price;
    debit.amount = -price;
    p.messages.insert_with_debit(&m, &debit).await.map(|()| m)
}

fn entry(
    t: &TenantId,
    amount: i64,
    kind: LedgerKind,
    now: chrono::DateTime<chrono::Utc>,
) -> LedgerEntry {
    LedgerEntry {
        id: kirim::domain::new_id(),
        tenant_id: t.clone(),
        amount,
        kind,
        reference: None,
        message_id: None,
        at: now,
        expires_at: Some(now.timestamp() + 3600),
    }
}

async fn credits(p: &Ports, t: &TenantId) -> i64 {
    p.tenants.get_tenant(t).await.unwrap().unwrap().credits
}

/// 160 sends of 7 credits against 1,000, 40 at a time: 142 are taken (994 credits), 18
/// refused `402`, 6 credits left — through lanes refilled while the tenant item holds
/// enough, then the tenant item, then the lanes returned to it.
async fn concurrent_sends_spend_the_whole_balance_and_never_more(p: Ports) {
    let t = onboarded(&p, 1000).await;
    let mut outcomes = Vec::new();
    for _ in 0..4 {
        outcomes.extend(futures::future::join_all((0..40).map(|_| send(&p, &t.id, 7))).await);
    }
    let taken = outcomes.iter().filter(|o| o.is_ok()).count();
    let refused = outcomes
        .iter()
        .filter(|o| matches!(o, Err(StoreError::InsufficientCredits)))
        .count();
    assert_eq!((taken, refused), (142, 18), "{outcomes:?}");
    assert_eq!(credits(&p, &t.id).await, 6);
    let debits = p.ledger.entries(&t.id).await.unwrap();
    assert_eq!(debits.iter().map(|e| e.amount).sum::<i64>(), -994);
}

/// Credits the single sends left spread over lanes are the campaign's to spend too: a
/// campaign costing the whole rest of the balance is written, and nothing is left.
async fn a_campaign_may_spend_the_credits_single_sends_left_in_lanes(p: Ports) {
    let t = onboarded(&p, 1000).await;
    for _ in 0..20 {
        send(&p, &t.id, 1).await.unwrap();
    }
    assert_eq!(credits(&p, &t.id).await, 980);
    let now = p.clock.now();
    let b = running_broadcast(&t.id, now);
    let (_, mut debit) = message(&p, &t.id, 3600);
    debit.amount = -980;
    debit.message_id = None;
    p.broadcasts
        .create_broadcast(&b, &[], &debit)
        .await
        .unwrap();
    assert_eq!(credits(&p, &t.id).await, 0);
    assert!(matches!(
        send(&p, &t.id, 1).await,
        Err(StoreError::InsufficientCredits)
    ));
}

/// A closed tenant's sends are refused `409` though its lanes held credits when it was
/// closed, and the balance it closed with is all there.
async fn a_closed_tenant_sends_nothing_more_though_its_lanes_held_credits(p: Ports) {
    let t = onboarded(&p, 1000).await;
    for _ in 0..10 {
        send(&p, &t.id, 2).await.unwrap();
    }
    let closed = p
        .tenants
        .set_status(&t.id, TenantStatus::Closed, Some("ended"), p.clock.now())
        .await
        .unwrap();
    assert_eq!(closed.credits, 980, "the closing answers the whole balance");
    for _ in 0..10 {
        match send(&p, &t.id, 2).await {
            Err(StoreError::Conflict(c)) => assert_eq!(c, TENANT_CLOSED),
            other => panic!("a closed tenant's send: {other:?}"),
        }
    }
    assert_eq!(credits(&p, &t.id).await, 980);
}

/// Every read of a tenant, and every write that answers one, counts its lanes: top-ups
/// and refunds answer the whole balance, as do the tenant's other writes.
async fn every_read_of_a_tenant_counts_the_credits_in_its_lanes(p: Ports) {
    let t = onboarded(&p, 1000).await;
    for _ in 0..30 {
        send(&p, &t.id, 1).await.unwrap();
    }
    let now = p.clock.now();
    assert_eq!(
        p.ledger
            .top_up(&entry(&t.id, 50, LedgerKind::TopUp, now))
            .await
            .unwrap(),
        1020
    );
    assert_eq!(
        p.ledger
            .refund(&entry(&t.id, 1, LedgerKind::Refund, now))
            .await
            .unwrap(),
        1021
    );
    assert_eq!(credits(&p, &t.id).await, 1021);
    let limited = p
        .tenants
        .set_request_limits(
            &t.id,
            kirim::domain::RequestLimits {
                requests_per_sec: 10,
                burst: 20,
            },
        )
        .await
        .unwrap();
    assert_eq!(limited.credits, 1021);
    let suspended = p
        .tenants
        .set_status(&t.id, TenantStatus::Suspended, Some("checking"), now)
        .await
        .unwrap();
    assert_eq!(suspended.credits, 1021);
}

contract!(
    concurrent_sends_spend_the_whole_balance_and_never_more,
    a_campaign_may_spend_the_credits_single_sends_left_in_lanes,
    a_closed_tenant_sends_nothing_more_though_its_lanes_held_credits,
    every_read_of_a_tenant_counts_the_credits_in_its_lanes,
);

/// The tenant's items as stored: its own credits and each lane's.
async fn stored_credits(
    table: &aws_sdk_dynamodb::Client,
    name: &str,
    t: &TenantId,
) -> (i64, Vec<(String, i64)>) {
    use aws_sdk_dynamodb::types::AttributeValue;
    let out = table
        .query()
        .table_name(name)
        .key_condition_expression("pk = :pk AND begins_with(sk, :t)")
        .expression_attribute_values(":pk", AttributeValue::S(format!("TENANT#{t}")))
        .expression_attribute_values(":t", AttributeValue::S("TENANT".into()))
        .consistent_read(true)
        .send()
        .await
        .unwrap();
    let mut own = 0;
    let mut lanes = Vec::new();
    for item in out.items.unwrap_or_default() {
        let sk = item["sk"].as_s().unwrap().clone();
        let c: i64 = item
            .get("credits")
            .map(|v| v.as_n().unwrap().parse().unwrap())
            .unwrap_or(0);
        if sk == "TENANT" {
            own = c;
        } else {
            lanes.push((sk, c));
        }
    }
    (own, lanes)
}

/// On DynamoDB single sends are debited from lanes spread by message, and the tenant item
/// is written only when a lane is refilled: 48 sends use several lanes, and the tenant
/// item's own credits plus its lanes' are the balance.
#[tokio::test]
async fn on_dynamodb_single_sends_are_spread_over_lanes_and_the_tenant_item_keeps_the_rest() {
    let (p, table, name) = aws_and_table().await;
    let t = onboarded(&p, 10_000).await;
    for _ in 0..48 {
        send(&p, &t.id, 1).await.unwrap();
    }
    let (own, lanes) = stored_credits(&table, &name, &t.id).await;
    assert!(lanes.len() >= 4, "sends spread over lanes: {lanes:?}");
    assert!(
        lanes.iter().all(|(sk, _)| sk.starts_with("TENANT#LANE#")),
        "{lanes:?}"
    );
    assert!(own < 9_952, "the lanes hold part of the balance: {own}");
    assert_eq!(own + lanes.iter().map(|(_, c)| c).sum::<i64>(), 9_952);
    // Each refill takes a sixteenth of what the tenant item holds: a lane is refilled
    // once for many sends, not once a send.
    assert!(lanes.iter().all(|(_, c)| *c > 100), "{lanes:?}");
}

/// A closing returns the lanes to the tenant item, and a close-out returns any a failed
/// return left: the account record the close-out keeps holds the whole balance.
#[tokio::test]
async fn on_dynamodb_a_closed_tenants_lanes_end_in_its_account_record() {
    use aws_sdk_dynamodb::types::AttributeValue;
    let (p, table, name) = aws_and_table().await;
    let t = onboarded(&p, 1000).await;
    for _ in 0..10 {
        send(&p, &t.id, 1).await.unwrap();
    }
    let now = p.clock.now();
    p.tenants
        .set_status(&t.id, TenantStatus::Closed, None, now)
        .await
        .unwrap();
    assert_eq!(stored_credits(&table, &name, &t.id).await, (990, vec![]));
    // A lane the closing's return missed (it failed part way).
    table
        .put_item()
        .table_name(&name)
        .item("pk", AttributeValue::S(format!("TENANT#{}", t.id)))
        .item("sk", AttributeValue::S("TENANT#LANE#03".into()))
        .item("credits", AttributeValue::N("7".into()))
        .send()
        .await
        .unwrap();
    assert_eq!(credits(&p, &t.id).await, 997);
    let ttls = CloseOutTtls {
        tenant: now.timestamp() + 100,
        config: now.timestamp() + 10,
        audit_head: now.timestamp() + 10,
    };
    p.retention
        .close_out(
            &t.id,
            ttls,
            now,
            std::time::Instant::now() + std::time::Duration::from_secs(3600),
        )
        .await
        .unwrap();
    assert_eq!(stored_credits(&table, &name, &t.id).await, (997, vec![]));
}

/// Puts lane `lane` of `t` as stored, holding `credits`, sealed or not.
async fn put_lane(
    table: &aws_sdk_dynamodb::Client,
    name: &str,
    t: &TenantId,
    lane: u8,
    credits: i64,
    sealed: bool,
) {
    use aws_sdk_dynamodb::types::AttributeValue;
    let mut put = table
        .put_item()
        .table_name(name)
        .item("pk", AttributeValue::S(format!("TENANT#{t}")))
        .item("sk", AttributeValue::S(format!("TENANT#LANE#{lane:02}")))
        .item("credits", AttributeValue::N(credits.to_string()));
    if sealed {
        put = put.item("sealed", AttributeValue::Bool(true));
    }
    put.send().await.unwrap();
}

/// A closing seals every lane before its status write, and a sealed lane takes no debit:
/// a closed tenant whose lanes still hold credits (their return failed) refuses every
/// send `409`, whatever lane its message falls on, as the tenant item's own debit does.
#[tokio::test]
async fn on_dynamodb_a_closed_tenants_sealed_lanes_take_no_send() {
    let (p, table, name) = aws_and_table().await;
    let t = onboarded(&p, 100).await;
    p.tenants
        .set_status(&t.id, TenantStatus::Closed, None, p.clock.now())
        .await
        .unwrap();
    for lane in 0..16 {
        put_lane(&table, &name, &t.id, lane, 5, true).await;
    }
    assert_eq!(credits(&p, &t.id).await, 180);
    for _ in 0..24 {
        match send(&p, &t.id, 1).await {
            Err(StoreError::Conflict(c)) => assert_eq!(c, TENANT_CLOSED),
            other => panic!("a closed tenant's send: {other:?}"),
        }
    }
    assert_eq!(credits(&p, &t.id).await, 180);
}

/// A closing that sealed the lanes and then failed leaves an open tenant: its sends still
/// go through (from the tenant item, whose debit refuses a closed tenant), the sealed lanes
/// are left as they are (a closing under way looks the same), and not a credit is lost.
#[tokio::test]
async fn on_dynamodb_lanes_sealed_by_a_closing_that_failed_leave_the_tenant_sending() {
    let (p, table, name) = aws_and_table().await;
    let t = onboarded(&p, 1000).await;
    for lane in 0..16 {
        put_lane(&table, &name, &t.id, lane, 10, true).await;
    }
    assert_eq!(credits(&p, &t.id).await, 1160);
    for _ in 0..40 {
        send(&p, &t.id, 1).await.unwrap();
    }
    assert_eq!(credits(&p, &t.id).await, 1120);
    let (own, lanes) = stored_credits(&table, &name, &t.id).await;
    assert_eq!(own, 960, "every send from the tenant item");
    assert_eq!(lanes.len(), 16);
    assert!(lanes.iter().all(|(_, c)| *c == 10), "{lanes:?}");
}

/// A campaign the whole balance cannot pay is refused `402` and leaves the lanes as they
/// were (they are returned only when they would make up the difference).
#[tokio::test]
async fn on_dynamodb_a_campaign_the_balance_cannot_pay_leaves_the_lanes_be() {
    let (p, table, name) = aws_and_table().await;
    let t = onboarded(&p, 10_000).await;
    for _ in 0..48 {
        send(&p, &t.id, 1).await.unwrap();
    }
    let before = stored_credits(&table, &name, &t.id).await;
    let b = running_broadcast(&t.id, p.clock.now());
    let (_, mut debit) = message(&p, &t.id, 3600);
    debit.amount = -20_000;
    debit.message_id = None;
    assert!(matches!(
        p.broadcasts.create_broadcast(&b, &[], &debit).await,
        Err(StoreError::InsufficientCredits)
    ));
    assert_eq!(stored_credits(&table, &name, &t.id).await, before);
}

/// Closing a tenant that does not exist answers `404` and seals nothing: no lane is made
/// for it.
#[tokio::test]
async fn on_dynamodb_closing_a_tenant_that_does_not_exist_makes_no_lanes() {
    let (p, table, name) = aws_and_table().await;
    let id = TenantId::generate();
    assert!(matches!(
        p.tenants
            .set_status(&id, TenantStatus::Closed, None, p.clock.now())
            .await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(stored_credits(&table, &name, &id).await, (0, vec![]));
}
