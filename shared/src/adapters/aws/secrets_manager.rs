use async_trait::async_trait;
use aws_sdk_secretsmanager::error::SdkError;
use aws_sdk_secretsmanager::Client;
use chrono::{DateTime, Utc};

use super::classify;
use crate::ports::SecretStore;
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
    pub const DELETE: &'static [&'static str] = &["secretsmanager:DeleteSecret"];

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
        match self
            .client
            .get_secret_value()
            .secret_id(name)
            .version_stage(stage)
            .send()
            .await
        {
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
