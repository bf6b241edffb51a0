//! Meta's delivery statuses applied to messages: forward only, duplicates change nothing
//! (the store's conditional transition), and statuses that arrive before their
//! message's wamid is known are kept and applied once the dispatcher records it.
//!
//! A kept status holds no content (the `PendingStatus` retention class, 7 days); its
//! wamid encodes the recipient's number, so a status for a number no tenant has is kept
//! only if it echoes one of Kirim's message ids. Applying it goes through the same forward-only transition, so a duplicate
//! is kept once and applying it twice is refused.
//!
//! Depends on `callbacks`, `optouts` and `quality`; the webhook and the dispatcher
//! depend on it.

use crate::domain::meta::{Callback, MetaError, StatusReport, Wamid};
use crate::domain::{
    MessageError, MessageId, MessageRecord, MessageStatus, RetentionClass, StatusEvent, TenantId,
};
use crate::ports::{PendingError, PendingStatus, QualityCounter, StatusChange, Transition};

use super::errors::ServiceError;
use super::Deps;

/// What applying one status did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    Yes,
    NoChange,
    /// No message is known by it (it was kept, if it could be).
    UnknownMessage,
}

/// The message a status is about, and the message itself when it was read to find it.
enum Found {
    /// Read by its id (the record names its tenant and id).
    Read(std::sync::Arc<MessageRecord>),
    /// Found by the wamid index, not read.
    Indexed(TenantId, MessageId),
}

impl Found {
    fn ids(&self) -> (&TenantId, &MessageId) {
        match self {
            Found::Read(m) => (&m.tenant_id, &m.id),
            Found::Indexed(t, id) => (t, id),
        }
    }

    fn seen(&self) -> Option<&MessageRecord> {
        match self {
            Found::Read(m) => Some(m),
            Found::Indexed(..) => None,
        }
    }
}

/// Finds the message a status is about: by our ids echoed in the callback data (when they
/// agree with the recorded wamid), else by the wamid index.
///
/// By id under the number's owner first (the usual case: the message's own tenant, no
/// allocation), then under the tenant the callback data names if that is another: a
/// number removed or taken over since the send still settles its messages, also one whose
/// send's answer was lost (no wamid recorded, so none in the index). The webhook is
/// signed with the app's secret, so the callback data is what Kirim sent.
async fn resolve(
    deps: &Deps,
    tenant: Option<&TenantId>,
    report: &StatusReport,
) -> Result<Option<Found>, ServiceError> {
    if let Some(callback) = report.callback.as_ref() {
        if let Some(t) = tenant {
            if let Some(found) = by_id(deps, t, &callback.message, report).await? {
                return Ok(Some(found));
            }
        }
        if callback.names_other_than(tenant) {
            if let Some(own) = callback.tenant() {
                if let Some(found) = by_id(deps, &own, &callback.message, report).await? {
                    return Ok(Some(found));
                }
            }
        }
    }
    Ok(deps
        .messages
        .message_by_wamid(report.wamid.as_str())
        .await?
        .map(|(t, id)| Found::Indexed(t, id)))
}

/// The message `id` of `tenant`, if it has it and the status's wamid agrees with the one
/// recorded on it, if any.
async fn by_id(
    deps: &Deps,
    tenant: &TenantId,
    id: &MessageId,
    report: &StatusReport,
) -> Result<Option<Found>, ServiceError> {
    // May be a moment behind (half the read units): see `apply_to`.
    Ok(deps
        .messages
        .peek_message(tenant, id)
        .await?
        .filter(|m| {
            m.wamid
                .as_deref()
                .is_none_or(|w| w == report.wamid.as_str())
        })
        .map(Found::Read))
}

/// Applies one status of a verified webhook (`tenant`: the owner of the number it
/// came for, if known).
pub async fn apply(
    deps: &Deps,
    tenant: Option<&TenantId>,
    report: &StatusReport,
) -> Result<Applied, ServiceError> {
    Ok(apply_owned(deps, tenant, report, None).await?.0)
}

