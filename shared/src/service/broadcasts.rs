//! Broadcasts: one template to up to 10,000 recipients. Every number is validated,
//! duplicates collapse, opted-out numbers are skipped, and the accepted ones are paid for
//! all at once (all or nothing). The fan-out runs in the dispatcher from a queue job
//! that holds the content (never a table), resumably, in batches; the uploaded list is
//! deleted once every recipient is enqueued. A broadcast with a `send_at` is
//! `scheduled`: paid for at once, its fan-out job waits on the queue (see `schedule`)
//! and starts it with a conditional write; cancelled before that, it is refunded whole.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::domain::{
    ErrorCode, MessageId, MessageRecord, MessageStatus, OptOutKey, PhoneNumber, RetentionClass,
    StatusEvent, TemplateRef, TenantId,
};
use crate::ports::{
    Broadcast, BroadcastControl, BroadcastOnce, BroadcastStatus, CancelledRecipients, FanoutHop,
    RequestKeyRecord, TenantStatus, UnqueuedClose, CANCELLED_PER_WRITE,
};
use crate::store_error::StoreError;

use super::errors::ServiceError;
use super::jobs::{DispatchJob, FanoutJob, Outcome, QueueJob};
use super::ledger::{self, Charge};
use super::send::{parse_template, TemplateIn};
use super::Deps;

pub use super::jobs::FANOUT_KIND;

pub const MAX_RECIPIENTS: usize = 10_000;
/// Invalid entries echoed back at most (the count is always complete).
pub const MAX_INVALID_SHOWN: usize = 100;
/// Recipients fanned out per queue delivery (the rest continue on the next one).
pub const FANOUT_SLICE: usize = 2_000;
/// Opt-out lookups in flight at once while accepting a broadcast.
const LOOKUPS: usize = 16;
/// Broadcasts of a `GET /v1/broadcasts` page whose messages are tallied at once.
const LIST_TALLIES: usize = 8;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BroadcastRequest {
    pub template: TemplateIn,
    pub recipients: Vec<String>,
    #[serde(default, deserialize_with = "crate::domain::fields::non_null")]
    pub name: Option<String>,
    /// RFC 3339 with an offset, 1 minute to 35 days ahead.
    #[serde(default, deserialize_with = "crate::domain::fields::non_null")]
    pub send_at: Option<String>,
    /// The tenant's phone number to send from; the default one without it.
    #[serde(default, deserialize_with = "crate::domain::fields::non_null")]
    pub from: Option<String>,
}

/// A broadcast's campaign settings, as the request gave them (unchecked).
#[derive(Default, Debug, Clone)]
pub struct CampaignIn {
    pub name: Option<String>,
    pub send_at: Option<String>,
    /// The tenant's phone number to send from; the default one without it.
    pub from: Option<String>,
    /// The request's `Idempotency-Key` and fingerprint, if it gave one.
    pub key: Option<super::idempotency::Idempotent>,
    /// The broadcast this one retries (set by `retry_failed` only).
    pub retry_of: Option<String>,
}

/// The longest campaign name.
pub const MAX_NAME: usize = 200;

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct Accepted {
    pub id: String,
    /// `scheduled` (it has a `send_at`) or `sending`.
    pub status: &'static str,
    pub accepted: usize,
    pub skipped_opted_out: usize,
    pub duplicates: usize,
    pub invalid_count: usize,
    /// The first invalid entries as given (numbers are the tenant's own data).
    pub invalid: Vec<String>,
    /// An earlier request's broadcast, answered again for the same `Idempotency-Key`.
    #[serde(skip)]
    pub replayed: bool,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct View {
    pub id: String,
    pub name: Option<String>,
    /// `scheduled`, `sending`, `completed` or `cancelled` (see [`campaign_status`]).
    pub status: &'static str,
    /// The sender's phone number id.
    pub from: Option<String>,
    pub template: TemplateRef,
    pub send_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    /// Recipients accepted (each is, or becomes, one message).
    pub total: usize,
    pub accepted: usize,
    pub skipped_opted_out: usize,
    pub duplicates: usize,
    pub invalid_count: usize,
    pub enqueued: usize,
    /// Messages of the broadcast by status (every status of the contract, zeros too).
    pub counts: BTreeMap<String, usize>,
    /// Its failed messages by error code, most frequent first, each with the hint a
    /// person can act on.
    pub failures: Vec<Failure>,
    /// The broadcast whose failures it retries, if it is a retry.
    pub retry_of: Option<String>,
    /// The broadcast that retried its failures (a broadcast is retried once).
    pub retried_by: Option<String>,
}

/// Failed messages of one error code.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct Failure {
    pub code: ErrorCode,
    pub title: String,
    pub hint: String,
    pub count: usize,
}

/// Messages read per page when a broadcast's messages are walked (failures, CSV, retry).
pub const PAGE: usize = 200;

/// Whether a later try may fix a failure: Meta's transient and throughput errors (the
/// codes the dispatcher retries), Meta unreachable or answering 5xx, a timeout whose
/// outcome stayed unknown (such a message may have arrived: its hint says so), and a
/// dispatch job lost before the message was sent (never sent, refunded).
/// Not opt-outs, undeliverable numbers, template errors or account problems.
pub fn retryable(code: &ErrorCode) -> bool {
    match code {
        ErrorCode::Meta(c) => matches!(
            c,
            1 | 2 | 4 | 17 | 32 | 613 | 80007 | 130429 | 131000 | 131016 | 131056 | 131057
        ),
        ErrorCode::Kirim(c) => matches!(
            c.as_str(),
            "meta_unavailable"
                | "meta_unreachable"
                | super::errors::META_TRANSIENT_ERROR
                | super::errors::META_REFUSED_UNREADABLE
                | super::deadline::OUTCOME_UNKNOWN
                | super::deadline::DISPATCH_LOST
                | "sender_held"
        ),
    }
}

/// A message the dispatcher failed on its own side (its outcome in doubt, Meta unreachable)
/// whose `sent` Meta reported after all (recorded late, `status::late_event`): Meta has it,
/// and may yet deliver it (`failed → delivered`), so a retry would send it twice. A failure
/// Meta itself reported after its `sent` (131000, 131056, ...) was not delivered: retried.
fn reached_meta_after_all(m: &MessageRecord) -> bool {
    m.error
        .as_ref()
        .is_some_and(|e| matches!(e.code, ErrorCode::Kirim(_)))
        && m.events.iter().any(|e| e.status == MessageStatus::Sent)
}

/// The statuses a broadcast view always counts.
pub const COUNTED: [MessageStatus; 7] = [
    MessageStatus::Accepted,
    MessageStatus::Sending,
    MessageStatus::Sent,
    MessageStatus::Delivered,
    MessageStatus::Read,
    MessageStatus::Failed,
    MessageStatus::Cancelled,
];

/// A broadcast's status as the API shows it from its view's `counts`: `paused` or
/// `cancelled` when a person said so, else `scheduled` until it starts, `sending`
/// while recipients are being queued or any message is still on its way to Meta,
/// `completed` once every message was handed over or ended, `cancelled` if cancelled, or
/// if some of its recipients were never sent because its list expired first (closed with
/// them refunded: `refunded_unsent`, counted `cancelled`).
pub fn campaign_status(b: &Broadcast, counts: &BTreeMap<String, usize>) -> &'static str {
    let open = |st: MessageStatus| counts.get(st.as_str()).copied().unwrap_or(0);
    // Every recipient queued and every message handed to Meta or ended: nothing is left
    // to hold, whatever the hold says (a pause that came after the last claim).
    let done = b.status == BroadcastStatus::Enqueued
        && open(MessageStatus::Accepted) + open(MessageStatus::Sending) == 0;
    match b.control {
        // A cancel that found nothing left to cancel (each message already on its way to
        // Meta, or a stale count) ends as what happened: `completed`.
        Some(BroadcastControl::Cancelled) if !(done && open(MessageStatus::Cancelled) == 0) => {
            return "cancelled"
        }
        Some(BroadcastControl::Paused) if b.status != BroadcastStatus::Cancelled && !done => {
            return "paused"
        }
        _ => {}
    }
    match b.status {
        BroadcastStatus::Scheduled => "scheduled",
        BroadcastStatus::Cancelled => "cancelled",
        BroadcastStatus::FanningOut => "sending",
        BroadcastStatus::Enqueued => {
            if open(MessageStatus::Accepted) + open(MessageStatus::Sending) > 0 {
                "sending"
            } else if b.refunded_unsent > 0 {
                // Ended without these recipients: they will never be sent.
                "cancelled"
            } else {
                "completed"
            }
        }
    }
}

/// Recipients of a `text/csv` upload: the `phone` column (header row required, any
/// column order, case-insensitive header). Only that column is read as text: the other
/// columns may be in any encoding (a spreadsheet's "CSV" is often Windows-1252, a name
/// like "José" not UTF-8), and a phone cell that is not UTF-8 is no phone number (the
/// recipient is then counted invalid, as any other).
///
/// What is no CSV text is said so, not sent looking for a `phone` column it cannot have
/// ([`not_csv_text`]): UTF-16 text, a file with NUL bytes (a workbook, an image), and a
/// header row that is no UTF-8 text.
pub fn recipients_from_csv(body: &[u8]) -> Result<Vec<String>, ServiceError> {
    if let Some(why) = not_csv_text(body) {
        return Err(ServiceError::InvalidRequest(why.into()));
    }
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(body);
    let headers = reader
        .byte_headers()
        .map_err(|_| ServiceError::InvalidRequest("the CSV has no readable header row".into()))?;
    let Some(col) = headers
        .iter()
        .position(|h| h.eq_ignore_ascii_case(b"phone"))
    else {
        // A header row that is no text at all: the file is not what it was taken for.
        let why = if headers.iter().all(|h| std::str::from_utf8(h).is_ok()) {
            "the CSV needs a column named phone in its header row"
        } else {
            "the file's first line is not UTF-8 text, so it has no phone column: save the file \
             as CSV UTF-8 (comma-delimited) with a header row naming the phone column"
        };
        return Err(ServiceError::InvalidRequest(why.into()));
    };
    let mut out = Vec::new();
    for (i, row) in reader.byte_records().enumerate() {
        let row = row.map_err(|_| {
            ServiceError::InvalidRequest(format!("CSV row {} is not readable", i + 2))
        })?;
        if out.len() >= MAX_RECIPIENTS {
            return Err(too_many());
        }
        let cell = row.get(col).unwrap_or_default();
        out.push(written_number(&String::from_utf8_lossy(cell)));
    }
    Ok(out)
}

/// Why an upload is no CSV text, if it is plainly not: UTF-16 text (its byte order mark),
/// a zip archive (an Excel workbook, `.xlsx`), or NUL bytes (binary content: an image, an
/// old `.xls`, or UTF-16 without its mark). A CSV's other columns may be in another
/// 8-bit encoding (Windows-1252): that is not refused here.
fn not_csv_text(body: &[u8]) -> Option<&'static str> {
    if body.starts_with(&[0xFF, 0xFE]) || body.starts_with(&[0xFE, 0xFF]) {
        return Some(
            "the file is UTF-16 text, not UTF-8: save it as CSV UTF-8 (comma-delimited) \
             with a phone column",
        );
    }
    if body.starts_with(b"PK\x03\x04") {
        return Some(
            "the file is a zip archive, such as an Excel workbook (.xlsx), not CSV text: \
             save it as CSV UTF-8 (comma-delimited) with a phone column",
        );
    }
    if body.contains(&0) {
        return Some(
            "the file is not CSV text (it has binary content, such as a spreadsheet workbook \
             or an image): save it as CSV UTF-8 (comma-delimited) with a phone column",
        );
    }
    None
}

/// A number as people write it, with the spaces, dashes, dots and brackets dropped
/// (`+60 12-345 6789` and `(+60) 12.345.6789` are `+60123456789`), as a CSV cell or a pasted
/// list gives it; what is still no E.164 number is counted invalid as it is.
pub fn written_number(cell: &str) -> String {
    // A spreadsheet's number as a decimal (`+60123456789.0`, `6.0123456789E+10`) is no
    // number written with dots: kept as it is, it is counted invalid, not read as another
    // (`+601234567890`) that would be sent and charged.
    let t = cell.trim();
    if let Some((_, tail)) = t.rsplit_once('.') {
        if (1..=2).contains(&tail.len()) && tail.bytes().all(|b| b.is_ascii_digit()) {
            return t.to_owned();
        }
    }
    if let Some((mantissa, exponent)) = t.split_once(['e', 'E']) {
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        let mantissa = mantissa.trim_start_matches('+');
        let exponent = exponent.trim_start_matches(['+', '-']);
        let whole = mantissa
            .split_once('.')
            .map_or(digits(mantissa), |(a, b)| digits(a) && digits(b));
        if whole && digits(exponent) {
            return t.to_owned();
        }
    }
    cell.chars()
        .filter(|c| !c.is_whitespace() && !matches!(c, '-' | '.' | '(' | ')'))
        .collect()
}

