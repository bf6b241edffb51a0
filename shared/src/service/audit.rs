//! The audit trail: one SHA-256 hash chain per tenant (and one for the platform), so any
//! edit or deletion inside the retained window is detectable. Events expire with the
//! audit retention class; verification starts at the oldest retained link.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::domain::{new_id, RetentionClass, TenantId};
use crate::ports::{AuditEvent, AuditHead, AuditOutcome, AuditQuery};
use crate::store_error::StoreError;

use super::errors::ServiceError;
use super::Deps;

/// The chain for calls that name no tenant (unknown keys, onboarding errors).
pub const PLATFORM_CHAIN: &str = "platform";
/// `prev_hash` of a chain's first event.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What happened, before it is linked into its chain.
#[derive(Clone, Debug)]
pub struct Draft {
    pub tenant: Option<TenantId>,
    pub actor_type: &'static str,
    pub actor_id: String,
    pub action: String,
    pub ip: Option<String>,
    pub outcome: AuditOutcome,
    /// Non-sensitive details only: ids, codes, counts — never content, secrets or
    /// full phone numbers.
    pub details: serde_json::Value,
}

pub fn chain_of(tenant: Option<&TenantId>) -> String {
    tenant.map_or_else(|| PLATFORM_CHAIN.to_owned(), ToString::to_string)
}

/// SHA-256 over the previous hash and every field, as a JSON array (no delimiter
/// ambiguity).
pub fn hash_of(e: &AuditEvent) -> String {
    let canonical = serde_json::json!([
        e.prev_hash,
        e.chain,
        e.seq,
        e.id,
        e.at.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
        e.actor_type,
        e.actor_id,
        e.action,
        e.ip,
        e.outcome,
        e.details,
        e.expires_at,
    ]);
    hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
}

