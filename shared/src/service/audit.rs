//! The audit trail: one SHA-256 hash chain per tenant (and one for the platform), so any
//! edit or deletion inside the retained window is detectable. Events expire with the
//! audit retention class; verification starts at the oldest retained link. Each head is
//! signed with the audit key (a checkpoint), so a truncated, wiped or re-hashed chain is
//! detected; an event the chain cannot take is parked and linked in later, never dropped.
//! Choices and threat model: README, "The audit trail".

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::domain::{new_id, RetentionClass, TenantId};
use crate::ports::{
    AuditEvent, AuditHead, AuditLink, AuditOutcome, AuditQuery, ParkedAudit, StaleIntent,
};
use crate::secret::Secret;
use crate::store_error::StoreError;

use super::errors::ServiceError;
use super::Deps;

/// The chain for calls that name no tenant (unknown keys, onboarding errors).
pub const PLATFORM_CHAIN: &str = "platform";
/// `prev_hash` of a chain's first event.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What happened, before it is linked into its chain.
#[derive(Clone, Debug)]
pub struct Draft {
    pub tenant: Option<TenantId>,
    pub actor_type: &'static str,
    pub actor_id: String,
    pub action: String,
    pub ip: Option<String>,
    pub outcome: AuditOutcome,
    /// Non-sensitive details only: ids, codes, counts — never content, secrets or
    /// full phone numbers.
    pub details: serde_json::Value,
}

pub fn chain_of(tenant: Option<&TenantId>) -> String {
    tenant.map_or_else(|| PLATFORM_CHAIN.to_owned(), ToString::to_string)
}

/// The chain a read or a verification is of: a tenant's (`GET /v1/audit…`, its admin), or
/// the platform's (`GET /v1/platform/audit…`, the operator).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chain<'a> {
    Tenant(&'a TenantId),
    Platform,
}

impl<'a> From<&'a TenantId> for Chain<'a> {
    fn from(t: &'a TenantId) -> Self {
        Chain::Tenant(t)
    }
}

impl Chain<'_> {
    /// Its name in the store (`AUDIT#{name}`): the tenant's id, or `platform`.
    pub fn name(self) -> String {
        match self {
            Chain::Tenant(t) => chain_of(Some(t)),
            Chain::Platform => chain_of(None),
        }
    }

    fn tenant(self) -> Option<TenantId> {
        match self {
            Chain::Tenant(t) => Some(t.clone()),
            Chain::Platform => None,
        }
    }
}

/// SHA-256 over the previous hash and every field, as a JSON array (no delimiter
/// ambiguity). `prev_expires_at` is appended only when present, so events written before
/// it existed keep their hashes.
pub fn hash_of(e: &AuditEvent) -> String {
    let mut canonical = serde_json::json!([
        e.prev_hash,
        e.chain,
        e.seq,
        e.id,
        e.at.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
        e.actor_type,
        e.actor_id,
        e.action,
        e.ip,
        e.outcome,
        e.details,
        e.expires_at,
    ]);
    if let (Some(p), Some(fields)) = (e.prev_expires_at, canonical.as_array_mut()) {
        fields.push(p.into());
    }
    hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
}

/// What a link is made of, before its place in the chain is known.
struct Content {
    at: DateTime<Utc>,
    actor_type: String,
    actor_id: String,
    action: String,
    ip: Option<String>,
    outcome: AuditOutcome,
    details: String,
}

impl Content {
    fn of_draft(d: Draft, at: DateTime<Utc>) -> Self {
        Self {
            at,
            actor_type: d.actor_type.to_owned(),
            actor_id: d.actor_id,
            action: d.action,
            ip: d.ip,
            outcome: d.outcome,
            details: d.details.to_string(),
        }
    }

    /// A parked event's content, as `keys` find it ([`parked_trust`]): one parked without a
    /// signature (the key unreadable then) is marked `"parked_unsigned": true`, one whose
    /// signature does not verify (written into the outbox by someone without the key)
    /// `"parked_forged": true`, in its `details` — so a planted event can enter a chain only
    /// marked, under the chain's own hash and signature, and a forged one breaks `verify`.
    fn of_parked(p: &ParkedAudit, keys: &[Secret]) -> Self {
        let details = match parked_trust(p, keys) {
            ParkedTrust::Signed => p.details.clone(),
            ParkedTrust::Unsigned => marked(&p.details, PARKED_UNSIGNED),
            ParkedTrust::Forged => {
                tracing::error!(chain = %p.chain, parked_id = %p.id, action = %p.action, "AUDIT PARKED EVENT DOES NOT VERIFY: linked marked parked_forged");
                marked(&p.details, PARKED_FORGED)
            }
        };
        Self {
            at: p.at,
            actor_type: p.actor_type.clone(),
            actor_id: p.actor_id.clone(),
            action: p.action.clone(),
            ip: p.ip.clone(),
            outcome: p.outcome,
            details,
        }
    }
}

/// The mark on a linked parked event that carried no signature.
pub const PARKED_UNSIGNED: &str = "parked_unsigned";
/// The mark on a linked parked event whose signature did not verify: a forgery.
pub const PARKED_FORGED: &str = "parked_forged";

/// `details` (canonical JSON text) with `mark: true` added.
fn marked(details: &str, mark: &str) -> String {
    let mut v = match serde_json::from_str::<serde_json::Value>(details) {
        Ok(serde_json::Value::Object(m)) => m,
        Ok(other) => serde_json::Map::from_iter([("details".to_owned(), other)]),
        Err(_) => serde_json::Map::from_iter([("details".to_owned(), details.into())]),
    };
    v.insert(mark.to_owned(), true.into());
    serde_json::Value::Object(v).to_string()
}

/// Whether `details` carries `mark: true` at its top level (read only when its text
/// might: verification walks every event).
fn is_marked(details: &str, mark: &str) -> bool {
    details.contains(mark)
        && serde_json::from_str::<serde_json::Value>(details)
            .is_ok_and(|v| v.get(mark) == Some(&serde_json::Value::Bool(true)))
}

enum ParkedTrust {
    Signed,
    Unsigned,
    Forged,
}

fn parked_message(p: &ParkedAudit) -> String {
    serde_json::json!([
        "kirim-audit-parked/1",
        p.chain,
        p.id,
        p.at.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
        p.actor_type,
        p.actor_id,
        p.action,
        p.ip,
        p.outcome,
        p.details,
        p.expires_at,
    ])
    .to_string()
}

/// The hex HMAC-SHA256 of a parked event under `key` (`ParkedAudit::signature`).
pub fn parked_signature(key: &Secret, p: &ParkedAudit) -> Option<String> {
    mac(key, &parked_message(p))
}

/// Whether a holder of one of `keys` parked `p` (with no key configured nothing is signed,
/// and every parked event is taken as it is).
fn parked_trust(p: &ParkedAudit, keys: &[Secret]) -> ParkedTrust {
    if keys.is_empty() {
        return ParkedTrust::Signed;
    }
    match &p.signature {
        None => ParkedTrust::Unsigned,
        Some(sig) if keys.iter().any(|k| mac_matches(k, &parked_message(p), sig)) => {
            ParkedTrust::Signed
        }
        Some(_) => ParkedTrust::Forged,
    }
}

/// Attempts an append makes before it gives up (each after a short random pause).
const ATTEMPTS: usize = 20;
/// Parked events one append links in at most before its own (the rest wait for the next).
const DRAIN_BATCH: usize = 25;

/// What the checkpoint signature covers: the chain, the head's sequence number and hash,
/// and the newest event's expiry (so a wiped chain can be told from an expired one).
fn checkpoint_message(chain: &str, seq: u64, hash: &str, expires_at: Option<i64>) -> String {
    serde_json::json!(["kirim-audit-checkpoint/1", chain, seq, hash, expires_at]).to_string()
}

/// What an event's own signature covers: the same fields under another name, so it proves
/// that a holder of the audit key wrote the event but is never a valid checkpoint. (Were it
/// the checkpoint's HMAC, every event would carry a signed head: anyone able to write the
/// table could move the head back to any event and delete the ones after it, unnoticed.)
fn event_message(chain: &str, seq: u64, hash: &str, expires_at: Option<i64>) -> String {
    serde_json::json!(["kirim-audit-event/1", chain, seq, hash, expires_at]).to_string()
}

fn mac(key: &Secret, message: &str) -> Option<String> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.expose().as_bytes()).ok()?;
    mac.update(message.as_bytes());
    Some(hex::encode(mac.finalize().into_bytes()))
}

fn mac_matches(key: &Secret, message: &str, sig: &str) -> bool {
    let Ok(sig) = hex::decode(sig) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key.expose().as_bytes()) else {
        return false;
    };
    mac.update(message.as_bytes());
    mac.verify_slice(&sig).is_ok()
}

/// The hex HMAC-SHA256 of a head's checkpoint under `key`.
pub fn checkpoint_signature(
    key: &Secret,
    chain: &str,
    seq: u64,
    hash: &str,
    expires_at: Option<i64>,
) -> Option<String> {
    mac(key, &checkpoint_message(chain, seq, hash, expires_at))
}

/// The hex HMAC-SHA256 of an event's own signature under `key` (`AuditEvent::signature`).
pub fn event_signature(key: &Secret, e: &AuditEvent) -> Option<String> {
    mac(key, &event_message(&e.chain, e.seq, &e.hash, e.expires_at))
}

fn signature_matches(key: &Secret, chain: &str, head: &AuditHead, sig: &str) -> bool {
    mac_matches(
        key,
        &checkpoint_message(chain, head.seq, &head.hash, head.expires_at),
        sig,
    )
}

/// How long after a rotation of the audit key its previous version still vouches for an
/// event or a parked item it signed: long enough for an event left beyond its head or
/// parked just before the rotation to be anchored by the next daily retention run.
pub fn previous_key_window(deps: &Deps) -> std::time::Duration {
    deps.settings
        .rotation_grace
        .max(std::time::Duration::from_secs(2 * 86_400))
}

/// The audit keys that may write a chain (current first, then the previous one for
/// [`previous_key_window`] after the rotation): what signs, and what an event or a parked
/// item must be signed with to be anchored. A rotated-out key (the usual reason: it
/// leaked) writes nothing after its window, even to a table someone can write to.
async fn audit_keys(deps: &Deps) -> Result<Vec<Secret>, ServiceError> {
    let name = &deps.settings.audit_key_secret;
    Ok([
        deps.secrets.current(name).await?,
        deps.secrets
            .previous_within(name, previous_key_window(deps), deps.clock.now())
            .await?,
    ]
    .into_iter()
    .flatten()
    .collect())
}