fn too_many() -> ServiceError {
    ServiceError::InvalidRequest(format!(
        "a broadcast takes at most {MAX_RECIPIENTS} recipients"
    ))
}

/// A broadcast message's id: a ULID of the broadcast's millisecond whose random part is
/// derived from the broadcast and the recipient's position, so a resumed fan-out mints
/// the same ids (and never a second message).
pub fn message_id(broadcast: &Broadcast, index: usize) -> MessageId {
    let digest = Sha256::digest(format!("{}:{index}", broadcast.id).as_bytes());
    let mut random: u128 = 0;
    for b in digest.iter().take(10) {
        random = (random << 8) | u128::from(*b);
    }
    let ms = broadcast.created_at.timestamp_millis().max(0) as u64;
    MessageId::from_trusted(ulid::Ulid::from_parts(ms, random).to_string())
}

pub async fn create(
    deps: &Deps,
    tenant_id: &TenantId,
    template: TemplateIn,
    raw: Vec<String>,
    from: Option<String>,
) -> Result<Accepted, ServiceError> {
    let campaign = CampaignIn {
        from,
        ..CampaignIn::default()
    };
    create_campaign(deps, tenant_id, template, raw, campaign).await
}

/// Of `valid`, the recipients a send might be refused to: those with an opt-out under any
/// of their WhatsApp forms, or under the key a form is paired with (the one hop
/// `optouts::check` follows: a form's pairing, that key's opt-out, nothing further). Read
/// in batches (`ContactStore::found_among`, then `opted_out_among` for the paired keys of
/// the forms with no opt-out of their own): any other recipient's check would find
/// nothing that blocks and is not made; these are checked in full, `check` deciding.
async fn to_check_in_full(
    deps: &Deps,
    tenant_id: &TenantId,
    valid: &[PhoneNumber],
) -> Result<HashSet<PhoneNumber>, ServiceError> {
    let forms_of = |p: &PhoneNumber| super::contacts::phone_forms(&OptOutKey::Phone(p.clone()));
    let forms: Vec<OptOutKey> = valid.iter().flat_map(forms_of).collect();
    let found = deps.contacts.found_among(tenant_id, &forms).await?;
    // In order (the batches' calls the same from one creation to the next), once each.
    let paired: Vec<OptOutKey> = found
        .values()
        .filter(|f| !f.opt_out)
        .filter_map(|f| f.paired.clone())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let paired_opted_out = if paired.is_empty() {
        HashSet::new()
    } else {
        deps.contacts.opted_out_among(tenant_id, &paired).await?
    };
    let blocks = |form: &OptOutKey| {
        found.get(form).is_some_and(|f| {
            f.opt_out
                || f.paired
                    .as_ref()
                    .is_some_and(|u| paired_opted_out.contains(u))
        })
    };
    Ok(valid
        .iter()
        .filter(|p| forms_of(p).any(|k| blocks(&k)))
        .cloned()
        .collect())
}

/// Creates a broadcast with a name and, given `send_at`, scheduled: debited now, its
/// fan-out job waits on the queue until `send_at` (see `schedule`).
pub async fn create_campaign(
    deps: &Deps,
    tenant_id: &TenantId,
    template: TemplateIn,
    raw: Vec<String>,
    campaign: CampaignIn,
) -> Result<Accepted, ServiceError> {
    // An earlier request with the key answers first, whatever changed since (the credits,
    // an opt-out, the template): Stripe's semantics, as on sends.
    if let Some(earlier) = earlier_broadcast(deps, tenant_id, campaign.key.as_ref()).await? {
        return Ok(replay_of(&earlier));
    }
    let requested = parse_template(template)?;
    if raw.len() > MAX_RECIPIENTS {
        return Err(too_many());
    }
    let campaign_retry_of = campaign.retry_of;
    let name = campaign.name.map(|n| n.trim().to_owned());
    if name.as_ref().is_some_and(|n| {
        n.is_empty() || n.chars().count() > MAX_NAME || !crate::domain::text::plain_label(n)
    }) {
        return Err(ServiceError::InvalidRequest(format!(
            "name must be 1 to {MAX_NAME} characters, without control or invisible formatting characters"
        )));
    }
    let send_at = campaign
        .send_at
        .as_deref()
        .map(|raw| super::schedule::parse_send_at(raw, deps.clock.now()))
        .transpose()?;
    let tenant = super::auth::load_tenant(deps, tenant_id).await?;
    if tenant.status != TenantStatus::Active {
        return Err(ServiceError::TenantSuspended);
    }
    // The catalogue decides the category and refuses what Meta would refuse, before any
    // opt-out lookup, debit or write.
    // One of the tenant's numbers (else `unknown_sender`); its WABA's catalogue decides.
    // Not a held one either (`sender_held`).
    let sender = super::numbers::open_sender(deps, &tenant, campaign.from.as_deref()).await?;
    let content = super::templates::resolve(deps, &sender.waba_id, requested).await?;
    let template_ref = content
        .template_ref()
        .cloned()
        .ok_or_else(|| ServiceError::Internal("a broadcast without a template".into()))?;
    super::quality::check_send(deps, tenant_id, Some(template_ref.category)).await?;

    let mut seen = HashSet::new();
    let (mut valid, mut invalid, mut duplicates) = (Vec::new(), Vec::new(), 0usize);
    for r in &raw {
        match PhoneNumber::parse(r.trim()) {
            // A number and its other WhatsApp form (Mexico, Argentina, Brazil) are one
            // user: the second is a duplicate, not a second message and debit.
            Ok(p) if !seen.contains(&p) => {
                if let Some(alias) = p.whatsapp_alias() {
                    seen.insert(alias);
                }
                seen.insert(p.clone());
                valid.push(p);
            }
            Ok(_) => duplicates += 1,
            Err(_) => invalid.push(r.chars().take(32).collect::<String>()),
        }
    }
    let category = Some(template_ref.category);
    // A balance that cannot pay for even one recipient is refused at the first recipient
    // the lookups find sendable, not after every recipient's opt-out was looked up (a read
    // or two each, up to 10,000: a 402 must not cost that); the lookups are the one pass
    // the campaign makes anyway, read as they come. One whose recipients have all opted
    // out goes on (accepted with none to send, nothing to pay).
    let mut unpayable_one = if valid.is_empty() {
        None
    } else {
        let price = deps.settings.prices.price_for(category);
        ledger::refuse_unpayable(deps, &tenant, price).await.err()
    };
    // Which recipients have an opt-out under any of their WhatsApp forms or the user ids
    // those are paired with, read for all of them at once in batches: one round trip for
    // every 50 forms (and every 100 paired ids) instead of one for each (BENCHMARKS.md "A
    // campaign's creation"). One with none is sendable as it is; one with any is checked
    // in full, as a send is. Not when the balance cannot pay for one: that refusal comes
    // at the first sendable recipient, its checks made one by one as before.
    let to_check = match unpayable_one {
        Some(_) => None,
        None => Some(to_check_in_full(deps, tenant_id, &valid).await?),
    };
    let to_check = &to_check;
    let mut checks = futures::stream::iter(valid.into_iter().map(|p| async move {
        let r = match to_check {
            Some(to_check) if !to_check.contains(&p) => Ok(()),
            _ => super::optouts::check(deps, tenant_id, &p, category).await,
        };
        (p, r)
    }))
    .buffered(LOOKUPS);
    let mut recipients = Vec::new();
    let mut skipped = 0usize;
    while let Some((p, r)) = checks.next().await {
        match r {
            Ok(()) => {
                if let Some(e) = unpayable_one.take() {
                    let retry_of = campaign_retry_of.as_deref();
                    return unpayable(deps, tenant_id, campaign.key.as_ref(), retry_of, e).await;
                }
                recipients.push(p);
            }
            Err(ServiceError::RecipientOptedOut) => skipped += 1,
            Err(e) => return Err(e),
        }
    }
    // No valid number at all is a bad request; valid numbers that have all opted out are
    // not (the opt-outs are the platform's to honour): accepted with none to send, nothing
    // debited, reported by its counts (API.md's `202` with `skipped_opted_out`), and
    // completed by its fan-out.
    if recipients.is_empty() && skipped == 0 {
        return Err(ServiceError::InvalidRequest(format!(
            "no valid recipient ({} invalid)",
            invalid.len()
        )));
    }
    let now = deps.clock.now();
    let price = deps.settings.prices.price_for(category);
    let total = price.saturating_mul(recipients.len() as i64);
    // A ULID of the acceptance time: a fan-out job that finds no broadcast yet knows how
    // long to wait for it (`deadline::unrecorded`).
    let id = crate::domain::ulid_at(now).to_string();
    // The token its first fan-out job carries (`ports::FanoutHop`).
    let fanout_token = crate::domain::new_id();
    let broadcast = Broadcast {
        id: id.clone(),
        tenant_id: tenant_id.clone(),
        template: template_ref,
        accepted: recipients.len(),
        skipped_opted_out: skipped,
        invalid: invalid.len(),
        duplicates,
        price_each: price,
        status: if send_at.is_some() {
            BroadcastStatus::Scheduled
        } else {
            BroadcastStatus::FanningOut
        },
        enqueued: 0,
        created_at: now,
        // Its messages copy it.
        expires_at: deps.settings.retention.expiry(
            RetentionClass::Messages,
            super::schedule::starts(send_at, now),
        ),
        name,
        from: Some(sender.phone_number_id.clone()),
        send_at,
        started_at: if send_at.is_some() { None } else { Some(now) },
        ended_at: None,
        control: None,
        retry_of: campaign_retry_of,
        retried_by: None,
        refunded_unsent: 0,
        closed_unqueued: 0,
        control_at: None,
        fanout_token: Some(fanout_token.clone()),
    };
    // The fan-out job is queued BEFORE the broadcast and its debit are written (as a
    // send's job is): a failed enqueue writes nothing, and a process that dies in between
    // leaves a job without a broadcast, which waits for it and is then dropped — never a
    // debited broadcast that nothing fans out.
    let job = QueueJob::BroadcastFanout(FanoutJob {
        tenant_id: tenant_id.clone(),
        broadcast_id: id.clone(),
        content,
        request_id: crate::telemetry::request_id(),
        send_at,
        paced_from: None,
        token: Some(fanout_token),
        resent: false,
    });
    let body = job
        .to_body()
        .map_err(|e| ServiceError::Internal(e.to_string()))?;
    // As a send: a balance that cannot pay refuses it before its fan-out job is queued.
    // A concurrent request with the same key (its write landed after this one looked for
    // it) may be what spent it: its answer then, as the key's write would have given.
    if let Err(e) = ledger::refuse_unpayable(deps, &tenant, total).await {
        let (key, retry_of) = (campaign.key.as_ref(), broadcast.retry_of.as_deref());
        return unpayable(deps, tenant_id, key, retry_of, e).await;
    }
    let queued = match super::schedule::wait(send_at, now) {
        Some(wait) => {
            deps.queue
                .send_delayed(&body, wait.min(deps.settings.schedule_hop))
                .await
        }
        None => deps.queue.send(&body).await,
    };
    if let Err(e) = queued {
        tracing::error!(broadcast_id = %id, error = %e, "broadcast not queued; nothing recorded or charged");
        return Err(e.into());
    }
    let charge = Charge::Broadcast(id.clone());
    let debit = ledger::debit(deps, tenant_id, &charge, total, now);
    match &campaign.key {
        None => deps
            .broadcasts
            .create_broadcast(&broadcast, &recipients, &debit)
            .await
            .map_err(super::errors::debit_refusal)?,
        Some(idem) => {
            let key = RequestKeyRecord {
                tenant_id: tenant_id.clone(),
                key_hash: idem.key.hash(),
                fingerprint: idem.fingerprint.clone(),
                first_id: id.clone(),
                created_at: now,
                expires_at: deps
                    .settings
                    .retention
                    .expiry(RetentionClass::Idempotency, now),
            };
            match deps
                .broadcasts
                .create_broadcast_once(&broadcast, &recipients, &debit, &key)
                .await
                .map_err(super::errors::debit_refusal)?
            {
                BroadcastOnce::Created => {}
                // A concurrent request with the key got there first (its fan-out job
                // queued above finds no broadcast and is dropped).
                BroadcastOnce::Earlier(earlier) => {
                    return replay_of_record(deps, tenant_id, idem, &earlier).await;
                }
            }
        }
    }
    tracing::info!(broadcast_id = %id, accepted = recipients.len(), "broadcast accepted");
    invalid.truncate(MAX_INVALID_SHOWN);
    Ok(Accepted {
        id,
        status: if send_at.is_some() {
            "scheduled"
        } else {
            "sending"
        },
        accepted: broadcast.accepted,
        skipped_opted_out: skipped,
        duplicates,
        invalid_count: broadcast.invalid,
        invalid,
        replayed: false,
    })
}

