//! A tenant's credits spread over lanes (docs/data-model.md A80).
//!
//! Every accepted single send debits its price in the same transaction as its message, and
//! DynamoDB cancels transactions that meet on an item (`TransactionConflict`): with the
//! tenant item as the one counter, a tenant's concurrent sends all met there and, past
//! some 40 a second, ran out of the adapter's tries (`503`), under the 200 requests a
//! second a tenant may make. So a single send is debited from one of
//! [`CREDIT_LANES`] lane items (`TENANT#{t}` / `TENANT#LANE#{nn}`, the lane from the
//! message's id), each a part of the balance. The tenant item keeps the rest (the
//! *reservoir*): top-ups, refunds and campaigns' debits go there as before.
//!
//! - **Never below zero** still rides on each debit's own condition (`credits >= price`
//!   on the lane, or on the tenant item), never on a read.
//! - A lane short of the price is **refilled** from the reservoir by one transaction
//!   (reservoir `-r` on the debit's condition, lane `+r`, `r` a sixteenth of the
//!   reservoir), and the send goes again. While the reservoir holds less than 8 prices a
//!   lane, sends whose lane is short are debited from the tenant item itself (as before
//!   A80; and this process sends the tenant's next ones there for 30 s); when the reservoir is short of one price, the lanes are **returned** to it first
//!   (each lane deleted on the condition that it holds what was read, its credits added to
//!   the tenant item, one transaction each), so the whole balance is always spendable and
//!   a `402` means the balance is short.
//! - **The balance** is the reservoir plus the lanes: the tenant item and its lanes are
//!   read by one query (`begins_with(sk, "TENANT")`: no other sort key of the partition
//!   begins so), and every read of a tenant answers the sum.
//! - **Closed is final**: a lane's debit carries no tenant status, so a closing first
//!   *seals* all 16 lanes (`SET sealed`; a lane's debit and refill require it absent),
//!   then writes the status, then returns them: from the seal on no send is debited from
//!   a lane, and a send refused there reads the tenant (closed: `409`; a closing under
//!   way, or one that failed after sealing: the send takes the tenant item, whose debit
//!   refuses a closed tenant). The close-out returns any lane left.
//! - **Reads are per item**: a query sees each item as committed, not a refill or return
//!   as a whole, so a send about to be refused `402` reads once more first.
//!
//! The memory store has no lanes: one process, one lock, nothing to contend on.

use aws_sdk_dynamodb::types::{Delete, TransactWriteItem, Update};

use super::transact::CancelReason;
use super::{dyn_value, from_item, keys, n, s, DynamoStore, Item};
use crate::domain::{MessageId, TenantId};
use crate::ports::{LedgerEntry, Tenant, TenantStatus};
use crate::store_error::StoreError;

/// How many lanes a tenant's credits may be spread over: as many as a usage row's parts
/// (A79), which measured no write lost to conflicts up to 200 a second
/// (`scripts/model-usage-conflicts`; 200 requests a second is a tenant's default limit).
pub const CREDIT_LANES: u8 = crate::ports::USAGE_SHARDS;

/// How many times a send looks again for where to take its price from before it answers
/// `503` (a lane refilled and emptied by others in between, lanes returned at once).
const DEBIT_ROUNDS: usize = 8;

/// Where a send's debit is taken from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum DebitFrom {
    /// One of the tenant's lanes.
    Lane(u8),
    /// The tenant item itself (a free message, or the reservoir running low).
    Tenant,
}

/// The lane a message's debit goes to: from its id, so sends spread evenly.
pub(super) fn lane_of(message: &MessageId) -> u8 {
    crate::ports::usage_shard(message) % CREDIT_LANES
}

/// How long a process takes a tenant's sends straight to the tenant item after it found
/// the tenant item too low to refill a lane (no lane refilled): a low balance, or a high
/// price, costs a refused lane transaction and a read per send otherwise. A top-up in the
/// meantime is used by lanes from the first look after it.
const TENANT_ITEM_HINT_SECS: i64 = 30;

