//! `BroadcastStore` on the memory store, under the one lock. The uploaded list is kept
//! apart from its broadcast, with the same 7-day backstop expiry as on DynamoDB.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{message_key, MemoryStore};
use crate::domain::{MessageId, MessageRecord, MessageStatus, PhoneNumber, StatusEvent, TenantId};
use crate::ports::{
    Broadcast, BroadcastClaim, BroadcastControl, BroadcastOnce, BroadcastStatus, BroadcastStore,
    BroadcastTally, CancelledRecipients, FanoutHop, LedgerEntry, RequestKeyRecord, UnqueuedClose,
    ALREADY_RETRIED,
};
use crate::store_error::StoreError;

impl MemoryStore {
    /// The broadcast, its list, its debit and (with a key) the key's record, under the
    /// one lock, as DynamoDB writes them in one transaction.
    fn write_broadcast(
        &self,
        broadcast: &Broadcast,
        recipients: &[PhoneNumber],
        debit: &LedgerEntry,
        request_key: Option<&RequestKeyRecord>,
    ) -> Result<BroadcastOnce, StoreError> {
        let mut s = self.lock()?;
        let at = request_key.map(|k| (k.tenant_id.clone(), format!("BCAST#{}", k.key_hash)));
        if let Some(earlier) = at.as_ref().and_then(|at| s.request_keys.get(at)) {
            if self.live(earlier.expires_at) {
                return Ok(BroadcastOnce::Earlier(earlier.clone()));
            }
        }
        let key = (broadcast.tenant_id.clone(), broadcast.id.clone());
        if s.broadcasts.contains_key(&key) {
            return Err(StoreError::Conflict("broadcast exists".into()));
        }
        // A retry is written only while the broadcast it retries was retried by none.
        let original = broadcast
            .retry_of
            .as_ref()
            .map(|o| (broadcast.tenant_id.clone(), o.clone()));
        if let Some(o) = &original {
            if s.broadcasts.get(o).is_none_or(|b| b.retried_by.is_some()) {
                return Err(StoreError::Conflict(ALREADY_RETRIED.into()));
            }
        }
        let tenant = s
            .tenants
            .get_mut(&broadcast.tenant_id)
            .ok_or(StoreError::NotFound)?;
        super::debit_tenant(tenant, -debit.amount)?;
        if let Some(b) = original.and_then(|o| s.broadcasts.get_mut(&o)) {
            b.retried_by = Some(broadcast.id.clone());
        }
        s.ledger.push(debit.clone());
        let list_expires = broadcast.list_expires_at();
        s.broadcast_lists
            .insert(key.clone(), (recipients.to_vec(), list_expires));
        s.broadcasts.insert(key, broadcast.clone());
        if let (Some(at), Some(k)) = (at, request_key) {
            s.request_keys.insert(at, k.clone());
        }
        Ok(BroadcastOnce::Created)
    }
}

#[async_trait]
impl BroadcastStore for MemoryStore {
    async fn create_broadcast(
        &self,
        broadcast: &Broadcast,
        recipients: &[PhoneNumber],
        debit: &LedgerEntry,
    ) -> Result<(), StoreError> {
        self.write_broadcast(broadcast, recipients, debit, None)
            .map(|_| ())
    }

    async fn create_broadcast_once(
        &self,
        broadcast: &Broadcast,
        recipients: &[PhoneNumber],
        debit: &LedgerEntry,
        key: &RequestKeyRecord,
    ) -> Result<BroadcastOnce, StoreError> {
        self.write_broadcast(broadcast, recipients, debit, Some(key))
    }

    async fn broadcast_key(
        &self,
        tenant: &TenantId,
        key_hash: &str,
    ) -> Result<Option<RequestKeyRecord>, StoreError> {
        let s = self.lock()?;
        Ok(s.request_keys
            .get(&(tenant.clone(), format!("BCAST#{key_hash}")))
            .filter(|r| self.live(r.expires_at))
            .cloned())
    }

