//! Wiring: which backends each process gets. Every process builds its `Deps` once, through
//! the one constructor `Deps::new(Backends { .. })`:
//!
//! - A Lambda calls [`lambda_deps`] with its [`Function`]. Each function declares what it
//!   talks to besides the table and Secrets Manager (which every function uses):
//!   [`Function::uses`]. `lambda_deps` reads exactly the environment those need (failing
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

use crate::adapters::aws::{DynamoStore, SecretsManagerStore, SqsQueue};
use crate::adapters::memory::{MemoryQueue, MemorySecrets, MemoryStore};
use crate::adapters::meta_graph::MetaGraphClient;
use crate::config::{ConfigError, EnvReader, Settings};
use crate::ports::{
    Clock, DispatchQueue, MetaAccepted, MetaClient, MetaSendError, Received, SystemClock,
};
use crate::secret::Secret;
use crate::service::{Backends, Deps};
use crate::store_error::StoreError;

/// Secrets on Lambda are re-read at most this often (rotation reaches warm functions).
pub const SECRET_CACHE_TTL: Duration = Duration::from_secs(300);

/// The Lambda functions (`functions/*`, and their resources in `template.yaml`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Function {
    SendApi,
    AdminApi,
    Webhook,
    Dispatcher,
    StatusCallback,
    Retention,
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
}

impl Function {
    pub const ALL: [Function; 6] = [
        Function::SendApi,
        Function::AdminApi,
        Function::Webhook,
        Function::Dispatcher,
        Function::StatusCallback,
        Function::Retention,
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
        }
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
        }
    }

    /// What the function talks to besides the table and Secrets Manager.
    pub const fn uses(self) -> &'static [Port] {
        match self {
            // Accepted sends and broadcast fan-out jobs are queued for the dispatcher.
            Function::SendApi => &[Port::DispatchQueue],
            // Operator, keys, users, settings, audit, export, the retention run; and the
            // template catalogue's sync from Meta (a new tenant, `POST /v1/templates/sync`).
            Function::AdminApi => &[Port::Meta],
            // A status webhook moves a message on: its callback is queued.
            Function::Webhook => &[Port::CallbackQueue],
            // Sends to Meta; retries by visibility timeout and continues a broadcast's
            // fan-out on the dispatch queue; queues sent/failed callbacks.
            Function::Dispatcher => &[Port::DispatchQueue, Port::CallbackQueue, Port::Meta],
            // Consumes the callback queue (a retry is a visibility timeout on it).
            Function::StatusCallback => &[Port::CallbackQueue],
            // Deletes what expired, closes out tenants; syncs active tenants' template
            // catalogues from Meta.
            Function::Retention => &[Port::Meta],
        }
    }

    pub fn uses_port(self, port: Port) -> bool {
        self.uses().contains(&port)
    }

    /// The environment variables `lambda_deps` refuses to start without.
    pub fn required_env(self) -> Vec<&'static str> {
        let mut vars = vec!["KIRIM_TABLE"];
        vars.extend(
            self.uses()
                .iter()
                .filter_map(|p| p.env())
                .map(|(url, _)| url),
        );
        vars
    }
}

impl Port {
    /// A queue's environment variables: its URL (required) and its dead-letter queue's
    /// URL (optional: only read to peek at parked messages).
    pub const fn env(self) -> Option<(&'static str, &'static str)> {
        match self {
            Port::DispatchQueue => Some(("KIRIM_DISPATCH_QUEUE_URL", "KIRIM_DISPATCH_DLQ_URL")),
            Port::CallbackQueue => Some((
                "KIRIM_STATUS_CALLBACK_QUEUE_URL",
                "KIRIM_STATUS_CALLBACK_DLQ_URL",
            )),
            Port::Meta => None,
        }
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Port::DispatchQueue => "dispatch queue",
            Port::CallbackQueue => "status-callback queue",
            Port::Meta => "Meta client",
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
                dlq_url: env.optional(dlq),
            })
        };
        let dispatch_queue = queue(Port::DispatchQueue);
        let status_callback_queue = queue(Port::CallbackQueue);
        AwsResources {
            table: env.required("KIRIM_TABLE"),
            dispatch_queue,
            status_callback_queue,
        }
    }
}

/// AWS-backed backends for `process` (a function's name, or local mode: named in the
/// refusals of the ports it lacks). Meta is the caller's: a client, or `NotWired`.
pub fn aws_backends(
    sdk: &aws_config::SdkConfig,
    process: &'static str,
    res: &AwsResources,
    meta: Arc<dyn MetaClient>,
    settings: Settings,
    clock: Arc<dyn Clock>,
    secret_ttl: Duration,
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
                Arc::new(SqsQueue::new(client.clone(), &q.url, q.dlq_url.clone()))
            }
            _ => Arc::new(NotWired::new(process, port)),
        }
    };
    Backends {
        queue: queue(&res.dispatch_queue, Port::DispatchQueue),
        callback_queue: queue(&res.status_callback_queue, Port::CallbackQueue),
        store,
        secrets: Arc::new(SecretsManagerStore::new(
            aws_sdk_secretsmanager::Client::new(sdk),
        )),
        meta,
        clock,
        settings,
        secret_ttl,
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
        queue: Arc::new(MemoryQueue::new(
            Duration::from_secs(360),
            settings.dispatch_max_attempts + 2,
        )),
        // Like the template's redrive: parked after 10 receives.
        callback_queue: Arc::new(MemoryQueue::new(Duration::from_secs(360), 10)),
        secrets: Arc::new(MemorySecrets::default()),
        meta: meta_client(&settings)?,
        clock,
        settings,
        secret_ttl: Duration::ZERO,
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
    env.finish()?;
    let meta = if function.uses_port(Port::Meta) {
        meta_client(&settings)?
    } else {
        Arc::new(NotWired::new(function.name(), Port::Meta))
    };
    let sdk = aws_config::load_from_env().await;
    Ok(Deps::new(aws_backends(
        &sdk,
        function.name(),
        &res,
        meta,
        settings,
        Arc::new(SystemClock),
        SECRET_CACHE_TTL,
    )))
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
            "a port this process was not wired with was called: declare it in runtime::Function::uses, with its environment and grants in template.yaml"
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
    async fn dead_letters(&self) -> Result<Vec<String>, StoreError> {
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
        ];
        for function in Function::ALL {
            let mut env = EnvReader::new(env_of(&all));
            let res = AwsResources::from_env(&mut env, function);
            env.finish().expect("all set");
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
        }
        // The admin API needs nothing but its table.
        let mut env = EnvReader::new(env_of(&[("KIRIM_TABLE", "t")]));
        let res = AwsResources::from_env(&mut env, Function::AdminApi);
        env.finish().expect("the table is enough");
        assert!(res.dispatch_queue.is_none() && res.status_callback_queue.is_none());
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
    }
}