/// [`apply`], and the tenant whose message the status was found to be (none: no message
/// known), which is not the number's owner `tenant` when the number moved since. `turns`:
/// for one status of a body applied several at once, the body's turns on its usage rows,
/// which its pricing writes take ([`UsageTurns`](super::usage::UsageTurns)).
pub(crate) async fn apply_owned(
    deps: &Deps,
    tenant: Option<&TenantId>,
    report: &StatusReport,
    turns: Option<&super::usage::UsageTurns>,
) -> Result<(Applied, Option<TenantId>), ServiceError> {
    let found = match resolve(deps, tenant, report).await? {
        Some(found) => found,
        // A number no tenant has and no message id in Kirim's form echoed (another
        // sender's number on a subscribed WhatsApp Business Account): not kept. A kept
        // status holds the wamid, which encodes the recipient's number, for 7 days.
        // (Kirim's own messages carry their ids: one from a number removed since is found
        // by the tenant its callback data names, `resolve`, and kept only if that finds
        // nothing, as one in the old form without a tenant. Only the form is checked
        // then.) A status whose metadata names no number is held to the same rule (it was
        // kept).
        None if tenant.is_none() && report.callback.is_none() => {
            return Ok((Applied::UnknownMessage, None))
        }
        None => match keep(deps, tenant, report).await? {
            Some(found) => found,
            None => return Ok((Applied::UnknownMessage, None)),
        },
    };
    let (tenant_id, message_id) = found.ids();
    // The caller recorded the phone number's owner on the span already; a second record of
    // the same field is formatted again (and, in text logs, shown twice).
    if tenant != Some(tenant_id) {
        crate::telemetry::record_tenant(tenant_id.as_str());
    }
    let applied = apply_to(deps, tenant_id, message_id, report, found.seen(), turns).await?;
    Ok((applied, Some(tenant_id.clone())))
}

