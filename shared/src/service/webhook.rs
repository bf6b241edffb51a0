//! Meta's webhooks: signature over the raw bytes, then every status applied forward-only.

use chrono::{DateTime, TimeZone, Utc};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use crate::domain::{MessageError, MessageId, MessageStatus, TenantId};
use crate::ports::{StatusChange, Transition};

use super::errors::ServiceError;
use super::Deps;

/// Checks `X-Hub-Signature-256: sha256=<hex>` against the current and the previous app
/// secret (rotation), in constant time.
pub async fn verify_signature(
    deps: &Deps,
    raw: &[u8],
    header: Option<&str>,
) -> Result<bool, ServiceError> {
    let Some(sig) = header
        .and_then(|h| h.strip_prefix("sha256="))
        .and_then(|h| hex::decode(h.trim()).ok())
    else {
        return Ok(false);
    };
    let name = &deps.settings.meta_app_secret;
    let secrets = [
        deps.secrets.current(name).await?,
        deps.secrets.previous(name).await?,
    ];
    for secret in secrets.into_iter().flatten() {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes()) else {
            continue;
        };
        mac.update(raw);
        if mac.verify_slice(&sig).is_ok() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The subscription handshake: the challenge back if the verify token matches.
pub async fn verify_subscription(
    deps: &Deps,
    mode: Option<&str>,
    token: Option<&str>,
) -> Result<bool, ServiceError> {
    let expected = deps
        .secrets
        .current(&deps.settings.meta_verify_token_secret)
        .await?;
    Ok(
        mode == Some("subscribe")
            && matches!((expected, token), (Some(e), Some(t)) if e.matches(t)),
    )
}

// Lenient shapes: unknown fields are ignored, missing ones default, so new fields
// Meta adds never break us.
#[derive(Deserialize, Default)]
struct Notification {
    #[serde(default)]
    entry: Vec<Entry>,
}

#[derive(Deserialize, Default)]
struct Entry {
    /// The WhatsApp Business Account id.
    #[serde(default)]
    id: String,
    #[serde(default)]
    changes: Vec<Change>,
}

#[derive(Deserialize, Default)]
struct Change {
    #[serde(default)]
    field: String,
    #[serde(default)]
    value: ChangeValue,
}

#[derive(Deserialize, Default)]
struct ChangeValue {
    /// `account_update`: what happened to the account.
    #[serde(default)]
    event: Option<String>,
    #[serde(default)]
    ban_info: Option<BanInfo>,
    #[serde(default)]
    metadata: Option<Metadata>,
    #[serde(default)]
    statuses: Vec<serde_json::Value>,
    /// Inbound messages: only STOP/START replies matter (service::optouts).
    #[serde(default)]
    messages: Vec<serde_json::Value>,
}

#[derive(Deserialize, Default)]
struct BanInfo {
    #[serde(default)]
    waba_ban_state: Option<String>,
}

#[derive(Deserialize, Default)]
struct Metadata {
    #[serde(default)]
    phone_number_id: String,
}

#[derive(Deserialize)]
pub(super) struct StatusIn {
    pub(super) id: String,
    pub(super) status: String,
    #[serde(default)]
    pub(super) timestamp: Option<String>,
    #[serde(default)]
    pub(super) biz_opaque_callback_data: Option<String>,
    #[serde(default)]
    pub(super) errors: Vec<ErrorIn>,
}

#[derive(Deserialize)]
pub(super) struct ErrorIn {
    pub(super) code: i64,
    #[serde(default)]
    pub(super) title: Option<String>,
    #[serde(default)]
    pub(super) message: Option<String>,
}

#[derive(Debug, Default, Clone, PartialEq, serde::Serialize)]
pub struct WebhookSummary {
    pub applied: usize,
    pub ignored: usize,
    pub unknown: usize,
    pub errors: usize,
}

/// Applies every status in a verified notification. One bad item never drops the rest.
pub async fn apply(deps: &Deps, raw: &[u8]) -> Result<WebhookSummary, ServiceError> {
    let note: Notification = serde_json::from_slice(raw)
        .map_err(|_| ServiceError::InvalidRequest("the body is not a Meta notification".into()))?;
    let mut summary = WebhookSummary::default();
    for entry in &note.entry {
        for change in entry.changes.iter().filter(|c| c.field == "account_update") {
            match account_update(deps, &entry.id, &change.value).await {
                Ok(0) => summary.ignored += 1,
                Ok(_) => summary.applied += 1,
                Err(e) => {
                    tracing::error!(error = %e, "account update not applied");
                    summary.errors += 1;
                }
            }
        }
    }
    for change in note.entry.iter().flat_map(|e| &e.changes) {
        let pnid = change
            .value
            .metadata
            .as_ref()
            .map(|m| m.phone_number_id.as_str())
            .unwrap_or_default();
        let tenant = if pnid.is_empty() {
            None
        } else {
            match deps.tenants.tenant_by_phone_number_id(pnid).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::error!(error = %e, "tenant lookup failed");
                    summary.errors += change.value.statuses.len() + change.value.messages.len();
                    continue;
                }
            }
        };
        for raw_status in &change.value.statuses {
            match apply_status(deps, tenant.as_ref(), raw_status).await {
                Ok(Applied::Yes) => summary.applied += 1,
                Ok(Applied::NoChange) => summary.ignored += 1,
                Ok(Applied::UnknownMessage) => summary.unknown += 1,
                Err(e) => {
                    tracing::error!(error = %e, "status not applied");
                    summary.errors += 1;
                }
            }
        }
        for inbound in &change.value.messages {
            match super::optouts::apply_inbound(deps, tenant.as_ref(), inbound).await {
                Ok(super::optouts::Inbound::Nothing) => summary.ignored += 1,
                Ok(_) => summary.applied += 1,
                Err(e) => {
                    tracing::error!(error = %e, "inbound message not applied");
                    summary.errors += 1;
                }
            }
        }
    }
    Ok(summary)
}

