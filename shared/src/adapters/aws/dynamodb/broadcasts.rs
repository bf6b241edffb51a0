//! `BroadcastStore` on the one table. The broadcast is `TENANT#{t}` / `BROADCAST#{id}`
//! (Messages class TTL); its uploaded recipient list `TENANT#{t}` / `BCLIST#{id}` lives
//! only until every recipient is enqueued (a 7-day TTL is the backstop). A broadcast's
//! messages all carry ULIDs of the broadcast's millisecond, so counting them is one range
//! Query of the tenant's partition, filtered by `broadcast_id`.

use crate::adapters::aws::written;

use async_trait::async_trait;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, TransactWriteItem, Update};
use chrono::{DateTime, Utc};

use super::{classify, from_item, keys, n, s, to_item, CancelReason, DynamoStore, Item, TTL_ATTR};
use crate::domain::{MessageId, MessageRecord, MessageStatus, PhoneNumber, StatusEvent, TenantId};
use crate::ports::{
    Broadcast, BroadcastClaim, BroadcastControl, BroadcastOnce, BroadcastStatus, BroadcastStore,
    BroadcastTally, CancelledRecipients, FanoutHop, LedgerEntry, RequestKeyRecord, UnqueuedClose,
    ALREADY_RETRIED,
};
use crate::store_error::StoreError;

/// A time as stored by serde (RFC 3339, UTC).
fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

impl DynamoStore {
    /// The broadcast, its list, its debit and (with a key) the key's record: one
    /// transaction. Its debit is taken from the tenant item; when that is short of it, the
    /// tenant's credit lanes (A80) are returned to it and the transaction goes once more,
    /// so a campaign is refused `402` only when the whole balance is short.
    async fn write_broadcast(
        &self,
        broadcast: &Broadcast,
        recipients: &[PhoneNumber],
        debit: &LedgerEntry,
        key: Option<&RequestKeyRecord>,
    ) -> Result<BroadcastOnce, StoreError> {
        match self
            .write_broadcast_once(broadcast, recipients, debit, key)
            .await
        {
            Err(StoreError::InsufficientCredits) => {
                // Only when the lanes would make up the difference (the whole balance
                // covers it): a campaign the balance cannot pay leaves them be.
                let read = self.tenant_and_lanes(&broadcast.tenant_id).await?;
                let lanes = match read {
                    Some(r)
                        if !r.lanes.is_empty()
                            && r.reservoir().saturating_add(r.in_lanes())
                                >= debit.amount.saturating_neg() =>
                    {
                        r.lanes
                    }
                    _ => return Err(StoreError::InsufficientCredits),
                };
                if self.return_lanes(&broadcast.tenant_id, &lanes).await? == 0 {
                    return Err(StoreError::InsufficientCredits);
                }
                self.write_broadcast_once(broadcast, recipients, debit, key)
                    .await
            }
            other => other,
        }
    }