/// Every audit key a head may have been signed with (current, then the previous one with
/// no time limit: a quiet chain's head keeps the signature of the key that wrote it until
/// its next event, or until the daily run re-signs it within the previous key's window,
/// [`resign`]). Only what checks heads uses it, never what anchors.
async fn head_keys(deps: &Deps) -> Result<Vec<Secret>, ServiceError> {
    let name = &deps.settings.audit_key_secret;
    Ok([
        deps.secrets.current(name).await?,
        deps.secrets.previous(name).await?,
    ]
    .into_iter()
    .flatten()
    .collect())
}

/// `content` as the event after `head`, hashed and signed with `key` (its own signature),
/// and the head that anchors it (checkpoint-signed with `key`).
fn next_event(
    deps: &Deps,
    chain: &str,
    content: &Content,
    head: Option<&AuditHead>,
    key: Option<&Secret>,
) -> (AuditEvent, AuditHead) {
    let mut event = AuditEvent {
        chain: chain.to_owned(),
        seq: head.map_or(1, |h| h.seq + 1),
        id: new_id(),
        at: content.at,
        actor_type: content.actor_type.clone(),
        actor_id: content.actor_id.clone(),
        action: content.action.clone(),
        ip: content.ip.clone(),
        outcome: content.outcome,
        details: content.details.clone(),
        prev_hash: head.map_or_else(|| GENESIS.to_owned(), |h| h.hash.clone()),
        hash: String::new(),
        // From the time it is linked (not when it happened), so expiry never decreases
        // along the chain, also for a parked event linked in late; and never before its
        // predecessor's by a clock a moment behind another process's (up to
        // `CLOCK_SKEW_SECS`: a retention shortened since is not held off by it).
        expires_at: match (
            deps.settings
                .retention
                .expiry(RetentionClass::Audit, deps.clock.now()),
            head.and_then(|h| h.expires_at),
        ) {
            (Some(at), Some(prev)) if prev > at && prev - at <= CLOCK_SKEW_SECS => Some(prev),
            (at, _) => at,
        },
        prev_expires_at: head.and_then(|h| h.expires_at),
        signature: None,
    };
    event.hash = hash_of(&event);
    event.signature = key.and_then(|k| event_signature(k, &event));
    let new_head = head_at(chain, &event, key, head);
    (event, new_head)
}

/// The head that anchors `event` after `prev`, checkpoint-signed with `key`.
fn head_at(
    chain: &str,
    event: &AuditEvent,
    key: Option<&Secret>,
    prev: Option<&AuditHead>,
) -> AuditHead {
    let signature =
        key.and_then(|k| checkpoint_signature(k, chain, event.seq, &event.hash, event.expires_at));
    AuditHead::anchoring(event, prev, signature)
}

/// One attempt to link the parked event `parked` (its outbox item's id) after `head`: one
/// transaction [event, head, delete the outbox item], so it is linked in exactly once.
async fn link_parked(
    deps: &Deps,
    chain: &str,
    content: &Content,
    head: Option<&AuditHead>,
    parked: &str,
    key: Option<&Secret>,
) -> Result<AuditEvent, StoreError> {
    let (event, new_head) = next_event(deps, chain, content, head, key);
    deps.audit
        .append(&AuditLink {
            event: &event,
            expected: head,
            signature: new_head.signature,
            parked: Some(parked),
        })
        .await?;
    Ok(event)
}

/// Whether `e` may be anchored after `head`: it is the next link (its place, its hash, its
/// predecessor's hash and expiry) and a holder of the audit key wrote it (its own signature
/// matches one of `keys`; with no key configured nothing is signed, heads included).
fn may_anchor(chain: &str, e: &AuditEvent, head: Option<&AuditHead>, keys: &[Secret]) -> bool {
    let linked = e.chain == chain
        && e.seq == head.map_or(1, |h| h.seq + 1)
        && hash_of(e) == e.hash
        && e.prev_hash == head.map_or(GENESIS, |h| h.hash.as_str())
        && e.prev_expires_at == head.and_then(|h| h.expires_at);
    let signed = keys.is_empty()
        || e.signature.as_deref().is_some_and(|sig| {
            keys.iter()
                .any(|k| mac_matches(k, &event_message(chain, e.seq, &e.hash, e.expires_at), sig))
        });
    linked && signed
}

/// The event after `head` was written but the head not moved to it (its writer crashed or
/// failed between its two writes, or is between them now): checks it ([`may_anchor`]) and
/// moves the head to it, checkpoint-signed here. `Ok(None)`: no such event (the conflict
/// was something else); `Corrupt` if it fails the checks: it is never anchored, and the
/// chain takes no event after it (appends park) until it is removed.
async fn repair(
    deps: &Deps,
    chain: &str,
    head: Option<&AuditHead>,
    keys: &[Secret],
) -> Result<Option<AuditHead>, StoreError> {
    let seq = head.map_or(1, |h| h.seq + 1);
    let Some(e) = deps.audit.event(chain, seq).await? else {
        return Ok(None);
    };
    if head.is_none() {
        // A chain's first event is written with its head in one transaction ([`record`]),
        // so events without a head are never in flight: the head was created meanwhile
        // (read again, and try again), or it was deleted. Anchoring the first event again
        // would let whoever deleted the head and the newest events have the chain rebuilt
        // over the rest, unnoticed: it is never done.
        if deps.audit.head(chain).await?.is_some() {
            return Ok(None);
        }
        tracing::error!(chain = %chain, "AUDIT CHAIN HAS EVENTS BUT NO HEAD: not re-anchored; the chain parks its events until its head is restored");
        return Err(StoreError::Corrupt(
            "the audit chain has events but no head".into(),
        ));
    }
    if !may_anchor(chain, &e, head, keys) {
        tracing::error!(chain = %chain, seq, "AUDIT EVENT BEYOND THE HEAD DOES NOT VERIFY: not anchored; the chain parks its events until it is removed");
        return Err(StoreError::Corrupt(format!(
            "audit event {seq} beyond the chain's head does not verify"
        )));
    }
    let to = head_at(chain, &e, keys.first(), head);
    deps.audit
        .advance_head(chain, head.map(|h| h.seq), &to)
        .await?;
    tracing::info!(chain = %chain, seq, "audit head moved to an event left beyond it");
    Ok(Some(to))
}

/// Head writes an append tries after its event is in, before it leaves the event to be
/// anchored by the chain's next append.
const HEAD_ATTEMPTS: usize = 3;

/// Where the head is after an append's event went in.
enum Settled {
    /// At the event, written by this append.
    Ours,
    /// Past it: another append anchored it first (it found the event beyond the head,
    /// [`repair`]), and appended after it. The only event at its `seq` is this one (it was
    /// put only where there was none), so it is anchored all the same.
    Passed,
    /// Still before it: the event waits beyond the head for the chain's next append.
    Behind,
}

/// The second write of an append: the head from `from` to `to`, retried (the event is in:
/// the head should follow).
/// A head still at `from` that gained an expiry meanwhile (its tenant's close-out ran
/// between the read and this move) is moved with that expiry raised (`to` changes; that
/// try does not count as one of its attempts).
async fn settle_head(deps: &Deps, chain: &str, from: Option<u64>, to: &mut AuditHead) -> Settled {
    let mut attempt = 0;
    while attempt < HEAD_ATTEMPTS {
        attempt += 1;
        match deps.audit.advance_head(chain, from, to).await {
            Ok(()) => return Settled::Ours,
            Err(StoreError::Conflict(_)) => match deps.audit.head(chain).await {
                Ok(Some(h)) if h.seq >= to.seq => return Settled::Passed,
                Ok(Some(h)) if Some(h.seq) == from && h.ttl.is_some() && to.ttl.is_none() => {
                    to.ttl = h.ttl.map(|t| to.expires_at.map_or(t, |e| t.max(e)));
                    attempt -= 1;
                }
                Ok(_) => {
                    tracing::warn!(chain = %chain, seq = to.seq, "audit head neither before nor past its new event: left for the next append");
                    return Settled::Behind;
                }
                Err(e) if attempt == HEAD_ATTEMPTS => {
                    tracing::warn!(chain = %chain, seq = to.seq, error = %e, "audit head not moved: the event waits beyond it for the chain's next append");
                }
                Err(_) => pause().await,
            },
            Err(e) if attempt == HEAD_ATTEMPTS => {
                tracing::warn!(chain = %chain, seq = to.seq, error = %e, "audit head not moved: the event waits beyond it for the chain's next append");
            }
            Err(_) => pause().await,
        }
    }
    Settled::Behind
}

/// The head this process last wrote per chain (issue #13: the head read on each append
/// was one read unit of every send). An append after a remembered head skips the read;
/// its event is written only where the chain has none at its `seq` all the same, so after
/// another process's append (its event is there) it is refused, and then the chain is
/// read again. The signed head is written exactly as before; only where the head the
/// event is computed against comes from changes.
///
/// On only with the read cache (`KIRIM_READ_CACHE_TTL`, 5 s on Lambda; zero: never
/// remembered, every append reads the head). The head is read again [`HEAD_READ_EVERY`]
/// after this process last read it, however often it appended since: events another
/// process parked on the chain (rare: its append failed) are linked in by this process's
/// first append after at most that long (before: its next append), or at once by an
/// append anywhere that reads the head. A refused remembered head marks the chain
/// contended for the TTL: several processes appending to one chain read before each
/// append, as before, instead of paying a refused write for each stale memory. Any other
/// error forgets the chain (the write may or may not have happened), and so does a head
/// write that failed after its event went in (the next append reads the head and anchors
/// the event).
pub struct HeadMemo {
    ttl: chrono::Duration,
    max_age: chrono::Duration,
    chains: std::sync::Mutex<std::collections::HashMap<String, Remembered>>,
    turns: Vec<tokio::sync::Mutex<()>>,
}

/// How long a process appends after a head it remembers before it reads the head again.
pub const HEAD_READ_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

#[derive(Clone)]
enum Remembered {
    /// The head this process wrote last, and when it last read the head.
    Head(AuditHead, DateTime<Utc>),
    Contended(DateTime<Utc>),
}

