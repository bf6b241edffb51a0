//! A tenant's phone numbers (API.md "Phone numbers (senders)"): the operator adds and
//! removes them, an admin picks the default, sends and broadcasts choose one with `from`,
//! and Meta's `phone_number_quality_update` webhooks keep each one's quality and
//! throughput.
//!
//! The daily sync also reads each number from Meta ([`sync_from_meta`]): a number whose
//! quality or throughput Meta changed without a webhook reaching Kirim (or before it was
//! added) is paced and shown as Meta has it within a day.
//!
//! The default number is the tenant item's `phone_number_id` (and `waba_id`). A tenant
//! onboarded before it could have several numbers has no number item for it: [`list`]
//! and [`sender`] read that one from the tenant item, and every change to the tenant's
//! numbers first stores its item ([`materialise`]), so old tenants keep working unchanged.

use serde::{Deserialize, Serialize};

use crate::domain::meta::NumberQualityUpdate;
use crate::domain::{TemplateQuality, TenantId};
use crate::ports::{PhoneNumberRecord, Tenant, TenantStatus};
use crate::store_error::StoreError;

use super::errors::ServiceError;
use super::Deps;

/// `POST /v1/platform/tenants/{id}/phone-numbers`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewNumber {
    pub phone_number_id: String,
    pub waba_id: String,
    #[serde(default, deserialize_with = "crate::domain::fields::non_null")]
    pub display_phone_number: Option<String>,
}

/// One number as `GET /v1/phone-numbers` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NumberView {
    pub phone_number_id: String,
    pub waba_id: String,
    pub display_phone_number: Option<String>,
    pub default: bool,
    pub quality: &'static str,
    pub throughput_per_sec: u32,
    /// Why the number is held (Meta limited it), `null` while it sends.
    pub hold: Option<HoldView>,
}

/// A held number's hold as `GET /v1/phone-numbers` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HoldView {
    /// Meta's error code (131048).
    pub code: i64,
    /// Meta's words for it.
    pub reason: String,
    pub since: chrono::DateTime<chrono::Utc>,
}

fn view(deps: &Deps, tenant: &Tenant, n: PhoneNumberRecord) -> NumberView {
    NumberView {
        default: n.phone_number_id == tenant.phone_number_id,
        quality: n.quality.as_str(),
        throughput_per_sec: tier(deps, tenant, &n),
        hold: n.hold.map(|h| HoldView {
            code: h.code,
            reason: h.reason,
            since: h.since,
        }),
        phone_number_id: n.phone_number_id,
        waba_id: n.waba_id,
        display_phone_number: n.display_phone_number,
    }
}

/// The number the tenant item names as its default, as a number item would hold it.
fn from_tenant(tenant: &Tenant) -> PhoneNumberRecord {
    PhoneNumberRecord::default_of(tenant)
}

/// The tier a number sends at: what Meta said of the number, else the operator's tier
/// for the tenant (`PUT /v1/platform/tenants/{id}/throughput`), else the platform's.
pub fn tier(deps: &Deps, tenant: &Tenant, number: &PhoneNumberRecord) -> u32 {
    number
        .throughput_per_sec
        .or(tenant.throughput_per_sec)
        .unwrap_or(deps.settings.meta_throughput)
}

/// The tenant's numbers, the default one included (ordered by phone number id).
pub async fn records(deps: &Deps, tenant: &Tenant) -> Result<Vec<PhoneNumberRecord>, ServiceError> {
    let mut numbers = deps.numbers.list_phone_numbers(&tenant.id).await?;
    if !numbers
        .iter()
        .any(|n| n.phone_number_id == tenant.phone_number_id)
    {
        numbers.push(from_tenant(tenant));
        numbers.sort_by(|a, b| a.phone_number_id.cmp(&b.phone_number_id));
    }
    Ok(numbers)
}

/// `GET /v1/phone-numbers`.
pub async fn list(deps: &Deps, tenant: &Tenant) -> Result<Vec<NumberView>, ServiceError> {
    Ok(records(deps, tenant)
        .await?
        .into_iter()
        .map(|n| view(deps, tenant, n))
        .collect())
}

