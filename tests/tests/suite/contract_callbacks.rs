//! The contract of `PendingStatusStore` and `StatusCallbackStore`, on the memory adapter
//! and on DynamoDB (moto): the same assertions for both.

use chrono::{Duration, Utc};
use kirim::domain::meta::MetaStatus;
use kirim::domain::TenantId;
use kirim::ports::*;
use kirim::store_error::StoreError;

use super::contract::{aws, memory, message, onboarded, sweep, Ports as Stores};

fn kept(p: &Stores, wamid: &str, status: &str, timestamp: i64) -> PendingStatus {
    let now = p.clock.now();
    PendingStatus {
        wamid: wamid.into(),
        status: MetaStatus::parse(status).unwrap(),
        timestamp,
        biz_opaque_callback_data: None,
        errors: if status == "failed" {
            vec![PendingError {
                code: 131026,
                title: "Message undeliverable".into(),
            }]
        } else {
            Vec::new()
        },
        pricing: None,
        received_at: now,
        expires_at: Some((now + Duration::days(7)).timestamp()),
    }
}

async fn a_status_for_an_unknown_wamid_is_kept_once_and_listed_oldest_first(p: Stores) {
    let wamid = format!("wamid.{}", ulid::Ulid::new());
    let read = kept(&p, &wamid, "read", 1_700_000_020);
    let delivered = kept(&p, &wamid, "delivered", 1_700_000_010);
    assert!(p.pending.put_pending_status(&read).await.unwrap());
    assert!(p.pending.put_pending_status(&delivered).await.unwrap());
    assert!(
        !p.pending.put_pending_status(&delivered).await.unwrap(),
        "a duplicate is kept once"
    );
    let failed = kept(&p, &wamid, "failed", 1_700_000_015);
    assert!(p.pending.put_pending_status(&failed).await.unwrap());

    let list = p.pending.pending_statuses(&wamid).await.unwrap();
    let order: Vec<&str> = list.iter().map(|s| s.status.as_str()).collect();
    assert_eq!(order, vec!["delivered", "failed", "read"]);
    assert_eq!(list[1], failed, "kept as given, errors included");
    assert!(p
        .pending
        .pending_statuses("wamid.other")
        .await
        .unwrap()
        .is_empty());

    p.pending.delete_pending_status(&failed).await.unwrap();
    p.pending.delete_pending_status(&failed).await.unwrap(); // gone already: fine
    assert_eq!(p.pending.pending_statuses(&wamid).await.unwrap().len(), 2);
}

async fn kept_statuses_expire_with_their_retention_class(p: Stores) {
    let wamid = format!("wamid.{}", ulid::Ulid::new());
    let delivered = kept(&p, &wamid, "delivered", 1_700_000_010);
    assert!(p.pending.put_pending_status(&delivered).await.unwrap());
    p.clock.advance(Duration::days(8));
    assert!(
        p.pending.pending_statuses(&wamid).await.unwrap().is_empty(),
        "expired: invisible"
    );
    let swept = sweep(&p).await.deleted;
    assert_eq!(
        swept.get("pending_status"),
        Some(&2),
        "and swept as a pending status, with the mark it left for the wamid: {swept:?}"
    );
    assert_eq!(swept.values().sum::<usize>(), 2, "nothing else: {swept:?}");
    let again = kept(&p, &wamid, "delivered", 1_700_000_010);
    assert!(
        p.pending.put_pending_status(&again).await.unwrap(),
        "an expired copy does not block a new one"
    );
}

