//! Use cases, written against the ports only. Handlers (HTTP, SQS, schedule) call these.
//!
//! The modules depend on each other in one direction (a test in `shared/tests/` fails on
//! an import cycle). From the bottom up:
//! - leaves: `errors` (the service error), `jobs` (every queue message, the outcome of
//!   handling one, backoff), `ledger` (debit and refund entries for messages and
//!   broadcasts), `caller` (who is calling), `audit` (the hash-chained trail),
//!   `quality` (the opt-out and undeliverable rates), `idempotency`, `throttle` (the
//!   per-number limiter), `apikeys`, `retention`;
//! - `users` (console users, sessions, 2FA) → `caller`; `auth` (a token becomes a
//!   caller) → `users`; `accounts` (tenants, their status and suspension) → `audit`;
//!   `optouts` → `quality`; `callbacks` (status callbacks to tenants) → `jobs`;
//! - `status` (Meta's statuses applied, kept statuses) → `callbacks`, `optouts`,
//!   `quality`; `deadline` (the sending deadline) → `jobs`;
//! - `send` → `auth`, `idempotency`, `jobs`, `ledger`, `optouts`, `quality`;
//!   `broadcasts` → `send` (template parsing) and the same;
//! - `webhook` (Meta's webhook, routed as typed events) → `status`, `optouts`,
//!   `accounts`; `dispatch` (the dispatch queue's consumer) → everything it routes to.

pub mod accounts;
pub mod apikeys;
pub mod audit;
pub mod auth;
pub mod broadcasts;
pub mod callbacks;
pub mod caller;
pub mod deadline;
pub mod dispatch;
pub mod errors;
pub mod idempotency;
pub mod jobs;
#[cfg(test)]
mod layering;
pub mod ledger;
pub mod optouts;
#[cfg(test)]
mod parse_props;
pub mod quality;
pub mod retention;
pub mod send;
pub mod status;
pub mod throttle;
pub mod users;
pub mod webhook;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::Settings;
use crate::error::StoreError;
use crate::ports::{
    ApiKeyStore, AuditLog, BroadcastStore, Clock, DispatchQueue, ExpiredItems, IdempotencyStore,
    Ledger, MessageStore, MetaClient, OptOutStore, PendingStatusStore, QualityStats, SecretStore,
    SendingControl, StatusCallbackStore, TenantStore, Throughput, UserStore,
};
use crate::secret::Secret;

/// Everything a handler needs, built once per process (Lambda init or local mode).
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
    pub expired: Arc<dyn ExpiredItems>,
    pub retention: Arc<dyn crate::ports::RetentionStore>,
    pub opt_outs: Arc<dyn OptOutStore>,
    pub idempotency: Arc<dyn IdempotencyStore>,
    pub throughput: Arc<dyn Throughput>,
    pub sending: Arc<dyn SendingControl>,
    pub queue: Arc<dyn DispatchQueue>,
    /// Statuses kept until their message's wamid is known.
    pub pending: Arc<dyn PendingStatusStore>,
    /// Tenants' status-callback settings.
    pub status_callbacks: Arc<dyn StatusCallbackStore>,
    /// Status changes waiting to be POSTed to tenants (the StatusCallbackQueue).
    pub callback_queue: Arc<dyn DispatchQueue>,
    pub secrets: Arc<SecretCache>,
    pub meta: Arc<dyn MetaClient>,
    pub clock: Arc<dyn Clock>,
    pub settings: Arc<Settings>,
}

/// (secret name, previous version?)
type CacheKey = (String, bool);

/// Secrets read through a short-lived cache, so a warm Lambda does not call Secrets
/// Manager on every request, yet picks up a rotation within `ttl`.
pub struct SecretCache {
    store: Arc<dyn SecretStore>,
    ttl: Duration,
    cache: Mutex<HashMap<CacheKey, (Instant, Option<Secret>)>>,
}

impl SecretCache {
    pub fn new(store: Arc<dyn SecretStore>, ttl: Duration) -> Self {
        Self {
            store,
            ttl,
            cache: Mutex::new(HashMap::new()),
        }
    }

    pub fn store(&self) -> &Arc<dyn SecretStore> {
        &self.store
    }

    async fn read(&self, name: &str, previous: bool) -> Result<Option<Secret>, StoreError> {
        let key = (name.to_owned(), previous);
        if let Ok(cache) = self.cache.lock() {
            if let Some((at, v)) = cache.get(&key) {
                if at.elapsed() < self.ttl {
                    return Ok(v.clone());
                }
            }
        }
        let v = if previous {
            self.store.get_previous_secret(name).await?
        } else {
            self.store.get_secret(name).await?
        };
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(key, (Instant::now(), v.clone()));
        }
        Ok(v)
    }

    pub async fn current(&self, name: &str) -> Result<Option<Secret>, StoreError> {
        self.read(name, false).await
    }

    pub async fn previous(&self, name: &str) -> Result<Option<Secret>, StoreError> {
        self.read(name, true).await
    }

    pub async fn put(&self, name: &str, value: &Secret) -> Result<(), StoreError> {
        self.store.put_secret(name, value).await?;
        if let Ok(mut cache) = self.cache.lock() {
            cache.retain(|(n, _), _| n != name);
        }
        Ok(())
    }
}