/// `seen`: the message as just read, if it was; the read may be a moment behind, so
/// `seen` is a status the message has at least reached. A status it cannot move to from
/// `seen` nor from anything after it is not written (the conditional update would be
/// refused, yet cost a write unit: Meta's `sent` after the dispatcher recorded `sent`,
/// and duplicates). Every write below is conditional on the stored status, so a stale
/// `seen` costs at most a refused write, never a wrong move or a second count.
/// When `seen` has no pricing yet and this status carries it, the move, the pricing and
/// the usage row are one write ([`UsageStore::transition_priced`]).
///
/// The caller records the tenant on the span. `turns`: the body's turns on its usage rows,
/// when its statuses are applied several at once (the pricing writes of a move take them;
/// a late status's or a failed move's, rare, do not).
///
/// [`UsageStore::transition_priced`]: crate::ports::UsageStore::transition_priced
async fn apply_to(
    deps: &Deps,
    tenant_id: &TenantId,
    message_id: &MessageId,
    report: &StatusReport,
    seen: Option<&MessageRecord>,
    turns: Option<&super::usage::UsageTurns>,
) -> Result<Applied, ServiceError> {
    crate::telemetry::record_ids([("message_id", message_id.as_str())]);
    let to = report.status.message_status();
    let now = deps.clock.now();
    let at = report.at(now);
    crate::metrics::webhook_lag(to.as_str(), (now - at).num_milliseconds());
    let failed = to == MessageStatus::Failed;
    let error = failed.then(|| match report.errors.first() {
        Some(e) => MessageError {
            code: e.code.into(),
            title: if e.title.is_empty() {
                "failed".into()
            } else {
                e.title.clone()
            },
        },
        None => MessageError {
            code: "unknown".into(),
            title: "failed".into(),
        },
    });
    if failed && report.has_error(131050) {
        // The recipient stopped marketing messages: no more marketing to them.
        // Boxed, as the pricing of a refused move below: rare, and held in place their
        // futures would make every status's as large (BENCHMARKS.md "Webhook side by
        // side", stop 27).
        Box::pin(super::optouts::marketing_stopped_for(
            deps,
            tenant_id,
            message_id,
            report.recipient.as_ref(),
            // The status's time as the rest of it is taken (`StatusReport::at`).
            Some(at.timestamp()),
        ))
        .await?;
    }
    // Meta charges a message when it is delivered, and its `delivered` or `read` status
    // carries the pricing then ("at least one of them", Meta's pricing page); a `sent`
    // status's pricing is not a charge yet and is not counted, on any path. So a message
    // counts once, on the day of its first `delivered` or `read` that carried a pricing,
    // whichever way it was found and whatever order Meta's statuses came in.
    let pricing = report
        .pricing
        .as_ref()
        .filter(|_| matches!(to, MessageStatus::Delivered | MessageStatus::Read));
    if let Some(m) = seen.filter(|m| !to.may_still_follow(m.status)) {
        // Overtaken (a `delivered` after the `read`), yet it may be the first status to
        // carry Meta's pricing: counted once all the same (the store's condition decides);
        // and a `delivered` (or `sent`) the message has no time of yet records its time.
        // A message already priced as read, and holding that status's time, is not written
        // again (a refused write costs a unit too): nothing boxed, nothing written.
        if late_event(m, to, at).is_none() && (pricing.is_none() || m.pricing.is_some()) {
            return Ok(Applied::NoChange);
        }
        return Box::pin(overtaken(deps, m, to, at, pricing)).await;
    }
    // A failure counted as undeliverable is marked so in the write that applies it (no
    // write of its own): a later `delivered` takes back only a failure marked counted.
    let quality_counted = error.as_ref().is_some_and(undeliverable);
    let change = StatusChange {
        wamid: Some(report.wamid.to_string()),
        error,
        count_attempt: false,
        claim: None,
        quality_counted,
        refunded: false,
    };
    // The first status to carry Meta's pricing moves the message, prices it and counts it
    // in one write. Refused: it was priced or moved meanwhile; then as below.
    if let (Some(pricing), Some(m)) = (pricing, seen) {
        if m.pricing.is_none() {
            let priced = super::usage::priced(deps, m, pricing, at);
            // Only from the status read (which may be a moment behind): the record built
            // below from that read is then what was moved (a `failed` the read missed
            // refuses it, and the plain move below answers the message as it is).
            let from = std::slice::from_ref(&m.status);
            // Boxed: only a body of several statuses waits its turn (the single status's
            // future stays as it was).
            let written = match turns {
                None => {
                    deps.usage
                        .transition_priced(&priced, from, to, &change, at)
                        .await
                }
                Some(turns) => {
                    let write = deps.usage.transition_priced(&priced, from, to, &change, at);
                    Box::pin(turns.in_turn(tenant_id, message_id, pricing, at, write)).await
                }
            };
            let written = match written {
                Ok(written) => written,
                Err(e) => {
                    return Box::pin(after_error(
                        deps,
                        tenant_id,
                        message_id,
                        at,
                        Some(pricing),
                        report,
                        e,
                    ))
                    .await
                }
            };
            if written {
                // The write answers no attributes: the record it made from the one read.
                let mut record = m.clone();
                change.apply_to(&mut record, to, at);
                record.pricing = Some(pricing.clone());
                moved(deps, &record, report).await;
                tracing::debug!(status = to.as_str(), "status applied, pricing recorded");
                return Ok(Applied::Yes);
            }
        }
    }
    let moved_to = match deps
        .messages
        .transition(tenant_id, message_id, to, &change, at)
        .await
    {
        Ok(t) => t,
        Err(e) => {
            return Box::pin(after_error(
                deps, tenant_id, message_id, at, pricing, report, e,
            ))
            .await
        }
    };
    match moved_to {
        Transition::Applied(record) => {
            moved(deps, &record, report).await;
            // Meta's pricing, counted once whichever status carries it first: the moved
            // record says whether it was (no extra read). Last, so that a failure here
            // (answered 500: Meta delivers again) never loses the callback above.
            if let Some(pricing) = pricing {
                match turns {
                    None => super::usage::record_on(deps, &record, pricing, at).await?,
                    Some(turns) => {
                        let write = super::usage::record_on(deps, &record, pricing, at);
                        Box::pin(turns.in_turn(tenant_id, message_id, pricing, at, write)).await?
                    }
                };
            }
            tracing::debug!(status = to.as_str(), "status applied");
            Ok(Applied::Yes)
        }
        Transition::Refused => {
            // (Refused by this very move, landed with its answer lost and the store's retry
            // refused by it, would lose its callback here: told apart from the same report
            // delivered again, which is refused as well, it could be only by a token of the
            // write's own. Callbacks stay exactly once in that common case; see README.)
            // A repeated or overtaken status may still be the first to carry the pricing
            // (the dispatcher itself moves a message to `sent`), or be a `delivered` (or
            // `sent`) the message has no time of: read afresh (the read above was a moment
            // behind, or there was none: found by its wamid), only then.
            let may_be_late = matches!(to, MessageStatus::Delivered | MessageStatus::Sent)
                && seen.is_none_or(|m| !m.events.iter().any(|e| e.status == to));
            if pricing.is_some() || may_be_late {
                return Box::pin(async {
                    match deps.messages.get_message(tenant_id, message_id).await? {
                        Some(m) => overtaken(deps, &m, to, at, pricing).await,
                        None => Ok(Applied::NoChange),
                    }
                })
                .await;
            }
            Ok(Applied::NoChange)
        }
    }
}

