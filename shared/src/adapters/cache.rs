//! Warm-process read caches (issue #13): what every request reads and almost never changes,
//! kept for a short TTL in a warm Lambda instead of a DynamoDB read per request.
//!
//! [`ReadCache`] decorates the store's [`TenantStore`], [`ApiKeyStore`],
//! [`StatusCallbackStore`], [`TemplateStore`] and [`PhoneNumberStore`] ports (`Deps::new` puts it in front when
//! `Backends::read_cache_ttl` is not zero: on Lambda [`crate::wiring::READ_CACHE_TTL`]).
//! It caches, for at most the TTL by the deps' clock:
//! - an API key by its hash (only keys found);
//! - the tenant for access decisions ([`TenantStore::tenant_for_access`]: status,
//!   allow-list, limits, WABA, token name; `get_tenant`, which carries the credits, is
//!   never cached);
//! - the tenant by phone number id (only tenants found);
//! - a tenant's status-callback setting (or its absence);
//! - a catalogue template (or its absence);
//! - a tenant's phone number by id, the dispatcher's sender (only numbers found: a number
//!   added a moment ago by another process is never taken for absent, which would fail a
//!   message as `sender_removed`; every tenant onboarded since the WABA index moved onto
//!   number items has its default number's item, older ones until it is stored, see
//!   infra/deploy.md). Stale for at most the TTL and the replication lag (below): a number
//!   removed by another process may still send what was queued for it, and a new quality
//!   or throughput from Meta paces its sends, within that; the send slots themselves are
//!   their own item, never cached.
//!
//! Every write through the same decorator drops what it changes at once (same process), and
//! a read that was in flight meanwhile is not kept (see `Ttl`): for the caches that read
//! consistently (the API key, the tenant for access) that is the whole story; one that reads
//! a view which may lag (a phone number, a number's settings, the callback setting, the
//! catalogue) may still fill, after the write, from a replica not yet past it, and keep
//! that for the TTL (below: the lag is typically under a second);
//! a change made by another process (another Lambda, another instance) is seen after the
//! TTL at most: a revoked key, a suspended tenant, a changed allow-list bite within the
//! TTL. The invariants that matter for money and sending (credits, the idempotency record,
//! the status order) are conditional writes that never read this cache.
//!
//! **Which reads may lag.** The cache reads through two views of the one store
//! ([`LaggingView`]): the API key by its hash and the tenant for access through the
//! consistent one (a revocation or suspension bites within the TTL, no more), and the
//! template, the status-callback setting, the phone number and the phone number's owner
//! through the lagging one: on DynamoDB an eventually consistent `GetItem`, half the read
//! units, possibly behind the latest write by the table's replication lag (typically under
//! a second). A change to those made by another process so bites within the TTL and about
//! a second more. What would turn a lag into a wrong answer is confirmed: a number or a
//! phone number's owner the lagging view does not find is read again consistently (absence
//! is never cached for them, and a number or a tenant just added is never taken for
//! absent). A template's or a callback setting's absence is cached as before (a template
//! synced or a callback set by another process a moment ago bites within the TTL and about
//! a second more, as any change to them); but the callback sender, whose job exists because
//! a process found the setting, confirms its absence consistently before dropping the job
//! (`StatusCallbackStore::get_status_callback_fresh`).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::domain::TemplateQuality;
use crate::domain::{TemplateChange, TenantId};
use crate::ports::{
    ApiKeyRecord, ApiKeyStore, CatalogueTemplate, Clock, LedgerEntry, OwedCallback,
    PhoneNumberRecord, PhoneNumberStore, StatusCallback, StatusCallbackStore, TemplatePage,
    TemplateQuery, TemplateStore, Tenant, TenantStatus, TenantStore,
};
use crate::store_error::StoreError;

/// Entries that expire by the clock.
///
/// A fill is a read of the store then a [`Ttl::put`]; a write through the decorator drops
/// what it changed ([`Ttl::forget`]) after the store has it. A fill whose read began before
/// that write and whose `put` comes after the forget would put back what the write changed
/// (a revoked key working on the instance that revoked it for the TTL). So every forget
/// counts a generation, a fill takes the generation before its read ([`Ttl::began`]), and its
/// `put` is skipped if a forget came since: the caller still gets what it read, and the next
/// read goes to the store. Per cache, not per key (a forget names entries by their value, an
/// API key by its tenant and id under its hash): a fill that meets another key's forget is
/// just not kept, one read more.
struct Ttl<K, V> {
    ttl: chrono::Duration,
    map: Mutex<Entries<K, V>>,
}

