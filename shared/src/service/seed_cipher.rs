//! TOTP seeds sealed at rest, under KMS envelope encryption. The user item holds
//! `v2:<wrapped data key b64>:<nonce b64>:<ciphertext b64>`: the seed sealed with
//! AES-256-GCM under a fresh data key (one per seal), with the tenant and user id as
//! associated data; the data key wrapped by the data-key port (`Deps::data_keys`: KMS's
//! `TotpSeedKey` on AWS, a local key in local mode's memory backend) and bound to the
//! same tenant and user (KMS's encryption context). The table never holds a key in the
//! clear; opening a seed is one `Decrypt` (logins are rare: no data keys are cached, so no
//! plain key outlives the request that used it).
//!
//! Older forms still open, and are sealed again as `v2` by the caller on their next
//! successful use ([`Opened::Legacy`], a conditional write on the old value):
//! - `v1:<nonce b64>:<ciphertext b64>`: AES-256-GCM under a key derived (HMAC-SHA256) from
//!   the TOTP key secret (`${StackName}/totp-key` in Secrets Manager), current or previous;
//! - a plain base32 seed stored before sealing.
//!
//! Anything else (tampered, truncated, another user's, or a data key KMS refuses to
//! unwrap) does not open: callers fail closed.

use base64::engine::general_purpose::STANDARD_NO_PAD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use ring::aead;
use sha2::Sha256;

use super::errors::ServiceError;
use super::Deps;
use crate::config::Settings;
use crate::domain::TenantId;
use crate::ports::{KeyContext, PlainKey};
use crate::secret::Secret;

/// The stored form's version prefix before KMS (Secrets Manager key).
pub const V1: &str = "v1:";
/// The stored form's version prefix under a KMS data key.
pub const V2: &str = "v2:";

/// The TOTP key's secret name: `{prefix}totp-key`.
pub fn key_name(settings: &Settings) -> String {
    format!("{}totp-key", settings.secret_prefix)
}

/// The v1 TOTP keys: current first, then the previous one during its rotation.
/// `Internal` (a 500, nothing sealed or opened) when there is no current key.
pub async fn keys(deps: &Deps) -> Result<Vec<Secret>, ServiceError> {
    let name = key_name(&deps.settings);
    let current = deps.secrets.current(&name).await?;
    let Some(current) = current.filter(|k| !k.expose().is_empty()) else {
        tracing::error!(secret = %name, "the TOTP key secret is missing");
        return Err(ServiceError::Internal(
            "the TOTP key is not provisioned".into(),
        ));
    };
    let previous = deps.secrets.previous(&name).await?;
    Ok(std::iter::once(current)
        .chain(previous.filter(|k| !k.expose().is_empty()))
        .collect())
}

fn aead_key(key: &Secret) -> Option<aead::LessSafeKey> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.expose().as_bytes()).ok()?;
    mac.update(b"kirim totp seed key v1");
    let derived = mac.finalize().into_bytes();
    let unbound = aead::UnboundKey::new(&aead::AES_256_GCM, &derived).ok()?;
    Some(aead::LessSafeKey::new(unbound))
}

fn aad(tenant: &TenantId, user_id: &str) -> String {
    format!("totp-seed/{tenant}/{user_id}")
}

fn data_key_aead(key: &PlainKey) -> Option<aead::LessSafeKey> {
    let unbound = aead::UnboundKey::new(&aead::AES_256_GCM, key.expose()).ok()?;
    Some(aead::LessSafeKey::new(unbound))
}

fn seal_with(
    key: &aead::LessSafeKey,
    tenant: &TenantId,
    user_id: &str,
    seed: &str,
) -> Option<([u8; aead::NONCE_LEN], Vec<u8>)> {
    let nonce_bytes: [u8; aead::NONCE_LEN] = rand::random();
    let mut buf = seed.as_bytes().to_vec();
    key.seal_in_place_append_tag(
        aead::Nonce::assume_unique_for_key(nonce_bytes),
        aead::Aad::from(aad(tenant, user_id).as_bytes()),
        &mut buf,
    )
    .ok()?;
    Some((nonce_bytes, buf))
}

/// Seals `seed` for the user as `v2`, under a new data key. Fails (nothing to store)
/// when no data key can be had.
pub async fn seal(
    deps: &Deps,
    tenant: &TenantId,
    user_id: &str,
    seed: &str,
) -> Result<String, ServiceError> {
    let data_key = deps
        .data_keys
        .generate(&KeyContext::totp_seed(tenant, user_id))
        .await?;
    let key = data_key_aead(&data_key.plain)
        .ok_or_else(|| ServiceError::Internal("TOTP seed sealing".into()))?;
    let (nonce, sealed) = seal_with(&key, tenant, user_id, seed)
        .ok_or_else(|| ServiceError::Internal("TOTP seed sealing".into()))?;
    Ok(format!(
        "{V2}{}:{}:{}",
        B64.encode(&data_key.wrapped),
        B64.encode(nonce),
        B64.encode(sealed)
    ))
}

