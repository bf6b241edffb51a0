//! `ContactStore` on the memory store: the same rules as DynamoDB (a pairing each way; the
//! newest inbound time kept; expired items not answered), under the one lock.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::MemoryStore;
use crate::domain::{OptOutKey, PhoneNumber, TenantId, UserId};
use crate::ports::{ContactStore, Found};
use crate::store_error::StoreError;

#[async_trait]
impl ContactStore for MemoryStore {
    async fn pair_user(
        &self,
        tenant: &TenantId,
        phone: &PhoneNumber,
        user_id: &UserId,
        expires_at: Option<i64>,
    ) -> Result<(), StoreError> {
        let (p, u) = (
            OptOutKey::Phone(phone.clone()),
            OptOutKey::User(user_id.clone()),
        );
        let at = self.clock.now().timestamp_millis();
        let mut s = self.lock()?;
        s.pairings
            .insert((tenant.clone(), p.to_string()), (u.clone(), expires_at, at));
        s.pairings
            .insert((tenant.clone(), u.to_string()), (p, expires_at, at));
        Ok(())
    }

    async fn paired_key(
        &self,
        tenant: &TenantId,
        key: &OptOutKey,
    ) -> Result<Option<OptOutKey>, StoreError> {
        let now = self.now_secs();
        let s = self.lock()?;
        Ok(s.pairings
            .get(&(tenant.clone(), key.to_string()))
            .filter(|(_, exp, _)| exp.is_none_or(|t| t > now))
            .map(|(other, _, _)| other.clone()))
    }

    async fn pairing(
        &self,
        tenant: &TenantId,
        key: &OptOutKey,
    ) -> Result<Option<(OptOutKey, Option<i64>)>, StoreError> {
        let now = self.now_secs();
        let s = self.lock()?;
        Ok(s.pairings
            .get(&(tenant.clone(), key.to_string()))
            .filter(|(_, exp, _)| exp.is_none_or(|t| t > now))
            .map(|(other, _, at)| (other.clone(), Some(*at))))
    }

    async fn unpair(
        &self,
        tenant: &TenantId,
        key: &OptOutKey,
        other: &OptOutKey,
        newer: i64,
    ) -> Result<bool, StoreError> {
        let mut s = self.lock()?;
        let k = (tenant.clone(), key.to_string());
        // As DynamoDB's condition on the stored item: an expired one not yet swept counts.
        if s.pairings
            .get(&k)
            .is_some_and(|(o, _, at)| o == other && *at < newer)
        {
            s.pairings.remove(&k);
            return Ok(true);
        }
        Ok(false)
    }

    async fn found_among(
        &self,
        tenant: &TenantId,
        keys: &[OptOutKey],
    ) -> Result<HashMap<OptOutKey, Found>, StoreError> {
        let now = self.now_secs();
        let s = self.lock()?;
        // As `get_opt_out` and `paired_key` answer them.
        let opt_outs_live = self.config_live(&s, tenant);
        let mut found = HashMap::new();
        for key in keys {
            let k = (tenant.clone(), key.to_string());
            let opt_out = opt_outs_live && s.opt_outs.contains_key(&k);
            let paired = s
                .pairings
                .get(&k)
                .filter(|(_, exp, _)| exp.is_none_or(|t| t > now))
                .map(|(other, _, _)| other.clone());
            if opt_out || paired.is_some() {
                found.insert(key.clone(), Found { opt_out, paired });
            }
        }
        Ok(found)
    }

    async fn opted_out_among(
        &self,
        tenant: &TenantId,
        keys: &[OptOutKey],
    ) -> Result<HashSet<OptOutKey>, StoreError> {
        let s = self.lock()?;
        // As `get_opt_out` answers them.
        if !self.config_live(&s, tenant) {
            return Ok(HashSet::new());
        }
        Ok(keys
            .iter()
            .filter(|k| s.opt_outs.contains_key(&(tenant.clone(), k.to_string())))
            .cloned()
            .collect())
    }

    async fn record_inbound(
        &self,
        tenant: &TenantId,
        phone_number_id: &str,
        key: &OptOutKey,
        at: DateTime<Utc>,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        // Whole seconds, as DynamoDB keeps them.
        let at = DateTime::from_timestamp(at.timestamp(), 0).unwrap_or(at);
        let mut s = self.lock()?;
        let k = (tenant.clone(), phone_number_id.to_owned(), key.to_string());
        match s.windows.get(&k) {
            Some((newer, _)) if *newer >= at => {}
            _ => {
                s.windows.insert(k, (at, expires_at));
            }
        }
        Ok(())
    }

    async fn last_inbound(
        &self,
        tenant: &TenantId,
        phone_number_id: &str,
        key: &OptOutKey,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        let now = self.now_secs();
        let s = self.lock()?;
        Ok(s.windows
            .get(&(tenant.clone(), phone_number_id.to_owned(), key.to_string()))
            .filter(|(_, exp)| *exp > now)
            .map(|(at, _)| *at))
    }
}