/// A campaign the balance cannot pay, as it is answered: a concurrent request with the same
/// key may be what spent it (its answer then, as the key's write would have given), and so
/// may a concurrent retry of the same broadcast's failures (the creating write would have
/// refused this one for that first: `ALREADY_RETRIED`, a `409`); else `refused`.
async fn unpayable(
    deps: &Deps,
    tenant_id: &TenantId,
    key: Option<&super::idempotency::Idempotent>,
    retry_of: Option<&str>,
    refused: ServiceError,
) -> Result<Accepted, ServiceError> {
    if let Some(earlier) = earlier_broadcast(deps, tenant_id, key).await? {
        return Ok(replay_of(&earlier));
    }
    if let Some(original) = retry_of {
        let retried = deps
            .broadcasts
            .get_broadcast(tenant_id, original)
            .await?
            .is_some_and(|o| o.retried_by.is_some());
        if retried {
            return Err(ServiceError::Conflict(crate::ports::ALREADY_RETRIED.into()));
        }
    }
    Err(refused)
}

/// The broadcast an earlier request with this key created, if there was one; `409
/// idempotency_key_reused` if that request's body was another.
async fn earlier_broadcast(
    deps: &Deps,
    tenant: &TenantId,
    idem: Option<&super::idempotency::Idempotent>,
) -> Result<Option<Broadcast>, ServiceError> {
    let Some(idem) = idem else {
        return Ok(None);
    };
    match deps
        .broadcasts
        .broadcast_key(tenant, &idem.key.hash())
        .await?
    {
        None => Ok(None),
        Some(earlier) => broadcast_of_record(deps, tenant, idem, &earlier)
            .await
            .map(Some),
    }
}

async fn broadcast_of_record(
    deps: &Deps,
    tenant: &TenantId,
    idem: &super::idempotency::Idempotent,
    earlier: &RequestKeyRecord,
) -> Result<Broadcast, ServiceError> {
    if earlier.fingerprint != idem.fingerprint {
        return Err(ServiceError::IdempotencyKeyReused);
    }
    // Gone only if it expired (2 years) while its key did not (24 hours): never.
    deps.broadcasts
        .get_broadcast(tenant, &earlier.first_id)
        .await?
        .ok_or(ServiceError::NotFound)
}

async fn replay_of_record(
    deps: &Deps,
    tenant: &TenantId,
    idem: &super::idempotency::Idempotent,
    earlier: &RequestKeyRecord,
) -> Result<Accepted, ServiceError> {
    Ok(replay_of(
        &broadcast_of_record(deps, tenant, idem, earlier).await?,
    ))
}

/// The first answer again, from the broadcast it created. Its invalid entries are not
/// kept anywhere (they are whatever the request held), so a replay lists none; their
/// count stands.
fn replay_of(b: &Broadcast) -> Accepted {
    tracing::info!(broadcast_id = %b.id, "broadcast request replayed");
    Accepted {
        id: b.id.clone(),
        status: if b.send_at.is_some() {
            "scheduled"
        } else {
            "sending"
        },
        accepted: b.accepted,
        skipped_opted_out: b.skipped_opted_out,
        duplicates: b.duplicates,
        invalid_count: b.invalid,
        invalid: Vec::new(),
        replayed: true,
    }
}

pub async fn view(deps: &Deps, tenant: &TenantId, id: &str) -> Result<View, ServiceError> {
    let b = deps
        .broadcasts
        .get_broadcast(tenant, id)
        .await?
        .ok_or(ServiceError::NotFound)?;
    Ok(view_of(deps, b).await?)
}

/// Reads a page of a campaign's messages filtered by status makes at most looking for
/// `limit` matches: the list's own budget (data-model.md A8).
const FILTERED_READS: usize = 10;

/// Messages each of those reads after the first asks for, whatever the page's `limit` (the
/// first asks `limit` + 1, as an unfiltered page, so a common status costs what it did): a
/// rare status is looked for among up to ~900 messages a request, not `limit` + 1 a read
/// (20 in all at `limit=1`). The most a request reads is as at `limit=100` (about 106 R,
/// data-model A59).
const FILTERED_READ: usize = 100;

/// A page of the tenant's campaign `id`'s messages, in message-id order (`recipients.csv`'s
/// order), with the list's `status`, `since`, `until`, `limit` and `cursor` (`GET
/// /v1/messages?broadcast_id=`); `NotFound` for a campaign that is not the tenant's. Its
/// cursor is a [`page_cursor`](crate::ports::page_cursor) of the campaign's own list: the
/// messages list's cursor is `400` here, and this one there. A status filter reads on (up to
/// [`FILTERED_READS`]) for `limit` matches: a page may be short, or empty, while a cursor
/// follows. `since`/`until` select by the time in a message's id, as the list does: a
/// campaign's messages all carry its acceptance's millisecond, so all of them or none.
pub async fn messages_page(
    deps: &Deps,
    tenant: &TenantId,
    id: &str,
    q: &crate::ports::MessageQuery,
) -> Result<crate::ports::MessagePage, ServiceError> {
    use crate::ports::{cursor_position, page_cursor, MessagePage};
    let b = deps
        .broadcasts
        .get_broadcast(tenant, id)
        .await?
        .ok_or(ServiceError::NotFound)?;
    let list = format!("BROADCAST#{}", b.id);
    let ms = b.created_at.timestamp_millis();
    // A position is one of its messages, minted in its millisecond (a made-up one outside
    // would reach DynamoDB as a start key outside the query's range: a 500, not a 400).
    let mut after = match &q.cursor {
        Some(c) => Some(
            cursor_position(c, tenant, &list)
                .ok()
                .and_then(|p| MessageId::parse(&p))
                .filter(|m| {
                    ulid::Ulid::from_string(m.as_str())
                        .is_ok_and(|u| i64::try_from(u.timestamp_ms()) == Ok(ms))
                })
                .ok_or(StoreError::InvalidCursor)?,
        ),
        None => None,
    };
    if q.since.is_some_and(|t| ms < t.timestamp_millis())
        || q.until.is_some_and(|t| ms >= t.timestamp_millis())
    {
        return Ok(MessagePage::default());
    }
    let limit = q.limit.clamp(1, 100);
    let page = |messages, after: Option<MessageId>| MessagePage {
        messages,
        next_cursor: after.map(|a| page_cursor(tenant, &list, a.as_str())),
    };
    let mut messages = Vec::new();
    let reads = if q.status.is_some() {
        FILTERED_READS
    } else {
        1
    };
    for i in 0..reads {
        // One past the page: a full last page has no cursor to an empty one.
        let each = if i == 0 {
            limit + 1
        } else {
            FILTERED_READ.max(limit + 1)
        };
        let (read, more) = deps
            .broadcasts
            .broadcast_messages(&b, each, after.as_ref())
            .await?;
        for m in read {
            let matches = q.status.is_none_or(|st| m.status == st);
            if messages.len() == limit {
                if matches {
                    // The next page begins with it.
                    return Ok(page(messages, after));
                }
                // Read and not kept either way: the next page begins after it, and a read
                // whose rest holds no match, at the end, leaves no cursor to an empty page.
                after = Some(m.id.clone());
                continue;
            }
            after = Some(m.id.clone());
            if matches {
                messages.push(m);
            }
        }
        match more {
            Some(next) => after = Some(next),
            None => return Ok(page(messages, None)),
        }
        if messages.len() == limit {
            return Ok(page(messages, after));
        }
    }
    Ok(page(messages, after))
}

/// Whether the broadcast is now paused or cancelled (read afresh); `false` when the read
/// fails.
async fn held_since(deps: &Deps, tenant: &TenantId, id: &str) -> bool {
    matches!(
        deps.broadcasts.get_broadcast(tenant, id).await,
        Ok(Some(b)) if b.control.is_some() || b.status == BroadcastStatus::Cancelled
    )
}

/// The view of a broadcast as read: its messages counted by status, and the failed ones
/// by code with their hints, in one pass over them. The recipients refunded unsent when
/// its list expired first have no message: they are counted `cancelled` (never sent,
/// refunded), so that the counts add up to its total.
async fn view_of(deps: &Deps, b: Broadcast) -> Result<View, StoreError> {
    let tally = deps.broadcasts.broadcast_tally(&b).await?;
    let mut counts = tally.counts;
    for st in COUNTED {
        counts.entry(st.as_str().to_owned()).or_insert(0);
    }
    if let Some(n) = counts.get_mut(MessageStatus::Cancelled.as_str()) {
        *n = n.saturating_add(b.refunded_unsent);
    }
    let status = campaign_status(&b, &counts);
    let mut failures: Vec<Failure> = tally
        .failures
        .into_values()
        .map(|(e, count)| Failure {
            hint: crate::domain::hints::hint(&e.code),
            code: e.code,
            title: e.title,
            count,
        })
        .collect();
    failures.sort_by_key(|f| std::cmp::Reverse(f.count));
    Ok(View {
        failures,
        status,
        // Completed: when its last message was handed to Meta or ended (no write marks the
        // moment). Closed with recipients refunded unsent: the close, or the last of its
        // recorded messages settled after it.
        completed_at: match status {
            "completed" => tally.settled_at,
            "cancelled" if b.refunded_unsent > 0 => b.ended_at.max(tally.settled_at),
            "cancelled" => b.ended_at,
            _ => None,
        },
        id: b.id,
        name: b.name,
        from: b.from,
        template: b.template,
        send_at: b.send_at,
        created_at: b.created_at,
        started_at: b.started_at,
        total: b.accepted,
        accepted: b.accepted,
        skipped_opted_out: b.skipped_opted_out,
        duplicates: b.duplicates,
        invalid_count: b.invalid,
        // Queued: not those closed without being queued (a cancel's, or a failed close's).
        enqueued: b.enqueued.saturating_sub(b.closed_unqueued),
        counts,
        retry_of: b.retry_of,
        retried_by: b.retried_by,
    })
}

/// `GET /v1/broadcasts`: newest first, optionally only those in `status`. A page holds
/// at most `limit` broadcasts (fewer when filtered) and the cursor to continue.
pub async fn list(
    deps: &Deps,
    tenant: &TenantId,
    status: Option<&str>,
    limit: usize,
    cursor: Option<&str>,
) -> Result<(Vec<View>, Option<String>), ServiceError> {
    if let Some(c) = cursor {
        if ulid::Ulid::from_string(c).is_err() {
            return Err(ServiceError::InvalidRequest("invalid cursor".into()));
        }
    }
    let (page, next) = deps
        .broadcasts
        .list_broadcasts(tenant, limit, cursor)
        .await?;
    // Each as the list read it (not read again: one whose TTL passed meanwhile is still
    // listed, not a 404 for the whole page). Each view walks all its broadcast's messages
    // (a full Query on DynamoDB): a page of large campaigns tallied one after another could
    // near API Gateway's 29 s, so they are tallied `LIST_TALLIES` at a time, in order.
    use futures::TryStreamExt;
    let views: Vec<View> = futures::stream::iter(page)
        .map(|b| view_of(deps, b))
        .buffered(LIST_TALLIES)
        .try_collect()
        .await?;
    let out = views
        .into_iter()
        .filter(|v| status.is_none_or(|s| s == v.status))
        .collect();
    Ok((out, next))
}

/// What `retry-failed` answers.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct Retried {
    /// The new broadcast.
    pub id: String,
    pub accepted: usize,
    pub status: &'static str,
    pub skipped_opted_out: usize,
    /// The broadcast retried.
    pub retry_of: String,
    /// An earlier request's retry, answered again for the same `Idempotency-Key`.
    #[serde(skip)]
    pub replayed: bool,
}

