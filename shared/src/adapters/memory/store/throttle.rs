//! `Throughput` and `SendingControl` on the memory store: the same rules as DynamoDB,
//! under the one lock.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{message_key, MemoryStore};
use crate::domain::{
    CarriedSlot, MessageError, MessageId, MessageStatus, StatusEvent, TenantId, SEND_SLOT_RETENTION,
};
use crate::ports::{
    micros_to_time, slot_interval_micros, SendingControl, Tenant, Throughput, Transition,
};
use crate::store_error::StoreError;

#[async_trait]
impl Throughput for MemoryStore {
    async fn reserve_slots(
        &self,
        key: &str,
        per_sec: u32,
        now: DateTime<Utc>,
        max_wait: Duration,
        count: u32,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        let now_us = now.timestamp_micros();
        let limit = now_us.saturating_add(i64::try_from(max_wait.as_micros()).unwrap_or(i64::MAX));
        let interval = slot_interval_micros(per_sec);
        let count = i64::from(count.max(1));
        let mut s = self.lock()?;
        let next = s.rate.get(key).map_or(now_us, |(tat, _)| *tat).max(now_us);
        if next.saturating_add((count - 1).saturating_mul(interval)) > limit {
            return Ok(None);
        }
        let expires = now.timestamp() + SEND_SLOT_RETENTION.as_secs() as i64;
        s.rate.insert(
            key.to_owned(),
            (next.saturating_add(count.saturating_mul(interval)), expires),
        );
        Ok(Some(micros_to_time(next)))
    }

    async fn set_throughput(&self, tenant: &TenantId, per_sec: u32) -> Result<Tenant, StoreError> {
        let mut s = self.lock()?;
        // Closed is final (as DynamoDB's condition).
        self.refuse_if_gone(&s, tenant)?;
        let t = super::open_tenant(&mut s.tenants, tenant)?;
        t.throughput_per_sec = Some(per_sec);
        Ok(t.clone())
    }
}

#[async_trait]
impl SendingControl for MemoryStore {
    async fn release_unattempted(
        &self,
        tenant: &TenantId,
        id: &MessageId,
        claimed_at: DateTime<Utc>,
        events: usize,
        at: DateTime<Utc>,
        slot: Option<CarriedSlot>,
    ) -> Result<Transition, StoreError> {
        let mut s = self.lock()?;
        let Some(m) = s.messages.get_mut(message_key(&(tenant, id))) else {
            return Ok(Transition::Refused);
        };
        if m.status != MessageStatus::Sending
            || m.attempts == 0
            || m.updated_at != claimed_at
            || m.events.len() != events
        {
            return Ok(Transition::Refused);
        }
        let m = std::sync::Arc::make_mut(m);
        // The claim's `sending` event, the last.
        m.events.pop();
        m.status = MessageStatus::Accepted;
        m.attempts = m.attempts.saturating_sub(1);
        m.updated_at = at;
        if slot.is_some() {
            m.carried_slot = slot;
        }
        Ok(Transition::Applied(Box::new(m.clone())))
    }

    async fn expire_sending(
        &self,
        tenant: &TenantId,
        id: &MessageId,
        claimed_at: DateTime<Utc>,
        error: &MessageError,
        at: DateTime<Utc>,
    ) -> Result<Transition, StoreError> {
        let mut s = self.lock()?;
        let Some(m) = s.messages.get_mut(message_key(&(tenant, id))) else {
            return Ok(Transition::Refused);
        };
        if crate::ports::expired_by(m, error, at) {
            return Ok(Transition::Applied(Box::new((**m).clone())));
        }
        if m.status != MessageStatus::Sending || m.updated_at != claimed_at {
            return Ok(Transition::Refused);
        }
        let m = std::sync::Arc::make_mut(m);
        m.status = MessageStatus::Failed;
        m.error = Some(error.clone());
        m.scrub_error();
        m.updated_at = at;
        m.events.push(StatusEvent {
            status: MessageStatus::Failed,
            at,
        });
        Ok(Transition::Applied(Box::new(m.clone())))
    }
}
