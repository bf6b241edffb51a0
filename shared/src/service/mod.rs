//! Use cases, written against the ports only. Handlers (HTTP, SQS, schedule) call these.
//!
//! The modules depend on each other in one direction (a test in `shared/tests/` fails on
//! an import cycle). From the bottom up:
//! - leaves: `errors` (the service error), `jobs` (every queue message, the outcome of
//!   handling one, backoff), `ledger` (debit and refund entries for messages and
//!   broadcasts), `caller` (who is calling), `audit` (the hash-chained trail),
//!   `quality` (the opt-out and undeliverable rates), `idempotency`, `throttle` (the
//!   per-number limiter), `limits` (requests per key and tenant, bad webhook
//!   signatures per address: in memory), `apikeys`, `retention`, `schedule` (when a
//!   scheduled job is due; it waits on the queue: → `jobs` only);
//! - `deadletters` (parked queue messages, listed and redriven) → `jobs`;
//! - `users` (console users, sessions, 2FA, failed-login counters) → `caller`,
//!   `limits`; `auth` (a token becomes a caller) → `users`; `accounts` (tenants, their status and suspension) → `audit`;
//!   `contacts` (phone ↔ user-id pairings, when users last wrote: the 24-hour window) →
//!   `errors` only; `optouts` → `quality`, `contacts`; `callbacks` (status callbacks to tenants) → `jobs`;
//! - `status` (Meta's statuses applied, kept statuses) → `accounts`, `callbacks`, `optouts`,
//!   `quality`; `deadline` (the sending deadline) → `jobs`;
//! - `templates` (the template catalogue: Meta's sync, its webhooks, the check of a
//!   send against it) → `errors` only;
//! - `accounts` → `templates` (a new tenant's catalogue is synced);
//! - `send` → `auth`, `contacts`, `idempotency`, `jobs`, `ledger`, `optouts`, `quality`,
//!   `templates`, `schedule`; `broadcasts` (campaigns: schedule, pause, cancel, results,
//!   retry) → `send` (template parsing), `deadline` (its code) and the same;
//! - `usage` (Meta's pricing kept and counted per day) → `errors` only; `status` → `usage`;
//! - `numbers` (a tenant's phone numbers, the sender of a send, Meta's quality updates)
//!   → `accounts`, `templates`; `send`, `broadcasts` and `dispatch` → `numbers`;
//! - `webhook` (Meta's webhook, routed as typed events) → `status`, `optouts`,
//!   `contacts`, `accounts`, `templates`, `numbers`; `dispatch` (the dispatch queue's consumer) → everything it
//!   routes to.

pub mod accounts;
pub mod apikeys;
pub mod audit;
pub mod auth;
pub mod broadcasts;
pub mod callbacks;
pub mod caller;
pub mod contacts;
pub mod daily_sync;
pub mod deadletters;
pub mod deadline;
pub mod dispatch;
pub mod errors;
pub mod idempotency;
pub mod jobs;
#[cfg(test)]
mod layering;
pub mod ledger;
pub mod limits;
pub mod meta_token;
pub mod numbers;
pub mod optouts;
#[cfg(test)]
mod parse_props;
pub mod quality;
pub mod retention;
pub mod schedule;
pub mod seed_cipher;
pub mod send;
pub mod status;
pub mod templates;
pub mod throttle;
pub mod usage;
pub mod users;
pub mod webhook;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::config::Settings;
use crate::ports::{
    ApiKeyStore, AuditLog, BroadcastStore, Clock, ContactStore, DataKeys, DispatchQueue,
    IdempotencyStore, Ledger, MessageStore, MetaClient, OptOutStore, PendingStatusStore,
    QualityStats, SecretStore, SendingControl, StatusCallbackStore, TemplateStore, TenantStore,
    Throughput, UserStore,
};
use crate::secret::Secret;
use crate::store_error::StoreError;