    async fn write_broadcast_once(
        &self,
        broadcast: &Broadcast,
        recipients: &[PhoneNumber],
        debit: &LedgerEntry,
        key: Option<&RequestKeyRecord>,
    ) -> Result<BroadcastOnce, StoreError> {
        let item = to_item(
            broadcast,
            &keys::broadcast(&broadcast.tenant_id, &broadcast.id).pairs(),
            broadcast.expires_at,
        )?;
        let mut list = keys::broadcast_list(&broadcast.tenant_id, &broadcast.id).attrs();
        list.insert(
            "phones".to_owned(),
            AttributeValue::L(recipients.iter().map(|p| s(p.to_string())).collect()),
        );
        list.insert(TTL_ATTR.to_owned(), n(broadcast.list_expires_at()));
        // Order matters: the reasons of a cancelled transaction come back in this order.
        let mut items = vec![
            self.credit_update(debit, super::CreditGuard::Debit)?,
            self.ledger_put(debit)?,
            self.put(item, Some("attribute_not_exists(pk)"))?,
            self.put(list, Some("attribute_not_exists(pk)"))?,
        ];
        if let Some(k) = key {
            let record = to_item(
                k,
                &keys::broadcast_key(&k.tenant_id, &k.key_hash).pairs(),
                k.expires_at,
            )?;
            items.push(self.key_record_put(record)?);
        }
        // A retry marks the broadcast it retries, only if nothing retried it yet: of two
        // retries of one broadcast, one is written.
        let retry_mark_at = items.len();
        if let Some(original) = &broadcast.retry_of {
            let u = Update::builder()
                .table_name(&self.table)
                .set_key(Some(
                    keys::broadcast(&broadcast.tenant_id, original).attrs(),
                ))
                .update_expression("SET retried_by = :by")
                .condition_expression("attribute_exists(pk) AND attribute_not_exists(retried_by)")
                .expression_attribute_values(":by", s(broadcast.id.clone()))
                .build()
                .map_err(|e| StoreError::Corrupt(format!("update: {e}")))?;
            items.push(TransactWriteItem::builder().update(u).build());
        }
        let failed = match self.transact_retrying_conflicts(items).await {
            Ok(()) => return Ok(BroadcastOnce::Created),
            Err(e) => e,
        };
        if let Some(k) =
            key.filter(|_| failed.reason(4) == Some(&CancelReason::ConditionalCheckFailed))
        {
            // The key is taken: answer its record (read after the refused write).
            let earlier: Option<RequestKeyRecord> = self
                .get(keys::broadcast_key(&k.tenant_id, &k.key_hash))
                .await?
                .map(from_item)
                .transpose()?;
            return earlier.map(BroadcastOnce::Earlier).ok_or_else(|| {
                StoreError::Unavailable("broadcast key contended; try again".into())
            });
        }
        if broadcast.retry_of.is_some()
            && failed.reason(retry_mark_at) == Some(&CancelReason::ConditionalCheckFailed)
        {
            return Err(StoreError::Conflict(ALREADY_RETRIED.into()));
        }
        if failed.reason(0) == Some(&CancelReason::ConditionalCheckFailed) {
            return Err(self.debit_refused(&broadcast.tenant_id).await);
        }
        if failed.any(CancelReason::ConditionalCheckFailed) {
            return Err(StoreError::Conflict("broadcast exists".into()));
        }
        Err(failed.into_store_error())
    }
}

#[async_trait]
impl BroadcastStore for DynamoStore {
    async fn create_broadcast(
        &self,
        broadcast: &Broadcast,
        recipients: &[PhoneNumber],
        debit: &LedgerEntry,
    ) -> Result<(), StoreError> {
        self.write_broadcast(broadcast, recipients, debit, None)
            .await
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
            .await
    }

    async fn broadcast_key(
        &self,
        tenant: &TenantId,
        key_hash: &str,
    ) -> Result<Option<RequestKeyRecord>, StoreError> {
        let now = self.now_secs();
        Ok(self
            .get(keys::broadcast_key(tenant, key_hash))
            .await?
            .map(from_item::<RequestKeyRecord>)
            .transpose()?
            .filter(|r| r.expires_at.is_none_or(|e| e > now)))
    }

    async fn get_broadcast(
        &self,
        tenant: &TenantId,
        id: &str,
    ) -> Result<Option<Broadcast>, StoreError> {
        self.get(keys::broadcast(tenant, id))
            .await?
            .map(from_item)
            .transpose()
    }