/// Meta limited sending from the tenant's number `phone_number_id` (its spam rate limit,
/// `errors::NUMBER_STOP_CODES`), in its answer to a send (`signal_at`: the send's claim, before
/// the request went) or in a `failed` status (`signal_at`: Meta's time of it): the number is held — its sends answer `sender_held`, its queued
/// messages fail refunded — until an admin resumes it ([`resume`]). The tenant's other
/// numbers go on (the whole account was suspended before). The first hold is kept; a
/// number resumed after `signal_at` is left as the admin set it (Meta's word about a
/// message sent before the resume). `by` names the part that saw it (the audit trail's
/// system actor). Best effort: a failure is logged (the message fails either way, and the
/// next such refusal holds it).
pub async fn hold_for_meta(
    deps: &Deps,
    tenant: &Tenant,
    phone_number_id: &str,
    (code, title): (i64, &str),
    by: &str,
    signal_at: chrono::DateTime<chrono::Utc>,
) {
    let hold = crate::ports::NumberHold {
        code,
        // As it reads back (scrubbed since stop 60 already: the same text, cut), so that a
        // retry refused by its own hold, landed on a try whose answer was lost, knows it.
        reason: crate::domain::error_text::read_back_reason(title),
        since: deps.clock.now(),
        by: by.to_owned(),
    };
    if tenant.status == TenantStatus::Closed {
        return;
    }
    let held = async {
        // The default number of a tenant from before numbers had items gets its item
        // first, as any change to its numbers does.
        if phone_number_id == tenant.phone_number_id {
            materialise_fresh(deps, &tenant.id, phone_number_id).await?;
        }
        Ok::<_, ServiceError>(
            deps.numbers
                .hold_phone_number(&tenant.id, phone_number_id, &hold, signal_at)
                .await?,
        )
    }
    .await;
    match held {
        Ok(true) => {
            tracing::warn!(tenant_id = %tenant.id, %phone_number_id, code, "phone number held on meta's signal");
            super::audit::record_or_park(
                deps,
                super::audit::Draft {
                    tenant: Some(tenant.id.clone()),
                    actor_type: "system",
                    actor_id: by.into(),
                    action: "phone_number.hold".into(),
                    ip: None,
                    outcome: crate::ports::AuditOutcome::Success,
                    details: serde_json::json!({
                        "phone_number_id": phone_number_id,
                        "code": code,
                        "reason": hold.reason,
                    }),
                },
            )
            .await;
        }
        Ok(false) => {
            tracing::info!(tenant_id = %tenant.id, %phone_number_id, "phone number not held: held already, resumed since, or removed");
        }
        Err(e) => {
            tracing::error!(tenant_id = %tenant.id, %phone_number_id, error = %e, "could not hold the phone number");
        }
    }
}

/// `POST /v1/phone-numbers/{phone_number_id}/resume`: lifts the number's hold, so that it
/// sends again; answers the number. Resuming a number that is not held changes nothing
/// and answers it as it is (a retried request is safe); another tenant's, `NotFound`.
pub async fn resume(
    deps: &Deps,
    tenant: &Tenant,
    phone_number_id: &str,
) -> Result<(NumberView, bool), ServiceError> {
    if check_numeric_id("phone_number_id", phone_number_id).is_err() {
        return Err(ServiceError::NotFound);
    }
    let now = deps.clock.now();
    if let Some(n) = deps
        .numbers
        .resume_phone_number(&tenant.id, phone_number_id, now)
        .await?
    {
        tracing::info!(tenant_id = %tenant.id, %phone_number_id, "phone number resumed");
        return Ok((view(deps, tenant, n), true));
    }
    let n = match deps
        .numbers
        .get_phone_number(&tenant.id, phone_number_id)
        .await?
    {
        Some(n) => n,
        None if phone_number_id == tenant.phone_number_id => from_tenant(tenant),
        None => return Err(ServiceError::NotFound),
    };
    Ok((view(deps, tenant, n), false))
}

/// The WABAs of the tenant's numbers, each once (the default's first).
pub async fn wabas(deps: &Deps, tenant: &Tenant) -> Result<Vec<String>, ServiceError> {
    let mut out = vec![tenant.waba_id.clone()];
    for n in records(deps, tenant).await? {
        if !out.contains(&n.waba_id) {
            out.push(n.waba_id);
        }
    }
    Ok(out)
}

/// Stores the default number's item if the tenant has none yet (a tenant onboarded with
/// one number): before anything changes which number is the default.
async fn materialise(deps: &Deps, tenant: &Tenant) -> Result<(), ServiceError> {
    deps.numbers
        .put_phone_number_if_absent(&from_tenant(tenant))
        .await?;
    Ok(())
}

/// [`materialise`] from a warm copy of the tenant (a send's, the dispatcher's): the tenant
/// read afresh first, and the item written only while `phone_number_id` is still its
/// default and it is open. A copy up to 5 s old may name a default the operator removed
/// since: its item written again would bring the removed number back (listed, accepted as
/// `from`, sent from instead of failing `sender_removed`).
async fn materialise_fresh(
    deps: &Deps,
    id: &TenantId,
    phone_number_id: &str,
) -> Result<(), ServiceError> {
    let Some(t) = deps.tenants.get_tenant(id).await? else {
        return Ok(());
    };
    if t.phone_number_id != phone_number_id || t.status == TenantStatus::Closed {
        return Ok(());
    }
    materialise(deps, &t).await
}

