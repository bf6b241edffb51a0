//! The dispatch queue's consumer: routes each job, and sends one queued message to
//! Meta — check, claim, send, record the outcome. Never twice: only an `accepted`
//! message can be claimed, and an ambiguous answer is settled by Meta's webhook or the
//! sending deadline, never by sending again.
//!
//! Depends on `jobs`, `ledger`, `accounts`, `status`, `deadline`, `throttle`,
//! `optouts`, `quality`, `callbacks`, `schedule`, `send` (the cancelled error) and
//! `broadcasts` (for fan-out jobs); nothing
//! depends on it but the queue handlers.

use chrono::{DateTime, Utc};
use tracing::Instrument;

use crate::domain::{MessageError, MessageStatus};
use crate::ports::{
    BroadcastClaim, BroadcastControl, MetaSendError, StatusChange, TenantStatus, Transition,
};
use crate::store_error::StoreError;

use super::broadcasts::Remembered;
use super::errors::ServiceError;
use super::jobs::{backoff, DispatchJob, Outcome, QueueJob};
use super::ledger::{self, Charge};
use super::Deps;

/// How a Meta error code is handled. One table, tested row by row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Retry with exponential backoff.
    Transient,
    /// Pair rate limit (131056): retry, later.
    Delayed,
    /// Never retry: the request itself is wrong or the recipient cannot receive it.
    Permanent,
    /// The user stopped marketing messages (131050).
    Suppress,
    /// The tenant's Meta account cannot send (token, lock, payment): stop the tenant.
    TenantStop,
    /// Meta limited the sending number (its spam rate limit): hold that number.
    NumberStop,
}

/// Graph API rate limits (4 app, 17 user, 32 page, 613 calls per hour; 80007 and 130429
/// WhatsApp's) and Meta's own transient failures: [`ErrorClass::Transient`].
pub const TRANSIENT_CODES: &[i64] = &[1, 2, 4, 17, 32, 613, 80007, 130429, 131000, 131016, 131057];

/// Meta's pair rate limit: [`ErrorClass::Delayed`].
pub const PAIR_RATE_LIMIT: i64 = 131056;

/// The recipient stopped marketing messages: [`ErrorClass::Suppress`].
pub const MARKETING_STOPPED: i64 = 131050;

/// The request itself is wrong or the recipient cannot receive it: [`ErrorClass::Permanent`].
pub const PERMANENT_CODES: &[i64] = &[
    100, 131008, 131009, 131021, 131026, 131047, 131051, 131052, 131053, 132000, 132001, 132005,
    132007, 132012, 132015, 132016, 133010, 135000,
];

pub fn classify(code: i64, http_status: u16) -> ErrorClass {
    classify_reported(code, http_status, None)
}

/// [`classify`], with Meta's own `is_transient` where its error gave one: it decides for a
/// code the table does not know (a new code Meta says to retry is retried though answered
/// 4xx; one it says not to is not, though answered 5xx). A known code keeps its row:
/// the table is what Meta's error reference says of it.
pub fn classify_reported(code: i64, http_status: u16, is_transient: Option<bool>) -> ErrorClass {
    use ErrorClass::*;
    match code {
        c if TRANSIENT_CODES.contains(&c) => Transient,
        PAIR_RATE_LIMIT => Delayed,
        MARKETING_STOPPED => Suppress,
        // Token, account restricted or locked, payment problem.
        c if super::errors::ACCOUNT_STOP_CODES.contains(&c) => TenantStop,
        // The sending number's spam limit.
        c if super::errors::NUMBER_STOP_CODES.contains(&c) => NumberStop,
        c if PERMANENT_CODES.contains(&c) => Permanent,
        // Unknown codes: Meta's word, where it gave one (a bounded number of tries
        // either way); else a 5xx or a 429 (a rate limit by its HTTP status) is worth
        // another try and anything else is not, so an unknown rejection can never cause a
        // burst of repeated sends.
        _ if is_transient == Some(true) => Transient,
        _ if is_transient == Some(false) => Permanent,
        _ if http_status >= 500 || http_status == 429 => Transient,
        _ => Permanent,
    }
}

/// Fails a message that never reached Meta and refunds it: the `failed` status
/// and the refund of its price are one atomic write (a kill in between cannot
/// keep one without the other). An error means nothing was written: the caller gives
/// the claim back and the job is retried.
async fn fail(
    deps: &Deps,
    job: &DispatchJob,
    from: MessageStatus,
    price: i64,
    error: MessageError,
) -> Result<bool, StoreError> {
    // The refund's reason on the 7-year ledger: Meta's refusal (a numeric code), or why it
    // was never sent (`tenant_suspended`, `recipient_opted_out`, ...).
    let reason = match &error.code {
        crate::domain::ErrorCode::Meta(_) => "message not accepted by meta".to_owned(),
        crate::domain::ErrorCode::Kirim(code) => format!("message not sent: {code}"),
    };
    let failed = super::deadline::fail_and_refund(
        deps,
        &job.tenant_id,
        &job.message_id,
        job.broadcast_id.as_deref(),
        from,
        price,
        error,
        &reason,
    )
    .await?;
    Ok(failed.is_some())
}

/// Where a message that fails unsent stands.
#[derive(Clone, Copy)]
enum Unsent {
    /// `accepted`: not claimed by this job yet (a check before the claim).
    Queued,
    /// `sending` under this job's claim, made at this time (its `updated_at`), and refused
    /// by Meta.
    Claimed(DateTime<Utc>),
}

/// [`fail`] of a message not sent ([`Unsent`]). When the write fails nothing was written:
/// a claim is given back, and the job is retried (the checks, and a send that Meta
/// refused, are safe to repeat). A check's failure refused because the message is no
/// longer `accepted` (the checks ran on the job's facts, before the claim, for a message
/// a duplicate or an earlier delivery of this job claimed) is a redelivery: the sending
/// deadline still settles a `sending` message.
async fn fail_unsent(
    deps: &Deps,
    job: &DispatchJob,
    unsent: Unsent,
    price: i64,
    error: MessageError,
) -> Result<Outcome, Stopped> {
    let from = match unsent {
        Unsent::Queued => MessageStatus::Accepted,
        Unsent::Claimed(_) => MessageStatus::Sending,
    };
    match (fail(deps, job, from, price, error.clone()).await, unsent) {
        (Ok(true), _) => Ok(Outcome::Done),
        (Ok(false), Unsent::Queued) => Ok(super::deadline::redelivered(deps, job).await?),
        (Ok(false), Unsent::Claimed(_)) => Ok(Outcome::Done),
        (Err(e), Unsent::Claimed(claimed_at)) => {
            tracing::error!(error = %e, "could not mark failed; the refusal goes back on the queue");
            refusal_unrecorded(deps, job, claimed_at, error, e).await
        }
        (Err(e), Unsent::Queued) => {
            tracing::error!(error = %e, "could not mark failed; retrying the job");
            Err(e.into())
        }
    }
}

