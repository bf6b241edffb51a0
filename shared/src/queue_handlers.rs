//! Event handlers for the non-HTTP Lambdas (and local mode's poller and schedule).

use aws_lambda_events::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use tracing::Instrument;

use crate::service::dispatch;
use crate::service::jobs::Outcome;
use crate::service::{retention, Deps};

/// One SQS batch: each record is handled on its own; only failures are reported back
/// (`ReportBatchItemFailures`), so one bad message never fails its batch. The batch's
/// hops (jobs not due yet) go back on the queue together before the batch is answered.
pub async fn dispatch_batch(deps: &Deps, event: SqsEvent) -> SqsBatchResponse {
    let work = event.records.iter().map(|record| {
        let body = record.body.as_deref().unwrap_or_default();
        let receives = receive_count(record);
        handle_record(deps, record.receipt_handle.as_deref(), body, receives)
    });
    let outcomes = batch(deps, futures::future::join_all(work)).await;
    let hopped = hops_of(&outcomes);
    let outcomes = send_hops(deps, outcomes).await;
    let acks = event.records.iter().zip(outcomes).zip(hopped).map(
        |((record, outcome), hopped)| async move {
            let failed = match floored(deps, outcome, receive_count(record)) {
                Outcome::Done => false,
                // (`floored` left no `Backoff`.)
                Outcome::RetryAfter(delay) | Outcome::Backoff(delay) => {
                    // A hop that could not be sent; any other retry's delay is set already.
                    if let (true, Some(receipt)) = (hopped, record.receipt_handle.as_deref()) {
                        set_retry(deps, receipt, delay).await;
                    }
                    true
                }
                // `send_hops` answered every hop (`Done` or `RetryAfter`).
                Outcome::Poison | Outcome::Again(..) => true,
            };
            failed.then(|| {
                let mut f = BatchItemFailure::default();
                f.item_identifier = record.message_id.clone().unwrap_or_default();
                f
            })
        },
    );
    let mut response = SqsBatchResponse::default();
    response.batch_item_failures = futures::future::join_all(acks)
        .await
        .into_iter()
        .flatten()
        .collect();
    response
}

/// Sends a batch's hops ([`Outcome::Again`]): those with the same delay (in SQS's whole
/// seconds) together, one `SendMessageBatch` per ten (or per 256 KiB of bodies) instead
/// of a `SendMessage` each. Each hop becomes `Done` once sent, or `RetryAfter` the backoff
/// when its own send failed (that job received is then retried); SQS answers each entry,
/// so one refused body does not send the others' jobs round again. Entries SQS refused on
/// its side are sent again alone once (`SqsQueue`).
async fn send_hops(deps: &Deps, mut outcomes: Vec<Outcome>) -> Vec<Outcome> {
    let mut by_delay: std::collections::BTreeMap<u64, Vec<usize>> = Default::default();
    for (i, o) in outcomes.iter().enumerate() {
        if let Outcome::Again(_, delay) = o {
            by_delay
                .entry(delay.as_secs_f64().ceil() as u64)
                .or_default()
                .push(i);
        }
    }
    for (secs, indices) in by_delay {
        let bodies: Vec<String> = indices
            .iter()
            .filter_map(|&i| match &outcomes[i] {
                Outcome::Again(body, _) => Some(body.clone()),
                _ => None,
            })
            .collect();
        let sent = deps
            .queue
            .send_batch_delayed_each(&bodies, std::time::Duration::from_secs(secs))
            .await;
        // One answer a body; a short answer (no queue gives one) leaves the rest failed.
        let mut sent = sent.into_iter();
        for i in indices {
            outcomes[i] = match sent.next() {
                Some(Ok(())) => Outcome::Done,
                Some(Err(e)) => dispatch::hop_failed(deps, &e),
                None => dispatch::hop_failed(
                    deps,
                    &crate::store_error::StoreError::Unavailable(
                        "the queue answered fewer bodies than sent".into(),
                    ),
                ),
            };
        }
    }
    outcomes
}

