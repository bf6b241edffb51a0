//! The sending deadline: a message left `sending` by an ambiguous Meta answer (a timeout)
//! is settled by Meta's status webhook. If none comes within `KIRIM_SENDING_DEADLINE`
//! it becomes `failed` with `outcome_unknown`, not refunded: Meta may well have sent
//! (and charged for) it, and Kirim cannot tell; a refund could pay for a delivered
//! message. The job that found the message `sending` (the one that timed out, a duplicate
//! delivery, a job whose dispatcher died after its claim) is replaced by a recheck job
//! with no content ([`recheck_hop`]), which comes back at the deadline (at most 11 h 55
//! min at a time: SQS refuses a visibility beyond 12 hours from the receive) to make this
//! check; it never sends again: a recheck never claims, and only an `accepted` message
//! can be claimed.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::domain::{MessageError, MessageStatus, RetentionClass};
use crate::metrics;
use crate::ports::Transition;
use crate::store_error::StoreError;

use super::errors::ServiceError;
use super::jobs::{DispatchJob, Outcome, QueueJob, MAX_DELAY};
use super::ledger::{self, Charge};
use super::Deps;

pub const OUTCOME_UNKNOWN: &str = "outcome_unknown";

/// How long a job may wait for its message to be recorded. A send queues its job first
/// and writes the message after (`send::send_once`), so a job can arrive before its
/// message, or find none at all when the request died or was refused in between. Far
/// longer than any send request lasts (API Gateway ends them at 30 s).
pub const UNRECORDED_GRACE: Duration = Duration::from_secs(120);

/// A job whose message (or broadcast) `id` is not (or no longer) recorded: waited for
/// while young, dropped once older than [`UNRECORDED_GRACE`] (its request never wrote it:
/// nothing was charged, so nothing is sent). A message or broadcast id is a ULID of its
/// acceptance time; one that is not is treated as old.
pub fn unrecorded(deps: &Deps, id: &str) -> Outcome {
    match unrecorded_wait(age_of(deps, id)) {
        Some(wait) => Outcome::RetryAfter(wait),
        None => {
            tracing::info!(id, "nothing recorded for this job; dropping it");
            Outcome::Done
        }
    }
}

/// How long a job whose message is `age` old and not recorded waits before it looks
/// again; `None` once past [`UNRECORDED_GRACE`]. Soon at first (the write usually lands
/// within milliseconds), then as long as the job has waited, up to a minute: the age at
/// least doubles each receive, so the grace is passed by the 10th receive, the dispatch
/// queue's `maxReceiveCount` (template.yaml), and a job whose request was refused after it
/// was queued (a short balance at the debit) is dropped, not parked on the dead-letter
/// queue. (Capped at 30 s it took 11 receives: it was dropped only because its 30 s wait
/// was taken for a storage retry and floored, at the default backoff only.)
pub fn unrecorded_wait(age: Duration) -> Option<Duration> {
    (age < UNRECORDED_GRACE).then(|| age.clamp(Duration::from_millis(500), Duration::from_secs(60)))
}

/// How long ago the message or broadcast `id` (a ULID of its acceptance time) was
/// accepted; an id that is not a ULID counts as old. A sender's clock a little ahead of
/// this one's counts as just accepted.
pub fn age_of(deps: &Deps, id: &str) -> Duration {
    ulid::Ulid::from_string(id)
        .ok()
        .map(|u| DateTime::<Utc>::from(u.datetime()))
        .map_or(Duration::MAX, |at| {
            (deps.clock.now() - at).to_std().unwrap_or_default()
        })
}

/// Whether the job's request came with an `Idempotency-Key` that names another message:
/// that request lost the key to it (a replay, a concurrent retry) and never records this
/// job's message (the key's record and its message are one write, and the key outlives
/// any request by hours). One read, only for a keyed job that found no message.
async fn lost_to_its_key(deps: &Deps, job: &DispatchJob) -> Result<bool, StoreError> {
    let Some(hash) = job.key_hash.as_deref() else {
        return Ok(false);
    };
    Ok(deps
        .idempotency
        .get_idempotency(&job.tenant_id, hash)
        .await?
        .is_some_and(|r| r.message_id != job.message_id))
}

