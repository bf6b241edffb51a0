//! `OptOutStore` on the memory store: the same rules as DynamoDB, under the one lock.

use async_trait::async_trait;

use super::MemoryStore;
use crate::domain::{OptOut, OptOutKey, OptOutScope, OptedIn, TenantId};
use crate::ports::{OptOutPage, OptOutStore};
use crate::store_error::StoreError;

#[async_trait]
impl OptOutStore for MemoryStore {
    async fn opted_in(
        &self,
        tenant: &TenantId,
        key: &OptOutKey,
    ) -> Result<Option<OptedIn>, StoreError> {
        let s = self.lock()?;
        let now = self.clock.now().timestamp();
        Ok(s.opted_in
            .get(&(tenant.clone(), key.to_string()))
            .filter(|(_, expires)| *expires > now)
            .map(|(o, _)| *o))
    }

    async fn put_opt_out_paired(
        &self,
        opt_out: &OptOut,
        paired: Option<&OptOutKey>,
    ) -> Result<(OptOut, bool), StoreError> {
        self.put_folded(opt_out, None, paired)?
            .ok_or_else(|| StoreError::Corrupt("an opt-out put without a source refused".into()))
    }

    async fn put_opt_out_copy(&self, copy: &OptOut, of: &OptOutKey) -> Result<bool, StoreError> {
        Ok(self.put_folded(copy, Some(of), None)?.is_some())
    }

    async fn get_opt_out(
        &self,
        tenant: &TenantId,
        key: &OptOutKey,
    ) -> Result<Option<OptOut>, StoreError> {
        let s = self.lock()?;
        Ok(s.opt_outs
            .get(&(tenant.clone(), key.to_string()))
            .filter(|_| self.config_live(&s, tenant))
            .cloned())
    }

    async fn delete_opt_out_not_newer_than(
        &self,
        tenant: &TenantId,
        key: &OptOutKey,
        at: i64,
    ) -> Result<bool, StoreError> {
        let mut s = self.lock()?;
        let key = (tenant.clone(), key.to_string());
        self.opt_back_in(&mut s, &key, OptOutScope::All, at);
        match s.opt_outs.get(&key) {
            Some(o) if o.replies_not_newer_than(at) => Ok(s.opt_outs.remove(&key).is_some()),
            _ => Ok(false),
        }
    }

    async fn delete_opt_out_of_scope(
        &self,
        tenant: &TenantId,
        key: &OptOutKey,
        scope: OptOutScope,
        at: i64,
    ) -> Result<bool, StoreError> {
        let mut s = self.lock()?;
        let key = (tenant.clone(), key.to_string());
        self.opt_back_in(&mut s, &key, scope, at);
        match s.opt_outs.get(&key) {
            Some(o) if o.scope == scope && o.replies_not_newer_than(at) => {
                Ok(s.opt_outs.remove(&key).is_some())
            }
            _ => Ok(false),
        }
    }

    async fn delete_opt_out(&self, tenant: &TenantId, key: &OptOutKey) -> Result<bool, StoreError> {
        let mut s = self.lock()?;
        Ok(s.opt_outs
            .remove(&(tenant.clone(), key.to_string()))
            .is_some())
    }

    async fn delete_opt_outs(
        &self,
        tenant: &TenantId,
        keys: &[OptOutKey],
    ) -> Result<(), StoreError> {
        crate::ports::check_opt_outs_removed(keys)?;
        // Under the one lock, as DynamoDB's one transaction.
        let mut s = self.lock()?;
        for key in keys {
            s.opt_outs.remove(&(tenant.clone(), key.to_string()));
        }
        Ok(())
    }

