//! The `PhoneNumberStore` and `UsageStore` contracts, on the memory adapter and on
//! DynamoDB (moto): a number is one tenant's at most, the default is never removed, and
//! Meta's pricing of a message is counted once.

use chrono::{Duration, NaiveDate};
use kirim::domain::{MessageStatus, Pricing, TemplateQuality, TenantId};
use kirim::ports::*;
use kirim::store_error::StoreError;

use super::contract::{aws, contract, memory, message, onboarded, Ports};

fn number(p: &Ports, t: &TenantId, id: &str, waba: &str) -> PhoneNumberRecord {
    PhoneNumberRecord {
        tenant_id: t.clone(),
        phone_number_id: id.into(),
        waba_id: waba.into(),
        display_phone_number: Some("+1 555-010-2030".into()),
        quality: TemplateQuality::Unknown,
        throughput_per_sec: None,
        added_at: p.clock.now(),
        quality_meta_at: None,
        throughput_meta_at: None,
        hold: None,
        resumed_at_ms: None,
    }
}

fn fresh_id() -> String {
    format!("{}", 2_000_000 + kirim_tests::rand_u32() % 900_000)
}

async fn a_number_is_one_tenants_at_most_and_its_route_names_that_tenant(p: Ports) {
    let a = onboarded(&p, 0).await;
    let b = onboarded(&p, 0).await;
    let id = fresh_id();
    let n = number(&p, &a.id, &id, "2000002");
    p.numbers.add_phone_number(&n).await.unwrap();
    assert_eq!(
        p.tenants.tenant_by_phone_number_id(&id).await.unwrap(),
        Some(a.id.clone())
    );
    assert_eq!(
        p.numbers.get_phone_number(&a.id, &id).await.unwrap(),
        Some(n.clone())
    );
    // Another tenant, the same tenant again, or a tenant's onboarding number: refused.
    for (t, pnid) in [
        (&b.id, id.as_str()),
        (&a.id, id.as_str()),
        (&b.id, a.phone_number_id.as_str()),
    ] {
        let again = number(&p, t, pnid, "2000002");
        assert!(
            matches!(
                p.numbers.add_phone_number(&again).await,
                Err(StoreError::Conflict(_))
            ),
            "{pnid} for {t}"
        );
    }
    assert_eq!(p.numbers.get_phone_number(&b.id, &id).await.unwrap(), None);
    assert_eq!(
        p.tenants
            .tenant_by_phone_number_id(&a.phone_number_id)
            .await
            .unwrap(),
        Some(a.id.clone()),
        "the refused write changed no route"
    );
    // The tenants on the new number's WABA include its owner.
    assert_eq!(
        p.tenants.tenants_by_waba("2000002").await.unwrap(),
        vec![a.id]
    );
}

/// A number added to a tenant closed since the caller looked is refused with nothing
/// written: its route, written after the close-out passed the tenant's numbers, would hold
/// the number for good.
async fn a_number_is_never_added_to_a_closed_tenant(p: Ports) {
    let a = onboarded(&p, 0).await;
    p.tenants
        .set_status(&a.id, TenantStatus::Closed, None, p.clock.now())
        .await
        .unwrap();
    let id = fresh_id();
    assert_eq!(
        p.numbers
            .add_phone_number(&number(&p, &a.id, &id, "2000003"))
            .await
            .unwrap_err(),
        StoreError::Conflict(kirim::ports::TENANT_CLOSED.into())
    );
    assert_eq!(
        p.tenants.tenant_by_phone_number_id(&id).await.unwrap(),
        None
    );
    assert_eq!(p.numbers.get_phone_number(&a.id, &id).await.unwrap(), None);
    // Nor the item of the number it was onboarded with (a tenant from before number
    // items): written after the close-out, it would be kept forever.
    let onboarding_number = number(&p, &a.id, &a.phone_number_id, &a.waba_id);
    assert_eq!(
        p.numbers
            .put_phone_number_if_absent(&onboarding_number)
            .await
            .unwrap_err(),
        StoreError::Conflict(kirim::ports::TENANT_CLOSED.into())
    );
}

/// The onboarding's display number lands with the tenant, in its one write: Meta's quality
/// webhooks name a number only by it, and no later step can lose it.
async fn an_onboarded_numbers_display_is_written_in_the_tenants_one_write(p: Ports) {
    let t = super::contract::tenant(0);
    p.tenants
        .onboard(
            &t,
            Some("+60 3-1234 5678"),
            &super::contract::key_for(&t),
            None,
        )
        .await
        .unwrap();
    let n = p
        .numbers
        .get_phone_number(&t.id, &t.phone_number_id)
        .await
        .unwrap()
        .expect("the number's item");
    assert_eq!(n.display_phone_number.as_deref(), Some("+60 3-1234 5678"));
    assert_eq!(n.waba_id, t.waba_id);
    // Known already: a later learning changes nothing.
    assert!(!p
        .numbers
        .learn_display_number(&t.id, &t.phone_number_id, "+60 3-0000 0000")
        .await
        .unwrap());
    // Without one, the item has none (and it can be learnt).
    let u = onboarded(&p, 0).await;
    let m = p
        .numbers
        .get_phone_number(&u.id, &u.phone_number_id)
        .await
        .unwrap()
        .expect("the number's item");
    assert_eq!(m.display_phone_number, None);
}

