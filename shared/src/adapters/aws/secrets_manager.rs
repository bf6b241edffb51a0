use async_trait::async_trait;
use aws_sdk_secretsmanager::error::SdkError;
use aws_sdk_secretsmanager::Client;
use chrono::{DateTime, Utc};

use super::classify;
use crate::ports::{ListedSecret, SecretPage, SecretStore};
use crate::secret::Secret;
use crate::store_error::StoreError;

/// Secrets Manager. Reads always name the version stage: after a rotation moto (and
/// eventually-consistent caches) may otherwise answer the old value.
pub struct SecretsManagerStore {
    client: Client,
}

impl SecretsManagerStore {
    /// The IAM actions this adapter calls (`crate::iam` grants them per function).
    pub const READ: &'static [&'static str] = &["secretsmanager:GetSecretValue"];
    /// A put: a new version of an existing secret, or the secret created.
    pub const WRITE: &'static [&'static str] = &[
        "secretsmanager:PutSecretValue",
        "secretsmanager:CreateSecret",
    ];
    /// A staged version made current ([`SecretStore::promote_secret`]): which version is
    /// current is described first (its id, never a value).
    pub const PROMOTE: &'static [&'static str] = &[
        "secretsmanager:DescribeSecret",
        "secretsmanager:UpdateSecretVersionStage",
    ];
    pub const DELETE: &'static [&'static str] = &["secretsmanager:DeleteSecret"];
    /// Secrets listed by name prefix ([`SecretStore::list_secrets`]): names and dates,
    /// never a value. IAM authorises ListSecrets on `*` only (it names no secret).
    pub const LIST: &'static [&'static str] = &["secretsmanager:ListSecrets"];
    /// A replacement ([`SecretStore::replace_secret`]) of a secret that may be scheduled for
    /// deletion: described (whether it is; never a value), restored if so. The put itself
    /// is [`Self::WRITE`].
    pub const RESTORE: &'static [&'static str] = &[
        "secretsmanager:DescribeSecret",
        "secretsmanager:RestoreSecret",
    ];

    pub fn new(client: Client) -> Self {
        Self { client }
    }

    async fn get_stage(&self, name: &str, stage: &str) -> Result<Option<Secret>, StoreError> {
        Ok(self.get_version(name, stage).await?.map(|(s, _)| s))
    }

    /// A stage's value and its version's creation time.
    async fn get_version(
        &self,
        name: &str,
        stage: &str,
    ) -> Result<Option<(Secret, Option<DateTime<Utc>>)>, StoreError> {
        self.read(name, Pick::Stage(stage)).await
    }

    /// One version's value (by its stage or its id) and its creation time; a secret that
    /// is not there, or is scheduled for deletion, reads as `None`.
    async fn read(
        &self,
        name: &str,
        pick: Pick<'_>,
    ) -> Result<Option<(Secret, Option<DateTime<Utc>>)>, StoreError> {
        let req = self.client.get_secret_value().secret_id(name);
        let req = match pick {
            Pick::Stage(stage) => req.version_stage(stage),
            Pick::Id(id) => req.version_id(id),
        };
        match req.send().await {
            Ok(out) => {
                let created = out
                    .created_date()
                    .and_then(|d| DateTime::from_timestamp(d.secs(), d.subsec_nanos()));
                Ok(out.secret_string().map(|v| (Secret::new(v), created)))
            }
            Err(SdkError::ServiceError(e)) if e.err().is_resource_not_found_exception() => Ok(None),
            // A secret scheduled for deletion reads as gone.
            Err(SdkError::ServiceError(e))
                if e.err().is_invalid_request_exception()
                    && e.err()
                        .meta()
                        .message()
                        .is_some_and(|m| m.contains("delet")) =>
            {
                Ok(None)
            }
            Err(e) => Err(classify("secretsmanager get", e)),
        }
    }
}