/// Meta restricted, disabled or banned the account (or is about to): pause every tenant
/// on that WABA, as Meta would refuse their sends anyway. A reinstatement is left to the
/// operator (who resumes the tenant). Answers how many tenants were paused.
async fn account_update(
    deps: &Deps,
    waba_id: &str,
    value: &ChangeValue,
) -> Result<usize, ServiceError> {
    let event = value.event.as_deref().unwrap_or_default();
    let ban_state = value
        .ban_info
        .as_ref()
        .and_then(|b| b.waba_ban_state.as_deref());
    let stops = match event {
        "ACCOUNT_RESTRICTION" | "ACCOUNT_VIOLATION" | "ACCOUNT_DELETED" => true,
        "DISABLED_UPDATE" => ban_state != Some("REINSTATE"),
        _ => false,
    };
    if !stops || waba_id.is_empty() {
        tracing::info!(event = %event, "account update needs no action");
        return Ok(0);
    }
    let tenants = deps.tenants.tenants_by_waba(waba_id).await?;
    let reason = match ban_state {
        Some(b) => format!("meta account_update: {event} ({b})"),
        None => format!("meta account_update: {event}"),
    };
    for t in &tenants {
        super::dispatch::pause_tenant(deps, t, &reason).await;
    }
    Ok(tenants.len())
}

pub(super) enum Applied {
    Yes,
    NoChange,
    UnknownMessage,
}

pub(super) async fn resolve(
    deps: &Deps,
    tenant: Option<&TenantId>,
    status: &StatusIn,
) -> Result<Option<(TenantId, MessageId)>, ServiceError> {
    if let (Some(t), Some(id)) = (
        tenant,
        status
            .biz_opaque_callback_data
            .as_deref()
            .and_then(MessageId::parse),
    ) {
        if let Some(m) = deps.messages.get_message(t, &id).await? {
            // The callback data must agree with the wamid we recorded, if any.
            if m.wamid.as_deref().is_none_or(|w| w == status.id) {
                return Ok(Some((t.clone(), id)));
            }
        }
    }
    Ok(deps.messages.message_by_wamid(&status.id).await?)
}

pub(super) async fn apply_status(
    deps: &Deps,
    tenant: Option<&TenantId>,
    raw: &serde_json::Value,
) -> Result<Applied, ServiceError> {
    let Ok(status) = StatusIn::deserialize(raw) else {
        return Ok(Applied::NoChange);
    };
    let to = match status.status.as_str() {
        "sent" => MessageStatus::Sent,
        "delivered" => MessageStatus::Delivered,
        "read" => MessageStatus::Read,
        "failed" => MessageStatus::Failed,
        _ => return Ok(Applied::NoChange), // e.g. "deleted", "warning": not ours to track
    };
    let (tenant_id, message_id) = match resolve(deps, tenant, &status).await? {
        Some(found) => found,
        None => match super::pending::keep(deps, tenant, &status).await? {
            Some(found) => found,
            None => return Ok(Applied::UnknownMessage),
        },
    };
    let at: DateTime<Utc> = status
        .timestamp
        .as_deref()
        .and_then(|t| t.parse::<i64>().ok())
        .and_then(|t| Utc.timestamp_opt(t, 0).single())
        .unwrap_or_else(|| deps.clock.now());
    crate::metrics::webhook_lag(to.as_str(), (deps.clock.now() - at).num_milliseconds());
    let error = (to == MessageStatus::Failed).then(|| {
        let e = status.errors.first();
        MessageError {
            code: e.map(|e| e.code.into()).unwrap_or_else(|| "unknown".into()),
            title: e
                .and_then(|e| e.title.clone().or_else(|| e.message.clone()))
                .unwrap_or_else(|| "failed".into()),
        }
    });
    if to == MessageStatus::Failed && status.errors.iter().any(|e| e.code == 131050) {
        // The recipient stopped marketing messages: no more marketing to them.
        super::optouts::marketing_stopped_for(deps, &tenant_id, &message_id, raw).await?;
    }
    let change = StatusChange {
        wamid: Some(status.id.clone()),
        error,
        count_attempt: false,
    };
    match deps
        .messages
        .transition(&tenant_id, &message_id, to, &change, at)
        .await?
    {
        Transition::Applied(record) => {
            super::callbacks::status_changed(deps, &record).await;
            // A failure is applied once (it is terminal), so it is counted once.
            if to == MessageStatus::Failed
                && status
                    .errors
                    .iter()
                    .any(|e| super::quality::UNDELIVERABLE_CODES.contains(&e.code))
            {
                super::quality::count(
                    deps,
                    &tenant_id,
                    crate::ports::QualityCounter::Undeliverable,
                )
                .await;
            }
            tracing::info!(tenant_id = %tenant_id, message_id = %message_id, wamid = %status.id, status = to.as_str(), "status applied");
            Ok(Applied::Yes)
        }
        Transition::Refused => Ok(Applied::NoChange),
    }
}