async fn the_default_number_is_never_removed_and_a_removed_number_frees_its_route(p: Ports) {
    let t = onboarded(&p, 0).await;
    let id = fresh_id();
    p.numbers
        .add_phone_number(&number(&p, &t.id, &id, "1"))
        .await
        .unwrap();
    assert!(matches!(
        p.numbers
            .remove_phone_number(&t.id, &t.phone_number_id)
            .await,
        Err(StoreError::Conflict(_))
    ));
    p.numbers.remove_phone_number(&t.id, &id).await.unwrap();
    assert_eq!(p.numbers.get_phone_number(&t.id, &id).await.unwrap(), None);
    assert_eq!(
        p.tenants.tenant_by_phone_number_id(&id).await.unwrap(),
        None
    );
    assert!(matches!(
        p.numbers.remove_phone_number(&t.id, &id).await,
        Err(StoreError::Conflict(_))
    ));
    // Free again: another tenant may add it.
    let other = onboarded(&p, 0).await;
    p.numbers
        .add_phone_number(&number(&p, &other.id, &id, "1"))
        .await
        .unwrap();
}

/// A number item whose route is gone (or is another tenant's now) is still removed, and
/// another tenant's route is left in place.
async fn a_number_without_its_route_is_removed_and_another_tenants_route_stays(p: Ports) {
    let t = onboarded(&p, 0).await;
    let (gone, taken) = (fresh_id(), fresh_id());
    for id in [&gone, &taken] {
        assert!(p
            .numbers
            .put_phone_number_if_absent(&number(&p, &t.id, id, "1"))
            .await
            .unwrap());
    }
    let other = onboarded(&p, 0).await;
    p.numbers
        .add_phone_number(&number(&p, &other.id, &taken, "1"))
        .await
        .unwrap();
    for id in [&gone, &taken] {
        p.numbers.remove_phone_number(&t.id, id).await.unwrap();
        assert_eq!(p.numbers.get_phone_number(&t.id, id).await.unwrap(), None);
    }
    assert_eq!(
        p.tenants.tenant_by_phone_number_id(&taken).await.unwrap(),
        Some(other.id.clone()),
        "the other tenant's route stays"
    );
    assert!(p
        .numbers
        .get_phone_number(&other.id, &taken)
        .await
        .unwrap()
        .is_some());
}

async fn the_default_moves_only_to_a_number_of_the_tenants(p: Ports) {
    let t = onboarded(&p, 0).await;
    let id = fresh_id();
    let n = number(&p, &t.id, &id, "2000003");
    assert!(matches!(
        p.numbers.set_default_number(&t.id, &n).await,
        Err(StoreError::Conflict(_))
    ));
    p.numbers.add_phone_number(&n).await.unwrap();
    // The onboarding number's item: stored by the onboarding itself (it carries the
    // tenant's WABA index entry), so `service::numbers` finds it there before a change.
    let first = number(&p, &t.id, &t.phone_number_id, &t.waba_id);
    assert!(!p.numbers.put_phone_number_if_absent(&first).await.unwrap());
    p.numbers.set_default_number(&t.id, &n).await.unwrap();
    let after = p.tenants.get_tenant(&t.id).await.unwrap().unwrap();
    assert_eq!(
        (after.phone_number_id.as_str(), after.waba_id.as_str()),
        (id.as_str(), "2000003")
    );
    // Now the old default may go, the new one may not.
    assert!(p.numbers.remove_phone_number(&t.id, &id).await.is_err());
    p.numbers
        .remove_phone_number(&t.id, &t.phone_number_id)
        .await
        .unwrap();
    let ids: Vec<String> = p
        .numbers
        .list_phone_numbers(&t.id)
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.phone_number_id)
        .collect();
    assert_eq!(ids, vec![id]);
}

async fn a_numbers_quality_changes_only_on_a_number_that_exists(p: Ports) {
    let t = onboarded(&p, 0).await;
    let id = fresh_id();
    assert_eq!(
        p.numbers
            .set_number_quality(&t.id, &id, Some(TemplateQuality::Red), Some(1000), None)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        p.numbers.get_phone_number(&t.id, &id).await.unwrap(),
        None,
        "not created"
    );
    p.numbers
        .add_phone_number(&number(&p, &t.id, &id, "1"))
        .await
        .unwrap();
    let n = p
        .numbers
        .set_number_quality(&t.id, &id, Some(TemplateQuality::Red), Some(1000), None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (n.quality, n.throughput_per_sec),
        (TemplateQuality::Red, Some(1000))
    );
    let n = p
        .numbers
        .get_phone_number(&t.id, &id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (n.quality, n.throughput_per_sec),
        (TemplateQuality::Red, Some(1000))
    );
}

/// A number item written when one `quality_meta_at` timed both fields (a throughput, no
/// `throughput_meta_at`) refuses an older-dated throughput by that time; an item that never
/// had a throughput takes the first one whatever its quality's time.
async fn an_older_throughput_never_undoes_one_an_older_item_timed_by_its_quality(p: Ports) {
    let t = onboarded(&p, 0).await;
    let (old, fresh) = (fresh_id(), fresh_id());
    let mut legacy = number(&p, &t.id, &old, "1");
    legacy.throughput_per_sec = Some(1000);
    legacy.quality_meta_at = Some(200);
    assert!(p.numbers.put_phone_number_if_absent(&legacy).await.unwrap());
    assert_eq!(
        p.numbers
            .set_number_quality(&t.id, &old, None, Some(80), Some(100))
            .await
            .unwrap(),
        None,
        "older than the item's time of both"
    );
    let n = p
        .numbers
        .get_phone_number(&t.id, &old)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n.throughput_per_sec, Some(1000));
    assert!(p
        .numbers
        .set_number_quality(&t.id, &old, None, Some(80), Some(300))
        .await
        .unwrap()
        .is_some());
    let mut never = number(&p, &t.id, &fresh, "1");
    never.quality_meta_at = Some(200);
    assert!(p.numbers.put_phone_number_if_absent(&never).await.unwrap());
    let n = p
        .numbers
        .set_number_quality(&t.id, &fresh, None, Some(80), Some(100))
        .await
        .unwrap()
        .expect("the first throughput it has");
    assert_eq!(n.throughput_per_sec, Some(80));
}