/// The event a status Meta reported after the message moved past it records: a
/// `delivered` after `read`, a `sent` after `delivered`, `read` or `failed`, when the
/// message has no event of that status (its `delivered_at`, `sent_at` empty). Never a move
/// (the status stays, forward only), nor for anything else overtaken (a `failed` after
/// `read` changes nothing, API.md). `sent` is the dispatcher's at Meta's answer, so Meta's
/// own `sent` is recorded only when that answer was lost (the message settled by Meta's
/// statuses), or when the dispatcher failed the message without one (its send's outcome
/// in doubt): Meta had it after all, and a `delivered` may follow (`failed → delivered`),
/// which would otherwise show a delivered message never sent.
fn late_event(
    m: &MessageRecord,
    to: MessageStatus,
    at: chrono::DateTime<chrono::Utc>,
) -> Option<StatusEvent> {
    let past = match to {
        MessageStatus::Delivered => m.status == MessageStatus::Read,
        MessageStatus::Sent => matches!(
            m.status,
            MessageStatus::Delivered | MessageStatus::Read | MessageStatus::Failed
        ),
        _ => false,
    };
    (past && !m.events.iter().any(|e| e.status == to)).then_some(StatusEvent { status: to, at })
}

/// How often a late status's time is written ([`overtaken`]), the message read afresh
/// before each write after the first.
pub const OVERTAKEN_TRIES: usize = 4;