async fn indexing_a_wamid_says_whether_a_status_was_kept_for_it_first(p: Stores) {
    let t = onboarded(&p, 10).await;
    let (early, d1) = message(&p, &t.id, 3600);
    p.messages.insert_with_debit(&early, &d1).await.unwrap();
    let (plain, d2) = message(&p, &t.id, 3600);
    p.messages.insert_with_debit(&plain, &d2).await.unwrap();
    let (w1, w2) = (
        format!("wamid.{}", ulid::Ulid::new()),
        format!("wamid.{}", ulid::Ulid::new()),
    );
    let delivered = kept(&p, &w1, "delivered", 1_700_000_010);
    assert!(p.pending.put_pending_status(&delivered).await.unwrap());
    assert!(!p.pending.put_pending_status(&delivered).await.unwrap());
    assert_eq!(
        p.messages.message_by_wamid(&w1).await.unwrap(),
        None,
        "the mark a kept status leaves leads to no message"
    );
    assert!(
        p.messages
            .index_wamid(&t.id, &early.id, &w1, early.expires_at)
            .await
            .unwrap(),
        "a status was kept for it: the dispatcher reads them"
    );
    // Written again (the SDK's retry of a write whose answer was lost, the dispatcher's
    // second try, `set_wamid`): the mark is still seen, else the kept status is lost.
    assert!(
        p.messages
            .index_wamid(&t.id, &early.id, &w1, early.expires_at)
            .await
            .unwrap(),
        "indexed again: the mark stays"
    );
    p.messages
        .set_wamid(&t.id, &early.id, &w1, early.expires_at)
        .await
        .unwrap();
    assert!(p
        .messages
        .index_wamid(&t.id, &early.id, &w1, early.expires_at)
        .await
        .unwrap());
    assert_eq!(
        p.messages.message_by_wamid(&w1).await.unwrap(),
        Some((t.id.clone(), early.id.clone()))
    );
    assert_eq!(
        p.pending.pending_statuses(&w1).await.unwrap(),
        vec![delivered]
    );
    assert!(
        !p.messages
            .index_wamid(&t.id, &plain.id, &w2, plain.expires_at)
            .await
            .unwrap(),
        "none kept: no read"
    );
    assert_eq!(
        p.messages.message_by_wamid(&w2).await.unwrap(),
        Some((t.id.clone(), plain.id.clone()))
    );
    // A status kept after the wamid was indexed marks the index item itself: seen too.
    let read = kept(&p, &w2, "read", 1_700_000_020);
    assert!(p.pending.put_pending_status(&read).await.unwrap());
    assert!(p
        .messages
        .index_wamid(&t.id, &plain.id, &w2, plain.expires_at)
        .await
        .unwrap());
    assert_eq!(
        p.messages.message_by_wamid(&w2).await.unwrap(),
        Some((t.id.clone(), plain.id.clone()))
    );
}

async fn a_status_callback_setting_is_set_read_replaced_and_removed_per_tenant(p: Stores) {
    let a = TenantId::generate();
    let b = TenantId::generate();
    assert_eq!(
        p.status_callbacks.get_status_callback(&a).await.unwrap(),
        None
    );
    let setting = StatusCallback {
        tenant_id: a.clone(),
        url: "https://hooks.example.com/kirim".into(),
        secret_name: format!("kirim/tenants/{a}/status-callback-secret"),
        secret_version: Some("0123456789abcdef0123456789abcdef".into()),
        updated_at: Utc::now(),
    };
    p.status_callbacks
        .put_status_callback(&setting)
        .await
        .unwrap();
    assert_eq!(
        p.status_callbacks.get_status_callback(&a).await.unwrap(),
        Some(setting.clone())
    );
    assert_eq!(
        p.status_callbacks.get_status_callback(&b).await.unwrap(),
        None
    );
    let moved = StatusCallback {
        url: "https://hooks.example.com/v2".into(),
        ..setting
    };
    p.status_callbacks
        .put_status_callback(&moved)
        .await
        .unwrap();
    assert_eq!(
        p.status_callbacks.get_status_callback(&a).await.unwrap(),
        Some(moved)
    );
    assert!(p.status_callbacks.delete_status_callback(&a).await.unwrap());
    assert!(!p.status_callbacks.delete_status_callback(&a).await.unwrap());
    assert_eq!(
        p.status_callbacks.get_status_callback(&a).await.unwrap(),
        None
    );
}

/// A `PUT` of the URL alone changes the URL and its time and nothing else (the secret's
/// version another admin just set stays), and only on a setting that exists.
async fn a_status_callback_url_is_changed_alone_and_only_on_a_setting_that_exists(p: Stores) {
    let a = TenantId::generate();
    let at = Utc::now();
    assert!(
        !p.status_callbacks
            .set_status_callback_url(&a, "https://hooks.example.com/new", at)
            .await
            .unwrap(),
        "no setting: refused"
    );
    assert_eq!(
        p.status_callbacks
            .get_status_callback_fresh(&a)
            .await
            .unwrap(),
        None,
        "and none made"
    );
    let setting = StatusCallback {
        tenant_id: a.clone(),
        url: "https://hooks.example.com/old".into(),
        secret_name: format!("kirim/tenants/{a}/status-callback-secret"),
        secret_version: Some("fedcba9876543210fedcba9876543210".into()),
        updated_at: at - chrono::Duration::minutes(3),
    };
    p.status_callbacks
        .put_status_callback(&setting)
        .await
        .unwrap();
    assert!(p
        .status_callbacks
        .set_status_callback_url(&a, "https://hooks.example.com/new", at)
        .await
        .unwrap());
    assert_eq!(
        p.status_callbacks
            .get_status_callback_fresh(&a)
            .await
            .unwrap(),
        Some(StatusCallback {
            url: "https://hooks.example.com/new".into(),
            updated_at: at,
            ..setting
        })
    );
    p.status_callbacks.delete_status_callback(&a).await.unwrap();
}

