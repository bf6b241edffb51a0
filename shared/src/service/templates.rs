//! The template catalogue (API.md "Template catalogue"): what Meta knows of each WABA's
//! templates, instead of what a client says.
//!
//! - Synced from Meta's `GET /{version}/{waba_id}/message_templates` (every page) with the
//!   tenant's own token: when a tenant is added, on `POST /v1/templates/sync`, and on the
//!   daily schedule. A sync writes what it read page by page and removes what Meta no
//!   longer lists only once every page was read, so a sync failing half-way leaves the
//!   previous catalogue usable (refreshed as far as it got).
//! - Kept current by Meta's template webhooks (`domain::meta::TemplateUpdate`).
//! - Sends and broadcasts are checked against it before anything is debited or stored:
//!   [`resolve`] decides the category (so the price, marketing opt-outs and the marketing
//!   pause) and refuses what Meta would refuse.

use std::collections::HashSet;

use serde::Serialize;
use serde_json::Value;

use crate::domain::meta::TemplateUpdate;
use crate::domain::template::{body_parameters_given, MetaTemplate};
use crate::domain::{
    Content, RetentionClass, TemplateCategory, TemplateChange, TemplateQuality, TemplateRef,
    TemplateStatus, TenantId,
};
use crate::ports::{
    CatalogueTemplate, ChangeStamp, MetaSendError, TemplateQuery, Tenant, TenantStatus,
};

use super::errors::ServiceError;
use super::jobs::{QueueJob, TemplateRefreshJob};
use super::Deps;

/// Pages of Meta's list read per sync at most (100 templates a page: beyond Meta's own
/// cap of templates per WABA), so a cursor that never ends cannot hold a sync forever.
pub const MAX_PAGES: usize = 100;
/// WABAs the daily schedule syncs per run at most.
pub const MAX_SCHEDULED: usize = 500;

/// A template as a send names it (bounds-checked by `send::parse_template`).
#[derive(Clone, PartialEq)]
pub struct TemplateRequest {
    pub name: String,
    pub language: String,
    pub category: Option<TemplateCategory>,
    /// Content: never logged nor stored.
    pub components: Vec<Value>,
}

/// "1 body parameter", "2 body parameters": how many a template takes, in words.
fn body_parameters_text(n: u32) -> String {
    if n == 1 {
        "1 body parameter".into()
    } else {
        format!("{n} body parameters")
    }
}

/// Checks a send's template against the WABA's catalogue and answers its content with
/// the catalogue's category. Nothing is written.
pub async fn resolve(
    deps: &Deps,
    waba_id: &str,
    req: TemplateRequest,
) -> Result<Content, ServiceError> {
    let id = format!("{}/{}", req.name, req.language);
    let Some(t) = deps
        .templates
        .get_template(waba_id, &req.name, &req.language)
        .await?
    else {
        return Err(ServiceError::TemplateNotFound(format!(
            "template {id} is not in this account's catalogue; GET /v1/templates lists it, \
             POST /v1/templates/sync reads it from Meta again"
        )));
    };
    if t.status != TemplateStatus::Approved {
        return Err(ServiceError::TemplateNotApproved(format!(
            "template {id} is {} at Meta; only approved templates can be sent",
            t.status.as_str()
        )));
    }
    if let Some(given) = req.category.filter(|c| *c != t.category) {
        return Err(ServiceError::TemplateCategoryMismatch(format!(
            "template {id} is {} in the catalogue, not {}; leave template.category out to use the catalogue's",
            t.category.as_str(),
            given.as_str()
        )));
    }
    let given = body_parameters_given(&req.components);
    if given != t.body_parameters {
        return Err(ServiceError::TemplateParametersMismatch(format!(
            "template {id} takes {}; the request gives {given}",
            body_parameters_text(t.body_parameters)
        )));
    }
    Ok(Content::Template {
        template: TemplateRef {
            name: t.name,
            language: t.language,
            category: t.category,
        },
        components: req.components,
    })
}

/// What `POST /v1/templates/sync` answers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Synced {
    /// Templates read from Meta and stored.
    pub synced: usize,
    /// Templates Meta no longer lists, removed.
    pub removed: usize,
}

