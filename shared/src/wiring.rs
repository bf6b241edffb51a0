//! Wiring: which backends each process gets. Every process builds its `Deps` once, through
//! the one constructor `Deps::new(Backends { .. })`:
//!
//! - A Lambda calls [`lambda_deps`] with its [`Function`]. What it talks to besides the
//!   table and Secrets Manager (which every function uses), [`Function::uses`], follows
//!   from its IAM grants (`crate::iam`, the one table of each function's AWS actions): a
//!   queue it is granted something on or is triggered by, a dead-letter queue it is
//!   granted. `lambda_deps` reads exactly the environment those need (failing
//!   fast, naming every missing variable; `template.yaml` sets them, and a test in `infra`
//!   checks it does), builds the SDK clients once, and wires every port the function does
//!   not use to [`NotWired`]. That adapter refuses loudly (an error log naming the function
//!   and the port, and a non-retryable `StoreError::Misconfigured`), so a declaration that
//!   misses a port, or a missing variable or grant, fails at the first call instead of
//!   quietly dropping work.
//! - Local mode uses every port: [`aws_backends`] on an emulator, [`memory_backends`] in
//!   memory. Tests use the same two (or [`memory_deps`]).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::adapters::aws::{DynamoStore, KmsDataKeys, SecretsManagerStore, SqsQueue};
use crate::adapters::memory::{LocalDataKeys, MemoryQueue, MemorySecrets, MemoryStore};
use crate::adapters::meta_graph::MetaGraphClient;
use crate::config::{ConfigError, EnvReader, Settings};
use crate::domain::{DISPATCH_QUEUE, STATUS_CALLBACK_QUEUE};
use crate::iam::Resource;
use crate::ports::{
    Clock, DataKey, DataKeys, DeadLetter, DispatchQueue, KeyContext, MetaAccepted, MetaClient,
    MetaSendError, PlainKey, Received, Redriven, SystemClock,
};
use crate::secret::Secret;
use crate::service::{Backends, Deps};
use crate::store_error::StoreError;

/// Secrets on Lambda are re-read at most this often (rotation reaches warm functions).
pub const SECRET_CACHE_TTL: Duration = Duration::from_secs(300);

/// How long a warm Lambda keeps an API key, a tenant's access facts, its callback setting
/// and a catalogue template (`adapters::cache`): the longest a revocation, suspension,
/// allow-list or template change made elsewhere takes to bite.
pub const READ_CACHE_TTL: Duration = Duration::from_secs(5);

/// The variable holding the ARN of the KMS key that wraps TOTP seeds' data keys.
pub const TOTP_KMS_KEY_ENV: &str = "KIRIM_TOTP_KMS_KEY";

/// The Lambda functions (`functions/*`, and their resources in `template.yaml`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Function {
    SendApi,
    AdminApi,
    Webhook,
    Dispatcher,
    StatusCallback,
    Retention,
    /// The console: HTML pages for tenants' people (`kirim::console`).
    Console,
}

/// The ports a function may or may not use. The table and Secrets Manager are not here:
/// every function uses both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Port {
    /// The DispatchQueue: jobs for the dispatcher.
    DispatchQueue,
    /// The StatusCallbackQueue: status changes for tenants' callbacks.
    CallbackQueue,
    /// The Meta Graph API client.
    Meta,
    /// The KMS key that wraps TOTP seeds' data keys (`TotpSeedKey`).
    DataKeys,
}

impl Function {
    pub const ALL: [Function; 7] = [
        Function::SendApi,
        Function::AdminApi,
        Function::Webhook,
        Function::Dispatcher,
        Function::StatusCallback,
        Function::Retention,
        Function::Console,
    ];