/// A closed tenant's setting keeps the expiry its close-out gives it, and a `PUT` a warm
/// instance still serves with the tenant cached open writes nothing: a change of the URL
/// alone is refused like a whole setting's, said so, and the URL stays as it was.
async fn a_closed_tenants_callback_url_is_not_changed_alone(p: Stores) {
    let t = onboarded(&p, 0).await;
    let setting = StatusCallback {
        tenant_id: t.id.clone(),
        url: "https://hooks.example.com/old".into(),
        secret_name: format!("kirim/tenants/{}/status-callback-secret", t.id),
        secret_version: Some("00112233445566778899aabbccddeeff".into()),
        updated_at: p.clock.now(),
    };
    p.status_callbacks
        .put_status_callback(&setting)
        .await
        .unwrap();
    p.tenants
        .set_status(&t.id, TenantStatus::Closed, Some("bye"), p.clock.now())
        .await
        .unwrap();
    assert_eq!(
        p.status_callbacks
            .set_status_callback_url(&t.id, "https://hooks.example.com/new", p.clock.now())
            .await,
        Err(StoreError::Conflict(TENANT_CLOSED.into()))
    );
    assert_eq!(
        p.status_callbacks
            .get_status_callback_fresh(&t.id)
            .await
            .unwrap(),
        Some(setting),
        "the URL as it was"
    );
    // With no setting at all, the closed tenant is what is said.
    p.status_callbacks
        .delete_status_callback(&t.id)
        .await
        .unwrap();
    assert_eq!(
        p.status_callbacks
            .set_status_callback_url(&t.id, "https://hooks.example.com/new", p.clock.now())
            .await,
        Err(StoreError::Conflict(TENANT_CLOSED.into()))
    );
}