/// `POST /v1/broadcasts/{id}/retry-failed`: a new broadcast of the same template and
/// sender to the recipients whose messages failed for a reason a later try may fix
/// ([`retryable`]). Kirim never keeps message content, so the template's components
/// (its parameters) come in the request again; without them the template is sent
/// without parameters (the catalogue refuses that for a template that takes some).
/// Nothing to retry: `Conflict`.
pub async fn retry_failed(
    deps: &Deps,
    tenant: &TenantId,
    id: &str,
    components: Vec<serde_json::Value>,
    key: Option<super::idempotency::Idempotent>,
) -> Result<Retried, ServiceError> {
    let b = deps
        .broadcasts
        .get_broadcast(tenant, id)
        .await?
        .ok_or(ServiceError::NotFound)?;
    if let Some(earlier) = earlier_broadcast(deps, tenant, key.as_ref()).await? {
        let replay = replay_of(&earlier);
        return Ok(Retried {
            id: replay.id,
            accepted: replay.accepted,
            status: replay.status,
            skipped_opted_out: replay.skipped_opted_out,
            retry_of: b.id,
            replayed: true,
        });
    }
    // Once: a second retry would message (and charge for) the same recipients again.
    if let Some(by) = &b.retried_by {
        return Err(retried_already(by));
    }
    let mut recipients = Vec::new();
    let mut unsettled = 0usize;
    let mut after: Option<MessageId> = None;
    // Read consistently (twice the read units, once per retry): a message moved just before
    // (recorded, or given back for another try) that an eventually consistent page missed
    // would let the retry through, and that message, failing later for a reason a retry
    // may fix, could then never be retried.
    loop {
        let (page, next) = deps
            .broadcasts
            .broadcast_messages_consistent(&b, PAGE, after.as_ref())
            .await?;
        unsettled += page
            .iter()
            .filter(|m| {
                matches!(
                    m.status,
                    MessageStatus::Scheduled | MessageStatus::Accepted | MessageStatus::Sending
                )
            })
            .count();
        recipients.extend(
            page.iter()
                .filter(|m| m.status == MessageStatus::Failed)
                .filter(|m| m.error.as_ref().is_some_and(|e| retryable(&e.code)))
                .filter(|m| !reached_meta_after_all(m))
                .map(|m| m.to.to_string()),
        );
        match next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    // Retried once, so only once every message is settled: a message still waiting or
    // being sent (a transient error's backoff, an ambiguous send until its deadline) may
    // yet fail retryably, and would then have no retry.
    let fanning_out = matches!(
        b.status,
        BroadcastStatus::Scheduled | BroadcastStatus::FanningOut
    ) && b.control != Some(BroadcastControl::Cancelled);
    if unsettled > 0 || fanning_out {
        return Err(ServiceError::Conflict(format!(
            "this broadcast is still sending ({unsettled} of its messages not settled yet): \
             retry its failures once it has completed"
        )));
    }
    if recipients.is_empty() {
        return Err(ServiceError::Conflict(
            "no message of this broadcast failed for a reason a later try may fix".into(),
        ));
    }
    let template = TemplateIn {
        name: b.template.name.clone(),
        language: b.template.language.clone(),
        // The catalogue's category now (Meta may have recategorised the template since:
        // naming the old one would refuse every retry), which also prices the retry.
        category: None,
        components,
    };
    let campaign = CampaignIn {
        name: Some(match &b.name {
            Some(n) => format!(
                "{} (retry)",
                n.chars().take(MAX_NAME - 8).collect::<String>()
            ),
            None => format!("retry of {}", b.id),
        }),
        send_at: None,
        // The same sender (it must still be one of the tenant's numbers).
        from: b.from.clone(),
        key,
        retry_of: Some(b.id.clone()),
    };
    let accepted = match create_campaign(deps, tenant, template, recipients, campaign).await {
        Ok(a) => a,
        // Another retry of it was written first (its creating write marked this one).
        Err(ServiceError::Conflict(m)) if m == crate::ports::ALREADY_RETRIED => {
            let by = deps
                .broadcasts
                .get_broadcast(tenant, &b.id)
                .await?
                .and_then(|b| b.retried_by);
            return Err(retried_already(by.as_deref().unwrap_or("another")));
        }
        Err(e) => return Err(e),
    };
    Ok(Retried {
        id: accepted.id,
        accepted: accepted.accepted,
        status: accepted.status,
        skipped_opted_out: accepted.skipped_opted_out,
        retry_of: b.id,
        replayed: accepted.replayed,
    })
}

fn retried_already(by: &str) -> ServiceError {
    ServiceError::Conflict(format!(
        "this broadcast's failures were retried already, by broadcast {by}: retry that one's failures instead"
    ))
}

/// The header of `recipients.csv`.
pub const CSV_HEADER: &str =
    "phone,status,error_code,error_title,message_id,sent_at,delivered_at,read_at\n";

/// One `recipients.csv` row of a message: metadata only (no content is stored anyway).
pub fn csv_row(m: &MessageRecord) -> String {
    // As the API shows them: a delivered message has a `sent_at`.
    let events = m.shown_events();
    let at = |st: MessageStatus| {
        events
            .iter()
            .find(|e| e.status == st)
            .map(|e| e.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .unwrap_or_default()
    };
    let (code, title) = match &m.error {
        Some(e) => (e.code.to_string(), e.title.clone()),
        None => (String::new(), String::new()),
    };
    let mut w = csv::WriterBuilder::new()
        .has_headers(false)
        .from_writer(Vec::new());
    let row = [
        m.to.to_string(),
        m.status.as_str().to_owned(),
        code,
        csv_safe(&title),
        m.id.to_string(),
        at(MessageStatus::Sent),
        at(MessageStatus::Delivered),
        at(MessageStatus::Read),
    ];
    if w.write_record(&row).is_err() {
        return String::new();
    }
    w.into_inner()
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .unwrap_or_default()
}

/// A row for a recipient without a message yet (its broadcast has not reached it).
pub fn csv_pending_row(phone: &PhoneNumber, status: &str) -> String {
    format!("{phone},{status},,,,,,\n")
}

/// A spreadsheet would run a cell starting with `=`, `+`, `-`, `@`, a tab or a carriage
/// return as a formula (OWASP's list): such text (Meta's titles are outside Kirim's
/// control) is prefixed with a quote.
fn csv_safe(v: &str) -> String {
    if v.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{v}")
    } else {
        v.to_owned()
    }
}

fn conflict(msg: &str) -> ServiceError {
    ServiceError::Conflict(msg.to_owned())
}

async fn load(deps: &Deps, tenant: &TenantId, id: &str) -> Result<View, ServiceError> {
    view(deps, tenant, id).await
}

/// The holds this process saw last on broadcasts (issue #13). A paused broadcast's queued
/// messages come back every [`PAUSED_RECHECK`] to look at it, and each look at the store is
/// the claim and its undo (two writes) besides the message's other reads: a paused
/// campaign's queued recipients cost about 2 W each every 30 s for as long as it stayed
/// paused. A hold one of this process's claims found is remembered for the TTL (the read
/// cache's, [`crate::wiring::READ_CACHE_TTL`] on Lambda), and a look within it waits (or,
/// cancelled, cancels) without a claim: one claim and undo per broadcast and TTL in a warm
/// instance instead of one per message and look. Once the TTL is over, the next look reads
/// the broadcast (one read unit) instead of claiming, and a hold it finds is remembered
/// again: a message is claimed only when its broadcast was last seen running, so the waiting
/// messages of a long pause cost no writes at all. (The fan-out, for its part, queues no
/// more of a paused broadcast's recipients: `fan_out_in_slices`.)
///
/// Only a hold is remembered, never its absence: a pause always stops the next claim, as
/// without the memo. What may lag is a resume, by the TTL at most, in another process (the
/// API's own process forgets at once); a message that waited then comes back one
/// [`PAUSED_RECHECK`] later. A cancel is final, so a remembered cancel is never wrong. A
/// zero TTL remembers nothing.
pub struct HoldMemo {
    ttl: chrono::Duration,
    seen: std::sync::Mutex<Holds>,
}

/// What a process remembers of a broadcast's hold ([`HoldMemo::held`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Remembered {
    /// Found less than the TTL ago: the message waits (or is cancelled) on it.
    Held(BroadcastControl),
    /// Found held before, longer ago: most likely still held, so the broadcast is read
    /// (one read unit) rather than a message claimed and given back (two writes).
    Earlier,
    /// Not found held (or forgotten): the claim decides, as without the memo.
    Nothing,
}

/// A broadcast's hold, by tenant and broadcast id, and when a claim found it.
type Holds = std::collections::HashMap<(TenantId, String), (DateTime<Utc>, BroadcastControl)>;

/// Broadcasts a process remembers a hold on at most (a few are paused at a time; the
/// memo only ever saves writes, so forgetting is always safe).
const HOLDS_REMEMBERED: usize = 1024;