struct Entries<K, V> {
    map: HashMap<K, (DateTime<Utc>, V)>,
    /// Forgets so far.
    generation: u64,
}

/// When a fill's read began: the [`Ttl`]'s forgets so far.
#[derive(Clone, Copy)]
struct Began(u64);

impl<K: Eq + Hash, V: Clone> Ttl<K, V> {
    fn new(ttl: Duration) -> Self {
        Ttl {
            ttl: chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::zero()),
            map: Mutex::new(Entries {
                map: HashMap::new(),
                generation: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries<K, V>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, k: &K, now: DateTime<Utc>) -> Option<V> {
        let entries = self.lock();
        let (at, v) = entries.map.get(k)?;
        // A clock that went back counts as expired too.
        (*at <= now && now < *at + self.ttl).then(|| v.clone())
    }

    /// Taken before a fill's read of the store, for its [`Ttl::put`].
    fn began(&self) -> Began {
        Began(self.lock().generation)
    }

    /// Keeps what a fill read, unless a forget came since its read `began`.
    fn put(&self, began: Began, k: K, v: V, now: DateTime<Utc>) {
        let mut entries = self.lock();
        if entries.generation != began.0 {
            return;
        }
        // Bounded: a warm process sees few tenants; drop expired entries when it grows.
        if entries.map.len() >= 10_000 {
            let ttl = self.ttl;
            entries.map.retain(|_, (at, _)| now < *at + ttl);
        }
        entries.map.insert(k, (now, v));
    }

    fn forget(&self, keep: impl Fn(&K, &V) -> bool) {
        let mut entries = self.lock();
        entries.generation = entries.generation.wrapping_add(1);
        entries.map.retain(|k, (_, v)| keep(k, v));
    }
}

/// A second view of a store whose cache refreshes may be a moment behind the latest write
/// (see the module docs): what [`ReadCache`] reads the template, the status-callback
/// setting, the phone number and the phone number's owner through.
pub trait LaggingView {
    /// The lagging view of `store`: on DynamoDB [`crate::adapters::aws::DynamoStore::lagging`];
    /// the memory store is never behind, so its view is itself.
    fn lagging_view(store: &Arc<Self>) -> Arc<Self>;
}

/// The caching decorator (see the module docs).
pub struct ReadCache<S> {
    /// Consistent reads, and every write.
    inner: Arc<S>,
    /// The refreshes that may lag ([`LaggingView`]); only the four reads named there.
    lagging: Arc<S>,
    clock: Arc<dyn Clock>,
    keys: Ttl<String, ApiKeyRecord>,
    tenants: Ttl<TenantId, Tenant>,
    phones: Ttl<String, TenantId>,
    callbacks: Ttl<TenantId, Option<StatusCallback>>,
    templates: Ttl<(String, String, String), Option<CatalogueTemplate>>,
    numbers: Ttl<(TenantId, String), PhoneNumberRecord>,
}

impl<S: LaggingView> ReadCache<S> {
    pub fn new(inner: Arc<S>, ttl: Duration, clock: Arc<dyn Clock>) -> Self {
        ReadCache {
            lagging: S::lagging_view(&inner),
            inner,
            clock,
            keys: Ttl::new(ttl),
            tenants: Ttl::new(ttl),
            phones: Ttl::new(ttl),
            callbacks: Ttl::new(ttl),
            templates: Ttl::new(ttl),
            numbers: Ttl::new(ttl),
        }
    }
}

impl<S> ReadCache<S> {
    /// Whether the lagging view is another one (so its misses are worth confirming).
    fn may_lag(&self) -> bool {
        !Arc::ptr_eq(&self.inner, &self.lagging)
    }

    fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    fn forget_tenant(&self, id: &TenantId) {
        self.tenants.forget(|k, _| k != id);
    }

    fn forget_key(&self, tenant: &TenantId, id: &str) {
        self.keys
            .forget(|_, k| !(k.tenant_id == *tenant && k.id == id));
    }

    fn forget_phone(&self, phone_number_id: &str) {
        self.phones.forget(|p, _| p != phone_number_id);
    }

    fn forget_number(&self, tenant: &TenantId, id: &str) {
        self.numbers.forget(|(t, n), _| !(t == tenant && n == id));
    }

    fn forget_template(&self, waba_id: &str, name: &str, language: &str) {
        self.templates
            .forget(|(w, n, l), _| !(w == waba_id && n == name && l == language));
    }
}

/// Slots pass straight through (never cached); a tier set through the cache drops the
/// tenant it cached, as every other tenant write does: the same instance's next read (the
/// numbers list, the dispatcher's pace) has the new tier at once.
#[async_trait]
impl<S: crate::ports::Throughput + 'static> crate::ports::Throughput for ReadCache<S> {
    async fn reserve_slots(
        &self,
        key: &str,
        per_sec: u32,
        now: DateTime<Utc>,
        max_wait: std::time::Duration,
        count: u32,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.inner
            .reserve_slots(key, per_sec, now, max_wait, count)
            .await
    }

    async fn set_throughput(&self, tenant: &TenantId, per_sec: u32) -> Result<Tenant, StoreError> {
        let r = self.inner.set_throughput(tenant, per_sec).await;
        self.forget_tenant(tenant);
        r
    }
}

#[async_trait]
impl<S: TenantStore + 'static> TenantStore for ReadCache<S> {
    async fn onboard(
        &self,
        tenant: &Tenant,
        display_phone_number: Option<&str>,
        key: &ApiKeyRecord,
        initial: Option<&LedgerEntry>,
    ) -> Result<(), StoreError> {
        self.inner
            .onboard(tenant, display_phone_number, key, initial)
            .await
    }

