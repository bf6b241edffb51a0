//! The contract of `RetentionStore` (and `Ledger::entries_page`), on the memory adapter and
//! on DynamoDB (moto): the same assertions for both.

use chrono::{DateTime, Duration, Utc};
use kirim::domain::TenantId;
use kirim::ports::*;

use super::contract::{aws, memory, sweep as full_pass, Ports as Stores};

fn entry(t: &TenantId, at: DateTime<Utc>, expires_in: i64) -> LedgerEntry {
    LedgerEntry {
        id: kirim::domain::new_id(),
        tenant_id: t.clone(),
        amount: 1,
        kind: LedgerKind::TopUp,
        reference: None,
        message_id: None,
        at,
        expires_at: Some(at.timestamp() + expires_in),
    }
}

/// A close-out deadline it never meets.
fn later() -> std::time::Instant {
    std::time::Instant::now() + std::time::Duration::from_secs(3600)
}

async fn onboarded(p: &Stores) -> Tenant {
    let t = crate::contract::tenant(5);
    p.tenants
        .create_tenant(&t, &crate::contract::key_for(&t), None)
        .await
        .unwrap();
    t
}

async fn a_sweep_removes_only_expired_items_and_counts_them_per_class(p: Stores) {
    let t = onboarded(&p).await;
    let now = p.clock.now();
    p.ledger.top_up(&entry(&t.id, now, 10)).await.unwrap();
    p.ledger.top_up(&entry(&t.id, now, 10)).await.unwrap();
    p.ledger.top_up(&entry(&t.id, now, 100)).await.unwrap();
    let nothing = full_pass(&p).await;
    assert_eq!(
        nothing.deleted.values().sum::<usize>(),
        0,
        "nothing has expired yet"
    );
    // What the pass read, its cost: at least the tenant, its key's two copies and the three
    // entries (the aws table may hold other tests' items too).
    assert!(nothing.examined >= 6, "{}", nothing.examined);
    p.clock.advance(Duration::seconds(11));
    let pass = full_pass(&p).await;
    assert_eq!(pass.deleted.get("billing"), Some(&2), "{:?}", pass.deleted);
    assert_eq!(
        pass.deleted.values().sum::<usize>(),
        2,
        "nothing else: {:?}",
        pass.deleted
    );
    assert_eq!(p.ledger.entries(&t.id).await.unwrap().len(), 1);
    assert!(
        p.tenants.get_tenant(&t.id).await.unwrap().is_some(),
        "the tenant has no TTL"
    );
}

async fn a_sweep_names_active_and_suspended_tenants_apart_and_neither_as_closed(p: Stores) {
    let active = onboarded(&p).await;
    let suspended = onboarded(&p).await;
    p.tenants
        .set_status(
            &suspended.id,
            TenantStatus::Suspended,
            Some("paused"),
            p.clock.now(),
        )
        .await
        .unwrap();
    let pass = full_pass(&p).await;
    assert!(pass.active_tenants.contains(&active.id));
    assert!(!pass.active_tenants.contains(&suspended.id));
    assert!(pass.suspended_tenants.contains(&suspended.id));
    assert!(!pass.suspended_tenants.contains(&active.id));
    assert!(pass.closed_tenants.is_empty(), "{:?}", pass.closed_tenants);
}