impl HoldMemo {
    pub fn new(ttl: Duration) -> Self {
        HoldMemo {
            ttl: chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::zero()),
            seen: Default::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Holds> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What this process remembers of the broadcast's hold at `now`.
    pub fn held(&self, tenant: &TenantId, id: &str, now: DateTime<Utc>) -> Remembered {
        if self.ttl.is_zero() {
            return Remembered::Nothing;
        }
        let seen = self.lock();
        match seen.get(&(tenant.clone(), id.to_owned())) {
            Some((at, hold)) if *at <= now && now < *at + self.ttl => Remembered::Held(*hold),
            Some(_) => Remembered::Earlier,
            None => Remembered::Nothing,
        }
    }

    /// What a claim (or a read of the broadcast) found at `now`: a hold, or none (the
    /// broadcast runs).
    pub fn note(
        &self,
        tenant: &TenantId,
        id: &str,
        hold: Option<BroadcastControl>,
        now: DateTime<Utc>,
    ) {
        if self.ttl.is_zero() {
            return;
        }
        let mut seen = self.lock();
        let key = (tenant.clone(), id.to_owned());
        match hold {
            None => {
                if !seen.is_empty() {
                    seen.remove(&key);
                }
            }
            Some(h) => {
                if seen.len() >= HOLDS_REMEMBERED {
                    let ttl = self.ttl;
                    seen.retain(|_, (at, _)| now < *at + ttl);
                    if seen.len() >= HOLDS_REMEMBERED {
                        seen.clear();
                    }
                }
                seen.insert(key, (now, h));
            }
        }
    }

    /// Forgets the broadcast's hold (this process resumed it).
    pub fn forget(&self, tenant: &TenantId, id: &str) {
        self.lock().remove(&(tenant.clone(), id.to_owned()));
    }
}

/// `POST /v1/broadcasts/{id}/pause` (scheduled or sending): from the answer on, no
/// message of it is claimed for Meta (each claim is followed by a consistent read of the
/// hold, and a held claim is given back), and no more of its recipients are queued; a
/// message already handed to Meta is not recalled.
pub async fn pause(deps: &Deps, tenant: &TenantId, id: &str) -> Result<View, ServiceError> {
    let v = load(deps, tenant, id).await?;
    if !matches!(v.status, "scheduled" | "sending") {
        return Err(conflict(&format!(
            "only a scheduled or sending broadcast can be paused; this one is {}",
            v.status
        )));
    }
    let now = deps.clock.now();
    if !deps
        .broadcasts
        .set_broadcast_control(tenant, id, &[None], Some(BroadcastControl::Paused), now)
        .await?
        && !moved_here(deps, tenant, id, Some(BroadcastControl::Paused), now).await?
    {
        return Err(conflict(
            "the broadcast changed meanwhile; it was not paused",
        ));
    }
    tracing::info!(broadcast_id = %id, "broadcast paused");
    view(deps, tenant, id).await
}

/// Whether a control move refused by its condition was this very move: written, with its
/// answer lost, and the SDK's retry of it refused by it (a plain conditional update is not
/// idempotent). The broadcast then holds the control it set at this move's exact time.
async fn moved_here(
    deps: &Deps,
    tenant: &TenantId,
    id: &str,
    to: Option<BroadcastControl>,
    at: DateTime<Utc>,
) -> Result<bool, ServiceError> {
    Ok(deps
        .broadcasts
        .get_broadcast(tenant, id)
        .await?
        .is_some_and(|b| b.control == to && b.control_at == Some(at)))
}

/// `POST /v1/broadcasts/{id}/resume` (paused): its waiting messages go out again, and its
/// fan-out goes on. This process forgets the hold at once (`HoldMemo`).
pub async fn resume(deps: &Deps, tenant: &TenantId, id: &str) -> Result<View, ServiceError> {
    let v = load(deps, tenant, id).await?;
    if v.status != "paused" {
        return Err(conflict(&format!(
            "only a paused broadcast can be resumed; this one is {}",
            v.status
        )));
    }
    let now = deps.clock.now();
    if !deps
        .broadcasts
        .set_broadcast_control(tenant, id, &[Some(BroadcastControl::Paused)], None, now)
        .await?
        && !moved_here(deps, tenant, id, None, now).await?
    {
        return Err(conflict(
            "the broadcast changed meanwhile; it was not resumed",
        ));
    }
    deps.broadcast_holds.forget(tenant, id);
    tracing::info!(broadcast_id = %id, "broadcast resumed");
    view(deps, tenant, id).await
}

/// `POST /v1/broadcasts/{id}/cancel`. Scheduled (not started): cancelled and refunded
/// in full in one conditional write. Sending or paused: marked cancelled; each of its
/// messages not yet claimed ends `cancelled` with its refund in the same conditional
/// write as the status change when its queue job comes (the claim and the cancel are
/// conditional on the same status, so a message is never both sent and refunded).
/// Completed or cancelled: `Conflict`. Another tenant's or an unknown id: `NotFound`.
pub async fn cancel(deps: &Deps, tenant: &TenantId, id: &str) -> Result<View, ServiceError> {
    let b = deps
        .broadcasts
        .get_broadcast(tenant, id)
        .await?
        .ok_or(ServiceError::NotFound)?;
    let now = deps.clock.now();
    if b.status == BroadcastStatus::Scheduled {
        let total = b.price_each.saturating_mul(b.accepted as i64);
        let refund = ledger::cancel_refund_entry(
            deps,
            tenant,
            &Charge::Broadcast(b.id.clone()),
            total,
            "scheduled broadcast cancelled",
            now,
        );
        if deps
            .broadcasts
            .cancel_scheduled_broadcast(tenant, id, &refund, now)
            .await?
        {
            tracing::info!(broadcast_id = %id, refunded = total, "scheduled broadcast cancelled");
            return view(deps, tenant, id).await;
        }
        // It started meanwhile: cancel it as a sending one.
    }
    let v = load(deps, tenant, id).await?;
    if !matches!(v.status, "sending" | "paused" | "scheduled") {
        return Err(conflict(&format!(
            "only a scheduled, sending or paused broadcast can be cancelled; this one is {}",
            v.status
        )));
    }
    // Every recipient queued and none waiting for the dispatcher: each message is on its
    // way to Meta (a send cannot be called back) or ended. A cancel would stop nothing
    // and refund nothing, and the broadcast would read `cancelled` while it completes.
    // The view's count may be a moment behind the fan-out's last writes: the refusal is
    // made on a consistent count only.
    if b.status == BroadcastStatus::Enqueued
        && v.counts.get("accepted").copied().unwrap_or(0) == 0
        && deps
            .broadcasts
            .broadcast_tally_consistent(&b)
            .await?
            .counts
            .get(MessageStatus::Accepted.as_str())
            .copied()
            .unwrap_or(0)
            == 0
    {
        return Err(conflict(
            "every message of this broadcast is already on its way to Meta or ended; nothing is left to cancel",
        ));
    }
    if !deps
        .broadcasts
        .set_broadcast_control(
            tenant,
            id,
            &[None, Some(BroadcastControl::Paused)],
            Some(BroadcastControl::Cancelled),
            now,
        )
        .await?
        && !moved_here(deps, tenant, id, Some(BroadcastControl::Cancelled), now).await?
    {
        return Err(conflict(
            "the broadcast changed meanwhile; it was not cancelled",
        ));
    }
    tracing::info!(broadcast_id = %id, "broadcast cancelled");
    view(deps, tenant, id).await
}

/// A closed tenant's campaign that waits (scheduled, or paused) is cancelled, refunded, as
/// the tenant's queued messages are failed: never started, nor fanned out into a closed
/// account. `true` if it was cancelled here; `false` for an open tenant's, or one that
/// changed meanwhile (the job's next look decides again).
async fn cancel_if_closed(deps: &Deps, tenant: &TenantId, id: &str) -> Result<bool, StoreError> {
    if !super::accounts::tenant_closed(deps, tenant).await? {
        return Ok(false);
    }
    match cancel(deps, tenant, id).await {
        Ok(_) => {
            tracing::info!(broadcast_id = %id, "a closed tenant's waiting broadcast cancelled, refunded");
            Ok(true)
        }
        Err(ServiceError::Unavailable(e)) => Err(e),
        Err(ServiceError::Internal(m)) => Err(StoreError::Corrupt(m)),
        Err(_) => Ok(false),
    }
}

/// How long a paused broadcast's queued message, and its fan-out job, wait before they
/// look at the hold again (at most the schedule hop: tests use a short one).
pub const PAUSED_RECHECK: Duration = Duration::from_secs(30);

/// How long before its recipients are due a fan-out's next slice is delivered: the
/// time to record and queue them (a slice's writes take seconds on DynamoDB).
pub const FANOUT_LEAD: Duration = Duration::from_secs(30);

/// Whether a broadcast's next slice may go as accepted ([`sendable_now`]).
enum Sendable {
    /// It may: with this content (the catalogue's category now), at this pace (the
    /// messages a second its recipients are queued at: what the throughput limiter keeps
    /// for its number's tier, `throttle::pace`; `None` when the tenant is gone).
    Yes {
        content: crate::domain::Content,
        pace: Option<u32>,
    },
    /// It may not: why each recipient not queued yet fails, and its metric's class.
    No(Unsendable),
}

/// Why a broadcast's recipients not queued yet fail without being queued.
#[derive(Clone, Debug)]
struct Unsendable {
    error: crate::domain::MessageError,
    class: &'static str,
}

fn unsendable(code: &str, title: &str, class: &'static str) -> Sendable {
    Sendable::No(Unsendable {
        error: crate::domain::MessageError {
            code: code.into(),
            title: title.into(),
        },
        class,
    })
}

/// Looks again, before a slice, at what a broadcast accepted days ago may no longer be:
/// its number (removed from the account: `sender_removed`; held since Meta limited it:
/// `sender_held`, retryable), its template in the WABA's catalogue (deleted:
/// `template_not_found`; paused, disabled or rejected: `template_not_approved`; edited to
/// other parameters: `template_parameters_mismatch`) and the marketing pause
/// (`marketing_paused`, for the catalogue's category now). Reads go through the warm
/// caches the send path uses (the tenant, its number, the catalogue template: at most one
/// read each per slice, none when cached; the quality counters only for a marketing
/// template under the pause). A read that fails is an error (the job is retried), never a
/// close.
async fn sendable_now(deps: &Deps, job: &FanoutJob, b: &Broadcast) -> Result<Sendable, StoreError> {
    let store = |e: ServiceError| match e {
        ServiceError::Unavailable(e) => e,
        other => StoreError::Corrupt(other.to_string()),
    };
    let Some(tenant) = deps.tenants.tenant_for_access(&job.tenant_id).await? else {
        // Gone: its messages fail at the dispatcher, as any queued message's.
        return Ok(Sendable::Yes {
            content: job.content.clone(),
            pace: None,
        });
    };
    let number = match super::numbers::sender(deps, &tenant, b.from.as_deref()).await {
        Ok(n) => n,
        Err(ServiceError::UnknownSender(_)) => {
            return Ok(unsendable(
                "sender_removed",
                "the phone number it was to be sent from was removed from the account",
                "tenant_config",
            ))
        }
        Err(e) => return Err(store(e)),
    };
    if number.hold.is_some() {
        return Ok(unsendable(
            "sender_held",
            "the phone number it was to be sent from was held (Meta limited it)",
            "sender_held",
        ));
    }
    let pace = Some(super::throttle::pace(super::numbers::tier(
        deps, &tenant, &number,
    )));
    let crate::domain::Content::Template {
        template,
        components,
    } = &job.content
    else {
        return Ok(Sendable::Yes {
            content: job.content.clone(),
            pace,
        });
    };
    let request = super::templates::TemplateRequest {
        name: template.name.clone(),
        language: template.language.clone(),
        // The catalogue's category now, whatever it was when accepted.
        category: None,
        components: components.clone(),
    };
    let content = match super::templates::resolve(deps, &number.waba_id, request).await {
        Ok(c) => c,
        Err(ServiceError::TemplateNotFound(_)) => {
            return Ok(unsendable(
                "template_not_found",
                "the template was removed from the account's catalogue before it was sent",
                "template",
            ))
        }
        Err(ServiceError::TemplateNotApproved(_)) => {
            return Ok(unsendable(
                "template_not_approved",
                "the template was no longer approved at Meta (paused, disabled or rejected) when it was to be sent",
                "template",
            ))
        }
        Err(ServiceError::TemplateParametersMismatch(_)) => {
            return Ok(unsendable(
                "template_parameters_mismatch",
                "the template was edited at Meta since it was accepted; its parameters no longer match",
                "template",
            ))
        }
        Err(e) => return Err(store(e)),
    };
    let category = content.template_ref().map(|t| t.category);
    match super::quality::check_send(deps, &job.tenant_id, category).await {
        Ok(()) => {}
        Err(ServiceError::MarketingPaused) => {
            return Ok(unsendable(
                "marketing_paused",
                "marketing templates were paused for the account (its opt-out or undeliverable rate) before it was sent",
                "marketing_paused",
            ))
        }
        Err(e) => return Err(store(e)),
    }
    if category != Some(template.category) {
        tracing::info!(broadcast_id = %b.id, "broadcast's template recategorised since it was accepted; sent in the catalogue's category");
    }
    Ok(Sendable::Yes { content, pace })
}

/// `n` whole seconds.
fn seconds(n: usize) -> chrono::Duration {
    chrono::Duration::seconds(
        i64::try_from(n)
            .unwrap_or(i64::MAX / 1000)
            .min(i64::MAX / 1000),
    )
}

/// One delivery of a fan-out job: records and enqueues the next slice of recipients.
/// Resumable: message ids are derived, existing messages are not written again, and a
/// duplicate queue message is dropped by the dispatcher's claim.
pub async fn fan_out(deps: &Deps, job: &FanoutJob) -> Result<Outcome, StoreError> {
    fan_out_in_slices(deps, job, FANOUT_SLICE).await
}

/// [`fan_out`] with a given slice size (tests use small ones).
pub async fn fan_out_in_slices(
    deps: &Deps,
    job: &FanoutJob,
    slice: usize,
) -> Result<Outcome, StoreError> {
    if let Some(wait) = super::schedule::wait(job.send_at, deps.clock.now()) {
        // As a scheduled message's job: once in a while (and on its first hops) it looks,
        // and a cancelled broadcast's job (it carries the template's parameters) ends
        // then; so does the job of a request that recorded nothing (refused after its job
        // was queued: `402`, a lost `Idempotency-Key` race), once past the write's grace.
        if super::schedule::looks_at(deps, &job.broadcast_id, wait) {
            let b = deps
                .broadcasts
                .get_broadcast(&job.tenant_id, &job.broadcast_id)
                .await?;
            let gone = match b {
                Some(b) => b.status == BroadcastStatus::Cancelled,
                None => {
                    super::deadline::age_of(deps, &job.broadcast_id)
                        >= super::deadline::UNRECORDED_GRACE
                }
            };
            if gone {
                tracing::info!(broadcast_id = %job.broadcast_id, "scheduled broadcast cancelled or never recorded; its job dropped");
                return Ok(Outcome::Done);
            }
            if cancel_if_closed(deps, &job.tenant_id, &job.broadcast_id).await? {
                return Ok(Outcome::Done);
            }
        }
        let again = QueueJob::BroadcastFanout(job.clone());
        return super::schedule::wait_again(deps, &again, wait).await;
    }
    let Some(mut b) = deps
        .broadcasts
        .get_broadcast(&job.tenant_id, &job.broadcast_id)
        .await?
    else {
        // Not recorded yet (the job is queued first), or never: wait, then drop it.
        return Ok(super::deadline::unrecorded(deps, &job.broadcast_id));
    };
    // Another delivery of this job (SQS delivers at least once; a job whose delete was
    // lost, or retried after its run timed out, comes again) moved the chain on, and the
    // job it queued carries the fan-out on: this one is a duplicate, dropped before it
    // records or queues anything (`ports::FanoutHop`). One that started before that move
    // is stopped by its own progress writes, below.
    if b.fanout_token != job.token {
        // Unless the chain moved on by this job's own last write (the broadcast's token
        // begins with the one that write derives from this job's and the `enqueued` it
        // wrote, and no run went further since), whose next job this delivery cannot know
        // was queued: its run may have died between the two. Queued again then, once,
        // late enough (`schedule_hop`) that the first, if it was queued, has moved the
        // chain on and the copy is dropped; were it lost, the campaign goes on from there.
        let own_hop = next_token_prefix(job.token.as_deref(), &b.id, b.enqueued);
        let landed = b.status == BroadcastStatus::FanningOut
            && b.fanout_token
                .as_deref()
                .is_some_and(|t| t.starts_with(&own_hop));
        if !landed && job.token.is_none() && b.fanout_token.is_some() {
            // A job without a token for a broadcast that has one, and not its own move: queued
            // by an instance of the code before tokens (a deploy under way, or a rollback),
            // whose write left the broadcast's token as it was. It takes the broadcast's
            // token and goes on (dropped, the campaign would wait for its list's backstop);
            // its moves are conditional as any job's, so one chain goes on from here.
            let adopted = FanoutJob {
                token: b.fanout_token.clone(),
                ..job.clone()
            };
            tracing::info!(broadcast_id = %b.id, "a fan-out job from before tokens takes its broadcast's");
            return Box::pin(fan_out_in_slices(deps, &adopted, slice)).await;
        }
        if landed && !job.resent {
            let mut again = job.clone();
            again.token = b.fanout_token.clone();
            again.resent = true;
            again.paced_from = None;
            let body = QueueJob::BroadcastFanout(again)
                .to_body()
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            deps.queue
                .send_delayed(&body, deps.settings.schedule_hop)
                .await?;
            tracing::info!(broadcast_id = %b.id, "a fan-out job found its own last write landed; its next job queued again in case it was lost");
        } else {
            tracing::info!(broadcast_id = %b.id, "a duplicate fan-out job (its chain moved on); dropped");
        }
        return Ok(Outcome::Done);
    }
    // Paused: no more of its recipients are recorded and queued until it is resumed (they
    // would only wait on the queue, each coming back every `PAUSED_RECHECK` to look at the
    // hold); this job asks again as often. A scheduled one paused is not started. A
    // cancelled one goes on, so that each recipient ends `cancelled` with its refund.
    let waits = b.control == Some(BroadcastControl::Paused)
        && matches!(
            b.status,
            BroadcastStatus::Scheduled | BroadcastStatus::FanningOut
        );
    // Waiting (paused, or due and not started): a closed tenant's is cancelled, refunded,
    // instead of started or kept paused (a cancelled one that was fanning out goes on below,
    // each of its recipients `cancelled` with its refund).
    if (waits || b.status == BroadcastStatus::Scheduled)
        && cancel_if_closed(deps, &job.tenant_id, &b.id).await?
    {
        let Some(now) = deps.broadcasts.get_broadcast(&job.tenant_id, &b.id).await? else {
            return Ok(Outcome::Done);
        };
        b = now;
    } else if waits {
        let again = QueueJob::BroadcastFanout(job.clone());
        return super::schedule::wait_again(deps, &again, PAUSED_RECHECK).await;
    }
    match b.status {
        BroadcastStatus::Enqueued | BroadcastStatus::Cancelled => return Ok(Outcome::Done),
        // Due: start it (conditional, so a duplicate trigger starts it once; a cancel
        // that won the race leaves nothing to do).
        BroadcastStatus::Scheduled => {
            let now = deps.clock.now();
            if !deps
                .broadcasts
                .start_broadcast(&job.tenant_id, &b.id, now)
                .await?
            {
                // Cancelled meanwhile, or started by a duplicate trigger (which goes on):
                // nothing for this job. Unless the start was this very write, its answer
                // lost and the SDK's retry refused by it: then no other job would fan it
                // out, and it goes on here.
                let ours = deps
                    .broadcasts
                    .get_broadcast(&job.tenant_id, &b.id)
                    .await?
                    .is_some_and(|seen| {
                        seen.status == BroadcastStatus::FanningOut && seen.started_at == Some(now)
                    });
                if !ours {
                    return Ok(Outcome::Done);
                }
            }
            b.status = BroadcastStatus::FanningOut;
            b.started_at = Some(now);
            tracing::info!(broadcast_id = %b.id, "scheduled broadcast started");
        }
        BroadcastStatus::FanningOut => {}
    }
    let Some(list) = deps
        .broadcasts
        .broadcast_recipients(&job.tenant_id, &job.broadcast_id)
        .await?
    else {
        // The list is gone before every recipient was queued (its backstop passed during
        // a pause of days). Gone by its expiry, a run that read it just before may still
        // be recording its slice (a duplicate delivery, or a slow one): closing now would
        // refund recipients that run then queues. Closed once no run can be
        // ([`LOST_FANOUT_MARGIN`](crate::domain::LOST_FANOUT_MARGIN) past the expiry,
        // far beyond a run's time), as the retention sweep's `settle_lost` waits too.
        let closes_at = b
            .list_expires_at()
            .saturating_add(crate::domain::LOST_FANOUT_MARGIN.as_secs() as i64);
        let now = deps.clock.now().timestamp();
        if now >= b.list_expires_at() && now < closes_at {
            let again = QueueJob::BroadcastFanout(job.clone());
            let wait = Duration::from_secs(closes_at.saturating_sub(now).unsigned_abs());
            return super::schedule::wait_again(deps, &again, wait).await;
        }
        close_unrecorded(deps, &b).await?;
        return Ok(Outcome::Done);
    };
    if b.control == Some(BroadcastControl::Cancelled) {
        return close_unqueued(deps, job, &b, &list, slice, &Closing::Cancelled).await;
    }
    // What Meta or the account changed since it was accepted (its template, the marketing
    // pause), looked at before each slice (so at its start too): its recipients not queued
    // yet are closed `failed`, refunded, in batches, rather than each queued, claimed and
    // sent for Meta to refuse; a recategorised template goes out in the catalogue's category
    // (its opt-out scope), at the price accepted.
    let (content, pace) = match sendable_now(deps, job, &b).await? {
        Sendable::Yes { content, pace } => (content, pace),
        // Closing them cannot be undone: looked at again in the store itself, not the warm
        // cache, whose copy may be seconds old (the number resumed, the template approved
        // again, since). Only on this path: a slice that goes costs no extra read.
        Sendable::No(_) => match sendable_now(&deps.uncached(), job, &b).await? {
            Sendable::Yes { content, pace } => (content, pace),
            Sendable::No(why) => {
                return close_unqueued(deps, job, &b, &list, slice, &Closing::Failed(why)).await
            }
        },
    };
    if let Some(t) = content.template_ref() {
        // Its messages record the template as they are sent (the broadcast keeps what was
        // accepted).
        b.template = t.clone();
    }
    let start = b.enqueued.min(list.len());
    let mut end = (start + slice.max(1)).min(list.len());
    let now = deps.clock.now();
    // Paced at the number's rate: recipient k of this slice is due at the queue
    // floor(k/pace) seconds after the slice's start, so the dispatchers find about as
    // many as the number may send (a slice queued whole would have most of it refused by
    // the throughput limiter and given back again and again, each time paying its reads,
    // claim and release). Unknown rate (a read failed): queued at once, as the limiter
    // still holds the number to its tier.
    let paced_from = job.paced_from.filter(|at| *at > now).unwrap_or(now);
    // Each second of the pace gets `pace` recipients, due together at its start; a queue
    // batch (at most SQS's 10) never spans two seconds, so no second is offered more than
    // the number may send in it.
    let second_of = |i: usize| pace.map_or(0, |p| (i - start) / p.max(1) as usize);
    let mut done = start;
    while done < end {
        let second = second_of(done);
        let mut upto = done + 1;
        while upto < end && upto - done < 10 && second_of(upto) == second {
            upto += 1;
        }
        let mut bodies = Vec::with_capacity(upto - done);
        for (offset, to) in list[done..upto].iter().enumerate() {
            let record = recipient_message(&b, done + offset, to, now);
            let id = record.id.clone();
            deps.broadcasts.insert_broadcast_message(&record).await?;
            let body = QueueJob::Send(DispatchJob {
                tenant_id: job.tenant_id.clone(),
                message_id: id,
                content: content.clone(),
                request_id: job.request_id.clone(),
                send_at: None,
                broadcast_id: Some(b.id.clone()),
                facts: Some(super::jobs::MessageFacts::of(&record)),
                retry_at: None,
                recheck: false,
                refused: None,
                refused_claim: None,
                key_hash: None,
            })
            .to_body()
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            bodies.push(body);
        }
        let delay = match pace {
            Some(_) => (paced_from + seconds(second) - deps.clock.now())
                .to_std()
                .unwrap_or_default()
                .min(deps.settings.schedule_hop),
            None => Duration::ZERO,
        };
        deps.queue.send_batch_delayed(&bodies, delay).await?;
        let before = done;
        done = upto;
        if (done - start) / 200 > (before - start) / 200 {
            let within = FanoutHop {
                expected: job.token.as_deref(),
                next: None,
            };
            if !deps
                .broadcasts
                .broadcast_progress(&job.tenant_id, &b.id, done, false, within)
                .await?
            {
                // Another delivery of this job got further, or the chain moved on (or the
                // broadcast is gone): that run, or the job it queued, carries the fan-out
                // on; this one records nothing more and queues no next job.
                tracing::info!(
                    enqueued = done,
                    "another delivery of this fan-out job got further; this one stops"
                );
                return Ok(Outcome::Done);
            }
            // Paused or cancelled since this run read it: no more of its recipients are
            // recorded and queued (they would only wait on the queue, or each be refunded
            // by its own job); the next job, below, waits out the pause or closes what the
            // cancel left (`close_unqueued`). A read that fails goes on, as before.
            if done < end && held_since(deps, &job.tenant_id, &b.id).await {
                tracing::info!(
                    enqueued = done,
                    "broadcast held during its fan-out; the rest waits"
                );
                end = done;
                break;
            }
        }
    }
    let finished = end == list.len();
    // The rest continues in a fresh queue message, so a long fan-out never uses up this
    // one's receive count (and never reaches the dead-letter queue that way). Its
    // recipients are due from where this slice's pace ends; it comes [`FANOUT_LEAD`]
    // before that to record and queue them.
    let mut next = job.clone();
    let mut wait = Duration::ZERO;
    if let Some(pace) = pace {
        let next_from = paced_from + seconds((end - start).div_ceil(pace.max(1) as usize));
        next.paced_from = Some(next_from);
        wait = (next_from - deps.clock.now())
            .to_std()
            .unwrap_or_default()
            .saturating_sub(FANOUT_LEAD)
            .min(deps.settings.schedule_hop);
    }
    if hop_on(deps, job, &b.id, end, finished, next, wait).await? {
        tracing::info!(enqueued = end, total = list.len(), "broadcast fan-out");
    }
    Ok(Outcome::Done)
}

/// A fan-out run's last progress write (`enqueued = end`; `finished`: the broadcast closed,
/// its list deleted) and, unless finished, the job for the rest (`next`, after `wait`).
/// The write moves the chain's token on to the one `next` carries, on the condition that
/// it is still the one this job carries ([`FanoutHop`]): of two deliveries of one job, only
/// the first to get there queues a next job; the other's write is refused, and it queues
/// nothing (`false`). A next job that cannot be queued puts the token back (the job
/// received is retried, and carries the chain on again) before the error is answered.
async fn hop_on(
    deps: &Deps,
    job: &FanoutJob,
    id: &str,
    end: usize,
    finished: bool,
    mut next: FanoutJob,
    wait: Duration,
) -> Result<bool, StoreError> {
    // The part a later delivery of this job can derive (it knows its token and reads
    // `enqueued`), then this run's own (a retry of the write that landed passes on it;
    // another delivery's write, with its own, is refused).
    let token = format!(
        "{}{}",
        next_token_prefix(job.token.as_deref(), id, end),
        crate::domain::new_id()
    );
    let hop = FanoutHop {
        expected: job.token.as_deref(),
        next: Some(&token),
    };
    if !deps
        .broadcasts
        .broadcast_progress(&job.tenant_id, id, end, finished, hop)
        .await?
    {
        tracing::info!(
            broadcast_id = %id,
            enqueued = end,
            "another delivery of this fan-out job moved its chain on; this one queues no next job"
        );
        return Ok(false);
    }
    if finished {
        return Ok(true);
    }
    next.token = Some(token.clone());
    // A job of the chain's own, whoever queued the run's job: a copy queued again (`resent`)
    // carries the chain on as any job, and its next job may be queued again as any job's.
    next.resent = false;
    let queued = match QueueJob::BroadcastFanout(next).to_body() {
        Ok(body) => deps.queue.send_delayed(&body, wait).await,
        Err(e) => Err(StoreError::Corrupt(e.to_string())),
    };
    let Err(e) = queued else {
        return Ok(true);
    };
    // Only a job with this run's token could carry the chain on now, and there is none:
    // the token goes back to the job received (retried on this error). A job without one
    // (queued before tokens) cannot have it back; its retry finds the chain moved on by its
    // own write and queues the next job again (`fan_out_in_slices`), as does any job's
    // whose token could not be put back (unless it is itself a copy queued again).
    let back = FanoutHop {
        expected: Some(&token),
        next: job.token.as_deref(),
    };
    if back.next.is_none()
        || !deps
            .broadcasts
            .broadcast_progress(&job.tenant_id, id, end, false, back)
            .await
            .unwrap_or(false)
    {
        tracing::warn!(broadcast_id = %id, enqueued = end, error = %e, "a fan-out's next job could not be queued nor its token put back; the job's retry queues it again");
    }
    Err(e)
}

/// What the token a fan-out run moves its chain on to begins with: derived from the token
/// its job carries, the broadcast and the `enqueued` its last write sets (a SHA-256 cut to
/// 16 hex digits, then `.`), so that another delivery of the same job can tell its chain
/// was moved on by that job's own write (`fan_out_in_slices`).
fn next_token_prefix(expected: Option<&str>, broadcast_id: &str, end: usize) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(expected.unwrap_or_default().as_bytes());
    h.update([0]);
    h.update(broadcast_id.as_bytes());
    h.update([0]);
    h.update(end.to_string().as_bytes());
    let digest = h.finalize();
    let mut out = hex::encode(&digest[..8]);
    out.push('.');
    out
}