/// Which version of a secret to read.
#[derive(Clone, Copy)]
enum Pick<'a> {
    /// The version a staging label is on (`AWSCURRENT`, `AWSPREVIOUS`, `AWSPENDING`).
    Stage(&'a str),
    /// A version by its id.
    Id(&'a str),
}

#[async_trait]
impl SecretStore for SecretsManagerStore {
    async fn put_secret(&self, name: &str, value: &Secret) -> Result<(), StoreError> {
        match self
            .client
            .put_secret_value()
            .secret_id(name)
            .secret_string(value.expose())
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(SdkError::ServiceError(e)) if e.err().is_resource_not_found_exception() => {
                match self
                    .client
                    .create_secret()
                    .name(name)
                    .secret_string(value.expose())
                    .send()
                    .await
                {
                    Ok(_) => Ok(()),
                    // Another writer created it between our put and our create: now it
                    // exists, so the put is what applies.
                    Err(SdkError::ServiceError(e)) if e.err().is_resource_exists_exception() => {
                        self.client
                            .put_secret_value()
                            .secret_id(name)
                            .secret_string(value.expose())
                            .send()
                            .await
                            .map(|_| ())
                            .map_err(|e| classify("secretsmanager put", e))
                    }
                    Err(e) => Err(classify("secretsmanager create", e)),
                }
            }
            Err(e) => Err(classify("secretsmanager put", e)),
        }
    }

    async fn replace_secret(&self, name: &str, value: &Secret) -> Result<(), StoreError> {
        // Secrets Manager refuses a new version of a secret scheduled for deletion (moto
        // takes it, and the secret stays deleted): whether it is, is described first.
        let scheduled = match self.client.describe_secret().secret_id(name).send().await {
            Ok(out) => out.deleted_date().is_some(),
            // None yet: the put creates it.
            Err(SdkError::ServiceError(e)) if e.err().is_resource_not_found_exception() => false,
            Err(e) => return Err(classify("secretsmanager describe", e)),
        };
        if scheduled {
            match self.client.restore_secret().secret_id(name).send().await {
                Ok(_) => {
                    tracing::warn!(secret = %name, "a secret scheduled for deletion was restored to be replaced");
                }
                // Deleted for good in between (its window ended): the put creates it anew.
                Err(SdkError::ServiceError(e)) if e.err().is_resource_not_found_exception() => {}
                Err(e) => return Err(classify("secretsmanager restore", e)),
            }
        }
        self.put_secret(name, value).await
    }

    async fn get_secret(&self, name: &str) -> Result<Option<Secret>, StoreError> {
        self.get_stage(name, "AWSCURRENT").await
    }

    async fn get_previous_secret(&self, name: &str) -> Result<Option<Secret>, StoreError> {
        self.get_stage(name, "AWSPREVIOUS").await
    }

    async fn rotated_at(&self, name: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
        Ok(self
            .get_version(name, "AWSCURRENT")
            .await?
            .and_then(|(_, at)| at))
    }

    async fn stage_secret(&self, name: &str, value: &Secret) -> Result<String, StoreError> {
        let staged = |name: &str| {
            self.client
                .put_secret_value()
                .secret_id(name)
                .secret_string(value.expose())
                .version_stages("AWSPENDING")
                .send()
        };
        match staged(name).await {
            Ok(out) => version_id(out.version_id()),
            Err(SdkError::ServiceError(e)) if e.err().is_resource_not_found_exception() => {
                match self
                    .client
                    .create_secret()
                    .name(name)
                    .secret_string(value.expose())
                    .send()
                    .await
                {
                    Ok(out) => version_id(out.version_id()),
                    // Created by another writer meanwhile: staged beside theirs.
                    Err(SdkError::ServiceError(e)) if e.err().is_resource_exists_exception() => {
                        staged(name)
                            .await
                            .map_err(|e| classify("secretsmanager put", e))
                            .and_then(|out| version_id(out.version_id()))
                    }
                    Err(e) => Err(classify("secretsmanager create", e)),
                }
            }
            Err(e) => Err(classify("secretsmanager put", e)),
        }
    }

    async fn promote_secret(&self, name: &str, version: &str) -> Result<(), StoreError> {
        // The label is moved from the version holding it, which must be named: read it,
        // and again if another writer moved it in between (refused as a bad parameter).
        let mut tries = 0;
        loop {
            let current = match self.client.describe_secret().secret_id(name).send().await {
                Ok(out) => out.version_ids_to_stages().and_then(|versions| {
                    versions
                        .iter()
                        .find(|(_, stages)| stages.iter().any(|s| s == "AWSCURRENT"))
                        .map(|(id, _)| id.clone())
                }),
                Err(SdkError::ServiceError(e)) if e.err().is_resource_not_found_exception() => {
                    return Err(StoreError::NotFound)
                }
                Err(e) => return Err(classify("secretsmanager describe", e)),
            };
            if current.as_deref() == Some(version) {
                return Ok(());
            }
            match self
                .client
                .update_secret_version_stage()
                .secret_id(name)
                .version_stage("AWSCURRENT")
                .move_to_version_id(version)
                .set_remove_from_version_id(current)
                .send()
                .await
            {
                Ok(_) => return Ok(()),
                Err(SdkError::ServiceError(e))
                    if e.err().is_invalid_parameter_exception() && tries < 2 =>
                {
                    tries += 1;
                }
                Err(SdkError::ServiceError(e)) if e.err().is_resource_not_found_exception() => {
                    return Err(StoreError::NotFound)
                }
                Err(e) => return Err(classify("secretsmanager update version stage", e)),
            }
        }
    }

    async fn get_secret_version(
        &self,
        name: &str,
        version: &str,
    ) -> Result<Option<Secret>, StoreError> {
        Ok(self.read(name, Pick::Id(version)).await?.map(|(s, _)| s))
    }

    /// `ListSecrets` with its `name` filter (a prefix match), which leaves out secrets
    /// scheduled for deletion unless asked. What it answers is checked against `prefix`
    /// again: a name that does not begin with it is never listed.
    async fn list_secrets(
        &self,
        prefix: &str,
        page: Option<&str>,
        limit: usize,
    ) -> Result<SecretPage, StoreError> {
        use aws_sdk_secretsmanager::types::{Filter, FilterNameStringType};
        let out = self
            .client
            .list_secrets()
            .filters(
                Filter::builder()
                    .key(FilterNameStringType::Name)
                    .values(prefix)
                    .build(),
            )
            .max_results(i32::try_from(limit.clamp(1, 100)).unwrap_or(100))
            .set_next_token(page.map(str::to_owned))
            .send()
            .await
            .map_err(|e| classify("secretsmanager list", e))?;
        let secrets = out
            .secret_list()
            .iter()
            .filter(|s| s.deleted_date().is_none())
            .filter_map(|s| {
                let name = s.name().filter(|n| n.starts_with(prefix))?;
                Some(ListedSecret {
                    name: name.to_owned(),
                    created_at: date(s.created_date()),
                    changed_at: date(s.last_changed_date()),
                })
            })
            .collect();
        Ok(SecretPage {
            secrets,
            next: out.next_token().map(str::to_owned),
        })
    }

    async fn delete_secret(&self, name: &str) -> Result<(), StoreError> {
        match self
            .client
            .delete_secret()
            .secret_id(name)
            .recovery_window_in_days(7)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(SdkError::ServiceError(e)) if e.err().is_resource_not_found_exception() => Ok(()),
            // Already scheduled for deletion (a close-out that stopped part-way and runs
            // again): AWS answers InvalidRequest; the deletion stands, so done.
            Err(SdkError::ServiceError(e))
                if e.err().is_invalid_request_exception()
                    && e.err()
                        .meta()
                        .message()
                        .is_some_and(|m| m.contains("delet")) =>
            {
                Ok(())
            }
            Err(e) => Err(classify("secretsmanager delete", e)),
        }
    }
}

/// A date Secrets Manager answered, as chrono's.
fn date(d: Option<&aws_sdk_secretsmanager::primitives::DateTime>) -> Option<DateTime<Utc>> {
    d.and_then(|d| DateTime::from_timestamp(d.secs(), d.subsec_nanos()))
}

/// The version id Secrets Manager answered a write with (always present on success).
fn version_id(id: Option<&str>) -> Result<String, StoreError> {
    id.map(str::to_owned)
        .ok_or_else(|| StoreError::Corrupt("secretsmanager answered no version id".into()))
}
