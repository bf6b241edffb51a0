//! The scheduled cleanup (docs/data-retention.md): links parked audit events into their
//! chains (those of chains nobody appends to any more would otherwise wait forever),
//! deletes Meta-token secrets that belong to no tenant (the daily run only), removes what
//! is past its TTL and not yet removed by DynamoDB, finishes closing closed tenants,
//! counts what it removed per retention class, and records its report in the platform's
//! audit chain.
//!
//! Resumable: the sweep reads the table a page at a time and saves its position after each
//! page, so a run cut short (a budget reached, a Lambda timeout) is continued by the next.
//! Bounded: at most `page_size` items read per page, a pause between pages, and a budget
//! of deletions, pages and time per run.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::audit::{self, Draft};
use super::errors::ServiceError;
use super::Deps;
use crate::domain::{RetentionClass, TenantId};
use crate::ports::{CloseOutCounts, CloseOutTtls, TenantStatus};

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct RetentionReport {
    pub ran_at: chrono::DateTime<chrono::Utc>,
    /// Items deleted in total (the sum of `deleted`).
    pub deleted_expired: usize,
    /// Items deleted, by retention class (every class named, zeros included).
    pub deleted: BTreeMap<&'static str, usize>,
    /// Items read (the Scan's cost).
    pub examined: usize,
    pub pages: usize,
    /// Whether this run continued a pass an earlier run left unfinished.
    pub resumed: bool,
    /// Whether the pass over the table finished (else the next run continues it).
    pub complete: bool,
    /// Closed tenants whose closing this run finished, or began and ran out of time inside
    /// (`cut_short`: not marked closed out; the next run goes on and lists it again).
    pub closed_out: Vec<ClosedOut>,
    /// Closed tenants whose closing failed in this run (logged; tried again when the sweep
    /// next comes across them): one tenant's failure does not stop the run for the rest.
    pub closed_out_failed: usize,
    /// Parked audit events linked into their chains (every chain with some, first).
    pub audit_parked: audit::DrainReport,
    /// Messages left unsent by a lost dispatch job (`accepted` or `sending` without a move
    /// for `domain::UNSENT_STALE_AFTER`), settled: failed `dispatch_lost` and refunded, or
    /// failed `outcome_unknown`; and campaigns a lost fan-out job left unfinished, closed
    /// with their never-recorded recipients refunded.
    pub unsent_settled: UnsentSettled,
    /// Ended API keys found without a TTL (written before ended keys were given one)
    /// whose two copies this run gave their end + 90 days (`ENDED_KEY_RETENTION`).
    pub ended_keys_given_ttl: usize,
    /// Meta-token secrets of no tenant, older than [`ORPHAN_SECRET_MIN_AGE`], scheduled
    /// for deletion by this run ([`delete_orphan_secrets`]).
    pub orphan_secrets_deleted: usize,
    /// Such secrets whose tenant could not be read, or which could not be deleted
    /// (logged; looked at again by the next run).
    pub orphan_secrets_failed: usize,
    /// Whether this run listed every tenant's Meta-token secret: false for the on-demand
    /// run (which does not list), or when the listing failed (logged), ran out of time
    /// or reached [`MAX_ORPHAN_SECRETS_PER_RUN`].
    pub orphan_secrets_checked: bool,
    /// Active tenants the sweep came across (the daily template sync's list; not reported).
    #[serde(skip)]
    pub active_tenants: Vec<TenantId>,
}

#[derive(Serialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnsentSettled {
    pub refunded: usize,
    pub outcome_unknown: usize,
    /// Campaigns a lost fan-out job left `scheduled` or sending past their recipient
    /// list's backstop, closed (`broadcasts::settle_lost`).
    pub campaigns_closed: usize,
    /// Their recipients never recorded, refunded as they closed.
    pub campaign_recipients_refunded: usize,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct ClosedOut {
    pub tenant_id: TenantId,
    #[serde(flatten)]
    pub counts: CloseOutCounts,
    pub meta_token_secret_deleted: bool,
}

