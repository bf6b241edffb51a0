//! Status callbacks to tenants (API.md "Settings → status-callback").
//!
//! Every status change of a message from `sent` on (sent, delivered, read, failed), by the
//! dispatcher or the webhook, and a failure or cancellation before Meta, is queued on the
//! StatusCallbackQueue and POSTed from there
//! to the tenant's URL as `{"id","status","at","sequence","error"?,"client_reference"?}`
//! (no content, no recipient number), signed `X-Kirim-Signature: sha256=<hex
//! HMAC-SHA256(secret, raw body)>`, with `X-Kirim-Timestamp` (epoch seconds of the
//! attempt). Failures are retried with exponential backoff through the queue.
//!
//! Order: `sequence` grows along a message's life (sent 1, failed 2, delivered 3, read 4).
//! Within one received batch a message's callbacks go oldest first, one at a time, and a
//! failed one holds back the later ones; across batches and retries delivery is
//! at-least-once and usually but not always in order: receivers keep the highest
//! `sequence` per `id`.

use std::collections::BTreeMap;
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::adapters::callback_http::{self, Delivery};
use crate::domain::{MessageRecord, MessageStatus, RetentionClass, TenantId};
use crate::ports::{CallbackFailure, OwedCallback, StatusCallback};
use crate::secret::Secret;

use super::errors::ServiceError;
use super::jobs::{backoff, CallbackJob, Outcome, QueueJob};
use super::Deps;

pub const SIGNATURE_HEADER: &str = "x-kirim-signature";
pub const TIMESTAMP_HEADER: &str = "x-kirim-timestamp";
/// The signature over the attempt's timestamp and the body (`{timestamp}.{raw body}`):
/// a receiver that checks it and refuses an old timestamp refuses a replayed callback.
pub const TIMED_SIGNATURE_HEADER: &str = "x-kirim-signature-timed";

/// A status's place in a message's life, for receivers to order callbacks by. `None`:
/// not reported (accepted is the send's own answer; sending is internal).
pub fn sequence(status: MessageStatus) -> Option<u32> {
    match status {
        MessageStatus::Scheduled | MessageStatus::Accepted | MessageStatus::Sending => None,
        MessageStatus::Cancelled => Some(2),
        MessageStatus::Sent => Some(1),
        MessageStatus::Failed => Some(2),
        MessageStatus::Delivered => Some(3),
        MessageStatus::Read => Some(4),
    }
}

/// The message just moved to `record.status`: queue its callback if the tenant has one.
/// Never fails the caller; problems are logged.
pub async fn status_changed(deps: &Deps, record: &MessageRecord) {
    let Some(sequence) = sequence(record.status) else {
        return;
    };
    match deps
        .status_callbacks
        .get_status_callback(&record.tenant_id)
        .await
    {
        Ok(None) => return,
        Ok(Some(_)) => {}
        // Queue it anyway: the sender checks the setting again.
        Err(e) => {
            tracing::warn!(error = %e, "status callback setting unreadable")
        }
    }
    let at = record
        .events
        .iter()
        .rev()
        .find(|e| e.status == record.status)
        .map(|e| e.at)
        .unwrap_or(record.updated_at);
    let job = CallbackJob {
        tenant_id: record.tenant_id.clone(),
        message_id: record.id.clone(),
        status: record.status,
        at,
        sequence,
        error: record.error.clone().filter(|_| {
            matches!(
                record.status,
                MessageStatus::Failed | MessageStatus::Cancelled
            )
        }),
        client_reference: record.client_reference.clone(),
    };
    let body = match QueueJob::StatusCallback(job).to_body() {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "status callback not serialisable");
            return;
        }
    };
    // The tenant's share of the queue: a tenant with a backlog (a slow receiver, a large
    // campaign) does not hold back other tenants' callbacks.
    if let Err(e) = deps
        .callback_queue
        .send_in_group(record.tenant_id.as_str(), &body)
        .await
    {
        // The move is written and will not be made again (a redelivered status changes
        // nothing): kept in the table, the callback is queued again by the drain.
        tracing::warn!(error = %e, "status callback not queued; kept to be queued again");
        owe(deps, record, sequence, body).await;
    }
}