    async fn list_opt_outs(
        &self,
        tenant: &TenantId,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<OptOutPage, StoreError> {
        // The cursor names the last key (phone or user id) of the previous page.
        let after = match cursor {
            Some(c) => Some(
                OptOutKey::parse_stored(&super::cursor_position(c, tenant, "OPTOUT")?)
                    .ok_or(StoreError::InvalidCursor)?
                    .to_string(),
            ),
            None => None,
        };
        let s = self.lock()?;
        let live = self.config_live(&s, tenant);
        let mut matching = s
            .opt_outs
            .iter()
            .filter(|((t, key), _)| live && t == tenant && after.as_ref().is_none_or(|a| key > a));
        let page: Vec<(&String, &OptOut)> = matching
            .by_ref()
            .take(limit.max(1))
            .map(|((_, key), o)| (key, o))
            .collect();
        // The cursor is the key the last one is kept under (a copy under a user id may also
        // name a phone: its own `key()` would be the phone's, and the page would repeat).
        let next_cursor = if matching.next().is_some() {
            page.last()
                .map(|(key, _)| super::page_cursor(tenant, "OPTOUT", key))
        } else {
            None
        };
        let mut opt_outs = Vec::with_capacity(page.len());
        let mut keys = Vec::with_capacity(page.len());
        for (key, o) in page {
            keys.push(
                OptOutKey::parse_stored(key)
                    .ok_or_else(|| StoreError::Corrupt("opt-out key".into()))?,
            );
            opt_outs.push(o.clone());
        }
        Ok(OptOutPage {
            opt_outs,
            keys,
            next_cursor,
        })
    }
}

impl MemoryStore {
    /// Records an opting back in to `scope` at `at` (the newest kept), as DynamoDB does.
    fn opt_back_in(
        &self,
        s: &mut super::State,
        key: &(TenantId, String),
        scope: OptOutScope,
        at: i64,
    ) {
        let now = self.clock.now();
        let expires = now.timestamp() + crate::domain::OPTED_IN_RETENTION.as_secs() as i64;
        let entry = s
            .opted_in
            .entry(key.clone())
            .or_insert((OptedIn::default(), expires));
        if entry.1 <= now.timestamp() {
            *entry = (OptedIn::default(), expires);
        }
        let field = match scope {
            OptOutScope::All => &mut entry.0.all_at,
            OptOutScope::Marketing => &mut entry.0.marketing_at,
        };
        if field.is_none_or(|t| t < at) {
            *field = Some(at);
            entry.1 = expires;
        }
    }
}

impl MemoryStore {
    /// `put_opt_out`, and with `source` only while the opt-out under `source` exists
    /// (under the same lock): `None` when it is gone, nothing written.
    fn put_folded(
        &self,
        opt_out: &OptOut,
        source: Option<&OptOutKey>,
        paired: Option<&OptOutKey>,
    ) -> Result<Option<(OptOut, bool)>, StoreError> {
        let key = match source {
            Some(of) => opt_out.copy_key(of),
            None => opt_out.key(),
        }
        .ok_or_else(|| StoreError::Rejected("an opt-out names no phone or user id".into()))?;
        let mut s = self.lock()?;
        if let Some(of) = source {
            if !s
                .opt_outs
                .contains_key(&(opt_out.tenant_id.clone(), of.to_string()))
            {
                return Ok(None);
            }
        }
        // Held back by the opting back in of any key the user is known by here: the one
        // it is kept under, the other it records, the one it is paired with (as on
        // DynamoDB, one check of each).
        let now = self.clock.now().timestamp();
        let overridden = opt_out.opted_in_keys(&key, paired).iter().any(|k| {
            s.opted_in
                .get(&(opt_out.tenant_id.clone(), k.to_string()))
                .is_some_and(|(o, expires)| *expires > now && o.overrides(opt_out))
        });
        let key = (opt_out.tenant_id.clone(), key.to_string());
        let existing = s.opt_outs.get(&key);
        // As on DynamoDB: what changes nothing answers what is stored, before any check.
        let Some(stored) = OptOut::folded(existing, opt_out) else {
            return Ok(Some((
                existing.cloned().unwrap_or_else(|| opt_out.clone()),
                false,
            )));
        };
        // Never for a closed tenant (as on DynamoDB, the write's first check: its
        // close-out's TTL would miss it).
        if s.tenants
            .get(&opt_out.tenant_id)
            .is_some_and(|t| t.status == crate::ports::TenantStatus::Closed)
        {
            return match source {
                Some(_) => Ok(None),
                None => Err(StoreError::Conflict(crate::ports::TENANT_CLOSED.into())),
            };
        }
        if overridden {
            return Ok(Some((
                existing.cloned().unwrap_or_else(|| opt_out.clone()),
                false,
            )));
        }
        let was_new = existing.is_none();
        s.opt_outs.insert(key, stored.clone());
        Ok(Some((stored, was_new)))
    }
}