/// A refill moves at least this many prices into a lane (a sixteenth of the tenant item):
/// below `CREDIT_LANES × REFILL_PRICES` prices the tenant item is debited directly, rather
/// than refilled a price or two at a time (a refill per send or two costs more than the
/// contention it spares: a tenant that low runs out within a few hundred sends).
const REFILL_PRICES: i64 = 8;

fn credits_of(item: &Item) -> i64 {
    item.get("credits")
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// One of a tenant's lanes, as read.
#[derive(Clone, Copy, Debug)]
pub(super) struct Lane {
    pub lane: u8,
    pub credits: i64,
    /// Sealed by a closing: never debited or refilled again, only returned.
    pub sealed: bool,
}

/// A tenant item and its lanes, as read together.
pub(super) struct TenantAndLanes {
    /// The tenant item, its own `credits` (the reservoir).
    pub item: Item,
    pub lanes: Vec<Lane>,
}

impl TenantAndLanes {
    pub fn reservoir(&self) -> i64 {
        credits_of(&self.item)
    }

    pub fn in_lanes(&self) -> i64 {
        self.lanes.iter().map(|l| l.credits).sum()
    }

    fn lane(&self, lane: u8) -> Option<&Lane> {
        self.lanes.iter().find(|l| l.lane == lane)
    }

    fn closed(&self) -> bool {
        str_attr_is(&self.item, "status", "closed")
    }

    /// The tenant, its credits the whole balance.
    pub fn tenant(self) -> Result<Tenant, StoreError> {
        let in_lanes = self.in_lanes();
        let mut t: Tenant = from_item(self.item)?;
        t.credits = t.credits.saturating_add(in_lanes);
        Ok(t)
    }
}

impl DynamoStore {
    /// The tenant item and its lanes: one query of the sort keys beginning with `TENANT`
    /// (the tenant item's and its lanes' only), consistent item by item (not a snapshot of
    /// a refill or return in flight). `None` if there is no live tenant item.
    pub(super) async fn tenant_and_lanes(
        &self,
        id: &TenantId,
    ) -> Result<Option<TenantAndLanes>, StoreError> {
        let mut item = None;
        let mut lanes = Vec::new();
        let mut start = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk AND begins_with(sk, :t)")
                .expression_attribute_values(":pk", s(keys::tenant_pk(id)))
                .expression_attribute_values(":t", s(keys::TENANT_SK))
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| super::classify("dynamodb query", e))?;
            for i in out.items.unwrap_or_default() {
                let sk = i.get(keys::SK).and_then(|v| v.as_s().ok());
                match sk.map(String::as_str) {
                    Some(keys::TENANT_SK) => item = Some(i).filter(|i| self.live(i)),
                    Some(sk) => {
                        if let Some(lane) = keys::credit_lane_of(sk) {
                            lanes.push(Lane {
                                lane,
                                credits: credits_of(&i),
                                sealed: i.contains_key("sealed"),
                            });
                        }
                    }
                    None => {}
                }
            }
            start = out.last_evaluated_key.filter(|k| !k.is_empty());
            if start.is_none() {
                break;
            }
        }
        Ok(item.map(|item| TenantAndLanes { item, lanes }))
    }

    /// The tenant a write answered (`ALL_NEW` of its item), its credits the balance read
    /// after it (the tenant item's and its lanes', one read: a refill landing between the
    /// write and the read is counted once). The write landed whatever this answers: a read
    /// that still fails after a few tries answers the tenant item's own credits, logged.
    pub(super) async fn tenant_with_lanes(&self, item: Item) -> Result<Tenant, StoreError> {
        let mut t: Tenant = from_item(item)?;
        // Twice at most (a plain loop: no closure to instantiate `undo` with).
        let mut read = self.tenant_and_lanes(&t.id).await;
        if read.as_ref().is_err_and(StoreError::is_retryable) {
            read = self.tenant_and_lanes(&t.id).await;
        }
        match read {
            Ok(Some(read)) => t.credits = read.reservoir().saturating_add(read.in_lanes()),
            Ok(None) => {}
            Err(e) => tracing::warn!(
                tenant_id = %t.id,
                error = %e,
                "a tenant write landed, but its credit lanes could not be read after: answering the tenant item's own credits"
            ),
        }
        Ok(t)
    }

    /// Where a send's debit is tried first: its lane, unless it costs nothing (a free
    /// message writes the tenant item, whose condition also refuses a closed tenant) or
    /// this process found the tenant's item too low to refill a lane a moment ago.
    pub(super) fn first_debit(&self, debit: &LedgerEntry, message: &MessageId) -> DebitFrom {
        if debit.amount >= 0 {
            return DebitFrom::Tenant;
        }
        let now = self.now_secs();
        let hints = self.debit_hints.lock().unwrap_or_else(|e| e.into_inner());
        match hints.get(debit.tenant_id.as_str()) {
            Some(until) if *until > now => DebitFrom::Tenant,
            _ => DebitFrom::Lane(lane_of(message)),
        }
    }

    /// Remembers (or forgets) that `tenant`'s sends go to its tenant item for a while.
    fn hint_tenant_item(&self, tenant: &TenantId, on: bool) {
        let mut hints = self.debit_hints.lock().unwrap_or_else(|e| e.into_inner());
        if on {
            // Bounded: a process that met very many low tenants starts afresh.
            if hints.len() >= 10_000 {
                hints.clear();
            }
            hints.insert(
                tenant.to_string(),
                self.now_secs().saturating_add(TENANT_ITEM_HINT_SECS),
            );
        } else {
            hints.remove(tenant.as_str());
        }
    }

    /// A send's debit, as the transaction's item: from a lane (its credits cover the
    /// price) or from the tenant item ([`CreditGuard::Debit`](super::CreditGuard::Debit):
    /// it covers the price and the tenant is not closed).
    pub(super) fn debit_item(
        &self,
        debit: &LedgerEntry,
        from: DebitFrom,
    ) -> Result<TransactWriteItem, StoreError> {
        let DebitFrom::Lane(lane) = from else {
            return self.credit_update(debit, super::CreditGuard::Debit);
        };
        let u = Update::builder()
            .table_name(&self.table)
            .set_key(Some(keys::credit_lane(&debit.tenant_id, lane).attrs()))
            .update_expression("ADD credits :amt")
            .condition_expression("credits >= :need AND attribute_not_exists(sealed)")
            .expression_attribute_values(":amt", n(debit.amount))
            .expression_attribute_values(":need", n(debit.amount.saturating_neg()))
            .build()
            .map_err(|e| StoreError::Corrupt(format!("update: {e}")))?;
        Ok(TransactWriteItem::builder().update(u).build())
    }

    /// Where a send's debit goes next after `from` refused it (its condition: short, or
    /// the tenant closed or gone), the tenant read afresh: a lane refilled, the tenant
    /// item, or the lanes returned first. `round` counts the looks so far; past
    /// [`DEBIT_ROUNDS`] the send is answered `503` (nothing written).
    pub(super) async fn next_debit(
        &self,
        debit: &LedgerEntry,
        from: DebitFrom,
        round: usize,
    ) -> Result<DebitFrom, StoreError> {
        let id = &debit.tenant_id;
        let price = debit.amount.saturating_neg();
        let mut read = self
            .tenant_and_lanes(id)
            .await?
            .ok_or(StoreError::NotFound)?;
        if read.closed() {
            return Err(Self::tenant_closed());
        }
        if read.reservoir().saturating_add(read.in_lanes()) < price {
            // Read once more before a `402`: a return seen half (its lane deleted, the
            // tenant item not yet added to) would count its credits nowhere.
            read = self
                .tenant_and_lanes(id)
                .await?
                .ok_or(StoreError::NotFound)?;
            if read.closed() {
                return Err(Self::tenant_closed());
            }
            if read.reservoir().saturating_add(read.in_lanes()) < price {
                return Err(StoreError::InsufficientCredits);
            }
        }
        if round >= DEBIT_ROUNDS {
            return Err(StoreError::Unavailable(
                "the tenant's credits are contended; try again".into(),
            ));
        }
        let reservoir = read.reservoir();
        let lane = match from {
            DebitFrom::Lane(lane) => read.lane(lane).copied(),
            DebitFrom::Tenant => None,
        };
        match (from, lane) {
            // Sealed by a closing under way, or one that failed after sealing (the tenant
            // reads open): this send takes the tenant item, whose debit refuses a closed
            // tenant. The lane is left sealed (a return here could let a refill make it
            // anew, open, before the closing's status write); its credits still count,
            // and come back with the closing's return, or a return when the tenant item
            // runs short.
            (DebitFrom::Lane(_), Some(l)) if l.sealed => {
                self.hint_tenant_item(id, true);
                Ok(DebitFrom::Tenant)
            }
            (DebitFrom::Lane(lane), _)
                if reservoir
                    >= price
                        .saturating_mul(CREDIT_LANES.into())
                        .saturating_mul(REFILL_PRICES) =>
            {
                // A sixteenth of the reservoir (at least 8 prices): refills are rare while
                // the balance is large, and the reservoir is never emptied into one lane.
                self.hint_tenant_item(id, false);
                self.refill_lane(id, lane, reservoir / i64::from(CREDIT_LANES), price)
                    .await?;
                Ok(from)
            }
            _ if reservoir >= price => {
                self.hint_tenant_item(id, true);
                Ok(DebitFrom::Tenant)
            }
            _ => {
                self.hint_tenant_item(id, true);
                self.return_lanes(id, &read.lanes).await?;
                Ok(DebitFrom::Tenant)
            }
        }
    }

    /// Moves `amount` from the tenant item to `lane`: one transaction, on the tenant item's
    /// condition that it covers it and is not closed, and the lane's that it is still short
    /// of `price` (of the sends that found one lane short at once, one refills it). Refused
    /// (the reservoir or the lane moved on): nothing written, and the send looks again.
    async fn refill_lane(
        &self,
        id: &TenantId,
        lane: u8,
        amount: i64,
        price: i64,
    ) -> Result<(), StoreError> {
        let from = Update::builder()
            .table_name(&self.table)
            .set_key(Some(keys::tenant(id).attrs()))
            .update_expression("ADD credits :amt")
            .condition_expression(
                "attribute_exists(pk) AND credits >= :need AND #status <> :closed",
            )
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":amt", n(amount.saturating_neg()))
            .expression_attribute_values(":need", n(amount))
            .expression_attribute_values(":closed", dyn_value(&TenantStatus::Closed)?)
            .build()
            .map_err(|e| StoreError::Corrupt(format!("update: {e}")))?;
        let to = Update::builder()
            .table_name(&self.table)
            .set_key(Some(keys::credit_lane(id, lane).attrs()))
            .update_expression("ADD credits :amt")
            .condition_expression(
                "(attribute_not_exists(credits) OR credits < :price) AND attribute_not_exists(sealed)",
            )
            .expression_attribute_values(":amt", n(amount))
            .expression_attribute_values(":price", n(price))
            .build()
            .map_err(|e| StoreError::Corrupt(format!("update: {e}")))?;
        let items = vec![
            TransactWriteItem::builder().update(from).build(),
            TransactWriteItem::builder().update(to).build(),
        ];
        match self.transact_retrying_conflicts(items).await {
            Ok(()) => Ok(()),
            Err(e) if e.any(CancelReason::ConditionalCheckFailed) => Ok(()),
            Err(e) => Err(e.into_store_error()),
        }
    }

    /// Returns `lanes` (as read) to the tenant item: each lane deleted on the condition
    /// that it still holds what was read, its credits added to the tenant item, one
    /// transaction a lane. A lane that moved on since is left (a send took from it, or
    /// another return or refill came first). Answers the credits returned.
    pub(super) async fn return_lanes(
        &self,
        id: &TenantId,
        lanes: &[Lane],
    ) -> Result<i64, StoreError> {
        let mut returned = 0i64;
        for &Lane { lane, credits, .. } in lanes {
            let gone = Delete::builder()
                .table_name(&self.table)
                .set_key(Some(keys::credit_lane(id, lane).attrs()))
                .condition_expression("credits = :c")
                .expression_attribute_values(":c", n(credits))
                .build()
                .map_err(|e| StoreError::Corrupt(format!("delete: {e}")))?;
            let back = Update::builder()
                .table_name(&self.table)
                .set_key(Some(keys::tenant(id).attrs()))
                .update_expression("ADD credits :amt")
                .condition_expression("attribute_exists(pk)")
                .expression_attribute_values(":amt", n(credits))
                .build()
                .map_err(|e| StoreError::Corrupt(format!("update: {e}")))?;
            let items = vec![
                TransactWriteItem::builder().delete(gone).build(),
                TransactWriteItem::builder().update(back).build(),
            ];
            match self.transact_retrying_conflicts(items).await {
                Ok(()) => returned = returned.saturating_add(credits),
                Err(e) if e.any(CancelReason::ConditionalCheckFailed) => {}
                Err(e) => return Err(e.into_store_error()),
            }
        }
        Ok(returned)
    }

    /// The tenant a status write answered (`ALL_NEW`), its lanes' credits added; a closing
    /// returns its (sealed) lanes first (a failure there is logged: the closing stands, the
    /// sealed lanes take no debit, and the close-out returns them).
    pub(super) async fn status_written(
        &self,
        id: &TenantId,
        to: &TenantStatus,
        item: Item,
    ) -> Result<Tenant, StoreError> {
        if *to == TenantStatus::Closed {
            self.return_closed_lanes(id).await;
        }
        self.tenant_with_lanes(item).await
    }

    /// Seals all of a tenant's lanes before its closing's status write: each `SET sealed`,
    /// `ADD credits 0` (a lane not made yet is made sealed, empty), unconditional. From then on no send is debited from a lane and none is refilled; a send
    /// refused there reads the tenant and takes the tenant item, whose debit refuses a
    /// closed tenant.
    pub(super) async fn seal_lanes(&self, id: &TenantId) -> Result<(), StoreError> {
        // One after another (a closing is rare; one future, not sixteen).
        for lane in 0..CREDIT_LANES {
            // A send's debit in flight on the lane cancels the seal (nothing written): it
            // goes again.
            super::update_retrying_conflicts(
                self.client
                    .update_item()
                    .table_name(&self.table)
                    .set_key(Some(keys::credit_lane(id, lane).attrs()))
                    .update_expression("SET sealed = :t ADD credits :zero")
                    .expression_attribute_values(
                        ":t",
                        aws_sdk_dynamodb::types::AttributeValue::Bool(true),
                    )
                    .expression_attribute_values(":zero", n(0)),
            )
            .await
            .map_err(|e| super::classify("dynamodb update", e))?;
        }
        Ok(())
    }

    /// A closed tenant's lanes, returned (a failure logged: they stay sealed, and the
    /// close-out returns them).
    pub(super) async fn return_closed_lanes(&self, id: &TenantId) {
        if let Err(e) = self.return_all_lanes(id).await {
            tracing::warn!(
                tenant_id = %id,
                error = %e,
                "a closed tenant's credit lanes were not all returned; its close-out returns them"
            );
        }
    }

    /// Reads the tenant's lanes and returns them all (a closing, a close-out, a campaign's
    /// debit the reservoir alone does not cover). Answers the credits returned.
    pub(super) async fn return_all_lanes(&self, id: &TenantId) -> Result<i64, StoreError> {
        match self.tenant_and_lanes(id).await? {
            Some(read) if !read.lanes.is_empty() => self.return_lanes(id, &read.lanes).await,
            _ => Ok(0),
        }
    }
}

fn str_attr_is(item: &Item, name: &str, value: &str) -> bool {
    item.get(name)
        .and_then(|v| v.as_s().ok())
        .map(String::as_str)
        == Some(value)
}