/// Local mode's equivalent of the SQS event source: receive, handle, delete or delay.
pub async fn poll_once(deps: &Deps, wait: std::time::Duration) -> usize {
    let received = match deps.queue.receive(10, wait).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "queue receive failed");
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            return 0;
        }
    };
    let n = received.len();
    let work = received
        .iter()
        .map(|m| handle_record(deps, Some(&m.receipt), &m.body, m.receive_count));
    let outcomes = batch(deps, futures::future::join_all(work)).await;
    let hopped = hops_of(&outcomes);
    let outcomes = send_hops(deps, outcomes).await;
    let acks =
        received
            .into_iter()
            .zip(outcomes)
            .zip(hopped)
            .map(|((m, outcome), hopped)| async move {
                match floored(deps, outcome, m.receive_count) {
                    // Deleted with the rest of the batch, below.
                    Outcome::Done => return Some(m.receipt),
                    // A hop that could not be sent; any other retry's delay is set already.
                    // (`floored` left no `Backoff`.)
                    Outcome::RetryAfter(d) | Outcome::Backoff(d) if hopped => {
                        set_retry(deps, &m.receipt, d).await
                    }
                    Outcome::RetryAfter(_)
                    | Outcome::Backoff(_)
                    | Outcome::Poison
                    | Outcome::Again(..) => {}
                }
                None
            });
    // As Lambda's event source: the batch's handled messages deleted in one call.
    let done: Vec<String> = futures::future::join_all(acks)
        .await
        .into_iter()
        .flatten()
        .collect();
    if !done.is_empty() {
        if let Err(e) = deps.queue.delete_batch(&done).await {
            tracing::warn!(error = %e, "queue acknowledgement failed");
        }
    }
    n
}

/// Handles one received job of a batch. A retry's delay is set on the queue as soon as the
/// job is answered, not when the whole batch is: it counts from now (a message turned away
/// by a busy number comes back one to two seconds before its carried slot,
/// `throttle::until_slot`), and the batch's slowest job (a slot waited for, Meta's answer)
/// would make it late by as long as it takes.
///
/// A storage retry received again and again is retried further apart: [`floored`].
async fn handle_record(deps: &Deps, receipt: Option<&str>, body: &str, receives: u32) -> Outcome {
    let (outcome, span) = dispatch::handle_in_span(deps, body).await;
    let outcome = floored(deps, outcome, receives);
    if let (Outcome::RetryAfter(delay), Some(receipt)) = (&outcome, receipt) {
        // Under the job's span: a failure to set it names the job.
        set_retry(deps, receipt, *delay).instrument(span).await;
    }
    outcome
}

/// A storage retry ([`Outcome::Backoff`]: what the dispatcher answers for a dependency that
/// failed, and for a hop it could not queue, at the dispatch backoff; or
/// [`crate::service::deadline::KEPT_RETRY`], a job back for kept statuses storage refused) of a job received
/// `receives` times, as a `RetryAfter`: from its second receive, no sooner than the backoff doubled per
/// receive (30 s, 60 s, ... about 2 h 8 min in all before the redrive's 10th receive).
/// Every retry of one queue message counts toward the redrive, and what brings one back
/// over and over is storage refusing (a throttled table while its capacity catches up):
/// at the flat backoff the job was parked on the dead-letter queue after about 5 minutes
/// of it. A `RetryAfter` is the job's own delay and kept, whatever its length: a turn-away's,
/// to come back for the send slot reserved for it; a wait for its message; a sending
/// deadline's recheck. (Until stop 52 a storage retry was told by its delay being the
/// backoff's: a wait for a message, capped at 30 s, was taken for one.)
pub fn floored(deps: &Deps, outcome: Outcome, receives: u32) -> Outcome {
    match outcome {
        Outcome::Backoff(d) => Outcome::RetryAfter(d.max(retry_floor(deps, receives))),
        other => other,
    }
}

