//! Broadcasts: one template to up to 10,000 recipients. Every number is validated,
//! duplicates collapse, opted-out numbers are skipped, and the accepted ones are paid for
//! all at once (all or nothing). The fan-out runs in the dispatcher from a queue job
//! that holds the content (never a table), resumably, in batches; the uploaded list is
//! deleted once every recipient is enqueued.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::domain::{
    new_id, MessageId, MessageRecord, MessageStatus, PhoneNumber, RetentionClass, StatusEvent,
    TemplateRef, TenantId,
};
use crate::ports::{Broadcast, BroadcastStatus, TenantStatus};
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BroadcastRequest {
    pub template: TemplateIn,
    pub recipients: Vec<String>,
    /// The tenant's phone number to send from; the default one without it.
    #[serde(default)]
    pub from: Option<String>,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct Accepted {
    pub id: String,
    pub accepted: usize,
    pub skipped_opted_out: usize,
    pub duplicates: usize,
    pub invalid_count: usize,
    /// The first invalid entries as given (numbers are the tenant's own data).
    pub invalid: Vec<String>,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct View {
    pub id: String,
    pub status: BroadcastStatus,
    pub template: TemplateRef,
    pub accepted: usize,
    pub skipped_opted_out: usize,
    pub duplicates: usize,
    pub invalid_count: usize,
    pub enqueued: usize,
    /// Messages of the broadcast by status.
    pub counts: BTreeMap<String, usize>,
    pub created_at: DateTime<Utc>,
}

/// Recipients of a `text/csv` upload: the `phone` column (header row required, any
/// column order, case-insensitive header).
pub fn recipients_from_csv(body: &[u8]) -> Result<Vec<String>, ServiceError> {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(body);
    let headers = reader
        .headers()
        .map_err(|_| ServiceError::InvalidRequest("the CSV has no readable header row".into()))?;
    let col = headers
        .iter()
        .position(|h| h.eq_ignore_ascii_case("phone"))
        .ok_or_else(|| ServiceError::InvalidRequest("the CSV needs a `phone` column".into()))?;
    let mut out = Vec::new();
    for (i, row) in reader.records().enumerate() {
        let row = row.map_err(|_| {
            ServiceError::InvalidRequest(format!("CSV row {} is not readable", i + 2))
        })?;
        if out.len() >= MAX_RECIPIENTS {
            return Err(too_many());
        }
        out.push(row.get(col).unwrap_or_default().to_owned());
    }
    Ok(out)
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
    let requested = parse_template(template)?;
    if raw.len() > MAX_RECIPIENTS {
        return Err(too_many());
    }
    let tenant = super::auth::load_tenant(deps, tenant_id).await?;
    if tenant.status != TenantStatus::Active {
        return Err(ServiceError::TenantSuspended);
    }
    // The catalogue decides the category and refuses what Meta would refuse, before any
    // opt-out lookup, debit or write.
    // One of the tenant's numbers (else `unknown_sender`); its WABA's catalogue decides.
    let sender = super::numbers::sending_from(deps, &tenant, from.as_deref()).await?;
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
            Ok(p) if seen.insert(p.to_string()) => valid.push(p),
            Ok(_) => duplicates += 1,
            Err(_) => invalid.push(r.chars().take(32).collect::<String>()),
        }
    }
    let category = Some(template_ref.category);
    let checks = futures::stream::iter(valid.into_iter().map(|p| async move {
        let r = super::optouts::check(deps, tenant_id, &p, category).await;
        (p, r)
    }))
    .buffered(LOOKUPS)
    .collect::<Vec<_>>()
    .await;
    let mut recipients = Vec::new();
    let mut skipped = 0usize;
    for (p, r) in checks {
        match r {
            Ok(()) => recipients.push(p),
            Err(ServiceError::RecipientOptedOut) => skipped += 1,
            Err(e) => return Err(e),
        }
    }
    if recipients.is_empty() {
        return Err(ServiceError::InvalidRequest(format!(
            "no recipient can be sent to ({} invalid, {} duplicates, {} opted out)",
            invalid.len(),
            duplicates,
            skipped
        )));
    }
    let now = deps.clock.now();
    let price = deps.settings.prices.price_for(category);
    let total = price.saturating_mul(recipients.len() as i64);
    let id = new_id();
    let broadcast = Broadcast {
        id: id.clone(),
        tenant_id: tenant_id.clone(),
        template: template_ref,
        accepted: recipients.len(),
        skipped_opted_out: skipped,
        invalid: invalid.len(),
        duplicates,
        price_each: price,
        status: BroadcastStatus::FanningOut,
        enqueued: 0,
        created_at: now,
        expires_at: deps
            .settings
            .retention
            .expiry(RetentionClass::Messages, now),
        from: Some(sender.phone_number_id),
    };
    let charge = Charge::Broadcast(id.clone());
    let debit = ledger::debit(deps, tenant_id, &charge, total, now);
    deps.broadcasts
        .create_broadcast(&broadcast, &recipients, &debit)
        .await?;
    let job = QueueJob::BroadcastFanout(FanoutJob {
        tenant_id: tenant_id.clone(),
        broadcast_id: id.clone(),
        content,
        request_id: crate::telemetry::request_id(),
    });
    let body = job
        .to_body()
        .map_err(|e| ServiceError::Internal(e.to_string()))?;
    if let Err(e) = deps.queue.send(&body).await {
        // Nothing will fan it out: give the credits back and close it.
        tracing::error!(broadcast_id = %id, error = %e, "broadcast not queued");
        ledger::refund(deps, tenant_id, &charge, total, "not queued").await;
        let _ = deps
            .broadcasts
            .broadcast_progress(tenant_id, &id, 0, true)
            .await;
        return Err(ServiceError::Unavailable(e));
    }
    tracing::info!(broadcast_id = %id, accepted = recipients.len(), "broadcast accepted");
    invalid.truncate(MAX_INVALID_SHOWN);
    Ok(Accepted {
        id,
        accepted: broadcast.accepted,
        skipped_opted_out: skipped,
        duplicates,
        invalid_count: broadcast.invalid,
        invalid,
    })
}