/// Keeps a callback the queue refused, for [`requeue_owed`].
async fn owe(deps: &Deps, record: &MessageRecord, sequence: u32, body: String) {
    let now = deps.clock.now();
    let owed = OwedCallback {
        tenant_id: record.tenant_id.clone(),
        message_id: record.id.clone(),
        sequence,
        body,
        owed_at: now,
        expires_at: deps
            .settings
            .retention
            .expiry(RetentionClass::PendingStatus, now),
        leased_until: None,
    };
    match deps.status_callbacks.owe_callback(&owed).await {
        Ok(()) => crate::metrics::count("CallbacksOwed", ("Queue", "status_callback")),
        Err(e) => {
            crate::metrics::count("CallbacksLost", ("Queue", "status_callback"));
            tracing::error!(error = %e, "status callback lost: neither queued nor kept");
        }
    }
}

/// What one owed-callback drain did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Requeued {
    /// Queued again and forgotten.
    pub queued: usize,
    /// Whether it stopped with callbacks still owed and no other drain holding them: the
    /// queue refused again (the drain stops at the first refusal), it ran out of its time,
    /// or more than one drain takes were owed. The next drain takes them. (Not a count:
    /// counting a backlog would read all of it.) A drain that finds a whole page taken by
    /// another one running at the same time leaves the rest to that one, or the next.
    pub more: bool,
    /// Passed by: another drain running at the same time held them.
    pub held_elsewhere: usize,
}

/// How many owed callbacks one drain queues at most.
pub const REQUEUE_MAX: usize = 10_000;
/// How long one drain runs at most: less than the minute between two, so that drains
/// rarely overlap (and the leases keep those that do from queueing one callback twice).
pub const REQUEUE_TIME: std::time::Duration = std::time::Duration::from_secs(50);
/// How long a drain holds a callback it is about to queue: past a drain that stopped
/// between its lease and its queueing, the next one takes the callback.
const LEASE_SECS: i64 = 120;
const REQUEUE_PAGE: usize = 100;

/// Queues again the callbacks the queue refused (the one-minute schedule, local mode's
/// timer, and the daily retention run), in key order (by tenant), for at most
/// [`REQUEUE_TIME`] and [`REQUEUE_MAX`]. Each is leased first (a conditional write: a
/// drain running at the same time passes it by), then queued in its tenant's group, then
/// forgotten; a process that stops between the queueing and the forgetting leaves it to be
/// queued again after its lease (delivery is at least once). Stops at the first refusal:
/// the queue is still out, the rest wait for the next drain.
pub async fn requeue_owed(deps: &Deps) -> Result<Requeued, ServiceError> {
    let until = tokio::time::Instant::now() + REQUEUE_TIME;
    let mut done = Requeued::default();
    while done.queued < REQUEUE_MAX {
        let page = deps
            .status_callbacks
            .owed_callbacks(REQUEUE_PAGE.min(REQUEUE_MAX - done.queued))
            .await?;
        let full = page.len() == REQUEUE_PAGE;
        let mut took = 0;
        for owed in &page {
            if tokio::time::Instant::now() >= until {
                done.more = true;
                return Ok(done);
            }
            let lease = deps.clock.now().timestamp().saturating_add(LEASE_SECS);
            if !deps
                .status_callbacks
                .lease_owed_callback(owed, lease)
                .await?
            {
                done.held_elsewhere += 1;
                continue;
            }
            took += 1;
            if let Err(e) = deps
                .callback_queue
                .send_in_group(owed.tenant_id.as_str(), &owed.body)
                .await
            {
                // Its lease given up (kept as it was listed), for the next drain to take
                // at once; should that write fail too, the lease passes in two minutes.
                tracing::warn!(error = %e, "owed status callbacks still not queued");
                if let Err(e) = deps.status_callbacks.owe_callback(owed).await {
                    tracing::warn!(error = %e, "an owed callback's lease not given up");
                }
                done.more = true;
                return Ok(done);
            }
            deps.status_callbacks.forget_owed_callback(owed).await?;
            done.queued += 1;
        }
        // A page all held by another drain: the rest is that drain's, or the next one's.
        if !full || took == 0 {
            return Ok(done);
        }
    }
    done.more = !deps.status_callbacks.owed_callbacks(1).await?.is_empty();
    Ok(done)
}

/// The callback's body: exactly the bytes that are signed and sent.
pub fn body_of(job: &CallbackJob) -> String {
    let mut v = serde_json::json!({
        "id": job.message_id,
        "status": job.status.as_str(),
        "at": job.at,
        "sequence": job.sequence,
    });
    if let Some(e) = &job.error {
        v["error"] = serde_json::json!(e);
    }
    if let Some(r) = &job.client_reference {
        v["client_reference"] = serde_json::json!(r);
    }
    v.to_string()
}

