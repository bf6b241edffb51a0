//! The access ports' contract (API keys, allow-lists, tenant status) on both adapters.

use chrono::Duration;
use kirim::ports::{
    ApiKeyRecord, AuditEvent, AuditHead, AuditLink, AuditOutcome, AuditQuery, Clock, ParkedAudit,
    StaleIntent, TenantStatus,
};
use kirim::store_error::StoreError;

use super::contract::{aws, contract, key_for, memory, onboarded, Ports};

async fn a_key_is_found_by_hash_and_by_id_only_within_its_tenant(p: Ports) {
    let t = onboarded(&p, 0).await;
    let other = onboarded(&p, 0).await;
    let k = key_for(&t);
    p.api_keys.put_api_key(&k).await.unwrap();
    assert_eq!(
        p.tenants.api_key_by_hash(&k.key_hash).await.unwrap(),
        Some(k.clone())
    );
    assert_eq!(
        p.api_keys.get_api_key(&t.id, &k.id).await.unwrap(),
        Some(k.clone())
    );
    assert_eq!(
        p.api_keys.get_api_key(&other.id, &k.id).await.unwrap(),
        None
    );
    let listed = p.api_keys.list_api_keys(&t.id).await.unwrap();
    assert!(listed.contains(&k));
    assert_eq!(listed.len(), 2, "the onboarding key and the new one");
    assert!(p
        .api_keys
        .list_api_keys(&other.id)
        .await
        .unwrap()
        .iter()
        .all(|x| x.id != k.id));
    assert!(matches!(
        p.api_keys.put_api_key(&k).await,
        Err(StoreError::Conflict(_))
    ));
}

async fn a_revoked_key_is_revoked_under_both_lookups_and_never_for_another_tenant(p: Ports) {
    let t = onboarded(&p, 0).await;
    let other = onboarded(&p, 0).await;
    let k = key_for(&t);
    p.api_keys.put_api_key(&k).await.unwrap();
    let now = p.clock.now();
    assert_eq!(
        p.api_keys
            .revoke_api_key(&other.id, &k.id, now)
            .await
            .unwrap(),
        None
    );
    assert!(
        !p.tenants
            .api_key_by_hash(&k.key_hash)
            .await
            .unwrap()
            .unwrap()
            .revoked
    );
    let r = p
        .api_keys
        .revoke_api_key(&t.id, &k.id, now)
        .await
        .unwrap()
        .unwrap();
    assert!(r.revoked && r.revoked_at.is_some());
    assert!(
        p.tenants
            .api_key_by_hash(&k.key_hash)
            .await
            .unwrap()
            .unwrap()
            .revoked
    );
    assert!(
        p.api_keys
            .get_api_key(&t.id, &k.id)
            .await
            .unwrap()
            .unwrap()
            .revoked
    );
    // Again: still revoked, nothing else changes.
    assert!(
        p.api_keys
            .revoke_api_key(&t.id, &k.id, now)
            .await
            .unwrap()
            .unwrap()
            .revoked
    );
}

/// Revokes at once (the console's and an API call, the close-out's) keep one `revoked_at`:
/// each answers the key as it stays, and none writes over another's time.
async fn concurrent_revokes_of_one_key_keep_the_first_ones_time(p: Ports) {
    let t = onboarded(&p, 0).await;
    let k = key_for(&t);
    p.api_keys.put_api_key(&k).await.unwrap();
    let start = p.clock.now();
    let answers = futures::future::join_all((0..8).map(|i| {
        let store = p.api_keys.clone();
        let (tenant, id) = (t.id.clone(), k.id.clone());
        async move {
            store
                .revoke_api_key(&tenant, &id, start + chrono::Duration::seconds(i))
                .await
                .unwrap()
                .expect("the key, revoked")
                .revoked_at
        }
    }))
    .await;
    let stored = p
        .api_keys
        .get_api_key(&t.id, &k.id)
        .await
        .unwrap()
        .unwrap()
        .revoked_at;
    assert!(stored.is_some());
    assert!(
        answers.iter().all(|a| *a == stored),
        "{answers:?} vs {stored:?}"
    );
}