/// Seals `seed` for the user as `v1` under `key` (the form before KMS: nothing new is
/// sealed so; kept to test the migration).
pub fn seal_v1(
    key: &Secret,
    tenant: &TenantId,
    user_id: &str,
    seed: &str,
) -> Result<String, ServiceError> {
    let fail = || ServiceError::Internal("TOTP seed sealing".into());
    let key = aead_key(key).ok_or_else(fail)?;
    let (nonce_bytes, buf) = seal_with(&key, tenant, user_id, seed).ok_or_else(fail)?;
    Ok(format!(
        "{V1}{}:{}",
        B64.encode(nonce_bytes),
        B64.encode(buf)
    ))
}

/// An opened stored seed.
pub enum Opened {
    /// Sealed as `v2` (a KMS data key): nothing to do.
    Current(Secret),
    /// Plain (stored before sealing) or `v1` (the Secrets Manager key): seal it again.
    Legacy(Secret),
}

impl Opened {
    pub fn seed(&self) -> &str {
        match self {
            Opened::Current(s) | Opened::Legacy(s) => s.expose(),
        }
    }
}

fn open_with(key: &aead::LessSafeKey, aad: &str, nonce: &[u8], sealed: &[u8]) -> Option<String> {
    let nonce = aead::Nonce::try_assume_unique_for_key(nonce).ok()?;
    let mut buf = sealed.to_vec();
    let plain = key
        .open_in_place(nonce, aead::Aad::from(aad.as_bytes()), &mut buf)
        .ok()?;
    String::from_utf8(plain.to_vec()).ok()
}

/// Opens the user's stored seed: `None` if it does not open (callers fail closed). An
/// error is a failure to ask (KMS unreachable or throttled, the v1 key not provisioned):
/// nothing was decided.
pub async fn open(
    deps: &Deps,
    tenant: &TenantId,
    user_id: &str,
    stored: &str,
) -> Result<Option<Opened>, ServiceError> {
    if let Some(rest) = stored.strip_prefix(V2) {
        return open_v2(deps, tenant, user_id, rest).await;
    }
    if stored.starts_with(V1) {
        let keys = keys(deps).await?;
        return Ok(open_v1(&keys, tenant, user_id, stored));
    }
    Ok(open_v1(&[], tenant, user_id, stored))
}

async fn open_v2(
    deps: &Deps,
    tenant: &TenantId,
    user_id: &str,
    rest: &str,
) -> Result<Option<Opened>, ServiceError> {
    let mut parts = rest.split(':');
    let (Some(wrapped), Some(nonce), Some(sealed), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Ok(None);
    };
    let (Ok(wrapped), Ok(nonce), Ok(sealed)) =
        (B64.decode(wrapped), B64.decode(nonce), B64.decode(sealed))
    else {
        return Ok(None);
    };
    if wrapped.is_empty() {
        return Ok(None);
    }
    let Some(data_key) = deps
        .data_keys
        .unwrap(&wrapped, &KeyContext::totp_seed(tenant, user_id))
        .await?
    else {
        return Ok(None);
    };
    let Some(key) = data_key_aead(&data_key) else {
        return Ok(None);
    };
    Ok(open_with(&key, &aad(tenant, user_id), &nonce, &sealed)
        .map(|seed| Opened::Current(Secret::new(seed))))
}