/// The shortest storage retry of a job received `receives` times ([`floored`]).
pub fn retry_floor(deps: &Deps, receives: u32) -> std::time::Duration {
    if receives < 2 {
        return std::time::Duration::ZERO;
    }
    crate::service::jobs::backoff(deps.settings.dispatch_backoff, receives - 1)
}

/// SQS's count of a record's receives (1 when it does not say).
fn receive_count(record: &aws_lambda_events::sqs::SqsMessage) -> u32 {
    record
        .attributes
        .get("ApproximateReceiveCount")
        .and_then(|c| c.parse().ok())
        .unwrap_or(1)
}

/// Which of a batch's outcomes are hops, before [`send_hops`] answers them.
fn hops_of(outcomes: &[Outcome]) -> Vec<bool> {
    outcomes
        .iter()
        .map(|o| matches!(o, Outcome::Again(..)))
        .collect()
}

/// Makes a received job visible again after `delay`; if that fails, the queue's own
/// visibility timeout brings it back later.
async fn set_retry(deps: &Deps, receipt: &str, delay: std::time::Duration) {
    if let Err(e) = deps.queue.retry_after(receipt, delay).await {
        tracing::warn!(error = %e, "could not set retry delay; default visibility applies");
    }
}

/// One dispatcher batch's shared writes: one `sent` count per tenant (`quality::batched`)
/// and the send slots of its messages for one number reserved together
/// (`throttle::pooled`).
async fn batch<F: std::future::Future>(deps: &Deps, work: F) -> F::Output {
    crate::service::quality::batched(deps, crate::service::throttle::pooled(work)).await
}

/// How long the scheduled run may take in all: the retention function's timeout is 900 s;
/// the sweep stops at 600 s (`retention::Limits`) and the template sync after it at 840 s
/// from the start, a minute before Lambda would end the invocation as failed (which would
/// raise the errors alarm and have EventBridge run it all again).
pub const SCHEDULED_RUN_BUDGET: std::time::Duration = std::time::Duration::from_secs(840);

/// The scheduled retention run (EventBridge on AWS, a timer locally).
pub async fn scheduled_retention(deps: &Deps) -> Result<retention::RetentionReport, String> {
    let until = tokio::time::Instant::now() + SCHEDULED_RUN_BUDGET;
    let report = retention::run(deps).await.map_err(|e| e.to_string())?;
    // Also here, should the minute's schedule be missing or failing.
    every_minute(deps).await;
    // The daily read of Meta for the active tenants the sweep came across: each one's
    // numbers (quality, throughput, display) and its WABAs' template catalogues (bounded:
    // `numbers::MAX_SCHEDULED_NUMBERS` numbers, `templates::MAX_SCHEDULED` WABAs and the
    // run's time; failures and the rest wait for the next run).
    let synced =
        crate::service::daily_sync::sync_scheduled(deps, &report.active_tenants, until).await;
    tracing::info!(
        wabas = synced.wabas,
        failed = synced.failed,
        synced = synced.synced,
        removed = synced.removed,
        out_of_time = synced.out_of_time,
        numbers_read = synced.numbers_read,
        numbers_updated = synced.numbers_updated,
        numbers_failed = synced.numbers_failed,
        "scheduled template sync"
    );
    Ok(report)
}

/// What the retention function's event asks for: the task named by the schedule's input
/// (`{"task":"owed_callbacks"}`, the one-minute schedule), else the daily run.
pub fn scheduled_task(event: &serde_json::Value) -> ScheduledTask {
    match event.get("task").and_then(|t| t.as_str()) {
        Some(OWED_CALLBACKS_TASK) => ScheduledTask::OwedCallbacks,
        _ => ScheduledTask::Retention,
    }
}

/// The input of the one-minute schedule (template.yaml `RetentionFunction` events).
pub const OWED_CALLBACKS_TASK: &str = "owed_callbacks";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScheduledTask {
    Retention,
    OwedCallbacks,
}