async fn a_closed_tenant_is_named_until_closed_out_and_closing_out_is_idempotent(p: Stores) {
    let t = onboarded(&p).await;
    let other = onboarded(&p).await;
    assert!(full_pass(&p).await.closed_tenants.is_empty());
    let now = p.clock.now();
    p.tenants
        .set_status(&t.id, TenantStatus::Closed, Some("bye"), now)
        .await
        .unwrap();
    assert_eq!(full_pass(&p).await.closed_tenants, vec![t.id.clone()]);
    assert_eq!(p.retention.closed_out_at(&t.id).await.unwrap(), None);
    let ttls = CloseOutTtls {
        tenant: now.timestamp() + 100,
        config: now.timestamp() + 10,
        audit_head: now.timestamp() + 10,
    };
    let first = p
        .retention
        .close_out(&t.id, ttls, now, later())
        .await
        .unwrap();
    assert_eq!(first.keys_revoked, 1);
    assert!(first.phone_route_removed);
    assert_eq!(
        p.tenants
            .tenant_by_phone_number_id(&t.phone_number_id)
            .await
            .unwrap(),
        None
    );
    assert!(p
        .tenants
        .tenant_by_phone_number_id(&other.phone_number_id)
        .await
        .unwrap()
        .is_some());
    let again = p
        .retention
        .close_out(&t.id, ttls, now, later())
        .await
        .unwrap();
    assert_eq!(
        (again.keys_revoked, again.phone_route_removed),
        (0, false),
        "idempotent"
    );
    assert!(p.retention.closed_out_at(&t.id).await.unwrap().is_some());
    assert!(
        full_pass(&p).await.closed_tenants.is_empty(),
        "a closed-out tenant is skipped"
    );
    // Its configuration expires first, the account record last.
    p.clock.advance(Duration::seconds(11));
    let pass = full_pass(&p).await;
    assert!(
        pass.deleted.get("active_config").copied().unwrap_or(0) >= 2,
        "both key copies: {:?}",
        pass.deleted
    );
    assert!(p.tenants.get_tenant(&t.id).await.unwrap().is_some());
    p.clock.advance(Duration::seconds(100));
    let pass = full_pass(&p).await;
    assert_eq!(
        pass.deleted.get("billing"),
        Some(&1),
        "the tenant item: {:?}",
        pass.deleted
    );
    assert_eq!(p.tenants.get_tenant(&t.id).await.unwrap(), None);
    assert!(p.tenants.get_tenant(&other.id).await.unwrap().is_some());
}

async fn a_close_out_past_its_deadline_does_its_first_part_and_the_next_call_finishes_it(
    p: Stores,
) {
    let t = onboarded(&p).await;
    let now = p.clock.now();
    p.tenants
        .set_status(&t.id, TenantStatus::Closed, Some("bye"), now)
        .await
        .unwrap();
    let ttls = CloseOutTtls {
        tenant: now.timestamp() + 100,
        config: now.timestamp() + 10,
        audit_head: now.timestamp() + 10,
    };
    let first = p
        .retention
        .close_out(&t.id, ttls, now, std::time::Instant::now())
        .await
        .unwrap();
    assert!(first.cut_short, "{first:?}");
    assert_eq!(first.keys_revoked, 1, "its first part is done: {first:?}");
    assert_eq!(
        p.retention.closed_out_at(&t.id).await.unwrap(),
        None,
        "not marked closed out"
    );
    assert!(
        p.tenants
            .tenant_by_phone_number_id(&t.phone_number_id)
            .await
            .unwrap()
            .is_some(),
        "its route is removed with the rest, later"
    );
    assert_eq!(
        full_pass(&p).await.closed_tenants,
        vec![t.id.clone()],
        "still named to the sweep"
    );
    let second = p
        .retention
        .close_out(&t.id, ttls, now, later())
        .await
        .unwrap();
    assert!(!second.cut_short, "{second:?}");
    assert_eq!(second.keys_revoked, 0, "revoked once");
    assert!(second.phone_route_removed);
    assert!(p.retention.closed_out_at(&t.id).await.unwrap().is_some());
    assert!(full_pass(&p).await.closed_tenants.is_empty());
}

async fn an_active_tenant_is_never_closed_out(p: Stores) {
    let t = onboarded(&p).await;
    let now = p.clock.now();
    let ttls = CloseOutTtls {
        tenant: now.timestamp(),
        config: now.timestamp(),
        audit_head: now.timestamp(),
    };
    let counts = p
        .retention
        .close_out(&t.id, ttls, now, later())
        .await
        .unwrap();
    assert_eq!(counts, CloseOutCounts::default(), "nothing changed");
    assert_eq!(
        p.retention.closed_out_at(&t.id).await.unwrap(),
        None,
        "not marked"
    );
    assert!(p
        .tenants
        .tenant_by_phone_number_id(&t.phone_number_id)
        .await
        .unwrap()
        .is_some());
}

async fn the_checkpoint_is_saved_read_back_and_cleared(p: Stores) {
    assert_eq!(p.retention.checkpoint().await.unwrap(), None);
    let now = p.clock.now();
    p.retention
        .save_checkpoint(Some("{\"pk\":\"A\",\"sk\":\"B\"}"), now)
        .await
        .unwrap();
    assert_eq!(
        p.retention.checkpoint().await.unwrap().as_deref(),
        Some("{\"pk\":\"A\",\"sk\":\"B\"}")
    );
    p.retention.save_checkpoint(None, now).await.unwrap();
    assert_eq!(p.retention.checkpoint().await.unwrap(), None);
}