/// Meta's quality webhooks arrive in any order, and again after a `500`: an update older
/// (by Meta's time) than the one applied to the same field is refused, so a late FLAGGED
/// never undoes a newer UNFLAGGED, nor a late STANDARD a newer HIGH throughput. Each field
/// keeps its own time: a newer throughput never refuses an older-dated quality change (nor
/// the other way round), and a field an update does not carry is left as it is.
async fn an_older_quality_update_never_undoes_a_newer_one(p: Ports) {
    let t = onboarded(&p, 0).await;
    let id = fresh_id();
    p.numbers
        .add_phone_number(&number(&p, &t.id, &id, "1"))
        .await
        .unwrap();
    let set = |q: Option<TemplateQuality>, tp: Option<u32>, at: Option<i64>| {
        let (numbers, t, id) = (p.numbers.clone(), t.id.clone(), id.clone());
        async move {
            numbers
                .set_number_quality(&t, &id, q, tp, at)
                .await
                .unwrap()
        }
    };
    let stored = || {
        let (numbers, t, id) = (p.numbers.clone(), t.id.clone(), id.clone());
        async move {
            let n = numbers.get_phone_number(&t, &id).await.unwrap().unwrap();
            (n.quality, n.throughput_per_sec)
        }
    };
    use TemplateQuality::*;
    assert!(set(Some(Green), Some(1000), Some(200)).await.is_some());
    assert_eq!(
        set(Some(Red), Some(80), Some(100)).await,
        None,
        "older in both fields: refused"
    );
    assert_eq!(stored().await, (Green, Some(1000)));
    // The same time again (a redelivery) and a later one apply.
    assert!(set(Some(Green), Some(1000), Some(200)).await.is_some());
    let n = set(Some(Yellow), None, Some(300)).await.unwrap();
    assert_eq!(
        (n.quality, n.throughput_per_sec),
        (Yellow, Some(1000)),
        "a quality-only update leaves the throughput"
    );
    assert_eq!(
        set(Some(Red), None, Some(250)).await,
        None,
        "older than the last quality: refused"
    );
    // A throughput dated between them is not older than the last throughput (200): it
    // applies, and leaves the quality.
    let n = set(None, Some(80), Some(250)).await.unwrap();
    assert_eq!((n.quality, n.throughput_per_sec), (Yellow, Some(80)));
    // Newer throughput first, then an older-dated FLAGGED: the quality still changes.
    assert!(set(None, Some(1000), Some(400)).await.is_some());
    assert!(set(Some(Red), None, Some(350)).await.is_some());
    assert_eq!(stored().await, (Red, Some(1000)));
    // An update without Meta's time cannot be ordered: applied, keeping the last time.
    assert!(set(Some(Green), None, None).await.is_some());
    assert_eq!(set(Some(Yellow), None, Some(349)).await, None);
    assert_eq!(stored().await, (Green, Some(1000)));
}

async fn priced(
    p: &Ports,
    tenant: &TenantId,
    message: &kirim::domain::MessageId,
    pricing: &Pricing,
    day: NaiveDate,
    expires_at: Option<i64>,
) -> Result<bool, StoreError> {
    p.usage
        .record_pricing(&PricedMessage {
            tenant,
            message,
            pricing,
            day,
            credits: 2,
            expires_at,
        })
        .await
}

async fn metas_pricing_is_counted_once_per_message_by_day_category_and_type(p: Ports) {
    let t = onboarded(&p, 100).await;
    let day = NaiveDate::from_ymd_opt(2026, 11, 30).unwrap();
    let utility = Pricing::parse("PMP", "utility", "regular").unwrap();
    let service = Pricing::parse("PMP", "service", "free_customer_service").unwrap();
    let expires = Some(p.clock.now().timestamp() + 1000);
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (mut m, debit) = message(&p, &t.id, 1000);
        m.price = 2;
        p.messages.insert_with_debit(&m, &debit).await.unwrap();
        assert_eq!(m.pricing, None, "a message accepted before any pricing");
        ids.push(m.id);
        p.clock.advance(Duration::milliseconds(2));
    }
    assert!(priced(&p, &t.id, &ids[0], &utility, day, expires)
        .await
        .unwrap());
    // Meta repeats it on delivered and read: counted once.
    assert!(!priced(&p, &t.id, &ids[0], &utility, day, expires)
        .await
        .unwrap());
    assert!(!priced(&p, &t.id, &ids[0], &service, day, expires)
        .await
        .unwrap());
    assert!(priced(&p, &t.id, &ids[1], &utility, day, expires)
        .await
        .unwrap());
    let next = day.succ_opt().unwrap();
    assert!(priced(&p, &t.id, &ids[2], &service, next, expires)
        .await
        .unwrap());
    // No such message: nothing counted.
    let missing = kirim::domain::MessageId::from_trusted(ulid::Ulid::new().to_string());
    assert!(!priced(&p, &t.id, &missing, &utility, day, expires)
        .await
        .unwrap());

    let m = p
        .messages
        .get_message(&t.id, &ids[0])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.pricing.as_ref(), Some(&utility));
    let mut rows = p.usage.usage(&t.id, day, next).await.unwrap();
    rows.sort_by(|a, b| (a.date, &a.category).cmp(&(b.date, &b.category)));
    let got: Vec<(NaiveDate, &str, &str, i64, i64)> = rows
        .iter()
        .map(|r| {
            (
                r.date,
                r.category.as_str(),
                r.pricing_type.as_str(),
                r.messages,
                r.credits,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (day, "utility", "regular", 2, 4),
            (next, "service", "free_customer_service", 1, 2),
        ]
    );
    assert_eq!(p.usage.usage(&t.id, next, next).await.unwrap().len(), 1);
    let other = onboarded(&p, 0).await;
    assert!(p
        .usage
        .usage(&other.id, day, next)
        .await
        .unwrap()
        .is_empty());
    // A usage row is a billing record: it carries the Billing expiry it was given.
    p.clock.advance(Duration::seconds(1001));
    assert!(
        p.usage.usage(&t.id, day, next).await.unwrap().is_empty(),
        "expired rows are not read"
    );
}

