//! `IdempotencyStore` on the one table: `pk = TENANT#{tenant}`, `sk = IDEM#{sha256 of the
//! key}`, TTL per the idempotency retention (24 h). The record is written in the same
//! transaction as the debit, its ledger entry and the message, on the condition that no
//! live record exists: concurrent requests with one key write exactly one message.

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{Put, TransactWriteItem};

use super::{from_item, keys, n, to_item, CancelReason, DynamoStore, TTL_ATTR};
use crate::domain::{MessageRecord, TenantId};
use crate::ports::{
    IdempotencyRecord, IdempotencyStore, IdempotentInsert, LedgerEntry, RequestKeyRecord, TopUpOnce,
};
use crate::store_error::StoreError;

const CCF: CancelReason = CancelReason::ConditionalCheckFailed;

impl DynamoStore {
    fn idempotency_put(&self, key: &IdempotencyRecord) -> Result<TransactWriteItem, StoreError> {
        let item = to_item(
            key,
            &keys::idempotency(&key.tenant_id, &key.key_hash).pairs(),
            key.expires_at,
        )?;
        self.key_record_put(item)
    }

    /// A top-up's credit, its ledger entry and its key's record, in one transaction (the
    /// `Ledger::top_up_once` of this store).
    pub(super) async fn top_up_with_key(
        &self,
        entry: &LedgerEntry,
        key: &RequestKeyRecord,
    ) -> Result<TopUpOnce, StoreError> {
        let at = keys::top_up_key(&key.tenant_id, &key.key_hash);
        let record = to_item(key, &at.pairs(), key.expires_at)?;
        // Order matters: the reasons of a cancelled transaction come back in this order.
        let items = vec![
            self.credit_update(entry, super::CreditGuard::TopUp)?,
            self.ledger_put(entry)?,
            self.key_record_put(record)?,
        ];
        // A send's debit on the tenant item cancels the transaction with nothing
        // written: it goes again.
        let failed = match self.transact_retrying_conflicts(items).await {
            Ok(()) => return Ok(TopUpOnce::Applied(self.balance_after(entry).await?)),
            Err(e) => e,
        };
        if failed.reason(2) == Some(&CCF) {
            // The key is taken: answer its record (read after the refused write).
            let earlier: Option<RequestKeyRecord> =
                self.get(at).await?.map(from_item).transpose()?;
            return earlier
                .map(TopUpOnce::Earlier)
                .ok_or_else(|| StoreError::Unavailable("top-up key contended; try again".into()));
        }
        if failed.reason(0) == Some(&CCF) {
            return Err(self.why_refused(&entry.tenant_id).await);
        }
        Err(failed.into_store_error())
    }

    /// A key's record, on the condition that no live one exists.
    pub(super) fn key_record_put(
        &self,
        item: super::Item,
    ) -> Result<TransactWriteItem, StoreError> {
        // An expired record (TTL passed, not yet swept) counts as absent.
        let put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk) OR #ttl <= :now")
            .expression_attribute_names("#ttl", TTL_ATTR)
            .expression_attribute_values(":now", n(self.now_secs()))
            .build()
            .map_err(|e| StoreError::Corrupt(format!("put: {e}")))?;
        Ok(TransactWriteItem::builder().put(put).build())
    }
}

#[async_trait]
impl IdempotencyStore for DynamoStore {
    async fn insert_with_debit_once(
        &self,
        record: &MessageRecord,
        debit: &LedgerEntry,
        key: &IdempotencyRecord,
    ) -> Result<IdempotentInsert, StoreError> {
        let m = to_item(
            record,
            &keys::message_pairs(&record.tenant_id, record.status, &record.id),
            record.expires_at,
        )?;
        // Order matters: the reasons of a cancelled transaction come back in this order.
        let mut attempt = 0u64;
        // From the message's credit lane (A80), or where `next_debit` says when it is short.
        let mut from = self.first_debit(debit, &record.id);
        let mut round = 0;
        loop {
            let items = vec![
                self.debit_item(debit, from)?,
                self.ledger_put(debit)?,
                self.put(m.clone(), Some("attribute_not_exists(pk)"))?,
                self.idempotency_put(key)?,
            ];
            let failed = match self.transact(items).await {
                Ok(()) => return Ok(IdempotentInsert::Inserted),
                Err(e) => e,
            };
            let reason = |i: usize| failed.reason(i);
            if reason(3) == Some(&CCF) {
                // The key is taken: answer its record (read after the refused write).
                if let Some(existing) = self.get_idempotency(&key.tenant_id, &key.key_hash).await? {
                    return Ok(IdempotentInsert::Existing(existing));
                }
            } else if reason(0) == Some(&CCF) {
                from = self.next_debit(debit, from, round).await?;
                round += 1;
                continue;
            } else if reason(2) == Some(&CCF) {
                return Err(StoreError::Conflict("message exists".into()));
            } else if !failed.any(CancelReason::TransactionConflict) {
                return Err(failed.into_store_error());
            }
            // Concurrent transactions on the tenant item (or the key) cancel each other
            // without writing anything: try again shortly, with jitter.
            attempt += 1;
            if attempt > 10 {
                return Err(failed.into_store_error());
            }
            let jitter = rand::random::<u64>() % 25;
            tokio::time::sleep(std::time::Duration::from_millis(10 * attempt + jitter)).await;
        }
    }

    async fn get_idempotency(
        &self,
        tenant: &TenantId,
        key_hash: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        self.get(keys::idempotency(tenant, key_hash))
            .await?
            .map(from_item)
            .transpose()
    }
}
