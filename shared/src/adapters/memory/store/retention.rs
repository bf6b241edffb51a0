//! `RetentionStore` in memory: the same keys and classes as the table, one page per pass.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::{json, to_value};

use super::MemoryStore;
use crate::domain::{RetentionClass, TenantId};
use crate::ports::{
    CloseOutCounts, CloseOutTtls, RetentionStore, StoredItem, SweepPage, TenantStatus,
};
use crate::store_error::StoreError;

fn add(page: &mut SweepPage, class: RetentionClass, n: usize) {
    if n > 0 {
        *page.deleted.entry(class.as_str()).or_default() += n;
    }
}

#[async_trait]
impl RetentionStore for MemoryStore {
    async fn sweep_page(
        &self,
        now: DateTime<Utc>,
        _start: Option<&str>,
        _page_size: usize,
    ) -> Result<SweepPage, StoreError> {
        let now = now.timestamp();
        let expired = |e: Option<i64>| e.is_some_and(|t| t <= now);
        let mut s = self.lock()?;
        let mut page = SweepPage::default();
        let before = s.messages.len();
        s.messages.retain(|_, m| !expired(m.expires_at));
        let mut msgs = before - s.messages.len();
        let before = s.wamids.len();
        s.wamids.retain(|_, (_, _, e)| !expired(*e));
        msgs += before - s.wamids.len();
        add(&mut page, RetentionClass::Messages, msgs);
        let before = s.ledger.len();
        s.ledger.retain(|e| !expired(e.expires_at));
        add(&mut page, RetentionClass::Billing, before - s.ledger.len());
        let before = s.quality.len();
        s.quality.retain(|_, (_, e)| !expired(*e));
        add(&mut page, RetentionClass::Stats, before - s.quality.len());
        let mut audit = 0;
        for (_, events) in s.audit.values_mut() {
            let before = events.len();
            events.retain(|_, e| !expired(e.expires_at));
            audit += before - events.len();
        }
        add(&mut page, RetentionClass::Audit, audit);
        let before = s.idempotency.len();
        s.idempotency.retain(|_, r| !expired(r.expires_at));
        add(
            &mut page,
            RetentionClass::Idempotency,
            before - s.idempotency.len(),
        );
        let sessions = s.users.remove_expired(now);
        add(&mut page, RetentionClass::Session, sessions);
        // Closed-out tenants whose items have reached the TTLs the close-out gave them.
        let done: Vec<(TenantId, CloseOutTtls)> = s
            .closed_out
            .iter()
            .map(|(t, (_, x))| (t.clone(), *x))
            .collect();
        for (t, ttls) in done {
            if expired(Some(ttls.config)) {
                let mut n = 0;
                let before = s.keys.len();
                s.keys.retain(|_, k| k.tenant_id != t);
                n += 2 * (before - s.keys.len()); // both copies
                let before = s.opt_outs.len();
                s.opt_outs.retain(|(tt, _), _| tt != &t);
                n += before - s.opt_outs.len();
                n += s.users.remove_tenant(&t);
                add(&mut page, RetentionClass::ActiveConfig, n);
            }
            if expired(Some(ttls.audit_head)) {
                let chain = t.to_string();
                if s.audit.get(&chain).is_some_and(|(_, ev)| ev.is_empty()) {
                    s.audit.remove(&chain);
                    add(&mut page, RetentionClass::ActiveConfig, 1);
                }
            }
            if expired(Some(ttls.tenant)) && s.tenants.remove(&t).is_some() {
                add(&mut page, RetentionClass::Billing, 1);
            }
        }
        page.closed_tenants = s
            .tenants
            .values()
            .filter(|t| t.status == TenantStatus::Closed && !s.closed_out.contains_key(&t.id))
            .map(|t| t.id.clone())
            .collect();
        page.closed_tenants.sort();
        page.examined = 1;
        Ok(page)
    }

    async fn checkpoint(&self) -> Result<Option<String>, StoreError> {
        Ok(self.lock()?.checkpoint.clone())
    }

    async fn save_checkpoint(
        &self,
        next: Option<&str>,
        _at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.lock()?.checkpoint = next.map(str::to_owned);
        Ok(())
    }

    async fn close_out(
        &self,
        tenant: &TenantId,
        ttls: CloseOutTtls,
        now: DateTime<Utc>,
    ) -> Result<CloseOutCounts, StoreError> {
        let mut s = self.lock()?;
        let mut counts = CloseOutCounts::default();
        let Some(t) = s.tenants.get(tenant).cloned() else {
            return Ok(counts);
        };
        if t.status != TenantStatus::Closed {
            return Ok(counts); // only a closed tenant is closed out
        }
        for k in s.keys.values_mut().filter(|k| &k.tenant_id == tenant) {
            if !k.revoked {
                k.revoked = true;
                k.revoked_at = Some(now);
                counts.keys_revoked += 1;
            }
        }
        counts.sessions_deleted = s.users.delete_sessions_of(tenant);
        if s.phones.get(&t.phone_number_id) == Some(tenant) {
            s.phones.remove(&t.phone_number_id);
            counts.phone_route_removed = true;
        }
        if t.status == TenantStatus::Closed && !s.closed_out.contains_key(tenant) {
            s.closed_out.insert(tenant.clone(), (now, ttls));
            counts.items_given_ttl = 1;
        }
        Ok(counts)
    }