/// The owed-callback drain (README "Status callbacks"): status callbacks the queue refused
/// when their move was written, queued again. Never fails its invocation: a storage error
/// is logged and the next minute's drain goes on (a failed invocation would raise the
/// retention function's errors alarm, and EventBridge would run it again at once).
pub async fn owed_callbacks(deps: &Deps) -> crate::service::callbacks::Requeued {
    match crate::service::callbacks::requeue_owed(deps).await {
        Ok(done) => {
            if done.queued > 0 || done.more || done.held_elsewhere > 0 {
                tracing::info!(
                    queued = done.queued,
                    more = done.more,
                    held_elsewhere = done.held_elsewhere,
                    "owed status callbacks drained"
                );
            }
            done
        }
        Err(e) => {
            tracing::warn!(error = %e, "owed status callbacks not drained; the next drain goes on");
            Default::default()
        }
    }
}

/// The time the one-minute task gives the audit-intent sweep (the owed-callback drain has
/// its own 50 s): well inside the minute, and the retention function's 900 s timeout.
const INTENT_SWEEP_BUDGET: std::time::Duration = std::time::Duration::from_secs(30);

/// What the one-minute task did.
#[derive(serde::Serialize, Debug, Clone, Default)]
pub struct EveryMinute {
    /// The owed-callback drain ([`owed_callbacks`]).
    #[serde(flatten)]
    pub callbacks: crate::service::callbacks::Requeued,
    /// The sweep of audit intents whose calls died (`audit::sweep_intents`).
    pub audit_intents: crate::service::audit::IntentSweep,
}

/// The retention function's one-minute task (`{"task":"owed_callbacks"}`; local mode every
/// minute; the daily run too): the owed-callback drain, and the sweep that records the
/// audited calls whose process died before their event was recorded (README "The audit
/// trail"), here rather than in the daily run so that such a call is in its chain within
/// about three minutes ([`crate::service::audit::INTENT_STALE_AFTER`] and the next minute),
/// not up to a day later; 16 small `Query`s (one a shard) a minute when there is none. Never fails its
/// invocation (see [`owed_callbacks`]).
pub async fn every_minute(deps: &Deps) -> EveryMinute {
    let callbacks = owed_callbacks(deps).await;
    let deadline = std::time::Instant::now() + INTENT_SWEEP_BUDGET;
    let audit_intents = match crate::service::audit::sweep_intents(deps, deadline).await {
        Ok(done) => {
            if done.interrupted > 0 || done.more {
                tracing::info!(
                    interrupted = done.interrupted,
                    failed = done.failed,
                    linked = done.linked,
                    more = done.more,
                    "stale audit intents swept"
                );
            }
            done
        }
        Err(e) => {
            tracing::warn!(error = %e, "audit intents not swept; the next minute goes on");
            crate::service::audit::IntentSweep {
                more: true,
                ..Default::default()
            }
        }
    };
    EveryMinute {
        callbacks,
        audit_intents,
    }
}

/// The status-callback consumer (a `StatusCallbackFunction` on the StatusCallbackQueue,
/// see infra/deploy.md): POSTs each change to the tenant; a failed delivery is made
/// visible again after its backoff and reported as a batch item failure.
pub async fn status_callback_batch(deps: &Deps, event: SqsEvent) -> SqsBatchResponse {
    let items: Vec<(String, u32)> = event
        .records
        .iter()
        .map(|r| (r.body.clone().unwrap_or_default(), receive_count(r)))
        .collect();
    let outcomes = crate::service::callbacks::handle_batch(deps, &items).await;
    let mut response = SqsBatchResponse::default();
    for (record, outcome) in event.records.iter().zip(outcomes) {
        let failed = match outcome {
            Outcome::Done => false,
            Outcome::RetryAfter(delay) | Outcome::Backoff(delay) => {
                if let Some(receipt) = record.receipt_handle.as_deref() {
                    if let Err(e) = deps.callback_queue.retry_after(receipt, delay).await {
                        tracing::warn!(error = %e, "could not set callback retry delay");
                    }
                }
                true
            }
            // Status callbacks never hop (`Again` is a dispatch job's).
            Outcome::Poison | Outcome::Again(..) => true,
        };
        if failed {
            let mut f = BatchItemFailure::default();
            f.item_identifier = record.message_id.clone().unwrap_or_default();
            response.batch_item_failures.push(f);
        }
    }
    response
}