/// How much one run may do.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Items read per page (the Scan's `Limit`): bounds the read rate.
    pub page_size: usize,
    /// Pause between pages: bounds the read and delete rate.
    pub pause: Duration,
    /// Deletions per run at most; the next run continues.
    pub max_deleted: usize,
    /// Pages per run at most.
    pub max_pages: usize,
    /// Wall time per run at most (the Lambda's timeout is 900 s).
    pub max_time: Duration,
    /// Whether the run looks for Meta-token secrets of no tenant
    /// ([`delete_orphan_secrets`]): the daily run's function alone may list secrets.
    pub orphan_secrets: bool,
}

/// Items removed per run at most; the next run continues.
pub const BUDGET: usize = 10_000;

impl Default for Limits {
    fn default() -> Self {
        Self {
            page_size: 500,
            pause: Duration::from_millis(100),
            max_deleted: BUDGET,
            max_pages: 2_000,
            max_time: Duration::from_secs(600),
            orphan_secrets: true,
        }
    }
}

impl Limits {
    /// For `POST /v1/platform/retention/run`: within API Gateway's 30 s; the checkpoint
    /// lets the daily run (or the next call) continue. Without the look for orphan
    /// secrets: the admin API's role may not list secrets (`iam.rs`), and the daily run
    /// does it.
    pub fn interactive() -> Self {
        Self {
            max_time: Duration::from_secs(20),
            orphan_secrets: false,
            ..Self::default()
        }
    }
}

pub async fn run(deps: &Deps) -> Result<RetentionReport, ServiceError> {
    run_with(deps, Limits::default()).await
}

pub async fn run_with(deps: &Deps, limits: Limits) -> Result<RetentionReport, ServiceError> {
    let started = Instant::now();
    let now = deps.clock.now();
    let cursor = deps.retention.checkpoint().await?;
    let mut suspended: Vec<TenantId> = Vec::new();
    let mut report = RetentionReport {
        ran_at: now,
        deleted_expired: 0,
        deleted: RetentionClass::ALL
            .iter()
            .map(|c| (c.as_str(), 0))
            .collect(),
        examined: 0,
        pages: 0,
        resumed: cursor.is_some(),
        complete: false,
        closed_out: Vec::new(),
        closed_out_failed: 0,
        audit_parked: audit::DrainReport::default(),
        unsent_settled: UnsentSettled::default(),
        ended_keys_given_ttl: 0,
        orphan_secrets_deleted: 0,
        orphan_secrets_failed: 0,
        orphan_secrets_checked: false,
        active_tenants: Vec::new(),
    };
    // First: cheap (an index of the few chains with parked events), and what a quiet chain
    // waits on; the sweep is resumable and DynamoDB's own TTL deletes behind it anyway.
    // Its failure is logged, not the run's: the sweep and the settling do not depend on it.
    report.audit_parked = match audit::drain_all(deps, started + limits.max_time).await {
        Ok(drained) => drained,
        Err(e) => {
            tracing::warn!(error = %e, "parked audit events not drained");
            audit::DrainReport::default()
        }
    };
    // Then the secrets of no tenant: a few pages of names and a tenant read per secret,
    // bounded by its own slice of the run's time, so that the sweep (resumable, where this
    // is not) still has the rest. Its failure is logged and reported, not the run's.
    if limits.orphan_secrets {
        let deadline = (started + limits.max_time).min(Instant::now() + ORPHAN_SECRETS_TIME);
        let found = delete_orphan_secrets(deps, deadline).await;
        report.orphan_secrets_deleted = found.deleted;
        report.orphan_secrets_failed = found.failed;
        report.orphan_secrets_checked = found.checked;
    }
    // A failure part-way (a page not read, a position not saved) fails the run, but what
    // the pages before it did (items deleted, tenants closed out, messages refunded) is
    // recorded all the same: the next run resumes after the last saved position and would
    // never report it.
    if let Err((e, step)) = sweep(
        deps,
        limits,
        started,
        now,
        cursor,
        &mut report,
        &mut suspended,
    )
    .await
    {
        tracing::error!(
            error = %e,
            step,
            pages = report.pages,
            deleted_expired = report.deleted_expired,
            closed_out = report.closed_out.len(),
            "retention run failed part-way; its work so far is recorded"
        );
        let mut details = serde_json::to_value(&report).unwrap_or_default();
        if let Some(d) = details.as_object_mut() {
            d.insert("error".into(), format!("{step}: {}", plain(&e)).into());
        }
        record_run(deps, crate::ports::AuditOutcome::Error, details).await;
        return Err(e);
    }
    // Events a crash left beyond their chains' heads, on the chains of the active and
    // suspended tenants this run came across (all of them over a pass) and the platform
    // chain. (A closed tenant's chain is closed with it.)
    let chains: Vec<TenantId> = report
        .active_tenants
        .iter()
        .chain(&suspended)
        .cloned()
        .collect();
    let audit_heads_repaired = audit::repair_heads(deps, &chains, started + limits.max_time).await;
    tracing::info!(
        deleted_expired = report.deleted_expired,
        deleted = ?report.deleted,
        closed_out = report.closed_out.len(),
        ended_keys_given_ttl = report.ended_keys_given_ttl,
        orphan_secrets_deleted = report.orphan_secrets_deleted,
        orphan_secrets_failed = report.orphan_secrets_failed,
        orphan_secrets_checked = report.orphan_secrets_checked,
        audit_heads_repaired,
        audit_parked_linked = report.audit_parked.linked,
        audit_chains_still_parked = report.audit_parked.still_parked,
        complete = report.complete,
        "retention run finished"
    );
    // Parked if the platform chain cannot take it now (linked by a later append): the
    // run's work is done, and failing it here would answer 503 for a finished sweep, skip
    // the template sync after it and have EventBridge run it all again.
    record_run(
        deps,
        crate::ports::AuditOutcome::Success,
        serde_json::to_value(&report).unwrap_or_default(),
    )
    .await;
    Ok(report)
}

