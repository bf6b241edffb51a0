//! Local mode's data keys: each data key wrapped with AES-256-GCM under one local key,
//! generated when the process starts (the memory backend forgets everything it sealed
//! when the process ends, so the key need not outlive it), with the key context as
//! associated data. The wrapped form: `kl1` ‖ nonce (12 bytes) ‖ ciphertext ‖ tag.

use async_trait::async_trait;
use ring::aead;

use crate::ports::{DataKey, DataKeys, KeyContext, PlainKey};
use crate::store_error::StoreError;

const TAG: &[u8] = b"kl1";

pub struct LocalDataKeys {
    key: aead::LessSafeKey,
}

impl LocalDataKeys {
    /// A new random local key.
    pub fn generate() -> Self {
        let bytes: [u8; 32] = rand::random();
        Self::from_key(&PlainKey::from_slice(&bytes).unwrap_or_else(|| unreachable!()))
    }

    fn from_key(key: &PlainKey) -> Self {
        // A 32-byte key is always a valid AES-256 key.
        let unbound = aead::UnboundKey::new(&aead::AES_256_GCM, key.expose())
            .unwrap_or_else(|_| unreachable!("32 bytes"));
        Self {
            key: aead::LessSafeKey::new(unbound),
        }
    }
}

#[async_trait]
impl DataKeys for LocalDataKeys {
    async fn generate(&self, context: &KeyContext) -> Result<DataKey, StoreError> {
        let plain: [u8; 32] = rand::random();
        let nonce: [u8; aead::NONCE_LEN] = rand::random();
        let mut buf = plain.to_vec();
        self.key
            .seal_in_place_append_tag(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(context.canonical()),
                &mut buf,
            )
            .map_err(|_| StoreError::Misconfigured("local data key wrap failed".into()))?;
        let wrapped = [TAG, &nonce[..], &buf].concat();
        let plain = PlainKey::from_slice(&plain)
            .ok_or_else(|| StoreError::Misconfigured("local data key".into()))?;
        Ok(DataKey { plain, wrapped })
    }

    async fn unwrap(
        &self,
        wrapped: &[u8],
        context: &KeyContext,
    ) -> Result<Option<PlainKey>, StoreError> {
        let Some(rest) = wrapped.strip_prefix(TAG) else {
            return Ok(None);
        };
        if rest.len() < aead::NONCE_LEN {
            return Ok(None);
        }
        let (nonce, sealed) = rest.split_at(aead::NONCE_LEN);
        let Ok(nonce) = aead::Nonce::try_assume_unique_for_key(nonce) else {
            return Ok(None);
        };
        let mut buf = sealed.to_vec();
        let opened = self
            .key
            .open_in_place(nonce, aead::Aad::from(context.canonical()), &mut buf)
            .ok()
            .and_then(|plain| PlainKey::from_slice(plain));
        zeroize::Zeroize::zeroize(&mut buf);
        Ok(opened)
    }
}