/// A day's usage row is spread over `USAGE_SHARDS` parts by message (A79), so that a busy
/// tenant's concurrent pricing transactions do not all meet on one item; a read answers one
/// row per day, category and type, the parts summed, and each message adds to the part its
/// id names, once.
async fn a_days_usage_row_is_spread_over_parts_by_message_and_read_as_one(p: Ports) {
    let t = onboarded(&p, 100).await;
    let day = NaiveDate::from_ymd_opt(2026, 11, 30).unwrap();
    let utility = Pricing::parse("PMP", "utility", "regular").unwrap();
    let expires = Some(p.clock.now().timestamp() + 1000);
    let mut parts = std::collections::BTreeMap::<u8, i64>::new();
    for _ in 0..24 {
        let (mut m, debit) = message(&p, &t.id, 1000);
        m.price = 2;
        p.messages.insert_with_debit(&m, &debit).await.unwrap();
        assert!(priced(&p, &t.id, &m.id, &utility, day, expires)
            .await
            .unwrap());
        assert!(!priced(&p, &t.id, &m.id, &utility, day, expires)
            .await
            .unwrap());
        *parts.entry(usage_shard(&m.id)).or_default() += 1;
        p.clock.advance(Duration::milliseconds(2));
    }
    let rows = p.usage.usage(&t.id, day, day).await.unwrap();
    assert_eq!(
        rows,
        vec![UsageRow {
            date: day,
            category: "utility".into(),
            pricing_type: "regular".into(),
            messages: 24,
            credits: 48,
        }]
    );
    // Stored as one item a part, each with its own messages.
    let pk = format!("TENANT#{}", t.id);
    let stored: Vec<String> = p
        .retention
        .stored_items()
        .await
        .unwrap()
        .into_iter()
        .filter(|i| i.pk == pk && i.sk.starts_with("USAGE#"))
        .map(|i| i.sk)
        .collect();
    let mut expected: Vec<String> = parts
        .keys()
        .map(|shard| format!("USAGE#2026-11-30#utility#regular#{shard}"))
        .collect();
    expected.sort();
    let mut got = stored.clone();
    got.sort();
    assert_eq!(got, expected);
    assert!(parts.len() >= 3, "24 messages spread: {parts:?}");
}

async fn the_status_first_carrying_pricing_moves_prices_and_counts_the_message_in_one_write(
    p: Ports,
) {
    let t = onboarded(&p, 100).await;
    let day = NaiveDate::from_ymd_opt(2026, 11, 30).unwrap();
    let utility = Pricing::parse("PMP", "utility", "regular").unwrap();
    let expires = Some(p.clock.now().timestamp() + 1000);
    let at = p.clock.now();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (mut m, debit) = message(&p, &t.id, 1000);
        m.price = 2;
        p.messages.insert_with_debit(&m, &debit).await.unwrap();
        let sent = p
            .messages
            .transition(
                &t.id,
                &m.id,
                MessageStatus::Sent,
                &StatusChange::default(),
                at,
            )
            .await
            .unwrap();
        assert!(matches!(sent, Transition::Applied(_)));
        ids.push(m.id);
        p.clock.advance(Duration::milliseconds(2));
    }
    let moved = |id: usize, to: MessageStatus| {
        let (p, t, ids, utility) = (&p, &t, &ids, &utility);
        async move {
            p.usage
                .transition_priced(
                    &PricedMessage {
                        tenant: &t.id,
                        message: &ids[id],
                        pricing: utility,
                        day,
                        credits: 2,
                        expires_at: expires,
                    },
                    to.allowed_predecessors(),
                    to,
                    &StatusChange {
                        wamid: Some("wamid.X".into()),
                        ..Default::default()
                    },
                    at,
                )
                .await
                .unwrap()
        }
    };
    let status = |id: usize| {
        let (p, t, ids) = (&p, &t, &ids);
        async move {
            let m = p
                .messages
                .get_message(&t.id, &ids[id])
                .await
                .unwrap()
                .unwrap();
            (m.status, m.pricing.is_some())
        }
    };
    // The first status carrying the pricing: moved, priced, counted.
    assert!(moved(0, MessageStatus::Delivered).await);
    assert_eq!(status(0).await, (MessageStatus::Delivered, true));
    // A replay of it, and the next status carrying it again: refused, nothing written
    // (the caller moves `read` plainly).
    assert!(!moved(0, MessageStatus::Delivered).await);
    assert!(!moved(0, MessageStatus::Read).await);
    assert_eq!(status(0).await, (MessageStatus::Delivered, true));
    // Priced before (a refused status carried it): the move is refused too, not half-done.
    assert!(priced(&p, &t.id, &ids[1], &utility, day, expires)
        .await
        .unwrap());
    assert!(!moved(1, MessageStatus::Delivered).await);
    assert_eq!(status(1).await, (MessageStatus::Sent, true));
    // A status that may not follow: refused, not priced.
    assert!(!moved(2, MessageStatus::Sending).await);
    assert_eq!(status(2).await, (MessageStatus::Sent, false));
    // Only from the status the caller read: a read that says `failed` (a moment ahead, or
    // behind) does not move a `sent` message, which `delivered` could otherwise follow.
    assert!(!p
        .usage
        .transition_priced(
            &PricedMessage {
                tenant: &t.id,
                message: &ids[2],
                pricing: &utility,
                day,
                credits: 2,
                expires_at: expires,
            },
            &[MessageStatus::Failed],
            MessageStatus::Delivered,
            &StatusChange::default(),
            at,
        )
        .await
        .unwrap());
    assert_eq!(status(2).await, (MessageStatus::Sent, false));
    // No such message: nothing counted.
    let missing = kirim::domain::MessageId::from_trusted(ulid::Ulid::new().to_string());
    assert!(!p
        .usage
        .transition_priced(
            &PricedMessage {
                tenant: &t.id,
                message: &missing,
                pricing: &utility,
                day,
                credits: 2,
                expires_at: expires,
            },
            MessageStatus::Delivered.allowed_predecessors(),
            MessageStatus::Delivered,
            &StatusChange::default(),
            at,
        )
        .await
        .unwrap());
    let rows = p.usage.usage(&t.id, day, day).await.unwrap();
    let got: Vec<(i64, i64)> = rows.iter().map(|r| (r.messages, r.credits)).collect();
    assert_eq!(got, vec![(2, 4)], "messages 0 and 1, once each");
}