    async fn get_broadcast(
        &self,
        tenant: &TenantId,
        id: &str,
    ) -> Result<Option<Broadcast>, StoreError> {
        let s = self.lock()?;
        Ok(s.broadcasts
            .get(&(tenant.clone(), id.to_owned()))
            .filter(|b| self.live(b.expires_at))
            .cloned())
    }

    async fn broadcast_recipients(
        &self,
        tenant: &TenantId,
        id: &str,
    ) -> Result<Option<Vec<PhoneNumber>>, StoreError> {
        let s = self.lock()?;
        Ok(s.broadcast_lists
            .get(&(tenant.clone(), id.to_owned()))
            .filter(|(_, expires)| self.live(Some(*expires)))
            .map(|(phones, _)| phones.clone()))
    }

    async fn broadcast_progress(
        &self,
        tenant: &TenantId,
        id: &str,
        enqueued: usize,
        done: bool,
        hop: FanoutHop<'_>,
    ) -> Result<bool, StoreError> {
        let mut s = self.lock()?;
        let key = (tenant.clone(), id.to_owned());
        // Gone (expired under a running fan-out): nothing to record, as on DynamoDB, whose
        // condition refuses it. Nor when another delivery got further, or another run of
        // the chain moved its token on (DynamoDB's condition, the same).
        let Some(b) = s.broadcasts.get_mut(&key) else {
            return Ok(false);
        };
        let token = b.fanout_token.as_deref();
        let in_chain = token == hop.expected || (hop.next.is_some() && token == hop.next);
        if b.enqueued > enqueued || !in_chain {
            return Ok(false);
        }
        b.enqueued = enqueued;
        if let Some(next) = hop.next {
            b.fanout_token = Some(next.to_owned());
        }
        if done {
            b.status = crate::ports::BroadcastStatus::Enqueued;
            s.broadcast_lists.remove(&key);
        }
        Ok(true)
    }

    async fn close_broadcast_unsent(
        &self,
        tenant: &TenantId,
        id: &str,
        enqueued: usize,
        unsent: usize,
        refund: Option<&LedgerEntry>,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        // One lock for the status, the balance and the entry, as one transaction.
        let mut s = self.lock()?;
        let key = (tenant.clone(), id.to_owned());
        let open = s
            .broadcasts
            .get(&key)
            .is_some_and(|b| b.status == BroadcastStatus::FanningOut && b.enqueued == enqueued);
        if !open {
            return Ok(false);
        }
        let Some(refund) = refund else {
            // Nothing refunded: only its status, as on DynamoDB.
            if let Some(b) = s.broadcasts.get_mut(&key) {
                b.status = BroadcastStatus::Enqueued;
            }
            return Ok(true);
        };
        // As DynamoDB's transaction: the refund's tenant gone, nothing is written.
        let t = s
            .tenants
            .get_mut(&refund.tenant_id)
            .ok_or(StoreError::NotFound)?;
        t.credits = t.credits.saturating_add(refund.amount);
        s.ledger.push(refund.clone());
        if let Some(b) = s.broadcasts.get_mut(&key) {
            b.status = BroadcastStatus::Enqueued;
            b.refunded_unsent = unsent;
            b.ended_at = Some(at);
        }
        Ok(true)
    }

