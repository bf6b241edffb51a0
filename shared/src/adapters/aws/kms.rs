//! KMS data keys (envelope encryption): `GenerateDataKey` (AES_256) for each value sealed,
//! `Decrypt` to open one, both with the key id of the stack's `TotpSeedKey` and the
//! [`KeyContext`] as encryption context (so KMS refuses a wrapped key presented for another
//! user). The key never leaves KMS; only the roles its key policy names can use it.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::DataKeySpec;
use aws_sdk_kms::Client;

use super::classify;
use crate::ports::{DataKey, DataKeys, KeyContext, PlainKey};
use crate::store_error::StoreError;

/// Answers that mean KMS refuses this wrapped key or this key for good (not a failure to
/// ask).
const REFUSALS: &[&str] = &[
    "InvalidCiphertextException",
    "IncorrectKeyException",
    "DisabledException",
    "KMSInvalidStateException",
    "NotFoundException",
    "InvalidKeyUsageException",
    "InvalidGrantTokenException",
    "AccessDeniedException",
];

/// Of [`REFUSALS`], those that say the key itself cannot be used (disabled, pending
/// deletion, not for decryption), whatever value is presented: an operator's matter, as
/// at `GenerateDataKey` (`Misconfigured`, a 500 an alarm sees), not a value that does not
/// open. A login answered "wrong code" for them counted a failure against every 2FA user's
/// address while the key was off. `AccessDenied` and `NotFound` stay with the value's own
/// refusals: with the key named they mean a policy without this role or a key gone (an
/// operator's matter too), but moto answers `AccessDenied` for another key's ciphertext
/// where KMS answers `IncorrectKey`, and the contract suite runs on moto.
const KEY_UNUSABLE: &[&str] = &[
    "DisabledException",
    "KMSInvalidStateException",
    "InvalidKeyUsageException",
];

pub struct KmsDataKeys {
    client: Client,
    key_id: String,
}

impl KmsDataKeys {
    /// The IAM actions this adapter calls (`crate::iam`; on the key they are granted by
    /// its key policy).
    pub const GENERATE: &'static [&'static str] = &["kms:GenerateDataKey"];
    pub const DECRYPT: &'static [&'static str] = &["kms:Decrypt"];

    /// `key_id`: the key's ARN (or id, or alias).
    pub fn new(client: Client, key_id: impl Into<String>) -> Self {
        Self {
            client,
            key_id: key_id.into(),
        }
    }

    fn context(context: &KeyContext) -> HashMap<String, String> {
        context
            .pairs()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }
}

fn refused<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> bool {
    matches!(e, SdkError::ServiceError(_)) && e.code().is_some_and(|c| REFUSALS.contains(&c))
}

#[async_trait]
impl DataKeys for KmsDataKeys {
    async fn generate(&self, context: &KeyContext) -> Result<DataKey, StoreError> {
        let out = self
            .client
            .generate_data_key()
            .key_id(&self.key_id)
            .key_spec(DataKeySpec::Aes256)
            .set_encryption_context(Some(Self::context(context)))
            .send()
            .await
            .map_err(|e| {
                if refused(&e) {
                    // The key is disabled, gone or not ours to use: an operator's matter.
                    StoreError::Misconfigured(format!(
                        "kms GenerateDataKey refused: {}",
                        e.code().unwrap_or("unknown")
                    ))
                } else {
                    classify("kms GenerateDataKey", e)
                }
            })?;
        let bad =
            || StoreError::Corrupt("kms GenerateDataKey: no AES-256 key in the answer".into());
        let plain = out
            .plaintext()
            .and_then(|b| PlainKey::from_slice(b.as_ref()))
            .ok_or_else(bad)?;
        let wrapped = out.ciphertext_blob().ok_or_else(bad)?.as_ref().to_vec();
        Ok(DataKey { plain, wrapped })
    }

    async fn unwrap(
        &self,
        wrapped: &[u8],
        context: &KeyContext,
    ) -> Result<Option<PlainKey>, StoreError> {
        let answer = self
            .client
            .decrypt()
            .key_id(&self.key_id)
            .ciphertext_blob(Blob::new(wrapped))
            .set_encryption_context(Some(Self::context(context)))
            .send()
            .await;
        match answer {
            Ok(out) => Ok(out
                .plaintext()
                .and_then(|b| PlainKey::from_slice(b.as_ref()))),
            Err(e) if e.code().is_some_and(|c| KEY_UNUSABLE.contains(&c)) && refused(&e) => {
                Err(StoreError::Misconfigured(format!(
                    "kms Decrypt refused: {}",
                    e.code().unwrap_or("unknown")
                )))
            }
            Err(e) if refused(&e) => {
                tracing::warn!(
                    code = e.code().unwrap_or("unknown"),
                    "kms refused to unwrap a data key"
                );
                Ok(None)
            }
            Err(e) => Err(classify("kms Decrypt", e)),
        }
    }
}
