//! The contract of `HeavyRequestLeases` (A75: a tenant's one heavy request at a time), on
//! the memory adapter and on DynamoDB (moto): the same assertions for both.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use kirim::domain::TenantId;
use kirim::ports::*;

use super::contract::{aws, contract, memory, sweep, Ports};

/// An account-class lease asked for at `now` ([`take_of`]).
async fn take(p: &Ports, t: &TenantId, owner: &str, now: DateTime<Utc>) -> HeavyLease {
    take_of(p, t, Heavy::Account, owner, now).await
}

/// A `class` lease asked for at `now`, lapsing 30 s on; one held lapsing more than 35 s on
/// is taken over (as `http::access` asks).
async fn take_of(
    p: &Ports,
    t: &TenantId,
    class: Heavy,
    owner: &str,
    now: DateTime<Utc>,
) -> HeavyLease {
    p.heavy_leases
        .acquire_heavy_lease(
            t,
            class,
            owner,
            now,
            now + Duration::seconds(30),
            now + Duration::seconds(35),
        )
        .await
        .unwrap()
}

async fn a_tenants_heavy_lease_has_one_owner_until_it_gives_it_back(p: Ports) {
    let (t, other) = (TenantId::generate(), TenantId::generate());
    let now = p.clock.now();
    assert_eq!(take(&p, &t, "first", now).await, HeavyLease::Taken);
    // Another owner meanwhile is told when the holder's lapses (to the millisecond).
    let until =
        DateTime::<Utc>::from_timestamp_millis((now + Duration::seconds(30)).timestamp_millis());
    assert_eq!(
        take(&p, &t, "second", now + Duration::seconds(1)).await,
        HeavyLease::Held { until }
    );
    // Another tenant's is its own.
    assert_eq!(take(&p, &other, "third", now).await, HeavyLease::Taken);
    // Only its owner gives it back: another's release leaves it held, and is no error.
    p.heavy_leases
        .release_heavy_lease(&t, Heavy::Account, "second")
        .await
        .unwrap();
    assert!(matches!(
        take(&p, &t, "fourth", now).await,
        HeavyLease::Held { .. }
    ));
    p.heavy_leases
        .release_heavy_lease(&t, Heavy::Account, "first")
        .await
        .unwrap();
    assert_eq!(take(&p, &t, "fifth", now).await, HeavyLease::Taken);
    // Given back twice, or never held: nothing to do, no error.
    p.heavy_leases
        .release_heavy_lease(&t, Heavy::Account, "first")
        .await
        .unwrap();
    p.heavy_leases
        .release_heavy_lease(&TenantId::generate(), Heavy::Account, "nobody")
        .await
        .unwrap();
    assert!(matches!(
        take(&p, &other, "sixth", now).await,
        HeavyLease::Held { .. }
    ));
}

/// A holder whose process died never gives its lease back: it lapses at its expiry (not
/// a millisecond before), and the one that took it over keeps it when the dead one's late
/// release comes.
async fn a_lapsed_heavy_lease_is_taken_over_and_its_old_owner_cannot_give_it_back(p: Ports) {
    let t = TenantId::generate();
    let now = p.clock.now();
    assert_eq!(take(&p, &t, "died", now).await, HeavyLease::Taken);
    let lapse = now + Duration::seconds(30);
    assert!(
        matches!(take(&p, &t, "early", lapse).await, HeavyLease::Held { .. }),
        "held up to its expiry"
    );
    let later = lapse + Duration::milliseconds(1);
    assert_eq!(take(&p, &t, "next", later).await, HeavyLease::Taken);
    p.heavy_leases
        .release_heavy_lease(&t, Heavy::Account, "died")
        .await
        .unwrap();
    assert!(
        matches!(take(&p, &t, "after", later).await, HeavyLease::Held { .. }),
        "the late release of the lapsed owner leaves the new owner's"
    );
    p.heavy_leases
        .release_heavy_lease(&t, Heavy::Account, "next")
        .await
        .unwrap();
    assert_eq!(take(&p, &t, "again", later).await, HeavyLease::Taken);
}