impl HeadMemo {
    pub fn new(ttl: std::time::Duration) -> Self {
        let ttl = chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::zero());
        HeadMemo {
            max_age: if ttl.is_zero() {
                ttl
            } else {
                chrono::Duration::from_std(HEAD_READ_EVERY).unwrap_or(ttl)
            },
            ttl,
            chains: std::sync::Mutex::new(std::collections::HashMap::new()),
            turns: (0..TURN_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Remembered>> {
        self.chains.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The head this process wrote last on `chain` and when it last read the head, if
    /// that is less than [`HEAD_READ_EVERY`] ago and the chain is not contended.
    fn head(&self, chain: &str, now: DateTime<Utc>) -> Option<(AuditHead, DateTime<Utc>)> {
        match self.lock().get(chain)? {
            Remembered::Head(h, read_at) if *read_at <= now && now < *read_at + self.max_age => {
                Some((h.clone(), *read_at))
            }
            _ => None,
        }
    }

    /// `head` was written after a head read at `read_at`.
    fn wrote(&self, chain: &str, head: AuditHead, read_at: DateTime<Utc>, now: DateTime<Utc>) {
        if self.ttl.is_zero() {
            return;
        }
        let mut chains = self.lock();
        if let Some(Remembered::Contended(since)) = chains.get(chain) {
            if *since <= now && now < *since + self.ttl {
                return;
            }
        }
        // Bounded: a warm process appends to few chains; drop stale entries when it grows.
        if chains.len() >= 10_000 {
            let (ttl, max_age) = (self.ttl, self.max_age);
            chains.retain(|_, r| match r {
                Remembered::Head(_, at) => now < *at + max_age,
                Remembered::Contended(at) => now < *at + ttl,
            });
        }
        chains.insert(chain.to_owned(), Remembered::Head(head, read_at));
    }

    fn contended(&self, chain: &str, now: DateTime<Utc>) {
        if !self.ttl.is_zero() {
            self.lock()
                .insert(chain.to_owned(), Remembered::Contended(now));
        }
    }

    fn forget(&self, chain: &str) {
        self.lock().remove(chain);
    }
}

/// Chains hashed to a turn ([`HeadMemo::turn`]): bounded however many tenants there are.
const TURN_STRIPES: usize = 64;

impl HeadMemo {
    /// This process's appends to one chain take turns here instead of racing for its head:
    /// a lost race costs a [`pause`] of 2–17 ms, which at a few dozen concurrent sends of
    /// one tenant in one process (local mode, a container) was the send API's p99
    /// (BENCHMARKS.md). Across processes (Lambda instances) the conditional writes still
    /// decide. Striped: [`TURN_STRIPES`] locks, a chain hashed to one. Held with the memory
    /// (one per process's `Deps`), so two `Deps` on one store race like two processes.
    fn turn(&self, chain: &str) -> &tokio::sync::Mutex<()> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        chain.hash(&mut h);
        &self.turns[(h.finish() % TURN_STRIPES as u64) as usize]
    }
}

async fn pause() {
    let jitter = rand::random::<u64>() % 15;
    tokio::time::sleep(std::time::Duration::from_millis(2 + jitter)).await;
}

/// Links the chain's parked events in, oldest first (at most a batch); how many.
pub async fn drain(deps: &Deps, chain: &str) -> Result<usize, ServiceError> {
    let keys = audit_keys(deps).await?;
    drain_with(deps, chain, &keys).await
}

async fn drain_with(deps: &Deps, chain: &str, keys: &[Secret]) -> Result<usize, ServiceError> {
    let mut linked = 0;
    let mut attempts = 0;
    'batch: while linked < DRAIN_BATCH && attempts < ATTEMPTS {
        let parked = deps.audit.parked(chain, DRAIN_BATCH - linked).await?;
        if parked.is_empty() {
            break;
        }
        for p in &parked {
            let head = deps.audit.head(chain).await?;
            match link_parked(
                deps,
                chain,
                &Content::of_parked(p, keys),
                head.as_ref(),
                &p.id,
                keys.first(),
            )
            .await
            {
                Ok(e) => {
                    linked += 1;
                    tracing::info!(chain = %chain, seq = e.seq, action = %e.action, "parked audit event linked in");
                }
                // Another append moved the head, or left its event beyond it (then anchor
                // that first), or another drain linked it: read again.
                Err(StoreError::Conflict(_)) => {
                    attempts += 1;
                    match repair(deps, chain, head.as_ref(), keys).await {
                        Ok(Some(_)) => {}
                        Ok(None) | Err(StoreError::Conflict(_)) => pause().await,
                        Err(e) => return Err(e.into()),
                    }
                    continue 'batch;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(linked)
}

/// Chains read from the index of parked events per query.
const CHAINS_PAGE: usize = 100;

/// What one drain of every chain's outbox did (the retention run's report).
#[derive(Serialize, Debug, Clone, Default, PartialEq)]
pub struct DrainReport {
    /// Chains found with parked events.
    pub chains: usize,
    /// Parked events linked into their chains.
    pub linked: usize,
    /// Chains visited that still have parked events (contention, a store error): the next
    /// run (or the chain's next append) continues.
    pub still_parked: usize,
    /// Whether every chain found was visited (else the time budget ran out first).
    pub complete: bool,
}

/// Links in the parked events of every chain that has some, each chain oldest first, so a
/// chain nobody appends to any more (a tenant that stopped calling) does not keep its
/// parked events out of the chain. The chains come from the index of parked events (no
/// scan); stops visiting new chains at `deadline`. A chain that fails is logged and left
/// for the next run; only failing to list the chains fails the drain.
pub async fn drain_all(
    deps: &Deps,
    deadline: std::time::Instant,
) -> Result<DrainReport, ServiceError> {
    let keys = audit_keys(deps).await?;
    let mut report = DrainReport::default();
    let mut after: Option<String> = None;
    loop {
        let chains = deps
            .audit
            .parked_chains(after.as_deref(), CHAINS_PAGE)
            .await?;
        for chain in &chains {
            if std::time::Instant::now() >= deadline {
                return Ok(report);
            }
            report.chains += 1;
            match drain_chain(deps, chain, &keys, deadline).await {
                Ok((linked, still)) => {
                    report.linked += linked;
                    report.still_parked += usize::from(still);
                }
                Err(e) => {
                    report.still_parked += 1;
                    tracing::warn!(chain = %chain, error = %e, "parked audit events not linked in: the next run retries");
                }
            }
        }
        match chains.last() {
            Some(last) if chains.len() == CHAINS_PAGE => after = Some(last.clone()),
            _ => break,
        }
    }
    report.complete = true;
    Ok(report)
}

/// Chains whose heads [`repair_heads`] checks at once.
const REPAIRS_AT_ONCE: usize = 8;

/// Anchors the events left beyond their heads (an append that crashed between its two
/// writes, on a chain nobody appended to since) on the chains of `tenants` and on the
/// platform chain; stops starting new chains at `deadline`. Two reads a chain (the head,
/// the slot after it); what it cannot repair is logged and left for the next run. How
/// many it anchored.
pub async fn repair_heads(
    deps: &Deps,
    tenants: &[TenantId],
    deadline: std::time::Instant,
) -> usize {
    use futures::StreamExt;
    let keys = match audit_keys(deps).await {
        Ok(k) => k,
        Err(e) => {
            tracing::warn!(error = %e, "audit heads not checked: the next run retries");
            return 0;
        }
    };
    let chains =
        std::iter::once(PLATFORM_CHAIN.to_owned()).chain(tenants.iter().map(ToString::to_string));
    futures::stream::iter(chains)
        .take_while(|_| std::future::ready(std::time::Instant::now() < deadline))
        .map(|chain| {
            let keys = &keys;
            async move {
                let repaired = match deps.audit.head(&chain).await {
                    Ok(head) => repair(deps, &chain, head.as_ref(), keys)
                        .await
                        .map(|moved| (moved.is_some(), moved.or(head))),
                    Err(e) => Err(e),
                };
                match repaired {
                    Ok((moved, head)) => {
                        if let Some(h) = head {
                            resign(deps, &chain, &h, keys).await;
                        }
                        moved
                    }
                    Err(e) => {
                        tracing::warn!(chain = %chain, error = %e, "audit head not checked or not repaired: the next run retries");
                        false
                    }
                }
            }
        })
        .buffer_unordered(REPAIRS_AT_ONCE)
        .filter(|repaired| std::future::ready(*repaired))
        .count()
        .await
}

/// A head only the previous audit key's signature matches (a quiet chain since a
/// rotation), re-signed with the current key within [`previous_key_window`], if it has not
/// moved meanwhile: heads are checked with the current and the previous key, so a quiet
/// chain's head left signed with the previous key verified as rewritten after the next
/// rotation. (After the window nothing is re-signed: a head the previous key signed then
/// may be a leaked key's forgery, not to be endorsed with the current one.) A head no key
/// matches is left for `verify` to report.
async fn resign(deps: &Deps, chain: &str, head: &AuditHead, keys: &[Secret]) {
    let (Some(sig), [current, previous]) = (&head.signature, keys) else {
        return;
    };
    if signature_matches(current, chain, head, sig)
        || !signature_matches(previous, chain, head, sig)
    {
        return;
    }
    let resigned = AuditHead {
        signature: checkpoint_signature(current, chain, head.seq, &head.hash, head.expires_at),
        ..head.clone()
    };
    match deps
        .audit
        .advance_head(chain, Some(head.seq), &resigned)
        .await
    {
        Ok(()) => {
            deps.audit_heads.forget(chain);
            tracing::info!(chain = %chain, seq = head.seq, "audit head re-signed with the current audit key");
        }
        // Moved on meanwhile: signed with the current key by the append that moved it.
        Err(StoreError::Conflict(_)) => {}
        Err(e) => {
            tracing::warn!(chain = %chain, error = %e, "audit head not re-signed: the next run retries");
        }
    }
}

/// Drains one chain's outbox a batch at a time until it is empty, a batch stalls
/// (contention) or `deadline`; how many were linked and whether some still wait.
async fn drain_chain(
    deps: &Deps,
    chain: &str,
    keys: &[Secret],
    deadline: std::time::Instant,
) -> Result<(usize, bool), ServiceError> {
    let mut linked = 0;
    loop {
        let n = drain_with(deps, chain, keys).await?;
        linked += n;
        if n < DRAIN_BATCH || std::time::Instant::now() >= deadline {
            break;
        }
    }
    let (_, still) = deps.audit.tip(chain).await?;
    Ok((linked, still))
}

/// Appends an event, retrying when a concurrent append moved the head first. Events
/// parked earlier on the chain are linked in first, so the chain keeps their order.
///
/// Two plain conditional writes (2 write units; a transaction of both was 4): the event
/// where the chain has none at its `seq`, then the head from the one it was computed
/// against. An event found beyond the head (its writer is between its writes, or failed
/// or crashed there) is checked and anchored first ([`repair`]). If the head cannot be
/// moved after the event is in, the event is recorded all the same and waits beyond the
/// head, like a parked event, for the chain's next append (or the retention run's drain of
/// a chain with parked events) to anchor it.
pub async fn record(deps: &Deps, draft: Draft) -> Result<AuditEvent, ServiceError> {
    let chain = chain_of(draft.tenant.as_ref());
    let content = Content::of_draft(draft, deps.clock.now());
    let keys = audit_keys(deps).await?;
    let key = keys.first();
    let _turn = deps.audit_heads.turn(&chain).lock().await;
    let mut drained = false;
    // The head this process wrote last, if fresh ([`HeadMemo`]): no read before the append.
    let mut remembered = deps.audit_heads.head(&chain, deps.clock.now());
    for _ in 0..ATTEMPTS {
        let from_memo = remembered.is_some();
        let (head, parked, read_at) = match remembered.take() {
            Some((h, read_at)) => (Some(h), false, read_at),
            None => match deps.audit.tip(&chain).await {
                Ok((h, parked)) => (h, parked, deps.clock.now()),
                Err(e) => {
                    deps.audit_heads.forget(&chain);
                    return Err(e.into());
                }
            },
        };
        if parked && !drained {
            drained = true;
            if let Err(e) = drain_with(deps, &chain, &keys).await {
                deps.audit_heads.forget(&chain);
                return Err(e);
            }
            continue;
        }
        let (event, new_head) = next_event(deps, &chain, &content, head.as_ref(), key);
        if head.is_none() {
            // A chain's first event and its head in one transaction (once a chain): never an
            // event without a head, so one found so is a deleted head ([`repair`]).
            let first = AuditLink {
                event: &event,
                expected: None,
                signature: new_head.signature.clone(),
                parked: None,
            };
            match deps.audit.append(&first).await {
                Ok(()) => {
                    deps.audit_heads
                        .wrote(&chain, new_head, read_at, deps.clock.now());
                    return Ok(event);
                }
                // Begun meanwhile by another append (or it has events and no head: the
                // repair says so): read again.
                Err(StoreError::Conflict(_)) => {
                    match repair(deps, &chain, None, &keys).await {
                        Ok(_) | Err(StoreError::Conflict(_)) => pause().await,
                        Err(e) => {
                            deps.audit_heads.forget(&chain);
                            return Err(e.into());
                        }
                    }
                    continue;
                }
                Err(e) => {
                    deps.audit_heads.forget(&chain);
                    // Landed with its answer lost: the event (and its head) are in.
                    if let Ok(Some(there)) = deps.audit.event(&chain, event.seq).await {
                        if there.id == event.id {
                            tracing::warn!(error = %e, "audit chain's first event written, its answer lost");
                            return Ok(event);
                        }
                    }
                    return Err(e.into());
                }
            }
        }
        match deps.audit.put_event(&event).await {
            Ok(()) => {
                let mut new_head = new_head;
                match settle_head(deps, &chain, head.as_ref().map(|h| h.seq), &mut new_head).await {
                    Settled::Ours => {
                        deps.audit_heads
                            .wrote(&chain, new_head, read_at, deps.clock.now());
                    }
                    Settled::Passed => deps.audit_heads.contended(&chain, deps.clock.now()),
                    Settled::Behind => deps.audit_heads.forget(&chain),
                }
                return Ok(event);
            }
            // Another process appended since this one wrote the head it remembers (or left
            // its event beyond it): read the head now (no pause: nobody in this process
            // races for it, `HeadMemo::turn`).
            Err(StoreError::Conflict(_)) if from_memo => {
                deps.audit_heads.contended(&chain, deps.clock.now());
            }
            // The head just read is behind an event: another append's, between its two
            // writes or left there. Anchor it if it verifies, then try again after it.
            Err(StoreError::Conflict(_)) => {
                match repair(deps, &chain, head.as_ref(), &keys).await {
                    Ok(Some(_)) => {}
                    Ok(None) | Err(StoreError::Conflict(_)) => pause().await,
                    Err(e) => {
                        deps.audit_heads.forget(&chain);
                        return Err(e.into());
                    }
                }
            }
            Err(e) => {
                deps.audit_heads.forget(&chain);
                // The write may have landed with its answer lost (every retry of the SDK's
                // failed after): then the event is in, beyond the head, and parking a copy
                // would record it twice once both are linked. Read its place: ours there, it
                // is recorded (the next append anchors it, as any event left beyond a head).
                if let Ok(Some(there)) = deps.audit.event(&chain, event.seq).await {
                    if there.id == event.id {
                        tracing::warn!(error = %e, "audit event written, its answer lost; left for the next append to anchor");
                        return Ok(event);
                    }
                }
                return Err(e.into());
            }
        }
    }
    deps.audit_heads.forget(&chain);
    Err(ServiceError::Unavailable(StoreError::Unavailable(
        "audit chain contended".into(),
    )))
}

/// Records and never fails the caller (the action already happened): when the chain
/// cannot take the event now (contention, a store error), the event is parked durably in
/// the chain's outbox and linked in by the chain's next append or the next retention run
/// ([`drain_all`]), whichever comes first, in order. Only if the
/// park fails too is the event lost, and that is logged as an error (and alarmed on).
/// Whether the event was recorded or parked (`false`: lost; the call's [`intend`]ed
/// event, if it has one, is then kept for [`sweep_intents`] to record instead).
pub async fn record_or_park(deps: &Deps, draft: Draft) -> bool {
    let chain = chain_of(draft.tenant.as_ref());
    let at = deps.clock.now();
    let parked = ParkedAudit {
        chain,
        id: ulid::Ulid::from_datetime(at.into()).to_string(),
        at,
        actor_type: draft.actor_type.to_owned(),
        actor_id: draft.actor_id.clone(),
        action: draft.action.clone(),
        ip: draft.ip.clone(),
        outcome: draft.outcome,
        details: draft.details.to_string(),
        expires_at: deps.settings.retention.expiry(RetentionClass::Audit, at),
        signature: None,
    };
    let Err(e) = record(deps, draft).await else {
        return true;
    };
    // Signed, so that the drain links in only what a holder of the key parked (unsigned
    // when the key cannot be read now: then it is linked marked so).
    let mut parked = parked;
    if let Ok(keys) = audit_keys(deps).await {
        parked.signature = keys.first().and_then(|k| parked_signature(k, &parked));
    }
    match deps.audit.park(&parked).await {
        Ok(()) => {
            tracing::warn!(
                error = %e, action = %parked.action, parked_id = %parked.id,
                "audit event parked: its chain's next append or the retention run links it in"
            );
            true
        }
        Err(pe) => {
            tracing::error!(
                error = %e, park_error = %pe, action = %parked.action,
                "AUDIT EVENT LOST: neither appended nor parked"
            );
            false
        }
    }
}

/// How old an audit intent must be before [`sweep_intents`] takes its call for dead. Well
/// past the longest an audited call can run on AWS (the API functions' 29 s timeout, under
/// API Gateway's 30 s) and the head-contention retries of its append after it, with room
/// for one process's clock a little behind another's: a call still running is never taken
/// for one that died. (In local mode nothing ends a call at 29 s: one that runs longer than
/// this has an `interrupted` event as well as its own.)
pub const INTENT_STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(120);

/// What an interrupted call's event says in its `details`: it was interrupted, and its
/// HTTP status is unknown (`null`).
pub fn interrupted_details() -> serde_json::Value {
    serde_json::json!({"interrupted": true, "status": null})
}

/// Writes the *intent* of the audited call `draft` describes (its actor, action, address
/// and the chain it will most likely go to; its outcome and details are not known yet),
/// before the call's handler runs: the parked event it becomes, outcome `error` and
/// [`interrupted_details`], signed with the audit key as parked events are. The call's
/// own event, once recorded (or parked), removes it ([`forget_intent`]); if its process
/// dies first, [`sweep_intents`] parks it on its chain. Its id; `Err` if it could not be
/// written (then the call goes ahead without one: the safety net failing must not refuse
/// an opt-out or a cancel). One write; no read (the audit key comes from the secret cache
/// the append uses too).
pub async fn intend(deps: &Deps, draft: &Draft) -> Result<String, ServiceError> {
    let at = deps.clock.now();
    let mut intent = ParkedAudit {
        chain: chain_of(draft.tenant.as_ref()),
        id: ulid::Ulid::from_datetime(at.into()).to_string(),
        at,
        actor_type: draft.actor_type.to_owned(),
        actor_id: draft.actor_id.clone(),
        action: draft.action.clone(),
        ip: draft.ip.clone(),
        outcome: AuditOutcome::Error,
        details: interrupted_details().to_string(),
        // The parked event's own expiry: the intent never outlives what it would become,
        // and a sweep that keeps failing never keeps it for ever.
        expires_at: deps.settings.retention.expiry(RetentionClass::Audit, at),
        signature: None,
    };
    // Unsigned when the key cannot be read now (linked then marked `parked_unsigned`).
    if let Ok(keys) = audit_keys(deps).await {
        intent.signature = keys.first().and_then(|k| parked_signature(k, &intent));
    }
    deps.audit.put_intent(&intent).await?;
    Ok(intent.id)
}

/// Removes the intent `id`: its call's event was recorded or parked. A failure is logged
/// and leaves it for the sweep, which records the call a second time, as interrupted
/// (over-reported, never lost).
pub async fn forget_intent(deps: &Deps, id: &str) {
    if let Err(e) = deps.audit.delete_intent(id).await {
        tracing::warn!(error = %e, intent_id = %id, "audit intent not removed: the sweep will record its call as interrupted too");
    }
}

/// Stale intents read per query.
const INTENTS_PAGE: usize = 100;

/// What one sweep of stale audit intents did (the one-minute task's report).
#[derive(Serialize, Debug, Clone, Default, PartialEq)]
pub struct IntentSweep {
    /// Intents older than [`INTENT_STALE_AFTER`] parked as `interrupted` events.
    pub interrupted: usize,
    /// Stale intents it could not record, each logged and counted
    /// ([`crate::metrics::audit_intent_problem`]) and gone past: an item that is no intent,
    /// one whose chain could not be decided (its tenant unreadable) or whose write as an
    /// interrupted event failed. All but the first are tried again by the next sweep.
    pub failed: usize,
    /// Parked events this sweep linked into the chains it parked on (its own, and any
    /// others waiting there); the rest wait for the chain's next append or the daily run.
    pub linked: usize,
    /// Whether stale intents may remain (the time ran out, a store error stopped the
    /// reading, or some could not be recorded).
    pub more: bool,
}

/// Whether `action` is one of the operator's routes (`/v1/platform/…`): its event goes on
/// the tenant it names only if that tenant exists and is not closed out when it is
/// recorded, as the access middleware decides for the operator's calls.
fn operators(action: &str) -> bool {
    action
        .split_once(' ')
        .is_some_and(|(_, path)| path.starts_with("/v1/platform/"))
}

/// The parked event the stale `intent` becomes: on its chain, unless it is an operator's
/// call about a tenant (or an onboarding) whose tenant does not exist (the call failed
/// before it made it) or is closed out: then on the platform chain, naming a closed-out
/// tenant in `details.tenant_id`, as the middleware records the operator's calls. Moved,
/// it is signed again only if its own signature verified; else it keeps it (an unsigned
/// intent is linked `parked_unsigned`, a forged one `parked_forged`).
async fn interrupted(
    deps: &Deps,
    intent: &ParkedAudit,
    keys: &[Secret],
) -> Result<ParkedAudit, ServiceError> {
    let mut p = intent.clone();
    if p.chain == PLATFORM_CHAIN || !operators(&p.action) {
        return Ok(p);
    }
    let tenant = TenantId::parse(&p.chain);
    let exists = match &tenant {
        Some(t) => deps.tenants.get_tenant(t).await?.is_some(),
        None => false,
    };
    let closed_out = match (&tenant, exists) {
        (Some(t), true) => deps.retention.closed_out_at(t).await?.is_some(),
        _ => false,
    };
    if exists && !closed_out {
        return Ok(p);
    }
    if closed_out {
        let mut details = match serde_json::from_str::<serde_json::Value>(&p.details) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => serde_json::Map::new(),
        };
        details.insert("tenant_id".into(), p.chain.clone().into());
        p.details = serde_json::Value::Object(details).to_string();
    }
    p.chain = PLATFORM_CHAIN.to_owned();
    if matches!(parked_trust(intent, keys), ParkedTrust::Signed) {
        p.signature = keys.first().and_then(|k| parked_signature(k, &p));
    }
    Ok(p)
}

/// Turns every audit intent older than [`INTENT_STALE_AFTER`] (its call's process died
/// before the call's event was recorded: a timeout, an out-of-memory, a crash) into a
/// parked event on its chain, outcome `error`, `"interrupted": true` ([`interrupted`]),
/// each in one atomic write with the intent's removal ([`AuditLog::promote_intent`]), then
/// drains the chains it parked on ([`drain`]): the event is in its chain at once, not at
/// the chain's next append or the daily run. One intent that cannot be recorded (no
/// intent at all, its tenant unreadable, its write failed) is logged, counted in
/// `failed` and gone past: it never holds up the ones behind it, every chain's. Stops
/// starting new pages at `deadline`, and when the intents cannot be read (the next sweep
/// goes on). The retention function's one-minute task
/// ([`crate::queue_handlers::every_minute`]), so an interrupted call is in its chain
/// within about three minutes.
pub async fn sweep_intents(
    deps: &Deps,
    deadline: std::time::Instant,
) -> Result<IntentSweep, ServiceError> {
    let keys = audit_keys(deps).await?;
    let stale = chrono::Duration::from_std(INTENT_STALE_AFTER)
        .map_err(|e| ServiceError::Internal(format!("intent age: {e}")))?;
    let mut report = IntentSweep::default();
    let mut chains = std::collections::BTreeSet::new();
    let swept = async {
        // Where the reading goes on: past the intents this sweep took or could not take.
        let mut after: Option<String> = None;
        loop {
            let page = deps
                .audit
                .stale_intents(deps.clock.now() - stale, after.as_deref(), INTENTS_PAGE)
                .await?;
            for stale in &page {
                match stale {
                    StaleIntent::Unreadable { id, key, error } => {
                        tracing::error!(intent_id = %id, key = %key, error = %error, "AUDIT INTENT UNREADABLE: a stale intent that is no intent, skipped (its call, if any, is not recorded); remove it once looked at");
                        crate::metrics::audit_intent_problem("unreadable");
                        report.failed += 1;
                    }
                    StaleIntent::Intent(intent) => {
                        match promote(deps, intent, &keys).await {
                            Ok(Some(chain)) => {
                                report.interrupted += 1;
                                chains.insert(chain);
                            }
                            Ok(None) => {}
                            Err(problem) => {
                                crate::metrics::audit_intent_problem(problem);
                                report.failed += 1;
                            }
                        }
                    }
                }
            }
            after = page.last().map(|i| i.id().to_owned()).or(after);
            if page.len() < INTENTS_PAGE {
                return Ok::<_, StoreError>(false);
            }
            if std::time::Instant::now() >= deadline {
                return Ok(true);
            }
        }
    }
    .await;
    report.more = report.failed > 0
        || match swept {
            Ok(more) => more,
            Err(e) => {
                tracing::warn!(error = %e, "stale audit intents not all swept: the next sweep goes on");
                true
            }
        };
    for chain in &chains {
        match drain_with(deps, chain, &keys).await {
            Ok(n) => report.linked += n,
            Err(e) => {
                tracing::warn!(chain = %chain, error = %e, "interrupted audit events parked, not linked: the chain's next append or the daily run links them");
            }
        }
    }
    Ok(report)
}

/// Parks the stale `intent` as its call's interrupted event ([`interrupted`],
/// [`AuditLog::promote_intent`]): the chain it went on, `None` if another sweep took it
/// (or its call's event came at last and removed it), or the problem (logged here) that
/// left it for the next sweep.
async fn promote(
    deps: &Deps,
    intent: &ParkedAudit,
    keys: &[Secret],
) -> Result<Option<String>, &'static str> {
    let parked = match interrupted(deps, intent, keys).await {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(intent_id = %intent.id, chain = %intent.chain, action = %intent.action, error = %e, "stale audit intent not recorded: its chain could not be decided; the next sweep tries again");
            return Err("unresolved");
        }
    };
    match deps.audit.promote_intent(&intent.id, &parked).await {
        Ok(()) => {
            tracing::warn!(chain = %parked.chain, intent_id = %intent.id, action = %parked.action, "audited call interrupted before its event was recorded: parked as interrupted");
            Ok(Some(parked.chain))
        }
        Err(StoreError::Conflict(_)) => Ok(None),
        Err(e) => {
            tracing::warn!(intent_id = %intent.id, chain = %parked.chain, action = %parked.action, error = %e, "stale audit intent not recorded: its write failed; the next sweep tries again");
            Err("not_promoted")
        }
    }
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct EventView {
    pub id: String,
    pub seq: u64,
    pub at: DateTime<Utc>,
    pub actor: serde_json::Value,
    pub action: String,
    pub ip: Option<String>,
    pub outcome: AuditOutcome,
    pub details: serde_json::Value,
    pub hash: String,
    pub prev_hash: String,
}

impl From<&AuditEvent> for EventView {
    fn from(e: &AuditEvent) -> Self {
        Self {
            id: e.id.clone(),
            seq: e.seq,
            at: e.at,
            actor: serde_json::json!({"type": e.actor_type, "id": e.actor_id}),
            action: e.action.clone(),
            ip: e.ip.clone(),
            outcome: e.outcome,
            details: serde_json::from_str(&e.details).unwrap_or(serde_json::Value::Null),
            hash: e.hash.clone(),
            prev_hash: e.prev_hash.clone(),
        }
    }
}

/// A page of `chain`'s events, newest first, as `q` filters them.
pub async fn list<'a>(
    deps: &Deps,
    chain: impl Into<Chain<'a>>,
    q: &AuditQuery,
) -> Result<(Vec<EventView>, Option<u64>), ServiceError> {
    let (events, next) = deps.audit.list(&chain.into().name(), q).await?;
    Ok((events.iter().map(EventView::from).collect(), next))
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct VerifyReport {
    pub valid: bool,
    pub checked: usize,
    /// The first sequence number where the chain breaks, if it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broken_at: Option<u64>,
    /// Why the chain is not valid (absent when it is).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Events parked after a failed append and not linked in yet (absent when none).
    #[serde(skip_serializing_if = "is_zero")]
    pub parked: usize,
    /// How long the oldest of them has waited, in seconds (absent when none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oldest_parked_age_seconds: Option<i64>,
    /// Whether the whole chain was checked. `false`: a long chain's check stopped at its
    /// request's budget with nothing wrong so far; `next_cursor` continues it.
    pub complete: bool,
    /// Continues an incomplete check (`GET /v1/audit/verify?cursor=`): signed, for an hour.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl VerifyReport {
    fn valid(checked: usize) -> Self {
        Self {
            valid: true,
            checked,
            broken_at: None,
            reason: None,
            parked: 0,
            oldest_parked_age_seconds: None,
            complete: true,
            next_cursor: None,
        }
    }

    fn broken(checked: usize, at: Option<u64>, reason: String) -> Self {
        Self {
            valid: false,
            checked,
            broken_at: at,
            reason: Some(reason),
            parked: 0,
            oldest_parked_age_seconds: None,
            complete: true,
            next_cursor: None,
        }
    }
}

/// Checks a chain's retained events one at a time, oldest first, in bounded memory: each
/// against its hash and its predecessor; the oldest retained one against its
/// predecessor's expiry (deleted early?); the newest against the signed head.
pub struct ChainCheck {
    /// Epoch seconds: what has expired by now may be gone.
    now: i64,
    checked: usize,
    last: Option<(u64, String)>,
    broken: Option<(u64, String)>,
    /// The actions a chain's event 1 may be, if any: a tenant's chain begins with its
    /// onboarding ([`BEGINNINGS`]).
    first_action: Option<&'static [&'static str]>,
    /// Event 1 was a suspension on Meta's word ([`suspended_before_onboarding`]): event 2
    /// must be the onboarding.
    onboarding_next: bool,
}

/// How far behind another process's clock an event's own may be and still take its
/// predecessor's expiry (a retention shortened since makes a larger gap: not held off).
const CLOCK_SKEW_SECS: i64 = 300;

/// The action of a tenant's onboarding, its chain's first event.
pub const ONBOARDING: &str = "POST /v1/platform/tenants";
/// The onboarding's route (its action's path).
pub const ONBOARDING_ROUTE: &str = "/v1/platform/tenants";

/// What a tenant's chain may begin with: its onboarding (an onboarding that answered an
/// error is recorded on the chain of the tenant it may have made if that tenant exists by
/// then: [`crate::http::access::AuditNote::maybe_tenant`]), or the operator's key for the
/// tenant, README's way to recover one whose onboarding went to the platform chain all
/// the same (the tenant could not be read then either).
pub const BEGINNINGS: &[&str] = &[ONBOARDING, "POST /v1/platform/tenants/{id}/api-keys"];

/// A tenant's chain may also begin with a suspension on Meta's word, if its onboarding
/// follows as event 2: the onboarding's event is recorded when its request ends (after
/// the template sync, up to 10 s), and an `account_update` in that window suspends the
/// tenant first. Its onboarding is written once, when the tenant is made, so a chain
/// begun again after a wipe can never have it as event 2.
fn suspended_before_onboarding(e: &AuditEvent) -> bool {
    e.action == "tenant.suspend" && e.actor_type == "system"
}

/// Whether `e` is the tenant's onboarding, as a chain's beginning must be: not parked
/// without a signature (anyone who can write the table could have put it in the outbox).
fn is_onboarding(e: &AuditEvent) -> bool {
    e.action == ONBOARDING && !is_marked(&e.details, PARKED_UNSIGNED)
}

const NOT_FOLLOWED_BY_ONBOARDING: &str = "event 1, a suspension on Meta's word, is not followed by the tenant's onboarding: the chain was begun again after its events and head were deleted";

impl ChainCheck {
    pub fn new(now: i64) -> Self {
        Self {
            now,
            checked: 0,
            last: None,
            broken: None,
            first_action: None,
            onboarding_next: false,
        }
    }

    /// A check of a chain whose event 1 must be `action`: a tenant's chain begins with its
    /// onboarding, so an event 1 that is anything else is a chain begun again after its
    /// events and head were all deleted (the next audited call finds no chain and starts
    /// one).
    pub fn beginning_with(mut self, actions: &'static [&'static str]) -> Self {
        self.first_action = Some(actions);
        self
    }

    /// A check that goes on after event `seq` of hash `hash`, `checked` events checked
    /// before (a verification's earlier requests).
    fn resumed(now: i64, checked: usize, seq: u64, hash: String) -> Self {
        Self {
            now,
            checked,
            last: Some((seq, hash)),
            broken: None,
            first_action: None,
            onboarding_next: false,
        }
    }

    /// Takes the next event; `false` once the chain is broken (feed no more).
    pub fn feed(&mut self, e: &AuditEvent) -> bool {
        if self.broken.is_some() {
            return false;
        }
        let problem = if hash_of(e) != e.hash {
            Some(format!("event {} does not match its hash", e.seq))
        } else if is_marked(&e.details, PARKED_FORGED) {
            Some(format!(
                "event {} was planted in the chain's outbox: its parked signature does not verify",
                e.seq
            ))
        } else {
            match &self.last {
                Some((seq, _)) if e.seq != seq.saturating_add(1) => Some(format!(
                    "events {} to {} are missing",
                    seq.saturating_add(1),
                    e.seq.saturating_sub(1)
                )),
                Some((seq, hash)) if &e.prev_hash != hash => {
                    Some(format!("event {} does not link to event {seq}", e.seq))
                }
                Some(_) if self.onboarding_next && !is_onboarding(e) => {
                    Some(NOT_FOLLOWED_BY_ONBOARDING.into())
                }
                Some(_) => None,
                None if e.seq == 1 && e.prev_hash != GENESIS => {
                    Some("event 1 does not start the chain".into())
                }
                // Parked without a signature, it proves nothing: anyone who can write the
                // table could have put it in the outbox after deleting the chain.
                None if e.seq == 1
                    && self.first_action.is_some()
                    && is_marked(&e.details, PARKED_UNSIGNED) =>
                {
                    Some(
                        "event 1 was parked without a signature: the chain's beginning cannot be proven (it may have been begun again after its events and head were deleted)"
                            .into(),
                    )
                }
                None if e.seq == 1
                    && self
                        .first_action
                        .is_some_and(|a| !a.contains(&e.action.as_str()))
                    && !suspended_before_onboarding(e) =>
                {
                    Some(
                    "event 1 is not the tenant's onboarding: the chain was begun again after its events and head were deleted"
                        .into(),
                    )
                }
                None if e.seq > 1 && e.prev_expires_at.is_some_and(|x| x > self.now) => Some(
                    format!("events before {} were deleted before they expired", e.seq),
                ),
                None => None,
            }
        };
        if let Some(reason) = problem {
            self.broken = Some((e.seq, reason));
            return false;
        }
        // Taken as event 1 without being a beginning: the suspension before onboarding.
        self.onboarding_next = self.last.is_none()
            && e.seq == 1
            && self
                .first_action
                .is_some_and(|a| !a.contains(&e.action.as_str()));
        self.checked += 1;
        self.last = Some((e.seq, e.hash.clone()));
        true
    }

    /// The verdict against the chain's head and the audit keys (none: not anchored).
    pub fn finish(self, chain: &str, head: Option<&AuditHead>, keys: &[Secret]) -> VerifyReport {
        let checked = self.checked;
        if let Some((at, reason)) = self.broken {
            return VerifyReport::broken(checked, Some(at), reason);
        }
        let Some(h) = head else {
            return match self.last {
                Some((seq, _)) => {
                    VerifyReport::broken(checked, Some(seq), "the chain's head is gone".into())
                }
                None => VerifyReport::valid(0),
            };
        };
        match (&h.signature, keys.is_empty()) {
            (None, false) => {
                return VerifyReport::broken(checked, None, "the chain's head is not signed".into())
            }
            (Some(_), true) => {
                return VerifyReport::broken(
                    checked,
                    None,
                    "no audit key to check the head's signature with".into(),
                )
            }
            (Some(sig), false) if !keys.iter().any(|k| signature_matches(k, chain, h, sig)) => {
                return VerifyReport::broken(
                    checked,
                    None,
                    "the chain's head does not match its signature: rewritten".into(),
                )
            }
            _ => {}
        }
        match self.last {
            // The whole chain, and it is one event: a suspension whose onboarding is not
            // there.
            Some((seq, hash)) if seq == h.seq && hash == h.hash && self.onboarding_next => {
                VerifyReport::broken(checked, Some(1), NOT_FOLLOWED_BY_ONBOARDING.into())
            }
            Some((seq, hash)) if seq == h.seq && hash == h.hash => VerifyReport::valid(checked),
            Some((seq, _)) if seq < h.seq => VerifyReport::broken(
                checked,
                Some(seq + 1),
                format!("events {} to {} are missing", seq + 1, h.seq),
            ),
            Some((seq, _)) => VerifyReport::broken(
                checked,
                Some(seq),
                format!("event {seq} is not the signed head"),
            ),
            // Nothing retained: fine if the newest event has expired, else a wipe.
            None if h.seq > 0 && h.expires_at.is_none_or(|x| x > self.now) => VerifyReport::broken(
                0,
                Some(h.seq),
                format!(
                    "the chain was wiped: its newest event ({}) is gone before it expired",
                    h.seq
                ),
            ),
            None => VerifyReport::valid(0),
        }
    }
}

/// Checks a whole run of events at once (tests; `verify` streams instead).
pub fn verify_chain(
    chain: &str,
    events: &[AuditEvent],
    head: Option<&AuditHead>,
    keys: &[Secret],
    now: i64,
) -> VerifyReport {
    let mut check = ChainCheck::new(now);
    for e in events {
        if !check.feed(e) {
            break;
        }
    }
    check.finish(chain, head, keys)
}

/// Parked events counted at most (a report, not an inventory).
const PARKED_COUNTED: usize = 1000;
/// Events read per page while verifying.
const VERIFY_PAGE: usize = 500;

/// How much of a chain one verification request checks before it answers with a cursor.
#[derive(Clone, Copy, Debug)]
pub struct VerifyBudget {
    /// Events read per page.
    pub page_size: usize,
    /// Pages at most.
    pub pages: usize,
    /// Wall time at most (the HTTP call must answer within API Gateway's 30 s).
    pub time: std::time::Duration,
}

impl VerifyBudget {
    /// One HTTP request's: 400 pages (200,000 events) or 20 s.
    pub const HTTP: Self = Self {
        page_size: VERIFY_PAGE,
        pages: 400,
        time: std::time::Duration::from_secs(20),
    };
}

/// How long a verification's cursor may be used: later, events after it may have expired
/// meanwhile, so the check starts again from the chain's oldest.
const VERIFY_CURSOR_SECS: i64 = 3600;

/// Where an incomplete verification stopped: the last event checked and how many were.
#[derive(Clone, Debug, PartialEq)]
pub struct VerifyCursor {
    seq: u64,
    hash: String,
    checked: usize,
    issued: i64,
}

fn cursor_message(chain: &str, c: &VerifyCursor) -> String {
    serde_json::json!([
        "kirim-audit-verify/1",
        chain,
        c.seq,
        c.hash,
        c.checked,
        c.issued
    ])
    .to_string()
}

impl VerifyCursor {
    /// `seq.hash.checked.issued.mac`, signed with the audit key for the chain.
    fn encode(&self, chain: &str, key: Option<&Secret>) -> String {
        let empty = Secret::new("");
        let mac = mac(key.unwrap_or(&empty), &cursor_message(chain, self)).unwrap_or_default();
        format!(
            "{}.{}.{}.{}.{}",
            self.seq, self.hash, self.checked, self.issued, mac
        )
    }