/// An ended key (revoked, expired, rotated out) is still listed, as ended, for 90 days
/// after it ended; then it is gone from every lookup and the sweep removes both copies. A
/// key that never ends stays. Before, ended keys were kept while the tenant existed, and
/// every list (and every create, counting live keys) read them all.
async fn an_ended_key_is_kept_ninety_days_after_it_ended_then_both_copies_go(p: Ports) {
    let t = onboarded(&p, 0).await;
    let start = p.clock.now();
    let forever = key_for(&t);
    let revoked = key_for(&t);
    let mut expiring = key_for(&t);
    expiring.expires_at = Some(start + Duration::days(1));
    let rotated = key_for(&t);
    for k in [&forever, &revoked, &expiring, &rotated] {
        p.api_keys.put_api_key(k).await.unwrap();
    }
    p.api_keys
        .revoke_api_key(&t.id, &revoked.id, start)
        .await
        .unwrap()
        .expect("revoked");
    let successor = key_for(&t);
    p.api_keys
        .rotate_api_key(&t.id, &rotated.id, &successor, start + Duration::hours(1))
        .await
        .unwrap();
    // Both copies carry the end as their TTL.
    let ttls = |items: Vec<kirim::ports::StoredItem>, k: &ApiKeyRecord| -> Vec<Option<i64>> {
        items
            .into_iter()
            .filter(|i| {
                (i.pk.starts_with("APIKEY#") || i.sk.starts_with("APIKEY#"))
                    && i.attributes["id"] == k.id.as_str()
            })
            .map(|i| i.ttl)
            .collect()
    };
    let day = 86_400;
    let items = p.retention.stored_items().await.unwrap();
    assert_eq!(
        ttls(items.clone(), &revoked),
        [Some(start.timestamp() + 90 * day); 2]
    );
    assert_eq!(
        ttls(items.clone(), &rotated),
        [Some(start.timestamp() + 3600 + 90 * day); 2]
    );
    assert_eq!(
        ttls(items.clone(), &expiring),
        [Some(start.timestamp() + 91 * day); 2]
    );
    assert_eq!(ttls(items, &forever), [None; 2]);

    let present = |k: ApiKeyRecord| {
        let p = &p;
        let t = &t;
        async move {
            let listed = p.api_keys.list_api_keys(&t.id).await.unwrap();
            let by_id = p.api_keys.get_api_key(&t.id, &k.id).await.unwrap();
            let by_hash = p.tenants.api_key_by_hash(&k.key_hash).await.unwrap();
            let in_list = listed.iter().any(|x| x.id == k.id);
            assert_eq!(
                (in_list, by_id.is_some()),
                (by_hash.is_some(), by_hash.is_some()),
                "every lookup agrees"
            );
            in_list
        }
    };
    let all = [&forever, &revoked, &expiring, &rotated, &successor];
    p.clock.advance(Duration::days(90) - Duration::minutes(1));
    for k in all {
        assert!(
            present(k.clone()).await,
            "still listed 90 days on: {}",
            k.id
        );
    }
    p.clock.advance(Duration::minutes(30));
    assert!(
        !present(revoked.clone()).await,
        "90 days after its revocation"
    );
    assert!(
        present(rotated.clone()).await,
        "its grace ended an hour later"
    );
    assert_eq!(
        p.api_keys
            .revoke_api_key(&t.id, &revoked.id, p.clock.now())
            .await
            .unwrap(),
        None,
        "gone: nothing to revoke"
    );
    p.clock.advance(Duration::hours(1));
    assert!(!present(rotated.clone()).await);
    assert!(matches!(
        p.api_keys
            .rotate_api_key(&t.id, &rotated.id, &key_for(&t), p.clock.now())
            .await,
        Err(StoreError::NotFound)
    ));
    assert!(
        present(expiring.clone()).await,
        "expired a day after the start"
    );
    p.clock.advance(Duration::days(1));
    assert!(!present(expiring.clone()).await);
    assert!(present(forever.clone()).await && present(successor.clone()).await);

    let swept = p
        .retention
        .sweep_page(p.clock.now(), None, 10_000)
        .await
        .unwrap();
    assert!(swept.next.is_none(), "one page");
    let items = p.retention.stored_items().await.unwrap();
    for k in [&revoked, &rotated, &expiring] {
        assert!(
            ttls(items.clone(), k).is_empty(),
            "both copies swept: {}",
            k.id
        );
    }
    assert_eq!(ttls(items, &forever).len(), 2);
}