/// Everything a handler needs, built once per process by [`Deps::new`] (Lambda init,
/// local mode and tests alike; `runtime` says which backends each process gets).
#[derive(Clone)]
pub struct Deps {
    pub tenants: Arc<dyn TenantStore>,
    pub api_keys: Arc<dyn ApiKeyStore>,
    pub audit: Arc<dyn AuditLog>,
    pub quality: Arc<dyn QualityStats>,
    pub broadcasts: Arc<dyn BroadcastStore>,
    pub users: Arc<dyn UserStore>,
    pub ledger: Arc<dyn Ledger>,
    pub messages: Arc<dyn MessageStore>,
    pub retention: Arc<dyn crate::ports::RetentionStore>,
    pub opt_outs: Arc<dyn OptOutStore>,
    /// Phone ↔ user-id pairings and when users last wrote (the 24-hour window).
    pub contacts: Arc<dyn ContactStore>,
    pub idempotency: Arc<dyn IdempotencyStore>,
    pub throughput: Arc<dyn Throughput>,
    pub sending: Arc<dyn SendingControl>,
    /// Each tenant's lease on its one heavy request at a time (`http::access`, A75).
    pub heavy_leases: Arc<dyn crate::ports::HeavyRequestLeases>,
    pub queue: Arc<dyn DispatchQueue>,
    /// Statuses kept until their message's wamid is known.
    pub pending: Arc<dyn PendingStatusStore>,
    /// Tenants' status-callback settings.
    pub status_callbacks: Arc<dyn StatusCallbackStore>,
    /// Each WABA's template catalogue (what Meta knows).
    pub templates: Arc<dyn TemplateStore>,
    /// Tenants' phone numbers (senders).
    pub numbers: Arc<dyn crate::ports::PhoneNumberStore>,
    /// Meta's pricing counted per day (billing records).
    pub usage: Arc<dyn crate::ports::UsageStore>,
    /// Status changes waiting to be POSTed to tenants (the StatusCallbackQueue).
    pub callback_queue: Arc<dyn DispatchQueue>,
    pub secrets: Arc<SecretCache>,
    /// Data keys for envelope encryption (TOTP seeds): KMS on AWS, a local key in memory.
    pub data_keys: Arc<dyn DataKeys>,
    pub meta: Arc<dyn MetaClient>,
    pub clock: Arc<dyn Clock>,
    pub settings: Arc<Settings>,
    /// The audit chain heads this process wrote last (`audit::HeadMemo`; on with the read
    /// cache).
    pub audit_heads: Arc<audit::HeadMemo>,
    /// The broadcast holds this process's claims found last (`broadcasts::HoldMemo`; on
    /// with the read cache).
    pub broadcast_holds: Arc<broadcasts::HoldMemo>,
    /// The cached ports' store itself, for a decision that must not rest on a copy up to
    /// the read cache's TTL old ([`Deps::uncached`]).
    pub store_reads: StoreReads,
}

/// The ports [`Deps`] reads through the warm cache, straight from the store.
#[derive(Clone)]
pub struct StoreReads {
    pub tenants: Arc<dyn TenantStore>,
    pub templates: Arc<dyn TemplateStore>,
    pub numbers: Arc<dyn crate::ports::PhoneNumberStore>,
    pub throughput: Arc<dyn Throughput>,
}

impl Deps {
    /// These deps with the tenants, the catalogue, the numbers and their throughput read
    /// from the store, not the warm cache: for a decision that cannot be undone (a
    /// campaign's recipients closed failed), which a copy a few seconds old (a number
    /// resumed, a template approved again since) must not make.
    pub fn uncached(&self) -> Deps {
        Deps {
            tenants: self.store_reads.tenants.clone(),
            templates: self.store_reads.templates.clone(),
            numbers: self.store_reads.numbers.clone(),
            throughput: self.store_reads.throughput.clone(),
            ..self.clone()
        }
    }
}