/// A status `m` (as read) has moved past: its time recorded if it is one the message has no
/// time of ([`late_event`]; one conditional write on the message as read, folded with the
/// pricing when this status is the first to carry it), else its pricing alone, if the
/// first. A write refused because the message changed since the read is tried again on the
/// message read afresh, up to [`OVERTAKEN_TRIES`] writes in all (each refusal is another
/// write that landed meanwhile, another late status or a pricing: a few at most). Refused
/// every time, the time is dropped, with a WARN and the `LateStatusesDropped` metric, and
/// the status answered as changing nothing (the body 200): not 500, which would have Meta
/// send the whole body again (all its other statuses idempotent, but a body may be a
/// thousand) for one timestamp the message's own status already goes past. `Yes` when the
/// time was recorded (no status callback: the status did not change). Each try after the
/// first is one strong read and one write.
async fn overtaken(
    deps: &Deps,
    m: &MessageRecord,
    to: MessageStatus,
    at: chrono::DateTime<chrono::Utc>,
    pricing: Option<&crate::domain::Pricing>,
) -> Result<Applied, ServiceError> {
    let mut read = std::borrow::Cow::Borrowed(m);
    for attempt in 1..=OVERTAKEN_TRIES {
        let m = &*read;
        let first_pricing = pricing.filter(|_| m.pricing.is_none());
        let Some(event) = late_event(m, to, at) else {
            if let Some(p) = first_pricing {
                super::usage::record_on(deps, m, p, at).await?;
            }
            return Ok(Applied::NoChange);
        };
        let priced = first_pricing.map(|p| super::usage::priced(deps, m, p, at));
        if deps
            .messages
            .record_overtaken(m, event, priced.as_ref())
            .await?
        {
            tracing::debug!(status = to.as_str(), "overtaken status's time recorded");
            return Ok(Applied::Yes);
        }
        if attempt == OVERTAKEN_TRIES {
            // (The span names the wamid's tail, the tenant and the message; no number.)
            tracing::warn!(
                status = to.as_str(),
                tries = OVERTAKEN_TRIES,
                "a late status's time not recorded: the message changed before every write"
            );
            crate::metrics::late_status_dropped(to.as_str());
            break;
        }
        match deps.messages.get_message(&m.tenant_id, &m.id).await? {
            Some(fresh) => read = std::borrow::Cow::Owned(fresh),
            None => return Ok(Applied::NoChange),
        }
    }
    // Refused every time (the message changing meanwhile): its pricing, if the first (the
    // store's condition decides).
    if let Some(p) = pricing {
        super::usage::record_on(deps, &read, p, at).await?;
    }
    Ok(Applied::NoChange)
}

/// A move (priced or not) that answered `e` after every try: the first may have landed,
/// its answer lost. Read back, a message holding this very move has its callback queued and
/// the webhook is answered 200 (Meta's redelivery would find it moved and queue none), and
/// the report's `pricing` is counted if the message has none yet (the store's condition
/// counts it once; a priced move that landed holds it already), and a failure the move
/// marked counted is counted (below). Else the error.
async fn after_error(
    deps: &Deps,
    tenant_id: &TenantId,
    message_id: &MessageId,
    at: chrono::DateTime<chrono::Utc>,
    pricing: Option<&crate::domain::Pricing>,
    report: &StatusReport,
    e: crate::store_error::StoreError,
) -> Result<Applied, ServiceError> {
    let to = report.status.message_status();
    match this_move(deps, tenant_id, message_id, to, at).await {
        Some(record) => {
            super::callbacks::status_changed(deps, &record).await;
            // The account-level error's suspension too (conditional, so never twice).
            account_error(deps, &record, report).await;
            count_if_settled(deps, &record).await;
            // A failure this move marked counted is counted: its mark is what a later
            // `delivered` takes the count back by, so a mark without its count would take
            // back another message's. (A duplicate delivery of the report that an earlier
            // one applied, and whose own write then failed every try, counts it twice.)
            if record.status == MessageStatus::Failed && record.quality_counted {
                let day = record.updated_at.date_naive();
                super::quality::count_on(
                    deps,
                    &record.tenant_id,
                    day,
                    QualityCounter::Undeliverable,
                )
                .await;
            }
            if let Some(p) = pricing.filter(|_| record.pricing.is_none()) {
                super::usage::record_on(deps, &record, p, at).await?;
            }
            Ok(Applied::Yes)
        }
        None => Err(e.into()),
    }
}

/// The message, read back, if it holds this very move: at `to`, its event for `to` at this
/// report's time (a duplicate delivery of the same report holds it too: its callback may
/// then go twice, as callbacks are at least once). `None` on a read that fails.
pub(crate) async fn this_move(
    deps: &Deps,
    tenant_id: &TenantId,
    message_id: &MessageId,
    to: MessageStatus,
    at: chrono::DateTime<chrono::Utc>,
) -> Option<MessageRecord> {
    let m = deps
        .messages
        .get_message(tenant_id, message_id)
        .await
        .ok()
        .flatten()?;
    let holds = m.status == to
        && m.events
            .iter()
            .rev()
            .find(|e| e.status == to)
            .is_some_and(|e| e.at == at);
    holds.then_some(m)
}