/// Meta refused the claimed message finally (or on its last allowed attempt) and its
/// `failed` write failed: the refusal goes on the queue first, in a fresh job
/// ([`DispatchJob::refused`], without the content: it is never sent), then the claim is
/// given back (`accepted`, `failure_not_recorded`); that job fails the message with
/// Meta's reason, refunded, without asking Meta again. Retried as it was, the job would
/// claim the message afresh and send it once more: past `KIRIM_DISPATCH_MAX_ATTEMPTS`, and
/// with Meta's reason lost if a check before the claim failed it first (a suspension
/// meanwhile). Queued first, so a release whose answer was lost (refused on its retry,
/// having landed) still has the job behind it. A refusal that cannot be queued falls back
/// to giving the claim back and retrying the job (one more request, which Meta refuses
/// again). A release that cannot be written leaves the message `sending` under the claim:
/// the job carries the claim's time, and gives it back itself before it fails the message
/// (the sending deadline would end it `outcome_unknown`, charged).
///
/// [`DispatchJob::refused`]: super::jobs::DispatchJob::refused
async fn refusal_unrecorded(
    deps: &Deps,
    job: &DispatchJob,
    claimed_at: DateTime<Utc>,
    refusal: MessageError,
    cause: StoreError,
) -> Result<Outcome, Stopped> {
    let again = DispatchJob {
        content: crate::domain::Content::Text {
            body: String::new(),
        },
        refused: Some(refusal),
        refused_claim: Some(claimed_at),
        retry_at: None,
        send_at: None,
        recheck: false,
        ..job.clone()
    };
    let queued = match QueueJob::Send(again).to_body() {
        Ok(body) => {
            deps.queue
                .send_delayed(&body, deps.settings.dispatch_backoff)
                .await
        }
        Err(e) => Err(StoreError::Corrupt(e.to_string())),
    };
    if let Err(e) = queued {
        tracing::error!(error = %e, "the refusal could not be queued; retrying the job");
        return Err(unclaim(deps, job, claimed_at, "failure_not_recorded", cause).await);
    }
    release(deps, job, claimed_at, "failure_not_recorded").await;
    Ok(Outcome::Done)
}

/// Why one attempt at a job stopped early, and whether a retry could help.
#[derive(Debug)]
struct Stopped {
    retryable: bool,
    detail: String,
}

impl From<StoreError> for Stopped {
    fn from(e: StoreError) -> Self {
        Stopped {
            retryable: e.is_retryable(),
            detail: e.to_string(),
        }
    }
}

impl From<ServiceError> for Stopped {
    fn from(e: ServiceError) -> Self {
        Stopped {
            retryable: e.is_retryable(),
            detail: e.to_string(),
        }
    }
}

/// Puts a claimed message back to `accepted` when the throughput limiter failed and the
/// claim could not be given back unattempted, or a refusal whose failure could not be
/// written could not be queued either, so a later delivery of the job can claim it
/// again; answers the failure with its own
/// class (a retryable one is retried, any other parks the job on the dead-letter queue).
async fn unclaim(
    deps: &Deps,
    job: &DispatchJob,
    claimed_at: DateTime<Utc>,
    code: &str,
    cause: impl Into<Stopped>,
) -> Stopped {
    release(deps, job, claimed_at, code).await;
    cause.into()
}

/// Meta refused the access token itself (expired, revoked, malformed: 190, 102, 0).
fn is_token_refusal(error: &MessageError) -> bool {
    matches!(error.code, crate::domain::ErrorCode::Meta(0 | 102 | 190))
}

/// Whether the tenant's token secret holds another token than `used` now, read afresh (at
/// most once every `webhook::SECRET_REFRESH_EVERY` per process; between those, the copy
/// the last read cached).
async fn token_replaced(
    deps: &Deps,
    name: &str,
    used: &crate::secret::Secret,
) -> Result<bool, StoreError> {
    let fresh = match deps
        .secrets
        .refresh_current(name, super::webhook::SECRET_REFRESH_EVERY)
        .await?
    {
        Some(v) => v,
        None => deps.secrets.current(name).await?,
    };
    Ok(fresh.is_some_and(|t| t.expose() != used.expose()))
}

/// The error a claim given back carries (`code`: why) until its next attempt.
fn released(code: &str) -> MessageError {
    MessageError {
        code: code.into(),
        title: "a dependency failed for a moment; will retry".into(),
    }
}

/// Gives the claim made at `claimed_at` back (`accepted`, with `code` as its error), tried
/// again while the store's failure is worth it (`store_error::undo`); one that cannot be
/// written is logged and left to the sending deadline, or to the job the caller queues
/// ([`DispatchJob::refused_claim`]). Whether it was written.
///
/// [`DispatchJob::refused_claim`]: super::jobs::DispatchJob::refused_claim
async fn release(deps: &Deps, job: &DispatchJob, claimed_at: DateTime<Utc>, code: &str) -> bool {
    release_with(deps, job, claimed_at, &released(code)).await
}

/// [`release`] with the error the message carries meanwhile.
async fn release_with(
    deps: &Deps,
    job: &DispatchJob,
    claimed_at: DateTime<Utc>,
    error: &MessageError,
) -> bool {
    if let Err(e) = crate::store_error::undo(|| {
        deps.messages.release_for_retry(
            &job.tenant_id,
            &job.message_id,
            claimed_at,
            error,
            deps.clock.now(),
        )
    })
    .await
    {
        tracing::error!(error = %e, "could not release the claim");
        return false;
    }
    true
}

/// The job queued again after its claim made at `claimed_at` was given back, or, when it
/// could not be ([`release`] said no), carrying that claim to give back first
/// ([`DispatchJob::refused_claim`]).
///
/// [`DispatchJob::refused_claim`]: super::jobs::DispatchJob::refused_claim
fn again_after_release(
    job: &DispatchJob,
    claimed_at: DateTime<Utc>,
    given_back: bool,
) -> DispatchJob {
    let mut again = job.clone();
    if !given_back {
        again.refused_claim = Some(claimed_at);
    }
    again
}

/// A claim the store refused: this job's own after all when the message is `sending`
/// under its token (the claim's write landed and its answer was lost, so the store's retry
/// of it was refused by that very write), else a redelivery ([`deadline::redelivered`]).
/// `Ok(record)`: go on and send it. A broadcast's own claim is given back instead and
/// claimed afresh in a moment: its broadcast's hold is read after a claim lands, and this
/// one's never was.
///
/// [`deadline::redelivered`]: super::deadline::redelivered
async fn refused_claim(
    deps: &Deps,
    job: &DispatchJob,
    token: &str,
    claimed_at: DateTime<Utc>,
) -> Result<Result<Box<crate::domain::MessageRecord>, Outcome>, Stopped> {
    // Tried again while worth it: a read that failed would send the job round again, and
    // its next claim (a new token) would take this job's own landed claim for another's.
    // Should every read fail, the claim that may be this job's (made at `claimed_at`) is
    // given back, as when the claim's own answer never came.
    let found = match crate::store_error::undo(|| {
        deps.messages.get_message(&job.tenant_id, &job.message_id)
    })
    .await
    {
        Ok(found) => found,
        Err(e) => {
            tracing::warn!(error = %e, "a refused claim's read-back failed; giving back a claim that may be this job's");
            release(deps, job, claimed_at, "claim_answer_lost").await;
            return Err(e.into());
        }
    };
    match found {
        Some(m) if m.status == MessageStatus::Sending && m.claim.as_deref() == Some(token) => {
            tracing::warn!("the claim's answer was lost; the message is this job's");
            if job.broadcast_id.is_none() {
                return Ok(Ok(Box::new(m)));
            }
            give_back_unattempted(deps, job, &m, None, "claim_answer_lost").await?;
            Ok(Err(Outcome::RetryAfter(std::time::Duration::from_millis(
                500,
            ))))
        }
        // Past `sending`: its post-send work is finished there (`deadline::after_send`).
        found => Ok(Err(super::deadline::redelivered_as(deps, job, found).await?)),
    }
}