async fn open_tenant(deps: &Deps, id: &TenantId) -> Result<Tenant, ServiceError> {
    let tenant = deps
        .tenants
        .get_tenant(id)
        .await?
        .ok_or(ServiceError::NotFound)?;
    if tenant.status == TenantStatus::Closed {
        return Err(ServiceError::Conflict("the account is closed".into()));
    }
    Ok(tenant)
}

/// A phone number as Meta shows it (`display_phone_number`): digits, spaces, `+ - ( )`.
pub(crate) fn check_display(v: &str) -> Result<(), ServiceError> {
    let ok = !v.is_empty()
        && v.len() <= 32
        && v.bytes()
            .all(|b| b.is_ascii_digit() || b" +-()".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ServiceError::InvalidRequest(
            "display_phone_number must be a phone number as Meta shows it (digits, spaces, + - ( ))"
                .into(),
        ))
    }
}

pub(crate) fn check_numeric_id(field: &str, v: &str) -> Result<(), ServiceError> {
    if v.is_empty() || v.len() > 32 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ServiceError::InvalidRequest(format!(
            "{field} must be Meta's numeric id"
        )));
    }
    Ok(())
}

/// How long adding a number waits for Meta's description of it.
pub const NUMBER_READ_TIME: std::time::Duration = std::time::Duration::from_secs(3);

/// What a claim of a number's route refused as taken (`Conflict`) may do next, as the
/// route reads now.
pub(crate) enum Reclaim {
    /// No tenant holds it now (the holder's close-out freed it since): claimed again, free.
    Free,
    /// A closed tenant holds it (closed out or not): taken over from it, in one write
    /// conditioned on the route still naming it and its item being `closed`.
    OverClosed(TenantId),
    /// A tenant that is not closed holds it (named; or the route names no tenant that
    /// exists): the `409`.
    Held(TenantId),
}

/// After a claim of `phone_number_id`'s route was refused: who holds it now, and whether
/// that is a closed tenant (whose number is anyone's to take: its close-out, which frees
/// it, comes only when the retention run's table scan reaches its item). Two reads, on
/// the conflict path only; the take-over itself is conditional, so a read a moment stale
/// costs a refused write, never a number taken from an open tenant.
pub(crate) async fn after_refused_claim(
    deps: &Deps,
    phone_number_id: &str,
) -> Result<Reclaim, StoreError> {
    let Some(owner) = deps
        .tenants
        .tenant_by_phone_number_id(phone_number_id)
        .await?
    else {
        return Ok(Reclaim::Free);
    };
    Ok(match deps.tenants.get_tenant(&owner).await? {
        Some(t) if t.status == TenantStatus::Closed => Reclaim::OverClosed(owner),
        _ => Reclaim::Held(owner),
    })
}

/// A number added ([`add_number`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Added {
    pub number: PhoneNumberRecord,
    /// The closed tenant whose route to the number this add took over, if it did.
    pub taken_from: Option<TenantId>,
}

/// The operator adds a number to a tenant. A number already on any tenant: `Conflict`.
/// A number on a WABA the tenant had no number on has that WABA's catalogue synced (a
/// failed sync is logged; `POST /v1/templates/sync` tries again).
pub async fn add(
    deps: &Deps,
    tenant_id: &TenantId,
    req: NewNumber,
) -> Result<PhoneNumberRecord, ServiceError> {
    Ok(add_number(deps, tenant_id, req).await?.number)
}