/// A hold's reason kept as a build before stop 60 kept it (Meta's title quoting the
/// recipient and a long number): every read of the number gets it scrubbed by the digit
/// rule, Meta's code and words kept.
async fn a_hold_reason_kept_unscrubbed_is_read_back_scrubbed_by_every_read(p: Ports) {
    let t = onboarded(&p, 0).await;
    let id = fresh_id();
    p.numbers
        .add_phone_number(&number(&p, &t.id, &id, "2000002"))
        .await
        .unwrap();
    let now = p.clock.now();
    let hold = NumberHold {
        code: 131048,
        reason: "(#131048) Spam rate limit hit for +60123456789, order 123456789".into(),
        since: now,
        by: "webhook".into(),
    };
    assert!(p
        .numbers
        .hold_phone_number(&t.id, &id, &hold, now)
        .await
        .unwrap());
    let scrubbed = "(#131048) Spam rate limit hit for <redacted>, order <redacted>";
    let got = p.numbers.get_phone_number(&t.id, &id).await.unwrap();
    assert_eq!(
        got.and_then(|n| n.hold).map(|h| h.reason).as_deref(),
        Some(scrubbed)
    );
    let listed = p.numbers.list_phone_numbers(&t.id).await.unwrap();
    let reasons: Vec<Option<String>> = listed
        .into_iter()
        .filter(|n| n.phone_number_id == id)
        .map(|n| n.hold.map(|h| h.reason))
        .collect();
    assert_eq!(reasons, [Some(scrubbed.to_owned())]);
}

/// A `delivered` Meta reports after the `read` records its time among the message's
/// events (status kept), only on the message as it was read and only once; folded with
/// the pricing when it is the first to carry it.
async fn an_overtaken_status_records_its_time_once_on_the_message_as_read(p: Ports) {
    let t = onboarded(&p, 100).await;
    let day = NaiveDate::from_ymd_opt(2026, 11, 30).unwrap();
    let utility = Pricing::parse("PMP", "utility", "regular").unwrap();
    let expires = Some(p.clock.now().timestamp() + 1000);
    let t0 = p.clock.now();
    let read_at = t0 + Duration::seconds(3);
    let delivered_at = t0 + Duration::seconds(2);
    let mut ids = Vec::new();
    for _ in 0..2 {
        let (m, debit) = message(&p, &t.id, 1000);
        p.messages.insert_with_debit(&m, &debit).await.unwrap();
        for (to, at) in [
            (MessageStatus::Sent, t0 + Duration::seconds(1)),
            (MessageStatus::Read, read_at),
        ] {
            let moved = p
                .messages
                .transition(&t.id, &m.id, to, &StatusChange::default(), at)
                .await
                .unwrap();
            assert!(matches!(moved, Transition::Applied(_)), "{to:?}");
        }
        ids.push(m.id);
        p.clock.advance(Duration::milliseconds(2));
    }
    let get = |id: usize| {
        let (p, t, ids) = (&p, &t, &ids);
        async move {
            p.messages
                .get_message(&t.id, &ids[id])
                .await
                .unwrap()
                .unwrap()
        }
    };
    let delivered = kirim::domain::StatusEvent {
        status: MessageStatus::Delivered,
        at: delivered_at,
    };
    let seen = get(0).await;
    assert!(p
        .messages
        .record_overtaken(&seen, delivered.clone(), None)
        .await
        .unwrap());
    let m = get(0).await;
    assert_eq!(m.status, MessageStatus::Read, "never moved back");
    assert_eq!(m.updated_at, seen.updated_at, "not a move");
    let events: Vec<_> = m.events.iter().map(|e| (e.status, e.at)).collect();
    assert_eq!(
        events,
        [
            (MessageStatus::Accepted, seen.events[0].at),
            (MessageStatus::Sent, t0 + Duration::seconds(1)),
            (MessageStatus::Delivered, delivered_at),
            (MessageStatus::Read, read_at),
        ],
        "in the order of its life"
    );
    assert_eq!(
        m.settled_at,
        Some(t0 + Duration::seconds(1)),
        "its settled time as its events had it (the sent's), kept by the same write"
    );
    // Again on the same read (changed since), or on the message as it is now (it has one):
    // nothing written. A read a moment behind (`sent`, before the `read`): nothing.
    assert!(!p
        .messages
        .record_overtaken(&seen, delivered.clone(), None)
        .await
        .unwrap());
    assert!(!p
        .messages
        .record_overtaken(&m, delivered.clone(), None)
        .await
        .unwrap());
    let behind = kirim::domain::MessageRecord {
        status: MessageStatus::Sent,
        events: seen.events[..2].to_vec(),
        ..seen.clone()
    };
    assert!(!p
        .messages
        .record_overtaken(&behind, delivered.clone(), None)
        .await
        .unwrap());
    assert_eq!(get(0).await.events, m.events);
    // The first status carrying the pricing: its time, the pricing and the count in one
    // write; then, priced, nothing more.
    let seen = get(1).await;
    let priced = PricedMessage {
        tenant: &t.id,
        message: &ids[1],
        pricing: &utility,
        day,
        credits: 1,
        expires_at: expires,
    };
    assert!(p
        .messages
        .record_overtaken(&seen, delivered.clone(), Some(&priced))
        .await
        .unwrap());
    let m = get(1).await;
    assert_eq!(m.pricing.as_ref(), Some(&utility));
    assert_eq!(
        m.settled_at,
        Some(t0 + Duration::seconds(1)),
        "kept when priced too"
    );
    assert!(m
        .events
        .iter()
        .any(|e| e.status == MessageStatus::Delivered && e.at == delivered_at));
    let sent = kirim::domain::StatusEvent {
        status: MessageStatus::Sent,
        at: t0,
    };
    assert!(
        !p.messages
            .record_overtaken(&m, sent, Some(&priced))
            .await
            .unwrap(),
        "it has a sent event already"
    );
    let rows = p.usage.usage(&t.id, day, day).await.unwrap();
    let got: Vec<(i64, i64)> = rows.iter().map(|r| (r.messages, r.credits)).collect();
    assert_eq!(got, vec![(1, 1)], "counted once");
}