/// Every store port at once: what one storage backend implements (DynamoDB's one table,
/// or memory). `Deps::new` hands the one store out as each port.
pub trait Stores:
    TenantStore
    + ApiKeyStore
    + AuditLog
    + QualityStats
    + BroadcastStore
    + UserStore
    + Ledger
    + MessageStore
    + crate::ports::RetentionStore
    + OptOutStore
    + ContactStore
    + IdempotencyStore
    + Throughput
    + SendingControl
    + crate::ports::HeavyRequestLeases
    + PendingStatusStore
    + StatusCallbackStore
    + TemplateStore
    + crate::ports::PhoneNumberStore
    + crate::ports::UsageStore
    + crate::adapters::cache::LaggingView
    + 'static
{
}

impl<T> Stores for T where
    T: TenantStore
        + ApiKeyStore
        + AuditLog
        + QualityStats
        + BroadcastStore
        + UserStore
        + Ledger
        + MessageStore
        + crate::ports::RetentionStore
        + OptOutStore
        + ContactStore
        + IdempotencyStore
        + Throughput
        + SendingControl
        + crate::ports::HeavyRequestLeases
        + PendingStatusStore
        + StatusCallbackStore
        + TemplateStore
        + crate::ports::PhoneNumberStore
        + crate::ports::UsageStore
        + crate::adapters::cache::LaggingView
        + 'static
{
}

/// What `Deps` is built from: the one store, the two queues, the secret store, Meta, the
/// clock and the settings. A port a process does not use is wired to a refusing adapter
/// (`wiring::NotWired`), never left out.
pub struct Backends<S> {
    pub store: Arc<S>,
    /// The dispatch queue (send jobs, and local mode's poller).
    pub queue: Arc<dyn DispatchQueue>,
    /// The StatusCallbackQueue.
    pub callback_queue: Arc<dyn DispatchQueue>,
    pub secrets: Arc<dyn SecretStore>,
    /// Data keys (KMS, or a local key; `wiring::NotWired` where unused).
    pub data_keys: Arc<dyn DataKeys>,
    pub meta: Arc<dyn MetaClient>,
    pub clock: Arc<dyn Clock>,
    pub settings: Settings,
    /// How long a secret read is cached (`Duration::ZERO`: never).
    pub secret_ttl: Duration,
    /// How long tenants, API keys, callback settings, catalogue templates and phone
    /// numbers are cached for access decisions (`adapters::cache`; `Duration::ZERO`: never).
    pub read_cache_ttl: Duration,
}

impl Deps {
    /// Whether the tenant is there and not closed (the access read: warm-cached up to the
    /// read cache's TTL). A closed tenant's items are given their last TTL by the
    /// close-out; Meta's webhooks must not write it new ones (a whole-item write after the
    /// close-out would keep one for good).
    pub async fn tenant_is_open(
        &self,
        id: &crate::domain::TenantId,
    ) -> Result<bool, errors::ServiceError> {
        Ok(self
            .tenants
            .tenant_for_access(id)
            .await?
            .is_some_and(|t| t.status != crate::ports::TenantStatus::Closed))
    }