/// [`add`], saying whether the number was taken over from a closed tenant: a number on
/// another tenant that is not closed is a `Conflict`; one whose route still names a
/// closed tenant (closed out or not) is taken from it ([`Reclaim::OverClosed`]).
pub async fn add_number(
    deps: &Deps,
    tenant_id: &TenantId,
    req: NewNumber,
) -> Result<Added, ServiceError> {
    check_numeric_id("phone_number_id", &req.phone_number_id)?;
    check_numeric_id("waba_id", &req.waba_id)?;
    if let Some(d) = &req.display_phone_number {
        check_display(d)?;
    }
    let tenant = open_tenant(deps, tenant_id).await?;
    let known_wabas = wabas(deps, &tenant).await?;
    materialise(deps, &tenant).await?;
    let record = PhoneNumberRecord {
        tenant_id: tenant_id.clone(),
        phone_number_id: req.phone_number_id,
        waba_id: req.waba_id,
        display_phone_number: req.display_phone_number,
        quality: TemplateQuality::Unknown,
        throughput_per_sec: None,
        added_at: deps.clock.now(),
        quality_meta_at: None,
        throughput_meta_at: None,
        hold: None,
        resumed_at_ms: None,
    };
    let refused = |e: StoreError| match e {
        // Closed since the look above.
        StoreError::Conflict(m) if m == crate::ports::TENANT_CLOSED => {
            ServiceError::Conflict("the account is closed".into())
        }
        StoreError::Conflict(_) => {
            ServiceError::Conflict("this phone_number_id already belongs to a tenant".into())
        }
        e => e.into(),
    };
    let mut taken_from = None;
    match deps.numbers.add_phone_number(&record).await {
        Ok(()) => {}
        Err(StoreError::Conflict(m)) if m != crate::ports::TENANT_CLOSED => {
            // Once, as the route reads now: a closed tenant's number is taken over.
            match after_refused_claim(deps, &record.phone_number_id).await? {
                Reclaim::OverClosed(closed) => {
                    deps.numbers
                        .add_phone_number_over_closed(&record, &closed)
                        .await
                        .map_err(refused)?;
                    taken_from = Some(closed);
                }
                Reclaim::Free => deps
                    .numbers
                    .add_phone_number(&record)
                    .await
                    .map_err(refused)?,
                // Said as onboarding says it (the operator's route): whose it is.
                Reclaim::Held(owner) if &owner == tenant_id => {
                    return Err(ServiceError::Conflict(
                        "this phone_number_id is already one of this tenant's numbers".into(),
                    ))
                }
                Reclaim::Held(owner) => {
                    return Err(ServiceError::Conflict(format!(
                        "this phone_number_id already belongs to tenant {owner}"
                    )))
                }
            }
        }
        Err(e) => return Err(refused(e)),
    }
    match &taken_from {
        Some(closed) => {
            tracing::info!(tenant_id = %tenant_id, phone_number_id = %record.phone_number_id, previous_tenant_id = %closed, "phone number added, taken over from a closed tenant");
        }
        None => {
            tracing::info!(tenant_id = %tenant_id, phone_number_id = %record.phone_number_id, "phone number added");
        }
    }
    // What Meta says of the number (its throughput tier, quality, display), read at once:
    // one at a higher tier was paced at the default until the next daily run. Bounded,
    // and its failure only logged (the daily run reads it again).
    let until = tokio::time::Instant::now() + NUMBER_READ_TIME;
    let read = sync_one_from_meta(deps, &tenant, &record, until).await;
    tracing::debug!(
        read = read.read,
        updated = read.updated,
        failed = read.failed,
        "new number read from Meta"
    );
    let record = if read.updated > 0 {
        deps.numbers
            .get_phone_number(tenant_id, &record.phone_number_id)
            .await
            .ok()
            .flatten()
            .unwrap_or(record)
    } else {
        record
    };
    if !known_wabas.contains(&record.waba_id) {
        // Bounded as at onboarding: the number is added whatever Meta does, and the answer
        // (and the call's audit event, recorded after it) must not wait past API Gateway's
        // 30 s for a slow or long catalogue; the daily sync reads the rest.
        let wabas = [record.waba_id.clone()];
        match super::templates::sync_all_within(
            deps,
            &tenant,
            &wabas,
            super::templates::ONBOARDING_SYNC_TIME,
        )
        .await
        {
            Ok(s) => tracing::info!(synced = s.synced, "new WABA's catalogue synced"),
            Err(e) => tracing::warn!(error = %e, "new WABA's catalogue not synced"),
        }
    }
    Ok(Added {
        number: record,
        taken_from,
    })
}

/// The operator removes a number; never the last one (`Conflict`). Removing the default
/// number makes another the default first (the lowest phone number id of the rest): each
/// step a conditional write, so a removal cut short between them leaves the tenant with
/// its new default and the old number, and is simply asked again.
pub async fn remove(
    deps: &Deps,
    tenant_id: &TenantId,
    phone_number_id: &str,
) -> Result<(), ServiceError> {
    let tenant = open_tenant(deps, tenant_id).await?;
    if phone_number_id == tenant.phone_number_id {
        let next = records(deps, &tenant)
            .await?
            .into_iter()
            .find(|n| n.phone_number_id != phone_number_id);
        let Some(next) = next else {
            return Err(ServiceError::Conflict(
                "this is the account's last number (a tenant keeps at least one); add another \
                 first"
                    .into(),
            ));
        };
        // The next number removed meanwhile (by another instance): this one stays the
        // default; asked again, the remove picks another.
        set_default(deps, &tenant, &next.phone_number_id)
            .await
            .map_err(|e| match e {
                ServiceError::NotFound => ServiceError::Conflict(
                    "the number the default was moving to was removed meanwhile; try again".into(),
                ),
                e => e,
            })?;
        tracing::info!(tenant_id = %tenant_id, phone_number_id = %next.phone_number_id, "default moved to remove the old one");
    }
    if deps
        .numbers
        .get_phone_number(tenant_id, phone_number_id)
        .await?
        .is_none()
    {
        return Err(ServiceError::NotFound);
    }
    deps.numbers
        .remove_phone_number(tenant_id, phone_number_id)
        .await?;
    tracing::info!(tenant_id = %tenant_id, phone_number_id, "phone number removed");
    Ok(())
}