fn meta_failure(e: &MetaSendError) -> String {
    match e {
        // What the tenant's people can act on, not a bare number (an outage reads alike).
        MetaSendError::Api { code: 0 | 102 | 190, .. } => {
            "Meta refused the account's access token (invalid or expired): ask your provider to update it".into()
        }
        MetaSendError::Api {
            code: code @ (10 | 200..=299),
            ..
        } => format!(
            "Meta answered error {code} (a permission the account's access token lacks for this WhatsApp Business Account)"
        ),
        MetaSendError::Api { code: 4 | 17 | 32 | 613 | 80007, .. } => {
            "Meta's rate limit for this account was reached: try again in a few minutes".into()
        }
        MetaSendError::Api { code, .. } => format!("Meta answered error {code}"),
        MetaSendError::Timeout => "Meta did not answer in time".into(),
        MetaSendError::Connection(_) => "Meta could not be reached".into(),
        MetaSendError::Protocol(status) => {
            format!("Meta's answer was not understood (http {status})")
        }
    }
}

/// When a catalogue template written `now` expires: with the Messages class (renewed by
/// every sync while a tenant of its WABA is active), never sooner than that class's floor
/// on a deployment (`config::MIN_MESSAGES_RETENTION`). Local mode may keep messages for
/// seconds (a test watching them expire): the catalogue, configuration rather than a
/// message's metadata, is not emptied with them, which would refuse every send after.
fn catalogue_expiry(deps: &Deps, now: chrono::DateTime<chrono::Utc>) -> Option<i64> {
    let floor = i64::try_from(crate::config::MIN_MESSAGES_RETENTION.as_secs()).unwrap_or(i64::MAX);
    deps.settings
        .retention
        .expiry(RetentionClass::Messages, now)
        .map(|at| at.max(now.timestamp().saturating_add(floor)))
}

/// Reads the tenant's WABA's templates from Meta (every page) into the catalogue, then
/// removes those Meta no longer lists.
pub async fn sync(deps: &Deps, tenant: &Tenant) -> Result<Synced, ServiceError> {
    sync_waba(deps, tenant, &tenant.waba_id).await
}

/// [`sync`] for each of `wabas` (a tenant's numbers may sit on several), adding up what
/// was synced; the first failure stops it (what was synced before stays, and the error
/// says so).
pub async fn sync_all(
    deps: &Deps,
    tenant: &Tenant,
    wabas: &[String],
) -> Result<Synced, ServiceError> {
    sync_all_into(deps, tenant, wabas, &std::sync::Mutex::default()).await
}

/// [`sync_all`], adding each WABA's counts to `done` as it finishes: a later WABA's
/// failure, or a caller that gives up waiting, can then say what the earlier ones synced
/// and removed (a `502` that said "none removed" of the failing WABA hid the earlier
/// WABAs' removals).
async fn sync_all_into(
    deps: &Deps,
    tenant: &Tenant,
    wabas: &[String],
    done: &std::sync::Mutex<Synced>,
) -> Result<Synced, ServiceError> {
    let so_far = || done.lock().map(|d| *d).unwrap_or_default();
    for (i, waba) in wabas.iter().enumerate() {
        match sync_waba(deps, tenant, waba).await {
            Ok(d) => {
                if let Ok(mut total) = done.lock() {
                    total.synced += d.synced;
                    total.removed += d.removed;
                }
            }
            Err(ServiceError::MetaUnavailable(why)) if i > 0 => {
                return Err(ServiceError::MetaUnavailable(format!(
                    "WABA {waba}: {why}; {}",
                    earlier_wabas(so_far())
                )))
            }
            Err(e) => return Err(e),
        }
    }
    Ok(so_far())
}

/// What the WABAs synced before a failure did (kept: each WABA's sync is its own).
fn earlier_wabas(done: Synced) -> String {
    format!(
        "the account's WABAs before it were synced: {} templates synced, {} removed",
        done.synced, done.removed
    )
}

/// How long a sync made inside a request may read Meta: API Gateway gives up at 30 s.
pub const REQUEST_SYNC_TIME: std::time::Duration = std::time::Duration::from_secs(20);
/// At onboarding, whose answer carries the only copy of the tenant's first admin key.
pub const ONBOARDING_SYNC_TIME: std::time::Duration = std::time::Duration::from_secs(10);