    /// The one constructor: every field, from one set of backends.
    pub fn new<S: Stores>(b: Backends<S>) -> Self {
        let store = b.store;
        // The warm-process read cache, one for the six ports it decorates (so a write
        // through one drops what the others cached); its refreshes of templates, callback
        // settings, numbers and phone owners go through the store's lagging view.
        type Cached<S> = crate::adapters::cache::ReadCache<S>;
        type CachedPorts = (
            Arc<dyn TenantStore>,
            Arc<dyn ApiKeyStore>,
            Arc<dyn StatusCallbackStore>,
            Arc<dyn TemplateStore>,
            Arc<dyn crate::ports::PhoneNumberStore>,
            Arc<dyn crate::ports::Throughput>,
        );
        let (tenants, api_keys, status_callbacks, templates, numbers, throughput): CachedPorts =
            if b.read_cache_ttl.is_zero() {
                (
                    store.clone(),
                    store.clone(),
                    store.clone(),
                    store.clone(),
                    store.clone(),
                    store.clone(),
                )
            } else {
                let c = Arc::new(Cached::new(
                    store.clone(),
                    b.read_cache_ttl,
                    b.clock.clone(),
                ));
                (c.clone(), c.clone(), c.clone(), c.clone(), c.clone(), c)
            };
        let store_reads = StoreReads {
            tenants: store.clone(),
            templates: store.clone(),
            numbers: store.clone(),
            throughput: store.clone(),
        };
        Deps {
            store_reads,
            tenants,
            api_keys,
            audit: store.clone(),
            quality: store.clone(),
            broadcasts: store.clone(),
            users: store.clone(),
            ledger: store.clone(),
            messages: store.clone(),
            retention: store.clone(),
            opt_outs: store.clone(),
            contacts: store.clone(),
            idempotency: store.clone(),
            throughput,
            sending: store.clone(),
            heavy_leases: store.clone(),
            pending: store.clone(),
            status_callbacks,
            templates,
            numbers,
            usage: store,
            queue: b.queue,
            callback_queue: b.callback_queue,
            secrets: Arc::new(SecretCache::new(b.secrets, b.secret_ttl)),
            data_keys: b.data_keys,
            meta: b.meta,
            clock: b.clock,
            settings: Arc::new(b.settings),
            audit_heads: Arc::new(audit::HeadMemo::new(b.read_cache_ttl)),
            broadcast_holds: Arc::new(broadcasts::HoldMemo::new(b.read_cache_ttl)),
        }
    }
}

/// A read: the value, and for a previous version the time its successor was stored.
type CacheEntry = (Instant, Option<Secret>, Option<DateTime<Utc>>);

/// Secrets read through a short-lived cache, so a warm Lambda does not call Secrets
/// Manager on every request, yet picks up a rotation within `ttl`.
pub struct SecretCache {
    store: Arc<dyn SecretStore>,
    ttl: Duration,
    /// The current versions and, apart, the previous ones, by name (looked up by `&str`:
    /// no key is built for a hit).
    cache: Mutex<[HashMap<String, CacheEntry>; 2]>,
    /// When each name's current version was last read afresh past the cache
    /// ([`Self::refresh_current`]).
    refreshed: Mutex<HashMap<String, Instant>>,
    /// The last version read by its id, per name, and when ([`Self::version`]).
    by_version: Mutex<HashMap<String, (Instant, String, Secret)>>,
}

impl SecretCache {
    pub fn new(store: Arc<dyn SecretStore>, ttl: Duration) -> Self {
        Self {
            store,
            ttl,
            cache: Mutex::new([HashMap::new(), HashMap::new()]),
            refreshed: Mutex::new(HashMap::new()),
            by_version: Mutex::new(HashMap::new()),
        }
    }

    /// One version of `name` by its id (a status callback's secret, named by its
    /// setting), kept for the TTL as any read: a version's value never changes, but the
    /// secret may be deleted (a closed tenant's), and then stops signing within the TTL.
    /// `None` if the version is gone.
    pub async fn version(&self, name: &str, version: &str) -> Result<Option<Secret>, StoreError> {
        if let Ok(kept) = self.by_version.lock() {
            if let Some((at, id, v)) = kept.get(name) {
                if id == version && at.elapsed() < self.ttl {
                    return Ok(Some(v.clone()));
                }
            }
        }
        let v = self.store.get_secret_version(name, version).await?;
        if let Ok(mut kept) = self.by_version.lock() {
            match &v {
                Some(v) if !self.ttl.is_zero() => {
                    kept.insert(
                        name.to_owned(),
                        (Instant::now(), version.to_owned(), v.clone()),
                    );
                }
                _ => {
                    kept.remove(name);
                }
            }
        }
        Ok(v)
    }