/// The message of the broadcast's recipient at `index`, `accepted` when recorded at `now`.
fn recipient_message(
    b: &Broadcast,
    index: usize,
    to: &PhoneNumber,
    now: DateTime<Utc>,
) -> MessageRecord {
    MessageRecord {
        id: message_id(b, index),
        tenant_id: b.tenant_id.clone(),
        to: to.clone(),
        template: Some(b.template.clone()),
        status: MessageStatus::Accepted,
        error: None,
        events: vec![StatusEvent {
            status: MessageStatus::Accepted,
            at: now,
        }],
        wamid: None,
        attempts: 0,
        price: b.price_each,
        client_reference: None,
        // Accepted (and debited) with its campaign, as its id says: listed by that
        // time (`since`/`until`), as a scheduled single send is by its acceptance.
        // Its `accepted` event is when it was recorded here.
        created_at: b.created_at,
        updated_at: now,
        expires_at: b.expires_at,
        broadcast_id: Some(b.id.clone()),
        send_at: None,
        from: b.from.clone(),
        pricing: None,
        carried_slot: None,
        claim: None,
        quality_counted: false,
        refunded: false,
        settled_at: None,
    }
}

/// Why [`close_unqueued`] closes a broadcast's recipients not queued yet.
enum Closing {
    /// A person cancelled it: each `cancelled`, refunded.
    Cancelled,
    /// It can no longer go as accepted ([`sendable_now`]): each `failed`, refunded.
    Failed(Unsendable),
}

