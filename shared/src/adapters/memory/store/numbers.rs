//! `PhoneNumberStore` and `UsageStore` on the memory store: the same rules as DynamoDB,
//! under the one lock.

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};

use super::{message_key, MemoryStore, State};
use crate::domain::{MessageStatus, TemplateQuality, TenantId};
use crate::ports::{
    add_usage_row, usage_shard, NumberHold, PhoneNumberRecord, PhoneNumberStore, PricedMessage,
    StatusChange, TenantStatus, UsageRow, UsageStore,
};
use crate::store_error::StoreError;

/// Adds a priced message to its part of its day's usage row.
pub(super) fn count(s: &mut State, priced: &PricedMessage<'_>) {
    let p = priced.pricing;
    let row = s
        .usage
        .entry((
            priced.tenant.clone(),
            priced.day,
            p.category.clone(),
            p.pricing_type.clone(),
            usage_shard(priced.message),
        ))
        .or_insert_with(|| {
            (
                UsageRow {
                    date: priced.day,
                    category: p.category.clone(),
                    pricing_type: p.pricing_type.clone(),
                    messages: 0,
                    credits: 0,
                },
                priced.expires_at,
            )
        });
    row.0.messages += 1;
    row.0.credits += priced.credits;
    row.1 = priced.expires_at;
}

fn key(t: &TenantId, id: &str) -> (TenantId, String) {
    (t.clone(), id.to_owned())
}

impl MemoryStore {
    /// Adds the number, as DynamoDB's one transaction: its route claimed free (`over:
    /// None`) or taken over from a closed tenant that still holds it.
    fn add_number_claiming(
        &self,
        number: &PhoneNumberRecord,
        over: Option<&TenantId>,
    ) -> Result<(), StoreError> {
        // Never from itself, as on DynamoDB.
        if over == Some(&number.tenant_id) {
            return Err(StoreError::Conflict(
                "phone_number_id already belongs to a tenant".into(),
            ));
        }
        let mut s = self.lock()?;
        super::refuse_if_closed(&s, &number.tenant_id)?;
        let k = key(&number.tenant_id, &number.phone_number_id);
        if !super::route_claimable(&s, &number.phone_number_id, over) || s.numbers.contains_key(&k)
        {
            return Err(StoreError::Conflict(
                "phone_number_id already belongs to a tenant".into(),
            ));
        }
        s.phones
            .insert(number.phone_number_id.clone(), number.tenant_id.clone());
        s.numbers.insert(k, number.clone());
        Ok(())
    }
}

#[async_trait]
impl PhoneNumberStore for MemoryStore {
    async fn add_phone_number(&self, number: &PhoneNumberRecord) -> Result<(), StoreError> {
        self.add_number_claiming(number, None)
    }

    async fn add_phone_number_over_closed(
        &self,
        number: &PhoneNumberRecord,
        closed: &TenantId,
    ) -> Result<(), StoreError> {
        self.add_number_claiming(number, Some(closed))
    }

    async fn put_phone_number_if_absent(
        &self,
        number: &PhoneNumberRecord,
    ) -> Result<bool, StoreError> {
        let mut s = self.lock()?;
        super::refuse_if_closed(&s, &number.tenant_id)?;
        let k = key(&number.tenant_id, &number.phone_number_id);
        if s.numbers.contains_key(&k) {
            return Ok(false);
        }
        s.numbers.insert(k, number.clone());
        Ok(true)
    }

    async fn get_phone_number(
        &self,
        tenant: &TenantId,
        phone_number_id: &str,
    ) -> Result<Option<PhoneNumberRecord>, StoreError> {
        let s = self.lock()?;
        Ok(s.numbers
            .get(&key(tenant, phone_number_id))
            .filter(|_| self.config_live(&s, tenant))
            .cloned())
    }

    async fn list_phone_numbers(
        &self,
        tenant: &TenantId,
    ) -> Result<Vec<PhoneNumberRecord>, StoreError> {
        let s = self.lock()?;
        if !self.config_live(&s, tenant) {
            return Ok(Vec::new());
        }
        Ok(s.numbers
            .range(key(tenant, "")..)
            .take_while(|((t, _), _)| t == tenant)
            .map(|(_, n)| n.clone())
            .collect())
    }

    async fn remove_phone_number(
        &self,
        tenant: &TenantId,
        phone_number_id: &str,
    ) -> Result<(), StoreError> {
        let mut s = self.lock()?;
        let is_default = s
            .tenants
            .get(tenant)
            .is_none_or(|t| t.phone_number_id == phone_number_id);
        let k = key(tenant, phone_number_id);
        if is_default || !s.numbers.contains_key(&k) {
            return Err(StoreError::Conflict(
                "the number is the default or is not the tenant's".into(),
            ));
        }
        s.numbers.remove(&k);
        if s.phones.get(phone_number_id) == Some(tenant) {
            s.phones.remove(phone_number_id);
        }
        Ok(())
    }

    async fn set_default_number(
        &self,
        tenant: &TenantId,
        number: &PhoneNumberRecord,
    ) -> Result<(), StoreError> {
        let mut s = self.lock()?;
        if !s
            .numbers
            .contains_key(&key(tenant, &number.phone_number_id))
        {
            return Err(StoreError::Conflict("no such number".into()));
        }
        let t = s.tenants.get_mut(tenant).ok_or(StoreError::NotFound)?;
        if t.status == TenantStatus::Closed {
            return Err(StoreError::Conflict("the tenant is closed".into()));
        }
        t.phone_number_id = number.phone_number_id.clone();
        t.waba_id = number.waba_id.clone();
        Ok(())
    }

