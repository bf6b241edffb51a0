//! Queue jobs: every message Kirim puts on a queue, what a handler answers about it
//! ([`Outcome`]), and the retry backoff.
//!
//! One tagged enum, [`QueueJob`], is the wire format of both queues (the dispatch queue
//! carries `send`, `broadcast_fanout` and `template_refresh` jobs, the status-callback queue carries
//! `status_callback` jobs). The dispatch queue is the only place message content lives
//! until it is sent. Bodies written before the tag existed are still read.
//!
//! This module depends on no other service module: every service that enqueues or
//! handles a job depends on it.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::{Content, MessageError, MessageId, MessageStatus, PhoneNumber, TenantId};

/// A message accepted by the send API (or a broadcast's fan-out), to be sent to Meta.
#[derive(Clone, Serialize, Deserialize, Debug, PartialEq)]
pub struct DispatchJob {
    pub tenant_id: TenantId,
    pub message_id: MessageId,
    pub content: Content,
    /// The id of the HTTP request that accepted it, so the dispatcher's log lines carry
    /// it too. Absent on jobs written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Not to be sent before this time: until then the job waits on the queue (see
    /// `schedule`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_at: Option<DateTime<Utc>>,
    /// The broadcast the message belongs to: its claim checks the broadcast's hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broadcast_id: Option<String>,
    /// What the dispatcher's checks before the claim need of the message, so that they
    /// need no read of it (the claim's condition decides whether it is still `accepted`).
    /// Absent on jobs written before it existed: the dispatcher reads the message then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub facts: Option<MessageFacts>,
    /// A retry's backoff longer than one hop: not to be tried before this time. A retry
    /// goes back as a fresh queue message (`dispatch`), so that no one message collects
    /// receives toward the dead-letter redrive across attempts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<DateTime<Utc>>,
    /// The look, due at the sending deadline, at a message Meta's answer left `sending`
    /// (a timeout, an unreadable 5xx): a fresh queue message with its own receives (the
    /// one received had spent some: rechecks reusing it could reach the redrive's limit,
    /// and be expired on the one-day DLQ by its first enqueue time), with no content (the
    /// attempt is made: the content leaves the queue), never claimed
    /// (`deadline::recheck`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recheck: bool,
    /// Meta's final refusal of the attempt an earlier delivery of this job made, whose
    /// `failed` write (with its refund) could not be made: that claim was given back, and
    /// this job fails the message with Meta's reason, refunded, without asking Meta again
    /// (`dispatch`). Absent on every other job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<crate::domain::MessageError>,
    /// The time of a claim Meta refused (its `updated_at`) that could not be given back:
    /// the message is still `sending` under it, and this job gives it back first
    /// (conditional on that very claim; refused, changing nothing, when it was given back),
    /// so that the failure is written, refunded (with `refused`), or the retry claims the
    /// message afresh (a transient refusal's retry, a replaced token's), instead of the
    /// sending deadline ending it `outcome_unknown`, charged. Absent on every other job,
    /// and on jobs queued before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused_claim: Option<DateTime<Utc>>,
    /// The SHA-256 of the `Idempotency-Key` its request came with (never the key): a job
    /// that finds no message while the key names another one belongs to a request that
    /// lost to it (a replay, a concurrent retry), and is dropped at its first look instead
    /// of waiting out `deadline::UNRECORDED_GRACE` (`deadline::redelivered_as`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_hash: Option<String>,
}

/// A message's facts that never change after acceptance: who it goes to, from which of
/// the tenant's numbers (`None`: the default) and what it was charged.
#[derive(Clone, Serialize, Deserialize, Debug, PartialEq)]
pub struct MessageFacts {
    #[serde(deserialize_with = "crate::domain::stored_phone")]
    pub to: PhoneNumber,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    pub price: i64,
}

impl MessageFacts {
    pub fn of(m: &crate::domain::MessageRecord) -> Self {
        MessageFacts {
            to: m.to.clone(),
            from: m.from.clone(),
            price: m.price,
        }
    }
}