/// When to look again at a message claimed at `claimed_at` that is still `sending`.
pub fn recheck_after(deps: &Deps, claimed_at: DateTime<Utc>) -> Duration {
    let age = (deps.clock.now() - claimed_at).to_std().unwrap_or_default();
    deps.settings
        .sending_deadline
        .saturating_sub(age)
        .clamp(Duration::from_millis(100), MAX_DELAY)
}

/// The job that looks again at a message Meta's answer left `sending` under the claim
/// made at `claimed_at`, when the sending deadline is due: a fresh queue message
/// ([`DispatchJob::recheck`], no content) in place of the one received.
pub fn recheck_hop(deps: &Deps, job: &DispatchJob, claimed_at: DateTime<Utc>) -> Outcome {
    let delay = recheck_after(deps, claimed_at);
    let again = DispatchJob {
        content: crate::domain::Content::Text {
            body: String::new(),
        },
        recheck: true,
        refused: None,
        refused_claim: None,
        key_hash: None,
        retry_at: None,
        send_at: None,
        // Nor the recipient: a recheck reads the message.
        facts: None,
        ..job.clone()
    };
    match QueueJob::Send(again).to_body() {
        Ok(body) => Outcome::Again(body, delay),
        // (Never: a job that was read serialises.) The one received comes back instead.
        Err(_) => Outcome::RetryAfter(delay),
    }
}

/// A recheck job ([`recheck_hop`]): a message still `sending` fails at the deadline (or is
/// looked at again before it); one in any other state was settled (or is another job's
/// to claim: a recheck carries no content and never claims): the job is done.
pub async fn recheck(deps: &Deps, job: &DispatchJob) -> Result<Outcome, StoreError> {
    let found = deps
        .messages
        .get_message(&job.tenant_id, &job.message_id)
        .await?;
    match found {
        Some(m) if m.status == MessageStatus::Sending => redelivered_as(deps, job, Some(m)).await,
        _ => Ok(Outcome::Done),
    }
}

/// `expire_sending` at now. A write that landed but whose tries all ended in an error
/// (its answer lost, then throttled) is read back: found as this move left it
/// ([`expired_by`](crate::ports::expired_by)), it is applied, and its callback is owed.
async fn expire(
    deps: &Deps,
    tenant: &crate::domain::TenantId,
    id: &crate::domain::MessageId,
    claimed_at: DateTime<Utc>,
    error: &MessageError,
) -> Result<Transition, StoreError> {
    let at = deps.clock.now();
    match deps
        .sending
        .expire_sending(tenant, id, claimed_at, error, at)
        .await
    {
        Ok(t) => Ok(t),
        Err(e) => match deps.messages.get_message(tenant, id).await {
            Ok(Some(m)) if crate::ports::expired_by(&m, error, at) => {
                Ok(Transition::Applied(Box::new(m)))
            }
            _ => Err(e),
        },
    }
}

/// A queue message whose message was not claimable when read. Missing: see
/// [`unrecorded`]; `accepted` (it appeared or came back since): tried again soon; still
/// `sending` past the deadline it fails; still `sending` within it, it is checked again
/// later; anything else is a finished message or a duplicate: dropped, once a sent one's
/// post-send work is done ([`after_send`]).
pub async fn redelivered(deps: &Deps, job: &DispatchJob) -> Result<Outcome, StoreError> {
    let found = deps
        .messages
        .get_message(&job.tenant_id, &job.message_id)
        .await?;
    redelivered_as(deps, job, found).await
}