/// Gives back the claim made at `claimed_at` without counting it as an attempt
/// (`release_unattempted`, tried again while the store's failure is worth it, as every
/// undo), keeping `slot` for the next claim. If that cannot be written, the message is not
/// left `sending` with nothing sent (its deadline would fail it, charged): it is released
/// for a retry instead ([`unclaim`]), and the job retried.
async fn give_back_unattempted(
    deps: &Deps,
    job: &DispatchJob,
    claimed: &crate::domain::MessageRecord,
    slot: Option<crate::domain::CarriedSlot>,
    code: &str,
) -> Result<(), Stopped> {
    let claimed_at = claimed.updated_at;
    let given = crate::store_error::undo(|| {
        deps.sending.release_unattempted(
            &job.tenant_id,
            &job.message_id,
            claimed_at,
            claimed.events.len(),
            deps.clock.now(),
            slot,
        )
    })
    .await;
    match given {
        Ok(_) => Ok(()),
        Err(e) => Err(unclaim(deps, job, claimed_at, code, e).await),
    }
}

/// Handles one dispatch-queue message, in a span carrying its ids (and the id of the
/// request that accepted it). `Done` deletes it; the caller maps the others onto SQS.
pub async fn handle(deps: &Deps, body: &str) -> Outcome {
    match handle_in_batch(deps, body).await {
        Outcome::Again(again, delay) => match deps.queue.send_delayed(&again, delay).await {
            Ok(()) => Outcome::Done,
            Err(e) => hop_failed(deps, &e),
        },
        other => other,
    }
}

/// A job's hop that could not be queued: the job received is retried instead.
pub fn hop_failed(deps: &Deps, e: &StoreError) -> Outcome {
    tracing::warn!(error = %e, "could not queue the job's next hop; retrying");
    crate::metrics::retry("storage");
    Outcome::Backoff(deps.settings.dispatch_backoff)
}

/// [`handle`] for a job of a batch: a hop ([`Outcome::Again`]) is left to the caller,
/// which sends the batch's hops together (`queue_handlers`).
pub async fn handle_in_batch(deps: &Deps, body: &str) -> Outcome {
    handle_in_span(deps, body).await.0
}

/// [`handle_in_batch`], and the job's span (its ids), for what the caller does about the
/// outcome (a retry delay set on the queue) to log under.
pub async fn handle_in_span(deps: &Deps, body: &str) -> (Outcome, tracing::Span) {
    let Some(job) = QueueJob::parse(body) else {
        tracing::error!("unreadable dispatch job; leaving it for the dead-letter queue");
        return (Outcome::Poison, tracing::Span::none());
    };
    let span = match &job {
        QueueJob::Send(j) => {
            tracing::info_span!("job", kind = "send", request_id = j.request_id.as_deref(), tenant_id = %j.tenant_id, message_id = %j.message_id)
        }
        QueueJob::BroadcastFanout(j) => {
            tracing::info_span!("job", kind = "broadcast_fanout", request_id = j.request_id.as_deref(), tenant_id = %j.tenant_id, broadcast_id = %j.broadcast_id)
        }
        QueueJob::StatusCallback(j) => {
            tracing::info_span!("job", kind = "status_callback", tenant_id = %j.tenant_id, message_id = %j.message_id)
        }
        QueueJob::TemplateRefresh(j) => {
            tracing::info_span!("job", kind = "template_refresh", tenant_id = %j.tenant_id, waba_id = %j.waba_id)
        }
    };
    let outcome = handle_job(deps, job).instrument(span.clone()).await;
    (outcome, span)
}

async fn handle_job(deps: &Deps, job: QueueJob) -> Outcome {
    let result = match &job {
        QueueJob::Send(j) => dispatch(deps, j).await,
        QueueJob::BroadcastFanout(j) => super::broadcasts::fan_out(deps, j)
            .await
            .map_err(Stopped::from),
        QueueJob::TemplateRefresh(j) => match super::templates::refresh(deps, j).await {
            Ok(None) => Ok(Outcome::Done),
            Ok(Some(e)) => Ok(refresh_failed(deps, &e)),
            Err(e) => Err(Stopped::from(e)),
        },
        QueueJob::StatusCallback(_) => {
            tracing::error!(
                "a status-callback job on the dispatch queue; leaving it for the dead-letter queue"
            );
            return Outcome::Poison;
        }
    };
    match result {
        Ok(o) => o,
        Err(e) if e.retryable => {
            tracing::warn!(error = %e.detail, "a dependency is unavailable; retrying");
            crate::metrics::retry("storage");
            Outcome::Backoff(deps.settings.dispatch_backoff)
        }
        Err(e) => {
            tracing::error!(error = %e.detail, "dispatch error; leaving the job for the dead-letter queue");
            Outcome::Poison
        }
    }
}

/// Meta failed an approved template's re-read (`templates::refresh`): tried again when
/// Meta's error table says a later try may succeed (a rate limit, a transient or delayed
/// code, Meta's `is_transient`, a 5xx or 429 of an unknown code, no answer); otherwise the
/// job ends and the daily sync reads the template.
fn refresh_failed(deps: &Deps, e: &MetaSendError) -> Outcome {
    let again = match e {
        MetaSendError::Api {
            code,
            http_status,
            is_transient,
            ..
        } => matches!(
            classify_reported(*code, *http_status, *is_transient),
            ErrorClass::Transient | ErrorClass::Delayed
        ),
        MetaSendError::Timeout | MetaSendError::Connection(_) => true,
        MetaSendError::Protocol(status) => *status >= 500,
    };
    if again {
        tracing::warn!(error = %e, "an approved template was not read again; retrying");
        Outcome::Backoff(deps.settings.dispatch_backoff)
    } else {
        tracing::warn!(error = %e, "an approved template was not read again; the daily sync reads it");
        Outcome::Done
    }
}

/// A broadcast's message whose claim found the broadcast held. Paused: the job waits
/// another hop on the queue (the message stays `accepted`). Cancelled: the message ends
/// `cancelled` with its refund, conditional on it still being `accepted`; one that is not
/// goes to `deadline::redelivered` (a `sending` one is settled by its sending deadline).
async fn held(
    deps: &Deps,
    job: &DispatchJob,
    hold: BroadcastControl,
) -> Result<Outcome, StoreError> {
    match hold {
        BroadcastControl::Paused => {
            let again = QueueJob::Send(job.clone());
            super::schedule::wait_again(deps, &again, super::broadcasts::PAUSED_RECHECK).await
        }
        BroadcastControl::Cancelled => {
            let Some(m) = deps
                .messages
                .get_message(&job.tenant_id, &job.message_id)
                .await?
            else {
                return Ok(Outcome::Done);
            };
            let now = deps.clock.now();
            let refund = ledger::cancel_refund_entry(
                deps,
                &job.tenant_id,
                &Charge::of_message(&job.message_id, job.broadcast_id.as_deref()),
                m.price,
                "broadcast cancelled",
                now,
            );
            let error = super::send::cancelled_error();
            let moved = match deps
                .messages
                .cancel_with_refund(
                    &job.tenant_id,
                    &job.message_id,
                    &[MessageStatus::Accepted],
                    &error,
                    &refund,
                    now,
                )
                .await
            {
                Ok(t) => t,
                Err(e) => {
                    let (t, id) = (&job.tenant_id, &job.message_id);
                    super::ledger::written_after_all(deps, t, id, MessageStatus::Cancelled, now, e)
                        .await?
                }
            };
            if let Transition::Applied(r) = moved {
                crate::metrics::failed("cancelled");
                super::callbacks::status_changed(deps, &r).await;
                return Ok(Outcome::Done);
            }
            // No longer `accepted`: claimed before the cancel (a job back for its sending
            // deadline), or finished. The deadline settles the one, the other is dropped.
            super::deadline::redelivered(deps, job).await
        }
    }
}