/// [`sync_all`], given up after `within`: what was read by then is kept and nothing is
/// removed (removal comes only after a whole list); the daily sync finishes it.
pub async fn sync_all_within(
    deps: &Deps,
    tenant: &Tenant,
    wabas: &[String],
    within: std::time::Duration,
) -> Result<Synced, ServiceError> {
    let done = std::sync::Mutex::default();
    match tokio::time::timeout(within, sync_all_into(deps, tenant, wabas, &done)).await {
        Ok(result) => result,
        Err(_) => {
            tracing::warn!(tenant_id = %tenant.id, "template sync cut short by its deadline");
            let earlier = done.lock().map(|d| *d).unwrap_or_default();
            let earlier = if earlier == Synced::default() {
                String::new()
            } else {
                format!(" ({})", earlier_wabas(earlier))
            };
            Err(ServiceError::MetaUnavailable(format!(
                "Meta's template list was not read within {} s; the templates read so far \
                 are kept, and the removal of those Meta no longer lists may have begun for \
                 the WABA being read{earlier}: the daily sync finishes it",
                within.as_secs()
            )))
        }
    }
}

/// [`sync`] of one WABA of the tenant's, with the tenant's token; the app's subscription
/// to the WABA's webhooks is asked for beside it ([`subscribe`]).
pub async fn sync_waba(deps: &Deps, tenant: &Tenant, waba: &str) -> Result<Synced, ServiceError> {
    let token = deps
        .secrets
        .current(&tenant.meta_token_secret)
        .await?
        .ok_or_else(|| {
            ServiceError::MetaUnavailable(
                "the account has no Meta access token; nothing was synced".into(),
            )
        })?;
    let sub = subscribe(deps, waba, &token);
    let read = sync_with(deps, waba, &token);
    tokio::pin!(sub, read);
    tokio::select! {
        synced = &mut read => {
            // The read is what the caller waits for: the subscription gets a moment more,
            // never a WABA's sync (one after another, within 20 s or the daily run's time).
            if tokio::time::timeout(SUBSCRIBE_GRACE, &mut sub).await.is_err() {
                tracing::warn!(
                    waba_id = %waba,
                    "app not subscribed to the WABA's webhooks (no answer in time); the next sync asks again"
                );
            }
            synced
        }
        () = &mut sub => read.await,
    }
}

/// How long the app's subscription to a WABA may take at most, beside the catalogue's
/// read (onboarding's 10 s budget)...
pub const SUBSCRIBE_TIME: std::time::Duration = std::time::Duration::from_secs(5);
/// ...and at most this much longer than the read itself: a slow subscription never holds a
/// sync of several WABAs past its budget.
pub const SUBSCRIBE_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Subscribes the platform's Meta app to the WABA's webhooks (`POST
/// /{version}/{waba_id}/subscribed_apps`, idempotent at Meta): without it Meta sends no
/// status, inbound message, template or account webhook of the WABA, whatever the app's
/// webhook fields say. Asked wherever a WABA's catalogue is read (onboarding, a number on
/// a new WABA, the admin's sync, the daily sync), so one that failed, or was removed in
/// Meta's dashboard, is subscribed again within a day. A failure is logged and changes
/// nothing else.
async fn subscribe(deps: &Deps, waba: &str, token: &crate::secret::Secret) {
    match tokio::time::timeout(SUBSCRIBE_TIME, deps.meta.subscribe_app(waba, token)).await {
        Ok(Ok(())) => tracing::debug!(waba_id = %waba, "app subscribed to the WABA's webhooks"),
        Ok(Err(e)) => tracing::warn!(
            waba_id = %waba,
            error = %meta_failure(&e),
            "app not subscribed to the WABA's webhooks; the next sync asks again"
        ),
        Err(_) => tracing::warn!(
            waba_id = %waba,
            "app not subscribed to the WABA's webhooks (no answer in time); the next sync asks again"
        ),
    }
}

