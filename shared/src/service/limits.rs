//! Limits on use (API.md "Limits on use"): how many requests a second each API key (or
//! console user) and each tenant may make, and how many bad webhook signatures an address
//! may send. A leaf: the access middleware and the webhook handler call it.
//!
//! The counting is per process, in memory: no storage write on the hot path. Each bucket
//! is a GCRA ("virtual scheduling", as the per-number limiter in `throttle`): one number
//! per key, the theoretical arrival time of the next request, so a bucket costs a map
//! entry and a check is a lock and some arithmetic. On Lambda every instance counts for
//! itself; `KIRIM_LIMIT_INSTANCES` divides the configured rates among the instances
//! expected to serve one tenant (README "Limits" has the bound).

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;

use chrono::{DateTime, Utc};

pub use crate::domain::{LimitSettings, RequestLimits};

use super::errors::ServiceError;
use super::Deps;
use crate::domain::TenantId;
use crate::ports::Tenant;

/// Buckets one limiter keeps at most; beyond it, buckets that have refilled are dropped
/// (a full bucket is the same as none), then the one nearest to full (see [`Limiter`]).
pub const MAX_BUCKETS: usize = 10_000;

/// Refused: try again in this many whole seconds (at least one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryAfter(pub u64);

impl From<RetryAfter> for ServiceError {
    fn from(r: RetryAfter) -> Self {
        ServiceError::RateLimited {
            retry_after_secs: r.0,
        }
    }
}

fn micros(now: DateTime<Utc>) -> i64 {
    now.timestamp_micros()
}

/// One rate: microseconds between requests, and how far ahead of now a bucket may run.
#[derive(Clone, Copy, Debug)]
struct Rate {
    interval: i64,
    tolerance: i64,
}

impl Rate {
    fn per_sec(per_sec: u32, burst: u32) -> Self {
        let interval = 1_000_000 / i64::from(per_sec.max(1));
        Rate {
            interval,
            tolerance: interval.saturating_mul(i64::from(burst.max(1))),
        }
    }

    fn every(secs: u32, burst: u32) -> Self {
        let interval = 1_000_000 * i64::from(secs.max(1));
        Rate {
            interval,
            tolerance: interval.saturating_mul(i64::from(burst.max(1))),
        }
    }

    /// The furthest ahead of `now` a bucket is ever stored ([`Limiter::charge`]'s bound).
    fn furthest(self, now: i64) -> i64 {
        now.saturating_add(self.tolerance)
            .saturating_add(self.interval)
    }

    /// The bucket's arrival time after one more request, and whether that is allowed.
    fn next(self, tat: Option<i64>, now: i64) -> (i64, Result<(), RetryAfter>) {
        let next = tat.unwrap_or(now).max(now).saturating_add(self.interval);
        if next - now <= self.tolerance {
            (next, Ok(()))
        } else {
            // Allowed again once `next - tolerance` has passed.
            let wait = next - self.tolerance - now;
            let secs = (wait + 999_999) / 1_000_000;
            (next, Err(RetryAfter(secs.max(1) as u64)))
        }
    }
}

/// Buckets by key, in memory, bounded by [`MAX_BUCKETS`].
pub struct Limiter<K> {
    buckets: Mutex<HashMap<K, i64>>,
    cap: usize,
}

impl<K: Eq + Hash + Clone> Default for Limiter<K> {
    fn default() -> Self {
        Self::with_capacity(MAX_BUCKETS)
    }
}

impl<K: Eq + Hash + Clone> Limiter<K> {
    pub fn with_capacity(cap: usize) -> Self {
        Self {
            buckets: Mutex::new(HashMap::new()),
            cap: cap.max(1),
        }
    }

    /// Runs `f` on the bucket map; a poisoned lock starts afresh (limits fail open).
    fn with<T>(&self, f: impl FnOnce(&mut HashMap<K, i64>) -> T) -> T {
        let mut guard = match self.buckets.lock() {
            Ok(g) => g,
            Err(poisoned) => {
                let mut g = poisoned.into_inner();
                g.clear();
                g
            }
        };
        f(&mut guard)
    }