/// The run's `retention.run` event on the platform chain, recorded or parked.
async fn record_run(deps: &Deps, outcome: crate::ports::AuditOutcome, details: serde_json::Value) {
    audit::record_or_park(
        deps,
        Draft {
            tenant: None,
            actor_type: "system",
            actor_id: "retention".into(),
            action: "retention.run".into(),
            ip: None,
            outcome,
            details,
        },
    )
    .await;
}

/// What a failed run was doing when it failed (its `retention.run` event's `error`).
const READ_PAGE: &str = "reading a page of the table";
const SAVE_POSITION: &str = "saving the sweep's position";

/// The sweep, a page at a time from `cursor`, adding what each page did to `report` as it
/// goes: on a failure, `report` holds the work of the pages before it (and of the failing
/// page's own settling and close-outs, done before its position is saved).
async fn sweep(
    deps: &Deps,
    limits: Limits,
    started: Instant,
    now: chrono::DateTime<chrono::Utc>,
    mut cursor: Option<String>,
    report: &mut RetentionReport,
    suspended: &mut Vec<TenantId>,
) -> Result<(), (ServiceError, &'static str)> {
    loop {
        let page = deps
            .retention
            .sweep_page(now, cursor.as_deref(), limits.page_size)
            .await
            .map_err(|e| (e.into(), READ_PAGE))?;
        report.pages += 1;
        report.examined += page.examined;
        for (class, n) in &page.deleted {
            *report.deleted.entry(class).or_default() += n;
            report.deleted_expired += n;
        }
        report.ended_keys_given_ttl += page.ended_keys_given_ttl;
        report.active_tenants.extend(page.active_tenants);
        suspended.extend(page.suspended_tenants);
        for (tenant, id) in &page.stale_messages {
            let Some(id) = crate::domain::MessageId::parse(id) else {
                continue;
            };
            // One message's failure is logged and left to the next run, not the run's.
            match super::deadline::settle_lost(deps, tenant, &id).await {
                Ok(Some(super::deadline::Settled::Refunded)) => report.unsent_settled.refunded += 1,
                Ok(Some(super::deadline::Settled::OutcomeUnknown)) => {
                    report.unsent_settled.outcome_unknown += 1;
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "a stale unsent message was not settled"),
            }
        }
        for (tenant, id) in &page.stale_broadcasts {
            match super::broadcasts::settle_lost(deps, tenant, id).await {
                Ok(Some(refunded)) => {
                    report.unsent_settled.campaigns_closed += 1;
                    report.unsent_settled.campaign_recipients_refunded += refunded;
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "a stale campaign was not closed"),
            }
        }
        let mut cut_short = false;
        for tenant in &page.closed_tenants {
            // One tenant's failure (a secret the role may not delete, an unreadable item)
            // is logged and counted, not the run's: every step of a close-out is
            // idempotent, and the next pass that comes across the tenant tries again.
            match close_out(deps, tenant, started + limits.max_time).await {
                Ok(Some(done)) => {
                    cut_short = done.counts.cut_short;
                    report.closed_out.push(done);
                    if cut_short {
                        break;
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    report.closed_out_failed += 1;
                    tracing::error!(tenant_id = %tenant, error = %e, "a closed tenant was not closed out");
                }
            }
        }
        if cut_short {
            // Out of time inside a close-out: the next run starts at this page again and
            // goes on with it (every step of a close-out is idempotent).
            deps.retention
                .save_checkpoint(cursor.as_deref(), deps.clock.now())
                .await
                .map_err(|e| (e.into(), SAVE_POSITION))?;
            break;
        }
        cursor = page.next;
        deps.retention
            .save_checkpoint(cursor.as_deref(), deps.clock.now())
            .await
            .map_err(|e| (e.into(), SAVE_POSITION))?;
        if cursor.is_none() {
            report.complete = true;
            break;
        }
        if report.deleted_expired >= limits.max_deleted
            || report.pages >= limits.max_pages
            || started.elapsed() >= limits.max_time
        {
            break;
        }
        tokio::time::sleep(limits.pause).await;
    }
    Ok(())
}

/// A failure as the audit records it: its class, no backend's message (which can name a
/// table, a key or an SDK's internals).
fn plain(e: &ServiceError) -> &'static str {
    match e {
        ServiceError::Unavailable(_) => "the store was unavailable (a later run continues)",
        ServiceError::Internal(_) => "the store refused the request or held an unreadable item",
        ServiceError::NotFound => "an item was not found",
        ServiceError::Conflict(_) => "a conflicting write",
        _ => "an unexpected error",
    }
}