async fn ledger_entries_page_in_time_order_and_skip_expired_ones(p: Stores) {
    let t = onboarded(&p).await;
    let now = p.clock.now();
    for i in 0..5 {
        p.ledger
            .top_up(&entry(&t.id, now, if i == 2 { 1 } else { 100 }))
            .await
            .unwrap();
    }
    p.clock.advance(Duration::seconds(2));
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..20 {
        let (page, next) = p
            .ledger
            .entries_page(&t.id, 2, after.as_deref())
            .await
            .unwrap();
        seen.extend(page.into_iter().map(|e| e.id));
        after = next;
        if after.is_none() {
            break;
        }
    }
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted, "id (= time) order");
    assert_eq!(seen.len(), 4, "the expired entry is skipped");
}

/// The close-out gives a chain's head a TTL; every later move raises it to its new event's
/// expiry, and a move from a head read before the close-out (no TTL then) is refused, so
/// the head is read again and never left expiring before the chain's newest event.
async fn a_closed_out_chains_head_follows_its_newest_event_and_a_head_read_before_is_refused(
    p: Stores,
) {
    use super::contract_retention_items::audit_event;
    use kirim::store_error::StoreError;
    let t = onboarded(&p).await;
    let chain = t.id.to_string();
    let first = audit_event(&p, &chain, 1, 60);
    p.audit.append(&AuditLink::new(&first, None)).await.unwrap();
    let before = p.audit.head(&chain).await.unwrap().unwrap();
    assert_eq!(before.ttl, None, "an open tenant's head never expires");
    let now = p.clock.now();
    p.tenants
        .set_status(&t.id, TenantStatus::Closed, Some("bye"), now)
        .await
        .unwrap();
    let ttls = CloseOutTtls {
        tenant: now.timestamp() + 100,
        config: now.timestamp() + 10,
        audit_head: now.timestamp() + 60,
    };
    // An event appended after the TTLs were computed (the close-out pages the tenant's
    // keys before it reaches the head): the head's TTL is that event's expiry, not less.
    let between = audit_event(&p, &chain, 2, 120);
    p.audit
        .append(&AuditLink::new(&between, Some(&before)))
        .await
        .unwrap();
    let before = p.audit.head(&chain).await.unwrap().unwrap();
    p.retention
        .close_out(&t.id, ttls, now, later())
        .await
        .unwrap();
    let closed = p.audit.head(&chain).await.unwrap().unwrap();
    assert_eq!(closed.ttl, between.expires_at);

    let second = audit_event(&p, &chain, 3, 3600);
    assert!(matches!(
        p.audit
            .append(&AuditLink::new(&second, Some(&before)))
            .await,
        Err(StoreError::Conflict(_))
    ));
    p.audit
        .append(&AuditLink::new(&second, Some(&closed)))
        .await
        .unwrap();
    let moved = p.audit.head(&chain).await.unwrap().unwrap();
    assert_eq!((moved.seq, moved.ttl), (3, second.expires_at));

    // The second write of an append (the head after its event) alike.
    let third = audit_event(&p, &chain, 4, 7200);
    p.audit.put_event(&third).await.unwrap();
    let stale = AuditHead {
        ttl: None,
        ..moved.clone()
    };
    assert!(matches!(
        p.audit
            .advance_head(
                &chain,
                Some(3),
                &AuditHead::anchoring(&third, Some(&stale), None)
            )
            .await,
        Err(StoreError::Conflict(_))
    ));
    p.audit
        .advance_head(
            &chain,
            Some(3),
            &AuditHead::anchoring(&third, Some(&moved), None),
        )
        .await
        .unwrap();
    let last = p.audit.head(&chain).await.unwrap().unwrap();
    assert_eq!((last.seq, last.ttl), (4, third.expires_at));
}