/// A broadcast whose recipients are still to be recorded and enqueued (it carries the
/// content the broadcast's messages get).
#[derive(Clone, Serialize, Deserialize, Debug, PartialEq)]
pub struct FanoutJob {
    pub tenant_id: TenantId,
    pub broadcast_id: String,
    pub content: Content,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Not to start before this time (a scheduled broadcast).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_at: Option<DateTime<Utc>>,
    /// When this delivery's first recipient is due at the queue: the previous slice's
    /// paced end (`broadcasts::fan_out`). `None`: the first slice, due now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paced_from: Option<DateTime<Utc>>,
    /// Its place in the broadcast's chain of fan-out jobs: the token the broadcast must
    /// carry for this job to run (`Broadcast::fanout_token`; `ports::FanoutHop`). `None`:
    /// the broadcast carries none (a job queued before tokens, or the first run of a
    /// broadcast accepted before them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Queued again by a delivery of the job before it, which found that job's last
    /// progress write landed but could not know whether its next job was queued (a run
    /// that died between the two): such a job is not queued again itself
    /// (`broadcasts::fan_out`), so duplicates never make a chain of their own.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub resent: bool,
}

/// One status change waiting to be POSTed to a tenant's status callback (no content).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CallbackJob {
    pub tenant_id: TenantId,
    pub message_id: MessageId,
    pub status: MessageStatus,
    pub at: DateTime<Utc>,
    pub sequence: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<MessageError>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_reference: Option<String>,
}

/// A template Meta approved (again) or unarchived, to be read back from Meta for what no
/// webhook carries — its body's parameter count, changed by an edit; an unarchived one's
/// status — or, when the catalogue does not have it yet (a new template), whole
/// (`templates::refresh`). No content.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TemplateRefreshJob {
    /// The open tenant whose Meta token reads the WABA's list.
    pub tenant_id: TenantId,
    pub waba_id: String,
    pub name: String,
    pub language: String,
    /// Meta's time of the approval (its webhook's), applied after a new template is
    /// written from a list that may lag it; of the unarchive, when `unarchived`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_meta_time: Option<i64>,
    /// Meta unarchived the template (`UNARCHIVED`) rather than approved it: the status
    /// Meta lists, whatever it is, is the one the template returned to.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unarchived: bool,
}

/// Every queue message, tagged by `kind`.
#[derive(Clone, Serialize, Deserialize, Debug, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum QueueJob {
    Send(DispatchJob),
    BroadcastFanout(FanoutJob),
    StatusCallback(CallbackJob),
    TemplateRefresh(TemplateRefreshJob),
}

/// The tag of a broadcast fan-out job.
pub const FANOUT_KIND: &str = "broadcast_fanout";

/// The tenant a queue message's body names (its top-level `tenant_id`), read without
/// parsing the rest into a job: what a fair queue groups it by (`SqsQueue::fair_by_tenant`).
/// `None` for a body that is not a JSON object naming one.
pub fn tenant_of_body(body: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Named<'a> {
        #[serde(borrow, default)]
        tenant_id: Option<std::borrow::Cow<'a, str>>,
    }
    serde_json::from_str::<Named<'_>>(body)
        .ok()?
        .tenant_id
        .map(std::borrow::Cow::into_owned)
        .filter(|t| !t.is_empty() && t.len() <= 128)
}

impl QueueJob {
    /// The body to put on the queue.
    pub fn to_body(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string(self)
    }

    /// Reads a queue body: the tagged form, or a body written before the tag existed
    /// (a bare send job or callback job). `None`: unreadable, a poison message.
    pub fn parse(body: &str) -> Option<QueueJob> {
        if let Ok(job) = serde_json::from_str::<QueueJob>(body) {
            return Some(job);
        }
        if let Ok(job) = serde_json::from_str::<DispatchJob>(body) {
            return Some(QueueJob::Send(job));
        }
        serde_json::from_str::<CallbackJob>(body)
            .ok()
            .map(QueueJob::StatusCallback)
    }

    /// The request id the job carries, for its span.
    pub fn request_id(&self) -> Option<&str> {
        match self {
            QueueJob::Send(j) => j.request_id.as_deref(),
            QueueJob::BroadcastFanout(j) => j.request_id.as_deref(),
            QueueJob::StatusCallback(_) | QueueJob::TemplateRefresh(_) => None,
        }
    }
}