    async fn onboard_over_closed(
        &self,
        tenant: &Tenant,
        display_phone_number: Option<&str>,
        key: &ApiKeyRecord,
        initial: Option<&LedgerEntry>,
        closed: &TenantId,
    ) -> Result<(), StoreError> {
        let r = self
            .inner
            .onboard_over_closed(tenant, display_phone_number, key, initial, closed)
            .await;
        // The route moved: this process no longer answers the closed tenant for it.
        self.forget_phone(&tenant.phone_number_id);
        r
    }

    async fn get_tenant(&self, id: &TenantId) -> Result<Option<Tenant>, StoreError> {
        self.inner.get_tenant(id).await
    }

    async fn tenant_for_access(&self, id: &TenantId) -> Result<Option<Tenant>, StoreError> {
        let now = self.now();
        if let Some(t) = self.tenants.get(id, now) {
            return Ok(Some(t));
        }
        let began = self.tenants.began();
        let t = self.inner.get_tenant(id).await?;
        if let Some(t) = &t {
            self.tenants.put(began, id.clone(), t.clone(), now);
        }
        Ok(t)
    }

    async fn tenant_by_phone_number_id(
        &self,
        phone_number_id: &str,
    ) -> Result<Option<TenantId>, StoreError> {
        let now = self.now();
        let k = phone_number_id.to_owned();
        if let Some(t) = self.phones.get(&k, now) {
            return Ok(Some(t));
        }
        let began = self.phones.began();
        let mut t = self
            .lagging
            .tenant_by_phone_number_id(phone_number_id)
            .await?;
        if t.is_none() && self.may_lag() {
            // A tenant onboarded a moment ago is not taken for absent (its webhooks, a STOP).
            t = self
                .inner
                .tenant_by_phone_number_id(phone_number_id)
                .await?;
        }
        if let Some(t) = &t {
            self.phones.put(began, k, t.clone(), now);
        }
        Ok(t)
    }

    async fn api_key_by_hash(&self, key_hash: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        let now = self.now();
        let k = key_hash.to_owned();
        if let Some(r) = self.keys.get(&k, now) {
            return Ok(Some(r));
        }
        let began = self.keys.began();
        let r = self.inner.api_key_by_hash(key_hash).await?;
        if let Some(r) = &r {
            self.keys.put(began, k, r.clone(), now);
        }
        Ok(r)
    }