/// [`redelivered`], with the message as the caller just read it (`None`: not there).
pub async fn redelivered_as(
    deps: &Deps,
    job: &DispatchJob,
    found: Option<crate::domain::MessageRecord>,
) -> Result<Outcome, StoreError> {
    let Some(m) = found else {
        if lost_to_its_key(deps, job).await? {
            tracing::info!("another request with this job's Idempotency-Key recorded its message; dropping the job");
            return Ok(Outcome::Done);
        }
        return Ok(unrecorded(deps, job.message_id.as_str()));
    };
    if m.status == MessageStatus::Accepted {
        // Recorded just after this job found it missing (the send writes it after queueing
        // the job), or given back for a retry: the job tries to claim it again soon.
        return Ok(Outcome::RetryAfter(Duration::from_millis(500)));
    }
    if m.status != MessageStatus::Sending {
        // Sent: a job back for the post-send work it could not finish (the wamid's index,
        // the statuses kept for it) does it here, whichever check before the claim sent
        // it here (a suspension meanwhile would otherwise drop it, the statuses unapplied).
        if let Some(again) = after_send(deps, job, &m).await {
            return Ok(again);
        }
        tracing::info!("already claimed or finished; dropping duplicate");
        return Ok(Outcome::Done);
    }
    let claimed_at = m.updated_at;
    let age = (deps.clock.now() - claimed_at).to_std().unwrap_or_default();
    if age < deps.settings.sending_deadline {
        // A job with content (a duplicate delivery, or one whose dispatcher died after
        // the claim) leaves the queue for a recheck job of its own, as after a timeout.
        if !job.recheck {
            return Ok(recheck_hop(deps, job, claimed_at));
        }
        return Ok(Outcome::RetryAfter(recheck_after(deps, claimed_at)));
    }
    let error = MessageError {
        code: OUTCOME_UNKNOWN.into(),
        title: "meta never confirmed the message before the sending deadline; it may or may \
                not have been delivered, so it is not refunded"
            .into(),
    };
    let expired = match expire(deps, &job.tenant_id, &job.message_id, claimed_at, &error).await {
        Ok(t) => t,
        // The failure could not be written: a fresh recheck job comes back for it after
        // the backoff. Retried as the message received, a job past the deadline spends
        // receives it has few of (a recheck of a 24 h deadline is a day old: the
        // dead-letter queue, which keeps a message one day from its first enqueue, would
        // drop it at once), and the message would wait for the lost-job settlement.
        Err(e) if e.is_retryable() => {
            tracing::warn!(error = %e, "the sending deadline's failure not written; looked at again");
            crate::metrics::retry("storage");
            return Ok(match recheck_hop(deps, job, claimed_at) {
                Outcome::Again(body, _) => Outcome::Again(body, deps.settings.dispatch_backoff),
                other => other,
            });
        }
        Err(e) => return Err(e),
    };
    match expired {
        Transition::Applied(failed) => {
            metrics::failed(OUTCOME_UNKNOWN);
            tracing::warn!(to = %m.to.masked(), "sending deadline passed without a status; marked failed, not refunded");
            super::callbacks::status_changed(deps, &failed).await;
        }
        // A webhook or another dispatcher settled it meanwhile: theirs stands.
        Transition::Refused => {}
    }
    Ok(Outcome::Done)
}

/// How long a message's wamid index lives: as long as its message (a broadcast's message
/// carries its broadcast's expiry, later than its own creation's).
pub(super) fn index_expiry(deps: &Deps, record: &crate::domain::MessageRecord) -> Option<i64> {
    record.expires_at.or_else(|| {
        deps.settings
            .retention
            .expiry(RetentionClass::Messages, record.created_at)
    })
}