/// Finishes closing one closed tenant; `None` if it is not closed (or not there).
async fn close_out(
    deps: &Deps,
    id: &TenantId,
    deadline: Instant,
) -> Result<Option<ClosedOut>, ServiceError> {
    let Some(tenant) = deps.tenants.get_tenant(id).await? else {
        return Ok(None);
    };
    if tenant.status != TenantStatus::Closed {
        return Ok(None);
    }
    let now = deps.clock.now();
    let closed_at = tenant.status_changed_at.unwrap_or(now);
    let r = &deps.settings.retention;
    let from_closing = |class| r.expiry(class, closed_at).unwrap_or(closed_at.timestamp());
    // The chain's head lives as long as its newest event: events appended after the
    // closing (the close call's own, calls refused before the close-out) outlive the
    // closing + Audit, and a head gone before them would have the next append start the
    // chain again at 1.
    let chain = id.to_string();
    let head = deps.audit.head(&chain).await?;
    // And one left beyond the head (its append's head write failed, or its answer was
    // lost): a closed tenant's chain is not repaired, so it would stay there.
    let beyond = deps
        .audit
        .event(&chain, head.as_ref().map_or(1, |h| h.seq + 1))
        .await?
        .and_then(|e| e.expires_at);
    let newest_event = head.and_then(|h| h.expires_at).max(beyond);
    let config = from_closing(RetentionClass::Messages);
    let ttls = CloseOutTtls {
        tenant: from_closing(RetentionClass::Billing),
        config,
        // And at least as long as the users kept as config: a closed tenant's user can
        // still try to sign in, and that attempt is audited on the tenant's chain. With
        // the audit retention set shorter than the messages', a head gone before them
        // had that append start the chain again with a head of no TTL, kept for good.
        audit_head: from_closing(RetentionClass::Audit)
            .max(config)
            .max(newest_event.unwrap_or(0)),
    };
    // Secrets Manager keeps a deleted secret for its recovery window (7 days), then
    // removes it; deleting one already scheduled (or gone) succeeds.
    deps.secrets
        .store()
        .delete_secret(&tenant.meta_token_secret)
        .await?;
    // And the status callback's signing secret, set or not.
    deps.secrets
        .store()
        .delete_secret(&super::callbacks::secret_name(deps, id))
        .await?;
    let counts = deps.retention.close_out(id, ttls, now, deadline).await?;
    tracing::info!(
        tenant_id = %id,
        keys_revoked = counts.keys_revoked,
        phone_route_removed = counts.phone_route_removed,
        cut_short = counts.cut_short,
        "closed tenant closed out"
    );
    Ok(Some(ClosedOut {
        tenant_id: id.clone(),
        counts,
        meta_token_secret_deleted: true,
    }))
}