    async fn tenants_by_waba(&self, waba_id: &str) -> Result<Vec<TenantId>, StoreError> {
        self.inner.tenants_by_waba(waba_id).await
    }

    async fn set_ip_allowlist(&self, id: &TenantId, cidrs: &[String]) -> Result<(), StoreError> {
        let r = self.inner.set_ip_allowlist(id, cidrs).await;
        self.forget_tenant(id);
        r
    }

    async fn set_request_limits(
        &self,
        id: &TenantId,
        limits: crate::domain::RequestLimits,
    ) -> Result<Tenant, StoreError> {
        let r = self.inner.set_request_limits(id, limits).await;
        self.forget_tenant(id);
        r
    }

    async fn set_meta_token_changed_at(
        &self,
        id: &TenantId,
        at: DateTime<Utc>,
    ) -> Result<Tenant, StoreError> {
        let r = self.inner.set_meta_token_changed_at(id, at).await;
        self.forget_tenant(id);
        r
    }

    async fn set_status(
        &self,
        id: &TenantId,
        to: TenantStatus,
        reason: Option<&str>,
        at: DateTime<Utc>,
    ) -> Result<Tenant, StoreError> {
        let r = self.inner.set_status(id, to, reason, at).await;
        self.forget_tenant(id);
        r
    }

    async fn suspend_if_unchanged(
        &self,
        id: &TenantId,
        reason: &str,
        at: DateTime<Utc>,
        seen: Option<DateTime<Utc>>,
    ) -> Result<Option<Tenant>, StoreError> {
        let r = self.inner.suspend_if_unchanged(id, reason, at, seen).await;
        self.forget_tenant(id);
        r
    }
}

#[async_trait]
impl<S: ApiKeyStore + 'static> ApiKeyStore for ReadCache<S> {
    async fn put_api_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError> {
        self.inner.put_api_key(key).await
    }

    async fn list_api_keys(&self, tenant: &TenantId) -> Result<Vec<ApiKeyRecord>, StoreError> {
        self.inner.list_api_keys(tenant).await
    }

    async fn list_api_keys_page(
        &self,
        tenant: &TenantId,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<crate::ports::ApiKeyPage, StoreError> {
        self.inner.list_api_keys_page(tenant, limit, cursor).await
    }

    async fn get_api_key(
        &self,
        tenant: &TenantId,
        id: &str,
    ) -> Result<Option<ApiKeyRecord>, StoreError> {
        self.inner.get_api_key(tenant, id).await
    }

    async fn revoke_api_key(
        &self,
        tenant: &TenantId,
        id: &str,
        at: DateTime<Utc>,
    ) -> Result<Option<ApiKeyRecord>, StoreError> {
        let r = self.inner.revoke_api_key(tenant, id, at).await;
        self.forget_key(tenant, id);
        r
    }

    async fn rotate_api_key(
        &self,
        tenant: &TenantId,
        old_id: &str,
        new: &ApiKeyRecord,
        old_expires_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let r = self
            .inner
            .rotate_api_key(tenant, old_id, new, old_expires_at)
            .await;
        self.forget_key(tenant, old_id);
        r
    }
}

