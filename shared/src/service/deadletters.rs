//! Parked messages, for operators: what sits on each dead-letter queue, described by the
//! metadata of its job (kind, tenant, message) and never by its body, which may hold
//! message content; and the redrive that moves them back to their source queue.
//!
//! A redriven send job cannot send twice: the dispatcher only claims an `accepted`
//! message, so a job whose message was already sent (or failed for good) is a duplicate
//! it deletes. A redriven status callback is delivered again (tenants dedupe on
//! `message_id` + `sequence`, as for any redelivery).

use std::collections::BTreeSet;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::errors::ServiceError;
use super::jobs::QueueJob;
use super::Deps;
use crate::ports::{DeadLetter, DispatchQueue};

/// The most dead letters one listing answers.
pub const MAX_LIST: usize = 100;
/// The most one redrive moves (call again while `more`).
pub const MAX_REDRIVE: usize = 100;
/// The longest dead-letter id accepted (SQS message ids are 36 characters).
const MAX_ID_LEN: usize = 100;

/// A source queue and its dead-letter queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueName {
    Dispatch,
    StatusCallback,
}

impl QueueName {
    pub const ALL: [QueueName; 2] = [QueueName::Dispatch, QueueName::StatusCallback];

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "dispatch" => Some(QueueName::Dispatch),
            "status_callback" => Some(QueueName::StatusCallback),
            _ => None,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            QueueName::Dispatch => "dispatch",
            QueueName::StatusCallback => "status_callback",
        }
    }

    fn of(self, deps: &Deps) -> &Arc<dyn DispatchQueue> {
        match self {
            QueueName::Dispatch => &deps.queue,
            QueueName::StatusCallback => &deps.callback_queue,
        }
    }
}

/// What an operator sees of a parked message: ids and counts, no content.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DeadLetterView {
    pub queue: QueueName,
    pub id: String,
    /// `send`, `broadcast_fanout`, `status_callback`, `template_refresh`, or `unreadable`
    /// (a poison body).
    pub kind: &'static str,
    pub tenant_id: Option<String>,
    pub message_id: Option<String>,
    pub receive_count: u32,
    pub sent_at: DateTime<Utc>,
}

impl DeadLetterView {
    fn of(queue: QueueName, d: &DeadLetter) -> Self {
        let (kind, tenant_id, message_id) = match QueueJob::parse(&d.body) {
            Some(QueueJob::Send(j)) => ("send", Some(j.tenant_id), Some(j.message_id)),
            Some(QueueJob::BroadcastFanout(j)) => ("broadcast_fanout", Some(j.tenant_id), None),
            Some(QueueJob::TemplateRefresh(j)) => ("template_refresh", Some(j.tenant_id), None),
            Some(QueueJob::StatusCallback(j)) => {
                ("status_callback", Some(j.tenant_id), Some(j.message_id))
            }
            None => ("unreadable", None, None),
        };
        DeadLetterView {
            queue,
            id: d.id.clone(),
            kind,
            tenant_id: tenant_id.map(|t| t.to_string()),
            message_id: message_id.map(|m| m.to_string()),
            receive_count: d.receive_count,
            sent_at: d.sent_at,
        }
    }
}

/// Up to `limit` parked messages of `queue` (of both, dispatch first, when `None`).
pub async fn list(
    deps: &Deps,
    queue: Option<QueueName>,
    limit: usize,
) -> Result<Vec<DeadLetterView>, ServiceError> {
    let limit = limit.clamp(1, MAX_LIST);
    let mut out = Vec::new();
    for q in QueueName::ALL {
        if queue.is_some_and(|only| only != q) || out.len() >= limit {
            continue;
        }
        let parked = q.of(deps).dead_letters(limit - out.len()).await?;
        out.extend(parked.iter().map(|d| DeadLetterView::of(q, d)));
    }
    Ok(out)
}

/// `POST /v1/platform/dead-letters/redrive`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedriveRequest {
    pub queue: QueueName,
    /// The dead letters to move; every one (up to [`MAX_REDRIVE`]) when absent.
    #[serde(default, deserialize_with = "crate::domain::fields::non_null")]
    pub ids: Option<Vec<String>>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RedriveReport {
    pub queue: QueueName,
    pub redriven: usize,
    /// The dead-letter ids moved.
    pub ids: Vec<String>,
    /// Asked-for ids not parked (any more) on the queue.
    pub not_found: Vec<String>,
    /// Ids found but not taken back by the source queue this time (its send refused
    /// them): still parked; call again.
    pub still_parked: Vec<String>,
    /// More may be left: call again (only when every one was asked for).
    pub more: bool,
}