/// `sha256=<hex HMAC-SHA256(secret, body)>`.
pub fn signature(secret: &Secret, body: &[u8]) -> Option<String> {
    timed_signature(secret, None, body)
}

/// `sha256=<hex HMAC-SHA256(secret, "{timestamp}." + body)>`, or over the body alone
/// without a timestamp.
pub fn timed_signature(secret: &Secret, timestamp: Option<i64>, body: &[u8]) -> Option<String> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes()).ok()?;
    if let Some(t) = timestamp {
        mac.update(format!("{t}.").as_bytes());
    }
    mac.update(body);
    Some(format!(
        "sha256={}",
        hex::encode(mac.finalize().into_bytes())
    ))
}

/// Why an attempt did not deliver, to be retried (or given up at the last attempt): the
/// log's words, a short class for the tenant's record, and the receiver's host when the
/// setting was read.
struct Failed {
    class: String,
    why: String,
    host: Option<String>,
}

impl Failed {
    fn new(class: impl Into<String>, why: impl ToString, host: Option<&str>) -> Self {
        Self {
            class: class.into(),
            why: why.to_string(),
            host: host.map(str::to_owned),
        }
    }
}

/// One delivery attempt (`attempt` counts from 1), in a `job` span carrying the message's
/// ids: a failure is retried, or at the last attempt given up.
async fn deliver(deps: &Deps, job: &CallbackJob, attempt: u32) -> Outcome {
    use tracing::Instrument;
    let span = tracing::info_span!("job", kind = "status_callback", tenant_id = %job.tenant_id, message_id = %job.message_id);
    async {
        match deliver_once(deps, job, attempt).await {
            Ok(outcome) => outcome,
            Err(failed) => retry_or_give_up(deps, job, attempt, failed).await,
        }
    }
    .instrument(span)
    .await
}

/// A failed attempt: retried with backoff, or at the last attempt given up. The one place a
/// callback is given up (a failed last try, or one the breaker parked untried): counted
/// (`CallbacksGivenUp`) and recorded for its tenant, once.
async fn retry_or_give_up(deps: &Deps, job: &CallbackJob, attempt: u32, failed: Failed) -> Outcome {
    let why = &failed.why;
    if attempt < deps.settings.callback_max_attempts {
        tracing::info!(attempt, reason = %why, "status callback will be retried");
        return Outcome::RetryAfter(backoff(deps.settings.callback_backoff, attempt));
    }
    // Not deleted: kept on the dead-letter queue (14 days), listed and redriven with the
    // operator's dead-letter routes, rather than lost with a log line.
    tracing::warn!(attempt, reason = %why, "status callback given up; left to the dead-letter queue");
    crate::metrics::callback_given_up();
    record_given_up(deps, job, attempt, failed).await;
    Outcome::Poison
}

/// The tenant's record of a callback given up (`GET /v1/settings/status-callback/failures`):
/// one write, kept 14 days (as long as the dead-letter queue keeps the callback). Its
/// failure is logged and changes nothing else: the callback is parked all the same.
async fn record_given_up(deps: &Deps, job: &CallbackJob, attempt: u32, failed: Failed) {
    let now = deps.clock.now();
    let record = CallbackFailure {
        tenant_id: job.tenant_id.clone(),
        id: crate::domain::ulid_at(now).to_string(),
        message_id: job.message_id.clone(),
        status: job.status,
        sequence: job.sequence,
        given_up_at: now,
        attempts: attempt,
        last_error: failed.class,
        host: failed.host,
        expires_at: deps
            .settings
            .retention
            .expiry(RetentionClass::CallbackFailures, now),
    };
    if let Err(e) = deps.status_callbacks.put_callback_failure(&record).await {
        tracing::warn!(error = %e, "the tenant's record of a given-up status callback not written");
    }
}