/// Meta's spam limit on one number (131048) holds that number: only a number that exists,
/// the first hold kept, never for Meta's word older than an admin's resume; a resume lifts
/// only a hold there is, and records when.
async fn a_number_is_held_once_and_a_resume_after_metas_word_stands(p: Ports) {
    let t = onboarded(&p, 0).await;
    let other = onboarded(&p, 0).await;
    let id = fresh_id();
    p.numbers
        .add_phone_number(&number(&p, &t.id, &id, "2000002"))
        .await
        .unwrap();
    let hold = |reason: &str| NumberHold {
        code: 131048,
        reason: reason.into(),
        since: p.clock.now(),
        by: "dispatcher".into(),
    };
    let now = p.clock.now();
    // No such number of the tenant's (another tenant's, or none): nothing held or made.
    for pnid in [fresh_id(), other.phone_number_id.clone()] {
        assert!(!p
            .numbers
            .hold_phone_number(&t.id, &pnid, &hold("x"), now)
            .await
            .unwrap());
    }
    assert_eq!(
        p.numbers
            .get_phone_number(&other.id, &other.phone_number_id)
            .await
            .unwrap()
            .and_then(|n| n.hold),
        None,
        "another tenant's number is not held"
    );
    assert!(p
        .numbers
        .hold_phone_number(&t.id, &id, &hold("first"), now)
        .await
        .unwrap());
    assert!(
        !p.numbers
            .hold_phone_number(&t.id, &id, &hold("second"), now)
            .await
            .unwrap(),
        "the first hold is kept"
    );
    let held = p
        .numbers
        .get_phone_number(&t.id, &id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(held.hold, Some(hold("first")));
    // Resumed: the hold is gone, the time kept.
    let resumed_at = p.clock.now() + Duration::seconds(10);
    let resumed = p
        .numbers
        .resume_phone_number(&t.id, &id, resumed_at)
        .await
        .unwrap()
        .expect("it was held");
    assert_eq!(resumed.hold, None);
    assert_eq!(resumed.resumed_at_ms, Some(resumed_at.timestamp_millis()));
    assert_eq!(
        p.numbers.get_phone_number(&t.id, &id).await.unwrap(),
        Some(resumed.clone())
    );
    // Not held: a resume changes nothing.
    assert_eq!(
        p.numbers
            .resume_phone_number(&t.id, &id, resumed_at + Duration::seconds(5))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        p.numbers
            .get_phone_number(&t.id, &id)
            .await
            .unwrap()
            .and_then(|n| n.resumed_at_ms),
        Some(resumed_at.timestamp_millis())
    );
    // Meta's word from before the resume does not hold it again; a later one does.
    assert!(!p
        .numbers
        .hold_phone_number(&t.id, &id, &hold("old"), resumed_at - Duration::seconds(1))
        .await
        .unwrap());
    assert_eq!(
        p.numbers
            .get_phone_number(&t.id, &id)
            .await
            .unwrap()
            .and_then(|n| n.hold),
        None
    );
    assert!(p
        .numbers
        .hold_phone_number(&t.id, &id, &hold("new"), resumed_at + Duration::seconds(1))
        .await
        .unwrap());
    // The list shows it too.
    let listed = p.numbers.list_phone_numbers(&t.id).await.unwrap();
    assert_eq!(
        listed
            .iter()
            .find(|n| n.phone_number_id == id)
            .and_then(|n| n.hold.clone()),
        Some(hold("new"))
    );
}

async fn close(p: &Ports, t: &TenantId) {
    p.tenants
        .set_status(t, TenantStatus::Closed, Some("bye"), p.clock.now())
        .await
        .unwrap();
}

/// A closed tenant's number is another onboarding's at once (its close-out, which frees it,
/// comes only when the retention run's scan reaches its item): the route is taken over in
/// the onboarding's one write, only while it still names that tenant and that tenant is
/// closed; anything else writes nothing.
async fn a_closed_tenants_number_is_taken_over_by_an_onboarding_only_while_its_route_names_it(
    p: Ports,
) {
    let waba = fresh_id();
    let mut a = super::contract::tenant(0);
    a.waba_id = waba.clone();
    p.tenants
        .create_tenant(&a, &super::contract::key_for(&a), None)
        .await
        .unwrap();
    let suspended = onboarded(&p, 0).await;
    p.tenants
        .set_status(
            &suspended.id,
            TenantStatus::Suspended,
            Some("x"),
            p.clock.now(),
        )
        .await
        .unwrap();
    let next = |pnid: &str| {
        let mut t = super::contract::tenant(5);
        t.phone_number_id = pnid.to_owned();
        t.waba_id = waba.clone();
        t
    };
    // Not closed (active, suspended), or not the tenant the route names: refused, nothing
    // written.
    let b = next(&a.phone_number_id);
    let key = super::contract::key_for(&b);
    for (pnid, over) in [
        (&a.phone_number_id, &a.id),
        (&suspended.phone_number_id, &suspended.id),
    ] {
        let b = next(pnid);
        let err = p
            .tenants
            .onboard_over_closed(&b, None, &super::contract::key_for(&b), None, over)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
        assert_eq!(p.tenants.get_tenant(&b.id).await.unwrap(), None);
        assert_eq!(
            p.tenants.tenant_by_phone_number_id(pnid).await.unwrap(),
            Some(over.clone())
        );
    }
    close(&p, &a.id).await;
    // Closed, but the write names another tenant as the route's, or claims it free.
    let err = p
        .tenants
        .onboard_over_closed(&b, None, &key, None, &suspended.id)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    let err = p.tenants.onboard(&b, None, &key, None).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert_eq!(p.tenants.get_tenant(&b.id).await.unwrap(), None);
    assert_eq!(
        p.tenants.api_key_by_hash(&key.key_hash).await.unwrap(),
        None
    );
    // Over the closed tenant that holds it: taken, with all the onboarding writes.
    p.tenants
        .onboard_over_closed(&b, Some("+60 3-1234 5678"), &key, None, &a.id)
        .await
        .unwrap();
    assert_eq!(
        p.tenants
            .tenant_by_phone_number_id(&a.phone_number_id)
            .await
            .unwrap(),
        Some(b.id.clone())
    );
    assert_eq!(p.tenants.get_tenant(&b.id).await.unwrap(), Some(b.clone()));
    assert!(p
        .tenants
        .api_key_by_hash(&key.key_hash)
        .await
        .unwrap()
        .is_some());
    let n = p
        .numbers
        .get_phone_number(&b.id, &b.phone_number_id)
        .await
        .unwrap()
        .expect("the new owner's number item");
    assert_eq!(n.display_phone_number.as_deref(), Some("+60 3-1234 5678"));
    // The closed tenant keeps its own number item (its close-out gives it its TTL); both
    // are on the WABA's index, which its readers filter by the tenants' status.
    assert!(p
        .numbers
        .get_phone_number(&a.id, &a.phone_number_id)
        .await
        .unwrap()
        .is_some());
    let mut both = vec![a.id.clone(), b.id.clone()];
    both.sort();
    assert_eq!(p.tenants.tenants_by_waba(&waba).await.unwrap(), both);
    // Taken once: a second onboarding over the closed tenant finds the route moved on.
    let c = next(&a.phone_number_id);
    let err = p
        .tenants
        .onboard_over_closed(&c, None, &super::contract::key_for(&c), None, &a.id)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert_eq!(p.tenants.get_tenant(&c.id).await.unwrap(), None);
    // A number no tenant holds is not "taken over": the plain onboarding claims it.
    let free = next(&fresh_id());
    let err = p
        .tenants
        .onboard_over_closed(&free, None, &super::contract::key_for(&free), None, &a.id)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert_eq!(
        p.tenants
            .tenant_by_phone_number_id(&free.phone_number_id)
            .await
            .unwrap(),
        None
    );
}

/// The same for a number the operator adds: taken from a closed tenant in the add's one
/// write, only while the route names that closed tenant, and never by a closed tenant.
async fn a_closed_tenants_number_is_taken_over_by_an_add_only_while_its_route_names_it(p: Ports) {
    let a = onboarded(&p, 0).await;
    let b = onboarded(&p, 0).await;
    let extra = fresh_id();
    p.numbers
        .add_phone_number(&number(&p, &a.id, &extra, "2000004"))
        .await
        .unwrap();
    // A is open: refused, nothing written.
    for pnid in [&a.phone_number_id, &extra] {
        let err = p
            .numbers
            .add_phone_number_over_closed(&number(&p, &b.id, pnid, "2000004"), &a.id)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
        assert_eq!(p.numbers.get_phone_number(&b.id, pnid).await.unwrap(), None);
    }
    close(&p, &a.id).await;
    // The plain add is still refused, and so is one naming another tenant as the holder
    // (an open one, or the tenant itself).
    assert!(matches!(
        p.numbers
            .add_phone_number(&number(&p, &b.id, &extra, "2000004"))
            .await,
        Err(StoreError::Conflict(_))
    ));
    let other = onboarded(&p, 0).await;
    for over in [&other.id, &b.id] {
        assert!(matches!(
            p.numbers
                .add_phone_number_over_closed(&number(&p, &b.id, &extra, "2000004"), over)
                .await,
            Err(StoreError::Conflict(_))
        ));
    }
    // A closed tenant takes nothing over, not even from another closed tenant.
    let c = onboarded(&p, 0).await;
    close(&p, &c.id).await;
    assert_eq!(
        p.numbers
            .add_phone_number_over_closed(&number(&p, &c.id, &extra, "2000004"), &a.id)
            .await
            .unwrap_err(),
        StoreError::Conflict(kirim::ports::TENANT_CLOSED.into())
    );
    // Both of A's numbers, its default and another: taken by B.
    for pnid in [&extra, &a.phone_number_id] {
        let n = number(&p, &b.id, pnid, "2000004");
        p.numbers
            .add_phone_number_over_closed(&n, &a.id)
            .await
            .unwrap();
        assert_eq!(
            p.tenants.tenant_by_phone_number_id(pnid).await.unwrap(),
            Some(b.id.clone())
        );
        assert_eq!(
            p.numbers.get_phone_number(&b.id, pnid).await.unwrap(),
            Some(n)
        );
        assert!(p
            .numbers
            .get_phone_number(&a.id, pnid)
            .await
            .unwrap()
            .is_some());
        // Once: the route names B now.
        let d = onboarded(&p, 0).await;
        assert!(matches!(
            p.numbers
                .add_phone_number_over_closed(&number(&p, &d.id, pnid, "2000004"), &a.id)
                .await,
            Err(StoreError::Conflict(_))
        ));
    }
}

/// The closed tenant's close-out, when the retention run reaches it, deletes a route only
/// while it names that tenant: the routes taken over from it stay with their new owners.
async fn a_close_out_leaves_the_routes_taken_over_from_its_tenant(p: Ports) {
    let a = onboarded(&p, 0).await;
    let extra = fresh_id();
    let kept = fresh_id();
    for pnid in [&extra, &kept] {
        p.numbers
            .add_phone_number(&number(&p, &a.id, pnid, "2000005"))
            .await
            .unwrap();
    }
    close(&p, &a.id).await;
    let mut b = super::contract::tenant(0);
    b.phone_number_id = a.phone_number_id.clone();
    p.tenants
        .onboard_over_closed(&b, None, &super::contract::key_for(&b), None, &a.id)
        .await
        .unwrap();
    let c = onboarded(&p, 0).await;
    p.numbers
        .add_phone_number_over_closed(&number(&p, &c.id, &extra, "2000005"), &a.id)
        .await
        .unwrap();
    let now = p.clock.now();
    let ttls = CloseOutTtls {
        tenant: now.timestamp() + 100,
        config: now.timestamp() + 10,
        audit_head: now.timestamp() + 10,
    };
    let done = p
        .retention
        .close_out(
            &a.id,
            ttls,
            now,
            std::time::Instant::now() + std::time::Duration::from_secs(3600),
        )
        .await
        .unwrap();
    assert!(!done.phone_route_removed, "the default's route is B's");
    for (pnid, owner) in [
        (&a.phone_number_id, Some(b.id.clone())),
        (&extra, Some(c.id.clone())),
        (&kept, None),
    ] {
        assert_eq!(
            p.tenants.tenant_by_phone_number_id(pnid).await.unwrap(),
            owner,
            "{pnid}"
        );
    }
    assert!(p
        .numbers
        .get_phone_number(&b.id, &b.phone_number_id)
        .await
        .unwrap()
        .is_some());
    assert!(p
        .numbers
        .get_phone_number(&c.id, &extra)
        .await
        .unwrap()
        .is_some());
}

contract!(
    a_closed_tenants_number_is_taken_over_by_an_onboarding_only_while_its_route_names_it,
    a_closed_tenants_number_is_taken_over_by_an_add_only_while_its_route_names_it,
    a_close_out_leaves_the_routes_taken_over_from_its_tenant,
    a_number_is_held_once_and_a_resume_after_metas_word_stands,
    a_hold_reason_kept_unscrubbed_is_read_back_scrubbed_by_every_read,
    an_older_throughput_never_undoes_one_an_older_item_timed_by_its_quality,
    a_number_without_its_route_is_removed_and_another_tenants_route_stays,
    the_status_first_carrying_pricing_moves_prices_and_counts_the_message_in_one_write,
    an_overtaken_status_records_its_time_once_on_the_message_as_read,
    a_number_is_one_tenants_at_most_and_its_route_names_that_tenant,
    a_number_is_never_added_to_a_closed_tenant,
    an_onboarded_numbers_display_is_written_in_the_tenants_one_write,
    the_default_number_is_never_removed_and_a_removed_number_frees_its_route,
    the_default_moves_only_to_a_number_of_the_tenants,
    a_numbers_quality_changes_only_on_a_number_that_exists,
    an_older_quality_update_never_undoes_a_newer_one,
    metas_pricing_is_counted_once_per_message_by_day_category_and_type,
    a_days_usage_row_is_spread_over_parts_by_message_and_read_as_one,
);

/// A usage row written before rows were spread (A79: `USAGE#{day}#{category}#{type}`, no
/// part of its own) is read with the parts written since: one row, summed.
#[tokio::test]
async fn on_dynamodb_a_usage_row_written_before_the_spread_is_summed_with_its_parts() {
    use aws_sdk_dynamodb::types::AttributeValue;
    let (p, table, name) = super::contract::aws_and_table().await;
    let t = onboarded(&p, 100).await;
    let day = NaiveDate::from_ymd_opt(2026, 11, 30).unwrap();
    let n = |v: i64| AttributeValue::N(v.to_string());
    table
        .put_item()
        .table_name(&name)
        .item("pk", AttributeValue::S(format!("TENANT#{}", t.id)))
        .item(
            "sk",
            AttributeValue::S("USAGE#2026-11-30#utility#regular".into()),
        )
        .item("date", AttributeValue::S("2026-11-30".into()))
        .item("category", AttributeValue::S("utility".into()))
        .item("pricing_type", AttributeValue::S("regular".into()))
        .item("messages", n(5))
        .item("credits", n(10))
        .send()
        .await
        .unwrap();
    let utility = Pricing::parse("PMP", "utility", "regular").unwrap();
    for _ in 0..3 {
        let (mut m, debit) = message(&p, &t.id, 1000);
        m.price = 2;
        p.messages.insert_with_debit(&m, &debit).await.unwrap();
        assert!(priced(&p, &t.id, &m.id, &utility, day, None).await.unwrap());
    }
    let rows = p.usage.usage(&t.id, day, day).await.unwrap();
    assert_eq!(
        rows.iter()
            .map(|r| (r.category.as_str(), r.messages, r.credits))
            .collect::<Vec<_>>(),
        vec![("utility", 8, 16)]
    );
}