    /// The binary (and crate) name under `functions/`.
    pub const fn name(self) -> &'static str {
        match self {
            Function::SendApi => "send_api",
            Function::AdminApi => "admin_api",
            Function::Webhook => "webhook",
            Function::Dispatcher => "dispatcher",
            Function::StatusCallback => "status_callback",
            Function::Retention => "retention",
            Function::Console => "console",
        }
    }

    /// The function named `name` (its crate name, as `KIRIM_FUNCTION` carries it).
    pub fn from_name(name: &str) -> Option<Function> {
        Function::ALL.into_iter().find(|f| f.name() == name)
    }

    /// Its logical id in `template.yaml`.
    pub const fn logical_id(self) -> &'static str {
        match self {
            Function::SendApi => "SendApiFunction",
            Function::AdminApi => "AdminApiFunction",
            Function::Webhook => "WebhookFunction",
            Function::Dispatcher => "DispatcherFunction",
            Function::StatusCallback => "StatusCallbackFunction",
            Function::Retention => "RetentionFunction",
            Function::Console => "ConsoleFunction",
        }
    }

    /// What the function talks to besides the table and Secrets Manager: the queues its
    /// grants (`crate::iam`) name, and Meta for the dispatcher and the template syncs.
    pub fn uses(self) -> Vec<Port> {
        [
            Port::DispatchQueue,
            Port::CallbackQueue,
            Port::Meta,
            Port::DataKeys,
        ]
        .into_iter()
        .filter(|p| self.uses_port(*p))
        .collect()
    }

    pub fn uses_port(self, port: Port) -> bool {
        match (port, port.resources()) {
            (_, Some((queue, dlq))) => self.granted(queue) || self.granted(dlq),
            // Whoever the key policy lets seal or open TOTP seeds (admin_api, console).
            (Port::DataKeys, None) => self.granted(Resource::TotpSeedKey),
            // The dispatcher sends to Meta; admin_api (onboarding, `POST /v1/templates/sync`),
            // the console (its catalogue page's sync) and retention (the daily sync) read the
            // template catalogue from it.
            (_, None) => matches!(
                self,
                Function::Dispatcher | Function::AdminApi | Function::Console | Function::Retention
            ),
        }
    }

    /// Granted the dead-letter queue of `port` (to list and redrive what is parked).
    pub fn uses_dead_letters(self, port: Port) -> bool {
        port.resources().is_some_and(|(_, dlq)| self.granted(dlq))
    }

    /// The environment variables `lambda_deps` refuses to start without.
    pub fn required_env(self) -> Vec<&'static str> {
        let mut vars = vec!["KIRIM_TABLE"];
        for port in self.uses() {
            if let Some((url, dlq)) = port.env() {
                vars.push(url);
                if self.uses_dead_letters(port) {
                    vars.push(dlq);
                }
            }
        }
        if self.uses_port(Port::DataKeys) {
            vars.push(TOTP_KMS_KEY_ENV);
        }
        vars
    }
}

impl Port {
    /// A queue and its dead-letter queue, as IAM resources.
    pub const fn resources(self) -> Option<(Resource, Resource)> {
        match self {
            Port::DispatchQueue => Some((Resource::DispatchQueue, Resource::DispatchDlq)),
            Port::CallbackQueue => Some((Resource::CallbackQueue, Resource::CallbackDlq)),
            Port::Meta | Port::DataKeys => None,
        }
    }

    /// A queue's environment variables: its URL and its dead-letter queue's URL (read
    /// only by a function granted the dead-letter queue).
    pub const fn env(self) -> Option<(&'static str, &'static str)> {
        match self {
            Port::DispatchQueue => Some(("KIRIM_DISPATCH_QUEUE_URL", "KIRIM_DISPATCH_DLQ_URL")),
            Port::CallbackQueue => Some((
                "KIRIM_STATUS_CALLBACK_QUEUE_URL",
                "KIRIM_STATUS_CALLBACK_DLQ_URL",
            )),
            Port::Meta | Port::DataKeys => None,
        }
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Port::DispatchQueue => "dispatch queue",
            Port::CallbackQueue => "status-callback queue",
            Port::Meta => "Meta client",
            Port::DataKeys => "TOTP seed key (KMS)",
        })
    }
}

/// A queue's URLs.
#[derive(Clone, Debug)]
pub struct QueueUrls {
    pub url: String,
    pub dlq_url: Option<String>,
}