/// A move out of `sending` by Meta's own status (its answer to the send was lost or came
/// too late, or this status overtook the dispatcher's own move) is Meta's acceptance of the
/// message: counted as sent for the tenant's quality rates (`sent_7d`, the rates'
/// denominator) and the `MessagesSent` metric, as the dispatcher counts the move it makes.
/// Once: only the write that moves the message out of `sending` (a conditional move)
/// counts it, the dispatcher's or a status's. (A redelivered status whose own write failed
/// every try, read back as holding this move, may count it twice, as the undeliverable
/// count.)
async fn count_if_settled(deps: &Deps, record: &MessageRecord) {
    let from_sending = record
        .events
        .iter()
        .rev()
        .nth(1)
        .is_some_and(|e| e.status == MessageStatus::Sending);
    if from_sending && record.status != MessageStatus::Sending {
        super::quality::count_sent(deps, &record.tenant_id).await;
    }
}

/// Whether a failure's error is one Meta gives for messages it could not or would not
/// deliver (`quality::UNDELIVERABLE_CODES`): counted, and marked counted.
fn undeliverable(e: &MessageError) -> bool {
    matches!(e.code, crate::domain::ErrorCode::Meta(c) if super::quality::UNDELIVERABLE_CODES.contains(&c))
}

/// What follows a move: the tenant's status callback, and an undeliverable failure
/// counted on its status's day (a failure is applied once, being terminal, so it is
/// counted once; the write that applied it marked it counted), or taken back from that
/// day when Meta then reports the message delivered or read (a `failed` is left only
/// once, so it is taken back once) — only a failure marked counted: one the dispatcher
/// failed, or written before the mark, was never counted here.
async fn moved(deps: &Deps, record: &MessageRecord, report: &StatusReport) {
    super::callbacks::status_changed(deps, record).await;
    account_error(deps, record, report).await;
    count_if_settled(deps, record).await;
    if !record.quality_counted {
        return;
    }
    if record.status == MessageStatus::Failed {
        let day = record.updated_at.date_naive();
        super::quality::count_on(deps, &record.tenant_id, day, QualityCounter::Undeliverable).await;
        return;
    }
    // The event before this move, if it was the failure.
    let failed = record
        .events
        .iter()
        .rev()
        .nth(1)
        .filter(|e| e.status == MessageStatus::Failed);
    if let Some(failed) = failed {
        if matches!(
            record.status,
            MessageStatus::Delivered | MessageStatus::Read
        ) {
            let day = failed.at.date_naive();
            super::quality::take_back(deps, &record.tenant_id, day, QualityCounter::Undeliverable)
                .await;
        }
    }
}

/// [`account_stopped`] for a `failed` move whose report carries an account-level error.
async fn account_error(deps: &Deps, record: &MessageRecord, report: &StatusReport) {
    if record.status != MessageStatus::Failed {
        return;
    }
    if let Some(e) = report
        .errors
        .iter()
        .find(|e| super::errors::ACCOUNT_STOP_CODES.contains(&e.code))
    {
        // Boxed, as the other rare paths here (the size of every status's future).
        Box::pin(account_stopped(deps, record, report, e)).await;
    } else if let Some(e) = report
        .errors
        .iter()
        .find(|e| super::errors::NUMBER_STOP_CODES.contains(&e.code))
    {
        Box::pin(number_stopped(deps, record, report, e)).await;
    }
}