    /// A cursor this chain's verification issued within the hour, else `InvalidRequest`.
    fn decode(text: &str, chain: &str, keys: &[Secret], now: i64) -> Result<Self, ServiceError> {
        let invalid = || {
            ServiceError::InvalidRequest(
                "invalid cursor: pass next_cursor as it was answered, within the hour".into(),
            )
        };
        let parts: Vec<&str> = text.split('.').collect();
        let [seq, hash, checked, issued, sig] = parts.as_slice() else {
            return Err(invalid());
        };
        let c = Self {
            seq: seq.parse().map_err(|_| invalid())?,
            hash: (*hash).to_owned(),
            checked: checked.parse().map_err(|_| invalid())?,
            issued: issued.parse().map_err(|_| invalid())?,
        };
        let message = cursor_message(chain, &c);
        let empty = [Secret::new("")];
        let keys = if keys.is_empty() { &empty[..] } else { keys };
        if !keys.iter().any(|k| mac_matches(k, &message, sig)) {
            return Err(invalid());
        }
        if !(0..=VERIFY_CURSOR_SECS).contains(&(now - c.issued)) {
            return Err(ServiceError::InvalidRequest(
                "the cursor is over an hour old (events may have expired since): verify again \
                 from the start"
                    .into(),
            ));
        }
        Ok(c)
    }
}

/// Verifies a tenant's (or the platform's) whole retained chain, a page at a time (memory
/// stays bounded whatever the chain's length), within one HTTP request's budget
/// ([`verify_within`]).
pub async fn verify<'a>(
    deps: &Deps,
    chain: impl Into<Chain<'a>>,
    cursor: Option<&str>,
) -> Result<VerifyReport, ServiceError> {
    verify_within(deps, chain, cursor, VerifyBudget::HTTP).await
}