/// What the queue should do with a message after one attempt at it. Its `Debug` leaves
/// out a hop's job body (a message's content and unmasked recipient).
#[derive(Clone, PartialEq)]
pub enum Outcome {
    /// Finished (sent, failed for good, or a duplicate): delete it from the queue.
    Done,
    /// Make it visible again after this delay: the job's own wait (a turn-away's carried
    /// slot, a wait for its message, a deadline's recheck), kept as it is.
    RetryAfter(Duration),
    /// A storage retry: a dependency failed (storage refusing or throttled, a hop that
    /// could not be queued). Made visible again after at least this delay, further apart
    /// from the job's second receive (`queue_handlers::floored`), so that a table catching
    /// up on its capacity does not spend the job's receives in minutes.
    Backoff(Duration),
    /// Unreadable or hit an unexpected error: leave it, so the queue's redrive parks it
    /// on the dead-letter queue after its receive limit.
    Poison,
    /// Not due yet (a scheduled job's hop, a paused broadcast's look): put this body back
    /// on the queue as a fresh message after the delay, then delete the one received. A
    /// batch's hops go out together (`queue_handlers`, one `SendMessageBatch` per delay);
    /// `dispatch::handle` sends a lone one itself.
    Again(String, Duration),
}

impl std::fmt::Debug for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Done => f.write_str("Done"),
            Outcome::RetryAfter(d) => f.debug_tuple("RetryAfter").field(d).finish(),
            Outcome::Backoff(d) => f.debug_tuple("Backoff").field(d).finish(),
            Outcome::Poison => f.write_str("Poison"),
            Outcome::Again(body, d) => f
                .debug_tuple("Again")
                .field(&format_args!("<job, {} bytes>", body.len()))
                .field(d)
                .finish(),
        }
    }
}

/// The longest delay asked of SQS's visibility timeout: its limit is 12 hours *from the
/// message's receive*, and a `ChangeMessageVisibility` beyond it is refused (the message
/// then comes back after the queue's default, 360 s, and a 24 h sending deadline asked for
/// 12 h on every receive was refused every time, until the redrive limit parked the job).
/// A job is handled within its Lambda's 60 s of its receive: 5 minutes under the limit.
pub const MAX_DELAY: Duration = Duration::from_secs(43_200 - 300);

