//! `PendingStatusStore` and `StatusCallbackStore` on the memory store: the same rules as
//! DynamoDB, under the one lock.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::MemoryStore;
use crate::adapters::aws::keys;
use crate::domain::TenantId;
use crate::ports::{
    CallbackFailure, CallbackFailurePage, OwedCallback, PendingStatus, PendingStatusStore,
    StatusCallback, StatusCallbackStore,
};
use crate::store_error::StoreError;

/// A kept status's place: its wamid and the table's sort key (one status of one wamid at
/// one time, the identity duplicates share).
fn pending_key(status: &PendingStatus) -> (String, String) {
    let key = keys::pending_status(&status.wamid, status.status.as_str(), status.timestamp);
    (status.wamid.clone(), key.sk)
}

#[async_trait]
impl PendingStatusStore for MemoryStore {
    async fn put_pending_status(&self, status: &PendingStatus) -> Result<bool, StoreError> {
        let mut s = self.lock()?;
        // The mark (also for a duplicate), as on DynamoDB: on the wamid's index item if
        // there is one (nothing to sweep apart), else an item of its own.
        match s.wamids.get_mut(&status.wamid) {
            Some(indexed) => indexed.3 = true,
            None => {
                s.wamid_marks
                    .entry(status.wamid.clone())
                    .or_insert(status.expires_at);
            }
        }
        let key = pending_key(status);
        if let Some(existing) = s.pending.get(&key) {
            if self.live(existing.expires_at) {
                return Ok(false);
            }
        }
        s.pending.insert(key, status.clone());
        Ok(true)
    }

    async fn pending_statuses(&self, wamid: &str) -> Result<Vec<PendingStatus>, StoreError> {
        let s = self.lock()?;
        let mut out: Vec<PendingStatus> = s
            .pending
            .range((wamid.to_owned(), String::new())..)
            .take_while(|((w, _), _)| w == wamid)
            .map(|(_, p)| p)
            .filter(|p| self.live(p.expires_at))
            .cloned()
            .collect();
        out.sort_by_key(|a| (a.timestamp, a.received_at));
        Ok(out)
    }

    async fn delete_pending_status(&self, status: &PendingStatus) -> Result<(), StoreError> {
        let mut s = self.lock()?;
        s.pending.remove(&pending_key(status));
        Ok(())
    }
}

#[async_trait]
impl StatusCallbackStore for MemoryStore {
    async fn put_status_callback(&self, setting: &StatusCallback) -> Result<(), StoreError> {
        let mut s = self.lock()?;
        super::refuse_if_closed(&s, &setting.tenant_id)?;
        s.status_callbacks
            .insert(setting.tenant_id.clone(), setting.clone());
        Ok(())
    }

    async fn get_status_callback(
        &self,
        tenant: &TenantId,
    ) -> Result<Option<StatusCallback>, StoreError> {
        let s = self.lock()?;
        Ok(s.status_callbacks
            .get(tenant)
            .filter(|_| self.config_live(&s, tenant))
            .cloned())
    }

    async fn set_status_callback_url(
        &self,
        tenant: &TenantId,
        url: &str,
        updated_at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let mut s = self.lock()?;
        super::refuse_if_closed(&s, tenant)?;
        Ok(match s.status_callbacks.get_mut(tenant) {
            Some(setting) => {
                setting.url = url.to_owned();
                setting.updated_at = updated_at;
                true
            }
            None => false,
        })
    }

    async fn delete_status_callback(&self, tenant: &TenantId) -> Result<bool, StoreError> {
        Ok(self.lock()?.status_callbacks.remove(tenant).is_some())
    }

    async fn owe_callback(&self, owed: &OwedCallback) -> Result<(), StoreError> {
        let key = owed_key(owed);
        self.lock()?.owed_callbacks.insert(key, owed.clone());
        Ok(())
    }

    async fn owed_callbacks(&self, limit: usize) -> Result<Vec<OwedCallback>, StoreError> {
        let s = self.lock()?;
        let now = self.clock.now().timestamp();
        Ok(s.owed_callbacks
            .values()
            .filter(|o| self.live(o.expires_at) && o.leased_until.is_none_or(|t| t <= now))
            .take(limit)
            .cloned()
            .collect())
    }

    async fn lease_owed_callback(
        &self,
        owed: &OwedCallback,
        until: i64,
    ) -> Result<bool, StoreError> {
        let mut s = self.lock()?;
        let now = self.clock.now().timestamp();
        match s.owed_callbacks.get_mut(&owed_key(owed)) {
            Some(o) if o.leased_until.is_none_or(|t| t <= now) => {
                o.leased_until = Some(until);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn forget_owed_callback(&self, owed: &OwedCallback) -> Result<(), StoreError> {
        self.lock()?.owed_callbacks.remove(&owed_key(owed));
        Ok(())
    }

    async fn put_callback_failure(&self, failure: &CallbackFailure) -> Result<(), StoreError> {
        self.lock()?.callback_failures.insert(
            (failure.tenant_id.clone(), failure.id.clone()),
            failure.clone(),
        );
        Ok(())
    }

    async fn callback_failures_page(
        &self,
        tenant: &TenantId,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<CallbackFailurePage, StoreError> {
        let live: Vec<CallbackFailure> = {
            let s = self.lock()?;
            s.callback_failures
                .range((tenant.clone(), String::new())..)
                .take_while(|((t, _), _)| t == tenant)
                .map(|(_, f)| f)
                .filter(|f| self.live(f.expires_at))
                .cloned()
                .collect()
        };
        // The cursor names the id of the previous page's last record, as DynamoDB's names
        // its key.
        let (failures, next_cursor) = super::page_by_id(
            tenant,
            "CBFAIL",
            live,
            |f| &f.id,
            crate::ports::Order::NewestFirst,
            limit,
            cursor,
        )?;
        Ok(CallbackFailurePage {
            failures,
            next_cursor,
        })
    }
}

/// An owed callback's sort key, as on DynamoDB (so both list in the same order).
fn owed_key(owed: &OwedCallback) -> String {
    keys::owed_callback(&owed.tenant_id, &owed.message_id, owed.sequence).sk
}