    async fn broadcast_recipients(
        &self,
        tenant: &TenantId,
        id: &str,
    ) -> Result<Option<Vec<PhoneNumber>>, StoreError> {
        let Some(item) = self.get(keys::broadcast_list(tenant, id)).await? else {
            return Ok(None);
        };
        let Some(AttributeValue::L(phones)) = item.get("phones") else {
            return Err(StoreError::Corrupt("broadcast list".into()));
        };
        phones
            .iter()
            .map(|v| {
                v.as_s()
                    .ok()
                    .and_then(|p| PhoneNumber::parse_stored(p).ok())
                    .ok_or_else(|| StoreError::Corrupt("broadcast list entry".into()))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    async fn broadcast_progress(
        &self,
        tenant: &TenantId,
        id: &str,
        enqueued: usize,
        done: bool,
        hop: FanoutHop<'_>,
    ) -> Result<bool, StoreError> {
        // The chain: the token the run's job carries (none: the broadcast has none), or
        // the run's next one already (this write landed, its answer lost, and the SDK's
        // retry of it must not be refused by it).
        let expected = match hop.expected {
            Some(_) => "#token = :expected",
            None => "attribute_not_exists(#token)",
        };
        let chain = match hop.next {
            Some(_) => format!("({expected} OR #token = :next)"),
            None => expected.to_owned(),
        };
        let mut set = vec!["enqueued = :n"];
        if done {
            set.push("#status = :done");
        }
        if hop.next.is_some() {
            set.push("#token = :next");
        }
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(keys::broadcast(tenant, id).attrs()))
            .update_expression(format!("SET {}", set.join(", ")))
            .condition_expression(format!(
                "attribute_exists(pk) AND enqueued <= :n AND {chain}"
            ))
            .expression_attribute_names("#token", "fanout_token")
            .expression_attribute_values(":n", n(enqueued as i64));
        if let Some(t) = hop.expected {
            req = req.expression_attribute_values(":expected", s(t.to_owned()));
        }
        if let Some(t) = hop.next {
            req = req.expression_attribute_values(":next", s(t.to_owned()));
        }
        if done {
            req = req
                .expression_attribute_names("#status", "status")
                .expression_attribute_values(
                    ":done",
                    s(crate::ports::BroadcastStatus::Enqueued.as_str()),
                );
        }
        match req.send().await {
            Ok(_) => {}
            // Gone, another delivery got further, or another run of the chain moved its
            // token on: nothing recorded, and the list is left (that run needs it, or
            // deleted it).
            Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => {
                return Ok(false)
            }
            Err(e) => return Err(classify("dynamodb update", e)),
        }
        if done {
            self.client
                .delete_item()
                .table_name(&self.table)
                .set_key(Some(keys::broadcast_list(tenant, id).attrs()))
                .send()
                .await
                .map_err(|e| classify("dynamodb delete", e))?;
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
        let u = Update::builder()
            .table_name(&self.table)
            .set_key(Some(keys::broadcast(tenant, id).attrs()))
            .condition_expression("#status = :fanning AND enqueued = :n")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":done", s(BroadcastStatus::Enqueued.as_str()))
            .expression_attribute_values(":fanning", s(BroadcastStatus::FanningOut.as_str()))
            .expression_attribute_values(":n", n(enqueued as i64));
        // Nothing refunded: only its status, as a finished fan-out's last progress write.
        let u = match refund {
            Some(_) => u
                .update_expression("SET #status = :done, refunded_unsent = :unsent, ended_at = :at")
                .expression_attribute_values(":unsent", n(unsent as i64))
                .expression_attribute_values(":at", s(rfc3339(at))),
            None => u.update_expression("SET #status = :done"),
        }
        .build()
        .map_err(|e| StoreError::Corrupt(format!("update: {e}")))?;
        let mut items = vec![TransactWriteItem::builder().update(u).build()];
        if let Some(refund) = refund {
            items.push(self.credit_update(refund, super::CreditGuard::Refund)?);
            items.push(self.ledger_put(refund)?);
        }
        match self.transact_retrying_conflicts(items).await {
            Ok(()) => Ok(true),
            Err(e) if e.reason(0) == Some(&CancelReason::ConditionalCheckFailed) => Ok(false),
            // The refund's tenant is gone: nothing written, as for a message's refund.
            Err(e)
                if refund.is_some()
                    && e.reason(1) == Some(&CancelReason::ConditionalCheckFailed) =>
            {
                Err(StoreError::NotFound)
            }
            Err(e) => Err(e.into_store_error()),
        }
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
        let u = Update::builder()
            .table_name(&self.table)
            .set_key(Some(keys::broadcast(tenant, id).attrs()))
            .update_expression("SET enqueued = :to ADD closed_unqueued :closed")
            .expression_attribute_values(":closed", n(messages.len() as i64))
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#control", "control")
            .expression_attribute_values(":fanning", s(BroadcastStatus::FanningOut.as_str()));
        // Cancelled: only while it is; failed: only while it runs (a pause waits, a cancel
        // closes them as cancelled instead).
        let u = match closing {
            UnqueuedClose::Cancelled => u
                .condition_expression(
                    "#status = :fanning AND #control = :cancelled AND enqueued = :from",
                )
                .expression_attribute_values(":cancelled", s(BroadcastControl::Cancelled.as_str())),
            UnqueuedClose::Failed => u.condition_expression(
                "#status = :fanning AND attribute_not_exists(#control) AND enqueued = :from",
            ),
        };
        let u = u
            .expression_attribute_values(":from", n(from as i64))
            .expression_attribute_values(":to", n(to as i64))
            .build()
            .map_err(|e| StoreError::Corrupt(format!("update: {e}")))?;
        let mut items = vec![TransactWriteItem::builder().update(u).build()];
        if let Some(refund) = refund {
            items.push(self.credit_update(refund, super::CreditGuard::Refund)?);
            items.push(self.ledger_put(refund)?);
        }
        let first_message = items.len();
        for m in messages {
            let item = to_item(
                m,
                &keys::message_pairs(&m.tenant_id, m.status, &m.id),
                m.expires_at,
            )?;
            items.push(self.put(item, Some("attribute_not_exists(pk)"))?);
        }
        match self.transact_retrying_conflicts(items).await {
            Ok(()) => Ok(CancelledRecipients::Written),
            Err(e) if e.reason(0) == Some(&CancelReason::ConditionalCheckFailed) => {
                Ok(CancelledRecipients::Moved)
            }
            // The refund's tenant is gone: nothing written, as for a message's refund.
            Err(e)
                if refund.is_some()
                    && e.reason(1) == Some(&CancelReason::ConditionalCheckFailed) =>
            {
                Err(StoreError::NotFound)
            }
            Err(e) => {
                let recorded: Vec<usize> = (0..messages.len())
                    .filter(|i| {
                        e.reason(first_message + i) == Some(&CancelReason::ConditionalCheckFailed)
                    })
                    .collect();
                if recorded.is_empty() {
                    Err(e.into_store_error())
                } else {
                    Ok(CancelledRecipients::Recorded(recorded))
                }
            }
        }
    }

    async fn start_broadcast(
        &self,
        tenant: &TenantId,
        id: &str,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(keys::broadcast(tenant, id).attrs()))
            .update_expression("SET #status = :go, started_at = :at")
            .condition_expression("#status = :scheduled")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":go", s(BroadcastStatus::FanningOut.as_str()))
            .expression_attribute_values(":scheduled", s(BroadcastStatus::Scheduled.as_str()))
            .expression_attribute_values(":at", s(rfc3339(at)))
            .send()
            .await;
        written("dynamodb update", res)
    }