/// Exponential backoff from `base`, doubling per attempt, ±20% jitter, capped under SQS's
/// 12-hour visibility limit ([`MAX_DELAY`]).
pub fn backoff(base: Duration, attempt: u32) -> Duration {
    let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(20));
    let raw = base.saturating_mul(factor).min(MAX_DELAY);
    let jitter: f64 = 0.8 + rand::random::<f64>() * 0.4;
    raw.mul_f64(jitter).min(MAX_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bodys_tenant_is_read_for_its_queue_group_and_nothing_else_is_taken_for_one() {
        assert_eq!(
            tenant_of_body(r#"{"kind":"send","content":{"x":[1,{"y":"z"}]},"tenant_id":"01M8T"}"#)
                .as_deref(),
            Some("01M8T")
        );
        assert_eq!(
            tenant_of_body(r#"{"tenant_id":"a\"b"}"#).as_deref(),
            Some("a\"b")
        );
        for body in [
            "",
            "[]",
            "{}",
            r#"{"tenant_id":7}"#,
            r#"{"tenant_id":""}"#,
            "{",
        ] {
            assert_eq!(tenant_of_body(body), None, "{body}");
        }
    }
    use crate::domain::TemplateCategory;

    #[test]
    fn a_hops_debug_shows_neither_its_content_nor_its_recipient() {
        let body = serde_json::to_string(&QueueJob::Send(send_job())).expect("a job");
        assert!(body.contains("+60123456789") && body.contains("\"hi\""));
        let shown = format!(
            "{:?}",
            Outcome::Again(body.clone(), Duration::from_secs(30))
        );
        assert_eq!(shown, format!("Again(<job, {} bytes>, 30s)", body.len()));
        assert_eq!(
            format!("{:?}", Outcome::RetryAfter(Duration::from_millis(500))),
            "RetryAfter(500ms)"
        );
    }

    fn send_job() -> DispatchJob {
        DispatchJob {
            tenant_id: TenantId::generate(),
            message_id: MessageId::generate(),
            content: Content::Text { body: "hi".into() },
            request_id: Some("req-1".into()),
            send_at: None,
            broadcast_id: None,
            facts: Some(MessageFacts {
                to: PhoneNumber::parse("+60123456789").expect("a phone"),
                from: None,
                price: 1,
            }),
            retry_at: None,
            recheck: false,
            refused: None,
            refused_claim: None,
            key_hash: None,
        }
    }

    #[test]
    fn every_job_round_trips_through_its_tagged_body() {
        let jobs = [
            QueueJob::Send(send_job()),
            QueueJob::BroadcastFanout(FanoutJob {
                tenant_id: TenantId::generate(),
                broadcast_id: crate::domain::new_id(),
                content: Content::Template {
                    template: crate::domain::TemplateRef {
                        name: "t".into(),
                        language: "en".into(),
                        category: TemplateCategory::Utility,
                    },
                    components: vec![],
                },
                request_id: None,
                send_at: Some(Utc::now()),
                paced_from: Some(Utc::now()),
                token: Some(crate::domain::new_id()),
                resent: false,
            }),
            QueueJob::StatusCallback(CallbackJob {
                tenant_id: TenantId::generate(),
                message_id: MessageId::generate(),
                status: MessageStatus::Read,
                at: Utc::now(),
                sequence: 4,
                error: None,
                client_reference: None,
            }),
            QueueJob::TemplateRefresh(TemplateRefreshJob {
                tenant_id: TenantId::generate(),
                waba_id: "1000001".into(),
                name: "order_update".into(),
                language: "en_US".into(),
                approved_meta_time: Some(1_700_000_000),
                unarchived: true,
            }),
        ];
        for job in jobs {
            let body = job.to_body().unwrap();
            assert_eq!(QueueJob::parse(&body), Some(job));
        }
        let body = QueueJob::BroadcastFanout(FanoutJob {
            tenant_id: TenantId::generate(),
            broadcast_id: "b".into(),
            content: Content::Text { body: "x".into() },
            request_id: None,
            send_at: None,
            paced_from: None,
            token: None,
            resent: false,
        })
        .to_body()
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["kind"], FANOUT_KIND);
        // A template re-read names its tenant for the fair queue's group.
        let body = QueueJob::TemplateRefresh(TemplateRefreshJob {
            tenant_id: TenantId::generate(),
            waba_id: "1".into(),
            name: "n".into(),
            language: "en".into(),
            approved_meta_time: None,
            unarchived: false,
        })
        .to_body()
        .unwrap();
        assert!(body.contains(r#""kind":"template_refresh""#), "{body}");
        assert!(tenant_of_body(&body).is_some());
    }

    #[test]
    fn a_send_job_written_before_the_tag_is_still_read() {
        let job = send_job();
        let legacy = serde_json::json!({
            "tenant_id": job.tenant_id, "message_id": job.message_id,
            "content": {"kind": "text", "body": "hi"}
        })
        .to_string();
        let Some(QueueJob::Send(read)) = QueueJob::parse(&legacy) else {
            panic!("not read")
        };
        assert_eq!(read.message_id, job.message_id);
        assert_eq!(read.request_id, None);
    }

    #[test]
    fn unreadable_bodies_and_invalid_ids_are_poison() {
        assert_eq!(QueueJob::parse("not json"), None);
        let bad_id = serde_json::json!({"kind": "send", "tenant_id": "t", "message_id": "x",
            "content": {"kind": "text", "body": "hi"}})
        .to_string();
        assert_eq!(QueueJob::parse(&bad_id), None);
    }

    #[test]
    fn backoff_doubles_with_bounded_jitter_and_a_cap() {
        let base = Duration::from_secs(30);
        for attempt in 1..=5u32 {
            let d = backoff(base, attempt).as_secs_f64();
            let nominal = 30.0 * 2f64.powi(attempt as i32 - 1);
            assert!(
                d >= nominal * 0.8 - 1e-6 && d <= nominal * 1.2 + 1e-6,
                "{attempt}: {d}"
            );
        }
        assert!(backoff(base, 40) <= MAX_DELAY);
    }
}