/// [`verify`] within `budget`: a chain longer than it is checked over several requests,
/// each answering `complete: false` and a cursor (signed with the audit key, so a request
/// can only go on where a verification stopped) until the last checks the head. Events
/// beyond the head that was read are left for the next verification: appended since, or in
/// flight (written, the head not moved to them yet: [`record`]). A chain with events and no
/// head is broken (its first event is written with its head, in one transaction).
///
/// A tenant's chain must begin with its onboarding ([`BEGINNINGS`]), and an existing
/// tenant without a chain lost it. The platform chain has neither rule: it begins with
/// whatever call comes first, and a deployment nothing was refused on yet has none.
pub async fn verify_within<'a>(
    deps: &Deps,
    chain: impl Into<Chain<'a>>,
    cursor: Option<&str>,
    budget: VerifyBudget,
) -> Result<VerifyReport, ServiceError> {
    verify_chain_within(deps, chain.into(), cursor, budget).await
}

async fn verify_chain_within(
    deps: &Deps,
    of: Chain<'_>,
    cursor: Option<&str>,
    budget: VerifyBudget,
) -> Result<VerifyReport, ServiceError> {
    let started = std::time::Instant::now();
    let chain = of.name();
    // The tenant, if it exists: its chain begins with its onboarding, and it has one.
    let tenant = of.tenant();
    // Heads as any key that signed one; what may be anchored as what may write now.
    let keys = head_keys(deps).await?;
    let writers = &audit_keys(deps).await?;
    let now = deps.clock.now().timestamp();
    let resume = cursor
        .map(|c| VerifyCursor::decode(c, &chain, &keys, now))
        .transpose()?;
    let head = deps.audit.head(&chain).await?;
    let (mut check, mut after) = match &resume {
        Some(c) => (
            ChainCheck::resumed(now, c.checked, c.seq, c.hash.clone()),
            Some(c.seq),
        ),
        // A tenant's chain begins with its onboarding (a chain is begun only for an
        // existing tenant: [`crate::http::access`]).
        None if exists(deps, tenant.as_ref()).await? => {
            (ChainCheck::new(now).beginning_with(BEGINNINGS), None)
        }
        None => (ChainCheck::new(now), None),
    };
    let mut pages = 0;
    // The event right after the head read, if any: in flight, or appended since.
    let mut beyond: Option<AuditEvent> = None;
    'pages: loop {
        let page_size = budget.page_size.max(1);
        let page = deps.audit.ascending(&chain, after, page_size).await?;
        pages += 1;
        let full = page.len() == page_size;
        // Events and no head: a chain's first event is written with its head in one
        // transaction, so this is never one in flight (the check ends "the head is gone").
        for e in &page {
            if let Some(h) = head.as_ref().filter(|h| e.seq > h.seq) {
                beyond = Some(e.clone()).filter(|e| e.seq == h.seq + 1);
                break 'pages;
            }
            // Resumed where an earlier request stopped, and the events right after it have
            // expired since (the oldest end of a busy chain): the chain now starts here,
            // checked as a first event is (its predecessor's expiry), not as a gap.
            let at_resume = |(seq, _): &(u64, String)| {
                resume.as_ref().is_some_and(|c| c.seq == *seq) && e.seq > seq + 1
            };
            if check.last.as_ref().is_some_and(at_resume) {
                check.last = None;
            }
            if !check.feed(e) {
                break 'pages;
            }
            after = Some(e.seq);
        }
        if !full {
            break;
        }
        // More to read: beyond this request's budget, the next request goes on from here
        // (not between a suspension as event 1 and the onboarding it needs next: a
        // resumed check does not know it).
        if (pages >= budget.pages || started.elapsed() >= budget.time) && !check.onboarding_next {
            if let Some((seq, hash)) = check.last.clone() {
                let c = VerifyCursor {
                    seq,
                    hash,
                    checked: check.checked,
                    issued: now,
                };
                let mut report = VerifyReport::valid(check.checked);
                report.complete = false;
                report.next_cursor = Some(c.encode(&chain, keys.first()));
                return Ok(report);
            }
        }
    }
    // No head when it was read, yet events: the chain's first append (its event and head,
    // one transaction) may have landed between the two reads. Then it is checked again from
    // the start, with the head; only a chain still without one is "the head is gone".
    if head.is_none() && resume.is_none() && check.last.is_some() {
        if let Some(now_head) = deps.audit.head(&chain).await? {
            tracing::debug!(
                seq = now_head.seq,
                "the chain began while it was verified; again"
            );
            return Box::pin(verify_chain_within(deps, of, None, budget)).await;
        }
    }
    let parked = deps.audit.parked(&chain, PARKED_COUNTED).await?;
    // A suspension as event 1 whose onboarding is not linked yet: in flight right after
    // it, or parked (its append failed), signed, first in the outbox.
    if check.onboarding_next {
        let in_flight = beyond.as_ref().is_some_and(is_onboarding);
        let waiting = parked.first().is_some_and(|p| {
            p.action == ONBOARDING && matches!(parked_trust(p, writers), ParkedTrust::Signed)
        });
        check.onboarding_next = !(in_flight || waiting);
    }
    let mut report = check.finish(&chain, head.as_ref(), &keys);
    // A legitimate event beyond the head is always the next link, signed: one that is not
    // was written by someone without the audit key (and jams the chain: appends park after
    // it). Unless the head has moved past it since (anchored meanwhile, e.g. by an older
    // version of this code, whose events carry no signature of their own).
    if let Some(e) =
        beyond.filter(|e| report.valid && !may_anchor(&chain, e, head.as_ref(), writers))
    {
        let now = deps.audit.head(&chain).await?;
        if now.is_none_or(|h| h.seq < e.seq) {
            report = VerifyReport::broken(
                report.checked,
                Some(e.seq),
                format!(
                    "event {} beyond the head does not verify: not the next link, or not written with the audit key",
                    e.seq
                ),
            );
        }
    }
    // Waiting events are not a break (nothing in the chain is wrong), but they are not in
    // the chain either: say how many and how long the oldest has waited.
    report.parked = parked.len();
    report.oldest_parked_age_seconds = parked
        .first()
        .map(|p| (deps.clock.now() - p.at).num_seconds().max(0));
    // Events waiting begin a chain only if the oldest is the tenant's onboarding, parked
    // with a valid signature (its onboarding's event could not be linked then): anything
    // else waiting in the outbox of a chain that is gone may have been put there after it
    // was deleted, and would become its event 1 at the next call.
    let waiting_beginning = parked.first().is_some_and(|p| {
        BEGINNINGS.contains(&p.action.as_str())
            && matches!(parked_trust(p, writers), ParkedTrust::Signed)
    });
    if head.is_none() && report.valid && !waiting_beginning {
        // A tenant's onboarding is audited on its chain, and an open tenant's head has no
        // expiry (only a close-out gives it one, and a closed tenant verifies nothing):
        // an existing tenant without a chain lost it, however old the tenant.
        if exists(deps, tenant.as_ref()).await? {
            let reason = if parked.is_empty() {
                "the tenant's audit chain is missing"
            } else {
                "the tenant's audit chain is missing, and what waits in its outbox does not begin it (not its onboarding, signed with the audit key)"
            };
            return Ok(VerifyReport::broken(0, None, reason.into()));
        }
    }
    Ok(report)
}