#[async_trait]
impl<S: StatusCallbackStore + 'static> StatusCallbackStore for ReadCache<S> {
    async fn put_status_callback(&self, setting: &StatusCallback) -> Result<(), StoreError> {
        let r = self.inner.put_status_callback(setting).await;
        self.callbacks.forget(|t, _| *t != setting.tenant_id);
        r
    }

    async fn get_status_callback(
        &self,
        tenant: &TenantId,
    ) -> Result<Option<StatusCallback>, StoreError> {
        let now = self.now();
        if let Some(s) = self.callbacks.get(tenant, now) {
            return Ok(s);
        }
        let began = self.callbacks.began();
        let s = self.lagging.get_status_callback(tenant).await?;
        self.callbacks.put(began, tenant.clone(), s.clone(), now);
        Ok(s)
    }

    async fn get_status_callback_fresh(
        &self,
        tenant: &TenantId,
    ) -> Result<Option<StatusCallback>, StoreError> {
        let now = self.now();
        let began = self.callbacks.began();
        let s = self.inner.get_status_callback(tenant).await?;
        self.callbacks.put(began, tenant.clone(), s.clone(), now);
        Ok(s)
    }

    async fn set_status_callback_url(
        &self,
        tenant: &TenantId,
        url: &str,
        updated_at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let r = self
            .inner
            .set_status_callback_url(tenant, url, updated_at)
            .await;
        self.callbacks.forget(|t, _| t != tenant);
        r
    }

    async fn delete_status_callback(&self, tenant: &TenantId) -> Result<bool, StoreError> {
        let r = self.inner.delete_status_callback(tenant).await;
        self.callbacks.forget(|t, _| t != tenant);
        r
    }

    // Owed callbacks are not cached: written and read only while the queue refuses.
    async fn owe_callback(&self, owed: &OwedCallback) -> Result<(), StoreError> {
        self.inner.owe_callback(owed).await
    }

    async fn owed_callbacks(&self, limit: usize) -> Result<Vec<OwedCallback>, StoreError> {
        self.inner.owed_callbacks(limit).await
    }

    async fn forget_owed_callback(&self, owed: &OwedCallback) -> Result<(), StoreError> {
        self.inner.forget_owed_callback(owed).await
    }

    // Records of callbacks given up are not cached: written once each, read by an admin.
    async fn put_callback_failure(
        &self,
        failure: &crate::ports::CallbackFailure,
    ) -> Result<(), StoreError> {
        self.inner.put_callback_failure(failure).await
    }

    async fn callback_failures_page(
        &self,
        tenant: &TenantId,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<crate::ports::CallbackFailurePage, StoreError> {
        self.inner
            .callback_failures_page(tenant, limit, cursor)
            .await
    }

    async fn lease_owed_callback(
        &self,
        owed: &OwedCallback,
        until: i64,
    ) -> Result<bool, StoreError> {
        self.inner.lease_owed_callback(owed, until).await
    }
}

#[async_trait]
impl<S: TemplateStore + 'static> TemplateStore for ReadCache<S> {
    async fn put_template(&self, template: &CatalogueTemplate) -> Result<(), StoreError> {
        let r = self.inner.put_template(template).await;
        self.forget_template(&template.waba_id, &template.name, &template.language);
        r
    }

    async fn put_template_unless_newer(
        &self,
        template: &CatalogueTemplate,
        since: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let r = self.inner.put_template_unless_newer(template, since).await;
        self.forget_template(&template.waba_id, &template.name, &template.language);
        r
    }

    async fn get_template(
        &self,
        waba_id: &str,
        name: &str,
        language: &str,
    ) -> Result<Option<CatalogueTemplate>, StoreError> {
        let now = self.now();
        let k = (waba_id.to_owned(), name.to_owned(), language.to_owned());
        if let Some(t) = self.templates.get(&k, now) {
            return Ok(t);
        }
        let began = self.templates.began();
        let t = self.lagging.get_template(waba_id, name, language).await?;
        self.templates.put(began, k, t.clone(), now);
        Ok(t)
    }

    async fn list_templates(
        &self,
        waba_id: &str,
        query: &TemplateQuery,
    ) -> Result<TemplatePage, StoreError> {
        self.inner.list_templates(waba_id, query).await
    }

    async fn update_template(
        &self,
        waba_id: &str,
        name: &str,
        language: &str,
        change: TemplateChange,
        stamp: crate::ports::ChangeStamp,
    ) -> Result<Option<CatalogueTemplate>, StoreError> {
        let r = self
            .inner
            .update_template(waba_id, name, language, change, stamp)
            .await;
        self.forget_template(waba_id, name, language);
        r
    }

    async fn delete_template(
        &self,
        waba_id: &str,
        name: &str,
        language: &str,
        unchanged_since: Option<DateTime<Utc>>,
    ) -> Result<bool, StoreError> {
        let r = self
            .inner
            .delete_template(waba_id, name, language, unchanged_since)
            .await;
        self.forget_template(waba_id, name, language);
        r
    }
}

