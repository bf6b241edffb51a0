//! `UserStore` in memory: every method atomic under the store's one lock.

use std::collections::HashMap;

use async_trait::async_trait;

use super::MemoryStore;
use crate::domain::{Role, TenantId};
use crate::ports::{
    LoginCounter, LoginGate, LoginPolicy, LoginTicket, SessionRecord, UserPage, UserRecord,
    UserStore,
};
use crate::store_error::StoreError;

#[derive(Default)]
pub(crate) struct UsersState {
    /// By (tenant, id).
    users: HashMap<(TenantId, String), UserRecord>,
    /// Lower-cased email → (tenant, id), across tenants.
    emails: HashMap<String, (TenantId, String)>,
    /// By token hash.
    sessions: HashMap<String, SessionRecord>,
    two_factor_required: HashMap<TenantId, bool>,
    /// Failed-login counters, as on DynamoDB.
    login: HashMap<LoginCounter, Counter>,
}

/// A failed-login counter: failures, when the next attempt may come, its expiry (epoch
/// seconds).
#[derive(Clone, Copy, Debug, Default)]
struct Counter {
    failures: Option<i64>,
    blocked_until: Option<i64>,
    expires: i64,
}

impl UsersState {
    pub(crate) fn remove_expired(&mut self, now: i64) -> usize {
        let before = self.sessions.len();
        self.sessions.retain(|_, s| s.expires_at.timestamp() > now);
        before - self.sessions.len()
    }

    /// Removes the failed-login counters past their expiry; answers how many.
    pub(crate) fn remove_expired_login_counters(&mut self, now: i64) -> usize {
        let before = self.login.len();
        self.login.retain(|_, c| c.expires > now);
        before - self.login.len()
    }

    fn user_mut(&mut self, tenant: &TenantId, id: &str) -> Result<&mut UserRecord, StoreError> {
        self.users
            .get_mut(&(tenant.clone(), id.to_owned()))
            .ok_or(StoreError::NotFound)
    }
}

#[async_trait]
impl UserStore for MemoryStore {
    async fn create_user(&self, user: &UserRecord) -> Result<(), StoreError> {
        let mut s = self.lock()?;
        super::store::refuse_if_closed(&s, &user.tenant_id)?;
        let key = (user.tenant_id.clone(), user.id.clone());
        if s.users.emails.contains_key(&user.email) || s.users.users.contains_key(&key) {
            return Err(StoreError::Conflict("a user with this email exists".into()));
        }
        s.users.emails.insert(user.email.clone(), key.clone());
        s.users.users.insert(key, user.clone());
        Ok(())
    }

    async fn get_user(
        &self,
        tenant: &TenantId,
        id: &str,
    ) -> Result<Option<UserRecord>, StoreError> {
        let s = self.lock()?;
        Ok(s.users
            .users
            .get(&(tenant.clone(), id.to_owned()))
            .filter(|_| self.config_live(&s, tenant))
            .cloned())
    }

    async fn user_by_email(&self, email: &str) -> Result<Option<UserRecord>, StoreError> {
        let s = self.lock()?;
        // The email's claim expires with its user (the close-out's TTL on both).
        Ok(s.users
            .emails
            .get(email)
            .filter(|(t, _)| self.config_live(&s, t))
            .and_then(|k| s.users.users.get(k))
            .cloned())
    }

    async fn list_users(&self, tenant: &TenantId) -> Result<Vec<UserRecord>, StoreError> {
        let s = self.lock()?;
        let mut out: Vec<UserRecord> = s
            .users
            .users
            .values()
            .filter(|u| &u.tenant_id == tenant && self.config_live(&s, tenant))
            .cloned()
            .collect();
        out.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(out)
    }