    async fn record_unqueued(
        &self,
        tenant: &TenantId,
        id: &str,
        from: usize,
        to: usize,
        messages: &[MessageRecord],
        refund: Option<&LedgerEntry>,
        closing: UnqueuedClose,
    ) -> Result<CancelledRecipients, StoreError> {
        // One lock for the broadcast, the messages, the balance and the entry, as one
        // transaction.
        let mut s = self.lock()?;
        let key = (tenant.clone(), id.to_owned());
        let open = s.broadcasts.get(&key).is_some_and(|b| {
            b.status == BroadcastStatus::FanningOut
                && b.control
                    == match closing {
                        UnqueuedClose::Cancelled => Some(BroadcastControl::Cancelled),
                        UnqueuedClose::Failed => None,
                    }
                && b.enqueued == from
        });
        if !open {
            return Ok(CancelledRecipients::Moved);
        }
        let recorded: Vec<usize> = messages
            .iter()
            .enumerate()
            .filter(|(_, m)| {
                s.messages
                    .contains_key(&(m.tenant_id.clone(), m.id.clone()))
            })
            .map(|(i, _)| i)
            .collect();
        if !recorded.is_empty() {
            return Ok(CancelledRecipients::Recorded(recorded));
        }
        if let Some(refund) = refund {
            // As DynamoDB's transaction: the refund's tenant gone, nothing is written.
            let t = s
                .tenants
                .get_mut(&refund.tenant_id)
                .ok_or(StoreError::NotFound)?;
            t.credits = t.credits.saturating_add(refund.amount);
            s.ledger.push(refund.clone());
        }
        for m in messages {
            s.messages.insert(
                (m.tenant_id.clone(), m.id.clone()),
                std::sync::Arc::new(m.clone()),
            );
        }
        if let Some(b) = s.broadcasts.get_mut(&key) {
            b.enqueued = to;
            b.closed_unqueued = b.closed_unqueued.saturating_add(messages.len());
        }
        Ok(CancelledRecipients::Written)
    }

    async fn start_broadcast(
        &self,
        tenant: &TenantId,
        id: &str,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let mut s = self.lock()?;
        let Some(b) = s.broadcasts.get_mut(&(tenant.clone(), id.to_owned())) else {
            return Ok(false);
        };
        if b.status != BroadcastStatus::Scheduled {
            return Ok(false);
        }
        b.status = BroadcastStatus::FanningOut;
        b.started_at = Some(at);
        Ok(true)
    }

    async fn cancel_scheduled_broadcast(
        &self,
        tenant: &TenantId,
        id: &str,
        refund: &LedgerEntry,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let mut s = self.lock()?;
        let key = (tenant.clone(), id.to_owned());
        let Some(b) = s
            .broadcasts
            .get_mut(&key)
            .filter(|b| self.live(b.expires_at))
        else {
            return Ok(false);
        };
        if b.status != BroadcastStatus::Scheduled {
            return Ok(false);
        }
        // As DynamoDB's transaction: the refund's tenant gone, nothing is written (looked
        // up before the broadcast changes).
        if !s.tenants.contains_key(&refund.tenant_id) {
            return Err(StoreError::NotFound);
        }
        if let Some(b) = s.broadcasts.get_mut(&key) {
            b.status = BroadcastStatus::Cancelled;
            b.ended_at = Some(at);
            b.refunded_unsent = b.accepted;
        }
        if let Some(t) = s.tenants.get_mut(&refund.tenant_id) {
            t.credits = t.credits.saturating_add(refund.amount);
        }
        s.ledger.push(refund.clone());
        // As on DynamoDB: the list is left to its backstop TTL (the export lists it).
        Ok(true)
    }

    async fn set_broadcast_control(
        &self,
        tenant: &TenantId,
        id: &str,
        from: &[Option<BroadcastControl>],
        to: Option<BroadcastControl>,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let mut s = self.lock()?;
        let Some(b) = s
            .broadcasts
            .get_mut(&(tenant.clone(), id.to_owned()))
            .filter(|b| self.live(b.expires_at))
        else {
            return Ok(false);
        };
        if b.status == BroadcastStatus::Cancelled || !from.contains(&b.control) {
            return Ok(false);
        }
        b.control = to;
        b.control_at = Some(at);
        if to == Some(BroadcastControl::Cancelled) {
            b.ended_at = Some(at);
        }
        Ok(true)
    }