/// [`sync_waba`]'s read of the catalogue with the tenant's `token`.
async fn sync_with(
    deps: &Deps,
    waba: &str,
    token: &crate::secret::Secret,
) -> Result<Synced, ServiceError> {
    let started = deps.clock.now();
    let mut seen: HashSet<(String, String)> = HashSet::new();
    let mut out = Synced::default();
    let mut skipped = 0usize;
    let mut after: Option<String> = None;
    // Every cursor followed: one Meta gives again (A, B, A...) would read the same pages
    // until the page cap, every day.
    let mut cursors: HashSet<String> = HashSet::new();
    let mut pages = 0usize;
    loop {
        if pages >= MAX_PAGES {
            return Err(ServiceError::MetaUnavailable(format!(
                "Meta's template list did not end after {MAX_PAGES} pages; {} templates were \
                 synced, none removed",
                out.synced
            )));
        }
        pages += 1;
        let page = deps
            .meta
            .list_templates(waba, token, after.as_deref())
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, pages, synced = out.synced, "template sync stopped");
                ServiceError::MetaUnavailable(format!(
                    "{} on page {pages} of the template list; {} templates were synced before, \
                     none removed: the previous catalogue is still used",
                    meta_failure(&e),
                    out.synced
                ))
            })?;
        skipped += page.skipped;
        let now = deps.clock.now();
        let expires_at = catalogue_expiry(deps, now);
        for t in page.templates {
            if !seen.insert((t.name.clone(), t.language.clone())) {
                continue;
            }
            // Not over what a later-started sync (which read a newer list) or a webhook
            // wrote since this sync began.
            // Counted only when stored: one a later write keeps (a webhook since, a
            // removal's tombstone) is not this sync's to report.
            if deps
                .templates
                .put_template_unless_newer(&catalogue_entry(waba, t, now, expires_at), started)
                .await?
            {
                out.synced += 1;
            }
        }
        match page.after {
            // A cursor already followed would read the same pages forever: not a
            // complete list, so nothing is removed.
            Some(next) if !cursors.insert(next.clone()) => {
                return Err(ServiceError::MetaUnavailable(format!(
                    "meta's template list repeated its page {pages}; {} templates were synced, \
                     none removed: the previous catalogue is still used",
                    out.synced
                )));
            }
            Some(next) => after = Some(next),
            None => break,
        }
    }
    let mut cursor = None;
    loop {
        let q = TemplateQuery {
            limit: 100,
            after: cursor.take(),
            ..Default::default()
        };
        let page = deps.templates.list_templates(waba, &q).await?;
        for t in &page.templates {
            // Not listed by Meta when this sync read the list: removed, unless written
            // since this sync began (another sync read a newer list, or a webhook said
            // something), and only as it was read here (a conditional delete).
            if seen.contains(&(t.name.clone(), t.language.clone())) || t.updated_at >= started {
                continue;
            }
            // Meta's cursors are positions in its list: a template leaving the list
            // between two pages moves the next page's first one behind the cursor, unread.
            // Missing from one pass is not gone: Meta's list by its name says so first
            // (one request a removal, which is rare); a read that fails removes nothing.
            match listed_by_name(deps, waba, token, &t.name, &t.language).await {
                Ok(None) => {}
                Ok(Some(listed)) => {
                    tracing::info!(waba_id = waba, template = %t.name, language = %t.language,
                        "a template the list's pages missed is still listed by its name; kept");
                    let now = deps.clock.now();
                    let entry = catalogue_entry(waba, listed, now, catalogue_expiry(deps, now));
                    if deps
                        .templates
                        .put_template_unless_newer(&entry, started)
                        .await?
                    {
                        out.synced += 1;
                    }
                    continue;
                }
                Err(e) => {
                    tracing::warn!(waba_id = waba, template = %t.name, error = %meta_failure(&e),
                        "a template the list did not show could not be looked up by its name; kept");
                    continue;
                }
            }
            if deps
                .templates
                .delete_template(waba, &t.name, &t.language, Some(t.updated_at))
                .await?
            {
                out.removed += 1;
            }
        }
        match page.next {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    tracing::info!(
        waba_id = waba,
        synced = out.synced,
        removed = out.removed,
        skipped,
        pages,
        "template catalogue synced"
    );
    Ok(out)
}

fn catalogue_entry(
    waba: &str,
    t: MetaTemplate,
    now: chrono::DateTime<chrono::Utc>,
    expires_at: Option<i64>,
) -> CatalogueTemplate {
    CatalogueTemplate {
        waba_id: waba.to_owned(),
        name: t.name,
        language: t.language,
        category: t.category,
        status: t.status,
        quality: t.quality,
        body_parameters: t.body_parameters,
        meta_id: t.meta_id,
        updated_at: now,
        expires_at,
    }
}

/// What a template webhook did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    Yes,
    /// The catalogue does not have the template (an approval's re-read or the next sync
    /// reads it).
    NotInCatalogue,
    /// No open tenant has this WABA: ignored.
    UnknownWaba,
}