/// Local mode's poller for the status-callback queue.
pub async fn poll_callbacks_once(deps: &Deps, wait: std::time::Duration) -> usize {
    let received = match deps.callback_queue.receive(10, wait).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "callback queue receive failed");
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            return 0;
        }
    };
    let items: Vec<(String, u32)> = received
        .iter()
        .map(|m| (m.body.clone(), m.receive_count))
        .collect();
    let outcomes = crate::service::callbacks::handle_batch(deps, &items).await;
    for (m, outcome) in received.iter().zip(outcomes) {
        let result = match outcome {
            Outcome::Done => deps.callback_queue.delete(&m.receipt).await,
            Outcome::RetryAfter(d) | Outcome::Backoff(d) => {
                deps.callback_queue.retry_after(&m.receipt, d).await
            }
            Outcome::Poison | Outcome::Again(..) => Ok(()),
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "callback queue acknowledgement failed");
        }
    }
    received.len()
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use async_trait::async_trait;

    use super::*;
    use crate::config::Settings;
    use crate::ports::{DeadLetter, DispatchQueue, Received, Redriven, SystemClock};
    use crate::store_error::StoreError;

    /// A queue that takes every body but those containing "refused", noting what it took.
    #[derive(Default)]
    struct RefusesSome(Mutex<Vec<String>>);

    #[async_trait]
    impl DispatchQueue for RefusesSome {
        async fn send(&self, body: &str) -> Result<(), StoreError> {
            self.0.lock().unwrap().push(body.to_owned());
            Ok(())
        }
        async fn send_batch_delayed_each(
            &self,
            bodies: &[String],
            _delay: Duration,
        ) -> Vec<Result<(), StoreError>> {
            bodies
                .iter()
                .map(|b| {
                    if b.contains("refused") {
                        Err(StoreError::Rejected("refused".into()))
                    } else {
                        self.0.lock().unwrap().push(b.clone());
                        Ok(())
                    }
                })
                .collect()
        }
        async fn receive(&self, _: usize, _: Duration) -> Result<Vec<Received>, StoreError> {
            Ok(Vec::new())
        }
        async fn delete(&self, _: &str) -> Result<(), StoreError> {
            Ok(())
        }
        async fn retry_after(&self, _: &str, _: Duration) -> Result<(), StoreError> {
            Ok(())
        }
        async fn dead_letters(&self, _: usize) -> Result<Vec<DeadLetter>, StoreError> {
            Ok(Vec::new())
        }
        async fn redrive(&self, _: Option<&[String]>, _: usize) -> Result<Redriven, StoreError> {
            Ok(Redriven {
                moved: Vec::new(),
                ..Default::default()
            })
        }
    }

    #[tokio::test]
    async fn a_refused_hop_retries_its_own_job_only_and_the_others_are_done() {
        let mut deps =
            crate::wiring::memory_deps(Settings::default(), Arc::new(SystemClock)).unwrap();
        let queue = Arc::new(RefusesSome::default());
        deps.queue = queue.clone();
        let later = Duration::from_secs(30);
        let outcomes = send_hops(
            &deps,
            vec![
                Outcome::Again("one".into(), later),
                Outcome::Again("refused".into(), later),
                Outcome::Done,
                Outcome::Again("two".into(), later),
            ],
        )
        .await;
        assert_eq!(outcomes[0], Outcome::Done);
        assert!(matches!(outcomes[1], Outcome::Backoff(_)), "{outcomes:?}");
        assert_eq!(outcomes[2], Outcome::Done);
        assert_eq!(outcomes[3], Outcome::Done);
        assert_eq!(*queue.0.lock().unwrap(), vec!["one", "two"]);
    }
}