/// An admin makes one of the tenant's numbers the default. The tenant is read afresh (the
/// caller's may be a warm copy up to 5 s old): a copy from before another process moved
/// the default would answer "already the default" without writing, or store the item of
/// a number just removed again.
pub async fn set_default(
    deps: &Deps,
    tenant: &Tenant,
    phone_number_id: &str,
) -> Result<PhoneNumberRecord, ServiceError> {
    let tenant = &open_tenant(deps, &tenant.id).await?;
    if tenant.phone_number_id == phone_number_id {
        return sender(deps, tenant, None).await;
    }
    let number = deps
        .numbers
        .get_phone_number(&tenant.id, phone_number_id)
        .await?
        .ok_or(ServiceError::NotFound)?;
    materialise(deps, tenant).await?;
    match deps.numbers.set_default_number(&tenant.id, &number).await {
        // The number's item is gone (removed since a warm copy of it was read; the tenant
        // was read afresh above, so it is not closed): no longer the tenant's.
        Err(StoreError::Conflict(_)) => return Err(ServiceError::NotFound),
        other => other?,
    }
    tracing::info!(tenant_id = %tenant.id, phone_number_id, "default phone number set");
    Ok(number)
}

/// What accepting a send needs of its number: its id and WABA (whose catalogue decides
/// the template). The default number's are on the tenant item: read only for another.
pub struct SendingNumber {
    pub phone_number_id: String,
    pub waba_id: String,
}

/// The number a new send or broadcast goes from ([`sender`]: `from`, else the default),
/// refused with `SenderHeld` while Meta's limit holds it. The number's item is read
/// through the warm read cache (`KIRIM_READ_CACHE_TTL`), so a hold bites within that.
pub async fn open_sender(
    deps: &Deps,
    tenant: &Tenant,
    from: Option<&str>,
) -> Result<SendingNumber, ServiceError> {
    let n = match from {
        Some(id) if id != tenant.phone_number_id => sender(deps, tenant, from).await?,
        // The default: its item, for its hold. A tenant from before numbers had items
        // has none; it is written once (best effort), so that later sends find it in the
        // warm cache rather than read a missing item, twice, every time.
        _ => match deps
            .numbers
            .get_phone_number(&tenant.id, &tenant.phone_number_id)
            .await?
        {
            Some(n) => n,
            None => {
                if let Err(e) = materialise_fresh(deps, &tenant.id, &tenant.phone_number_id).await {
                    tracing::warn!(tenant_id = %tenant.id, error = %e, "the default number's item not written");
                }
                from_tenant(tenant)
            }
        },
    };
    if let Some(h) = &n.hold {
        return Err(ServiceError::SenderHeld(format!(
            "phone number {} is held: Meta limited sending from it (error {}) at {}; nothing was sent or debited. Send from another number, or an admin resumes it (POST /v1/phone-numbers/{}/resume) once its quality has recovered",
            n.phone_number_id,
            h.code,
            h.since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            n.phone_number_id
        )));
    }
    Ok(SendingNumber {
        phone_number_id: n.phone_number_id,
        waba_id: n.waba_id,
    })
}

/// [`sender`] without a read for the default number (a replay's catalogue).
pub async fn sending_from(
    deps: &Deps,
    tenant: &Tenant,
    from: Option<&str>,
) -> Result<SendingNumber, ServiceError> {
    match from {
        None => Ok(SendingNumber {
            phone_number_id: tenant.phone_number_id.clone(),
            waba_id: tenant.waba_id.clone(),
        }),
        Some(id) if id == tenant.phone_number_id => Ok(SendingNumber {
            phone_number_id: tenant.phone_number_id.clone(),
            waba_id: tenant.waba_id.clone(),
        }),
        Some(id) => sender(deps, tenant, Some(id)).await.map(|n| SendingNumber {
            phone_number_id: n.phone_number_id,
            waba_id: n.waba_id,
        }),
    }
}

/// The number a send goes from: `from` if it is one of the tenant's (else
/// `UnknownSender`), the default number without it.
pub async fn sender(
    deps: &Deps,
    tenant: &Tenant,
    from: Option<&str>,
) -> Result<PhoneNumberRecord, ServiceError> {
    let id = from.unwrap_or(&tenant.phone_number_id);
    // Not Meta's numeric id: no number of anyone's, asked of no store (DynamoDB refuses a
    // key over 1 KB with a 500).
    let lookup = if check_numeric_id("from", id).is_ok() {
        deps.numbers.get_phone_number(&tenant.id, id).await?
    } else {
        None
    };
    match lookup {
        Some(n) => Ok(n),
        None if id == tenant.phone_number_id => Ok(from_tenant(tenant)),
        None => Err(ServiceError::UnknownSender(format!(
            "from `{}` is not one of this account's phone numbers; GET /v1/phone-numbers lists them",
            id.chars().take(40).collect::<String>()
        ))),
    }
}

