//! Data keys for envelope encryption: a fresh 256-bit key per sealed value, handed out
//! with a wrapped copy to store beside the ciphertext, and a stored wrapped copy unwrapped
//! again. On AWS the wrapping key is a KMS key (`GenerateDataKey`, `Decrypt`); in local
//! mode on the memory backend it is a local AES-256-GCM key generated at start.
//!
//! A wrapped key is bound to its [`KeyContext`] (KMS's encryption context, its
//! associated data locally): it unwraps only with the same context, so a stored value
//! moved to another user's item does not open. The context is logged by CloudTrail on
//! every KMS call: ids only, never a secret.

use std::collections::BTreeMap;
use std::fmt;

use async_trait::async_trait;

use crate::domain::TenantId;
use crate::store_error::StoreError;

/// What a data key is bound to (names → values; ids only: CloudTrail logs them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyContext(BTreeMap<&'static str, String>);

impl KeyContext {
    /// The context of a user's TOTP seed.
    pub fn totp_seed(tenant: &TenantId, user_id: &str) -> Self {
        KeyContext(BTreeMap::from([
            ("purpose", "kirim-totp-seed".to_owned()),
            ("tenant_id", tenant.to_string()),
            ("user_id", user_id.to_owned()),
        ]))
    }

    pub fn pairs(&self) -> impl Iterator<Item = (&'static str, &str)> {
        self.0.iter().map(|(k, v)| (*k, v.as_str()))
    }

    /// One unambiguous byte string of the pairs (JSON of the sorted map): the associated
    /// data of a local wrap.
    pub fn canonical(&self) -> Vec<u8> {
        serde_json::to_vec(&self.0).unwrap_or_default()
    }
}

/// A data key in the clear: 32 bytes, never logged (its `Debug` says so), zeroed on drop.
pub struct PlainKey([u8; 32]);

impl PlainKey {
    pub const LEN: usize = 32;

    /// `None` unless exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        Some(PlainKey(bytes.try_into().ok()?))
    }

    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl Drop for PlainKey {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl fmt::Debug for PlainKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PlainKey(<redacted>)")
    }
}

/// A new data key: the plain key to seal with (then dropped), and its wrapped copy to store.
#[derive(Debug)]
pub struct DataKey {
    pub plain: PlainKey,
    pub wrapped: Vec<u8>,
}

#[async_trait]
pub trait DataKeys: Send + Sync {
    /// A fresh AES-256 data key bound to `context`. An error means nothing was generated
    /// (the key is unusable or the service unreachable): nothing may be sealed.
    async fn generate(&self, context: &KeyContext) -> Result<DataKey, StoreError>;

    /// The plain key of `wrapped`, or `None` when the wrapping key refuses it: tampered,
    /// wrapped under another key or with another context, the key disabled, not usable by
    /// this process or gone. Callers fail closed on `None`. An error is a failure to ask
    /// (throttled, unreachable): nothing was decided.
    async fn unwrap(
        &self,
        wrapped: &[u8],
        context: &KeyContext,
    ) -> Result<Option<PlainKey>, StoreError>;
}