/// Checks `ids`: none empty or overlong, at most [`MAX_REDRIVE`], without repeats.
fn checked_ids(ids: Option<Vec<String>>) -> Result<Option<Vec<String>>, ServiceError> {
    let Some(ids) = ids else { return Ok(None) };
    let invalid = |m: &str| Err(ServiceError::InvalidRequest(m.to_owned()));
    if ids.is_empty() {
        return invalid("ids must not be empty; leave it out to redrive every parked message");
    }
    if ids.len() > MAX_REDRIVE {
        return invalid("at most 100 ids per call");
    }
    if ids
        .iter()
        .any(|i| i.is_empty() || i.len() > MAX_ID_LEN || !i.chars().all(|c| c.is_ascii_graphic()))
    {
        return invalid("each id must be a dead-letter id from GET /v1/platform/dead-letters");
    }
    let mut seen = BTreeSet::new();
    Ok(Some(
        ids.into_iter().filter(|i| seen.insert(i.clone())).collect(),
    ))
}

/// Moves parked messages back to their source queue.
pub async fn redrive(deps: &Deps, req: RedriveRequest) -> Result<RedriveReport, ServiceError> {
    let ids = checked_ids(req.ids)?;
    let moved = req
        .queue
        .of(deps)
        .redrive(ids.as_deref(), MAX_REDRIVE)
        .await?;
    let not_found = ids
        .unwrap_or_default()
        .into_iter()
        .filter(|i| !moved.moved.contains(i) && !moved.unsent.contains(i))
        .collect::<Vec<_>>();
    tracing::info!(
        queue = req.queue.as_str(),
        redriven = moved.moved.len(),
        not_found = not_found.len(),
        more = moved.more,
        "dead letters redriven"
    );
    Ok(RedriveReport {
        queue: req.queue,
        redriven: moved.moved.len(),
        ids: moved.moved,
        not_found,
        still_parked: moved.unsent,
        more: moved.more,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_must_be_few_nonempty_and_plain() {
        assert!(checked_ids(Some(vec![])).is_err());
        assert!(checked_ids(Some(vec![String::new()])).is_err());
        assert!(checked_ids(Some(vec!["a b".into()])).is_err());
        assert!(checked_ids(Some(vec!["x".repeat(101)])).is_err());
        assert!(checked_ids(Some((0..101).map(|i| i.to_string()).collect())).is_err());
        assert_eq!(
            checked_ids(Some(vec!["a".into(), "a".into(), "b".into()])).unwrap(),
            Some(vec!["a".to_owned(), "b".to_owned()])
        );
        assert_eq!(checked_ids(None).unwrap(), None);
    }

    #[test]
    fn a_view_names_the_job_but_never_carries_its_body() {
        let body = serde_json::json!({"kind": "send", "tenant_id": "01M8A4QYT0RBRC6R7KYPH4H27B",
            "message_id": "01M8A4QYT0RBRC6R7KYPH4H27C",
            "content": {"kind": "text", "body": "SECRET-CONTENT"}})
        .to_string();
        let d = DeadLetter {
            id: "m-1".into(),
            body,
            receive_count: 10,
            sent_at: Utc::now(),
        };
        let v = DeadLetterView::of(QueueName::Dispatch, &d);
        let json = serde_json::to_string(&v).unwrap();
        assert!(!json.contains("SECRET-CONTENT"), "{json}");
        assert_eq!(v.kind, "send");
        assert_eq!(v.message_id.as_deref(), Some("01M8A4QYT0RBRC6R7KYPH4H27C"));
        let refresh = DeadLetter {
            body: serde_json::json!({"kind": "template_refresh",
                "tenant_id": "01M8A4QYT0RBRC6R7KYPH4H27B", "waba_id": "1000001",
                "name": "order_update", "language": "en_US"})
            .to_string(),
            ..d.clone()
        };
        let v = DeadLetterView::of(QueueName::Dispatch, &refresh);
        assert_eq!(
            (v.kind, v.tenant_id.as_deref(), v.message_id),
            ("template_refresh", Some("01M8A4QYT0RBRC6R7KYPH4H27B"), None)
        );
        let poison = DeadLetter {
            body: "not json SECRET-CONTENT".into(),
            ..d
        };
        let v = DeadLetterView::of(QueueName::Dispatch, &poison);
        assert_eq!(
            (v.kind, v.tenant_id, v.message_id),
            ("unreadable", None, None)
        );
    }
}