/// A broadcast's message whose broadcast this process remembers held
/// (`broadcasts::HoldMemo`), looked at without a claim. Unlike a claim, nothing showed
/// the message still `accepted`: one that is not (a job back for its sending deadline, a
/// duplicate of a finished one) goes where a refused claim goes.
async fn held_unclaimed(
    deps: &Deps,
    job: &DispatchJob,
    hold: BroadcastControl,
) -> Result<Outcome, StoreError> {
    if hold == BroadcastControl::Paused {
        // A read that may lag (half the units): an answer a moment old costs at most one
        // more look, since the hold keeps the message unclaimed either way and the
        // deadline's own read is consistent.
        let accepted = deps
            .messages
            .peek_message(&job.tenant_id, &job.message_id)
            .await?
            .is_some_and(|m| m.status == MessageStatus::Accepted);
        if !accepted {
            return super::deadline::redelivered(deps, job).await;
        }
    }
    held(deps, job, hold).await
}

/// The hold on a broadcast's message's broadcast as this process remembers it, read again
/// when it was found held longer ago (`broadcasts::HoldMemo`), and, with `read_unknown`,
/// also when this process never found it held; none when it is not held.
async fn hold_of(
    deps: &Deps,
    job: &DispatchJob,
    read_unknown: bool,
) -> Result<Option<BroadcastControl>, StoreError> {
    let Some(b) = &job.broadcast_id else {
        return Ok(None);
    };
    let now = deps.clock.now();
    Ok(match deps.broadcast_holds.held(&job.tenant_id, b, now) {
        Remembered::Held(hold) => Some(hold),
        Remembered::Nothing if !read_unknown => None,
        Remembered::Earlier | Remembered::Nothing => {
            let hold = deps
                .broadcasts
                .get_broadcast(&job.tenant_id, b)
                .await?
                .and_then(|broadcast| broadcast.control);
            deps.broadcast_holds.note(&job.tenant_id, b, hold, now);
            hold
        }
    })
}

use super::accounts::{tenant_closed, tenant_to_dispatch};