fn owed(p: &Stores, t: &TenantId, sequence: u32) -> OwedCallback {
    let now = p.clock.now();
    let message_id = kirim::domain::MessageId::generate();
    OwedCallback {
        tenant_id: t.clone(),
        body: format!(r#"{{"kind":"status_callback","message_id":"{message_id}"}}"#),
        message_id,
        sequence,
        owed_at: now,
        expires_at: Some((now + Duration::days(7)).timestamp()),
        leased_until: None,
    }
}

async fn a_callback_the_queue_refused_is_kept_once_listed_forgotten_and_expires_in_a_week(
    p: Stores,
) {
    let a = TenantId::generate();
    let b = TenantId::generate();
    let sent = owed(&p, &a, 1);
    let mut delivered = owed(&p, &a, 3);
    delivered.message_id = sent.message_id.clone();
    let other = owed(&p, &b, 4);
    for o in [&sent, &delivered, &other, &sent] {
        p.status_callbacks.owe_callback(o).await.unwrap();
    }
    let mut listed = p.status_callbacks.owed_callbacks(10).await.unwrap();
    listed.sort_by_key(|o| (o.tenant_id.to_string(), o.sequence));
    let mut want = vec![sent.clone(), delivered.clone(), other.clone()];
    want.sort_by_key(|o| (o.tenant_id.to_string(), o.sequence));
    assert_eq!(listed, want, "each kept once, as given, every tenant's");
    assert_eq!(p.status_callbacks.owed_callbacks(2).await.unwrap().len(), 2);

    p.status_callbacks
        .forget_owed_callback(&sent)
        .await
        .unwrap();
    p.status_callbacks
        .forget_owed_callback(&sent)
        .await
        .unwrap(); // gone already: fine
    let left = p.status_callbacks.owed_callbacks(10).await.unwrap();
    assert_eq!(left.len(), 2);
    assert!(!left.contains(&sent) && left.contains(&delivered));
    assert!(
        !p.status_callbacks
            .lease_owed_callback(&sent, p.clock.now().timestamp() + 60)
            .await
            .unwrap(),
        "one no longer owed is not leased"
    );

    // A lease holds one from other drains until it passes; a second lease meanwhile fails.
    let until = p.clock.now().timestamp() + 120;
    assert!(p
        .status_callbacks
        .lease_owed_callback(&other, until)
        .await
        .unwrap());
    assert!(!p
        .status_callbacks
        .lease_owed_callback(&other, until)
        .await
        .unwrap());
    let unheld = p.status_callbacks.owed_callbacks(10).await.unwrap();
    assert_eq!(unheld, vec![delivered.clone()], "a held one is passed by");
    p.clock.advance(Duration::seconds(121));
    let after = p.status_callbacks.owed_callbacks(10).await.unwrap();
    assert_eq!(after.len(), 2, "its lease passed: owed again");
    assert!(p
        .status_callbacks
        .lease_owed_callback(&other, until + 600)
        .await
        .unwrap());

    p.clock.advance(Duration::days(8));
    assert!(
        p.status_callbacks
            .owed_callbacks(10)
            .await
            .unwrap()
            .is_empty(),
        "expired: not queued a week late"
    );
    let swept = sweep(&p).await.deleted;
    assert_eq!(
        swept.get("pending_status"),
        Some(&2),
        "swept under the kept statuses' class: {swept:?}"
    );
}

fn given_up(
    p: &Stores,
    t: &TenantId,
    after_secs: i64,
    status: kirim::domain::MessageStatus,
    sequence: u32,
) -> CallbackFailure {
    let at = p.clock.now() + Duration::seconds(after_secs);
    CallbackFailure {
        tenant_id: t.clone(),
        id: kirim::domain::ulid_at(at).to_string(),
        message_id: kirim::domain::MessageId::generate(),
        status,
        sequence,
        given_up_at: at,
        attempts: 3,
        last_error: "http_500".into(),
        host: Some("hooks.example.com".into()),
        expires_at: Some((at + Duration::days(14)).timestamp()),
    }
}

/// A tenant's records of its given-up callbacks: kept as given, listed newest first a page
/// at a time (the cursor its own tenant's only), never another tenant's, and gone after
/// their 14 days (swept under their own class).
async fn given_up_callbacks_are_listed_newest_first_per_tenant_a_page_at_a_time_and_expire_in_14_days(
    p: Stores,
) {
    use kirim::domain::MessageStatus::{Delivered, Read, Sent};
    let a = TenantId::generate();
    let b = TenantId::generate();
    let first = given_up(&p, &a, 0, Sent, 1);
    let second = given_up(&p, &a, 1, Delivered, 3);
    let third = given_up(&p, &a, 2, Read, 4);
    let others = given_up(&p, &b, 1, Sent, 1);
    for f in [&second, &others, &third, &first] {
        p.status_callbacks.put_callback_failure(f).await.unwrap();
    }
    let all = p
        .status_callbacks
        .callback_failures_page(&a, 10, None)
        .await
        .unwrap();
    assert_eq!(
        all.failures,
        vec![third.clone(), second.clone(), first.clone()],
        "newest first, as given, this tenant's only"
    );
    assert_eq!(all.next_cursor, None);
    let theirs = p
        .status_callbacks
        .callback_failures_page(&b, 10, None)
        .await
        .unwrap();
    assert_eq!(theirs.failures, vec![others.clone()]);

    // A page of one at a time, each cursor going on after the last one shown.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = p
            .status_callbacks
            .callback_failures_page(&a, 1, cursor.as_deref())
            .await
            .unwrap();
        assert!(page.failures.len() <= 1);
        seen.extend(page.failures);
        match page.next_cursor {
            Some(c) => {
                // Another tenant's cursor is refused, not followed into its partition.
                assert_eq!(
                    p.status_callbacks
                        .callback_failures_page(&b, 1, Some(&c))
                        .await,
                    Err(StoreError::InvalidCursor)
                );
                cursor = Some(c);
            }
            None => break,
        }
        assert!(seen.len() <= 3, "the pages end");
    }
    assert_eq!(seen, vec![third, second, first]);
    assert_eq!(
        p.status_callbacks
            .callback_failures_page(&a, 1, Some("not-a-cursor"))
            .await,
        Err(StoreError::InvalidCursor)
    );

    p.clock.advance(Duration::days(15));
    assert!(
        p.status_callbacks
            .callback_failures_page(&a, 10, None)
            .await
            .unwrap()
            .failures
            .is_empty(),
        "expired: no longer listed"
    );
    let swept = sweep(&p).await.deleted;
    assert_eq!(
        swept.get("callback_failures"),
        Some(&4),
        "swept under their own class: {swept:?}"
    );
}

macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod memory_adapters {
            $( #[tokio::test] async fn $name() { super::$name(super::memory()).await } )*
        }
        mod aws_adapters_on_moto {
            $( #[tokio::test] async fn $name() { super::$name(super::aws().await).await } )*
        }
    };
}

contract!(
    a_status_for_an_unknown_wamid_is_kept_once_and_listed_oldest_first,
    kept_statuses_expire_with_their_retention_class,
    indexing_a_wamid_says_whether_a_status_was_kept_for_it_first,
    a_status_callback_setting_is_set_read_replaced_and_removed_per_tenant,
    a_status_callback_url_is_changed_alone_and_only_on_a_setting_that_exists,
    a_closed_tenants_callback_url_is_not_changed_alone,
    a_callback_the_queue_refused_is_kept_once_listed_forgotten_and_expires_in_a_week,
    given_up_callbacks_are_listed_newest_first_per_tenant_a_page_at_a_time_and_expire_in_14_days,
);