/// How old a Meta-token secret of no tenant must be before the run deletes it. Onboarding
/// writes the secret first and the tenant after (`accounts::onboard_as`), so a secret
/// whose tenant is not there yet may be an onboarding in flight: that one must keep it.
/// An onboarding lives at most as long as the admin API's invocation (29 s, under API
/// Gateway's 30 s; its write, its read-back a second later and any SDK retry inside it),
/// and a tenant id is never used twice (`TenantId::generate` per onboarding), so an hour
/// is over a hundred times the longest one, and leaves room for any skew between Secrets
/// Manager's clock (the secret's dates) and the run's. Measured from the later of the
/// secret's creation and its last change: a value put since then is as young as a new
/// secret.
pub const ORPHAN_SECRET_MIN_AGE: Duration = Duration::from_secs(3600);

/// The most of a run's time the look for orphan secrets may take (before the sweep: the
/// sweep resumes where a run stopped, this starts over each day). A page of 100 names and
/// a tenant read for each take about a second: some 6,000 tenants fit.
pub const ORPHAN_SECRETS_TIME: Duration = Duration::from_secs(60);

/// The most orphan secrets one run deletes. An orphan is rare (an onboarding whose write
/// failed and whose own clean-up failed too, or whose process died in between); many at
/// once more likely say the run reads the wrong table (every tenant then reads as
/// missing), and a Meta token deleted under a tenant stops its sends. The rest wait for
/// the next run, with an error logged.
pub const MAX_ORPHAN_SECRETS_PER_RUN: usize = 20;

/// Names per page of the listing (Secrets Manager's most).
const SECRETS_PAGE: usize = 100;

/// What one look for orphan secrets did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct OrphanSecrets {
    pub deleted: usize,
    pub failed: usize,
    /// The listing reached its end.
    pub checked: bool,
}

