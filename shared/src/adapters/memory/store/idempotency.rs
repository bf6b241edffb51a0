//! `IdempotencyStore` on the memory store: the key's check, the debit and the message
//! happen under the one lock, as DynamoDB does them in one transaction.

use async_trait::async_trait;

use super::MemoryStore;
use crate::domain::{MessageRecord, TenantId};
use crate::ports::{IdempotencyRecord, IdempotencyStore, IdempotentInsert, LedgerEntry};
use crate::store_error::StoreError;

#[async_trait]
impl IdempotencyStore for MemoryStore {
    async fn insert_with_debit_once(
        &self,
        record: &MessageRecord,
        debit: &LedgerEntry,
        key: &IdempotencyRecord,
    ) -> Result<IdempotentInsert, StoreError> {
        let mut s = self.lock()?;
        let idem_key = (key.tenant_id.clone(), key.key_hash.clone());
        if let Some(existing) = s.idempotency.get(&idem_key) {
            if self.live(existing.expires_at) {
                return Ok(IdempotentInsert::Existing(existing.clone()));
            }
        }
        let msg_key = (record.tenant_id.clone(), record.id.clone());
        if s.messages.contains_key(&msg_key) {
            return Err(StoreError::Conflict("message id exists".into()));
        }
        let tenant = s
            .tenants
            .get_mut(&record.tenant_id)
            .ok_or(StoreError::NotFound)?;
        super::debit_tenant(tenant, record.price)?;
        s.ledger.push(debit.clone());
        s.messages
            .insert(msg_key, std::sync::Arc::new(record.clone()));
        s.idempotency.insert(idem_key, key.clone());
        Ok(IdempotentInsert::Inserted)
    }

    async fn get_idempotency(
        &self,
        tenant: &TenantId,
        key_hash: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        let s = self.lock()?;
        Ok(s.idempotency
            .get(&(tenant.clone(), key_hash.to_owned()))
            .filter(|r| self.live(r.expires_at))
            .cloned())
    }
}