/// Where one process's AWS resources are. A queue left `None` is one the process does not
/// use: it is wired to [`NotWired`].
#[derive(Clone, Debug)]
pub struct AwsResources {
    pub table: String,
    pub dispatch_queue: Option<QueueUrls>,
    pub status_callback_queue: Option<QueueUrls>,
    /// The KMS key (ARN) that wraps TOTP seeds' data keys; `None`: not used.
    pub totp_kms_key: Option<String>,
}

impl AwsResources {
    /// What `function` needs, from the environment (problems are collected in `env`).
    pub fn from_env<F: Fn(&str) -> Option<String>>(
        env: &mut EnvReader<F>,
        function: Function,
    ) -> Self {
        let mut queue = |port: Port| {
            let (url, dlq) = port.env()?;
            function.uses_port(port).then(|| QueueUrls {
                url: env.required(url),
                dlq_url: function.uses_dead_letters(port).then(|| env.required(dlq)),
            })
        };
        let dispatch_queue = queue(Port::DispatchQueue);
        let status_callback_queue = queue(Port::CallbackQueue);
        let totp_kms_key = function
            .uses_port(Port::DataKeys)
            .then(|| env.required(TOTP_KMS_KEY_ENV));
        AwsResources {
            table: env.required("KIRIM_TABLE"),
            dispatch_queue,
            status_callback_queue,
            totp_kms_key,
        }
    }
}

/// How long a process caches secrets and the reads of `adapters::cache`.
#[derive(Clone, Copy, Debug)]
pub struct CacheTtls {
    pub secrets: Duration,
    pub reads: Duration,
}

/// The Lambda's: [`SECRET_CACHE_TTL`] and [`READ_CACHE_TTL`].
pub const LAMBDA_CACHE_TTLS: CacheTtls = CacheTtls {
    secrets: SECRET_CACHE_TTL,
    reads: READ_CACHE_TTL,
};

/// AWS-backed backends for `process` (a function's name, or local mode: named in the
/// refusals of the ports it lacks). Meta is the caller's: a client, or `NotWired`.
pub fn aws_backends(
    sdk: &aws_config::SdkConfig,
    process: &'static str,
    res: &AwsResources,
    meta: Arc<dyn MetaClient>,
    settings: Settings,
    clock: Arc<dyn Clock>,
    ttls: CacheTtls,
) -> Backends<DynamoStore> {
    let store = Arc::new(DynamoStore::new(
        aws_sdk_dynamodb::Client::new(sdk),
        &res.table,
        clock.clone(),
    ));
    let sqs = (res.dispatch_queue.is_some() || res.status_callback_queue.is_some())
        .then(|| aws_sdk_sqs::Client::new(sdk));
    let queue = |urls: &Option<QueueUrls>, port: Port| -> Arc<dyn DispatchQueue> {
        match (urls, &sqs) {
            (Some(q), Some(client)) => {
                let queue = SqsQueue::new(client.clone(), &q.url, q.dlq_url.clone());
                // The dispatch queue is a fair queue by tenant (the callback queue's
                // senders name the group themselves).
                Arc::new(match port {
                    Port::DispatchQueue => queue.fair_by_tenant(),
                    _ => queue,
                })
            }
            _ => Arc::new(NotWired::new(process, port)),
        }
    };
    let data_keys: Arc<dyn DataKeys> = match &res.totp_kms_key {
        Some(key) => Arc::new(KmsDataKeys::new(aws_sdk_kms::Client::new(sdk), key)),
        None => Arc::new(NotWired::new(process, Port::DataKeys)),
    };
    Backends {
        queue: queue(&res.dispatch_queue, Port::DispatchQueue),
        callback_queue: queue(&res.status_callback_queue, Port::CallbackQueue),
        store,
        secrets: Arc::new(SecretsManagerStore::new(
            aws_sdk_secretsmanager::Client::new(sdk),
        )),
        data_keys,
        meta,
        clock,
        settings,
        secret_ttl: ttls.secrets,
        read_cache_ttl: ttls.reads,
    }
}