    fn store(&self, map: &mut HashMap<K, i64>, key: &K, tat: i64, now: i64) {
        if !map.contains_key(key) && map.len() >= self.cap {
            // A bucket whose time has passed is full again: dropping it loses nothing.
            map.retain(|_, t| *t > now);
            if map.len() >= self.cap {
                // Still full (as many keys in debt as there is room for: addresses cycled
                // to wash out the limits): the bucket nearest to full again makes room, so
                // the ones that spent most of their allowance stay held (clearing them all
                // reset every allowance for whoever brought the map to its cap).
                let nearest = map.iter().min_by_key(|(_, t)| **t).map(|(k, _)| k.clone());
                if let Some(k) = nearest {
                    map.remove(&k);
                }
            }
        }
        map.insert(key.clone(), tat);
    }

    /// `key`'s bucket. One further ahead than any is stored (the clock stepped back since)
    /// is brought back to the furthest, just spent: it then waits its own rate, not the
    /// length of the step.
    fn bucket(map: &mut HashMap<K, i64>, key: &K, rate: Rate, now: i64) -> Option<i64> {
        let tat = map.get_mut(key)?;
        *tat = (*tat).min(rate.furthest(now));
        Some(*tat)
    }

    /// Counts a request against `key`'s bucket if it is allowed; a refused request is
    /// not counted.
    fn admit(&self, key: &K, rate: Rate, now: DateTime<Utc>) -> Result<(), RetryAfter> {
        let now = micros(now);
        self.with(|map| {
            let (next, verdict) = rate.next(Self::bucket(map, key, rate, now), now);
            if verdict.is_ok() {
                self.store(map, key, next, now);
            }
            verdict
        })
    }

    /// Whether one more request would be allowed, counting nothing.
    fn peek(&self, key: &K, rate: Rate, now: DateTime<Utc>) -> Result<(), RetryAfter> {
        let now = micros(now);
        self.with(|map| rate.next(Self::bucket(map, key, rate, now), now).1)
    }

    /// Counts one against `key` whether or not it fits (a bad signature already sent).
    fn charge(&self, key: &K, rate: Rate, now: DateTime<Utc>) {
        let now = micros(now);
        self.with(|map| {
            let (next, _) = rate.next(Self::bucket(map, key, rate, now), now);
            // Never more than one tolerance ahead: a long flood does not extend the wait
            // beyond one refill of the whole burst.
            self.store(map, key, next.min(rate.furthest(now)), now);
        });
    }

