//! Per-number throughput: every dispatcher takes a send slot of the business phone
//! number before it calls Meta, so all of them together stay under the number's tier.

use std::time::Duration;

use crate::domain::TenantId;
use crate::metrics;
use crate::ports::{Tenant, THROUGHPUT_TIERS};
use crate::store_error::StoreError;

use super::errors::ServiceError;
use super::Deps;

/// The longest a dispatcher waits in-process for a slot; beyond it the message goes back
/// to the queue (`RetryAfter`), uncounted as an attempt.
pub const MAX_WAIT: Duration = Duration::from_secs(1);

/// Slots are paced at this share of the tier. Meta counts a rolling second on its own
/// clock; evenly spaced sends at 97% of the tier leave ~30 ms for network jitter before
/// two sends could fall into one of Meta's seconds with one too many (130429).
pub const PACING: f64 = 0.97;

/// The operator's tier for the tenant (messages per second), for numbers Meta said
/// nothing of.
pub fn tier(deps: &Deps, tenant: &Tenant) -> u32 {
    tenant
        .throughput_per_sec
        .unwrap_or(deps.settings.meta_throughput)
}

/// The pace the limiter keeps for a tier.
pub fn pace(tier: u32) -> u32 {
    ((f64::from(tier) * PACING).floor() as u32).max(1)
}

/// Whether the dispatcher may call Meta now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// A slot was taken (after waiting for it, if it lay ahead).
    Go,
    /// The number is taken for longer than `MAX_WAIT`.
    Full,
}

/// Takes the next send slot of the business number `phone_number_id` (whose tier is
/// `tier`, `numbers::tier`), waiting up to `MAX_WAIT` for it.
pub async fn acquire(deps: &Deps, phone_number_id: &str, tier: u32) -> Result<Slot, StoreError> {
    let per_sec = pace(tier);
    let now = deps.clock.now();
    let Some(at) = deps
        .throughput
        .reserve_slot(phone_number_id, per_sec, now, MAX_WAIT)
        .await?
    else {
        metrics::throttle("limiter_full");
        return Ok(Slot::Full);
    };
    if let Ok(wait) = (at - deps.clock.now()).to_std() {
        if !wait.is_zero() {
            metrics::throttle("limiter_wait");
            tokio::time::sleep(wait.min(MAX_WAIT)).await;
        }
    }
    Ok(Slot::Go)
}

/// When a message whose number was full comes back: soon, spread out.
pub fn full_retry_delay() -> Duration {
    Duration::from_millis(1000 + rand::random::<u64>() % 1000)
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThroughputBody {
    #[serde(deserialize_with = "crate::domain::fields::integer")]
    pub per_sec: u32,
}

/// The operator sets a tenant's tier (Meta raised or lowered the number's limit).
pub async fn set_throughput(
    deps: &Deps,
    id: &TenantId,
    body: ThroughputBody,
) -> Result<Tenant, ServiceError> {
    if !THROUGHPUT_TIERS.contains(&body.per_sec) {
        return Err(ServiceError::InvalidRequest(
            "per_sec must be one of Meta's tiers: 20, 80 or 1000".into(),
        ));
    }
    let t = deps.throughput.set_throughput(id, body.per_sec).await?;
    tracing::info!(tenant_id = %id, per_sec = body.per_sec, "throughput tier set");
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_tier_is_paced_a_little_below_its_limit() {
        assert_eq!(pace(20), 19);
        assert_eq!(pace(80), 77);
        assert_eq!(pace(1000), 970);
        assert_eq!(pace(0), 1);
    }
}