async fn rotation_stores_the_new_key_and_ends_the_old_one_once(p: Ports) {
    let t = onboarded(&p, 0).await;
    let old = key_for(&t);
    p.api_keys.put_api_key(&old).await.unwrap();
    let ends = p.clock.now() + Duration::hours(2);
    let new = ApiKeyRecord { ..key_for(&t) };
    p.api_keys
        .rotate_api_key(&t.id, &old.id, &new, ends)
        .await
        .unwrap();
    let by_hash = p
        .tenants
        .api_key_by_hash(&old.key_hash)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(by_hash.replaced_by.as_deref(), Some(new.id.as_str()));
    assert_eq!(
        by_hash.expires_at.map(|e| e.timestamp()),
        Some(ends.timestamp())
    );
    assert!(by_hash.usable_at(p.clock.now()));
    assert!(!by_hash.usable_at(ends));
    assert_eq!(
        p.tenants.api_key_by_hash(&new.key_hash).await.unwrap(),
        Some(new.clone())
    );
    // The old key was rotated already: a second rotation is refused and writes nothing.
    let third = key_for(&t);
    assert!(matches!(
        p.api_keys
            .rotate_api_key(&t.id, &old.id, &third, ends)
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        p.tenants.api_key_by_hash(&third.key_hash).await.unwrap(),
        None
    );
    assert!(matches!(
        p.api_keys
            .rotate_api_key(&t.id, "01NOSUCHKEY00000000000000", &third, ends)
            .await,
        Err(StoreError::NotFound)
    ));
}

async fn concurrent_rotations_of_one_key_let_exactly_one_succeed(p: Ports) {
    let t = onboarded(&p, 0).await;
    let old = key_for(&t);
    p.api_keys.put_api_key(&old).await.unwrap();
    let ends = p.clock.now() + Duration::hours(1);
    let attempts = (0..8).map(|_| {
        let new = key_for(&t);
        let store = p.api_keys.clone();
        let (tid, oid) = (t.id.clone(), old.id.clone());
        async move { store.rotate_api_key(&tid, &oid, &new, ends).await }
    });
    let results = futures::future::join_all(attempts).await;
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        1,
        "{results:?}"
    );
    assert_eq!(
        p.api_keys.list_api_keys(&t.id).await.unwrap().len(),
        3,
        "onboarding key, old, one successor"
    );
}

async fn an_allow_list_is_replaced_whole_and_needs_a_tenant(p: Ports) {
    let t = onboarded(&p, 0).await;
    let cidrs = vec!["203.0.113.0/24".to_owned(), "2001:db8::/32".to_owned()];
    p.tenants.set_ip_allowlist(&t.id, &cidrs).await.unwrap();
    assert_eq!(
        p.tenants
            .get_tenant(&t.id)
            .await
            .unwrap()
            .unwrap()
            .ip_allowlist,
        cidrs
    );
    p.tenants.set_ip_allowlist(&t.id, &[]).await.unwrap();
    assert!(p
        .tenants
        .get_tenant(&t.id)
        .await
        .unwrap()
        .unwrap()
        .ip_allowlist
        .is_empty());
    let ghost = kirim::domain::TenantId::generate();
    assert_eq!(
        p.tenants.set_ip_allowlist(&ghost, &cidrs).await,
        Err(StoreError::NotFound)
    );
}