/// Whether `tenant` is a tenant that exists (`None`, the platform: no).
async fn exists(deps: &Deps, tenant: Option<&TenantId>) -> Result<bool, ServiceError> {
    match tenant {
        Some(t) => Ok(deps.tenants.get_tenant(t).await?.is_some()),
        None => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_000;

    fn key() -> Secret {
        Secret::new("audit-key")
    }

    /// `n` events, the first `n_expired` already expired at `NOW`.
    fn chain(n: u64) -> Vec<AuditEvent> {
        let mut out: Vec<AuditEvent> = Vec::new();
        for seq in 1..=n {
            let mut e = AuditEvent {
                chain: "t".into(),
                seq,
                id: format!("id{seq}"),
                at: Utc::now(),
                actor_type: "api_key".into(),
                actor_id: "k1".into(),
                action: "POST /v1/messages".into(),
                ip: Some("203.0.113.9".into()),
                outcome: AuditOutcome::Success,
                details: r#"{"message_id":"m"}"#.into(),
                prev_hash: out.last().map_or(GENESIS.to_owned(), |p| p.hash.clone()),
                hash: String::new(),
                // Event `seq` expires at `NOW - 10 + seq * 5`: the first two have expired.
                expires_at: Some(NOW - 10 + seq as i64 * 5),
                prev_expires_at: out.last().and_then(|p| p.expires_at),
                signature: None,
            };
            e.hash = hash_of(&e);
            e.signature = event_signature(&key(), &e);
            out.push(e);
        }
        out
    }

    fn head(e: &AuditEvent) -> AuditHead {
        AuditHead {
            seq: e.seq,
            hash: e.hash.clone(),
            expires_at: e.expires_at,
            signature: checkpoint_signature(&key(), "t", e.seq, &e.hash, e.expires_at),
            ttl: None,
        }
    }

    fn check(events: &[AuditEvent], h: &AuditHead) -> VerifyReport {
        verify_chain("t", events, Some(h), &[key()], NOW)
    }

    /// A tenant's chain begins with its onboarding, or the operator's key for a tenant whose
    /// onboarding answered an error (README's recovery); anything else as event 1 is a chain
    /// begun again after it was deleted whole.
    #[test]
    fn a_tenant_chain_begins_with_its_onboarding_or_the_recovery_key() {
        let first = |action: &str| {
            let mut e = chain(1).remove(0);
            e.expires_at = Some(NOW + 3600);
            e.action = action.into();
            e.hash = hash_of(&e);
            e
        };
        for (action, valid) in [
            (ONBOARDING, true),
            ("POST /v1/platform/tenants/{id}/api-keys", true),
            ("POST /v1/messages", false),
            ("POST /v1/platform/tenants/{id}/credits", false),
        ] {
            let mut check = ChainCheck::new(NOW).beginning_with(BEGINNINGS);
            assert_eq!(check.feed(&first(action)), valid, "{action}");
        }
    }

    /// A tenant's chain begun by a suspension on Meta's word (an `account_update` while its
    /// onboarding's request was still syncing templates, before its event was recorded)
    /// verifies when the onboarding follows as event 2; followed by anything else, or by
    /// nothing, it is a chain begun again (a wipe's next event may be such a suspension,
    /// but never the onboarding, which is written once, when the tenant is made).
    #[test]
    fn a_tenant_chain_may_begin_with_metas_suspension_only_when_its_onboarding_follows() {
        // Two events, `first` and `second`, linked, live at `NOW`.
        let pair = |first: (&str, &str), second: Option<(&str, &str, &str)>| {
            let mut events = chain(if second.is_some() { 2 } else { 1 });
            for (i, e) in events.iter_mut().enumerate() {
                let (actor, action, details) = match i {
                    0 => (first.0, first.1, "{}"),
                    _ => second.unwrap(),
                };
                e.actor_type = actor.into();
                e.action = action.into();
                e.details = details.into();
                e.expires_at = Some(NOW + 3600);
            }
            for i in 0..events.len() {
                if i > 0 {
                    events[i].prev_hash = events[i - 1].hash.clone();
                    events[i].prev_expires_at = events[i - 1].expires_at;
                }
                events[i].hash = hash_of(&events[i]);
            }
            events
        };
        let verdict = |events: &[AuditEvent]| {
            let mut check = ChainCheck::new(NOW).beginning_with(BEGINNINGS);
            for e in events {
                if !check.feed(e) {
                    break;
                }
            }
            check.finish("t", Some(&head(events.last().unwrap())), &[key()])
        };
        let suspension = ("system", "tenant.suspend");
        let onboarding = ("operator", ONBOARDING, r#"{"status":201}"#);
        let v = verdict(&pair(suspension, Some(onboarding)));
        assert!(v.valid && v.checked == 2, "{v:?}");
        for (second, why) in [
            (
                Some(("api_key", "POST /v1/messages", "{}")),
                "another call next",
            ),
            (
                Some(("operator", ONBOARDING, r#"{"parked_unsigned":true}"#)),
                "an unsigned onboarding next",
            ),
            (None, "nothing next"),
        ] {
            let v = verdict(&pair(suspension, second));
            assert_eq!(
                (v.valid, v.broken_at),
                (false, Some(second.map_or(1, |_| 2))),
                "{why}: {v:?}"
            );
            assert!(
                v.reason
                    .unwrap()
                    .contains("not followed by the tenant's onboarding"),
                "{why}"
            );
        }
        // Only the system's suspension: the operator knows the tenant's id only from the
        // onboarding's answer, by when its event is recorded.
        let v = verdict(&pair(("operator", "tenant.suspend"), Some(onboarding)));
        assert_eq!((v.valid, v.broken_at), (false, Some(1)), "{v:?}");
    }

    /// An onboarding parked without a signature proves nothing as event 1 (anyone who can
    /// write the table can put one in the outbox after deleting the chain); in the middle
    /// of a chain, or on the platform chain, it stays a marked event.
    #[test]
    fn an_unsigned_parked_event_is_no_tenant_chains_beginning() {
        let mut e = chain(1).remove(0);
        e.expires_at = Some(NOW + 3600);
        e.action = ONBOARDING.into();
        e.details = marked(&e.details, PARKED_UNSIGNED);
        e.hash = hash_of(&e);
        let mut check = ChainCheck::new(NOW).beginning_with(BEGINNINGS);
        assert!(!check.feed(&e));
        let mut platform = ChainCheck::new(NOW);
        assert!(platform.feed(&e));
    }

    /// A stored sequence number at the edge (a rewritten item) is a break reported, not an
    /// overflow.
    #[test]
    fn a_rewritten_sequence_number_is_reported_not_overflowed() {
        let c = chain(2);
        let mut check = ChainCheck::new(NOW);
        assert!(check.feed(&c[0]));
        let mut zero = c[1].clone();
        zero.seq = 0;
        zero.hash = hash_of(&zero);
        assert!(!check.feed(&zero));
        let mut last = ChainCheck::resumed(NOW, 0, u64::MAX, c[0].hash.clone());
        assert!(!last.feed(&c[1]));
    }

    #[test]
    fn an_untouched_chain_verifies() {
        let c = chain(5);
        let r = check(&c, &head(&c[4]));
        assert_eq!((r.valid, r.checked, r.reason), (true, 5, None));
    }

    #[test]
    fn an_edited_field_breaks_the_chain_at_that_event() {
        let mut c = chain(5);
        c[2].outcome = AuditOutcome::Denied;
        let r = check(&c, &head(&c[4]));
        assert_eq!((r.valid, r.broken_at), (false, Some(3)));
        assert_eq!(r.reason.as_deref(), Some("event 3 does not match its hash"));
    }

    #[test]
    fn an_edit_with_a_recomputed_hash_still_breaks_the_next_link() {
        let mut c = chain(5);
        c[2].details = r#"{"message_id":"other"}"#.into();
        c[2].hash = hash_of(&c[2]);
        let r = check(&c, &head(&c[4]));
        assert_eq!((r.valid, r.broken_at), (false, Some(4)));
    }

    #[test]
    fn a_deleted_event_in_the_middle_or_at_the_end_is_detected() {
        let c = chain(5);
        let h = head(&c[4]);
        let mut middle = c.clone();
        middle.remove(2);
        assert!(!check(&middle, &h).valid);
        let newest_gone = check(&c[..4], &h);
        assert_eq!(
            newest_gone.reason.as_deref(),
            Some("events 5 to 5 are missing")
        );
    }

    #[test]
    fn a_chain_whose_oldest_events_expired_still_verifies_from_the_oldest_retained() {
        let c = chain(6);
        // Events 1 and 2 expired at NOW: a chain from 3 on is whole.
        let r = check(&c[2..], &head(&c[5]));
        assert_eq!((r.valid, r.checked), (true, 4));
    }

    #[test]
    fn oldest_events_deleted_before_they_expired_are_detected() {
        let c = chain(6);
        // Event 3 expires after NOW: a chain that starts at 4 lost it early.
        let r = check(&c[3..], &head(&c[5]));
        assert!(!r.valid);
        assert_eq!(
            r.reason.as_deref(),
            Some("events before 4 were deleted before they expired")
        );
    }

    #[test]
    fn a_wiped_chain_is_told_from_one_that_expired() {
        let c = chain(6);
        let r = check(&[], &head(&c[5]));
        assert!(!r.valid);
        assert!(r.reason.unwrap().contains("wiped"));
        // A head whose newest event expired, with nothing left: all expired by design.
        let c = chain(1);
        assert!(check(&[], &head(&c[0])).valid);
    }

    #[test]
    fn a_chain_rewritten_with_recomputed_hashes_fails_on_the_signed_head() {
        let mut c = chain(4);
        c[1].outcome = AuditOutcome::Denied;
        for i in 1..4 {
            c[i].prev_hash = c[i - 1].hash.clone();
            c[i].hash = hash_of(&c[i]);
        }
        let mut forged = head(&c[3]);
        forged.signature = checkpoint_signature(
            &Secret::new("a guess"),
            "t",
            forged.seq,
            &forged.hash,
            forged.expires_at,
        );
        let r = check(&c, &forged);
        assert!(!r.valid);
        assert!(r.reason.unwrap().contains("does not match its signature"));
        let mut unsigned = head(&c[3]);
        unsigned.signature = None;
        assert_eq!(
            check(&c, &unsigned).reason.as_deref(),
            Some("the chain's head is not signed")
        );
    }

    #[test]
    fn a_signature_covers_the_chain_so_a_head_cannot_move_between_chains() {
        let c = chain(2);
        let h = head(&c[1]);
        assert!(!verify_chain("other", &c, Some(&h), &[key()], NOW).valid);
    }

    #[test]
    fn events_written_before_prev_expires_at_keep_their_hashes() {
        let mut e = chain(1).remove(0);
        let with = hash_of(&e);
        e.prev_expires_at = Some(5);
        assert_ne!(hash_of(&e), with, "the field is hashed when present");
        e.prev_expires_at = None;
        assert_eq!(hash_of(&e), with);
    }

    #[test]
    fn an_events_own_signature_is_never_a_valid_checkpoint() {
        // Copied onto the head, an event's signature would let anyone who can write the
        // table move the head back to that event and delete the ones after it.
        let c = chain(3);
        let mut rolled_back = head(&c[1]);
        rolled_back.signature = c[1].signature.clone();
        let r = check(&c[..2], &rolled_back);
        assert!(!r.valid);
        assert_eq!(
            r.reason.as_deref(),
            Some("the chain's head does not match its signature: rewritten")
        );
        assert!(
            check(&c[..2], &head(&c[1])).valid,
            "the real checkpoint does"
        );
    }

    #[test]
    fn only_the_signed_next_link_may_be_anchored_beyond_a_head() {
        let c = chain(3);
        let h = head(&c[1]);
        let keys = [key()];
        assert!(may_anchor("t", &c[2], Some(&h), &keys));
        assert!(
            may_anchor("t", &c[2], Some(&h), &[]),
            "no key configured: nothing is signed"
        );
        let mut unsigned = c[2].clone();
        unsigned.signature = None;
        let mut other_key = c[2].clone();
        other_key.signature = event_signature(&Secret::new("a guess"), &other_key);
        let mut checkpoint_signed = c[2].clone();
        checkpoint_signed.signature = head(&c[2]).signature;
        let mut rehashed = c[2].clone();
        rehashed.action = "DELETE /v1/everything".into();
        rehashed.hash = hash_of(&rehashed);
        let mut edited = c[2].clone();
        edited.action = "DELETE /v1/everything".into();
        let mut unlinked = c[2].clone();
        unlinked.prev_hash = c[0].hash.clone();
        unlinked.hash = hash_of(&unlinked);
        unlinked.signature = event_signature(&key(), &unlinked);
        for (what, e) in [
            ("unsigned", &unsigned),
            ("signed with another key", &other_key),
            ("signed as a checkpoint", &checkpoint_signed),
            ("rehashed after its signature", &rehashed),
            ("edited", &edited),
            ("linked to another event", &unlinked),
        ] {
            assert!(!may_anchor("t", e, Some(&h), &keys), "{what}");
        }
        assert!(
            !may_anchor("t", &c[2], Some(&head(&c[0])), &keys),
            "not next"
        );
        assert!(
            !may_anchor("other", &c[2], Some(&h), &keys),
            "another chain"
        );
        assert!(
            may_anchor("t", &c[0], None, &keys),
            "the first, with no head"
        );
    }
}