/// The post-send work of a message past `sending` with its wamid, for a job that found it
/// so ([`redelivered_as`], where every job ends that finds its message claimed or
/// finished, whichever check sent it there): back because the statuses kept for the wamid
/// could not be applied after the send, or because the wamid's index was not written after
/// it (or a duplicate delivery, which then finds none: one read). Meta answered 200 for
/// them and sends them no more, so this runs before any check that could drop the job (a
/// tenant suspended meanwhile, a recipient opted out, a broadcast held). The index is
/// written again first (the same item, idempotent: one write, on this path only): a job
/// whose index writes both failed was retried for it, and statuses without our callback
/// data would never find the message. `Some`: the job comes back for what is still undone.
pub(super) async fn after_send(
    deps: &Deps,
    job: &DispatchJob,
    m: &crate::domain::MessageRecord,
) -> Option<Outcome> {
    let sent = matches!(
        m.status,
        MessageStatus::Sent
            | MessageStatus::Delivered
            | MessageStatus::Read
            | MessageStatus::Failed
    );
    let wamid = m.wamid.as_deref().filter(|_| sent)?;
    let expires = index_expiry(deps, m);
    if let Err(e) = deps
        .messages
        .index_wamid(&job.tenant_id, &job.message_id, wamid, expires)
        .await
    {
        if e.is_retryable() {
            tracing::warn!(error = %e, "wamid index not written again; retrying");
            return Some(Outcome::Backoff(deps.settings.dispatch_backoff));
        }
        tracing::error!(error = %e, "wamid index not written again");
    }
    match super::status::apply_kept(deps, wamid).await {
        Ok(_) => None,
        Err(e) => kept_again(&e),
    }
}

/// When a job comes back for the statuses kept for its wamid that could not be applied
/// (storage refusing: a storage retry, `queue_handlers::floored`).
pub const KEPT_RETRY: Duration = Duration::from_secs(5);

/// What a job does when the statuses kept for its wamid could not be applied: back in
/// [`KEPT_RETRY`] while the failure is one a retry may fix (storage unavailable or
/// throttled); otherwise (a kept item that cannot be read) done, logged, rather than
/// cycling toward the dead-letter queue with the message's content.
pub(super) fn kept_again(e: &ServiceError) -> Option<Outcome> {
    match e {
        ServiceError::Unavailable(store) if store.is_retryable() => {
            tracing::warn!(error = %e, "kept statuses not applied yet; the job comes back for them");
            Some(Outcome::Backoff(KEPT_RETRY))
        }
        _ => {
            tracing::error!(error = %e, "kept statuses cannot be applied; left to their expiry");
            None
        }
    }
}

/// The code of a message whose dispatch job was lost before it was sent.
pub const DISPATCH_LOST: &str = "dispatch_lost";

/// How the daily run settled a message whose job was lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settled {
    /// Still `accepted`: failed `dispatch_lost`, refunded (it was never sent); still
    /// `scheduled`: cancelled `dispatch_lost`, refunded.
    Refunded,
    /// Still `sending`: failed `outcome_unknown`, not refunded (as at the sending deadline).
    OutcomeUnknown,
}