/// A cancelled broadcast's recipients not queued yet, or those of one that can no longer
/// go as accepted ([`Closing`]), the next `slice` of them: recorded `cancelled` (or
/// `failed` with the reason) and refunded, [`CANCELLED_PER_WRITE`] at a time in one
/// conditional write each (`BroadcastStore::record_unqueued`), instead of one job each on
/// the queue every tenant's sends share: a cancelled campaign of 10,000 put 10,000 jobs
/// ahead of every other tenant's messages, and as many refund writes on one balance.
/// Exactly as the dispatcher would have ended them (status, error, refund, counts,
/// `recipients.csv`), without a status callback each (none of them was ever queued). A
/// recipient that a fan-out which did not know of it recorded meanwhile keeps its message:
/// it is cancelled (or failed) with its own refund here if still `accepted`, and it is not
/// in this write's refund. The rest continues in a fresh queue message, as a fan-out does;
/// one that finds the progress moved (another run, this write's own answer lost, or a
/// pause or cancel since) looks again in a fresh one.
async fn close_unqueued(
    deps: &Deps,
    job: &FanoutJob,
    b: &Broadcast,
    list: &[PhoneNumber],
    slice: usize,
    closing: &Closing,
) -> Result<Outcome, StoreError> {
    let start = b.enqueued.min(list.len());
    let end = (start + slice.max(1)).min(list.len());
    let now = deps.clock.now();
    let (status, error, reason, class, kind) = match closing {
        Closing::Cancelled => (
            MessageStatus::Cancelled,
            super::send::cancelled_error(),
            "broadcast cancelled before these recipients were queued".to_owned(),
            "cancelled",
            UnqueuedClose::Cancelled,
        ),
        Closing::Failed(why) => (
            MessageStatus::Failed,
            why.error.clone(),
            format!("broadcast recipients not sent: {}", why.error.code),
            why.class,
            UnqueuedClose::Failed,
        ),
    };
    let mut closed = 0usize;
    let mut done = start;
    while done < end {
        let upto = (done + CANCELLED_PER_WRITE).min(end);
        let mut messages: Vec<MessageRecord> = (done..upto)
            .map(|i| {
                let mut m = recipient_message(b, i, &list[i], now);
                m.status = status;
                m.error = Some(error.clone());
                m.refunded = status == MessageStatus::Failed;
                m.events.push(StatusEvent { status, at: now });
                m
            })
            .collect();
        loop {
            let amount = b.price_each.saturating_mul(messages.len() as i64);
            let refund = (!messages.is_empty()).then(|| {
                ledger::cancel_refund_entry(
                    deps,
                    &b.tenant_id,
                    &Charge::Broadcast(b.id.clone()),
                    amount,
                    &reason,
                    now,
                )
            });
            match deps
                .broadcasts
                .record_unqueued(
                    &b.tenant_id,
                    &b.id,
                    done,
                    upto,
                    &messages,
                    refund.as_ref(),
                    kind,
                )
                .await?
            {
                CancelledRecipients::Written => break,
                CancelledRecipients::Moved => {
                    tracing::info!(broadcast_id = %b.id, "broadcast's progress or hold moved while closing its unqueued recipients; looking again");
                    let body = QueueJob::BroadcastFanout(job.clone())
                        .to_body()
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                    deps.queue.send_delayed(&body, Duration::ZERO).await?;
                    return Ok(Outcome::Done);
                }
                CancelledRecipients::Recorded(positions) => {
                    // Recorded by another run, out of this write: each cancelled (or failed)
                    // with its own refund if still `accepted` (its job may never have been
                    // queued: a slice recorded, then its queue send failed), as the
                    // dispatcher would.
                    let before = messages.len();
                    let mut at = 0usize;
                    let mut recorded = Vec::new();
                    messages.retain(|m| {
                        let keep = !positions.contains(&at);
                        if !keep {
                            recorded.push(m.id.clone());
                        }
                        at += 1;
                        keep
                    });
                    if messages.len() == before {
                        return Err(StoreError::Corrupt(
                            "record_unqueued named no message of its slice".into(),
                        ));
                    }
                    for id in recorded {
                        let ended = match closing {
                            Closing::Cancelled => cancel_recorded(deps, b, &id).await?,
                            Closing::Failed(why) => super::deadline::fail_and_refund(
                                deps,
                                &b.tenant_id,
                                &id,
                                Some(&b.id),
                                MessageStatus::Accepted,
                                b.price_each,
                                why.error.clone(),
                                &format!("message not sent: {}", why.error.code),
                            )
                            .await?
                            .is_some(),
                        };
                        closed += usize::from(ended);
                    }
                }
            }
        }
        closed += messages.len();
        done = upto;
    }
    if closed > 0 {
        crate::metrics::failed_n(class, closed);
    }
    let finished = end == list.len();
    let mut next = job.clone();
    next.paced_from = None;
    hop_on(deps, job, &b.id, end, finished, next, Duration::ZERO).await?;
    tracing::info!(broadcast_id = %b.id, closed, code = %error.code, enqueued = end, total = list.len(), "broadcast's unqueued recipients closed, refunded");
    Ok(Outcome::Done)
}

