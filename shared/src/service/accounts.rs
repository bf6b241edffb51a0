//! Tenants: onboarding and credits (platform operator), the account view, and the
//! tenant's status — suspended, resumed or closed by the operator, or suspended because
//! Meta said the account cannot send.

use serde::{Deserialize, Serialize};

use crate::domain::{new_id, RetentionClass, Role, TenantId};
use crate::ports::{
    ApiKeyRecord, LedgerEntry, LedgerKind, RequestKeyRecord, Tenant, TenantStatus, TopUpOnce,
};
use crate::secret::{token_hash, Secret};

use super::errors::ServiceError;
use super::idempotency::Idempotent;
use super::numbers::{check_display, check_numeric_id};
use super::Deps;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewTenant {
    pub name: String,
    pub waba_id: String,
    pub phone_number_id: String,
    pub meta_access_token: String,
    #[serde(default, deserialize_with = "crate::domain::fields::non_null_integer")]
    pub credits: Option<i64>,
    /// The number as Meta shows it: how Meta's `phone_number_quality_update` names it.
    #[serde(default, deserialize_with = "crate::domain::fields::non_null")]
    pub display_phone_number: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopUp {
    #[serde(deserialize_with = "crate::domain::fields::integer")]
    pub amount: i64,
    pub reference: String,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct TenantView {
    pub id: String,
    pub name: String,
    pub waba_id: String,
    pub phone_number_id: String,
    pub status: TenantStatus,
    pub credits: i64,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

impl From<&Tenant> for TenantView {
    fn from(t: &Tenant) -> Self {
        Self {
            id: t.id.to_string(),
            name: t.name.clone(),
            waba_id: t.waba_id.clone(),
            phone_number_id: t.phone_number_id.clone(),
            status: t.status.clone(),
            credits: t.credits,
            created_at: t.created_at,
        }
    }
}

fn check_text(field: &str, v: &str, max: usize) -> Result<(), ServiceError> {
    if v.trim().is_empty() || v.chars().count() > max || !crate::domain::text::plain_label(v) {
        return Err(ServiceError::InvalidRequest(format!(
            "{field} must be 1 to {max} characters, without control or invisible formatting characters"
        )));
    }
    Ok(())
}

/// Creates a tenant with an admin API key (returned once) and stores its Meta token in
/// the secret store. The token is never returned or logged.
pub async fn create_tenant(deps: &Deps, req: NewTenant) -> Result<(Tenant, Secret), ServiceError> {
    create_tenant_as(deps, TenantId::generate(), req).await
}

/// [`create_tenant`] under an id the caller chose (fresh: [`TenantId::generate`]), so
/// that an error whose write may have landed still names the tenant it may have made
/// (the onboarding's audit event goes to that tenant's chain if it exists).
pub async fn create_tenant_as(
    deps: &Deps,
    id: TenantId,
    req: NewTenant,
) -> Result<(Tenant, Secret), ServiceError> {
    let made = onboard_as(deps, id, req).await?;
    Ok((made.tenant, made.key))
}

/// A tenant onboarded ([`onboard_as`]).
pub struct Onboarded {
    pub tenant: Tenant,
    /// Its admin API key, shown once.
    pub key: Secret,
    /// The closed tenant whose route to the number the onboarding took over, if it did.
    pub taken_from: Option<TenantId>,
}

/// [`create_tenant_as`], saying whether the number was taken over from a closed tenant:
/// a number whose route still names a closed tenant (closed out or not) is the new
/// tenant's at once, in the onboarding's one write; one of a tenant that is not closed is
/// a `Conflict` naming it.
pub async fn onboard_as(
    deps: &Deps,
    id: TenantId,
    req: NewTenant,
) -> Result<Onboarded, ServiceError> {
    check_text("name", &req.name, 200)?;
    check_numeric_id("waba_id", &req.waba_id)?;
    check_numeric_id("phone_number_id", &req.phone_number_id)?;
    super::meta_token::check_token(&req.meta_access_token)?;
    if let Some(d) = &req.display_phone_number {
        check_display(d)?;
    }
    let credits = req.credits.unwrap_or(0);
    if !(0..=MAX_CREDITS_AT_ONCE).contains(&credits) {
        return Err(ServiceError::InvalidRequest(format!(
            "credits must be a whole number from 0 to {MAX_CREDITS_AT_ONCE}"
        )));
    }
    let now = deps.clock.now();
    let secret_name = meta_token_secret_name(&deps.settings.secret_prefix, &id);
    let tenant = Tenant {
        id: id.clone(),
        name: req.name.trim().to_owned(),
        waba_id: req.waba_id,
        phone_number_id: req.phone_number_id,
        status: TenantStatus::Active,
        credits,
        meta_token_secret: secret_name.clone(),
        created_at: now,
        ip_allowlist: Vec::new(),
        status_reason: None,
        status_changed_at: None,
        throughput_per_sec: None,
        request_limits: None,
        meta_token_changed_at: None,
    };
    let key = Secret::generate("kirim_");
    let record = ApiKeyRecord {
        id: new_id(),
        tenant_id: id.clone(),
        name: "initial admin key".into(),
        role: Role::Admin,
        key_hash: token_hash(key.expose()),
        created_at: now,
        expires_at: None,
        revoked: false,
        revoked_at: None,
        replaced_by: None,
        created_by: Some(crate::ports::KeyCreator::operator()),
    };
    let initial = (credits > 0).then(|| LedgerEntry {
        id: new_id(),
        tenant_id: id.clone(),
        amount: credits,
        kind: LedgerKind::TopUp,
        reference: Some("initial credits".into()),
        message_id: None,
        at: now,
        expires_at: deps.settings.retention.expiry(RetentionClass::Billing, now),
    });
    deps.secrets
        .put(&secret_name, &Secret::new(req.meta_access_token))
        .await?;
    let display = req.display_phone_number.as_deref();
    let mut taken_from = None;
    let mut written = deps
        .tenants
        .onboard(&tenant, display, &record, initial.as_ref())
        .await;
    if let Err(crate::store_error::StoreError::Conflict(_)) = &written {
        // Once, as the route reads now: a closed tenant's number is taken over, in the
        // same one write with the route's condition changed (nothing else is read or
        // written on the onboarding's normal path). A read that fails is the write's
        // error: read back below, it finds nothing landed.
        written = match super::numbers::after_refused_claim(deps, &tenant.phone_number_id).await {
            Ok(super::numbers::Reclaim::OverClosed(closed)) => {
                let w = deps
                    .tenants
                    .onboard_over_closed(&tenant, display, &record, initial.as_ref(), &closed)
                    .await;
                taken_from = Some(closed);
                w
            }
            Ok(super::numbers::Reclaim::Free) => {
                deps.tenants
                    .onboard(&tenant, display, &record, initial.as_ref())
                    .await
            }
            Ok(super::numbers::Reclaim::Held(_)) => written,
            Err(e) => Err(e),
        };
    }
    if let Err(e) = written {
        // An answer lost after the write landed (the SDK gave up) is read back: the tenant
        // then exists and keeps its token. Otherwise no orphan secret is left behind (one
        // left all the same, its deletion failed or this process ended first, is deleted by
        // the daily retention run an hour on: `retention::delete_orphan_secrets`).
        // Read a moment later: an attempt the SDK gave up on (a timeout) may still be
        // committing, and a token deleted under a tenant that then exists is lost.
        let landed = match &e {
            crate::store_error::StoreError::Conflict(_) => Ok(false),
            _ => {
                tokio::time::sleep(READ_BACK_AFTER).await;
                deps.tenants.get_tenant(&id).await.map(|t| t.is_some())
            }
        };
        match landed {
            Ok(true) => {
                tracing::warn!(tenant_id = %id, error = %e, "onboarding's write answered an error but landed");
            }
            Ok(false) => {
                if let Err(d) = deps.secrets.store().delete_secret(&secret_name).await {
                    tracing::warn!(tenant_id = %id, error = %d, "onboarding failed; its token's secret was not deleted (the daily retention run deletes it an hour on)");
                }
                if matches!(e, crate::store_error::StoreError::Conflict(_)) {
                    return Err(owned_elsewhere(deps, &tenant.phone_number_id).await);
                }
                return Err(e.into());
            }
            // Not known whether it landed: the token is kept (a tenant that exists must
            // not lose it), and the tenant id is logged for the operator to find; a retry
            // of the onboarding then names it in its 409.
            Err(read) => {
                tracing::error!(tenant_id = %id, phone_number_id = %tenant.phone_number_id, error = %e, read_error = %read, "onboarding's write failed and could not be read back; its token is kept");
                return Err(e.into());
            }
        }
    }
    match &taken_from {
        Some(closed) => {
            tracing::info!(tenant_id = %id, previous_tenant_id = %closed, "tenant onboarded with a number taken over from a closed tenant");
        }
        None => tracing::info!(tenant_id = %id, "tenant onboarded"),
    }
    // Its template catalogue, read from Meta now so that it can send at once. Meta being
    // down or slow does not undo the onboarding, nor hold its answer (the only copy of the
    // admin key) past API Gateway's 30 s: the daily sync, or the tenant's admin with
    // `POST /v1/templates/sync`, reads the rest later.
    // Beside it, what Meta says of its number (its throughput tier, quality, display), as
    // an operator's added number is read: one already at a higher tier was paced at the
    // default until the next daily run. Bounded, its failure only logged.
    let wabas = [tenant.waba_id.clone()];
    let catalogue = super::templates::sync_all_within(
        deps,
        &tenant,
        &wabas,
        super::templates::ONBOARDING_SYNC_TIME,
    );
    let number = async {
        let until = tokio::time::Instant::now() + super::numbers::NUMBER_READ_TIME;
        match deps
            .numbers
            .get_phone_number(&id, &tenant.phone_number_id)
            .await
        {
            Ok(Some(n)) => {
                let read = super::numbers::sync_one_from_meta(deps, &tenant, &n, until).await;
                tracing::debug!(
                    read = read.read,
                    updated = read.updated,
                    failed = read.failed,
                    "onboarded number read from Meta"
                );
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(tenant_id = %id, error = %e, "onboarded number not read from Meta: its item could not be read");
            }
        }
    };
    let (synced, ()) = tokio::join!(catalogue, number);
    if let Err(e) = synced {
        tracing::warn!(tenant_id = %id, error = %e, "template catalogue not synced at onboarding");
    }
    Ok(Onboarded {
        tenant,
        key,
        taken_from,
    })
}

/// The onboarding's `409` for a number another tenant has: naming that tenant (an operator
/// route), so an onboarding whose first answer was lost can be found and closed, or given a
/// key (`POST /v1/platform/tenants/{id}/api-keys`), instead of being refused blind.
async fn owned_elsewhere(deps: &Deps, phone_number_id: &str) -> ServiceError {
    match deps
        .tenants
        .tenant_by_phone_number_id(phone_number_id)
        .await
    {
        Ok(Some(owner)) => {
            ServiceError::Conflict(format!("phone_number_id already belongs to tenant {owner}"))
        }
        _ => ServiceError::Conflict("phone_number_id already belongs to a tenant".into()),
    }
}

/// Where onboarding puts a tenant's Meta access token: `{prefix}tenants/{id}/meta-token`
/// (`prefix` is `Settings::secret_prefix`, `${StackName}/` on AWS).
pub fn meta_token_secret_name(prefix: &str, id: &TenantId) -> String {
    format!("{prefix}tenants/{id}/meta-token")
}

/// The tenant a [`meta_token_secret_name`] names; `None` for any other name (another
/// tenant secret, another prefix, an id that is not one).
pub fn meta_token_secret_tenant(prefix: &str, name: &str) -> Option<TenantId> {
    let id = name
        .strip_prefix(prefix)?
        .strip_prefix("tenants/")?
        .strip_suffix("/meta-token")?;
    TenantId::parse(id)
}

/// How long a failed onboarding waits before reading back whether its write landed.
const READ_BACK_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// The most credits one top-up (or a tenant's opening balance) adds: far from the
/// balance's `i64` limit, which DynamoDB's `ADD` would pass without a word.
pub const MAX_CREDITS_AT_ONCE: i64 = 1_000_000_000;

/// What a top-up answers: the balance, and whether this was a replay of an earlier
/// request with the same `Idempotency-Key` (then nothing was credited now).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ToppedUp {
    pub balance: i64,
    pub replayed: bool,
}

/// Adds credits. With an `Idempotency-Key` (Stripe's semantics, as on sends): the same
/// key and body within 24 hours credit once and answer again, with the balance as it is
/// now; the same key with another body is `409 idempotency_key_reused`. A refused request
/// keeps no key.
pub async fn top_up(
    deps: &Deps,
    tenant: &TenantId,
    req: TopUp,
    idem: Option<&Idempotent>,
) -> Result<ToppedUp, ServiceError> {
    if req.amount <= 0 || req.amount > MAX_CREDITS_AT_ONCE {
        return Err(ServiceError::InvalidRequest(format!(
            "amount must be a whole number from 1 to {MAX_CREDITS_AT_ONCE}"
        )));
    }
    check_text("reference", &req.reference, 200)?;
    let now = deps.clock.now();
    let entry = LedgerEntry {
        id: new_id(),
        tenant_id: tenant.clone(),
        amount: req.amount,
        kind: LedgerKind::TopUp,
        reference: Some(req.reference),
        message_id: None,
        at: now,
        expires_at: deps.settings.retention.expiry(RetentionClass::Billing, now),
    };
    let Some(idem) = idem else {
        let balance = deps.ledger.top_up(&entry).await?;
        tracing::info!(tenant_id = %tenant, amount = req.amount, "credits topped up");
        return Ok(ToppedUp {
            balance,
            replayed: false,
        });
    };
    let key = RequestKeyRecord {
        tenant_id: tenant.clone(),
        key_hash: idem.key.hash(),
        fingerprint: idem.fingerprint.clone(),
        first_id: entry.id.clone(),
        created_at: now,
        expires_at: deps
            .settings
            .retention
            .expiry(RetentionClass::Idempotency, now),
    };
    match deps.ledger.top_up_once(&entry, &key).await? {
        TopUpOnce::Applied(balance) => {
            tracing::info!(tenant_id = %tenant, amount = req.amount, "credits topped up");
            Ok(ToppedUp {
                balance,
                replayed: false,
            })
        }
        TopUpOnce::Earlier(earlier) if earlier.fingerprint == idem.fingerprint => {
            let balance = deps
                .tenants
                .get_tenant(tenant)
                .await?
                .ok_or(ServiceError::NotFound)?
                .credits;
            tracing::info!(tenant_id = %tenant, entry_id = %earlier.first_id, "top-up replayed");
            Ok(ToppedUp {
                balance,
                replayed: true,
            })
        }
        TopUpOnce::Earlier(_) => Err(ServiceError::IdempotencyKeyReused),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusChangeRequest {
    pub reason: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct OptionalReason {
    #[serde(default, deserialize_with = "crate::domain::fields::non_null")]
    pub reason: Option<String>,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AllowListBody {
    pub cidrs: Vec<String>,
}

/// Suspends (sending refused, queued messages held) or resumes a tenant. Closed tenants
/// cannot change: `409 conflict`.
pub async fn set_status(
    deps: &Deps,
    id: &TenantId,
    to: TenantStatus,
    reason: Option<String>,
) -> Result<Tenant, ServiceError> {
    if let Some(r) = &reason {
        check_text("reason", r, 500)?;
    }
    let tenant = deps
        .tenants
        .set_status(id, to.clone(), reason.as_deref(), deps.clock.now())
        .await?;
    tracing::info!(tenant_id = %id, status = ?to, "tenant status changed");
    Ok(tenant)
}

/// Closes the account: its keys stop authenticating at once and sending is refused.
/// Closing a closed tenant answers it again (idempotent: it keeps its first closing and
/// reason), with `true`: already closed. Its data then follows the retention rules.
pub async fn close(
    deps: &Deps,
    id: &TenantId,
    reason: Option<String>,
) -> Result<(Tenant, bool), ServiceError> {
    match set_status(deps, id, TenantStatus::Closed, reason).await {
        Err(ServiceError::Conflict(_)) => Ok((
            deps.tenants
                .get_tenant(id)
                .await?
                .ok_or(ServiceError::NotFound)?,
            true,
        )),
        other => other.map(|t| (t, false)),
    }
}

/// Meta says the tenant's account cannot send (token expired, account locked or
/// blocked): suspend the tenant, so its next sends answer `tenant_suspended` instead of
/// failing one by one, until the operator fixes it and resumes. `seen` is when the
/// tenant's status last changed as the caller read it: a tenant resumed (or suspended)
/// since is left as it is, atomically (`TenantStore::suspend_if_unchanged`), so a send
/// made with the old token, or Meta's late word, does not undo the operator's resume.
/// `by` names the system part that saw it (for the audit trail). Never fails the caller:
/// a failure is logged (the dispatcher's caller fails the message anyway);
/// [`try_suspend_for_meta`] answers it.
pub async fn suspend_for_meta(
    deps: &Deps,
    tenant: &TenantId,
    reason: &str,
    by: &str,
    seen: Option<chrono::DateTime<chrono::Utc>>,
) {
    if let Err(e) = try_suspend_for_meta(deps, tenant, reason, by, seen).await {
        tracing::error!(tenant_id = %tenant, error = %e, "could not suspend tenant");
    }
}

/// [`suspend_for_meta`], answering a storage failure: Meta's account webhook must not be
/// acknowledged until the suspension is written (Meta then delivers it again). A tenant
/// no longer active as `seen` (closed, suspended or resumed since) is left: `false`.
pub async fn try_suspend_for_meta(
    deps: &Deps,
    tenant: &TenantId,
    reason: &str,
    by: &str,
    seen: Option<chrono::DateTime<chrono::Utc>>,
) -> Result<bool, crate::store_error::StoreError> {
    let reason: String = reason
        .chars()
        .take(crate::domain::error_text::MAX_STOP_REASON)
        .collect();
    let now = deps.clock.now();
    match deps
        .tenants
        .suspend_if_unchanged(tenant, &reason, now, seen)
        .await?
    {
        Some(_) => {
            tracing::warn!(tenant_id = %tenant, reason = %reason, "tenant suspended on meta's signal");
            super::audit::record_or_park(
                deps,
                super::audit::Draft {
                    tenant: Some(tenant.clone()),
                    actor_type: "system",
                    actor_id: by.into(),
                    action: "tenant.suspend".into(),
                    ip: None,
                    outcome: crate::ports::AuditOutcome::Success,
                    details: serde_json::json!({"reason": reason}),
                },
            )
            .await;
            // And on the platform chain, as the operator's own suspensions are: the operator
            // is the one to resume it, and reads every suspension there
            // (`GET /v1/platform/audit?action=tenant.suspend`).
            super::audit::record_or_park(
                deps,
                super::audit::Draft {
                    tenant: None,
                    actor_type: "system",
                    actor_id: by.into(),
                    action: "tenant.suspend".into(),
                    ip: None,
                    outcome: crate::ports::AuditOutcome::Success,
                    details: serde_json::json!({"tenant_id": tenant.to_string(), "reason": reason}),
                },
            )
            .await;
            Ok(true)
        }
        None => {
            tracing::info!(tenant_id = %tenant, "not suspended on meta's signal: its status changed since");
            Ok(false)
        }
    }
}

/// Replaces the tenant's IP allow-list; answers the stored (canonical) list.
pub async fn set_ip_allowlist(
    deps: &Deps,
    id: &TenantId,
    body: AllowListBody,
) -> Result<Vec<String>, ServiceError> {
    let list = crate::domain::IpAllowList::parse(&body.cidrs)
        .map_err(|e| ServiceError::InvalidRequest(e.to_string()))?;
    let cidrs = list.to_strings();
    deps.tenants.set_ip_allowlist(id, &cidrs).await?;
    tracing::info!(tenant_id = %id, entries = cidrs.len(), "ip allow-list replaced");
    Ok(cidrs)
}

/// Whether the tenant is closed (a closed tenant's waiting messages and campaigns end at
/// their job's next look instead of waiting for their `send_at`).
pub(crate) async fn tenant_closed(
    deps: &Deps,
    id: &crate::domain::TenantId,
) -> Result<bool, crate::store_error::StoreError> {
    Ok(tenant_to_dispatch(deps, id)
        .await?
        .is_some_and(|t| t.status == crate::ports::TenantStatus::Closed))
}

/// The tenant for a dispatch decision: the warm cache's (up to its TTL old), unless it says
/// the tenant is not active: then the table's. A message accepted just after a resume, by
/// a process that saw the resume, is neither failed nor hurried out of its retry backoff
/// for a suspension this process still remembers.
pub(crate) async fn tenant_to_dispatch(
    deps: &Deps,
    id: &crate::domain::TenantId,
) -> Result<Option<crate::ports::Tenant>, crate::store_error::StoreError> {
    match deps.tenants.tenant_for_access(id).await? {
        Some(t) if t.status == crate::ports::TenantStatus::Active => Ok(Some(t)),
        _ => deps.tenants.get_tenant(id).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_meta_token_secret_names_its_tenant_and_no_other_secret_names_one() {
        let id = TenantId::generate();
        let name = meta_token_secret_name("stack/", &id);
        assert_eq!(meta_token_secret_tenant("stack/", &name), Some(id.clone()));
        for other in [
            format!("stack/tenants/{id}/status-callback-secret"),
            format!("stack/tenants/{id}/meta-token/x"),
            format!("other/tenants/{id}/meta-token"),
            format!("stack/stack/tenants/{id}/meta-token"),
            "stack/tenants/not-an-id/meta-token".to_owned(),
            "stack/tenants//meta-token".to_owned(),
        ] {
            assert_eq!(meta_token_secret_tenant("stack/", &other), None, "{other}");
        }
    }
}