/// A lease written by a clock ahead (another instance's, or this one's before it stepped
/// back) lapses further ahead than any holder in step could have asked for: it is taken
/// over at once, not after as long as that clock was ahead. One ahead by less than the
/// skew allowed still holds.
async fn a_heavy_lease_lapsing_further_ahead_than_any_clock_in_step_asks_is_taken_over(p: Ports) {
    let (t, other) = (TenantId::generate(), TenantId::generate());
    let now = p.clock.now();
    assert_eq!(
        take(&p, &t, "ahead", now + Duration::hours(1)).await,
        HeavyLease::Taken
    );
    assert_eq!(take(&p, &t, "in step", now).await, HeavyLease::Taken);
    assert!(
        matches!(take(&p, &t, "next", now).await, HeavyLease::Held { .. }),
        "the one that took it over holds it"
    );
    // The ahead one's late release leaves it so.
    p.heavy_leases
        .release_heavy_lease(&t, Heavy::Account, "ahead")
        .await
        .unwrap();
    assert!(matches!(
        take(&p, &t, "next", now).await,
        HeavyLease::Held { .. }
    ));
    // A clock 5 s ahead is still in step: its lease lapses 35 s on, no further.
    assert_eq!(
        take(&p, &other, "a little ahead", now + Duration::seconds(5)).await,
        HeavyLease::Taken
    );
    assert!(matches!(
        take(&p, &other, "behind", now).await,
        HeavyLease::Held { .. }
    ));
}

/// A tenant's two classes of heavy request are leased apart: a campaign's held leaves the
/// account-wide one free, and the other way round; two of one class still exclude each
/// other, and a release gives back its own class only.
async fn a_tenants_account_and_campaign_heavy_leases_are_held_apart(p: Ports) {
    let t = TenantId::generate();
    let now = p.clock.now();
    let campaign = |owner| take_of(&p, &t, Heavy::Campaign, owner, now);
    assert_eq!(campaign("csv").await, HeavyLease::Taken);
    assert!(matches!(campaign("retry").await, HeavyLease::Held { .. }));
    assert_eq!(take(&p, &t, "verify", now).await, HeavyLease::Taken);
    assert!(matches!(
        take(&p, &t, "export", now).await,
        HeavyLease::Held { .. }
    ));
    p.heavy_leases
        .release_heavy_lease(&t, Heavy::Account, "verify")
        .await
        .unwrap();
    assert!(
        matches!(campaign("retry").await, HeavyLease::Held { .. }),
        "the account-wide release leaves the campaign's lease"
    );
    assert_eq!(take(&p, &t, "export", now).await, HeavyLease::Taken);
    // Its owner token on the other class gives nothing back.
    p.heavy_leases
        .release_heavy_lease(&t, Heavy::Account, "csv")
        .await
        .unwrap();
    assert!(matches!(campaign("retry").await, HeavyLease::Held { .. }));
    p.heavy_leases
        .release_heavy_lease(&t, Heavy::Campaign, "csv")
        .await
        .unwrap();
    assert_eq!(campaign("retry").await, HeavyLease::Taken);
}

async fn of_many_concurrent_takers_of_one_tenants_lease_exactly_one_gets_it(p: Ports) {
    let t = TenantId::generate();
    let now = p.clock.now();
    let p = Arc::new(p);
    let takers: Vec<_> = (0..16)
        .map(|i| {
            let (p, t) = (p.clone(), t.clone());
            tokio::spawn(async move { take(&p, &t, &format!("owner-{i}"), now).await })
        })
        .collect();
    let mut taken = 0;
    for taker in takers {
        if taker.await.unwrap() == HeavyLease::Taken {
            taken += 1;
        }
    }
    assert_eq!(taken, 1);
}

/// The lease item carries a TTL (the SendSlot class: an hour after it was taken), so a
/// tenant's lease its process never gave back does not stay for ever.
async fn a_heavy_lease_never_given_back_is_swept_as_a_send_slot_an_hour_on(p: Ports) {
    let t = TenantId::generate();
    assert_eq!(take(&p, &t, "died", p.clock.now()).await, HeavyLease::Taken);
    p.clock.advance(Duration::seconds(3599));
    assert_eq!(sweep(&p).await.deleted.values().sum::<usize>(), 0);
    p.clock.advance(Duration::seconds(2));
    let swept = sweep(&p).await.deleted;
    assert_eq!(swept.get("send_slot").copied(), Some(1), "{swept:?}");
    assert!(!p
        .retention
        .stored_items()
        .await
        .unwrap()
        .iter()
        .any(|i| i.pk == format!("LEASE#{t}") && i.sk.starts_with("HEAVY")));
}

contract!(
    a_tenants_heavy_lease_has_one_owner_until_it_gives_it_back,
    a_lapsed_heavy_lease_is_taken_over_and_its_old_owner_cannot_give_it_back,
    a_heavy_lease_lapsing_further_ahead_than_any_clock_in_step_asks_is_taken_over,
    a_tenants_account_and_campaign_heavy_leases_are_held_apart,
    of_many_concurrent_takers_of_one_tenants_lease_exactly_one_gets_it,
    a_heavy_lease_never_given_back_is_swept_as_a_send_slot_an_hour_on,
);