/// Meta named the tenant's number `phone_number_id` as `display` (an inbound message's
/// `metadata`): recorded on a number stored without a display (onboarded or added without
/// one), once — Meta's quality updates name a number only by its display, so until then
/// they could not find it. A default number from before numbers had items has none to
/// record it on: its item is written, with the display, while the tenant is open (the
/// check travels with the write), as [`materialise`] writes it. A cached read first: a
/// number that has its display costs no write. Best effort (logged): the inbound
/// message's own work does not wait on it.
pub async fn learn_display(deps: &Deps, tenant: &TenantId, phone_number_id: &str, display: &str) {
    if check_display(display).is_err()
        || check_numeric_id("phone_number_id", phone_number_id).is_err()
    {
        return;
    }
    let result = async {
        match deps
            .numbers
            .get_phone_number(tenant, phone_number_id)
            .await?
        {
            Some(n) if n.display_phone_number.is_none() => {
                deps.numbers
                    .learn_display_number(tenant, phone_number_id, display)
                    .await
            }
            Some(_) => Ok(false),
            None => learn_default_display(deps, tenant, phone_number_id, display).await,
        }
    }
    .await;
    match result {
        Ok(true) => tracing::debug!(%phone_number_id, "the number's display learnt from Meta"),
        Ok(false) => {}
        Err(e) => tracing::warn!(%phone_number_id, error = %e, "the number's display not learnt"),
    }
}

/// [`learn_display`] for a number with no item: the tenant's default number from before
/// numbers had items gets its item, with the display (read afresh: only the default, and
/// only while the tenant is open). Another number without an item (removed a moment ago)
/// is left alone.
async fn learn_default_display(
    deps: &Deps,
    tenant: &TenantId,
    phone_number_id: &str,
    display: &str,
) -> Result<bool, StoreError> {
    let Some(t) = deps.tenants.get_tenant(tenant).await? else {
        return Ok(false);
    };
    if t.phone_number_id != phone_number_id || t.status == TenantStatus::Closed {
        return Ok(false);
    }
    let number = PhoneNumberRecord {
        display_phone_number: Some(display.to_owned()),
        ..from_tenant(&t)
    };
    match deps.numbers.put_phone_number_if_absent(&number).await {
        Ok(true) => Ok(true),
        // Written since (a change to the tenant's numbers materialised it): recorded on it
        // as on any item, if it has none.
        Ok(false) => {
            deps.numbers
                .learn_display_number(tenant, phone_number_id, display)
                .await
        }
        // Closed since the read: nothing of a closed tenant is written.
        Err(StoreError::Conflict(m)) if m == crate::ports::TENANT_CLOSED => Ok(false),
        Err(e) => Err(e),
    }
}

/// What applying a quality webhook did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    Yes,
    /// No tenant has the number (or the event changes nothing).
    Ignored,
}

/// Meta's `phone_number_quality_update`: the number's quality and throughput. The number
/// is found by its id when Meta gives one, else by its display number among the numbers
/// of the tenants on the webhook's WABA.
pub async fn apply_quality(
    deps: &Deps,
    update: &NumberQualityUpdate,
) -> Result<Applied, ServiceError> {
    if update.quality.is_none() && update.throughput_per_sec.is_none() {
        return Ok(Applied::Ignored);
    }
    let Some((tenant, number)) = find(deps, update).await? else {
        tracing::info!(waba_id = %update.waba_id, "quality update for a number no tenant has; ignored");
        return Ok(Applied::Ignored);
    };
    if tenant.status == TenantStatus::Closed {
        return Ok(Applied::Ignored);
    }
    materialise(deps, &tenant).await?;
    // Only what the event says: the other field is left as it is, not written back from a
    // read that may be a moment old (a newer change of it could be undone).
    match deps
        .numbers
        .set_number_quality(
            &tenant.id,
            &number.phone_number_id,
            update.quality,
            update.throughput_per_sec,
            // Never more than 5 minutes ahead of now: a skewed (or bogus) clock's time would
            // hold off every later change of the number until then.
            update.meta_time.map(|t| {
                t.min(deps.clock.now().timestamp() + crate::ports::SYNC_STAMP_MARGIN_SECS)
            }),
        )
        .await?
    {
        Some(n) => {
            tracing::info!(
                tenant_id = %tenant.id,
                phone_number_id = %number.phone_number_id,
                quality = n.quality.as_str(),
                throughput_per_sec = n.throughput_per_sec,
                "phone number quality updated"
            );
            Ok(Applied::Yes)
        }
        None => Ok(Applied::Ignored),
    }
}

