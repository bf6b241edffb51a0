//! Statuses that arrive before their message's wamid is known (API.md "Meta webhook"):
//! Meta can report `delivered` before the dispatcher has recorded the wamid Meta gave it.
//! Such a status is kept (no content, no recipient; the `PendingStatus` retention class)
//! and applied, through the same forward-only transition, once the dispatcher records
//! the wamid. A duplicate changes nothing: it is kept once, and applying it again is
//! refused by the forward-only transition.

use serde_json::json;

use crate::domain::{MessageId, RetentionClass, TenantId};
use crate::ports::{PendingError, PendingStatus};

use super::errors::ServiceError;
use super::webhook::{apply_status, resolve, Applied, StatusIn};
use super::Deps;

/// Meta's wamids are ~60 characters; anything far longer is not one (and would not fit
/// in a key).
const MAX_WAMID: usize = 512;

/// Keeps a status that resolved to no message, then looks again (the dispatcher may have
/// recorded the wamid meanwhile; it applies kept statuses only after recording it).
/// Answers the message if it is known now.
pub(super) async fn keep(
    deps: &Deps,
    tenant: Option<&TenantId>,
    status: &StatusIn,
) -> Result<Option<(TenantId, MessageId)>, ServiceError> {
    if status.id.is_empty() || status.id.len() > MAX_WAMID {
        return Ok(None);
    }
    let now = deps.clock.now();
    let pending = PendingStatus {
        wamid: status.id.clone(),
        status: status.status.clone(),
        timestamp: status
            .timestamp
            .as_deref()
            .and_then(|t| t.parse::<i64>().ok())
            .unwrap_or_else(|| now.timestamp()),
        biz_opaque_callback_data: status
            .biz_opaque_callback_data
            .as_deref()
            .and_then(MessageId::parse)
            .map(|id| id.to_string()),
        errors: status
            .errors
            .iter()
            .take(5)
            .map(|e| PendingError {
                code: e.code,
                title: e
                    .title
                    .clone()
                    .or_else(|| e.message.clone())
                    .unwrap_or_default()
                    .chars()
                    .take(200)
                    .collect(),
            })
            .collect(),
        received_at: now,
        expires_at: deps
            .settings
            .retention
            .expiry(RetentionClass::PendingStatus, now),
    };
    let new = deps.pending.put_pending_status(&pending).await?;
    tracing::info!(wamid = %status.id, status = %status.status, new, "status for a wamid not known yet; kept");
    let found = resolve(deps, tenant, status).await?;
    if found.is_some() {
        // Applied by the caller now; the kept copy is no longer needed.
        deps.pending.delete_pending_status(&pending).await?;
    }
    Ok(found)
}

fn rank(status: &str) -> u8 {
    match status {
        "sent" => 1,
        "failed" => 2,
        "delivered" => 3,
        "read" => 4,
        _ => 5,
    }
}

/// Applies what was kept for `wamid` (the dispatcher calls this right after recording
/// it), oldest first, and forgets what was applied or refused. Answers how many changed
/// the message.
pub async fn apply_kept(deps: &Deps, wamid: &str) -> Result<usize, ServiceError> {
    let mut kept = deps.pending.pending_statuses(wamid).await?;
    kept.sort_by_key(|p| (p.timestamp, rank(&p.status)));
    let mut applied = 0;
    for p in kept {
        let raw = json!({
            "id": p.wamid,
            "status": p.status,
            "timestamp": p.timestamp.to_string(),
            "biz_opaque_callback_data": p.biz_opaque_callback_data,
            "errors": p.errors.iter().map(|e| json!({"code": e.code, "title": e.title})).collect::<Vec<_>>(),
        });
        match apply_status(deps, None, &raw).await? {
            Applied::UnknownMessage => continue,
            Applied::Yes => applied += 1,
            Applied::NoChange => {}
        }
        deps.pending.delete_pending_status(&p).await?;
    }
    if applied > 0 {
        tracing::info!(wamid = %wamid, applied, "kept statuses applied");
    }
    Ok(applied)
}