/// Memory-backed backends with every port (local mode, tests). Secrets are the caller's
/// to put.
pub fn memory_backends(
    settings: Settings,
    clock: Arc<dyn Clock>,
) -> Result<Backends<MemoryStore>, ConfigError> {
    Ok(Backends {
        store: Arc::new(MemoryStore::new(clock.clone())),
        // As the template keeps them: visibility, receives before the dead-letter queue,
        // and retention (counted on the clock).
        queue: Arc::new(MemoryQueue::shaped(DISPATCH_QUEUE, clock.clone())),
        callback_queue: Arc::new(MemoryQueue::shaped(STATUS_CALLBACK_QUEUE, clock.clone())),
        secrets: Arc::new(MemorySecrets::default()),
        // A local key generated at start: what it seals lives only as long as the store.
        data_keys: Arc::new(LocalDataKeys::generate()),
        meta: meta_client(&settings)?,
        clock,
        settings,
        secret_ttl: Duration::ZERO,
        read_cache_ttl: Duration::ZERO,
    })
}

/// `Deps::new(memory_backends(..))`: the memory deps tests build directly.
pub fn memory_deps(settings: Settings, clock: Arc<dyn Clock>) -> Result<Deps, ConfigError> {
    Ok(Deps::new(memory_backends(settings, clock)?))
}

/// The Meta Graph API client the settings describe.
pub fn meta_client(settings: &Settings) -> Result<Arc<dyn MetaClient>, ConfigError> {
    MetaGraphClient::new(
        &settings.meta_base_url,
        &settings.meta_version,
        settings.meta_timeout,
    )
    .map(|c| Arc::new(c) as Arc<dyn MetaClient>)
    .map_err(|e| ConfigError(vec![format!("meta http client: {e}")]))
}

/// A Lambda's deps from its environment (`template.yaml` sets it), failing fast with
/// every missing variable named. Only the ports `function` uses are built.
pub async fn lambda_deps(function: Function) -> Result<Deps, ConfigError> {
    let mut env = EnvReader::new(|k| std::env::var(k).ok());
    let settings = env.settings();
    let res = AwsResources::from_env(&mut env, function);
    let sdk = lambda_sdk_config(&mut env);
    env.finish()?;
    let meta = if function.uses_port(Port::Meta) {
        meta_client(&settings)?
    } else {
        Arc::new(NotWired::new(function.name(), Port::Meta))
    };
    Ok(Deps::new(aws_backends(
        &sdk,
        function.name(),
        &res,
        meta,
        settings,
        Arc::new(SystemClock),
        LAMBDA_CACHE_TTLS,
    )))
}

/// The AWS SDK's configuration loader (region, credentials and endpoint from the
/// environment, as `aws_config::from_env`) with the one HTTPS client every AWS client
/// uses: rustls on `ring`. The SDK crates are built without their default client
/// (`Cargo.toml`), so a client made from any other loader has no HTTP client at all.
pub fn aws_sdk_loader() -> aws_config::ConfigLoader {
    aws_config::from_env()
        .http_client(aws_https_client())
        .retry_config(crate::adapters::aws::http::retry_config())
}

/// The one HTTPS client of every AWS client: reqwest on rustls and `ring`.
fn aws_https_client() -> aws_sdk_dynamodb::config::SharedHttpClient {
    crate::adapters::aws::http::shared_client()
}