#[async_trait]
impl<S: PhoneNumberStore + 'static> PhoneNumberStore for ReadCache<S> {
    async fn add_phone_number(&self, number: &PhoneNumberRecord) -> Result<(), StoreError> {
        let r = self.inner.add_phone_number(number).await;
        self.forget_number(&number.tenant_id, &number.phone_number_id);
        r
    }

    async fn add_phone_number_over_closed(
        &self,
        number: &PhoneNumberRecord,
        closed: &TenantId,
    ) -> Result<(), StoreError> {
        let r = self
            .inner
            .add_phone_number_over_closed(number, closed)
            .await;
        self.forget_number(&number.tenant_id, &number.phone_number_id);
        // The route moved: this process no longer answers the closed tenant for it.
        self.forget_phone(&number.phone_number_id);
        r
    }

    async fn put_phone_number_if_absent(
        &self,
        number: &PhoneNumberRecord,
    ) -> Result<bool, StoreError> {
        let r = self.inner.put_phone_number_if_absent(number).await;
        self.forget_number(&number.tenant_id, &number.phone_number_id);
        r
    }

    async fn get_phone_number(
        &self,
        tenant: &TenantId,
        phone_number_id: &str,
    ) -> Result<Option<PhoneNumberRecord>, StoreError> {
        let now = self.now();
        let k = (tenant.clone(), phone_number_id.to_owned());
        if let Some(n) = self.numbers.get(&k, now) {
            return Ok(Some(n));
        }
        let began = self.numbers.began();
        let mut n = self
            .lagging
            .get_phone_number(tenant, phone_number_id)
            .await?;
        if n.is_none() && self.may_lag() {
            // A number added a moment ago is not taken for absent (`sender_removed`).
            n = self.inner.get_phone_number(tenant, phone_number_id).await?;
        }
        if let Some(n) = &n {
            self.numbers.put(began, k, n.clone(), now);
        }
        Ok(n)
    }

    async fn list_phone_numbers(
        &self,
        tenant: &TenantId,
    ) -> Result<Vec<PhoneNumberRecord>, StoreError> {
        self.inner.list_phone_numbers(tenant).await
    }

    async fn remove_phone_number(
        &self,
        tenant: &TenantId,
        phone_number_id: &str,
    ) -> Result<(), StoreError> {
        let r = self
            .inner
            .remove_phone_number(tenant, phone_number_id)
            .await;
        self.forget_number(tenant, phone_number_id);
        r
    }

    async fn set_default_number(
        &self,
        tenant: &TenantId,
        number: &PhoneNumberRecord,
    ) -> Result<(), StoreError> {
        let r = self.inner.set_default_number(tenant, number).await;
        self.forget_number(tenant, &number.phone_number_id);
        self.forget_tenant(tenant);
        r
    }

    async fn learn_display_number(
        &self,
        tenant: &TenantId,
        phone_number_id: &str,
        display: &str,
    ) -> Result<bool, StoreError> {
        let r = self
            .inner
            .learn_display_number(tenant, phone_number_id, display)
            .await;
        self.forget_number(tenant, phone_number_id);
        r
    }

    async fn set_number_quality(
        &self,
        tenant: &TenantId,
        phone_number_id: &str,
        quality: Option<TemplateQuality>,
        throughput_per_sec: Option<u32>,
        meta_time: Option<i64>,
    ) -> Result<Option<PhoneNumberRecord>, StoreError> {
        let r = self
            .inner
            .set_number_quality(
                tenant,
                phone_number_id,
                quality,
                throughput_per_sec,
                meta_time,
            )
            .await;
        self.forget_number(tenant, phone_number_id);
        r
    }

    async fn hold_phone_number(
        &self,
        tenant: &TenantId,
        phone_number_id: &str,
        hold: &crate::ports::NumberHold,
        signal_at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let r = self
            .inner
            .hold_phone_number(tenant, phone_number_id, hold, signal_at)
            .await;
        self.forget_number(tenant, phone_number_id);
        r
    }

    async fn resume_phone_number(
        &self,
        tenant: &TenantId,
        phone_number_id: &str,
        at: DateTime<Utc>,
    ) -> Result<Option<PhoneNumberRecord>, StoreError> {
        let r = self
            .inner
            .resume_phone_number(tenant, phone_number_id, at)
            .await;
        self.forget_number(tenant, phone_number_id);
        r
    }
}