    async fn cancel_scheduled_broadcast(
        &self,
        tenant: &TenantId,
        id: &str,
        refund: &LedgerEntry,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let u = Update::builder()
            .table_name(&self.table)
            .set_key(Some(keys::broadcast(tenant, id).attrs()))
            // Every recipient refunded with no message made: counted `cancelled`.
            .update_expression(
                "SET #status = :cancelled, ended_at = :at, refunded_unsent = accepted",
            )
            .condition_expression(
                "#status = :scheduled AND (attribute_not_exists(#ttl) OR #ttl > :now)",
            )
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#ttl", TTL_ATTR)
            .expression_attribute_values(":cancelled", s(BroadcastStatus::Cancelled.as_str()))
            .expression_attribute_values(":scheduled", s(BroadcastStatus::Scheduled.as_str()))
            .expression_attribute_values(":at", s(rfc3339(at)))
            .expression_attribute_values(":now", n(self.now_secs()))
            .build()
            .map_err(|e| StoreError::Corrupt(format!("update: {e}")))?;
        // The list is left to its backstop TTL: until then the export lists each recipient
        // `cancelled` (API.md: one row per recipient; they have no message).
        let items = vec![
            TransactWriteItem::builder().update(u).build(),
            self.credit_update(refund, super::CreditGuard::Refund)?,
            self.ledger_put(refund)?,
        ];
        match self.transact_retrying_conflicts(items).await {
            Ok(()) => Ok(true),
            Err(e) if e.reason(0) == Some(&CancelReason::ConditionalCheckFailed) => Ok(false),
            // The refund's tenant is gone: nothing written, as for a message's refund.
            Err(e) if e.reason(1) == Some(&CancelReason::ConditionalCheckFailed) => {
                Err(StoreError::NotFound)
            }
            Err(e) => Err(e.into_store_error()),
        }
    }