/// A message the retention sweep found `accepted` or `sending` without a move for
/// [`crate::domain::UNSENT_STALE_AFTER`], or still `scheduled` that long past its
/// `send_at`: its dispatch job is gone (parked on the
/// dead-letter queue and expired there; a live job moves its message far more often), so
/// nothing else would ever settle it. Read again first (it may have moved since the scan);
/// a paused broadcast's message is left to its broadcast, and so is a broadcast's paused or
/// resumed within that time (a pause leaves its messages unmoved). Each end is a conditional write
/// on what was read, so a job that does come after all finds the message settled (and
/// drops itself), or settles it first.
pub async fn settle_lost(
    deps: &super::Deps,
    tenant: &crate::domain::TenantId,
    id: &crate::domain::MessageId,
) -> Result<Option<Settled>, StoreError> {
    let Some(m) = deps.messages.get_message(tenant, id).await? else {
        return Ok(None);
    };
    let now = deps.clock.now();
    let stale = chrono::Duration::from_std(crate::domain::UNSENT_STALE_AFTER)
        .unwrap_or_else(|_| chrono::Duration::days(5));
    // A scheduled message waits unmoved until its `send_at`: stale only that long past it.
    let since = match m.status {
        MessageStatus::Scheduled => match m.send_at {
            Some(at) => at,
            None => return Ok(None),
        },
        _ => m.updated_at,
    };
    if now - since < stale {
        return Ok(None);
    }
    // A message about to expire (its Messages retention, as short as 14 days) is settled
    // whatever its broadcast does: the sweep would otherwise delete it unsent and never
    // refunded, however long its campaign stays paused.
    let expiring = m
        .expires_at
        .is_some_and(|at| at - now.timestamp() < stale.num_seconds());
    if let Some(b) = m.broadcast_id.as_ref().filter(|_| !expiring) {
        // Paused: its messages wait unmoved as long as it does. Resumed (or paused) less
        // than the stale time ago: its messages' jobs may only now come back for them.
        let waiting = deps
            .broadcasts
            .get_broadcast(tenant, b)
            .await?
            .is_some_and(|b| {
                b.control == Some(crate::ports::BroadcastControl::Paused)
                    || b.control_at.is_some_and(|at| now - at < stale)
            });
        if waiting {
            return Ok(None);
        }
    }
    let settled = match m.status {
        MessageStatus::Accepted => {
            let error = MessageError {
                code: DISPATCH_LOST.into(),
                title: "the message's dispatch job was lost before it was sent; refunded".into(),
            };
            fail_and_refund(
                deps,
                tenant,
                id,
                m.broadcast_id.as_deref(),
                MessageStatus::Accepted,
                m.price,
                error,
                "message not sent: its dispatch job was lost",
            )
            .await?
            .map(|r| (r, Settled::Refunded))
        }
        // Never due to a dispatcher: it cannot fail (it never left for Meta), it is
        // cancelled and refunded as a person's cancel would, with the lost job's code.
        MessageStatus::Scheduled => {
            let error = MessageError {
                code: DISPATCH_LOST.into(),
                title: "the message's dispatch job was lost before its send_at; cancelled and \
                        refunded"
                    .into(),
            };
            let refund = super::ledger::cancel_refund_entry(
                deps,
                tenant,
                &super::ledger::Charge::of_message(id, m.broadcast_id.as_deref()),
                m.price,
                "scheduled message not sent: its dispatch job was lost",
                now,
            );
            let moved = match deps
                .messages
                .cancel_with_refund(
                    tenant,
                    id,
                    &[MessageStatus::Scheduled],
                    &error,
                    &refund,
                    now,
                )
                .await
            {
                Ok(t) => t,
                Err(e) => {
                    let to = MessageStatus::Cancelled;
                    super::ledger::written_after_all(deps, tenant, id, to, now, e).await?
                }
            };
            match moved {
                Transition::Applied(r) => {
                    super::callbacks::status_changed(deps, &r).await;
                    Some((r, Settled::Refunded))
                }
                Transition::Refused => None,
            }
        }
        MessageStatus::Sending => {
            let error = MessageError {
                code: OUTCOME_UNKNOWN.into(),
                title: "meta never confirmed the message and its dispatch job was lost; it may \
                        or may not have been delivered, so it is not refunded"
                    .into(),
            };
            match expire(deps, tenant, id, m.updated_at, &error).await? {
                Transition::Applied(r) => Some((r, Settled::OutcomeUnknown)),
                Transition::Refused => None,
            }
        }
        _ => None,
    };
    let Some((record, how)) = settled else {
        return Ok(None);
    };
    metrics::failed(match how {
        Settled::Refunded => DISPATCH_LOST,
        Settled::OutcomeUnknown => OUTCOME_UNKNOWN,
    });
    tracing::warn!(
        tenant_id = %tenant, message_id = %id, to = %record.to.masked(), outcome = ?how,
        "message left unsent by a lost dispatch job; settled"
    );
    // The refunded one's callback was queued with its write (`fail_and_refund`).
    if how == Settled::OutcomeUnknown {
        super::callbacks::status_changed(deps, &record).await;
    }
    Ok(Some(how))
}