    async fn list_users_page(
        &self,
        tenant: &TenantId,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<UserPage, StoreError> {
        // The cursor names the id of the previous page's last user.
        let mut all = self.list_users(tenant).await?;
        all.sort_by(|a, b| a.id.cmp(&b.id));
        let (users, next_cursor) = super::store::page_by_id(
            tenant,
            "USER",
            all,
            |u| &u.id,
            crate::ports::Order::OldestFirst,
            limit,
            cursor,
        )?;
        Ok(UserPage { users, next_cursor })
    }

    async fn delete_user(&self, tenant: &TenantId, id: &str) -> Result<bool, StoreError> {
        let mut s = self.lock()?;
        match s.users.users.remove(&(tenant.clone(), id.to_owned())) {
            Some(u) => {
                s.users.emails.remove(&u.email);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn set_user_role(
        &self,
        tenant: &TenantId,
        id: &str,
        role: Role,
    ) -> Result<Option<Role>, StoreError> {
        let mut s = self.lock()?;
        Ok(s.users
            .users
            .get_mut(&(tenant.clone(), id.to_owned()))
            .map(|u| std::mem::replace(&mut u.role, role)))
    }

    async fn begin_login(
        &self,
        counter: &LoginCounter,
        now: i64,
        policy: &LoginPolicy,
    ) -> Result<LoginGate, StoreError> {
        let mut s = self.lock()?;
        let live = s
            .users
            .login
            .get(counter)
            .is_some_and(|c| c.failures.is_some() && policy.window_live(c.expires, now));
        if !live && !policy.count_at_gate {
            // Nothing to count against: let through. (DynamoDB's conditional update leaves
            // an item with only its TTL when there was none: so does this.)
            s.users.login.entry(counter.clone()).or_insert(Counter {
                expires: now + policy.window_secs,
                ..Counter::default()
            });
            return Ok(LoginGate::Allowed(LoginTicket::Free));
        }
        let c = s.users.login.entry(counter.clone()).or_default();
        match c.failures {
            // Within the free failures: counted as it begins, where the counter counts
            // at the gate (its window still runs from its last failure).
            Some(f) if live && f < policy.free => {
                if !policy.count_at_gate {
                    return Ok(LoginGate::Allowed(LoginTicket::Free));
                }
                c.failures = Some(f + 1);
                Ok(LoginGate::Allowed(LoginTicket::Counted))
            }
            // Past them: one at a time, once the delay has passed; a delay ending later
            // than any writer in step could set (a clock ahead, or stepped back) has lapsed.
            Some(_) if live => {
                let until = c.blocked_until.unwrap_or(0);
                let furthest = policy.furthest_block(now);
                if until <= now || until > furthest {
                    c.blocked_until = Some(now + policy.hold_secs);
                    Ok(LoginGate::Allowed(LoginTicket::Holding))
                } else {
                    Ok(LoginGate::Locked {
                        until: until.min(furthest).max(now + 1),
                    })
                }
            }
            // No live counter (or one whose window a clock ahead wrote): this attempt
            // starts one.
            _ => {
                *c = Counter {
                    failures: Some(1),
                    blocked_until: None,
                    expires: now + policy.window_secs,
                };
                Ok(LoginGate::Allowed(LoginTicket::Counted))
            }
        }
    }

    async fn login_failed(
        &self,
        counter: &LoginCounter,
        now: i64,
        policy: &LoginPolicy,
        ticket: LoginTicket,
    ) -> Result<i64, StoreError> {
        let mut s = self.lock()?;
        let c = s.users.login.entry(counter.clone()).or_default();
        let live = policy.window_live(c.expires, now);
        let failures = match (c.failures, ticket) {
            (Some(f), LoginTicket::Counted) if live => f.max(1),
            (Some(f), LoginTicket::Holding | LoginTicket::Free) if live => f + 1,
            _ => {
                c.blocked_until = Some(now + policy.delay_after(1));
                1
            }
        };
        c.failures = Some(failures);
        c.expires = now + policy.window_secs;
        let delay = policy.delay_after(failures);
        if failures > 1 && delay > 0 {
            let until = now + delay;
            // Only a holding attempt replaces its own hold; another attempt's stands. One
            // past what a writer in step could set has lapsed: replaced.
            let own_hold = (ticket == LoginTicket::Holding).then_some(now + policy.hold_secs);
            let furthest = policy.furthest_block(now);
            if c.blocked_until
                .is_none_or(|b| b < until || Some(b) == own_hold || b > furthest)
            {
                c.blocked_until = Some(until);
            }
        }
        Ok(failures)
    }

    async fn login_released(
        &self,
        counter: &LoginCounter,
        now: i64,
        policy: &LoginPolicy,
        ticket: LoginTicket,
    ) -> Result<(), StoreError> {
        let mut s = self.lock()?;
        if let Some(c) = s.users.login.get_mut(counter) {
            match ticket {
                LoginTicket::Counted => {
                    let live = policy.window_live(c.expires, now);
                    if let Some(f) = c.failures.filter(|f| *f > 0 && live) {
                        c.failures = Some(f - 1);
                    }
                }
                LoginTicket::Holding => {
                    if c.blocked_until == Some(now + policy.hold_secs) {
                        c.blocked_until = Some(now);
                    }
                }
                LoginTicket::Free => {}
            }
        }
        Ok(())
    }

    async fn clear_login_counter(&self, counter: &LoginCounter) -> Result<(), StoreError> {
        self.lock()?.users.login.remove(counter);
        Ok(())
    }

    async fn clear_login_counters_of_email(&self, email_hash: &str) -> Result<usize, StoreError> {
        let now = self.now_secs();
        let mut s = self.lock()?;
        let mut live = 0;
        s.users.login.retain(|k, c| match k {
            LoginCounter::EmailAtAddress { email_hash: h, .. } | LoginCounter::Totp(h)
                if h == email_hash =>
            {
                if c.expires > now {
                    live += 1;
                }
                false
            }
            _ => true,
        });
        Ok(live)
    }

    async fn set_pending_totp(
        &self,
        tenant: &TenantId,
        id: &str,
        secret: &str,
    ) -> Result<(), StoreError> {
        let mut s = self.lock()?;
        let u = s.users.user_mut(tenant, id)?;
        if u.totp_confirmed {
            return Err(StoreError::Conflict("2FA is already confirmed".into()));
        }
        u.totp_secret = Some(secret.to_owned());
        Ok(())
    }

    async fn set_password(
        &self,
        tenant: &TenantId,
        id: &str,
        old: &str,
        new: &str,
    ) -> Result<bool, StoreError> {
        let mut s = self.lock()?;
        let Ok(u) = s.users.user_mut(tenant, id) else {
            return Ok(false);
        };
        if u.password_hash == new {
            // This change, made already (as DynamoDB answers the SDK's retry of a try
            // that landed): applied, `password_version` moved on once.
            return Ok(true);
        }
        if u.password_hash != old {
            return Ok(false);
        }
        u.password_hash = new.to_owned();
        u.password_version = u.password_version.saturating_add(1);
        Ok(true)
    }

    async fn confirm_totp(
        &self,
        tenant: &TenantId,
        id: &str,
        secret: &str,
        step: i64,
    ) -> Result<bool, StoreError> {
        let mut s = self.lock()?;
        let Ok(u) = s.users.user_mut(tenant, id) else {
            return Ok(false);
        };
        if u.totp_secret.as_deref() != Some(secret) {
            return Ok(false);
        }
        if u.totp_confirmed {
            // This very confirmation, made already (as DynamoDB answers the SDK's retry of
            // a try that landed): applied.
            return Ok(u.last_totp_step == step);
        }
        if u.last_totp_step >= step {
            return Ok(false);
        }
        u.totp_confirmed = true;
        u.last_totp_step = step;
        Ok(true)
    }

    async fn reseal_totp(
        &self,
        tenant: &TenantId,
        id: &str,
        old: &str,
        new: &str,
    ) -> Result<bool, StoreError> {
        let mut s = self.lock()?;
        let Ok(u) = s.users.user_mut(tenant, id) else {
            return Ok(false);
        };
        if u.totp_secret.as_deref() != Some(old) {
            return Ok(false);
        }
        u.totp_secret = Some(new.to_owned());
        Ok(true)
    }

    async fn reset_totp(
        &self,
        tenant: &TenantId,
        id: &str,
    ) -> Result<Option<UserRecord>, StoreError> {
        let mut s = self.lock()?;
        let Ok(u) = s.users.user_mut(tenant, id) else {
            return Ok(None);
        };
        if u.totp_secret.is_some() || u.totp_confirmed {
            u.totp_secret = None;
            u.totp_confirmed = false;
            u.password_version = u.password_version.saturating_add(1);
        }
        Ok(Some(u.clone()))
    }

    async fn accept_totp_step(
        &self,
        tenant: &TenantId,
        id: &str,
        step: i64,
    ) -> Result<bool, StoreError> {
        let mut s = self.lock()?;
        let Ok(u) = s.users.user_mut(tenant, id) else {
            return Ok(false);
        };
        if u.last_totp_step >= step {
            return Ok(false);
        }
        u.last_totp_step = step;
        Ok(true)
    }

    async fn put_session(&self, session: &SessionRecord) -> Result<(), StoreError> {
        let mut s = self.lock()?;
        if s.users.sessions.contains_key(&session.token_hash) {
            return Err(StoreError::Conflict("session exists".into()));
        }
        s.users
            .sessions
            .insert(session.token_hash.clone(), session.clone());
        Ok(())
    }

    async fn session_by_hash(&self, token_hash: &str) -> Result<Option<SessionRecord>, StoreError> {
        let now = self.now_secs();
        Ok(self
            .lock()?
            .users
            .sessions
            .get(token_hash)
            .filter(|s| s.expires_at.timestamp() > now)
            .cloned())
    }

    async fn revoke_session(&self, token_hash: &str) -> Result<(), StoreError> {
        if let Some(s) = self.lock()?.users.sessions.get_mut(token_hash) {
            s.revoked = true;
        }
        Ok(())
    }

    async fn touch_session(
        &self,
        token_hash: &str,
        at: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), StoreError> {
        if let Some(s) = self.lock()?.users.sessions.get_mut(token_hash) {
            s.last_seen_at = Some(at);
        }
        Ok(())
    }

    async fn mark_second_factor(&self, token_hash: &str) -> Result<(), StoreError> {
        if let Some(s) = self.lock()?.users.sessions.get_mut(token_hash) {
            s.second_factor = Some(true);
        }
        Ok(())
    }

    async fn two_factor_required(&self, tenant: &TenantId) -> Result<bool, StoreError> {
        let s = self.lock()?;
        Ok(s.users
            .two_factor_required
            .get(tenant)
            .filter(|_| self.config_live(&s, tenant))
            .copied()
            .unwrap_or(false))
    }

    async fn set_two_factor_required(
        &self,
        tenant: &TenantId,
        required: bool,
    ) -> Result<(), StoreError> {
        let mut s = self.lock()?;
        super::store::refuse_if_closed(&s, tenant)?;
        s.users.two_factor_required.insert(tenant.clone(), required);
        Ok(())
    }
}

/// For the retention close-out and the stored-item view (`store/retention.rs`).
impl UsersState {
    /// A closed tenant's close-out, as the table's: its users' email claims deleted (only
    /// those still naming them) and their sign-in material removed (password hash, TOTP
    /// seed and its state); answers how many claims went. Again, it changes nothing.
    pub(crate) fn close_out_tenant(&mut self, tenant: &TenantId) -> usize {
        let before = self.emails.len();
        self.emails.retain(|_, (t, _)| t != tenant);
        for ((_, _), u) in self.users.iter_mut().filter(|((t, _), _)| t == tenant) {
            u.password_hash.clear();
            u.totp_secret = None;
            u.totp_confirmed = false;
            u.last_totp_step = 0;
        }
        before - self.emails.len()
    }

    /// Removes a closed-out tenant's users, their email claims and its settings.
    pub(crate) fn remove_tenant(&mut self, tenant: &TenantId) -> usize {
        let before = self.users.len() + self.emails.len() + self.two_factor_required.len();
        self.users.retain(|(t, _), _| t != tenant);
        self.emails.retain(|_, (t, _)| t != tenant);
        self.two_factor_required.retain(|t, _| t != tenant);
        before - (self.users.len() + self.emails.len() + self.two_factor_required.len())
    }

    /// Every item as the table would hold it; `config_ttl` gives a closed-out tenant's
    /// configuration its TTL.
    pub(crate) fn stored(
        &self,
        config_ttl: &dyn Fn(&TenantId) -> Option<i64>,
    ) -> Vec<crate::ports::StoredItem> {
        use crate::adapters::aws::keys::{self, Key};
        use crate::ports::StoredItem;
        let mut out = Vec::new();
        let mut item = |key: Key, ttl: Option<i64>, attributes: serde_json::Value| {
            out.push(StoredItem {
                pk: key.pk,
                sk: key.sk,
                ttl,
                attributes,
            })
        };
        for ((t, id), u) in &self.users {
            let a = serde_json::to_value(u).unwrap_or_default();
            item(keys::user(t, id), config_ttl(t), a);
        }
        for (email, (t, id)) in &self.emails {
            let a = serde_json::json!({"tenant_id": t, "user_id": id});
            item(keys::email_claim(email), config_ttl(t), a);
        }
        for (hash, s) in &self.sessions {
            let a = serde_json::to_value(s).unwrap_or_default();
            item(keys::session(hash), Some(s.expires_at.timestamp()), a);
        }
        for (t, required) in &self.two_factor_required {
            let a = serde_json::json!({"required": required});
            item(keys::two_factor_setting(t), config_ttl(t), a);
        }
        for (counter, c) in &self.login {
            let key = match counter {
                LoginCounter::EmailAtAddress { email_hash, addr } => {
                    keys::login_failures_of_email(email_hash, addr)
                }
                LoginCounter::Address(addr) => keys::login_failures_of_address(addr),
                LoginCounter::Totp(email_hash) => keys::login_totp_failures(email_hash),
            };
            let a = serde_json::json!({"failures": c.failures, "blocked_until": c.blocked_until});
            item(key, Some(c.expires), a);
        }
        out
    }
}