    /// The current version read afresh from the store (and cached anew), at most once
    /// `every` per name in this process: `None` when it was read afresh less than `every`
    /// ago, or there is no cache to be behind. For a credential a caller presented that
    /// the cached copy refused: it may have been rotated since the copy was read (Meta's
    /// app secret is reset at Meta first, then stored), and a flood of forged ones costs
    /// the store one read per `every` (and one per caller whose read overlaps the first).
    ///
    /// A read counts once it answered, not when it began: a caller that came while the
    /// first read was under way would otherwise be told "read just now" and fall back to
    /// the cached copy that read is replacing (a dispatcher batch whose ten sends Meta
    /// refused for a token just replaced: the first read found the new token, the other
    /// nine the old one, and suspended the tenant).
    pub async fn refresh_current(
        &self,
        name: &str,
        every: Duration,
    ) -> Result<Option<Option<Secret>>, StoreError> {
        if self.ttl.is_zero() {
            return Ok(None);
        }
        {
            let Ok(refreshed) = self.refreshed.lock() else {
                return Ok(None);
            };
            if refreshed.get(name).is_some_and(|at| at.elapsed() < every) {
                return Ok(None);
            }
        }
        let read = self.store.get_secret(name).await;
        // Marked once answered (a failed read too: a store in trouble is asked once per
        // `every`, not once per forged credential), and after the cache holds what it
        // answered, so a caller told "read just now" finds it there.
        let mark = || {
            if let Ok(mut refreshed) = self.refreshed.lock() {
                refreshed.insert(name.to_owned(), Instant::now());
            }
        };
        let v = match read {
            Ok(v) => v,
            Err(e) => {
                mark();
                return Err(e);
            }
        };
        if let Ok(mut cache) = self.cache.lock() {
            let was = cache[0]
                .insert(name.to_owned(), (Instant::now(), v.clone(), None))
                .map(|(_, old, _)| old);
            // A new current version made the one cached before it the previous one: the
            // cached previous (and its rotation time) is read afresh too, so a caller
            // still on the old value keeps its grace window.
            let same = match (was.flatten(), &v) {
                (Some(old), Some(new)) => old.expose() == new.expose(),
                (None, None) => true,
                _ => false,
            };
            if !same {
                cache[1].remove(name);
            }
        }
        mark();
        Ok(Some(v))
    }

    pub fn store(&self) -> &Arc<dyn SecretStore> {
        &self.store
    }