pub async fn view(deps: &Deps, tenant: &TenantId, id: &str) -> Result<View, ServiceError> {
    let b = deps
        .broadcasts
        .get_broadcast(tenant, id)
        .await?
        .ok_or(ServiceError::NotFound)?;
    let counts = deps.broadcasts.broadcast_counts(&b).await?;
    Ok(View {
        id: b.id,
        status: b.status,
        template: b.template,
        accepted: b.accepted,
        skipped_opted_out: b.skipped_opted_out,
        duplicates: b.duplicates,
        invalid_count: b.invalid,
        enqueued: b.enqueued,
        counts,
        created_at: b.created_at,
    })
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
    let Some(b) = deps
        .broadcasts
        .get_broadcast(&job.tenant_id, &job.broadcast_id)
        .await?
    else {
        return Ok(Outcome::Done);
    };
    if b.status == BroadcastStatus::Enqueued {
        return Ok(Outcome::Done);
    }
    let Some(list) = deps
        .broadcasts
        .broadcast_recipients(&job.tenant_id, &job.broadcast_id)
        .await?
    else {
        deps.broadcasts
            .broadcast_progress(&job.tenant_id, &b.id, b.enqueued, true)
            .await?;
        return Ok(Outcome::Done);
    };
    let start = b.enqueued.min(list.len());
    let end = (start + slice.max(1)).min(list.len());
    let now = deps.clock.now();
    let mut done = start;
    for chunk in list[start..end].chunks(10) {
        let mut bodies = Vec::with_capacity(chunk.len());
        for (offset, to) in chunk.iter().enumerate() {
            let id = message_id(&b, done + offset);
            let record = MessageRecord {
                id: id.clone(),
                tenant_id: job.tenant_id.clone(),
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
                created_at: now,
                updated_at: now,
                expires_at: b.expires_at,
                broadcast_id: Some(b.id.clone()),
                from: b.from.clone(),
                pricing: None,
            };
            deps.broadcasts.insert_broadcast_message(&record).await?;
            let body = QueueJob::Send(DispatchJob {
                tenant_id: job.tenant_id.clone(),
                message_id: id,
                content: job.content.clone(),
                request_id: job.request_id.clone(),
            })
            .to_body()
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            bodies.push(body);
        }
        deps.queue.send_batch(&bodies).await?;
        done += chunk.len();
        if (done - start) % 200 == 0 {
            deps.broadcasts
                .broadcast_progress(&job.tenant_id, &b.id, done, false)
                .await?;
        }
    }
    let finished = end == list.len();
    deps.broadcasts
        .broadcast_progress(&job.tenant_id, &b.id, end, finished)
        .await?;
    tracing::info!(enqueued = end, total = list.len(), "broadcast fan-out");
    if !finished {
        // The rest continues in a fresh queue message, so a long fan-out never uses up
        // this one's receive count (and never reaches the dead-letter queue that way).
        let next = QueueJob::BroadcastFanout(job.clone())
            .to_body()
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        deps.queue.send(&next).await?;
    }
    Ok(Outcome::Done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_csv_needs_a_phone_column_in_any_position_and_any_case() {
        let rows =
            recipients_from_csv(b"name,Phone\nAminah,+60123450001\nBala, +60123450002 \n").unwrap();
        assert_eq!(rows, vec!["+60123450001", "+60123450002"]);
        assert!(recipients_from_csv(b"name,number\nA,+60123450001\n").is_err());
        assert!(recipients_from_csv(b"").is_err());
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
    fn message_ids_are_derived_from_the_broadcast_and_position() {
        let b = Broadcast {
            id: new_id(),
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
            from: None,
        };
        assert_eq!(message_id(&b, 7), message_id(&b, 7));
        assert_ne!(message_id(&b, 7), message_id(&b, 8));
        let u = ulid::Ulid::from_string(message_id(&b, 0).as_str()).unwrap();
        assert_eq!(u.timestamp_ms(), b.created_at.timestamp_millis() as u64);
    }
}