/// A closed-out tenant's configuration past the TTL its close-out gave it, and then its
/// own item, are not read any more, before the sweep deletes them: DynamoDB's reads hide
/// an item past its TTL. The memory adapter read them until its sweep (a closed tenant's
/// top-up answered 409 instead of 404 in local mode, its users were found by email).
async fn a_closed_out_tenants_items_past_their_ttls_are_not_read_before_the_sweep_deletes_them(
    p: Stores,
) {
    use kirim::domain::{OptOut, OptOutKey, OptOutScope, OptOutSource, PhoneNumber, Role};
    let t = onboarded(&p).await;
    let now = p.clock.now();
    let email = format!(
        "u{}@example.com",
        ulid::Ulid::new().to_string().to_lowercase()
    );
    let user = UserRecord {
        id: kirim::domain::new_id(),
        tenant_id: t.id.clone(),
        email: email.clone(),
        role: Role::Operator,
        password_hash: "$argon2id$not-a-real-hash".into(),
        totp_secret: None,
        totp_confirmed: false,
        last_totp_step: 0,
        created_at: now,
        password_version: 0,
    };
    p.users.create_user(&user).await.unwrap();
    p.users.set_two_factor_required(&t.id, true).await.unwrap();
    let phone = PhoneNumber::parse("+60123450777").unwrap();
    let opt_out = OptOut {
        tenant_id: t.id.clone(),
        phone: Some(phone.clone()),
        user_id: None,
        scope: OptOutScope::All,
        source: OptOutSource::Api,
        created_by: "key_1".into(),
        created_at: now,
        meta_timestamp: None,
    };
    p.opt_outs.put_opt_out(&opt_out).await.unwrap();
    let key = OptOutKey::Phone(phone);
    p.status_callbacks
        .put_status_callback(&StatusCallback {
            tenant_id: t.id.clone(),
            url: "https://hooks.example.com/kirim".into(),
            secret_name: format!("kirim/tenants/{}/status-callback-secret", t.id),
            secret_version: None,
            updated_at: now,
        })
        .await
        .unwrap();
    let chain = t.id.to_string();
    let event = super::contract_retention_items::audit_event(&p, &chain, 1, 5);
    p.audit.append(&AuditLink::new(&event, None)).await.unwrap();
    let key_id = p.api_keys.list_api_keys(&t.id).await.unwrap()[0].id.clone();
    p.tenants
        .set_status(&t.id, TenantStatus::Closed, Some("bye"), now)
        .await
        .unwrap();
    let ttls = CloseOutTtls {
        tenant: now.timestamp() + 100,
        config: now.timestamp() + 10,
        audit_head: now.timestamp() + 10,
    };
    p.retention
        .close_out(&t.id, ttls, now, later())
        .await
        .unwrap();
    let config_read = || async {
        (
            p.users.get_user(&t.id, &user.id).await.unwrap().is_some(),
            p.users.user_by_email(&email).await.unwrap().is_some(),
            p.users.list_users(&t.id).await.unwrap().len(),
            p.users.two_factor_required(&t.id).await.unwrap(),
            p.opt_outs.get_opt_out(&t.id, &key).await.unwrap().is_some(),
            p.opt_outs
                .list_opt_outs(&t.id, 10, None)
                .await
                .unwrap()
                .opt_outs
                .len(),
            p.status_callbacks
                .get_status_callback(&t.id)
                .await
                .unwrap()
                .is_some(),
            p.numbers
                .get_phone_number(&t.id, &t.phone_number_id)
                .await
                .unwrap()
                .is_some(),
            p.numbers.list_phone_numbers(&t.id).await.unwrap().len(),
        )
    };
    assert_eq!(
        config_read().await,
        (true, false, 1, true, true, 1, true, true, 1),
        "kept until its TTL (but the email claim, deleted at the close-out)"
    );
    assert!(p.audit.head(&chain).await.unwrap().is_some());
    // Past the configuration's TTL, no sweep run: none of it is read any more.
    p.clock.advance(Duration::seconds(11));
    assert_eq!(
        config_read().await,
        (false, false, 0, false, false, 0, false, false, 0)
    );
    // Nor are its keys found to revoke or rotate, nor its chain's head.
    assert_eq!(
        p.api_keys
            .revoke_api_key(&t.id, &key_id, p.clock.now())
            .await
            .unwrap(),
        None
    );
    assert!(matches!(
        p.api_keys
            .rotate_api_key(&t.id, &key_id, &super::contract::key_for(&t), p.clock.now())
            .await,
        Err(kirim::store_error::StoreError::NotFound)
    ));
    assert_eq!(p.audit.head(&chain).await.unwrap(), None);
    assert_eq!(p.audit.tip(&chain).await.unwrap(), (None, false));
    assert!(p.tenants.get_tenant(&t.id).await.unwrap().is_some());
    // Past the tenant's: the tenant is not found (a top-up answers 404).
    p.clock.advance(Duration::seconds(90));
    assert_eq!(p.tenants.get_tenant(&t.id).await.unwrap(), None);
    // Nor by a write to it: not found, as DynamoDB's read-back of a refused write has it.
    let top = kirim::ports::LedgerEntry {
        id: kirim::domain::new_id(),
        tenant_id: t.id.clone(),
        amount: 2,
        kind: kirim::ports::LedgerKind::TopUp,
        reference: None,
        message_id: None,
        at: p.clock.now(),
        expires_at: None,
    };
    assert!(matches!(
        p.ledger.top_up(&top).await,
        Err(kirim::store_error::StoreError::NotFound)
    ));
    assert!(matches!(
        p.tenants
            .set_status(&t.id, TenantStatus::Suspended, Some("x"), p.clock.now())
            .await,
        Err(kirim::store_error::StoreError::NotFound)
    ));
}