/// Lists the tenants' Meta-token secrets (`{prefix}tenants/{id}/meta-token`, by name
/// prefix: names and dates, never a value) and schedules for deletion each one whose tenant
/// does not exist (no tenant item, whatever its status: an active, suspended or closed
/// tenant keeps its secret; closing deletes it in its close-out), or was closed out
/// already (a secret still listed then was brought back since: a replacement of the token
/// that died between its restore and its delete again), and which is older than
/// [`ORPHAN_SECRET_MIN_AGE`]. The deletion is the close-out's: Secrets Manager's 7-day
/// recovery window, restorable by hand meanwhile. A secret whose tenant cannot be read is
/// kept (counted as failed). Never logs a name or a value: the tenant id part only.
pub async fn delete_orphan_secrets(deps: &Deps, deadline: Instant) -> OrphanSecrets {
    let mut out = OrphanSecrets::default();
    let prefix = &deps.settings.secret_prefix;
    let listed = format!("{prefix}tenants/");
    let now = deps.clock.now();
    let min_age = chrono::Duration::from_std(ORPHAN_SECRET_MIN_AGE)
        .unwrap_or_else(|_| chrono::Duration::hours(1));
    let store = deps.secrets.store();
    let mut page: Option<String> = None;
    loop {
        if Instant::now() >= deadline {
            tracing::warn!(
                deleted = out.deleted,
                "the look for orphan secrets ran out of time; the next run starts it again"
            );
            return out;
        }
        let listing = match store
            .list_secrets(&listed, page.as_deref(), SECRETS_PAGE)
            .await
        {
            Ok(listing) => listing,
            Err(e) => {
                tracing::warn!(error = %e, deleted = out.deleted, "the tenants' secrets were not listed; orphan secrets are looked for again by the next run");
                return out;
            }
        };
        for secret in &listing.secrets {
            let Some(tenant) = super::accounts::meta_token_secret_tenant(prefix, &secret.name)
            else {
                // Another tenant secret (a status callback's), or a name not ours.
                continue;
            };
            // Without a date it cannot be shown old: kept.
            let Some(changed) = secret.created_at.max(secret.changed_at) else {
                continue;
            };
            if now - changed < min_age {
                continue;
            }
            let orphan = match deps.tenants.get_tenant(&tenant).await {
                Ok(Some(t)) if t.status != TenantStatus::Closed => continue,
                // Closed: its close-out deletes the secret. Once closed out, a secret still
                // listed was brought back after it (a replacement of the token that read the
                // tenant before its close and died before it could delete the secret
                // again): nothing will ever read it, and closed is final.
                Ok(Some(_)) => match deps.retention.closed_out_at(&tenant).await {
                    Ok(Some(_)) => "closed out",
                    Ok(None) => continue,
                    Err(e) => {
                        out.failed += 1;
                        tracing::warn!(tenant_id = %tenant, error = %e, "whether a closed tenant was closed out could not be read; its Meta-token secret is kept");
                        continue;
                    }
                },
                Ok(None) => "of no tenant",
                Err(e) => {
                    out.failed += 1;
                    tracing::warn!(tenant_id = %tenant, error = %e, "a Meta-token secret's tenant could not be read; the secret is kept");
                    continue;
                }
            };
            if out.deleted >= MAX_ORPHAN_SECRETS_PER_RUN {
                tracing::error!(
                    tenant_id = %tenant,
                    deleted = out.deleted,
                    "more Meta-token secrets of no tenant than one run deletes; the rest wait for the next run (is the run reading the right table?)"
                );
                return out;
            }
            match store.delete_secret(&secret.name).await {
                Ok(()) => {
                    out.deleted += 1;
                    tracing::warn!(
                        tenant_id = %tenant,
                        tenant = orphan,
                        age_hours = (now - changed).num_hours(),
                        "a Meta-token secret of no tenant (an onboarding that did not finish) or of a tenant closed out (a replacement that died) was scheduled for deletion"
                    );
                }
                Err(e) => {
                    out.failed += 1;
                    tracing::warn!(tenant_id = %tenant, error = %e, "a Meta-token secret of no tenant was not deleted; the next run tries again");
                }
            }
        }
        match listing.next {
            Some(next) => page = Some(next),
            None => {
                out.checked = true;
                return out;
            }
        }
    }
}