    pub fn len(&self) -> usize {
        self.with(|m| m.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Who a tenant request counts against: the API key, or the console user (all of a
/// user's sessions share one bucket).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Principal {
    ApiKey(String),
    User(String),
}

/// The process's limiters: per key or user, per tenant, per webhook source address.
pub struct Limits {
    settings: LimitSettings,
    principals: Limiter<Principal>,
    tenants: Limiter<String>,
    webhook: Limiter<IpAddr>,
    credentials: Limiter<IpAddr>,
    /// Addresses whose failed-login counter (in the table, shared by every instance)
    /// answered locked, until when (epoch seconds): their sign-ins are refused here until
    /// then without the counter's writes (each a conditional write refused, still billed).
    login_locks: Mutex<HashMap<IpAddr, i64>>,
}

impl Limits {
    pub fn new(settings: LimitSettings) -> Self {
        Self {
            settings,
            principals: Limiter::default(),
            tenants: Limiter::default(),
            webhook: Limiter::default(),
            credentials: Limiter::default(),
            login_locks: Mutex::new(HashMap::new()),
        }
    }

    /// How long sign-ins from `addr` are still refused (seconds), if its failed-login
    /// counter was seen locked ([`Self::login_locked_until`]) and that has not passed.
    /// The table's counter stays the authority; this only skips asking it again. A lock
    /// seen further ahead than the address's policy can hold one
    /// (`LoginPolicy::furthest_block`: this clock stepped back since) has lapsed, as it has
    /// at the counter: the address is not held here for the length of the step.
    pub fn login_locked(&self, addr: Option<IpAddr>, now: DateTime<Utc>) -> Option<u64> {
        let key = login_source(addr?);
        let now = now.timestamp();
        let map = self.login_locks.lock().ok()?;
        let until = *map.get(&key)?;
        let furthest = crate::ports::LoginPolicy::ADDRESS.furthest_block(now);
        (until > now && until <= furthest).then(|| u64::try_from(until - now).unwrap_or(1).max(1))
    }

    /// `addr`'s failed-login counter answered locked until `until` (epoch seconds).
    pub fn login_locked_until(&self, addr: Option<IpAddr>, until: i64, now: DateTime<Utc>) {
        let Some(a) = addr else { return };
        let Ok(mut map) = self.login_locks.lock() else {
            return;
        };
        let now = now.timestamp();
        if map.len() >= MAX_BUCKETS {
            map.retain(|_, t| *t > now);
            if map.len() >= MAX_BUCKETS {
                return;
            }
        }
        // Never kept further ahead than the counter could hold it.
        let furthest = crate::ports::LoginPolicy::ADDRESS.furthest_block(now);
        map.insert(login_source(a), until.min(furthest));
    }

    pub fn settings(&self) -> &LimitSettings {
        &self.settings
    }

    /// Counts one request of `principal` in `tenant`, whose own per-key limits (if the
    /// operator set any) are `configured`. The tenant's bucket is only charged when the
    /// key's admits the request, so a key over its limit never uses up its tenant's.
    pub fn admit_request(
        &self,
        tenant: &str,
        principal: &Principal,
        configured: Option<RequestLimits>,
        now: DateTime<Utc>,
    ) -> Result<(), RetryAfter> {
        let key = configured
            .unwrap_or(self.settings.key)
            .per_instance(self.settings.instances);
        let wide = configured
            .unwrap_or(self.settings.key)
            .tenant_wide()
            .per_instance(self.settings.instances);
        let key_rate = Rate::per_sec(key.requests_per_sec, key.burst);
        let tenant_rate = Rate::per_sec(wide.requests_per_sec, wide.burst);
        self.tenants.peek(&tenant.to_owned(), tenant_rate, now)?;
        self.principals.admit(principal, key_rate, now)?;
        self.tenants.admit(&tenant.to_owned(), tenant_rate, now)
    }

    fn webhook_rate(&self) -> Rate {
        Rate::every(
            self.settings.webhook_refill_secs,
            self.settings.webhook_bad_signatures,
        )
    }

    /// Whether a webhook POST from `addr` may be checked at all: an address that sent
    /// its allowance of bad signatures is refused before any HMAC is computed.
    pub fn webhook_allowed(
        &self,
        addr: Option<IpAddr>,
        now: DateTime<Utc>,
    ) -> Result<(), RetryAfter> {
        match addr {
            Some(a) => self.webhook.peek(&source(a), self.webhook_rate(), now),
            None => Ok(()),
        }
    }

    /// A webhook POST from `addr` had no valid signature.
    pub fn webhook_bad_signature(&self, addr: Option<IpAddr>, now: DateTime<Utc>) {
        if let Some(a) = addr {
            self.webhook.charge(&source(a), self.webhook_rate(), now);
        }
    }

    fn credentials_rate(&self) -> Rate {
        Rate::every(
            self.settings.bad_credentials_refill_secs,
            self.settings.bad_credentials,
        )
    }

    /// Whether a request from `addr` whose credentials were refused is answered `429`: an
    /// address that spent its allowance of refused credentials is (its credentials are still
    /// looked up, so valid ones pass), before its refusal is audited: a flood must not
    /// become a flood of audit writes.
    pub fn credentials_allowed(
        &self,
        addr: Option<IpAddr>,
        now: DateTime<Utc>,
    ) -> Result<(), RetryAfter> {
        match addr {
            Some(a) => self
                .credentials
                .peek(&source(a), self.credentials_rate(), now),
            None => Ok(()),
        }
    }

    /// A request from `addr` was refused for its credentials (`401`).
    pub fn bad_credentials(&self, addr: Option<IpAddr>, now: DateTime<Utc>) {
        if let Some(a) = addr {
            self.credentials
                .charge(&source(a), self.credentials_rate(), now);
        }
    }
}

/// The operator sets a tenant's per-key limits (its tenant-wide limit follows); answers
/// the updated tenant. `NotFound` for an unknown tenant; invalid limits change nothing.
pub async fn set_tenant_limits(
    deps: &Deps,
    id: &TenantId,
    limits: RequestLimits,
) -> Result<Tenant, ServiceError> {
    let limits = limits.validated().map_err(ServiceError::InvalidRequest)?;
    let tenant = deps.tenants.set_request_limits(id, limits).await?;
    tracing::info!(
        requests_per_sec = limits.requests_per_sec,
        burst = limits.burst,
        "tenant request limits set"
    );
    Ok(tenant)
}

/// The unit an address is counted as by the per-address request limiters: itself for
/// IPv4, its /64 for IPv6 (one host usually holds a whole /64, and could otherwise rotate
/// through it).
pub fn source(addr: IpAddr) -> IpAddr {
    prefix(addr, 64)
}

/// The unit the failed-login counters count an address as: itself for IPv4 (an IPv4-mapped
/// IPv6 address as its IPv4), its /56 for IPv6. A /64 would let one site guess as many
/// times as it has /64s: a free tunnel's /48 is 65,536 of them, each with its own free
/// failures against one email; a /56, the usual residential delegation, keeps a household
/// one unit, as an office behind one IPv4 address is one, and makes a /48 256.
pub fn login_source(addr: IpAddr) -> IpAddr {
    prefix(addr, 56)
}

/// `addr` as its IPv4 (mapped too), or its IPv6 network of `bits` (a multiple of 8).
fn prefix(addr: IpAddr, bits: usize) -> IpAddr {
    match addr {
        IpAddr::V4(_) => addr,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut octets = v6.octets();
                octets[(bits / 8).min(16)..].fill(0);
                IpAddr::V6(octets.into())
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{MAX_BURST, MAX_REQUESTS_PER_SEC};
    use chrono::Duration;

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }

    #[test]
    fn an_address_lock_seen_before_the_clock_stepped_back_holds_no_longer_than_its_policy() {
        let limits = Limits::new(LimitSettings::default());
        let addr = Some(IpAddr::from([198, 51, 100, 7]));
        let bound =
            crate::ports::LoginPolicy::ADDRESS.furthest_block(t0().timestamp()) - t0().timestamp();
        // A normal lock holds for its time.
        limits.login_locked_until(addr, t0().timestamp() + 60, t0());
        assert_eq!(limits.login_locked(addr, t0()), Some(60));
        assert_eq!(
            limits.login_locked(addr, t0() + Duration::seconds(59)),
            Some(1)
        );
        assert_eq!(
            limits.login_locked(addr, t0() + Duration::seconds(60)),
            None
        );
        // Seen locked for the longest delay, then the clock steps back three hours: the
        // lock lies further ahead than the counter could hold it, and has lapsed.
        limits.login_locked_until(addr, t0().timestamp() + 900, t0());
        assert_eq!(limits.login_locked(addr, t0()), Some(900));
        assert_eq!(limits.login_locked(addr, t0() - Duration::hours(3)), None);
        // A time answered from a counter a clock ahead wrote is kept no further than the
        // bound.
        limits.login_locked_until(addr, t0().timestamp() + 6 * 3600, t0());
        assert_eq!(
            limits.login_locked(addr, t0()),
            Some(u64::try_from(bound).unwrap())
        );
    }

    #[test]
    fn a_key_gets_its_burst_at_once_then_its_rate_and_a_retry_after_of_whole_seconds() {
        let limits = Limits::new(LimitSettings::default());
        let key = Principal::ApiKey("k1".into());
        for i in 0..100 {
            assert!(
                limits.admit_request("t1", &key, None, t0()).is_ok(),
                "request {i} of the burst"
            );
        }
        assert_eq!(
            limits.admit_request("t1", &key, None, t0()),
            Err(RetryAfter(1))
        );
        // 50 a second: one more every 20 ms.
        let later = t0() + Duration::milliseconds(20);
        assert!(limits.admit_request("t1", &key, None, later).is_ok());
        assert!(limits.admit_request("t1", &key, None, later).is_err());
    }

    #[test]
    fn a_bucket_spent_before_the_clock_stepped_back_waits_its_own_rate_not_the_step() {
        let limiter: Limiter<String> = Limiter::default();
        let key = "k1".to_owned();
        // 50 a second, a burst of 100: spent, it is full again within about two seconds.
        let rate = Rate::per_sec(50, 100);
        let ahead = t0() + Duration::hours(12);
        while limiter.admit(&key, rate, ahead).is_ok() {}
        // The clock steps back twelve hours: the bucket counts as just spent, not as twelve
        // hours ahead.
        let back = t0();
        match limiter.admit(&key, rate, back) {
            Ok(()) => {}
            Err(RetryAfter(secs)) => assert!(secs <= 3, "waits {secs} s"),
        }
        assert!(limiter
            .admit(&key, rate, back + Duration::seconds(3))
            .is_ok());
        // A bad signature's charge is bounded the same way.
        limiter.charge(&key, rate, ahead);
        assert!(limiter
            .peek(&key, rate, back + Duration::seconds(3))
            .is_err());
        assert!(limiter
            .peek(&key, rate, back + Duration::seconds(6))
            .is_ok());
    }

    #[test]
    fn a_tenant_is_limited_across_its_keys_and_other_tenants_are_not() {
        let limits = Limits::new(LimitSettings::default());
        // Four keys use up the tenant's 400 burst (4 × 100).
        for k in 0..4 {
            let key = Principal::ApiKey(format!("k{k}"));
            for _ in 0..100 {
                assert!(limits.admit_request("t1", &key, None, t0()).is_ok());
            }
        }
        let fifth = Principal::ApiKey("k5".into());
        assert!(limits.admit_request("t1", &fifth, None, t0()).is_err());
        let other = Principal::User("u1".into());
        assert!(limits.admit_request("t2", &other, None, t0()).is_ok());
    }

    #[test]
    fn a_refused_key_does_not_use_up_its_tenants_allowance() {
        let limits = Limits::new(LimitSettings::default());
        let tight = RequestLimits {
            requests_per_sec: 1,
            burst: 1,
        };
        let key = Principal::ApiKey("k1".into());
        assert!(limits.admit_request("t1", &key, Some(tight), t0()).is_ok());
        for _ in 0..50 {
            assert!(limits.admit_request("t1", &key, Some(tight), t0()).is_err());
        }
        // The tenant's own bucket (4 a second, burst 4) still has three.
        for k in 2..5 {
            let other = Principal::ApiKey(format!("k{k}"));
            assert!(limits
                .admit_request("t1", &other, Some(tight), t0())
                .is_ok());
        }
    }

    #[test]
    fn instances_share_the_configured_rate() {
        let l = RequestLimits::DEFAULT.per_instance(4);
        assert_eq!((l.requests_per_sec, l.burst), (13, 25));
        let tiny = RequestLimits {
            requests_per_sec: 1,
            burst: 1,
        };
        assert_eq!(tiny.per_instance(10), tiny);
    }

    #[test]
    fn limits_outside_the_sane_range_are_refused() {
        for (rps, burst) in [
            (0, 10),
            (10, 0),
            (MAX_REQUESTS_PER_SEC + 1, MAX_BURST),
            (10, 5),
        ] {
            let l = RequestLimits {
                requests_per_sec: rps,
                burst,
            };
            assert!(l.validated().is_err(), "{rps}/{burst}");
        }
        assert!(RequestLimits::DEFAULT.validated().is_ok());
    }

    #[test]
    fn an_address_that_sent_too_many_bad_signatures_waits_and_others_do_not() {
        let limits = Limits::new(LimitSettings::default());
        let bad: IpAddr = "198.51.100.7".parse().unwrap();
        let meta: IpAddr = "203.0.113.10".parse().unwrap();
        for _ in 0..10 {
            assert!(limits.webhook_allowed(Some(bad), t0()).is_ok());
            limits.webhook_bad_signature(Some(bad), t0());
        }
        let RetryAfter(wait) = limits.webhook_allowed(Some(bad), t0()).unwrap_err();
        assert!((1..=6).contains(&wait), "{wait}");
        assert!(limits.webhook_allowed(Some(meta), t0()).is_ok());
        // A refill later, one more try.
        let later = t0() + Duration::seconds(6);
        assert!(limits.webhook_allowed(Some(bad), later).is_ok());
    }

    #[test]
    fn ipv6_addresses_count_by_their_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        assert_eq!(source(a), source(b));
        let mapped: IpAddr = "::ffff:198.51.100.7".parse().unwrap();
        assert_eq!(source(mapped), "198.51.100.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn two_64s_of_one_56_are_one_login_unit_and_two_56s_are_two() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let (a, b) = (ip("2001:db8:1:2a01::1"), ip("2001:db8:1:2aff:ffff::9"));
        assert_ne!(source(a), source(b), "two /64s for the request limiters");
        assert_eq!(login_source(a), login_source(b), "one /56 for the logins");
        assert_eq!(login_source(a), ip("2001:db8:1:2a00::"));
        let next = ip("2001:db8:1:2b00::1");
        assert_ne!(login_source(a), login_source(next), "another /56");
        assert_eq!(
            login_source(ip("::ffff:198.51.100.7")),
            ip("198.51.100.7"),
            "mapped IPv4 as IPv4"
        );
        assert_eq!(login_source(ip("198.51.100.7")), ip("198.51.100.7"));
    }

    #[test]
    fn an_address_seen_locked_holds_its_whole_56_here() {
        let limits = Limits::new(LimitSettings::default());
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        limits.login_locked_until(ip("2001:db8:7:100::1"), t0().timestamp() + 60, t0());
        assert_eq!(limits.login_locked(ip("2001:db8:7:1ff::2"), t0()), Some(60));
        assert_eq!(limits.login_locked(ip("2001:db8:7:200::1"), t0()), None);
    }

    #[test]
    fn the_bucket_map_stays_bounded_dropping_refilled_buckets_first() {
        let limiter: Limiter<u32> = Limiter::with_capacity(3);
        let rate = Rate::per_sec(1, 5);
        for k in 0..3 {
            assert!(limiter.admit(&k, rate, t0()).is_ok());
        }
        // Two seconds on, every bucket has refilled: they go, the new one stays.
        let later = t0() + Duration::seconds(2);
        assert!(limiter.admit(&9, rate, later).is_ok());
        assert_eq!(limiter.len(), 1);
        for k in 10..20 {
            assert!(limiter.admit(&k, rate, later).is_ok());
        }
        assert!(limiter.len() <= 3);
    }

    /// Cycling through more addresses than the map holds does not wash out the limits:
    /// an address that used up its allowance stays held while newcomers come and go.
    #[test]
    fn a_full_map_keeps_the_key_that_spent_its_allowance() {
        let limiter: Limiter<u32> = Limiter::with_capacity(3);
        let rate = Rate::per_sec(1, 5);
        // Key 0 spends its whole burst.
        for _ in 0..5 {
            assert!(limiter.admit(&0, rate, t0()).is_ok());
        }
        assert!(limiter.admit(&0, rate, t0()).is_err());
        // A hundred other keys, one request each, at the same moment.
        for k in 1..=100 {
            assert!(limiter.admit(&k, rate, t0()).is_ok());
        }
        assert!(limiter.len() <= 3);
        assert!(limiter.admit(&0, rate, t0()).is_err(), "still held");
    }
}