/// A `failed` status carrying a number-level error (`errors::NUMBER_STOP_CODES`: Meta
/// accepted the send, then reported that its number is limited): the number the message
/// went from is held, as when Meta answers a send with it (`numbers::hold_for_meta`),
/// unless an admin resumed it after Meta's time of the status. Best effort, as for an
/// account-level error.
async fn number_stopped(
    deps: &Deps,
    record: &MessageRecord,
    report: &StatusReport,
    error: &crate::domain::meta::MetaError,
) {
    let Some(tenant) = tenant_for_status(deps, &record.tenant_id, "hold its number").await else {
        return;
    };
    if tenant.status == crate::ports::TenantStatus::Closed {
        return;
    }
    // The number the message went from; for a message from before that was kept, the one
    // Meta's status names (not the default, which may have changed since).
    // (A kept status, applied once the wamid is known, names no number: the default then.)
    let number = record
        .from
        .clone()
        .or_else(|| report.phone_number_id.clone())
        .unwrap_or_else(|| tenant.phone_number_id.clone());
    let at = report.at(deps.clock.now());
    super::numbers::hold_for_meta(
        deps,
        &tenant,
        &number,
        (error.code, &error.title),
        "webhook",
        at,
    )
    .await;
}

/// The tenant a status's stop (a number's hold, the account's suspension) applies to: `None`
/// when it is gone, or when it could not be read (logged with `purpose`; best effort, as
/// both stops are: the next such status tries again).
async fn tenant_for_status(
    deps: &Deps,
    tenant: &TenantId,
    purpose: &'static str,
) -> Option<crate::ports::Tenant> {
    match deps.tenants.get_tenant(tenant).await {
        Ok(found) => found,
        Err(e) => {
            tracing::error!(error = %e, purpose, "could not read the tenant on meta's status");
            None
        }
    }
}

/// A `failed` status carrying an account-level error (`errors::ACCOUNT_STOP_CODES`: Meta
/// accepted the send, then reported that the account cannot send): the tenant is suspended,
/// as when Meta answers a send with it, so its next sends answer `tenant_suspended` instead
/// of being debited and failing one by one. Not a tenant that is no longer active, nor one
/// resumed after Meta's time of the status (the operator's resume stands). Best effort: the
/// failure is applied already (a redelivered body would not come back here), so a store
/// error is logged; the next such status suspends it.
async fn account_stopped(
    deps: &Deps,
    record: &MessageRecord,
    report: &StatusReport,
    error: &crate::domain::meta::MetaError,
) {
    let Some(tenant) = tenant_for_status(deps, &record.tenant_id, "suspend the tenant").await
    else {
        return;
    };
    let at = report.at(deps.clock.now());
    let resumed_since = tenant.status_changed_at.is_some_and(|changed| changed > at);
    if tenant.status != crate::ports::TenantStatus::Active || resumed_since {
        return;
    }
    // (The suspension keeps 300 characters of it, as for a send's answer.)
    let reason = format!(
        "{}{} (status webhook): {}",
        crate::domain::error_text::META_ERROR_REASON,
        error.code,
        error.title
    );
    super::accounts::suspend_for_meta(
        deps,
        &record.tenant_id,
        &reason,
        "webhook",
        tenant.status_changed_at,
    )
    .await;
}

/// Keeps a status that resolved to no message, then looks again (the dispatcher may have
/// recorded the wamid meanwhile; it applies kept statuses only after recording it).
/// Answers the message if it is known now.
async fn keep(
    deps: &Deps,
    tenant: Option<&TenantId>,
    report: &StatusReport,
) -> Result<Option<Found>, ServiceError> {
    let now = deps.clock.now();
    let pending = PendingStatus {
        wamid: report.wamid.to_string(),
        status: report.status,
        timestamp: report.timestamp.unwrap_or_else(|| now.timestamp()),
        biz_opaque_callback_data: report.callback.as_ref().map(Callback::text),
        errors: report
            .errors
            .iter()
            .map(|e| PendingError {
                code: e.code,
                title: e.title.clone(),
            })
            .collect(),
        pricing: report.pricing.clone(),
        received_at: now,
        expires_at: deps
            .settings
            .retention
            .expiry(RetentionClass::PendingStatus, now),
    };
    let new = deps.pending.put_pending_status(&pending).await?;
    // Per status: DEBUG (a webhook request logs at most one INFO line; README "Logs").
    tracing::debug!(wamid = %report.wamid.for_logs(), status = report.status.as_str(), new, "status for a wamid not known yet; kept");
    let found = resolve(deps, tenant, report).await?;
    if found.is_some() {
        // Applied by the caller now; the kept copy is no longer needed.
        deps.pending.delete_pending_status(&pending).await?;
    }
    Ok(found)
}