    async fn set_broadcast_control(
        &self,
        tenant: &TenantId,
        id: &str,
        from: &[Option<BroadcastControl>],
        to: Option<BroadcastControl>,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        if from.is_empty() {
            return Ok(false);
        }
        let mut allowed = Vec::new();
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(keys::broadcast(tenant, id).attrs()));
        for (i, f) in from.iter().enumerate() {
            match f {
                None => allowed.push("attribute_not_exists(control)".to_owned()),
                Some(c) => {
                    allowed.push(format!("control = :f{i}"));
                    req = req.expression_attribute_values(format!(":f{i}"), s(c.as_str()));
                }
            }
        }
        req = req
            .condition_expression(format!(
                "attribute_exists(pk) AND #status <> :cancelled AND ({}) AND \
                 (attribute_not_exists(#ttl) OR #ttl > :now)",
                allowed.join(" OR ")
            ))
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#ttl", TTL_ATTR)
            .expression_attribute_values(":cancelled", s(BroadcastStatus::Cancelled.as_str()))
            .expression_attribute_values(":now", n(self.now_secs()));
        req = req.expression_attribute_values(":at", s(rfc3339(at)));
        req = match to {
            None => req.update_expression("SET control_at = :at REMOVE control"),
            Some(BroadcastControl::Cancelled) => req
                .update_expression("SET control = :to, ended_at = :at, control_at = :at")
                .expression_attribute_values(":to", s(BroadcastControl::Cancelled.as_str())),
            Some(c) => req
                .update_expression("SET control = :to, control_at = :at")
                .expression_attribute_values(":to", s(c.as_str())),
        };
        match req.send().await {
            Ok(_) => Ok(true),
            Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => {
                Ok(false)
            }
            Err(e) => Err(classify("dynamodb update", e)),
        }
    }

    async fn claim_broadcast_message(
        &self,
        tenant: &TenantId,
        message: &MessageId,
        broadcast: &str,
        claim: &str,
        at: DateTime<Utc>,
    ) -> Result<BroadcastClaim, StoreError> {
        // The claim as a plain conditional update that answers the claimed message, then
        // the hold (a consistent read); a hold found gives the claim back. Not one
        // transaction: a claim and a `ConditionCheck` of its broadcast in
        // `TransactWriteItems` cost 4 write units (each item twice) and a read of the
        // claimed message after it; this costs 1 write unit and the same one read. Every
        // pause or cancel written before the claim is seen by the read after it, so it
        // still stops the message (and one written between the two does too); a cancel
        // still refunds only `accepted` messages and the claim moves only an `accepted` one,
        // so a message is sent or refunded, never both.
        let sending = MessageStatus::Sending;
        let event = serde_dynamo::to_attribute_value(StatusEvent {
            status: sending,
            at,
        })
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let claimed = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(keys::message(tenant, message).attrs()))
            .update_expression(
                // `sending` has no status index entry (keys.rs).
                "SET #status = :to, updated_at = :at, events = list_append(events, :ev), \
                 claim = :claim REMOVE gsi1pk, gsi1sk ADD attempts :one",
            )
            .condition_expression(
                "#status = :accepted AND (attribute_not_exists(#ttl) OR #ttl > :now)",
            )
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#ttl", TTL_ATTR)
            .expression_attribute_values(":to", s(sending.as_str()))
            .expression_attribute_values(":accepted", s(MessageStatus::Accepted.as_str()))
            .expression_attribute_values(":at", s(rfc3339(at)))
            .expression_attribute_values(":ev", AttributeValue::L(vec![event]))
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":claim", s(claim))
            .expression_attribute_values(":now", n(self.now_secs()))
            // The message as it was: a hold found gives the claim back exactly so (its
            // `updated_at` and `claim` too, as in memory, where a held claim writes nothing);
            // the claimed one is the same write applied to it here.
            .return_values(ReturnValue::AllOld)
            .send()
            .await;
        let before: MessageRecord = match claimed {
            Ok(out) => from_item(out.attributes.unwrap_or_default())?,
            Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => {
                return Ok(BroadcastClaim::Refused)
            }
            Err(e) => return Err(classify("dynamodb update", e)),
        };
        let mut record = before.clone();
        record.status = sending;
        record.updated_at = at;
        record.events.push(StatusEvent {
            status: sending,
            at,
        });
        record.claim = Some(claim.to_owned());
        record.attempts = record.attempts.saturating_add(1);
        // A read that fails leaves the hold unknown: the claim is given back as for a hold
        // (nothing was handed to Meta), so the retried job finds the message `accepted`
        // again instead of `sending` with no send behind it.
        let hold = match self.get_broadcast(tenant, broadcast).await {
            Ok(b) => b.and_then(|b| b.control),
            Err(e) => {
                if let Err(undo) = crate::store_error::undo(|| {
                    self.unclaim_broadcast_message(tenant, message, &before, claim, at)
                })
                .await
                {
                    tracing::error!(error = %undo, "a broadcast claim whose hold could not be read was not given back");
                }
                return Err(e);
            }
        };
        match hold {
            None => Ok(BroadcastClaim::Claimed(Box::new(record))),
            Some(hold) => {
                crate::store_error::undo(|| {
                    self.unclaim_broadcast_message(tenant, message, &before, claim, at)
                })
                .await?;
                Ok(BroadcastClaim::Held(hold))
            }
        }
    }

    async fn list_broadcasts(
        &self,
        tenant: &TenantId,
        limit: usize,
        before: Option<&str>,
    ) -> Result<(Vec<Broadcast>, Option<String>), StoreError> {
        let limit = limit.clamp(1, 100);
        let mut out = Vec::new();
        let mut start = before.map(|b| keys::broadcast(tenant, b).attrs());
        loop {
            let res = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk AND begins_with(sk, :p)")
                .expression_attribute_values(":pk", s(keys::tenant_pk(tenant)))
                .expression_attribute_values(":p", s(keys::BROADCAST_PREFIX))
                .scan_index_forward(false)
                // One past the page: a next page only when there is one (a full last page
                // was followed by an empty one, where the memory adapter ends).
                .limit((limit + 1 - out.len()) as i32)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| classify("dynamodb query", e))?;
            for item in res.items.unwrap_or_default() {
                if self.live(&item) {
                    out.push(from_item::<Broadcast>(item)?);
                }
            }
            start = res.last_evaluated_key;
            if start.is_none() || out.len() > limit {
                break;
            }
        }
        let next = if out.len() > limit {
            out.truncate(limit);
            out.last().map(|b| b.id.clone())
        } else {
            None
        };
        Ok((out, next))
    }

    async fn broadcast_messages(
        &self,
        broadcast: &Broadcast,
        limit: usize,
        after: Option<&MessageId>,
    ) -> Result<(Vec<MessageRecord>, Option<MessageId>), StoreError> {
        self.messages_page(broadcast, limit, after, false).await
    }

    async fn broadcast_messages_consistent(
        &self,
        broadcast: &Broadcast,
        limit: usize,
        after: Option<&MessageId>,
    ) -> Result<(Vec<MessageRecord>, Option<MessageId>), StoreError> {
        self.messages_page(broadcast, limit, after, true).await
    }

    async fn insert_broadcast_message(&self, record: &MessageRecord) -> Result<bool, StoreError> {
        let item = to_item(
            record,
            &keys::message_pairs(&record.tenant_id, record.status, &record.id),
            record.expires_at,
        )?;
        let res = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await;
        written("dynamodb put", res)
    }

    async fn broadcast_tally(&self, broadcast: &Broadcast) -> Result<BroadcastTally, StoreError> {
        self.tally(broadcast, false).await
    }

    async fn broadcast_tally_consistent(
        &self,
        broadcast: &Broadcast,
    ) -> Result<BroadcastTally, StoreError> {
        self.tally(broadcast, true).await
    }
}