fn digits(s: &str) -> String {
    s.chars().filter(char::is_ascii_digit).collect()
}

async fn find(
    deps: &Deps,
    update: &NumberQualityUpdate,
) -> Result<Option<(Tenant, PhoneNumberRecord)>, ServiceError> {
    if let Some(pnid) = &update.phone_number_id {
        let Some(t) = deps.tenants.tenant_by_phone_number_id(pnid).await? else {
            return Ok(None);
        };
        let Some(tenant) = deps.tenants.get_tenant(&t).await? else {
            return Ok(None);
        };
        // Not one of the tenant's numbers: ignored. A storage failure is an error (the
        // webhook answers 500 and Meta delivers the update again), never "ignored".
        return match sender(deps, &tenant, Some(pnid)).await {
            Ok(n) => Ok(Some((tenant, n))),
            Err(ServiceError::UnknownSender(_)) => Ok(None),
            Err(e) => Err(e),
        };
    }
    let Some(display) = update.display_phone_number.as_deref().map(digits) else {
        return Ok(None);
    };
    if display.is_empty() || update.waba_id.is_empty() {
        return Ok(None);
    }
    for t in deps.tenants.tenants_by_waba(&update.waba_id).await? {
        // A closed tenant's numbers stay (with their TTLs) after its close-out freed them:
        // the number may be another tenant's on this WABA now, with the same display.
        let Some(tenant) = deps
            .tenants
            .get_tenant(&t)
            .await?
            .filter(|t| t.status != TenantStatus::Closed)
        else {
            continue;
        };
        for n in records(deps, &tenant).await? {
            if n.waba_id == update.waba_id
                && n.display_phone_number.as_deref().map(digits).as_deref() == Some(&display)
            {
                return Ok(Some((tenant, n)));
            }
        }
    }
    Ok(None)
}

/// Numbers the daily sync reads from Meta per run at most (one small request each).
pub const MAX_SCHEDULED_NUMBERS: usize = 1000;

/// What reading a tenant's numbers from Meta did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NumbersRead {
    /// Numbers Meta described.
    pub read: usize,
    /// Of those, numbers whose quality, throughput or display changed.
    pub updated: usize,
    /// Numbers not read (Meta's error, no answer in time, no token, a storage failure):
    /// what was known of them is left as it was.
    pub failed: usize,
    /// The run's time ran out before every number was read.
    pub out_of_time: bool,
}

/// Reads the tenant's numbers from Meta with its token (`GET /{phone_number_id}`), at most
/// `max`, none begun after `until` (one still being read then is given up), and records
/// what Meta says: the quality and throughput through [`PhoneNumberStore::
/// set_number_quality`], stamped with the read's time less [`SYNC_STAMP_MARGIN_SECS`] (as
/// the template sync stamps its writes), so that a webhook of Meta's newer than the read
/// is never undone by it, and an older one redelivered later never undoes the read; the
/// display, for a number that has none ([`learn_display`]). A field Meta leaves out, or
/// says in a way Kirim does not know, is left as it is. A number Meta refuses to describe
/// is logged and counted, its stored values kept, and the next one read.
///
/// [`PhoneNumberStore::set_number_quality`]: crate::ports::PhoneNumberStore::set_number_quality
/// [`SYNC_STAMP_MARGIN_SECS`]: crate::ports::SYNC_STAMP_MARGIN_SECS
pub async fn sync_from_meta(
    deps: &Deps,
    tenant: &Tenant,
    until: tokio::time::Instant,
    max: usize,
) -> NumbersRead {
    if max == 0 {
        return NumbersRead::default();
    }
    let stored = match deps.numbers.list_phone_numbers(&tenant.id).await {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(tenant_id = %tenant.id, error = %e, "numbers not listed for their read from Meta");
            return NumbersRead {
                failed: 1,
                ..NumbersRead::default()
            };
        }
    };
    // The default number from before numbers had items is read too (its item is written
    // when something is learnt of it).
    let legacy_default = !stored
        .iter()
        .any(|n| n.phone_number_id == tenant.phone_number_id);
    let mut numbers = stored;
    if legacy_default {
        numbers.insert(0, from_tenant(tenant));
    }
    read_from_meta(deps, tenant, &numbers, legacy_default, until, max).await
}