    async fn learn_display_number(
        &self,
        tenant: &TenantId,
        phone_number_id: &str,
        display: &str,
    ) -> Result<bool, StoreError> {
        let mut s = self.lock()?;
        Ok(s.numbers
            .get_mut(&key(tenant, phone_number_id))
            .filter(|n| n.display_phone_number.is_none())
            .map(|n| n.display_phone_number = Some(display.to_owned()))
            .is_some())
    }

    async fn set_number_quality(
        &self,
        tenant: &TenantId,
        phone_number_id: &str,
        quality: Option<TemplateQuality>,
        throughput_per_sec: Option<u32>,
        meta_time: Option<i64>,
    ) -> Result<Option<PhoneNumberRecord>, StoreError> {
        let mut s = self.lock()?;
        let Some(n) = s.numbers.get_mut(&key(tenant, phone_number_id)) else {
            return Ok(None);
        };
        // Meta changed that field later: this one is older.
        let newer =
            |seen: Option<i64>| matches!((meta_time, seen), (Some(at), Some(seen)) if seen > at);
        let mut applied = false;
        if let Some(q) = quality {
            if !newer(n.quality_meta_at) {
                n.quality = q;
                n.quality_meta_at = meta_time.or(n.quality_meta_at);
                applied = true;
            }
        }
        if let Some(t) = throughput_per_sec {
            // An item with a throughput but no time of its own (written when one
            // `quality_meta_at` timed both) goes by `quality_meta_at`, as on DynamoDB.
            let seen = n
                .throughput_meta_at
                .or_else(|| n.throughput_per_sec.and(n.quality_meta_at));
            if !newer(seen) {
                n.throughput_per_sec = Some(t);
                n.throughput_meta_at = meta_time.or(n.throughput_meta_at);
                applied = true;
            }
        }
        Ok(applied.then(|| n.clone()))
    }

    async fn hold_phone_number(
        &self,
        tenant: &TenantId,
        phone_number_id: &str,
        hold: &NumberHold,
        signal_at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let mut s = self.lock()?;
        let Some(n) = s.numbers.get_mut(&key(tenant, phone_number_id)) else {
            return Ok(false);
        };
        if n.hold.is_some()
            || n.resumed_at_ms
                .is_some_and(|r| r > signal_at.timestamp_millis())
        {
            return Ok(false);
        }
        // As DynamoDB's adapter decodes it (`NumberHold::reason`).
        let mut hold = hold.clone();
        hold.reason = crate::domain::error_text::read_back_reason(&hold.reason);
        n.hold = Some(hold);
        Ok(true)
    }

    async fn resume_phone_number(
        &self,
        tenant: &TenantId,
        phone_number_id: &str,
        at: DateTime<Utc>,
    ) -> Result<Option<PhoneNumberRecord>, StoreError> {
        let mut s = self.lock()?;
        let Some(n) = s
            .numbers
            .get_mut(&key(tenant, phone_number_id))
            .filter(|n| n.hold.is_some())
        else {
            return Ok(None);
        };
        n.hold = None;
        n.resumed_at_ms = Some(at.timestamp_millis());
        Ok(Some(n.clone()))
    }
}

#[async_trait]
impl UsageStore for MemoryStore {
    async fn record_pricing(&self, priced: &PricedMessage<'_>) -> Result<bool, StoreError> {
        let mut s = self.lock()?;
        let Some(m) = s
            .messages
            .get_mut(message_key(&(priced.tenant, priced.message)))
            .filter(|m| m.pricing.is_none())
        else {
            return Ok(false);
        };
        let m = std::sync::Arc::make_mut(m);
        m.pricing = Some(priced.pricing.clone());
        count(&mut s, priced);
        Ok(true)
    }

    async fn transition_priced(
        &self,
        priced: &PricedMessage<'_>,
        from: &[MessageStatus],
        to: MessageStatus,
        change: &StatusChange,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        // One lock for the move, the pricing and the row: as one transaction on DynamoDB.
        let mut s = self.lock()?;
        let now = self.clock.now().timestamp();
        let Some(m) = s
            .messages
            .get_mut(message_key(&(priced.tenant, priced.message)))
            .filter(|m| m.expires_at.is_none_or(|t| t > now))
            .filter(|m| m.pricing.is_none() && to.may_follow(m.status) && from.contains(&m.status))
        else {
            return Ok(false);
        };
        let m = std::sync::Arc::make_mut(m);
        super::apply(m, to, change, at);
        m.pricing = Some(priced.pricing.clone());
        count(&mut s, priced);
        Ok(true)
    }

    async fn usage(
        &self,
        tenant: &TenantId,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<UsageRow>, StoreError> {
        let s = self.lock()?;
        let mut rows = Vec::new();
        for (_, (row, _)) in s
            .usage
            .range((tenant.clone(), from, String::new(), String::new(), 0)..)
            .take_while(|((t, d, _, _, _), _)| t == tenant && *d <= to)
            .filter(|(_, (_, exp))| self.live(*exp))
        {
            add_usage_row(&mut rows, row.clone());
        }
        Ok(rows)
    }
}