impl DynamoStore {
    /// A page of a broadcast's messages ([`BroadcastStore::broadcast_messages`]), read
    /// strongly consistent when asked (twice the read units).
    async fn messages_page(
        &self,
        broadcast: &Broadcast,
        limit: usize,
        after: Option<&MessageId>,
        consistent: bool,
    ) -> Result<(Vec<MessageRecord>, Option<MessageId>), StoreError> {
        let limit = limit.clamp(1, 1000);
        let tenant = &broadcast.tenant_id;
        let (lo, hi) =
            keys::message_range_of_ms(broadcast.created_at.timestamp_millis().max(0) as u64);
        let mut out: Vec<MessageRecord> = Vec::new();
        let mut start = after.map(|a| keys::message(tenant, a).attrs());
        loop {
            let res = self
                .client
                .query()
                .table_name(&self.table)
                .consistent_read(consistent)
                .key_condition_expression("pk = :pk AND sk BETWEEN :lo AND :hi")
                .filter_expression("broadcast_id = :b")
                .expression_attribute_values(":pk", s(keys::tenant_pk(tenant)))
                .expression_attribute_values(":lo", s(lo.clone()))
                .expression_attribute_values(":hi", s(hi.clone()))
                .expression_attribute_values(":b", s(broadcast.id.clone()))
                .limit((limit - out.len()) as i32)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| classify("dynamodb query", e))?;
            for item in res.items.unwrap_or_default() {
                if self.live(&item) {
                    out.push(from_item(item)?);
                }
            }
            start = res.last_evaluated_key;
            if start.is_none() || out.len() >= limit {
                break;
            }
        }
        // Continue after the last message read (or, on an empty page, where the Query
        // stopped).
        let next = match (start, out.last()) {
            (None, _) => None,
            (Some(_), Some(m)) => Some(m.id.clone()),
            (Some(k), None) => k
                .get("sk")
                .and_then(|v| v.as_s().ok())
                .and_then(|sk| sk.rsplit('#').next())
                .and_then(MessageId::parse),
        };
        Ok((out, next))
    }

    /// One pass over a broadcast's messages ([`BroadcastStore::broadcast_tally`]).
    async fn tally(
        &self,
        broadcast: &Broadcast,
        consistent: bool,
    ) -> Result<BroadcastTally, StoreError> {
        let (lo, hi) =
            keys::message_range_of_ms(broadcast.created_at.timestamp_millis().max(0) as u64);
        let mut pages = self
            .client
            .query()
            .table_name(&self.table)
            .consistent_read(consistent)
            .key_condition_expression("pk = :pk AND sk BETWEEN :lo AND :hi")
            .filter_expression("broadcast_id = :b")
            .projection_expression("#status, #ttl, #error, #events, settled_at")
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#ttl", TTL_ATTR)
            .expression_attribute_names("#error", "error")
            .expression_attribute_names("#events", "events")
            .expression_attribute_values(":pk", s(keys::tenant_pk(&broadcast.tenant_id)))
            .expression_attribute_values(":lo", s(lo))
            .expression_attribute_values(":hi", s(hi))
            .expression_attribute_values(":b", s(broadcast.id.clone()))
            .into_paginator()
            .items()
            .send();
        /// A message's error, as the message item stores it.
        #[derive(serde::Deserialize)]
        struct ErrorOf {
            #[serde(default)]
            error: Option<crate::domain::MessageError>,
        }
        /// A message's status events, as the message item stores them.
        #[derive(serde::Deserialize)]
        struct EventsOf {
            #[serde(default)]
            events: Vec<EventAt>,
        }
        /// Its settled time as kept before a late status's time was recorded.
        #[derive(serde::Deserialize)]
        struct SettledOf {
            #[serde(default)]
            settled_at: Option<DateTime<Utc>>,
        }
        #[derive(serde::Deserialize)]
        struct EventAt {
            status: String,
            at: DateTime<Utc>,
        }
        let mut tally = BroadcastTally::default();
        while let Some(item) = pages.next().await {
            let mut item = item.map_err(|e| classify("dynamodb query", e))?;
            if !self.live(&item) {
                continue;
            }
            let Some(st) = item.get("status").and_then(|v| v.as_s().ok()).cloned() else {
                continue;
            };
            let error = match item.remove("error") {
                Some(e) => from_item::<ErrorOf>(Item::from([("error".to_owned(), e)]))?.error,
                None => None,
            };
            // Kept by the write that recorded a late status (`MessageRecord::settled_at`),
            // else from its events.
            let kept = match item.remove("settled_at") {
                Some(v) => {
                    from_item::<SettledOf>(Item::from([("settled_at".to_owned(), v)]))?.settled_at
                }
                None => None,
            };
            let settled = match item.remove("events") {
                _ if kept.is_some() => kept,
                Some(e) => crate::ports::settled_at(
                    from_item::<EventsOf>(Item::from([("events".to_owned(), e)]))?
                        .events
                        .iter()
                        .map(|e| (e.status.as_str(), e.at)),
                ),
                None => None,
            };
            tally.add(&st, error.as_ref(), settled);
        }
        Ok(tally)
    }
}