    async fn claim_broadcast_message(
        &self,
        tenant: &TenantId,
        message: &MessageId,
        broadcast: &str,
        claim: &str,
        at: DateTime<Utc>,
    ) -> Result<BroadcastClaim, StoreError> {
        let mut s = self.lock()?;
        let now = self.clock.now().timestamp();
        // As DynamoDB's: the message's status first (a message no longer `accepted` is
        // refused whatever its broadcast's hold), then the hold.
        let claimable = s
            .messages
            .get(message_key(&(tenant, message)))
            .filter(|m| m.expires_at.is_none_or(|t| t > now))
            .is_some_and(|m| m.status == MessageStatus::Accepted);
        if !claimable {
            return Ok(BroadcastClaim::Refused);
        }
        if let Some(hold) = s
            .broadcasts
            .get(&(tenant.clone(), broadcast.to_owned()))
            .and_then(|b| b.control)
        {
            return Ok(BroadcastClaim::Held(hold));
        }
        let Some(m) = s.messages.get_mut(message_key(&(tenant, message))) else {
            return Ok(BroadcastClaim::Refused);
        };
        let m = std::sync::Arc::make_mut(m);
        m.status = MessageStatus::Sending;
        m.updated_at = at;
        m.attempts += 1;
        m.claim = Some(claim.to_owned());
        m.events.push(StatusEvent {
            status: MessageStatus::Sending,
            at,
        });
        Ok(BroadcastClaim::Claimed(Box::new(m.clone())))
    }

    async fn list_broadcasts(
        &self,
        tenant: &TenantId,
        limit: usize,
        before: Option<&str>,
    ) -> Result<(Vec<Broadcast>, Option<String>), StoreError> {
        let s = self.lock()?;
        let mut all: Vec<&Broadcast> = s
            .broadcasts
            .iter()
            .filter(|((t, id), b)| {
                t == tenant && self.live(b.expires_at) && before.is_none_or(|c| id.as_str() < c)
            })
            .map(|(_, b)| b)
            .collect();
        all.sort_by(|a, b| b.id.cmp(&a.id));
        let page: Vec<Broadcast> = all
            .iter()
            .take(limit.max(1))
            .map(|b| (*b).clone())
            .collect();
        let next = if all.len() > page.len() {
            page.last().map(|b| b.id.clone())
        } else {
            None
        };
        Ok((page, next))
    }

    async fn broadcast_messages_consistent(
        &self,
        broadcast: &Broadcast,
        limit: usize,
        after: Option<&MessageId>,
    ) -> Result<(Vec<MessageRecord>, Option<MessageId>), StoreError> {
        // Memory is never behind.
        self.broadcast_messages(broadcast, limit, after).await
    }

    async fn broadcast_messages(
        &self,
        broadcast: &Broadcast,
        limit: usize,
        after: Option<&MessageId>,
    ) -> Result<(Vec<MessageRecord>, Option<MessageId>), StoreError> {
        let s = self.lock()?;
        let mut matching = s
            .messages
            .iter()
            .filter(|((t, id), m)| {
                t == &broadcast.tenant_id
                    && after.is_none_or(|a| id > a)
                    && m.broadcast_id.as_deref() == Some(broadcast.id.as_str())
                    && self.live(m.expires_at)
            })
            .map(|(_, m)| m);
        let page: Vec<MessageRecord> = matching
            .by_ref()
            .take(limit.max(1))
            .map(|m| MessageRecord::clone(m))
            .collect();
        let next = if matching.next().is_some() {
            page.last().map(|m| m.id.clone())
        } else {
            None
        };
        Ok((page, next))
    }

    async fn insert_broadcast_message(&self, record: &MessageRecord) -> Result<bool, StoreError> {
        let mut s = self.lock()?;
        let key = (record.tenant_id.clone(), record.id.clone());
        if s.messages.contains_key(&key) {
            return Ok(false);
        }
        s.messages.insert(key, std::sync::Arc::new(record.clone()));
        Ok(true)
    }

    async fn broadcast_tally(&self, broadcast: &Broadcast) -> Result<BroadcastTally, StoreError> {
        let s = self.lock()?;
        let mut tally = BroadcastTally::default();
        for m in s.messages.values().filter(|m| {
            m.tenant_id == broadcast.tenant_id
                && m.broadcast_id.as_deref() == Some(broadcast.id.as_str())
                && self.live(m.expires_at)
        }) {
            let settled = m.settled_at.or_else(|| {
                crate::ports::settled_at(m.events.iter().map(|e| (e.status.as_str(), e.at)))
            });
            tally.add(m.status.as_str(), m.error.as_ref(), settled);
        }
        Ok(tally)
    }
}