/// Applies one of Meta's template webhooks to the catalogue.
pub async fn apply(deps: &Deps, update: &TemplateUpdate) -> Result<Applied, ServiceError> {
    // Only a WABA with an open tenant: a closed tenant's catalogue keeps the TTL its last
    // change gave it, and expires with its other data.
    let mut open = false;
    // An active tenant, whose token reads the WABA's list again after an approval (a
    // suspended one's job would end unread; tenants may share a WABA).
    let mut refresher = None;
    for t in deps.tenants.tenants_by_waba(&update.waba_id).await? {
        let Some(tenant) = deps.tenants.tenant_for_access(&t).await? else {
            continue;
        };
        if tenant.status == TenantStatus::Closed {
            continue;
        }
        open = true;
        if tenant.status == TenantStatus::Active {
            refresher = Some(t);
            break;
        }
    }
    if !open {
        tracing::info!(waba_id = %update.waba_id, "template webhook for a WABA no open tenant has; ignored");
        return Ok(Applied::UnknownWaba);
    }
    let (waba, name, language) = (&update.waba_id, &update.name, &update.language);
    let found = match update.change {
        TemplateChange::Removed => {
            deps.templates
                .delete_template(waba, name, language, None)
                .await?
        }
        // Nothing written: the status it returned to is read from Meta's list (queued
        // below); until then it stays `archived`, not sendable.
        TemplateChange::Unarchived => deps
            .templates
            .get_template(waba, name, language)
            .await?
            .is_some(),
        change => {
            let now = deps.clock.now();
            let expires_at = catalogue_expiry(deps, now);
            deps.templates
                .update_template(
                    waba,
                    name,
                    language,
                    change,
                    ChangeStamp {
                        at: now,
                        expires_at,
                        // Never more than the sync's margin ahead of now: a time from a
                        // skewed (or bogus) clock would otherwise hold off every sync, and
                        // every later webhook, of the template until that time (within the
                        // margin, webhooks keep their own order).
                        meta_time: update
                            .meta_time
                            .map(|t| t.min(now.timestamp() + crate::ports::SYNC_STAMP_MARGIN_SECS)),
                    },
                )
                .await?
                .is_some()
        }
    };
    tracing::info!(
        waba_id = %waba,
        template = %name,
        language = %language,
        change = ?update.change,
        found,
        "template webhook"
    );
    if matches!(
        update.change,
        TemplateChange::Status(TemplateStatus::Approved) | TemplateChange::Unarchived
    ) {
        if let Some(tenant) = refresher {
            queue_refresh(deps, tenant, update).await;
        } else if update.change == TemplateChange::Unarchived {
            tracing::info!(waba_id = %update.waba_id, template = %update.name,
                "an unarchived template has no active tenant to read it again; archived until a sync");
        }
    }
    Ok(if found {
        Applied::Yes
    } else {
        Applied::NotInCatalogue
    })
}

