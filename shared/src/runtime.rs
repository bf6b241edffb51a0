//! Wiring: builds `Deps` from configuration, once per process. Used by every Lambda's
//! `main.rs` and by local mode.

use std::sync::Arc;
use std::time::Duration;

use crate::adapters::aws::{DynamoStore, SecretsManagerStore, SqsQueue};
use crate::adapters::memory::{MemoryQueue, MemorySecrets, MemoryStore};
use crate::adapters::meta_graph::MetaGraphClient;
use crate::config::{ConfigError, EnvReader, Settings};
use crate::ports::{Clock, DispatchQueue, SecretStore, SystemClock};
use crate::service::{Deps, SecretCache};

/// Names of the AWS resources a process uses.
#[derive(Clone, Debug)]
pub struct AwsResources {
    pub table: String,
    pub dispatch_queue_url: String,
    pub dispatch_dlq_url: Option<String>,
    /// The StatusCallbackQueue (`None`: this process produces no status callbacks).
    pub status_callback_queue_url: Option<String>,
    pub status_callback_dlq_url: Option<String>,
}

/// Secrets on Lambda are re-read at most this often (rotation reaches warm functions).
pub const SECRET_CACHE_TTL: Duration = Duration::from_secs(300);

/// Builds AWS-backed deps from an SDK config.
pub fn aws_deps(
    sdk: &aws_config::SdkConfig,
    res: &AwsResources,
    settings: Settings,
    clock: Arc<dyn Clock>,
    secret_ttl: Duration,
) -> Result<Deps, ConfigError> {
    let store = Arc::new(DynamoStore::new(
        aws_sdk_dynamodb::Client::new(sdk),
        &res.table,
        clock.clone(),
    ));
    let queue = Arc::new(SqsQueue::new(
        aws_sdk_sqs::Client::new(sdk),
        &res.dispatch_queue_url,
        res.dispatch_dlq_url.clone(),
    ));
    let callback_queue: Arc<dyn DispatchQueue> = match &res.status_callback_queue_url {
        Some(url) => Arc::new(SqsQueue::new(
            aws_sdk_sqs::Client::new(sdk),
            url,
            res.status_callback_dlq_url.clone(),
        )),
        None => Arc::new(NoQueue),
    };
    let secrets: Arc<dyn SecretStore> = Arc::new(SecretsManagerStore::new(
        aws_sdk_secretsmanager::Client::new(sdk),
    ));
    let meta = meta_client(&settings)?;
    Ok(Deps {
        tenants: store.clone(),
        api_keys: store.clone(),
        audit: store.clone(),
        quality: store.clone(),
        broadcasts: store.clone(),
        users: store.clone(),
        ledger: store.clone(),
        messages: store.clone(),
        opt_outs: store.clone(),
        idempotency: store.clone(),
        pending: store.clone(),
        status_callbacks: store.clone(),
        throughput: store.clone(),
        sending: store.clone(),
        retention: store,
        queue,
        callback_queue,
        secrets: Arc::new(SecretCache::new(secrets, secret_ttl)),
        meta,
        clock,
        settings: Arc::new(settings),
    })
}

/// Memory-backed deps (local mode, tests). Secrets are the caller's to put.
pub fn memory_deps(settings: Settings, clock: Arc<dyn Clock>) -> Result<Deps, ConfigError> {
    let store = Arc::new(MemoryStore::new(clock.clone()));
    let queue = Arc::new(MemoryQueue::new(
        Duration::from_secs(360),
        settings.dispatch_max_attempts + 2,
    ));
    // Like the template's redrive: parked after 10 receives.
    let callback_queue = Arc::new(MemoryQueue::new(Duration::from_secs(360), 10));
    let secrets: Arc<dyn SecretStore> = Arc::new(MemorySecrets::default());
    let meta = meta_client(&settings)?;
    Ok(Deps {
        tenants: store.clone(),
        api_keys: store.clone(),
        audit: store.clone(),
        quality: store.clone(),
        broadcasts: store.clone(),
        users: store.clone(),
        ledger: store.clone(),
        messages: store.clone(),
        opt_outs: store.clone(),
        idempotency: store.clone(),
        pending: store.clone(),
        status_callbacks: store.clone(),
        throughput: store.clone(),
        sending: store.clone(),
        retention: store,
        queue,
        callback_queue,
        secrets: Arc::new(SecretCache::new(secrets, Duration::ZERO)),
        meta,
        clock,
        settings: Arc::new(settings),
    })
}

fn meta_client(settings: &Settings) -> Result<Arc<MetaGraphClient>, ConfigError> {
    MetaGraphClient::new(
        &settings.meta_base_url,
        &settings.meta_version,
        settings.meta_timeout,
    )
    .map(Arc::new)
    .map_err(|e| ConfigError(vec![format!("meta http client: {e}")]))
}

/// A Lambda's deps from its environment (`template.yaml` sets these), failing fast with
/// every missing variable named.
pub async fn lambda_deps() -> Result<Deps, ConfigError> {
    let mut env = EnvReader::new(|k| std::env::var(k).ok());
    let settings = env.settings();
    let res = AwsResources {
        table: env.required("KIRIM_TABLE"),
        dispatch_queue_url: env.required("KIRIM_DISPATCH_QUEUE_URL"),
        dispatch_dlq_url: env.optional("KIRIM_DISPATCH_DLQ_URL"),
        status_callback_queue_url: env.optional("KIRIM_STATUS_CALLBACK_QUEUE_URL"),
        status_callback_dlq_url: env.optional("KIRIM_STATUS_CALLBACK_DLQ_URL"),
    };
    env.finish()?;
    let sdk = aws_config::load_from_env().await;
    aws_deps(
        &sdk,
        &res,
        settings,
        Arc::new(SystemClock),
        SECRET_CACHE_TTL,
    )
}

/// The status-callback queue of a function configured without one: status changes
/// cannot be queued there (each attempt logs a warning), nothing else breaks.
struct NoQueue;

#[async_trait::async_trait]
impl DispatchQueue for NoQueue {
    async fn send(&self, _body: &str) -> Result<(), crate::error::StoreError> {
        Err(crate::error::StoreError::Unavailable(
            "KIRIM_STATUS_CALLBACK_QUEUE_URL is not configured".into(),
        ))
    }
    async fn receive(
        &self,
        _max: usize,
        wait: Duration,
    ) -> Result<Vec<crate::ports::Received>, crate::error::StoreError> {
        tokio::time::sleep(wait).await;
        Ok(Vec::new())
    }
    async fn delete(&self, _receipt: &str) -> Result<(), crate::error::StoreError> {
        Ok(())
    }
    async fn retry_after(
        &self,
        _receipt: &str,
        _delay: Duration,
    ) -> Result<(), crate::error::StoreError> {
        Ok(())
    }
    async fn dead_letters(&self) -> Result<Vec<String>, crate::error::StoreError> {
        Ok(Vec::new())
    }
}