/// Fails the message `id`, still `from`, with `error` and refunds its `price` (`reason` on
/// the ledger) in one conditional write, and queues its status callback; the failed
/// message, or `None` if it was no longer `from` (nothing written). Only from `from`, free
/// or not: a check made before the claim must never fail a message another dispatcher has
/// claimed or Meta has accepted. `broadcast`: the campaign it belongs to (its refund names
/// it on the ledger).
#[allow(clippy::too_many_arguments)]
pub(super) async fn fail_and_refund(
    deps: &Deps,
    tenant: &crate::domain::TenantId,
    id: &crate::domain::MessageId,
    broadcast: Option<&str>,
    from: MessageStatus,
    price: i64,
    error: MessageError,
    reason: &str,
) -> Result<Option<Box<crate::domain::MessageRecord>>, StoreError> {
    let change = crate::ports::StatusChange {
        error: Some(error),
        ..Default::default()
    };
    let now = deps.clock.now();
    let refund = ledger::refund_entry(
        deps,
        tenant,
        &Charge::of_message(id, broadcast),
        price,
        reason,
        now,
    );
    let moved = match deps
        .messages
        .fail_and_refund(tenant, id, from, &change, now, refund.as_ref())
        .await
    {
        Ok(t) => t,
        Err(e) => {
            super::ledger::written_after_all(deps, tenant, id, MessageStatus::Failed, now, e)
                .await?
        }
    };
    match moved {
        Transition::Applied(record) => {
            super::callbacks::status_changed(deps, &record).await;
            Ok(Some(record))
        }
        Transition::Refused => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_statuses_bring_their_job_back_only_for_a_failure_a_retry_may_fix() {
        use crate::store_error::StoreError;
        let throttled = ServiceError::Unavailable(StoreError::Unavailable("throttled".into()));
        assert!(matches!(
            kept_again(&throttled),
            Some(Outcome::Backoff(d)) if d == KEPT_RETRY
        ));
        let unreadable = ServiceError::Internal("a kept item that cannot be read".into());
        assert!(kept_again(&unreadable).is_none());
    }

    /// The dispatch queue parks a message on its 11th receive (`maxReceiveCount: 10`).
    #[test]
    fn a_job_whose_message_was_never_recorded_is_dropped_within_the_queues_receives() {
        for first_age_ms in [0u64, 1, 30, 499, 500, 900, 5_000, 59_000, 119_999] {
            let mut age = Duration::from_millis(first_age_ms);
            let mut receives = 1;
            while let Some(wait) = unrecorded_wait(age) {
                age += wait;
                receives += 1;
            }
            assert!(
                receives <= 10,
                "first received at {first_age_ms} ms: dropped on receive {receives}"
            );
            assert!(age >= UNRECORDED_GRACE);
        }
        assert_eq!(unrecorded_wait(UNRECORDED_GRACE), None);
    }

    /// SQS refuses a visibility beyond 12 hours from the receive: the recheck of a claim
    /// made a moment ago under a 24 h deadline must ask for less, or it is refused on every
    /// receive and the job ends on the dead-letter queue, its message `sending` for good.
    #[test]
    fn a_recheck_never_asks_sqs_for_the_whole_twelve_hours() {
        let clock = std::sync::Arc::new(crate::ports::SystemClock);
        let settings = crate::config::Settings {
            sending_deadline: Duration::from_secs(24 * 3600),
            ..Default::default()
        };
        let deps = crate::wiring::memory_deps(settings, clock.clone()).expect("deps");
        let now = crate::ports::Clock::now(clock.as_ref());
        let wait = recheck_after(&deps, now - chrono::Duration::seconds(10));
        assert!(wait <= Duration::from_secs(43_200 - 300), "{wait:?}");
        assert!(wait >= Duration::from_secs(11 * 3600), "{wait:?}");
    }
}