async fn a_tenant_can_be_suspended_and_resumed_but_closing_is_final(p: Ports) {
    let t = onboarded(&p, 0).await;
    let now = p.clock.now();
    let s = p
        .tenants
        .set_status(&t.id, TenantStatus::Suspended, Some("unpaid invoice"), now)
        .await
        .unwrap();
    assert_eq!(s.status, TenantStatus::Suspended);
    assert_eq!(s.status_reason.as_deref(), Some("unpaid invoice"));
    assert_eq!(
        p.tenants.get_tenant(&t.id).await.unwrap().unwrap().status,
        TenantStatus::Suspended
    );
    let r = p
        .tenants
        .set_status(&t.id, TenantStatus::Active, None, now)
        .await
        .unwrap();
    assert_eq!((r.status, r.status_reason), (TenantStatus::Active, None));
    // The same status again (a resume of an active tenant): only the reason changes, not
    // the time of the last change (Meta's late word about the account is judged by it).
    let changed = r.status_changed_at;
    let again = p
        .tenants
        .set_status(
            &t.id,
            TenantStatus::Active,
            Some("checked"),
            now + chrono::Duration::seconds(10),
        )
        .await
        .unwrap();
    assert_eq!(
        (
            again.status,
            again.status_reason.as_deref(),
            again.status_changed_at
        ),
        (TenantStatus::Active, Some("checked"), changed)
    );
    assert_eq!(
        p.tenants
            .get_tenant(&t.id)
            .await
            .unwrap()
            .unwrap()
            .status_changed_at,
        changed
    );
    p.tenants
        .set_status(&t.id, TenantStatus::Closed, Some("contract ended"), now)
        .await
        .unwrap();
    assert!(matches!(
        p.tenants
            .set_status(&t.id, TenantStatus::Active, None, now)
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        p.tenants.get_tenant(&t.id).await.unwrap().unwrap().status,
        TenantStatus::Closed
    );
    let ghost = kirim::domain::TenantId::generate();
    assert_eq!(
        p.tenants
            .set_status(&ghost, TenantStatus::Suspended, None, now)
            .await
            .map(|_| ()),
        Err(StoreError::NotFound)
    );
}

fn event(chain: &str, seq: u64, prev: &str, at: chrono::DateTime<chrono::Utc>) -> AuditEvent {
    let mut e = AuditEvent {
        chain: chain.into(),
        seq,
        id: kirim::domain::new_id(),
        at,
        actor_type: "api_key".into(),
        actor_id: "k".into(),
        action: if seq.is_multiple_of(2) {
            "DELETE /v1/api-keys/{id}"
        } else {
            "POST /v1/messages"
        }
        .into(),
        ip: Some("203.0.113.1".into()),
        outcome: AuditOutcome::Success,
        details: "{}".into(),
        prev_hash: prev.into(),
        hash: String::new(),
        expires_at: Some(at.timestamp() + 3600),
        prev_expires_at: None,
        signature: None,
    };
    e.hash = kirim::service::audit::hash_of(&e);
    e
}

async fn an_audit_chain_only_grows_from_its_current_head(p: Ports) {
    let chain = kirim::domain::new_id();
    let t0 = p.clock.now();
    let first = event(&chain, 1, kirim::service::audit::GENESIS, t0);
    p.audit.append(&AuditLink::new(&first, None)).await.unwrap();
    // A second writer that still thinks the chain is empty loses.
    let rival = event(&chain, 1, kirim::service::audit::GENESIS, t0);
    assert!(matches!(
        p.audit.append(&AuditLink::new(&rival, None)).await,
        Err(StoreError::Conflict(_))
    ));
    let head = p.audit.head(&chain).await.unwrap().unwrap();
    assert_eq!((head.seq, head.hash.as_str()), (1, first.hash.as_str()));
    let mut prev = first.clone();
    for seq in 2..=5 {
        let e = event(&chain, seq, &prev.hash, t0 + Duration::seconds(seq as i64));
        let h = p.audit.head(&chain).await.unwrap();
        p.audit
            .append(&AuditLink::new(&e, h.as_ref()))
            .await
            .unwrap();
        // The same stale head again: refused, nothing written.
        let late = event(&chain, seq, &prev.hash, t0);
        assert!(matches!(
            p.audit.append(&AuditLink::new(&late, h.as_ref())).await,
            Err(StoreError::Conflict(_))
        ));
        prev = e;
    }
    let all = p.audit.ascending(&chain, None, 100).await.unwrap();
    assert_eq!(
        all.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    assert_eq!(all[4], prev, "stored exactly as written");
    assert_eq!(
        p.audit.ascending(&chain, Some(3), 100).await.unwrap().len(),
        2
    );
    // Newest first, in pages, with filters.
    let q = |before_seq| AuditQuery {
        limit: 2,
        before_seq,
        ..Default::default()
    };
    let (page1, next) = p.audit.list(&chain, &q(None)).await.unwrap();
    assert_eq!(page1.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![5, 4]);
    let (page2, _) = p.audit.list(&chain, &q(next)).await.unwrap();
    assert_eq!(page2.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![3, 2]);
    let deletes = AuditQuery {
        limit: 10,
        action: Some("DELETE /v1/api-keys/{id}".into()),
        ..Default::default()
    };
    let (found, _) = p.audit.list(&chain, &deletes).await.unwrap();
    assert_eq!(found.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![4, 2]);
    let recent = AuditQuery {
        limit: 10,
        since: Some(t0 + Duration::seconds(4)),
        ..Default::default()
    };
    assert_eq!(p.audit.list(&chain, &recent).await.unwrap().0.len(), 2);
    assert!(p
        .audit
        .list("other-chain", &q(None))
        .await
        .unwrap()
        .0
        .is_empty());
    // Expired events are invisible.
    p.clock.advance(Duration::hours(2));
    assert!(p
        .audit
        .ascending(&chain, None, 100)
        .await
        .unwrap()
        .is_empty());
}

fn head_of(e: &AuditEvent) -> AuditHead {
    AuditHead {
        seq: e.seq,
        hash: e.hash.clone(),
        expires_at: e.expires_at,
        signature: Some(format!("{:064}", e.seq)),
        ttl: None,
    }
}

async fn an_audit_event_is_written_before_its_head_and_the_head_follows_it_once(p: Ports) {
    let chain = kirim::domain::new_id();
    let t0 = p.clock.now();
    let first = event(&chain, 1, kirim::service::audit::GENESIS, t0);
    // The event alone: in the table (listed, readable), the chain still without a head.
    p.audit.put_event(&first).await.unwrap();
    assert_eq!(p.audit.tip(&chain).await.unwrap(), (None, false));
    assert_eq!(p.audit.event(&chain, 1).await.unwrap(), Some(first.clone()));
    let all = AuditQuery {
        limit: 10,
        ..Default::default()
    };
    assert_eq!(
        p.audit.list(&chain, &all).await.unwrap().0,
        vec![first.clone()]
    );
    // The same event again (the SDK retrying a write whose answer was lost): taken, as the
    // write it repeats, not refused as another append's (which would record it twice).
    p.audit.put_event(&first).await.unwrap();
    assert_eq!(p.audit.event(&chain, 1).await.unwrap(), Some(first.clone()));
    // Its place is taken: another event for it is refused, nothing overwritten.
    let rival = event(&chain, 1, kirim::service::audit::GENESIS, t0);
    assert_ne!(rival.id, first.id);
    assert!(matches!(
        p.audit.put_event(&rival).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(p.audit.event(&chain, 1).await.unwrap(), Some(first.clone()));
    // The head moves only from where it is, or repeats exactly the same move.
    let h1 = head_of(&first);
    assert!(matches!(
        p.audit.advance_head(&chain, Some(3), &h1).await,
        Err(StoreError::Conflict(_))
    ));
    p.audit.advance_head(&chain, None, &h1).await.unwrap();
    p.audit.advance_head(&chain, None, &h1).await.unwrap();
    assert_eq!(p.audit.head(&chain).await.unwrap(), Some(h1.clone()));
    assert!(
        matches!(
            p.audit.advance_head(&chain, None, &head_of(&rival)).await,
            Err(StoreError::Conflict(_))
        ),
        "not another event's head at the same place"
    );
    // The next, with its own signature, stored exactly as written.
    let mut second = event(&chain, 2, &first.hash, t0 + Duration::seconds(1));
    second.prev_expires_at = first.expires_at;
    second.hash = kirim::service::audit::hash_of(&second);
    second.signature = Some("cd".repeat(32));
    p.audit.put_event(&second).await.unwrap();
    assert_eq!(
        p.audit.event(&chain, 2).await.unwrap(),
        Some(second.clone())
    );
    assert_eq!(p.audit.head(&chain).await.unwrap(), Some(h1.clone()));
    // A transaction computed from the head left behind is refused: the place is taken.
    let late = event(&chain, 2, &first.hash, t0);
    assert!(matches!(
        p.audit.append(&AuditLink::new(&late, Some(&h1))).await,
        Err(StoreError::Conflict(_))
    ));
    let h2 = head_of(&second);
    p.audit.advance_head(&chain, Some(1), &h2).await.unwrap();
    p.audit.advance_head(&chain, Some(1), &h2).await.unwrap();
    assert!(matches!(
        p.audit.advance_head(&chain, Some(1), &head_of(&late)).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(p.audit.head(&chain).await.unwrap(), Some(h2));
    assert_eq!(
        p.audit.ascending(&chain, None, 10).await.unwrap(),
        vec![first, second]
    );
    assert_eq!(p.audit.event(&chain, 3).await.unwrap(), None);
    // Expired events are not read.
    p.clock.advance(Duration::hours(2));
    assert_eq!(p.audit.event(&chain, 1).await.unwrap(), None);
}

fn parked(chain: &str, id: &str, p: &Ports) -> ParkedAudit {
    ParkedAudit {
        chain: chain.into(),
        id: id.into(),
        at: p.clock.now(),
        actor_type: "api_key".into(),
        actor_id: "k".into(),
        action: "POST /v1/messages".into(),
        ip: None,
        outcome: AuditOutcome::Success,
        details: "{}".into(),
        expires_at: Some(p.clock.now().timestamp() + 3600),
        signature: None,
    }
}

async fn a_parked_audit_event_is_kept_in_order_and_linked_in_exactly_once(p: Ports) {
    let chain = format!("chain-{}", kirim::domain::new_id());
    assert_eq!(p.audit.tip(&chain).await.unwrap(), (None, false));
    // Parked before the chain has a head: the tip says so.
    let (a, b) = (parked(&chain, "01JA", &p), parked(&chain, "01JB", &p));
    p.audit.park(&b).await.unwrap();
    p.audit.park(&a).await.unwrap();
    p.audit.park(&a).await.unwrap();
    assert_eq!(p.audit.tip(&chain).await.unwrap(), (None, true));
    assert_eq!(
        p.audit.parked(&chain, 10).await.unwrap(),
        vec![a.clone(), b.clone()],
        "oldest first, a repeated park stored once"
    );
    assert_eq!(p.audit.parked(&chain, 1).await.unwrap(), vec![a.clone()]);
    assert!(p.audit.parked("other", 10).await.unwrap().is_empty());
    // Linking `a` in removes it from the outbox in the same write, with the signature.
    let first = event(&chain, 1, kirim::service::audit::GENESIS, p.clock.now());
    let link = AuditLink {
        event: &first,
        expected: None,
        signature: Some("ab".repeat(32)),
        parked: Some("01JA"),
    };
    p.audit.append(&link).await.unwrap();
    let head = p.audit.head(&chain).await.unwrap().unwrap();
    assert_eq!(
        head,
        AuditHead {
            seq: 1,
            hash: first.hash.clone(),
            expires_at: first.expires_at,
            signature: Some("ab".repeat(32)),
            ttl: None,
        }
    );
    assert_eq!(p.audit.parked(&chain, 10).await.unwrap(), vec![b.clone()]);
    assert_eq!(
        p.audit.tip(&chain).await.unwrap(),
        (Some(head.clone()), true)
    );
    // Linking `a` again (a second drainer) is a conflict that writes nothing.
    let again = event(&chain, 2, &first.hash, p.clock.now());
    let twice = AuditLink {
        event: &again,
        expected: Some(&head),
        signature: None,
        parked: Some("01JA"),
    };
    assert!(matches!(
        p.audit.append(&twice).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(p.audit.head(&chain).await.unwrap(), Some(head.clone()));
    assert_eq!(p.audit.ascending(&chain, None, 10).await.unwrap().len(), 1);
    // Parked events are not events: lists and verification reads never see them.
    assert_eq!(
        p.audit
            .list(
                &chain,
                &AuditQuery {
                    limit: 10,
                    ..Default::default()
                }
            )
            .await
            .unwrap()
            .0,
        vec![first.clone()]
    );
    // They expire with the audit class.
    p.clock.advance(Duration::hours(2));
    assert!(p.audit.parked(&chain, 10).await.unwrap().is_empty());
    assert!(!p.audit.tip(&chain).await.unwrap().1);
}

/// An audit intent made `ago` before the clock's now, on `chain`.
fn intent(chain: &str, ago: Duration, p: &Ports) -> ParkedAudit {
    let at = p.clock.now() - ago;
    ParkedAudit {
        id: ulid::Ulid::from_datetime(at.into()).to_string(),
        at,
        ..parked(chain, "-", p)
    }
}

/// The stale intents `stale_intents` reads, every one an intent.
async fn stale(
    p: &Ports,
    before: chrono::DateTime<chrono::Utc>,
    after: Option<&str>,
    limit: usize,
) -> Vec<ParkedAudit> {
    p.audit
        .stale_intents(before, after, limit)
        .await
        .unwrap()
        .into_iter()
        .map(|i| match i {
            StaleIntent::Intent(i) => i,
            unreadable => panic!("{unreadable:?}"),
        })
        .collect()
}

/// Intents are found by their age (their ULID's time) across all chains, oldest first,
/// without a scan; removed by id (twice is no error); turned into a parked event in one
/// write exactly once; and they expire with the audit class.
async fn audit_intents_are_found_by_age_and_each_becomes_one_parked_event(p: Ports) {
    let chain = format!("chain-{}", kirim::domain::new_id());
    let old = intent(&chain, Duration::minutes(5), &p);
    let older = intent("platform", Duration::minutes(9), &p);
    let young = intent(&chain, Duration::seconds(30), &p);
    for i in [&young, &old, &older] {
        p.audit.put_intent(i).await.unwrap();
    }
    let cutoff = p.clock.now() - Duration::minutes(2);
    assert_eq!(
        stale(&p, cutoff, None, 10).await,
        vec![older.clone(), old.clone()],
        "the stale ones, oldest first, every chain's"
    );
    assert_eq!(stale(&p, cutoff, None, 1).await, vec![older.clone()]);
    // Going on after one: the rest, whatever their shard.
    assert_eq!(
        stale(&p, cutoff, Some(&older.id), 10).await,
        vec![old.clone()]
    );
    assert!(stale(&p, cutoff, Some(&old.id), 10).await.is_empty());
    assert!(stale(&p, cutoff, Some(&young.id), 10).await.is_empty());
    // Many, over every shard: each once, in id order, a page at a time.
    let many: Vec<ParkedAudit> = (0..40)
        .map(|n| {
            intent(
                &chain,
                Duration::minutes(20) + Duration::milliseconds(n),
                &p,
            )
        })
        .collect();
    for i in &many {
        p.audit.put_intent(i).await.unwrap();
    }
    let mut want: Vec<ParkedAudit> = many.clone();
    want.extend([older.clone(), old.clone()]);
    want.sort_by(|a, b| a.id.cmp(&b.id));
    let mut read = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..10 {
        let page = stale(&p, cutoff, after.as_deref(), 7).await;
        read.extend(page.iter().cloned());
        if page.len() < 7 {
            break;
        }
        after = page.last().map(|i| i.id.clone());
    }
    assert_eq!(read, want);
    for i in &many {
        p.audit.delete_intent(&i.id).await.unwrap();
    }
    let now = p.clock.now() + Duration::seconds(1);
    assert_eq!(stale(&p, now, None, 10).await.len(), 3);
    // Intents are not parked events: the chain's tip and outbox do not see them.
    assert_eq!(p.audit.tip(&chain).await.unwrap(), (None, false));
    p.audit.delete_intent(&young.id).await.unwrap();
    p.audit.delete_intent(&young.id).await.unwrap();
    assert_eq!(stale(&p, now, None, 10).await.len(), 2);
    // Promoted: gone from the intents and parked, with its index entry, in one write.
    let parked = ParkedAudit {
        details: r#"{"interrupted":true,"status":null}"#.into(),
        ..old.clone()
    };
    p.audit.promote_intent(&old.id, &parked).await.unwrap();
    assert_eq!(stale(&p, now, None, 10).await, vec![older.clone()]);
    assert_eq!(
        p.audit.parked(&chain, 10).await.unwrap(),
        vec![parked.clone()]
    );
    assert!(p
        .audit
        .parked_chains(None, 100)
        .await
        .unwrap()
        .contains(&chain));
    // Again (a second sweep): a conflict that writes nothing.
    let again = ParkedAudit {
        id: kirim::domain::new_id(),
        ..parked.clone()
    };
    assert!(matches!(
        p.audit.promote_intent(&old.id, &again).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(p.audit.parked(&chain, 10).await.unwrap(), vec![parked]);
    // They expire with the audit class (here an hour after `parked`'s clock).
    p.clock.advance(Duration::hours(2));
    let later = p.clock.now();
    assert!(stale(&p, later, None, 10).await.is_empty());
}

/// One page at a time (one read each), newest first: walking the cursors lists each of the
/// tenant's keys once, the full list's order reversed, leaves out a key past its 90 days after
/// it ended, and ends without a cursor; a made-up cursor is refused, and another tenant's
/// never shows that tenant's keys.
async fn keys_are_listed_a_page_at_a_time_each_once_and_only_the_tenants_own(p: Ports) {
    let t = onboarded(&p, 0).await;
    let other = onboarded(&p, 0).await;
    for _ in 0..4 {
        p.api_keys.put_api_key(&key_for(&t)).await.unwrap();
    }
    let gone = key_for(&t);
    p.api_keys.put_api_key(&gone).await.unwrap();
    p.api_keys
        .revoke_api_key(&t.id, &gone.id, p.clock.now())
        .await
        .unwrap()
        .expect("revoked");
    p.clock.advance(Duration::days(91));
    for _ in 0..2 {
        p.api_keys.put_api_key(&key_for(&other)).await.unwrap();
    }
    let all: Vec<String> = p
        .api_keys
        .list_api_keys(&t.id)
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.id)
        .collect();
    assert_eq!(
        all.len(),
        5,
        "the onboarding key and four, not the ended one"
    );
    let mut by_id = all.clone();
    by_id.sort();
    assert_eq!(all, by_id, "oldest first is key-id order");
    let (mut walked, mut cursor, mut pages) = (Vec::new(), None::<String>, 0);
    loop {
        let page = p
            .api_keys
            .list_api_keys_page(&t.id, 2, cursor.as_deref())
            .await
            .unwrap();
        assert!(page.keys.len() <= 2, "{page:?}");
        assert!(page.keys.iter().all(|k| k.tenant_id == t.id));
        walked.extend(page.keys.into_iter().map(|k| k.id));
        pages += 1;
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
        assert!(pages < 10, "the walk ends");
    }
    let mut newest_first = all.clone();
    newest_first.reverse();
    assert_eq!(walked, newest_first, "the keys made last come first");
    assert_eq!(pages, 3);
    // A page that holds them all (exactly, or with room) has no next one.
    for limit in [3, 100] {
        let whole = p
            .api_keys
            .list_api_keys_page(&other.id, limit, None)
            .await
            .unwrap();
        assert_eq!((whole.keys.len(), whole.next_cursor), (3, None));
    }
    let long = "A".repeat(2000);
    for made_up in ["", "nope", "not a cursor", long.as_str()] {
        assert!(
            matches!(
                p.api_keys.list_api_keys_page(&t.id, 2, Some(made_up)).await,
                Err(StoreError::InvalidCursor)
            ),
            "{made_up}"
        );
    }
    let theirs = p
        .api_keys
        .list_api_keys_page(&other.id, 1, None)
        .await
        .unwrap()
        .next_cursor
        .expect("the other tenant has three keys");
    // Another tenant's cursor is refused, as on every list (not read as a position).
    assert!(matches!(
        p.api_keys
            .list_api_keys_page(&t.id, 100, Some(&theirs))
            .await,
        Err(StoreError::InvalidCursor)
    ));
}

contract!(
    audit_intents_are_found_by_age_and_each_becomes_one_parked_event,
    a_parked_audit_event_is_kept_in_order_and_linked_in_exactly_once,
    an_audit_event_is_written_before_its_head_and_the_head_follows_it_once,
    an_audit_chain_only_grows_from_its_current_head,
    a_key_is_found_by_hash_and_by_id_only_within_its_tenant,
    keys_are_listed_a_page_at_a_time_each_once_and_only_the_tenants_own,
    a_revoked_key_is_revoked_under_both_lookups_and_never_for_another_tenant,
    concurrent_revokes_of_one_key_keep_the_first_ones_time,
    rotation_stores_the_new_key_and_ends_the_old_one_once,
    an_ended_key_is_kept_ninety_days_after_it_ended_then_both_copies_go,
    concurrent_rotations_of_one_key_let_exactly_one_succeed,
    an_allow_list_is_replaced_whole_and_needs_a_tenant,
    a_tenant_can_be_suspended_and_resumed_but_closing_is_final,
);

/// An item under an intent's key that does not read as an intent, older than the bound
/// (one written by no adapter: here with its time as text), is read in its place as
/// unreadable, not as an error; and the sweep goes past it, counting it `failed`, so the
/// well-formed stale intent behind it becomes its interrupted event in the same sweep.
async fn an_unreadable_stale_intent_does_not_stop_the_one_behind_it(p: Ports, bad: String) {
    let chain = format!("chain-{}", kirim::domain::new_id());
    let good = intent(&chain, Duration::minutes(5), &p);
    p.audit.put_intent(&good).await.unwrap();
    let cutoff = p.clock.now() - Duration::minutes(2);
    let read = p.audit.stale_intents(cutoff, None, 10).await.unwrap();
    assert_eq!(read.len(), 2, "{read:?}");
    assert!(
        matches!(&read[0], StaleIntent::Unreadable { id, .. } if *id == bad),
        "{read:?}"
    );
    assert_eq!(read[1], StaleIntent::Intent(good.clone()));
    let ample = std::time::Instant::now() + std::time::Duration::from_secs(600);
    let swept = kirim::service::audit::sweep_intents(&p, ample)
        .await
        .unwrap();
    assert_eq!(
        (swept.interrupted, swept.failed, swept.linked),
        (1, 1, 1),
        "{swept:?}"
    );
    let (events, _) = p
        .audit
        .list(
            &chain,
            &AuditQuery {
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        events.iter().map(|e| &e.action).collect::<Vec<_>>(),
        vec![&good.action],
        "{events:?}"
    );
    // Only the unreadable one is left (and logged each sweep until someone removes it).
    let left = p.audit.stale_intents(cutoff, None, 10).await.unwrap();
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].id(), bad);
}

/// The id of an intent made `ago` before the clock's now.
fn intent_id(ago: Duration, p: &Ports) -> String {
    ulid::Ulid::from_datetime((p.clock.now() - ago).into()).to_string()
}

#[tokio::test]
async fn on_memory_an_unreadable_stale_intent_does_not_stop_the_one_behind_it() {
    let (p, store) = super::contract::memory_and_store();
    let bad = intent_id(Duration::minutes(9), &p);
    store.plant_unreadable_intent(&bad).unwrap();
    an_unreadable_stale_intent_does_not_stop_the_one_behind_it(p, bad).await;
}

#[tokio::test]
async fn on_dynamodb_an_unreadable_stale_intent_does_not_stop_the_one_behind_it() {
    use aws_sdk_dynamodb::types::AttributeValue;
    let (p, table, name) = super::contract::aws_and_table().await;
    let bad = intent_id(Duration::minutes(9), &p);
    let key = kirim::adapters::aws::keys::audit_intent(&bad);
    table
        .put_item()
        .table_name(&name)
        .item("pk", AttributeValue::S(key.pk))
        .item("sk", AttributeValue::S(key.sk))
        .item("chain", AttributeValue::S("platform".into()))
        .item("id", AttributeValue::S(bad.clone()))
        .item("at", AttributeValue::S("not a time".into()))
        .send()
        .await
        .unwrap();
    an_unreadable_stale_intent_does_not_stop_the_one_behind_it(p, bad).await;
}