/// A Lambda's AWS SDK configuration from the variables Lambda sets for every function:
/// `AWS_REGION` and the execution role's `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
/// `AWS_SESSION_TOKEN` (the environment's credentials, fixed for its life), plus
/// `AWS_ENDPOINT_URL` when set (an emulator). Not `aws_config::from_env().load()`: its
/// provider chains (profile files, SSO, web identity and STS, ECS, IMDS) are what a Lambda
/// never takes, and linking them is most of what `aws-config` adds to a function (issue #13,
/// small functions). A missing variable is named with the others, and nothing is built.
pub fn lambda_sdk_config<F: Fn(&str) -> Option<String>>(
    env: &mut EnvReader<F>,
) -> aws_config::SdkConfig {
    let region = env
        .optional("AWS_REGION")
        .or_else(|| env.optional("AWS_DEFAULT_REGION"));
    let region = region.unwrap_or_else(|| env.required("AWS_REGION"));
    let key_id = env.required("AWS_ACCESS_KEY_ID");
    let secret = env.required("AWS_SECRET_ACCESS_KEY");
    let session = env.optional("AWS_SESSION_TOKEN");
    let credentials =
        aws_credential_types::Credentials::new(key_id, secret, session, None, "lambda-environment");
    let mut sdk = aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(region))
        .credentials_provider(
            aws_credential_types::provider::SharedCredentialsProvider::new(credentials),
        )
        .http_client(aws_https_client())
        .retry_config(crate::adapters::aws::http::retry_config());
    if let Some(endpoint) = env.optional("AWS_ENDPOINT_URL") {
        sdk = sdk.endpoint_url(endpoint);
    }
    sdk.build()
}

/// A port a process was not wired with (see [`Function::uses`]). Every call logs an error
/// naming the process and the port and is refused: for a queue with a non-retryable
/// `StoreError::Misconfigured`; for Meta with `MetaSendError::Connection` (the request
/// never left; Meta's errors have no misconfiguration class, and only the dispatcher,
/// which is always wired with Meta, calls it).
#[derive(Clone, Copy, Debug)]
pub struct NotWired {
    process: &'static str,
    port: Port,
}

impl NotWired {
    pub fn new(process: &'static str, port: Port) -> Self {
        Self { process, port }
    }

    fn refusal(&self) -> String {
        tracing::error!(
            process = self.process,
            port = %self.port,
            "a port this process was not wired with was called: grant it in kirim::iam (Function::grants), with its environment and grants in template.yaml"
        );
        format!("the {} is not wired in {}", self.port, self.process)
    }

    fn refuse(&self) -> StoreError {
        StoreError::Misconfigured(self.refusal())
    }
}

#[async_trait::async_trait]
impl DispatchQueue for NotWired {
    async fn send(&self, _body: &str) -> Result<(), StoreError> {
        Err(self.refuse())
    }
    async fn send_batch(&self, _bodies: &[String]) -> Result<(), StoreError> {
        Err(self.refuse())
    }
    async fn receive(&self, _max: usize, _wait: Duration) -> Result<Vec<Received>, StoreError> {
        Err(self.refuse())
    }
    async fn delete(&self, _receipt: &str) -> Result<(), StoreError> {
        Err(self.refuse())
    }
    async fn retry_after(&self, _receipt: &str, _delay: Duration) -> Result<(), StoreError> {
        Err(self.refuse())
    }
    async fn dead_letters(&self, _max: usize) -> Result<Vec<DeadLetter>, StoreError> {
        Err(self.refuse())
    }
    async fn redrive(&self, _ids: Option<&[String]>, _max: usize) -> Result<Redriven, StoreError> {
        Err(self.refuse())
    }
}

#[async_trait::async_trait]
impl DataKeys for NotWired {
    async fn generate(&self, _context: &KeyContext) -> Result<DataKey, StoreError> {
        Err(self.refuse())
    }
    async fn unwrap(
        &self,
        _wrapped: &[u8],
        _context: &KeyContext,
    ) -> Result<Option<PlainKey>, StoreError> {
        Err(self.refuse())
    }
}