/// A kept status, as the report it was kept from (without the recipient, which is not
/// kept). `None`: its wamid is unusable (kept before wamids were bounded).
fn report_of(p: &PendingStatus) -> Option<StatusReport> {
    Some(StatusReport {
        phone_number_id: None,
        wamid: Wamid::parse(&p.wamid)?,
        status: p.status,
        timestamp: Some(p.timestamp),
        // Either form (kept before the tenant was added to it, or after).
        callback: p
            .biz_opaque_callback_data
            .as_deref()
            .and_then(Callback::parse),
        recipient: None,
        recipient_user_id: None,
        errors: p
            .errors
            .iter()
            .map(|e| MetaError {
                code: e.code,
                title: e.title.clone(),
            })
            .collect(),
        pricing: p.pricing.clone(),
    })
}

/// Applies what was kept for `wamid` (the dispatcher calls this right after recording
/// it), oldest first, and forgets what was applied or refused. Answers how many changed
/// the message.
pub async fn apply_kept(deps: &Deps, wamid: &str) -> Result<usize, ServiceError> {
    let mut kept = deps.pending.pending_statuses(wamid).await?;
    kept.sort_by_key(|p| (p.timestamp, p.status.rank()));
    let mut applied = 0;
    for p in kept {
        if let Some(report) = report_of(&p) {
            match resolve(deps, None, &report).await? {
                None => continue,
                Some(found) => {
                    let (tenant, message) = found.ids();
                    crate::telemetry::record_tenant(tenant.as_str());
                    if apply_to(deps, tenant, message, &report, found.seen(), None).await?
                        == Applied::Yes
                    {
                        applied += 1;
                    }
                }
            }
        }
        deps.pending.delete_pending_status(&p).await?;
    }
    if applied > 0 {
        tracing::info!(wamid = %crate::domain::wamid_tail(wamid), applied, "kept statuses applied");
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::PhoneNumber;

    /// Every status a late time is recorded for is one `LateStatusesDropped` counts, so one
    /// the template's alarm sums (`metrics::LATE_STATUSES_DROPPED`): a status added to
    /// [`late_event`] without it would be dropped unalarmed.
    #[test]
    fn every_status_whose_late_time_can_be_dropped_is_one_the_alarm_sums() {
        let at = chrono::Utc::now();
        let mut recorded = Vec::new();
        for status in MessageStatus::ALL {
            let m = MessageRecord {
                id: MessageId::generate(),
                tenant_id: TenantId::from_trusted("t1"),
                to: PhoneNumber::parse("+60123456789").expect("a phone"),
                template: None,
                status,
                error: None,
                events: Vec::new(),
                wamid: None,
                attempts: 1,
                price: 1,
                client_reference: None,
                created_at: at,
                updated_at: at,
                expires_at: None,
                broadcast_id: None,
                send_at: None,
                from: None,
                pricing: None,
                carried_slot: None,
                claim: None,
                quality_counted: false,
                refunded: false,
                settled_at: None,
            };
            for to in MessageStatus::ALL {
                if late_event(&m, to, at).is_some() && !recorded.contains(&to.as_str()) {
                    recorded.push(to.as_str());
                }
            }
        }
        recorded.sort_unstable();
        let mut summed = crate::metrics::LATE_STATUSES_DROPPED.to_vec();
        summed.sort_unstable();
        assert_eq!(recorded, summed);
    }
}