    async fn closed_out_at(&self, tenant: &TenantId) -> Result<Option<DateTime<Utc>>, StoreError> {
        Ok(self.lock()?.closed_out.get(tenant).map(|(at, _)| *at))
    }

    async fn stored_items(&self) -> Result<Vec<StoredItem>, StoreError> {
        let s = self.lock()?;
        let closed = |t: &TenantId| s.closed_out.get(t).map(|(_, x)| *x);
        let config_ttl = |t: &TenantId| closed(t).map(|x| x.config);
        let mut out = Vec::new();
        let mut item = |pk: String, sk: String, ttl: Option<i64>, attributes: serde_json::Value| {
            out.push(StoredItem {
                pk,
                sk,
                ttl,
                attributes,
            })
        };
        for (id, t) in &s.tenants {
            let mut a = to_value(t).unwrap_or_default();
            if let (Some((at, _)), Some(o)) = (s.closed_out.get(id), a.as_object_mut()) {
                o.insert("closed_out_at".into(), json!(at));
            }
            item(
                format!("TENANT#{id}"),
                "TENANT".into(),
                closed(id).map(|x| x.tenant),
                a,
            );
        }
        for (pnid, t) in &s.phones {
            item(
                format!("PHONE#{pnid}"),
                "PHONE".into(),
                None,
                json!({"tenant_id": t}),
            );
        }
        for k in s.keys.values() {
            let a = to_value(k).unwrap_or_default();
            let ttl = config_ttl(&k.tenant_id);
            item(
                format!("APIKEY#{}", k.key_hash),
                "APIKEY".into(),
                ttl,
                a.clone(),
            );
            item(
                format!("TENANT#{}", k.tenant_id),
                format!("APIKEY#{}", k.id),
                ttl,
                a,
            );
        }
        for ((t, id), m) in &s.messages {
            item(
                format!("TENANT#{t}"),
                format!("MSG#{id}"),
                m.expires_at,
                to_value(m).unwrap_or_default(),
            );
        }
        for ((t, id), (b, list)) in &s.broadcasts {
            item(
                format!("TENANT#{t}"),
                format!("BROADCAST#{id}"),
                b.expires_at,
                to_value(b).unwrap_or_default(),
            );
            if list.is_some() {
                // The DynamoDB list item's 7-day backstop (memory lists need none).
                item(
                    format!("TENANT#{t}"),
                    format!("BCLIST#{id}"),
                    Some(b.created_at.timestamp() + 7 * 86_400),
                    json!({}),
                );
            }
        }
        for e in &s.ledger {
            item(
                format!("TENANT#{}", e.tenant_id),
                format!("LEDGER#{}", e.id),
                e.expires_at,
                to_value(e).unwrap_or_default(),
            );
        }
        for (w, (t, m, exp)) in &s.wamids {
            item(
                format!("WAMID#{w}"),
                "WAMID".into(),
                *exp,
                json!({"tenant_id": t, "message_id": m}),
            );
        }
        for (chain, (head, events)) in &s.audit {
            let head_ttl = TenantId::parse(chain)
                .and_then(|t| closed(&t))
                .map(|x| x.audit_head);
            item(
                format!("AUDIT#{chain}"),
                "HEAD".into(),
                head_ttl,
                json!({"seq": head.seq, "hash": head.hash}),
            );
            for e in events.values() {
                item(
                    format!("AUDIT#{chain}"),
                    format!("EVENT#{:016}", e.seq),
                    e.expires_at,
                    to_value(e).unwrap_or_default(),
                );
            }
        }
        for ((t, day), (c, exp)) in &s.quality {
            item(
                format!("TENANT#{t}"),
                format!("QSTAT#{}", day.format("%Y-%m-%d")),
                *exp,
                json!({"sent": c.sent, "opt_outs": c.opt_outs, "undeliverable": c.undeliverable}),
            );
        }
        for ((t, phone), o) in &s.opt_outs {
            item(
                format!("TENANT#{t}"),
                format!("OPTOUT#{phone}"),
                config_ttl(t),
                to_value(o).unwrap_or_default(),
            );
        }
        for ((t, hash), r) in &s.idempotency {
            item(
                format!("TENANT#{t}"),
                format!("IDEM#{hash}"),
                r.expires_at,
                to_value(r).unwrap_or_default(),
            );
        }
        if let Some(next) = &s.checkpoint {
            item(
                "RETENTION".into(),
                "CHECKPOINT".into(),
                None,
                json!({"next": next}),
            );
        }
        out.extend(s.users.stored(&config_ttl));
        Ok(out)
    }
}
