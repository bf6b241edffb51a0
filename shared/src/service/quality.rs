//! Quality watch: a tenant's opt-out and undeliverable rates over a rolling 7 days, as
//! Meta judges a number's quality. Above the thresholds the tenant is flagged and, if so
//! configured, its marketing sends pause before Meta restricts the number.

use std::collections::BTreeMap;
use std::future::Future;

use chrono::{Duration, NaiveDate};
use serde::Serialize;

use crate::domain::{RetentionClass, TemplateCategory, TenantId};
use crate::ports::{QualityCounter, QualityCounts};

use super::errors::ServiceError;
use super::Deps;

/// The window, in days, including today.
pub const WINDOW_DAYS: i64 = 7;

/// Meta's codes for messages it could not or would not deliver.
pub const UNDELIVERABLE_CODES: &[i64] = &[131026, 131048, 131049];

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct Quality {
    pub opt_out_rate: f64,
    pub undeliverable_rate: f64,
    /// Messages accepted by Meta in the window.
    pub sent_7d: u64,
    pub flagged: bool,
}

fn rate(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        // Four decimals are plenty for a rate.
        ((part as f64 / whole as f64) * 10_000.0).round() / 10_000.0
    }
}

pub fn judge(c: QualityCounts, s: &crate::config::QualitySettings) -> Quality {
    let opt_out_rate = rate(c.opt_outs, c.sent);
    let undeliverable_rate = rate(c.undeliverable, c.sent);
    let flagged = c.sent >= s.min_volume
        && (opt_out_rate > s.opt_out_threshold || undeliverable_rate > s.undeliverable_threshold);
    Quality {
        opt_out_rate,
        undeliverable_rate,
        sent_7d: c.sent,
        flagged,
    }
}

fn window(deps: &Deps) -> (NaiveDate, NaiveDate) {
    let today = deps.clock.now().date_naive();
    (today - Duration::days(WINDOW_DAYS - 1), today)
}

pub async fn of(deps: &Deps, tenant: &TenantId) -> Result<Quality, ServiceError> {
    let (from, to) = window(deps);
    let counts = deps.quality.totals(tenant, from, to).await?;
    Ok(judge(counts, &deps.settings.quality))
}

/// Counts one event for today. Best effort: a lost count must not fail a send or a
/// webhook, so failures are logged.
pub async fn count(deps: &Deps, tenant: &TenantId, counter: QualityCounter) {
    count_on(deps, tenant, deps.clock.now().date_naive(), counter).await
}

/// [`count`] on the event's own `day` (a failure Meta reported, counted on the day of its
/// status, so that a later `delivered` takes it back from the same day).
pub async fn count_on(deps: &Deps, tenant: &TenantId, day: NaiveDate, counter: QualityCounter) {
    let expires = deps
        .settings
        .retention
        .expiry(RetentionClass::Stats, deps.clock.now());
    if let Err(e) = deps.quality.bump(tenant, day, counter, expires).await {
        tracing::warn!(error = %e, counter = counter.attribute(), "quality counter not updated");
    }
}

/// Takes back one event counted on `day` that turned out not to be one (a failure Meta
/// then reported delivered). Best effort, as [`count`].
pub async fn take_back(deps: &Deps, tenant: &TenantId, day: NaiveDate, counter: QualityCounter) {
    if let Err(e) = deps.quality.take_back(tenant, day, counter).await {
        tracing::warn!(error = %e, counter = counter.attribute(), "quality counter not taken back");
    }
}

/// The `sent` counts of one dispatcher batch, per tenant and day (see [`batched`]).
type Tally = std::sync::Mutex<BTreeMap<(TenantId, NaiveDate), u64>>;

tokio::task_local! {
    static BATCH: Tally;
}

/// Runs one dispatcher batch (`work`: its messages, handled concurrently in this task)
/// with the `sent` counts of the messages Meta accepted gathered, then writes them: one
/// `ADD sent :n` per tenant and day instead of one write per message. Best effort, as
/// [`count`]: counts of a batch whose process dies before its end are lost.
pub async fn batched<F: Future>(deps: &Deps, work: F) -> F::Output {
    let (out, tally) = BATCH
        .scope(Tally::default(), async {
            let out = work.await;
            let tally = BATCH.with(|b| match b.lock() {
                Ok(mut m) => std::mem::take(&mut *m),
                Err(p) => std::mem::take(&mut *p.into_inner()),
            });
            (out, tally)
        })
        .await;
    let expires = deps
        .settings
        .retention
        .expiry(RetentionClass::Stats, deps.clock.now());
    for ((tenant, day), n) in tally {
        if let Err(e) = deps
            .quality
            .bump_by(&tenant, day, QualityCounter::Sent, n, expires)
            .await
        {
            tracing::warn!(error = %e, counter = "sent", n, "quality counter not updated");
        }
    }
    out
}

/// Counts one message Meta accepted, once, by the write that moved it out of `sending`
/// (the dispatcher's, or a status's that overtook it): the `MessagesSent` metric, and the
/// quality `sent` count in the batch's tally inside [`batched`], else at once.
pub async fn count_sent(deps: &Deps, tenant: &TenantId) {
    crate::metrics::sent();
    let day = deps.clock.now().date_naive();
    let held = BATCH
        .try_with(|b| match b.lock() {
            Ok(mut m) => {
                *m.entry((tenant.clone(), day)).or_default() += 1;
                true
            }
            Err(_) => false,
        })
        .unwrap_or(false);
    if !held {
        count(deps, tenant, QualityCounter::Sent).await;
    }
}

/// Refuses a marketing template while the tenant is flagged, if so configured.
pub async fn check_send(
    deps: &Deps,
    tenant: &TenantId,
    category: Option<TemplateCategory>,
) -> Result<(), ServiceError> {
    if !deps.settings.quality.pause_marketing || category != Some(TemplateCategory::Marketing) {
        return Ok(());
    }
    if of(deps, tenant).await?.flagged {
        return Err(ServiceError::MarketingPaused);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::QualitySettings;

    fn counts(sent: u64, opt_outs: u64, undeliverable: u64) -> QualityCounts {
        QualityCounts {
            sent,
            opt_outs,
            undeliverable,
        }
    }

    #[test]
    fn rates_are_per_message_accepted_and_zero_without_sends() {
        let s = QualitySettings::default();
        assert_eq!(judge(counts(0, 3, 1), &s).opt_out_rate, 0.0);
        let q = judge(counts(200, 3, 20), &s);
        assert_eq!((q.opt_out_rate, q.undeliverable_rate), (0.015, 0.1));
        assert!(!q.flagged, "at the thresholds, not above");
    }

    #[test]
    fn a_tenant_is_flagged_above_a_threshold_only_with_enough_volume() {
        let s = QualitySettings::default();
        assert!(judge(counts(100, 3, 0), &s).flagged);
        assert!(judge(counts(100, 0, 11), &s).flagged);
        assert!(
            !judge(counts(10, 5, 5), &s).flagged,
            "below the minimum volume"
        );
    }
}