/// Appends an event, retrying when a concurrent append moved the head first.
pub async fn record(deps: &Deps, draft: Draft) -> Result<AuditEvent, ServiceError> {
    let chain = chain_of(draft.tenant.as_ref());
    let details = draft.details.to_string();
    for _ in 0..20 {
        let head = deps.audit.head(&chain).await?;
        let at = deps.clock.now();
        let mut event = AuditEvent {
            chain: chain.clone(),
            seq: head.as_ref().map_or(1, |h| h.seq + 1),
            id: new_id(),
            at,
            actor_type: draft.actor_type.to_owned(),
            actor_id: draft.actor_id.clone(),
            action: draft.action.clone(),
            ip: draft.ip.clone(),
            outcome: draft.outcome,
            details: details.clone(),
            prev_hash: head
                .as_ref()
                .map_or_else(|| GENESIS.to_owned(), |h| h.hash.clone()),
            hash: String::new(),
            expires_at: deps.settings.retention.expiry(RetentionClass::Audit, at),
        };
        event.hash = hash_of(&event);
        match deps.audit.append(&event, head.as_ref()).await {
            Ok(()) => return Ok(event),
            Err(StoreError::Conflict(_)) => {
                let jitter = rand::random::<u64>() % 15;
                tokio::time::sleep(std::time::Duration::from_millis(2 + jitter)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(ServiceError::Unavailable(StoreError::Unavailable(
        "audit chain contended".into(),
    )))
}

/// Records and never fails the caller: the action already happened, so a lost audit
/// write is logged loudly (and alarmed on) instead.
pub async fn record_or_log(deps: &Deps, draft: Draft) {
    let action = draft.action.clone();
    if let Err(e) = record(deps, draft).await {
        tracing::error!(error = %e, action = %action, "AUDIT WRITE FAILED");
    }
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct EventView {
    pub id: String,
    pub seq: u64,
    pub at: DateTime<Utc>,
    pub actor: serde_json::Value,
    pub action: String,
    pub ip: Option<String>,
    pub outcome: AuditOutcome,
    pub details: serde_json::Value,
    pub hash: String,
    pub prev_hash: String,
}

impl From<&AuditEvent> for EventView {
    fn from(e: &AuditEvent) -> Self {
        Self {
            id: e.id.clone(),
            seq: e.seq,
            at: e.at,
            actor: serde_json::json!({"type": e.actor_type, "id": e.actor_id}),
            action: e.action.clone(),
            ip: e.ip.clone(),
            outcome: e.outcome,
            details: serde_json::from_str(&e.details).unwrap_or(serde_json::Value::Null),
            hash: e.hash.clone(),
            prev_hash: e.prev_hash.clone(),
        }
    }
}

pub async fn list(
    deps: &Deps,
    tenant: &TenantId,
    q: &AuditQuery,
) -> Result<(Vec<EventView>, Option<u64>), ServiceError> {
    let (events, next) = deps.audit.list(&chain_of(Some(tenant)), q).await?;
    Ok((events.iter().map(EventView::from).collect(), next))
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct VerifyReport {
    pub valid: bool,
    pub checked: usize,
    /// The first sequence number where the chain breaks, if it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broken_at: Option<u64>,
}

/// Checks a run of retained events, oldest first, against each other and the head. The
/// oldest retained event anchors the chain (older ones expired by design); any edited
/// field, removed event in between, or removed newest event breaks it.
pub fn verify_chain(events: &[AuditEvent], head: Option<&AuditHead>) -> VerifyReport {
    let broken = |at: u64, checked: usize| VerifyReport {
        valid: false,
        checked,
        broken_at: Some(at),
    };
    let mut prev: Option<&AuditEvent> = None;
    for (i, e) in events.iter().enumerate() {
        if hash_of(e) != e.hash {
            return broken(e.seq, i);
        }
        if let Some(p) = prev {
            if e.seq != p.seq + 1 || e.prev_hash != p.hash {
                return broken(e.seq, i);
            }
        } else if e.seq == 1 && e.prev_hash != GENESIS {
            return broken(e.seq, i);
        }
        prev = Some(e);
    }
    match (prev, head) {
        (Some(last), Some(h)) if last.seq != h.seq || last.hash != h.hash => {
            broken(last.seq + 1, events.len())
        }
        (None, Some(h)) if h.seq > 0 && events.is_empty() => VerifyReport {
            // Everything expired: nothing left to contradict the head.
            valid: true,
            checked: 0,
            broken_at: None,
        },
        (Some(last), None) => broken(last.seq, events.len()),
        _ => VerifyReport {
            valid: true,
            checked: events.len(),
            broken_at: None,
        },
    }
}

/// Verifies a tenant's whole retained chain (paged reads).
pub async fn verify(deps: &Deps, tenant: &TenantId) -> Result<VerifyReport, ServiceError> {
    let chain = chain_of(Some(tenant));
    let head = deps.audit.head(&chain).await?;
    let mut events = Vec::new();
    let mut after = None;
    loop {
        let page = deps.audit.ascending(&chain, after, 500).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.seq);
        let full = page.len() == 500;
        events.extend(page);
        if !full {
            break;
        }
    }
    Ok(verify_chain(&events, head.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: u64) -> Vec<AuditEvent> {
        let mut out: Vec<AuditEvent> = Vec::new();
        for seq in 1..=n {
            let mut e = AuditEvent {
                chain: "t".into(),
                seq,
                id: format!("id{seq}"),
                at: Utc::now(),
                actor_type: "api_key".into(),
                actor_id: "k1".into(),
                action: "POST /v1/messages".into(),
                ip: Some("203.0.113.9".into()),
                outcome: AuditOutcome::Success,
                details: r#"{"message_id":"m"}"#.into(),
                prev_hash: out.last().map_or(GENESIS.to_owned(), |p| p.hash.clone()),
                hash: String::new(),
                expires_at: Some(1),
            };
            e.hash = hash_of(&e);
            out.push(e);
        }
        out
    }

    fn head(e: &AuditEvent) -> AuditHead {
        AuditHead {
            seq: e.seq,
            hash: e.hash.clone(),
        }
    }

    #[test]
    fn an_untouched_chain_verifies() {
        let c = chain(5);
        let r = verify_chain(&c, Some(&head(&c[4])));
        assert_eq!((r.valid, r.checked), (true, 5));
    }

    #[test]
    fn an_edited_field_breaks_the_chain_at_that_event() {
        let mut c = chain(5);
        c[2].outcome = AuditOutcome::Denied;
        let r = verify_chain(&c, Some(&head(&c[4])));
        assert_eq!((r.valid, r.broken_at), (false, Some(3)));
    }

    #[test]
    fn an_edit_with_a_recomputed_hash_still_breaks_the_next_link() {
        let mut c = chain(5);
        c[2].details = r#"{"message_id":"other"}"#.into();
        c[2].hash = hash_of(&c[2]);
        let r = verify_chain(&c, Some(&head(&c[4])));
        assert_eq!((r.valid, r.broken_at), (false, Some(4)));
    }

    #[test]
    fn a_deleted_event_in_the_middle_or_at_the_end_is_detected() {
        let c = chain(5);
        let h = head(&c[4]);
        let mut middle = c.clone();
        middle.remove(2);
        assert!(!verify_chain(&middle, Some(&h)).valid);
        let newest_gone = &c[..4];
        assert!(!verify_chain(newest_gone, Some(&h)).valid);
    }

    #[test]
    fn a_chain_whose_oldest_events_expired_still_verifies_from_the_oldest_retained() {
        let c = chain(6);
        let r = verify_chain(&c[3..], Some(&head(&c[5])));
        assert_eq!((r.valid, r.checked), (true, 3));
        assert!(verify_chain(&[], Some(&head(&c[5]))).valid);
    }
}