async fn deliver_once(deps: &Deps, job: &CallbackJob, attempt: u32) -> Result<Outcome, Failed> {
    // Past its last attempt (given up, back for the queue's last receives): parked on the
    // dead-letter queue by the queue's own redrive, without another try.
    if attempt > deps.settings.callback_max_attempts {
        // Said once, at its last attempt (a warning then): not again at each receive.
        tracing::debug!(
            attempt,
            "status callback given up; left to the dead-letter queue"
        );
        return Ok(Outcome::Poison);
    }
    let setting = match deps
        .status_callbacks
        .get_status_callback(&job.tenant_id)
        .await
    {
        Ok(Some(s)) => s,
        // The job was queued because a process found a setting: an absence read a moment
        // behind (a setting just made), or cached, is confirmed before the job is dropped.
        Ok(None) => match deps
            .status_callbacks
            .get_status_callback_fresh(&job.tenant_id)
            .await
        {
            Ok(Some(s)) => s,
            Ok(None) => {
                tracing::info!("status callbacks turned off meanwhile; not sent");
                return Ok(Outcome::Done);
            }
            Err(e) => return Err(Failed::new("setting_unreadable", e, None)),
        },
        Err(e) => return Err(Failed::new("setting_unreadable", e, None)),
    };
    // The host alone, for the tenant's record: a path or a query may carry a token.
    let host = url::Url::parse(&setting.url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned));
    let host = host.as_deref();
    let secret = match signing_secret(deps, &setting).await {
        Ok(Some(s)) => s,
        Ok(None) => {
            tracing::warn!("status callback secret missing; not sent");
            return Ok(Outcome::Done);
        }
        Err(e) => return Err(Failed::new("secret_unreadable", e, host)),
    };
    // Open for this receiver (a new URL starts afresh), also at the job's last attempt:
    // the receiver has just failed three tries in a row, and a last try made anyway held
    // its batch for the whole timeout once per callback (a dead receiver of a busy tenant
    // then slowed everyone's callbacks). Such a job is parked untried on the dead-letter
    // queue (counted given up), for a redrive once the receiver is back.
    let at_receiver = breaker::Receiver::of(&job.tenant_id, &setting.url);
    if let Some(left) = breaker::open_for(&at_receiver) {
        // The receiver failed its last tries: this one is not made (no connection, no
        // wait), and counts as a failed try, so a receiver that stays down costs the
        // others' callbacks nothing.
        return Err(Failed::new(
            "breaker_open",
            format!(
                "receiver failing; not tried for another {}s",
                left.as_secs().max(1)
            ),
            host,
        ));
    }
    let body = body_of(job);
    let now = deps.clock.now().timestamp();
    let (Some(sig), Some(timed)) = (
        signature(&secret, body.as_bytes()),
        timed_signature(&secret, Some(now), body.as_bytes()),
    ) else {
        return Ok(Outcome::Done);
    };
    let headers = [
        (SIGNATURE_HEADER, sig),
        (TIMESTAMP_HEADER, now.to_string()),
        (TIMED_SIGNATURE_HEADER, timed),
    ];
    match callback_http::post(
        &setting.url,
        deps.settings.callbacks_allow_private,
        deps.settings.callback_timeout,
        &headers,
        body,
    )
    .await
    {
        Delivery::Delivered => {
            breaker::succeeded(&at_receiver);
            tracing::info!(
                status = job.status.as_str(),
                attempt,
                "status callback delivered"
            );
            Ok(Outcome::Done)
        }
        // The host resolves to a non-public address now: DNS answers change (a migration,
        // a split-horizon record, a registrar's parking 127.0.0.1), so it is tried again,
        // with no connection made, and parked on the dead-letter queue after its last
        // attempt rather than deleted. Not the receiver's failure: no breaker.
        Delivery::Refused(e @ callback_http::TargetError::ResolvesNonPublic) => {
            tracing::warn!(reason = %e, "status callback target refused");
            Err(Failed::new("private_address", e, host))
        }
        Delivery::Refused(e) => {
            tracing::warn!(reason = %e, "status callback target refused");
            Ok(Outcome::Done)
        }
        Delivery::Retry(why) => {
            breaker::failed(&at_receiver);
            Err(Failed::new(why.class(), why, host))
        }
    }
}

/// A circuit breaker per receiver (tenant and URL), in the warm process: after
/// [`breaker::TRIPS`] tries in a row that it did not answer with 2xx (a timeout, a
/// refused connection, a 5xx), its callbacks are not tried for [`breaker::COOL_DOWN`]
/// (a job at its last attempt then is parked untried); then tries decide again. A receiver that hangs each try for the whole timeout would
/// otherwise hold every batch it is in (other tenants' callbacks with it) that long.
mod breaker {
    use std::collections::HashMap;
    use std::sync::{LazyLock, Mutex};
    use std::time::{Duration, Instant};

