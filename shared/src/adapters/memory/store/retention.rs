//! `RetentionStore` in memory: the same item types, keys and classes as the table
//! (`adapters::aws::keys`), one page per pass. The sweep removes every item type that can
//! expire, as DynamoDB's does, and counts each under its type's class.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::{json, to_value};

use super::MemoryStore;
use crate::adapters::aws::keys::{self, ItemKind, Key};
use crate::domain::TenantId;
use crate::ports::{
    CloseOutCounts, CloseOutTtls, RetentionStore, StoredItem, SweepPage, TenantStatus,
};
use crate::store_error::StoreError;

/// Keeps what `keep` accepts of `$items` (a map or a list) and counts the rest as deleted
/// items of `$kind`'s class, and every one looked at as examined (DynamoDB's scan reads
/// each item of the table).
macro_rules! sweep {
    ($page:expr, $kind:expr, $items:expr, $keep:expr) => {{
        let before = $items.len();
        $page.examined += before;
        $items.retain($keep);
        $page.count($kind.class(), before - $items.len());
    }};
}

#[async_trait]
impl RetentionStore for MemoryStore {
    async fn sweep_page(
        &self,
        now: DateTime<Utc>,
        _start: Option<&str>,
        _page_size: usize,
    ) -> Result<SweepPage, StoreError> {
        use ItemKind as K;
        let now = now.timestamp();
        let expired = |e: Option<i64>| e.is_some_and(|t| t <= now);
        let live = |e: Option<i64>| !expired(e);
        let mut guard = self.lock()?;
        let s = &mut *guard;
        let mut page = SweepPage::default();
        // Item types that carry their own TTL from the start.
        sweep!(page, K::Message, s.messages, |_, m| live(m.expires_at));
        sweep!(page, K::WamidIndex, s.wamids, |_, w| live(w.2));
        sweep!(page, K::PendingStatus, s.pending, |_, p| live(p.expires_at));
        sweep!(page, K::OptedIn, s.opted_in, |_, o| o.1 > now);
        sweep!(page, K::OwedCallback, s.owed_callbacks, |_, o| live(
            o.expires_at
        ));
        sweep!(page, K::CallbackFailure, s.callback_failures, |_, f| live(
            f.expires_at
        ));
        // A wamid's mark alone (no index yet) counts as what it stands for: kept statuses.
        sweep!(page, K::PendingStatus, s.wamid_marks, |_, e| live(*e));
        sweep!(page, K::Broadcast, s.broadcasts, |_, b| live(b.expires_at));
        sweep!(page, K::BroadcastList, s.broadcast_lists, |_, l| l.1 > now);
        sweep!(page, K::LedgerEntry, s.ledger, |e| live(e.expires_at));
        sweep!(page, K::QualityCounter, s.quality, |_, q| live(q.1));
        sweep!(page, K::UsageCounter, s.usage, |_, u| live(u.1));
        for (_, events) in s.audit.values_mut() {
            sweep!(page, K::AuditEvent, events, |_, e| live(e.expires_at));
        }
        sweep!(page, K::AuditParked, s.audit_parked, |_, p| live(
            p.expires_at
        ));
        sweep!(page, K::AuditIntent, s.audit_intents, |_, i| live(
            i.expires_at
        ));
        // The tenants' own items, and both copies of each key, are read too.
        page.examined += s.tenants.len() + 2 * s.keys.len();
        // An ended key's two copies, its retention after it ended.
        let before = s.keys.len();
        s.keys.retain(|_, k| live(k.ttl()));
        let removed = before - s.keys.len();
        page.count(K::ApiKeyByHash.class(), removed);
        page.count(K::ApiKeyOfTenant.class(), removed);
        sweep!(page, K::Idempotency, s.idempotency, |_, r| live(
            r.expires_at
        ));
        sweep!(page, K::Idempotency, s.request_keys, |_, r| live(
            r.expires_at
        ));
        sweep!(page, K::SendSlot, s.rate, |_, r| r.1 > now);
        sweep!(page, K::HeavyLease, s.heavy_leases, |_, l| l.ttl > now);
        sweep!(page, K::Template, s.templates, |_, t| live(t.expires_at));
        // Removed templates' tombstones are template items (on DynamoDB, the same key).
        sweep!(page, K::Template, s.template_removed, |_, r| r.1 > now);
        // Meta's times of a template's changes go with it (on DynamoDB, its attributes).
        let templates = &s.templates;
        s.template_meta_at.retain(|k, _| templates.contains_key(k));
        sweep!(page, K::UserPairing, s.pairings, |_, p| live(p.1));
        sweep!(page, K::ServiceWindow, s.windows, |_, w| live(Some(w.1)));
        page.count(K::Session.class(), s.users.remove_expired(now));
        page.count(
            K::LoginFailuresOfEmail.class(),
            s.users.remove_expired_login_counters(now),
        );
        // The opt-outs and numbers are read too (once; the closed-out tenants' pass below
        // looks at them again, which a scan does not).
        page.examined += s.opt_outs.len() + s.numbers.len();
        let examined = page.examined;
        // Closed-out tenants whose items have reached the TTLs the close-out gave them.
        let done: Vec<(TenantId, CloseOutTtls)> = s
            .closed_out
            .iter()
            .map(|(t, (_, x))| (t.clone(), *x))
            .collect();
        for (t, ttls) in done {
            if expired(Some(ttls.config)) {
                // Both copies of each key.
                let before = s.keys.len();
                s.keys.retain(|_, k| k.tenant_id != t);
                let removed = before - s.keys.len();
                page.count(K::ApiKeyByHash.class(), removed);
                page.count(K::ApiKeyOfTenant.class(), removed);
                sweep!(page, K::OptOut, s.opt_outs, |(tt, _), _| tt != &t);
                sweep!(page, K::PhoneNumber, s.numbers, |(tt, _), _| tt != &t);
                let callback = s.status_callbacks.remove(&t).map_or(0, |_| 1);
                page.count(K::StatusCallback.class(), callback);
                // Users, their email claims and the 2FA setting.
                page.count(K::User.class(), s.users.remove_tenant(&t));
            }
            let chain = t.to_string();
            let head_ttl = s.audit.get(&chain).and_then(|(h, _)| h.as_ref()?.ttl);
            if expired(head_ttl.or(Some(ttls.audit_head)))
                && s.audit.get(&chain).is_some_and(|(_, ev)| ev.is_empty())
            {
                s.audit.remove(&chain);
                page.count(K::AuditHead.class(), 1);
            }
            if expired(Some(ttls.tenant)) && s.tenants.remove(&t).is_some() {
                page.count(K::Tenant.class(), 1);
            }
        }
        page.examined = examined;
        let stale = now.saturating_sub(crate::domain::UNSENT_STALE_AFTER.as_secs() as i64);
        page.stale_messages =
            s.messages
                .values()
                .filter(|m| match m.status {
                    crate::domain::MessageStatus::Accepted
                    | crate::domain::MessageStatus::Sending => m.updated_at.timestamp() < stale,
                    crate::domain::MessageStatus::Scheduled => {
                        m.send_at.is_some_and(|at| at.timestamp() < stale)
                    }
                    _ => false,
                })
                .map(|m| (m.tenant_id.clone(), m.id.to_string()))
                .collect();
        page.stale_broadcasts = s
            .broadcasts
            .values()
            .filter(|b| {
                matches!(
                    b.status,
                    crate::ports::BroadcastStatus::Scheduled
                        | crate::ports::BroadcastStatus::FanningOut
                ) && b
                    .list_expires_at()
                    .saturating_add(crate::domain::LOST_FANOUT_MARGIN.as_secs() as i64)
                    <= now
            })
            .map(|b| (b.tenant_id.clone(), b.id.clone()))
            .collect();
        page.closed_tenants = s
            .tenants
            .values()
            .filter(|t| t.status == TenantStatus::Closed && !s.closed_out.contains_key(&t.id))
            .map(|t| t.id.clone())
            .collect();
        page.closed_tenants.sort();
        page.active_tenants = s
            .tenants
            .values()
            .filter(|t| t.status == TenantStatus::Active)
            .map(|t| t.id.clone())
            .collect();
        page.active_tenants.sort();
        page.suspended_tenants = s
            .tenants
            .values()
            .filter(|t| t.status == TenantStatus::Suspended)
            .map(|t| t.id.clone())
            .collect();
        page.suspended_tenants.sort();
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
        deadline: std::time::Instant,
    ) -> Result<CloseOutCounts, StoreError> {
        let mut s = self.lock()?;
        let mut counts = CloseOutCounts::default();
        let Some(t) = s.tenants.get(tenant).cloned() else {
            return Ok(counts);
        };
        if t.status != TenantStatus::Closed {
            return Ok(counts); // only a closed tenant is closed out
        }
        let now_secs = now.timestamp();
        for k in s.keys.values_mut().filter(|k| &k.tenant_id == tenant) {
            // As the table's adapter, which no longer finds a key past its own TTL.
            if !k.revoked && k.ttl().is_none_or(|t| t > now_secs) {
                k.revoked = true;
                k.revoked_at = Some(now);
                counts.keys_revoked += 1;
            }
        }
        // As the table's adapter: the keys first, then the rest only before the deadline.
        if std::time::Instant::now() >= deadline {
            counts.cut_short = true;
            return Ok(counts);
        }
        // Its users' emails freed, their sign-in material removed.
        counts.emails_freed = s.users.close_out_tenant(tenant);
        if s.phones.get(&t.phone_number_id) == Some(tenant) {
            s.phones.remove(&t.phone_number_id);
            counts.phone_route_removed = true;
        }
        // The routes of its other numbers too (their items expire with its config).
        s.phones.retain(|_, owner| owner != tenant);
        if t.status == TenantStatus::Closed && !s.closed_out.contains_key(tenant) {
            s.closed_out.insert(tenant.clone(), (now, ttls));
            if let Some((Some(head), _)) = s.audit.get_mut(tenant.as_str()) {
                // Or its newest event's expiry, if an append since made it later.
                let ttl = ttls
                    .audit_head
                    .max(head.expires_at.unwrap_or(ttls.audit_head));
                head.ttl.get_or_insert(ttl);
            }
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
        let mut item = |key: Key, ttl: Option<i64>, attributes: serde_json::Value| {
            out.push(StoredItem {
                pk: key.pk,
                sk: key.sk,
                ttl,
                attributes,
            })
        };
        for (id, t) in &s.tenants {
            let mut a = to_value(t).unwrap_or_default();
            if let (Some((at, _)), Some(o)) = (s.closed_out.get(id), a.as_object_mut()) {
                o.insert("closed_out_at".into(), json!(at));
            }
            item(keys::tenant(id), closed(id).map(|x| x.tenant), a);
        }
        for (pnid, t) in &s.phones {
            item(keys::phone_route(pnid), None, json!({"tenant_id": t}));
        }
        for k in s.keys.values() {
            let a = to_value(k).unwrap_or_default();
            // The earlier of its own (an ended key's) and the close-out's.
            let ttl = match (k.ttl(), config_ttl(&k.tenant_id)) {
                (Some(own), Some(config)) => Some(own.min(config)),
                (own, config) => own.or(config),
            };
            item(keys::api_key_by_hash(&k.key_hash), ttl, a.clone());
            item(keys::api_key_of_tenant(&k.tenant_id, &k.id), ttl, a);
        }
        for ((t, id), m) in s.messages.iter() {
            item(
                keys::message(t, id),
                m.expires_at,
                to_value(&**m).unwrap_or_default(),
            );
        }
        for ((t, id), b) in &s.broadcasts {
            item(
                keys::broadcast(t, id),
                b.expires_at,
                to_value(b).unwrap_or_default(),
            );
        }
        for ((t, id), (phones, expires)) in &s.broadcast_lists {
            item(
                keys::broadcast_list(t, id),
                Some(*expires),
                json!({"phones": phones}),
            );
        }
        for e in &s.ledger {
            item(
                keys::ledger_entry(&e.tenant_id, &e.id),
                e.expires_at,
                to_value(e).unwrap_or_default(),
            );
        }
        for (w, (t, m, exp, marked)) in &s.wamids {
            let mut attrs = json!({"tenant_id": t, "message_id": m});
            if *marked {
                attrs["pending_kept"] = json!(true);
            }
            item(keys::wamid_index(w), *exp, attrs);
        }
        for (w, exp) in &s.wamid_marks {
            item(keys::wamid_index(w), *exp, json!({"pending_kept": true}));
        }
        for ((w, sk), p) in &s.pending {
            item(
                Key {
                    pk: keys::wamid_pk(w),
                    sk: sk.clone(),
                },
                p.expires_at,
                to_value(p).unwrap_or_default(),
            );
        }
        for (sk, o) in &s.owed_callbacks {
            item(
                Key {
                    pk: keys::owed_callbacks_pk().to_owned(),
                    sk: sk.clone(),
                },
                o.expires_at,
                to_value(o).unwrap_or_default(),
            );
        }
        for ((t, id), f) in &s.callback_failures {
            item(
                keys::callback_failure(t, id),
                f.expires_at,
                to_value(f).unwrap_or_default(),
            );
        }
        for (chain, (head, events)) in &s.audit {
            if let Some(head) = head {
                item(
                    keys::audit_head(chain),
                    head.ttl,
                    json!({"seq": head.seq, "hash": head.hash, "event_expires_at": head.expires_at, "signature": head.signature}),
                );
            }
            for e in events.values() {
                item(
                    keys::audit_event(chain, e.seq),
                    e.expires_at,
                    to_value(e).unwrap_or_default(),
                );
            }
        }
        for (id, i) in &s.audit_intents {
            item(
                keys::audit_intent(id),
                i.expires_at,
                to_value(i).unwrap_or_default(),
            );
        }
        for ((chain, id), p) in &s.audit_parked {
            item(
                keys::audit_parked(chain, id),
                p.expires_at,
                to_value(p).unwrap_or_default(),
            );
        }
        for ((t, day), (c, exp)) in &s.quality {
            item(
                keys::quality_counter(t, *day),
                *exp,
                json!({"sent": c.sent, "opt_outs": c.opt_outs, "undeliverable": c.undeliverable}),
            );
        }
        // Under the key it is kept under (a copy under a user id may also name a phone).
        for ((t, key), o) in &s.opt_outs {
            if let Some(k) = crate::domain::OptOutKey::parse_stored(key) {
                item(
                    keys::opt_out(t, &k),
                    config_ttl(t),
                    to_value(o).unwrap_or_default(),
                );
            }
        }
        for ((t, key), (o, exp)) in &s.opted_in {
            if let Some(k) = crate::domain::OptOutKey::parse_stored(key) {
                item(
                    keys::opted_in(t, &k),
                    Some(*exp),
                    to_value(o).unwrap_or_default(),
                );
            }
        }
        for ((t, key), (other, exp, _)) in &s.pairings {
            if let Some(k) = crate::domain::OptOutKey::parse_stored(key) {
                item(
                    keys::user_pairing(t, &k),
                    *exp,
                    json!({"other": other.to_string()}),
                );
            }
        }
        for ((t, pnid, key), (at, exp)) in &s.windows {
            if let Some(k) = crate::domain::OptOutKey::parse_stored(key) {
                item(
                    keys::service_window(t, pnid, &k),
                    Some(*exp),
                    json!({"at": at.timestamp()}),
                );
            }
        }
        for ((t, hash), r) in s.idempotency.iter() {
            item(
                keys::idempotency(t, hash),
                r.expires_at,
                to_value(r).unwrap_or_default(),
            );
        }
        for ((t, scoped), r) in &s.request_keys {
            item(
                keys::idempotency(t, scoped),
                r.expires_at,
                to_value(r).unwrap_or_default(),
            );
        }
        for (t, c) in &s.status_callbacks {
            item(
                keys::status_callback(t),
                config_ttl(t),
                to_value(c).unwrap_or_default(),
            );
        }
        for ((t, id), n) in &s.numbers {
            item(
                keys::phone_number(t, id),
                config_ttl(t),
                to_value(n).unwrap_or_default(),
            );
        }
        for ((t, day, category, pricing_type, shard), (row, exp)) in &s.usage {
            item(
                keys::usage_counter(t, *day, category, pricing_type, *shard),
                *exp,
                to_value(row).unwrap_or_default(),
            );
        }
        for (number, (tat, expires)) in &s.rate {
            item(keys::send_slot(number), Some(*expires), json!({"tat": tat}));
        }
        for ((t, class), l) in &s.heavy_leases {
            item(
                keys::heavy_lease(t, *class),
                Some(l.ttl),
                json!({"owner": l.owner, "expires_at": l.expires_at_ms}),
            );
        }
        for t in s.templates.values() {
            item(
                keys::template(&t.waba_id, &t.name, &t.language),
                t.expires_at,
                to_value(t).unwrap_or_default(),
            );
        }
        for ((waba, name, language), (removed, expires)) in &s.template_removed {
            item(
                keys::template(waba, name, language),
                Some(*expires),
                json!({"removed_at_s": removed}),
            );
        }
        if let Some(next) = &s.checkpoint {
            item(keys::retention_checkpoint(), None, json!({"next": next}));
        }
        out.extend(s.users.stored(&config_ttl));
        Ok(out)
    }
}