/// A closed tenant's close-out deletes its users' email claims (the addresses are free) and
/// removes what signs in from its users' items; again, it changes nothing, and never frees
/// a claim another tenant made since.
async fn a_close_out_frees_its_users_emails_and_keeps_no_sign_in_material(p: Stores) {
    let t = onboarded(&p).await;
    let other = onboarded(&p).await;
    let email = format!("admin.{}@example.com", ulid::Ulid::new()).to_lowercase();
    let user = UserRecord {
        totp_secret: Some("v2:sealed".into()),
        totp_confirmed: true,
        last_totp_step: 7,
        ..crate::contract_users::user(&p, &t, &email)
    };
    p.users.create_user(&user).await.unwrap();
    let now = p.clock.now();
    p.tenants
        .set_status(&t.id, TenantStatus::Closed, Some("bye"), now)
        .await
        .unwrap();
    let ttls = CloseOutTtls {
        tenant: now.timestamp() + 100,
        config: now.timestamp() + 10,
        audit_head: now.timestamp() + 10,
    };
    let first = p
        .retention
        .close_out(&t.id, ttls, now, later())
        .await
        .unwrap();
    assert_eq!(first.emails_freed, 1, "{first:?}");
    assert_eq!(p.users.user_by_email(&email).await.unwrap(), None);
    let kept = p.users.get_user(&t.id, &user.id).await.unwrap();
    let kept = kept.expect("the user's item stays until its TTL");
    assert_eq!(
        (kept.email.as_str(), kept.role),
        (email.as_str(), user.role)
    );
    assert_eq!(kept.password_hash, "", "no password hash");
    assert_eq!(
        (kept.totp_secret, kept.totp_confirmed, kept.last_totp_step),
        (None, false, 0),
        "no seed"
    );
    // The address is claimed again by another tenant's user; the close-out run again
    // leaves that claim alone.
    let next = crate::contract_users::user(&p, &other, &email);
    p.users.create_user(&next).await.unwrap();
    let again = p
        .retention
        .close_out(&t.id, ttls, now, later())
        .await
        .unwrap();
    assert_eq!(again.emails_freed, 0, "{again:?}");
    let owner = p.users.user_by_email(&email).await.unwrap();
    assert_eq!(owner.map(|u| u.id), Some(next.id));
}

crate::contract::contract!(
    a_close_out_frees_its_users_emails_and_keeps_no_sign_in_material,
    a_closed_out_tenants_items_past_their_ttls_are_not_read_before_the_sweep_deletes_them,
    a_sweep_removes_only_expired_items_and_counts_them_per_class,
    a_closed_tenant_is_named_until_closed_out_and_closing_out_is_idempotent,
    a_sweep_names_active_and_suspended_tenants_apart_and_neither_as_closed,
    an_active_tenant_is_never_closed_out,
    a_close_out_past_its_deadline_does_its_first_part_and_the_next_call_finishes_it,
    the_checkpoint_is_saved_read_back_and_cleared,
    ledger_entries_page_in_time_order_and_skip_expired_ones,
    a_closed_out_chains_head_follows_its_newest_event_and_a_head_read_before_is_refused,
);