    use crate::domain::TenantId;

    pub const TRIPS: u32 = 3;
    pub const COOL_DOWN: Duration = Duration::from_secs(60);

    /// A tenant's receiver: its tenant and URL (a URL set anew starts closed).
    #[derive(Clone, PartialEq, Eq, Hash)]
    pub struct Receiver(TenantId, String);

    impl Receiver {
        pub fn of(tenant: &TenantId, url: &str) -> Self {
            Self(tenant.clone(), url.to_owned())
        }
    }

    /// Receiver → failed tries in a row and when the last one failed.
    static STATE: LazyLock<Mutex<HashMap<Receiver, (u32, Instant)>>> =
        LazyLock::new(Default::default);

    /// How much longer the receiver is not tried, if its breaker is open. Once the
    /// cool-down is over, tries go through until one of them decides (a failure opens it
    /// again, a success closes it).
    pub fn open_for(receiver: &Receiver) -> Option<Duration> {
        let state = STATE.lock().ok()?;
        let (fails, last) = state.get(receiver)?;
        let left = COOL_DOWN.checked_sub(last.elapsed())?;
        (*fails >= TRIPS && !left.is_zero()).then_some(left)
    }

    pub fn failed(receiver: &Receiver) {
        if let Ok(mut state) = STATE.lock() {
            let entry = state.entry(receiver.clone()).or_insert((0, Instant::now()));
            *entry = (entry.0.saturating_add(1), Instant::now());
        }
    }

    pub fn succeeded(receiver: &Receiver) {
        if let Ok(mut state) = STATE.lock() {
            state.remove(receiver);
        }
    }
}

/// The secret that signs a tenant's callbacks: the version its setting names (kept up to
/// the secret cache's TTL once read: a version never changes, and a new one comes with a
/// new setting).
async fn signing_secret(
    deps: &Deps,
    setting: &StatusCallback,
) -> Result<Option<Secret>, crate::store_error::StoreError> {
    if let Some(version) = &setting.secret_version {
        if let Some(secret) = deps.secrets.version(&setting.secret_name, version).await? {
            return Ok(Some(secret));
        }
        // Gone (Secrets Manager may delete a version that lost every label: a change whose
        // promotion failed, then another whose setting was never written): the current one,
        // which may not be the secret the receiver was told. An operator's to look at.
        tracing::error!(
            "the callback secret's version is gone; signing with the current one (set the secret again)"
        );
    }
    // A setting from before versions were kept, changed in the last few minutes, is read
    // afresh: another instance's cached copy of the old secret would sign with it for up
    // to the cache's TTL (5 minutes).
    deps.secrets
        .current_unless_changed(&setting.secret_name, setting.updated_at, deps.clock.now())
        .await
}

