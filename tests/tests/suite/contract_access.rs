//! The access ports' contract (API keys, allow-lists, tenant status) on both adapters.

use chrono::Duration;
use kirim::error::StoreError;
use kirim::ports::{ApiKeyRecord, Clock, TenantStatus};

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

contract!(
    a_key_is_found_by_hash_and_by_id_only_within_its_tenant,
    a_revoked_key_is_revoked_under_both_lookups_and_never_for_another_tenant,
    rotation_stores_the_new_key_and_ends_the_old_one_once,
    concurrent_rotations_of_one_key_let_exactly_one_succeed,
    an_allow_list_is_replaced_whole_and_needs_a_tenant,
    a_tenant_can_be_suspended_and_resumed_but_closing_is_final,
);
