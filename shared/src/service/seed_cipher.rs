//! TOTP seeds sealed at rest. The user item holds `v1:<nonce b64>:<ciphertext b64>`:
//! AES-256-GCM under a key derived (HMAC-SHA256) from the TOTP key secret
//! (`${StackName}/totp-key` in Secrets Manager; generated in local mode), with the
//! tenant and user id as associated data, so a sealed seed moved to another user's item
//! does not open. The table never holds the key.
//!
//! A seed stored before sealing (plain base32, no prefix) still opens as [`Opened::Legacy`]
//! and is sealed again by the caller on its next successful use; so is one sealed under
//! the previous key (the secret's `AWSPREVIOUS` during a rotation).
//! Anything else (tampered, truncated, another user's) does not open: callers fail closed.

use base64::engine::general_purpose::STANDARD_NO_PAD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use ring::aead;
use sha2::Sha256;

use super::errors::ServiceError;
use super::Deps;
use crate::config::Settings;
use crate::domain::TenantId;
use crate::secret::Secret;

/// The stored form's version prefix.
pub const V1: &str = "v1:";

/// The TOTP key's secret name: `{prefix}totp-key`.
pub fn key_name(settings: &Settings) -> String {
    format!("{}totp-key", settings.secret_prefix)
}

/// The TOTP keys: current first, then the previous one during its rotation.
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

/// Seals `seed` for the user under `key`.
pub fn seal(
    key: &Secret,
    tenant: &TenantId,
    user_id: &str,
    seed: &str,
) -> Result<String, ServiceError> {
    let fail = || ServiceError::Internal("TOTP seed sealing".into());
    let key = aead_key(key).ok_or_else(fail)?;
    let nonce_bytes: [u8; aead::NONCE_LEN] = rand::random();
    let mut buf = seed.as_bytes().to_vec();
    key.seal_in_place_append_tag(
        aead::Nonce::assume_unique_for_key(nonce_bytes),
        aead::Aad::from(aad(tenant, user_id).as_bytes()),
        &mut buf,
    )
    .map_err(|_| fail())?;
    Ok(format!(
        "{V1}{}:{}",
        B64.encode(nonce_bytes),
        B64.encode(buf)
    ))
}

/// An opened stored seed.
pub enum Opened {
    /// Sealed under the current key: nothing to do.
    Current(Secret),
    /// Plain (stored before sealing) or sealed under the previous key: seal it again.
    Legacy(Secret),
}

impl Opened {
    pub fn seed(&self) -> &str {
        match self {
            Opened::Current(s) | Opened::Legacy(s) => s.expose(),
        }
    }
}

fn open_with(key: &Secret, aad: &str, nonce: &[u8], sealed: &[u8]) -> Option<String> {
    let key = aead_key(key)?;
    let nonce = aead::Nonce::try_assume_unique_for_key(nonce).ok()?;
    let mut buf = sealed.to_vec();
    let plain = key
        .open_in_place(nonce, aead::Aad::from(aad.as_bytes()), &mut buf)
        .ok()?;
    String::from_utf8(plain.to_vec()).ok()
}

/// Opens the user's stored seed with `keys` (current first); `None` if it does not open.
pub fn open(keys: &[Secret], tenant: &TenantId, user_id: &str, stored: &str) -> Option<Opened> {
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
    keys.iter().enumerate().find_map(|(i, k)| {
        let seed = Secret::new(open_with(k, &aad, &nonce, &sealed)?);
        Some(if i == 0 {
            Opened::Current(seed)
        } else {
            Opened::Legacy(seed)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant() -> TenantId {
        TenantId::from_trusted("t_1")
    }

    #[test]
    fn a_sealed_seed_opens_only_for_its_user_and_key() {
        let (k1, k2) = (Secret::new("key one"), Secret::new("key two"));
        let sealed = seal(&k1, &tenant(), "u1", "JBSWY3DPEHPK3PXP").unwrap();
        assert!(sealed.starts_with(V1) && !sealed.contains("JBSWY3DPEHPK3PXP"));
        let opened = open(std::slice::from_ref(&k1), &tenant(), "u1", &sealed).unwrap();
        assert!(matches!(opened, Opened::Current(_)));
        assert_eq!(opened.seed(), "JBSWY3DPEHPK3PXP");
        assert!(open(std::slice::from_ref(&k1), &tenant(), "u2", &sealed).is_none());
        assert!(open(std::slice::from_ref(&k2), &tenant(), "u1", &sealed).is_none());
        // Sealed under the previous key: opens, to be sealed again.
        let opened = open(&[k2, k1], &tenant(), "u1", &sealed).unwrap();
        assert!(matches!(opened, Opened::Legacy(_)));
    }

    #[test]
    fn a_tampered_or_malformed_stored_seed_does_not_open() {
        let k = Secret::new("key");
        let sealed = seal(&k, &tenant(), "u1", "JBSWY3DPEHPK3PXP").unwrap();
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
                open(std::slice::from_ref(&k), &tenant(), "u1", stored).is_none(),
                "{stored}"
            );
        }
    }

    #[test]
    fn a_plain_seed_from_before_sealing_opens_as_legacy() {
        let opened = open(&[Secret::new("k")], &tenant(), "u1", "JBSWY3DPEHPK3PXP").unwrap();
        assert!(matches!(opened, Opened::Legacy(_)));
        assert_eq!(opened.seed(), "JBSWY3DPEHPK3PXP");
    }
}