/// Delivers a received batch: `(body, receive count)` in, one outcome per item out (same
/// order). A message's callbacks go oldest first, one at a time; once one is not
/// delivered, its later ones wait for the same retry rather than overtake it. Copies of
/// one callback make one request between them, so a message's group makes one per
/// `sequence` at most and keeps within the function's time (`config::MAX_CALLBACK_TIMEOUT`).
pub async fn handle_batch(deps: &Deps, items: &[(String, u32)]) -> Vec<Outcome> {
    let mut outcomes = vec![Outcome::Poison; items.len()];
    let mut groups: BTreeMap<String, Vec<(usize, CallbackJob, u32)>> = BTreeMap::new();
    for (i, (body, count)) in items.iter().enumerate() {
        match QueueJob::parse(body) {
            Some(QueueJob::StatusCallback(job)) => groups
                .entry(format!("{}/{}", job.tenant_id, job.message_id))
                .or_default()
                .push((i, job, (*count).max(1))),
            _ => {
                tracing::error!("unreadable status callback; leaving it for the dead-letter queue")
            }
        }
    }
    let max_attempts = deps.settings.callback_max_attempts;
    let work = groups.into_values().map(|mut group| async move {
        // Oldest first; of copies of one callback, the one with the most attempts left
        // first: it is the one tried (below), the others take its outcome.
        group.sort_by_key(|(_, job, attempt)| (job.sequence, *attempt));
        let mut held: Option<Duration> = None;
        let mut out = Vec::with_capacity(group.len());
        // A copy of a callback this batch already tried (the same `sequence`: a status
        // applied twice, SQS delivering twice) takes that try's outcome instead of a
        // second request: each try may take the whole callback timeout, and a group of
        // copies at a slow receiver ran the batch past the function's timeout. So a
        // message's callbacks make one request each at most, however many copies (the
        // five of `config::MAX_CALLBACK_TIMEOUT`'s budget).
        let mut tried: Option<(u32, Outcome)> = None;
        for (i, job, attempt) in group {
            if let Some((_, outcome)) = tried.as_ref().filter(|(seq, _)| *seq == job.sequence) {
                let outcome = match outcome {
                    // A copy at its last attempt of one that just failed is dropped with
                    // it, untried: the copy tried carries the callback on (it had attempts
                    // left) or was given
                    // up and parked itself, counted then (so not counted here: the
                    // callback is given up once, or is still alive).
                    Outcome::RetryAfter(_) | Outcome::Poison if attempt >= max_attempts => {
                        if attempt == max_attempts {
                            tracing::info!(
                                attempt,
                                "a copy of a status callback just tried, at its last attempt: left to the dead-letter queue"
                            );
                        }
                        Outcome::Poison
                    }
                    o => o.clone(),
                };
                out.push((i, outcome));
                continue;
            }
            // Held back behind an earlier one that failed, unless this is its last attempt:
            // a callback is not given up without a try while its receiver may answer
            // (receivers keep the highest `sequence`, so one out of order then is
            // harmless); with the receiver's breaker open it is parked untried.
            let outcome = match held {
                Some(d) if attempt < max_attempts => Outcome::RetryAfter(d),
                _ => {
                    let outcome = deliver(deps, &job, attempt).await;
                    // A try's outcome, for its copies (those after it have no more
                    // attempts left than it had).
                    tried = Some((job.sequence, outcome.clone()));
                    outcome
                }
            };
            if let Outcome::RetryAfter(d) = outcome {
                held.get_or_insert(d);
            }
            out.push((i, outcome));
        }
        out
    });
    for (i, outcome) in futures::future::join_all(work).await.into_iter().flatten() {
        if let Some(slot) = outcomes.get_mut(i) {
            *slot = outcome;
        }
    }
    outcomes
}

/// One callback given up, as `GET /v1/settings/status-callback/failures` shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FailureView {
    pub message_id: String,
    pub status: &'static str,
    pub sequence: u32,
    pub given_up_at: chrono::DateTime<chrono::Utc>,
    pub attempts: u32,
    pub last_error: String,
    pub host: Option<String>,
}

impl From<&CallbackFailure> for FailureView {
    fn from(f: &CallbackFailure) -> Self {
        Self {
            message_id: f.message_id.to_string(),
            status: f.status.as_str(),
            sequence: f.sequence,
            given_up_at: f.given_up_at,
            attempts: f.attempts,
            last_error: f.last_error.clone(),
            host: f.host.clone(),
        }
    }
}

/// A page of the tenant's callbacks given up in the last 14 days, newest first, and the
/// cursor of the next page (`None` on the last).
pub async fn failures(
    deps: &Deps,
    tenant: &TenantId,
    limit: usize,
    cursor: Option<&str>,
) -> Result<(Vec<FailureView>, Option<String>), ServiceError> {
    let page = deps
        .status_callbacks
        .callback_failures_page(tenant, limit, cursor)
        .await?;
    let views = page.failures.iter().map(FailureView::from).collect();
    Ok((views, page.next_cursor))
}

/// What `GET /v1/settings/status-callback` answers: the secret is write-only.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CallbackView {
    pub url: Option<String>,
    pub secret_set: bool,
}

/// `PUT /v1/settings/status-callback`. No `Debug`: it holds the secret.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallbackUpdate {
    /// `null` turns callbacks off.
    #[serde(deserialize_with = "crate::domain::fields::nullable_required")]
    pub url: Option<String>,
    #[serde(default, deserialize_with = "crate::domain::fields::non_null")]
    pub secret: Option<String>,
}

pub fn secret_name(deps: &Deps, tenant: &TenantId) -> String {
    format!(
        "{}tenants/{}/status-callback-secret",
        deps.settings.secret_prefix, tenant
    )
}