async fn dispatch(deps: &Deps, job: &DispatchJob) -> Result<Outcome, Stopped> {
    if job.recheck {
        return Ok(Box::pin(super::deadline::recheck(deps, job)).await?);
    }
    // A retry whose backoff is longer than one hop waits out the rest on the queue, unless
    // its tenant was suspended or closed, or its broadcast cancelled, meanwhile: then it
    // goes on below now and is failed or cancelled (refunded) as every queued message of
    // theirs is, rather than sent after a resume when its backoff ends.
    if let Some(wait) = super::schedule::wait(job.retry_at, deps.clock.now()) {
        let active = tenant_to_dispatch(deps, &job.tenant_id)
            .await?
            .is_some_and(|t| t.status == TenantStatus::Active);
        // (A broadcast's is read: a hop is 15 minutes, and only long backoffs take them.)
        if active && hold_of(deps, job, true).await? != Some(BroadcastControl::Cancelled) {
            let again = QueueJob::Send(job.clone());
            return Ok(super::schedule::wait_again(deps, &again, wait).await?);
        }
    }
    // A scheduled message: not due yet, it waits another hop on the queue; due, it
    // becomes `accepted` (a conditional write: refused when a duplicate job did it
    // already, or when it was cancelled, which the claim below then refuses too).
    if job.send_at.is_some() {
        if let Some(wait) = super::schedule::wait(job.send_at, deps.clock.now()) {
            // Once in a while (and on its first hops) the wait looks at the message: a
            // cancelled one's job, which carries its content, is dropped then instead of
            // hopping on until `send_at` (up to 35 days); so is the job of a request that
            // recorded nothing (refused after its job was queued), once past the grace
            // for its write.
            let mut closed = false;
            if super::schedule::looks_at(deps, job.message_id.as_str(), wait) {
                let m = deps
                    .messages
                    .get_message(&job.tenant_id, &job.message_id)
                    .await?;
                match m {
                    Some(m) if m.status != MessageStatus::Scheduled => {
                        tracing::info!("scheduled message no longer waiting; its job dropped");
                        return Ok(Outcome::Done);
                    }
                    None if super::deadline::age_of(deps, job.message_id.as_str())
                        >= super::deadline::UNRECORDED_GRACE =>
                    {
                        tracing::info!("scheduled message never recorded; its job dropped");
                        return Ok(Outcome::Done);
                    }
                    _ => {}
                }
                // A closed tenant's (closing is final): it goes on below now, and is
                // failed `tenant_closed`, refunded, rather than wait up to 35 days with its
                // content on the queue. A suspension decides nothing yet: the message is
                // sent if the tenant is active at its `send_at` (README, "Scheduled sends").
                closed = tenant_closed(deps, &job.tenant_id).await?;
            }
            if !closed {
                let again = QueueJob::Send(job.clone());
                return Ok(super::schedule::wait_again(deps, &again, wait).await?);
            }
            tracing::info!("a closed tenant's scheduled message ends before its time");
        }
        deps.messages
            .transition(
                &job.tenant_id,
                &job.message_id,
                MessageStatus::Accepted,
                &StatusChange::default(),
                deps.clock.now(),
            )
            .await?;
    }
    let Some(tenant) = tenant_to_dispatch(deps, &job.tenant_id).await? else {
        tracing::warn!("tenant gone; dropping");
        return Ok(Outcome::Done);
    };
    // A claim that could not be given back when this job was queued (a refusal's, or a
    // retry's after Meta refused for a moment): given back now, only if the message is
    // still `sending` under that claim (else this changes nothing), so that the failure
    // below is written from `accepted`, or the retry can claim it. An error retries the job.
    if let Some(claimed_at) = job.refused_claim {
        let code = if job.refused.is_some() {
            "failure_not_recorded"
        } else {
            "release_not_recorded"
        };
        deps.messages
            .release_for_retry(
                &job.tenant_id,
                &job.message_id,
                claimed_at,
                &released(code),
                deps.clock.now(),
            )
            .await?;
    }
    // Every check runs BEFORE the claim, on the message's facts, so that only the
    // throughput slot stands between the claim and the call to Meta: a process killed
    // after the claim has most likely called Meta (the sending deadline then settles it),
    // and one killed before it leaves an `accepted` message that the job's redelivery sends.
    // The facts ride in the job (they never change after acceptance), so the message is
    // not read here: the claim's condition decides whether it is still `accepted`, and a
    // check's failure is conditional on it too (`fail_unsent`).
    let queued = match &job.facts {
        Some(f) => f.clone(),
        None => {
            // A job written before the facts rode in it: read them.
            let Some(m) = deps
                .messages
                .get_message(&job.tenant_id, &job.message_id)
                .await?
            else {
                // Not recorded (yet): the send queues its job before writing the message.
                return Ok(super::deadline::redelivered(deps, job).await?);
            };
            if m.status != MessageStatus::Accepted {
                // Already claimed or finished: a duplicate, or the redelivery of an
                // ambiguous send that checks the sending deadline. Never sent again.
                return Ok(super::deadline::redelivered(deps, job).await?);
            }
            super::jobs::MessageFacts::of(&m)
        }
    };
    // Meta refused it finally when an earlier delivery sent it, and that failure could not
    // be written then (`refusal_unrecorded`): it fails now with Meta's reason, refunded,
    // before any check that would give another reason, and is never sent again.
    if let Some(refusal) = &job.refused {
        return fail_unsent(deps, job, Unsent::Queued, queued.price, refusal.clone()).await;
    }
    // A suspended or closed tenant's queued messages are not sent: they fail at once,
    // refunded, rather than wait on the queue (where they would reach the dead-letter
    // queue with their content). The client may send again after a resume.
    if tenant.status != TenantStatus::Active {
        let error = if tenant.status == TenantStatus::Closed {
            MessageError {
                code: "tenant_closed".into(),
                title: "the account was closed before the message was sent".into(),
            }
        } else {
            MessageError {
                code: "tenant_suspended".into(),
                title: "the account was suspended before the message was sent".into(),
            }
        };
        crate::metrics::failed("tenant_inactive");
        return fail_unsent(deps, job, Unsent::Queued, queued.price, error).await;
    }
    // A broadcast's message whose broadcast this process found held a moment ago waits
    // (or, cancelled, is cancelled) without a claim and its undo; one found held longer
    // ago reads the broadcast first (`broadcasts::HoldMemo`).
    if let Some(hold) = hold_of(deps, job, false).await? {
        return Ok(held_unclaimed(deps, job, hold).await?);
    }
    // A STOP may have arrived while the message waited in the queue: honour it.
    let category = job.content.template_ref().map(|t| t.category);
    match super::optouts::check_queued(deps, &job.tenant_id, &queued.to, category).await {
        Ok(()) => {}
        Err(ServiceError::RecipientOptedOut) => {
            tracing::info!(to = %queued.to.masked(), "recipient opted out while queued; not sent");
            let error = MessageError {
                code: "recipient_opted_out".into(),
                title: "the recipient opted out before the message was sent".into(),
            };
            crate::metrics::failed("opted_out");
            return fail_unsent(deps, job, Unsent::Queued, queued.price, error).await;
        }
        Err(e) => return Err(e.into()),
    }
    // Read afresh for a while after the tenant's status changed, or its token was replaced
    // (`PUT …/meta-token`): a token replaced before a resume, or replaced at all, is the
    // one sent with, not a copy cached from before it.
    let Some(token) = deps
        .secrets
        .current_unless_changed(
            &tenant.meta_token_secret,
            tenant.token_changed_at(),
            deps.clock.now(),
        )
        .await?
    else {
        let error = MessageError {
            code: "meta_token_missing".into(),
            title: "the tenant has no Meta access token".into(),
        };
        crate::metrics::failed("tenant_config");
        return fail_unsent(deps, job, Unsent::Queued, queued.price, error).await;
    };
    // The number it goes from: the one the send named, else the default. A number
    // removed since the message was accepted fails it (refunded) rather than send from a
    // number the tenant no longer has.
    let from = match super::numbers::sender(deps, &tenant, queued.from.as_deref()).await {
        Ok(n) => n,
        Err(ServiceError::UnknownSender(_)) => {
            let error = MessageError {
                code: "sender_removed".into(),
                title: "the phone number it was to be sent from was removed from the account"
                    .into(),
            };
            crate::metrics::failed("tenant_config");
            return fail_unsent(deps, job, Unsent::Queued, queued.price, error).await;
        }
        Err(e) => return Err(e.into()),
    };
    // A number Meta limited since the message was accepted (`numbers::hold_for_meta`):
    // not sent from it, refunded, before anything is claimed.
    if from.hold.is_some() {
        let error = MessageError {
            code: "sender_held".into(),
            title: "the phone number it was to be sent from was held (Meta limited it)".into(),
        };
        crate::metrics::failed("sender_held");
        return fail_unsent(deps, job, Unsent::Queued, queued.price, error).await;
    }
    let now = deps.clock.now();
    // This claim's own token: if its write lands and the answer is lost, the store's retry
    // of it is refused by that very write, and the message is found `sending` under it.
    let claim_token = crate::domain::new_id();
    let claim = StatusChange {
        count_attempt: true,
        claim: Some(claim_token.clone()),
        ..Default::default()
    };
    // The claim: only an `accepted` message moves to `sending`. A duplicate job that
    // read it `accepted` too loses here: no double send. A broadcast's message is claimed
    // only while its broadcast has no hold (a hold written before the claim is always
    // seen; `BroadcastStore::claim_broadcast_message`).
    let claimed = match &job.broadcast_id {
        Some(b) => {
            match deps
                .broadcasts
                .claim_broadcast_message(&job.tenant_id, &job.message_id, b, &claim_token, now)
                .await
            {
                Ok(BroadcastClaim::Claimed(r)) => {
                    deps.broadcast_holds.note(&job.tenant_id, b, None, now);
                    Ok(Transition::Applied(r))
                }
                Ok(BroadcastClaim::Refused) => Ok(Transition::Refused),
                Ok(BroadcastClaim::Held(hold)) => {
                    deps.broadcast_holds
                        .note(&job.tenant_id, b, Some(hold), now);
                    return Ok(held(deps, job, hold).await?);
                }
                Err(e) => Err(e),
            }
        }
        None => {
            deps.messages
                .transition(
                    &job.tenant_id,
                    &job.message_id,
                    MessageStatus::Sending,
                    &claim,
                    now,
                )
                .await
        }
    };
    // A claim whose answer did not come may have landed (a lost answer, the store's own
    // retries then throttled): the message read back says whose it is. Ours (`sending`
    // under this attempt's token): it goes on, as a refused claim found to be ours does.
    // Left to a retry, a landed claim would be taken for another's by the next job (its
    // new token) and wait for the deadline: failed, unrefunded, unsent. Anything else:
    // the error stands, with its own backoff (or parking, if it is not worth retrying),
    // never a quick retry that would spend the job's receives.
    let claimed = match claimed {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(error = %e, "the claim's answer did not come; reading the message back");
            // Read back as an undo is written (tried again while worth it): a read that
            // fails as the claim's answer did must not leave a landed claim unowned.
            let found = crate::store_error::undo(|| {
                deps.messages.get_message(&job.tenant_id, &job.message_id)
            })
            .await;
            match found {
                Ok(found) => {
                    let ours = found.is_some_and(|m| {
                        m.status == MessageStatus::Sending
                            && m.claim.as_deref() == Some(&claim_token)
                    });
                    if !ours {
                        return Err(e.into());
                    }
                    Transition::Refused
                }
                Err(read) => {
                    // Whose it is stays unknown: a claim that may be this one is given back
                    // (conditional on this claim's time: refused if it never landed), so
                    // the retry finds the message `accepted` and claims it afresh.
                    tracing::warn!(error = %read, "the claim's read-back failed too; giving back a claim that may be this job's");
                    release(deps, job, now, "claim_answer_lost").await;
                    return Err(e.into());
                }
            }
        }
    };
    let record = match claimed {
        Transition::Applied(r) => r,
        Transition::Refused => match refused_claim(deps, job, &claim_token, now).await? {
            Ok(own) => own,
            Err(outcome) => return Ok(outcome),
        },
    };
    // The number's throughput, shared with every other dispatcher: wait briefly for a
    // slot, or give the claim back (not an attempt) and come back for the slot reserved
    // ahead for it (or, the number full beyond `HORIZON`, soon). The slot is taken
    // last, right before the call, so that no write stands between the slot's time and
    // the request (that would bunch requests up against Meta's rolling second).
    // A slot reserved for it when it came before (same attempt: a slot is spent once).
    let tier = super::numbers::tier(deps, &tenant, &from);
    let carried = record
        .carried_slot
        .filter(|c| c.attempt == record.attempts)
        .map(|c| c.at);
    let (slot, again) =
        match super::throttle::acquire(deps, &from.phone_number_id, tier, carried).await {
            Ok(super::throttle::Slot::Go) => (None, None),
            Ok(super::throttle::Slot::Later(at)) => (
                Some(crate::domain::CarriedSlot {
                    at,
                    attempt: record.attempts,
                }),
                Some(super::throttle::until_slot(deps, at)),
            ),
            Ok(super::throttle::Slot::Full) => (None, Some(super::throttle::full_retry_delay())),
            Err(e) => {
                // Nothing went to Meta: the claim is given back without spending an attempt
                // (`KIRIM_DISPATCH_MAX_ATTEMPTS` counts requests to Meta), and the job retried.
                give_back_unattempted(deps, job, &record, None, "rate_limiter_unavailable").await?;
                return Err(e.into());
            }
        };
    if let Some(delay) = again {
        give_back_unattempted(deps, job, &record, slot, "rate_limiter_unavailable").await?;
        crate::metrics::retry("throttled");
        if slot.is_none() || carried.is_some() {
            // The number is booked past the horizon: as a fresh queue message, not the
            // same one made visible again. A wait for the number is not an attempt, but
            // every receive of one message counts toward the queue's redrive to the
            // dead-letter queue (10), where a message still `accepted` would stay debited
            // and unsent; a number kept full for minutes (several campaigns on it) would
            // use those receives up in seconds. A message with a slot carried ahead comes
            // back once, for it, at the delay set at once (below); one that came back for
            // its carried slot and missed it (its batch picked up late: the dispatchers
            // busy with other tenants) carries the next as a fresh message too, so that
            // missing slot after slot never spends the one message's receives.
            let again = QueueJob::Send(job.clone());
            return Ok(super::schedule::wait_again(deps, &again, delay).await?);
        }
        return Ok(Outcome::RetryAfter(delay));
    }
    let body = job
        .content
        .to_meta_request(&record.to, &job.message_id, &job.tenant_id);
    let result = deps
        .meta
        .send_message(&from.phone_number_id, &token, &body)
        .await;
    let log_to = record.to.masked();
    match result {
        Ok(accepted) => {
            // Counted as sent (quality's `sent_7d`, `MessagesSent`) by the write that moves
            // it out of `sending`, below, or by the status that did first
            // (`status::count_if_settled`): once, whichever wins.
            let expires = super::deadline::index_expiry(deps, &record);
            // The wamid's index and the `sent` move (the wamid on the message rides with
            // it: one write fewer) are written together, one round trip instead of two.
            // Neither needs the other first: a webhook finds the message by the callback
            // data Meta echoes, or by the index; one that comes before the index keeps
            // its status, and the index's write answers that it did (`kept`). A failed
            // move retries the job, as before: its claim is refused then, so nothing is
            // sent twice, and the sending deadline settles a `sending` one.
            let change = StatusChange {
                wamid: Some(accepted.wamid.clone()),
                ..Default::default()
            };
            let sent_at = deps.clock.now();
            let (kept, moved) = tokio::join!(
                deps.messages.index_wamid(
                    &job.tenant_id,
                    &job.message_id,
                    &accepted.wamid,
                    expires
                ),
                deps.messages.transition(
                    &job.tenant_id,
                    &job.message_id,
                    MessageStatus::Sent,
                    &change,
                    sent_at,
                ),
            );
            match moved {
                Ok(Transition::Applied(sent)) => {
                    super::quality::count_sent(deps, &job.tenant_id).await;
                    super::callbacks::status_changed(deps, &sent).await
                }
                // Something moved it further first (a webhook, the deadline): the wamid
                // goes on the message alone. Or this very move landed with its answer lost
                // (the store's retry then refused by it): read back, a message found `sent`
                // has its callback queued here, since Meta's own `sent` (a repeat then)
                // moves nothing. Callbacks are at least once: a webhook's `sent` that won
                // the race queued one too. The callback first: a failed wamid write (the
                // job retried, its claim refused then) does not skip it.
                Ok(Transition::Refused) => {
                    if let Ok(Some(m)) = deps
                        .messages
                        .get_message(&job.tenant_id, &job.message_id)
                        .await
                    {
                        if m.status == MessageStatus::Sent {
                            super::callbacks::status_changed(deps, &m).await;
                        }
                        // Counted here only if the move out of `sending` was this one's
                        // own (its `sent` at this time): a status that won the race
                        // counted it.
                        let own = m
                            .events
                            .iter()
                            .rev()
                            .find(|e| e.status == MessageStatus::Sent)
                            .is_some_and(|e| e.at == sent_at);
                        if own {
                            super::quality::count_sent(deps, &job.tenant_id).await;
                        }
                    }
                    deps.messages
                        .set_wamid(&job.tenant_id, &job.message_id, &accepted.wamid, expires)
                        .await?;
                }
                // Every try answered an error, but the move may have landed (a timeout after
                // its commit): read back, a message holding this very move (`sent` at this
                // time) has its callback queued and goes on as moved; a retried job would
                // find its claim refused and queue none, and Meta's own `sent` moves nothing.
                Err(e) => {
                    let Some(sent) = super::status::this_move(
                        deps,
                        &job.tenant_id,
                        &job.message_id,
                        MessageStatus::Sent,
                        sent_at,
                    )
                    .await
                    else {
                        return Err(e.into());
                    };
                    tracing::warn!(error = %e, "the sent move answered an error but landed");
                    super::quality::count_sent(deps, &job.tenant_id).await;
                    super::callbacks::status_changed(deps, &sent).await;
                }
            }
            let kept = match kept {
                Ok(kept) => kept,
                // The move is written, so a retried job would find its claim refused and
                // never index the wamid (statuses without callback data would then not
                // find the message): one more try here, then the job is retried as before.
                Err(e) => {
                    tracing::warn!(error = %e, "wamid index not written; trying once more");
                    deps.messages
                        .index_wamid(&job.tenant_id, &job.message_id, &accepted.wamid, expires)
                        .await?
                }
            };
            // Statuses Meta sent before the wamid was recorded apply now (read only when
            // the index said some were kept: no read in the usual case).
            tracing::info!(wamid = %crate::domain::wamid_tail(&accepted.wamid), to = %log_to, "sent to meta");
            if kept {
                if let Err(e) = super::status::apply_kept(deps, &accepted.wamid).await {
                    // Meta was answered 200 for them and sends them no more: the job comes
                    // back and applies them (`deadline::after_send`, whatever check it meets first).
                    if let Some(again) = super::deadline::kept_again(&e) {
                        return Ok(again);
                    }
                }
            }
            Ok(Outcome::Done)
        }
        Err(MetaSendError::Timeout) => {
            // Ambiguous: Meta may have it. Never blindly resent; the status webhook
            // (matched by biz_opaque_callback_data) settles it.
            // A recheck job of its own, without content, comes back at the sending
            // deadline to fail the message if no webhook settled it by then (`deadline`).
            tracing::warn!(to = %log_to, "meta timeout; left sending for the webhook to settle");
            crate::metrics::retry("ambiguous");
            Ok(super::deadline::recheck_hop(deps, job, record.updated_at))
        }
        Err(err) => {
            let (class, error) = match &err {
                MetaSendError::Api {
                    http_status,
                    code,
                    title,
                    is_transient,
                } => (
                    classify_reported(*code, *http_status, *is_transient),
                    MessageError {
                        code: (*code).into(),
                        title: meta_title(title, &job.content, &record.to),
                    },
                ),
                // 503 without Meta's error body: the service did not take the request
                // (RFC 9110), so it is safe to send again. Any other 5xx we cannot read
                // (a proxy's 502 or 504, a bare 500) is ambiguous, as a timeout is: Meta
                // may have the message, and it is never sent twice (below).
                MetaSendError::Protocol(status) if *status == 503 => (
                    ErrorClass::Transient,
                    MessageError {
                        code: "meta_unavailable".into(),
                        title: format!("meta answered http {status}"),
                    },
                ),
                MetaSendError::Connection(_) => (
                    ErrorClass::Transient,
                    MessageError {
                        code: "meta_unreachable".into(),
                        title: "could not connect to meta".into(),
                    },
                ),
                // A 4xx without Meta's error body (a proxy's, or Meta's own unreadable
                // one): the request was refused, not taken, so another try cannot send
                // twice; after the tries it fails, refunded, instead of waiting out the
                // sending deadline unrefunded.
                // A 3xx (never followed) took nothing either.
                MetaSendError::Protocol(status) if (300..500).contains(status) => (
                    ErrorClass::Transient,
                    MessageError {
                        code: super::errors::META_REFUSED_UNREADABLE.into(),
                        title: format!("meta answered http {status} without a reason"),
                    },
                ),
                _ => {
                    tracing::warn!(error = %err, "unreadable meta answer; left sending");
                    crate::metrics::retry("ambiguous");
                    return Ok(super::deadline::recheck_hop(deps, job, record.updated_at));
                }
            };
            tracing::warn!(to = %log_to, code = %error.code, class = ?class, attempt = record.attempts, "meta refused");
            if error.code == 130429 {
                crate::metrics::throttle("meta_130429");
            }
            match class {
                ErrorClass::Transient | ErrorClass::Delayed
                    if record.attempts < deps.settings.dispatch_max_attempts =>
                {
                    crate::metrics::retry(if class == ErrorClass::Delayed {
                        "delayed"
                    } else {
                        "transient"
                    });
                    // Tried again while the store's failure is worth it, as every undo is
                    // (`store_error::undo`): a release left undone keeps the message
                    // `sending` with nothing sent, for its deadline to fail it unrefunded.
                    // Repeatable: conditional on this claim. Still not written, the retry
                    // below carries the claim and gives it back first (retried as it
                    // was, the job would find its claim refused and only wait for the
                    // deadline: `outcome_unknown`, charged, for a message Meta refused).
                    let given_back = release_with(deps, job, record.updated_at, &error).await;
                    let base = if class == ErrorClass::Delayed {
                        deps.settings.dispatch_backoff.saturating_mul(2)
                    } else {
                        deps.settings.dispatch_backoff
                    };
                    // As a fresh queue message, not the same one made visible again: every
                    // receive of one message counts toward the redrive to the dead-letter
                    // queue (10), and an attempt on a busy number takes two (one turned
                    // away for its slot, one that sends). Across 8 attempts the same
                    // message would be parked there, `accepted`, debited and unsent.
                    let delay = backoff(base, record.attempts);
                    let mut again = again_after_release(job, record.updated_at, given_back);
                    again.retry_at = chrono::Duration::from_std(delay)
                        .ok()
                        .filter(|_| delay > deps.settings.schedule_hop)
                        .and_then(|d| deps.clock.now().checked_add_signed(d));
                    Ok(super::schedule::wait_again(deps, &QueueJob::Send(again), delay).await?)
                }
                ErrorClass::NumberStop => {
                    // That number only: the tenant's other numbers go on.
                    super::numbers::hold_for_meta(
                        deps,
                        &tenant,
                        &from.phone_number_id,
                        (
                            match error.code {
                                crate::domain::ErrorCode::Meta(c) => c,
                                crate::domain::ErrorCode::Kirim(_) => 131048,
                            },
                            &error.title,
                        ),
                        "dispatcher",
                        // The claim's time, before the request went: an admin's resume
                        // after it, while Meta answered, stands.
                        record.updated_at,
                    )
                    .await;
                    crate::metrics::failed("number_stop");
                    fail_unsent(
                        deps,
                        job,
                        Unsent::Claimed(record.updated_at),
                        record.price,
                        error,
                    )
                    .await
                }
                ErrorClass::TenantStop => {
                    if is_token_refusal(&error) {
                        match token_replaced(deps, &tenant.meta_token_secret, &token).await {
                            // The operator replaced the token (and revoked the old one at
                            // Meta) before this process's copy expired: the claim is given
                            // back and the message tried again with the new token, as a
                            // fresh queue message (a retry made visible again spends the
                            // job's receives toward the dead-letter queue), never the
                            // tenant suspended for a token it no longer has.
                            Ok(true) => {
                                tracing::warn!("meta refused a token the account no longer has; retrying with its new one");
                                let given_back =
                                    release(deps, job, record.updated_at, "meta_token_replaced")
                                        .await;
                                crate::metrics::retry("token_replaced");
                                let again = QueueJob::Send(again_after_release(
                                    job,
                                    record.updated_at,
                                    given_back,
                                ));
                                return Ok(super::schedule::wait_again(
                                    deps,
                                    &again,
                                    std::time::Duration::from_secs(1),
                                )
                                .await?);
                            }
                            Ok(false) => {}
                            // Not known whether it was replaced: given back, the tenant not
                            // suspended meanwhile; the job is retried when the store's
                            // failure is one a retry may fix, else parked on the dead-letter
                            // queue (alarmed; the lost-job settlement refunds it).
                            Err(e) => {
                                return Err(unclaim(
                                    deps,
                                    job,
                                    record.updated_at,
                                    "meta_token_unreadable",
                                    e,
                                )
                                .await)
                            }
                        }
                    }
                    let reason = format!(
                        "{}{}: {}",
                        crate::domain::error_text::META_ERROR_REASON,
                        error.code,
                        error.title
                    );
                    super::accounts::suspend_for_meta(
                        deps,
                        &job.tenant_id,
                        &reason,
                        "dispatcher",
                        tenant.status_changed_at,
                    )
                    .await;
                    crate::metrics::failed("tenant_stop");
                    fail_unsent(
                        deps,
                        job,
                        Unsent::Claimed(record.updated_at),
                        record.price,
                        error,
                    )
                    .await
                }
                _ => {
                    crate::metrics::failed(match class {
                        ErrorClass::Transient | ErrorClass::Delayed => "exhausted",
                        ErrorClass::Suppress => "suppress",
                        _ => "permanent",
                    });
                    // Meta's 131050 in its answer (as in a status webhook): the recipient
                    // stopped marketing messages, so no more marketing to them (the hint
                    // promises it), not a refused, refunded try every time.
                    // Best effort: the message's own failure and refund below must not wait
                    // on it (a storage error here would leave the claim for the deadline).
                    if class == ErrorClass::Suppress {
                        if let Err(e) = Box::pin(super::optouts::marketing_stopped_for(
                            deps,
                            &job.tenant_id,
                            &job.message_id,
                            Some(&record.to),
                            None,
                        ))
                        .await
                        {
                            tracing::warn!(error = %e, "marketing opt-out from 131050 not recorded");
                        }
                    }
                    fail_unsent(
                        deps,
                        job,
                        Unsent::Claimed(record.updated_at),
                        record.price,
                        exhausted_error(class, error),
                    )
                    .await
                }
            }
        }
    }
}