impl DynamoStore {
    /// Gives a broadcast message's claim back, exactly as it was before the claim
    /// (`before`): back to `accepted`, the attempt and the claim's `sending` event taken off
    /// again, its `updated_at` and `claim` as they were (a paused broadcast's messages are
    /// looked at every 30 s; their history must not grow, nor their time move, with each
    /// look). Conditional on the claim (`claim`, made at `at`) being the message's latest
    /// write, so only the claim's holder can undo it; a refused condition (moved on
    /// meanwhile) is not an error.
    async fn unclaim_broadcast_message(
        &self,
        tenant: &TenantId,
        message: &MessageId,
        before: &MessageRecord,
        claim: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let last = before.events.len();
        let update = match &before.claim {
            Some(_) => format!(
                "SET #status = :acc, updated_at = :was, claim = :was_claim \
                 REMOVE events[{last}] ADD attempts :minus"
            ),
            None => format!(
                "SET #status = :acc, updated_at = :was REMOVE claim, events[{last}] \
                 ADD attempts :minus"
            ),
        };
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(keys::message(tenant, message).attrs()))
            .update_expression(update)
            .condition_expression(
                "#status = :sending AND updated_at = :at AND claim = :claim AND size(events) = :len",
            )
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":acc", s(MessageStatus::Accepted.as_str()))
            .expression_attribute_values(":sending", s(MessageStatus::Sending.as_str()))
            .expression_attribute_values(":at", s(rfc3339(at)))
            .expression_attribute_values(":was", s(rfc3339(before.updated_at)))
            .expression_attribute_values(":claim", s(claim))
            .expression_attribute_values(":len", n(before.events.len() as i64 + 1))
            .expression_attribute_values(":minus", n(-1));
        if let Some(was) = &before.claim {
            req = req.expression_attribute_values(":was_claim", s(was));
        }
        let released = req.send().await;
        match released {
            Ok(_) => Ok(()),
            Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => {
                Ok(())
            }
            Err(e) => Err(classify("dynamodb update", e)),
        }
    }
}