/// A cancelled broadcast's message that a run which had not seen the cancel recorded:
/// `cancelled` with its own refund in one conditional write if it is still `accepted`
/// (exactly the dispatcher's cancel, callback included), so one whose job was never
/// queued is not left charged and unsent. Claimed or ended already: left as it is (its
/// sending deadline or its status settles it). `true` if cancelled here.
async fn cancel_recorded(deps: &Deps, b: &Broadcast, id: &MessageId) -> Result<bool, StoreError> {
    let now = deps.clock.now();
    let refund = ledger::cancel_refund_entry(
        deps,
        &b.tenant_id,
        &Charge::of_message(id, Some(&b.id)),
        b.price_each,
        "broadcast cancelled",
        now,
    );
    let moved = match deps
        .messages
        .cancel_with_refund(
            &b.tenant_id,
            id,
            &[MessageStatus::Accepted],
            &super::send::cancelled_error(),
            &refund,
            now,
        )
        .await
    {
        Ok(t) => t,
        Err(e) => {
            ledger::written_after_all(deps, &b.tenant_id, id, MessageStatus::Cancelled, now, e)
                .await?
        }
    };
    match moved {
        crate::ports::Transition::Applied(r) => {
            super::callbacks::status_changed(deps, &r).await;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// How many recipients a fan-out records and queues between two progress writes at most
/// (its progress every 200, in queue batches of up to 10).
const RECORDED_PAST_PROGRESS: usize = 210;

/// Closes a fanning-out broadcast whose recipient list is gone before every recipient
/// was recorded: those never recorded are refunded as it closes, in one conditional write
/// (only if it is still fanning out with the progress read), so a recipient is either
/// recorded (then sent, or settled with its own refund) or paid back, never both. The
/// recipients a fan-out recorded past its last progress write are counted out of the
/// refund by their messages (their ids follow from their positions). Answers how many
/// were refunded, `None` when it was not closed here (it moved on, or another closed it).
pub async fn close_unrecorded(deps: &Deps, b: &Broadcast) -> Result<Option<usize>, StoreError> {
    let end = b
        .accepted
        .min(b.enqueued.saturating_add(RECORDED_PAST_PROGRESS));
    // Up to RECORDED_PAST_PROGRESS reads, 16 at a time (one after another they took a
    // second and more on DynamoDB).
    use futures::TryStreamExt;
    let recorded: usize = futures::stream::iter(b.enqueued..end)
        .map(|i| {
            let id = message_id(b, i);
            async move { deps.messages.get_message(&b.tenant_id, &id).await }
        })
        .buffer_unordered(16)
        .try_fold(0, |n, m| async move { Ok(n + usize::from(m.is_some())) })
        .await?;
    let unsent = b
        .accepted
        .saturating_sub(b.enqueued)
        .saturating_sub(recorded);
    if unsent == 0 {
        // Closed under the same condition as with a refund: two callers that both read it
        // fanning out (the retention run and the fan-out job, or two runs) close it once,
        // and only the one that did answers it closed (the run's `campaigns_closed`).
        let closed = deps
            .broadcasts
            .close_broadcast_unsent(&b.tenant_id, &b.id, b.enqueued, 0, None, deps.clock.now())
            .await?;
        return Ok(closed.then_some(0));
    }
    let amount = b.price_each.saturating_mul(unsent as i64);
    let now = deps.clock.now();
    let refund = ledger::cancel_refund_entry(
        deps,
        &b.tenant_id,
        &Charge::Broadcast(b.id.clone()),
        amount,
        "broadcast recipients never queued: their list expired first",
        now,
    );
    if !deps
        .broadcasts
        .close_broadcast_unsent(&b.tenant_id, &b.id, b.enqueued, unsent, Some(&refund), now)
        .await?
    {
        return Ok(None);
    }
    tracing::warn!(broadcast_id = %b.id, unsent, refunded = amount, "broadcast list gone before its fan-out finished; the rest refunded");
    Ok(Some(unsent))
}

/// A broadcast the retention sweep found still `scheduled` or fanning out an hour
/// (`domain::LOST_FANOUT_MARGIN`) after its recipient list's backstop passed
/// (`Broadcast::list_expires_at`): its fan-out job is
/// gone (parked on the dead-letter queue and expired there), or it would have found the
/// list gone and closed it. Read again first; then started if it was scheduled, and
/// closed with the never-recorded recipients refunded, exactly as the fan-out would have
/// (a job that does come back after all finds it closed). Answers how many recipients
/// were refunded, `None` if it was left.
pub async fn settle_lost(
    deps: &Deps,
    tenant: &TenantId,
    id: &str,
) -> Result<Option<usize>, StoreError> {
    let Some(mut b) = deps.broadcasts.get_broadcast(tenant, id).await? else {
        return Ok(None);
    };
    let now = deps.clock.now();
    let margin = crate::domain::LOST_FANOUT_MARGIN.as_secs() as i64;
    if b.list_expires_at().saturating_add(margin) > now.timestamp()
        || deps
            .broadcasts
            .broadcast_recipients(tenant, id)
            .await?
            .is_some()
    {
        return Ok(None);
    }
    match b.status {
        BroadcastStatus::Scheduled => {
            if !deps.broadcasts.start_broadcast(tenant, id, now).await? {
                return Ok(None);
            }
            b.status = BroadcastStatus::FanningOut;
        }
        BroadcastStatus::FanningOut => {}
        BroadcastStatus::Enqueued | BroadcastStatus::Cancelled => return Ok(None),
    }
    close_unrecorded(deps, &b).await
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_csv_whose_other_columns_are_not_utf8_still_gives_its_phones() {
        // Windows-1252, as a spreadsheet saves "CSV": é is the byte E9.
        let body =
            b"\xef\xbb\xbfname,Phone\r\nJos\xe9,+60123450001\r\n\"Ng, Mei\",+60123450002\r\n";
        assert_eq!(
            super::recipients_from_csv(body).unwrap(),
            vec!["+60123450001".to_owned(), "+60123450002".to_owned()]
        );
        let bad_phone = b"phone\n+6012\xff\n";
        assert_eq!(super::recipients_from_csv(bad_phone).unwrap().len(), 1);
    }

    #[test]
    fn a_lost_dispatch_job_is_retryable_and_an_opt_out_is_not() {
        use crate::domain::ErrorCode;
        assert!(super::retryable(&ErrorCode::from("dispatch_lost")));
        assert!(super::retryable(&ErrorCode::from("outcome_unknown")));
        assert!(super::retryable(&ErrorCode::Meta(130429)));
        assert!(!super::retryable(&ErrorCode::from("recipient_opted_out")));
        assert!(!super::retryable(&ErrorCode::Meta(131026)));
    }

    #[test]
    fn an_export_cell_a_spreadsheet_would_run_as_a_formula_starts_with_a_quote() {
        for v in ["=HYPERLINK(\"x\")", "+1", "-1", "@SUM(A1)", "\t=1", "\r=1"] {
            assert_eq!(super::csv_safe(v), format!("'{v}"), "{v:?}");
        }
        assert_eq!(
            super::csv_safe("Message undeliverable"),
            "Message undeliverable"
        );
    }
    use super::*;

    #[test]
    fn a_remembered_hold_lasts_the_ttl_then_is_read_again_and_a_claim_or_a_resume_forgets_it() {
        let memo = HoldMemo::new(Duration::from_secs(5));
        let (t, other) = (TenantId::generate(), TenantId::generate());
        let at = Utc::now();
        let later = |s: i64| at + chrono::Duration::seconds(s);
        let paused = Remembered::Held(BroadcastControl::Paused);
        assert_eq!(
            memo.held(&t, "b1", at),
            Remembered::Nothing,
            "nothing seen yet"
        );
        memo.note(&t, "b1", Some(BroadcastControl::Paused), at);
        assert_eq!(memo.held(&t, "b1", later(4)), paused);
        assert_eq!(
            memo.held(&t, "b1", later(5)),
            Remembered::Earlier,
            "the TTL is over: read the broadcast rather than claim"
        );
        assert_eq!(memo.held(&t, "b2", at), Remembered::Nothing);
        assert_eq!(memo.held(&other, "b1", at), Remembered::Nothing);
        // A read that found it still held remembers it afresh.
        memo.note(&t, "b1", Some(BroadcastControl::Paused), later(5));
        assert_eq!(memo.held(&t, "b1", later(9)), paused);
        // A claim (or a read) that found no hold forgets it.
        memo.note(&t, "b1", None, later(6));
        assert_eq!(memo.held(&t, "b1", later(7)), Remembered::Nothing);
        // So does a resume in this process.
        memo.note(&t, "b1", Some(BroadcastControl::Cancelled), later(7));
        assert_eq!(
            memo.held(&t, "b1", later(8)),
            Remembered::Held(BroadcastControl::Cancelled)
        );
        memo.forget(&t, "b1");
        assert_eq!(memo.held(&t, "b1", later(8)), Remembered::Nothing);
    }

    #[test]
    fn a_zero_ttl_remembers_no_hold_and_the_memo_stays_bounded() {
        let off = HoldMemo::new(Duration::ZERO);
        let t = TenantId::generate();
        let at = Utc::now();
        off.note(&t, "b1", Some(BroadcastControl::Paused), at);
        assert_eq!(off.held(&t, "b1", at), Remembered::Nothing);
        let memo = HoldMemo::new(Duration::from_secs(5));
        for i in 0..HOLDS_REMEMBERED * 3 {
            memo.note(&t, &format!("b{i}"), Some(BroadcastControl::Paused), at);
        }
        assert!(memo.lock().len() <= HOLDS_REMEMBERED);
        let last = format!("b{}", HOLDS_REMEMBERED * 3 - 1);
        assert_eq!(
            memo.held(&t, &last, at),
            Remembered::Held(BroadcastControl::Paused),
            "the latest kept"
        );
    }

    #[test]
    fn a_csv_needs_a_phone_column_in_any_position_and_any_case() {
        let rows =
            recipients_from_csv(b"name,Phone\nAminah,+60123450001\nBala, +60123450002 \n").unwrap();
        assert_eq!(rows, vec!["+60123450001", "+60123450002"]);
        assert!(recipients_from_csv(b"name,number\nA,+60123450001\n").is_err());
        assert!(recipients_from_csv(b"").is_err());
    }

    #[test]
    fn a_file_that_is_no_csv_text_is_said_so_not_sent_looking_for_a_phone_column() {
        let why = |body: &[u8]| match recipients_from_csv(body) {
            Err(ServiceError::InvalidRequest(m)) => m,
            other => panic!("refused as invalid_request: {other:?}"),
        };
        let png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01";
        assert!(
            why(png).starts_with("the file is not CSV text"),
            "{}",
            why(png)
        );
        let xlsx = b"PK\x03\x04\x14\x00\x06\x00\x08\x00\x00\x00!\x00[Content_Types].xml";
        assert!(
            why(xlsx).contains("Excel workbook (.xlsx)"),
            "{}",
            why(xlsx)
        );
        let utf16: Vec<u8> = [0xFF, 0xFE]
            .into_iter()
            .chain(
                "phone\r\n+60123450001\r\n"
                    .encode_utf16()
                    .flat_map(u16::to_le_bytes),
            )
            .collect();
        assert!(why(&utf16).contains("UTF-16"), "{}", why(&utf16));
        let noise = b"\xc3\x28\xa0\xa1\xe2\x28\xa1\xf0\x28\x8c\xbc\n\xff\xfe\xfd\n";
        assert!(why(noise).contains("not UTF-8 text"), "{}", why(noise));
        assert_eq!(
            why(b"name,number\nA,+60123450001\n"),
            "the CSV needs a column named phone in its header row"
        );
        // A Windows-1252 name beside the phone column is still read (no NUL, a UTF-8 header).
        assert_eq!(
            recipients_from_csv(b"phone,name\n+60123450001,Jos\xe9\n")
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn a_csv_over_the_limit_is_refused() {
        let mut csv = String::from("phone\n");
        for i in 0..=MAX_RECIPIENTS {
            csv.push_str(&format!("+6012{:07}\n", i));
        }
        assert!(recipients_from_csv(csv.as_bytes()).is_err());
    }

    #[test]
    fn a_campaign_paused_after_its_last_claim_reads_completed_once_nothing_is_open() {
        let mut b = broadcast();
        b.status = BroadcastStatus::Enqueued;
        b.control = Some(BroadcastControl::Paused);
        let counts = |sending: usize, accepted: usize| {
            BTreeMap::from([
                ("sending".to_owned(), sending),
                ("accepted".to_owned(), accepted),
                ("sent".to_owned(), 3),
            ])
        };
        assert_eq!(
            campaign_status(&b, &counts(1, 0)),
            "paused",
            "one on its way"
        );
        assert_eq!(campaign_status(&b, &counts(0, 2)), "paused", "held");
        assert_eq!(campaign_status(&b, &counts(0, 0)), "completed");
        b.status = BroadcastStatus::FanningOut;
        assert_eq!(
            campaign_status(&b, &counts(0, 0)),
            "paused",
            "recipients still to queue"
        );
        b.control = Some(BroadcastControl::Cancelled);
        assert_eq!(campaign_status(&b, &counts(0, 0)), "cancelled");
    }

    #[test]
    fn a_campaign_closed_with_recipients_refunded_unsent_reads_cancelled_once_nothing_is_open() {
        let mut b = broadcast();
        b.status = BroadcastStatus::Enqueued;
        b.control = Some(BroadcastControl::Paused);
        b.refunded_unsent = 3;
        let counts = |sending: usize, accepted: usize| {
            BTreeMap::from([
                ("sending".to_owned(), sending),
                ("accepted".to_owned(), accepted),
                ("cancelled".to_owned(), 3),
            ])
        };
        assert_eq!(
            campaign_status(&b, &counts(0, 2)),
            "paused",
            "two recorded before the pause still held: a resume sends them"
        );
        assert_eq!(campaign_status(&b, &counts(0, 0)), "cancelled");
        b.control = None;
        assert_eq!(campaign_status(&b, &counts(1, 0)), "sending");
        assert_eq!(campaign_status(&b, &counts(0, 0)), "cancelled");
        b.refunded_unsent = 0;
        assert_eq!(campaign_status(&b, &counts(0, 0)), "completed");
    }

    #[test]
    fn a_campaign_cancelled_with_nothing_left_to_cancel_reads_completed_once_nothing_is_open() {
        let mut b = broadcast();
        b.status = BroadcastStatus::Enqueued;
        b.control = Some(BroadcastControl::Cancelled);
        let counts = |sending: usize, accepted: usize, cancelled: usize| {
            BTreeMap::from([
                ("sending".to_owned(), sending),
                ("accepted".to_owned(), accepted),
                ("cancelled".to_owned(), cancelled),
                ("sent".to_owned(), 3),
            ])
        };
        assert_eq!(
            campaign_status(&b, &counts(0, 0, 0)),
            "completed",
            "every message sent: nothing was cancelled"
        );
        assert_eq!(campaign_status(&b, &counts(0, 0, 1)), "cancelled");
        assert_eq!(
            campaign_status(&b, &counts(0, 2, 0)),
            "cancelled",
            "two still to be closed as cancelled"
        );
        assert_eq!(campaign_status(&b, &counts(1, 0, 0)), "cancelled");
        b.status = BroadcastStatus::FanningOut;
        assert_eq!(
            campaign_status(&b, &counts(0, 0, 0)),
            "cancelled",
            "recipients never queued"
        );
    }

    fn broadcast() -> Broadcast {
        Broadcast {
            id: crate::domain::new_id(),
            tenant_id: TenantId::generate(),
            template: TemplateRef {
                name: "x".into(),
                language: "en".into(),
                category: crate::domain::TemplateCategory::Marketing,
            },
            accepted: 2,
            skipped_opted_out: 0,
            invalid: 0,
            duplicates: 0,
            price_each: 1,
            status: BroadcastStatus::FanningOut,
            enqueued: 0,
            created_at: Utc::now(),
            expires_at: None,
            name: None,
            from: None,
            send_at: None,
            started_at: None,
            ended_at: None,
            control: None,
            retry_of: None,
            retried_by: None,
            refunded_unsent: 0,
            closed_unqueued: 0,
            control_at: None,
            fanout_token: None,
        }
    }

    #[test]
    fn message_ids_are_derived_from_the_broadcast_and_position() {
        let b = broadcast();
        assert_eq!(message_id(&b, 7), message_id(&b, 7));
        assert_ne!(message_id(&b, 7), message_id(&b, 8));
        let u = ulid::Ulid::from_string(message_id(&b, 0).as_str()).unwrap();
        assert_eq!(u.timestamp_ms(), b.created_at.timestamp_millis() as u64);
    }
}