/// Meta's text about a refused send, as the message's error title: without what the job
/// sent that Meta may quote back (its parameters' values or its body, and the recipient's
/// number in every form WhatsApp knows it by) and without any other number, cut to
/// [`crate::domain::error_text::MAX_ERROR_TITLE`]. It is stored for two years, shown by
/// the API and the export, sent in status callbacks, and may become a number's hold or the
/// tenant's suspension reason.
fn meta_title(
    text: &str,
    content: &crate::domain::Content,
    to: &crate::domain::PhoneNumber,
) -> String {
    use crate::domain::error_text;
    let forms = error_text::phone_forms(to);
    let mut quoted = error_text::content_values(content);
    quoted.extend(forms.iter().map(String::as_str));
    error_text::title(text, &quoted)
}

/// The error a message fails with once Meta's refusals of class `class` end its tries. A
/// code retried only for its HTTP status (an unknown one answered 5xx or 429) would read as
/// a permanent refusal to `retry-failed` (`broadcasts::retryable` sees the code alone): such
/// a failure is `meta_transient_error`, Meta's code and text kept in its title.
fn exhausted_error(class: ErrorClass, error: MessageError) -> MessageError {
    let transient = matches!(class, ErrorClass::Transient | ErrorClass::Delayed);
    if !transient || super::broadcasts::retryable(&error.code) {
        return error;
    }
    MessageError {
        code: super::errors::META_TRANSIENT_ERROR.into(),
        title: format!("meta error {}: {}", error.code, error.title)
            .chars()
            .take(crate::domain::error_text::MAX_ERROR_TITLE)
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ErrorClass::*;

    #[test]
    fn every_meta_code_in_the_table_has_its_class() {
        // Meta's error reference, as the table should have it: each row written out here,
        // so that a row lost from the table fails below.
        let table: &[(i64, ErrorClass)] = &[
            (1, Transient),
            (2, Transient),
            (4, Transient),
            (17, Transient),
            (32, Transient),
            (613, Transient),
            (80007, Transient),
            (130429, Transient),
            (131000, Transient),
            (131016, Transient),
            (131057, Transient),
            (131056, Delayed),
            (131050, Suppress),
            (100, Permanent),
            (131008, Permanent),
            (131009, Permanent),
            (131021, Permanent),
            (131026, Permanent),
            (131047, Permanent),
            (131051, Permanent),
            (131052, Permanent),
            (131053, Permanent),
            (132000, Permanent),
            (132001, Permanent),
            (132005, Permanent),
            (132007, Permanent),
            (132012, Permanent),
            (132015, Permanent),
            (132016, Permanent),
            (133010, Permanent),
            (135000, Permanent),
            (0, TenantStop),
            (102, TenantStop),
            (190, TenantStop),
            (131031, TenantStop),
            (131042, TenantStop),
            (368, TenantStop),
            (131048, NumberStop),
        ];
        // Every code of the table's own lists is written out above with its class.
        let rows = TRANSIENT_CODES
            .iter()
            .chain(PERMANENT_CODES)
            .chain(super::super::errors::ACCOUNT_STOP_CODES)
            .chain(super::super::errors::NUMBER_STOP_CODES)
            .chain(&[PAIR_RATE_LIMIT, MARKETING_STOPPED]);
        for code in rows {
            assert!(
                table.iter().any(|(c, _)| c == code),
                "code {code} of the table is not in this test"
            );
        }
        // Asked where a code the table does not know is Transient (a 5xx Meta says is
        // transient), and where it is Permanent (a 4xx Meta says is not): only the row
        // itself gives each class in both.
        for (code, class) in table {
            assert_eq!(
                classify_reported(*code, 500, Some(true)),
                *class,
                "code {code} at 500"
            );
            assert_eq!(
                classify_reported(*code, 400, Some(false)),
                *class,
                "code {code} at 400"
            );
        }
    }

    #[test]
    fn retry_failed_picks_exactly_the_codes_the_dispatcher_retries() {
        use crate::domain::ErrorCode;
        for code in [
            1, 2, 4, 17, 32, 613, 80007, 100, 130429, 131000, 131008, 131016, 131026, 131031,
            131042, 131047, 131048, 131050, 131051, 131056, 131057, 132000, 132001, 132015, 133010,
            190, 368,
        ] {
            let retried = matches!(classify(code, 400), Transient | Delayed);
            assert_eq!(
                super::super::broadcasts::retryable(&ErrorCode::Meta(code)),
                retried,
                "code {code}"
            );
        }
        // An unknown code retried for its 5xx (or 429), its tries run out: retried by
        // `retry-failed` too, with Meta's code in the title; a known one keeps its code.
        let unknown = MessageError {
            code: ErrorCode::Meta(999_999),
            title: "Something new".into(),
        };
        let exhausted = exhausted_error(classify(999_999, 500), unknown.clone());
        assert_eq!(
            exhausted.code,
            ErrorCode::from(super::super::errors::META_TRANSIENT_ERROR)
        );
        assert_eq!(exhausted.title, "meta error 999999: Something new");
        assert!(super::super::broadcasts::retryable(&exhausted.code));
        assert_eq!(
            exhausted_error(classify(999_999, 400), unknown.clone()),
            unknown
        );
        let known = MessageError {
            code: ErrorCode::Meta(131000),
            title: "Something went wrong".into(),
        };
        assert_eq!(exhausted_error(classify(131000, 500), known.clone()), known);
        for (code, retryable) in [
            ("meta_unreachable", true),
            ("meta_unavailable", true),
            ("meta_refused_unreadable", true),
            ("outcome_unknown", true),
            // Never sent, refunded: tried again once its number is resumed.
            ("sender_held", true),
            ("recipient_opted_out", false),
            ("tenant_suspended", false),
            ("cancelled", false),
        ] {
            assert_eq!(
                super::super::broadcasts::retryable(&ErrorCode::from(code)),
                retryable,
                "{code}"
            );
        }
    }

    /// A code without its own hint shows the fallback, "The message failed. Send again
    /// later": read on a message still being retried (or delivered since: later moves keep
    /// the error), it makes a client send a duplicate.
    #[test]
    fn every_code_the_dispatcher_writes_on_a_message_has_its_own_hint() {
        use crate::domain::{hints::hint, ErrorCode};
        let fallback = hint(&ErrorCode::from("a code no table has"));
        for code in [
            "claim_answer_lost",
            "rate_limiter_unavailable",
            "failure_not_recorded",
            "release_not_recorded",
            "meta_token_replaced",
            "meta_token_unreadable",
            "meta_token_missing",
            "sender_removed",
            "sender_held",
            "tenant_suspended",
            "tenant_closed",
            "recipient_opted_out",
            "meta_unavailable",
            "meta_unreachable",
            "cancelled",
            super::super::errors::META_REFUSED_UNREADABLE,
            super::super::errors::META_TRANSIENT_ERROR,
            super::super::deadline::OUTCOME_UNKNOWN,
            super::super::deadline::DISPATCH_LOST,
        ] {
            assert_ne!(hint(&ErrorCode::from(code)), fallback, "{code}");
        }
    }

    #[test]
    fn unknown_codes_retry_as_meta_says_else_only_on_server_errors_and_rate_limits() {
        // Meta's own word decides for an unknown code, never for a known one.
        assert_eq!(classify_reported(999_999, 400, Some(true)), Transient);
        assert_eq!(classify_reported(999_999, 503, Some(false)), Permanent);
        assert_eq!(classify_reported(999_999, 503, None), Transient);
        assert_eq!(classify_reported(131026, 400, Some(true)), Permanent);
        assert_eq!(classify_reported(131000, 500, Some(false)), Transient);
        assert_eq!(classify(999_999, 503), Transient);
        assert_eq!(classify(999_999, 429), Transient);
        assert_eq!(classify(999_999, 400), Permanent);
    }
}