    /// How long a read may be served from the cache.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The current version, read afresh (and cached anew) when it may have changed after
    /// this process cached it: `changed_at` (when whatever names the secret last changed)
    /// is within one `ttl` of `now`. Otherwise as [`Self::current`].
    pub async fn current_unless_changed(
        &self,
        name: &str,
        changed_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Option<Secret>, StoreError> {
        let ttl = chrono::Duration::from_std(self.ttl).unwrap_or(chrono::Duration::MAX);
        if self.ttl.is_zero() || now.signed_duration_since(changed_at) >= ttl {
            return self.current(name).await;
        }
        // A copy read well after the change is good for its TTL (the margin covers the
        // clocks of two instances).
        if let Ok(cache) = self.cache.lock() {
            if let Some((at, v, _)) = cache[0].get(name) {
                let read_at = chrono::Duration::from_std(at.elapsed())
                    .ok()
                    .and_then(|age| now.checked_sub_signed(age));
                let after = changed_at.checked_add_signed(chrono::Duration::seconds(5));
                if at.elapsed() < self.ttl && read_at.zip(after).is_some_and(|(r, after)| r > after)
                {
                    return Ok(v.clone());
                }
            }
        }
        let v = self.store.get_secret(name).await?;
        if let Ok(mut cache) = self.cache.lock() {
            cache[0].insert(name.to_owned(), (Instant::now(), v.clone(), None));
        }
        Ok(v)
    }

    async fn read(
        &self,
        name: &str,
        previous: bool,
    ) -> Result<(Option<Secret>, Option<DateTime<Utc>>), StoreError> {
        let which = usize::from(previous);
        // No cache (local mode's memory secrets, where a rotation bites at once): nothing
        // to look up or keep.
        let cached = !self.ttl.is_zero();
        if let Some(cache) = cached.then(|| self.cache.lock().ok()).flatten() {
            if let Some((at, v, rotated)) = cache[which].get(name) {
                if at.elapsed() < self.ttl {
                    return Ok((v.clone(), *rotated));
                }
            }
        }
        let (v, rotated) = if previous {
            // The previous version and the time of the rotation that made it so are two
            // reads: a rotation landing between them would pair the version before with the
            // newer time (its grace window opened again for a retired credential). Read the
            // time on both sides; when they differ, once more, then neither is kept.
            let mut pair = None;
            for _ in 0..2 {
                let before = self.store.rotated_at(name).await?;
                let Some(v) = self.store.get_previous_secret(name).await? else {
                    pair = Some((None, None));
                    break;
                };
                let after = self.store.rotated_at(name).await?;
                if before == after {
                    pair = Some((Some(v), after));
                    break;
                }
            }
            match pair {
                Some(p) => p,
                None => return Ok((None, None)),
            }
        } else {
            (self.store.get_secret(name).await?, None)
        };
        if let Some(mut cache) = cached.then(|| self.cache.lock().ok()).flatten() {
            cache[which].insert(name.to_owned(), (Instant::now(), v.clone(), rotated));
        }
        Ok((v, rotated))
    }

    pub async fn current(&self, name: &str) -> Result<Option<Secret>, StoreError> {
        Ok(self.read(name, false).await?.0)
    }

    /// The previous version, whenever it was replaced (keys that verify old records, such
    /// as the audit key).
    pub async fn previous(&self, name: &str) -> Result<Option<Secret>, StoreError> {
        Ok(self.read(name, true).await?.0)
    }

    /// The previous version only within `grace` of the rotation that replaced it
    /// (credentials callers present: the operator token, the Meta app secret). Without a
    /// known rotation time it is refused.
    pub async fn previous_within(
        &self,
        name: &str,
        grace: Duration,
        now: DateTime<Utc>,
    ) -> Result<Option<Secret>, StoreError> {
        let (v, rotated) = self.read(name, true).await?;
        let grace = chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
        let in_window = rotated
            .and_then(|at| at.checked_add_signed(grace))
            .is_some_and(|end| now < end);
        Ok(v.filter(|_| in_window))
    }

    pub async fn put(&self, name: &str, value: &Secret) -> Result<(), StoreError> {
        self.store.put_secret(name, value).await?;
        self.forget(name);
        Ok(())
    }

    /// [`SecretStore::replace_secret`] (restored first if it was being deleted), and this
    /// process's copies forgotten.
    pub async fn replace(&self, name: &str, value: &Secret) -> Result<(), StoreError> {
        let r = self.store.replace_secret(name, value).await;
        self.forget(name);
        r
    }

    /// [`SecretStore::promote_secret`], and this process's copies of the current and
    /// previous versions forgotten.
    pub async fn promote(&self, name: &str, version: &str) -> Result<(), StoreError> {
        let r = self.store.promote_secret(name, version).await;
        self.forget(name);
        r
    }

    fn forget(&self, name: &str) {
        if let Ok(mut cache) = self.cache.lock() {
            for versions in cache.iter_mut() {
                versions.remove(name);
            }
        }
    }
}

#[cfg(test)]
mod secret_cache_tests {
    use super::*;
    use crate::adapters::memory::MemorySecrets;
    use async_trait::async_trait;
    use chrono::{DateTime, Utc};

    /// Memory secrets whose reads of the current version take a moment, and whose next
    /// read of the previous version is followed at once by a rotation to `rotate_to`.
    struct SlowReads(MemorySecrets, std::sync::Mutex<Option<Secret>>);

    impl SlowReads {
        fn new() -> Self {
            Self(MemorySecrets::default(), std::sync::Mutex::new(None))
        }
    }