/// Opens a `v1` or plain stored seed with the v1 `keys` (current first); `None` if it
/// does not open. Every `v1` seed opens as [`Opened::Legacy`]: it is to be sealed as `v2`.
pub fn open_v1(keys: &[Secret], tenant: &TenantId, user_id: &str, stored: &str) -> Option<Opened> {
    let Some(rest) = stored.strip_prefix(V1) else {
        // A plain base32 seed from before sealing (anything else is not a seed).
        let legacy = !stored.is_empty()
            && !stored.contains(':')
            && stored
                .bytes()
                .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b) || b == b'=');
        return legacy.then(|| Opened::Legacy(Secret::new(stored)));
    };
    let (nonce, sealed) = rest.split_once(':')?;
    let (nonce, sealed) = (B64.decode(nonce).ok()?, B64.decode(sealed).ok()?);
    let aad = aad(tenant, user_id);
    keys.iter().find_map(|k| {
        let seed = open_with(&aead_key(k)?, &aad, &nonce, &sealed)?;
        Some(Opened::Legacy(Secret::new(seed)))
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::ports::SystemClock;

    fn tenant() -> TenantId {
        TenantId::from_trusted("t_1")
    }

    fn deps() -> Deps {
        crate::wiring::memory_deps(Settings::default(), Arc::new(SystemClock)).unwrap()
    }

    #[tokio::test]
    async fn a_v2_seed_opens_only_for_its_user_and_holds_neither_seed_nor_key() {
        let d = deps();
        let sealed = seal(&d, &tenant(), "u1", "JBSWY3DPEHPK3PXP").await.unwrap();
        assert!(sealed.starts_with(V2), "{sealed}");
        assert!(!sealed.contains("JBSWY3DPEHPK3PXP"));
        assert_eq!(sealed.split(':').count(), 4);
        let opened = open(&d, &tenant(), "u1", &sealed).await.unwrap().unwrap();
        assert!(matches!(opened, Opened::Current(_)));
        assert_eq!(opened.seed(), "JBSWY3DPEHPK3PXP");
        // Another user, another tenant, another process's local key: refused.
        assert!(open(&d, &tenant(), "u2", &sealed).await.unwrap().is_none());
        let other_tenant = TenantId::from_trusted("t_2");
        assert!(open(&d, &other_tenant, "u1", &sealed)
            .await
            .unwrap()
            .is_none());
        assert!(open(&deps(), &tenant(), "u1", &sealed)
            .await
            .unwrap()
            .is_none());
        // Two seals of one seed share nothing (a data key each).
        let again = seal(&d, &tenant(), "u1", "JBSWY3DPEHPK3PXP").await.unwrap();
        assert_ne!(again.split(':').nth(1), sealed.split(':').nth(1));
    }

    #[tokio::test]
    async fn a_tampered_or_malformed_v2_seed_does_not_open() {
        let d = deps();
        let sealed = seal(&d, &tenant(), "u1", "JBSWY3DPEHPK3PXP").await.unwrap();
        let parts: Vec<&str> = sealed.split(':').collect();
        let flip = |s: &str| {
            let first = if s.starts_with('A') { "B" } else { "A" };
            format!("{first}{}", &s[1..])
        };
        let cases = [
            format!("v2:{}:{}:{}", flip(parts[1]), parts[2], parts[3]),
            format!("v2:{}:{}:{}", parts[1], flip(parts[2]), parts[3]),
            format!("v2:{}:{}:{}", parts[1], parts[2], flip(parts[3])),
            format!("v2:{}:{}", parts[1], parts[2]),
            format!("{sealed}:x"),
            format!("v2::{}:{}", parts[2], parts[3]),
            "v2:".into(),
            "v2:!!:!!:!!".into(),
        ];
        for stored in &cases {
            assert!(
                open(&d, &tenant(), "u1", stored).await.unwrap().is_none(),
                "{stored}"
            );
        }
    }

    #[test]
    fn a_v1_seed_opens_only_for_its_user_and_key_and_always_as_legacy() {
        let (k1, k2) = (Secret::new("key one"), Secret::new("key two"));
        let sealed = seal_v1(&k1, &tenant(), "u1", "JBSWY3DPEHPK3PXP").unwrap();
        assert!(sealed.starts_with(V1) && !sealed.contains("JBSWY3DPEHPK3PXP"));
        let opened = open_v1(std::slice::from_ref(&k1), &tenant(), "u1", &sealed).unwrap();
        assert!(matches!(opened, Opened::Legacy(_)));
        assert_eq!(opened.seed(), "JBSWY3DPEHPK3PXP");
        assert!(open_v1(std::slice::from_ref(&k1), &tenant(), "u2", &sealed).is_none());
        assert!(open_v1(std::slice::from_ref(&k2), &tenant(), "u1", &sealed).is_none());
        // Sealed under the previous key: opens too.
        let opened = open_v1(&[k2, k1], &tenant(), "u1", &sealed).unwrap();
        assert!(matches!(opened, Opened::Legacy(_)));
    }

    #[test]
    fn a_tampered_or_malformed_v1_seed_does_not_open() {
        let k = Secret::new("key");
        let sealed = seal_v1(&k, &tenant(), "u1", "JBSWY3DPEHPK3PXP").unwrap();
        let mut bytes = sealed.into_bytes();
        let last = bytes.len() - 2;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).unwrap();
        for stored in [
            tampered.as_str(),
            "v1:",
            "v1:x:y",
            "v2:abc",
            "",
            "not base32!",
        ] {
            assert!(
                open_v1(std::slice::from_ref(&k), &tenant(), "u1", stored).is_none(),
                "{stored}"
            );
        }
    }

    #[test]
    fn a_plain_seed_from_before_sealing_opens_as_legacy() {
        let opened = open_v1(&[Secret::new("k")], &tenant(), "u1", "JBSWY3DPEHPK3PXP").unwrap();
        assert!(matches!(opened, Opened::Legacy(_)));
        assert_eq!(opened.seed(), "JBSWY3DPEHPK3PXP");
    }
}
