//! The daily read of Meta (the scheduled retention run, after its sweep): for each active
//! tenant the sweep came across, its numbers' quality, throughput and display
//! ([`numbers::sync_from_meta`](super::numbers::sync_from_meta)), then its WABAs'
//! template catalogues ([`templates::sync_waba`](super::templates::sync_waba)), within the
//! run's time and caps.

use std::collections::HashSet;

use serde::Serialize;

use crate::domain::TenantId;
use crate::ports::TenantStatus;

use super::Deps;

/// What the daily schedule's syncs did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ScheduledSync {
    /// WABAs synced.
    pub wabas: usize,
    /// WABAs whose sync failed (the next day's run tries again).
    pub failed: usize,
    pub synced: usize,
    pub removed: usize,
    /// The run's time ran out before every WABA was synced (the rest wait for the next).
    pub out_of_time: bool,
    /// The tenants' numbers read from Meta (`numbers::sync_from_meta`), of which changed,
    /// and not read.
    pub numbers_read: usize,
    pub numbers_updated: usize,
    pub numbers_failed: usize,
}

/// Reads the active tenants' numbers from Meta (at most
/// [`MAX_SCHEDULED_NUMBERS`](super::numbers::MAX_SCHEDULED_NUMBERS)) and syncs the
/// catalogue of each WABA of their numbers once (at most [`MAX_SCHEDULED`](super::templates::MAX_SCHEDULED)), until
/// `until`: no number or WABA is begun after it, and one still being read from Meta then
/// is cut short (counted as failed; a sync cut short removes nothing). A failure is
/// logged and counted, never fatal.
///
/// With more tenants than a run reaches (by its WABA budget or its time), each day takes
/// them in another order (each tenant's place is a hash of the day and its id): every
/// tenant comes early in some run, so its WABAs are synced and their catalogue's expiry
/// renewed within days, whatever the number of tenants or of WABAs each has, instead of
/// the same first ones every day. No state is kept.
pub async fn sync_scheduled(
    deps: &Deps,
    tenants: &[TenantId],
    until: tokio::time::Instant,
) -> ScheduledSync {
    sync_scheduled_at_most(deps, tenants, until, super::templates::MAX_SCHEDULED).await
}

/// [`sync_scheduled`] with `max` WABAs a run.
pub async fn sync_scheduled_at_most(
    deps: &Deps,
    tenants: &[TenantId],
    until: tokio::time::Instant,
    max: usize,
) -> ScheduledSync {
    sync_scheduled_capped(
        deps,
        tenants,
        until,
        max,
        super::numbers::MAX_SCHEDULED_NUMBERS,
    )
    .await
}

/// [`sync_scheduled`] with `max` WABAs and `max_numbers` numbers a run. Each tenant's
/// numbers are read from Meta first (`numbers::sync_from_meta`: one small request each,
/// and what paces its sends), then its WABAs' catalogues synced.
pub async fn sync_scheduled_capped(
    deps: &Deps,
    tenants: &[TenantId],
    until: tokio::time::Instant,
    max: usize,
    max_numbers: usize,
) -> ScheduledSync {
    let mut done = ScheduledSync::default();
    let mut wabas = HashSet::new();
    let day = deps.clock.now().timestamp().div_euclid(86_400);
    let place = |id: &TenantId| {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(day.to_be_bytes());
        h.update(id.as_str().as_bytes());
        h.finalize()
    };
    let mut order: Vec<(_, &TenantId)> = tenants.iter().map(|id| (place(id), id)).collect();
    order.sort();
    order.dedup_by(|a, b| a.1 == b.1);
    for (_, id) in order {
        if tokio::time::Instant::now() >= until {
            done.out_of_time = true;
            break;
        }
        let numbers_left = max_numbers.saturating_sub(done.numbers_read + done.numbers_failed);
        if wabas.len() >= max && numbers_left == 0 {
            tracing::info!(
                max,
                max_numbers,
                "template and number sync budgets reached; the rest wait for the next run"
            );
            break;
        }
        let tenant = match deps.tenants.get_tenant(id).await {
            Ok(Some(t)) if t.status == TenantStatus::Active => t,
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!(tenant_id = %id, error = %e, "tenant not read for the template sync");
                done.failed += 1;
                continue;
            }
        };
        if numbers_left > 0 {
            let read = super::numbers::sync_from_meta(deps, &tenant, until, numbers_left).await;
            done.numbers_read += read.read;
            done.numbers_updated += read.updated;
            done.numbers_failed += read.failed;
            if read.out_of_time {
                done.out_of_time = true;
                return done;
            }
        }
        // The default number's WABA, and those of the tenant's other numbers.
        let mut own = vec![tenant.waba_id.clone()];
        match deps.numbers.list_phone_numbers(id).await {
            Ok(numbers) => own.extend(numbers.into_iter().map(|n| n.waba_id)),
            Err(e) => {
                tracing::warn!(tenant_id = %id, error = %e, "numbers not read for the template sync")
            }
        }
        for waba in own {
            if wabas.len() >= max || !wabas.insert(waba.clone()) {
                continue;
            }
            match tokio::time::timeout_at(until, super::templates::sync_waba(deps, &tenant, &waba))
                .await
            {
                Ok(Ok(s)) => {
                    done.wabas += 1;
                    done.synced += s.synced;
                    done.removed += s.removed;
                }
                Ok(Err(e)) => {
                    tracing::warn!(tenant_id = %id, waba_id = %waba, error = %e, "scheduled template sync failed");
                    done.failed += 1;
                }
                Err(_) => {
                    tracing::warn!(tenant_id = %id, waba_id = %waba, "scheduled template sync cut short: the run's time is up");
                    done.failed += 1;
                    done.out_of_time = true;
                    return done;
                }
            }
        }
    }
    done
}