#[async_trait::async_trait]
impl MetaClient for NotWired {
    async fn send_message(
        &self,
        _phone_number_id: &str,
        _token: &Secret,
        _body: &serde_json::Value,
    ) -> Result<MetaAccepted, MetaSendError> {
        Err(MetaSendError::Connection(self.refusal()))
    }
    async fn list_templates(
        &self,
        _waba_id: &str,
        _token: &Secret,
        _after: Option<&str>,
    ) -> Result<crate::domain::template::MetaTemplatePage, MetaSendError> {
        Err(MetaSendError::Connection(self.refusal()))
    }
    async fn subscribe_app(&self, _waba_id: &str, _token: &Secret) -> Result<(), MetaSendError> {
        Err(MetaSendError::Connection(self.refusal()))
    }
    async fn get_phone_number(
        &self,
        _phone_number_id: &str,
        _token: &Secret,
    ) -> Result<crate::domain::number::MetaPhoneNumber, MetaSendError> {
        Err(MetaSendError::Connection(self.refusal()))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn a_function_without_its_queue_urls_does_not_start_and_names_each_missing_one() {
        let mut env = EnvReader::new(env_of(&[]));
        let _ = AwsResources::from_env(&mut env, Function::Dispatcher);
        let err = env.finish().expect_err("nothing set").to_string();
        for var in Function::Dispatcher.required_env() {
            assert!(err.contains(var), "{var} in {err}");
        }
        assert!(err.contains("KIRIM_DISPATCH_QUEUE_URL"));
        assert!(err.contains("KIRIM_STATUS_CALLBACK_QUEUE_URL"));
    }

    #[test]
    fn a_function_reads_only_the_queues_it_declares() {
        let all = [
            ("KIRIM_TABLE", "t"),
            ("KIRIM_DISPATCH_QUEUE_URL", "https://sqs/d"),
            ("KIRIM_DISPATCH_DLQ_URL", "https://sqs/d-dlq"),
            ("KIRIM_STATUS_CALLBACK_QUEUE_URL", "https://sqs/c"),
            ("KIRIM_STATUS_CALLBACK_DLQ_URL", "https://sqs/c-dlq"),
            (TOTP_KMS_KEY_ENV, "arn:aws:kms:eu-west-1:1:key/k"),
        ];
        for function in Function::ALL {
            let mut env = EnvReader::new(env_of(&all));
            let res = AwsResources::from_env(&mut env, function);
            env.finish().expect("all set");
            // A dead-letter queue's URL is read only where it is granted.
            for (urls, port) in [
                (&res.dispatch_queue, Port::DispatchQueue),
                (&res.status_callback_queue, Port::CallbackQueue),
            ] {
                let dlq = urls.as_ref().and_then(|q| q.dlq_url.as_ref());
                assert_eq!(
                    dlq.is_some(),
                    function.uses_dead_letters(port),
                    "{function:?} {port}"
                );
            }
            assert_eq!(
                res.dispatch_queue.is_some(),
                function.uses_port(Port::DispatchQueue),
                "{function:?}"
            );
            assert_eq!(
                res.status_callback_queue.is_some(),
                function.uses_port(Port::CallbackQueue),
                "{function:?}"
            );
            assert_eq!(
                res.totp_kms_key.is_some(),
                function.uses_port(Port::DataKeys),
                "{function:?}"
            );
        }
        // Retention needs its table and the callback queue (a lost job's message settled
        // has its callback queued), no dispatch queue and no dead-letter queue.
        let mut env = EnvReader::new(env_of(&[
            ("KIRIM_TABLE", "t"),
            ("KIRIM_STATUS_CALLBACK_QUEUE_URL", "https://sqs/c"),
        ]));
        let res = AwsResources::from_env(&mut env, Function::Retention);
        env.finish()
            .expect("the table and the callback queue are enough");
        assert!(res.dispatch_queue.is_none());
        assert!(res
            .status_callback_queue
            .as_ref()
            .is_some_and(|q| q.dlq_url.is_none()));
    }

    #[test]
    fn the_admin_api_cannot_start_without_the_dead_letter_queues_it_redrives() {
        let mut env = EnvReader::new(env_of(&[
            ("KIRIM_TABLE", "t"),
            ("KIRIM_DISPATCH_QUEUE_URL", "https://sqs/d"),
            ("KIRIM_STATUS_CALLBACK_QUEUE_URL", "https://sqs/c"),
        ]));
        let _ = AwsResources::from_env(&mut env, Function::AdminApi);
        let err = env.finish().expect_err("no DLQ URLs").to_string();
        assert!(err.contains("KIRIM_DISPATCH_DLQ_URL"), "{err}");
        assert!(err.contains("KIRIM_STATUS_CALLBACK_DLQ_URL"), "{err}");
    }

    #[test]
    fn every_function_that_syncs_a_catalogue_talks_to_meta_and_may_read_the_tenants_token() {
        // Onboarding and `POST /v1/templates/sync` (admin_api), the catalogue page's sync
        // button (console), the daily sync (retention), and the sends (dispatcher).
        for function in Function::ALL {
            let syncs = matches!(
                function,
                Function::AdminApi | Function::Console | Function::Retention | Function::Dispatcher
            );
            assert_eq!(function.uses_port(Port::Meta), syncs, "{function:?}");
            let reads_tokens = function.grants().iter().any(|g| {
                matches!(g.resource, Resource::MetaTokens | Resource::TenantSecrets)
                    && g.actions.contains(&"secretsmanager:GetSecretValue")
            });
            assert_eq!(reads_tokens, syncs, "{function:?}");
        }
    }

    #[test]
    fn only_the_functions_that_seal_totp_seeds_need_the_kms_key_and_cannot_start_without_it() {
        for function in Function::ALL {
            let seals = matches!(function, Function::AdminApi | Function::Console);
            assert_eq!(function.uses_port(Port::DataKeys), seals, "{function:?}");
            assert_eq!(
                function.required_env().contains(&TOTP_KMS_KEY_ENV),
                seals,
                "{function:?}"
            );
        }
        let mut env = EnvReader::new(env_of(&[
            ("KIRIM_TABLE", "t"),
            ("KIRIM_DISPATCH_QUEUE_URL", "https://sqs/d"),
        ]));
        let _ = AwsResources::from_env(&mut env, Function::Console);
        let err = env.finish().expect_err("no key").to_string();
        assert!(err.contains(TOTP_KMS_KEY_ENV), "{err}");
    }

    #[tokio::test]
    async fn a_port_that_is_not_wired_refuses_and_is_not_retried() {
        let q = NotWired::new("status_callback", Port::DispatchQueue);
        let err = q.send("{}").await.expect_err("not wired");
        assert!(matches!(err, StoreError::Misconfigured(_)), "{err:?}");
        assert!(!err.is_retryable());
        assert!(err.to_string().contains("dispatch queue"));
        assert!(err.to_string().contains("status_callback"));
        assert!(q.receive(10, Duration::ZERO).await.is_err());
        assert!(q.retry_after("r", Duration::ZERO).await.is_err());
        let meta = NotWired::new("webhook", Port::Meta);
        let refused = meta
            .send_message("1", &Secret::new("t"), &serde_json::json!({}))
            .await;
        assert!(matches!(refused, Err(MetaSendError::Connection(_))));
        let keys = NotWired::new("webhook", Port::DataKeys);
        let context = KeyContext::totp_seed(&crate::domain::TenantId::from_trusted("t"), "u");
        let err = keys.generate(&context).await.expect_err("not wired");
        assert!(matches!(err, StoreError::Misconfigured(_)), "{err:?}");
        assert!(keys.unwrap(b"x", &context).await.is_err());
    }

    /// Local mode's queues park a message on its 11th receive, as the template's redrive
    /// does (`maxReceiveCount` 10), whatever `KIRIM_DISPATCH_MAX_ATTEMPTS` is: the attempts
    /// are counted in the message record, below that limit.
    #[tokio::test]
    async fn local_modes_queues_park_a_message_after_the_templates_receive_count() {
        let settings = Settings {
            dispatch_max_attempts: 3,
            ..Settings::default()
        };
        let b = memory_backends(settings, Arc::new(crate::ports::SystemClock)).unwrap();
        for queue in [&b.queue, &b.callback_queue] {
            queue.send("poison").await.unwrap();
            let mut receives = 0;
            for _ in 0..15 {
                let got = queue.receive(1, Duration::ZERO).await.unwrap();
                let Some(m) = got.first() else { break };
                receives += 1;
                queue.retry_after(&m.receipt, Duration::ZERO).await.unwrap();
            }
            assert_eq!(receives, 10, "received 10 times, then parked");
            assert_eq!(queue.dead_letters(10).await.unwrap().len(), 1);
        }
    }
}
