//! Scheduled sends: when a message or broadcast with a `send_at` starts.
//!
//! The choice (see README "How scheduled sends start"): **the job waits on the dispatch
//! queue itself, in hops of SQS delays** (at most 15 minutes each). A scheduled job
//! carries its `send_at`; whenever it is received before that time, the consumer puts
//! the same body back with a delay of `min(send_at - now, hop)` and deletes the one it
//! received. So:
//! - message content stays where it always lives, on the queue (never in a table, an
//!   EventBridge schedule or a due index);
//! - nothing scans or even queries a table to find due work, and no extra AWS resource
//!   or grant is needed (the dispatcher already sends to its queue);
//! - it starts within seconds of `send_at` (the last hop ends at `send_at`; the event
//!   source mapping polls continuously);
//! - local mode runs the same code: its queue poller is the scheduler;
//! - "is it due" is asked of the `Clock` port, so tests move a manual clock.
//!
//! Never twice: the job that comes due moves the message `scheduled → accepted` and then
//! claims it `accepted → sending`, both conditional writes; a duplicate job (an SQS
//! redelivery, a restart in the middle of a hop) loses one of them and is dropped. A
//! broadcast starts with the conditional `scheduled → fanning_out`.
//!
//! Depends on `jobs` and `errors` only.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::store_error::StoreError;

use super::errors::ServiceError;
use super::jobs::{Outcome, QueueJob};
use super::Deps;

/// The earliest a `send_at` may be, from now.
pub const MIN_AHEAD: chrono::Duration = chrono::Duration::minutes(1);
/// The latest a `send_at` may be, from now.
pub const MAX_AHEAD: chrono::Duration = chrono::Duration::days(35);

/// Reads a request's `send_at`: RFC 3339 with an offset (`Z` or `+08:00`), 1 minute to
/// 35 days after `now`. Anything else: `400 invalid_request`.
pub fn parse_send_at(raw: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, ServiceError> {
    let at = DateTime::parse_from_rfc3339(raw.trim())
        .map_err(|_| {
            ServiceError::InvalidRequest(
                "send_at must be an RFC 3339 time with an offset, such as 2026-12-01T09:00:00+08:00"
                    .into(),
            )
        })?
        .with_timezone(&Utc);
    if at < now + MIN_AHEAD {
        return Err(ServiceError::InvalidRequest(
            "send_at must be at least 1 minute in the future".into(),
        ));
    }
    if at > now + MAX_AHEAD {
        return Err(ServiceError::InvalidRequest(
            "send_at must be at most 35 days in the future".into(),
        ));
    }
    Ok(at)
}

/// A waiting job looks at its record once in this many hops (every 2 hours at SQS's
/// 15-minute hop): a cancelled one is then dropped, and with it the content it carries.
pub const LOOK_EVERY_HOPS: u128 = 8;

/// Whether a job still waiting `wait`, in hops of `hop`, looks at its record on this hop:
/// when the hops it has left are a multiple of [`LOOK_EVERY_HOPS`]. Counted from `send_at`,
/// so it needs no counter in the job.
pub fn looks_now(wait: Duration, hop: Duration) -> bool {
    let hop = hop.as_millis().max(1);
    wait.as_millis()
        .div_ceil(hop)
        .is_multiple_of(LOOK_EVERY_HOPS)
}

/// Whether a job for the record `id` (a message or a broadcast), still waiting `wait`,
/// looks at that record on this hop: every [`LOOK_EVERY_HOPS`] hops ([`looks_now`]), and
/// on its first hops, while `id` is younger than two hops past the grace for its write. A
/// request refused after its job
/// was queued (the job goes first: `402`, a lost `Idempotency-Key` race) recorded nothing,
/// and its job, which carries the content, is dropped at its first look
/// ([`super::deadline::UNRECORDED_GRACE`]) instead of hopping on until `send_at` (up to 35
/// days).
pub fn looks_at(deps: &super::Deps, id: &str, wait: Duration) -> bool {
    let hop = deps.settings.schedule_hop;
    let young = super::deadline::UNRECORDED_GRACE.saturating_add(hop.saturating_mul(2));
    looks_now(wait, hop) || super::deadline::age_of(deps, id) < young
}

/// When a message (or a campaign) accepted at `now` to start at `send_at` starts: what its
/// retention counts from, so that a retention shorter than its wait never loses it first.
pub fn starts(send_at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> DateTime<Utc> {
    send_at.map_or(now, |at| at.max(now))
}

/// How long a job due at `send_at` still waits, at `now`: `None` when it is due.
pub fn wait(send_at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Option<Duration> {
    let at = send_at?;
    (at > now).then(|| (at - now).to_std().unwrap_or_default())
}

/// A job that is not due yet goes back on the queue for one more hop (at most the
/// configured hop, SQS's 15 minutes by default): [`Outcome::Again`], which the queue
/// consumer sends (a batch's hops together, one `SendMessageBatch` per delay) before it
/// deletes the job it received; if that send fails, the received one is retried instead.
pub async fn wait_again(
    deps: &Deps,
    job: &QueueJob,
    remaining: Duration,
) -> Result<Outcome, StoreError> {
    let body = job
        .to_body()
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let hop = remaining.min(deps.settings.schedule_hop);
    tracing::debug!(hop_secs = hop.as_secs(), "job not due yet");
    Ok(Outcome::Again(body, hop))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-30T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn a_waiting_job_looks_once_in_eight_hops_counted_from_its_send_at() {
        let hop = Duration::from_secs(900);
        let looks: Vec<u64> = (1..=40)
            .filter(|n| looks_now(Duration::from_secs(n * 900 - 5), hop))
            .collect();
        assert_eq!(looks, vec![8, 16, 24, 32, 40]);
        assert!(!looks_now(Duration::from_secs(1), hop));
    }

    #[test]
    fn send_at_takes_any_offset_and_answers_utc() {
        let at = parse_send_at("2026-11-30T18:30:00+08:00", now()).unwrap();
        assert_eq!(at.to_rfc3339(), "2026-11-30T10:30:00+00:00");
        assert!(parse_send_at("2026-11-30T10:30:00Z", now()).is_ok());
    }

    #[test]
    fn send_at_without_an_offset_in_the_past_or_too_far_is_refused() {
        for bad in [
            "2026-11-30T10:30:00",
            "2026-11-30 10:30",
            "tomorrow",
            "2026-11-30T09:59:00Z",
            "2026-11-30T10:00:30Z",
            "2027-01-05T10:00:01Z",
        ] {
            assert!(
                matches!(
                    parse_send_at(bad, now()),
                    Err(ServiceError::InvalidRequest(_))
                ),
                "{bad}"
            );
        }
        assert!(parse_send_at("2026-11-30T10:01:00Z", now()).is_ok());
        assert!(parse_send_at("2027-01-04T10:00:00Z", now()).is_ok());
    }

    #[test]
    fn a_job_waits_until_its_send_at_and_not_after() {
        let at = now() + chrono::Duration::seconds(90);
        assert_eq!(wait(Some(at), now()), Some(Duration::from_secs(90)));
        assert_eq!(wait(Some(at), at), None);
        assert_eq!(wait(Some(at), at + chrono::Duration::seconds(1)), None);
        assert_eq!(wait(None, now()), None);
    }
}