/// [`sync_from_meta`] of one number of the tenant's, just added (its item, as written):
/// what Meta says of it (a number already at a higher throughput tier, its quality) is
/// known at once, not at the next daily run or webhook.
pub async fn sync_one_from_meta(
    deps: &Deps,
    tenant: &Tenant,
    number: &PhoneNumberRecord,
    until: tokio::time::Instant,
) -> NumbersRead {
    read_from_meta(deps, tenant, std::slice::from_ref(number), false, until, 1).await
}

/// Reads `numbers` (at most `max`) from Meta and records what it says; `legacy_default`:
/// the tenant's default number among them has no item of its own yet.
async fn read_from_meta(
    deps: &Deps,
    tenant: &Tenant,
    numbers: &[PhoneNumberRecord],
    legacy_default: bool,
    until: tokio::time::Instant,
    max: usize,
) -> NumbersRead {
    let mut done = NumbersRead::default();
    let token = match deps.secrets.current(&tenant.meta_token_secret).await {
        Ok(Some(t)) => t,
        Ok(None) => {
            tracing::warn!(tenant_id = %tenant.id, "no Meta access token: the tenant's numbers not read");
            done.failed += numbers.len().min(max);
            return done;
        }
        Err(e) => {
            tracing::warn!(tenant_id = %tenant.id, error = %e, "Meta access token not read: the tenant's numbers not read");
            done.failed += numbers.len().min(max);
            return done;
        }
    };
    for number in numbers.iter().take(max) {
        if tokio::time::Instant::now() >= until {
            done.out_of_time = true;
            break;
        }
        let pnid = &number.phone_number_id;
        // Stamped with when the read began: what Meta answers is no older than that.
        let started = deps.clock.now();
        let read = match tokio::time::timeout_at(until, deps.meta.get_phone_number(pnid, &token))
            .await
        {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => {
                tracing::warn!(tenant_id = %tenant.id, phone_number_id = %pnid, error = %e, "number not read from Meta; what is known of it is kept");
                done.failed += 1;
                continue;
            }
            Err(_) => {
                tracing::warn!(tenant_id = %tenant.id, phone_number_id = %pnid, "number read from Meta cut short: the run's time is up");
                done.failed += 1;
                done.out_of_time = true;
                break;
            }
        };
        // An answer about another number is not this one's.
        if read.id.as_deref().is_some_and(|id| id != pnid) {
            tracing::warn!(tenant_id = %tenant.id, phone_number_id = %pnid, "Meta described another number; nothing recorded");
            done.failed += 1;
            continue;
        }
        done.read += 1;
        let legacy = legacy_default && *pnid == tenant.phone_number_id;
        match record_read(deps, tenant, number, legacy, &read, started).await {
            Ok(true) => done.updated += 1,
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(tenant_id = %tenant.id, phone_number_id = %pnid, error = %e, "number's read from Meta not recorded");
                done.failed += 1;
            }
        }
        tracing::debug!(
            tenant_id = %tenant.id,
            phone_number_id = %pnid,
            messaging_limit_tier = read.messaging_limit_tier.as_deref(),
            name_status = read.name_status.as_deref(),
            "number read from Meta"
        );
    }
    done
}

/// Writes what Meta's read of `number` (begun at `started`) said; `true` when it changed
/// something.
async fn record_read(
    deps: &Deps,
    tenant: &Tenant,
    number: &PhoneNumberRecord,
    legacy: bool,
    read: &crate::domain::number::MetaPhoneNumber,
    started: chrono::DateTime<chrono::Utc>,
) -> Result<bool, ServiceError> {
    let pnid = &number.phone_number_id;
    let mut changed = false;
    if let Some(display) = read
        .display_phone_number
        .as_deref()
        .filter(|_| number.display_phone_number.is_none())
    {
        // Writes the legacy default number's item, with its display, as well.
        learn_display(deps, &tenant.id, pnid, display).await;
        changed = true;
    }
    // Only what Meta said; written even when it is what is stored, so that its time
    // refuses an older webhook delivered late.
    let (quality, throughput) = (read.quality, read.throughput_per_sec);
    if quality.is_none() && throughput.is_none() {
        return Ok(changed);
    }
    if legacy {
        materialise(deps, tenant).await?;
    }
    let stamp = started.timestamp() - crate::ports::SYNC_STAMP_MARGIN_SECS;
    match deps
        .numbers
        .set_number_quality(&tenant.id, pnid, quality, throughput, Some(stamp))
        .await?
    {
        Some(n)
            if n.quality != number.quality || n.throughput_per_sec != number.throughput_per_sec =>
        {
            tracing::info!(
                tenant_id = %tenant.id,
                phone_number_id = %pnid,
                quality = n.quality.as_str(),
                throughput_per_sec = n.throughput_per_sec,
                "phone number quality read from Meta"
            );
            Ok(true)
        }
        Some(_) => Ok(changed),
        // A newer webhook's, kept.
        None => Ok(changed),
    }
}