/// Queues the re-read of a template Meta approved or unarchived ([`refresh`]). Not the
/// webhook's failure when it cannot be queued: the approval itself is applied (an
/// unarchived template stays archived), and the daily sync reads the template anyway
/// (logged).
async fn queue_refresh(deps: &Deps, tenant: TenantId, update: &TemplateUpdate) {
    let job = QueueJob::TemplateRefresh(TemplateRefreshJob {
        tenant_id: tenant,
        waba_id: update.waba_id.clone(),
        name: update.name.clone(),
        language: update.language.clone(),
        approved_meta_time: update.meta_time,
        unarchived: update.change == TemplateChange::Unarchived,
    });
    let queued = match job.to_body() {
        Ok(body) => deps.queue.send(&body).await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = queued {
        tracing::warn!(waba_id = %update.waba_id, template = %update.name, error = %e,
            "a template's re-read was not queued; the daily sync reads it");
    }
}

/// The template `name` in `language` as Meta's list by its name shows it (Meta's `name`
/// filter; its pages followed until it is found, at most [`MAX_PAGES`], a cursor never
/// twice); `None` when the list does not hold it.
async fn listed_by_name(
    deps: &Deps,
    waba: &str,
    token: &crate::secret::Secret,
    name: &str,
    language: &str,
) -> Result<Option<MetaTemplate>, MetaSendError> {
    let mut after: Option<String> = None;
    let mut cursors: HashSet<String> = HashSet::new();
    for _ in 0..MAX_PAGES {
        let page = deps
            .meta
            .list_templates_named(waba, token, name, after.as_deref())
            .await?;
        if let Some(t) = page
            .templates
            .into_iter()
            .find(|t| t.name == name && t.language == language)
        {
            return Ok(Some(t));
        }
        match page.after {
            Some(next) if cursors.insert(next.clone()) => after = Some(next),
            _ => break,
        }
    }
    Ok(None)
}

/// Reads a template Meta approved back from Meta (`list_templates_named`) for what no
/// webhook carries: an edit approved again may take another number of body parameters,
/// and sends checked against the old count would be refused (or Meta would refuse them)
/// until the daily sync. A template the catalogue has gets the count (ordered by the
/// read's time, as a field's changes are: a sync's later read wins); one it does not have
/// yet (created and approved since the last sync) is written whole, as a sync writes it.
/// Either way, while Meta's list says it is approved or still pending (the list lags its
/// webhooks), the approval is applied again by Meta's time: a sync that read the list
/// before the approval and wrote after the webhook (which found nothing to change) does
/// not leave it pending; a newer change of its status (paused, rejected...) is kept, by
/// the field's time, as always.
///
/// An unarchived template (`job.unarchived`) is back to the status it had before its
/// archiving, which no webhook says: the status Meta lists (approved, paused, rejected...)
/// is applied, by the unarchive's Meta time (else the read's), so a change Meta made
/// after the unarchive still stands. Until then it stays `archived`, not sendable.
///
/// `Ok(Some(e))`: Meta failed the read, nothing written; the dispatcher decides whether
/// to try again (`dispatch`, by Meta's error table). A tenant no longer active or
/// without a token, or a template Meta does not list (yet), ends it: the daily sync reads
/// it.
pub async fn refresh(
    deps: &Deps,
    job: &TemplateRefreshJob,
) -> Result<Option<MetaSendError>, ServiceError> {
    let Some(tenant) = deps.tenants.get_tenant(&job.tenant_id).await? else {
        return Ok(None);
    };
    if tenant.status != TenantStatus::Active {
        return Ok(None);
    }
    let Some(token) = deps.secrets.current(&tenant.meta_token_secret).await? else {
        tracing::warn!("the tenant has no Meta access token; the template is not read again");
        return Ok(None);
    };
    let read_at = deps.clock.now();
    let found = match listed_by_name(deps, &job.waba_id, &token, &job.name, &job.language).await {
        Ok(found) => found,
        Err(e) => return Ok(Some(e)),
    };
    let Some(t) = found else {
        tracing::info!(template = %job.name, "a template read again is not in Meta's list yet; the daily sync reads it");
        return Ok(None);
    };
    let now = deps.clock.now();
    let expires_at = catalogue_expiry(deps, now);
    let (waba, name, language) = (&job.waba_id, &job.name, &job.language);
    let body_parameters = t.body_parameters;
    let listed = t.status;
    let stamp = |meta_time: Option<i64>| ChangeStamp {
        at: now,
        expires_at,
        meta_time,
    };
    let written = match deps.templates.get_template(waba, name, language).await? {
        Some(_) => deps
            .templates
            .update_template(
                waba,
                name,
                language,
                TemplateChange::BodyParameters(body_parameters),
                stamp(Some(read_at.timestamp())),
            )
            .await?
            .map(|_| "body parameters"),
        None => deps
            .templates
            .put_template_unless_newer(&catalogue_entry(waba, t, read_at, expires_at), read_at)
            .await?
            .then_some("added"),
    };
    let meta_time = job
        .approved_meta_time
        .map(|t| t.min(now.timestamp() + crate::ports::SYNC_STAMP_MARGIN_SECS));
    if job.unarchived {
        // Whatever Meta lists is the status the unarchive restored (an `archived` one: a
        // list lagging the unarchive, left archived, not sendable, for a sync to read).
        deps.templates
            .update_template(
                waba,
                name,
                language,
                TemplateChange::Status(listed),
                stamp(meta_time.or(Some(read_at.timestamp()))),
            )
            .await?;
    } else if meta_time.is_some()
        && matches!(listed, TemplateStatus::Approved | TemplateStatus::Pending)
    {
        // The approval, by Meta's time, over a list (or a sync's write of one) that may
        // not show it yet; never over a status Meta's list already moved past it, and only
        // with Meta's time (without it, nothing could keep it from undoing a later change).
        deps.templates
            .update_template(
                waba,
                name,
                language,
                TemplateChange::Status(TemplateStatus::Approved),
                stamp(meta_time),
            )
            .await?;
    }
    tracing::info!(
        waba_id = %waba,
        template = %name,
        language = %language,
        body_parameters,
        status = listed.as_str(),
        unarchived = job.unarchived,
        written = written.unwrap_or("kept (a later write stands)"),
        "template read again"
    );
    Ok(None)
}

/// One template as `GET /v1/templates` shows it.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct View {
    pub name: String,
    pub language: String,
    pub category: TemplateCategory,
    pub status: TemplateStatus,
    pub quality: TemplateQuality,
    pub body_parameters: u32,
    pub waba_id: String,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

impl From<CatalogueTemplate> for View {
    fn from(t: CatalogueTemplate) -> Self {
        Self {
            name: t.name,
            language: t.language,
            category: t.category,
            status: t.status,
            quality: t.quality,
            body_parameters: t.body_parameters,
            waba_id: t.waba_id,
            updated_at: t.updated_at,
        }
    }
}

/// A listing cursor: the last template of a page, `name.language` (neither holds a `.`).
pub fn cursor_of(name: &str, language: &str) -> String {
    format!("{name}.{language}")
}

/// Reads a cursor back; `None` if it is not one.
pub fn parse_cursor(cursor: &str) -> Option<(String, String)> {
    let (name, language) = cursor.split_once('.')?;
    (crate::domain::template::valid_name(name) && crate::domain::template::valid_language(language))
        .then(|| (name.to_owned(), language.to_owned()))
}

/// A page of a WABA's catalogue (one of the tenant's: the caller checks) and the cursor
/// of the next one.
pub async fn list(
    deps: &Deps,
    waba_id: &str,
    query: &TemplateQuery,
) -> Result<(Vec<View>, Option<String>), ServiceError> {
    let page = deps.templates.list_templates(waba_id, query).await?;
    let next = page.next.map(|(n, l)| cursor_of(&n, &l));
    Ok((page.templates.into_iter().map(View::from).collect(), next))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_anything_else_is_refused() {
        assert_eq!(
            parse_cursor(&cursor_of("order_update", "en_US")),
            Some(("order_update".into(), "en_US".into()))
        );
        for bad in ["", "order_update", "Order.en", "a.b.c", "x.e"] {
            assert_eq!(parse_cursor(bad), None, "{bad}");
        }
    }

    /// A failed sync says what the tenant can act on: an expired token, a missing
    /// permission, Meta's rate limit — not a bare number that reads like an outage; Meta's
    /// text (which may carry the token) is never in it.
    #[test]
    fn a_sync_failure_names_a_token_a_permission_or_a_rate_limit() {
        let api = |code: i64| MetaSendError::Api {
            http_status: 400,
            code,
            title: "EAAG-secret-token in the text".into(),
            is_transient: None,
        };
        assert!(meta_failure(&api(190)).contains("access token"));
        assert!(meta_failure(&api(200)).contains("permission"));
        assert!(meta_failure(&api(80007)).contains("rate limit"));
        assert_eq!(meta_failure(&api(131000)), "Meta answered error 131000");
        for code in [0, 10, 100, 190, 200, 80007, 131000] {
            assert!(!meta_failure(&api(code)).contains("EAAG"), "{code}");
        }
    }
}