pub async fn get_setting(deps: &Deps, tenant: &TenantId) -> Result<CallbackView, ServiceError> {
    Ok(
        match deps.status_callbacks.get_status_callback(tenant).await? {
            Some(s) => CallbackView {
                url: Some(s.url),
                secret_set: true,
            },
            None => CallbackView {
                url: None,
                secret_set: false,
            },
        },
    )
}

/// Sets (or with `url: null` removes) the tenant's callback. The secret goes to the
/// secret store only; it is required with a URL unless one is already set.
pub async fn put_setting(
    deps: &Deps,
    tenant: &TenantId,
    update: CallbackUpdate,
) -> Result<CallbackView, ServiceError> {
    let name = secret_name(deps, tenant);
    // A secret is checked whatever the url: `{"url": null, "secret": <bad>}` is refused
    // like any other bad secret, before anything changes.
    if let Some(secret) = &update.secret {
        let len = secret.chars().count();
        if !(16..=256).contains(&len) || secret.chars().any(char::is_control) {
            return Err(ServiceError::InvalidRequest(
                "secret must be 16 to 256 printable characters".into(),
            ));
        }
    }
    let Some(raw_url) = update.url else {
        // The secret stays in the secret store (unused) and is replaced by the next PUT:
        // Secrets Manager keeps a deleted name reserved for its recovery window.
        deps.status_callbacks.delete_status_callback(tenant).await?;
        return Ok(CallbackView {
            url: None,
            secret_set: false,
        });
    };
    let url = callback_http::validate_url(&raw_url, deps.settings.callbacks_allow_private)
        .map_err(|e| ServiceError::InvalidRequest(e.to_string()))?;
    let now = deps.clock.now();
    match update.secret {
        Some(secret) => {
            // The new secret is staged, not made current: until the setting naming its
            // version is written, nothing signs with it (a failed write below leaves the
            // callbacks signed as the receiver still expects, on every instance). Once the
            // setting names it, it is made current too, for whatever reads the name.
            let version = deps
                .secrets
                .store()
                .stage_secret(&name, &Secret::new(secret))
                .await?;
            let setting = StatusCallback {
                tenant_id: tenant.clone(),
                url: url.to_string(),
                secret_name: name.clone(),
                secret_version: Some(version.clone()),
                updated_at: now,
            };
            deps.status_callbacks.put_status_callback(&setting).await?;
            // Made current only while the setting still names it: of two admins' changes,
            // the current label then follows the setting whichever promotes last.
            let named = deps
                .status_callbacks
                .get_status_callback_fresh(tenant)
                .await
                .map(|s| s.and_then(|s| s.secret_version) == Some(version.clone()));
            let promoted = match named {
                Ok(true) => deps.secrets.promote(&name, &version).await,
                Ok(false) => Ok(()),
                Err(e) => Err(e),
            };
            if let Err(e) = promoted {
                // Signing reads the version the setting names: only the name's current
                // label lags, made current by the next change.
                tracing::warn!(error = %e, "the new callback secret could not be made current");
            }
        }
        // The URL alone, on the setting as it is now (a conditional write): a `DELETE` made
        // a moment ago through another process is not revived, and a secret another admin
        // set meanwhile is kept. Refused for a closed tenant (409), as a whole setting.
        None => {
            if !deps
                .status_callbacks
                .set_status_callback_url(tenant, url.as_str(), now)
                .await?
            {
                return Err(ServiceError::InvalidRequest(
                    "secret is required with a url".into(),
                ));
            }
        }
    }
    tracing::info!(
        host = url.host_str().unwrap_or_default(),
        "status callback set"
    );
    Ok(CallbackView {
        url: Some(url.to_string()),
        secret_set: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_follow_the_forward_only_status_order() {
        use MessageStatus::*;
        for (to, from) in [
            (Failed, Sent),
            (Delivered, Failed),
            (Read, Delivered),
            (Delivered, Sent),
        ] {
            assert!(to.may_follow(from));
            assert!(sequence(to) > sequence(from), "{to:?} after {from:?}");
        }
        assert_eq!(sequence(Accepted), None);
        assert_eq!(sequence(Sending), None);
    }

    #[test]
    fn the_signature_is_the_hex_hmac_of_the_exact_body() {
        // RFC 4231 test case 2.
        let sig = signature(&Secret::new("Jefe"), b"what do ya want for nothing?");
        assert_eq!(
            sig.as_deref(),
            Some("sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
        );
    }
}