    #[async_trait]
    impl SecretStore for SlowReads {
        async fn put_secret(&self, name: &str, value: &Secret) -> Result<(), StoreError> {
            self.0.put_secret(name, value).await
        }
        async fn get_secret(&self, name: &str) -> Result<Option<Secret>, StoreError> {
            tokio::time::sleep(Duration::from_millis(50)).await;
            self.0.get_secret(name).await
        }
        async fn get_previous_secret(&self, name: &str) -> Result<Option<Secret>, StoreError> {
            let v = self.0.get_previous_secret(name).await;
            let next = self.1.lock().ok().and_then(|mut r| r.take());
            if let Some(next) = next {
                tokio::time::sleep(Duration::from_millis(2)).await;
                self.0.put_secret(name, &next).await?;
            }
            v
        }
        async fn rotated_at(&self, name: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
            self.0.rotated_at(name).await
        }
        async fn delete_secret(&self, name: &str) -> Result<(), StoreError> {
            self.0.delete_secret(name).await
        }
        async fn replace_secret(&self, name: &str, value: &Secret) -> Result<(), StoreError> {
            self.0.replace_secret(name, value).await
        }
        async fn stage_secret(&self, name: &str, value: &Secret) -> Result<String, StoreError> {
            self.0.stage_secret(name, value).await
        }
        async fn promote_secret(&self, name: &str, version: &str) -> Result<(), StoreError> {
            self.0.promote_secret(name, version).await
        }
        async fn get_secret_version(
            &self,
            name: &str,
            version: &str,
        ) -> Result<Option<Secret>, StoreError> {
            self.0.get_secret_version(name, version).await
        }
        async fn list_secrets(
            &self,
            prefix: &str,
            page: Option<&str>,
            limit: usize,
        ) -> Result<crate::ports::SecretPage, StoreError> {
            self.0.list_secrets(prefix, page, limit).await
        }
    }

    #[tokio::test]
    async fn callers_whose_fresh_reads_overlap_each_see_the_new_value_not_the_cached_one() {
        let store = Arc::new(SlowReads::new());
        store.put_secret("t", &Secret::new("old")).await.unwrap();
        let cache = SecretCache::new(store.clone(), Duration::from_secs(300));
        assert_eq!(cache.current("t").await.unwrap().unwrap().expose(), "old");
        store.put_secret("t", &Secret::new("new")).await.unwrap();
        let every = Duration::from_secs(10);
        // Ten callers at once, as a dispatcher batch's ten refused sends: each finds the
        // new value, by its own read or the one that answered before it asked.
        let seen = futures::future::join_all((0..10).map(|_| async {
            let fresh = cache.refresh_current("t", every).await.unwrap();
            match fresh {
                Some(v) => v,
                None => cache.current("t").await.unwrap(),
            }
            .map(|s| s.expose().to_owned())
        }))
        .await;
        assert!(seen.iter().all(|v| v.as_deref() == Some("new")), "{seen:?}");
        // Once one read answered, later callers within `every` are told so and find the
        // new value in the cache.
        assert!(cache.refresh_current("t", every).await.unwrap().is_none());
        assert_eq!(cache.current("t").await.unwrap().unwrap().expose(), "new");
    }

    #[tokio::test]
    async fn a_rotation_between_the_previous_versions_read_and_its_time_never_pairs_them() {
        let store = Arc::new(SlowReads::new());
        store.put_secret("op", &Secret::new("a")).await.unwrap();
        store.put_secret("op", &Secret::new("b")).await.unwrap();
        // Rotated to `c` just after the previous version (`a`) is read: `a` must not be
        // kept with the time `c` was made current (its grace would open again).
        *store.1.lock().unwrap() = Some(Secret::new("c"));
        let cache = SecretCache::new(store.clone(), Duration::from_secs(300));
        let previous = cache
            .previous_within("op", Duration::from_secs(3600), Utc::now())
            .await
            .unwrap();
        assert_eq!(previous.as_ref().map(Secret::expose), Some("b"));
    }
}
