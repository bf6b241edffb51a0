//! Limits on use: a tenant's request rate (API.md "Limits on use"). The limiters that
//! enforce them are `service::limits`.

/// The largest `requests_per_sec` the operator may set.
pub const MAX_REQUESTS_PER_SEC: u32 = 10_000;
/// The largest `burst` the operator may set.
pub const MAX_BURST: u32 = 20_000;
/// A tenant's limit is this many times its per-key limit (the defaults: 50/s per key,
/// 200/s per tenant).
pub const TENANT_FACTOR: u32 = 4;

/// Requests a second and the burst allowed above that rate: a tenant's per-key limit,
/// stored on its tenant record when the operator sets one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestLimits {
    #[serde(deserialize_with = "crate::domain::fields::integer")]
    pub requests_per_sec: u32,
    #[serde(deserialize_with = "crate::domain::fields::integer")]
    pub burst: u32,
}

impl RequestLimits {
    /// The published default per key.
    pub const DEFAULT: RequestLimits = RequestLimits {
        requests_per_sec: 50,
        burst: 100,
    };

    /// Positive, within the sane maxima, and a burst of at least one second's requests.
    pub fn validated(self) -> Result<Self, String> {
        let bad = |m: String| Err(m);
        if !(1..=MAX_REQUESTS_PER_SEC).contains(&self.requests_per_sec) {
            return bad(format!(
                "requests_per_sec must be 1 to {MAX_REQUESTS_PER_SEC}"
            ));
        }
        if !(1..=MAX_BURST).contains(&self.burst) {
            return bad(format!("burst must be 1 to {MAX_BURST}"));
        }
        if self.burst < self.requests_per_sec {
            return bad("burst must be at least requests_per_sec".into());
        }
        Ok(self)
    }

    /// The tenant-wide limit that goes with this per-key limit.
    pub fn tenant_wide(self) -> RequestLimits {
        RequestLimits {
            requests_per_sec: self.requests_per_sec.saturating_mul(TENANT_FACTOR),
            burst: self.burst.saturating_mul(TENANT_FACTOR),
        }
    }

    /// This instance's share when `instances` instances serve the same tenant (at least
    /// one request a second and a burst of one).
    pub fn per_instance(self, instances: u32) -> RequestLimits {
        let n = instances.max(1);
        RequestLimits {
            requests_per_sec: self.requests_per_sec.div_ceil(n).max(1),
            burst: self.burst.div_ceil(n).max(1),
        }
    }
}

/// The limits' configuration (`KIRIM_LIMIT_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimitSettings {
    /// Per key (and per console user) for tenants without their own limits.
    pub key: RequestLimits,
    /// How many instances are expected to serve one tenant at once: each counts its
    /// share (`KIRIM_LIMIT_INSTANCES` [1]: each instance enforces the full rate).
    pub instances: u32,
    /// Bad webhook signatures an address may send in a burst...
    pub webhook_bad_signatures: u32,
    /// ...and then one more every this many seconds.
    pub webhook_refill_secs: u32,
    /// Requests refused for their credentials (`401`) an address may make in a burst...
    pub bad_credentials: u32,
    /// ...and then one more every this many seconds.
    pub bad_credentials_refill_secs: u32,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            key: RequestLimits::DEFAULT,
            instances: 1,
            webhook_bad_signatures: 10,
            webhook_refill_secs: 6,
            bad_credentials: 30,
            bad_credentials_refill_secs: 2,
        }
    }
}
