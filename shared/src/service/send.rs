//! Accepting a message: validate, check the template against the catalogue, debit,
//! record, enqueue.

use serde::Deserialize;

use crate::domain::template::{valid_language, valid_name};
use crate::domain::{
    Content, MessageError, MessageId, MessageRecord, MessageStatus, PhoneNumber, RetentionClass,
    StatusEvent, TemplateCategory, TenantId,
};
use crate::ports::{IdempotentInsert, TenantStatus};

use super::errors::ServiceError;
use super::idempotency::{self, Idempotent};
use super::jobs::{DispatchJob, QueueJob};
use super::ledger::{self, Charge};
use super::optouts;
use super::templates::{self, TemplateRequest};
use super::Deps;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendRequest {
    #[serde(deserialize_with = "crate::domain::fields::phone_text")]
    pub to: String,
    #[serde(default, deserialize_with = "crate::domain::fields::non_null")]
    pub template: Option<TemplateIn>,
    #[serde(default, deserialize_with = "crate::domain::fields::non_null")]
    pub text: Option<TextIn>,
    #[serde(default, deserialize_with = "crate::domain::fields::non_null")]
    pub client_reference: Option<String>,
    /// RFC 3339 with an offset, 1 minute to 35 days ahead: the message waits `scheduled`.
    #[serde(default, deserialize_with = "crate::domain::fields::non_null")]
    pub send_at: Option<String>,
    /// The tenant's phone number to send from (its `phone_number_id`); the default one
    /// without it.
    #[serde(default, deserialize_with = "crate::domain::fields::non_null")]
    pub from: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateIn {
    pub name: String,
    pub language: String,
    /// Optional: the catalogue decides; given and not the catalogue's, the send is refused.
    #[serde(default, deserialize_with = "crate::domain::fields::non_null")]
    pub category: Option<TemplateCategory>,
    #[serde(default)]
    pub components: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextIn {
    pub body: String,
}

fn invalid(msg: &str) -> ServiceError {
    ServiceError::InvalidRequest(msg.to_owned())
}

/// What a request asks to send, before the template is checked against the catalogue.
#[derive(Clone)]
pub enum Draft {
    Template(TemplateRequest),
    Text(String),
}

/// Bounds-checks a template (limits follow Meta's); the catalogue check comes after.
pub fn parse_template(t: TemplateIn) -> Result<TemplateRequest, ServiceError> {
    if !valid_name(&t.name) {
        return Err(invalid(
            "template.name must be 1 to 512 lowercase letters, digits or underscores",
        ));
    }
    if !valid_language(&t.language) {
        return Err(invalid(
            "template.language must be a language code such as en or en_US",
        ));
    }
    if t.components.len() > 20 || t.components.iter().any(|c| !c.is_object()) {
        return Err(invalid("template.components must be at most 20 objects"));
    }
    for (i, c) in t.components.iter().enumerate() {
        check_component(i, c)?;
    }
    Ok(TemplateRequest {
        name: t.name,
        // As the catalogue keeps Meta's codes (`en_US`), whichever separator was sent.
        language: t.language.replace('-', "_"),
        category: t.category,
        components: t.components,
    })
}

/// The deepest a template component may nest (Meta's deepest, an interactive button's
/// action, is a few levels), far below what a queue job can carry.
const MAX_COMPONENT_DEPTH: usize = 16;

/// How many levels of arrays and objects `v` nests (a scalar: 0).
fn nesting(v: &serde_json::Value) -> usize {
    match v {
        serde_json::Value::Array(a) => 1 + a.iter().map(nesting).max().unwrap_or(0),
        serde_json::Value::Object(o) => 1 + o.values().map(nesting).max().unwrap_or(0),
        _ => 0,
    }
}

/// The longest text parameter Meta takes (its `TextParameter.maxLength`).
const MAX_TEXT_PARAMETER: usize = 32_768;

/// What Meta's spec requires of a template component, checked before anything is debited
/// (Meta would refuse the send, and the message fail after its charge): a `type`; a
/// button's `sub_type` and `index`; `parameters` an array of objects with a `type`, a
/// `text` one's text a string of at most 32,768 characters. The error names the path,
/// never the value.
fn check_component(i: usize, c: &serde_json::Value) -> Result<(), ServiceError> {
    let at = |what: &str| format!("template.components[{i}]{what}");
    // The queue job carries the component deeper than a request may (a CSV upload's query
    // holds it at the second level, a job at the fourth), and a job nested past the JSON
    // reader's limit (128) could never be read: accepted, charged, and parked unsent.
    if nesting(c) > MAX_COMPONENT_DEPTH {
        return Err(invalid(&format!(
            "{} is nested more than {MAX_COMPONENT_DEPTH} levels deep",
            at("")
        )));
    }
    let kind = c.get("type").and_then(|v| v.as_str()).ok_or_else(|| {
        invalid(&format!(
            "{} must be a string (header, body or button)",
            at(".type")
        ))
    })?;
    if kind.eq_ignore_ascii_case("button")
        && (!c.get("sub_type").is_some_and(|v| v.is_string())
            || !c.get("index").is_some_and(|v| v.is_string() || v.is_u64()))
    {
        return Err(invalid(&format!(
            "{} needs a sub_type and an index (Meta's button component)",
            at("")
        )));
    }
    let Some(params) = c.get("parameters") else {
        return Ok(());
    };
    let params = params
        .as_array()
        .ok_or_else(|| invalid(&format!("{} must be an array", at(".parameters"))))?;
    for (j, p) in params.iter().enumerate() {
        let here = |what: &str| at(&format!(".parameters[{j}]{what}"));
        let ptype = p.get("type").and_then(|v| v.as_str()).ok_or_else(|| {
            invalid(&format!(
                "{} must be an object with a string type",
                here("")
            ))
        })?;
        if ptype.eq_ignore_ascii_case("text")
            && p.get("text")
                .and_then(|v| v.as_str())
                .is_none_or(|t| t.chars().count() > MAX_TEXT_PARAMETER)
        {
            return Err(invalid(&format!(
                "{} must be a string of at most 32768 characters",
                here(".text")
            )));
        }
    }
    Ok(())
}

/// Parses and bounds-checks a request into (recipient, content). Limits follow Meta's.
pub fn parse(req: SendRequest) -> Result<(PhoneNumber, Draft, Option<String>), ServiceError> {
    let to = PhoneNumber::parse(&req.to).map_err(|_| ServiceError::InvalidPhoneNumber)?;
    if let Some(r) = &req.client_reference {
        if r.chars().count() > 256 || !crate::domain::text::plain_label(r) {
            return Err(invalid(
                "client_reference must be at most 256 characters, without control or invisible formatting characters",
            ));
        }
    }
    let content = match (req.template, req.text) {
        (Some(t), None) => Draft::Template(parse_template(t)?),
        (None, Some(t)) => {
            let len = t.body.chars().count();
            if len == 0 || len > 4096 {
                return Err(invalid("text.body must be 1 to 4096 characters"));
            }
            Draft::Text(t.body)
        }
        _ => return Err(invalid("give exactly one of template or text")),
    };
    Ok((to, content, req.client_reference))
}

/// Accepts a message for `tenant`: debits its price and records it atomically (no
/// message without a debit, no debit without a message), then enqueues it.
pub async fn send(
    deps: &Deps,
    tenant_id: &TenantId,
    req: SendRequest,
) -> Result<MessageRecord, ServiceError> {
    match send_once(deps, tenant_id, req, None).await? {
        Accepted::New(record) => Ok(*record),
        Accepted::Replayed(..) => Err(ServiceError::Internal("replay without a key".into())),
    }
}

/// What `POST /v1/messages` answers: a new message, or the first response to an
/// earlier request with the same `Idempotency-Key` and body.
#[derive(Debug)]
pub enum Accepted {
    New(Box<MessageRecord>),
    /// The first message's id and the status the first answer gave (`accepted`, or
    /// `scheduled` for a scheduled send).
    Replayed(MessageId, &'static str),
}

/// `send`, with an optional idempotency key (see `service::idempotency`).
///
/// An earlier request with the same key is not read up front: the send's own atomic write
/// is conditioned on the key being unused, and answers the earlier record when it is not.
/// A request that is refused before that write (the credits ran out, the recipient opted
/// out, the template was paused since the first request) reads the key then, so a replay
/// still answers the first response whatever changed since. The read happens only on a
/// replay or a refusal; a replay leaves one queued job behind that finds no message and
/// is dropped (`deadline::unrecorded`).
pub async fn send_once(
    deps: &Deps,
    tenant_id: &TenantId,
    req: SendRequest,
    idem: Option<&Idempotent>,
) -> Result<Accepted, ServiceError> {
    let raw_send_at = req.send_at.clone();
    let from = req.from.clone();
    let (to, draft, client_reference) = parse(req)?;
    let tenant = super::auth::load_tenant(deps, tenant_id).await?;
    if tenant.status != TenantStatus::Active {
        // A retry of a send accepted before the suspension answers it, as every other
        // refusal does (the message goes on to the dispatcher, which fails and refunds it
        // while the tenant is suspended).
        if let Some(k) = idem {
            if let Some(first) = idempotency::earlier(deps, tenant_id, k).await? {
                return replayed(deps, &tenant, first, &draft).await;
            }
        }
        return Err(ServiceError::TenantSuspended);
    }
    let send_at = match raw_send_at
        .as_deref()
        .map(|raw| super::schedule::parse_send_at(raw, deps.clock.now()))
        .transpose()
    {
        Ok(at) => at,
        // A retry of a scheduled send that got through answers it, even once its send_at
        // is less than a minute away (or past).
        Err(e) => {
            if let Some(k) = idem {
                if let Some(first) = idempotency::earlier(deps, tenant_id, k).await? {
                    return replayed(deps, &tenant, first, &draft).await;
                }
            }
            return Err(e);
        }
    };
    let Some(k) = idem else {
        return accept(
            deps,
            &tenant,
            send_at,
            from.as_deref(),
            to,
            draft,
            client_reference,
            None,
        )
        .await;
    };
    let replay_draft = draft.clone();
    let first = match accept(
        deps,
        &tenant,
        send_at,
        from.as_deref(),
        to,
        draft,
        client_reference,
        Some(k),
    )
    .await
    {
        Ok(Accepted::Replayed(id, _)) => id,
        Err(e) if !matches!(e, ServiceError::IdempotencyKeyReused) => {
            match idempotency::earlier(deps, tenant_id, k).await? {
                Some(id) => id,
                None => return Err(e),
            }
        }
        other => return other,
    };
    replayed(deps, &tenant, first, &replay_draft).await
}

/// The first answer again, even if its number was removed since (its message then fails
/// as `sender_removed` at dispatch); its job queued again if it never got claimed.
async fn replayed(
    deps: &Deps,
    tenant: &crate::ports::Tenant,
    first: MessageId,
    draft: &Draft,
) -> Result<Accepted, ServiceError> {
    // The first answer stands when the request is refused here: a template paused or
    // removed since is no reason to answer "refused, nothing debited" for a message that
    // was accepted and debited (its own job goes on, and decides). A queue that cannot be
    // reached is answered `503`: the client tries again, and that replay queues it.
    match queue_again_if_never_claimed(deps, tenant, &first, draft).await {
        Ok(()) => {}
        Err(e @ ServiceError::Unavailable(_)) => return Err(e),
        Err(e) => {
            tracing::warn!(message_id = %first, error = %e, "a replayed message's job was not queued again");
        }
    }
    let scheduled = deps
        .messages
        .get_message(&tenant.id, &first)
        .await?
        .is_some_and(|m| m.send_at.is_some());
    let status = if scheduled { "scheduled" } else { "accepted" };
    Ok(Accepted::Replayed(first, status))
}

/// The checks, the queued job and the atomic write of a send by an active `tenant`.
/// `Replayed`: the key was used by an earlier request with the same body.
#[allow(clippy::too_many_arguments)]
async fn accept(
    deps: &Deps,
    tenant: &crate::ports::Tenant,
    send_at: Option<chrono::DateTime<chrono::Utc>>,
    from: Option<&str>,
    to: crate::domain::PhoneNumber,
    draft: Draft,
    client_reference: Option<String>,
    idem: Option<&Idempotent>,
) -> Result<Accepted, ServiceError> {
    let tenant_id = &tenant.id;
    // One of the tenant's numbers (else `unknown_sender`) and not held (`sender_held`),
    // before anything is written.
    let sender = super::numbers::open_sender(deps, tenant, from).await?;
    // The catalogue of the sending number's WABA decides the template's category (price,
    // opt-outs, the marketing pause) and refuses what Meta would refuse: before anything
    // is debited or stored.
    let content = match draft {
        Draft::Text(body) => Content::Text { body },
        Draft::Template(t) => templates::resolve(deps, &sender.waba_id, t).await?,
    };
    let category = content.template_ref().map(|t| t.category);
    optouts::check(deps, tenant_id, &to, category).await?;
    // A session text only within 24 hours of the user's last message to the number it
    // goes from, when it goes out (Meta would answer 131047, unrefunded): refused before
    // any debit. A scheduled one must still be in the window at its `send_at`.
    if matches!(content, Content::Text { .. }) {
        super::contacts::check_window(deps, tenant_id, &sender.phone_number_id, &to, send_at)
            .await?;
    }
    super::quality::check_send(deps, tenant_id, category).await?;
    let now = deps.clock.now();
    let id = MessageId::from_trusted(crate::domain::ulid_at(now).to_string());
    let price = deps.settings.prices.price_for(category);
    let retention = &deps.settings.retention;
    // Debited now, either way; a scheduled one is refunded if it is cancelled.
    let status = if send_at.is_some() {
        MessageStatus::Scheduled
    } else {
        MessageStatus::Accepted
    };
    let record = MessageRecord {
        id: id.clone(),
        tenant_id: tenant_id.clone(),
        to,
        template: content.template_ref().cloned(),
        status,
        error: None,
        events: vec![StatusEvent { status, at: now }],
        wamid: None,
        attempts: 0,
        price,
        client_reference,
        created_at: now,
        updated_at: now,
        expires_at: retention.expiry(
            RetentionClass::Messages,
            super::schedule::starts(send_at, now),
        ),
        broadcast_id: None,
        send_at,
        from: Some(sender.phone_number_id.clone()),
        pricing: None,
        carried_slot: None,
        claim: None,
        quality_counted: false,
        refunded: false,
        settled_at: None,
    };
    // The job is queued BEFORE the message and its debit are written: a process that dies
    // in between leaves a job without a message, which the dispatcher drops once it is
    // older than `deadline::UNRECORDED_GRACE` (nothing was charged, nothing is sent), never
    // a charged message without a job that would wait `accepted` forever. A queue that
    // refuses the job leaves nothing written at all.
    let job = QueueJob::Send(DispatchJob {
        tenant_id: tenant_id.clone(),
        message_id: id.clone(),
        content,
        request_id: crate::telemetry::request_id(),
        send_at,
        broadcast_id: None,
        facts: Some(super::jobs::MessageFacts::of(&record)),
        retry_at: None,
        recheck: false,
        refused: None,
        refused_claim: None,
        key_hash: idem.map(|k| k.key.hash()),
    });
    let body = job
        .to_body()
        .map_err(|e| ServiceError::Internal(e.to_string()))?;
    // A balance that cannot pay is refused before a job is queued: the job would find no
    // message and be received again and again until `deadline::UNRECORDED_GRACE` (about
    // ten receives on the queue every tenant shares, per refused request). The access read
    // may be a few seconds old, so it only decides whether to look: the refusal is a
    // fresh read's, and a send it lets through is still decided by the debit's condition.
    super::ledger::refuse_unpayable(deps, tenant, price).await?;
    // A scheduled message's job waits on the queue itself, in hops of at most
    // `schedule_hop` (`service::schedule`).
    let queued = match super::schedule::wait(send_at, now) {
        Some(wait) => {
            deps.queue
                .send_delayed(&body, wait.min(deps.settings.schedule_hop))
                .await
        }
        None => deps.queue.send(&body).await,
    };
    if let Err(e) = queued {
        tracing::error!(error = %e, "enqueue failed; nothing recorded or charged");
        // A queue down for a moment is a 503 (retry with the same key); one that refuses
        // the job for good (a sender fault) is a 500: the same request would be refused
        // the same way for ever.
        return Err(e.into());
    }
    let charge = Charge::Message(id.clone());
    let debit = ledger::debit(deps, tenant_id, &charge, price, now);
    match idem {
        None => deps
            .messages
            .insert_with_debit(&record, &debit)
            .await
            .map_err(super::errors::debit_refusal)?,
        Some(k) => {
            let key = idempotency::record(deps, tenant_id, k, &id, now);
            let inserted = match deps
                .idempotency
                .insert_with_debit_once(&record, &debit, &key)
                .await
            {
                Ok(inserted) => inserted,
                // The write may have landed with its answer lost (a timeout after the
                // commit): the key then names this very message, and this request's
                // answer is the first one, not a replay (`send_once` reads the key for any
                // other error and answers what it names).
                Err(e) => match idempotency::earlier(deps, tenant_id, k).await {
                    Ok(Some(first)) if first == id => {
                        tracing::warn!(error = %e, "the send's write answered an error but landed");
                        IdempotentInsert::Inserted
                    }
                    _ => return Err(super::errors::debit_refusal(e)),
                },
            };
            match inserted {
                IdempotentInsert::Inserted => {}
                // A concurrent request with the same key won the write (the job queued
                // above finds no message and is dropped).
                IdempotentInsert::Existing(existing) => {
                    // (`send_once` answers it with the first answer's status.)
                    return idempotency::answer(&existing, k)
                        .map(|first| Accepted::Replayed(first, "accepted"));
                }
            }
        }
    }
    crate::telemetry::record_ids([("message_id", id.as_str())]);
    tracing::info!(to = %record.to.masked(), "message accepted");
    Ok(Accepted::New(Box::new(record)))
}

/// A replayed message still `accepted` and never attempted may be one whose job never
/// reached the dispatcher (dropped as unrecorded before a slow write landed, or parked):
/// it would wait, charged, forever. The replay carries the same body (the key matched its
/// fingerprint), so it queues the job again — only once the message is older than
/// [`UNRECORDED_GRACE`](super::deadline::UNRECORDED_GRACE): before that its first job
/// cannot have been dropped (it is queued before the message is written), and a second
/// job would claim the message as soon as a failed attempt released it for its backoff,
/// sending again at once (concurrent replays of one key would each add one).
async fn queue_again_if_never_claimed(
    deps: &Deps,
    tenant: &crate::ports::Tenant,
    id: &MessageId,
    draft: &Draft,
) -> Result<(), ServiceError> {
    let tenant_id = &tenant.id;
    if super::deadline::age_of(deps, id.as_str()) < super::deadline::UNRECORDED_GRACE {
        return Ok(());
    }
    let Some(m) = deps.messages.get_message(tenant_id, id).await? else {
        return Ok(());
    };
    // Not a scheduled one: its job waits on the queue, hopping until `send_at` with the
    // content, and every replay would add another such job.
    if m.status != MessageStatus::Accepted || m.attempts > 0 {
        return Ok(());
    }
    // Turned away by a busy number (given back unattempted, its job on the queue for its
    // slot, up to 15 minutes ahead) within the grace of the later of the give-back and its
    // slot: its job is there.
    let last = m
        .carried_slot
        .as_ref()
        .map_or(m.updated_at, |c| c.at.max(m.updated_at));
    let idle = (deps.clock.now() - last).to_std().unwrap_or_default();
    if idle < super::deadline::UNRECORDED_GRACE {
        return Ok(());
    }
    // The catalogue of the number the message was accepted from, not of the one the
    // request would pick now (the default may have changed since). One removed since:
    // the default's (the job fails as `sender_removed` at dispatch either way).
    let waba_id = &match super::numbers::sending_from(deps, tenant, m.from.as_deref()).await {
        Ok(n) => n.waba_id,
        Err(ServiceError::UnknownSender(_)) => tenant.waba_id.clone(),
        Err(e) => return Err(e),
    };
    // The same body as the first request (the key's fingerprint says so), resolved
    // against the catalogue as it was then; a template refused since then is refused
    // again here (the message stays `accepted` until the client sends again).
    let content = match draft {
        Draft::Text(body) => Content::Text { body: body.clone() },
        Draft::Template(t) => templates::resolve(deps, waba_id, t.clone()).await?,
    };
    // One replay queues it, and only once a grace: the mark restarts its idle time, so a
    // replay repeated (or made at once) while the job waits behind a backlog adds none,
    // which would claim the message the moment a failed attempt released it, skipping
    // its backoff.
    let marked = deps.clock.now();
    if !deps
        .messages
        .touch_unclaimed(tenant_id, id, m.updated_at, marked)
        .await?
    {
        return Ok(());
    }
    let job = QueueJob::Send(DispatchJob {
        tenant_id: tenant_id.clone(),
        message_id: id.clone(),
        content,
        request_id: crate::telemetry::request_id(),
        send_at: m.send_at,
        broadcast_id: None,
        facts: Some(super::jobs::MessageFacts::of(&m)),
        retry_at: None,
        recheck: false,
        refused: None,
        refused_claim: None,
        key_hash: None,
    });
    let body = job
        .to_body()
        .map_err(|e| ServiceError::Internal(e.to_string()))?;
    // A job not due yet waits on the queue by itself (see `schedule`).
    if let Err(e) = deps.queue.send(&body).await {
        // Not queued: the mark is taken back (while it is still this replay's), so the
        // client's next retry queues it rather than wait out another grace.
        let _ = deps
            .messages
            .touch_unclaimed(tenant_id, id, marked, m.updated_at)
            .await;
        return Err(e.into());
    }
    tracing::info!(message_id = %id, "replayed a message never claimed; queued it again");
    Ok(())
}

/// `DELETE /v1/messages/{id}`: cancels a `scheduled` message and refunds its price, in
/// one conditional write (a message that left `scheduled` meanwhile is not touched).
/// Another tenant's or an unknown id: `NotFound`; any other state: `Conflict`.
pub async fn cancel_scheduled(
    deps: &Deps,
    tenant_id: &TenantId,
    id: &MessageId,
) -> Result<MessageRecord, ServiceError> {
    let m = deps
        .messages
        .get_message(tenant_id, id)
        .await?
        .ok_or(ServiceError::NotFound)?;
    let refused = || {
        ServiceError::Conflict(format!(
            "only a scheduled message can be cancelled; this one is {}",
            m.status.as_str()
        ))
    };
    if m.status != MessageStatus::Scheduled {
        return Err(refused());
    }
    let now = deps.clock.now();
    let refund = ledger::cancel_refund_entry(
        deps,
        tenant_id,
        &Charge::of_message(id, m.broadcast_id.as_deref()),
        m.price,
        "scheduled message cancelled",
        now,
    );
    let moved = match deps
        .messages
        .cancel_with_refund(
            tenant_id,
            id,
            &[MessageStatus::Scheduled],
            &cancelled_error(),
            &refund,
            now,
        )
        .await
    {
        Ok(t) => t,
        Err(e) => {
            let to = MessageStatus::Cancelled;
            super::ledger::written_after_all(deps, tenant_id, id, to, now, e).await?
        }
    };
    match moved {
        crate::ports::Transition::Applied(record) => {
            tracing::info!(message_id = %id, "scheduled message cancelled and refunded");
            super::callbacks::status_changed(deps, &record).await;
            Ok(*record)
        }
        crate::ports::Transition::Refused => Err(refused()),
    }
}

/// The error a cancelled message carries (its hint is in `domain::hints`).
pub fn cancelled_error() -> MessageError {
    MessageError {
        code: "cancelled".into(),
        title: "cancelled before it was sent; refunded".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(v: serde_json::Value) -> Result<SendRequest, serde_json::Error> {
        serde_json::from_value(v)
    }

    #[test]
    fn a_request_with_both_template_and_text_is_refused() {
        let r = req(serde_json::json!({"to":"+60123456789","text":{"body":"hi"},
            "template":{"name":"a","language":"en","category":"utility"}}))
        .unwrap();
        assert!(matches!(parse(r), Err(ServiceError::InvalidRequest(_))));
    }

    #[test]
    fn unknown_fields_are_refused_at_every_level() {
        assert!(req(serde_json::json!({"to":"+60123456789","text":{"body":"hi"},"x":1})).is_err());
        assert!(req(serde_json::json!({"to":"+60123456789","text":{"body":"hi","x":1}})).is_err());
    }

    #[test]
    fn a_number_without_plus_is_an_invalid_phone_number() {
        let r = req(serde_json::json!({"to":"60123456789","text":{"body":"hi"}})).unwrap();
        assert!(matches!(parse(r), Err(ServiceError::InvalidPhoneNumber)));
    }

    #[test]
    fn template_names_and_languages_are_bounded() {
        let r = req(serde_json::json!({"to":"+60123456789",
            "template":{"name":"Bad Name","language":"en","category":"utility"}}))
        .unwrap();
        assert!(parse(r).is_err());
        let r = req(serde_json::json!({"to":"+60123456789",
            "template":{"name":"ok","language":"x","category":"utility"}}))
        .unwrap();
        assert!(parse(r).is_err());
        let r = req(serde_json::json!({"to":"+60123456789",
            "template":{"name":"order_update","language":"en_US","category":"utility"}}))
        .unwrap();
        assert!(parse(r).is_ok());
    }

    #[test]
    fn a_templates_category_is_optional_and_still_checked_when_given() {
        let r = req(serde_json::json!({"to":"+60123456789",
            "template":{"name":"order_update","language":"en_US"}}))
        .unwrap();
        assert!(matches!(parse(r), Ok((_, Draft::Template(t), _)) if t.category.is_none()));
        assert!(req(serde_json::json!({"to":"+60123456789",
            "template":{"name":"order_update","language":"en_US","category":"spam"}}))
        .is_err());
    }
}
